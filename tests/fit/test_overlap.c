/* Worker threads under MPI hand the gradient to the reducer during backward (trainer/fit.c,
 * overlap_*): with a recording reducer in place of MPI (fit_comm of a pretend 2-rank job), every
 * step begins once, reports ranges in decreasing order that cover the gradient exactly once and
 * already hold the final sum over the workers (what finish sees), and finishes once. The weights
 * equal the one-worker run's within rounding, and the same thread count gives the same bits. */
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

/* About 103k parameters: several chunks of the overlapped sum, in three layers. */
static const char *MODEL_JSON =
    "{\"class_name\": \"Sequential\", \"config\": {\"name\": \"o\", \"layers\": ["
    "{\"class_name\": \"InputLayer\", \"config\": {\"batch_input_shape\": [null, 300], "
    "\"name\": \"in\"}},"
    "{\"class_name\": \"Dense\", \"config\": {\"name\": \"d0\", \"units\": 200, "
    "\"activation\": \"relu\"}},"
    "{\"class_name\": \"Dense\", \"config\": {\"name\": \"d1\", \"units\": 200, "
    "\"activation\": \"tanh\"}},"
    "{\"class_name\": \"Dense\", \"config\": {\"name\": \"d2\", \"units\": 5, "
    "\"activation\": \"softmax\"}}]}}";

#define ROWS 96
#define XLEN 300
#define MAX_PARAMS 110000
#define MAX_CALLS 64

static char g_dir[256];
static data_source *g_x, *g_y;

/* The recording reducer. */
typedef struct rec {
    const float *grads; /* the gradient buffer the reducer would sum (set after create) */
    size_t n;
    int begun, steps, bad;
    size_t lo[MAX_CALLS], hi[MAX_CALLS];
    int calls;              /* ready calls in this step */
    int multi_steps;        /* steps with more than one ready call */
    float snap[MAX_PARAMS]; /* the buffer as each ready call saw its range */
    char why[256];
} rec;

static void rec_fail(rec *r, const char *msg)
{
    if (r->bad++ == 0)
        snprintf(r->why, sizeof r->why, "step %d: %s", r->steps + 1, msg);
}

static int h_begin(void *ctx, err_info *e)
{
    (void)e;
    rec *r = ctx;
    if (r->begun)
        rec_fail(r, "begin twice");
    r->begun = 1;
    r->calls = 0;
    return ERR_OK;
}

static int h_ready(void *ctx, size_t lo, size_t hi, err_info *e)
{
    (void)e;
    rec *r = ctx;
    if (!r->begun)
        rec_fail(r, "ready before begin");
    if (r->calls >= MAX_CALLS || lo >= hi || hi > r->n) {
        rec_fail(r, "bad range");
        return ERR_OK;
    }
    /* Decreasing and contiguous: each call starts where the previous ended. */
    size_t expect_hi = r->calls == 0 ? r->n : r->lo[r->calls - 1];
    if (hi != expect_hi)
        rec_fail(r, "ranges not contiguous from the end");
    r->lo[r->calls] = lo;
    r->hi[r->calls] = hi;
    r->calls++;
    memcpy(r->snap + lo, r->grads + lo, (hi - lo) * sizeof(float));
    return ERR_OK;
}

static int h_finish(void *ctx, err_info *e)
{
    (void)e;
    rec *r = ctx;
    if (!r->begun)
        rec_fail(r, "finish before begin");
    if (r->calls == 0 || r->lo[r->calls - 1] != 0)
        rec_fail(r, "the ranges do not reach element 0");
    /* What each ready call saw is what the update will use: no range was reported before the
     * workers' sum over it was complete. */
    if (memcmp(r->snap, r->grads, r->n * sizeof(float)) != 0)
        rec_fail(r, "a reported range changed after it was reported");
    r->multi_steps += r->calls > 1;
    r->begun = 0;
    r->steps++;
    return ERR_OK;
}

/* One rank of a pretend 2-rank job: the other rank contributes nothing. */
static int h_sum(void *ctx, double *buf, int64_t n, err_info *e)
{
    (void)ctx, (void)buf, (void)n, (void)e;
    return ERR_OK;
}

