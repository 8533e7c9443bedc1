/*
 * The kernel's btrfs UAPI, plus the few definitions that the installed
 * headers may predate.  This is the only place btrfsx defines a kernel
 * constant itself; everything else comes from <linux/btrfs.h> and
 * <linux/btrfs_tree.h> as installed (Debian 12 ships the 6.1 headers).
 */
#ifndef BTRFSX_COMPAT_H
#define BTRFSX_COMPAT_H

#include <linux/magic.h>
#include <linux/btrfs.h>
#include <linux/btrfs_tree.h>

/* Simple quotas: kernel 6.7 (commit "btrfs: add new quota mode for simple quotas"). */
#ifndef BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA
#define BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA 4
#endif
#ifndef BTRFS_QGROUP_STATUS_FLAG_SIMPLE_MODE
#define BTRFS_QGROUP_STATUS_FLAG_SIMPLE_MODE (1ULL << 3)
#endif

/* Waiting for the cleaner to drop deleted subvolumes: kernel 6.13. */
#ifndef BTRFS_SUBVOL_SYNC_WAIT_FOR_ONE
struct btrfs_ioctl_subvol_wait {
	__u64 subvolid;
	__u32 mode;
	__u32 count;
};
#define BTRFS_SUBVOL_SYNC_WAIT_FOR_ONE    0
#define BTRFS_SUBVOL_SYNC_WAIT_FOR_QUEUED 1
#define BTRFS_SUBVOL_SYNC_COUNT           2
#define BTRFS_SUBVOL_SYNC_PEEK_FIRST      3
#define BTRFS_SUBVOL_SYNC_PEEK_LAST       4
#define BTRFS_IOC_SUBVOL_SYNC_WAIT _IOW(BTRFS_IOCTL_MAGIC, 65, struct btrfs_ioctl_subvol_wait)
#endif

/* The kernel's own headers define this in fs/btrfs/accessors.h, not in UAPI:
 * every EXTENT_DATA item is at least this long; an inline extent's data
 * follows it. */
#ifndef BTRFS_FILE_EXTENT_INLINE_DATA_START
#include <stddef.h>
#define BTRFS_FILE_EXTENT_INLINE_DATA_START (offsetof(struct btrfs_file_extent_item, disk_bytenr))
#endif

#endif
