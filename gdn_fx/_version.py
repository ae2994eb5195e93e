"""The package version (pyproject.toml's; tests/cli/test_cli.py checks that the two agree)."""

__version__ = "0.1.0"
