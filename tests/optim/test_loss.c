/* Losses and metrics: values against hand-computed Keras formulas, gradients against the
 * analytic formulas and central finite differences, label range errors, names. */
#include "trainer/loss.h"

#include <math.h>
#include <string.h>

#include "kernels/rng.h"
#include "test_util.h"

static model_loss mk(loss_kind k, bool logits)
{
    model_loss l = {0};
    l.kind = k;
    l.from_logits = logits;
    l.delta = 1.0;
    l.label_smoothing = 0.0;
    return l;
}

static double eval(const model_loss *l, const float *p, const float *y, int64_t rows, int64_t n)
{
    double s = -1.0;
    err_info e = {0};
    int rc = loss_compute(l, p, y, rows, n, 1.0, &s, NULL, &e);
    EXPECT_MSG(rc == ERR_OK, "%s", e.msg);
    return s;
}

/* Central differences of sum / denom, with the step actually taken in float32. */
static void fd_check(const char *what, const model_loss *l, float *p, const float *y, int64_t rows,
                     int64_t n, double denom)
{
    enum { MAXN = 256 };
    float d[MAXN];
    double s;
    err_info e = {0};
    int rc = loss_compute(l, p, y, rows, n, denom, &s, d, &e);
    EXPECT_MSG(rc == ERR_OK, "%s: %s", what, e.msg);
    int bad = 0;
    for (int64_t i = 0; i < rows * n; i++) {
        float p0 = p[i];
        float h = 1e-3f * (fabsf(p0) > 1.0f ? fabsf(p0) : 1.0f);
        p[i] = p0 + h;
        double up = eval(l, p, y, rows, n);
        float pu = p[i];
        p[i] = p0 - h;
        double dn = eval(l, p, y, rows, n);
        float pd = p[i];
        p[i] = p0;
        double fd = (up - dn) / ((double)pu - (double)pd) / denom;
        if (!test_close(d[i], fd, 2e-3, 2e-5)) {
            if (bad++ < 5)
                fprintf(stderr, "%s: element %lld: analytic %.8g, finite difference %.8g\n", what,
                        (long long)i, (double)d[i], fd);
        }
    }
    EXPECT_MSG(bad == 0, "%s: %d gradient mismatches", what, bad);
}

