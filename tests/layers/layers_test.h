#ifndef CORNU_TESTS_LAYERS_TEST_H
#define CORNU_TESTS_LAYERS_TEST_H

/* Helpers for the layer engine tests: building small models through the model.h API, random
 * parameters, and a finite-difference gradient check of a whole net.
 *
 * Gradient check. The loss is L = sum over outputs and elements of w * y with fixed random w,
 * so d(L)/d(y) = w is what the test writes as output gradient. Every trainable parameter p is
 * checked against the central difference (L(p + h) - L(p - h)) / 2h evaluated in float32 by
 * the same engine in training mode (same seed and step, so Dropout draws the same mask; all
 * parameters, including BatchNormalization moving statistics, are restored after each
 * forward). Tolerance per element: |fd - analytic| <= atol + rtol * |analytic|, with the
 * defaults rtol = 2e-2, atol = 2e-3 (float32 forward noise ~1e-6 in L divided by 2h = 2e-3,
 * plus O(h^2) curvature). Functions with kinks (relu, max pooling, hard sigmoid, ...) may see
 * a perturbation cross a kink: such kinds are run with max_bad_frac > 0 (a stated fraction of
 * elements may miss), and the whole-vector relative error ||fd - g|| / ||g|| must stay below
 * 5e-2 in every case.
 *
 * Each check also verifies the layer_grad_ready_fn contract: ranges strictly decreasing,
 * disjoint, covering [0, n_trainable), and the gradient in each range already final when
 * reported; and that rows beyond the batch (filled with NaN) never leak into results. */

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/rng.h"
#include "test_util.h"
#include "trainer/layers.h"
#include "trainer/model.h"

typedef struct tb {
    model *m;
    err_info e;
    bool failed;
} tb;

static inline void tb_init(tb *b)
{
    memset(b, 0, sizeof *b);
    if (model_create(&b->m, &b->e) != ERR_OK) {
        fprintf(stderr, "model_create: %s\n", b->e.msg);
        exit(1);
    }
}

static inline void tb_check(tb *b, int rc, const char *what)
{
    if (rc != ERR_OK && !b->failed) {
        fprintf(stderr, "%s: %s\n", what, b->e.msg);
        b->failed = true;
    }
}

#define TB_DIMS(...) ((const int64_t[]){__VA_ARGS__})

/* A new InputLayer of shape [batch, dims[0..rank)]; returns its output reference. */
static inline model_ref tb_input(tb *b, const char *name, int rank, const int64_t *dims)
{
    int idx = -1;
    tb_check(b, model_layer_add(b->m, LAYER_INPUT, name, &idx, &b->e), name);
    if (idx < 0)
        return (model_ref){0, 0, 0};
    model_layer *L = &b->m->layers[idx];
    L->input_shape.rank = rank + 1;
    L->input_shape.dims[0] = -1;
    for (int i = 0; i < rank; i++)
        L->input_shape.dims[i + 1] = dims[i];
    tb_check(b, model_node_add(b->m, idx, 0, NULL, &b->e), name);
    return (model_ref){idx, 0, 0};
}

/* A new layer of this kind with Keras defaults; returns its index (configure via tb_cfg). */
static inline int tb_layer(tb *b, layer_kind k, const char *name)
{
    int idx = -1;
    tb_check(b, model_layer_add(b->m, k, name, &idx, &b->e), name);
    return idx;
}

static inline layer_config *tb_cfg(tb *b, int layer)
{
    return &b->m->layers[layer].cfg;
}

/* Calls layer on n inputs; returns output 0 of the new node. */
static inline model_ref tb_call(tb *b, int layer, int n, ...)
{
    model_ref in[16];
    va_list ap;
    va_start(ap, n);
    for (int i = 0; i < n; i++)
        in[i] = va_arg(ap, model_ref);
    va_end(ap);
    if (layer < 0)
        return (model_ref){0, 0, 0};
    int node = b->m->layers[layer].n_nodes;
    tb_check(b, model_node_add(b->m, layer, n, in, &b->e), b->m->layers[layer].name);
    return (model_ref){layer, node, 0};
}

/* Shorthand: a new layer called once on one input. */
static inline model_ref tb_add1(tb *b, layer_kind k, const char *name, model_ref x)
{
    return tb_call(b, tb_layer(b, k, name), 1, x);
}

/* Random parameters: weights in [-0.5, 0.5) (Dense kernels scaled by 1/sqrt(fan_in) to keep
 * activations O(1)), gamma and moving variance in [0.5, 1.5). */
