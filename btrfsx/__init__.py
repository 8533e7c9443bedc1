"""btrfsx: a btrfs layer store with a compiled ioctl layer."""

__version__ = "0.1.0"