static void test_values(void)
{
    const double eps = (double)1e-7f, hi = (double)(1.0f - 1e-7f);
    /* Sparse CCE from probabilities: -log(p[y] / sum p); the second row is unnormalised. */
    {
        model_loss l = mk(LOSS_SPARSE_CCE, false);
        float p[] = {0.1f, 0.2f, 0.7f, 0.2f, 0.2f, 0.4f};
        float y[] = {2, 0};
        double want = -log((double)0.7f / ((double)0.1f + (double)0.2f + (double)0.7f)) -
                      log((double)0.2f / ((double)0.2f + (double)0.2f + (double)0.4f));
        EXPECT(test_close(eval(&l, p, y, 2, 3), want, 1e-6, 0));
        /* Gradient: (1/S - [j == y] / p_y) / denom. */
        float d[6];
        double s;
        EXPECT(loss_compute(&l, p, y, 2, 3, 4.0, &s, d, NULL) == ERR_OK);
        double s0 = (double)0.1f + (double)0.2f + (double)0.7f;
        EXPECT(test_close(d[0], 1.0 / s0 / 4, 1e-6, 0));
        EXPECT(test_close(d[2], (1.0 / s0 - 1.0 / (double)0.7f) / 4, 1e-6, 0));
        double s1 = (double)0.2f + (double)0.2f + (double)0.4f;
        EXPECT(test_close(d[3], (1.0 / s1 - 1.0 / (double)0.2f) / 4, 1e-6, 0));
    }
    /* Clipping: 0 and 1 become eps and 1 - eps (float32), the clipped entries get no gradient. */
    {
        model_loss l = mk(LOSS_SPARSE_CCE, false);
        float p[] = {0.0f, 1.0f, 0.0f};
        float y[] = {0};
        double want = -log(eps / (eps + hi + eps));
        EXPECT(test_close(eval(&l, p, y, 1, 3), want, 1e-6, 0));
        float d[3];
        double s;
        EXPECT(loss_compute(&l, p, y, 1, 3, 1.0, &s, d, NULL) == ERR_OK);
        EXPECT(d[0] == 0.0f && d[1] == 0.0f && d[2] == 0.0f);
        EXPECT(test_close(s, 16.118095, 1e-6, 0)); /* -log(1e-7) ~ 16.118 */
    }
    /* Sparse CCE from logits: logsumexp(z) - z[y], gradient softmax - onehot. */
    {
        model_loss l = mk(LOSS_SPARSE_CCE, true);
        float z[] = {1.0f, 2.0f, 3.0f};
        float y[] = {0};
        double lse = log(exp(1.0) + exp(2.0) + exp(3.0));
        EXPECT(test_close(eval(&l, z, y, 1, 3), lse - 1.0, 1e-7, 0));
        float d[3];
        double s;
        EXPECT(loss_compute(&l, z, y, 1, 3, 1.0, &s, d, NULL) == ERR_OK);
        EXPECT(test_close(d[0], exp(1.0 - lse) - 1.0, 1e-6, 1e-7));
        EXPECT(test_close(d[2], exp(3.0 - lse), 1e-6, 1e-7));
        /* Huge logits stay finite. */
        float zb[] = {1000.0f, -1000.0f, 0.0f};
        EXPECT(test_close(eval(&l, zb, y, 1, 3), 0.0, 0, 1e-9));
        float yb[] = {1};
        EXPECT(test_close(eval(&l, zb, yb, 1, 3), 2000.0, 1e-9, 0));
    }
    /* CCE from probabilities renormalises: p = [1, 2, 1] is [0.25, 0.5, 0.25]. */
    {
        model_loss l = mk(LOSS_CCE, false);
        float p[] = {1.0f, 2.0f, 1.0f, 0.2f, 0.5f, 0.3f};
        float y[] = {0, 1, 0, 0.5f, 0.5f, 0};
        double want = -log(0.5) - 0.5 * log((double)(0.2f / 1.0f)) - 0.5 * log((double)0.5f);
        EXPECT(test_close(eval(&l, p, y, 2, 3), want, 1e-6, 0));
        /* Label smoothing 0.3 over 3 classes: y' = y * 0.7 + 0.1. */
        l.label_smoothing = 0.3;
        float y1[] = {0, 1, 0};
        double w1 = -(0.1 * log(0.25) + 0.8 * log(0.5) + 0.1 * log(0.25));
        EXPECT(test_close(eval(&l, p, y1, 1, 3), w1, 1e-6, 0));
    }
    /* CCE from logits with smoothing: sum y' (lse - z). */
    {
        model_loss l = mk(LOSS_CCE, true);
        l.label_smoothing = 0.2;
        float z[] = {0.5f, -1.0f, 2.0f, 0.0f};
        float y[] = {0, 0, 1, 0};
        double lse = log(exp(0.5) + exp(-1.0) + exp(2.0) + exp(0.0));
        double want = 0.05 * (lse - 0.5) + 0.05 * (lse + 1.0) + 0.85 * (lse - 2.0) + 0.05 * lse;
        EXPECT(test_close(eval(&l, z, y, 1, 4), want, 1e-6, 0));
    }
    /* BCE from probabilities, averaged over the row. */
    {
        model_loss l = mk(LOSS_BCE, false);
        float p[] = {0.9f, 0.2f};
        float y[] = {1, 0};
        double want = 0.5 * (-log((double)0.9f) - log(1.0 - (double)0.2f));
        EXPECT(test_close(eval(&l, p, y, 1, 2), want, 1e-6, 0));
        float d[2];
        double s;
        EXPECT(loss_compute(&l, p, y, 1, 2, 1.0, &s, d, NULL) == ERR_OK);
        EXPECT(test_close(d[0], 0.5 * (-1.0 / (double)0.9f), 1e-6, 0));
        EXPECT(test_close(d[1], 0.5 * (1.0 / (1.0 - (double)0.2f)), 1e-6, 0));
        /* Saturated probabilities clip to eps and 1 - eps with a zero gradient. */
        float ps[] = {1.0f, 1.0f};
        double w2 = 0.5 * (-log(hi) - log(1.0 - hi));
        EXPECT(test_close(eval(&l, ps, y, 1, 2), w2, 1e-6, 0));
        EXPECT(loss_compute(&l, ps, y, 1, 2, 1.0, &s, d, NULL) == ERR_OK);
        EXPECT(d[0] == 0.0f && d[1] == 0.0f);
        /* Smoothing 0.2: y' = y * 0.8 + 0.1. */
        l.label_smoothing = 0.2;
        double w3 = 0.5 * (-(0.9 * log((double)0.9f) + 0.1 * log(1 - (double)0.9f)) -
                           (0.1 * log((double)0.2f) + 0.9 * log(1 - (double)0.2f)));
        EXPECT(test_close(eval(&l, p, y, 1, 2), w3, 1e-6, 0));
    }
    /* BCE from logits: stable softplus form, huge logits finite. */
    {
        model_loss l = mk(LOSS_BCE, true);
        float z[] = {2.0f, -1.0f};
        float y[] = {1, 0};
        double want = 0.5 * (log1p(exp(-2.0)) + log1p(exp(-1.0)));
        EXPECT(test_close(eval(&l, z, y, 1, 2), want, 1e-7, 0));
        float zb[] = {100.0f, -100.0f};
        float yb[] = {0, 0};
        EXPECT(test_close(eval(&l, zb, yb, 1, 2), 50.0, 1e-9, 0));
        float d[2];
        double s;
        EXPECT(loss_compute(&l, z, y, 1, 2, 1.0, &s, d, NULL) == ERR_OK);
        EXPECT(test_close(d[0], 0.5 * (1.0 / (1.0 + exp(-2.0)) - 1.0), 1e-6, 0));
        EXPECT(test_close(d[1], 0.5 * (1.0 / (1.0 + exp(1.0))), 1e-6, 0));
    }
    /* MSE, MAE, Huber averaged over the row; the sum is over rows. */
    {
        float p[] = {1.0f, 2.0f, 3.0f, 0.0f};
        float y[] = {0.0f, 2.0f, 5.0f, 0.5f};
        model_loss l = mk(LOSS_MSE, false);
        EXPECT(test_close(eval(&l, p, y, 2, 2), (1.0 + 0.0) / 2 + (4.0 + 0.25) / 2, 1e-7, 0));
        l = mk(LOSS_MAE, false);
        EXPECT(test_close(eval(&l, p, y, 2, 2), (1.0 + 0.0) / 2 + (2.0 + 0.5) / 2, 1e-7, 0));
        float d[4];
        double s;
        EXPECT(loss_compute(&l, p, y, 2, 2, 2.0, &s, d, NULL) == ERR_OK);
        EXPECT(d[0] == 0.25f && d[1] == 0.0f && d[2] == -0.25f && d[3] == -0.25f);
        l = mk(LOSS_HUBER, false);
        /* delta 1: e = 1 -> 0.5; 0 -> 0; -2 -> 2 - 0.5 = 1.5; -0.5 -> 0.125. */
        EXPECT(test_close(eval(&l, p, y, 2, 2), (0.5 + 0.0) / 2 + (1.5 + 0.125) / 2, 1e-7, 0));
        l.delta = 0.25; /* e = 1 -> 0.25 - 0.03125; -2 -> 0.5 - 0.03125; -0.5 -> 0.125 - 0.03125 */
        EXPECT(test_close(eval(&l, p, y, 2, 2), (0.21875 + 0.0) / 2 + (0.46875 + 0.09375) / 2, 1e-7,
                          0));
        EXPECT(loss_compute(&l, p, y, 2, 2, 1.0, &s, d, NULL) == ERR_OK);
        EXPECT(d[0] == 0.125f && d[1] == 0.0f && d[2] == -0.125f && d[3] == -0.125f);
    }
}