static inline void tb_random_params(model *m, uint64_t seed)
{
    rng r;
    rng_seed(&r, seed, 77);
    for (int w = 0; w < m->n_weights; w++) {
        const model_weight *W = &m->weights[w];
        float *p = m->params + W->offset;
        bool positive = strstr(W->name, "gamma") || strstr(W->name, "moving_variance");
        float scale = 1.0f;
        if (strstr(W->name, "kernel") && W->rank >= 2) {
            int64_t fan_in = 1;
            for (int i = 0; i < W->rank - 1; i++)
                fan_in *= W->shape[i];
            scale = 2.0f / sqrtf((float)fan_in);
        }
        for (size_t i = 0; i < W->count; i++) {
            float u = rng_uniform_f(&r);
            p[i] = positive ? 0.5f + u : scale * (u - 0.5f);
        }
    }
}

/* Sets inputs/outputs and builds; returns the model or NULL (message printed). */
static inline model *tb_build(tb *b, int n_in, const model_ref *in, int n_out, const model_ref *out)
{
    if (!b->failed)
        tb_check(b, model_inputs_set(b->m, n_in, in, &b->e), "inputs");
    if (!b->failed)
        tb_check(b, model_outputs_set(b->m, n_out, out, &b->e), "outputs");
    if (!b->failed)
        tb_check(b, model_build(b->m, &b->e), "model_build");
    if (b->failed) {
        model_destroy(b->m);
        b->m = NULL;
        return NULL;
    }
    tb_random_params(b->m, 4242);
    return b->m;
}

static inline int64_t tb_row(const model *m, model_ref r)
{
    const model_shape *s = &m->layers[r.layer].nodes[r.node].out[r.tensor];
    int64_t n = 1;
    for (int i = 1; i < s->rank; i++)
        n *= s->dims[i];
    return n;
}

/* ---- gradient check ---- */

typedef struct gc_opts {
    int64_t max_batch, rows;
    double h, rtol, atol;
    double max_bad_frac; /* fraction of parameters allowed to miss (kinks) */
    int64_t int_inputs;  /* > 0: inputs are integer ids in [0, int_inputs) */
    uint64_t seed;
} gc_opts;

static inline gc_opts gc_default(void)
{
    gc_opts o = {5, 3, 1e-3, 2e-2, 2e-3, 0.0, 0, 99};
    return o;
}

typedef struct gc_ready {
    size_t next_hi; /* expected hi of the next range */
    int calls, bad;
    float *shadow; /* grads copied at report time */
    const float *grads;
} gc_ready;

static inline int gc_ready_cb(void *ctx, size_t lo, size_t hi, err_info *e)
{
    (void)e;
    gc_ready *g = ctx;
    g->calls++;
    if (hi != g->next_hi || lo >= hi) {
        fprintf(stderr, "ready [%zu, %zu) but expected hi %zu\n", lo, hi, g->next_hi);
        g->bad++;
    }
    g->next_hi = lo;
    memcpy(g->shadow + lo, g->grads + lo, sizeof(float) * (hi - lo));
    return ERR_OK;
}

static inline void gc_fill_inputs(const model *m, layer_net *net, const gc_opts *o, rng *r)
{
    for (int i = 0; i < m->n_inputs; i++) {
        int64_t row = tb_row(m, m->inputs[i]);
        float *x = layer_net_input(net, i);
        for (int64_t j = 0; j < o->max_batch * row; j++) {
            if (j >= o->rows * row)
                x[j] = NAN; /* must never be read */
            else if (o->int_inputs > 0)
                x[j] = (float)rng_below(r, (uint64_t)o->int_inputs);
            else
                x[j] = 2.0f * rng_uniform_f(r) - 1.0f;
        }
    }
}

static inline double gc_loss(model *m, layer_net *net, const gc_opts *o, float **w,
                             const float *saved, bool *ok)
{
    err_info e = {0};
    int rc = layer_net_forward(net, o->rows, true, o->seed, 7, &e);
    memcpy(m->params, saved, sizeof(float) * m->n_params);
    if (rc != ERR_OK) {
        fprintf(stderr, "forward: %s\n", e.msg);
        *ok = false;
        return 0;
    }
    double L = 0;
    for (int i = 0; i < m->n_outputs; i++) {
        const float *y = layer_net_output(net, i);
        int64_t cnt = o->rows * tb_row(m, m->outputs[i]);
        for (int64_t j = 0; j < cnt; j++) {
            if (!isfinite(y[j]))
                *ok = false;
            L += (double)w[i][j] * y[j];
        }
    }
    return L;
}

