/* Initializers: distribution statistics and limits on large tensors, Keras fan rules,
 * orthogonality, identity, LSTM forget-gate bias, determinism, error paths. Models are built by
 * hand (the weights and params arrays are the test's own). */
#include "trainer/init.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

enum { MAX_L = 4, MAX_W = 12 };

typedef struct hand {
    model m;
    model_layer layers[MAX_L];
    model_weight weights[MAX_W];
    float *params;
} hand;

static void hand_begin(hand *h)
{
    memset(h, 0, sizeof *h);
    strcpy(h->m.name, "hand");
    h->m.layers = h->layers;
    h->m.weights = h->weights;
}

static int hand_layer(hand *h, layer_kind kind, const char *name)
{
    int i = h->m.n_layers++;
    h->layers[i].kind = kind;
    strcpy(h->layers[i].name, name);
    h->layers[i].trainable = true;
    return i;
}

static int hand_weight(hand *h, int layer, const char *name, int rank, const int64_t *shape)
{
    CHECK(h->m.n_weights < MAX_W);
    int w = h->m.n_weights++;
    model_weight *wt = &h->weights[w];
    /* Test names are short; truncation would only shorten the label. */
    char full[256];
    int len = snprintf(full, sizeof full, "%.100s/%.100s:0", h->layers[layer].name, name);
    CHECK(len > 0 && (size_t)len < sizeof wt->name);
    memcpy(wt->name, full, (size_t)len + 1);
    wt->layer = layer;
    wt->trainable = true;
    wt->rank = rank;
    size_t n = 1;
    for (int d = 0; d < rank; d++) {
        wt->shape[d] = shape[d];
        n *= (size_t)shape[d];
    }
    wt->offset = h->m.n_params;
    wt->count = n;
    h->m.n_params += n;
    return w;
}

static void hand_build(hand *h)
{
    h->params = calloc(h->m.n_params, sizeof(float));
    h->m.params = h->params;
    h->m.n_trainable = h->m.n_params;
    h->m.built = true;
}

static void hand_end(hand *h)
{
    free(h->params);
}

static model_init vs(double scale, init_mode mode, init_dist dist)
{
    model_init in = {0};
    in.kind = INIT_VARIANCE_SCALING;
    in.a = scale;
    in.mode = mode;
    in.dist = dist;
    return in;
}

static model_init simple(init_kind k, double a, double b)
{
    model_init in = {0};
    in.kind = k;
    in.a = a;
    in.b = b;
    return in;
}

typedef struct stats {
    double mean, sd, min, max;
} stats;

static stats stats_of(const float *x, size_t n)
{
    stats s = {0, 0, INFINITY, -INFINITY};
    double sum = 0, sq = 0;
    for (size_t i = 0; i < n; i++) {
        sum += x[i];
        sq += (double)x[i] * x[i];
        s.min = x[i] < s.min ? x[i] : s.min;
        s.max = x[i] > s.max ? x[i] : s.max;
    }
    s.mean = sum / (double)n;
    s.sd = sqrt(sq / (double)n - s.mean * s.mean);
    return s;
}

/* Fills one tensor through init_fill and checks mean, std and limits. */
static void check_dist(const char *what, const model_init *in, int rank, const int64_t *shape,
                       double mean, double sd, double lo, double hi)
{
    size_t n = 1;
    for (int d = 0; d < rank; d++)
        n *= (size_t)shape[d];
    float *x = malloc(n * sizeof *x);
    rng r;
    rng_seed(&r, 7, 3);
    err_info e = {0};
    int rc = init_fill(in, rank, shape, x, &r, what, &e);
    EXPECT_MSG(rc == ERR_OK, "%s: %s", what, e.msg);
    stats s = stats_of(x, n);
    double se = sd / sqrt((double)n);
    EXPECT_MSG(fabs(s.mean - mean) <= 5 * se + 1e-7, "%s: mean %g, expected %g", what, s.mean,
               mean);
    EXPECT_MSG(test_close(s.sd, sd, 0.02, 1e-9), "%s: std %g, expected %g", what, s.sd, sd);
    EXPECT_MSG(s.min >= lo && s.max <= hi, "%s: range [%g, %g], expected within [%g, %g]", what,
               s.min, s.max, lo, hi);
    /* The limits are reached (nearly) for bounded distributions. */
    if (isfinite(lo))
        EXPECT_MSG(s.min <= lo + 0.02 * (hi - lo) && s.max >= hi - 0.02 * (hi - lo),
                   "%s: range [%g, %g] does not fill [%g, %g]", what, s.min, s.max, lo, hi);
    free(x);
}