static int h_agree(void *ctx, int rc, err_info *e)
{
    (void)ctx, (void)e;
    return rc;
}

static int make_data(err_info *e)
{
    int drc = fit_test_dir(g_dir, sizeof g_dir, "overlap", (int)getpid(), e);
    if (drc != ERR_OK)
        return drc;
    static float x[ROWS * XLEN], y[ROWS];
    rng r;
    rng_seed(&r, 3, 0);
    for (int i = 0; i < ROWS * XLEN; i++)
        x[i] = (float)rng_below(&r, 1000) / 500.0f - 1.0f;
    for (int i = 0; i < ROWS; i++)
        y[i] = (float)rng_below(&r, 5);
    int64_t xs[2] = {ROWS, XLEN}, ys[1] = {ROWS};
    int rc = fit_test_npy(g_dir, "x", 2, xs, x, &g_x, e);
    if (rc == ERR_OK)
        rc = fit_test_npy(g_dir, "y", 1, ys, y, &g_y, e);
    return rc;
}

static int train(int threads, rec *r, float *params, size_t *n, err_info *e)
{
    model *m = NULL;
    fit_session *s = NULL;
    int rc = fit_test_model(MODEL_JSON, 9, &m, e);
    if (rc == ERR_OK) {
        m->train.optim = model_optim_config_default(OPTIM_ADAM);
        m->train.compiled = true;
    }
    fit_data d = fit_test_xy(g_x, g_y);
    fit_config c = fit_config_default();
    c.epochs = 2;
    c.batch = 64; /* this rank's 32 rows of 64, then 16 of 32 */
    c.seed = 4;
    c.threads = threads;
    fit_comm comm;
    memset(&comm, 0, sizeof comm);
    comm.ctx = r;
    comm.rank = 0;
    comm.size = 2;
    comm.grad_begin = h_begin;
    comm.grad_ready = h_ready;
    comm.grad_finish = h_finish;
    comm.sum = h_sum;
    comm.agree = h_agree;
    if (rc == ERR_OK)
        rc = fit_session_create(m, &c, &comm, &s, e);
    if (rc == ERR_OK) {
        CHECK(m->n_trainable <= MAX_PARAMS && m->n_params <= MAX_PARAMS);
        r->grads = fit_session_grads(s);
        r->n = m->n_trainable;
        rc = fit_train(s, &d, NULL, NULL, e);
    }
    if (rc == ERR_OK) {
        *n = m->n_params;
        memcpy(params, m->params, sizeof(float) * m->n_params);
    }
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
    static rec r1, r;
    static float p1[MAX_PARAMS], p[MAX_PARAMS], again[MAX_PARAMS];
    size_t n1 = 0, n = 0;
    rc = train(1, &r1, p1, &n1, &e);
    EXPECT_MSG(rc == ERR_OK, "1 thread: %s", e.msg);
    EXPECT_MSG(r1.bad == 0, "1 thread: %s", r1.why);
    EXPECT(r1.steps == 4);
    for (int t = 2; rc == ERR_OK && t <= 3; t++) {
        memset(&r, 0, sizeof r);
        int trc = train(t, &r, p, &n, &e);
        EXPECT_MSG(trc == ERR_OK, "%d threads: %s", t, e.msg);
        EXPECT_MSG(r.bad == 0, "%d threads: %s", t, r.why);
        EXPECT_MSG(r.steps == 4, "%d threads: %d steps", t, r.steps);
        printf("%d threads: %d of %d steps handed the gradient over in more than one piece\n", t,
               r.multi_steps, r.steps);
        double worst = n == n1 ? fit_test_max_rel(p, p1, n1) : INFINITY;
        EXPECT_MSG(n == n1 && worst <= 1e-5, "%d threads vs 1: weights max rel err %.3g", t, worst);
        memset(&r, 0, sizeof r);
        size_t na = 0;
        trc = train(t, &r, again, &na, &e);
        EXPECT_MSG(trc == ERR_OK && na == n && memcmp(again, p, n * sizeof(float)) == 0,
                   "%d threads twice: not the same bits", t);
    }
    data_source_destroy(g_x);
    data_source_destroy(g_y);
    fit_test_dir_remove(g_dir);
    return test_finish();
}
