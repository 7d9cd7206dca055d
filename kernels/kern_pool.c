/* Max and average pooling, channels last. Every inner loop runs over the contiguous channel
 * axis, so the compiler vectorises it; window bounds are clipped once per output cell instead of
 * testing each tap. The backward passes are gathers: each dx cell is written once, as the sum
 * over the windows that contain it, so dx needs no clearing first and overlapping windows
 * (stride < pool) need no second pass.
 *
 * The loop bodies are compiled once per instruction set (the same scheme as kern_conv.c): the
 * baseline x86-64 target has no vector compare-and-blend, so the argmax loops only vectorise
 * well with AVX2 or AVX-512 enabled (2x faster, measured). */

#include "kernels/kern_pool.h"

#include <string.h>

#include "kernels/err.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define POOL_X86 1
#if defined(__clang__)
#define POOL_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
#else
#define POOL_TARGET_AVX512                                                                         \
    __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,prefer-vector-width=512")))
#endif
#define POOL_TARGET_AVX2 __attribute__((target("avx2,fma")))
#include <immintrin.h>
#else
#define POOL_X86 0
#endif
#define POOL_INLINE static inline __attribute__((always_inline))

static void pool_dim(int64_t in, int64_t p, int64_t s, bool same, int64_t *pad, int64_t *out)
{
    if (same) {
        *out = (in + s - 1) / s;
        int64_t total = (*out - 1) * s + p - in;
        *pad = total > 0 ? total / 2 : 0;
    } else {
        *pad = 0;
        *out = in >= p ? (in - p) / s + 1 : 0;
    }
}

void kern_pool_geom_set(kern_pool_geom *g, bool same)
{
    pool_dim(g->h, g->ph, g->sh, same, &g->pad_top, &g->oh);
    pool_dim(g->w, g->pw, g->sw, same, &g->pad_left, &g->ow);
}

/* Window of output coordinate o clipped to the input: [*lo, *hi). */
POOL_INLINE void pool_window(int64_t o, int64_t s, int64_t p, int64_t pad, int64_t in, int64_t *lo,
                             int64_t *hi)
{
    int64_t a = o * s - pad, e = a + p;
    *lo = a < 0 ? 0 : a;
    *hi = e > in ? in : e;
}

/* The windows containing input coordinate i are outputs [lo, hi]. Callers visit i = 0, 1, 2...
 * in order and the bounds only move forward, so they are advanced incrementally (no division). */
typedef struct pool_span {
    int64_t lo, hi;
} pool_span;

POOL_INLINE void pool_span_advance(pool_span *sp, int64_t i, int64_t s, int64_t p, int64_t pad,
                                   int64_t out)
{
    while (sp->hi + 1 < out && (sp->hi + 1) * s - pad <= i)
        sp->hi++;
    while (sp->lo < out && sp->lo * s - pad + p - 1 < i)
        sp->lo++;
}

POOL_INLINE void pool_zero(float *dst, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        dst[i] = 0.0f;
}

/* For windows that do not overlap (stride >= pool): the window row containing input row i, or -1
 * if i lies in none (a gap between windows, or beyond the last one). */
POOL_INLINE int64_t pool_row_window(int64_t i, int64_t s, int64_t p, int64_t pad, int64_t out)
{
    const int64_t n = i + pad;
    if (n < 0)
        return -1;
    const int64_t o = n / s;
    return o < out && n - o * s < p ? o : -1;
}

/* dst[0, n) = src[0, n); a plain loop (not memcpy) so that it inlines for short rows. */
POOL_INLINE void pool_copy(float *dst, const float *src, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        dst[i] = src[i];
}

/* yo, ao = max and argmax of (yo, ao) and one window cell xs whose channel 0 is at base. The
 * arrays never overlap; saying so spares a run-time alias check per cell. */
