/* Layer kinds without spatial structure: InputLayer, Dense, Embedding, the activation layers
 * (Activation, ReLU, LeakyReLU, ELU, Softmax), Dropout, Flatten and Reshape. */
#include "trainer/layers_impl.h"

#include <math.h>
#include <string.h>

#include "kernels/kern_act.h"
#include "kernels/kern_dense.h"
#include "kernels/rng.h"

static int expect_inputs(layer_net *n, lnode *d, int want, err_info *e)
{
    if (d->n_in != want)
        return layer__err(e, n, d, ERR_CONFIG, "called on %d inputs, expected %d", d->n_in, want);
    return ERR_OK;
}

/* Output shape equal to the input's. */
static int expect_same(layer_net *n, lnode *d, err_info *e)
{
    int rc = expect_inputs(n, d, 1, e);
    if (rc != ERR_OK)
        return rc;
    const ltensor *x = layer__in(n, d, 0);
    return layer__expect_out(n, d, x->rank, x->dims, e);
}

/* ---- InputLayer: its output buffer is where the caller writes the batch ---- */

int layer__input_plan(layer_net *n, lnode *d, err_info *e)
{
    if (d->n_in != 0)
        return layer__err(e, n, d, ERR_CONFIG, "an InputLayer takes no inputs, found %d", d->n_in);
    return ERR_OK;
}

int layer__input_forward(layer_net *n, lnode *d, int64_t rows, bool training, err_info *e)
{
    (void)n, (void)d, (void)rows, (void)training, (void)e;
    return ERR_OK;
}

int layer__input_backward(layer_net *n, lnode *d, int64_t rows, err_info *e)
{
    (void)n, (void)d, (void)rows, (void)e;
    return ERR_OK;
}

/* ---- Dense: kernel [in, units], applied over the last axis (rows = all leading extents) ----
 * p[0] = in, p[1] = units, p[2] = rows per sample. */

int layer__dense_plan(layer_net *n, lnode *d, err_info *e)
{
    const model_layer *L = layer__L(n, d);
    int rc = expect_inputs(n, d, 1, e);
    if (rc != ERR_OK)
        return rc;
    const ltensor *x = layer__in(n, d, 0);
    if (x->rank < 2)
        return layer__err(e, n, d, ERR_SHAPE, "input of rank %d, expected at least 2", x->rank);
    int64_t in = x->dims[x->rank - 1], units = L->cfg.units;
    if (units < 1)
        return layer__err(e, n, d, ERR_CONFIG, "units %lld must be positive", (long long)units);
    int64_t want[TENSOR_MAX_RANK];
    memcpy(want, x->dims, sizeof want);
    want[x->rank - 1] = units;
    if ((rc = layer__expect_out(n, d, x->rank, want, e)) != ERR_OK)
        return rc;
    int64_t kd[2] = {in, units};
    if ((rc = layer__weight(n, d, 0, "kernel", true, 2, kd, e)) != ERR_OK)
        return rc;
    if (L->cfg.use_bias && (rc = layer__weight(n, d, 1, "bias", true, 1, &units, e)) != ERR_OK)
        return rc;
    if ((int)L->cfg.activation < 0 || L->cfg.activation >= ACT_COUNT)
        return layer__err(e, n, d, ERR_CONFIG, "activation %d unknown", (int)L->cfg.activation);
    d->p[0] = in;
    d->p[1] = units;
    d->p[2] = in > 0 ? x->row / in : 0;
    if (d->bwd && kern_act_backward_needs_x(L->cfg.activation))
        d->need_z = (size_t)(n->max_batch * layer__out(n, d, 0)->row);
    if (d->bwd)
        d->need_ws = kern_dense_workspace(in, units);
    return ERR_OK;
}

int layer__dense_forward(layer_net *n, lnode *d, int64_t rows, bool training, err_info *e)
{
    (void)training, (void)e;
    kern_dense_forward(rows * d->p[2], d->p[0], d->p[1], layer__L(n, d)->cfg.activation,
                       layer__in(n, d, 0)->val, layer__w(n, d, 0), layer__w(n, d, 1), d->z,
                       layer__out(n, d, 0)->val);
    return ERR_OK;
}

