/* Convolution as im2col + matrix multiply, on cache-sized chunks of whole images.
 *
 * Rows of the im2col matrix are output cells (b, oy, ox), columns are taps (ky, kx, ci): exactly
 * the row order of the Keras kernel [kh, kw, cin, cout] seen as a [K, cout] matrix, so
 *   forward  y[rows, cout]   = cols[rows, K] * k[K, cout]          (+ bias)
 *   backward dk[K, cout]    += cols^T * dy[rows, cout]
 *            dcols[rows, K]  = dy * k^T, then dx = col2im(dcols)
 * with every operand in place. The batch is cut into chunks of whole images whose im2col block
 * and output rows are about CONV_CHUNK_FLOATS: big enough that each multiply is efficient, small
 * enough that the block just written by im2col is still in cache when the multiply reads it (a
 * whole-batch im2col matrix is tens of MB and would travel through DRAM twice).
 *
 * Who multiplies:
 * - K <= CONV_SMALL_K (first layers on 1-3 channels: K = 9 or 27): our own register-tiled
 *   kernels, on every instruction set. sgemm spends its time packing there, not multiplying.
 * - AVX-512 CPUs with OpenBLAS on at most CONV_OWN_MAX_THREADS threads: our own AVX-512 kernels
 *   for every K. OpenBLAS 0.3.21 runs its AVX2 (Haswell) kernels on CPUs it does not know, such
 *   as AMD Zen 5, and our kernels measured 2.2x its single-thread speed there (235 vs 108
 *   GFLOP/s on conv-shaped products), which even two OpenBLAS threads cannot match. With more
 *   threads, or with OpenBLAS's own AVX-512 kernels and 2 threads, OpenBLAS wins: it gets them.
 * - otherwise cblas_sgemm.
 * The data-movement loops (im2col, col2im, bias, column sums) and our multiply kernels exist in
 * one version per instruction set; the best one the CPU supports is picked at each call. */

#include "kernels/kern_conv.h"

#include <cblas.h>
#include <string.h>

#include "kernels/err.h"
#include "kernels/kern_mm.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define CONV_X86 1
#include <immintrin.h>
#if defined(__clang__)
#define CONV_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
#else
/* GCC would otherwise auto-vectorise the plain loops with 256-bit vectors only. */
#define CONV_TARGET_AVX512                                                                         \
    __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,prefer-vector-width=512")))
#endif
#define CONV_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define CONV_X86 0
#endif

/* The generic loop bodies are instantiated once per instruction set by inlining them into
 * functions carrying a target attribute. */
#define CONV_INLINE static inline __attribute__((always_inline))

/* Target size of one chunk's im2col block and output rows, in floats (1 MiB). */
#ifndef CONV_CHUNK_FLOATS
#define CONV_CHUNK_FLOATS ((int64_t)1 << 18)
#endif
/* Largest K = kh*kw*cin that uses our own kernels instead of sgemm on every instruction set. */
#ifndef CONV_SMALL_K
#define CONV_SMALL_K 32
#endif
/* Most OpenBLAS threads at which our single-threaded AVX-512 kernels still beat sgemm. */
#define CONV_OWN_MAX_THREADS 2

static void conv_dim(int64_t in, int64_t k, int64_t s, int64_t d, bool same, int64_t *pad,
                     int64_t *out)
{
    int64_t ext = (k - 1) * d + 1; /* extent of the dilated window */
    if (same) {
        *out = (in + s - 1) / s;
        int64_t total = (*out - 1) * s + ext - in;
        *pad = total > 0 ? total / 2 : 0;
    } else {
        *pad = 0;
        *out = in >= ext ? (in - ext) / s + 1 : 0;
    }
}

void kern_conv_geom_set(kern_conv_geom *g, bool same)
{
    conv_dim(g->h, g->kh, g->sh, g->dh, same, &g->pad_top, &g->oh);
    conv_dim(g->w, g->kw, g->sw, g->dw, same, &g->pad_left, &g->ow);
}

bool kern_isa_supported(kern_isa isa)
{
    switch (isa) {
    case KERN_ISA_AUTO:
    case KERN_ISA_GENERIC:
        return true;
    case KERN_ISA_AVX2:
#if CONV_X86
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
        return false;
#endif
    case KERN_ISA_AVX512:
#if CONV_X86
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
        return false;
#endif
    case KERN_ISA_COUNT:
        return false;
    }
    return false;
}

/* True when the im2col matrix of a sample is the sample itself: a 1x1 kernel at stride 1
 * without padding (Keras 1x1 convs and pointwise layers). */
static bool conv_is_pointwise(const kern_conv_geom *g)
{
    return g->kh == 1 && g->kw == 1 && g->sh == 1 && g->sw == 1 && g->pad_top == 0 &&
           g->pad_left == 0 && g->oh == g->h && g->ow == g->w;
}

/* Images per chunk: about CONV_CHUNK_FLOATS of im2col rows plus output rows (both are touched
 * while the chunk is processed), at least one image, at most n. Monotone in n, so a workspace
 * sized for n serves every smaller n. */
static int64_t conv_chunk_images(const kern_conv_geom *g)
{
    int64_t per = g->oh * g->ow * (g->kh * g->kw * g->cin + g->cout);
    int64_t nb = per > 0 ? CONV_CHUNK_FLOATS / per : g->n;
    if (nb < 1)
        nb = 1;
    return nb < g->n ? nb : g->n;
}

/* Workspace layout: [k^T: cout x K][im2col block of one chunk]. k^T feeds our own dx multiply
 * (dcols = dy * k^T wants k^T's rows contiguous); the block is unused for pointwise convs. */
size_t kern_conv2d_workspace(const kern_conv_geom *g)
{
    if (g->n <= 0 || g->oh <= 0 || g->ow <= 0)
        return 0;
    const int64_t K = g->kh * g->kw * g->cin;
    const int64_t cols = conv_is_pointwise(g) ? 0 : conv_chunk_images(g) * g->oh * g->ow * K;
    return (size_t)(K * g->cout + cols);
}

/* ---- data movement, generic bodies ---- */

/* Largest K gathered through an offset table by im2col (see conv_im2col_impl). */
#define CONV_TAB_MAX 64

