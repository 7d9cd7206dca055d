/* Spatial layer kinds: Conv2D, Conv1D, Max/AveragePooling 1D/2D, GlobalAverage/MaxPooling
 * 1D/2D and ZeroPadding2D. The kernels are channels_last (kernels/kern_conv.h, kern_pool.h);
 * channels_first layers transpose around them ([n, c, s] <-> [n, s, c] per sample). 1-D layers
 * are the 2-D ones with h = 1. */
#include "trainer/layers_impl.h"

#include <string.h>

#include "kernels/kern_act.h"

static int expect_inputs(layer_net *n, lnode *d, int want, err_info *e)
{
    if (d->n_in != want)
        return layer__err(e, n, d, ERR_CONFIG, "called on %d inputs, expected %d", d->n_in, want);
    return ERR_OK;
}

/* Reads [h, w, c] of a 4-D (2-D layer) or [w, c] of a 3-D (1-D layer, h = 1) input in either
 * data format. */
static int spatial_dims(layer_net *n, lnode *d, bool is1d, bool cf, int64_t *h, int64_t *w,
                        int64_t *c, err_info *e)
{
    const ltensor *x = layer__in(n, d, 0);
    int want = is1d ? 3 : 4;
    if (x->rank != want)
        return layer__err(e, n, d, ERR_SHAPE, "input of rank %d, expected %d", x->rank, want);
    if (is1d) {
        *h = 1;
        *w = cf ? x->dims[2] : x->dims[1];
        *c = cf ? x->dims[1] : x->dims[2];
    } else {
        *h = cf ? x->dims[2] : x->dims[1];
        *w = cf ? x->dims[3] : x->dims[2];
        *c = cf ? x->dims[1] : x->dims[3];
    }
    return ERR_OK;
}

/* The output shape a spatial layer must have. */
static int expect_spatial_out(layer_net *n, lnode *d, bool is1d, bool cf, int64_t oh, int64_t ow,
                              int64_t c, err_info *e)
{
    int64_t want[4] = {-1, 0, 0, 0};
    if (is1d) {
        want[1] = cf ? c : ow;
        want[2] = cf ? ow : c;
        return layer__expect_out(n, d, 3, want, e);
    }
    want[1] = cf ? c : oh;
    want[2] = cf ? oh : ow;
    want[3] = cf ? ow : c;
    return layer__expect_out(n, d, 4, want, e);
}

/* ---- Conv2D / Conv1D ----
 * Shared scratch layout: [conv workspace][A: max_batch x input row][B: max_batch x output row].
 * A holds the channels_last input (inference) or input gradient (channels_first or when
 * accumulating); B holds the channels_last output or output gradient (channels_first). */

