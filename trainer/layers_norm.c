/* BatchNormalization, as Keras 3 computes it.
 *
 * Training (training forward and a trainable layer): batch mean and BIASED variance over every
 * axis but cfg.axis (ops.moments), moving = moving * momentum + batch * (1 - momentum), then
 * y = x * inv + (beta - mean * inv) with inv = gamma / sqrt(var + epsilon) (the form of
 * tf.nn.batch_normalization). Otherwise (inference, or a frozen layer, which Keras 3 always runs
 * in inference mode) the moving statistics take the place of the batch ones.
 *
 * Statistics are accumulated in double, shifted by the moving mean (the same on every rank) to
 * avoid cancellation in E[x^2] - E[x]^2, and summed over ranks through the reduce hook together
 * with the element count, so uneven shards give the exact global moments. Backward likewise
 * sums dy and dy * xhat over all ranks for the input gradient; the gamma/beta gradients stay
 * local sums (the gradient allreduce adds them up).
 *
 * Layout: the input is [outer, C, inner] per sample, C = dims[axis]. p[0] = outer, p[1] = C,
 * p[2] = inner. stats = mean[C], invstd[C], red[2C + 1]. Scratch: 5C floats. */
#include "trainer/layers_impl.h"

#include <math.h>
#include <string.h>

enum { BN_GAMMA, BN_BETA, BN_MEAN, BN_VAR };

int layer__batchnorm_plan(layer_net *n, lnode *d, err_info *e)
{
    const model_layer *L = layer__L(n, d);
    const layer_config *c = &L->cfg;
    if (d->n_in != 1)
        return layer__err(e, n, d, ERR_CONFIG, "called on %d inputs, expected 1", d->n_in);
    const ltensor *x = layer__in(n, d, 0);
    int rc = layer__expect_out(n, d, x->rank, x->dims, e);
    if (rc != ERR_OK)
        return rc;
    int axis = c->axis < 0 ? c->axis + x->rank : c->axis;
    if (axis < 1 || axis >= x->rank)
        return layer__err(e, n, d, ERR_CONFIG, "axis %d of a rank-%d input", c->axis, x->rank);
    if (!(c->epsilon > 0))
        return layer__err(e, n, d, ERR_CONFIG, "epsilon %g must be positive", c->epsilon);
    int64_t C = x->dims[axis];
    d->p[0] = 1;
    d->p[2] = 1;
    for (int i = 1; i < axis; i++)
        d->p[0] *= x->dims[i];
    for (int i = axis + 1; i < x->rank; i++)
        d->p[2] *= x->dims[i];
    d->p[1] = C;
    if ((rc = layer__weight(n, d, BN_GAMMA, "gamma", c->scale, 1, &C, e)) != ERR_OK ||
        (rc = layer__weight(n, d, BN_BETA, "beta", c->center, 1, &C, e)) != ERR_OK ||
        (rc = layer__weight(n, d, BN_MEAN, "moving_mean", true, 1, &C, e)) != ERR_OK ||
        (rc = layer__weight(n, d, BN_VAR, "moving_variance", true, 1, &C, e)) != ERR_OK)
        return rc;
    if (!c->scale)
        d->w[BN_GAMMA] = LAYER_NO_WEIGHT;
    if (!c->center)
        d->w[BN_BETA] = LAYER_NO_WEIGHT;
    d->need_stats = (size_t)(4 * C + 1);
    d->need_ws = (size_t)(5 * C);
    d->coll_fwd = n->training && L->trainable;
    d->coll_bwd = d->coll_fwd && d->in[0].dx;
    d->red_n = 2 * C + 1;
    return ERR_OK;
}

static int bn_reduce(layer_net *n, lnode *d, double *buf, int64_t cnt, err_info *e)
{
    if (n->reduce == NULL)
        return ERR_OK;
    int rc = n->reduce(n->reduce_ctx, buf, cnt, e);
    if (rc != ERR_OK) {
        const model_layer *L = layer__L(n, d);
        return err_wrap(e,
                        "layer \"%s\" (BatchNormalization): summing batch statistics over "
                        "ranks",
                        L->name);
    }
    return ERR_OK;
}

int layer__batchnorm_dummy(layer_net *n, lnode *d, bool forward, err_info *e)
{
    int64_t C = d->p[1];
    double *red = d->stats + 2 * C;
    int64_t cnt = forward ? 2 * C + 1 : 2 * C;
    memset(red, 0, sizeof(double) * (size_t)cnt);
    return bn_reduce(n, d, red, cnt, e);
}

