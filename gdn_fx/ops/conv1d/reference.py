"""Reference causal depthwise conv1d + SiLU over packed sequences, with a state pool.

Conv state per slot: ``conv_state[slot]: [D, L]`` with ``L >= W - 1`` (``L = W - 1 + num_spec``
when speculative decoding is on). Columns ``[o, o + W - 1)`` hold the last W-1 inputs of the
sequence, oldest first, where ``o = num_accepted_tokens - 1`` (``o = 0`` outside speculation).
"""

import torch
import torch.nn.functional as F

from gdn_fx.metadata import NULL_SLOT


def _conv(full: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu: bool) -> torch.Tensor:
    """full: [D, W-1+n] fp32 (history then new inputs) -> [n, D] fp32."""
    D, W = weight.shape
    y = F.conv1d(full.unsqueeze(0), weight.float().unsqueeze(1), None if bias is None else bias.float(), groups=D)[0]
    return (F.silu(y) if silu else y).transpose(0, 1)


def causal_conv1d_prefill_reference(
    x, weight, bias, conv_state, query_start_loc, state_indices, has_initial_state, silu
) -> torch.Tensor:
    D, W = weight.shape
    out = torch.zeros_like(x)
    qsl = query_start_loc.tolist()
    slots = state_indices.tolist()
    init = has_initial_state.tolist()
    for i, slot in enumerate(slots):
        s, e = qsl[i], qsl[i + 1]
        if slot == NULL_SLOT or e == s:  # padding, or no tokens: the state is left as it is
            continue
        if init[i]:
            hist = conv_state[slot, :, : W - 1].float()
        else:
            hist = x.new_zeros((D, W - 1), dtype=torch.float32)
        full = torch.cat([hist, x[s:e].float().transpose(0, 1)], dim=1)
        out[s:e] = _conv(full, weight, bias, silu).to(x.dtype)
        conv_state[slot, :, : W - 1] = full[:, full.shape[1] - (W - 1) :].to(conv_state.dtype)
    return out


def causal_conv1d_decode_reference(
    x, weight, bias, conv_state, query_start_loc, state_indices, num_accepted_tokens, silu
) -> torch.Tensor:
    D, W = weight.shape
    out = torch.zeros_like(x)
    qsl = query_start_loc.tolist()
    slots = state_indices.tolist()
    accepted = num_accepted_tokens.tolist()
    for i, slot in enumerate(slots):
        s, e = qsl[i], qsl[i + 1]
        if slot == NULL_SLOT or e == s:
            continue
        o = accepted[i] - 1
        full = torch.cat([conv_state[slot, :, o : o + W - 1].float(), x[s:e].float().transpose(0, 1)], dim=1)
        out[s:e] = _conv(full, weight, bias, silu).to(x.dtype)
        # shift by one so that the next step's window for n accepted tokens starts at column n - 1
        conv_state[slot, :, : full.shape[1] - 1] = full[:, 1:].to(conv_state.dtype)
    return out
