#include "trainer/fit.h"

#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "trainer/fit_pool.h"
#include "trainer/loss.h"

/* How long an idle worker thread polls for the next piece of work before it sleeps: long enough
 * to cover the serial parts of a step (data loading, the update's bookkeeping), short enough
 * not to keep a core busy for nothing on a shared machine. */
#define FIT_SPIN_US 200.0
/* Gradient and optimizer ranges of the workers start at multiples of this many floats (one
 * 64-byte cache line), so no two workers write the same line. */
#define FIT_RANGE_ALIGN 16
/* Floats per piece of the workers' overlapped gradient sum (below). */
#define FIT_SUM_CHUNK 16384

/* One worker thread of a session (docs/design.md, "Threads"): its own nets over the shared model,
 * taking a contiguous slice [lo, lo + rows) of this rank's rows of each batch. Worker 0 runs on
 * the caller's thread and its training net is the session's (its gradient buffer is the one
 * data-parallel runs reduce). */
typedef struct fit_worker {
    fit_session *s;
    int id;
    layer_net *net;  /* training net (NULL in evaluate/predict) */
    layer_net *vnet; /* inference net for validation, evaluate, predict (or NULL) */
    double *acc;     /* loss/metric sums of this worker */
    int64_t lo, rows;
    size_t glo, ghi; /* gradient and optimizer range */
    bool fwd_ok;
    int rc;
    err_info e;
    double *red; /* posted to the reduce hook */
} fit_worker;

