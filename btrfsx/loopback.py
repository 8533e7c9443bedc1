"""A btrfs filesystem in an image file, on a loop device, mounted.

Used by the test fixtures (``btrfsx.testing``) and by the command line when
no btrfs home is given.  Needs root, a free loop device and ``mkfs.btrfs``
(btrfs-progs).  Every step that attaches or mounts something is undone by
:meth:`Loopback.close`, also after a failure halfway through
:meth:`Loopback.create`.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

from btrfsx import subvolume
from btrfsx._proc import pid_alive
from btrfsx.mounts import is_mountpoint, mount_source

__all__ = ["Loopback", "LoopbackError", "Embedded", "state_dir", "unavailable_reason", "sweep_stale",
           "IMAGE_PREFIX"]

#: Image files made here are named ``IMAGE_PREFIX<pid>-<n>.img``; the pid lets
#: :func:`sweep_stale` tell a crashed run's leftovers from a live run's.
IMAGE_PREFIX = "btrfsx-loop-"
DEFAULT_SIZE = 1 << 30


class LoopbackError(RuntimeError):
    """Setting up or tearing down a loopback filesystem failed."""


def _run(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LoopbackError(f"{' '.join(argv)} failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def unavailable_reason() -> str | None:
    """Why a loopback btrfs filesystem cannot be made here, or None when it can."""
    if platform.system() != "Linux":
        return f"btrfs needs Linux, this is {platform.system()}"
    if os.geteuid() != 0:
        return "making a loopback btrfs filesystem needs root (mount, losetup)"
    if not os.path.exists("/dev/loop-control"):
        return "no /dev/loop-control: this machine has no loop devices"
    for tool in ("mkfs.btrfs", "losetup", "mount", "umount"):
        if shutil.which(tool) is None:
            hint = " (apt-get install btrfs-progs)" if tool == "mkfs.btrfs" else ""
            return f"{tool} is not installed{hint}"
    try:
        with open("/proc/filesystems") as f:
            known = f.read()
    except OSError as e:
        return f"cannot read /proc/filesystems: {e}"
    if "\tbtrfs\n" not in known:
        subprocess.run(["modprobe", "btrfs"], capture_output=True)
        with open("/proc/filesystems") as f:
            if "\tbtrfs\n" not in f.read():
                return "the kernel has no btrfs support (modprobe btrfs failed)"
    return None


def _attached() -> list[dict]:
    out = _run("losetup", "--list", "--json", "--output", "NAME,BACK-FILE")
    return json.loads(out).get("loopdevices", []) if out.strip() else []


def sweep_stale() -> list[str]:
    """Unmount and detach loop devices left by btrfsx processes that died
    before tearing down (a SIGKILLed test run, say).  Returns what it freed."""
    freed = []
    for dev in _attached():
        back = (dev.get("back-file") or "").removesuffix(" (deleted)")
        name = os.path.basename(back)
        if not name.startswith(IMAGE_PREFIX):
            continue
        try:
            pid = int(name[len(IMAGE_PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if pid_alive(pid):
            continue
        mounts = subprocess.run(["findmnt", "-rn", "-S", dev["name"], "-o", "TARGET"],
                                capture_output=True, text=True).stdout.split("\n")
        for target in filter(None, mounts):
            subprocess.run(["umount", "-l", target], capture_output=True)
        subprocess.run(["losetup", "-d", dev["name"]], capture_output=True)
        if os.path.exists(back):
            os.unlink(back)
        freed.append(dev["name"])
    return freed


_counter = 0


class Loopback:
    """A mounted btrfs filesystem backed by a sparse image file.

    >>> with Loopback.create("/var/tmp", "/mnt/x") as fs:
    ...     fs.mountpoint
    """

    def __init__(self, image: Path, device: str | None, mountpoint: Path, owns_image: bool = True,
                 owns_mountpoint: bool = False):
        self.image = image
        self.device = device
        self.mountpoint = mountpoint
        self._owns_image = owns_image
        self._owns_mountpoint = owns_mountpoint

    @classmethod
    def create(cls, image_dir: str | os.PathLike, mountpoint: str | os.PathLike, *,
               size: int = DEFAULT_SIZE, mkfs_args: tuple[str, ...] = (),
               mount_options: str = "", image: str | os.PathLike | None = None) -> Loopback:
        """Make an image of ``size`` bytes (sparse) in ``image_dir``, format it,
        attach it and mount it at ``mountpoint`` (created if missing)."""
        global _counter
        reason = unavailable_reason()
        if reason:
            raise LoopbackError(reason)
        image_dir = Path(image_dir)
        image_dir.mkdir(parents=True, exist_ok=True)
        if image is None:
            _counter += 1
            image = image_dir / f"{IMAGE_PREFIX}{os.getpid()}-{_counter}.img"

        def make_image():
            with open(image, "wb") as f:
                f.truncate(size)
            # Formatting the file before attaching it keeps mkfs from probing a
            # block device that udev may be scanning at the same moment.
            _run("mkfs.btrfs", "-q", "-f", *mkfs_args, str(image))
        return cls._mount(Path(image), Path(mountpoint), mount_options, owns_image=True, prepare=make_image)

    @classmethod
    def attach(cls, image: str | os.PathLike, mountpoint: str | os.PathLike, *,
               mount_options: str = "") -> Loopback:
        """Attach and mount an existing image (kept on :meth:`close`, unlike
        one made by :meth:`create`; see :meth:`destroy`)."""
        return cls._mount(Path(image), Path(mountpoint), mount_options, owns_image=False)

    @classmethod
    def _mount(cls, image: Path, mountpoint: Path, mount_options: str, owns_image: bool,
               prepare=None) -> Loopback:
        owns_mountpoint = not mountpoint.exists()
        mountpoint.mkdir(parents=True, exist_ok=True)
        fs = cls(image, None, mountpoint, owns_image=owns_image, owns_mountpoint=owns_mountpoint)
        try:
            if prepare:
                prepare()
            fs.device = _run("losetup", "--find", "--show", str(image)).strip()
            opts = ["-o", mount_options] if mount_options else []
            _run("mount", "-t", "btrfs", *opts, fs.device, str(mountpoint))
        except BaseException:
            fs.close()
            raise
        return fs

    @property
    def mounted(self) -> bool:
        try:
            return os.path.ismount(self.mountpoint) and subvolume.on_btrfs(self.mountpoint)
        except OSError:
            return False

    def close(self) -> None:
        """Unmount, detach the loop device, and delete the image if this object
        made it.  Safe to call twice and after a partial :meth:`create`."""
        errors = []
        if self.device is not None or self.mounted:
            if os.path.ismount(self.mountpoint):
                for attempt in range(10):
                    proc = subprocess.run(["umount", str(self.mountpoint)], capture_output=True, text=True)
                    if proc.returncode == 0:
                        break
                    time.sleep(0.05 * (attempt + 1))
                else:
                    # Something still holds a file open on it; detach it from the
                    # namespace now so the loop device is released when that ends.
                    proc = subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True, text=True)
                    if proc.returncode != 0:
                        errors.append(f"umount {self.mountpoint}: {proc.stderr.strip()}")
        if self.device is not None:
            # LOOP_CLR_FD on a device still in use marks it autoclear and succeeds.
            proc = subprocess.run(["losetup", "-d", self.device], capture_output=True, text=True)
            if proc.returncode != 0 and "No such device" not in proc.stderr:
                errors.append(f"losetup -d {self.device}: {proc.stderr.strip()}")
            self.device = None
        if self._owns_mountpoint:
            try:
                os.rmdir(self.mountpoint)
            except OSError:
                pass
            self._owns_mountpoint = False
        if self._owns_image:
            try:
                os.unlink(self.image)
            except FileNotFoundError:
                pass
            self._owns_image = False
        if errors:
            raise LoopbackError("; ".join(errors))

    def destroy(self) -> None:
        """:meth:`close`, and delete the image whoever made it."""
        self._owns_image = True
        self.close()

    def __enter__(self) -> Loopback:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Loopback(image={str(self.image)!r}, device={self.device!r}, mountpoint={str(self.mountpoint)!r})"


# ---------------------------------------------------------------- the embedded default store

#: Size of the embedded image when first made (sparse; $BTRFSX_LOOPBACK_SIZE overrides).
EMBEDDED_SIZE = 16 << 30


def state_dir() -> Path:
    """Where the embedded store lives: $BTRFSX_STATE_DIR, else /var/lib/btrfsx as
    root, else $XDG_STATE_HOME/btrfsx."""
    if os.environ.get("BTRFSX_STATE_DIR"):
        return Path(os.environ["BTRFSX_STATE_DIR"])
    if os.geteuid() == 0:
        return Path("/var/lib/btrfsx")
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "btrfsx"


class Embedded:
    """The btrfs image btrfsx makes for itself when no home is given:
    ``STATE/btrfs.img`` mounted at ``STATE/mnt``, layers in ``STATE/mnt/home``.
    It stays mounted between commands, and after a reboot is mounted again
    on first use."""

    def __init__(self, state: str | os.PathLike | None = None):
        self.state = Path(state) if state is not None else state_dir()
        self.image = self.state / "btrfs.img"
        self.mountpoint = self.state / "mnt"
        self.home = self.mountpoint / "home"

    @property
    def mounted(self) -> bool:
        return is_mountpoint(str(self.mountpoint))

    def ensure(self, size: int | None = None) -> Path:
        """Make, or mount again, the image; returns the home directory."""
        if not self.mounted:
            self.state.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self.image.exists():
                fs = Loopback.attach(self.image, self.mountpoint)
            else:
                size = size or int(os.environ.get("BTRFSX_LOOPBACK_SIZE", EMBEDDED_SIZE))
                fs = Loopback.create(self.state, self.mountpoint, size=size, image=self.image)
            # left mounted on purpose: the next command uses it
            fs._owns_image = fs._owns_mountpoint = False
        return self.home

    def status(self) -> dict:
        st = self.image.stat() if self.image.exists() else None
        return {
            "state_dir": str(self.state),
            "image": str(self.image),
            "exists": st is not None,
            "size": st.st_size if st else None,
            "allocated": st.st_blocks * 512 if st else None,
            "mounted": self.mounted,
            "mountpoint": str(self.mountpoint),
            "device": mount_source(str(self.mountpoint)) if self.mounted else None,
            "home": str(self.home),
        }

    def destroy(self) -> bool:
        """Unmount it, detach its loop device and delete the image; False when
        there was nothing to destroy."""
        if not self.image.exists() and not self.mounted:
            return False
        device = mount_source(str(self.mountpoint)) if self.mounted else None
        fs = Loopback(self.image, device, self.mountpoint, owns_image=True, owns_mountpoint=True)
        if device is None:
            # not mounted: detach any loop device still backed by the image
            for dev in _attached():
                if (dev.get("back-file") or "").removesuffix(" (deleted)") == str(self.image):
                    subprocess.run(["losetup", "-d", dev["name"]], capture_output=True)
        fs.close()
        return True