static void fill(rng *r, float *x, int64_t n, double lo, double hi)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)(lo + (hi - lo) * rng_uniform(r));
}

static void test_fd(void)
{
    rng r;
    rng_seed(&r, 42, 1);
    enum { ROWS = 5, N = 7 };
    float p[ROWS * N], y[ROWS * N], ys[ROWS];
    for (int i = 0; i < ROWS; i++)
        ys[i] = (float)rng_below(&r, N);

    model_loss l = mk(LOSS_SPARSE_CCE, true);
    fill(&r, p, ROWS * N, -3, 3);
    fd_check("sparse_cce logits", &l, p, ys, ROWS, N, 8.0);
    l.from_logits = false;
    fill(&r, p, ROWS * N, 0.05, 0.9);
    fd_check("sparse_cce probs", &l, p, ys, ROWS, N, 8.0);

    l = mk(LOSS_CCE, true);
    fill(&r, p, ROWS * N, -3, 3);
    fill(&r, y, ROWS * N, 0, 1); /* unnormalised soft labels: exact gradient */
    fd_check("cce logits", &l, p, y, ROWS, N, 3.0);
    l.label_smoothing = 0.1;
    fd_check("cce logits smoothed", &l, p, y, ROWS, N, 3.0);
    l = mk(LOSS_CCE, false);
    fill(&r, p, ROWS * N, 0.1, 1.0);
    fd_check("cce probs", &l, p, y, ROWS, N, 3.0);
    l.label_smoothing = 0.25;
    fd_check("cce probs smoothed", &l, p, y, ROWS, N, 3.0);

    l = mk(LOSS_BCE, true);
    fill(&r, p, ROWS * N, -4, 4);
    fd_check("bce logits", &l, p, y, ROWS, N, 5.0);
    l.label_smoothing = 0.2;
    fd_check("bce logits smoothed", &l, p, y, ROWS, N, 5.0);
    l = mk(LOSS_BCE, false);
    fill(&r, p, ROWS * N, 0.05, 0.95);
    fd_check("bce probs", &l, p, y, ROWS, N, 5.0);

    l = mk(LOSS_MSE, false);
    fill(&r, p, ROWS * N, -2, 2);
    fill(&r, y, ROWS * N, -2, 2);
    fd_check("mse", &l, p, y, ROWS, N, 5.0);
    /* MAE and Huber have kinks: keep |e| away from 0 and from delta. */
    for (int i = 0; i < ROWS * N; i++) {
        float e = p[i] - y[i];
        if (fabsf(e) < 0.05f)
            p[i] += 0.1f;
    }
    l = mk(LOSS_MAE, false);
    fd_check("mae", &l, p, y, ROWS, N, 5.0);
    l = mk(LOSS_HUBER, false);
    l.delta = 0.7;
    for (int i = 0; i < ROWS * N; i++) {
        float e = p[i] - y[i];
        if (fabsf(fabsf(e) - 0.7f) < 0.05f)
            p[i] += 0.2f;
    }
    fd_check("huber", &l, p, y, ROWS, N, 5.0);

    /* The gradient is of sum / denom: halving denom doubles it (uneven shards). */
    float d1[ROWS * N], d2[ROWS * N];
    double s1, s2;
    l = mk(LOSS_MSE, false);
    EXPECT(loss_compute(&l, p, y, ROWS, N, 10.0, &s1, d1, NULL) == ERR_OK);
    EXPECT(loss_compute(&l, p, y, ROWS, N, 5.0, &s2, d2, NULL) == ERR_OK);
    int ok = s1 == s2;
    for (int i = 0; i < ROWS * N; i++)
        ok &= test_close(d2[i], 2.0 * d1[i], 1e-6, 0);
    EXPECT(ok);
}

