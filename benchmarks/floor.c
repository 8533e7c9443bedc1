/*
 * The "C floor": btrfs ioctls in a tight loop with cached directory fds, the
 * least any implementation can spend.  Only <linux/btrfs.h>,
 * <linux/btrfs_tree.h> and libc.  Built by benchmarks/conftest.py with
 * `cc -O2 -pthread`.
 *
 * Output is machine-readable: one sample per line, "<what> <nanoseconds>".
 *
 *   floor create DIR N           N empty subvolumes made then destroyed:
 *                                "create NS" x N, then "destroy NS" x N
 *   floor snapshot SRC DIR N     N snapshots of subvolume SRC into DIR
 *                                ("snapshot NS" x N), destroyed afterwards
 *                                (not timed)
 *   floor remove LAYER...        for each LAYER: open it, INO_LOOKUP its id,
 *                                TREE_SEARCH_V2 its ROOT_REF items recursively,
 *                                SNAP_DESTROY_V2 them by id deepest first, then
 *                                SNAP_DESTROY the layer by name from its parent:
 *                                "remove NS" (all of it), "find NS" (the open,
 *                                lookup and searches), "nested COUNT"
 *   floor chain SRC DIR N        a chain of N snapshots in DIR, the first of
 *                                SRC, each next one of the one before:
 *                                "chain NS" x N (the snapshot ioctls), then
 *                                "chain_open NS" x N (the open of each new
 *                                link, kept as the next source: not part of
 *                                "chain"); destroyed afterwards, newest first
 *                                (not timed)
 *   floor find LAYER N           N times: INO_LOOKUP of LAYER's id, then its
 *                                ROOT_REF items recursively (a cached fd):
 *                                "find NS" x N, then "nested COUNT"
 *   floor stat DIR NAME N        N fstatat(DIR, NAME, AT_SYMLINK_NOFOLLOW)
 *                                with a cached DIR fd: "stat NS" x N
 *   floor snapshots DIR SRC...   one snapshot of each SRC (in order) into DIR,
 *                                as "floor-m<i>": "snapshot NS" x count, all
 *                                destroyed afterwards (not timed)
 *   floor create-sized DIR N BYTES  N times: SUBVOL_CREATE, open the new
 *                                subvolume, QGROUP_LIMIT (max_rfer BYTES) on
 *                                it, close: "create NS" x N (all of it); then
 *                                destroyed: "destroy NS" x N
 *   floor destroy-committed DIR N  N empty subvolumes made (untimed), the
 *                                transaction committed (BTRFS_IOC_SYNC), then
 *                                destroyed: "destroy NS" x N, as a layer
 *                                made earlier is removed (its tree blocks
 *                                no longer those of the running transaction)
 *   floor list FS N              N times: one TREE_SEARCH_V2 pass over the
 *                                root tree's items of subvolumes (ROOT_ITEM,
 *                                ROOT_BACKREF: "subvols COUNT"), then one over
 *                                the quota tree's QGROUP_INFO and QGROUP_LIMIT
 *                                items (none with quotas off): "list NS" x N,
 *                                the pass over the root tree alone "list_root
 *                                NS" x N
 *   floor threads SRC BASE T N   T threads, thread K snapshotting SRC N times
 *                                into BASE/tK (made if missing): "threads NS"
 *                                (wall time from the start barrier to the last
 *                                join); everything destroyed afterwards
 *
 * Exit status 0 on success, 1 on a failed system call (with a message on
 * stderr), 2 on bad usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <linux/btrfs.h>
#include <linux/btrfs_tree.h>

#ifndef BTRFS_IOC_SNAP_DESTROY_V2
#define BTRFS_IOC_SNAP_DESTROY_V2 _IOW(BTRFS_IOCTL_MAGIC, 63, struct btrfs_ioctl_vol_args_v2)
#endif
#ifndef BTRFS_SUBVOL_SPEC_BY_ID
#define BTRFS_SUBVOL_SPEC_BY_ID (1ULL << 4)
#endif

static inline int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what, const char *arg)
{
	fprintf(stderr, "floor: %s %s: %s\n", what, arg ? arg : "", strerror(errno));
	exit(1);
}

static int open_dir(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		die("open", path);
	return fd;
}

static long parse_count(const char *s)
{
	char *end;
	long n = strtol(s, &end, 10);
	if (*s == '\0' || *end != '\0' || n < 0 || n > 10000000) {
		fprintf(stderr, "floor: not a count: %s\n", s);
		exit(2);
	}
	return n;
}

/* `dst` is zeroed and `size` bytes long: copy at most size - 1 of `name` */
static void copy_name(char *dst, size_t size, const char *name)
{
	size_t len = strnlen(name, size - 1);
	memcpy(dst, name, len);
}