/* dst[0, n) = src[0, n). Not restrict-qualified on purpose: GCC would turn the loop into a
 * memcpy call, which costs more than the copy for the 3- to 100-float segments of im2col. */
CONV_INLINE void conv_copy(float *dst, const float *src, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        dst[i] = src[i];
}

CONV_INLINE void conv_zero(float *dst, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        dst[i] = 0.0f;
}

/* dst[0, n) += src[0, n); the arrays never overlap, and restrict spares a run-time check. */
CONV_INLINE void conv_add(float *restrict dst, const float *restrict src, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        dst[i] += src[i];
}

/* im2col of images x[0, nb) (x points at the chunk's first image) into cols[nb*oh*ow, K]. */
CONV_INLINE void conv_im2col_impl(const kern_conv_geom *g, const float *x, int64_t nb, float *cols)
{
    const int64_t h = g->h, w = g->w, cin = g->cin, kw = g->kw, seg = kw * cin;
    const int64_t K = g->kh * seg;
    /* Kernel rows of a few floats (first layers: cin = 1 or 3) are too short for a copy loop
     * each: rows whose window lies wholly inside the input gather their K taps through a table
     * of offsets from the window's corner instead. */
    int32_t off[CONV_TAB_MAX];
    const bool tab = seg < 16 && K <= CONV_TAB_MAX;
    if (tab)
        for (int64_t ky = 0, t = 0; ky < g->kh; ky++)
            for (int64_t kx = 0; kx < kw; kx++)
                for (int64_t ci = 0; ci < cin; ci++, t++)
                    off[t] = (int32_t)((ky * g->dh * w + kx * g->dw) * cin + ci);
    const int64_t span_y = (g->kh - 1) * g->dh, span_x = (kw - 1) * g->dw;
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * h * w * cin;
        for (int64_t oy = 0; oy < g->oh; oy++) {
            float *row = cols + (b * g->oh + oy) * g->ow * K;
            const int64_t iy0 = oy * g->sh - g->pad_top;
            const bool rows_in = iy0 >= 0 && iy0 + span_y < h;
            for (int64_t ox = 0; ox < g->ow; ox++, row += K) {
                const int64_t ix0 = ox * g->sw - g->pad_left;
                if (tab && rows_in && ix0 >= 0 && ix0 + span_x < w) {
                    const float *base = xb + (iy0 * w + ix0) * cin;
                    for (int64_t t = 0; t < K; t++)
                        row[t] = base[off[t]];
                    continue;
                }
                /* Whole kernel row inside the input and contiguous: one copy per ky. */
                const bool inner = g->dw == 1 && ix0 >= 0 && ix0 + kw <= w;
                for (int64_t ky = 0; ky < g->kh; ky++) {
                    const int64_t iy = oy * g->sh - g->pad_top + ky * g->dh;
                    float *dst = row + ky * seg;
                    if (iy < 0 || iy >= h) {
                        conv_zero(dst, seg);
                        continue;
                    }
                    const float *xr = xb + iy * w * cin;
                    if (inner) {
                        conv_copy(dst, xr + ix0 * cin, seg);
                        continue;
                    }
                    for (int64_t kx = 0; kx < kw; kx++) {
                        const int64_t ix = ix0 + kx * g->dw;
                        if (ix >= 0 && ix < w)
                            conv_copy(dst + kx * cin, xr + ix * cin, cin);
                        else
                            conv_zero(dst + kx * cin, cin);
                    }
                }
            }
        }
    }
}

/* im2col of images x[0, nb) transposed: cols_t[K, rows] with rows = nb*oh*ow, tap-major. Used
 * for small K (first layers), where it is much cheaper than the row-major form: for a given tap
 * and output row, the inputs are one strided run of x (a contiguous one for cin = 1, stride 1),
 * instead of K scattered floats per output cell. The multiply kernels read it with at = true. */
CONV_INLINE void conv_im2col_t_impl(const kern_conv_geom *g, const float *x, int64_t nb,
                                    float *cols_t)
{
    const int64_t cin = g->cin, ow = g->ow, rows = nb * g->oh * ow, sw = g->sw;
    for (int64_t ky = 0, t = 0; ky < g->kh; ky++)
        for (int64_t kx = 0; kx < g->kw; kx++)
            for (int64_t ci = 0; ci < cin; ci++, t++) {
                /* Output columns [lo, hi) read inside the input: 0 <= ox*sw - pad + kx*dw < w. */
                const int64_t shift = kx * g->dw - g->pad_left;
                int64_t lo = shift >= 0 ? 0 : (-shift + sw - 1) / sw;
                int64_t hi = g->w - shift > 0 ? (g->w - shift + sw - 1) / sw : 0;
                hi = hi < ow ? hi : ow;
                lo = lo < hi ? lo : hi;
                float *dst_t = cols_t + t * rows;
                for (int64_t b = 0; b < nb; b++)
                    for (int64_t oy = 0; oy < g->oh; oy++) {
                        float *dst = dst_t + (b * g->oh + oy) * ow;
                        const int64_t iy = oy * g->sh - g->pad_top + ky * g->dh;
                        if (iy < 0 || iy >= g->h) {
                            conv_zero(dst, ow);
                            continue;
                        }
                        conv_zero(dst, lo);
                        if (lo < hi) {
                            /* src: the input cell read by output column lo. */
                            const float *src =
                                x + ((b * g->h + iy) * g->w + lo * sw + shift) * cin + ci;
                            if (sw * cin == 1)
                                conv_copy(dst + lo, src, hi - lo);
                            else
                                for (int64_t ox = lo; ox < hi; ox++)
                                    dst[ox] = src[(ox - lo) * sw * cin];
                        }
                        conv_zero(dst + hi, ow - hi);
                    }
            }
}

/* col2im of dcols[nb*oh*ow, K] into dx images [0, nb): each image is cleared and then every
 * (output cell, tap) block is added to the input cell it read, in dcols order. An image of dx
 * is small (one sample) so it stays in L1/L2 while its blocks are added, and dcols streams.
 * (A gather that writes each dx cell once was measured 2x slower: it reads dcols out of order.) */