static void test_distributions(void)
{
    const double T = 0.87962566103423978;
    /* glorot_uniform on a Dense kernel [400, 600]: limit sqrt(6 / (in + out)). */
    int64_t dense[] = {400, 600};
    model_init in = vs(1.0, INIT_FAN_AVG, INIT_DIST_UNIFORM);
    double lim = sqrt(6.0 / 1000.0);
    check_dist("glorot_uniform", &in, 2, dense, 0, lim / sqrt(3.0), -lim, lim);
    /* he_normal on a Conv2D kernel [3, 3, 64, 128]: fan_in = 9 * 64, truncated at 2 stddev of
     * the widened normal, final std sqrt(2 / fan_in). */
    int64_t conv[] = {3, 3, 64, 128};
    in = vs(2.0, INIT_FAN_IN, INIT_DIST_TRUNCATED_NORMAL);
    double sd = sqrt(2.0 / 576.0);
    check_dist("he_normal", &in, 4, conv, 0, sd, -2 * sd / T, 2 * sd / T);
    /* fan_out of a conv kernel: 9 * 128, untruncated normal with scale 3. */
    in = vs(3.0, INIT_FAN_OUT, INIT_DIST_UNTRUNCATED_NORMAL);
    sd = sqrt(3.0 / 1152.0);
    check_dist("vs fan_out untruncated", &in, 4, conv, 0, sd, -INFINITY, INFINITY);
    /* lecun_uniform on a Conv1D kernel [5, 32, 64]: fan_in 160. */
    int64_t c1[] = {5, 32, 1500};
    in = vs(1.0, INIT_FAN_IN, INIT_DIST_UNIFORM);
    lim = sqrt(3.0 / 160.0);
    check_dist("lecun_uniform", &in, 3, c1, 0, lim / sqrt(3.0), -lim, lim);
    /* Bias-like rank 1: fan_in = fan_out = n. */
    int64_t b1[] = {200000};
    in = vs(1.0, INIT_FAN_AVG, INIT_DIST_UNIFORM);
    lim = sqrt(3.0 / 200000.0);
    check_dist("vs rank 1", &in, 1, b1, 0, lim / sqrt(3.0), -lim, lim);

    in = simple(INIT_RANDOM_UNIFORM, -0.05, 0.05);
    check_dist("random_uniform", &in, 2, dense, 0, 0.1 / sqrt(12.0), -0.05, 0.05);
    in = simple(INIT_RANDOM_UNIFORM, 2.0, 5.0);
    check_dist("random_uniform shifted", &in, 2, dense, 3.5, 3.0 / sqrt(12.0), 2.0, 5.0);
    in = simple(INIT_RANDOM_NORMAL, 1.0, 0.5);
    check_dist("random_normal", &in, 2, dense, 1.0, 0.5, -INFINITY, INFINITY);
    /* TruncatedNormal(mean, stddev): values within 2 stddev, std shrinks by T. */
    in = simple(INIT_TRUNCATED_NORMAL, -1.0, 0.2);
    check_dist("truncated_normal", &in, 2, dense, -1.0, 0.2 * T, -1.4, -0.6);

    /* Constants. */
    float x[6];
    rng r;
    rng_seed(&r, 1, 1);
    int64_t s6[] = {2, 3};
    in = simple(INIT_CONSTANT, 0.25, 0);
    EXPECT(init_fill(&in, 2, s6, x, &r, "c", NULL) == ERR_OK && x[0] == 0.25f && x[5] == 0.25f);
    in = simple(INIT_ONES, 0, 0);
    EXPECT(init_fill(&in, 2, s6, x, &r, "c", NULL) == ERR_OK && x[0] == 1.0f && x[5] == 1.0f);
    in = simple(INIT_ZEROS, 0, 0);
    EXPECT(init_fill(&in, 2, s6, x, &r, "c", NULL) == ERR_OK && x[0] == 0.0f && x[5] == 0.0f);
    /* Identity [2, 3] with gain 2. */
    in = simple(INIT_IDENTITY, 2.0, 0);
    EXPECT(init_fill(&in, 2, s6, x, &r, "c", NULL) == ERR_OK);
    float want[] = {2, 0, 0, 0, 2, 0};
    EXPECT(memcmp(x, want, sizeof want) == 0);

    /* Fans. */
    double fi, fo;
    init_fans(0, NULL, &fi, &fo);
    EXPECT(fi == 1 && fo == 1);
    init_fans(1, b1, &fi, &fo);
    EXPECT(fi == 200000 && fo == 200000);
    init_fans(4, conv, &fi, &fo);
    EXPECT(fi == 576 && fo == 1152);
}