int layer__dense_backward(layer_net *n, lnode *d, int64_t rows, err_info *e)
{
    (void)e;
    ltensor *x = layer__in(n, d, 0), *y = layer__out(n, d, 0);
    kern_dense_backward(rows * d->p[2], d->p[0], d->p[1], layer__L(n, d)->cfg.activation, x->val,
                        layer__w(n, d, 0), d->z, y->val, y->grad, layer__dw(n, d, 0),
                        layer__dw(n, d, 1), !d->w_first, d->in[0].dx ? x->grad : NULL, d->in[0].acc,
                        n->ws);
    return ERR_OK;
}

/* ---- Embedding: ids (floats holding integers) -> rows of embeddings [input_dim, output_dim]
 * p[0] = ids per sample, p[1] = output_dim, p[2] = input_dim. */

int layer__embedding_plan(layer_net *n, lnode *d, err_info *e)
{
    const model_layer *L = layer__L(n, d);
    int rc = expect_inputs(n, d, 1, e);
    if (rc != ERR_OK)
        return rc;
    const ltensor *x = layer__in(n, d, 0);
    if (x->rank >= TENSOR_MAX_RANK)
        return layer__err(e, n, d, ERR_SHAPE, "input of rank %d is too large", x->rank);
    if (L->cfg.input_dim < 1 || L->cfg.output_dim < 1)
        return layer__err(e, n, d, ERR_CONFIG,
                          "input_dim %lld and output_dim %lld must be positive",
                          (long long)L->cfg.input_dim, (long long)L->cfg.output_dim);
    int64_t want[TENSOR_MAX_RANK];
    memcpy(want, x->dims, sizeof want);
    want[x->rank] = L->cfg.output_dim;
    if ((rc = layer__expect_out(n, d, x->rank + 1, want, e)) != ERR_OK)
        return rc;
    int64_t wd[2] = {L->cfg.input_dim, L->cfg.output_dim};
    if ((rc = layer__weight(n, d, 0, "embeddings", true, 2, wd, e)) != ERR_OK)
        return rc;
    d->p[0] = x->row;
    d->p[1] = L->cfg.output_dim;
    d->p[2] = L->cfg.input_dim;
    return ERR_OK;
}

int layer__embedding_forward(layer_net *n, lnode *d, int64_t rows, bool training, err_info *e)
{
    (void)training;
    const float *ids = layer__in(n, d, 0)->val;
    const float *emb = layer__w(n, d, 0);
    float *y = layer__out(n, d, 0)->val;
    int64_t dim = d->p[1], vocab = d->p[2];
    for (int64_t i = 0; i < rows * d->p[0]; i++) {
        /* Keras casts the ids to int32 (truncation toward zero); NaN and ids outside the table
         * are errors, as in TensorFlow's embedding_lookup on CPU. */
        float v = ids[i];
        if (!(v > -1.0f && v < (float)vocab) || (int64_t)v >= vocab)
            return layer__err(
                e, n, d, ERR_RANGE, "input id %g (row %lld, position %lld) is outside [0, %lld)",
                (double)v, (long long)(i / d->p[0]), (long long)(i % d->p[0]), (long long)vocab);
        memcpy(y + i * dim, emb + (int64_t)v * dim, sizeof(float) * (size_t)dim);
    }
    return ERR_OK;
}

int layer__embedding_backward(layer_net *n, lnode *d, int64_t rows, err_info *e)
{
    (void)e;
    float *de = layer__dw(n, d, 0);
    if (de == NULL)
        return ERR_OK;
    const float *ids = layer__in(n, d, 0)->val;
    const float *dy = layer__out(n, d, 0)->grad;
    int64_t dim = d->p[1];
    if (d->w_first)
        memset(de, 0, sizeof(float) * (size_t)(d->p[2] * dim));
    /* Scatter-add: repeated ids accumulate. */
    for (int64_t i = 0; i < rows * d->p[0]; i++) {
        float *dst = de + (int64_t)ids[i] * dim;
        const float *src = dy + i * dim;
        for (int64_t j = 0; j < dim; j++)
            dst[j] += src[j];
    }
    return ERR_OK;
}

/* ---- element-wise activation layers ----
 * p[0] = last extent (softmax rows), p[1] = rows of it per sample. */

static int unary_plan(layer_net *n, lnode *d, err_info *e)
{
    int rc = expect_same(n, d, e);
    if (rc != ERR_OK)
        return rc;
    const ltensor *x = layer__in(n, d, 0);
    d->p[0] = x->rank > 1 ? x->dims[x->rank - 1] : 1;
    d->p[1] = d->p[0] > 0 ? x->row / d->p[0] : 0;
    return ERR_OK;
}

