/* Where the communication of a data-parallel training step goes (tests/bench/scaling.py).
 *
 *   mpirun -np P scaling_step [--model mlp|cnn] [--per-rank-batch N] [--bucket-mb MB]
 *                             [--allreduce shm|mpi]
 *                             [--warmup N] [--steps N] [--window N] [--seed N] [--data-dir DIR]
 *
 * Trains like `mpirun -np P cornu train fashion-mlp|fashion-cnn --per-rank-batch N` (the built-in
 * model JSON, init_model, the Fashion-MNIST IDX sources, sparse categorical crossentropy,
 * accuracy, Adam with Keras's defaults, fit_train with shuffling) with the same fit_comm hooks
 * as launch/dist.c -- the bucketed reducer of trainer/comm.h started from backward's ready
 * callbacks, comm_agree, comm_allreduce_sum_d -- but times every hook call of every step:
 *
 *   ready    time inside comm_reducer_ready (starting buckets, progressing them), all calls
 *   last     the part of it in the call that reports the start of the buffer (lo == 0): after
 *            it backward has nothing left to compute, so it is pure communication
 *   finish   time blocked in comm_reducer_finish
 *   agree    the error agreement after finish; sum: the metrics sum (one small allreduce each)
 *
 * `cornu train --verbose-ranks` counts ready calls as compute; here they are separated, so
 * exposed = ready + finish is all the time the rank spent in gradient communication instead of
 * computing. Steps are grouped in windows of --window steps; the best window is the one whose
 * slowest rank was fastest. Rank 0 prints, per rank, the best window's means (ms per step) as
 * "RESULT kind=step rank=R ..." and the median step's values as "RESULT kind=median ...", and
 * the exposed communication of each step -- min over ranks of ready + finish: the rank that
 * reached the update last, whose communication the step had to wait for -- as
 * "RESULT kind=exposed last_median_ms=... last_best_window_ms=...". */

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "formats/keras_json.h"
#include "trainer/comm.h"
#include "trainer/data.h"
#include "trainer/fit.h"
#include "trainer/init.h"
#include "trainer/loss.h"
#include "trainer/model.h"
#include "tests/bench/bench_util.h"

#ifndef CORNU_MODELS_DIR
#define CORNU_MODELS_DIR "launch/models"
#endif

enum { T_STEP, T_READY, T_LAST, T_FINISH, T_AGREE, T_SUM, T_COUNT };
static const char *const T_NAMES[T_COUNT] = {"step", "ready", "last", "finish", "agree", "sum"};

typedef struct probe {
    rt *r;
    comm_reducer *red;
    double cur[T_COUNT]; /* this step's sums */
    double t_prev;       /* end of the previous step */
    double *steps;       /* [cap][T_COUNT] */
    int64_t n, cap;
} probe;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int hook_begin(void *ctx, err_info *e)
{
    probe *p = ctx;
    return comm_reducer_begin(p->red, e);
}

static int hook_ready(void *ctx, size_t lo, size_t hi, err_info *e)
{
    probe *p = ctx;
    double t0 = now_s();
    int rc = comm_reducer_ready(p->red, lo, hi, e);
    double dt = now_s() - t0;
    p->cur[T_READY] += dt;
    if (lo == 0)
        p->cur[T_LAST] += dt;
    return rc;
}

static int hook_finish(void *ctx, err_info *e)
{
    probe *p = ctx;
    double t0 = now_s();
    int rc = comm_reducer_finish(p->red, e);
    p->cur[T_FINISH] += now_s() - t0;
    return rc;
}

static int hook_sum(void *ctx, double *buf, int64_t n, err_info *e)
{
    probe *p = ctx;
    double t0 = now_s();
    int rc = comm_allreduce_sum_d(p->r, buf, n, e);
    p->cur[T_SUM] += now_s() - t0;
    return rc;
}

static int hook_agree(void *ctx, int rc, err_info *e)
{
    probe *p = ctx;
    double t0 = now_s();
    int arc = comm_agree(p->r, rc, e);
    p->cur[T_AGREE] += now_s() - t0;
    return arc;
}