static void test_errors(void)
{
    model_loss l = mk(LOSS_SPARSE_CCE, false);
    float p[] = {0.3f, 0.3f, 0.4f, 0.3f, 0.3f, 0.4f};
    float d[6] = {7, 7, 7, 7, 7, 7};
    double s = 123.0;
    err_info e = {0};
    float bad[][2] = {{0, 3}, {0, 1.5f}, {0, -1}, {0, NAN}};
    const char *want[] = {"label 3", "label 1.5", "label -1", "label nan"};
    for (int i = 0; i < 4; i++) {
        memset(&e, 0, sizeof e);
        int rc = loss_compute(&l, p, bad[i], 2, 3, 2.0, &s, d, &e);
        EXPECT_MSG(rc == ERR_RANGE, "case %d rc %d", i, rc);
        EXPECT_MSG(strstr(e.msg, "row 1") && strstr(e.msg, want[i]), "case %d: %s", i, e.msg);
        EXPECT(s == 123.0 && d[0] == 7.0f); /* nothing written */
    }
    l.from_logits = true;
    EXPECT(loss_compute(&l, p, bad[0], 2, 3, 2.0, &s, d, &e) == ERR_RANGE);
    l = mk(LOSS_NONE, false);
    float y[6] = {0};
    EXPECT(loss_compute(&l, p, y, 2, 3, 2.0, &s, d, &e) == ERR_CONFIG);
    l = mk(LOSS_MSE, false);
    EXPECT(loss_compute(&l, p, y, 2, 3, 0.0, &s, d, &e) == ERR_USAGE);
    EXPECT(loss_compute(&l, p, y, 2, 3, 0.0, &s, NULL, &e) == ERR_OK); /* no gradient: fine */
    EXPECT(loss_compute(&l, p, y, 2, 0, 1.0, &s, d, &e) == ERR_USAGE);
    EXPECT(loss_compute(&l, p, y, 0, 3, 1.0, &s, d, &e) == ERR_OK && s == 0.0);
}

