#include "trainer/model.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the kind table (STYLE.md section 7): the one list of Keras class names ---- */

static const char *const KIND_CLASS[] = {
    [LAYER_INPUT] = "InputLayer",
    [LAYER_DENSE] = "Dense",
    [LAYER_CONV2D] = "Conv2D",
    [LAYER_CONV1D] = "Conv1D",
    [LAYER_MAXPOOL2D] = "MaxPooling2D",
    [LAYER_AVGPOOL2D] = "AveragePooling2D",
    [LAYER_GAP2D] = "GlobalAveragePooling2D",
    [LAYER_GMP2D] = "GlobalMaxPooling2D",
    [LAYER_MAXPOOL1D] = "MaxPooling1D",
    [LAYER_AVGPOOL1D] = "AveragePooling1D",
    [LAYER_GAP1D] = "GlobalAveragePooling1D",
    [LAYER_GMP1D] = "GlobalMaxPooling1D",
    [LAYER_FLATTEN] = "Flatten",
    [LAYER_RESHAPE] = "Reshape",
    [LAYER_DROPOUT] = "Dropout",
    [LAYER_ACTIVATION] = "Activation",
    [LAYER_BATCHNORM] = "BatchNormalization",
    [LAYER_ZEROPAD2D] = "ZeroPadding2D",
    [LAYER_RELU] = "ReLU",
    [LAYER_LEAKYRELU] = "LeakyReLU",
    [LAYER_SOFTMAX] = "Softmax",
    [LAYER_ELU] = "ELU",
    [LAYER_ADD] = "Add",
    [LAYER_SUBTRACT] = "Subtract",
    [LAYER_MULTIPLY] = "Multiply",
    [LAYER_AVERAGE] = "Average",
    [LAYER_CONCAT] = "Concatenate",
    [LAYER_EMBEDDING] = "Embedding",
    [LAYER_SIMPLERNN] = "SimpleRNN",
    [LAYER_LSTM] = "LSTM",
    [LAYER_GRU] = "GRU",
};
_Static_assert(sizeof KIND_CLASS / sizeof KIND_CLASS[0] == LAYER_COUNT, "one entry per layer kind");

/* Keras's own aliases of the same classes (keras.layers exports both spellings). */
static const struct {
    const char *name;
    layer_kind kind;
} KIND_ALIASES[] = {
    {"MaxPool2D", LAYER_MAXPOOL2D},   {"AvgPool2D", LAYER_AVGPOOL2D},
    {"GlobalAvgPool2D", LAYER_GAP2D}, {"GlobalMaxPool2D", LAYER_GMP2D},
    {"MaxPool1D", LAYER_MAXPOOL1D},   {"AvgPool1D", LAYER_AVGPOOL1D},
    {"GlobalAvgPool1D", LAYER_GAP1D}, {"GlobalMaxPool1D", LAYER_GMP1D},
    {"Convolution2D", LAYER_CONV2D},  {"Convolution1D", LAYER_CONV1D},
};

const char *model_kind_class_name(layer_kind kind)
{
    return (int)kind >= 0 && kind < LAYER_COUNT ? KIND_CLASS[kind] : NULL;
}

int model_kind_from_class_name(const char *class_name)
{
    if (class_name == NULL)
        return -1;
    for (int k = 0; k < LAYER_COUNT; k++)
        if (KIND_CLASS[k] != NULL && strcmp(KIND_CLASS[k], class_name) == 0)
            return k;
    for (size_t i = 0; i < sizeof KIND_ALIASES / sizeof KIND_ALIASES[0]; i++)
        if (strcmp(KIND_ALIASES[i].name, class_name) == 0)
            return (int)KIND_ALIASES[i].kind;
    return -1;
}

static const char *const LOSS_NAMES[] = {
    [LOSS_NONE] = "none",
    [LOSS_SPARSE_CCE] = "sparse_categorical_crossentropy",
    [LOSS_CCE] = "categorical_crossentropy",
    [LOSS_BCE] = "binary_crossentropy",
    [LOSS_MSE] = "mean_squared_error",
    [LOSS_MAE] = "mean_absolute_error",
    [LOSS_HUBER] = "huber",
};
_Static_assert(sizeof LOSS_NAMES / sizeof LOSS_NAMES[0] == LOSS_COUNT, "one entry per loss");

static const char *const METRIC_NAMES[] = {
    [METRIC_ACCURACY] = "accuracy",
    [METRIC_SPARSE_CAT_ACC] = "sparse_categorical_accuracy",
    [METRIC_CAT_ACC] = "categorical_accuracy",
    [METRIC_BIN_ACC] = "binary_accuracy",
    [METRIC_MSE] = "mean_squared_error",
    [METRIC_MAE] = "mean_absolute_error",
};
_Static_assert(sizeof METRIC_NAMES / sizeof METRIC_NAMES[0] == METRIC_COUNT, "one per metric");

static const char *const OPTIM_NAMES[] = {
    [OPTIM_SGD] = "SGD",         [OPTIM_ADAM] = "Adam",       [OPTIM_ADAMW] = "AdamW",
    [OPTIM_RMSPROP] = "RMSprop", [OPTIM_ADAGRAD] = "Adagrad", [OPTIM_NADAM] = "Nadam",
};
_Static_assert(sizeof OPTIM_NAMES / sizeof OPTIM_NAMES[0] == OPTIM_COUNT, "one per optimizer");

static const char *const PAD_NAMES[] = {
    [PAD_VALID] = "valid",
    [PAD_SAME] = "same",
    [PAD_CAUSAL] = "causal",
};
_Static_assert(sizeof PAD_NAMES / sizeof PAD_NAMES[0] == PAD_COUNT, "one per padding");

static const char *const SCHED_NAMES[] = {
    [SCHED_CONSTANT] = "constant",
    [SCHED_EXPONENTIAL] = "ExponentialDecay",
    [SCHED_PIECEWISE] = "PiecewiseConstantDecay",
    [SCHED_COSINE] = "CosineDecay",
};
_Static_assert(sizeof SCHED_NAMES / sizeof SCHED_NAMES[0] == SCHED_COUNT, "one per schedule");

static const char *const INIT_NAMES[] = {
    [INIT_ZEROS] = "Zeros",
    [INIT_ONES] = "Ones",
    [INIT_CONSTANT] = "Constant",
    [INIT_RANDOM_UNIFORM] = "RandomUniform",
    [INIT_RANDOM_NORMAL] = "RandomNormal",
    [INIT_TRUNCATED_NORMAL] = "TruncatedNormal",
    [INIT_VARIANCE_SCALING] = "VarianceScaling",
    [INIT_ORTHOGONAL] = "Orthogonal",
    [INIT_IDENTITY] = "Identity",
};
_Static_assert(sizeof INIT_NAMES / sizeof INIT_NAMES[0] == INIT_COUNT, "one per initializer");

const char *model_loss_name(loss_kind k)
{
    return (int)k >= 0 && k < LOSS_COUNT ? LOSS_NAMES[k] : "?";
}

const char *model_metric_name(metric_kind k)
{
    return (int)k >= 0 && k < METRIC_COUNT ? METRIC_NAMES[k] : "?";
}

const char *model_optim_name(optim_kind k)
{
    return (int)k >= 0 && k < OPTIM_COUNT ? OPTIM_NAMES[k] : "?";
}

const char *model_pad_name(pad_kind k)
{
    return (int)k >= 0 && k < PAD_COUNT ? PAD_NAMES[k] : "?";
}

const char *model_sched_name(sched_kind k)
{
    return (int)k >= 0 && k < SCHED_COUNT ? SCHED_NAMES[k] : "?";
}

const char *model_init_class_name(init_kind k)
{
    return (int)k >= 0 && k < INIT_COUNT ? INIT_NAMES[k] : "?";
}

/* ---- defaults ---- */

