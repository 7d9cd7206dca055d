/* Activation kernels (kern_act.h) against their double reference twins on awkward shapes
 * (1, 7, 33 rows and columns), fused bias variants against the unfused calls, the
 * parametrised layer activations against direct formulas, and the name table.
 *
 * Tolerances: forward |opt - ref| <= 1e-6 + 1e-5 |ref| (float evaluation of the same formula,
 * a few ulps). Backward: the optimised code takes the derivative from the rounded float output
 * y (as TensorFlow does), so the absolute error is ~ |dy| * ulp(y) * |d act'/dy|:
 * |opt - ref| <= 2e-6 + 1e-4 |ref| with |dy| <= 1. Exponential (unbounded) uses rtol only. */

#include "kernels/kern_act.h"
#include "kernels/rng.h"
#include "test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static float *falloc(int64_t n)
{
    float *p = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    CHECK(p != NULL);
    return p;
}

/* Inputs in [-6, 6] plus the kinks and tails every kernel must get right. */
static void fill_x(rng *r, float *x, int64_t n)
{
    static const float special[] = {0.0f, -0.0f,  1e-8f, -1e-8f, 3.0f,  -3.0f, 2.5f,  -2.5f,
                                    6.0f, -20.0f, 20.0f, 0.5f,   -0.5f, 88.0f, -88.0f};
    for (int64_t i = 0; i < n; i++) {
        if (i % 5 == 4)
            x[i] = special[(i / 5) % (sizeof special / sizeof special[0])];
        else
            x[i] = 12.0f * rng_uniform_f(r) - 6.0f;
    }
}

static int check_close(const char *what, act_kind k, const float *a, const float *b, int64_t n,
                       double rtol, double atol, const float *x)
{
    int bad = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!test_close(a[i], b[i], rtol, atol)) {
            if (bad < 3)
                fprintf(stderr, "%s %s at %lld (x = %.9g): %.9g vs ref %.9g\n", what,
                        kern_act_name(k), (long long)i, x != NULL ? (double)x[i] : 0.0,
                        (double)a[i], (double)b[i]);
            bad++;
        }
    }
    return bad;
}

static void test_kind(rng *r, act_kind k, int64_t rows, int64_t cols)
{
    int64_t n = rows * cols;
    float *x = falloc(n), *y = falloc(n), *yref = falloc(n), *dy = falloc(n), *dx = falloc(n),
          *dxref = falloc(n), *b = falloc(cols), *z = falloc(n), *y2 = falloc(n),
          *db = falloc(cols);
    fill_x(r, x, n);
    if (k == ACT_EXPONENTIAL) {
        for (int64_t i = 0; i < n; i++)
            x[i] = fminf(fmaxf(x[i], -20.0f), 20.0f);
    }
    for (int64_t i = 0; i < n; i++)
        dy[i] = 2.0f * rng_uniform_f(r) - 1.0f;
    double atol_f = k == ACT_EXPONENTIAL ? 0.0 : 1e-6;
    double atol_b = k == ACT_EXPONENTIAL ? 0.0 : 2e-6;

    kern_act_forward(k, rows, cols, x, y);
    kern_ref_act_forward(k, rows, cols, x, yref);
    EXPECT_MSG(check_close("forward", k, y, yref, n, 1e-5, atol_f, x) == 0, "%s %lldx%lld",
               kern_act_name(k), (long long)rows, (long long)cols);

    kern_act_backward(k, rows, cols, x, y, dy, dx);
    kern_ref_act_backward(k, rows, cols, x, dy, dxref);
    EXPECT_MSG(check_close("backward", k, dx, dxref, n, 1e-4, atol_b, x) == 0, "%s %lldx%lld",
               kern_act_name(k), (long long)rows, (long long)cols);

    /* In place (x == y, dx == dy) gives the same results. */
    memcpy(y2, x, sizeof(float) * (size_t)n);
    kern_act_forward(k, rows, cols, y2, y2);
    EXPECT(memcmp(y2, y, sizeof(float) * (size_t)n) == 0);
    memcpy(y2, dy, sizeof(float) * (size_t)n);
    kern_act_backward(k, rows, cols, x, y, y2, y2);
    EXPECT(memcmp(y2, dx, sizeof(float) * (size_t)n) == 0);

    /* Without x (only the kinds that do not need it). */
    if (!kern_act_backward_needs_x(k)) {
        kern_act_backward(k, rows, cols, NULL, y, dy, y2);
        EXPECT(memcmp(y2, dx, sizeof(float) * (size_t)n) == 0);
    }

    /* Fused bias + activation == add bias, then activation; z is the pre-activation. */
    for (int64_t j = 0; j < cols; j++)
        b[j] = rng_uniform_f(r) - 0.5f;
    float *xb = falloc(n), *yb = falloc(n);
    for (int64_t i = 0; i < n; i++)
        xb[i] = x[i] + b[i % cols];
    kern_act_forward(k, rows, cols, xb, yb);
    memcpy(y2, x, sizeof(float) * (size_t)n);
    kern_act_bias_forward(k, rows, cols, b, y2, z);
    EXPECT(memcmp(y2, yb, sizeof(float) * (size_t)n) == 0);
    EXPECT(memcmp(z, xb, sizeof(float) * (size_t)n) == 0);

    /* Fused backward: dz in place and bias gradient (overwrite, then accumulate). */
    float *dz = falloc(n);
    kern_act_backward(k, rows, cols, xb, yb, dy, dz);
    memcpy(y2, dy, sizeof(float) * (size_t)n);
    kern_act_bias_backward(k, rows, cols, z, yb, y2, db, false);
    EXPECT(memcmp(y2, dz, sizeof(float) * (size_t)n) == 0);
    int bad = 0;
    for (int64_t j = 0; j < cols; j++) {
        double s = 0;
        for (int64_t rr = 0; rr < rows; rr++)
            s += dz[rr * cols + j];
        bad += !test_close(db[j], s, 1e-5, 1e-5);
    }
    EXPECT_MSG(bad == 0, "bias gradient %s", kern_act_name(k));
    memcpy(y2, dy, sizeof(float) * (size_t)n);
    kern_act_bias_backward(k, rows, cols, z, yb, y2, db, true);
    bad = 0;
    for (int64_t j = 0; j < cols; j++) {
        double s = 0;
        for (int64_t rr = 0; rr < rows; rr++)
            s += dz[rr * cols + j];
        bad += !test_close(db[j], 2 * s, 1e-5, 1e-5);
    }
    EXPECT_MSG(bad == 0, "accumulated bias gradient %s", kern_act_name(k));

    free(xb), free(yb), free(dz);
    free(x), free(y), free(yref), free(dy), free(dx), free(dxref), free(b), free(z), free(y2),
        free(db);
}

