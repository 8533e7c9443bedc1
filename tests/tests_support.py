"""Helpers shared by the test modules."""

import subprocess


def attached_images() -> set[str]:
    """The backing files of every attached loop device."""
    out = subprocess.run(["losetup", "--list", "--noheadings", "--output", "BACK-FILE"],
                         capture_output=True, text=True).stdout
    return {line.strip().removesuffix(" (deleted)") for line in out.splitlines() if line.strip()}


def mounted_targets() -> set[str]:
    out = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True).stdout
    return set(out.split())
