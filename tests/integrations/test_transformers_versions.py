"""The transformers releases the integration claims (gdn_fx.integrations.transformers.SUPPORTED_TRANSFORMERS, as
pyproject.toml states them) are the ones it runs on: the suite runs on a supported release (CI: the newest in the
range with tools/test.sh, the oldest with tools/test_oldest.sh), and patch_model refuses any other before it
changes the model."""

import pytest

from gdn_fx.integrations.transformers import (
    SUPPORTED_TRANSFORMERS, check_transformers_version, gdn_modules, patch_model, small_model,
)


def test_installed_transformers_is_supported():
    """The suite runs on a supported release (CI: the newest in the range, and the oldest)."""
    check_transformers_version()


@pytest.mark.parametrize("version", ["5.14.1", "5.26.0", "5.26.0.dev0", "6.0.0"])
def test_patch_refuses_unsupported_transformers(monkeypatch, version):
    """An untested release is refused before anything is patched, naming both versions: never wrong tokens."""
    import transformers

    model = small_model("qwen3_5")
    monkeypatch.setattr(transformers, "__version__", version)
    with pytest.raises(RuntimeError, match=f"supports transformers{SUPPORTED_TRANSFORMERS}.*transformers {version} "
                                           "is installed"):
        patch_model(model)
    assert gdn_modules(model)  # nothing was swapped


def test_pyproject_states_the_supported_range():
    import pathlib
    import tomllib

    project = tomllib.loads((pathlib.Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    specs = [d for deps in project["optional-dependencies"].values() for d in deps if d.startswith("transformers")]
    assert specs and set(specs) == {"transformers" + SUPPORTED_TRANSFORMERS}