static int subvol_create(int dirfd, const char *name)
{
	struct btrfs_ioctl_vol_args args;
	memset(&args, 0, sizeof(args));
	copy_name(args.name, sizeof(args.name), name);
	return ioctl(dirfd, BTRFS_IOC_SUBVOL_CREATE, &args);
}

static int snap_destroy(int dirfd, const char *name)
{
	struct btrfs_ioctl_vol_args args;
	memset(&args, 0, sizeof(args));
	copy_name(args.name, sizeof(args.name), name);
	return ioctl(dirfd, BTRFS_IOC_SNAP_DESTROY, &args);
}

static int snap_create(int srcfd, int dirfd, const char *name)
{
	struct btrfs_ioctl_vol_args_v2 args;
	memset(&args, 0, sizeof(args));
	args.fd = srcfd;
	copy_name(args.name, sizeof(args.name), name);
	return ioctl(dirfd, BTRFS_IOC_SNAP_CREATE_V2, &args);
}

/* ------------------------------------------------------------ the timing scaffolding */

/* One kind of sample: n per-op nanoseconds, reported as "<what> NS" lines. */
struct samples {
	const char *what;
	long n;
	int64_t *ns;
};

static struct samples samples(const char *what, long n)
{
	struct samples s = {what, n, calloc(n ? n : 1, sizeof(int64_t))};
	if (!s.ns)
		die("calloc", NULL);
	return s;
}

/* Print the samples, one a line, and free them. */
static void report(struct samples *s)
{
	for (long i = 0; i < s->n; i++)
		printf("%s %lld\n", s->what, (long long)s->ns[i]);
	free(s->ns);
}

/* What a name loop's operation works on. */
struct target {
	int dirfd, srcfd;              /* the directory of the names; the source of snapshots */
	unsigned long long bytes;      /* create-sized's limit */
};

typedef int (*name_op)(const struct target *t, const char *name);

static int op_create(const struct target *t, const char *name)
{
	return subvol_create(t->dirfd, name);
}

static int op_destroy(const struct target *t, const char *name)
{
	return snap_destroy(t->dirfd, name);
}

static int op_snapshot(const struct target *t, const char *name)
{
	return snap_create(t->srcfd, t->dirfd, name);
}