POOL_INLINE void pool_max_update(float *restrict yo, int32_t *restrict ao, const float *restrict xs,
                                 int32_t base, int64_t c)
{
    for (int64_t ch = 0; ch < c; ch++) {
        const bool gt = xs[ch] > yo[ch];
        yo[ch] = gt ? xs[ch] : yo[ch];
        ao[ch] = gt ? base + (int32_t)ch : ao[ch];
    }
}

/* Max and argmax over one window (rows [y0, y1) x columns [x0, x1) of sample xb, c channels
 * per cell) into yo[0, c) and ao[0, c). The first cell seeds the max; later cells replace it
 * only when strictly greater, so the first of equal maxima wins (TF's tie rule). */
typedef void pool_max_window_fn(const float *xb, int64_t w, int64_t c, float *yo, int32_t *ao,
                                int64_t y0, int64_t y1, int64_t x0, int64_t x1);

POOL_INLINE void pool_max_window_impl(const float *xb, int64_t w, int64_t c, float *yo, int32_t *ao,
                                      int64_t y0, int64_t y1, int64_t x0, int64_t x1)
{
    const int64_t first = (y0 * w + x0) * c;
    pool_copy(yo, xb + first, c);
    for (int64_t ch = 0; ch < c; ch++)
        ao[ch] = (int32_t)(first + ch);
    for (int64_t iy = y0; iy < y1; iy++)
        for (int64_t ix = iy == y0 ? x0 + 1 : x0; ix < x1; ix++) {
            const int64_t base = (iy * w + ix) * c;
            pool_max_update(yo, ao, xb + base, (int32_t)base, c);
        }
}

/* Asks for the input rows of output row oy (of sample xb) to be fetched into cache. A window
 * row is only w * c floats (3 KB for the CNN's first pool) and the rows are visited in pairs, too
 * short a stream for the hardware prefetcher to catch up: measured 2x slower without this when
 * x comes from DRAM. */
POOL_INLINE void pool_prefetch_rows(const kern_pool_geom *g, const float *xb, int64_t oy)
{
#if defined(__GNUC__) || defined(__clang__)
    if (oy >= g->oh)
        return;
    int64_t y0, y1;
    pool_window(oy, g->sh, g->ph, g->pad_top, g->h, &y0, &y1);
    const char *p = (const char *)(xb + y0 * g->w * g->c);
    const int64_t bytes = (y1 - y0) * g->w * g->c * (int64_t)sizeof(float);
    for (int64_t i = 0; i < bytes; i += 64)
        __builtin_prefetch(p + i, 0, 3);
#else
    (void)g;
    (void)xb;
    (void)oy;
#endif
}

POOL_INLINE void pool_max_fwd_impl(const kern_pool_geom *g, const float *x, float *y,
                                   int32_t *argmax, pool_max_window_fn *window)
{
    const int64_t c = g->c;
    for (int64_t b = 0; b < g->n; b++) {
        const float *xb = x + b * g->h * g->w * c;
        for (int64_t oy = 0; oy < g->oh; oy++) {
            int64_t y0, y1;
            pool_window(oy, g->sh, g->ph, g->pad_top, g->h, &y0, &y1);
            pool_prefetch_rows(g, xb, oy + 1);
            for (int64_t ox = 0; ox < g->ow; ox++) {
                int64_t x0, x1;
                pool_window(ox, g->sw, g->pw, g->pad_left, g->w, &x0, &x1);
                const int64_t o = ((b * g->oh + oy) * g->ow + ox) * c;
                float *yo = y + o;
                if (y0 >= y1 || x0 >= x1) {
                    /* Only a hand-made geom can have a window entirely in the padding. */
                    for (int64_t ch = 0; ch < c; ch++) {
                        yo[ch] = 0.0f;
                        if (argmax)
                            argmax[o + ch] = -1;
                    }
                    continue;
                }
                if (argmax) {
                    window(xb, g->w, c, yo, argmax + o, y0, y1, x0, x1);
                    continue;
                }
                pool_copy(yo, xb + (y0 * g->w + x0) * c, c);
                for (int64_t iy = y0; iy < y1; iy++)
                    for (int64_t ix = iy == y0 ? x0 + 1 : x0; ix < x1; ix++) {
                        const float *xs = xb + (iy * g->w + ix) * c;
                        for (int64_t ch = 0; ch < c; ch++)
                            yo[ch] = xs[ch] > yo[ch] ? xs[ch] : yo[ch];
                    }
            }
        }
    }
}