static void on_step(void *ctx, int64_t epoch, int64_t step, int64_t steps, const fit_logs *logs,
                    double elapsed_s)
{
    (void)epoch;
    (void)step;
    (void)steps;
    (void)logs;
    (void)elapsed_s;
    probe *p = ctx;
    double t = now_s();
    p->cur[T_STEP] = t - p->t_prev;
    p->t_prev = t;
    if (p->n < p->cap)
        memcpy(p->steps + p->n++ * T_COUNT, p->cur, sizeof p->cur);
    memset(p->cur, 0, sizeof p->cur);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct opts {
    const char *model, *data_dir;
    int64_t batch, warmup, steps, window, seed;
    double bucket_mb;
    const char *allreduce; /* shm (cornu's default on one node) or mpi */
} opts;

static int parse_args(int argc, char **argv, opts *o, err_info *e)
{
    *o = (opts){"mlp", NULL, 128, 10, 100, 10, 1, 4.0, "shm"};
    for (int i = 1; i < argc; i += 2) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL)
            return err_set(e, ERR_USAGE, "%s: missing value", k);
        char *end = NULL;
        double x = strtod(v, &end);
        bool num = end != v && *end == '\0';
        if (strcmp(k, "--model") == 0)
            o->model = v;
        else if (strcmp(k, "--data-dir") == 0)
            o->data_dir = v;
        else if (strcmp(k, "--allreduce") == 0 && (strcmp(v, "shm") == 0 || strcmp(v, "mpi") == 0))
            o->allreduce = v;
        else if (strcmp(k, "--bucket-mb") == 0 && num && x > 0)
            o->bucket_mb = x;
        else if (num && x >= 1 && x == floor(x) && strcmp(k, "--per-rank-batch") == 0)
            o->batch = (int64_t)x;
        else if (num && x >= 1 && x == floor(x) && strcmp(k, "--warmup") == 0)
            o->warmup = (int64_t)x;
        else if (num && x >= 1 && x == floor(x) && strcmp(k, "--steps") == 0)
            o->steps = (int64_t)x;
        else if (num && x >= 1 && x == floor(x) && strcmp(k, "--window") == 0)
            o->window = (int64_t)x;
        else if (num && x >= 0 && x == floor(x) && strcmp(k, "--seed") == 0)
            o->seed = (int64_t)x;
        else
            return err_set(e, ERR_USAGE,
                           "argument %s %s: expected --model mlp|cnn, --per-rank-batch N, "
                           "--bucket-mb MB, --warmup N, --steps N, --window N, --seed N, "
                           "--data-dir DIR, --allreduce shm|mpi",
                           k, v);
    }
    if (strcmp(o->model, "mlp") != 0 && strcmp(o->model, "cnn") != 0)
        return err_set(e, ERR_USAGE, "--model %s: expected mlp or cnn", o->model);
    return ERR_OK;
}

/* Rank 0: the best window (slowest rank fastest) and the median step over all ranks' records
 * all[rank][step][T_COUNT]. */
