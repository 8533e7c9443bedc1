#!/usr/bin/env bash
# Lint and type-check, as CI does: ruff over the package, the tests and the
# benchmarks, then mypy over the package (both configured in pyproject.toml).
# Exits non-zero on any finding.  Run scripts/bootstrap.sh first.
set -uo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
status=0
"$VENV/bin/ruff" check btrfsx tests benchmarks || status=1
"$VENV/bin/mypy" || status=1
exit $status
