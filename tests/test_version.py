"""One version: pyproject.toml declares it statically (setuptools reads no
module for it), and btrfsx/_version.py carries it for ``btrfsx.__version__``,
``btrfsx --version`` and ``Driver.status()``."""

import tomllib
from pathlib import Path

import btrfsx
from btrfsx._version import __version__

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_the_package_and_pyproject_declare_the_same_version():
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    assert __version__ == declared
    assert btrfsx.__version__ is __version__