int layer__conv_plan(layer_net *n, lnode *d, err_info *e)
{
    const model_layer *L = layer__L(n, d);
    const layer_config *c = &L->cfg;
    bool is1d = L->kind == LAYER_CONV1D;
    int rc = expect_inputs(n, d, 1, e);
    if (rc != ERR_OK)
        return rc;
    d->cf = c->channels_first;
    kern_conv_geom *g = &d->g.conv;
    memset(g, 0, sizeof *g);
    if ((rc = spatial_dims(n, d, is1d, d->cf, &g->h, &g->w, &g->cin, e)) != ERR_OK)
        return rc;
    g->n = n->max_batch;
    g->cout = c->filters;
    g->kh = is1d ? 1 : c->kernel_size[0];
    g->kw = is1d ? c->kernel_size[0] : c->kernel_size[1];
    g->sh = is1d ? 1 : c->strides[0];
    g->sw = is1d ? c->strides[0] : c->strides[1];
    g->dh = is1d ? 1 : c->dilation[0];
    g->dw = is1d ? c->dilation[0] : c->dilation[1];
    if (g->cout < 1 || g->kh < 1 || g->kw < 1 || g->sh < 1 || g->sw < 1 || g->dh < 1 || g->dw < 1)
        return layer__err(e, n, d, ERR_CONFIG,
                          "filters, kernel_size, strides and dilation_rate must be positive");
    if ((g->sh > 1 || g->sw > 1) && (g->dh > 1 || g->dw > 1))
        return layer__err(e, n, d, ERR_UNSUPPORTED,
                          "strides > 1 together with dilation_rate > 1 (Keras rejects it too)");
    if (c->padding == PAD_CAUSAL) {
        if (!is1d)
            return layer__err(e, n, d, ERR_CONFIG, "padding \"causal\" is for Conv1D only");
        /* Keras pads (kernel_size - 1) * dilation zeros on the left, then runs "valid". */
        g->pad_top = 0;
        g->pad_left = (g->kw - 1) * g->dw;
        g->oh = 1;
        g->ow = g->w > 0 ? (g->w - 1) / g->sw + 1 : 0;
    } else if (c->padding == PAD_VALID || c->padding == PAD_SAME) {
        kern_conv_geom_set(g, c->padding == PAD_SAME);
    } else {
        return layer__err(e, n, d, ERR_CONFIG, "padding %d unknown", (int)c->padding);
    }
    if (g->oh < 1 || g->ow < 1)
        return layer__err(e, n, d, ERR_SHAPE,
                          "the kernel (%lld x %lld, dilation %lld x %lld) does not fit the input "
                          "(%lld x %lld) with padding \"valid\"",
                          (long long)g->kh, (long long)g->kw, (long long)g->dh, (long long)g->dw,
                          (long long)g->h, (long long)g->w);
    if ((rc = expect_spatial_out(n, d, is1d, d->cf, g->oh, g->ow, g->cout, e)) != ERR_OK)
        return rc;
    int64_t kd[4] = {g->kh, g->kw, g->cin, g->cout};
    if ((rc = layer__weight(n, d, 0, "kernel", true, is1d ? 3 : 4, is1d ? kd + 1 : kd, e)) !=
        ERR_OK)
        return rc;
    if (c->use_bias && (rc = layer__weight(n, d, 1, "bias", true, 1, &g->cout, e)) != ERR_OK)
        return rc;
    if ((int)c->activation < 0 || c->activation >= ACT_COUNT)
        return layer__err(e, n, d, ERR_CONFIG, "activation %d unknown", (int)c->activation);
    const ltensor *x = layer__in(n, d, 0), *y = layer__out(n, d, 0);
    size_t in_f = (size_t)(n->max_batch * x->row), out_f = (size_t)(n->max_batch * y->row);
    d->p[0] = (int64_t)kern_conv2d_workspace(g); /* A starts here */
    d->need_ws = (size_t)d->p[0] + in_f + (d->cf ? out_f : 0);
    if (d->cf && d->bwd)
        d->need_xt = in_f; /* the channels_last input, kept for the kernel gradient */
    if (d->bwd && kern_act_backward_needs_x(c->activation))
        d->need_z = out_f;
    /* Activation layout: softmax runs over the last axis of the layer's own output. */
    d->p[1] = y->dims[y->rank - 1];
    d->p[2] = y->row / d->p[1];
    return ERR_OK;
}

int layer__conv_forward(layer_net *n, lnode *d, int64_t rows, bool training, err_info *e)
{
    (void)training, (void)e;
    const model_layer *L = layer__L(n, d);
    const ltensor *x = layer__in(n, d, 0);
    ltensor *y = layer__out(n, d, 0);
    kern_conv_geom g = d->g.conv;
    g.n = rows;
    float *wsA = n->ws + d->p[0];
    float *wsB = wsA + n->max_batch * x->row;
    if (rows > 0) {
        if (d->cf) {
            float *xt = d->xt != NULL ? d->xt : wsA;
            layer__transpose(rows, g.cin, g.h * g.w, x->val, xt, false);
            kern_conv2d_forward(&g, xt, layer__w(n, d, 0), layer__w(n, d, 1), wsB, n->ws);
            layer__transpose(rows, g.oh * g.ow, g.cout, wsB, y->val, false);
        } else {
            kern_conv2d_forward(&g, x->val, layer__w(n, d, 0), layer__w(n, d, 1), y->val, n->ws);
        }
    }
    int64_t r = rows * d->p[2];
    if (d->z != NULL)
        memcpy(d->z, y->val, sizeof(float) * (size_t)(r * d->p[1]));
    kern_act_forward(L->cfg.activation, r, d->p[1], y->val, y->val);
    return ERR_OK;
}

