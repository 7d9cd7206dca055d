#ifndef CORNU_TRAINER_OPTIM_H
#define CORNU_TRAINER_OPTIM_H

/* Optimizers and learning-rate schedules with Keras 3 update rules (keras/src/optimizers).
 * The state lives in the model (m->opt) so that formats can save and restore it; the optim
 * handle only caches what a step needs. Not collective: every rank applies the same (already
 * all-reduced and averaged) gradients to its own replica.
 *
 * Slot layout (fixed: the Keras .h5 writer relies on it). Slot k of trainable element i is
 * m->opt.slots[k * m->n_trainable + i]:
 *   SGD:          slot 0 "momentum" (only when momentum > 0, else no slots)
 *   Adam, AdamW:  slot 0 "momentum" (m), slot 1 "velocity" (v), slot 2 "velocity_hat" (amsgrad)
 *   RMSprop:      slot 0 "velocity", then "momentum" if momentum > 0, then "average_gradient"
 *                 if centered, in that order
 *   Adagrad:      slot 0 "accumulator" (starts at initial_accumulator_value)
 *   Nadam:        slot 0 "momentum" (m), slot 1 "velocity" (v); scalars[0] is Keras 3's
 *                 u_product (starts at 1)
 * m->opt.iterations counts applied steps (Keras `iterations`). */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/err.h"
#include "trainer/model.h"

typedef struct optim optim;

/* Number of slots per trainable element for this configuration (layout above). */
int optim_slot_count(const model_optim_config *c);
/* Keras name of slot k ("momentum", "velocity", "velocity_hat", "average_gradient",
 * "accumulator"), or NULL if k is out of range for this configuration. Static string. */
const char *optim_slot_name(const model_optim_config *c, int k);

/* Validates m->train.optim (ERR_CONFIG naming the optimizer and the option: more than one of
 * clipnorm/clipvalue/global_clipnorm set, as Keras 3 refuses; negative clip values, momentum
 * outside [0, 1], beta or rho outside [0, 1), negative epsilon, weight_decay or
 * initial_accumulator_value; a schedule with decay_steps <= 0 or no/too many boundaries) and
 * sizes the state: if m->opt.n_slots already matches (state restored from a file) it is kept;
 * otherwise model_opt_state_alloc() makes fresh zeroed slots, Adagrad accumulators are set to
 * initial_accumulator_value and iterations to 0. Nadam's u_product (scalars[0]) is set to 1 on a
 * fresh state and recomputed from iterations if it is not positive. m must be built
 * (ERR_USAGE). On success *out owns the handle (optim_destroy). The handle borrows nothing: it
 * copies the configuration; later changes to m->train.optim need a new handle. */
int optim_create(model *m, optim **out, err_info *e);
void optim_destroy(optim *o);

/* The learning rate the schedule gives at this iteration count, as Keras evaluates
 * optimizer.learning_rate at `iterations` before the step: constant; ExponentialDecay
 * initial * rate^(step / decay_steps) (floored exponent if staircase); PiecewiseConstantDecay
 * values[0] while step <= bounds[0], values[i] for bounds[i-1] < step <= bounds[i], the last
 * value beyond; CosineDecay initial * ((1 - alpha) * 0.5 * (1 + cos(pi * min(step, decay) /
 * decay)) + alpha). */
double optim_lr(const optim *o, int64_t iteration);
/* Same for a bare schedule. */
double optim_schedule_value(const model_schedule *s, int64_t iteration);

/* One update of m->params[0 .. n_trainable) and the slots from grads (flat, parallel to the
 * trainable params, already averaged), then m->opt.iterations++. In Keras order: clip (clipnorm
 * scales each weight's gradient by clipnorm / max(||g||, clipnorm); global_clipnorm scales all
 * by clipnorm * min(1 / ||g||, 1 / clipnorm), NaN if the norm is not finite, like Keras;
 * clipvalue clamps to [-v, v]); weight decay p -= p * weight_decay * lr when weight_decay > 0
 * (Keras 3 applies it on every optimizer; AdamW's default is set by its config); then the rule.
 * Elementwise arithmetic is float32 like Keras, norms are accumulated in double, per-step
 * scalars (bias corrections) in double then rounded. No allocation. ERR_INTERNAL if m is not
 * the model the handle was created for (trainable count or slot count changed). */
int optim_step(optim *o, model *m, const float *grads, err_info *e);

/* optim_step() in three parts, so that worker threads can each update a range of the
 * parameters: optim_step_begin() computes this step's scalars, the clipping norms (over the
 * whole gradient, which must be final) and Nadam's u_product; optim_step_range() applies the
 * rule to elements [lo, hi) (ranges of different calls must not overlap; together they must
 * cover [0, n_trainable) once); optim_step_end() increments m->opt.iterations. The bits are the
 * same as optim_step()'s for any split. Concurrent optim_step_range() calls on disjoint ranges
 * are safe; begin and end must not overlap them. Errors of begin as optim_step(). */
int optim_step_begin(optim *o, model *m, const float *grads, err_info *e);
void optim_step_range(const optim *o, model *m, const float *grads, size_t lo, size_t hi);
void optim_step_end(const optim *o, model *m);
/* optim_step_range() with the gradient of elements [lo, hi) at g[0 .. hi - lo) (e.g. a small
 * buffer holding just that range). */
void optim_step_range_at(const optim *o, model *m, const float *g, size_t lo, size_t hi);
/* True when the update needs the whole gradient before any range (clipnorm or global_clipnorm:
 * optim_step_begin computes norms over it). */
bool optim_clips_by_norm(const optim *o);

#endif
