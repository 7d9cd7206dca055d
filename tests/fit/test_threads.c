/* Worker threads in the training loop (fit_config.threads, fit_evaluate, fit_predict): on a
 * small model with BatchNormalization and Dropout, N threads give the one-thread result within
 * rounding (batch statistics, dropout masks by global row, gradients and metrics summed over
 * the workers; moving statistics updated once per step), the same thread count gives the same
 * bits, and an error found by one worker is reported without hanging the others. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/keras_json.h"
#include "kernels/rng.h"
#include "fit_test_data.h"
#include "test_util.h"
#include "trainer/data.h"
#include "trainer/fit.h"
#include "trainer/init.h"
#include "trainer/loss.h"

static const char *MODEL_JSON =
    "{\"class_name\": \"Sequential\", \"config\": {\"name\": \"t\", \"layers\": ["
    "{\"class_name\": \"InputLayer\", \"config\": {\"batch_input_shape\": [null, 12], "
    "\"name\": \"in\"}},"
    "{\"class_name\": \"Dense\", \"config\": {\"name\": \"d0\", \"units\": 16, "
    "\"use_bias\": false}},"
    "{\"class_name\": \"BatchNormalization\", \"config\": {\"name\": \"bn\", \"momentum\": 0.8}},"
    "{\"class_name\": \"Activation\", \"config\": {\"name\": \"act\", \"activation\": \"relu\"}},"
    "{\"class_name\": \"Dropout\", \"config\": {\"name\": \"drop\", \"rate\": 0.25}},"
    "{\"class_name\": \"Dense\", \"config\": {\"name\": \"d1\", \"units\": 5, "
    "\"activation\": \"softmax\"}}]}}";

#define ROWS 90
#define XLEN 12

static char g_dir[256];
static data_source *g_x, *g_y, *g_ybad;

static int make_data(err_info *e)
{
    int drc = fit_test_dir(g_dir, sizeof g_dir, "threads", (int)getpid(), e);
    if (drc != ERR_OK)
        return drc;
    static float x[ROWS * XLEN], y[ROWS], ybad[ROWS];
    rng r;
    rng_seed(&r, 11, 0);
    for (int i = 0; i < ROWS * XLEN; i++)
        x[i] = (float)rng_below(&r, 1000) / 500.0f - 1.0f;
    for (int i = 0; i < ROWS; i++)
        y[i] = ybad[i] = (float)rng_below(&r, 5);
    ybad[61] = 7.0f; /* out of range for 5 classes, in the last rows a worker gets */
    int64_t xs[2] = {ROWS, XLEN}, ys[1] = {ROWS};
    int rc = fit_test_npy(g_dir, "x", 2, xs, x, &g_x, e);
    if (rc == ERR_OK)
        rc = fit_test_npy(g_dir, "y", 1, ys, y, &g_y, e);
    if (rc == ERR_OK)
        rc = fit_test_npy(g_dir, "ybad", 1, ys, ybad, &g_ybad, e);
    return rc;
}

static int new_model(model **out, err_info *e)
{
    int rc = fit_test_model(MODEL_JSON, 5, out, e);
    if (rc == ERR_OK) {
        model *m = *out;
        m->train.n_metrics = 1;
        m->train.metrics[0] = METRIC_ACCURACY;
        m->train.optim = model_optim_config_default(OPTIM_SGD);
        m->train.optim.momentum = 0.9;
        m->train.optim.lr.initial = 0.05;
        m->train.compiled = true;
    }
    return rc;
}

typedef struct result {
    float params[4096];
    size_t n;
    int64_t iterations;
    fit_logs logs;
    float pred[ROWS * 5];
    fit_logs eval;
} result;

