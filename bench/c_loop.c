/* The bench's baseline: a tight C loop over libsodium's crypto_sign_verify_detached.
 *
 * It dlopen()s the very shared object the engine uses (PyNaCl's nacl/_sodium.abi3.so), so the ratio
 * "verifier / C loop" measures only what the verifier adds around the same function: parsing, person key,
 * cache, threads, Python. Built and run by bench/verify_bench.py; not part of the package.
 *
 * That object is a CPython extension module (libsodium is linked into it), so it refers to a few libpython
 * symbols: the optional last argument names libpython, loaded first with RTLD_GLOBAL to satisfy them. No
 * Python code runs; the loop is pure C.
 *
 * usage: c_loop <path to _sodium.abi3.so> <sig hex> <msg hex> <pk hex> <iterations> [libpython.so]
 * prints: <verified count> <wall seconds> <CPU seconds>
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int (*verify_fn)(const unsigned char *, const unsigned char *, unsigned long long, const unsigned char *);
typedef int (*init_fn)(void);

static size_t unhex(const char *hex, unsigned char *out, size_t cap) {
    size_t n = strlen(hex) / 2;
    if (n > cap) return (size_t)-1;
    for (size_t i = 0; i < n; i++) sscanf(hex + 2 * i, "%2hhx", &out[i]);
    return n;
}

int main(int argc, char **argv) {
    if (argc != 6 && argc != 7) {
        fprintf(stderr, "usage: %s sodium.so sig_hex msg_hex pk_hex iterations [libpython.so]\n", argv[0]);
        return 2;
    }
    if (argc == 7 && !dlopen(argv[6], RTLD_NOW | RTLD_GLOBAL)) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 1;
    }
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 1;
    }
    init_fn sodium_init = (init_fn)dlsym(lib, "sodium_init");
    verify_fn verify = (verify_fn)dlsym(lib, "crypto_sign_verify_detached");
    if (!sodium_init || !verify || sodium_init() < 0) {
        fprintf(stderr, "libsodium symbols missing or init failed\n");
        return 1;
    }
    unsigned char sig[64], pk[32], msg[1024];
    size_t mlen = unhex(argv[3], msg, sizeof msg);
    if (unhex(argv[2], sig, sizeof sig) != 64 || unhex(argv[4], pk, sizeof pk) != 32 || mlen == (size_t)-1) {
        fprintf(stderr, "bad hex arguments\n");
        return 2;
    }
    long iterations = atol(argv[5]), ok = 0;
    struct timespec t0, t1, c0, c1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
    for (long i = 0; i < iterations; i++) ok += verify(sig, msg, mlen, pk) == 0;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%ld %.9f %.9f\n", ok, (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9,
           (double)(c1.tv_sec - c0.tv_sec) + (double)(c1.tv_nsec - c0.tv_nsec) / 1e9);
    return 0;
}
