#ifndef CORNU_TRAINER_FIT_H
#define CORNU_TRAINER_FIT_H

/* The training loop: fit, evaluate and predict over a built model, the layer engine, the losses
 * and optimizers and the data loader. MPI-free: data-parallel runs pass a fit_comm whose hooks
 * sum across ranks (launch/ wires them to trainer/comm.h); NULL means one process.
 *
 * Every buffer a step needs is allocated by fit_session_create(); the per-step path allocates
 * nothing. Reporting goes through callbacks: library code never prints. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/err.h"
#include "trainer/data.h"
#include "trainer/layers.h"
#include "trainer/model.h"
#include "trainer/optim.h"

#define FIT_MAX_LOGS 16
/* Most worker threads per rank (fit_config.threads, fit_evaluate, fit_predict). */
#define FIT_MAX_THREADS 256

/* Collective hooks for data-parallel training; every member may be NULL for one process. */
typedef struct fit_comm {
    void *ctx;
    int rank, size;
    /* Gradients: begin at the start of backward, ready as ranges become final, finish before
     * the update. After finish the gradient buffer holds the SUM over ranks. */
    int (*grad_begin)(void *ctx, err_info *e);
    int (*grad_ready)(void *ctx, size_t lo, size_t hi, err_info *e);
    int (*grad_finish)(void *ctx, err_info *e);
    /* Sums buf[0..n) over ranks in place (metrics, BatchNormalization statistics). */
    int (*sum)(void *ctx, double *buf, int64_t n, err_info *e);
    /* Worst error code over ranks (ranks fail together); may rewrite e with the failing rank's
     * message. */
    int (*agree)(void *ctx, int rc, err_info *e);
    /* What this rank is doing, for failure reports ("epoch 2 step 37"). */
    void (*status)(void *ctx, const char *what);
} fit_comm;

/* Named scalar logs as Keras prints them: "loss", "accuracy", "val_loss", ... */
typedef struct fit_logs {
    int n;
    char names[FIT_MAX_LOGS][MODEL_NAME_MAX + 64];
    double values[FIT_MAX_LOGS];
} fit_logs;

typedef struct fit_timing {
    double data_s, compute_s, comm_s, step_s; /* cumulative for the epoch, this rank */
} fit_timing;

typedef struct fit_callbacks {
    void *ctx;
    /* After each training step: step is 1-based within the epoch. */
    void (*on_step)(void *ctx, int64_t epoch, int64_t step, int64_t steps, const fit_logs *logs,
                    double elapsed_s);
    /* After each epoch (validation included). */
    void (*on_epoch)(void *ctx, int64_t epoch, int64_t epochs, int64_t steps, const fit_logs *logs,
                     double elapsed_s, const fit_timing *t);
} fit_callbacks;

/* One input or target array: a data source and the scale applied while reading it. */
typedef struct fit_array {
    data_source *src; /* borrowed */
    float scale;      /* 1/255 for uint8 images, else 1 */
} fit_array;

/* A dataset: n_x inputs (model input order) and n_y targets (model output order). */
typedef struct fit_data {
    int n_x, n_y;
    fit_array x[8], y[8];
} fit_data;

typedef struct fit_config {
    int64_t epochs;
    int64_t initial_epoch; /* resume: epochs run are initial_epoch .. epochs-1 */
    int64_t batch;         /* global batch size */
    uint64_t seed;         /* shuffling and dropout */
    bool shuffle;
    double validation_split; /* last fraction of train as validation, like Keras */
    const fit_data *val;     /* separate validation data, or NULL */
    int64_t steps_limit;     /* stop each epoch after this many steps (0 = all; tests/benches) */
    /* Worker threads of this rank (0 or 1: the calling thread alone). Each worker trains its own
     * net on a contiguous slice of this rank's rows of every batch (the loader's rank slicing
     * rule); BatchNormalization statistics, gradients, losses and metrics are summed over the
     * workers in worker order, then over ranks. Set OpenBLAS to 1 thread (rt) when using them.
     * The same (ranks, threads) gives the same bits; other thread counts agree within rounding
     * (docs/determinism.md). Worker 0 is the calling thread: it alone calls the fit_comm hooks,
     * after all workers' gradients are summed (no overlap of communication with backward). */
    int threads;
} fit_config;