static void test_names(void)
{
    struct {
        const char *name;
        loss_kind k;
    } ok[] = {
        {"sparse_categorical_crossentropy", LOSS_SPARSE_CCE},
        {"SparseCategoricalCrossentropy", LOSS_SPARSE_CCE},
        {"categorical_crossentropy", LOSS_CCE},
        {"CategoricalCrossentropy", LOSS_CCE},
        {"binary_crossentropy", LOSS_BCE},
        {"BinaryCrossentropy", LOSS_BCE},
        {"mse", LOSS_MSE},
        {"mean_squared_error", LOSS_MSE},
        {"MeanSquaredError", LOSS_MSE},
        {"mae", LOSS_MAE},
        {"mean_absolute_error", LOSS_MAE},
        {"MeanAbsoluteError", LOSS_MAE},
        {"huber", LOSS_HUBER},
        {"huber_loss", LOSS_HUBER},
        {"Huber", LOSS_HUBER},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        model_loss l;
        memset(&l, 0xff, sizeof l);
        err_info e = {0};
        EXPECT_MSG(loss_from_name(ok[i].name, &l, &e) == ERR_OK, "%s", ok[i].name);
        EXPECT_MSG(l.kind == ok[i].k && !l.from_logits && l.delta == 1.0 &&
                       l.label_smoothing == 0.0,
                   "%s", ok[i].name);
    }
    model_loss l = mk(LOSS_MSE, false);
    err_info e = {0};
    EXPECT(loss_from_name("kl_divergence", &l, &e) == ERR_UNSUPPORTED);
    EXPECT(strstr(e.msg, "kl_divergence") != NULL && l.kind == LOSS_MSE);

    struct {
        const char *name;
        metric_kind k;
    } mk_ok[] = {
        {"accuracy", METRIC_ACCURACY},
        {"acc", METRIC_ACCURACY},
        {"sparse_categorical_accuracy", METRIC_SPARSE_CAT_ACC},
        {"SparseCategoricalAccuracy", METRIC_SPARSE_CAT_ACC},
        {"categorical_accuracy", METRIC_CAT_ACC},
        {"binary_accuracy", METRIC_BIN_ACC},
        {"BinaryAccuracy", METRIC_BIN_ACC},
        {"mse", METRIC_MSE},
        {"mean_squared_error", METRIC_MSE},
        {"mae", METRIC_MAE},
        {"MeanAbsoluteError", METRIC_MAE},
    };
    for (size_t i = 0; i < sizeof mk_ok / sizeof mk_ok[0]; i++) {
        metric_kind k = METRIC_COUNT;
        EXPECT_MSG(metric_from_name(mk_ok[i].name, &k, &e) == ERR_OK && k == mk_ok[i].k, "%s",
                   mk_ok[i].name);
    }
    metric_kind k = METRIC_MSE;
    EXPECT(metric_from_name("auc", &k, &e) == ERR_UNSUPPORTED && k == METRIC_MSE);
    EXPECT(strstr(e.msg, "auc") != NULL);
    EXPECT(strcmp(metric_display_name(METRIC_ACCURACY), "accuracy") == 0);
    EXPECT(strcmp(metric_display_name(METRIC_SPARSE_CAT_ACC), "sparse_categorical_accuracy") == 0);
    EXPECT(strcmp(metric_display_name(METRIC_CAT_ACC), "categorical_accuracy") == 0);
    EXPECT(strcmp(metric_display_name(METRIC_BIN_ACC), "binary_accuracy") == 0);
    EXPECT(strcmp(metric_display_name(METRIC_MSE), "mse") == 0);
    EXPECT(strcmp(metric_display_name(METRIC_MAE), "mae") == 0);
}