static model_init init_plain(init_kind kind, double a, double b, const char *keras_name)
{
    model_init in;
    memset(&in, 0, sizeof in);
    in.kind = kind;
    in.a = a;
    in.b = b;
    in.mode = INIT_FAN_IN;
    in.dist = INIT_DIST_TRUNCATED_NORMAL;
    in.has_seed = false;
    in.seed = 0;
    snprintf(in.keras_name, sizeof in.keras_name, "%s", keras_name);
    return in;
}

static model_init init_vs(double scale, init_mode mode, init_dist dist, const char *keras_name)
{
    model_init in = init_plain(INIT_VARIANCE_SCALING, scale, 0.0, keras_name);
    in.mode = mode;
    in.dist = dist;
    return in;
}

model_init model_init_default(void)
{
    return init_vs(1.0, INIT_FAN_AVG, INIT_DIST_UNIFORM, "GlorotUniform");
}

layer_config layer_config_default(layer_kind kind)
{
    layer_config c;
    memset(&c, 0, sizeof c);
    for (int i = 0; i < 2; i++) {
        c.kernel_size[i] = 1;
        c.strides[i] = 1;
        c.dilation[i] = 1;
        c.pool_size[i] = 2;
        c.pool_strides[i] = 2;
    }
    c.padding = PAD_VALID;
    c.channels_first = false;
    c.use_bias = true;
    c.activation = ACT_LINEAR;
    c.recurrent_activation = ACT_SIGMOID;
    c.axis = -1;
    c.momentum = 0.99;
    c.epsilon = 1e-3;
    c.center = true;
    c.scale = true;
    c.rate = 0.0;
    c.dropout_seed = -1;
    c.target_rank = 0;
    c.alpha = 0.0;
    c.max_value = -1.0;
    c.negative_slope = 0.0;
    c.threshold = 0.0;
    c.kernel_init = model_init_default();
    c.bias_init = init_plain(INIT_ZEROS, 0, 0, "Zeros");
    c.recurrent_init = init_plain(INIT_ORTHOGONAL, 1.0, 0, "Orthogonal");
    c.embeddings_init = init_plain(INIT_RANDOM_UNIFORM, -0.05, 0.05, "RandomUniform");
    c.gamma_init = init_plain(INIT_ONES, 0, 0, "Ones");
    c.beta_init = init_plain(INIT_ZEROS, 0, 0, "Zeros");
    c.moving_mean_init = init_plain(INIT_ZEROS, 0, 0, "Zeros");
    c.moving_variance_init = init_plain(INIT_ONES, 0, 0, "Ones");
    switch (kind) {
    case LAYER_MAXPOOL1D:
    case LAYER_AVGPOOL1D:
        c.pool_size[1] = 1;
        c.pool_strides[1] = 1;
        break;
    case LAYER_LEAKYRELU:
        c.alpha = 0.3;
        break;
    case LAYER_ELU:
        c.alpha = 1.0;
        break;
    case LAYER_SIMPLERNN:
        c.activation = ACT_TANH;
        break;
    case LAYER_LSTM:
        c.activation = ACT_TANH;
        c.unit_forget_bias = true;
        break;
    case LAYER_GRU:
        c.activation = ACT_TANH;
        c.reset_after = true; /* the tf.keras 2 / Keras 3 default */
        break;
    case LAYER_INPUT:
    case LAYER_DENSE:
    case LAYER_CONV2D:
    case LAYER_CONV1D:
    case LAYER_MAXPOOL2D:
    case LAYER_AVGPOOL2D:
    case LAYER_GAP2D:
    case LAYER_GMP2D:
    case LAYER_GAP1D:
    case LAYER_GMP1D:
    case LAYER_FLATTEN:
    case LAYER_RESHAPE:
    case LAYER_DROPOUT:
    case LAYER_ACTIVATION:
    case LAYER_BATCHNORM:
    case LAYER_ZEROPAD2D:
    case LAYER_RELU:
    case LAYER_SOFTMAX:
    case LAYER_ADD:
    case LAYER_SUBTRACT:
    case LAYER_MULTIPLY:
    case LAYER_AVERAGE:
    case LAYER_CONCAT:
    case LAYER_EMBEDDING:
    case LAYER_COUNT:
        break;
    }
    return c;
}

model_optim_config model_optim_config_default(optim_kind kind)
{
    model_optim_config c;
    memset(&c, 0, sizeof c);
    c.kind = kind;
    c.lr.kind = SCHED_CONSTANT;
    c.lr.initial = 0.001;
    c.beta_1 = 0.9;
    c.beta_2 = 0.999;
    c.epsilon = 1e-7;
    c.rho = 0.9;
    c.initial_accumulator_value = 0.1;
    switch (kind) {
    case OPTIM_SGD:
        c.lr.initial = 0.01;
        break;
    case OPTIM_ADAMW:
        c.weight_decay = 0.004;
        break;
    case OPTIM_ADAM:
    case OPTIM_RMSPROP:
    case OPTIM_ADAGRAD:
    case OPTIM_NADAM:
    case OPTIM_COUNT:
        break;
    }
    return c;
}

/* ---- creation and graph editing ---- */

int model_create(model **out, err_info *e)
{
    model *m = calloc(1, sizeof *m);
    if (m == NULL)
        return err_set(e, ERR_NOMEM, "model_create: out of memory");
    m->train.optim = model_optim_config_default(OPTIM_RMSPROP); /* compile()'s default */
    *out = m;
    return ERR_OK;
}

void model_destroy(model *m)
{
    if (m == NULL)
        return;
    for (int i = 0; i < m->n_layers; i++) {
        for (int j = 0; j < m->layers[i].n_nodes; j++)
            free(m->layers[i].nodes[j].in);
        free(m->layers[i].nodes);
    }
    free(m->layers);
    free(m->inputs);
    free(m->outputs);
    free(m->order);
    free(m->weights);
    free(m->params);
    free(m->train.losses);
    free(m->train.loss_weights);
    free(m->opt.slots);
    free(m);
}

int model_layer_add(model *m, layer_kind kind, const char *name, int *index, err_info *e)
{
    if (m->built)
        return err_set(e, ERR_USAGE, "layer \"%s\": the model is already built", name);
    if ((int)kind < 0 || kind >= LAYER_COUNT)
        return err_set(e, ERR_USAGE, "layer \"%s\": invalid kind %d", name, (int)kind);
    size_t len = name != NULL ? strlen(name) : 0;
    if (len == 0)
        return err_set(e, ERR_CONFIG, "%s layer without a name", KIND_CLASS[kind]);
    if (len > MODEL_LAYER_NAME_MAX)
        return err_set(e, ERR_CONFIG,
                       "layer name \"%.40s...\" is %zu bytes long, at most %d allowed", name, len,
                       MODEL_LAYER_NAME_MAX);
    if (model_layer_find(m, name) >= 0)
        return err_set(e, ERR_CONFIG, "layer name \"%s\" is used twice (names must be unique)",
                       name);
    if (m->n_layers == m->cap_layers) {
        int cap = m->cap_layers ? 2 * m->cap_layers : 8;
        model_layer *p = realloc(m->layers, (size_t)cap * sizeof *p);
        if (p == NULL)
            return err_set(e, ERR_NOMEM, "layer \"%s\": out of memory", name);
        m->layers = p;
        m->cap_layers = cap;
    }
    model_layer *L = &m->layers[m->n_layers];
    memset(L, 0, sizeof *L);
    L->kind = kind;
    memcpy(L->name, name, len + 1);
    L->cfg = layer_config_default(kind);
    L->trainable = true;
    L->input_dtype = DTYPE_F32;
    L->weight0 = 0;
    L->n_weights = 0;
    if (index != NULL)
        *index = m->n_layers;
    m->n_layers++;
    return ERR_OK;
}

