/* LD_PRELOAD shim for the server tests (tests/conftest.py builds it): the holes of a sparse file mapped read-only are
   mapped as anonymous zero pages, and the mapping is made without MAP_POPULATE.

   The shape-only GGUFs of the tests are sparse files of up to 42 GiB: a real header, tensor data that was never
   written. llama.cpp maps a model with MAP_POPULATE (src/llama-mmap.cpp), and llama-server decodes two tokens while
   it loads (common_context_can_seq_rm), which reads every weight: each page of a hole then becomes a zero-filled page
   of the page cache mapped into the server, 22 GB of resident memory for one server on this 24 GB machine. A hole
   reads as zeros either way; mapped as private anonymous memory that is only read, it is the kernel's one shared
   zero page. The server sees the same bytes, allocates the same buffers and prints the same log. Files without
   holes (the real Gemma) are mapped as before, without MAP_POPULATE (pages are faulted in when touched). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define MIN_HOLE (1L << 20) /* smaller holes stay file-mapped: few, large overlays (each one splits the mapping) */
#define MAX_OVERLAYS 4096

typedef void *(*mmap_fn)(void *, size_t, int, int, int, off_t);

static void zero_holes(mmap_fn real, char *base, size_t len, int fd, off_t off) {
    off_t end = off + (off_t) len, pos = off;
    long page = sysconf(_SC_PAGESIZE);
    for (int n = 0; n < MAX_OVERLAYS && pos < end; n++) {
        off_t hole = lseek(fd, pos, SEEK_HOLE);
        if (hole < 0 || hole >= end) {
            return;
        }
        off_t data = lseek(fd, hole, SEEK_DATA);
        if (data < 0 || data > end) {
            data = end; /* a hole up to the end of the file (or of the mapping) */
        }
        off_t beg = (hole + page - 1) / page * page, stop = data / page * page;
        if (stop - beg >= MIN_HOLE) {
            real(base + (beg - off), (size_t) (stop - beg), PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        }
        pos = data;
    }
}

static void *call(mmap_fn *real, const char *name, void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    if (*real == NULL) {
        *real = (mmap_fn) dlsym(RTLD_NEXT, name);
    }
    if (fd < 0) { /* anonymous memory (every process of the session has this shim): untouched */
        return (*real)(addr, len, prot, flags, fd, off);
    }
    void *p = (*real)(addr, len, prot, flags & ~MAP_POPULATE, fd, off);
    struct stat st;
    if (p != MAP_FAILED && prot == PROT_READ && !(flags & MAP_FIXED) && fstat(fd, &st) == 0 && S_ISREG(st.st_mode)
        && (off_t) st.st_blocks * 512 < st.st_size) { /* fewer blocks than bytes: a sparse file */
        zero_holes(*real, (char *) p, len, fd, off);
    }
    return p;
}

static mmap_fn real_mmap, real_mmap64;

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    return call(&real_mmap, "mmap", addr, len, prot, flags, fd, off);
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    return call(&real_mmap64, "mmap64", addr, len, prot, flags, fd, off);
}
