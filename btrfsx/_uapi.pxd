# Kernel declarations only: the btrfs UAPI as btrfsx uses it.
# Field and constant names are the kernel's.  The tree items (btrfs_*_item)
# are packed little-endian on disk; read them through the le*toh helpers.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t

cdef extern from "<endian.h>" nogil:
    uint16_t le16toh(uint16_t)
    uint32_t le32toh(uint32_t)
    uint64_t le64toh(uint64_t)

cdef extern from "btrfsx_compat.h" nogil:
    enum:
        BTRFS_SUPER_MAGIC
        BTRFS_IOCTL_MAGIC
        BTRFS_VOL_NAME_MAX
        BTRFS_PATH_NAME_MAX
        BTRFS_SUBVOL_NAME_MAX
        BTRFS_INO_LOOKUP_PATH_MAX
        BTRFS_FSID_SIZE
        BTRFS_UUID_SIZE
        BTRFS_MAX_ROOTREF_BUFFER_NUM

    # flags of btrfs_ioctl_vol_args_v2 and SUBVOL_GETFLAGS/SETFLAGS
    enum:
        BTRFS_SUBVOL_RDONLY
        BTRFS_SUBVOL_QGROUP_INHERIT
        BTRFS_SUBVOL_SPEC_BY_ID

    enum:
        BTRFS_QGROUP_LIMIT_MAX_RFER
        BTRFS_QGROUP_LIMIT_MAX_EXCL
        BTRFS_QGROUP_INHERIT_SET_LIMITS
        BTRFS_QGROUP_LEVEL_SHIFT

    enum:
        BTRFS_QUOTA_CTL_ENABLE
        BTRFS_QUOTA_CTL_DISABLE
        BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA

    enum:
        BTRFS_QGROUP_STATUS_FLAG_ON
        BTRFS_QGROUP_STATUS_FLAG_RESCAN
        BTRFS_QGROUP_STATUS_FLAG_INCONSISTENT
        BTRFS_QGROUP_STATUS_FLAG_SIMPLE_MODE

    enum:
        BTRFS_SUBVOL_SYNC_WAIT_FOR_ONE
        BTRFS_SUBVOL_SYNC_WAIT_FOR_QUEUED
        BTRFS_SUBVOL_SYNC_COUNT
        BTRFS_SUBVOL_SYNC_PEEK_FIRST
        BTRFS_SUBVOL_SYNC_PEEK_LAST

    # tree ids and object ids
    enum:
        BTRFS_ROOT_TREE_OBJECTID
        BTRFS_FS_TREE_OBJECTID
        BTRFS_QUOTA_TREE_OBJECTID
        BTRFS_UUID_TREE_OBJECTID
        BTRFS_FIRST_FREE_OBJECTID
        BTRFS_LAST_FREE_OBJECTID

    # item key types
    enum:
        BTRFS_INODE_ITEM_KEY
        BTRFS_INODE_REF_KEY
        BTRFS_INODE_EXTREF_KEY
        BTRFS_XATTR_ITEM_KEY
        BTRFS_DIR_ITEM_KEY
        BTRFS_DIR_INDEX_KEY
        BTRFS_EXTENT_DATA_KEY
        BTRFS_ROOT_ITEM_KEY
        BTRFS_ROOT_BACKREF_KEY
        BTRFS_ROOT_REF_KEY
        BTRFS_QGROUP_STATUS_KEY
        BTRFS_QGROUP_INFO_KEY
        BTRFS_QGROUP_LIMIT_KEY
        BTRFS_QGROUP_RELATION_KEY
        BTRFS_UUID_KEY_SUBVOL
        BTRFS_UUID_KEY_RECEIVED_SUBVOL

    enum:
        BTRFS_ROOT_SUBVOL_RDONLY

    unsigned long BTRFS_IOC_SUBVOL_CREATE
    unsigned long BTRFS_IOC_SUBVOL_CREATE_V2
    unsigned long BTRFS_IOC_SNAP_CREATE_V2
    unsigned long BTRFS_IOC_SNAP_DESTROY
    unsigned long BTRFS_IOC_SNAP_DESTROY_V2
    unsigned long BTRFS_IOC_INO_LOOKUP
    unsigned long BTRFS_IOC_GET_SUBVOL_INFO
    unsigned long BTRFS_IOC_GET_SUBVOL_ROOTREF
    unsigned long BTRFS_IOC_SUBVOL_GETFLAGS
    unsigned long BTRFS_IOC_SUBVOL_SETFLAGS
    unsigned long BTRFS_IOC_TREE_SEARCH_V2
    unsigned long BTRFS_IOC_QUOTA_CTL
    unsigned long BTRFS_IOC_QUOTA_RESCAN
    unsigned long BTRFS_IOC_QUOTA_RESCAN_STATUS
    unsigned long BTRFS_IOC_QUOTA_RESCAN_WAIT
    unsigned long BTRFS_IOC_QGROUP_CREATE
    unsigned long BTRFS_IOC_QGROUP_LIMIT
    unsigned long BTRFS_IOC_SYNC
    unsigned long BTRFS_IOC_START_SYNC
    unsigned long BTRFS_IOC_WAIT_SYNC
    unsigned long BTRFS_IOC_FS_INFO
    unsigned long BTRFS_IOC_SUBVOL_SYNC_WAIT
    unsigned long BTRFS_IOC_SEND

    # flags of btrfs_ioctl_send_args (VERSION and COMPRESSED: kernel 5.19)
    enum:
        BTRFS_SEND_FLAG_NO_FILE_DATA
        BTRFS_SEND_FLAG_OMIT_STREAM_HEADER
        BTRFS_SEND_FLAG_OMIT_END_CMD
        BTRFS_SEND_FLAG_VERSION
        BTRFS_SEND_FLAG_COMPRESSED

    struct btrfs_ioctl_send_args:
        int64_t send_fd
        uint64_t clone_sources_count
        uint64_t *clone_sources
        uint64_t parent_root
        uint64_t flags
        uint32_t version

    struct btrfs_ioctl_vol_args:
        int64_t fd
        char name[1]

    struct btrfs_qgroup_limit:
        uint64_t flags
        uint64_t max_rfer
        uint64_t max_excl
        uint64_t rsv_rfer
        uint64_t rsv_excl

    struct btrfs_qgroup_inherit:
        uint64_t flags
        uint64_t num_qgroups
        uint64_t num_ref_copies
        uint64_t num_excl_copies
        btrfs_qgroup_limit lim
        uint64_t qgroups[0]

    # The kernel's struct has anonymous unions; C resolves these names
    # through them, so they are declared here as plain members.
    struct btrfs_ioctl_vol_args_v2:
        int64_t fd
        uint64_t transid
        uint64_t flags
        uint64_t size
        btrfs_qgroup_inherit *qgroup_inherit
        char name[1]
        uint64_t subvolid

    struct btrfs_ioctl_ino_lookup_args:
        uint64_t treeid
        uint64_t objectid
        char name[1]

    struct btrfs_ioctl_timespec:
        uint64_t sec
        uint32_t nsec

    struct btrfs_ioctl_get_subvol_info_args:
        uint64_t treeid
        char name[1]
        uint64_t parent_id
        uint64_t dirid
        uint64_t generation
        uint64_t flags
        uint8_t uuid[16]
        uint8_t parent_uuid[16]
        uint8_t received_uuid[16]
        uint64_t ctransid
        uint64_t otransid
        uint64_t stransid
        uint64_t rtransid
        btrfs_ioctl_timespec ctime
        btrfs_ioctl_timespec otime
        btrfs_ioctl_timespec stime
        btrfs_ioctl_timespec rtime

    # An anonymous struct in the kernel header; only its members are named.
    ctypedef struct _rootref_entry:
        uint64_t treeid
        uint64_t dirid

    struct btrfs_ioctl_get_subvol_rootref_args:
        uint64_t min_treeid
        _rootref_entry rootref[1]
        uint8_t num_items

    struct btrfs_ioctl_search_key:
        uint64_t tree_id
        uint64_t min_objectid
        uint64_t max_objectid
        uint64_t min_offset
        uint64_t max_offset
        uint64_t min_transid
        uint64_t max_transid
        uint32_t min_type
        uint32_t max_type
        uint32_t nr_items

    struct btrfs_ioctl_search_header:
        uint64_t transid
        uint64_t objectid
        uint64_t offset
        uint32_t type
        uint32_t len

    struct btrfs_ioctl_search_args_v2:
        btrfs_ioctl_search_key key
        uint64_t buf_size
        uint8_t buf[0]

    struct btrfs_ioctl_quota_ctl_args:
        uint64_t cmd
        uint64_t status

    struct btrfs_ioctl_quota_rescan_args:
        uint64_t flags
        uint64_t progress

    struct btrfs_ioctl_qgroup_create_args:
        uint64_t create
        uint64_t qgroupid

    struct btrfs_ioctl_qgroup_limit_args:
        uint64_t qgroupid
        btrfs_qgroup_limit lim

    struct btrfs_ioctl_fs_info_args:
        uint64_t max_id
        uint64_t num_devices
        uint8_t fsid[16]
        uint32_t nodesize
        uint32_t sectorsize
        uint32_t clone_alignment
        uint16_t csum_type
        uint16_t csum_size
        uint64_t flags
        uint64_t generation
        uint8_t metadata_uuid[16]

    struct btrfs_ioctl_subvol_wait:
        uint64_t subvolid
        uint32_t mode
        uint32_t count

    # On-disk items (packed, little-endian).
    struct btrfs_disk_key:
        uint64_t objectid
        uint8_t type
        uint64_t offset

    struct btrfs_timespec:
        uint64_t sec
        uint32_t nsec

    struct btrfs_inode_item:
        uint64_t generation
        uint64_t transid
        uint64_t size
        uint64_t nbytes
        uint64_t block_group
        uint32_t nlink
        uint32_t uid
        uint32_t gid
        uint32_t mode
        uint64_t rdev
        uint64_t flags
        uint64_t sequence
        btrfs_timespec atime
        btrfs_timespec ctime
        btrfs_timespec mtime
        btrfs_timespec otime

    struct btrfs_inode_ref:
        uint64_t index
        uint16_t name_len

    struct btrfs_inode_extref:
        uint64_t parent_objectid
        uint64_t index
        uint16_t name_len

    # the head every EXTENT_DATA item has; an inline extent's data follows it
    size_t BTRFS_FILE_EXTENT_INLINE_DATA_START

    struct btrfs_file_extent_item:
        uint64_t generation
        uint64_t ram_bytes
        uint8_t compression
        uint8_t encryption
        uint16_t other_encoding
        uint8_t type

    struct btrfs_dir_item:
        btrfs_disk_key location
        uint64_t transid
        uint16_t data_len
        uint16_t name_len
        uint8_t type

    struct btrfs_root_item:
        btrfs_inode_item inode
        uint64_t generation
        uint64_t root_dirid
        uint64_t bytenr
        uint64_t byte_limit
        uint64_t bytes_used
        uint64_t last_snapshot
        uint64_t flags
        uint32_t refs
        uint8_t drop_level
        uint8_t level
        uint64_t generation_v2
        uint8_t uuid[16]
        uint8_t parent_uuid[16]
        uint8_t received_uuid[16]
        uint64_t ctransid
        uint64_t otransid
        uint64_t stransid
        uint64_t rtransid
        btrfs_timespec ctime
        btrfs_timespec otime
        btrfs_timespec stime
        btrfs_timespec rtime

    struct btrfs_root_ref:
        uint64_t dirid
        uint64_t sequence
        uint16_t name_len

    struct btrfs_qgroup_status_item:
        uint64_t version
        uint64_t generation
        uint64_t flags
        uint64_t rescan

    struct btrfs_qgroup_info_item:
        uint64_t generation
        uint64_t rfer
        uint64_t rfer_cmpr
        uint64_t excl
        uint64_t excl_cmpr

    struct btrfs_qgroup_limit_item:
        uint64_t flags
        uint64_t max_rfer
        uint64_t max_excl
        uint64_t rsv_rfer
        uint64_t rsv_excl

    size_t btrfs_legacy_root_item_size()