static int train(int threads, data_source *y, result *out, err_info *e)
{
    model *m = NULL;
    fit_session *s = NULL;
    int rc = new_model(&m, e);
    fit_data d = fit_test_xy(g_x, y);
    fit_config c = fit_config_default();
    c.epochs = 3;
    c.batch = 32; /* 72 training rows: batches 32, 32, 8; 8 rows over 3 workers is uneven */
    c.seed = 4;
    c.validation_split = 0.2;
    c.threads = threads;
    if (rc == ERR_OK)
        rc = fit_session_create(m, &c, NULL, &s, e);
    if (rc == ERR_OK)
        rc = fit_train(s, &d, NULL, &out->logs, e);
    if (rc == ERR_OK) {
        out->n = m->n_params;
        CHECK(out->n <= 4096);
        memcpy(out->params, m->params, sizeof(float) * out->n);
        out->iterations = m->opt.iterations;
        float *po[1] = {out->pred};
        data_source *xs[1] = {g_x};
        rc = fit_predict(m, xs, 1, 20, threads, po, e);
    }
    if (rc == ERR_OK)
        rc = fit_evaluate(m, &d, 16, threads, NULL, &out->eval, e);
    fit_session_destroy(s);
    model_destroy(m);
    return rc;
}

int main(void)
{
    err_info e = {ERR_OK, ""};
    int rc = make_data(&e);
    EXPECT_MSG(rc == ERR_OK, "test data: %s", e.msg);
    if (rc != ERR_OK)
        return test_finish();
    static result ref, r, again;
    rc = train(1, g_y, &ref, &e);
    EXPECT_MSG(rc == ERR_OK, "1 thread: %s", e.msg);
    for (int t = 2; rc == ERR_OK && t <= 4; t++) {
        int trc = train(t, g_y, &r, &e);
        EXPECT_MSG(trc == ERR_OK, "%d threads: %s", t, e.msg);
        if (trc != ERR_OK)
            continue;
        /* Parameters include the moving statistics: applying their update once per worker
         * instead of once per step would move them far beyond rounding. */
        double err = fit_test_max_rel(r.params, ref.params, ref.n);
        EXPECT_MSG(r.n == ref.n && err <= 1e-5, "%d threads: weights max rel err %.3g", t, err);
        EXPECT(r.iterations == ref.iterations && ref.iterations == 9);
        EXPECT(r.logs.n == ref.logs.n && ref.logs.n == 4); /* loss, accuracy, val_* */
        for (int i = 0; i < ref.logs.n && i < r.logs.n; i++)
            EXPECT_MSG(test_close(r.logs.values[i], ref.logs.values[i], 1e-5, 1e-7),
                       "%d threads: %s %.9g vs %.9g", t, ref.logs.names[i], r.logs.values[i],
                       ref.logs.values[i]);
        err = fit_test_max_rel(r.pred, ref.pred, ROWS * 5);
        EXPECT_MSG(err <= 1e-5, "%d threads: predict max rel err %.3g", t, err);
        for (int i = 0; i < ref.eval.n && i < r.eval.n; i++)
            EXPECT_MSG(test_close(r.eval.values[i], ref.eval.values[i], 1e-5, 1e-7),
                       "%d threads: evaluate %s %.9g vs %.9g", t, ref.eval.names[i],
                       r.eval.values[i], ref.eval.values[i]);
        if (t == 2) {
            int arc = train(2, g_y, &again, &e);
            EXPECT(arc == ERR_OK);
            EXPECT_MSG(arc == ERR_OK && memcmp(again.params, r.params, sizeof(float) * r.n) == 0 &&
                           memcmp(again.pred, r.pred, sizeof r.pred) == 0,
                       "2 threads twice: not the same bits");
        }
    }
    /* One sanity check that the comparison can fail: one thread vs. one thread of another
     * run is exact, a perturbed copy is not within 1e-5. */
    memcpy(r.params, ref.params, sizeof(float) * ref.n);
    r.params[3] += 1e-3f * (fabsf(r.params[3]) + 1.0f);
    EXPECT(fit_test_max_rel(r.params, ref.params, ref.n) > 1e-5);

    /* A label out of range found by one worker: the run stops with ERR_RANGE naming it. */
    for (int t = 1; t <= 3; t += 2) {
        err_info eb = {ERR_OK, ""};
        int brc = train(t, g_ybad, &r, &eb);
        EXPECT_MSG(brc == ERR_RANGE && strstr(eb.msg, "7") != NULL, "%d threads, bad label: %d %s",
                   t, brc, eb.msg);
    }
    data_source_destroy(g_x);
    data_source_destroy(g_y);
    data_source_destroy(g_ybad);
    fit_test_dir_remove(g_dir);
    return test_finish();
}