int layer__conv_backward(layer_net *n, lnode *d, int64_t rows, err_info *e)
{
    (void)e;
    const model_layer *L = layer__L(n, d);
    ltensor *x = layer__in(n, d, 0), *y = layer__out(n, d, 0);
    kern_conv_geom g = d->g.conv;
    g.n = rows;
    float *wsA = n->ws + d->p[0];
    float *wsB = wsA + n->max_batch * x->row;
    float *dk = layer__dw(n, d, 0), *db = layer__dw(n, d, 1);
    /* The kernel accumulates weight gradients: the first call of the layer clears them. */
    if (d->w_first) {
        if (dk != NULL)
            memset(dk, 0, sizeof(float) * (size_t)(g.kh * g.kw * g.cin * g.cout));
        if (db != NULL)
            memset(db, 0, sizeof(float) * (size_t)g.cout);
    }
    /* dz in place in the output gradient (layout of the output, like the forward epilogue). */
    kern_act_backward(L->cfg.activation, rows * d->p[2], d->p[1], d->z, y->val, y->grad, y->grad);
    if (rows == 0)
        return ERR_OK;
    bool want_dx = d->in[0].dx;
    if (d->cf) {
        layer__transpose(rows, g.cout, g.oh * g.ow, y->grad, wsB, false);
        kern_conv2d_backward(&g, d->xt, layer__w(n, d, 0), wsB, want_dx ? wsA : NULL, dk, db,
                             n->ws);
        if (want_dx)
            layer__transpose(rows, g.h * g.w, g.cin, wsA, x->grad, d->in[0].acc);
        return ERR_OK;
    }
    float *dx = want_dx ? (d->in[0].acc ? wsA : x->grad) : NULL;
    kern_conv2d_backward(&g, x->val, layer__w(n, d, 0), y->grad, dx, dk, db, n->ws);
    if (want_dx && d->in[0].acc)
        layer__put(x->grad, wsA, rows * x->row, true);
    return ERR_OK;
}

/* ---- Max/AveragePooling 1D/2D ----
 * Scratch: [A: max_batch x input row][B: max_batch x output row] for the transposes of
 * channels_first and for accumulating input gradients. */

static bool pool_is_max(layer_kind k)
{
    return k == LAYER_MAXPOOL2D || k == LAYER_MAXPOOL1D;
}

int layer__pool_plan(layer_net *n, lnode *d, err_info *e)
{
    const model_layer *L = layer__L(n, d);
    const layer_config *c = &L->cfg;
    bool is1d = L->kind == LAYER_MAXPOOL1D || L->kind == LAYER_AVGPOOL1D;
    int rc = expect_inputs(n, d, 1, e);
    if (rc != ERR_OK)
        return rc;
    d->cf = c->channels_first;
    kern_pool_geom *g = &d->g.pool;
    memset(g, 0, sizeof *g);
    if ((rc = spatial_dims(n, d, is1d, d->cf, &g->h, &g->w, &g->c, e)) != ERR_OK)
        return rc;
    g->n = n->max_batch;
    g->ph = is1d ? 1 : c->pool_size[0];
    g->pw = is1d ? c->pool_size[0] : c->pool_size[1];
    /* Keras: strides=None means pool_size. */
    g->sh = is1d ? 1 : (c->pool_strides[0] > 0 ? c->pool_strides[0] : g->ph);
    g->sw = is1d ? (c->pool_strides[0] > 0 ? c->pool_strides[0] : g->pw)
                 : (c->pool_strides[1] > 0 ? c->pool_strides[1] : g->pw);
    if (g->ph < 1 || g->pw < 1)
        return layer__err(e, n, d, ERR_CONFIG, "pool_size must be positive");
    if (c->padding != PAD_VALID && c->padding != PAD_SAME)
        return layer__err(e, n, d, ERR_CONFIG, "padding must be \"valid\" or \"same\"");
    kern_pool_geom_set(g, c->padding == PAD_SAME);
    if (g->oh < 1 || g->ow < 1)
        return layer__err(e, n, d, ERR_SHAPE,
                          "the pool (%lld x %lld) does not fit the input (%lld x %lld) with "
                          "padding \"valid\"",
                          (long long)g->ph, (long long)g->pw, (long long)g->h, (long long)g->w);
    if ((rc = expect_spatial_out(n, d, is1d, d->cf, g->oh, g->ow, g->c, e)) != ERR_OK)
        return rc;
    const ltensor *x = layer__in(n, d, 0), *y = layer__out(n, d, 0);
    size_t in_f = (size_t)(n->max_batch * x->row), out_f = (size_t)(n->max_batch * y->row);
    d->need_ws = in_f + (d->cf ? out_f : 0);
    if (pool_is_max(L->kind) && d->bwd)
        d->need_argmax = out_f;
    return ERR_OK;
}