/* dst[ch] (= or +=) d[ch] where the window's argmax a[ch] is this cell (base + ch), else 0. */
POOL_INLINE void pool_route(float *restrict dst, const float *restrict d, const int32_t *restrict a,
                            int32_t base, int64_t c, bool first)
{
    if (first)
        for (int64_t ch = 0; ch < c; ch++)
            dst[ch] = a[ch] == base + (int32_t)ch ? d[ch] : 0.0f;
    else
        for (int64_t ch = 0; ch < c; ch++)
            dst[ch] += a[ch] == base + (int32_t)ch ? d[ch] : 0.0f;
}

POOL_INLINE void pool_max_bwd_impl(const kern_pool_geom *g, const float *dy, const int32_t *argmax,
                                   float *dx)
{
    const int64_t c = g->c;
    if (g->sh >= g->ph && g->sw >= g->pw) {
        /* Windows do not overlap: walk them and write each of their cells once, with far less
         * bookkeeping per cell than the general gather below. */
        for (int64_t b = 0; b < g->n; b++)
            for (int64_t iy = 0; iy < g->h; iy++) {
                float *drow = dx + (b * g->h + iy) * g->w * c;
                const int64_t oy = pool_row_window(iy, g->sh, g->ph, g->pad_top, g->oh);
                int64_t ix = 0;
                if (oy >= 0)
                    for (int64_t ox = 0; ox < g->ow; ox++) {
                        int64_t x0, x1;
                        pool_window(ox, g->sw, g->pw, g->pad_left, g->w, &x0, &x1);
                        pool_zero(drow + ix * c, (x0 - ix) * c);
                        const int64_t o = ((b * g->oh + oy) * g->ow + ox) * c;
                        for (ix = x0; ix < x1; ix++)
                            pool_route(drow + ix * c, dy + o, argmax + o,
                                       (int32_t)((iy * g->w + ix) * c), c, true);
                    }
                pool_zero(drow + ix * c, (g->w - ix) * c);
            }
        return;
    }
    for (int64_t b = 0; b < g->n; b++) {
        const int64_t ob = b * g->oh * g->ow * c;
        pool_span sy = {0, -1};
        for (int64_t iy = 0; iy < g->h; iy++) {
            pool_span_advance(&sy, iy, g->sh, g->ph, g->pad_top, g->oh);
            pool_span sx = {0, -1};
            for (int64_t ix = 0; ix < g->w; ix++) {
                pool_span_advance(&sx, ix, g->sw, g->pw, g->pad_left, g->ow);
                const int64_t base = (iy * g->w + ix) * c;
                float *dst = dx + b * g->h * g->w * c + base;
                bool first = true;
                for (int64_t oy = sy.lo; oy <= sy.hi; oy++)
                    for (int64_t ox = sx.lo; ox <= sx.hi; ox++) {
                        const int64_t o = ob + (oy * g->ow + ox) * c;
                        pool_route(dst, dy + o, argmax + o, (int32_t)base, c, first);
                        first = false;
                    }
                if (first)
                    memset(dst, 0, sizeof(float) * (size_t)c);
            }
        }
    }
}

