#include "trainer/layers.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trainer/layers_impl.h"

/* ---- dispatch (STYLE.md section 7): one row per layer kind ---- */

#define OPS(kind, diff)                                                                            \
    {                                                                                              \
        layer__##kind##_plan, layer__##kind##_forward, layer__##kind##_backward, diff              \
    }

static const layer_ops LAYER_OPS[] = {
    [LAYER_INPUT] = OPS(input, true),
    [LAYER_DENSE] = OPS(dense, true),
    [LAYER_CONV2D] = OPS(conv, true),
    [LAYER_CONV1D] = OPS(conv, true),
    [LAYER_MAXPOOL2D] = OPS(pool, true),
    [LAYER_AVGPOOL2D] = OPS(pool, true),
    [LAYER_GAP2D] = OPS(gpool, true),
    [LAYER_GMP2D] = OPS(gpool, true),
    [LAYER_MAXPOOL1D] = OPS(pool, true),
    [LAYER_AVGPOOL1D] = OPS(pool, true),
    [LAYER_GAP1D] = OPS(gpool, true),
    [LAYER_GMP1D] = OPS(gpool, true),
    [LAYER_FLATTEN] = OPS(flatten, true),
    [LAYER_RESHAPE] = OPS(reshape, true),
    [LAYER_DROPOUT] = OPS(dropout, true),
    [LAYER_ACTIVATION] = OPS(activation, true),
    [LAYER_BATCHNORM] = OPS(batchnorm, true),
    [LAYER_ZEROPAD2D] = OPS(zeropad, true),
    [LAYER_RELU] = OPS(relu, true),
    [LAYER_LEAKYRELU] = OPS(leakyrelu, true),
    [LAYER_SOFTMAX] = OPS(softmax, true),
    [LAYER_ELU] = OPS(elu, true),
    [LAYER_ADD] = OPS(merge, true),
    [LAYER_SUBTRACT] = OPS(merge, true),
    [LAYER_MULTIPLY] = OPS(merge, true),
    [LAYER_AVERAGE] = OPS(merge, true),
    [LAYER_CONCAT] = OPS(concat, true),
    /* Ids are not differentiable: nothing flows back into an Embedding's input. */
    [LAYER_EMBEDDING] = OPS(embedding, false),
    [LAYER_SIMPLERNN] = {layer_rnn_plan, layer_rnn_forward, layer_rnn_backward, true},
    [LAYER_LSTM] = {layer_rnn_plan, layer_rnn_forward, layer_rnn_backward, true},
    [LAYER_GRU] = {layer_rnn_plan, layer_rnn_forward, layer_rnn_backward, true},
};
_Static_assert(sizeof LAYER_OPS / sizeof LAYER_OPS[0] == LAYER_COUNT, "one entry per layer kind");

const layer_ops *layer__ops(layer_kind k)
{
    return (int)k >= 0 && k < LAYER_COUNT ? &LAYER_OPS[k] : NULL;
}

/* ---- helpers shared by the kinds ---- */