int layer__pool_forward(layer_net *n, lnode *d, int64_t rows, bool training, err_info *e)
{
    (void)e;
    bool ismax = pool_is_max(layer__L(n, d)->kind);
    const ltensor *x = layer__in(n, d, 0);
    ltensor *y = layer__out(n, d, 0);
    kern_pool_geom g = d->g.pool;
    g.n = rows;
    if (rows == 0)
        return ERR_OK;
    int32_t *am = training ? d->argmax : NULL;
    const float *src = x->val;
    float *dst = y->val;
    float *wsA = n->ws, *wsB = n->ws + n->max_batch * x->row;
    if (d->cf) {
        layer__transpose(rows, g.c, g.h * g.w, x->val, wsA, false);
        src = wsA;
        dst = wsB;
    }
    if (ismax)
        kern_maxpool2d_forward(&g, src, dst, am);
    else
        kern_avgpool2d_forward(&g, src, dst);
    if (d->cf)
        layer__transpose(rows, g.oh * g.ow, g.c, wsB, y->val, false);
    return ERR_OK;
}

int layer__pool_backward(layer_net *n, lnode *d, int64_t rows, err_info *e)
{
    (void)e;
    if (!d->in[0].dx || rows == 0)
        return ERR_OK;
    bool ismax = pool_is_max(layer__L(n, d)->kind);
    ltensor *x = layer__in(n, d, 0), *y = layer__out(n, d, 0);
    kern_pool_geom g = d->g.pool;
    g.n = rows;
    float *wsA = n->ws, *wsB = n->ws + n->max_batch * x->row;
    const float *dy = y->grad;
    if (d->cf) {
        layer__transpose(rows, g.c, g.oh * g.ow, y->grad, wsB, false);
        dy = wsB;
    }
    bool direct = !d->cf && !d->in[0].acc;
    float *dx = direct ? x->grad : wsA;
    if (ismax)
        kern_maxpool2d_backward(&g, dy, d->argmax, dx);
    else
        kern_avgpool2d_backward(&g, dy, dx);
    if (d->cf)
        layer__transpose(rows, g.h * g.w, g.c, wsA, x->grad, d->in[0].acc);
    else if (!direct)
        layer__put(x->grad, wsA, rows * x->row, true);
    return ERR_OK;
}

/* ---- GlobalAverage/MaxPooling 1D/2D ----
 * p[0] = channels, p[1] = spatial size; element (b, s, ch) is at (b*S + s)*C + ch for
 * channels_last and (b*C + ch)*S + s for channels_first. keepdims outputs have the same
 * elements. argmax (max, training) holds s per (b, ch). */

static bool gpool_is_max(layer_kind k)
{
    return k == LAYER_GMP2D || k == LAYER_GMP1D;
}

