"""The README's Python snippets run as written, in order, in one namespace (later ones use earlier names), on the
CPU when there is no CUDA device: they define their configs and state dicts themselves and download nothing."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


def snippets() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)


def test_readme_has_the_snippets():
    names = snippets()
    assert len(names) >= 3
    assert any("patch_model(model)" in s for s in names), "the 'Use with transformers' snippet"


def test_readme_snippets_run(capsys):
    torch._dynamo.reset()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny sizes: threads only cost on a loaded machine
    namespace: dict = {"__name__": "readme"}
    try:
        for i, code in enumerate(snippets()):
            exec(compile(code, f"README.md python snippet {i}", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    assert "Counter({'unpack': 1" in capsys.readouterr().out  # the backend snippet's comment says what it prints
