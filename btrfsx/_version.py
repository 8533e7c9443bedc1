"""The package version, in a module of its own so that any module can import
it without importing the package (whose ``__init__`` imports the driver).
pyproject.toml declares the same string; tests/test_version.py checks that
they agree."""

__version__ = "0.1.0"