/* Max |G - gain^2 I| of the Gram matrix of rows (by_rows) or columns. */
static double gram_err(const float *x, int64_t rows, int64_t cols, bool by_rows, double gain)
{
    int64_t n = by_rows ? rows : cols, len = by_rows ? cols : rows;
    double worst = 0;
    for (int64_t a = 0; a < n; a++) {
        for (int64_t b = a; b < n; b++) {
            double s = 0;
            for (int64_t k = 0; k < len; k++) {
                double xa = by_rows ? x[a * cols + k] : x[k * cols + a];
                double xb = by_rows ? x[b * cols + k] : x[k * cols + b];
                s += xa * xb;
            }
            double err = fabs(s - (a == b ? gain * gain : 0.0));
            worst = err > worst ? err : worst;
        }
    }
    return worst;
}

static void test_orthogonal(void)
{
    struct {
        int rank;
        int64_t shape[4];
        int64_t rows, cols;
    } cases[] = {
        {2, {300, 50}, 300, 50},    /* tall: orthonormal columns */
        {2, {64, 256}, 64, 256},    /* wide (an LSTM recurrent kernel): orthonormal rows */
        {2, {33, 33}, 33, 33},      /* square: both */
        {4, {3, 3, 8, 16}, 72, 16}, /* conv: rows = prod of all but the last */
        {2, {1, 7}, 1, 7},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int64_t n = cases[c].rows * cases[c].cols;
        float *x = malloc((size_t)n * sizeof *x);
        model_init in = simple(INIT_ORTHOGONAL, 1.5, 0);
        rng r;
        rng_seed(&r, 11, c);
        err_info e = {0};
        EXPECT_MSG(init_fill(&in, cases[c].rank, cases[c].shape, x, &r, "q", &e) == ERR_OK, "%s",
                   e.msg);
        bool by_rows = cases[c].rows < cases[c].cols;
        double err = gram_err(x, cases[c].rows, cases[c].cols, by_rows, 1.5);
        EXPECT_MSG(err < 1e-5, "orthogonal case %zu: Gram error %g", c, err);
        if (cases[c].rows == cases[c].cols) {
            err = gram_err(x, cases[c].rows, cases[c].cols, true, 1.5);
            EXPECT_MSG(err < 1e-5, "orthogonal square rows: Gram error %g", err);
        }
        /* Not a trivial permutation: entries spread out. */
        stats s = stats_of(x, (size_t)n);
        EXPECT(s.max < 1.5 * 0.999 || n <= 7);
        free(x);
    }
    /* Sign fixing makes the result a function of the normal matrix alone: the same stream gives
     * the same matrix. */
    int64_t sh[] = {20, 10};
    float a[200], b[200];
    model_init in = simple(INIT_ORTHOGONAL, 1.0, 0);
    rng r1, r2;
    rng_seed(&r1, 5, 5);
    rng_seed(&r2, 5, 5);
    EXPECT(init_fill(&in, 2, sh, a, &r1, "q", NULL) == ERR_OK);
    EXPECT(init_fill(&in, 2, sh, b, &r2, "q", NULL) == ERR_OK);
    EXPECT(memcmp(a, b, sizeof a) == 0);
}