static void report(const opts *o, int size, const double *all, int64_t n, size_t n_floats,
                   size_t buckets)
{
    int64_t warm = o->warmup < n ? o->warmup : 0, nw = (n - warm) / o->window;
    int64_t best_w = -1;
    double best = INFINITY;
    for (int64_t w = 0; w < nw; w++) {
        double worst = 0;
        for (int r = 0; r < size; r++) {
            double s = 0;
            for (int64_t k = warm + w * o->window; k < warm + (w + 1) * o->window; k++)
                s += all[((size_t)r * (size_t)n + (size_t)k) * T_COUNT + T_STEP];
            worst = s > worst ? s : worst;
        }
        if (worst < best) {
            best = worst;
            best_w = w;
        }
    }
    double *col = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
    for (int r = 0; r < size && best_w >= 0 && col != NULL; r++) {
        double mean[T_COUNT] = {0}, med[T_COUNT];
        for (int64_t k = warm + best_w * o->window; k < warm + (best_w + 1) * o->window; k++)
            for (int t = 0; t < T_COUNT; t++)
                mean[t] +=
                    all[((size_t)r * (size_t)n + (size_t)k) * T_COUNT + t] / (double)o->window;
        for (int t = 0; t < T_COUNT; t++) {
            for (int64_t k = warm; k < n; k++)
                col[k - warm] = all[((size_t)r * (size_t)n + (size_t)k) * T_COUNT + t];
            qsort(col, (size_t)(n - warm), sizeof col[0], cmp_double);
            med[t] = col[(n - warm) / 2];
        }
        for (int kind = 0; kind < 2; kind++) {
            const double *v = kind == 0 ? mean : med;
            printf("RESULT kind=%s model=%s ranks=%d rank=%d per_rank_batch=%lld floats=%zu "
                   "bucket_mb=%g buckets=%zu window=%lld",
                   kind == 0 ? "step" : "median", o->model, size, r, (long long)o->batch, n_floats,
                   o->bucket_mb, buckets, (long long)(kind == 0 ? o->window : n - warm));
            for (int t = 0; t < T_COUNT; t++)
                printf(" %s_ms=%.4f", T_NAMES[t], 1e3 * v[t]);
            printf(" exposed_ms=%.4f\n", 1e3 * (v[T_READY] + v[T_FINISH]));
        }
    }
    /* Per step, the rank that reached the update last spent min over ranks of ready + finish
     * in gradient communication (the others also waited for it): the exposed communication of
     * the step. Median over the steps and mean over the best window. */
    for (int64_t k = warm; k < n && col != NULL; k++) {
        double lo = INFINITY;
        for (int r = 0; r < size; r++) {
            const double *v = all + ((size_t)r * (size_t)n + (size_t)k) * T_COUNT;
            lo = v[T_READY] + v[T_FINISH] < lo ? v[T_READY] + v[T_FINISH] : lo;
        }
        col[k - warm] = lo;
    }
    if (col != NULL && n > warm && best_w >= 0) {
        double win = 0;
        for (int64_t k = best_w * o->window; k < (best_w + 1) * o->window; k++)
            win += col[k] / (double)o->window;
        qsort(col, (size_t)(n - warm), sizeof col[0], cmp_double);
        printf("RESULT kind=exposed model=%s ranks=%d floats=%zu bucket_mb=%g buckets=%zu "
               "last_median_ms=%.4f last_best_window_ms=%.4f best_window_step_ms=%.4f\n",
               o->model, size, n_floats, o->bucket_mb, buckets, 1e3 * col[(n - warm) / 2],
               1e3 * win, 1e3 * best / (double)o->window);
    }
    free(col);
}