/* Known values pin the Keras constants (a shared mistake in both twins would pass above). */
static void test_known_values(void)
{
    struct {
        act_kind k;
        float x, y;
    } cases[] = {
        {ACT_SELU, 1.0f, 1.05070098f},
        {ACT_SELU, -1.0f, -1.11133074f},
        {ACT_GELU, 1.0f, 0.841344746f},
        {ACT_HARD_SIGMOID, 1.0f, 0.666666667f},
        {ACT_HARD_SIGMOID, 3.5f, 1.0f},
        {ACT_HARD_SIGMOID_K2, 1.0f, 0.7f},
        {ACT_HARD_SIGMOID_K2, -2.6f, 0.0f},
        {ACT_LEAKY_RELU, -1.0f, -0.2f},
        {ACT_RELU6, 7.0f, 6.0f},
        {ACT_SWISH, 1.0f, 0.731058579f},
        {ACT_SOFTPLUS, 0.0f, 0.693147181f},
        {ACT_SOFTSIGN, 1.0f, 0.5f},
        {ACT_ELU, -1.0f, -0.632120559f},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        float y;
        kern_act_forward(cases[i].k, 1, 1, &cases[i].x, &y);
        EXPECT_MSG(test_close(y, cases[i].y, 1e-6, 1e-7), "%s(%g) = %.9g, expected %.9g",
                   kern_act_name(cases[i].k), (double)cases[i].x, (double)y, (double)cases[i].y);
    }
    /* Softmax of a row of 33 equal values and of a huge spread. */
    float x[33], y[33];
    for (int i = 0; i < 33; i++)
        x[i] = 1000.0f;
    kern_act_forward(ACT_SOFTMAX, 1, 33, x, y);
    EXPECT(test_close(y[7], 1.0 / 33, 1e-6, 0));
    x[3] = 2000.0f;
    kern_act_forward(ACT_SOFTMAX, 1, 33, x, y);
    EXPECT(y[3] == 1.0f && y[0] == 0.0f);
}

static void test_names(void)
{
    for (int k = 0; k < ACT_COUNT; k++) {
        act_kind back = ACT_COUNT;
        err_info e = {0};
        EXPECT(kern_act_from_name(kern_act_name((act_kind)k), &back, &e) == ERR_OK);
        if (k == ACT_HARD_SIGMOID_K2)
            EXPECT(back == ACT_HARD_SIGMOID);
        else
            EXPECT_MSG(back == (act_kind)k, "%s", kern_act_name((act_kind)k));
    }
    act_kind k = ACT_COUNT;
    EXPECT(kern_act_from_name("silu", &k, NULL) == ERR_OK && k == ACT_SWISH);
    err_info e = {0};
    EXPECT(kern_act_from_name("mish_ish", &k, &e) == ERR_CONFIG);
    EXPECT(strstr(e.msg, "\"mish_ish\"") != NULL);
    EXPECT(k == ACT_SWISH); /* untouched on failure */
}

static double ref_relu_ex(const kern_relu_params *p, double x)
{
    /* Keras ReLU layer, written from the Keras source's sequence of operations. */
    double a = p->threshold != 0 ? (x > p->threshold ? x : 0) : fmax(x, 0);
    if (p->max_value >= 0)
        a = fmin(fmax(a, 0), p->max_value);
    if (p->negative_slope != 0)
        a -= p->negative_slope * fmax(p->threshold - x, 0);
    return a;
}