/* Runs the check; returns the number of failed expectations (also recorded via EXPECT). */
static inline int gradcheck(model *m, const char *what, gc_opts o)
{
    int fails_before = test_failed_;
    if (m == NULL) {
        EXPECT_MSG(m != NULL, "%s: model did not build", what);
        return 1;
    }
    err_info e = {0};
    layer_net *net = NULL;
    int rc = layer_net_create(m, o.max_batch, true, &net, &e);
    EXPECT_MSG(rc == ERR_OK, "%s: layer_net_create: %s", what, e.msg);
    if (rc != ERR_OK)
        return 1;
    rng r;
    rng_seed(&r, o.seed, 1);
    gc_fill_inputs(m, net, &o, &r);
    float *w[8];
    for (int i = 0; i < m->n_outputs; i++) {
        int64_t cnt = o.max_batch * tb_row(m, m->outputs[i]);
        w[i] = malloc(sizeof(float) * (size_t)(cnt + 1));
        for (int64_t j = 0; j < cnt; j++)
            w[i][j] = 2.0f * rng_uniform_f(&r) - 1.0f;
    }
    size_t nt = m->n_trainable;
    float *saved = malloc(sizeof(float) * (m->n_params + 1));
    float *g = malloc(sizeof(float) * (nt + 1));
    float *shadow = malloc(sizeof(float) * (nt + 1));
    memcpy(saved, m->params, sizeof(float) * m->n_params);

    /* Analytic gradient. */
    bool ok = true;
    (void)gc_loss(m, net, &o, w, saved, &ok);
    rc = layer_net_forward(net, o.rows, true, o.seed, 7, &e);
    memcpy(m->params, saved, sizeof(float) * m->n_params);
    for (int i = 0; i < m->n_outputs; i++)
        memcpy(layer_net_output_grad(net, i), w[i],
               sizeof(float) * (size_t)(o.rows * tb_row(m, m->outputs[i])));
    gc_ready rd = {nt, 0, 0, shadow, layer_net_grads(net)};
    for (size_t i = 0; i < nt; i++)
        shadow[i] = NAN;
    if (rc == ERR_OK)
        rc = layer_net_backward(net, o.rows, gc_ready_cb, &rd, &e);
    EXPECT_MSG(rc == ERR_OK, "%s: forward/backward: %s", what, e.msg);
    EXPECT_MSG(ok, "%s: non-finite output", what);
    if (nt > 0) {
        memcpy(g, layer_net_grads(net), sizeof(float) * nt);
        EXPECT_MSG(rd.bad == 0 && rd.next_hi == 0 && rd.calls > 0,
                   "%s: ready ranges (calls %d, bad %d, stopped at %zu)", what, rd.calls, rd.bad,
                   rd.next_hi);
        EXPECT_MSG(memcmp(shadow, g, sizeof(float) * nt) == 0,
                   "%s: a gradient range changed after it was reported ready", what);
    }

    /* Finite differences. */
    int bad = 0;
    double num = 0, den = 0;
    for (size_t p = 0; p < nt && ok; p++) {
        float orig = saved[p];
        saved[p] = orig + (float)o.h;
        memcpy(m->params, saved, sizeof(float) * m->n_params);
        double hp = (double)saved[p] - orig;
        double lp = gc_loss(m, net, &o, w, saved, &ok);
        saved[p] = orig - (float)o.h;
        memcpy(m->params, saved, sizeof(float) * m->n_params);
        double hm = orig - (double)saved[p];
        double lm = gc_loss(m, net, &o, w, saved, &ok);
        saved[p] = orig;
        memcpy(m->params, saved, sizeof(float) * m->n_params);
        double fd = (lp - lm) / (hp + hm);
        num += (fd - g[p]) * (fd - g[p]);
        den += (double)g[p] * g[p];
        if (!test_close(fd, g[p], o.rtol, o.atol)) {
            if (bad < 4)
                fprintf(stderr, "%s: param %zu: analytic %.6g, finite difference %.6g\n", what, p,
                        (double)g[p], fd);
            bad++;
        }
    }
    double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    EXPECT_MSG(ok, "%s: forward failed or non-finite during the check", what);
    EXPECT_MSG(bad <= (int)(o.max_bad_frac * (double)nt), "%s: %d of %zu parameters off", what, bad,
               nt);
    EXPECT_MSG(rel < 5e-2, "%s: relative gradient error %.3g", what, rel);
    for (int i = 0; i < m->n_outputs; i++)
        free(w[i]);
    free(saved);
    free(g);
    free(shadow);
    layer_net_destroy(net);
    return test_failed_ - fails_before;
}

#endif