fit_config fit_config_default(void);

typedef struct fit_session fit_session;

/* Plans a training session: the training net for `batch` rows (this rank's share), losses and
 * metrics resolved against the model outputs, the optimizer, target buffers. m must be built,
 * initialised (or loaded) and compiled (m->train). Collective if comm is set. */
int fit_session_create(model *m, const fit_config *c, const fit_comm *comm, fit_session **out,
                       err_info *e);
void fit_session_destroy(fit_session *s);
/* The session's flat gradient buffer (m->n_trainable floats): what data-parallel runs reduce. */
float *fit_session_grads(fit_session *s);
/* Makes the session's gradient (what fit_session_grads returns, and what the optimizer reads)
 * live in buf (m->n_trainable floats, borrowed), e.g. the node-shared buffer of
 * comm_reducer_create_shm(). NULL restores the session's own buffer. */
void fit_session_set_grads(fit_session *s, float *buf);

/* A shared update (launch/dist.c wires it to comm_reducer_share): the model's parameters and
 * optimizer state are one copy that several ranks share, and this rank updates only its own
 * ranges of the trainable parameters. */
typedef struct fit_shard {
    void *ctx;
    /* The i-th range [*lo, *hi) of trainable elements this rank updates; false after the last. */
    bool (*range)(void *ctx, size_t i, size_t *lo, size_t *hi);
    /* After the gradient sum: the summed gradient of [lo, hi) (within one range) into dst.
     * Called by several worker threads at once. */
    void (*grad)(void *ctx, size_t lo, size_t hi, float *dst);
    /* This rank has applied its part of the step's update. */
    void (*updated)(void *ctx);
    /* Waits until every sharing rank has applied its part (before the parameters are read). */
    int (*sync)(void *ctx, err_info *e);
    /* This rank writes the shared non-trainable state (BatchNormalization moving statistics);
     * exactly one of the sharing ranks must. */
    bool writes_moving;
} fit_shard;

/* False when the optimizer clips by norm (clipnorm, global_clipnorm): its scale needs the whole
 * summed gradient, so a shared update is not possible. */
bool fit_session_can_shard(const fit_session *s);
/* Makes fit_train update through sh (copied; NULL: every element on this rank again). ERR_USAGE
 * when fit_session_can_shard() is false. fit_train returns with the shared state synced. */
int fit_session_set_shard(fit_session *s, const fit_shard *sh, err_info *e);

/* Trains on `train` (validation as configured). Logs of the last epoch go to *last (may be
 * NULL). Errors: data/shape mismatch (ERR_SHAPE naming the array and the model output), a NaN
 * loss (ERR_NUMERIC naming the epoch and step), labels out of range (ERR_RANGE). */
int fit_train(fit_session *s, const fit_data *train, const fit_callbacks *cb, fit_logs *last,
              err_info *e);

/* Loss and metrics of m over data in inference mode, batch rows at a time, on threads worker
 * threads (0 or 1: the calling thread alone; see fit_config.threads). */
int fit_evaluate(model *m, const fit_data *data, int64_t batch, int threads, const fit_comm *comm,
                 fit_logs *out, err_info *e);

/* Inference: runs m over n_x input sources (all the same row count) batch rows at a time, each
 * batch split over threads worker threads (0 or 1: the calling thread alone), and writes each
 * output i (rows x output row length) into out[i], which the caller allocated with
 * fit_output_row_len(m, i) * rows floats. */
int fit_predict(model *m, data_source *const *x, int n_x, int64_t batch, int threads,
                float *const *out, err_info *e);
int64_t fit_output_row_len(const model *m, int i);

/* When a model input has free extents (e.g. [None, None, 20]: any number of time steps), fixes
 * them to the data's row shapes (model_inputs_specialize) so the engine can plan its buffers.
 * Does nothing for fully known inputs. */
int fit_data_specialize(model *m, const fit_data *d, err_info *e);

/* Checks that data arrays fit the model: n_x == inputs, n_y == outputs, row shapes match
 * (targets: sparse labels [1] or the output's row shape), equal row counts. Errors name the
 * array (by `what`, e.g. "train x[0]") and both shapes. */
int fit_data_check(const model *m, const fit_data *d, bool need_targets, const char *what,
                   err_info *e);

#endif
