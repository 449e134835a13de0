/* Force-included (CXXFLAGS="-include bench/amx_tilecfg_fix.h") into a llama-cpp-python build
 * to try ggml's AMX kernels on GCC 12: see bench/README.md, "AMX".
 *
 * GCC 12's _tile_loadconfig (amxtileintrin.h) hands ldtilecfg its 64-byte operand as
 * `*(const void **)config`, 8 bytes, so the compiler deletes the stores that fill in the
 * rest of ggml's stack tile configuration as dead; ldtilecfg then reads stale stack bytes and
 * faults (#GP, SIGSEGV). Here the operand is all 64 bytes. Not used by mdream's own build. */
#if defined(__AMX_TILE__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
typedef struct {
    unsigned char bytes[64];
} mdream_tilecfg_t;
#define _tile_loadconfig(cfg) \
    __asm__ volatile("ldtilecfg\t%0" : : "m"(*(const mdream_tilecfg_t *)(cfg)))
#endif