CONV_INLINE void conv_col2im_impl(const kern_conv_geom *g, const float *dcols, int64_t nb,
                                  float *dx)
{
    const int64_t h = g->h, w = g->w, cin = g->cin, kw = g->kw, seg = kw * cin;
    const int64_t K = g->kh * seg;
    for (int64_t b = 0; b < nb; b++) {
        float *db = dx + b * h * w * cin;
        conv_zero(db, h * w * cin);
        for (int64_t oy = 0; oy < g->oh; oy++) {
            const float *row = dcols + (b * g->oh + oy) * g->ow * K;
            for (int64_t ox = 0; ox < g->ow; ox++, row += K) {
                const int64_t ix0 = ox * g->sw - g->pad_left;
                const bool inner = g->dw == 1 && ix0 >= 0 && ix0 + kw <= w;
                for (int64_t ky = 0; ky < g->kh; ky++) {
                    const int64_t iy = oy * g->sh - g->pad_top + ky * g->dh;
                    if (iy < 0 || iy >= h)
                        continue;
                    float *dr = db + iy * w * cin;
                    const float *src = row + ky * seg;
                    if (inner) {
                        conv_add(dr + ix0 * cin, src, seg);
                        continue;
                    }
                    for (int64_t kx = 0; kx < kw; kx++) {
                        const int64_t ix = ix0 + kx * g->dw;
                        if (ix >= 0 && ix < w)
                            conv_add(dr + ix * cin, src + kx * cin, cin);
                    }
                }
            }
        }
    }
}

/* db[0, cout) += column sums of dy[rows, cout]. */
CONV_INLINE void conv_colsum_impl(int64_t rows, int64_t cout, const float *dy, float *db)
{
    for (int64_t r = 0; r < rows; r++)
        conv_add(db, dy + r * cout, cout);
}

/* Every row of y[rows, cout] = bias. */
CONV_INLINE void conv_bias_fill_impl(int64_t rows, int64_t cout, const float *bias, float *y)
{
    for (int64_t r = 0; r < rows; r++)
        conv_copy(y + r * cout, bias, cout);
}

/* ---- our multiply kernels ----
 * mm_nn: C[R, N] = A[R, K] * B[K, N] + init (init: a row [N] added to every row, or NULL)
 * mm_tn: C[K, N] += A[R, K]^T * B[R, N], and db[N] += column sums of B unless db is NULL
 * All matrices row-major with leading dimensions lda, ldb, ldc; with at (A transposed) A is
 * stored as A^T [K, R], row-major with leading dimension lda. */

static void conv_mm_nn_generic(int64_t R, int64_t N, int64_t K, const float *a, int64_t lda,
                               const float *b, int64_t ldb, const float *init, float *c,
                               int64_t ldc, bool at)
{
    const int64_t si = at ? 1 : lda, sk = at ? lda : 1; /* a(r, k) = a[r * si + k * sk] */
    for (int64_t r = 0; r < R; r++) {
        float *cr = c + r * ldc;
        if (init)
            conv_copy(cr, init, N);
        else
            conv_zero(cr, N);
        for (int64_t k = 0; k < K; k++) {
            const float v = a[r * si + k * sk];
            const float *bk = b + k * ldb;
            for (int64_t n = 0; n < N; n++)
                cr[n] += v * bk[n];
        }
    }
}

static void conv_mm_tn_generic(int64_t R, int64_t K, int64_t N, const float *a, int64_t lda,
                               const float *b, int64_t ldb, float *c, int64_t ldc, bool at,
                               float *db)
{
    if (db)
        conv_colsum_impl(R, N, b, db);
    const int64_t si = at ? 1 : lda, sk = at ? lda : 1; /* a(r, t) = a[r * si + t * sk] */
    for (int64_t r = 0; r < R; r++)
        for (int64_t t = 0; t < K; t++) {
            const float v = a[r * si + t * sk];
            const float *br = b + r * ldb;
            float *ct = c + t * ldc;
            for (int64_t n = 0; n < N; n++)
                ct[n] += v * br[n];
        }
}

static void conv_im2col_t_generic(const kern_conv_geom *g, const float *x, int64_t nb,
                                  float *cols_t)
{
    conv_im2col_t_impl(g, x, nb, cols_t);
}
static void conv_im2col_generic(const kern_conv_geom *g, const float *x, int64_t nb, float *cols)
{
    conv_im2col_impl(g, x, nb, cols);
}
static void conv_col2im_generic(const kern_conv_geom *g, const float *dcols, int64_t nb, float *dx)
{
    conv_col2im_impl(g, dcols, nb, dx);
}
static void conv_colsum_generic(int64_t rows, int64_t cout, const float *dy, float *db)
{
    conv_colsum_impl(rows, cout, dy, db);
}
static void conv_bias_fill_generic(int64_t rows, int64_t cout, const float *bias, float *y)
{
    conv_bias_fill_impl(rows, cout, bias, y);
}

#if CONV_X86
/* ---- AVX-512 ----
 * Register tiles of MR rows x NV vectors of 16 floats (MR * NV <= 24 accumulators, plus NV
 * vectors of B and one broadcast: at most 29 of the 32 zmm registers). The loop over K is
 * innermost, so a tile's accumulators never leave the registers; B streams from L1/L2 and each
 * A element is broadcast once per tile. Partial column blocks use masked loads and stores. */

/* Lanes [0, n) of a 16-lane mask (n may be <= 0 or >= 16). */
static inline __mmask16 conv_mask16(int64_t n)
{
    if (n >= 16)
        return (__mmask16)0xFFFFu;
    if (n <= 0)
        return (__mmask16)0u;
    return (__mmask16)((1u << n) - 1u);
}