/* A small model: Dense (kernel, bias), LSTM (kernel, recurrent_kernel, bias), BatchNorm. */
static void build_model(hand *h, int units)
{
    hand_begin(h);
    int d = hand_layer(h, LAYER_DENSE, "dense");
    h->layers[d].cfg.kernel_init = vs(1.0, INIT_FAN_AVG, INIT_DIST_UNIFORM);
    h->layers[d].cfg.bias_init = simple(INIT_CONSTANT, 0.5, 0);
    int l = hand_layer(h, LAYER_LSTM, "lstm");
    h->layers[l].cfg.units = units;
    h->layers[l].cfg.unit_forget_bias = true;
    h->layers[l].cfg.kernel_init = vs(1.0, INIT_FAN_AVG, INIT_DIST_UNIFORM);
    h->layers[l].cfg.recurrent_init = simple(INIT_ORTHOGONAL, 1.0, 0);
    h->layers[l].cfg.bias_init = simple(INIT_ZEROS, 0, 0);
    int b = hand_layer(h, LAYER_BATCHNORM, "bn");
    h->layers[b].cfg.gamma_init = simple(INIT_ONES, 0, 0);
    h->layers[b].cfg.beta_init = simple(INIT_ZEROS, 0, 0);
    h->layers[b].cfg.moving_mean_init = simple(INIT_CONSTANT, -3, 0);
    h->layers[b].cfg.moving_variance_init = simple(INIT_ONES, 0, 0);
    int64_t k[] = {10, 20}, bias[] = {20};
    hand_weight(h, d, "kernel", 2, k);
    hand_weight(h, d, "bias", 1, bias);
    int64_t lk[] = {20, 4 * units}, lr[] = {units, 4 * units}, lb[] = {4 * units};
    hand_weight(h, l, "lstm_cell/kernel", 2, lk);
    hand_weight(h, l, "lstm_cell/recurrent_kernel", 2, lr);
    hand_weight(h, l, "lstm_cell/bias", 1, lb);
    int64_t g[] = {units};
    hand_weight(h, b, "gamma", 1, g);
    hand_weight(h, b, "beta", 1, g);
    int w = hand_weight(h, b, "moving_mean", 1, g);
    h->weights[w].trainable = false;
    w = hand_weight(h, b, "moving_variance", 1, g);
    h->weights[w].trainable = false;
    hand_build(h);
}

