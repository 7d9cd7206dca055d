#ifndef CORNU_KERNELS_KERN_DENSE_H
#define CORNU_KERNELS_KERN_DENSE_H

/* Fully connected layer (Keras Dense) on float32: matrix products by our own register-tiled
 * kernels where they beat OpenBLAS on this CPU (the convolutions' kernels, kern_conv.c), else
 * cblas_sgemm (row major), with the bias and activation fused into one pass over the output, plus
 * plain-loop reference twins for tests. Compute only: no allocation, never fails, no threads of
 * its own. The results are deterministic for a given CPU, thread count and OpenBLAS.
 *
 * Layouts (row-major, Keras): x [rows, in], k [in, out], b [out], y [rows, out]. A Dense applied
 * to a rank > 2 input works on rows = product of all leading extents. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/kern_act.h"

/* y = act(x k + b). b may be NULL (use_bias=False). If z is not NULL it receives the
 * pre-activation x k + b (required by kern_dense_backward when kern_act_backward_needs_x). */
void kern_dense_forward(int64_t rows, int64_t in, int64_t out, act_kind act, const float *x,
                        const float *k, const float *b, float *z, float *y);

/* Floats of scratch kern_dense_backward wants for dx (its ws). */
size_t kern_dense_workspace(int64_t in, int64_t out);

/* Given dy = dL/dy [rows, out], which is OVERWRITTEN with dL/d(pre-activation):
 *   dk [in, out]   (+)= x^T dz      (NULL: skip)
 *   db [out]       (+)= sum_r dz    (NULL: skip)
 *   dx [rows, in]  (+)= dz k^T      (NULL: skip)
 * dk and db are accumulated when acc_w, overwritten otherwise; dx likewise with acc_x. z is the
 * pre-activation from the forward call (read only when kern_act_backward_needs_x(act)), y the
 * output. ws: kern_dense_workspace(in, out) floats of scratch, or NULL (dx then by sgemm). */
void kern_dense_backward(int64_t rows, int64_t in, int64_t out, act_kind act, const float *x,
                         const float *k, const float *z, const float *y, float *dy, float *dk,
                         float *db, bool acc_w, float *dx, bool acc_x, float *ws);

/* Plain-loop reference twins (oracle for tests; double accumulation). The reference backward
 * takes the forward input x, computes act' from the pre-activation itself, leaves dy untouched
 * and always overwrites dk, db, dx (each may be NULL). */
void kern_ref_dense_forward(int64_t rows, int64_t in, int64_t out, act_kind act, const float *x,
                            const float *k, const float *b, float *y);
void kern_ref_dense_backward(int64_t rows, int64_t in, int64_t out, act_kind act, const float *x,
                             const float *k, const float *b, const float *dy, float *dk, float *db,
                             float *dx);

#endif
