"""forward_serving under torch.compile(fullgraph=True, dynamic=True): one graph for every batch
size and mix, same outputs and state pools as eager (fixtures in conftest.py)."""

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend

from gdn_fx import Request, build_metadata

HIDDEN = 48  # conftest's hidden size
# Inductor's own imports (torch.utils.mkldnn) use the deprecated torch.jit.script_method
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

# Batches over one pool of 11 slots: [(slot, num_computed_tokens, num_new_tokens)], decodes first.
# Metadata has one row per token, so T is the only dynamic size; run in both orders (a decode-only
# first batch used to tie N to T).
BATCHES = [
    [(3, 0, 13), (9, 0, 7), (0, 0, 21), (6, 0, 9), (2, 0, 17)],  # prefills only
    [(9, 7, 1), (0, 21, 1), (3, 13, 1), (6, 9, 1)],  # decodes only
    [(2, 17, 1), (3, 14, 1), (6, 10, 12), (7, 0, 6)],  # decodes, chunked prefill, new prefill
    [(0, 22, 1), (9, 8, 1)],  # two decodes
]


@pytest.mark.parametrize("order", [1, -1], ids=["prefill_first", "decode_first"])
@pytest.mark.parametrize("ratio", [2], ids=lambda r: f"R{r}")
def test_forward_serving_compiles_once(make_layer, order):
    torch._dynamo.reset()  # forward_serving's code object is shared by every variant
    layer = make_layer()
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(layer.forward_serving, backend=counter, fullgraph=True, dynamic=True)
    eager_pools = tuple(p.normal_() for p in layer.allocate_state(11))
    compiled_pools = tuple(c.copy_(p) for c, p in zip(layer.allocate_state(11), eager_pools))
    for i, batch in enumerate(BATCHES[::order]):
        meta = build_metadata([Request(n, slot, num_computed_tokens=c) for slot, c, n in batch], num_slots=11)
        h = torch.randn(sum(n for _, _, n in batch), HIDDEN)
        want = layer.forward_serving(h, *eager_pools, meta)
        got = compiled(h, *compiled_pools, meta)
        msg = lambda m: f"batch {i}: {m}"  # noqa: E731
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=msg)
        for p_got, p_want in zip(compiled_pools, eager_pools):
            torch.testing.assert_close(p_got, p_want, atol=1e-5, rtol=1e-5, msg=msg)
    assert counter.frame_count == 1, f"compiled {counter.frame_count} times for {len(BATCHES)} batches"