/* Backward helper: when dx is overwritten the kernel writes it directly; when it accumulates,
 * the kernel works in place on dy (nobody reads it afterwards) and dy is added in. */
static float *unary_dst(layer_net *n, lnode *d)
{
    return d->in[0].acc ? layer__out(n, d, 0)->grad : layer__in(n, d, 0)->grad;
}

static void unary_finish(layer_net *n, lnode *d, int64_t rows)
{
    if (d->in[0].acc) {
        ltensor *x = layer__in(n, d, 0);
        layer__put(x->grad, layer__out(n, d, 0)->grad, rows * x->row, true);
    }
}

int layer__activation_plan(layer_net *n, lnode *d, err_info *e)
{
    act_kind k = layer__L(n, d)->cfg.activation;
    if ((int)k < 0 || k >= ACT_COUNT)
        return layer__err(e, n, d, ERR_CONFIG, "activation %d unknown", (int)k);
    return unary_plan(n, d, e);
}

int layer__activation_forward(layer_net *n, lnode *d, int64_t rows, bool training, err_info *e)
{
    (void)training, (void)e;
    kern_act_forward(layer__L(n, d)->cfg.activation, rows * d->p[1], d->p[0],
                     layer__in(n, d, 0)->val, layer__out(n, d, 0)->val);
    return ERR_OK;
}

int layer__activation_backward(layer_net *n, lnode *d, int64_t rows, err_info *e)
{
    (void)e;
    if (!d->in[0].dx)
        return ERR_OK;
    ltensor *x = layer__in(n, d, 0), *y = layer__out(n, d, 0);
    kern_act_backward(layer__L(n, d)->cfg.activation, rows * d->p[1], d->p[0], x->val, y->val,
                      y->grad, unary_dst(n, d));
    unary_finish(n, d, rows);
    return ERR_OK;
}

static kern_relu_params relu_params(const layer_config *c)
{
    kern_relu_params p = {(float)c->max_value, (float)c->negative_slope, (float)c->threshold};
    return p;
}

int layer__relu_plan(layer_net *n, lnode *d, err_info *e)
{
    const layer_config *c = &layer__L(n, d)->cfg;
    if (c->negative_slope < 0)
        return layer__err(e, n, d, ERR_CONFIG, "negative_slope %g must be >= 0", c->negative_slope);
    return unary_plan(n, d, e);
}

int layer__relu_forward(layer_net *n, lnode *d, int64_t rows, bool training, err_info *e)
{
    (void)training, (void)e;
    kern_relu_params p = relu_params(&layer__L(n, d)->cfg);
    const ltensor *x = layer__in(n, d, 0);
    kern_relu_ex_forward(&p, rows * x->row, x->val, layer__out(n, d, 0)->val);
    return ERR_OK;
}

int layer__relu_backward(layer_net *n, lnode *d, int64_t rows, err_info *e)
{
    (void)e;
    if (!d->in[0].dx)
        return ERR_OK;
    kern_relu_params p = relu_params(&layer__L(n, d)->cfg);
    const ltensor *x = layer__in(n, d, 0);
    kern_relu_ex_backward(&p, rows * x->row, x->val, layer__out(n, d, 0)->grad, unary_dst(n, d));
    unary_finish(n, d, rows);
    return ERR_OK;
}

int layer__leakyrelu_plan(layer_net *n, lnode *d, err_info *e)
{
    return unary_plan(n, d, e);
}

int layer__leakyrelu_forward(layer_net *n, lnode *d, int64_t rows, bool training, err_info *e)
{
    (void)training, (void)e;
    const ltensor *x = layer__in(n, d, 0);
    kern_leaky_relu_forward((float)layer__L(n, d)->cfg.alpha, rows * x->row, x->val,
                            layer__out(n, d, 0)->val);
    return ERR_OK;
}

int layer__leakyrelu_backward(layer_net *n, lnode *d, int64_t rows, err_info *e)
{
    (void)e;
    if (!d->in[0].dx)
        return ERR_OK;
    const ltensor *x = layer__in(n, d, 0);
    kern_leaky_relu_backward((float)layer__L(n, d)->cfg.alpha, rows * x->row, x->val,
                             layer__out(n, d, 0)->grad, unary_dst(n, d));
    unary_finish(n, d, rows);
    return ERR_OK;
}

