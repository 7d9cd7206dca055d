/* cornu's side of the training benchmark (tests/bench/run): trains a Keras model_config (the
 * built-in Fashion-MNIST MLP or CNN by default) on the real Fashion-MNIST training set through
 * the same path as `cornu train` -- kjson_model_parse(), init_model(), the IDX data sources,
 * fit_session_create() and fit_train() (data loading with shuffling, forward, loss and metrics,
 * backward, Adam) -- in one process with --workers worker threads (fit_config.threads: each
 * trains a slice of every batch) of --threads OpenBLAS threads each.
 *
 * Timing: fit_train() runs warm-up steps, then --windows windows of --steps steps each; the
 * on_step callback timestamps every step, so a window's time is exactly its steps (data
 * loading included, nothing else). Prints every window and a RESULT line: the best window's
 * samples/s and step time (the best is the least disturbed by other processes on a shared
 * machine), the median, the data-loading share and the peak RSS (getrusage).
 *
 * --loop engine times the engine alone instead: the same model on a layer_net of its own, with
 * 16 shuffled batches read into memory beforehand; a step copies one of them into the net's
 * input and runs layer_net_forward(), loss_compute() (with the gradient), layer_net_backward()
 * and optim_step() -- what the fit loop does minus data loading, metrics and bookkeeping. */

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "formats/keras_json.h"
#include "kernels/rng.h"
#include "trainer/data.h"
#include "trainer/fit.h"
#include "trainer/init.h"
#include "trainer/loss.h"
#include "trainer/model.h"
#include "trainer/optim.h"
#include "tests/bench/bench_util.h"

#ifndef CORNU_MODELS_DIR
#define CORNU_MODELS_DIR "launch/models"
#endif

typedef struct bench_steps {
    double *t; /* t[i]: time at the end of global step i */
    int64_t n, cap;
    int64_t warmup; /* minor page faults are counted from the end of step warmup - 1 */
    long faults0;
    fit_timing timing; /* summed over epochs */
} bench_steps;

static long minor_faults(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_minflt;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void on_step(void *ctx, int64_t epoch, int64_t step, int64_t steps, const fit_logs *logs,
                    double elapsed_s)
{
    (void)epoch;
    (void)step;
    (void)steps;
    (void)logs;
    (void)elapsed_s;
    bench_steps *b = ctx;
    if (b->n < b->cap)
        b->t[b->n++] = now_s();
    if (b->n == b->warmup)
        b->faults0 = minor_faults();
}

static void on_epoch(void *ctx, int64_t epoch, int64_t epochs, int64_t steps, const fit_logs *logs,
                     double elapsed_s, const fit_timing *t)
{
    (void)epoch;
    (void)epochs;
    (void)steps;
    (void)logs;
    (void)elapsed_s;
    bench_steps *b = ctx;
    b->timing.data_s += t->data_s;
    b->timing.compute_s += t->compute_s;
    b->timing.comm_s += t->comm_s;
    b->timing.step_s += t->step_s;
}

#define ENGINE_BATCHES 16

/* The engine loop (see the header comment): fills t[0 .. total) with the time at the end of
 * each step. */
static int engine_loop(model *m, data_source *xs, data_source *ys, int64_t batch, uint64_t seed,
                       int64_t total, bench_steps *b, double *loss_out, err_info *e)
{
    layer_net *net = NULL;
    optim *opt = NULL;
    float *xb = NULL, *yb = NULL;
    int64_t *rows = NULL;
    int64_t xlen = data_source_row_len(xs), n = data_source_rows(xs);
    int64_t out_len = fit_output_row_len(m, 0);
    int rc = layer_net_create(m, batch, true, &net, e);
    if (rc == ERR_OK)
        rc = optim_create(m, &opt, e);
    if (rc != ERR_OK)
        goto done;
    xb = malloc(sizeof(float) * (size_t)(ENGINE_BATCHES * batch * xlen));
    yb = malloc(sizeof(float) * (size_t)(ENGINE_BATCHES * batch));
    rows = malloc(sizeof(int64_t) * (size_t)(ENGINE_BATCHES * batch));
    if (xb == NULL || yb == NULL || rows == NULL) {
        rc = err_set(e, ERR_NOMEM, "engine loop batches");
        goto done;
    }
    rng r;
    rng_seed(&r, seed, 0);
    for (int64_t i = 0; i < ENGINE_BATCHES * batch; i++)
        rows[i] = (int64_t)rng_below(&r, (uint64_t)n);
    if ((rc = data_source_read(xs, rows, ENGINE_BATCHES * batch, 1.0f / 255.0f, xb, e)) != ERR_OK ||
        (rc = data_source_read(ys, rows, ENGINE_BATCHES * batch, 1.0f, yb, e)) != ERR_OK)
        goto done;
    float *in = layer_net_input(net, 0);
    float *grad = layer_net_output_grad(net, 0);
    const model_loss *loss = &m->train.losses[0];
    double sum = 0;
    for (int64_t step = 0; step < total; step++) {
        int64_t k = step % ENGINE_BATCHES;
        memcpy(in, xb + k * batch * xlen, sizeof(float) * (size_t)(batch * xlen));
        if ((rc = layer_net_forward(net, batch, true, seed, m->opt.iterations, e)) != ERR_OK)
            goto done;
        sum = 0;
        if ((rc = loss_compute(loss, layer_net_output(net, 0), yb + k * batch, batch, out_len,
                               (double)batch, &sum, grad, e)) != ERR_OK)
            goto done;
        if ((rc = layer_net_backward(net, batch, NULL, NULL, e)) != ERR_OK)
            goto done;
        if ((rc = optim_step(opt, m, layer_net_grads(net), e)) != ERR_OK)
            goto done;
        b->t[step] = now_s();
        if (step + 1 == b->warmup)
            b->faults0 = minor_faults();
    }
    *loss_out = sum / (double)batch;
done:
    free(rows);
    free(yb);
    free(xb);
    optim_destroy(opt);
    layer_net_destroy(net);
    return rc;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_train [--model mlp|cnn|MODEL.json] [--threads N] [--workers N]\n"
                    "                   [--batch N] [--warmup N] [--steps N] [--windows N]\n"
                    "                   [--seed N] [--data-dir DIR] [--loop fit|engine]\n"
                    "  --threads: OpenBLAS threads per worker; --workers: worker threads\n");
}

