/* LD_PRELOAD shim for the server tests (tests/conftest.py builds it): file mappings are made without MAP_POPULATE.

   llama.cpp maps a model with MAP_POPULATE (src/llama-mmap.cpp), which faults in the whole file at once. The
   shape-only GGUFs of the tests are sparse files of up to 42 GiB whose data nobody reads (--no-repack, --no-warmup:
   the tests compare the buffers llama-server prints), so populating them only fills RAM with zero pages: 17.7 GB of
   resident memory for one server on a 24 GB machine. Without the flag the pages are faulted in when touched, as
   with any mapping; nothing else changes (same mapping, same buffers, same log). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/mman.h>
#include <sys/types.h>

typedef void *(*mmap_fn)(void *, size_t, int, int, int, off_t);

static void *call(const char *name, void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    mmap_fn real = (mmap_fn) dlsym(RTLD_NEXT, name);
    if (fd >= 0) {
        flags &= ~MAP_POPULATE;
    }
    return real(addr, len, prot, flags, fd, off);
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    return call("mmap", addr, len, prot, flags, fd, off);
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    return call("mmap64", addr, len, prot, flags, fd, off);
}