CONV_TARGET_AVX512 CONV_INLINE void conv_nn_tile_avx512(int64_t K, const float *a, int64_t lda,
                                                        const float *b, int64_t ldb,
                                                        const float *init, float *c, int64_t ldc,
                                                        int64_t nvalid, int MR, int NV, bool at)
{
    const int64_t si = at ? 1 : lda, sk = at ? lda : 1; /* a(i, k) = a[i * si + k * sk] */
    __mmask16 m[4];
    __m512 acc[16][4], iv[4];
    for (int v = 0; v < NV; v++) {
        m[v] = conv_mask16(nvalid - 16 * v);
        iv[v] = init ? _mm512_maskz_loadu_ps(m[v], init + 16 * v) : _mm512_setzero_ps();
    }
    for (int i = 0; i < MR; i++)
        for (int v = 0; v < NV; v++)
            acc[i][v] = iv[v];
    for (int64_t k = 0; k < K; k++) {
        __m512 bv[4];
        for (int v = 0; v < NV; v++)
            bv[v] = _mm512_maskz_loadu_ps(m[v], b + k * ldb + 16 * v);
        for (int i = 0; i < MR; i++) {
            const __m512 s = _mm512_set1_ps(a[i * si + k * sk]);
            for (int v = 0; v < NV; v++)
                acc[i][v] = _mm512_fmadd_ps(s, bv[v], acc[i][v]);
        }
    }
    for (int i = 0; i < MR; i++)
        for (int v = 0; v < NV; v++)
            _mm512_mask_storeu_ps(c + i * ldc + 16 * v, m[v], acc[i][v]);
}

CONV_TARGET_AVX512 CONV_INLINE void conv_nn_rows_avx512(int64_t R, int64_t K, const float *a,
                                                        int64_t lda, const float *b, int64_t ldb,
                                                        const float *init, float *c, int64_t ldc,
                                                        int64_t nvalid, int MR, int NV, bool at)
{
    int64_t r = 0;
    for (; r + MR <= R; r += MR)
        conv_nn_tile_avx512(K, a + r * (at ? 1 : lda), lda, b, ldb, init, c + r * ldc, ldc, nvalid,
                            MR, NV, at);
    for (; r < R; r++)
        conv_nn_tile_avx512(K, a + r * (at ? 1 : lda), lda, b, ldb, init, c + r * ldc, ldc, nvalid,
                            1, NV, at);
}

CONV_TARGET_AVX512 CONV_INLINE void conv_nn_avx512(int64_t R, int64_t N, int64_t K, const float *a,
                                                   int64_t lda, const float *b, int64_t ldb,
                                                   const float *init, float *c, int64_t ldc,
                                                   bool at)
{
    for (int64_t n0 = 0; n0 < N; n0 += 64) {
        const int64_t nv = N - n0;
        const float *in = init ? init + n0 : NULL;
        if (nv > 48)
            conv_nn_rows_avx512(R, K, a, lda, b + n0, ldb, in, c + n0, ldc, nv, 6, 4, at);
        else if (nv > 32)
            conv_nn_rows_avx512(R, K, a, lda, b + n0, ldb, in, c + n0, ldc, nv, 8, 3, at);
        else if (nv > 16)
            conv_nn_rows_avx512(R, K, a, lda, b + n0, ldb, in, c + n0, ldc, nv, 12, 2, at);
        else
            conv_nn_rows_avx512(R, K, a, lda, b + n0, ldb, in, c + n0, ldc, nv, 16, 1, at);
    }
}

CONV_TARGET_AVX512 static void conv_mm_nn_avx512(int64_t R, int64_t N, int64_t K, const float *a,
                                                 int64_t lda, const float *b, int64_t ldb,
                                                 const float *init, float *c, int64_t ldc, bool at)
{
    if (at)
        conv_nn_avx512(R, N, K, a, lda, b, ldb, init, c, ldc, true);
    else
        conv_nn_avx512(R, N, K, a, lda, b, ldb, init, c, ldc, false);
}

/* TB taps (rows of C) x NV vectors: the accumulators stay in registers while all R rows of A
 * and B stream by. With sum, NV more accumulators also add up the rows of B into db[0, nvalid)
 * (the bias gradient rides along with the first tile of taps, while dy streams in anyway). */
CONV_TARGET_AVX512 CONV_INLINE void conv_tn_tile_avx512(int64_t R, const float *a, int64_t lda,
                                                        const float *b, int64_t ldb, float *c,
                                                        int64_t ldc, int64_t nvalid, int TB, int NV,
                                                        bool at, bool sum, float *db)
{
    const int64_t si = at ? 1 : lda, sk = at ? lda : 1; /* a(r, t) = a[r * si + t * sk] */
    __mmask16 m[4];
    __m512 acc[16][4], bs[4];
    for (int v = 0; v < NV; v++) {
        m[v] = conv_mask16(nvalid - 16 * v);
        bs[v] = _mm512_setzero_ps();
    }
    for (int i = 0; i < TB; i++)
        for (int v = 0; v < NV; v++)
            acc[i][v] = _mm512_setzero_ps();
    for (int64_t r = 0; r < R; r++) {
        __m512 bv[4];
        for (int v = 0; v < NV; v++) {
            bv[v] = _mm512_maskz_loadu_ps(m[v], b + r * ldb + 16 * v);
            if (sum)
                bs[v] = _mm512_add_ps(bs[v], bv[v]);
        }
        for (int i = 0; i < TB; i++) {
            const __m512 s = _mm512_set1_ps(a[r * si + i * sk]);
            for (int v = 0; v < NV; v++)
                acc[i][v] = _mm512_fmadd_ps(s, bv[v], acc[i][v]);
        }
    }
    for (int i = 0; i < TB; i++)
        for (int v = 0; v < NV; v++) {
            float *o = c + i * ldc + 16 * v;
            _mm512_mask_storeu_ps(o, m[v],
                                  _mm512_add_ps(_mm512_maskz_loadu_ps(m[v], o), acc[i][v]));
        }
    if (sum)
        for (int v = 0; v < NV; v++) {
            float *o = db + 16 * v;
            _mm512_mask_storeu_ps(o, m[v], _mm512_add_ps(_mm512_maskz_loadu_ps(m[v], o), bs[v]));
        }
}

/* All K taps in tiles of TB, then TB/2, TB/4, ..., 1 for the remainder. With db, the first
 * tile is TB/2 wide (room for the extra accumulators) and sums the rows of B into db. */