int layer__batchnorm_forward(layer_net *n, lnode *d, int64_t rows, bool training, err_info *e)
{
    const model_layer *L = layer__L(n, d);
    const layer_config *c = &L->cfg;
    const float *x = layer__in(n, d, 0)->val;
    float *y = layer__out(n, d, 0)->val;
    int64_t outer = rows * d->p[0], C = d->p[1], inner = d->p[2];
    const float *gamma = layer__w(n, d, BN_GAMMA), *beta = layer__w(n, d, BN_BETA);
    float *mm = layer__w(n, d, BN_MEAN), *mv = layer__w(n, d, BN_VAR);
    double *mean = d->stats, *invstd = d->stats + C, *red = d->stats + 2 * C;
    bool batch = training && L->trainable;
    if (batch) {
        /* The shift is copied first: when several nets of one model train side by side (worker
         * threads), the net that updates the moving statistics may do so as soon as the reduce
         * hook returns, while the others still need the old moving mean. */
        for (int64_t ch = 0; ch < C; ch++)
            mean[ch] = mm[ch];
        memset(red, 0, sizeof(double) * (size_t)(2 * C + 1));
        for (int64_t o = 0; inner == 1 && o < outer; o++) {
            /* Channels last: one pass over each row, vectorised across channels. */
            const float *xo = x + o * C;
            for (int64_t ch = 0; ch < C; ch++) {
                double v = (double)xo[ch] - mean[ch];
                red[ch] += v;
                red[C + ch] += v * v;
            }
        }
        for (int64_t o = 0; inner != 1 && o < outer; o++) {
            for (int64_t ch = 0; ch < C; ch++) {
                const float *xs = x + (o * C + ch) * inner;
                double shift = mean[ch], s1 = 0, s2 = 0;
                for (int64_t i = 0; i < inner; i++) {
                    double v = (double)xs[i] - shift;
                    s1 += v;
                    s2 += v * v;
                }
                red[ch] += s1;
                red[C + ch] += s2;
            }
        }
        red[2 * C] = (double)(outer * inner);
        int rc = bn_reduce(n, d, red, 2 * C + 1, e);
        if (rc != ERR_OK)
            return rc;
        double N = red[2 * C];
        d->bn_count = N;
        for (int64_t ch = 0; ch < C; ch++) {
            if (N > 0) {
                double shift = mean[ch], m1 = red[ch] / N;
                double var = red[C + ch] / N - m1 * m1;
                if (var < 0)
                    var = 0;
                mean[ch] = shift + m1;
                invstd[ch] = 1.0 / sqrt(var + c->epsilon);
                if (n->update_moving) {
                    mm[ch] = (float)(shift * c->momentum + mean[ch] * (1.0 - c->momentum));
                    mv[ch] = (float)(mv[ch] * c->momentum + var * (1.0 - c->momentum));
                }
            } else {
                /* No rows on any rank: nothing to normalise and nothing to learn (and no net
                 * updates the moving statistics, so reading them here is safe). */
                invstd[ch] = 1.0 / sqrt((double)mv[ch] + c->epsilon);
            }
        }
    } else {
        for (int64_t ch = 0; ch < C; ch++) {
            mean[ch] = mm[ch];
            invstd[ch] = 1.0 / sqrt((double)mv[ch] + c->epsilon);
        }
    }
    float *a = n->ws, *b = n->ws + C;
    for (int64_t ch = 0; ch < C; ch++) {
        float inv = (float)invstd[ch];
        if (gamma != NULL)
            inv *= gamma[ch];
        a[ch] = inv;
        b[ch] = (beta != NULL ? beta[ch] : 0.0f) - (float)mean[ch] * inv;
    }
    if (inner == 1) {
        for (int64_t o = 0; o < outer; o++) {
            const float *xo = x + o * C;
            float *yo = y + o * C;
            for (int64_t ch = 0; ch < C; ch++)
                yo[ch] = xo[ch] * a[ch] + b[ch];
        }
    } else {
        for (int64_t o = 0; o < outer; o++) {
            for (int64_t ch = 0; ch < C; ch++) {
                const float *xs = x + (o * C + ch) * inner;
                float *ys = y + (o * C + ch) * inner;
                for (int64_t i = 0; i < inner; i++)
                    ys[i] = xs[i] * a[ch] + b[ch];
            }
        }
    }
    return ERR_OK;
}