static int run(rt *r, const opts *o, err_info *e)
{
    model *m = NULL;
    data_source *xs = NULL, *ys = NULL;
    fit_session *s = NULL;
    char *json = NULL;
    double *all = NULL;
    probe p;
    memset(&p, 0, sizeof p);
    p.r = r;
    char path[4096];
    snprintf(path, sizeof path, "%s/fashion_%s.json", CORNU_MODELS_DIR, o->model);
    size_t len = 0;
    int rc = bench_read_file(path, &json, &len, e);
    if (rc == ERR_OK)
        rc = kjson_model_parse(json, len, path, &m, e);
    if (rc == ERR_OK)
        rc = init_model(m, (uint64_t)o->seed, e);
    model_loss loss;
    if (rc == ERR_OK)
        rc = loss_from_name("sparse_categorical_crossentropy", &loss, e);
    if (rc == ERR_OK)
        rc = model_train_set_losses(m, 1, &loss, NULL, e);
    if (rc != ERR_OK)
        goto done;
    /* Compiled like `cornu train --optimizer adam` with its defaults. */
    m->train.n_metrics = 1;
    m->train.metrics[0] = METRIC_ACCURACY;
    m->train.optim = model_optim_config_default(OPTIM_ADAM);
    m->train.compiled = true;
    char tx[DATA_PATH_MAX], ty[DATA_PATH_MAX], vx[DATA_PATH_MAX], vy[DATA_PATH_MAX];
    if ((rc = data_fashion_mnist_paths(o->data_dir, tx, ty, vx, vy, e)) != ERR_OK ||
        (rc = data_source_open_idx(tx, &xs, e)) != ERR_OK ||
        (rc = data_source_open_idx(ty, &ys, e)) != ERR_OK)
        goto done;
    fit_data d;
    memset(&d, 0, sizeof d);
    d.n_x = d.n_y = 1;
    d.x[0] = (fit_array){xs, 1.0f / 255.0f};
    d.y[0] = (fit_array){ys, 1.0f};

    int size = rt_size(r);
    fit_comm c = {&p,          rt_rank(r), size,       hook_begin, hook_ready,
                  hook_finish, hook_sum,   hook_agree, NULL};
    fit_config fc = fit_config_default();
    fc.batch = o->batch * size;
    fc.seed = (uint64_t)o->seed;
    int64_t total = o->warmup + o->steps;
    int64_t per_epoch = data_source_rows(xs) / fc.batch;
    fc.steps_limit = total < per_epoch ? total : per_epoch;
    fc.epochs = (total + fc.steps_limit - 1) / fc.steps_limit;
    p.cap = fc.epochs * fc.steps_limit;
    p.steps = calloc((size_t)p.cap * T_COUNT, sizeof(double));
    if (p.steps == NULL) {
        rc = err_set(e, ERR_NOMEM, "step records");
        goto done;
    }
    if ((rc = fit_session_create(m, &fc, size > 1 ? &c : NULL, &s, e)) != ERR_OK)
        goto done;
    size_t bytes = (size_t)(o->bucket_mb * 1024.0 * 1024.0);
    if (bytes < 4)
        bytes = 4;
    if (size > 1 && strcmp(o->allreduce, "shm") == 0) {
        /* As `cornu train --allreduce shm`: backward writes into the shared window. */
        if ((rc = comm_reducer_create_shm(r, m->n_trainable, bytes, 0, &p.red, e)) != ERR_OK)
            goto done;
        fit_session_set_grads(s, comm_reducer_buffer(p.red));
    } else if (size > 1 && (rc = comm_reducer_create(r, fit_session_grads(s), m->n_trainable, bytes,
                                                     &p.red, e)) != ERR_OK) {
        goto done;
    }
    fit_callbacks cb = {&p, on_step, NULL};
    p.t_prev = now_s();
    if ((rc = fit_train(s, &d, &cb, NULL, e)) != ERR_OK)
        goto done;
    /* Every rank ran the same number of steps (fit_train keeps them in step). */
    if (rt_rank(r) == 0)
        all = malloc(sizeof(double) * (size_t)p.n * T_COUNT * (size_t)size);
    if (size > 1)
        MPI_Gather(p.steps, (int)(p.n * T_COUNT), MPI_DOUBLE, all, (int)(p.n * T_COUNT), MPI_DOUBLE,
                   0, rt_comm(r));
    else if (all != NULL)
        memcpy(all, p.steps, sizeof(double) * (size_t)p.n * T_COUNT);
    if (all != NULL)
        report(o, size, all, p.n, m->n_trainable, p.red ? comm_reducer_buckets(p.red) : 0);
done:
    free(all);
    comm_reducer_destroy(p.red);
    free(p.steps);
    fit_session_destroy(s);
    data_source_destroy(ys);
    data_source_destroy(xs);
    model_destroy(m);
    free(json);
    return rc;
}

int main(int argc, char **argv)
{
    rt *r = NULL;
    err_info e = {ERR_OK, ""};
    rt_config rc_ = rt_config_default();
    rc_.blas_threads = 1; /* ranks x 1 thread, as the scaling benchmark measures */
    if (rt_init(&argc, &argv, &rc_, &r, &e) != ERR_OK) {
        fprintf(stderr, "scaling_step: %s\n", e.msg);
        return 1;
    }
    opts o;
    int rc = parse_args(argc, argv, &o, &e);
    if (rc == ERR_OK)
        rc = run(r, &o, &e);
    if (rc != ERR_OK)
        fprintf(stderr, "scaling_step: rank %d: %s\n", rt_rank(r), e.msg);
    fflush(stdout);
    rt_finalize(r);
    return rc == ERR_OK ? 0 : 1;
}