CONV_TARGET_AVX512 CONV_INLINE void conv_tn_taps_avx512(int64_t R, int64_t K, const float *a,
                                                        int64_t lda, const float *b, int64_t ldb,
                                                        float *c, int64_t ldc, int64_t nvalid,
                                                        int TB, int NV, bool at, float *db)
{
    const int64_t step = at ? lda : 1; /* from one tap to the next in A */
    int64_t t = 0;
    if (db) {
        if (K >= TB / 2) {
            conv_tn_tile_avx512(R, a, lda, b, ldb, c, ldc, nvalid, TB / 2, NV, at, true, db);
            t = TB / 2;
        } else {
            conv_tn_tile_avx512(R, a, lda, b, ldb, c, ldc, nvalid, 1, NV, at, true, db);
            t = 1;
        }
    }
    for (; t + TB <= K; t += TB)
        conv_tn_tile_avx512(R, a + t * step, lda, b, ldb, c + t * ldc, ldc, nvalid, TB, NV, at,
                            false, NULL);
    for (; t + TB / 2 <= K && TB / 2 > 1; t += TB / 2)
        conv_tn_tile_avx512(R, a + t * step, lda, b, ldb, c + t * ldc, ldc, nvalid, TB / 2, NV, at,
                            false, NULL);
    for (; t + TB / 4 <= K && TB / 4 > 1; t += TB / 4)
        conv_tn_tile_avx512(R, a + t * step, lda, b, ldb, c + t * ldc, ldc, nvalid, TB / 4, NV, at,
                            false, NULL);
    for (; t < K; t++)
        conv_tn_tile_avx512(R, a + t * step, lda, b, ldb, c + t * ldc, ldc, nvalid, 1, NV, at,
                            false, NULL);
}

CONV_TARGET_AVX512 CONV_INLINE void conv_tn_avx512(int64_t R, int64_t K, int64_t N, const float *a,
                                                   int64_t lda, const float *b, int64_t ldb,
                                                   float *c, int64_t ldc, bool at, float *db)
{
    for (int64_t n0 = 0; n0 < N; n0 += 64) {
        const int64_t nv = N - n0;
        float *d = db ? db + n0 : NULL;
        if (nv > 48)
            conv_tn_taps_avx512(R, K, a, lda, b + n0, ldb, c + n0, ldc, nv, 6, 4, at, d);
        else if (nv > 32)
            conv_tn_taps_avx512(R, K, a, lda, b + n0, ldb, c + n0, ldc, nv, 8, 3, at, d);
        else if (nv > 16)
            conv_tn_taps_avx512(R, K, a, lda, b + n0, ldb, c + n0, ldc, nv, 12, 2, at, d);
        else
            conv_tn_taps_avx512(R, K, a, lda, b + n0, ldb, c + n0, ldc, nv, 16, 1, at, d);
    }
}

CONV_TARGET_AVX512 static void conv_mm_tn_avx512(int64_t R, int64_t K, int64_t N, const float *a,
                                                 int64_t lda, const float *b, int64_t ldb, float *c,
                                                 int64_t ldc, bool at, float *db)
{
    if (at)
        conv_tn_avx512(R, K, N, a, lda, b, ldb, c, ldc, true, db);
    else
        conv_tn_avx512(R, K, N, a, lda, b, ldb, c, ldc, false, db);
}

CONV_TARGET_AVX512 static void conv_im2col_t_avx512(const kern_conv_geom *g, const float *x,
                                                    int64_t nb, float *cols_t)
{
    conv_im2col_t_impl(g, x, nb, cols_t);
}
CONV_TARGET_AVX512 static void conv_im2col_avx512(const kern_conv_geom *g, const float *x,
                                                  int64_t nb, float *cols)
{
    conv_im2col_impl(g, x, nb, cols);
}
CONV_TARGET_AVX512 static void conv_col2im_avx512(const kern_conv_geom *g, const float *dcols,
                                                  int64_t nb, float *dx)
{
    conv_col2im_impl(g, dcols, nb, dx);
}
CONV_TARGET_AVX512 static void conv_colsum_avx512(int64_t rows, int64_t cout, const float *dy,
                                                  float *db)
{
    conv_colsum_impl(rows, cout, dy, db);
}
CONV_TARGET_AVX512 static void conv_bias_fill_avx512(int64_t rows, int64_t cout, const float *bias,
                                                     float *y)
{
    conv_bias_fill_impl(rows, cout, bias, y);
}

/* ---- AVX2 + FMA ----
 * The same tiles with 8-float vectors and 16 registers: MR * NV <= 12 accumulators. */