/* SUBVOL_CREATE, open the new subvolume, QGROUP_LIMIT (max_rfer) on it, close */
static int op_create_sized(const struct target *t, const char *name)
{
	if (subvol_create(t->dirfd, name) < 0)
		return -1;
	int fd = openat(t->dirfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		die("open", name);
	struct btrfs_ioctl_qgroup_limit_args la;
	memset(&la, 0, sizeof(la));
	la.qgroupid = 0; /* the subvolume fd is in */
	la.lim.flags = BTRFS_QGROUP_LIMIT_MAX_RFER;
	la.lim.max_rfer = t->bytes;
	if (ioctl(fd, BTRFS_IOC_QGROUP_LIMIT, &la) < 0)
		die("QGROUP_LIMIT", name);
	close(fd);
	return 0;
}

/* `op` on the names "floor-<tag>0" to "floor-<tag><n-1>" (the last first
 * when `newest_first`), dying with `what` and the name when it fails; with
 * `s`, each call's nanoseconds (the name made beforehand, untimed) into
 * s->ns[i]. */
static void each_name(const struct target *t, const char *tag, long n, int newest_first, name_op op,
		      const char *what, struct samples *s)
{
	char name[64];
	for (long k = 0; k < n; k++) {
		long i = newest_first ? n - 1 - k : k;
		snprintf(name, sizeof(name), "floor-%s%ld", tag, i);
		int64_t t0 = s ? now_ns() : 0;
		if (op(t, name) < 0)
			die(what, name);
		if (s)
			s->ns[i] = now_ns() - t0;
	}
}

/* ------------------------------------------------------------ create, snapshot, sized create, destroy */

/* create N (sized when bytes > 0), then destroy them: both timed */
static int create_then_destroy(const char *dir, long n, const char *tag, name_op create,
			       unsigned long long bytes)
{
	struct target t = {.dirfd = open_dir(dir), .bytes = bytes};
	struct samples tc = samples("create", n), td = samples("destroy", n);
	each_name(&t, tag, n, 0, create, "SUBVOL_CREATE", &tc);
	each_name(&t, tag, n, 0, op_destroy, "SNAP_DESTROY", &td);
	report(&tc);
	report(&td);
	close(t.dirfd);
	return 0;
}

static int cmd_create(const char *dir, long n)
{
	return create_then_destroy(dir, n, "c", op_create, 0);
}

static int cmd_snapshot(const char *src, const char *dir, long n)
{
	struct target t = {.srcfd = open_dir(src), .dirfd = open_dir(dir)};
	struct samples ts = samples("snapshot", n);
	each_name(&t, "s", n, 0, op_snapshot, "SNAP_CREATE_V2", &ts);
	each_name(&t, "s", n, 0, op_destroy, "SNAP_DESTROY", NULL);
	report(&ts);
	close(t.srcfd);
	close(t.dirfd);
	return 0;
}

static int cmd_create_sized(const char *dir, long n, unsigned long long bytes)
{
	return create_then_destroy(dir, n, "q", op_create_sized, bytes);
}

static int cmd_destroy_committed(const char *dir, long n)
{
	struct target t = {.dirfd = open_dir(dir)};
	struct samples td = samples("destroy", n);
	each_name(&t, "d", n, 0, op_create, "SUBVOL_CREATE", NULL);
	if (ioctl(t.dirfd, BTRFS_IOC_SYNC, NULL) < 0)
		die("SYNC", dir);
	each_name(&t, "d", n, 0, op_destroy, "SNAP_DESTROY", &td);
	report(&td);
	close(t.dirfd);
	return 0;
}

/* ------------------------------------------------------------ chain */

static int cmd_chain(const char *src, const char *dir, long n)
{
	struct target t = {.dirfd = open_dir(dir)};
	int prev = open_dir(src);
	char name[64];
	struct samples ts = samples("chain", n), to = samples("chain_open", n);
	for (long i = 0; i < n; i++) {
		snprintf(name, sizeof(name), "floor-k%ld", i);
		int64_t t0 = now_ns();
		if (snap_create(prev, t.dirfd, name) < 0)
			die("SNAP_CREATE_V2", name);
		ts.ns[i] = now_ns() - t0;
		close(prev);
		t0 = now_ns();
		prev = openat(t.dirfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (prev < 0)
			die("open", name);
		to.ns[i] = now_ns() - t0;
	}
	close(prev);
	each_name(&t, "k", n, 1, op_destroy, "SNAP_DESTROY", NULL);
	report(&ts);
	report(&to);
	close(t.dirfd);
	return 0;
}

/* ------------------------------------------------------------ snapshots */

static int cmd_snapshots(const char *dir, int nsrc, char **srcs)
{
	struct target t = {.dirfd = open_dir(dir)};
	char name[64];
	struct samples ts = samples("snapshot", nsrc);
	for (int i = 0; i < nsrc; i++) {
		int srcfd = open_dir(srcs[i]); /* the driver opens its parent too, untimed here */
		snprintf(name, sizeof(name), "floor-m%d", i);
		int64_t t0 = now_ns();
		if (snap_create(srcfd, t.dirfd, name) < 0)
			die("SNAP_CREATE_V2", name);
		ts.ns[i] = now_ns() - t0;
		close(srcfd);
	}
	each_name(&t, "m", nsrc, 0, op_destroy, "SNAP_DESTROY", NULL);
	report(&ts);
	close(t.dirfd);
	return 0;
}

/* ------------------------------------------------------------ list */

/* One pass of TREE_SEARCH_V2 over [min, max] of tree `tree`, counting the
 * items of type t1 or t2 (64 KiB buffer, key advanced with carry); returns
 * the count, or -1 when the tree does not exist (quotas off). */
static long search_pass(int fd, uint64_t tree, uint64_t min_obj, uint64_t max_obj, uint8_t min_type,
			uint8_t max_type, uint8_t t1, uint8_t t2)
{
	static union {
		struct btrfs_ioctl_search_args_v2 args;
		char bytes[sizeof(struct btrfs_ioctl_search_args_v2) + 65536];
	} s;
	struct btrfs_ioctl_search_key *sk = &s.args.key;
	uint64_t obj = min_obj, off = 0;
	uint32_t type = min_type;
	long count = 0;
	for (;;) {
		memset(&s.args, 0, sizeof(s.args));
		sk->tree_id = tree;
		sk->min_objectid = obj;
		sk->max_objectid = max_obj;
		sk->min_type = type;
		sk->max_type = max_type;
		sk->min_offset = off;
		sk->max_offset = (uint64_t)-1;
		sk->max_transid = (uint64_t)-1;
		sk->nr_items = (uint32_t)-1;
		s.args.buf_size = sizeof(s.bytes) - sizeof(s.args);
		if (ioctl(fd, BTRFS_IOC_TREE_SEARCH_V2, &s.args) < 0) {
			if (errno == ENOENT)
				return -1;
			die("TREE_SEARCH_V2", NULL);
		}
		if (sk->nr_items == 0)
			break;
		char *p = (char *)s.args.buf;
		struct btrfs_ioctl_search_header *h = NULL;
		for (uint32_t i = 0; i < sk->nr_items; i++) {
			h = (struct btrfs_ioctl_search_header *)p;
			if (h->type == t1 || h->type == t2)
				count++;
			p += sizeof(*h) + h->len;
		}
		obj = h->objectid;
		type = h->type;
		off = h->offset;
		if (off < (uint64_t)-1) {
			off++;
		} else {
			off = 0;
			if (type < 255) {
				type++;
			} else {
				type = 0;
				if (obj == (uint64_t)-1)
					break;
				obj++;
			}
		}
		if (obj > max_obj || (obj == max_obj && type > max_type))
			break;
	}
	return count;
}

static int cmd_list(const char *path, long n)
{
	int fd = open_dir(path);
	struct samples tl = samples("list", n), tr = samples("list_root", n);
	long subvols = 0;
	for (long i = 0; i < n; i++) {
		int64_t t0 = now_ns();
		subvols = search_pass(fd, BTRFS_ROOT_TREE_OBJECTID, BTRFS_FIRST_FREE_OBJECTID, BTRFS_LAST_FREE_OBJECTID,
				      BTRFS_ROOT_ITEM_KEY, BTRFS_ROOT_BACKREF_KEY, BTRFS_ROOT_BACKREF_KEY, BTRFS_ROOT_BACKREF_KEY);
		tr.ns[i] = now_ns() - t0;
		search_pass(fd, BTRFS_QUOTA_TREE_OBJECTID, 0, 0, BTRFS_QGROUP_INFO_KEY, BTRFS_QGROUP_LIMIT_KEY,
			    BTRFS_QGROUP_INFO_KEY, BTRFS_QGROUP_LIMIT_KEY);
		tl.ns[i] = now_ns() - t0;
	}
	report(&tl);
	report(&tr);
	printf("subvols %ld\n", subvols);
	close(fd);
	return 0;
}

/* ------------------------------------------------------------ stat */

static int cmd_stat(const char *dir, const char *name, long n)
{
	int dirfd = open_dir(dir);
	struct stat st;
	struct samples ts = samples("stat", n);
	for (long i = 0; i < n; i++) {
		int64_t t0 = now_ns();
		if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			die("fstatat", name);
		ts.ns[i] = now_ns() - t0;
	}
	report(&ts);
	close(dirfd);
	return 0;
}

/* ------------------------------------------------------------ remove */

struct idlist {
	uint64_t *ids;
	size_t len, cap;
};

static void push(struct idlist *l, uint64_t id)
{
	if (l->len == l->cap) {
		l->cap = l->cap ? 2 * l->cap : 16;
		l->ids = realloc(l->ids, l->cap * sizeof(*l->ids));
		if (!l->ids)
			die("realloc", NULL);
	}
	l->ids[l->len++] = id;
}

/* Append the subvolumes directly below `parent` (ROOT_REF items of the root
 * tree keyed (parent, ROOT_REF, child)), then recurse into each: parents
 * always come before their children in `out`. */
static void find_nested(int fd, uint64_t parent, struct idlist *out)
{
	/* key + buf_size, then a 16 KiB item buffer */
	static __thread union {
		struct btrfs_ioctl_search_args_v2 args;
		char bytes[sizeof(struct btrfs_ioctl_search_args_v2) + 16384];
	} s;
	struct btrfs_ioctl_search_key *sk = &s.args.key;
	uint64_t min_offset = 0;
	size_t first = out->len;

	for (;;) {
		memset(&s.args, 0, sizeof(s.args));
		sk->tree_id = BTRFS_ROOT_TREE_OBJECTID;
		sk->min_objectid = sk->max_objectid = parent;
		sk->min_type = sk->max_type = BTRFS_ROOT_REF_KEY;
		sk->min_offset = min_offset;
		sk->max_offset = (uint64_t)-1;
		sk->min_transid = 0;
		sk->max_transid = (uint64_t)-1;
		sk->nr_items = 4096;
		s.args.buf_size = sizeof(s.bytes) - sizeof(s.args);
		if (ioctl(fd, BTRFS_IOC_TREE_SEARCH_V2, &s.args) < 0)
			die("TREE_SEARCH_V2", NULL);
		if (sk->nr_items == 0)
			break;
		char *p = (char *)s.args.buf;
		uint64_t last = 0;
		for (uint32_t i = 0; i < sk->nr_items; i++) {
			struct btrfs_ioctl_search_header *h = (struct btrfs_ioctl_search_header *)p;
			if (h->objectid == parent && h->type == BTRFS_ROOT_REF_KEY)
				push(out, h->offset);
			last = h->offset;
			p += sizeof(*h) + h->len;
		}
		if (last == (uint64_t)-1)
			break;
		min_offset = last + 1;
	}
	size_t end = out->len;
	for (size_t i = first; i < end; i++)
		find_nested(fd, out->ids[i], out);
}

/* The id of the subvolume `fd` is in (INO_LOOKUP of its root directory). */
static uint64_t subvol_id(int fd, const char *layer)
{
	struct btrfs_ioctl_ino_lookup_args look;
	memset(&look, 0, sizeof(look));
	look.objectid = BTRFS_FIRST_FREE_OBJECTID;
	if (ioctl(fd, BTRFS_IOC_INO_LOOKUP, &look) < 0)
		die("INO_LOOKUP", layer);
	return look.treeid;
}

static int remove_one(const char *layer)
{
	char parent[PATH_MAX], name[BTRFS_PATH_NAME_MAX + 1];
	const char *slash = strrchr(layer, '/');
	if (!slash || !slash[1] || strlen(slash + 1) > BTRFS_PATH_NAME_MAX ||
	    (size_t)(slash - layer) >= sizeof(parent)) {
		fprintf(stderr, "floor: remove needs an absolute path to a layer: %s\n", layer);
		exit(2);
	}
	memcpy(parent, layer, slash - layer);
	parent[slash == layer ? 1 : slash - layer] = '\0';
	strcpy(name, slash + 1);
	int pfd = open_dir(parent); /* cached: the store keeps its subvolumes fd */
	struct idlist nested = {0};

	int64_t t0 = now_ns();
	int fd = openat(pfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		die("open", layer);
	find_nested(fd, subvol_id(fd, layer), &nested);
	int64_t t1 = now_ns();
	for (size_t i = nested.len; i-- > 0;) {
		struct btrfs_ioctl_vol_args_v2 args;
		memset(&args, 0, sizeof(args));
		args.flags = BTRFS_SUBVOL_SPEC_BY_ID;
		args.subvolid = nested.ids[i];
		if (ioctl(fd, BTRFS_IOC_SNAP_DESTROY_V2, &args) < 0)
			die("SNAP_DESTROY_V2", layer);
	}
	close(fd);
	if (snap_destroy(pfd, name) < 0)
		die("SNAP_DESTROY", layer);
	int64_t t2 = now_ns();

	printf("remove %lld\nfind %lld\nnested %zu\n", (long long)(t2 - t0), (long long)(t1 - t0), nested.len);
	free(nested.ids);
	close(pfd);
	return 0;
}

static int cmd_find(const char *layer, long n)
{
	int fd = open_dir(layer);
	struct samples ts = samples("find", n);
	size_t count = 0;
	for (long i = 0; i < n; i++) {
		struct idlist nested = {0};
		int64_t t0 = now_ns();
		find_nested(fd, subvol_id(fd, layer), &nested);
		ts.ns[i] = now_ns() - t0;
		count = nested.len;
		free(nested.ids);
	}
	report(&ts);
	printf("nested %zu\n", count);
	close(fd);
	return 0;
}

/* ------------------------------------------------------------ threads */

struct worker {
	pthread_t thread;
	int srcfd, dirfd;
	long n, k;
	pthread_barrier_t *start;
	int err;
};

static void *work(void *arg)
{
	struct worker *w = arg;
	char name[64];
	pthread_barrier_wait(w->start);
	for (long i = 0; i < w->n; i++) {
		snprintf(name, sizeof(name), "floor-t%ld-%ld", w->k, i);
		if (snap_create(w->srcfd, w->dirfd, name) < 0) {
			w->err = errno;
			break;
		}
	}
	return NULL;
}

static int cmd_threads(const char *src, const char *base, long t, long n)
{
	if (t < 1 || t > 256) {
		fprintf(stderr, "floor: thread count out of range: %ld\n", t);
		exit(2);
	}
	int basefd = open_dir(base);
	struct worker *w = calloc(t, sizeof(*w));
	pthread_barrier_t start;
	pthread_barrier_init(&start, NULL, (unsigned)t + 1);
	char dname[64], name[64];
	for (long k = 0; k < t; k++) {
		snprintf(dname, sizeof(dname), "t%ld", k);
		if (mkdirat(basefd, dname, 0700) < 0 && errno != EEXIST)
			die("mkdir", dname);
		w[k].dirfd = openat(basefd, dname, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (w[k].dirfd < 0)
			die("open", dname);
		w[k].srcfd = open_dir(src); /* one each, as separate callers would have */
		w[k].n = n;
		w[k].k = k;
		w[k].start = &start;
		if ((errno = pthread_create(&w[k].thread, NULL, work, &w[k])) != 0)
			die("pthread_create", NULL);
	}
	pthread_barrier_wait(&start);
	int64_t t0 = now_ns();
	for (long k = 0; k < t; k++)
		pthread_join(w[k].thread, NULL);
	int64_t wall = now_ns() - t0;
	int failed = 0;
	for (long k = 0; k < t; k++) {
		if (w[k].err) {
			errno = w[k].err;
			fprintf(stderr, "floor: SNAP_CREATE_V2 in thread %ld: %s\n", k, strerror(errno));
			failed = 1;
		}
		for (long i = 0; i < n; i++) {
			snprintf(name, sizeof(name), "floor-t%ld-%ld", k, i);
			if (snap_destroy(w[k].dirfd, name) < 0 && errno != ENOENT)
				die("SNAP_DESTROY", name);
		}
		close(w[k].dirfd);
		close(w[k].srcfd);
		snprintf(dname, sizeof(dname), "t%ld", k);
		unlinkat(basefd, dname, AT_REMOVEDIR); /* best effort */
	}
	pthread_barrier_destroy(&start);
	free(w);
	close(basefd);
	if (failed)
		return 1;
	printf("threads %lld\n", (long long)wall);
	return 0;
}

static void usage(void)
{
	fputs("usage: floor create DIR N\n"
	      "       floor snapshot SRC DIR N\n"
	      "       floor chain SRC DIR N\n"
	      "       floor find LAYER N\n"
	      "       floor stat DIR NAME N\n"
	      "       floor remove LAYERPATH...\n"
	      "       floor snapshots DIR SRC...\n"
	      "       floor create-sized DIR N BYTES\n"
	      "       floor destroy-committed DIR N\n"
	      "       floor list FS N\n"
	      "       floor threads SRC BASEDIR T N\n", stderr);
	exit(2);
}

int main(int argc, char **argv)
{
	if (argc < 2)
		usage();
	const char *cmd = argv[1];
	if (!strcmp(cmd, "create") && argc == 4)
		return cmd_create(argv[2], parse_count(argv[3]));
	if (!strcmp(cmd, "snapshot") && argc == 5)
		return cmd_snapshot(argv[2], argv[3], parse_count(argv[4]));
	if (!strcmp(cmd, "chain") && argc == 5)
		return cmd_chain(argv[2], argv[3], parse_count(argv[4]));
	if (!strcmp(cmd, "find") && argc == 4)
		return cmd_find(argv[2], parse_count(argv[3]));
	if (!strcmp(cmd, "stat") && argc == 5)
		return cmd_stat(argv[2], argv[3], parse_count(argv[4]));
	if (!strcmp(cmd, "remove") && argc >= 3) {
		for (int i = 2; i < argc; i++)
			remove_one(argv[i]);
		return 0;
	}
	if (!strcmp(cmd, "snapshots") && argc >= 3)
		return cmd_snapshots(argv[2], argc - 3, argv + 3);
	if (!strcmp(cmd, "create-sized") && argc == 5)
		return cmd_create_sized(argv[2], parse_count(argv[3]), strtoull(argv[4], NULL, 10));
	if (!strcmp(cmd, "destroy-committed") && argc == 4)
		return cmd_destroy_committed(argv[2], parse_count(argv[3]));
	if (!strcmp(cmd, "list") && argc == 4)
		return cmd_list(argv[2], parse_count(argv[3]));
	if (!strcmp(cmd, "threads") && argc == 6)
		return cmd_threads(argv[2], argv[3], parse_count(argv[4]), parse_count(argv[5]));
	usage();
	return 2;
}