int layer__elu_plan(layer_net *n, lnode *d, err_info *e)
{
    return unary_plan(n, d, e);
}

int layer__elu_forward(layer_net *n, lnode *d, int64_t rows, bool training, err_info *e)
{
    (void)training, (void)e;
    const ltensor *x = layer__in(n, d, 0);
    kern_elu_forward((float)layer__L(n, d)->cfg.alpha, rows * x->row, x->val,
                     layer__out(n, d, 0)->val);
    return ERR_OK;
}

int layer__elu_backward(layer_net *n, lnode *d, int64_t rows, err_info *e)
{
    (void)e;
    if (!d->in[0].dx)
        return ERR_OK;
    const ltensor *x = layer__in(n, d, 0);
    kern_elu_backward((float)layer__L(n, d)->cfg.alpha, rows * x->row, x->val,
                      layer__out(n, d, 0)->grad, unary_dst(n, d));
    unary_finish(n, d, rows);
    return ERR_OK;
}

/* Softmax layer over cfg.axis: p[2] = extents before the axis per sample, p[3] = axis extent,
 * p[4] = extents after. */
int layer__softmax_plan(layer_net *n, lnode *d, err_info *e)
{
    int rc = expect_same(n, d, e);
    if (rc != ERR_OK)
        return rc;
    const ltensor *x = layer__in(n, d, 0);
    int axis = layer__L(n, d)->cfg.axis;
    if (axis < 0)
        axis += x->rank;
    if (axis < 1 || axis >= x->rank)
        return layer__err(e, n, d, ERR_UNSUPPORTED,
                          "axis %d of a rank-%d input (the batch axis "
                          "and axes outside the input are not supported)",
                          layer__L(n, d)->cfg.axis, x->rank);
    d->p[2] = 1;
    d->p[4] = 1;
    for (int i = 1; i < axis; i++)
        d->p[2] *= x->dims[i];
    for (int i = axis + 1; i < x->rank; i++)
        d->p[4] *= x->dims[i];
    d->p[3] = x->dims[axis];
    return ERR_OK;
}

int layer__softmax_forward(layer_net *n, lnode *d, int64_t rows, bool training, err_info *e)
{
    (void)training, (void)e;
    kern_softmax_forward(rows * d->p[2], d->p[3], d->p[4], layer__in(n, d, 0)->val,
                         layer__out(n, d, 0)->val);
    return ERR_OK;
}

int layer__softmax_backward(layer_net *n, lnode *d, int64_t rows, err_info *e)
{
    (void)e;
    if (!d->in[0].dx)
        return ERR_OK;
    const ltensor *y = layer__out(n, d, 0);
    kern_softmax_backward(rows * d->p[2], d->p[3], d->p[4], y->val, y->grad, unary_dst(n, d));
    unary_finish(n, d, rows);
    return ERR_OK;
}

/* ---- Dropout: inverted dropout (keep with probability 1 - rate, scale kept values by
 * 1 / (1 - rate)). Shares its input's buffer in inference nets and at rate 0. The mask of one
 * row is a pure function of (seed, step, layer index, call index, global row index), so a
 * partial batch or a rank's shard sees exactly the rows of the full batch's mask. */

int layer__dropout_plan(layer_net *n, lnode *d, err_info *e)
{
    const layer_config *c = &layer__L(n, d)->cfg;
    int rc = expect_same(n, d, e);
    if (rc != ERR_OK)
        return rc;
    if (!(c->rate >= 0 && c->rate < 1))
        return layer__err(e, n, d, ERR_CONFIG, "rate %g must be in [0, 1)", c->rate);
    if (!n->training || c->rate == 0) {
        d->alias = true;
        return ERR_OK;
    }
    d->need_mask = (size_t)(n->max_batch * layer__in(n, d, 0)->row);
    return ERR_OK;
}

