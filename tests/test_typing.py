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