POOL_INLINE void pool_avg_fwd_impl(const kern_pool_geom *g, const float *x, float *y)
{
    const int64_t c = g->c;
    for (int64_t b = 0; b < g->n; b++) {
        const float *xb = x + b * g->h * g->w * c;
        for (int64_t oy = 0; oy < g->oh; oy++) {
            int64_t y0, y1;
            pool_window(oy, g->sh, g->ph, g->pad_top, g->h, &y0, &y1);
            pool_prefetch_rows(g, xb, oy + 1);
            for (int64_t ox = 0; ox < g->ow; ox++) {
                int64_t x0, x1;
                pool_window(ox, g->sw, g->pw, g->pad_left, g->w, &x0, &x1);
                float *yo = y + ((b * g->oh + oy) * g->ow + ox) * c;
                if (y0 >= y1 || x0 >= x1) {
                    memset(yo, 0, sizeof(float) * (size_t)c);
                    continue;
                }
                pool_copy(yo, xb + (y0 * g->w + x0) * c, c);
                for (int64_t iy = y0; iy < y1; iy++)
                    for (int64_t ix = iy == y0 ? x0 + 1 : x0; ix < x1; ix++) {
                        const float *xs = xb + (iy * g->w + ix) * c;
                        for (int64_t ch = 0; ch < c; ch++)
                            yo[ch] += xs[ch];
                    }
                /* Divide by the cells inside the input only ("same" padding, like TF). */
                const float inv = 1.0f / (float)((y1 - y0) * (x1 - x0));
                for (int64_t ch = 0; ch < c; ch++)
                    yo[ch] *= inv;
            }
        }
    }
}

/* dst[0, c) (= or +=) d[0, c) * inv. */
POOL_INLINE void pool_scale_add(float *restrict dst, const float *restrict d, float inv, int64_t c,
                                bool first)
{
    if (first)
        for (int64_t ch = 0; ch < c; ch++)
            dst[ch] = d[ch] * inv;
    else
        for (int64_t ch = 0; ch < c; ch++)
            dst[ch] += d[ch] * inv;
}

POOL_INLINE void pool_avg_bwd_impl(const kern_pool_geom *g, const float *dy, float *dx)
{
    const int64_t c = g->c;
    if (g->sh >= g->ph && g->sw >= g->pw) {
        /* Non-overlapping windows, as in the max pooling backward pass. */
        for (int64_t b = 0; b < g->n; b++)
            for (int64_t iy = 0; iy < g->h; iy++) {
                float *drow = dx + (b * g->h + iy) * g->w * c;
                const int64_t oy = pool_row_window(iy, g->sh, g->ph, g->pad_top, g->oh);
                int64_t ix = 0;
                if (oy >= 0) {
                    int64_t y0, y1;
                    pool_window(oy, g->sh, g->ph, g->pad_top, g->h, &y0, &y1);
                    for (int64_t ox = 0; ox < g->ow; ox++) {
                        int64_t x0, x1;
                        pool_window(ox, g->sw, g->pw, g->pad_left, g->w, &x0, &x1);
                        pool_zero(drow + ix * c, (x0 - ix) * c);
                        const float inv = 1.0f / (float)((y1 - y0) * (x1 - x0));
                        const float *d = dy + ((b * g->oh + oy) * g->ow + ox) * c;
                        for (ix = x0; ix < x1; ix++)
                            pool_scale_add(drow + ix * c, d, inv, c, true);
                    }
                }
                pool_zero(drow + ix * c, (g->w - ix) * c);
            }
        return;
    }
    for (int64_t b = 0; b < g->n; b++) {
        const float *dyb = dy + b * g->oh * g->ow * c;
        pool_span sy = {0, -1};
        for (int64_t iy = 0; iy < g->h; iy++) {
            pool_span_advance(&sy, iy, g->sh, g->ph, g->pad_top, g->oh);
            pool_span sx = {0, -1};
            for (int64_t ix = 0; ix < g->w; ix++) {
                pool_span_advance(&sx, ix, g->sw, g->pw, g->pad_left, g->ow);
                float *dst = dx + ((b * g->h + iy) * g->w + ix) * c;
                bool first = true;
                for (int64_t oy = sy.lo; oy <= sy.hi; oy++) {
                    int64_t y0, y1;
                    pool_window(oy, g->sh, g->ph, g->pad_top, g->h, &y0, &y1);
                    for (int64_t ox = sx.lo; ox <= sx.hi; ox++) {
                        int64_t x0, x1;
                        pool_window(ox, g->sw, g->pw, g->pad_left, g->w, &x0, &x1);
                        const float inv = 1.0f / (float)((y1 - y0) * (x1 - x0));
                        pool_scale_add(dst, dyb + (oy * g->ow + ox) * c, inv, c, first);
                        first = false;
                    }
                }
                if (first)
                    memset(dst, 0, sizeof(float) * (size_t)c);
            }
        }
    }
}