int layer__gpool_plan(layer_net *n, lnode *d, err_info *e)
{
    const model_layer *L = layer__L(n, d);
    bool is1d = L->kind == LAYER_GAP1D || L->kind == LAYER_GMP1D;
    int rc = expect_inputs(n, d, 1, e);
    if (rc != ERR_OK)
        return rc;
    d->cf = L->cfg.channels_first;
    int64_t h = 0, w = 0, c = 0; /* set by spatial_dims on success */
    if ((rc = spatial_dims(n, d, is1d, d->cf, &h, &w, &c, e)) != ERR_OK)
        return rc;
    const ltensor *y = layer__out(n, d, 0);
    if (y->row != c || (y->rank != 2 && y->rank != layer__in(n, d, 0)->rank))
        return layer__err(e, n, d, ERR_SHAPE,
                          "output of %lld elements per row (rank %d), "
                          "expected %lld channels",
                          (long long)y->row, y->rank, (long long)c);
    d->p[0] = c;
    d->p[1] = h * w;
    if (h * w < 1)
        return layer__err(e, n, d, ERR_SHAPE, "empty spatial extent");
    if (gpool_is_max(L->kind) && d->bwd)
        d->need_argmax = (size_t)(n->max_batch * c);
    return ERR_OK;
}

int layer__gpool_forward(layer_net *n, lnode *d, int64_t rows, bool training, err_info *e)
{
    (void)e;
    bool ismax = gpool_is_max(layer__L(n, d)->kind);
    const float *x = layer__in(n, d, 0)->val;
    float *y = layer__out(n, d, 0)->val;
    int64_t C = d->p[0], S = d->p[1];
    int32_t *am = training ? d->argmax : NULL;
    for (int64_t b = 0; b < rows; b++) {
        float *yb = y + b * C;
        if (d->cf) {
            for (int64_t ch = 0; ch < C; ch++) {
                const float *xs = x + (b * C + ch) * S;
                if (ismax) {
                    int64_t best = 0;
                    for (int64_t s = 1; s < S; s++)
                        best = xs[s] > xs[best] ? s : best;
                    yb[ch] = xs[best];
                    if (am != NULL)
                        am[b * C + ch] = (int32_t)best;
                } else {
                    float acc = 0.0f;
                    for (int64_t s = 0; s < S; s++)
                        acc += xs[s];
                    yb[ch] = acc / (float)S;
                }
            }
            continue;
        }
        const float *xb = x + b * S * C;
        memcpy(yb, xb, sizeof(float) * (size_t)C);
        if (am != NULL)
            memset(am + b * C, 0, sizeof(int32_t) * (size_t)C);
        for (int64_t s = 1; s < S; s++) {
            const float *xs = xb + s * C;
            if (ismax) {
                for (int64_t ch = 0; ch < C; ch++) {
                    if (xs[ch] > yb[ch]) {
                        yb[ch] = xs[ch];
                        if (am != NULL)
                            am[b * C + ch] = (int32_t)s;
                    }
                }
            } else {
                for (int64_t ch = 0; ch < C; ch++)
                    yb[ch] += xs[ch];
            }
        }
        if (!ismax) {
            for (int64_t ch = 0; ch < C; ch++)
                yb[ch] /= (float)S;
        }
    }
    return ERR_OK;
}

int layer__gpool_backward(layer_net *n, lnode *d, int64_t rows, err_info *e)
{
    (void)e;
    if (!d->in[0].dx)
        return ERR_OK;
    bool ismax = gpool_is_max(layer__L(n, d)->kind);
    bool acc = d->in[0].acc;
    float *dx = layer__in(n, d, 0)->grad;
    const float *dy = layer__out(n, d, 0)->grad;
    int64_t C = d->p[0], S = d->p[1];
    int64_t cs = d->cf ? S : 1, ss = d->cf ? 1 : C; /* strides of channel and position */
    if (ismax && !acc)
        memset(dx, 0, sizeof(float) * (size_t)(rows * C * S));
    float inv = 1.0f / (float)S;
    for (int64_t b = 0; b < rows; b++) {
        float *db = dx + b * C * S;
        const float *g = dy + b * C;
        if (ismax) {
            for (int64_t ch = 0; ch < C; ch++)
                db[ch * cs + d->argmax[b * C + ch] * ss] += g[ch];
            continue;
        }
        for (int64_t s = 0; s < S; s++) {
            for (int64_t ch = 0; ch < C; ch++) {
                float v = g[ch] * inv;
                float *p = &db[ch * cs + s * ss];
                *p = acc ? *p + v : v;
            }
        }
    }
    return ERR_OK;
}

