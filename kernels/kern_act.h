#ifndef CORNU_KERNELS_KERN_ACT_H
#define CORNU_KERNELS_KERN_ACT_H

/* Element-wise activations by Keras name, forward and backward, plus the plain reference twins
 * used by tests. Compute only. */

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
    ACT_SWISH, /* also "silu" */
    ACT_GELU,  /* Keras default approximate=False (erf form) */
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

#endif