/* Lanes [0, n) of an 8-lane maskload/maskstore mask. */
CONV_TARGET_AVX2 static inline __m256i conv_mask8(int64_t n)
{
    const int32_t c = (int32_t)(n < 0 ? 0 : n > 8 ? 8 : n);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(c), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

CONV_TARGET_AVX2 CONV_INLINE void conv_nn_tile_avx2(int64_t K, const float *a, int64_t lda,
                                                    const float *b, int64_t ldb, const float *init,
                                                    float *c, int64_t ldc, int64_t nvalid, int MR,
                                                    int NV, bool at)
{
    const int64_t si = at ? 1 : lda, sk = at ? lda : 1; /* a(i, k) = a[i * si + k * sk] */
    __m256i m[2];
    __m256 acc[12][2], iv[2];
    for (int v = 0; v < NV; v++) {
        m[v] = conv_mask8(nvalid - 8 * v);
        iv[v] = init ? _mm256_maskload_ps(init + 8 * v, m[v]) : _mm256_setzero_ps();
    }
    for (int i = 0; i < MR; i++)
        for (int v = 0; v < NV; v++)
            acc[i][v] = iv[v];
    for (int64_t k = 0; k < K; k++) {
        __m256 bv[2];
        for (int v = 0; v < NV; v++)
            bv[v] = _mm256_maskload_ps(b + k * ldb + 8 * v, m[v]);
        for (int i = 0; i < MR; i++) {
            const __m256 s = _mm256_broadcast_ss(a + i * si + k * sk);
            for (int v = 0; v < NV; v++)
                acc[i][v] = _mm256_fmadd_ps(s, bv[v], acc[i][v]);
        }
    }
    for (int i = 0; i < MR; i++)
        for (int v = 0; v < NV; v++)
            _mm256_maskstore_ps(c + i * ldc + 8 * v, m[v], acc[i][v]);
}

CONV_TARGET_AVX2 CONV_INLINE void conv_nn_rows_avx2(int64_t R, int64_t K, const float *a,
                                                    int64_t lda, const float *b, int64_t ldb,
                                                    const float *init, float *c, int64_t ldc,
                                                    int64_t nvalid, int MR, int NV, bool at)
{
    int64_t r = 0;
    for (; r + MR <= R; r += MR)
        conv_nn_tile_avx2(K, a + r * (at ? 1 : lda), lda, b, ldb, init, c + r * ldc, ldc, nvalid,
                          MR, NV, at);
    for (; r < R; r++)
        conv_nn_tile_avx2(K, a + r * (at ? 1 : lda), lda, b, ldb, init, c + r * ldc, ldc, nvalid, 1,
                          NV, at);
}

CONV_TARGET_AVX2 CONV_INLINE void conv_nn_avx2(int64_t R, int64_t N, int64_t K, const float *a,
                                               int64_t lda, const float *b, int64_t ldb,
                                               const float *init, float *c, int64_t ldc, bool at)
{
    for (int64_t n0 = 0; n0 < N; n0 += 16) {
        const int64_t nv = N - n0;
        const float *in = init ? init + n0 : NULL;
        if (nv > 8)
            conv_nn_rows_avx2(R, K, a, lda, b + n0, ldb, in, c + n0, ldc, nv, 6, 2, at);
        else
            conv_nn_rows_avx2(R, K, a, lda, b + n0, ldb, in, c + n0, ldc, nv, 12, 1, at);
    }
}

CONV_TARGET_AVX2 static void conv_mm_nn_avx2(int64_t R, int64_t N, int64_t K, const float *a,
                                             int64_t lda, const float *b, int64_t ldb,
                                             const float *init, float *c, int64_t ldc, bool at)
{
    if (at)
        conv_nn_avx2(R, N, K, a, lda, b, ldb, init, c, ldc, true);
    else
        conv_nn_avx2(R, N, K, a, lda, b, ldb, init, c, ldc, false);
}

CONV_TARGET_AVX2 CONV_INLINE void conv_tn_tile_avx2(int64_t R, const float *a, int64_t lda,
                                                    const float *b, int64_t ldb, float *c,
                                                    int64_t ldc, int64_t nvalid, int TB, int NV,
                                                    bool at, bool sum, float *db)
{
    const int64_t si = at ? 1 : lda, sk = at ? lda : 1; /* a(r, t) = a[r * si + t * sk] */
    __m256i m[2];
    __m256 acc[12][2], bs[2];
    for (int v = 0; v < NV; v++) {
        m[v] = conv_mask8(nvalid - 8 * v);
        bs[v] = _mm256_setzero_ps();
    }
    for (int i = 0; i < TB; i++)
        for (int v = 0; v < NV; v++)
            acc[i][v] = _mm256_setzero_ps();
    for (int64_t r = 0; r < R; r++) {
        __m256 bv[2];
        for (int v = 0; v < NV; v++) {
            bv[v] = _mm256_maskload_ps(b + r * ldb + 8 * v, m[v]);
            if (sum)
                bs[v] = _mm256_add_ps(bs[v], bv[v]);
        }
        for (int i = 0; i < TB; i++) {
            const __m256 s = _mm256_broadcast_ss(a + r * si + i * sk);
            for (int v = 0; v < NV; v++)
                acc[i][v] = _mm256_fmadd_ps(s, bv[v], acc[i][v]);
        }
    }
    for (int i = 0; i < TB; i++)
        for (int v = 0; v < NV; v++) {
            float *o = c + i * ldc + 8 * v;
            _mm256_maskstore_ps(o, m[v], _mm256_add_ps(_mm256_maskload_ps(o, m[v]), acc[i][v]));
        }
    if (sum)
        for (int v = 0; v < NV; v++) {
            float *o = db + 8 * v;
            _mm256_maskstore_ps(o, m[v], _mm256_add_ps(_mm256_maskload_ps(o, m[v]), bs[v]));
        }
}

CONV_TARGET_AVX2 CONV_INLINE void conv_tn_taps_avx2(int64_t R, int64_t K, const float *a,
                                                    int64_t lda, const float *b, int64_t ldb,
                                                    float *c, int64_t ldc, int64_t nvalid, int TB,
                                                    int NV, bool at, float *db)
{
    const int64_t step = at ? lda : 1;
    int64_t t = 0;
    if (db) {
        if (K >= TB / 2) {
            conv_tn_tile_avx2(R, a, lda, b, ldb, c, ldc, nvalid, TB / 2, NV, at, true, db);
            t = TB / 2;
        } else {
            conv_tn_tile_avx2(R, a, lda, b, ldb, c, ldc, nvalid, 1, NV, at, true, db);
            t = 1;
        }
    }
    for (; t + TB <= K; t += TB)
        conv_tn_tile_avx2(R, a + t * step, lda, b, ldb, c + t * ldc, ldc, nvalid, TB, NV, at, false,
                          NULL);
    for (; t + TB / 2 <= K && TB / 2 > 1; t += TB / 2)
        conv_tn_tile_avx2(R, a + t * step, lda, b, ldb, c + t * ldc, ldc, nvalid, TB / 2, NV, at,
                          false, NULL);
    for (; t + TB / 4 <= K && TB / 4 > 1; t += TB / 4)
        conv_tn_tile_avx2(R, a + t * step, lda, b, ldb, c + t * ldc, ldc, nvalid, TB / 4, NV, at,
                          false, NULL);
    for (; t < K; t++)
        conv_tn_tile_avx2(R, a + t * step, lda, b, ldb, c + t * ldc, ldc, nvalid, 1, NV, at, false,
                          NULL);
}

CONV_TARGET_AVX2 CONV_INLINE void conv_tn_avx2(int64_t R, int64_t K, int64_t N, const float *a,
                                               int64_t lda, const float *b, int64_t ldb, float *c,
                                               int64_t ldc, bool at, float *db)
{
    for (int64_t n0 = 0; n0 < N; n0 += 16) {
        const int64_t nv = N - n0;
        float *d = db ? db + n0 : NULL;
        if (nv > 8)
            conv_tn_taps_avx2(R, K, a, lda, b + n0, ldb, c + n0, ldc, nv, 6, 2, at, d);
        else
            conv_tn_taps_avx2(R, K, a, lda, b + n0, ldb, c + n0, ldc, nv, 12, 1, at, d);
    }
}

CONV_TARGET_AVX2 static void conv_mm_tn_avx2(int64_t R, int64_t K, int64_t N, const float *a,
                                             int64_t lda, const float *b, int64_t ldb, float *c,
                                             int64_t ldc, bool at, float *db)
{
    if (at)
        conv_tn_avx2(R, K, N, a, lda, b, ldb, c, ldc, true, db);
    else
        conv_tn_avx2(R, K, N, a, lda, b, ldb, c, ldc, false, db);
}

CONV_TARGET_AVX2 static void conv_im2col_t_avx2(const kern_conv_geom *g, const float *x, int64_t nb,
                                                float *cols_t)
{
    conv_im2col_t_impl(g, x, nb, cols_t);
}
CONV_TARGET_AVX2 static void conv_im2col_avx2(const kern_conv_geom *g, const float *x, int64_t nb,
                                              float *cols)
{
    conv_im2col_impl(g, x, nb, cols);
}
CONV_TARGET_AVX2 static void conv_col2im_avx2(const kern_conv_geom *g, const float *dcols,
                                              int64_t nb, float *dx)
{
    conv_col2im_impl(g, dcols, nb, dx);
}
CONV_TARGET_AVX2 static void conv_colsum_avx2(int64_t rows, int64_t cout, const float *dy,
                                              float *db)
{
    conv_colsum_impl(rows, cout, dy, db);
}
CONV_TARGET_AVX2 static void conv_bias_fill_avx2(int64_t rows, int64_t cout, const float *bias,
                                                 float *y)
{
    conv_bias_fill_impl(rows, cout, bias, y);
}
#endif /* CONV_X86 */

/* ---- dispatch ---- */

typedef struct conv_ops {
    void (*im2col)(const kern_conv_geom *g, const float *x, int64_t nb, float *cols);
    void (*col2im)(const kern_conv_geom *g, const float *dcols, int64_t nb, float *dx);
    void (*colsum)(int64_t rows, int64_t cout, const float *dy, float *db);
    void (*bias_fill)(int64_t rows, int64_t cout, const float *bias, float *y);
    void (*im2col_t)(const kern_conv_geom *g, const float *x, int64_t nb, float *cols_t);
    void (*mm_nn)(int64_t R, int64_t N, int64_t K, const float *a, int64_t lda, const float *b,
                  int64_t ldb, const float *init, float *c, int64_t ldc, bool at);
    void (*mm_tn)(int64_t R, int64_t K, int64_t N, const float *a, int64_t lda, const float *b,
                  int64_t ldb, float *c, int64_t ldc, bool at, float *db);
    bool any_k; /* our multiplies beat sgemm at every K (see the top of this file) */
} conv_ops;

static const conv_ops CONV_OPS[] = {
    [KERN_ISA_AUTO] = {0},
    [KERN_ISA_GENERIC] = {conv_im2col_generic, conv_col2im_generic, conv_colsum_generic,
                          conv_bias_fill_generic, conv_im2col_t_generic, conv_mm_nn_generic,
                          conv_mm_tn_generic, false},
#if CONV_X86
    [KERN_ISA_AVX2] = {conv_im2col_avx2, conv_col2im_avx2, conv_colsum_avx2, conv_bias_fill_avx2,
                       conv_im2col_t_avx2, conv_mm_nn_avx2, conv_mm_tn_avx2, false},
    [KERN_ISA_AVX512] = {conv_im2col_avx512, conv_col2im_avx512, conv_colsum_avx512,
                         conv_bias_fill_avx512, conv_im2col_t_avx512, conv_mm_nn_avx512,
                         conv_mm_tn_avx512, true},
#else
    [KERN_ISA_AVX2] = {0},
    [KERN_ISA_AVX512] = {0},
#endif
};
_Static_assert(sizeof CONV_OPS / sizeof CONV_OPS[0] == KERN_ISA_COUNT, "one entry per ISA");

static const conv_ops *conv_ops_for(kern_isa isa)
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
    return &CONV_OPS[isa];
}

