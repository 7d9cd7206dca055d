#ifndef CORNU_KERNELS_KERN_POOL_H
#define CORNU_KERNELS_KERN_POOL_H

/* 2-D max and average pooling (and 1-D as h = 1, ph = 1), forward and backward, on float32,
 * channels last, plus the plain-loop reference twins used by tests. Compute only: no
 * allocation, never fails (shapes are validated by the caller), no threads.
 *
 * Layouts: x [n, h, w, c], y [n, oh, ow, c]. Output cell (oy, ox) pools the window of input
 * rows oy*sh - pad_top .. + ph - 1 and columns ox*sw - pad_left .. + pw - 1, clipped to the
 * input: padded cells never take part (max ignores them, avg does not count them), as in TF.
 * Every call reads only g->n samples, so a copy of the geom with a smaller n (the last, partial
 * batch) is fine. */

#include <stdbool.h>
#include <stdint.h>

#include "kernels/kern_conv.h" /* kern_isa */

typedef struct kern_pool_geom {
    int64_t n, h, w, c;        /* input [n, h, w, c] */
    int64_t ph, pw;            /* pool_size */
    int64_t sh, sw;            /* strides (Keras default: pool_size) */
    int64_t pad_top, pad_left; /* padding before; after-padding implied by oh, ow */
    int64_t oh, ow;            /* output [n, oh, ow, c] */
} kern_pool_geom;

/* Fills pad_top, pad_left, oh, ow exactly as TF/Keras: "valid" (same == false):
 * out = floor((in - p) / s) + 1, no padding; "same": out = ceil(in / s),
 * pad_total = max((out - 1) * s + p - in, 0), pad_before = pad_total / 2. A "valid" pool larger
 * than the input gives out <= 0: the caller must reject that shape. */
void kern_pool_geom_set(kern_pool_geom *g, bool same);

/* y = max over each window. If argmax is not NULL ([n, oh, ow, c] int32, training) it receives,
 * for every output element, the position of the max inside its own sample:
 * argmax[b, oy, ox, ch] = (iy * w + ix) * c + ch. Ties: the first cell in row-major window order
 * wins (like TF). A window lying wholly in the padding (possible only in a hand-made geom) gives
 * y = 0 and argmax = -1. */
void kern_maxpool2d_forward(const kern_pool_geom *g, const float *x, float *y, int32_t *argmax);
/* dx [n, h, w, c] = gradient routed to the argmax cells (OVERWRITTEN; cells no window selected
 * get 0; overlapping windows that select the same cell add up). */
void kern_maxpool2d_backward(const kern_pool_geom *g, const float *dy, const int32_t *argmax,
                             float *dx);

/* y = mean over the non-padded cells of each window ("same" divides by the number of cells
 * inside the input, like TF, not by ph * pw). */
void kern_avgpool2d_forward(const kern_pool_geom *g, const float *x, float *y);
/* dx [n, h, w, c] = sum over the windows containing each cell of dy / (that window's cell
 * count) (OVERWRITTEN). */
void kern_avgpool2d_backward(const kern_pool_geom *g, const float *dy, float *dx);

/* As above with the instruction-set variant pinned (see kern_isa in kern_conv.h); isa must be
 * supported. For tests. */
void kern_maxpool2d_forward_isa(const kern_pool_geom *g, const float *x, float *y, int32_t *argmax,
                                kern_isa isa);
void kern_maxpool2d_backward_isa(const kern_pool_geom *g, const float *dy, const int32_t *argmax,
                                 float *dx, kern_isa isa);
void kern_avgpool2d_forward_isa(const kern_pool_geom *g, const float *x, float *y, kern_isa isa);
void kern_avgpool2d_backward_isa(const kern_pool_geom *g, const float *dy, float *dx, kern_isa isa);

/* Plain-loop reference twins (oracle for tests), same contracts. */
void kern_ref_maxpool2d_forward(const kern_pool_geom *g, const float *x, float *y, int32_t *argmax);
void kern_ref_maxpool2d_backward(const kern_pool_geom *g, const float *dy, const int32_t *argmax,
                                 float *dx);
void kern_ref_avgpool2d_forward(const kern_pool_geom *g, const float *x, float *y);
void kern_ref_avgpool2d_backward(const kern_pool_geom *g, const float *dy, float *dx);

#endif
