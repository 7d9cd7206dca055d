#ifndef CORNU_TRAINER_INIT_H
#define CORNU_TRAINER_INIT_H

/* Weight initializers with Keras 3 semantics (keras/src/initializers). Deterministic: the values
 * of weight w are a pure function of (seed, w) through kernels/rng.h, so every rank that calls
 * init_model() with the same seed gets the same model. The random streams are ours, so the
 * values follow Keras' distributions but are not Keras' own numbers. Not collective. */

#include <stdint.h>

#include "kernels/err.h"
#include "kernels/rng.h"
#include "trainer/model.h"

/* Initialises every weight (trainable and not) of the built model m from its layer's
 * initializers, chosen by the weight's short name (after the last '/', before ':'):
 * "kernel" -> kernel_init, "recurrent_kernel" -> recurrent_init, "bias" -> bias_init,
 * "embeddings" -> embeddings_init, "gamma", "beta", "moving_mean", "moving_variance" -> their
 * inits. An LSTM bias with cfg.unit_forget_bias (the Keras default) has its forget-gate quarter
 * [units, 2 units) set to ones and the rest from bias_init.
 * Weight w draws from the stream rng_seed(seed, w), or rng_seed(init.seed, 0) when the
 * initializer has its own seed (so, as in Keras, a seeded initializer repeats its values).
 * Errors: ERR_USAGE if m is not built; ERR_CONFIG naming the weight for an unknown short name
 * or an initializer that does not fit the weight (orthogonal below rank 2, identity not rank
 * 2, variance scaling with scale <= 0, stddev < 0); ERR_INTERNAL if a weight's layer, shape
 * or offset is inconsistent with the model; ERR_NOMEM. On failure some weights may already have
 * been written. */
int init_model(model *m, uint64_t seed, err_info *e);

/* Fills out[0 .. prod(shape)) for one tensor of this shape from initializer in, drawing from r.
 * Fans follow Keras compute_fans(): rank 0 -> 1, 1; rank 1 -> n, n; rank 2 [in, out]; higher
 * ranks [k..., in, out] times the receptive field prod(k...). Variance scaling divides scale by
 * max(1, fan); truncated normal uses stddev sqrt(scale) / 0.87962566103423978 and redraws
 * beyond two stddevs, untruncated normal sqrt(scale), uniform the limit sqrt(3 scale).
 * Orthogonal: QR of a normal [max(r, c), min(r, c)] matrix (r = prod of all but the last
 * extent, c = the last), columns multiplied by sign(diag(R)), transposed if r < c, times gain.
 * Errors as for init_model(); `what` names the tensor in messages. */
int init_fill(const model_init *in, int rank, const int64_t *shape, float *out, rng *r,
              const char *what, err_info *e);

/* Keras compute_fans() for a shape (see init_fill). */
void init_fans(int rank, const int64_t *shape, double *fan_in, double *fan_out);

#endif