static void pool_max_window_generic(const float *xb, int64_t w, int64_t c, float *yo, int32_t *ao,
                                    int64_t y0, int64_t y1, int64_t x0, int64_t x1)
{
    pool_max_window_impl(xb, w, c, yo, ao, y0, y1, x0, x1);
}

#if POOL_X86
POOL_TARGET_AVX2 static void pool_max_window_avx2(const float *xb, int64_t w, int64_t c, float *yo,
                                                  int32_t *ao, int64_t y0, int64_t y1, int64_t x0,
                                                  int64_t x1)
{
    pool_max_window_impl(xb, w, c, yo, ao, y0, y1, x0, x1);
}

/* The same with max and argmax of 16 channels held in registers across the whole window (the
 * compiler keeps them in memory, re-reading and re-writing per cell); the last partial block of
 * channels is masked. */
POOL_TARGET_AVX512 static void pool_max_window_avx512(const float *xb, int64_t w, int64_t c,
                                                      float *yo, int32_t *ao, int64_t y0,
                                                      int64_t y1, int64_t x0, int64_t x1)
{
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int64_t ch = 0; ch < c; ch += 16) {
        const int64_t left = c - ch;
        __mmask16 m = (__mmask16)0xFFFFu;
        if (left < 16)
            m = (__mmask16)((1u << (unsigned)left) - 1u);
        const int64_t first = (y0 * w + x0) * c + ch;
        __m512 best = _mm512_maskz_loadu_ps(m, xb + first);
        __m512i idx = _mm512_add_epi32(_mm512_set1_epi32((int32_t)first), lane);
        for (int64_t iy = y0; iy < y1; iy++)
            for (int64_t ix = iy == y0 ? x0 + 1 : x0; ix < x1; ix++) {
                const int64_t base = (iy * w + ix) * c + ch;
                const __m512 v = _mm512_maskz_loadu_ps(m, xb + base);
                const __mmask16 gt = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ);
                best = _mm512_mask_mov_ps(best, gt, v);
                idx = _mm512_mask_add_epi32(idx, gt, _mm512_set1_epi32((int32_t)base), lane);
            }
        _mm512_mask_storeu_ps(yo + ch, m, best);
        _mm512_mask_storeu_epi32(ao + ch, m, idx);
    }
}
#endif

/* One instantiation of the four bodies per instruction set. */
#define POOL_VARIANTS(suffix, target)                                                              \
    target static void pool_max_fwd_##suffix(const kern_pool_geom *g, const float *x, float *y,    \
                                             int32_t *argmax)                                      \
    {                                                                                              \
        pool_max_fwd_impl(g, x, y, argmax, pool_max_window_##suffix);                              \
    }                                                                                              \
    target static void pool_max_bwd_##suffix(const kern_pool_geom *g, const float *dy,             \
                                             const int32_t *argmax, float *dx)                     \
    {                                                                                              \
        pool_max_bwd_impl(g, dy, argmax, dx);                                                      \
    }                                                                                              \
    target static void pool_avg_fwd_##suffix(const kern_pool_geom *g, const float *x, float *y)    \
    {                                                                                              \
        pool_avg_fwd_impl(g, x, y);                                                                \
    }                                                                                              \
    target static void pool_avg_bwd_##suffix(const kern_pool_geom *g, const float *dy, float *dx)  \
    {                                                                                              \
        pool_avg_bwd_impl(g, dy, dx);                                                              \
    }