int layer__batchnorm_backward(layer_net *n, lnode *d, int64_t rows, err_info *e)
{
    const model_layer *L = layer__L(n, d);
    ltensor *xt = layer__in(n, d, 0);
    const float *x = xt->val;
    const float *dy = layer__out(n, d, 0)->grad;
    int64_t outer = rows * d->p[0], C = d->p[1], inner = d->p[2];
    const float *gamma = layer__w(n, d, BN_GAMMA);
    float *dgamma = layer__dw(n, d, BN_GAMMA), *dbeta = layer__dw(n, d, BN_BETA);
    const double *mean = d->stats, *invstd = d->stats + C;
    double *red = d->stats + 2 * C;
    bool batch = L->trainable; /* backward always follows a training forward */
    bool want_dx = d->in[0].dx;
    float *mf = n->ws, *isf = n->ws + C, *k1 = n->ws + 2 * C, *k2 = n->ws + 3 * C;
    for (int64_t ch = 0; ch < C; ch++) {
        mf[ch] = (float)mean[ch];
        isf[ch] = (float)invstd[ch];
    }
    /* Local sums of dy and dy * xhat per channel. */
    if (dgamma != NULL || dbeta != NULL || (batch && want_dx)) {
        memset(red, 0, sizeof(double) * (size_t)(2 * C));
        for (int64_t o = 0; inner == 1 && o < outer; o++) {
            const float *xo = x + o * C, *go = dy + o * C;
            for (int64_t ch = 0; ch < C; ch++) {
                float xh = (xo[ch] - mf[ch]) * isf[ch];
                red[ch] += go[ch];
                red[C + ch] += (double)go[ch] * xh;
            }
        }
        for (int64_t o = 0; inner != 1 && o < outer; o++) {
            for (int64_t ch = 0; ch < C; ch++) {
                const float *xs = x + (o * C + ch) * inner;
                const float *gs = dy + (o * C + ch) * inner;
                double s1 = 0, s2 = 0;
                for (int64_t i = 0; i < inner; i++) {
                    float xh = (xs[i] - mf[ch]) * isf[ch];
                    s1 += gs[i];
                    s2 += (double)gs[i] * xh;
                }
                red[ch] += s1;
                red[C + ch] += s2;
            }
        }
        for (int64_t ch = 0; ch < C; ch++) {
            if (dgamma != NULL)
                dgamma[ch] = (float)red[C + ch] + (d->w_first ? 0.0f : dgamma[ch]);
            if (dbeta != NULL)
                dbeta[ch] = (float)red[ch] + (d->w_first ? 0.0f : dbeta[ch]);
        }
    }
    if (!want_dx)
        return ERR_OK;
    /* dx = a * (dy - k1 - xhat * k2), a = gamma * invstd; with moving statistics (frozen layer)
     * the normalisation is a constant affine map and k1 = k2 = 0. */
    if (batch) {
        int rc = bn_reduce(n, d, red, 2 * C, e);
        if (rc != ERR_OK)
            return rc;
    }
    double N = d->bn_count;
    for (int64_t ch = 0; ch < C; ch++) {
        k1[ch] = (batch && N > 0) ? (float)(red[ch] / N) : 0.0f;
        k2[ch] = (batch && N > 0) ? (float)(red[C + ch] / N) : 0.0f;
    }
    bool acc = d->in[0].acc;
    float *dx = xt->grad, *a = n->ws + 4 * C;
    for (int64_t ch = 0; ch < C; ch++)
        a[ch] = isf[ch] * (gamma != NULL ? gamma[ch] : 1.0f);
    if (inner == 1) {
        /* Channels last: straight vectorisable loops over each row. */
        for (int64_t o = 0; o < outer; o++) {
            const float *xo = x + o * C, *go = dy + o * C;
            float *dxo = dx + o * C;
            if (acc) {
                for (int64_t ch = 0; ch < C; ch++)
                    dxo[ch] += a[ch] * (go[ch] - k1[ch] - (xo[ch] - mf[ch]) * isf[ch] * k2[ch]);
            } else {
                for (int64_t ch = 0; ch < C; ch++)
                    dxo[ch] = a[ch] * (go[ch] - k1[ch] - (xo[ch] - mf[ch]) * isf[ch] * k2[ch]);
            }
        }
        return ERR_OK;
    }
    for (int64_t o = 0; o < outer; o++) {
        for (int64_t ch = 0; ch < C; ch++) {
            int64_t base = (o * C + ch) * inner;
            for (int64_t i = 0; i < inner; i++) {
                float xh = (x[base + i] - mf[ch]) * isf[ch];
                float v = a[ch] * (dy[base + i] - k1[ch] - xh * k2[ch]);
                dx[base + i] = acc ? dx[base + i] + v : v;
            }
        }
    }
    return ERR_OK;
}