static void test_model(void)
{
    const int U = 8;
    hand h1, h2, h3;
    build_model(&h1, U);
    build_model(&h2, U);
    build_model(&h3, U);
    err_info e = {0};
    EXPECT_MSG(init_model(&h1.m, 123, &e) == ERR_OK, "%s", e.msg);
    EXPECT(init_model(&h2.m, 123, &e) == ERR_OK);
    EXPECT(init_model(&h3.m, 124, &e) == ERR_OK);
    size_t n = h1.m.n_params;
    EXPECT(memcmp(h1.params, h2.params, n * sizeof(float)) == 0); /* same seed, same values */
    EXPECT(memcmp(h1.params, h3.params, 200 * sizeof(float)) != 0);

    const float *p = h1.params;
    const model_weight *w = h1.weights;
    /* Dense kernel in glorot limits, bias constant. */
    stats s = stats_of(p + w[0].offset, w[0].count);
    double lim = sqrt(6.0 / 30.0);
    EXPECT(s.min >= -lim && s.max <= lim && s.max - s.min > lim);
    EXPECT(p[w[1].offset] == 0.5f && p[w[1].offset + 19] == 0.5f);
    /* LSTM recurrent kernel [U, 4U]: orthonormal rows. */
    EXPECT(gram_err(p + w[3].offset, U, 4 * U, true, 1.0) < 1e-5);
    /* LSTM bias: unit_forget_bias, [0, U) zeros, [U, 2U) ones, [2U, 4U) zeros. */
    int ok = 1;
    for (int i = 0; i < 4 * U; i++)
        ok &= p[w[4].offset + i] == (i >= U && i < 2 * U ? 1.0f : 0.0f);
    EXPECT(ok);
    /* Without unit_forget_bias the whole LSTM bias comes from bias_init. */
    h2.layers[1].cfg.unit_forget_bias = false;
    EXPECT(init_model(&h2.m, 123, &e) == ERR_OK);
    ok = 1;
    for (int i = 0; i < 4 * U; i++)
        ok &= h2.params[w[4].offset + i] == 0.0f;
    EXPECT(ok);
    /* BatchNorm. */
    EXPECT(p[w[5].offset] == 1.0f && p[w[6].offset] == 0.0f && p[w[7].offset] == -3.0f &&
           p[w[8].offset + U - 1] == 1.0f);

    /* A seeded initializer ignores the model seed and repeats itself (Keras 3). */
    model_init seeded = vs(1.0, INIT_FAN_AVG, INIT_DIST_UNIFORM);
    seeded.has_seed = true;
    seeded.seed = 99;
    h2.layers[0].cfg.kernel_init = seeded;
    h3.layers[0].cfg.kernel_init = seeded;
    EXPECT(init_model(&h2.m, 1, &e) == ERR_OK);
    EXPECT(init_model(&h3.m, 3, &e) == ERR_OK);
    size_t kb = w[0].count * sizeof(float);
    EXPECT(memcmp(h2.params + w[0].offset, h3.params + w[0].offset, kb) == 0);
    EXPECT(memcmp(h2.params + w[2].offset, h3.params + w[2].offset, 40 * sizeof(float)) != 0);
    EXPECT(memcmp(h2.params + w[0].offset, h1.params + w[0].offset, kb) != 0);
    hand_end(&h1);
    hand_end(&h2);
    hand_end(&h3);
}

