"""ruff and mypy (configured in pyproject.toml) find nothing: scripts/lint.sh
run with the tools of the Python running the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.prefix) / "bin"


def test_ruff_and_mypy_find_nothing() -> None:
    missing = [tool for tool in ("ruff", "mypy") if not (BIN / tool).exists()]
    if missing:
        reason = f"{' and '.join(missing)} not installed in {sys.prefix} (the test extra)"
        if os.environ.get("CI"):
            pytest.fail(f"lint is required in CI: {reason}", pytrace=False)
        pytest.skip(reason)
    result = subprocess.run(["bash", str(ROOT / "scripts" / "lint.sh")], cwd=ROOT,
                            env={**os.environ, "VENV": sys.prefix}, capture_output=True, text=True)
    assert result.returncode == 0, f"scripts/lint.sh found something:\n{result.stdout}{result.stderr}"


USER_MODULE = '''
import btrfsx
from btrfsx import _ioctl
reveal_type(btrfsx.Driver.create)
reveal_type(_ioctl.subvolume_id)
wrong: int = btrfsx.Driver("/var/lib/containers/storage/btrfs").layers()
'''


def test_a_user_of_the_installed_package_gets_its_types(tmp_path) -> None:
    """mypy in a project of the user's, outside this checkout, finds btrfsx
    through the install (a plain or the editable one scripts/bootstrap.sh
    makes): the package's annotations, the compiled module's stub, py.typed."""
    if not (BIN / "mypy").exists():
        pytest.skip(f"mypy not installed in {sys.prefix} (the test extra)")
    (tmp_path / "user.py").write_text(USER_MODULE)
    result = subprocess.run([str(BIN / "mypy"), "--no-incremental", "--python-executable", sys.executable,
                             "user.py"], cwd=tmp_path, capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")})
    out = result.stdout
    assert "Cannot find implementation or library stub" not in out, out
    assert 'Revealed type is "def (self: btrfsx.driver.Driver, id: str, parent: str | None =' in out, out
    assert 'Revealed type is "def (fd: int) -> int"' in out, out
    assert 'has type "list[str]", variable has type "int"' in out, out