struct fit_session {
    model *m;
    fit_config cfg;
    fit_comm comm; /* zeroed when single process */
    bool has_comm;
    layer_net *net;
    optim *opt;
    int64_t local_max; /* most rows this rank gets from one global batch */
    int n_out;
    model_loss loss[8]; /* per output */
    double loss_weight[8];
    int64_t out_len[8]; /* output row length */
    int64_t y_len[8];   /* target row length (1 for sparse labels) */
    float *y[8];        /* target buffers [local_max, y_len] */
    int n_metrics;
    metric_kind metric[8][MODEL_MAX_METRICS]; /* resolved per output */
    double *acc; /* running sums: loss, rows, then metric (sum,count) pairs */
    int n_acc;
    int n_reg; /* weights with an L1/L2 penalty */
    struct fit_reg {
        size_t offset, count;
        double l1, l2;
    } * reg;
    /* Worker threads (n_workers > 1 only). */
    int n_workers;
    fit_pool *pool;
    fit_worker *w;
    float *xstage[8]; /* this rank's rows of the batch, before each worker copies its slice */
    int64_t x_len[8];
    double *red; /* reduce hook: the workers' sum */
    int64_t red_max;
    int red_rc;
    err_info red_e;
    /* Worker threads under MPI: the sum over workers runs during backward, in chunks, and worker
     * 0 hands each summed range to the gradient reducer at once (overlap_*, below). */
    bool overlap;
    size_t n_chunks;
    struct fit_front {
        _Atomic size_t v;
        char pad[64 - sizeof(size_t)];
    } * front;                  /* [n_workers] each worker's final range is [front, n) */
    _Atomic size_t next_chunk;  /* chunks claimed so far, counted from the end */
    _Atomic int64_t *chunk_sum; /* [n_chunks] the step whose sum the chunk holds */
    int64_t ostep;              /* steps run in this mode */
    size_t reported;            /* worker 0: chunks handed to the reducer */
    int crc;                    /* worker 0: the reducer's error in this step */
    err_info ce;
    /* Shared update (fit_session_set_shard): this rank updates only its ranges. */
    bool sharded;
    fit_shard shard;
    float *shard_buf; /* FIT_SHARD_CHUNK floats per worker: a piece of the summed gradient */
    /* The current step (written by the calling thread before fit_pool_run). */
    struct fit_step {
        int64_t lrows, grows, it, row0;
        int load_rc;
        err_info load_e;
        bool eval_training;     /* run_eval: false */
        data_source *const *px; /* fit_predict: sources, output buffers, first row */
        float *const *pout;
        int64_t p_r0;
        /* Results of worker 0's serial part. */
        int rc;
        err_info e;
        bool update, nan;
        double comm_s;
    } st;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

fit_config fit_config_default(void)
{
    fit_config c;
    memset(&c, 0, sizeof c);
    c.epochs = 1;
    c.batch = 32;
    c.seed = 0;
    c.shuffle = true;
    return c;
}

int64_t fit_output_row_len(const model *m, int i)
{
    const model_ref *r = &m->outputs[i];
    const model_shape *s = &m->layers[r->layer].nodes[r->node].out[r->tensor];
    int64_t n = 1;
    for (int d = 1; d < s->rank; d++)
        n *= s->dims[d];
    return n;
}

static const model_shape *input_shape(const model *m, int i)
{
    const model_ref *r = &m->inputs[i];
    return &m->layers[r->layer].nodes[r->node].out[r->tensor];
}

static const model_shape *output_shape(const model *m, int i)
{
    const model_ref *r = &m->outputs[i];
    return &m->layers[r->layer].nodes[r->node].out[r->tensor];
}

static const model_loss *loss_for_output(const model *m, int i)
{
    if (m->train.n_losses <= 0)
        return NULL;
    return &m->train.losses[m->train.n_losses == 1 ? 0 : i];
}

/* Target row length: sparse labels are one id per row (Keras accepts [rows] or [rows, 1]). */
static int64_t target_len(const model *m, int i)
{
    const model_loss *l = loss_for_output(m, i);
    if (l != NULL && l->kind == LOSS_SPARSE_CCE) {
        const model_shape *s = output_shape(m, i);
        int64_t n = 1;
        for (int d = 1; d < s->rank - 1; d++)
            n *= s->dims[d];
        return n;
    }
    return fit_output_row_len(m, i);
}

static int shape_matches(int rank, const int64_t *row, const model_shape *s, int64_t want_len)
{
    int64_t n = 1;
    for (int d = 0; d < rank; d++)
        n *= row[d];
    if (n != want_len)
        return 0;
    /* Same element count; also require the same shape when both have the rank (a flat
     * [rows, 784] array feeding a [28, 28, 1] input is accepted, like a reshape would be). */
    (void)s;
    return 1;
}

int fit_data_specialize(model *m, const fit_data *d, err_info *e)
{
    bool free_extent = false;
    for (int i = 0; i < m->n_inputs; i++) {
        const model_shape *s = input_shape(m, i);
        for (int k = 1; k < s->rank; k++)
            free_extent = free_extent || s->dims[k] < 0;
    }
    if (!free_extent || d->n_x != m->n_inputs)
        return ERR_OK;
    model_shape rows[8];
    for (int i = 0; i < d->n_x && i < 8; i++) {
        rows[i].rank = data_source_row_rank(d->x[i].src);
        if (rows[i].rank > TENSOR_MAX_RANK)
            return err_set(e, ERR_SHAPE, "input %d: rank %d too large", i, rows[i].rank);
        memcpy(rows[i].dims, data_source_row_shape(d->x[i].src),
               sizeof(int64_t) * (size_t)rows[i].rank);
    }
    return model_inputs_specialize(m, rows, e);
}

int fit_data_check(const model *m, const fit_data *d, bool need_targets, const char *what,
                   err_info *e)
{
    char a[128], b[128];
    if (d->n_x != m->n_inputs)
        return err_set(e, ERR_SHAPE, "%s: %d input arrays given, the model has %d inputs", what,
                       d->n_x, m->n_inputs);
    if (need_targets && d->n_y != m->n_outputs)
        return err_set(e, ERR_SHAPE, "%s: %d target arrays given, the model has %d outputs", what,
                       d->n_y, m->n_outputs);
    int64_t rows = d->n_x > 0 ? data_source_rows(d->x[0].src) : 0;
    for (int i = 0; i < d->n_x; i++) {
        const model_shape *s = input_shape(m, i);
        int64_t want = 1;
        for (int k = 1; k < s->rank; k++)
            want *= s->dims[k];
        const data_source *src = d->x[i].src;
        if (!shape_matches(data_source_row_rank(src), data_source_row_shape(src), s, want))
            return err_set(e, ERR_SHAPE,
                           "%s: input %d has rows of shape %s, the model input \"%s\" expects %s",
                           what, i,
                           tensor_shape_str(data_source_row_rank(src), data_source_row_shape(src),
                                            a, sizeof a),
                           m->layers[m->inputs[i].layer].name,
                           tensor_shape_str(s->rank - 1, s->dims + 1, b, sizeof b));
        if (data_source_rows(src) != rows)
            return err_set(e, ERR_SHAPE, "%s: input %d has %lld rows, input 0 has %lld", what, i,
                           (long long)data_source_rows(src), (long long)rows);
    }
    if (!need_targets)
        return ERR_OK;
    for (int i = 0; i < d->n_y; i++) {
        const model_shape *s = output_shape(m, i);
        const data_source *src = d->y[i].src;
        int64_t want = target_len(m, i);
        if (!shape_matches(data_source_row_rank(src), data_source_row_shape(src), s, want))
            return err_set(e, ERR_SHAPE,
                           "%s: target %d has rows of shape %s, the model output \"%s\" is %s "
                           "(loss %s expects %lld values per row)",
                           what, i,
                           tensor_shape_str(data_source_row_rank(src), data_source_row_shape(src),
                                            a, sizeof a),
                           m->layers[m->outputs[i].layer].name,
                           tensor_shape_str(s->rank - 1, s->dims + 1, b, sizeof b),
                           loss_for_output(m, i) ? model_loss_name(loss_for_output(m, i)->kind)
                                                 : "?",
                           (long long)want);
        if (data_source_rows(src) != rows)
            return err_set(e, ERR_SHAPE, "%s: target %d has %lld rows, the inputs have %lld", what,
                           i, (long long)data_source_rows(src), (long long)rows);
    }
    return ERR_OK;
}

/* Keras log names: "loss" and "<metric>" for one output; "<output>_loss" and
 * "<output>_<metric>" added for several (Keras 3 style). */
static void logs_add(fit_logs *l, const char *prefix, const char *name, double v)
{
    if (l->n >= FIT_MAX_LOGS)
        return;
    /* Prefixes are at most "val_" + a layer name + "_"; names are short metric names. */
    snprintf(l->names[l->n], sizeof l->names[0], "%.*s%.48s", MODEL_NAME_MAX + 8, prefix, name);
    l->values[l->n++] = v;
}

static void logs_from_acc(const fit_session *s, const model *m, const double *acc,
                          const char *prefix, fit_logs *out)
{
    /* acc layout: [total loss sum, rows] then per output [loss sum, then (sum, count) per metric]
     */
    double rows = acc[1] > 0 ? acc[1] : 1;
    logs_add(out, prefix, "loss", acc[0] / rows);
    int k = 2;
    for (int o = 0; o < s->n_out; o++) {
        char p[MODEL_NAME_MAX + 64];
        if (s->n_out > 1) {
            snprintf(p, sizeof p, "%s%s_", prefix, m->layers[m->outputs[o].layer].name);
            logs_add(out, p, "loss", acc[k] / rows);
        } else {
            snprintf(p, sizeof p, "%s", prefix);
        }
        k++;
        for (int j = 0; j < s->n_metrics; j++) {
            double cnt = acc[k + 1] > 0 ? acc[k + 1] : 1;
            /* Keras prints the name the user compiled with ("accuracy"), not the resolved one. */
            logs_add(out, p, metric_display_name(m->train.metrics[j]), acc[k] / cnt);
            k += 2;
        }
    }
}

static int acc_size(int n_out, int n_metrics)
{
    return 2 + n_out * (1 + 2 * n_metrics);
}

/* Losses and metrics of one batch into acc (adds), gradients into the net when training. */
static int batch_losses(fit_session *s, model *m, layer_net *net, int64_t rows, int64_t y_row0,
                        int64_t global_rows, bool training, double *acc, err_info *e)
{
    int k = 2;
    for (int o = 0; o < s->n_out; o++) {
        const float *pred = layer_net_output(net, o);
        float *grad = training ? layer_net_output_grad(net, o) : NULL;
        const float *y = s->y[o] + y_row0 * s->y_len[o];
        double sum = 0;
        int rc = loss_compute(&s->loss[o], pred, y, rows, s->out_len[o],
                              (double)global_rows / s->loss_weight[o], &sum, grad, e);
        if (rc != ERR_OK)
            return err_wrap(e, "output \"%s\"", m->layers[m->outputs[o].layer].name);
        acc[0] += s->loss_weight[o] * sum;
        acc[k++] += sum;
        for (int j = 0; j < s->n_metrics; j++) {
            metric_accumulate(s->metric[o][j], pred, y, rows, s->out_len[o], &acc[k], &acc[k + 1]);
            k += 2;
        }
    }
    acc[1] += (double)rows;
    return ERR_OK;
}

static int setup_outputs(fit_session *s, model *m, int64_t rows_max, err_info *e)
{
    s->n_out = m->n_outputs;
    if (s->n_out > 8)
        return err_set(e, ERR_UNSUPPORTED, "model has %d outputs; at most 8 are supported",
                       s->n_out);
    if (m->train.n_losses != 1 && m->train.n_losses != s->n_out)
        return err_set(e, ERR_CONFIG, "%d losses given for a model with %d outputs",
                       m->train.n_losses, s->n_out);
    s->n_metrics = m->train.n_metrics;
    for (int o = 0; o < s->n_out; o++) {
        s->loss[o] = *loss_for_output(m, o);
        s->loss_weight[o] =
            m->train.loss_weights ? m->train.loss_weights[m->train.n_losses == 1 ? 0 : o] : 1.0;
        if (!(s->loss_weight[o] > 0))
            s->loss_weight[o] = 1.0;
        s->out_len[o] = fit_output_row_len(m, o);
        s->y_len[o] = target_len(m, o);
        for (int j = 0; j < s->n_metrics; j++)
            s->metric[o][j] = metric_resolve(m->train.metrics[j], &s->loss[o], s->out_len[o]);
        size_t n = (size_t)(rows_max > 0 ? rows_max : 1) * (size_t)s->y_len[o];
        s->y[o] = calloc(n, sizeof(float));
        if (s->y[o] == NULL)
            return err_set(e, ERR_NOMEM, "target buffer of %zu floats", n);
    }
    s->n_acc = acc_size(s->n_out, s->n_metrics);
    /* acc, then gacc (the global sums) with one more slot: the count of failing ranks that
     * travels with them (step_agree_sum). */
    s->acc = calloc((size_t)s->n_acc * 2 + 1, sizeof(double));
    if (s->acc == NULL)
        return err_set(e, ERR_NOMEM, "metric accumulators");
    return ERR_OK;
}

/* The penalty a layer's config puts on its i-th weight (Keras: kernel_regularizer on the kernel,
 * bias_regularizer on the bias, recurrent_regularizer, embeddings_regularizer), by position in
 * the layer's Keras weight order so that any weight naming works. */
static const model_reg *weight_reg(const model_layer *L, int i)
{
    const layer_config *c = &L->cfg;
    if (L->kind == LAYER_DENSE || L->kind == LAYER_CONV1D || L->kind == LAYER_CONV2D)
        return i == 0 ? &c->kernel_reg : &c->bias_reg;
    if (L->kind == LAYER_SIMPLERNN || L->kind == LAYER_LSTM || L->kind == LAYER_GRU)
        return i == 0 ? &c->kernel_reg : i == 1 ? &c->recurrent_reg : &c->bias_reg;
    if (L->kind == LAYER_EMBEDDING)
        return &c->embeddings_reg;
    return NULL;
}

static int setup_regularizers(fit_session *s, const model *m, err_info *e)
{
    for (int li = 0; li < m->n_layers; li++) {
        const model_layer *L = &m->layers[li];
        if (L->cfg.activity_reg.l1 != 0 || L->cfg.activity_reg.l2 != 0)
            return err_set(e, ERR_UNSUPPORTED,
                           "layer \"%s\": activity_regularizer is not supported in training",
                           L->name);
        for (int k = 0; k < L->n_weights; k++) {
            const model_weight *w = &m->weights[L->weight0 + k];
            const model_reg *r = weight_reg(L, k);
            if (r == NULL || !w->trainable || (r->l1 == 0 && r->l2 == 0))
                continue;
            struct fit_reg *nr = realloc(s->reg, sizeof *nr * (size_t)(s->n_reg + 1));
            if (nr == NULL)
                return err_set(e, ERR_NOMEM, "regularizer table");
            s->reg = nr;
            s->reg[s->n_reg++] = (struct fit_reg){w->offset, w->count, r->l1, r->l2};
        }
    }
    return ERR_OK;
}

/* Adds the L1/L2 penalties' gradients to grads (the global mean gradient) and returns the
 * penalty, which Keras adds to the loss of every batch. */
/* Penalty of the L1/L2 regularizers (summed over their weights); their gradient is added into
 * grads unless it is NULL (a shared update adds it range by range: reg_grad_range). */
static double apply_regularizers(const fit_session *s, const float *params, float *grads)
{
    double penalty = 0;
    for (int i = 0; i < s->n_reg; i++) {
        const struct fit_reg *r = &s->reg[i];
        const float *p = params + r->offset;
        float *g = grads + r->offset;
        float l1 = (float)r->l1, l2x2 = (float)(2 * r->l2);
        double a1 = 0, a2 = 0;
        for (size_t k = 0; k < r->count; k++) {
            float v = p[k];
            a1 += fabsf(v);
            a2 += (double)v * v;
            if (grads != NULL)
                g[k] += l2x2 * v + (v > 0 ? l1 : v < 0 ? -l1 : 0.0f);
        }
        penalty += r->l1 * a1 + r->l2 * a2;
    }
    return penalty;
}

/* The regularizers' gradient for trainable elements [lo, hi), added into g[0 .. hi - lo) with
 * the arithmetic of apply_regularizers(). */
static void reg_grad_range(const fit_session *s, const float *params, float *g, size_t lo,
                           size_t hi)
{
    for (int i = 0; i < s->n_reg; i++) {
        const struct fit_reg *r = &s->reg[i];
        size_t a = r->offset > lo ? r->offset : lo;
        size_t b = r->offset + r->count < hi ? r->offset + r->count : hi;
        float l1 = (float)r->l1, l2x2 = (float)(2 * r->l2);
        for (size_t k = a; k < b; k++) {
            float v = params[k];
            g[k - lo] += l2x2 * v + (v > 0 ? l1 : v < 0 ? -l1 : 0.0f);
        }
    }
}

enum { FIT_SHARD_CHUNK = 1024 }; /* floats of summed gradient per update call (stays in L1) */

/* The shared update of this rank's ranges within [lo, hi): each piece of the summed gradient is
 * gathered into buf (FIT_SHARD_CHUNK floats), regularized and applied at once. */
static void shard_update(const fit_session *s, float *buf, size_t lo, size_t hi)
{
    const float *params = s->m->params;
    size_t a = 0, b = 0;
    for (size_t i = 0; s->shard.range(s->shard.ctx, i, &a, &b); i++) {
        a = a > lo ? a : lo;
        b = b < hi ? b : hi;
        for (size_t c = a; c < b; c += FIT_SHARD_CHUNK) {
            size_t d = b - c < FIT_SHARD_CHUNK ? b : c + FIT_SHARD_CHUNK;
            s->shard.grad(s->shard.ctx, c, d, buf);
            if (s->n_reg > 0)
                reg_grad_range(s, params, buf, c, d);
            optim_step_range_at(s->opt, s->m, buf, c, d);
        }
    }
}

/* Before the shared state is read again (forward, evaluation, callbacks, the caller): waits
 * until every rank sharing it has applied its part of the last update. */
static int shard_sync(const fit_session *s, err_info *e)
{
    return s->sharded ? s->shard.sync(s->shard.ctx, e) : ERR_OK;
}

static int net_reduce_hook(void *ctx, double *buf, int64_t n, err_info *e)
{
    const fit_comm *c = ctx;
    return c->sum(c->ctx, buf, n, e);
}

/* ---- worker threads ---- */

/* Reduce hook of the workers' training nets: every worker posts its sums, worker 0 adds them up
 * in worker order (the same bits for the same worker count) and, under MPI, sums the result
 * over ranks (only the thread that initialised MPI calls it); then every worker copies the
 * total. The barrier at the start of the next call (or of the step's next phase) keeps worker 0
 * from overwriting s->red before the others have read it. */
static int worker_reduce_hook(void *ctx, double *buf, int64_t n, err_info *e)
{
    fit_worker *w = ctx;
    fit_session *s = w->s;
    w->red = buf;
    fit_pool_barrier(s->pool);
    if (w->id == 0) {
        CHECK(n <= s->red_max);
        for (int64_t i = 0; i < n; i++) {
            double v = s->w[0].red[i];
            for (int k = 1; k < s->n_workers; k++)
                v += s->w[k].red[i];
            s->red[i] = v;
        }
        int rc = ERR_OK;
        if (s->has_comm && s->comm.sum != NULL)
            rc = s->comm.sum(s->comm.ctx, s->red, n, e);
        s->red_rc = rc;
        if (rc != ERR_OK)
            s->red_e = *e;
    }
    fit_pool_barrier(s->pool);
    memcpy(buf, s->red, sizeof(double) * (size_t)n);
    if (s->red_rc != ERR_OK) {
        if (w->id != 0)
            *e = s->red_e;
        return s->red_rc;
    }
    return ERR_OK;
}

/* Creates the pool and the per-worker state: training nets (training) and/or inference nets
 * (inference), each for rows_per_worker rows, input staging buffers for local_max rows. Worker
 * 0's training net is s->net. Only when s->n_workers > 1. */
static int workers_create(fit_session *s, bool training, bool inference, int64_t local_max,
                          err_info *e)
{
    model *m = s->m;
    int W = s->n_workers;
    int64_t per = (local_max + W - 1) / W;
    if (per < 1)
        per = 1;
    int rc = fit_pool_create(W, FIT_SPIN_US, &s->pool, e);
    if (rc != ERR_OK)
        return rc;
    s->w = calloc((size_t)W, sizeof *s->w);
    if (s->w == NULL)
        return err_set(e, ERR_NOMEM, "%d worker states", W);
    for (int i = 0; i < m->n_inputs && i < 8; i++) {
        const model_shape *sh = input_shape(m, i);
        s->x_len[i] = 1;
        for (int d = 1; d < sh->rank; d++)
            s->x_len[i] *= sh->dims[d];
        size_t cnt = (size_t)(local_max > 0 ? local_max : 1) * (size_t)s->x_len[i];
        s->xstage[i] = malloc(cnt * sizeof(float));
        if (s->xstage[i] == NULL)
            return err_set(e, ERR_NOMEM, "input staging buffer of %zu floats", cnt);
    }
    for (int k = 0; k < W && rc == ERR_OK; k++) {
        fit_worker *w = &s->w[k];
        w->s = s;
        w->id = k;
        w->acc = calloc((size_t)(s->n_acc > 0 ? s->n_acc : 1), sizeof(double));
        if (w->acc == NULL)
            return err_set(e, ERR_NOMEM, "worker accumulators");
        if (training) {
            rc = layer_net_create(m, per, true, &w->net, e);
            if (rc != ERR_OK)
                break;
            /* Batch statistics are summed over the workers (and ranks) by the hook; the moving
             * statistics are updated by worker 0's net alone, once per step. */
            layer_net_set_reduce(w->net, worker_reduce_hook, w);
            layer_net_set_update_moving(w->net, k == 0);
            int64_t r = layer_net_reduce_max(w->net);
            s->red_max = r > s->red_max ? r : s->red_max;
            int64_t glo, ghi;
            fit_pool_share((int64_t)m->n_trainable, W, k, FIT_RANGE_ALIGN, &glo, &ghi);
            w->glo = (size_t)glo;
            w->ghi = (size_t)ghi;
        }
        if (inference)
            rc = layer_net_create(m, per, false, &w->vnet, e);
    }
    if (rc == ERR_OK && s->red_max > 0) {
        s->red = calloc((size_t)s->red_max, sizeof(double));
        if (s->red == NULL)
            rc = err_set(e, ERR_NOMEM, "reduce buffer of %lld doubles", (long long)s->red_max);
    }
    if (rc == ERR_OK && training)
        s->net = s->w[0].net;
    if (rc == ERR_OK && training && s->has_comm && s->comm.grad_ready != NULL &&
        m->n_trainable > 0) {
        s->n_chunks = (m->n_trainable + FIT_SUM_CHUNK - 1) / FIT_SUM_CHUNK;
        s->front = aligned_alloc(64, (size_t)W * sizeof *s->front);
        s->chunk_sum = calloc(s->n_chunks, sizeof *s->chunk_sum);
        if (s->front == NULL || s->chunk_sum == NULL)
            return err_set(e, ERR_NOMEM, "overlapped gradient sum: %zu chunks", s->n_chunks);
        for (size_t c = 0; c < s->n_chunks; c++)
            atomic_init(&s->chunk_sum[c], 0);
        for (int k = 0; k < W; k++)
            atomic_init(&s->front[k].v, m->n_trainable);
        atomic_init(&s->next_chunk, 0);
        s->overlap = true;
    }
    return rc;
}

static void workers_destroy(fit_session *s)
{
    fit_pool_destroy(s->pool);
    s->pool = NULL;
    for (int k = 0; s->w != NULL && k < s->n_workers; k++) {
        if (s->w[k].net != s->net)
            layer_net_destroy(s->w[k].net);
        layer_net_destroy(s->w[k].vnet);
        free(s->w[k].acc);
    }
    free(s->w);
    s->w = NULL;
    for (int i = 0; i < 8; i++) {
        free(s->xstage[i]);
        s->xstage[i] = NULL;
    }
    free(s->red);
    s->red = NULL;
    free(s->front);
    s->front = NULL;
    free((void *)s->chunk_sum);
    s->chunk_sum = NULL;
    s->overlap = false;
}

/* This worker's slice of the step's local rows, copied from the staging buffers into net. */
static void worker_slice(fit_session *s, fit_worker *w, layer_net *net, int64_t lrows)
{
    int64_t lo, hi;
    fit_pool_share(lrows, s->n_workers, w->id, 1, &lo, &hi);
    w->lo = lo;
    w->rows = hi - lo;
    for (int i = 0; i < s->m->n_inputs; i++)
        memcpy(layer_net_input(net, i), s->xstage[i] + lo * s->x_len[i],
               sizeof(float) * (size_t)(w->rows * s->x_len[i]));
}

static int grad_ready_hook(void *ctx, size_t lo, size_t hi, err_info *e);
static int agree(const fit_session *s, int rc, err_info *e);
static int sum_over_ranks(const fit_session *s, double *buf, int64_t n, err_info *e);
static double apply_regularizers(const fit_session *s, const float *params, float *grads);

/* The step's collective after the gradient sum: the error agreement and the global loss and
 * metric sums (acc into gacc) in ONE allreduce, which also counts the failing ranks in
 * gacc[n_acc]; only when a rank failed does a second collective (agree) hand every rank the
 * failing rank's message. Every rank calls it, failed or not. Returns the agreed code; e holds
 * this rank's own message when rc != ERR_OK on entry. */
static int step_agree_sum(const fit_session *s, int rc, const double *acc, double *gacc,
                          err_info *e)
{
    memcpy(gacc, acc, sizeof(double) * (size_t)s->n_acc);
    if (!s->has_comm)
        return rc;
    gacc[s->n_acc] = rc != ERR_OK ? 1.0 : 0.0;
    err_info es = {ERR_OK, ""};
    int src = sum_over_ranks(s, gacc, s->n_acc + 1, &es);
    if (src != ERR_OK) {
        /* The runtime has failed (agree then returns its error without communicating). */
        if (rc == ERR_OK)
            *e = es;
        return agree(s, rc != ERR_OK ? rc : src, e);
    }
    return gacc[s->n_acc] > 0 ? agree(s, rc, e) : ERR_OK;
}

/* Worker 0, between the gradient sum and the update: the rank-level part of the step (what the
 * one-thread loop does after backward). Sets s->st.update, or s->st.rc/e on failure. Only this
 * thread calls MPI. */
static void train_serial(fit_session *s)
{
    model *m = s->m;
    struct fit_step *st = &s->st;
    err_info e2 = {ERR_OK, ""};
    int rc = st->load_rc;
    if (rc != ERR_OK)
        st->e = st->load_e;
    for (int k = 0; k < s->n_workers && rc == ERR_OK; k++) {
        if (s->w[k].rc != ERR_OK) {
            rc = s->w[k].rc;
            st->e = s->w[k].e;
        }
    }
    double t0 = now_s();
    if (s->has_comm) {
        err_info *ep = rc == ERR_OK ? &st->e : &e2;
        int crc = ERR_OK;
        if (s->overlap) {
            /* Begun before the step, every range handed over during backward (overlap_*). */
            crc = s->crc;
            if (crc != ERR_OK)
                *ep = s->ce;
        } else {
            /* No gradient (or no reducer): nothing to overlap. */
            if (s->comm.grad_begin != NULL)
                crc = s->comm.grad_begin(s->comm.ctx, ep);
            if (crc == ERR_OK && s->comm.grad_ready != NULL && m->n_trainable > 0)
                crc = s->comm.grad_ready(s->comm.ctx, 0, m->n_trainable, ep);
        }
        if (crc == ERR_OK && s->comm.grad_finish != NULL)
            crc = s->comm.grad_finish(s->comm.ctx, ep);
        if (rc == ERR_OK)
            rc = crc;
    }
    double *acc = s->acc, *gacc = s->acc + s->n_acc;
    for (int k = 0; k < s->n_workers; k++)
        for (int j = 0; j < s->n_acc; j++)
            acc[j] += s->w[k].acc[j];
    if (s->n_reg > 0 && rc == ERR_OK) {
        double pen = apply_regularizers(s, m->params, s->sharded ? NULL : layer_net_grads(s->net));
        acc[0] += pen * (double)st->lrows;
    }
    rc = step_agree_sum(s, rc, acc, gacc, &st->e);
    st->comm_s = now_s() - t0;
    st->update = false;
    st->nan = false;
    st->rc = rc;
    if (rc != ERR_OK)
        return;
    if (!isfinite(gacc[0])) {
        st->rc = ERR_NUMERIC; /* the caller writes the message (it knows epoch and step) */
        st->nan = true;
        return;
    }
    if ((rc = optim_step_begin(s->opt, m, s->sharded ? NULL : layer_net_grads(s->net), &st->e)) !=
        ERR_OK) {
        st->rc = rc;
        return;
    }
    st->update = true;
}

/* ---- The workers' gradient sum, overlapped with backward (MPI with worker threads) ----
 * Each worker publishes how far its backward has got (front: grads[front, n) are final in its
 * buffer). The gradient is cut into chunks of FIT_SUM_CHUNK floats counted from the end, the
 * order backward finishes them. Any worker (in its ready hook during backward, and after it)
 * claims the next chunk once it is final in every worker and adds the workers' buffers into
 * worker 0's in worker order: the same additions, so the same bits, as the sum after backward.
 * Worker 0, the thread that may call MPI, hands every run of summed chunks to the gradient
 * reducer at once, so buckets start while backward still runs. */

/* Called with the calling thread = worker 0, before the pool runs the step. */
static void overlap_begin(fit_session *s)
{
    s->ostep++;
    s->reported = 0;
    s->crc = ERR_OK;
    atomic_store_explicit(&s->next_chunk, 0, memory_order_relaxed);
    for (int k = 0; k < s->n_workers; k++)
        atomic_store_explicit(&s->front[k].v, s->m->n_trainable, memory_order_relaxed);
    if (s->comm.grad_begin != NULL)
        s->crc = s->comm.grad_begin(s->comm.ctx, &s->ce);
}

static void chunk_range(const fit_session *s, size_t c, size_t *lo, size_t *hi)
{
    size_t n = s->m->n_trainable, top = (size_t)FIT_SUM_CHUNK * c;
    *hi = n - top;
    *lo = *hi > FIT_SUM_CHUNK ? *hi - FIT_SUM_CHUNK : 0;
}

/* Sums every chunk that is final in all workers and not yet claimed. True once every chunk of
 * the step is claimed. */
static bool overlap_sum(fit_session *s)
{
    size_t front = 0; /* [front, n) is final in every worker */
    for (int k = 0; k < s->n_workers; k++) {
        size_t f = atomic_load_explicit(&s->front[k].v, memory_order_acquire);
        front = f > front ? f : front;
    }
    float *g = layer_net_grads(s->w[0].net);
    for (;;) {
        size_t c = atomic_load_explicit(&s->next_chunk, memory_order_relaxed);
        if (c >= s->n_chunks)
            return true;
        size_t lo = 0, hi = 0;
        chunk_range(s, c, &lo, &hi);
        if (lo < front)
            return false;
        if (!atomic_compare_exchange_weak_explicit(&s->next_chunk, &c, c + 1, memory_order_relaxed,
                                                   memory_order_relaxed))
            continue;
        for (int k = 1; k < s->n_workers; k++) {
            const float *gk = layer_net_grads(s->w[k].net);
            for (size_t i = lo; i < hi; i++)
                g[i] += gk[i];
        }
        atomic_store_explicit(&s->chunk_sum[c], s->ostep, memory_order_release);
    }
}

/* Worker 0: hands the summed chunks that follow the last reported one to the reducer, as one
 * range. True once every chunk is reported. */
static bool overlap_report(fit_session *s)
{
    size_t first = s->reported, c = first;
    while (c < s->n_chunks &&
           atomic_load_explicit(&s->chunk_sum[c], memory_order_acquire) == s->ostep)
        c++;
    if (c > first) {
        size_t lo = 0, hi = 0, unused = 0;
        chunk_range(s, first, &unused, &hi);
        chunk_range(s, c - 1, &lo, &unused);
        s->reported = c;
        /* After a reducer error nothing more is handed to it (train_serial reports the error). */
        if (s->crc == ERR_OK)
            s->crc = s->comm.grad_ready(s->comm.ctx, lo, hi, &s->ce);
    }
    return s->reported == s->n_chunks;
}

/* The ready hook of every worker's backward. Never fails: a reducer error is kept for
 * train_serial, and every worker's front must reach 0 so that no worker waits forever. */
static int overlap_ready_hook(void *ctx, size_t lo, size_t hi, err_info *e)
{
    (void)hi;
    (void)e;
    fit_worker *w = ctx;
    fit_session *s = w->s;
    atomic_store_explicit(&s->front[w->id].v, lo, memory_order_release);
    overlap_sum(s);
    if (w->id == 0)
        (void)overlap_report(s);
    return ERR_OK;
}

/* After this worker's backward (or instead of it): the rest of the sum, and for worker 0 the
 * rest of the reporting. Waits for slower workers by spinning, then yielding. */
static void overlap_end(fit_session *s, fit_worker *w)
{
    atomic_store_explicit(&s->front[w->id].v, 0, memory_order_release);
    for (long polls = 0;; polls++) {
        bool claimed = overlap_sum(s);
        if (w->id == 0 ? overlap_report(s) : claimed)
            return;
        if (polls > 2000)
            sched_yield();
    }
}

/* One training step on every worker: slice, forward and loss, backward, the gradient sum (each
 * worker sums its range over all workers, in worker order), worker 0's serial part, and the
 * update (each worker its range). */
static void train_worker(void *ctx, int id)
{
    fit_session *s = ctx;
    fit_worker *w = &s->w[id];
    struct fit_step *st = &s->st;
    w->rc = ERR_OK;
    w->e.code = ERR_OK;
    w->e.msg[0] = '\0';
    memset(w->acc, 0, sizeof(double) * (size_t)s->n_acc);
    worker_slice(s, w, w->net, st->lrows);
    layer_net_set_row_offset(w->net, st->row0 + w->lo);
    int rc = layer_net_forward(w->net, w->rows, true, s->cfg.seed, st->it, &w->e);
    w->fwd_ok = rc == ERR_OK;
    if (rc == ERR_OK && st->load_rc == ERR_OK)
        rc = batch_losses(s, s->m, w->net, w->rows, w->lo, st->grows, true, w->acc, &w->e);
    w->rc = rc;
    fit_pool_barrier(s->pool);
    bool all_fwd = true;
    for (int k = 0; k < s->n_workers; k++)
        all_fwd = all_fwd && s->w[k].fwd_ok;
    if (all_fwd) {
        err_info tmp;
        int brc = layer_net_backward(w->net, w->rows, s->overlap ? overlap_ready_hook : NULL, w,
                                     w->rc == ERR_OK ? &w->e : &tmp);
        if (w->rc == ERR_OK)
            w->rc = brc;
    }
    if (s->overlap)
        overlap_end(s, w);
    fit_pool_barrier(s->pool);
    float *g = layer_net_grads(s->w[0].net);
    if (g != NULL && !s->overlap) {
        for (int k = 1; k < s->n_workers; k++) {
            const float *gk = layer_net_grads(s->w[k].net);
            for (size_t i = w->glo; i < w->ghi; i++)
                g[i] += gk[i];
        }
        fit_pool_barrier(s->pool);
    }
    if (id == 0)
        train_serial(s);
    fit_pool_barrier(s->pool);
    if (st->update && s->sharded)
        shard_update(s, s->shard_buf + (size_t)id * FIT_SHARD_CHUNK, w->glo, w->ghi);
    else if (st->update && g != NULL)
        optim_step_range(s->opt, s->m, g, w->glo, w->ghi);
}

/* One inference batch on every worker: evaluate (losses into the worker's running sums) or
 * predict (outputs into the caller's arrays). */
static void infer_worker(void *ctx, int id)
{
    fit_session *s = ctx;
    fit_worker *w = &s->w[id];
    struct fit_step *st = &s->st;
    if (w->rc != ERR_OK)
        return; /* a worker that failed stays failed for the rest of the pass */
    worker_slice(s, w, w->vnet, st->lrows);
    if (w->rows == 0)
        return;
    int rc = layer_net_forward(w->vnet, w->rows, false, s->cfg.seed, st->it, &w->e);
    if (rc == ERR_OK && st->pout == NULL)
        rc = batch_losses(s, s->m, w->vnet, w->rows, w->lo, st->grows, false, w->acc, &w->e);
    for (int o = 0; rc == ERR_OK && st->pout != NULL && o < s->m->n_outputs; o++) {
        int64_t len = fit_output_row_len(s->m, o);
        memcpy(st->pout[o] + (st->p_r0 + w->lo) * len, layer_net_output(w->vnet, o),
               sizeof(float) * (size_t)(w->rows * len));
    }
    w->rc = rc;
}

/* The first failure among the workers, in worker order (e gets its message). */
static int workers_rc(const fit_session *s, err_info *e)
{
    for (int k = 0; k < s->n_workers; k++)
        if (s->w[k].rc != ERR_OK) {
            *e = s->w[k].e;
            return s->w[k].rc;
        }
    return ERR_OK;
}

int fit_session_create(model *m, const fit_config *c, const fit_comm *comm, fit_session **out,
                       err_info *e)
{
    if (!m->built)
        return err_set(e, ERR_INTERNAL, "fit_session_create: model not built");
    if (!m->train.compiled || m->train.n_losses == 0)
        return err_set(e, ERR_CONFIG,
                       "the model has no loss: give --loss (or a file with a training_config)");
    if (c->batch <= 0)
        return err_set(e, ERR_USAGE, "batch size %lld must be positive", (long long)c->batch);
    fit_session *s = calloc(1, sizeof *s);
    if (s == NULL)
        return err_set(e, ERR_NOMEM, "fit session");
    s->m = m;
    s->cfg = *c;
    int size = 1;
    if (comm != NULL && comm->size > 1) {
        s->comm = *comm;
        s->has_comm = true;
        size = comm->size;
    }
    s->local_max = (c->batch + size - 1) / size;
    s->n_workers = c->threads > 1 ? c->threads : 1;
    int rc = ERR_OK;
    if (c->threads < 0 || c->threads > FIT_MAX_THREADS)
        rc = err_set(e, ERR_USAGE, "%d worker threads: expected 1 .. %d", c->threads,
                     FIT_MAX_THREADS);
    if (rc == ERR_OK)
        rc = optim_create(m, &s->opt, e);
    if (rc == ERR_OK)
        rc = setup_outputs(s, m, s->local_max, e);
    if (rc == ERR_OK)
        rc = setup_regularizers(s, m, e);
    if (rc == ERR_OK && s->n_workers > 1) {
        rc = workers_create(s, true, false, s->local_max, e);
    } else if (rc == ERR_OK) {
        rc = layer_net_create(m, s->local_max > 0 ? s->local_max : 1, true, &s->net, e);
        if (rc == ERR_OK && s->has_comm && s->comm.sum != NULL)
            layer_net_set_reduce(s->net, net_reduce_hook, &s->comm);
    }
    if (rc != ERR_OK) {
        fit_session_destroy(s);
        return rc;
    }
    *out = s;
    return ERR_OK;
}

void fit_session_destroy(fit_session *s)
{
    if (s == NULL)
        return;
    workers_destroy(s);
    layer_net_destroy(s->net);
    optim_destroy(s->opt);
    for (int o = 0; o < 8; o++)
        free(s->y[o]);
    free(s->acc);
    free(s->reg);
    free(s->shard_buf);
    free(s);
}

float *fit_session_grads(fit_session *s)
{
    return layer_net_grads(s->net);
}

void fit_session_set_grads(fit_session *s, float *buf)
{
    layer_net_set_grads(s->net, buf);
}

bool fit_session_can_shard(const fit_session *s)
{
    return !optim_clips_by_norm(s->opt);
}

int fit_session_set_shard(fit_session *s, const fit_shard *sh, err_info *e)
{
    if (sh == NULL) {
        s->sharded = false;
        layer_net_set_update_moving(s->net, true);
        return ERR_OK;
    }
    if (!fit_session_can_shard(s))
        return err_set(e, ERR_USAGE,
                       "a shared update cannot clip by norm (clipnorm, global_clipnorm): the norm "
                       "needs the whole gradient");
    if (s->shard_buf == NULL) {
        s->shard_buf = malloc((size_t)s->n_workers * FIT_SHARD_CHUNK * sizeof(float));
        if (s->shard_buf == NULL)
            return err_set(e, ERR_NOMEM, "shared update buffers");
    }
    s->shard = *sh;
    s->sharded = true;
    /* The moving statistics live in the shared parameters: one rank writes them. The workers
     * other than worker 0 never do. */
    layer_net_set_update_moving(s->net, sh->writes_moving);
    return ERR_OK;
}

static int grad_ready_hook(void *ctx, size_t lo, size_t hi, err_info *e)
{
    const fit_comm *c = ctx;
    return c->grad_ready(c->ctx, lo, hi, e);
}

static int agree(const fit_session *s, int rc, err_info *e)
{
    if (s->has_comm && s->comm.agree != NULL)
        return s->comm.agree(s->comm.ctx, rc, e);
    return rc;
}

static int sum_over_ranks(const fit_session *s, double *buf, int64_t n, err_info *e)
{
    if (s->has_comm && s->comm.sum != NULL)
        return s->comm.sum(s->comm.ctx, buf, n, e);
    return ERR_OK;
}

/* Tells the runtime what this rank is doing (epoch and step 1-based), for failure reports. */
static void status(const fit_session *s, int64_t epoch, int64_t step, const char *what)
{
    if (s->has_comm && s->comm.status != NULL) {
        char buf[128];
        if (step > 0)
            snprintf(buf, sizeof buf, "epoch %lld step %lld: %s", (long long)epoch, (long long)step,
                     what);
        else
            snprintf(buf, sizeof buf, "epoch %lld: %s", (long long)epoch, what);
        s->comm.status(s->comm.ctx, buf);
    }
}

static int make_loader(const fit_session *s, const fit_data *d, int64_t begin, int64_t end,
                       int64_t batch, bool shuffle, data_loader **out, err_info *e)
{
    data_source *xs[8], *ys[8];
    float xscale[8];
    for (int i = 0; i < d->n_x; i++) {
        xs[i] = d->x[i].src;
        xscale[i] = d->x[i].scale;
    }
    for (int i = 0; i < d->n_y; i++)
        ys[i] = d->y[i].src;
    data_loader_config lc;
    memset(&lc, 0, sizeof lc);
    lc.begin = begin;
    lc.end = end;
    lc.batch = batch;
    lc.shuffle = shuffle;
    lc.drop_remainder = false;
    lc.seed = s->cfg.seed;
    lc.rank = s->has_comm ? s->comm.rank : 0;
    lc.nranks = s->has_comm ? s->comm.size : 1;
    return data_loader_create(xs, xscale, d->n_x, ys, d->n_y, &lc, out, e);
}

/* One pass of inference over a loader, accumulating losses and metrics into acc. */
static int run_eval(fit_session *s, layer_net *net, data_loader *l, double *acc, err_info *e)
{
    model *m = s->m;
    bool threaded = s->n_workers > 1;
    float *xdst[8];
    for (int i = 0; i < m->n_inputs; i++)
        xdst[i] = threaded ? s->xstage[i] : layer_net_input(net, i);
    for (int k = 0; threaded && k < s->n_workers; k++) {
        s->w[k].rc = ERR_OK;
        memset(s->w[k].acc, 0, sizeof(double) * (size_t)s->n_acc);
    }
    int rc = data_loader_epoch(l, 0, e);
    for (int64_t step = 0; rc == ERR_OK; step++) {
        int64_t grows = 0, lrows = 0;
        bool done = false;
        rc = data_loader_next(l, xdst, s->y, &grows, &lrows, &done, e);
        if (rc != ERR_OK || done)
            break;
        if (lrows > 0 && threaded) {
            s->st.lrows = lrows;
            s->st.grows = grows;
            s->st.it = step;
            s->st.pout = NULL;
            fit_pool_run(s->pool, infer_worker, s);
            rc = workers_rc(s, e);
        } else if (lrows > 0) {
            rc = layer_net_forward(net, lrows, false, s->cfg.seed, step, e);
            if (rc == ERR_OK)
                rc = batch_losses(s, m, net, lrows, 0, grows, false, acc, e);
        }
    }
    /* Each worker summed its own rows; the totals are added in worker order. */
    for (int k = 0; threaded && rc == ERR_OK && k < s->n_workers; k++)
        for (int j = 0; j < s->n_acc; j++)
            acc[j] += s->w[k].acc[j];
    return rc;
}

int fit_train(fit_session *s, const fit_data *train, const fit_callbacks *cb, fit_logs *last,
              err_info *e)
{
    model *m = s->m;
    data_loader *tl = NULL, *vl = NULL;
    layer_net *vnet = NULL;
    int rc = fit_data_check(m, train, true, "training data", e);
    if (rc != ERR_OK)
        return rc;
    int64_t n = data_source_rows(train->x[0].src);
    int64_t split = n;
    const fit_data *vdata = s->cfg.val;
    if (s->cfg.validation_split > 0 && vdata == NULL) {
        if (!(s->cfg.validation_split < 1))
            return err_set(e, ERR_USAGE, "validation_split %g must be in [0, 1)",
                           s->cfg.validation_split);
        /* Keras: split_at = int(num_samples * (1 - validation_split)), validation = the tail. */
        split = (int64_t)((double)n * (1.0 - s->cfg.validation_split));
        vdata = train;
    }
    if (split <= 0)
        return err_set(e, ERR_USAGE, "no training rows left after the validation split");
    if (vdata != NULL && vdata != train &&
        (rc = fit_data_check(m, vdata, true, "validation data", e)) != ERR_OK)
        return rc;
    rc = make_loader(s, train, 0, split, s->cfg.batch, s->cfg.shuffle, &tl, e);
    if (rc == ERR_OK && vdata != NULL) {
        int64_t vb = vdata == train ? split : 0;
        int64_t ve = data_source_rows(vdata->x[0].src);
        if (ve > vb) {
            rc = make_loader(s, vdata, vb, ve, s->cfg.batch, false, &vl, e);
            if (rc == ERR_OK && s->n_workers == 1)
                rc = layer_net_create(m, s->local_max, false, &vnet, e);
            /* Worker threads validate on inference nets of their own (freed with the
             * session; a later fit_train() reuses them). */
            for (int k = 0; rc == ERR_OK && s->n_workers > 1 && k < s->n_workers; k++) {
                if (s->w[k].vnet == NULL)
                    rc = layer_net_create(m, (s->local_max + s->n_workers - 1) / s->n_workers,
                                          false, &s->w[k].vnet, e);
            }
            if (rc == ERR_OK && vnet != NULL && s->has_comm && s->comm.sum != NULL)
                layer_net_set_reduce(vnet, net_reduce_hook, &s->comm);
        }
    }
    rc = agree(s, rc, e);
    if (rc != ERR_OK)
        goto done;

    float *xdst[8];
    for (int i = 0; i < m->n_inputs; i++)
        xdst[i] = s->n_workers > 1 ? s->xstage[i] : layer_net_input(s->net, i);
    const float *grads = layer_net_grads(s->net);
    int64_t steps = data_loader_steps(tl);
    if (s->cfg.steps_limit > 0 && s->cfg.steps_limit < steps)
        steps = s->cfg.steps_limit;
    double *acc = s->acc, *gacc = s->acc + s->n_acc;
    for (int64_t epoch = s->cfg.initial_epoch; epoch < s->cfg.epochs; epoch++) {
        double t0 = now_s();
        fit_timing tm = {0, 0, 0, 0};
        memset(acc, 0, sizeof(double) * (size_t)s->n_acc);
        if ((rc = data_loader_epoch(tl, epoch, e)) != ERR_OK)
            break;
        fit_logs logs;
        for (int64_t step = 0; step < steps; step++) {
            status(s, epoch + 1, step + 1, "loading data");
            double ts = now_s();
            int64_t grows = 0, lrows = 0;
            bool done = false;
            rc = data_loader_next(tl, xdst, s->y, &grows, &lrows, &done, e);
            if (rc != ERR_OK && !s->has_comm)
                break;
            if (rc == ERR_OK && done)
                break;
            /* Under MPI a rank whose data read failed still runs forward and backward on zero
             * rows, so that it makes the same collective calls (BatchNormalization statistics,
             * gradient buckets) as the others, and the ranks then agree on the error. */
            int local_rc = rc;
            if (local_rc != ERR_OK)
                lrows = 0;
            err_info e2 = {ERR_OK, ""};
            err_info *ep = local_rc == ERR_OK ? e : &e2;
            double td = now_s();
            tm.data_s += td - ts;
            /* A shared update: the other ranks' parts of the last one must be in before the
             * parameters are read (the wait counts as exposed communication). */
            if (s->sharded) {
                status(s, epoch + 1, step + 1, "waiting for the shared update");
                if ((rc = shard_sync(s, e)) != ERR_OK)
                    break;
                double tw = now_s();
                tm.comm_s += tw - td;
                td = tw;
            }
            if (s->n_workers > 1) {
                /* Worker threads: the whole step, update included, in one pool run. */
                struct fit_step *st = &s->st;
                int r = s->has_comm ? s->comm.rank : 0, size = s->has_comm ? s->comm.size : 1;
                int64_t q = grows / size, rem = grows % size;
                st->lrows = lrows;
                st->grows = grows;
                st->it = m->opt.iterations;
                st->row0 = r * q + (r < rem ? r : rem);
                st->load_rc = local_rc;
                if (local_rc != ERR_OK)
                    st->load_e = *e;
                st->pout = NULL;
                status(s, epoch + 1, step + 1, "step (worker threads)");
                if (s->overlap)
                    overlap_begin(s);
                fit_pool_run(s->pool, train_worker, s);
                tm.comm_s += st->comm_s;
                rc = st->rc;
                if (rc == ERR_NUMERIC && st->nan) {
                    rc = err_set(e, ERR_NUMERIC,
                                 "loss is %g at epoch %lld step %lld (iteration %lld): training "
                                 "diverged; lower the learning rate or check the data",
                                 gacc[0], (long long)epoch + 1, (long long)step + 1,
                                 (long long)st->it + 1);
                    break;
                }
                if (rc != ERR_OK) {
                    *e = st->e;
                    break;
                }
                optim_step_end(s->opt, m);
                if (s->sharded)
                    s->shard.updated(s->shard.ctx);
                double te = now_s();
                tm.compute_s += (te - td) - st->comm_s;
                tm.step_s += te - ts;
                if (cb != NULL && cb->on_step != NULL) {
                    logs.n = 0;
                    logs_from_acc(s, m, gacc, "", &logs);
                    cb->on_step(cb->ctx, epoch, step + 1, steps, &logs, now_s() - t0);
                }
                continue;
            }
            status(s, epoch + 1, step + 1, "forward");
            /* The dropout stream is keyed by the optimizer's iteration count, so a resumed run
             * draws the same masks as an uninterrupted one. */
            int64_t it = m->opt.iterations;
            /* Dropout masks are keyed by the global row: this rank's slice starts at
             * r * q + min(r, g % size) (the loader's slicing rule, trainer/data.h). */
            int r = s->has_comm ? s->comm.rank : 0, size = s->has_comm ? s->comm.size : 1;
            int64_t q = grows / size, rem = grows % size;
            layer_net_set_row_offset(s->net, r * q + (r < rem ? r : rem));
            /* A rank whose share of a short last batch is empty still runs forward/backward on
             * zero rows (zero gradients) so that every rank joins the same collectives. */
            int frc = layer_net_forward(s->net, lrows, true, s->cfg.seed, it, ep);
            if (frc == ERR_OK && local_rc == ERR_OK)
                frc = batch_losses(s, m, s->net, lrows, 0, grows, true, acc, ep);
            if (local_rc == ERR_OK)
                local_rc = frc;
            status(s, epoch + 1, step + 1, "backward");
            if (s->has_comm && s->comm.grad_begin != NULL) {
                int brc = s->comm.grad_begin(s->comm.ctx, &e2);
                if (brc != ERR_OK) {
                    rc = agree(s, brc, &e2);
                    *e = e2;
                    break;
                }
            }
            /* Backward runs even after a local failure (with whatever gradients it has) so the
             * buckets are started on every rank; the update below is skipped by all. */
            int brc = layer_net_backward(s->net, lrows,
                                         s->has_comm && s->comm.grad_ready ? grad_ready_hook : NULL,
                                         &s->comm, local_rc == ERR_OK ? e : &e2);
            if (local_rc == ERR_OK)
                local_rc = brc;
            double tb = now_s();
            if (s->has_comm && s->comm.grad_finish != NULL) {
                status(s, epoch + 1, step + 1, "gradient allreduce");
                int crc = s->comm.grad_finish(s->comm.ctx, local_rc == ERR_OK ? e : &e2);
                if (local_rc == ERR_OK)
                    local_rc = crc;
            }
            rc = local_rc;
            if (s->n_reg > 0 && rc == ERR_OK) {
                /* Every rank adds the same penalty to the already-summed gradient; the loss
                 * sums count it once per row of the global batch (a per-batch term, as Keras). */
                double pen =
                    apply_regularizers(s, m->params, s->sharded ? NULL : layer_net_grads(s->net));
                acc[0] += pen * (double)lrows;
            }
            /* Errors agreed and the global running sums (progress line, NaN check) in one
             * collective. */
            rc = step_agree_sum(s, rc, acc, gacc, e);
            double tc = now_s();
            tm.comm_s += tc - tb;
            if (rc != ERR_OK)
                break;
            if (!isfinite(gacc[0])) {
                rc = err_set(e, ERR_NUMERIC,
                             "loss is %g at epoch %lld step %lld (iteration %lld): training "
                             "diverged; lower the learning rate or check the data",
                             gacc[0], (long long)epoch + 1, (long long)step + 1, (long long)it + 1);
                break;
            }
            status(s, epoch + 1, step + 1, "update");
            if (s->sharded) {
                if ((rc = optim_step_begin(s->opt, m, NULL, e)) != ERR_OK)
                    break;
                shard_update(s, s->shard_buf, 0, m->n_trainable);
                optim_step_end(s->opt, m);
                s->shard.updated(s->shard.ctx);
            } else if ((rc = optim_step(s->opt, m, grads, e)) != ERR_OK) {
                break;
            }
            double te = now_s();
            tm.compute_s += (te - td) - (tc - tb);
            tm.step_s += te - ts;
            if (cb != NULL && cb->on_step != NULL) {
                logs.n = 0;
                logs_from_acc(s, m, gacc, "", &logs);
                cb->on_step(cb->ctx, epoch, step + 1, steps, &logs, now_s() - t0);
            }
        }
        if (rc == ERR_OK)
            rc = shard_sync(s, e); /* validation and the callbacks read the parameters */
        if (rc != ERR_OK)
            break;
        logs.n = 0;
        logs_from_acc(s, m, gacc, "", &logs);
        if (vl != NULL) {
            status(s, epoch + 1, 0, "validation");
            double *vacc = calloc((size_t)s->n_acc, sizeof(double));
            if (vacc == NULL) {
                rc = err_set(e, ERR_NOMEM, "validation accumulators");
                break;
            }
            rc = run_eval(s, vnet, vl, vacc, e);
            rc = agree(s, rc, e);
            if (rc == ERR_OK)
                rc = sum_over_ranks(s, vacc, s->n_acc, e);
            if (rc == ERR_OK)
                logs_from_acc(s, m, vacc, "val_", &logs);
            free(vacc);
            if (rc != ERR_OK)
                break;
        }
        if (cb != NULL && cb->on_epoch != NULL)
            cb->on_epoch(cb->ctx, epoch, s->cfg.epochs, steps, &logs, now_s() - t0, &tm);
        if (last != NULL)
            *last = logs;
    }
done:
    layer_net_destroy(vnet);
    data_loader_destroy(vl);
    data_loader_destroy(tl);
    return rc;
}

int fit_evaluate(model *m, const fit_data *data, int64_t batch, int threads, const fit_comm *comm,
                 fit_logs *out, err_info *e)
{
    int rc = fit_data_specialize(m, data, e);
    if (rc == ERR_OK)
        rc = fit_data_check(m, data, true, "evaluation data", e);
    if (rc != ERR_OK)
        return rc;
    if (!m->train.compiled || m->train.n_losses == 0)
        return err_set(e, ERR_CONFIG,
                       "the model has no loss: give --loss (or a file with a training_config)");
    fit_session s;
    memset(&s, 0, sizeof s);
    s.m = m;
    s.cfg = fit_config_default();
    s.cfg.batch = batch;
    if (comm != NULL && comm->size > 1) {
        s.comm = *comm;
        s.has_comm = true;
    }
    s.local_max = (batch + (s.has_comm ? s.comm.size : 1) - 1) / (s.has_comm ? s.comm.size : 1);
    s.n_workers = threads > 1 ? threads : 1;
    data_loader *l = NULL;
    layer_net *net = NULL;
    if (threads < 0 || threads > FIT_MAX_THREADS)
        rc = err_set(e, ERR_USAGE, "%d worker threads: expected 1 .. %d", threads, FIT_MAX_THREADS);
    if (rc == ERR_OK)
        rc = setup_outputs(&s, m, s.local_max, e);
    if (rc == ERR_OK)
        rc = make_loader(&s, data, 0, data_source_rows(data->x[0].src), batch, false, &l, e);
    if (rc == ERR_OK && s.n_workers > 1)
        rc = workers_create(&s, false, true, s.local_max, e);
    else if (rc == ERR_OK)
        rc = layer_net_create(m, s.local_max > 0 ? s.local_max : 1, false, &net, e);
    if (rc == ERR_OK && s.has_comm && s.comm.sum != NULL)
        layer_net_set_reduce(net, net_reduce_hook, &s.comm);
    if (rc == ERR_OK)
        rc = run_eval(&s, net, l, s.acc, e);
    rc = agree(&s, rc, e);
    if (rc == ERR_OK)
        rc = sum_over_ranks(&s, s.acc, s.n_acc, e);
    if (rc == ERR_OK) {
        out->n = 0;
        logs_from_acc(&s, m, s.acc, "", out);
    }
    workers_destroy(&s);
    layer_net_destroy(net);
    data_loader_destroy(l);
    for (int o = 0; o < 8; o++)
        free(s.y[o]);
    free(s.acc);
    return rc;
}

int fit_predict(model *m, data_source *const *x, int n_x, int64_t batch, int threads,
                float *const *out, err_info *e)
{
    fit_data d;
    memset(&d, 0, sizeof d);
    d.n_x = n_x;
    for (int i = 0; i < n_x && i < 8; i++) {
        d.x[i].src = x[i];
        d.x[i].scale = 1.0f;
    }
    int rc = fit_data_specialize(m, &d, e);
    if (rc == ERR_OK)
        rc = fit_data_check(m, &d, false, "predict input", e);
    if (rc != ERR_OK)
        return rc;
    int64_t rows = n_x > 0 ? data_source_rows(x[0]) : 0;
    if (batch <= 0)
        batch = 32;
    if (batch > rows && rows > 0)
        batch = rows;
    if (threads < 0 || threads > FIT_MAX_THREADS)
        return err_set(e, ERR_USAGE, "%d worker threads: expected 1 .. %d", threads,
                       FIT_MAX_THREADS);
    /* Worker threads: a session shell holding the pool and one inference net per worker, each
     * running a slice of every batch (rows are independent in inference, so the outputs are the
     * same bits as one thread's up to GEMM blocking). */
    fit_session s;
    memset(&s, 0, sizeof s);
    s.m = m;
    s.n_workers = threads > 1 ? threads : 1;
    layer_net *net = NULL;
    int64_t *ids = malloc(sizeof(int64_t) * (size_t)(batch > 0 ? batch : 1));
    if (ids == NULL)
        return err_set(e, ERR_NOMEM, "row index buffer");
    if (s.n_workers > 1)
        rc = workers_create(&s, false, true, batch > 0 ? batch : 1, e);
    else
        rc = layer_net_create(m, batch > 0 ? batch : 1, false, &net, e);
    for (int64_t r0 = 0; rc == ERR_OK && r0 < rows; r0 += batch) {
        int64_t nb = rows - r0 < batch ? rows - r0 : batch;
        for (int64_t k = 0; k < nb; k++)
            ids[k] = r0 + k;
        for (int i = 0; i < n_x && rc == ERR_OK; i++)
            rc = data_source_read(x[i], ids, nb, 1.0f,
                                  net != NULL ? layer_net_input(net, i) : s.xstage[i], e);
        if (rc == ERR_OK && net == NULL) {
            s.st.lrows = nb;
            s.st.pout = out;
            s.st.p_r0 = r0;
            fit_pool_run(s.pool, infer_worker, &s);
            rc = workers_rc(&s, e);
            continue;
        }
        if (rc == ERR_OK)
            rc = layer_net_forward(net, nb, false, 0, 0, e);
        for (int o = 0; rc == ERR_OK && o < m->n_outputs; o++) {
            int64_t len = fit_output_row_len(m, o);
            memcpy(out[o] + r0 * len, layer_net_output(net, o), sizeof(float) * (size_t)(nb * len));
        }
    }
    workers_destroy(&s);
    layer_net_destroy(net);
    free(ids);
    return rc;
}
