#ifndef CORNU_KERNELS_KERN_MM_H
#define CORNU_KERNELS_KERN_MM_H

/* Internal to kernels/: the register-tiled matrix products of kern_conv.c, shared with the Dense
 * layer (kern_dense.c), which is a pointwise convolution on one cell per row. Row-major, float32,
 * best instruction set of the CPU; see the top of kern_conv.c for when they beat cblas_sgemm. */

#include <stdbool.h>
#include <stdint.h>

/* True when our products beat cblas_sgemm on this CPU with OpenBLAS's current thread count and
 * kernels (kern_conv.c's policy). K is the convolution's taps (kh * kw * cin, for Dense its input
 * width) for the forward and kernel-gradient products, and cout (Dense: units) for the input
 * gradient: below CONV_SMALL_K ours win on every instruction set. */
bool kern__mm_own(int64_t K);

/* c[R, N] = a[R, K] b[K, N] (+ init[N] on every row when init is not NULL). */
void kern__mm_nn(int64_t R, int64_t N, int64_t K, const float *a, int64_t lda, const float *b,
                 int64_t ldb, const float *init, float *c, int64_t ldc);

/* c[K, N] += a[R, K]^T b[R, N]. */
void kern__mm_tn(int64_t R, int64_t K, int64_t N, const float *a, int64_t lda, const float *b,
                 int64_t ldb, float *c, int64_t ldc);

/* t[j * ldt + i] = a[i * lda + j] for i < rows, j < cols, in cache-sized blocks. */
void kern__transpose(int64_t rows, int64_t cols, const float *a, int64_t lda, float *t,
                     int64_t ldt);

#endif