int layer__dropout_forward(layer_net *n, lnode *d, int64_t rows, bool training, err_info *e)
{
    (void)e;
    const layer_config *c = &layer__L(n, d)->cfg;
    const ltensor *x = layer__in(n, d, 0);
    float *y = layer__out(n, d, 0)->val;
    int64_t cnt = rows * x->row;
    if (!training) {
        memcpy(y, x->val, sizeof(float) * (size_t)cnt);
        return ERR_OK;
    }
    uint64_t seed = n->seed;
    if (c->dropout_seed >= 0)
        seed = rng_mix(seed, (uint64_t)c->dropout_seed);
    uint64_t stream = rng_mix(rng_mix((uint64_t)n->step, (uint64_t)d->layer), (uint64_t)d->node);
    float rate = (float)c->rate;
    float scale = (float)(1.0 / (1.0 - c->rate));
    for (int64_t b = 0; b < rows; b++) {
        /* One stream per global row: the masks do not depend on how the batch is split. */
        rng r;
        rng_seed(&r, seed, rng_mix(stream, (uint64_t)(n->row0 + b)));
        const float *xb = x->val + b * x->row;
        float *yb = y + b * x->row;
        uint8_t *mb = d->mask + b * x->row;
        for (int64_t i = 0; i < x->row; i++) {
            bool keep = rng_uniform_f(&r) >= rate;
            mb[i] = keep;
            yb[i] = keep ? xb[i] * scale : 0.0f;
        }
    }
    return ERR_OK;
}

int layer__dropout_backward(layer_net *n, lnode *d, int64_t rows, err_info *e)
{
    (void)e;
    if (!d->in[0].dx)
        return ERR_OK;
    ltensor *x = layer__in(n, d, 0);
    const float *dy = layer__out(n, d, 0)->grad;
    float scale = (float)(1.0 / (1.0 - layer__L(n, d)->cfg.rate));
    int64_t cnt = rows * x->row;
    if (d->in[0].acc) {
        for (int64_t i = 0; i < cnt; i++)
            x->grad[i] += d->mask[i] ? dy[i] * scale : 0.0f;
    } else {
        for (int64_t i = 0; i < cnt; i++)
            x->grad[i] = d->mask[i] ? dy[i] * scale : 0.0f;
    }
    return ERR_OK;
}

/* ---- Flatten: a view of its input, except channels_first (Keras moves the channels last
 * before flattening: [n, c, s...] -> [n, s..., c]). p[0] = channels, p[1] = spatial size. */

int layer__flatten_plan(layer_net *n, lnode *d, err_info *e)
{
    int rc = expect_inputs(n, d, 1, e);
    if (rc != ERR_OK)
        return rc;
    const ltensor *x = layer__in(n, d, 0);
    int64_t want[2] = {-1, x->row};
    if ((rc = layer__expect_out(n, d, 2, want, e)) != ERR_OK)
        return rc;
    if (layer__L(n, d)->cfg.channels_first && x->rank > 2) {
        d->cf = true;
        d->p[0] = x->dims[1];
        d->p[1] = x->dims[1] > 0 ? x->row / x->dims[1] : 0;
        return ERR_OK;
    }
    d->alias = true;
    return ERR_OK;
}

int layer__flatten_forward(layer_net *n, lnode *d, int64_t rows, bool training, err_info *e)
{
    (void)training, (void)e;
    layer__transpose(rows, d->p[0], d->p[1], layer__in(n, d, 0)->val, layer__out(n, d, 0)->val,
                     false);
    return ERR_OK;
}

int layer__flatten_backward(layer_net *n, lnode *d, int64_t rows, err_info *e)
{
    (void)e;
    if (d->in[0].dx)
        layer__transpose(rows, d->p[1], d->p[0], layer__out(n, d, 0)->grad,
                         layer__in(n, d, 0)->grad, d->in[0].acc);
    return ERR_OK;
}

/* ---- Reshape: always a view (row-major order is unchanged) ---- */

int layer__reshape_plan(layer_net *n, lnode *d, err_info *e)
{
    int rc = expect_inputs(n, d, 1, e);
    if (rc != ERR_OK)
        return rc;
    const ltensor *x = layer__in(n, d, 0), *y = layer__out(n, d, 0);
    if (x->row != y->row)
        return layer__err(e, n, d, ERR_SHAPE, "%lld elements per row in, %lld out",
                          (long long)x->row, (long long)y->row);
    d->alias = true;
    return ERR_OK;
}

int layer__reshape_forward(layer_net *n, lnode *d, int64_t rows, bool training, err_info *e)
{
    (void)n, (void)d, (void)rows, (void)training, (void)e;
    return ERR_OK;
}

int layer__reshape_backward(layer_net *n, lnode *d, int64_t rows, err_info *e)
{
    (void)n, (void)d, (void)rows, (void)e;
    return ERR_OK;
}
