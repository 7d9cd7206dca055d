#ifndef CORNU_KERNELS_KERN_CONV_H
#define CORNU_KERNELS_KERN_CONV_H

/* 2-D convolution (Conv2D, and Conv1D as h = 1, kh = 1), forward and backward, on float32,
 * channels last, plus the plain-loop reference twins used by tests. Compute only: no MPI, no
 * I/O, no allocation, never fails (shapes are validated by the caller's infer step) and never
 * creates threads. The matrix products run either on OpenBLAS (multi-threaded as the runtime
 * set it) or on our own single-threaded kernels where those are faster: small K = kh*kw*cin
 * (first layers), and every K on AVX-512 CPUs while OpenBLAS runs on at most 2 threads (see
 * kern_conv.c). Results agree with the reference to float rounding either way.
 *
 * Layouts (row-major, exactly as Keras):
 *   x  input   [n, h, w, cin]
 *   k  kernel  [kh, kw, cin, cout]
 *   b  bias    [cout]
 *   y  output  [n, oh, ow, cout]
 * y[b, oy, ox, co] = bias[co] + sum over ky, kx, ci of
 *   x[b, oy*sh - pad_top + ky*dh, ox*sw - pad_left + kx*dw, ci] * k[ky, kx, ci, co],
 * where input cells outside [0, h) x [0, w) are zero (the padding). The padding after the input
 * is whatever oh and ow imply, so callers may also describe Conv1D "causal" padding
 * (pad_left = (kw - 1) * dw, ow = ceil(w / sw)) or any explicit padding by filling the struct
 * themselves instead of calling kern_conv_geom_set().
 *
 * Every call reads only g->n samples, so a caller may pass a copy of its geom with a smaller n
 * (the last, partial batch) together with the workspace sized for the full n. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct kern_conv_geom {
    int64_t n, h, w, cin;      /* input [n, h, w, cin], NHWC */
    int64_t kh, kw, cout;      /* kernel [kh, kw, cin, cout] (Keras layout) */
    int64_t sh, sw, dh, dw;    /* strides, dilations (>= 1) */
    int64_t pad_top, pad_left; /* zero padding before; after-padding implied by oh, ow */
    int64_t oh, ow;            /* output [n, oh, ow, cout] */
} kern_conv_geom;

/* Fills pad_top, pad_left, oh and ow from the other fields exactly as TF/Keras do.
 * "valid" (same == false): no padding, out = floor((in - ((k - 1) * d + 1)) / s) + 1.
 * "same": out = ceil(in / s), pad_total = max((out - 1) * s + (k - 1) * d + 1 - in, 0),
 * pad_before = pad_total / 2 (the odd cell goes after, like TF).
 * A "valid" window larger than the input gives out <= 0: the caller must reject that shape. */
void kern_conv_geom_set(kern_conv_geom *g, bool same);

/* Number of floats of scratch memory (ws) that kern_conv2d_forward() and kern_conv2d_backward()
 * need for any call whose geom equals *g except for a smaller or equal n. 0 means ws may be
 * NULL. The size does not grow beyond a few images' worth of im2col rows: the kernels work on
 * cache-sized chunks of the batch. */
size_t kern_conv2d_workspace(const kern_conv_geom *g);

/* y = conv(x, k) + bias. bias may be NULL (use_bias=False). y is overwritten; x, k, bias are
 * read only; ws has kern_conv2d_workspace(g) floats and its contents are garbage afterwards. */
void kern_conv2d_forward(const kern_conv_geom *g, const float *x, const float *k, const float *bias,
                         float *y, float *ws);

/* Given dy = dL/dy [n, oh, ow, cout]:
 *   dk [kh, kw, cin, cout] += dL/dk   (ACCUMULATED, never cleared here)
 *   db [cout]              += dL/dbias (ACCUMULATED; db may be NULL when there is no bias)
 *   dx [n, h, w, cin]       = dL/dx    (OVERWRITTEN; dx may be NULL to skip it, e.g. for the
 *                                       first layer, which halves the work)
 * dk may be NULL to skip the kernel gradient (frozen layer). x and k are the forward inputs. */
void kern_conv2d_backward(const kern_conv_geom *g, const float *x, const float *k, const float *dy,
                          float *dx, float *dk, float *db, float *ws);

/* Instruction-set variants. The calls above use the best variant the CPU supports
 * (KERN_ISA_AUTO); the _isa forms pin one, so that tests can exercise every code path on one
 * machine. They give the same results up to float rounding (FMA or not, summation order). */
typedef enum kern_isa {
    KERN_ISA_AUTO,    /* best supported */
    KERN_ISA_GENERIC, /* portable C, whatever the compiler's baseline target is */
    KERN_ISA_AVX2,    /* x86-64 AVX2 + FMA */
    KERN_ISA_AVX512,  /* x86-64 AVX-512 F/VL/BW/DQ */
    KERN_ISA_COUNT
} kern_isa;

/* Whether this build and this CPU can run isa (AUTO and GENERIC always can). */
bool kern_isa_supported(kern_isa isa);
/* As kern_conv2d_forward() / kern_conv2d_backward() with the variant pinned; isa must be
 * supported (CHECKed). */
void kern_conv2d_forward_isa(const kern_conv_geom *g, const float *x, const float *k,
                             const float *bias, float *y, float *ws, kern_isa isa);
void kern_conv2d_backward_isa(const kern_conv_geom *g, const float *x, const float *k,
                              const float *dy, float *dx, float *dk, float *db, float *ws,
                              kern_isa isa);

/* Plain-loop reference twins (oracle for tests; slow, accumulate in double). Same contracts as
 * the optimised calls above, without workspace. */
void kern_ref_conv2d_forward(const kern_conv_geom *g, const float *x, const float *k,
                             const float *bias, float *y);
void kern_ref_conv2d_backward(const kern_conv_geom *g, const float *x, const float *k,
                              const float *dy, float *dx, float *dk, float *db);

#endif