static void test_metrics(void)
{
    model_loss sp = mk(LOSS_SPARSE_CCE, false), cc = mk(LOSS_CCE, false);
    model_loss bc = mk(LOSS_BCE, false);
    EXPECT(metric_resolve(METRIC_ACCURACY, &sp, 10) == METRIC_SPARSE_CAT_ACC);
    EXPECT(metric_resolve(METRIC_ACCURACY, &cc, 10) == METRIC_CAT_ACC);
    EXPECT(metric_resolve(METRIC_ACCURACY, &bc, 1) == METRIC_BIN_ACC);
    EXPECT(metric_resolve(METRIC_ACCURACY, &sp, 1) == METRIC_BIN_ACC); /* Keras 3: shape first */
    EXPECT(metric_resolve(METRIC_ACCURACY, &bc, 4) == METRIC_CAT_ACC); /* Keras 3 multi-label */
    EXPECT(metric_resolve(METRIC_ACCURACY, NULL, 3) == METRIC_CAT_ACC);
    EXPECT(metric_resolve(METRIC_MSE, &sp, 10) == METRIC_MSE);

    float p[] = {0.1f, 0.7f, 0.2f, 0.5f, 0.5f, 0.0f, 0.3f, 0.3f, 0.4f};
    float ys[] = {1, 1, 2};
    double s = 0, c = 0;
    metric_accumulate(METRIC_SPARSE_CAT_ACC, p, ys, 3, 3, &s, &c);
    /* Row 2 ties 0.5/0.5: the first maximum (0) wins, so label 1 misses. */
    EXPECT(s == 2.0 && c == 3.0);
    float yc[] = {0, 1, 0, 1, 0, 0, 0, 0, 1};
    metric_accumulate(METRIC_CAT_ACC, p, yc, 3, 3, &s, &c);
    EXPECT(s == 5.0 && c == 6.0);
    float pb[] = {0.6f, 0.5f, 0.2f, 0.9f};
    float yb[] = {1, 1, 0, 0};
    s = c = 0;
    metric_accumulate(METRIC_BIN_ACC, pb, yb, 2, 2, &s, &c); /* 0.5 is not > 0.5 */
    EXPECT(s == 0.5 + 0.5 && c == 2.0);
    s = c = 0;
    metric_accumulate(METRIC_MSE, pb, yb, 2, 2, &s, &c);
    double w = ((0.4 * 0.4 + 0.5 * 0.5) + (0.2 * 0.2 + 0.9 * 0.9)) / 2;
    EXPECT(test_close(s, w, 1e-6, 0) && c == 2.0);
    s = c = 0;
    metric_accumulate(METRIC_MAE, pb, yb, 2, 2, &s, &c);
    EXPECT(test_close(s, (0.9 + 1.1) / 2, 1e-6, 0) && c == 2.0);
}

int main(void)
{
    test_values();
    test_fd();
    test_errors();
    test_names();
    test_metrics();
    return test_finish();
}