static void test_errors(void)
{
    hand h;
    err_info e = {0};
    build_model(&h, 4);
    h.m.built = false;
    EXPECT(init_model(&h.m, 1, &e) == ERR_USAGE);
    h.m.built = true;
    /* Unknown weight name. */
    strcpy(h.weights[1].name, "dense/offset:0");
    EXPECT(init_model(&h.m, 1, &e) == ERR_CONFIG);
    EXPECT_MSG(strstr(e.msg, "dense/offset:0") && strstr(e.msg, "\"offset\""), "%s", e.msg);
    strcpy(h.weights[1].name, "dense/bias:0");
    /* Orthogonal on a rank-1 weight. */
    h.layers[0].cfg.bias_init = simple(INIT_ORTHOGONAL, 1, 0);
    memset(&e, 0, sizeof e);
    EXPECT(init_model(&h.m, 1, &e) == ERR_CONFIG);
    EXPECT_MSG(strstr(e.msg, "dense/bias:0") && strstr(e.msg, "rank"), "%s", e.msg);
    /* Identity on a rank-1 weight. */
    h.layers[0].cfg.bias_init = simple(INIT_IDENTITY, 1, 0);
    EXPECT(init_model(&h.m, 1, &e) == ERR_CONFIG);
    /* Bad variance scaling scale. */
    h.layers[0].cfg.bias_init = simple(INIT_ZEROS, 0, 0);
    h.layers[0].cfg.kernel_init = vs(0.0, INIT_FAN_IN, INIT_DIST_UNIFORM);
    memset(&e, 0, sizeof e);
    EXPECT(init_model(&h.m, 1, &e) == ERR_CONFIG);
    EXPECT_MSG(strstr(e.msg, "dense/kernel:0") && strstr(e.msg, "scale"), "%s", e.msg);
    h.layers[0].cfg.kernel_init = vs(1.0, (init_mode)7, INIT_DIST_UNIFORM);
    EXPECT(init_model(&h.m, 1, &e) == ERR_CONFIG);
    /* Negative stddev. */
    h.layers[0].cfg.kernel_init = simple(INIT_RANDOM_NORMAL, 0, -1);
    EXPECT(init_model(&h.m, 1, &e) == ERR_CONFIG);
    h.layers[0].cfg.kernel_init = vs(1.0, INIT_FAN_IN, INIT_DIST_UNIFORM);
    /* LSTM bias of the wrong size. */
    h.layers[1].cfg.units = 5;
    memset(&e, 0, sizeof e);
    EXPECT(init_model(&h.m, 1, &e) == ERR_CONFIG);
    EXPECT_MSG(strstr(e.msg, "lstm/lstm_cell/bias:0") != NULL, "%s", e.msg);
    h.layers[1].cfg.units = 4;
    EXPECT(init_model(&h.m, 1, &e) == ERR_OK);
    hand_end(&h);
}

/* ---- every weight-bearing layer kind through model_build with Keras default initializers ---- */

static int add_on(model *m, layer_kind kind, const char *name, int src)
{
    int idx = -1;
    err_info e = {0};
    CHECK(model_layer_add(m, kind, name, &idx, &e) == ERR_OK);
    model_ref r = {src, 0, 0};
    CHECK(model_node_add(m, idx, 1, &r, &e) == ERR_OK);
    return idx;
}

static int add_input(model *m, const char *name, int rank, const int64_t *dims, dtype dt)
{
    int idx = -1;
    CHECK(model_layer_add(m, LAYER_INPUT, name, &idx, NULL) == ERR_OK);
    m->layers[idx].input_shape.rank = rank + 1;
    m->layers[idx].input_shape.dims[0] = -1;
    for (int i = 0; i < rank; i++)
        m->layers[idx].input_shape.dims[i + 1] = dims[i];
    m->layers[idx].input_dtype = dt;
    return idx;
}

static const float *weight_of(const model *m, const char *name, size_t *count)
{
    for (int w = 0; w < m->n_weights; w++)
        if (strcmp(m->weights[w].name, name) == 0) {
            *count = m->weights[w].count;
            return m->params + m->weights[w].offset;
        }
    fprintf(stderr, "no weight %s\n", name);
    *count = 0;
    return NULL;
}

