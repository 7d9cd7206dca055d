#ifndef CORNU_TRAINER_LAYERS_H
#define CORNU_TRAINER_LAYERS_H

/* The layer engine: forward and backward passes of a built model over batches of up to
 * max_batch rows, with every buffer of the step planned and allocated once by
 * layer_net_create(). Semantics are Keras 3's; the comment at the top of each
 * trainer/layers_*.c file states them per layer kind.
 *
 * Memory plan. Each node output gets a float32 buffer [max_batch, ...] (row-major, the node's
 * Keras shape), except that Flatten (channels_last), Reshape, InputLayer and inference-time
 * Dropout (and Dropout at rate 0) share their input's buffer. A training net adds one gradient
 * buffer per tensor that receives a gradient (shared the same way), the flat weight gradient
 * (n_trainable floats, parallel to m->params[0 .. n_trainable)), and what backward needs from
 * forward: activation pre-images (gelu and swish only), dropout masks, max-pooling argmax,
 * BatchNormalization batch statistics. Scratch memory (im2col, transposes) is one buffer shared by
 * all nodes. Nothing is allocated after layer_net_create(); forward and backward never allocate.
 *
 * Gradients. Backward writes d(loss)/d(weight) for every trainable weight (overwriting the flat
 * buffer: weights that get no gradient, e.g. on a dead branch, are zeroed). Inputs that do not
 * depend on any trainable weight get no gradient at all (a Dense right after an input skips
 * dx). Shared layers accumulate their weight gradients over all their calls.
 *
 * Threads and MPI: a net is single-threaded apart from OpenBLAS and never calls MPI. Several nets
 * over the same model may run forward/backward concurrently on different threads: they only read
 * m->params, except that training forwards update BatchNormalization moving statistics (see
 * layer_net_set_update_moving). Distributed BatchNormalization (across ranks and/or worker
 * threads) goes through the reduce hook, which makes forward/backward collective when set. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/err.h"
#include "trainer/model.h"

typedef struct layer_net layer_net;

/* Plans and allocates every buffer a step needs for batches of up to max_batch rows (see the
 * memory plan above). training=false plans inference only (no gradients, no masks, no saved
 * statistics). m must be built; the net borrows m, which must outlive it: parameters are read
 * from m->params at every call (so loading new weights needs no new net) and BatchNormalization
 * moving statistics are updated there in place by training forwards. Errors name the layer:
 * ERR_UNSUPPORTED (a kind or option the engine lacks, e.g. recurrent layers for now),
 * ERR_SHAPE (a node shape that disagrees with the layer's own geometry, unknown extents),
 * ERR_CONFIG (missing weights), ERR_NOMEM. On failure *out is untouched. */
int layer_net_create(model *m, int64_t max_batch, bool training, layer_net **out, err_info *e);
void layer_net_destroy(layer_net *n);

int64_t layer_net_max_batch(const layer_net *n);
bool layer_net_training(const layer_net *n);
/* Bytes of activation, gradient and scratch memory the plan allocated (not counting m). */
size_t layer_net_bytes(const layer_net *n);

/* Buffer of model input i, [max_batch, ...] row-major in the input's Keras shape; the caller
 * fills the first rows rows before layer_net_forward(). Embedding inputs hold integer ids as
 * floats. Borrowed, valid for the life of the net. */
float *layer_net_input(layer_net *n, int i);
/* Output i after layer_net_forward(): the first rows rows are valid. Borrowed. */
const float *layer_net_output(const layer_net *n, int i);
/* Training nets: where the loss writes d(loss)/d(output i) (the first rows rows) before
 * layer_net_backward(). Backward uses it as scratch (its contents are undefined afterwards).
 * NULL for inference nets. */
float *layer_net_output_grad(layer_net *n, int i);
/* The flat weight gradient, n_trainable floats parallel to m->params (NULL for inference nets
 * or a model without trainable weights). Written by layer_net_backward(). */
float *layer_net_grads(layer_net *n);
/* Training nets: makes backward write the weight gradient into buf (m->n_trainable floats,
 * borrowed; it must outlive its use) instead of the net's own buffer, e.g. memory the other
 * ranks of the node can read (comm_reducer_create_shm). NULL goes back to the net's own buffer.
 * layer_net_grads() returns buf from then on. */
void layer_net_set_grads(layer_net *n, float *buf);

/* Collective hook for distributed BatchNormalization: sums buf[0..n) over all ranks in place.
 * When set, a training forward calls it once per BatchNormalization call (batch mean and
 * variance sums plus the row count) and backward once more per call that propagates a gradient
 * to its input; every rank makes the same calls in the same order, also after a local error
 * (then with zeros), so ranks never hang. NULL (the default) = one process. */
typedef int (*layer_reduce_fn)(void *ctx, double *buf, int64_t n, err_info *e);
void layer_net_set_reduce(layer_net *n, layer_reduce_fn fn, void *ctx);

/* Called during backward as soon as grads[lo, hi) (element offsets) are final. Ranges come in
 * decreasing offset order, do not overlap, and together cover [0, n_trainable) exactly once per
 * backward (a range may span several layers). Lets the caller start gradient allreduce buckets
 * early. An error from the hook stops backward and is returned. */
typedef int (*layer_grad_ready_fn)(void *ctx, size_t lo, size_t hi, err_info *e);

/* Global index of this process's first row in the global batch (default 0): Dropout keys each
 * row's mask by its global row, so a data-parallel run draws exactly the masks one process
 * would draw for the whole batch, whatever the number of ranks. Set it before each forward
 * (e.g. the start of this rank's slice of the global batch). */
void layer_net_set_row_offset(layer_net *n, int64_t first_row);

/* Whether training forwards update the BatchNormalization moving statistics in m (default
 * true). When several training nets of one model run side by side on slices of one batch (worker
 * threads, sharing batch statistics through the reduce hook), exactly one of them must update
 * them, once per step; the others set false. The update happens after the layer's reduce-hook
 * call returns; nets read the moving mean only before that call (it is copied into the net), so
 * the others may still be running that layer. */
void layer_net_set_update_moving(layer_net *n, bool update);

/* The largest n any reduce-hook call of this net will pass (0 if it never calls the hook):
 * lets a caller that combines several nets' sums size its buffers once. */
int64_t layer_net_reduce_max(const layer_net *n);

/* Runs the model on the first rows rows (0 <= rows <= max_batch; 0 is allowed so that a rank
 * with an empty share still joins the collectives). training selects Keras' training mode
 * (Dropout active, BatchNormalization on batch statistics, moving statistics updated); it needs
 * a training net. Dropout masks are a pure function of (seed, step, layer index, call index,
 * global row; see layer_net_set_row_offset). Errors: ERR_USAGE (rows out of range, training on
 * an inference net), ERR_RANGE (an Embedding id outside [0, input_dim), naming the layer and
 * the row). */
int layer_net_forward(layer_net *n, int64_t rows, bool training, uint64_t seed, int64_t step,
                      err_info *e);

/* Backpropagates the output gradients of the last forward, which must have been a training
 * forward with the same rows (ERR_USAGE otherwise). Overwrites layer_net_grads(). ready may be
 * NULL. */
int layer_net_backward(layer_net *n, int64_t rows, layer_grad_ready_fn ready, void *ctx,
                       err_info *e);

#endif