int model_node_add(model *m, int layer, int n_in, const model_ref *in, err_info *e)
{
    if (m->built)
        return err_set(e, ERR_USAGE, "node of layer %d: the model is already built", layer);
    if (layer < 0 || layer >= m->n_layers)
        return err_set(e, ERR_USAGE, "node of layer %d: no such layer (model has %d)", layer,
                       m->n_layers);
    model_layer *L = &m->layers[layer];
    if (n_in < 0 || (n_in > 0 && in == NULL))
        return err_set(e, ERR_USAGE, "layer \"%s\": invalid node inputs (%d)", L->name, n_in);
    model_ref *copy = NULL;
    if (n_in > 0) {
        copy = malloc((size_t)n_in * sizeof *copy);
        if (copy == NULL)
            return err_set(e, ERR_NOMEM, "layer \"%s\": out of memory", L->name);
        memcpy(copy, in, (size_t)n_in * sizeof *copy);
    }
    model_node *p = realloc(L->nodes, (size_t)(L->n_nodes + 1) * sizeof *p);
    if (p == NULL) {
        free(copy);
        return err_set(e, ERR_NOMEM, "layer \"%s\": out of memory", L->name);
    }
    L->nodes = p;
    model_node *nd = &L->nodes[L->n_nodes++];
    memset(nd, 0, sizeof *nd);
    nd->n_in = n_in;
    nd->in = copy;
    return ERR_OK;
}

static int refs_set(model *m, int n, const model_ref *refs, model_ref **dst, int *dst_n,
                    const char *what, err_info *e)
{
    if (m->built)
        return err_set(e, ERR_USAGE, "model %s: the model is already built", what);
    if (n < 0 || (n > 0 && refs == NULL))
        return err_set(e, ERR_USAGE, "model %s: invalid count %d", what, n);
    model_ref *copy = NULL;
    if (n > 0) {
        copy = malloc((size_t)n * sizeof *copy);
        if (copy == NULL)
            return err_set(e, ERR_NOMEM, "model %s: out of memory", what);
        memcpy(copy, refs, (size_t)n * sizeof *copy);
    }
    free(*dst);
    *dst = copy;
    *dst_n = n;
    return ERR_OK;
}

int model_inputs_set(model *m, int n, const model_ref *refs, err_info *e)
{
    return refs_set(m, n, refs, &m->inputs, &m->n_inputs, "inputs", e);
}

int model_outputs_set(model *m, int n, const model_ref *refs, err_info *e)
{
    return refs_set(m, n, refs, &m->outputs, &m->n_outputs, "outputs", e);
}

int model_layer_find(const model *m, const char *name)
{
    if (name == NULL)
        return -1;
    for (int i = 0; i < m->n_layers; i++)
        if (strcmp(m->layers[i].name, name) == 0)
            return i;
    return -1;
}

/* ---- shape inference ---- */

#define MAX_LAYER_WEIGHTS 4

typedef struct wspec {
    const char *name; /* short name */
    bool trainable;   /* before the layer's trainable flag is applied */
    int rank;
    int64_t shape[TENSOR_MAX_RANK];
} wspec;

typedef struct infer_ctx {
    const model *m;
    const model_layer *L;
    int node;
    int n_in;
    const model_shape *in[64]; /* borrowed */
    int n_out;
    model_shape out[MODEL_NODE_MAX_OUT];
    int n_w;
    wspec w[MAX_LAYER_WEIGHTS];
    err_info *e;
} infer_ctx;

static char *shape_str(const model_shape *s, char *buf, size_t len)
{
    return tensor_shape_str(s->rank, s->dims, buf, len);
}