static void test_built(void)
{
    model *m = NULL;
    err_info e = {0};
    CHECK(model_create(&m, &e) == ERR_OK);
    int a = add_input(m, "seq", 2, (int64_t[]){9, 6}, DTYPE_F32);
    int c1 = add_on(m, LAYER_CONV1D, "conv1d", a);
    m->layers[c1].cfg.filters = 5;
    m->layers[c1].cfg.kernel_size[0] = 3;
    int l = add_on(m, LAYER_LSTM, "lstm", c1);
    m->layers[l].cfg.units = 6;
    m->layers[l].cfg.return_sequences = true;
    int g = add_on(m, LAYER_GRU, "gru", l);
    m->layers[g].cfg.units = 4;
    m->layers[g].cfg.return_sequences = true;
    int s = add_on(m, LAYER_SIMPLERNN, "rnn", g);
    m->layers[s].cfg.units = 3;
    int b = add_input(m, "img", 3, (int64_t[]){6, 6, 2}, DTYPE_F32);
    int c2 = add_on(m, LAYER_CONV2D, "conv2d", b);
    m->layers[c2].cfg.filters = 4;
    m->layers[c2].cfg.kernel_size[0] = m->layers[c2].cfg.kernel_size[1] = 3;
    int bn = add_on(m, LAYER_BATCHNORM, "bn", c2);
    int gp = add_on(m, LAYER_GAP2D, "gap", bn);
    int d = add_on(m, LAYER_DENSE, "dense", gp);
    m->layers[d].cfg.units = 3;
    int t = add_input(m, "tok", 1, (int64_t[]){7}, DTYPE_I32);
    int em = add_on(m, LAYER_EMBEDDING, "emb", t);
    m->layers[em].cfg.input_dim = 50;
    m->layers[em].cfg.output_dim = 8;
    model_ref ins[] = {{a, 0, 0}, {b, 0, 0}, {t, 0, 0}};
    model_ref outs[] = {{s, 0, 0}, {d, 0, 0}, {em, 0, 0}};
    CHECK(model_inputs_set(m, 3, ins, &e) == ERR_OK);
    CHECK(model_outputs_set(m, 3, outs, &e) == ERR_OK);
    int rc = model_build(m, &e);
    EXPECT_MSG(rc == ERR_OK, "model_build: %s", e.msg);
    if (rc != ERR_OK) {
        model_destroy(m);
        return;
    }
    for (size_t i = 0; i < m->n_params; i++)
        m->params[i] = NAN;
    rc = init_model(m, 77, &e);
    EXPECT_MSG(rc == ERR_OK, "init_model: %s", e.msg);
    int finite = 1;
    for (size_t i = 0; i < m->n_params; i++)
        finite &= isfinite(m->params[i]) != 0;
    EXPECT(finite); /* every weight was written */

    size_t n;
    const float *x = weight_of(m, "lstm/lstm_cell/bias:0", &n);
    int ok = x && n == 24;
    for (size_t i = 0; ok && i < n; i++)
        ok &= x[i] == (i >= 6 && i < 12 ? 1.0f : 0.0f);
    EXPECT_MSG(ok, "LSTM forget-gate bias");
    x = weight_of(m, "lstm/lstm_cell/recurrent_kernel:0", &n);
    EXPECT(x && gram_err(x, 6, 24, true, 1.0) < 1e-5);
    x = weight_of(m, "gru/gru_cell/recurrent_kernel:0", &n);
    EXPECT(x && gram_err(x, 4, 12, true, 1.0) < 1e-5);
    x = weight_of(m, "rnn/simple_rnn_cell/recurrent_kernel:0", &n);
    EXPECT(x && gram_err(x, 3, 3, true, 1.0) < 1e-5);
    x = weight_of(m, "gru/gru_cell/bias:0", &n);
    EXPECT(x && n == 24 && x[0] == 0.0f && x[23] == 0.0f);
    /* glorot_uniform on the conv kernel [3, 3, 2, 4]: limit sqrt(6 / (18 + 36)). */
    x = weight_of(m, "conv2d/kernel:0", &n);
    stats st = x ? stats_of(x, n) : (stats){0, 0, 0, 0};
    double lim = sqrt(6.0 / 54.0);
    EXPECT(x && n == 72 && st.min >= -lim && st.max <= lim && st.max - st.min > lim);
    x = weight_of(m, "emb/embeddings:0", &n);
    st = x ? stats_of(x, n) : (stats){0, 0, 0, 0};
    EXPECT(x && n == 400 && st.min >= -0.05 && st.max <= 0.05 && st.max - st.min > 0.09);
    x = weight_of(m, "bn/moving_variance:0", &n);
    EXPECT(x && n == 4 && x[0] == 1.0f && x[3] == 1.0f);
    x = weight_of(m, "bn/gamma:0", &n);
    EXPECT(x && x[0] == 1.0f);
    model_destroy(m);
}

int main(void)
{
    test_distributions();
    test_orthogonal();
    test_model();
    test_errors();
    test_built();
    return test_finish();
}