static void test_param_layers(rng *r)
{
    enum { N = 333 };
    float x[N], y[N], dy[N], dx[N];
    fill_x(r, x, N);
    for (int i = 0; i < N; i++)
        dy[i] = 2.0f * rng_uniform_f(r) - 1.0f;
    const kern_relu_params ps[] = {{-1, 0, 0},      {6, 0, 0},      {-1, 0.1f, 0},
                                   {4, 0.3f, 0.5f}, {-1, 0, -1.5f}, {2, 0, -1}};
    for (size_t c = 0; c < sizeof ps / sizeof ps[0]; c++) {
        kern_relu_ex_forward(&ps[c], N, x, y);
        kern_relu_ex_backward(&ps[c], N, x, dy, dx);
        int bad = 0, badg = 0;
        for (int i = 0; i < N; i++) {
            bad += !test_close(y[i], ref_relu_ex(&ps[c], x[i]), 1e-6, 1e-7);
            /* Central difference away from kinks (h = 1e-3 in double). */
            double h = 1e-3, xv = x[i];
            bool kink = fabs(xv) < 2 * h || fabs(xv - ps[c].threshold) < 2 * h ||
                        fabs(xv - ps[c].max_value) < 2 * h;
            if (kink)
                continue;
            double g = (ref_relu_ex(&ps[c], xv + h) - ref_relu_ex(&ps[c], xv - h)) / (2 * h);
            badg += !test_close(dx[i], dy[i] * g, 1e-4, 1e-6);
        }
        EXPECT_MSG(bad == 0 && badg == 0, "relu params %zu: %d forward, %d backward mismatches", c,
                   bad, badg);
    }
    const float alphas[] = {1.0f, 0.3f, 2.5f};
    for (size_t c = 0; c < 3; c++) {
        float a = alphas[c];
        int bad = 0;
        kern_elu_forward(a, N, x, y);
        kern_elu_backward(a, N, x, dy, dx);
        for (int i = 0; i < N; i++) {
            double xv = x[i];
            double ye = xv > 0 ? xv : a * (exp(xv) - 1), ge = xv > 0 ? 1 : a * exp(xv);
            bad += !test_close(y[i], ye, 1e-5, 1e-6) + !test_close(dx[i], dy[i] * ge, 1e-5, 1e-6);
        }
        kern_leaky_relu_forward(a, N, x, y);
        kern_leaky_relu_backward(a, N, x, dy, dx);
        for (int i = 0; i < N; i++) {
            double xv = x[i];
            bad += !test_close(y[i], xv >= 0 ? xv : a * xv, 1e-6, 0) +
                   !test_close(dx[i], xv > 0 ? dy[i] : a * dy[i], 1e-6, 0);
        }
        EXPECT_MSG(bad == 0, "elu/leaky alpha %g: %d mismatches", (double)a, bad);
    }
}

/* Softmax over a middle axis equals row softmax of the transposed data. */
static void test_softmax_axis(rng *r)
{
    const int64_t outer = 3, len = 7, inner = 5, n = outer * len * inner;
    float *x = falloc(n), *y = falloc(n), *dy = falloc(n), *dx = falloc(n);
    float *xt = falloc(n), *yt = falloc(n), *dyt = falloc(n), *dxt = falloc(n);
    fill_x(r, x, n);
    for (int64_t i = 0; i < n; i++)
        dy[i] = rng_uniform_f(r) - 0.5f;
    for (int64_t o = 0; o < outer; o++)
        for (int64_t j = 0; j < len; j++)
            for (int64_t i = 0; i < inner; i++) {
                xt[(o * inner + i) * len + j] = x[(o * len + j) * inner + i];
                dyt[(o * inner + i) * len + j] = dy[(o * len + j) * inner + i];
            }
    kern_softmax_forward(outer, len, inner, x, y);
    kern_softmax_backward(outer, len, inner, y, dy, dx);
    kern_ref_act_forward(ACT_SOFTMAX, outer * inner, len, xt, yt);
    kern_ref_act_backward(ACT_SOFTMAX, outer * inner, len, xt, dyt, dxt);
    int bad = 0;
    for (int64_t o = 0; o < outer; o++)
        for (int64_t j = 0; j < len; j++)
            for (int64_t i = 0; i < inner; i++) {
                int64_t a = (o * len + j) * inner + i, b = (o * inner + i) * len + j;
                bad +=
                    !test_close(y[a], yt[b], 1e-5, 1e-7) + !test_close(dx[a], dxt[b], 1e-4, 1e-6);
            }
    EXPECT_MSG(bad == 0, "softmax over a middle axis: %d mismatches", bad);
    free(x), free(y), free(dy), free(dx), free(xt), free(yt), free(dyt), free(dxt);
}

int main(void)
{
    rng r;
    rng_seed(&r, 1234, 0);
    const int64_t shapes[][2] = {{1, 1}, {1, 7}, {7, 33}, {33, 7}, {33, 1}};
    for (int k = 0; k < ACT_COUNT; k++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            test_kind(&r, (act_kind)k, shapes[s][0], shapes[s][1]);
    test_known_values();
    test_names();
    test_param_layers(&r);
    test_softmax_axis(&r);
    return test_finish();
}
