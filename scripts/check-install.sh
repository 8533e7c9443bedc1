#!/usr/bin/env bash
# A plain `pip install` gives a working command (issue #14): build a wheel of
# this checkout, install it WITHOUT extras into a bare virtual environment,
# make a loopback btrfs filesystem, and run every subcommand of the installed
# `btrfsx` once against a home on it.  Fails if any output holds a traceback,
# a command exits with a status it should not, or the parser has a command
# this script does not exercise.  As root; about a minute (most of it the
# wheel's compile).  Everything it makes (temporary directory, image, mount,
# loop device) is removed on any exit.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ "$(id -u)" = 0 ] || { echo "check-install: needs root (loop devices, mounts)" >&2; exit 1; }

work=$(mktemp -d /tmp/btrfsx-check-install.XXXXXX)
image=""
mnt="$work/mnt"

cleanup() {
  local rc=$?
  set +e
  if [ -d "$mnt" ] && mountpoint -q "$mnt"; then
    umount "$mnt" || umount -l "$mnt"
  fi
  if [ -n "$image" ]; then
    # mount -o loop attaches with autoclear; detach whatever is still attached
    for dev in $(losetup -n -O NAME -j "$image" 2>/dev/null); do
      losetup -d "$dev"
    done
    rm -f "$image"
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say() { echo "check-install: $*"; }
fail() { echo "check-install: FAIL: $*" >&2; exit 1; }

# ---------------------------------------------------------------- the wheel, in a bare venv
say "building a wheel"
mkdir "$work/src"
# a copy of the working tree (uncommitted changes included), without build products
tar -C . --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist --exclude='*.egg-info' \
    --exclude='*.so' --exclude=./btrfsx/_ioctl.c --exclude=./btrfsx/archive/_tar.c \
    --exclude=__pycache__ --exclude=./.mypy_cache --exclude=./.ruff_cache --exclude=./.pytest_cache -cf - . \
  | tar -C "$work/src" -xf -
"$PYTHON" -m venv "$work/venv"
pip=("$work/venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" wheel --no-deps -w "$work/dist" "$work/src" >"$work/build.log" 2>&1 \
  || { cat "$work/build.log" >&2; fail "pip wheel"; }
wheel=$(ls "$work"/dist/btrfsx-*.whl)
say "installing $(basename "$wheel") without extras"
"${pip[@]}" install "$wheel" >"$work/install.log" 2>&1 || { cat "$work/install.log" >&2; fail "pip install"; }
BTRFSX="$work/venv/bin/btrfsx"
[ -x "$BTRFSX" ] || fail "the wheel installs no btrfsx command"

# ---------------------------------------------------------------- a loopback btrfs filesystem
image=$(mktemp /var/tmp/btrfsx-check-install.XXXXXX.img)
truncate -s 1G "$image"
mkfs.btrfs -q -f "$image" >/dev/null
mkdir "$mnt"
mount -o loop "$image" "$mnt"
H="$mnt/home"
# the embedded store's state (loopback status/destroy) in here, not the machine's
export BTRFSX_STATE_DIR="$work/state"
unset BTRFSX_HOME BTRFSX_OPTIONS

# ---------------------------------------------------------------- every command once
exercised=()
out="$work/out"

# check WANT NAME ARGS...: run btrfsx ARGS, expecting exit status WANT; NAME
# is the (sub)command this exercises.
check() {
  local want=$1 name=$2 rc=0
  shift 2
  "$BTRFSX" "$@" >"$out" 2>&1 </dev/null || rc=$?
  if grep -q "Traceback" "$out"; then
    cat "$out" >&2
    fail "btrfsx $* printed a traceback"
  fi
  if [ "$rc" != "$want" ]; then
    cat "$out" >&2
    fail "btrfsx $* exited $rc, expected $want"
  fi
  exercised+=("$name")
  printf '  %-16s ok (exit %s): btrfsx %s\n' "$name" "$rc" "$*"
}

say "running every command against $H"
check 0 --version --version
grep -q "^btrfsx " "$out" || fail "--version printed: $(cat "$out")"
check 0 --help --help
for option in --home --json --debug --option; do
  grep -q -- "$option" "$out" || fail "btrfsx --help does not list $option"
done
help_text=$(cat "$out")

check 0 create create base --home "$H"
echo "hello" >"$H/subvolumes/base/hello"
check 0 create create app --parent base --home "$H"
echo "changed" >"$H/subvolumes/app/hello"
echo "new" >"$H/subvolumes/app/new"
check 0 create create sized --parent base --size 64m --home "$H"
check 1 create create bad --size "" --home "$H"
check 0 path path app --home "$H"
[ "$(cat "$out")" = "$H/subvolumes/app" ] || fail "path printed: $(cat "$out")"
check 0 exists exists app --home "$H"
check 1 exists exists nosuch --home "$H"
check 0 status status --home "$H"
check 0 status status --json --home "$H"
check 0 ls ls --home "$H"
check 0 ls ls --tree --home "$H"
check 0 ls ls --json --home "$H"
check 0 changes changes app --home "$H"
grep -q "A /new" "$out" || fail "changes printed: $(cat "$out")"
check 0 changes -o btrfsx.changes=naive changes app --home "$H"
check 0 diff-size diff-size app --home "$H"
check 0 diff diff app -o "$work/app.tar" --home "$H"
check 0 create create app2 --parent base --home "$H"
check 0 apply apply app2 "$work/app.tar" --home "$H"
check 0 send send base -o "$work/base.stream" --home "$H"
check 0 send send app --parent base -o "$work/app.stream" --home "$H"
check 0 receive receive base-copy "$work/base.stream" --home "$H"
check 1 receive receive app-copy "$work/app.stream" --home "$H"
check 0 receive receive app-copy --parent base-copy "$work/app.stream" --json --home "$H"
grep -q '"bytes"' "$out" || fail "receive --json printed: $(cat "$out")"
check 0 export-oci export-oci app "$work/image" --tag v1 --home "$H"
check 1 export-oci export-oci app "$work/image" --tag 'bad tag!' --home "$H"
check 0 import-oci import-oci "$work/image" --tag v1 --home "$H"
check 0 run --home "$H" run --from base -- cat hello
[ "$(cat "$out")" = "hello" ] || fail "run printed: $(cat "$out")"
check 3 run --home "$H" run --from base --keep -- sh -c 'echo x >result; exit 3'
kept=$(sed -n 's/.*its copy is kept at \([^ ]*\) .*/\1/p' "$out")
[ -f "$kept/result" ] || fail "run --keep did not keep the copy: $(cat "$out")"
check 0 rm rm "$(basename "$kept")" --home "$H"
check 0 run --home "$H" run --from fixture --build 'echo built >marker' --key v1 -- test -f marker
check 0 gc gc --home "$H"
check 0 loopback loopback status
check 0 loopback loopback destroy
check 0 demo demo --builds 1 --layers 1 --files 10 --no-compare --home "$H"
if "$work/venv/bin/python" -c 'import sys, btrfsx; sys.exit(not hasattr(btrfsx.Driver, "disable_quotas"))'; then
  check 1 "quota disable" quota disable --home "$H"   # 'sized' has a limit
  check 0 "quota disable" quota disable --force --home "$H"
else
  say "(Driver.disable_quotas is not there yet: quota disable must fail cleanly)"
  check 1 "quota disable" quota disable --force --home "$H"
fi
check 1 rm rm app nosuch --home "$H"
check 1 rm rm base --home "$H"                       # it has children
check 0 rm rm app app2 sized base fixture --home "$H"
check 0 ls ls --json --home "$H"

# ---------------------------------------------------------------- nothing left out
commands=$("$work/venv/bin/python" - <<'EOF'
import argparse
from btrfsx.cli import build_parser

def leaves(parser, prefix):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                    yield from leaves(sub, prefix + [name])
                else:
                    yield " ".join(prefix + [name])

print("\n".join(leaves(build_parser(), [])))
EOF
)
missing=()
while IFS= read -r command; do
  top=${command%% *}
  grep -qE "^    $top( |$)" <<<"$help_text" || fail "btrfsx --help does not list the command $top"
  found=0
  for e in "${exercised[@]}"; do
    [ "$e" = "$command" ] && found=1
  done
  [ "$found" = 1 ] || missing+=("$command")
done <<<"$commands"
[ ${#missing[@]} = 0 ] || fail "commands this script does not exercise: ${missing[*]} (add them to scripts/check-install.sh)"
say "ok: $(wc -l <<<"$commands") commands, ${#exercised[@]} runs, no traceback"
