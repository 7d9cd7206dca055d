#ifndef CORNU_KERNELS_KERN_ACT_H
#define CORNU_KERNELS_KERN_ACT_H

/* Element-wise activations by Keras name, forward and backward, plus the plain reference twins
 * used by tests. Compute only. */

#include <stdbool.h>
#include <stdint.h>

#include "kernels/err.h"

typedef enum act_kind {
    ACT_LINEAR,
    ACT_RELU,
    ACT_SIGMOID,
    ACT_TANH,
    ACT_SOFTMAX, /* over the last axis */
    ACT_ELU,
    ACT_SELU,
    ACT_SOFTPLUS,
    ACT_SOFTSIGN,
    ACT_SWISH,           /* also "silu" */
    ACT_GELU,            /* Keras default approximate=False (erf form) */
    ACT_HARD_SIGMOID,    /* Keras 3: clip(x / 6 + 0.5, 0, 1) */
    ACT_HARD_SIGMOID_K2, /* Keras 1/2, tf.keras: clip(0.2 * x + 0.5, 0, 1) */
    ACT_EXPONENTIAL,
    ACT_RELU6,
    ACT_LEAKY_RELU, /* Keras activation "leaky_relu": negative_slope 0.2 */
    ACT_COUNT
} act_kind;

/* Keras spelling -> kind ("silu" and "swish" both map to ACT_SWISH). ERR_CONFIG naming the
 * name if unknown. */
int kern_act_from_name(const char *name, act_kind *out, err_info *e);
/* Canonical Keras spelling ("linear", "relu", ...). */
const char *kern_act_name(act_kind k);

/* ---- Kernels (added by the layer engine). Layouts are row-major [rows, cols]; element-wise
 * kinds ignore the row structure, ACT_SOFTMAX normalises each row of cols. Float32 throughout,
 * with the same formulas as Keras 3 (see kern_act.c). None of these allocate or fail. ---- */

/* y = act(x). y == x (in place) is allowed. */
void kern_act_forward(act_kind k, int64_t rows, int64_t cols, const float *x, float *y);

/* True if kern_act_backward() needs the pre-activation x (gelu, swish); every other kind
 * derives its derivative from the output y alone, so callers need not keep x. */
bool kern_act_backward_needs_x(act_kind k);

/* dx = dL/dx given dy = dL/dy, the output y = act(x) and, when kern_act_backward_needs_x(k),
 * the input x (otherwise x may be NULL). dx == dy (in place) is allowed. */
void kern_act_backward(act_kind k, int64_t rows, int64_t cols, const float *x, const float *y,
                       const float *dy, float *dx);

/* Dense/Conv epilogue: y[r, j] = act(y[r, j] + b[j]) in place (b NULL: no bias). If z is not
 * NULL it receives the pre-activation y + b (needed later when kern_act_backward_needs_x). */
void kern_act_bias_forward(act_kind k, int64_t rows, int64_t cols, const float *b, float *y,
                           float *z);

/* Backward epilogue, in place: dy[r, j] *= act'(...) (z is the pre-activation, read only when
 * kern_act_backward_needs_x; y the output), then db[j] (+)= sum over r of dy[r, j] when db is
 * not NULL: accumulated if acc_db, overwritten otherwise. */
void kern_act_bias_backward(act_kind k, int64_t rows, int64_t cols, const float *z, const float *y,
                            float *dy, float *db, bool acc_db);

/* Parametrised ReLU layer (Keras ReLU / activations.relu):
 * f(x) = clip(x > threshold ? x : 0, 0, max_value) - negative_slope * max(threshold - x, 0),
 * no clipping when max_value < 0 (None); threshold == 0 uses max(x, 0). */
typedef struct kern_relu_params {
    float max_value; /* < 0: none */
    float negative_slope;
    float threshold;
} kern_relu_params;
void kern_relu_ex_forward(const kern_relu_params *p, int64_t n, const float *x, float *y);
/* dx = dy * f'(x); dx == dy allowed. */
void kern_relu_ex_backward(const kern_relu_params *p, int64_t n, const float *x, const float *dy,
                           float *dx);

/* ELU layer: x > 0 ? x : alpha * (exp(x) - 1). Backward from x. dx == dy allowed. */
void kern_elu_forward(float alpha, int64_t n, const float *x, float *y);
void kern_elu_backward(float alpha, int64_t n, const float *x, const float *dy, float *dx);

/* LeakyReLU layer: x >= 0 ? x : alpha * x. dx == dy allowed. */
void kern_leaky_relu_forward(float alpha, int64_t n, const float *x, float *y);
void kern_leaky_relu_backward(float alpha, int64_t n, const float *x, const float *dy, float *dx);

/* Softmax over the middle axis of [outer, len, inner] (the Softmax layer's axis). Backward from
 * the output y: dx = y * (dy - sum(dy * y)). dx == dy allowed. */
void kern_softmax_forward(int64_t outer, int64_t len, int64_t inner, const float *x, float *y);
void kern_softmax_backward(int64_t outer, int64_t len, int64_t inner, const float *y,
                           const float *dy, float *dx);

/* Plain reference twins (oracles for tests): straight formulas evaluated in double from x. */
void kern_ref_act_forward(act_kind k, int64_t rows, int64_t cols, const float *x, float *y);
void kern_ref_act_backward(act_kind k, int64_t rows, int64_t cols, const float *x, const float *dy,
                           float *dx);

#endif