POOL_VARIANTS(generic, )
#if POOL_X86
POOL_VARIANTS(avx2, POOL_TARGET_AVX2)
POOL_VARIANTS(avx512, POOL_TARGET_AVX512)
#endif

typedef struct pool_ops {
    void (*max_fwd)(const kern_pool_geom *g, const float *x, float *y, int32_t *argmax);
    void (*max_bwd)(const kern_pool_geom *g, const float *dy, const int32_t *argmax, float *dx);
    void (*avg_fwd)(const kern_pool_geom *g, const float *x, float *y);
    void (*avg_bwd)(const kern_pool_geom *g, const float *dy, float *dx);
} pool_ops;

static const pool_ops POOL_OPS[] = {
    [KERN_ISA_AUTO] = {0},
    [KERN_ISA_GENERIC] = {pool_max_fwd_generic, pool_max_bwd_generic, pool_avg_fwd_generic,
                          pool_avg_bwd_generic},
#if POOL_X86
    [KERN_ISA_AVX2] = {pool_max_fwd_avx2, pool_max_bwd_avx2, pool_avg_fwd_avx2, pool_avg_bwd_avx2},
    [KERN_ISA_AVX512] = {pool_max_fwd_avx512, pool_max_bwd_avx512, pool_avg_fwd_avx512,
                         pool_avg_bwd_avx512},
#else
    [KERN_ISA_AVX2] = {0},
    [KERN_ISA_AVX512] = {0},
#endif
};
_Static_assert(sizeof POOL_OPS / sizeof POOL_OPS[0] == KERN_ISA_COUNT, "one entry per ISA");

static const pool_ops *pool_ops_for(kern_isa isa)
{
    if (isa == KERN_ISA_AUTO) {
        if (kern_isa_supported(KERN_ISA_AVX512))
            isa = KERN_ISA_AVX512;
        else if (kern_isa_supported(KERN_ISA_AVX2))
            isa = KERN_ISA_AVX2;
        else
            isa = KERN_ISA_GENERIC;
    }
    CHECK(isa > KERN_ISA_AUTO && isa < KERN_ISA_COUNT && kern_isa_supported(isa));
    return &POOL_OPS[isa];
}

void kern_maxpool2d_forward_isa(const kern_pool_geom *g, const float *x, float *y, int32_t *argmax,
                                kern_isa isa)
{
    pool_ops_for(isa)->max_fwd(g, x, y, argmax);
}
void kern_maxpool2d_backward_isa(const kern_pool_geom *g, const float *dy, const int32_t *argmax,
                                 float *dx, kern_isa isa)
{
    pool_ops_for(isa)->max_bwd(g, dy, argmax, dx);
}
void kern_avgpool2d_forward_isa(const kern_pool_geom *g, const float *x, float *y, kern_isa isa)
{
    pool_ops_for(isa)->avg_fwd(g, x, y);
}
void kern_avgpool2d_backward_isa(const kern_pool_geom *g, const float *dy, float *dx, kern_isa isa)
{
    pool_ops_for(isa)->avg_bwd(g, dy, dx);
}

void kern_maxpool2d_forward(const kern_pool_geom *g, const float *x, float *y, int32_t *argmax)
{
    kern_maxpool2d_forward_isa(g, x, y, argmax, KERN_ISA_AUTO);
}
void kern_maxpool2d_backward(const kern_pool_geom *g, const float *dy, const int32_t *argmax,
                             float *dx)
{
    kern_maxpool2d_backward_isa(g, dy, argmax, dx, KERN_ISA_AUTO);
}
void kern_avgpool2d_forward(const kern_pool_geom *g, const float *x, float *y)
{
    kern_avgpool2d_forward_isa(g, x, y, KERN_ISA_AUTO);
}
void kern_avgpool2d_backward(const kern_pool_geom *g, const float *dy, float *dx)
{
    kern_avgpool2d_backward_isa(g, dy, dx, KERN_ISA_AUTO);
}