/* An error naming the layer (and the call, for shared layers). */
static int ierr(infer_ctx *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int ierr(infer_ctx *c, int code, const char *fmt, ...)
{
    char msg[ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (c->L->n_nodes > 1)
        return err_set(c->e, code, "layer \"%s\" (%s, call %d): %s", c->L->name,
                       KIND_CLASS[c->L->kind], c->node, msg);
    return err_set(c->e, code, "layer \"%s\" (%s): %s", c->L->name, KIND_CLASS[c->L->kind], msg);
}

static void wadd(infer_ctx *c, const char *name, bool trainable, int rank, int64_t d0, int64_t d1,
                 int64_t d2, int64_t d3)
{
    CHECK(c->n_w < MAX_LAYER_WEIGHTS);
    wspec *w = &c->w[c->n_w++];
    memset(w, 0, sizeof *w);
    w->name = name;
    w->trainable = trainable;
    w->rank = rank;
    w->shape[0] = d0;
    w->shape[1] = d1;
    w->shape[2] = d2;
    w->shape[3] = d3;
}

static int need_inputs(infer_ctx *c, int lo, int hi)
{
    if (c->n_in < lo || c->n_in > hi) {
        if (lo == hi)
            return ierr(c, ERR_CONFIG, "called on %d input tensors, expected %d", c->n_in, lo);
        return ierr(c, ERR_CONFIG, "called on %d input tensors, expected %d to %d", c->n_in, lo,
                    hi);
    }
    return ERR_OK;
}

static int need_rank(infer_ctx *c, int rank, const char *what)
{
    const model_shape *s = c->in[0];
    if (s->rank != rank) {
        char b[128];
        return ierr(c, ERR_SHAPE, "input shape %s has rank %d, expected rank %d (%s)",
                    shape_str(s, b, sizeof b), s->rank, rank, what);
    }
    return ERR_OK;
}

/* Extent of the axis that carries weights (channels, features): must be known. */
static int need_known(infer_ctx *c, int axis, const char *what, int64_t *out)
{
    const model_shape *s = c->in[0];
    if (s->dims[axis] <= 0) {
        char b[128];
        return ierr(c, ERR_SHAPE, "input shape %s: the %s axis %d must be known",
                    shape_str(s, b, sizeof b), what, axis);
    }
    *out = s->dims[axis];
    return ERR_OK;
}

static int need_pos(infer_ctx *c, const char *what, int64_t v)
{
    if (v <= 0)
        return ierr(c, ERR_CONFIG, "%s is %lld, expected a positive value", what, (long long)v);
    return ERR_OK;
}

/* Keras conv_output_length / compute_conv_output_shape; pooling is the dilation-1 case. */
static int64_t window_out(int64_t len, int64_t k, int64_t s, int64_t d, pad_kind p)
{
    if (len < 0)
        return -1;
    int64_t dk = (k - 1) * d + 1;
    int64_t n = p == PAD_VALID ? len - dk + 1 : len;
    if (n <= 0)
        return 0;
    return (n + s - 1) / s;
}

/* Normalises a (possibly negative) feature axis of a rank-r shape into [1, r). */
static int norm_axis(infer_ctx *c, int axis, int rank, int *out)
{
    int a = axis < 0 ? rank + axis : axis;
    if (a < 1 || a >= rank) {
        char b[128];
        return ierr(c, ERR_CONFIG, "axis %d is out of range for input shape %s", axis,
                    shape_str(c->in[0], b, sizeof b));
    }
    *out = a;
    return ERR_OK;
}

static int infer_conv(infer_ctx *c, int nsp)
{
    const layer_config *g = &c->L->cfg;
    int rc;
    if ((rc = need_inputs(c, 1, 1)) ||
        (rc = need_rank(c, nsp + 2,
                        nsp == 2 ? "batch, rows, cols, channels" : "batch, steps, channels")))
        return rc;
    if ((rc = need_pos(c, "filters", g->filters)))
        return rc;
    if (nsp == 2 && g->padding == PAD_CAUSAL)
        return ierr(c, ERR_CONFIG, "padding \"causal\" is only valid for Conv1D");
    for (int i = 0; i < nsp; i++) {
        if ((rc = need_pos(c, "kernel_size", g->kernel_size[i])) ||
            (rc = need_pos(c, "strides", g->strides[i])) ||
            (rc = need_pos(c, "dilation_rate", g->dilation[i])))
            return rc;
        if (g->strides[i] > 1 && g->dilation[i] > 1)
            return ierr(c, ERR_CONFIG,
                        "strides > 1 together with dilation_rate > 1 (Keras refuses it)");
    }
    const model_shape *s = c->in[0];
    int ch = g->channels_first ? 1 : nsp + 1, sp0 = g->channels_first ? 2 : 1;
    int64_t cin = 0;
    if ((rc = need_known(c, ch, "channels", &cin)))
        return rc;
    model_shape o = *s;
    o.dims[ch] = g->filters;
    for (int i = 0; i < nsp; i++) {
        int64_t n = window_out(s->dims[sp0 + i], g->kernel_size[i], g->strides[i], g->dilation[i],
                               g->padding);
        if (n == 0) {
            char b[128];
            return ierr(c, ERR_SHAPE,
                        "input shape %s is too small for kernel_size %lld (dilation %lld, padding "
                        "\"%s\"): the output would be empty",
                        shape_str(s, b, sizeof b), (long long)g->kernel_size[i],
                        (long long)g->dilation[i], PAD_NAMES[g->padding]);
        }
        o.dims[sp0 + i] = n;
    }
    c->out[c->n_out++] = o;
    if (nsp == 2)
        wadd(c, "kernel", true, 4, g->kernel_size[0], g->kernel_size[1], cin, g->filters);
    else
        wadd(c, "kernel", true, 3, g->kernel_size[0], cin, g->filters, 0);
    if (g->use_bias)
        wadd(c, "bias", true, 1, g->filters, 0, 0, 0);
    return ERR_OK;
}

static int infer_pool(infer_ctx *c, int nsp)
{
    const layer_config *g = &c->L->cfg;
    int rc;
    if ((rc = need_inputs(c, 1, 1)) ||
        (rc = need_rank(c, nsp + 2,
                        nsp == 2 ? "batch, rows, cols, channels" : "batch, steps, channels")))
        return rc;
    if (g->padding == PAD_CAUSAL)
        return ierr(c, ERR_CONFIG, "padding \"causal\" is not valid for pooling");
    const model_shape *s = c->in[0];
    int sp0 = g->channels_first ? 2 : 1;
    model_shape o = *s;
    for (int i = 0; i < nsp; i++) {
        int64_t st = g->pool_strides[i] > 0 ? g->pool_strides[i] : g->pool_size[i];
        if ((rc = need_pos(c, "pool_size", g->pool_size[i])))
            return rc;
        int64_t n = window_out(s->dims[sp0 + i], g->pool_size[i], st, 1, g->padding);
        if (n == 0) {
            char b[128];
            return ierr(c, ERR_SHAPE,
                        "input shape %s is too small for pool_size %lld (padding \"%s\"): the "
                        "output would be empty",
                        shape_str(s, b, sizeof b), (long long)g->pool_size[i],
                        PAD_NAMES[g->padding]);
        }
        o.dims[sp0 + i] = n;
    }
    c->out[c->n_out++] = o;
    return ERR_OK;
}

static int infer_gpool(infer_ctx *c, int nsp)
{
    int rc;
    if ((rc = need_inputs(c, 1, 1)) || (rc = need_rank(c, nsp + 2, "batch, spatial..., channels")))
        return rc;
    const model_shape *s = c->in[0];
    model_shape o;
    memset(&o, 0, sizeof o);
    o.rank = 2;
    o.dims[0] = -1;
    o.dims[1] = s->dims[c->L->cfg.channels_first ? 1 : s->rank - 1];
    c->out[c->n_out++] = o;
    return ERR_OK;
}

static int infer_dense(infer_ctx *c)
{
    const layer_config *g = &c->L->cfg;
    int rc;
    if ((rc = need_inputs(c, 1, 1)) || (rc = need_pos(c, "units", g->units)))
        return rc;
    const model_shape *s = c->in[0];
    if (s->rank < 2) {
        char b[128];
        return ierr(c, ERR_SHAPE, "input shape %s has rank %d, expected at least 2",
                    shape_str(s, b, sizeof b), s->rank);
    }
    int64_t fin = 0;
    if ((rc = need_known(c, s->rank - 1, "last (feature)", &fin)))
        return rc;
    model_shape o = *s;
    o.dims[s->rank - 1] = g->units;
    c->out[c->n_out++] = o;
    wadd(c, "kernel", true, 2, fin, g->units, 0, 0);
    if (g->use_bias)
        wadd(c, "bias", true, 1, g->units, 0, 0, 0);
    return ERR_OK;
}

static int infer_identity(infer_ctx *c)
{
    int rc;
    if ((rc = need_inputs(c, 1, 1)))
        return rc;
    c->out[c->n_out++] = *c->in[0];
    return ERR_OK;
}

static int infer_softmax(infer_ctx *c)
{
    int rc, a = 0;
    if ((rc = need_inputs(c, 1, 1)) || (rc = norm_axis(c, c->L->cfg.axis, c->in[0]->rank, &a)))
        return rc;
    c->out[c->n_out++] = *c->in[0];
    return ERR_OK;
}

static int infer_batchnorm(infer_ctx *c)
{
    const layer_config *g = &c->L->cfg;
    int rc, a = 0;
    if ((rc = need_inputs(c, 1, 1)) || (rc = norm_axis(c, g->axis, c->in[0]->rank, &a)))
        return rc;
    int64_t ch = 0;
    if ((rc = need_known(c, a, "normalised", &ch)))
        return rc;
    if (!(g->epsilon > 0))
        return ierr(c, ERR_CONFIG, "epsilon %g must be positive", g->epsilon);
    c->out[c->n_out++] = *c->in[0];
    if (g->scale)
        wadd(c, "gamma", true, 1, ch, 0, 0, 0);
    if (g->center)
        wadd(c, "beta", true, 1, ch, 0, 0, 0);
    wadd(c, "moving_mean", false, 1, ch, 0, 0, 0);
    wadd(c, "moving_variance", false, 1, ch, 0, 0, 0);
    return ERR_OK;
}

static int infer_dropout(infer_ctx *c)
{
    const layer_config *g = &c->L->cfg;
    if (!(g->rate >= 0.0 && g->rate < 1.0))
        return ierr(c, ERR_CONFIG, "rate %g is outside [0, 1)", g->rate);
    return infer_identity(c);
}

static int infer_flatten(infer_ctx *c)
{
    int rc;
    if ((rc = need_inputs(c, 1, 1)))
        return rc;
    const model_shape *s = c->in[0];
    model_shape o;
    memset(&o, 0, sizeof o);
    o.rank = 2;
    o.dims[0] = -1;
    int64_t n = 1;
    for (int i = 1; i < s->rank; i++) {
        if (s->dims[i] < 0) {
            n = -1;
            break;
        }
        if (s->dims[i] > 0 && n > INT64_MAX / s->dims[i]) {
            char b[128];
            return ierr(c, ERR_RANGE, "input shape %s: element count overflows",
                        shape_str(s, b, sizeof b));
        }
        n *= s->dims[i];
    }
    o.dims[1] = n;
    c->out[c->n_out++] = o;
    return ERR_OK;
}

static int infer_reshape(infer_ctx *c)
{
    const layer_config *g = &c->L->cfg;
    int rc;
    if ((rc = need_inputs(c, 1, 1)))
        return rc;
    const model_shape *s = c->in[0];
    if (g->target_rank < 1 || g->target_rank >= TENSOR_MAX_RANK)
        return ierr(c, ERR_CONFIG, "target_shape has %d axes, expected 1 to %d", g->target_rank,
                    TENSOR_MAX_RANK - 1);
    int unknown = -1;
    int64_t known = 1;
    for (int i = 0; i < g->target_rank; i++) {
        int64_t d = g->target_shape[i];
        if (d == -1 && unknown < 0) {
            unknown = i;
            continue;
        }
        if (d <= 0)
            return ierr(c, ERR_CONFIG,
                        "target_shape[%d] is %lld, expected a positive extent or one -1", i,
                        (long long)d);
        if (known > INT64_MAX / d)
            return ierr(c, ERR_RANGE, "target_shape element count overflows");
        known *= d;
    }
    int64_t total = 1;
    for (int i = 1; i < s->rank && total >= 0; i++) {
        if (s->dims[i] < 0)
            total = -1;
        else if (s->dims[i] > 0 && total > INT64_MAX / s->dims[i])
            return ierr(c, ERR_RANGE, "input element count overflows");
        else
            total *= s->dims[i];
    }
    model_shape o;
    memset(&o, 0, sizeof o);
    o.rank = g->target_rank + 1;
    o.dims[0] = -1;
    for (int i = 0; i < g->target_rank; i++)
        o.dims[i + 1] = g->target_shape[i];
    if (total >= 0) {
        char b[128];
        if (unknown >= 0) {
            if (total % known != 0)
                return ierr(c, ERR_SHAPE,
                            "input shape %s (%lld elements) cannot be reshaped to a target with "
                            "%lld elements per -1",
                            shape_str(s, b, sizeof b), (long long)total, (long long)known);
            o.dims[unknown + 1] = total / known;
        } else if (total != known) {
            return ierr(c, ERR_SHAPE,
                        "input shape %s has %lld elements per sample, target_shape has %lld",
                        shape_str(s, b, sizeof b), (long long)total, (long long)known);
        }
    }
    c->out[c->n_out++] = o;
    return ERR_OK;
}

static int infer_zeropad(infer_ctx *c)
{
    const layer_config *g = &c->L->cfg;
    int rc;
    if ((rc = need_inputs(c, 1, 1)) || (rc = need_rank(c, 4, "batch, rows, cols, channels")))
        return rc;
    for (int i = 0; i < 4; i++)
        if (g->zero_pad[i] < 0)
            return ierr(c, ERR_CONFIG, "padding %lld is negative", (long long)g->zero_pad[i]);
    model_shape o = *c->in[0];
    int sp0 = g->channels_first ? 2 : 1;
    if (o.dims[sp0] >= 0)
        o.dims[sp0] += g->zero_pad[0] + g->zero_pad[1];
    if (o.dims[sp0 + 1] >= 0)
        o.dims[sp0 + 1] += g->zero_pad[2] + g->zero_pad[3];
    c->out[c->n_out++] = o;
    return ERR_OK;
}

static int infer_merge(infer_ctx *c)
{
    int rc;
    if (c->L->kind == LAYER_SUBTRACT)
        rc = need_inputs(c, 2, 2);
    else
        rc = need_inputs(c, 1, 64);
    if (rc)
        return rc;
    model_shape o = *c->in[0];
    for (int i = 1; i < c->n_in; i++) {
        const model_shape *s = c->in[i];
        bool ok = s->rank == o.rank;
        for (int d = 1; ok && d < o.rank; d++) {
            if (s->dims[d] >= 0 && o.dims[d] >= 0 && s->dims[d] != o.dims[d])
                ok = false;
            else if (o.dims[d] < 0)
                o.dims[d] = s->dims[d];
        }
        if (!ok) {
            char a[128], b[128];
            return ierr(c, ERR_SHAPE,
                        "input %d has shape %s, expected the same shape as input 0 %s", i,
                        shape_str(s, a, sizeof a), shape_str(c->in[0], b, sizeof b));
        }
    }
    c->out[c->n_out++] = o;
    return ERR_OK;
}

static int infer_concat(infer_ctx *c)
{
    int rc, a = 0;
    if ((rc = need_inputs(c, 1, 64)) || (rc = norm_axis(c, c->L->cfg.axis, c->in[0]->rank, &a)))
        return rc;
    model_shape o = *c->in[0];
    for (int i = 1; i < c->n_in; i++) {
        const model_shape *s = c->in[i];
        bool ok = s->rank == o.rank;
        for (int d = 1; ok && d < o.rank; d++) {
            if (d == a)
                o.dims[d] = o.dims[d] < 0 || s->dims[d] < 0 ? -1 : o.dims[d] + s->dims[d];
            else if (s->dims[d] >= 0 && o.dims[d] >= 0 && s->dims[d] != o.dims[d])
                ok = false;
            else if (o.dims[d] < 0)
                o.dims[d] = s->dims[d];
        }
        if (!ok) {
            char x[128], y[128];
            return ierr(c, ERR_SHAPE,
                        "input %d has shape %s, expected input 0's shape %s except on axis %d", i,
                        shape_str(s, x, sizeof x), shape_str(c->in[0], y, sizeof y),
                        c->L->cfg.axis);
        }
    }
    c->out[c->n_out++] = o;
    return ERR_OK;
}

static int infer_embedding(infer_ctx *c)
{
    const layer_config *g = &c->L->cfg;
    int rc;
    if ((rc = need_inputs(c, 1, 1)) || (rc = need_pos(c, "input_dim", g->input_dim)) ||
        (rc = need_pos(c, "output_dim", g->output_dim)))
        return rc;
    const model_shape *s = c->in[0];
    if (s->rank < 1 || s->rank >= TENSOR_MAX_RANK) {
        char b[128];
        return ierr(c, ERR_SHAPE, "input shape %s has rank %d, expected 1 to %d",
                    shape_str(s, b, sizeof b), s->rank, TENSOR_MAX_RANK - 1);
    }
    model_shape o = *s;
    o.dims[o.rank++] = g->output_dim;
    c->out[c->n_out++] = o;
    wadd(c, "embeddings", true, 2, g->input_dim, g->output_dim, 0, 0);
    return ERR_OK;
}

static int infer_rnn(infer_ctx *c)
{
    const layer_config *g = &c->L->cfg;
    layer_kind k = c->L->kind;
    int gates = k == LAYER_LSTM ? 4 : k == LAYER_GRU ? 3 : 1;
    int n_states = k == LAYER_LSTM ? 2 : 1;
    int rc;
    if ((rc = need_pos(c, "units", g->units)))
        return rc;
    if (c->n_in != 1 && c->n_in != 1 + n_states)
        return ierr(c, ERR_CONFIG,
                    "called on %d input tensors, expected 1 (the sequence) or %d (sequence and "
                    "initial states)",
                    c->n_in, 1 + n_states);
    if ((rc = need_rank(c, 3, "batch, timesteps, features")))
        return rc;
    if (g->stateful)
        return ierr(c, ERR_UNSUPPORTED, "stateful=True is not supported");
    if (!(g->dropout >= 0.0 && g->dropout < 1.0) ||
        !(g->recurrent_dropout >= 0.0 && g->recurrent_dropout < 1.0))
        return ierr(c, ERR_CONFIG, "dropout %g / recurrent_dropout %g outside [0, 1)", g->dropout,
                    g->recurrent_dropout);
    int64_t fin = 0;
    if ((rc = need_known(c, 2, "feature", &fin)))
        return rc;
    int64_t u = g->units;
    for (int i = 1; i < c->n_in; i++) {
        const model_shape *s = c->in[i];
        if (s->rank != 2 || (s->dims[1] >= 0 && s->dims[1] != u)) {
            char b[128];
            return ierr(c, ERR_SHAPE, "initial state %d has shape %s, expected [None, %lld]", i - 1,
                        shape_str(s, b, sizeof b), (long long)u);
        }
    }
    const model_shape *s = c->in[0];
    model_shape o;
    memset(&o, 0, sizeof o);
    o.dims[0] = -1;
    if (g->return_sequences) {
        o.rank = 3;
        o.dims[1] = s->dims[1];
        o.dims[2] = u;
    } else {
        o.rank = 2;
        o.dims[1] = u;
    }
    c->out[c->n_out++] = o;
    if (g->return_state) {
        model_shape st;
        memset(&st, 0, sizeof st);
        st.rank = 2;
        st.dims[0] = -1;
        st.dims[1] = u;
        for (int i = 0; i < n_states; i++)
            c->out[c->n_out++] = st;
    }
    wadd(c, "kernel", true, 2, fin, gates * u, 0, 0);
    wadd(c, "recurrent_kernel", true, 2, u, gates * u, 0, 0);
    if (g->use_bias) {
        if (k == LAYER_GRU && g->reset_after)
            wadd(c, "bias", true, 2, 2, gates * u, 0, 0);
        else
            wadd(c, "bias", true, 1, gates * u, 0, 0, 0);
    }
    return ERR_OK;
}

static int infer_input(infer_ctx *c)
{
    const model_layer *L = c->L;
    if (c->n_in != 0)
        return ierr(c, ERR_CONFIG, "an InputLayer takes no inputs, this call has %d", c->n_in);
    if (L->input_shape.rank < 1 || L->input_shape.rank > TENSOR_MAX_RANK)
        return ierr(c, ERR_CONFIG, "no batch_shape (rank %d)", L->input_shape.rank);
    model_shape o = L->input_shape;
    for (int i = 1; i < o.rank; i++)
        if (o.dims[i] < -1 || o.dims[i] == 0) {
            char b[128];
            return ierr(c, ERR_CONFIG, "batch_shape %s has an invalid extent",
                        shape_str(&o, b, sizeof b));
        }
    o.dims[0] = -1; /* the batch is chosen at run time */
    c->out[c->n_out++] = o;
    return ERR_OK;
}

static int infer_node(infer_ctx *c)
{
    switch (c->L->kind) {
    case LAYER_INPUT:
        return infer_input(c);
    case LAYER_DENSE:
        return infer_dense(c);
    case LAYER_CONV2D:
        return infer_conv(c, 2);
    case LAYER_CONV1D:
        return infer_conv(c, 1);
    case LAYER_MAXPOOL2D:
    case LAYER_AVGPOOL2D:
        return infer_pool(c, 2);
    case LAYER_MAXPOOL1D:
    case LAYER_AVGPOOL1D:
        return infer_pool(c, 1);
    case LAYER_GAP2D:
    case LAYER_GMP2D:
        return infer_gpool(c, 2);
    case LAYER_GAP1D:
    case LAYER_GMP1D:
        return infer_gpool(c, 1);
    case LAYER_FLATTEN:
        return infer_flatten(c);
    case LAYER_RESHAPE:
        return infer_reshape(c);
    case LAYER_DROPOUT:
        return infer_dropout(c);
    case LAYER_ACTIVATION:
    case LAYER_RELU:
    case LAYER_LEAKYRELU:
    case LAYER_ELU:
        return infer_identity(c);
    case LAYER_SOFTMAX:
        return infer_softmax(c);
    case LAYER_BATCHNORM:
        return infer_batchnorm(c);
    case LAYER_ZEROPAD2D:
        return infer_zeropad(c);
    case LAYER_ADD:
    case LAYER_SUBTRACT:
    case LAYER_MULTIPLY:
    case LAYER_AVERAGE:
        return infer_merge(c);
    case LAYER_CONCAT:
        return infer_concat(c);
    case LAYER_EMBEDDING:
        return infer_embedding(c);
    case LAYER_SIMPLERNN:
    case LAYER_LSTM:
    case LAYER_GRU:
        return infer_rnn(c);
    case LAYER_COUNT:
        break;
    }
    return ierr(c, ERR_INTERNAL, "unknown layer kind %d", (int)c->L->kind);
}

static const char *rnn_cell_name(layer_kind k)
{
    switch (k) {
    case LAYER_SIMPLERNN:
        return "simple_rnn_cell";
    case LAYER_LSTM:
        return "lstm_cell";
    case LAYER_GRU:
        return "gru_cell";
    default:
        return NULL;
    }
}

/* ---- build ---- */

static int ref_check(const model *m, const model_ref *r, const char *what, err_info *e)
{
    if (r->layer < 0 || r->layer >= m->n_layers)
        return err_set(e, ERR_CONFIG, "%s refers to layer %d, the model has %d layers", what,
                       r->layer, m->n_layers);
    const model_layer *L = &m->layers[r->layer];
    if (r->node < 0 || r->node >= L->n_nodes)
        return err_set(e, ERR_CONFIG, "%s refers to call %d of layer \"%s\", which has %d", what,
                       r->node, L->name, L->n_nodes);
    if (r->tensor < 0 || r->tensor >= MODEL_NODE_MAX_OUT)
        return err_set(e, ERR_CONFIG, "%s refers to output %d of layer \"%s\"", what, r->tensor,
                       L->name);
    return ERR_OK;
}

typedef struct build_tmp {
    int *node_base; /* per layer: index of its first node in the flat node numbering */
    bool *done;     /* per flat node */
    model_ref *order;
    wspec (*ws)[MAX_LAYER_WEIGHTS];
    int *n_ws;
    model_weight *weights;
    float *params;
} build_tmp;

static void build_tmp_free(build_tmp *t)
{
    free(t->node_base);
    free(t->done);
    free(t->order);
    free(t->ws);
    free(t->n_ws);
    free(t->weights);
    free(t->params);
}

static int weights_equal(const wspec *a, int na, const wspec *b, int nb)
{
    if (na != nb)
        return 0;
    for (int i = 0; i < na; i++) {
        if (a[i].rank != b[i].rank || strcmp(a[i].name, b[i].name) != 0)
            return 0;
        for (int d = 0; d < a[i].rank; d++)
            if (a[i].shape[d] != b[i].shape[d])
                return 0;
    }
    return 1;
}

static int build_graph(model *m, build_tmp *t, int *n_nodes_out, err_info *e)
{
    int total = 0;
    t->node_base = malloc(((size_t)m->n_layers + 1) * sizeof *t->node_base);
    if (t->node_base == NULL)
        return err_set(e, ERR_NOMEM, "model_build: out of memory");
    for (int i = 0; i < m->n_layers; i++) {
        const model_layer *L = &m->layers[i];
        if (L->n_nodes == 0)
            return err_set(e, ERR_CONFIG, "layer \"%s\" (%s) is never called (no inbound nodes)",
                           L->name, KIND_CLASS[L->kind]);
        if (L->kind == LAYER_INPUT && L->n_nodes != 1)
            return err_set(e, ERR_CONFIG, "InputLayer \"%s\" has %d calls, expected 1", L->name,
                           L->n_nodes);
        t->node_base[i] = total;
        if (total > INT32_MAX - L->n_nodes)
            return err_set(e, ERR_RANGE, "model_build: too many nodes");
        total += L->n_nodes;
        for (int j = 0; j < L->n_nodes; j++) {
            char what[MODEL_NAME_MAX + 64];
            for (int k = 0; k < L->nodes[j].n_in; k++) {
                snprintf(what, sizeof what, "layer \"%s\" call %d input %d", L->name, j, k);
                int rc = ref_check(m, &L->nodes[j].in[k], what, e);
                if (rc != ERR_OK)
                    return rc;
            }
        }
    }
    t->node_base[m->n_layers] = total;
    t->done = calloc((size_t)total + 1, sizeof *t->done);
    t->order = malloc(((size_t)total + 1) * sizeof *t->order);
    if (t->done == NULL || t->order == NULL)
        return err_set(e, ERR_NOMEM, "model_build: out of memory");
    /* Kahn's algorithm in repeated passes over the layer list: the order is deterministic and
     * keeps the config's layer order wherever the dependencies allow it. */
    int n = 0;
    for (;;) {
        int before = n;
        for (int i = 0; i < m->n_layers; i++) {
            const model_layer *L = &m->layers[i];
            for (int j = 0; j < L->n_nodes; j++) {
                if (t->done[t->node_base[i] + j])
                    continue;
                bool ready = true;
                for (int k = 0; ready && k < L->nodes[j].n_in; k++) {
                    const model_ref *r = &L->nodes[j].in[k];
                    ready = t->done[t->node_base[r->layer] + r->node];
                }
                if (!ready)
                    continue;
                t->done[t->node_base[i] + j] = true;
                t->order[n].layer = i;
                t->order[n].node = j;
                t->order[n].tensor = 0;
                n++;
            }
        }
        if (n == total)
            break;
        if (n == before) {
            for (int i = 0; i < m->n_layers; i++)
                for (int j = 0; j < m->layers[i].n_nodes; j++)
                    if (!t->done[t->node_base[i] + j])
                        return err_set(e, ERR_CONFIG,
                                       "layer \"%s\" call %d depends on its own output (the "
                                       "graph has a cycle)",
                                       m->layers[i].name, j);
        }
    }
    *n_nodes_out = total;
    return ERR_OK;
}

static int build_shapes(model *m, build_tmp *t, int n_nodes, err_info *e)
{
    t->ws = calloc((size_t)m->n_layers + 1, sizeof *t->ws);
    t->n_ws = calloc((size_t)m->n_layers + 1, sizeof *t->n_ws);
    if (t->ws == NULL || t->n_ws == NULL)
        return err_set(e, ERR_NOMEM, "model_build: out of memory");
    infer_ctx *c = malloc(sizeof *c);
    if (c == NULL)
        return err_set(e, ERR_NOMEM, "model_build: out of memory");
    int rc = ERR_OK;
    for (int o = 0; o < n_nodes && rc == ERR_OK; o++) {
        int li = t->order[o].layer, ni = t->order[o].node;
        model_layer *L = &m->layers[li];
        model_node *nd = &L->nodes[ni];
        memset(c, 0, sizeof *c);
        c->m = m;
        c->L = L;
        c->node = ni;
        c->e = e;
        if (nd->n_in > (int)(sizeof c->in / sizeof c->in[0])) {
            rc = ierr(c, ERR_UNSUPPORTED, "called on %d tensors, at most %d supported", nd->n_in,
                      (int)(sizeof c->in / sizeof c->in[0]));
            break;
        }
        c->n_in = nd->n_in;
        for (int k = 0; k < nd->n_in; k++) {
            const model_ref *r = &nd->in[k];
            const model_node *src = &m->layers[r->layer].nodes[r->node];
            if (r->tensor >= src->n_out) {
                rc = ierr(c, ERR_CONFIG,
                          "input %d refers to output %d of layer \"%s\", which has %d outputs", k,
                          r->tensor, m->layers[r->layer].name, src->n_out);
                break;
            }
            c->in[k] = &src->out[r->tensor];
        }
        if (rc != ERR_OK)
            break;
        if ((rc = infer_node(c)) != ERR_OK)
            break;
        nd->n_out = c->n_out;
        memcpy(nd->out, c->out, sizeof nd->out);
        if (ni == 0) {
            t->n_ws[li] = c->n_w;
            memcpy(t->ws[li], c->w, sizeof c->w);
        } else if (!weights_equal(t->ws[li], t->n_ws[li], c->w, c->n_w)) {
            char b[128];
            rc = ierr(c, ERR_SHAPE,
                      "input shape %s needs weights of other shapes than the layer's first call",
                      shape_str(c->in[0], b, sizeof b));
        }
    }
    free(c);
    return rc;
}

static int build_io(model *m, err_info *e)
{
    if (m->n_inputs < 1)
        return err_set(e, ERR_CONFIG, "the model has no inputs");
    if (m->n_outputs < 1)
        return err_set(e, ERR_CONFIG, "the model has no outputs");
    for (int i = 0; i < m->n_inputs; i++) {
        char what[64];
        snprintf(what, sizeof what, "model input %d", i);
        int rc = ref_check(m, &m->inputs[i], what, e);
        if (rc != ERR_OK)
            return rc;
        const model_layer *L = &m->layers[m->inputs[i].layer];
        if (L->kind != LAYER_INPUT || m->inputs[i].tensor != 0)
            return err_set(e, ERR_CONFIG,
                           "model input %d is layer \"%s\" (%s), expected an InputLayer", i,
                           L->name, KIND_CLASS[L->kind]);
        for (int j = 0; j < i; j++)
            if (m->inputs[j].layer == m->inputs[i].layer)
                return err_set(e, ERR_CONFIG, "InputLayer \"%s\" is listed twice as a model input",
                               L->name);
    }
    for (int i = 0; i < m->n_layers; i++) {
        if (m->layers[i].kind != LAYER_INPUT)
            continue;
        bool listed = false;
        for (int j = 0; j < m->n_inputs; j++)
            listed = listed || m->inputs[j].layer == i;
        if (!listed)
            return err_set(e, ERR_CONFIG, "InputLayer \"%s\" is not one of the model inputs",
                           m->layers[i].name);
    }
    for (int i = 0; i < m->n_outputs; i++) {
        char what[64];
        snprintf(what, sizeof what, "model output %d", i);
        int rc = ref_check(m, &m->outputs[i], what, e);
        if (rc != ERR_OK)
            return rc;
    }
    return ERR_OK;
}

static int build_weights(model *m, build_tmp *t, int *n_weights_out, size_t *n_params_out,
                         size_t *n_trainable_out, err_info *e)
{
    int nw = 0;
    for (int i = 0; i < m->n_layers; i++)
        nw += t->n_ws[i];
    t->weights = calloc((size_t)nw + 1, sizeof *t->weights);
    if (t->weights == NULL)
        return err_set(e, ERR_NOMEM, "model_build: out of memory");
    size_t n_train = 0, n_all = 0;
    int w = 0;
    for (int i = 0; i < m->n_layers; i++) {
        const model_layer *L = &m->layers[i];
        const char *cell = rnn_cell_name(L->kind);
        for (int k = 0; k < t->n_ws[i]; k++, w++) {
            const wspec *s = &t->ws[i][k];
            model_weight *W = &t->weights[w];
            int len = cell != NULL
                          ? snprintf(W->name, sizeof W->name, "%s/%s/%s:0", L->name, cell, s->name)
                          : snprintf(W->name, sizeof W->name, "%s/%s:0", L->name, s->name);
            CHECK(len > 0 && (size_t)len < sizeof W->name); /* names are capped in layer_add */
            W->layer = i;
            W->trainable = s->trainable && L->trainable;
            W->rank = s->rank;
            memcpy(W->shape, s->shape, sizeof W->shape);
            int64_t cnt;
            int rc = tensor_shape_count(s->rank, s->shape, &cnt, e);
            if (rc != ERR_OK)
                return err_wrap(e, "weight \"%s\"", W->name);
            W->count = (size_t)cnt;
            if (W->count > SIZE_MAX / sizeof(float) - n_all)
                return err_set(e, ERR_RANGE, "weight \"%s\": parameter count overflows", W->name);
            n_all += W->count;
            if (W->trainable)
                n_train += W->count;
        }
    }
    /* Offsets: the trainable group first, then the non-trainable one, each in layer order. */
    size_t off_t = 0, off_n = n_train;
    for (int i = 0; i < nw; i++) {
        model_weight *W = &t->weights[i];
        if (W->trainable) {
            W->offset = off_t;
            off_t += W->count;
        } else {
            W->offset = off_n;
            off_n += W->count;
        }
    }
    t->params = tensor_alloc_big((n_all + 1) * sizeof(float));
    if (t->params == NULL)
        return err_set(e, ERR_NOMEM, "model_build: %zu parameters: out of memory", n_all);
    *n_weights_out = nw;
    *n_params_out = n_all;
    *n_trainable_out = n_train;
    return ERR_OK;
}

int model_build(model *m, err_info *e)
{
    if (m->built)
        return err_set(e, ERR_USAGE, "model_build: the model is already built");
    /* An InputLayer has exactly one call with no inputs; add it if the caller did not. */
    for (int i = 0; i < m->n_layers; i++)
        if (m->layers[i].kind == LAYER_INPUT && m->layers[i].n_nodes == 0) {
            int rc = model_node_add(m, i, 0, NULL, e);
            if (rc != ERR_OK)
                return rc;
        }
    build_tmp t;
    memset(&t, 0, sizeof t);
    int n_nodes = 0, nw = 0;
    size_t n_params = 0, n_train = 0;
    int rc = ERR_OK;
    if (m->n_layers == 0) {
        rc = err_set(e, ERR_CONFIG, "the model has no layers");
        goto done;
    }
    if ((rc = build_graph(m, &t, &n_nodes, e)) != ERR_OK)
        goto done;
    if ((rc = build_io(m, e)) != ERR_OK)
        goto done;
    if ((rc = build_shapes(m, &t, n_nodes, e)) != ERR_OK)
        goto done;
    for (int i = 0; i < m->n_outputs; i++) {
        const model_ref *r = &m->outputs[i];
        const model_node *nd = &m->layers[r->layer].nodes[r->node];
        if (r->tensor >= nd->n_out) {
            rc = err_set(e, ERR_CONFIG,
                         "model output %d refers to output %d of layer \"%s\", which has %d", i,
                         r->tensor, m->layers[r->layer].name, nd->n_out);
            goto done;
        }
    }
    if ((rc = build_weights(m, &t, &nw, &n_params, &n_train, e)) != ERR_OK)
        goto done;
    int w = 0;
    for (int i = 0; i < m->n_layers; i++) {
        m->layers[i].weight0 = w;
        m->layers[i].n_weights = t.n_ws[i];
        w += t.n_ws[i];
    }
    free(m->order);
    free(m->weights);
    free(m->params);
    m->n_order = n_nodes;
    m->order = t.order;
    t.order = NULL;
    m->n_weights = nw;
    m->weights = t.weights;
    t.weights = NULL;
    m->n_params = n_params;
    m->n_trainable = n_train;
    m->params = t.params;
    t.params = NULL;
    m->built = true;
done:
    build_tmp_free(&t);
    return rc;
}

/* Re-runs shape inference over the built graph and checks the weights still fit. */
static int reinfer_shapes(model *m, err_info *e)
{
    build_tmp t;
    memset(&t, 0, sizeof t);
    t.order = malloc(sizeof *t.order * (size_t)(m->n_order > 0 ? m->n_order : 1));
    if (t.order == NULL)
        return err_set(e, ERR_NOMEM, "model_inputs_specialize: out of memory");
    memcpy(t.order, m->order, sizeof *t.order * (size_t)m->n_order);
    int rc = build_shapes(m, &t, m->n_order, e);
    for (int li = 0; rc == ERR_OK && li < m->n_layers; li++) {
        const model_layer *L = &m->layers[li];
        bool same = t.n_ws[li] == L->n_weights;
        for (int k = 0; same && k < L->n_weights; k++) {
            const model_weight *w = &m->weights[L->weight0 + k];
            same = t.ws[li][k].rank == w->rank &&
                   memcmp(t.ws[li][k].shape, w->shape, sizeof(int64_t) * (size_t)w->rank) == 0;
        }
        if (!same)
            rc = err_set(e, ERR_SHAPE,
                         "layer \"%s\": the given input shapes would change its weights' shapes",
                         L->name);
    }
    build_tmp_free(&t);
    return rc;
}

int model_inputs_specialize(model *m, const model_shape *rows, err_info *e)
{
    if (!m->built)
        return err_set(e, ERR_USAGE, "model_inputs_specialize: the model is not built");
    model_shape saved[64];
    if (m->n_inputs > 64)
        return err_set(e, ERR_UNSUPPORTED, "more than 64 model inputs");
    int rc = ERR_OK;
    for (int i = 0; i < m->n_inputs; i++)
        saved[i] = m->layers[m->inputs[i].layer].input_shape;
    for (int i = 0; i < m->n_inputs && rc == ERR_OK; i++) {
        model_layer *L = &m->layers[m->inputs[i].layer];
        model_shape *s = &L->input_shape;
        char a[128], b[128];
        if (rows[i].rank != s->rank - 1) {
            rc = err_set(e, ERR_SHAPE, "input \"%s\": rows of shape %s, the input is %s", L->name,
                         tensor_shape_str(rows[i].rank, rows[i].dims, a, sizeof a),
                         tensor_shape_str(s->rank, s->dims, b, sizeof b));
            break;
        }
        for (int d = 1; d < s->rank; d++) {
            if (s->dims[d] == -1) {
                s->dims[d] = rows[i].dims[d - 1];
            } else if (s->dims[d] != rows[i].dims[d - 1]) {
                rc = err_set(e, ERR_SHAPE, "input \"%s\": rows of shape %s, the input is %s",
                             L->name, tensor_shape_str(rows[i].rank, rows[i].dims, a, sizeof a),
                             tensor_shape_str(saved[i].rank, saved[i].dims, b, sizeof b));
                break;
            }
        }
    }
    if (rc == ERR_OK)
        rc = reinfer_shapes(m, e);
    if (rc != ERR_OK) {
        for (int i = 0; i < m->n_inputs; i++)
            m->layers[m->inputs[i].layer].input_shape = saved[i];
        err_info ignore;
        (void)reinfer_shapes(m, &ignore);
    }
    return rc;
}

/* ---- weights, state, training config ---- */

int model_weight_find(const model *m, int layer, const char *short_name)
{
    if (layer < 0 || layer >= m->n_layers || short_name == NULL)
        return -1;
    const model_layer *L = &m->layers[layer];
    size_t n = strlen(short_name);
    for (int w = L->weight0; w < L->weight0 + L->n_weights && w < m->n_weights; w++) {
        const char *nm = m->weights[w].name;
        const char *s = strrchr(nm, '/');
        s = s != NULL ? s + 1 : nm;
        if (strncmp(s, short_name, n) == 0 && (s[n] == ':' || s[n] == '\0'))
            return w;
    }
    return -1;
}

tensor model_weight_tensor(const model *m, int w)
{
    tensor t;
    memset(&t, 0, sizeof t);
    CHECK(w >= 0 && w < m->n_weights);
    const model_weight *W = &m->weights[w];
    t.dt = DTYPE_F32;
    t.rank = W->rank;
    memcpy(t.shape, W->shape, sizeof t.shape);
    t.data = m->params + W->offset;
    return t;
}

int model_opt_state_alloc(model *m, int n_slots, err_info *e)
{
    if (n_slots < 0 || n_slots > MODEL_MAX_SLOTS)
        return err_set(e, ERR_USAGE, "optimizer state: %d slots, expected 0 to %d", n_slots,
                       MODEL_MAX_SLOTS);
    float *slots = NULL;
    size_t n = (size_t)n_slots * m->n_trainable;
    if (n > 0) {
        slots = tensor_alloc_big(n * sizeof *slots);
        if (slots == NULL)
            return err_set(e, ERR_NOMEM, "optimizer state: %zu floats: out of memory", n);
    }
    free(m->opt.slots);
    memset(&m->opt, 0, sizeof m->opt);
    m->opt.n_slots = n_slots;
    m->opt.slots = slots;
    return ERR_OK;
}

int model_train_set_losses(model *m, int n, const model_loss *losses, const double *weights,
                           err_info *e)
{
    if (n < 0 || (n > 0 && losses == NULL))
        return err_set(e, ERR_USAGE, "training config: invalid loss count %d", n);
    model_loss *l = NULL;
    double *w = NULL;
    if (n > 0) {
        l = malloc((size_t)n * sizeof *l);
        w = malloc((size_t)n * sizeof *w);
        if (l == NULL || w == NULL) {
            free(l);
            free(w);
            return err_set(e, ERR_NOMEM, "training config: out of memory");
        }
        memcpy(l, losses, (size_t)n * sizeof *l);
        for (int i = 0; i < n; i++)
            w[i] = weights != NULL ? weights[i] : 1.0;
    }
    free(m->train.losses);
    free(m->train.loss_weights);
    m->train.losses = l;
    m->train.loss_weights = w;
    m->train.n_losses = n;
    m->train.compiled = true;
    return ERR_OK;
}
