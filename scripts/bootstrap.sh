#!/usr/bin/env bash
# Set up everything btrfsx needs on a fresh Debian/Ubuntu machine, as root:
# the system packages (btrfs-progs, a C compiler, the kernel and Python
# headers), then a virtual environment in .venv with btrfsx built and
# installed (editable, so the compiled module sits beside its sources) and
# its test dependencies.  Quick and quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
need=()
command -v mkfs.btrfs >/dev/null || need+=(btrfs-progs)
command -v losetup >/dev/null || need+=(util-linux)
command -v mount >/dev/null || need+=(mount)
command -v cc >/dev/null || need+=(gcc libc6-dev)
[ -e /usr/include/linux/btrfs_tree.h ] || need+=(linux-libc-dev)
# For the OCI tests: a registry to push to and pull from, readers and
# writers of OCI layouts, and podman for containers/storage interoperability.
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
command -v umoci >/dev/null || need+=(umoci)
command -v podman >/dev/null || need+=(podman)
if ! command -v "$PYTHON" >/dev/null; then
  need+=(python3 python3-dev python3-venv)
else
  "$PYTHON" -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    || need+=(python3-dev)
  "$PYTHON" -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "bootstrap: need root to install: ${need[*]}" >&2
    exit 1
  fi
  echo "bootstrap: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "bootstrap: btrfsx needs Python 3.11 or newer, $PYTHON is $("$PYTHON" -V)" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# Rebuild when the Cython sources are newer than the compiled module.
so=$(ls -t btrfsx/_ioctl*.so btrfsx/archive/_tar*.so 2>/dev/null | tail -n1 || true)
if [ -z "$so" ] || [ -n "$(find btrfsx -name '*.pyx' -newer "$so" -o -name '*.pxd' -newer "$so" -o -name '*.h' -newer "$so")" ] \
   || ! .venv/bin/python -c 'import btrfsx._ioctl, btrfsx.archive._tar, zstandard, rich, hypothesis, pytest, pytest_benchmark, xdist, mypy, ruff' 2>/dev/null \
   || grep -qs finder .venv/lib/python3*/site-packages/__editable__.btrfsx-*.pth; then
  # compat mode: a .pth naming this directory, which type checkers follow
  # (setuptools' default import hook is invisible to them: no types for users)
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[cli,test]' \
    --config-settings editable_mode=compat
fi