/* Whether our kernels (rather than sgemm) multiply a convolution with K = kh*kw*cin. */
static bool conv_use_own(const conv_ops *ops, int64_t K)
{
    if (K <= CONV_SMALL_K)
        return true;
    if (!ops->any_k)
        return false;
    const int threads = openblas_get_num_threads();
    if (threads <= 1)
        return true;
    if (threads > CONV_OWN_MAX_THREADS)
        return false;
    /* Two OpenBLAS threads on its own AVX-512 kernels are about as fast as ours on one. */
    const char *core = openblas_get_corename();
    return !(core && (strstr(core, "SkylakeX") || strstr(core, "Cooperlake") ||
                      strstr(core, "SapphireRapids")));
}

/* ---- shared with kern_dense.c (kern_mm.h) ---- */

bool kern__mm_own(int64_t K)
{
    return conv_use_own(conv_ops_for(KERN_ISA_AUTO), K);
}

void kern__mm_nn(int64_t R, int64_t N, int64_t K, const float *a, int64_t lda, const float *b,
                 int64_t ldb, const float *init, float *c, int64_t ldc)
{
    conv_ops_for(KERN_ISA_AUTO)->mm_nn(R, N, K, a, lda, b, ldb, init, c, ldc, false);
}

void kern__mm_tn(int64_t R, int64_t K, int64_t N, const float *a, int64_t lda, const float *b,
                 int64_t ldb, float *c, int64_t ldc)
{
    conv_ops_for(KERN_ISA_AUTO)->mm_tn(R, K, N, a, lda, b, ldb, c, ldc, false, NULL);
}