int layer__err(err_info *e, const layer_net *n, const lnode *d, int code, const char *fmt, ...)
{
    char msg[ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const model_layer *L = layer__L(n, d);
    if (L->n_nodes > 1)
        return err_set(e, (err_code)code, "layer \"%s\" (%s), call %d: %s", L->name,
                       model_kind_class_name(L->kind), d->node, msg);
    return err_set(e, (err_code)code, "layer \"%s\" (%s): %s", L->name,
                   model_kind_class_name(L->kind), msg);
}

static char *shape_str(int rank, const int64_t *dims, char *buf, size_t len)
{
    return tensor_shape_str(rank, dims, buf, len);
}

int layer__weight(layer_net *n, lnode *d, int k, const char *name, bool required, int rank,
                  const int64_t *dims, err_info *e)
{
    const model *m = n->m;
    int w = model_weight_find(m, d->layer, name);
    if (w < 0) {
        if (!required)
            return ERR_OK;
        return layer__err(e, n, d, ERR_CONFIG, "missing weight \"%s\"", name);
    }
    const model_weight *mw = &m->weights[w];
    bool same = mw->rank == rank;
    for (int i = 0; same && i < rank; i++)
        same = mw->shape[i] == dims[i];
    if (!same) {
        char a[128], b[128];
        return layer__err(e, n, d, ERR_SHAPE, "weight \"%s\" has shape %s, expected %s", name,
                          shape_str(mw->rank, mw->shape, a, sizeof a),
                          shape_str(rank, dims, b, sizeof b));
    }
    /* A broken offset is model.c's bug, not bad input. */
    CHECK(mw->offset + mw->count <= m->n_params);
    CHECK(!mw->trainable || mw->offset + mw->count <= m->n_trainable);
    d->w[k] = mw->offset;
    d->w_train[k] = mw->trainable && n->training;
    return ERR_OK;
}

int layer__expect_out(const layer_net *n, const lnode *d, int rank, const int64_t *dims,
                      err_info *e)
{
    const ltensor *y = layer__out(n, d, 0);
    bool same = y->rank == rank;
    for (int i = 1; same && i < rank; i++)
        same = y->dims[i] == dims[i];
    if (!same) {
        char a[128], b[128];
        int64_t want[TENSOR_MAX_RANK];
        memcpy(want, dims, sizeof(int64_t) * (size_t)rank);
        want[0] = -1;
        return layer__err(
            e, n, d, ERR_SHAPE, "output shape %s, expected %s from the layer's input and config",
            shape_str(y->rank, y->dims, a, sizeof a), shape_str(rank, want, b, sizeof b));
    }
    return ERR_OK;
}

void layer__put(float *dst, const float *src, int64_t count, bool acc)
{
    if (acc) {
        for (int64_t i = 0; i < count; i++)
            dst[i] += src[i];
    } else if (dst != src) {
        memcpy(dst, src, sizeof(float) * (size_t)count);
    }
}

void layer__put_scaled(float *dst, const float *src, float s, int64_t count, bool acc)
{
    if (acc) {
        for (int64_t i = 0; i < count; i++)
            dst[i] += s * src[i];
    } else {
        for (int64_t i = 0; i < count; i++)
            dst[i] = s * src[i];
    }
}

void layer__transpose(int64_t b, int64_t r, int64_t c, const float *in, float *out, bool acc)
{
    /* Blocked so that both sides stay in cache for large planes. */
    const int64_t blk = 32;
    for (int64_t k = 0; k < b; k++) {
        const float *src = in + k * r * c;
        float *dst = out + k * r * c;
        for (int64_t i0 = 0; i0 < r; i0 += blk) {
            int64_t i1 = i0 + blk < r ? i0 + blk : r;
            for (int64_t j0 = 0; j0 < c; j0 += blk) {
                int64_t j1 = j0 + blk < c ? j0 + blk : c;
                for (int64_t i = i0; i < i1; i++) {
                    for (int64_t j = j0; j < j1; j++) {
                        if (acc)
                            dst[j * r + i] += src[i * c + j];
                        else
                            dst[j * r + i] = src[i * c + j];
                    }
                }
            }
        }
    }
}

/* ---- planning ---- */

static int tensor_id(const layer_net *n, model_ref r)
{
    return (n->node_base[r.layer] + r.node) * MODEL_NODE_MAX_OUT + r.tensor;
}

/* Validates a reference against the model and the tensors produced so far. */
static int ref_check(const layer_net *n, model_ref r, const char *what, err_info *e)
{
    const model *m = n->m;
    if (r.layer < 0 || r.layer >= m->n_layers || r.node < 0 ||
        r.node >= m->layers[r.layer].n_nodes || r.tensor < 0 || r.tensor >= MODEL_NODE_MAX_OUT)
        return err_set(e, ERR_INTERNAL, "%s: reference {%d, %d, %d} out of range", what, r.layer,
                       r.node, r.tensor);
    if (!n->tensors[tensor_id(n, r)].exists)
        return err_set(e, ERR_INTERNAL,
                       "%s: tensor %d of call %d of layer \"%s\" is used before it is computed",
                       what, r.tensor, r.node, m->layers[r.layer].name);
    return ERR_OK;
}

static size_t align_up(size_t v)
{
    return (v + 63) & ~(size_t)63;
}

/* *off += bytes (aligned), failing on overflow. */
static int arena_add(size_t *off, size_t count, size_t elem, err_info *e)
{
    if (count != 0 && elem > (SIZE_MAX - 64 - *off) / count)
        return err_set(e, ERR_NOMEM, "step memory plan overflows size_t");
    *off = align_up(*off + count * elem);
    return ERR_OK;
}

static int cmp_range_desc(const void *a, const void *b)
{
    const lrange *x = a, *y = b;
    return x->lo < y->lo ? 1 : (x->lo > y->lo ? -1 : 0);
}

static int plan_graph(layer_net *n, err_info *e)
{
    model *m = n->m;
    int total = 0;
    n->node_base = calloc((size_t)m->n_layers + 1, sizeof(int));
    if (n->node_base == NULL)
        return err_set(e, ERR_NOMEM, "layer net");
    for (int l = 0; l < m->n_layers; l++) {
        n->node_base[l] = total;
        total += m->layers[l].n_nodes;
    }
    n->n_tensors = total * MODEL_NODE_MAX_OUT;
    n->n_nodes = m->n_order;
    n->tensors = calloc((size_t)n->n_tensors + 1, sizeof(ltensor));
    n->nodes = calloc((size_t)n->n_nodes + 1, sizeof(lnode));
    n->in_t = calloc((size_t)m->n_inputs + 1, sizeof(int));
    n->out_t = calloc((size_t)m->n_outputs + 1, sizeof(int));
    n->out_extra = calloc((size_t)m->n_outputs + 1, sizeof(float *));
    n->layer_done = calloc((size_t)m->n_layers + 1, sizeof(bool));
    n->layer_bwd = calloc((size_t)m->n_layers + 1, sizeof(bool));
    n->zero_t = calloc((size_t)n->n_tensors + 1, sizeof(int));
    n->ranges = calloc((size_t)m->n_layers + 1, sizeof(lrange));
    if (n->tensors == NULL || n->nodes == NULL || n->in_t == NULL || n->out_t == NULL ||
        n->out_extra == NULL || n->layer_done == NULL || n->layer_bwd == NULL ||
        n->zero_t == NULL || n->ranges == NULL)
        return err_set(e, ERR_NOMEM, "layer net of %d nodes", n->n_nodes);

    /* Nodes in dependency order with their input references and output shapes. */
    for (int k = 0; k < n->n_nodes; k++) {
        lnode *d = &n->nodes[k];
        model_ref r = m->order[k];
        if (r.layer < 0 || r.layer >= m->n_layers || r.node < 0 ||
            r.node >= m->layers[r.layer].n_nodes)
            return err_set(e, ERR_INTERNAL, "model order entry %d out of range", k);
        d->layer = r.layer;
        d->node = r.node;
        for (int i = 0; i < 4; i++)
            d->w[i] = LAYER_NO_WEIGHT;
        const model_layer *L = &m->layers[r.layer];
        const model_node *mn = &L->nodes[r.node];
        d->n_in = mn->n_in;
        d->in = calloc((size_t)mn->n_in + 1, sizeof(lslot));
        if (d->in == NULL)
            return err_set(e, ERR_NOMEM, "layer net");
        for (int i = 0; i < mn->n_in; i++) {
            int rc = ref_check(n, mn->in[i], L->name, e);
            if (rc != ERR_OK)
                return rc;
            d->in[i].t = tensor_id(n, mn->in[i]);
        }
        if (mn->n_out < 1 || mn->n_out > MODEL_NODE_MAX_OUT)
            return err_set(e, ERR_INTERNAL, "layer \"%s\" call %d has %d outputs", L->name, r.node,
                           mn->n_out);
        d->n_out = mn->n_out;
        for (int i = 0; i < mn->n_out; i++) {
            int t = tensor_id(n, (model_ref){r.layer, r.node, i});
            ltensor *x = &n->tensors[t];
            d->out[i] = t;
            x->exists = true;
            x->node = k;
            x->group = t;
            x->rank = mn->out[i].rank;
            if (x->rank < 1 || x->rank > TENSOR_MAX_RANK)
                return layer__err(e, n, d, ERR_SHAPE, "output %d has rank %d", i, x->rank);
            memcpy(x->dims, mn->out[i].dims, sizeof x->dims);
            x->row = 1;
            for (int j = 1; j < x->rank; j++) {
                if (x->dims[j] < 0) {
                    char a[128];
                    return layer__err(e, n, d, ERR_SHAPE,
                                      "output shape %s has an unknown extent; the engine needs "
                                      "fixed shapes (give the input a full shape)",
                                      shape_str(x->rank, x->dims, a, sizeof a));
                }
                if (x->dims[j] != 0 && x->row > INT_MAX / x->dims[j])
                    return layer__err(e, n, d, ERR_UNSUPPORTED,
                                      "output of more than %d elements per row", INT_MAX);
                x->row *= x->dims[j];
            }
            /* Every extent handed to OpenBLAS must fit an int. */
            if (x->row > 0 && n->max_batch > INT_MAX / x->row)
                return layer__err(e, n, d, ERR_UNSUPPORTED,
                                  "batch of %lld rows of %lld elements exceeds %d elements",
                                  (long long)n->max_batch, (long long)x->row, INT_MAX);
        }
    }
    for (int i = 0; i < m->n_inputs; i++) {
        int rc = ref_check(n, m->inputs[i], "model input", e);
        if (rc != ERR_OK)
            return rc;
        n->in_t[i] = tensor_id(n, m->inputs[i]);
        if (m->layers[m->inputs[i].layer].kind != LAYER_INPUT)
            return err_set(e, ERR_CONFIG, "model input %d is layer \"%s\", not an InputLayer", i,
                           m->layers[m->inputs[i].layer].name);
    }
    for (int i = 0; i < m->n_outputs; i++) {
        int rc = ref_check(n, m->outputs[i], "model output", e);
        if (rc != ERR_OK)
            return rc;
        n->out_t[i] = tensor_id(n, m->outputs[i]);
    }

    /* Which layers own trainable weights (only a training net computes gradients). */
    bool *has_train = n->layer_done; /* borrowed as scratch, cleared below */
    for (int w = 0; w < m->n_weights; w++) {
        if (m->weights[w].trainable && n->training)
            has_train[m->weights[w].layer] = true;
    }
    /* Tracked: depends on a trainable weight, so a gradient may flow into it. */
    for (int k = 0; k < n->n_nodes; k++) {
        lnode *d = &n->nodes[k];
        bool tr = has_train[d->layer];
        if (LAYER_OPS[m->layers[d->layer].kind].diff_inputs) {
            for (int i = 0; i < d->n_in; i++)
                tr = tr || n->tensors[d->in[i].t].tracked;
        }
        for (int i = 0; i < d->n_out; i++)
            n->tensors[d->out[i]].tracked = tr;
    }
    /* Live: receives a gradient. A node runs backward when one of its outputs is live and it
     * has trainable weights or a tracked input. */
    if (n->training) {
        for (int i = 0; i < m->n_outputs; i++)
            n->tensors[n->out_t[i]].live = true;
        for (int k = n->n_nodes - 1; k >= 0; k--) {
            lnode *d = &n->nodes[k];
            bool live = false;
            for (int i = 0; i < d->n_out; i++)
                live = live || n->tensors[d->out[i]].live;
            bool diff = LAYER_OPS[m->layers[d->layer].kind].diff_inputs;
            bool need = has_train[d->layer];
            for (int i = 0; i < d->n_in; i++)
                need = need || (diff && n->tensors[d->in[i].t].tracked);
            d->bwd = live && need;
            if (!d->bwd)
                continue;
            for (int i = 0; i < d->n_in; i++) {
                d->in[i].dx = diff && n->tensors[d->in[i].t].tracked;
                if (d->in[i].dx)
                    n->tensors[d->in[i].t].live = true;
            }
        }
    }
    /* Trainable ranges per layer, for the ready callbacks. */
    for (int l = 0; l < m->n_layers; l++) {
        if (!has_train[l])
            continue;
        size_t lo = SIZE_MAX, hi = 0;
        for (int w = 0; w < m->n_weights; w++) {
            const model_weight *mw = &m->weights[w];
            if (mw->layer != l || !mw->trainable)
                continue;
            lo = mw->offset < lo ? mw->offset : lo;
            hi = mw->offset + mw->count > hi ? mw->offset + mw->count : hi;
        }
        if (lo >= hi)
            continue; /* only empty trainable weights */
        n->ranges[n->n_ranges++] = (lrange){lo, hi, l};
    }
    qsort(n->ranges, (size_t)n->n_ranges, sizeof(lrange), cmp_range_desc);
    for (int i = 0; i < n->n_ranges; i++) {
        CHECK(n->ranges[i].hi <= m->n_trainable);
        if (i > 0 && n->ranges[i].hi > n->ranges[i - 1].lo)
            return err_set(e, ERR_INTERNAL, "trainable weights of layers \"%s\" and \"%s\" overlap",
                           m->layers[n->ranges[i].layer].name,
                           m->layers[n->ranges[i - 1].layer].name);
    }
    memset(n->layer_done, 0, sizeof(bool) * (size_t)m->n_layers);
    return ERR_OK;
}

static int plan_kinds(layer_net *n, err_info *e)
{
    const model *m = n->m;
    for (int k = 0; k < n->n_nodes; k++) {
        lnode *d = &n->nodes[k];
        layer_kind kind = m->layers[d->layer].kind;
        if ((int)kind < 0 || kind >= LAYER_COUNT)
            return err_set(e, ERR_INTERNAL, "layer \"%s\" has kind %d", m->layers[d->layer].name,
                           (int)kind);
        if (kind != LAYER_INPUT && d->n_in < 1)
            return layer__err(e, n, d, ERR_CONFIG, "called without inputs");
        int rc = LAYER_OPS[kind].plan(n, d, e);
        if (rc != ERR_OK)
            return rc;
        if (d->alias) {
            ltensor *x = layer__in(n, d, 0), *y = layer__out(n, d, 0);
            CHECK(d->n_in == 1 && d->n_out == 1 && x->row == y->row);
            y->group = x->group;
        }
    }
    return ERR_OK;
}

/* Gradient bookkeeping: who writes each gradient buffer first (overwrite) and who adds. */
static int plan_grads(layer_net *n, bool *written, bool *need_grad, err_info *e)
{
    const model *m = n->m;
    (void)e;
    if (!n->training)
        return ERR_OK;
    /* The loss writes the output gradients first; a second output on the same buffer gets its
     * own and is added in at the start of backward. */
    for (int i = 0; i < m->n_outputs; i++) {
        int g = n->tensors[n->out_t[i]].group;
        need_grad[g] = true;
        if (written[g])
            n->out_extra[i] = (float *)1; /* placeholder: allocated below */
        written[g] = true;
    }
    for (int k = n->n_nodes - 1; k >= 0; k--) {
        lnode *d = &n->nodes[k];
        if (!d->bwd || d->alias)
            continue;
        for (int i = 0; i < d->n_out; i++) {
            ltensor *y = &n->tensors[d->out[i]];
            need_grad[y->group] = true;
            if (!y->live && !written[y->group]) {
                n->zero_t[n->n_zero_t++] = d->out[i];
                written[y->group] = true;
            }
        }
        for (int i = 0; i < d->n_in; i++) {
            if (!d->in[i].dx)
                continue;
            int g = n->tensors[d->in[i].t].group;
            need_grad[g] = true;
            d->in[i].acc = written[g];
            written[g] = true;
        }
    }
    /* First and last backward call per layer, so that shared layers accumulate and report
     * their range once. */
    bool *seen = n->layer_bwd;
    for (int k = n->n_nodes - 1; k >= 0; k--) {
        lnode *d = &n->nodes[k];
        if (!d->bwd || d->alias)
            continue;
        d->w_first = !seen[d->layer];
        seen[d->layer] = true;
    }
    bool *last = n->layer_done; /* scratch */
    for (int k = 0; k < n->n_nodes; k++) {
        lnode *d = &n->nodes[k];
        if (!d->bwd || d->alias)
            continue;
        d->w_last = !last[d->layer];
        last[d->layer] = true;
    }
    memset(n->layer_done, 0, sizeof(bool) * (size_t)m->n_layers);
    return ERR_OK;
}

/* ---- buffer lifetimes ----
 * Node outputs and their gradients live in one region where buffers whose lifetimes do not
 * overlap share memory (best fit among freed blocks; blocks are not split). Values of a
 * training net all live through the step (backward reads them); an inference net frees each
 * value after its last reader, keeping model inputs (written by the caller before forward) and
 * outputs. Gradients live from their first writer in backward to the backward of the node
 * that produced them; output gradients (written by the loss before backward) and gradients
 * zeroed at the start of backward live through the whole backward. */

typedef struct slab {
    size_t off, size;
    bool busy;
} slab;

typedef struct slabs {
    slab *b;
    int n;
    size_t total;
} slabs;

/* Offset of a block of at least `size` bytes (size is a multiple of 64). */
static size_t slab_take(slabs *s, size_t size)
{
    int best = -1;
    for (int i = 0; i < s->n; i++) {
        if (!s->b[i].busy && s->b[i].size >= size && (best < 0 || s->b[i].size < s->b[best].size))
            best = i;
    }
    if (best < 0) {
        best = s->n++;
        s->b[best] = (slab){s->total, size, false};
        s->total += size;
    }
    s->b[best].busy = true;
    return s->b[best].off;
}

static void slab_free(slabs *s, size_t off)
{
    for (int i = 0; i < s->n; i++) {
        if (s->b[i].off == off) {
            CHECK(s->b[i].busy);
            s->b[i].busy = false;
            return;
        }
    }
    CHECK(!"freed an unknown block");
}

/* Bytes of a [max_batch, row] float buffer, rounded up to 64; ERR_NOMEM on overflow. */
static int group_bytes(const layer_net *n, const ltensor *x, size_t *out, err_info *e)
{
    size_t cnt = (size_t)n->max_batch * (size_t)x->row;
    if (cnt > (SIZE_MAX - 64) / sizeof(float))
        return err_set(e, ERR_NOMEM, "step memory plan overflows size_t");
    *out = align_up(cnt * sizeof(float));
    return ERR_OK;
}

/* Offsets (relative to the region) of every group's value and gradient buffer. */
static int plan_lifetimes(layer_net *n, const bool *need_grad, size_t *val_off, size_t *grad_off,
                          size_t *total, err_info *e)
{
    const model *m = n->m;
    int nt = n->n_tensors, rc = ERR_OK;
    slabs s = {calloc((size_t)(2 * nt) + 1, sizeof(slab)), 0, 0};
    int *last = malloc(sizeof(int) * ((size_t)nt + 1));
    bool *perm = calloc((size_t)nt + 1, sizeof(bool));
    bool *started = calloc((size_t)nt + 1, sizeof(bool));
    if (s.b == NULL || last == NULL || perm == NULL || started == NULL) {
        rc = err_set(e, ERR_NOMEM, "layer net");
        goto done;
    }
    /* Values. */
    for (int t = 0; t < nt; t++)
        last[t] = -1;
    for (int k = 0; k < n->n_nodes; k++) {
        const lnode *d = &n->nodes[k];
        for (int i = 0; i < d->n_in; i++) {
            int g = n->tensors[d->in[i].t].group;
            last[g] = k > last[g] ? k : last[g];
        }
        for (int i = 0; i < d->n_out; i++) {
            int g = n->tensors[d->out[i]].group;
            last[g] = k > last[g] ? k : last[g];
        }
    }
    for (int i = 0; i < m->n_inputs; i++)
        perm[n->tensors[n->in_t[i]].group] = true;
    for (int i = 0; i < m->n_outputs; i++)
        perm[n->tensors[n->out_t[i]].group] = true;
    for (int k = 0; k < n->n_nodes; k++) {
        const lnode *d = &n->nodes[k];
        for (int i = 0; i < d->n_out; i++) {
            int t = d->out[i];
            if (n->tensors[t].group != t)
                continue;
            size_t bytes = 0;
            if ((rc = group_bytes(n, &n->tensors[t], &bytes, e)) != ERR_OK)
                goto done;
            val_off[t] = slab_take(&s, bytes);
        }
        if (n->training)
            continue;
        for (int i = 0; i < d->n_in + d->n_out; i++) {
            int t = i < d->n_in ? d->in[i].t : d->out[i - d->n_in];
            int g = n->tensors[t].group;
            if (!perm[g] && last[g] == k) {
                slab_free(&s, val_off[g]);
                last[g] = -2; /* freed (a tensor may appear twice in one call) */
            }
        }
    }
    if (!n->training)
        goto done;
    /* Gradients, walking backward. */
    memset(perm, 0, sizeof(bool) * (size_t)nt);
    for (int i = 0; i < m->n_outputs; i++)
        perm[n->tensors[n->out_t[i]].group] = true;
    for (int i = 0; i < n->n_zero_t; i++)
        perm[n->tensors[n->zero_t[i]].group] = true;
    for (int g = 0; g < nt; g++) {
        if (perm[g] && need_grad[g]) {
            size_t bytes = 0;
            if ((rc = group_bytes(n, &n->tensors[g], &bytes, e)) != ERR_OK)
                goto done;
            grad_off[g] = slab_take(&s, bytes);
            started[g] = true;
        }
    }
    for (int k = n->n_nodes - 1; k >= 0; k--) {
        const lnode *d = &n->nodes[k];
        if (!d->bwd || d->alias)
            continue;
        for (int i = 0; i < d->n_in; i++) {
            int g = n->tensors[d->in[i].t].group;
            if (!d->in[i].dx || started[g])
                continue;
            size_t bytes = 0;
            if ((rc = group_bytes(n, &n->tensors[g], &bytes, e)) != ERR_OK)
                goto done;
            grad_off[g] = slab_take(&s, bytes);
            started[g] = true;
        }
        for (int i = 0; i < d->n_out; i++) {
            int t = d->out[i];
            CHECK(n->tensors[t].group != t || !need_grad[t] || started[t]);
            if (n->tensors[t].group == t && need_grad[t] && !perm[t])
                slab_free(&s, grad_off[t]);
        }
    }
    for (int g = 0; g < nt; g++)
        CHECK(!need_grad[g] || started[g]);
done:
    *total = s.total;
    free(s.b);
    free(last);
    free(perm);
    free(started);
    return rc;
}

/* One allocation for everything; two passes over the same walk (sizes, then pointers). */
static int plan_memory(layer_net *n, const bool *need_grad, err_info *e)
{
    const model *m = n->m;
    size_t ws = 0, region = 0;
    for (int k = 0; k < n->n_nodes; k++)
        ws = n->nodes[k].need_ws > ws ? n->nodes[k].need_ws : ws;
    n->ws_floats = ws;
    size_t *val_off = calloc((size_t)n->n_tensors + 1, sizeof(size_t));
    size_t *grad_off = calloc((size_t)n->n_tensors + 1, sizeof(size_t));
    int rc = val_off != NULL && grad_off != NULL ? ERR_OK : err_set(e, ERR_NOMEM, "layer net");
    if (rc == ERR_OK)
        rc = plan_lifetimes(n, need_grad, val_off, grad_off, &region, e);
    char *base = NULL;
    for (int pass = 0; rc == ERR_OK && pass < 2; pass++) {
        size_t off = region;
#define TAKE(ptr, type, count)                                                                     \
    do {                                                                                           \
        if (pass == 1)                                                                             \
            (ptr) = (count) ? (type *)(void *)(base + off) : NULL;                                 \
        if ((rc = arena_add(&off, (size_t)(count), sizeof(type), e)) != ERR_OK)                    \
            goto done;                                                                             \
    } while (0)
        for (int i = 0; i < m->n_outputs; i++) {
            if (n->out_extra[i] != NULL) {
                size_t cnt = (size_t)n->max_batch * (size_t)n->tensors[n->out_t[i]].row;
                TAKE(n->out_extra[i], float, cnt);
            }
        }
        for (int k = 0; k < n->n_nodes; k++) {
            lnode *d = &n->nodes[k];
            TAKE(d->z, float, d->need_z);
            TAKE(d->xt, float, d->need_xt);
            TAKE(d->argmax, int32_t, d->need_argmax);
            TAKE(d->mask, uint8_t, d->need_mask);
            TAKE(d->stats, double, d->need_stats);
        }
        TAKE(n->ws, float, ws);
#undef TAKE
        if (pass == 0) {
            /* Zeroed and touched once, on huge pages where the kernel allows (tensor.h): the
             * step never page-faults, and unused rows stay deterministic. */
            n->arena_bytes = off;
            n->arena = tensor_alloc_big(off + 64);
            if (n->arena == NULL) {
                rc = err_set(e, ERR_NOMEM, "step memory plan of %zu bytes", off);
                goto done;
            }
            base = (char *)n->arena + (64 - ((uintptr_t)n->arena & 63)) % 64;
        }
    }
    if (rc != ERR_OK)
        goto done;
    for (int t = 0; t < n->n_tensors; t++) {
        ltensor *x = &n->tensors[t];
        if (!x->exists)
            continue;
        int g = x->group;
        x->val = (float *)(void *)(base + val_off[g]);
        x->grad = need_grad[g] ? (float *)(void *)(base + grad_off[g]) : NULL;
    }
    if (n->training && m->n_trainable > 0) {
        n->grads = n->grads_own = tensor_alloc_big(m->n_trainable * sizeof(float));
        if (n->grads == NULL)
            rc = err_set(e, ERR_NOMEM, "gradient buffer of %zu floats", m->n_trainable);
    }
done:
    free(val_off);
    free(grad_off);
    return rc;
}

int layer_net_create(model *m, int64_t max_batch, bool training, layer_net **out, err_info *e)
{
    if (m == NULL || !m->built)
        return err_set(e, ERR_INTERNAL, "layer_net_create: the model is not built");
    if (max_batch < 1)
        return err_set(e, ERR_USAGE, "layer_net_create: max_batch %lld must be positive",
                       (long long)max_batch);
    layer_net *n = calloc(1, sizeof *n);
    bool *written = NULL, *need_grad = NULL;
    if (n == NULL)
        return err_set(e, ERR_NOMEM, "layer net");
    n->m = m;
    n->max_batch = max_batch;
    n->training = training;
    n->update_moving = true;
    int rc = plan_graph(n, e);
    if (rc == ERR_OK)
        rc = plan_kinds(n, e);
    if (rc == ERR_OK) {
        written = calloc((size_t)n->n_tensors + 1, sizeof(bool));
        need_grad = calloc((size_t)n->n_tensors + 1, sizeof(bool));
        if (written == NULL || need_grad == NULL)
            rc = err_set(e, ERR_NOMEM, "layer net");
    }
    if (rc == ERR_OK)
        rc = plan_grads(n, written, need_grad, e);
    if (rc == ERR_OK)
        rc = plan_memory(n, need_grad, e);
    free(written);
    free(need_grad);
    if (rc != ERR_OK) {
        layer_net_destroy(n);
        return rc;
    }
    *out = n;
    return ERR_OK;
}

void layer_net_destroy(layer_net *n)
{
    if (n == NULL)
        return;
    for (int k = 0; n->nodes != NULL && k < n->n_nodes; k++)
        free(n->nodes[k].in);
    free(n->nodes);
    free(n->tensors);
    free(n->node_base);
    free(n->in_t);
    free(n->out_t);
    free(n->out_extra);
    free(n->zero_t);
    free(n->ranges);
    free(n->layer_done);
    free(n->layer_bwd);
    free(n->arena);
    free(n->grads_own);
    free(n);
}

int64_t layer_net_max_batch(const layer_net *n)
{
    return n->max_batch;
}

bool layer_net_training(const layer_net *n)
{
    return n->training;
}

size_t layer_net_bytes(const layer_net *n)
{
    return n->arena_bytes + (n->grads != NULL ? n->m->n_trainable * sizeof(float) : 0);
}

float *layer_net_input(layer_net *n, int i)
{
    CHECK(i >= 0 && i < n->m->n_inputs);
    return n->tensors[n->in_t[i]].val;
}

const float *layer_net_output(const layer_net *n, int i)
{
    CHECK(i >= 0 && i < n->m->n_outputs);
    return n->tensors[n->out_t[i]].val;
}

float *layer_net_output_grad(layer_net *n, int i)
{
    CHECK(i >= 0 && i < n->m->n_outputs);
    if (!n->training)
        return NULL;
    return n->out_extra[i] != NULL ? n->out_extra[i] : n->tensors[n->out_t[i]].grad;
}

float *layer_net_grads(layer_net *n)
{
    return n->grads;
}

void layer_net_set_grads(layer_net *n, float *buf)
{
    CHECK(n->training);
    n->grads = buf != NULL ? buf : n->grads_own;
}

void layer_net_set_reduce(layer_net *n, layer_reduce_fn fn, void *ctx)
{
    n->reduce = fn;
    n->reduce_ctx = ctx;
}

void layer_net_set_row_offset(layer_net *n, int64_t first_row)
{
    n->row0 = first_row;
}

void layer_net_set_update_moving(layer_net *n, bool update)
{
    n->update_moving = update;
}

int64_t layer_net_reduce_max(const layer_net *n)
{
    int64_t most = 0;
    for (int k = 0; k < n->n_nodes; k++)
        if (n->nodes[k].coll_fwd && n->nodes[k].red_n > most)
            most = n->nodes[k].red_n;
    return most;
}

/* ---- the step ---- */

int layer_net_forward(layer_net *n, int64_t rows, bool training, uint64_t seed, int64_t step,
                      err_info *e)
{
    n->fwd_ok = false;
    if (rows < 0 || rows > n->max_batch)
        return err_set(e, ERR_USAGE, "forward on %lld rows; the net was planned for 0 .. %lld",
                       (long long)rows, (long long)n->max_batch);
    if (training && !n->training)
        return err_set(e, ERR_USAGE, "training forward on a net planned for inference");
    n->seed = seed;
    n->step = step;
    int rc = ERR_OK;
    for (int k = 0; k < n->n_nodes; k++) {
        lnode *d = &n->nodes[k];
        if (rc != ERR_OK) {
            /* Keep the other ranks company in their collectives; the first error wins. */
            if (training && d->coll_fwd && n->reduce != NULL) {
                err_info ignored;
                (void)layer__batchnorm_dummy(n, d, true, &ignored);
            }
            continue;
        }
        if (d->alias)
            continue;
        rc = LAYER_OPS[n->m->layers[d->layer].kind].forward(n, d, rows, training, e);
    }
    n->fwd_rows = rows;
    n->fwd_training = training;
    n->fwd_ok = rc == ERR_OK;
    return rc;
}

/* Reports every range above the lowest layer still waiting, merged into one call. */
static int report_ready(layer_net *n, int *p, size_t *frontier, layer_grad_ready_fn ready,
                        void *ctx, err_info *e)
{
    int q = *p;
    while (q < n->n_ranges && n->layer_done[n->ranges[q].layer])
        q++;
    if (q == *p)
        return ERR_OK;
    size_t lo = n->ranges[q - 1].lo;
    if (q == n->n_ranges)
        lo = 0; /* the last call covers everything below, gaps included */
    int rc = ERR_OK;
    if (ready != NULL && lo < *frontier)
        rc = ready(ctx, lo, *frontier, e);
    *frontier = lo;
    *p = q;
    return rc;
}

int layer_net_backward(layer_net *n, int64_t rows, layer_grad_ready_fn ready, void *ctx,
                       err_info *e)
{
    const model *m = n->m;
    if (!n->training)
        return err_set(e, ERR_USAGE, "backward on a net planned for inference");
    if (!n->fwd_ok || !n->fwd_training || rows != n->fwd_rows)
        return err_set(e, ERR_USAGE,
                       "backward on %lld rows must follow a successful training forward on the "
                       "same rows",
                       (long long)rows);
    for (int i = 0; i < n->n_zero_t; i++) {
        ltensor *x = &n->tensors[n->zero_t[i]];
        memset(x->grad, 0, sizeof(float) * (size_t)(rows * x->row));
    }
    for (int i = 0; i < m->n_outputs; i++) {
        if (n->out_extra[i] != NULL) {
            ltensor *x = &n->tensors[n->out_t[i]];
            layer__put(x->grad, n->out_extra[i], rows * x->row, true);
        }
    }
    /* Trainable layers that no backward call reaches get zero gradients, and are final now. */
    for (int i = 0; i < n->n_ranges; i++) {
        const lrange *r = &n->ranges[i];
        n->layer_done[r->layer] = !n->layer_bwd[r->layer];
        if (!n->layer_bwd[r->layer])
            memset(n->grads + r->lo, 0, sizeof(float) * (r->hi - r->lo));
    }
    size_t frontier = m->n_trainable;
    int p = 0;
    int rc = report_ready(n, &p, &frontier, ready, ctx, e);
    bool ready_failed = rc != ERR_OK;
    for (int k = n->n_nodes - 1; k >= 0; k--) {
        lnode *d = &n->nodes[k];
        if (!d->bwd || d->alias)
            continue;
        if (rc == ERR_OK) {
            rc = LAYER_OPS[m->layers[d->layer].kind].backward(n, d, rows, e);
        } else if (d->coll_bwd && n->reduce != NULL) {
            err_info ignored;
            (void)layer__batchnorm_dummy(n, d, false, &ignored);
        }
        if (d->w_last)
            n->layer_done[d->layer] = true;
        if (!ready_failed) {
            /* After a local failure the ranges are still reported (with whatever they hold) so
             * that collectives started by the hook stay matched across ranks. */
            err_info tmp;
            int r2 = report_ready(n, &p, &frontier, ready, ctx, rc == ERR_OK ? e : &tmp);
            if (r2 != ERR_OK) {
                ready_failed = true;
                if (rc == ERR_OK)
                    rc = r2;
            }
        }
    }
    if (!ready_failed && frontier > 0) {
        CHECK(p == n->n_ranges);
        int r2 = ready != NULL ? ready(ctx, 0, frontier, rc == ERR_OK ? e : &(err_info){0}) : 0;
        if (rc == ERR_OK)
            rc = r2;
    }
    n->fwd_ok = false; /* backward consumed the output gradients */
    return rc;
}