static int arg_int(const char *v, int64_t lo, int64_t *out)
{
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno != 0 || *end != '\0' || end == v || x < lo)
        return 0;
    *out = x;
    return 1;
}

int main(int argc, char **argv)
{
    const char *model_arg = "mlp", *data_dir = NULL, *loop = "fit";
    int64_t threads = 1, workers = 1, batch = 128, warmup = 10, steps = 50, windows = 5, seed = 1;
    for (int i = 1; i < argc; i += 2) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = v != NULL;
        if (ok && strcmp(argv[i], "--model") == 0)
            model_arg = v;
        else if (ok && strcmp(argv[i], "--data-dir") == 0)
            data_dir = v;
        else if (ok && strcmp(argv[i], "--loop") == 0 &&
                 (strcmp(v, "fit") == 0 || strcmp(v, "engine") == 0))
            loop = v;
        else if (ok && strcmp(argv[i], "--threads") == 0)
            ok = arg_int(v, 1, &threads);
        else if (ok && strcmp(argv[i], "--workers") == 0)
            ok = arg_int(v, 1, &workers) && workers <= FIT_MAX_THREADS;
        else if (ok && strcmp(argv[i], "--batch") == 0)
            ok = arg_int(v, 1, &batch);
        else if (ok && strcmp(argv[i], "--warmup") == 0)
            ok = arg_int(v, 1, &warmup);
        else if (ok && strcmp(argv[i], "--steps") == 0)
            ok = arg_int(v, 1, &steps);
        else if (ok && strcmp(argv[i], "--windows") == 0)
            ok = arg_int(v, 1, &windows);
        else if (ok && strcmp(argv[i], "--seed") == 0)
            ok = arg_int(v, 0, &seed);
        else
            ok = 0;
        if (!ok) {
            usage();
            return 2;
        }
    }
    /* A benchmark main() sets the BLAS threads itself (the cornu runtime does it in `cornu`). */
    openblas_set_num_threads((int)threads);

    err_info e;
    memset(&e, 0, sizeof e);
    model *m = NULL;
    data_source *xs = NULL, *ys = NULL;
    fit_session *s = NULL;
    char *json = NULL;
    bench_steps b;
    memset(&b, 0, sizeof b);
    int rc;

    char path[4096];
    if (strcmp(model_arg, "mlp") == 0 || strcmp(model_arg, "cnn") == 0)
        snprintf(path, sizeof path, "%s/fashion_%s.json", CORNU_MODELS_DIR, model_arg);
    else
        snprintf(path, sizeof path, "%s", model_arg);
    size_t len = 0;
    if ((rc = bench_read_file(path, &json, &len, &e)) != ERR_OK)
        goto done;
    if ((rc = kjson_model_parse(json, len, path, &m, &e)) != ERR_OK)
        goto done;
    if ((rc = init_model(m, (uint64_t)seed, &e)) != ERR_OK)
        goto done;

    /* Compile like `cornu train` with its defaults: sparse categorical crossentropy, accuracy,
     * Adam with Keras's defaults (lr 0.001). */
    model_loss loss;
    if ((rc = loss_from_name("sparse_categorical_crossentropy", &loss, &e)) != ERR_OK)
        goto done;
    if ((rc = model_train_set_losses(m, 1, &loss, NULL, &e)) != ERR_OK)
        goto done;
    m->train.n_metrics = 1;
    m->train.metrics[0] = METRIC_ACCURACY;
    m->train.optim = model_optim_config_default(OPTIM_ADAM);
    m->train.compiled = true;

    char tx[DATA_PATH_MAX], ty[DATA_PATH_MAX], vx[DATA_PATH_MAX], vy[DATA_PATH_MAX];
    if ((rc = data_fashion_mnist_paths(data_dir, tx, ty, vx, vy, &e)) != ERR_OK)
        goto done;
    if ((rc = data_source_open_idx(tx, &xs, &e)) != ERR_OK)
        goto done;
    if ((rc = data_source_open_idx(ty, &ys, &e)) != ERR_OK)
        goto done;
    fit_data d;
    memset(&d, 0, sizeof d);
    d.n_x = 1;
    d.n_y = 1;
    d.x[0].src = xs;
    d.x[0].scale = 1.0f / 255.0f;
    d.y[0].src = ys;
    d.y[0].scale = 1.0f;

    int64_t total = warmup + windows * steps;
    int64_t per_epoch = (data_source_rows(xs) + batch - 1) / batch;
    fit_config fc = fit_config_default();
    fc.batch = batch;
    fc.seed = (uint64_t)seed;
    fc.shuffle = true;
    fc.epochs = (total + per_epoch - 1) / per_epoch;
    fc.steps_limit = total < per_epoch ? total : per_epoch;
    fc.threads = (int)workers;
    b.cap = fc.epochs * fc.steps_limit;
    b.warmup = warmup;
    b.t = calloc((size_t)b.cap, sizeof *b.t);
    if (b.t == NULL) {
        rc = err_set(&e, ERR_NOMEM, "step times");
        goto done;
    }
    fit_logs last;
    memset(&last, 0, sizeof last);
    double t_start = now_s();
    if (strcmp(loop, "engine") == 0) {
        last.n = 1;
        snprintf(last.names[0], sizeof last.names[0], "loss");
        if ((rc = engine_loop(m, xs, ys, batch, (uint64_t)seed, total, &b, &last.values[0], &e)) !=
            ERR_OK)
            goto done;
        b.n = total;
    } else {
        if ((rc = fit_session_create(m, &fc, NULL, &s, &e)) != ERR_OK)
            goto done;
        fit_callbacks cb = {&b, on_step, on_epoch};
        if ((rc = fit_train(s, &d, &cb, &last, &e)) != ERR_OK)
            goto done;
    }
    double t_all = now_s() - t_start;
    double faults = (double)(minor_faults() - b.faults0) / (double)(b.n - warmup);
    if (b.n < total) {
        rc = err_set(&e, ERR_INTERNAL, "fit_train ran %lld steps, expected at least %lld",
                     (long long)b.n, (long long)total);
        goto done;
    }

    double win[1024];
    int64_t nw = windows < 1024 ? windows : 1024;
    for (int64_t w = 0; w < nw; w++) {
        int64_t a = warmup + w * steps - 1, z = warmup + (w + 1) * steps - 1;
        win[w] = b.t[z] - b.t[a];
        printf("window %lld: %lld steps in %.4f s = %.1f samples/s (%.3f ms/step)\n", (long long)w,
               (long long)steps, win[w], (double)(steps * batch) / win[w],
               1e3 * win[w] / (double)steps);
    }
    qsort(win, (size_t)nw, sizeof win[0], cmp_double);
    double best = win[0], median = win[nw / 2];
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double loss_v = NAN;
    for (int i = 0; i < last.n; i++)
        if (strcmp(last.names[i], "loss") == 0)
            loss_v = last.values[i];
    double data_frac = b.timing.step_s > 0 ? b.timing.data_s / b.timing.step_s : 0;
    printf("RESULT impl=cornu loop=%s model=%s threads=%lld workers=%lld blas_threads=%lld "
           "batch=%lld steps=%lld windows=%lld "
           "samples_per_s=%.2f median_samples_per_s=%.2f step_ms=%.4f data_frac=%.4f "
           "peak_rss_mb=%.1f faults_per_step=%.1f params=%zu loss=%.4f total_s=%.2f\n",
           loop, model_arg, (long long)(threads * workers), (long long)workers, (long long)threads,
           (long long)batch, (long long)steps, (long long)windows, (double)(steps * batch) / best,
           (double)(steps * batch) / median, 1e3 * best / (double)steps, data_frac,
           (double)ru.ru_maxrss / 1024.0, faults, m->n_params, loss_v, t_all);
    if (!isfinite(loss_v)) {
        rc = err_set(&e, ERR_NUMERIC, "training loss is %g", loss_v);
        goto done;
    }
done:
    if (rc != ERR_OK)
        fprintf(stderr, "bench_train: error: %s\n", e.msg);
    fit_session_destroy(s);
    data_source_destroy(ys);
    data_source_destroy(xs);
    model_destroy(m);
    free(json);
    free(b.t);
    return rc == ERR_OK ? 0 : 1;
}