void kern__transpose(int64_t rows, int64_t cols, const float *a, int64_t lda, float *t, int64_t ldt)
{
    /* 16 x 16 blocks: both the rows read and the rows written stay in L1 (an element-by-element
     * transpose of a 512 x 256 matrix measured 13x slower). */
    enum { TB = 16 };
    for (int64_t i0 = 0; i0 < rows; i0 += TB) {
        const int64_t i1 = rows - i0 < TB ? rows : i0 + TB;
        for (int64_t j0 = 0; j0 < cols; j0 += TB) {
            const int64_t j1 = cols - j0 < TB ? cols : j0 + TB;
            for (int64_t i = i0; i < i1; i++)
                for (int64_t j = j0; j < j1; j++)
                    t[j * ldt + i] = a[i * lda + j];
        }
    }
}

/* ---- the calls ---- */

void kern_conv2d_forward_isa(const kern_conv_geom *g, const float *x, const float *k,
                             const float *bias, float *y, float *ws, kern_isa isa)
{
    const conv_ops *ops = conv_ops_for(isa);
    if (g->n <= 0 || g->oh <= 0 || g->ow <= 0 || g->cout <= 0)
        return;
    const bool pointwise = conv_is_pointwise(g);
    const int64_t K = g->kh * g->kw * g->cin, rows_per = g->oh * g->ow, cout = g->cout;
    const int64_t in_per = g->h * g->w * g->cin, out_per = rows_per * cout;
    const int64_t nb_max = conv_chunk_images(g);
    const bool own = conv_use_own(ops, K), small = K <= CONV_SMALL_K;
    float *cols_ws = ws + K * cout;
    for (int64_t b0 = 0; b0 < g->n; b0 += nb_max) {
        const int64_t nb = g->n - b0 < nb_max ? g->n - b0 : nb_max, rows = nb * rows_per;
        const float *cols = x + b0 * in_per;
        float *yc = y + b0 * out_per;
        if (own && small && !pointwise) {
            ops->im2col_t(g, cols, nb, cols_ws);
            ops->mm_nn(rows, cout, K, cols_ws, rows, k, cout, bias, yc, cout, true);
            continue;
        }
        if (!pointwise) {
            ops->im2col(g, cols, nb, cols_ws);
            cols = cols_ws;
        }
        if (own) {
            ops->mm_nn(rows, cout, K, cols, K, k, cout, bias, yc, cout, false);
            continue;
        }
        /* The bias is preloaded into y (while the chunk is in cache) and sgemm adds to it. */
        if (bias)
            ops->bias_fill(rows, cout, bias, yc);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)cout, (int)K, 1.0f,
                    cols, (int)K, k, (int)cout, bias ? 1.0f : 0.0f, yc, (int)cout);
    }
}

void kern_conv2d_backward_isa(const kern_conv_geom *g, const float *x, const float *k,
                              const float *dy, float *dx, float *dk, float *db, float *ws,
                              kern_isa isa)
{
    const conv_ops *ops = conv_ops_for(isa);
    if (g->n <= 0)
        return;
    const int64_t K = g->kh * g->kw * g->cin, rows_per = g->oh * g->ow, cout = g->cout;
    const int64_t in_per = g->h * g->w * g->cin, out_per = rows_per * cout;
    if (rows_per <= 0 || cout <= 0 || K == 0) {
        /* No output cell reads the input: the gradient is zero. */
        if (dx)
            memset(dx, 0, sizeof(float) * (size_t)(g->n * in_per));
        return;
    }
    const bool pointwise = conv_is_pointwise(g);
    const int64_t nb_max = conv_chunk_images(g);
    /* dk and dx choose separately: dx's product (N = K, K = cout) is not dk's. */
    const bool own_dk = conv_use_own(ops, K), own_dx = ops->any_k && conv_use_own(ops, cout);
    const bool small = K <= CONV_SMALL_K;
    float *kt = ws, *cols_ws = ws + K * cout;
    if (dx && own_dx)
        kern__transpose(K, cout, k, cout, kt, K);
    for (int64_t b0 = 0; b0 < g->n; b0 += nb_max) {
        const int64_t nb = g->n - b0 < nb_max ? g->n - b0 : nb_max, rows = nb * rows_per;
        const float *dyc = dy + b0 * out_per;
        /* With our dk kernels the bias gradient comes with dk's first pass over dy. */
        if (db && !(dk && own_dk))
            ops->colsum(rows, cout, dyc, db);
        if (dk) {
            const float *cols = x + b0 * in_per;
            if (own_dk && small && !pointwise) {
                /* Small K: tap-major im2col, as in the forward pass. */
                ops->im2col_t(g, cols, nb, cols_ws);
                ops->mm_tn(rows, K, cout, cols_ws, rows, dyc, cout, dk, cout, true, db);
            } else {
                if (!pointwise) {
                    ops->im2col(g, cols, nb, cols_ws);
                    cols = cols_ws;
                }
                if (own_dk)
                    ops->mm_tn(rows, K, cout, cols, K, dyc, cout, dk, cout, false, db);
                else
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)K, (int)cout,
                                (int)rows, 1.0f, cols, (int)K, dyc, (int)cout, 1.0f, dk, (int)cout);
            }
        }
        if (dx) {
            /* The im2col block is dead once dk has it: dcols reuses the same workspace. */
            float *dxc = dx + b0 * in_per;
            float *dcols = pointwise ? dxc : cols_ws;
            if (own_dx)
                ops->mm_nn(rows, K, cout, dyc, cout, kt, K, NULL, dcols, K, false);
            else
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)K, (int)cout,
                            1.0f, dyc, (int)cout, k, (int)cout, 0.0f, dcols, (int)K);
            if (!pointwise)
                ops->col2im(g, dcols, nb, dxc);
        }
    }
}

void kern_conv2d_forward(const kern_conv_geom *g, const float *x, const float *k, const float *bias,
                         float *y, float *ws)
{
    kern_conv2d_forward_isa(g, x, k, bias, y, ws, KERN_ISA_AUTO);
}

void kern_conv2d_backward(const kern_conv_geom *g, const float *x, const float *k, const float *dy,
                          float *dx, float *dk, float *db, float *ws)
{
    kern_conv2d_backward_isa(g, x, k, dy, dx, dk, db, ws, KERN_ISA_AUTO);
}