/* ---- ZeroPadding2D ----
 * Viewed as planes of [h, w, inner]: channels_last = n planes with inner = c, channels_first =
 * n*c planes with inner = 1. p[0] planes per sample, p[1] h, p[2] w, p[3] inner,
 * p[4..7] top, bottom, left, right. */

int layer__zeropad_plan(layer_net *n, lnode *d, err_info *e)
{
    const layer_config *c = &layer__L(n, d)->cfg;
    int rc = expect_inputs(n, d, 1, e);
    if (rc != ERR_OK)
        return rc;
    d->cf = c->channels_first;
    int64_t h = 0, w = 0, ch = 0; /* set by spatial_dims on success */
    if ((rc = spatial_dims(n, d, false, d->cf, &h, &w, &ch, e)) != ERR_OK)
        return rc;
    for (int i = 0; i < 4; i++) {
        if (c->zero_pad[i] < 0)
            return layer__err(e, n, d, ERR_CONFIG, "negative padding %lld",
                              (long long)c->zero_pad[i]);
    }
    int64_t oh = h + c->zero_pad[0] + c->zero_pad[1], ow = w + c->zero_pad[2] + c->zero_pad[3];
    if ((rc = expect_spatial_out(n, d, false, d->cf, oh, ow, ch, e)) != ERR_OK)
        return rc;
    d->p[0] = d->cf ? ch : 1;
    d->p[1] = h;
    d->p[2] = w;
    d->p[3] = d->cf ? 1 : ch;
    for (int i = 0; i < 4; i++)
        d->p[4 + i] = c->zero_pad[i];
    return ERR_OK;
}

int layer__zeropad_forward(layer_net *n, lnode *d, int64_t rows, bool training, err_info *e)
{
    (void)training, (void)e;
    const float *x = layer__in(n, d, 0)->val;
    float *y = layer__out(n, d, 0)->val;
    int64_t h = d->p[1], w = d->p[2], in = d->p[3];
    int64_t oh = h + d->p[4] + d->p[5], ow = w + d->p[6] + d->p[7];
    int64_t planes = rows * d->p[0];
    size_t orow = sizeof(float) * (size_t)(ow * in);
    for (int64_t pl = 0; pl < planes; pl++) {
        float *yp = y + pl * oh * ow * in;
        const float *xp = x + pl * h * w * in;
        memset(yp, 0, orow * (size_t)d->p[4]);
        for (int64_t r = 0; r < h; r++) {
            float *yr = yp + (d->p[4] + r) * ow * in;
            memset(yr, 0, sizeof(float) * (size_t)(d->p[6] * in));
            memcpy(yr + d->p[6] * in, xp + r * w * in, sizeof(float) * (size_t)(w * in));
            memset(yr + (d->p[6] + w) * in, 0, sizeof(float) * (size_t)(d->p[7] * in));
        }
        memset(yp + (d->p[4] + h) * ow * in, 0, orow * (size_t)d->p[5]);
    }
    return ERR_OK;
}

int layer__zeropad_backward(layer_net *n, lnode *d, int64_t rows, err_info *e)
{
    (void)e;
    if (!d->in[0].dx)
        return ERR_OK;
    float *dx = layer__in(n, d, 0)->grad;
    const float *dy = layer__out(n, d, 0)->grad;
    int64_t h = d->p[1], w = d->p[2], in = d->p[3];
    int64_t oh = h + d->p[4] + d->p[5], ow = w + d->p[6] + d->p[7];
    int64_t planes = rows * d->p[0];
    for (int64_t pl = 0; pl < planes; pl++) {
        for (int64_t r = 0; r < h; r++) {
            const float *src = dy + pl * oh * ow * in + ((d->p[4] + r) * ow + d->p[6]) * in;
            layer__put(dx + (pl * h + r) * w * in, src, w * in, d->in[0].acc);
        }
    }
    return ERR_OK;
}
