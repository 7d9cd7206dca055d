/* Recurrent layers: SimpleRNN, LSTM, GRU (Keras 3 semantics, which equal tf.keras 2.x and
 * standalone Keras 2 for every option handled here).
 *
 * Weights (Keras layouts, gates concatenated along the last axis):
 *   kernel [features, G * units], recurrent_kernel [units, G * units],
 *   bias [G * units], or [2, 3 * units] for GRU(reset_after=True): row 0 is the input bias,
 *   row 1 the recurrent bias.
 * Gate order: LSTM i, f, c, o (G = 4); GRU z, r, h (G = 3); SimpleRNN one block (G = 1).
 *
 * One step, with x_t = inputs[:, t] kernel + input bias (precomputed for all steps in one
 * sgemm) and h, c the states before the step (keras/src/layers/rnn/{simple_rnn,lstm,gru}.py):
 *   SimpleRNN: h' = act(x_t + h U)
 *   LSTM:      z = x_t + h U; i, f, o = ract(z_i, z_f, z_o); c' = f c + i act(z_c);
 *              h' = o act(c')
 *   GRU after: m = h U + recurrent bias; z = ract(x_z + m_z); r = ract(x_r + m_r);
 *              hh = act(x_h + r * m_h); h' = z h + (1 - z) hh
 *   GRU before: z, r as above from h U[:, :2u] (no recurrent bias);
 *              hh = act(x_h + (r * h) U[:, 2u:]); h' = z h + (1 - z) hh
 *
 * go_backwards: the input (and the mask) is read from the last step to the first, and the
 * output sequence is written in processing order, i.e. reversed in time, as Keras returns it.
 * return_state: outputs [sequence or last output, h] (+ c for LSTM). Initial states: the node's
 * inputs 1 .. n_states (h, then c for LSTM), zeros otherwise.
 *
 * Masking: when the sequence comes from an Embedding(mask_zero=True), directly or through
 * layers that pass the mask on unchanged (Dropout, Activation, ReLU, LeakyReLU, ELU, Softmax,
 * Dense, BatchNormalization, a recurrent layer's returned sequence), a step whose id is 0 keeps
 * the states of the previous step and outputs the previous step's output (zeros before the
 * first unmasked step), as the TensorFlow backend does with zero_output_for_mask=False. A mask
 * that would have to be combined by a merge layer is refused (ERR_UNSUPPORTED).
 *
 * Training: a node that runs backward records every step (states, gate pre-activations and
 * activations) in its own buffer and backpropagates through time (see the backward section).
 * dropout / recurrent_dropout > 0 are refused when planning a training net: training mode would
 * apply Keras's dropout masks, which are not implemented (inference ignores both, as Keras does).
 * TODO(#3): dropout masks for training. */
#include "trainer/layers_impl.h"

#include <cblas.h>
#include <limits.h>
#include <string.h>

#include "kernels/kern_act.h"

/* p[] of a recurrent node. */
enum {
    P_T,    /* time steps */
    P_F,    /* input features */
    P_U,    /* units */
    P_G,    /* gate blocks */
    P_NST,  /* states: 2 for LSTM, 1 otherwise */
    P_MASK, /* tensor id of the Embedding ids that carry the mask, or -1 */
};

/* Weight slots. */
enum { W_KERNEL, W_RECURRENT, W_BIAS };

static int gates_of(layer_kind k)
{
    return k == LAYER_LSTM ? 4 : k == LAYER_GRU ? 3 : 1;
}

/* ---- mask source ---- */

/* Follows the mask Keras would attach to tensor t back to an Embedding(mask_zero=True).
 * *ids is set to the ids tensor (or stays -1 when no mask reaches t). */
static int mask_source(const layer_net *n, const lnode *d, int t, int depth, int *ids, err_info *e)
{
    if (depth > n->n_nodes)
        return layer__err(e, n, d, ERR_INTERNAL, "cycle while tracing the input mask");
    const ltensor *x = &n->tensors[t];
    const lnode *p = &n->nodes[x->node];
    const model_layer *L = &n->m->layers[p->layer];
    switch (L->kind) {
    case LAYER_EMBEDDING:
        if (L->cfg.mask_zero)
            *ids = p->in[0].t;
        return ERR_OK;
    case LAYER_DROPOUT:
    case LAYER_ACTIVATION:
    case LAYER_RELU:
    case LAYER_LEAKYRELU:
    case LAYER_ELU:
    case LAYER_SOFTMAX:
    case LAYER_DENSE:
    case LAYER_BATCHNORM:
        /* Keras layers with supports_masking and the default compute_mask: the mask passes. */
        return p->n_in == 1 ? mask_source(n, d, p->in[0].t, depth + 1, ids, e) : ERR_OK;
    case LAYER_SIMPLERNN:
    case LAYER_LSTM:
    case LAYER_GRU:
        /* RNN.compute_mask: the returned sequence keeps the mask, the states do not. */
        if (L->cfg.return_sequences && p->out[0] == t)
            return mask_source(n, d, p->in[0].t, depth + 1, ids, e);
        return ERR_OK;
    case LAYER_ADD:
    case LAYER_SUBTRACT:
    case LAYER_MULTIPLY:
    case LAYER_AVERAGE:
    case LAYER_CONCAT:
        for (int i = 0; i < p->n_in; i++) {
            int sub = -1;
            int rc = mask_source(n, d, p->in[i].t, depth + 1, &sub, e);
            if (rc != ERR_OK)
                return rc;
            if (sub >= 0)
                return layer__err(e, n, d, ERR_UNSUPPORTED,
                                  "the mask of an Embedding(mask_zero=True) reaches this layer "
                                  "through merge layer \"%s\"; combining masks is not supported",
                                  L->name);
        }
        return ERR_OK;
    case LAYER_INPUT:
    case LAYER_CONV2D:
    case LAYER_CONV1D:
    case LAYER_MAXPOOL2D:
    case LAYER_AVGPOOL2D:
    case LAYER_GAP2D:
    case LAYER_GMP2D:
    case LAYER_MAXPOOL1D:
    case LAYER_AVGPOOL1D:
    case LAYER_GAP1D:
    case LAYER_GMP1D:
    case LAYER_FLATTEN:
    case LAYER_RESHAPE:
    case LAYER_ZEROPAD2D:
    case LAYER_COUNT:
        /* No mask, or Keras drops it here (layers without masking support). */
        return ERR_OK;
    }
    return ERR_OK;
}

/* ---- memory ----
 * Shared scratch (n->ws), in floats, for mb = max_batch rows. Forward:
 *   xw   [mb, T, G u]  inputs times kernel plus input bias, all steps
 *   hw   [mb, G u]     states times recurrent kernel of one step
 *   seen [mb]          1 once a row had an unmasked step
 *   h, c [2, mb, u]    states before / after the step (alternating; when not recording)
 *   pre  [mb, G u]     gate pre-activations of the step (when not recording)
 *   act  [mb, G u]     gate activations of the step (when not recording)
 *   aux  [mb, u]       LSTM act(c'); GRU reset_after: the recurrent part of the h gate (h U_h +
 *                      recurrent bias, before r); GRU reset_before: r * h (when not recording)
 * Backward (after the forward part; xw is reused for dgx):
 *   dgx  [mb, T, G u]  d(loss)/d(input pre-activations) by input time step
 *   dm   [T, mb, G u]  d(loss)/d(recurrent pre-activations) by processing step
 *   dh, dhn, dc, dcn [mb, u]; tmp [mb, u]; first [mb] (first unmasked step of each row)
 * A node that runs backward records every step instead (d->z, strides of the actual batch):
 *   H [T + 1, rows, u] (H[s] the state before step s), C likewise (LSTM), P and A [T, rows, G u],
 *   X [T, rows, u] (the aux values above). */
typedef struct rnn_ws {
    float *xw, *hw, *seen, *h, *c, *pre, *act, *aux;
    float *dm, *dh, *dhn, *dc, *dcn, *tmp, *first;
} rnn_ws;

static size_t ws_floats(int64_t mb, const lnode *d, bool bwd, rnn_ws *w, float *base)
{
    int64_t T = d->p[P_T], u = d->p[P_U], gu = d->p[P_G] * u;
    size_t off = 0;
#define WS_TAKE(field, count)                                                                      \
    do {                                                                                           \
        if (w != NULL)                                                                             \
            w->field = base + off;                                                                 \
        off += (size_t)(count);                                                                    \
    } while (0)
    WS_TAKE(xw, mb * T * gu);
    WS_TAKE(hw, mb * gu);
    WS_TAKE(seen, mb);
    WS_TAKE(h, 2 * mb * u);
    WS_TAKE(c, 2 * mb * u);
    WS_TAKE(pre, mb * gu);
    WS_TAKE(act, mb * gu);
    WS_TAKE(aux, mb * u);
    if (bwd) {
        WS_TAKE(dm, T * mb * gu);
        WS_TAKE(dh, mb * u);
        WS_TAKE(dhn, mb * u);
        WS_TAKE(dc, mb * u);
        WS_TAKE(dcn, mb * u);
        WS_TAKE(tmp, mb * u);
        WS_TAKE(first, mb);
    }
#undef WS_TAKE
    return off;
}

/* Per-step views: the record in d->z for a node that runs backward, else the scratch. */
typedef struct rnn_rec {
    bool on;
    int64_t rows, u, gu;
    float *H, *C, *P, *A, *X;
} rnn_rec;

static size_t rec_floats(int64_t rows, const lnode *d, rnn_rec *r, float *base)
{
    int64_t T = d->p[P_T], u = d->p[P_U], gu = d->p[P_G] * u;
    bool lstm = d->p[P_NST] == 2;
    size_t off = 0;
    if (r != NULL) {
        r->on = true;
        r->rows = rows;
        r->u = u;
        r->gu = gu;
        r->H = base;
        r->C = lstm ? base + (T + 1) * rows * u : NULL;
    }
    off += (size_t)((T + 1) * rows * u * (lstm ? 2 : 1));
    if (r != NULL)
        r->P = base + off;
    off += (size_t)(T * rows * gu);
    if (r != NULL)
        r->A = base + off;
    off += (size_t)(T * rows * gu);
    if (r != NULL)
        r->X = base + off;
    off += (size_t)(T * rows * u);
    return off;
}

static float *rec_h(const rnn_rec *r, const rnn_ws *w, int64_t s)
{
    return r->on ? r->H + s * r->rows * r->u : w->h + (s & 1) * r->rows * r->u;
}
static float *rec_c(const rnn_rec *r, const rnn_ws *w, int64_t s)
{
    return r->on ? r->C + s * r->rows * r->u : w->c + (s & 1) * r->rows * r->u;
}
static float *rec_p(const rnn_rec *r, const rnn_ws *w, int64_t s)
{
    return r->on ? r->P + s * r->rows * r->gu : w->pre;
}
static float *rec_a(const rnn_rec *r, const rnn_ws *w, int64_t s)
{
    return r->on ? r->A + s * r->rows * r->gu : w->act;
}
static float *rec_x(const rnn_rec *r, const rnn_ws *w, int64_t s)
{
    return r->on ? r->X + s * r->rows * r->u : w->aux;
}

/* ---- planning ---- */

int layer_rnn_plan(layer_net *n, lnode *d, err_info *e)
{
    const model_layer *L = layer__L(n, d);
    const layer_config *c = &L->cfg;
    layer_kind k = L->kind;
    int G = gates_of(k), nst = k == LAYER_LSTM ? 2 : 1;
    int rc;
    if (d->n_in != 1 && d->n_in != 1 + nst)
        return layer__err(e, n, d, ERR_CONFIG,
                          "called on %d inputs, expected 1 (the sequence) or %d (the sequence "
                          "and %d initial state%s)",
                          d->n_in, 1 + nst, nst, nst > 1 ? "s" : "");
    if (c->stateful)
        return layer__err(e, n, d, ERR_UNSUPPORTED, "stateful=True is not supported");
    if (n->training && (c->dropout > 0 || c->recurrent_dropout > 0))
        return layer__err(e, n, d, ERR_UNSUPPORTED,
                          "dropout %g / recurrent_dropout %g in training is not supported yet "
                          "(set them to 0 to train; inference ignores them)",
                          c->dropout, c->recurrent_dropout);
    if ((int)c->activation < 0 || c->activation >= ACT_COUNT || (int)c->recurrent_activation < 0 ||
        c->recurrent_activation >= ACT_COUNT)
        return layer__err(e, n, d, ERR_CONFIG, "activation %d / recurrent_activation %d unknown",
                          (int)c->activation, (int)c->recurrent_activation);
    const ltensor *x = layer__in(n, d, 0);
    if (x->rank != 3)
        return layer__err(e, n, d, ERR_SHAPE,
                          "input of rank %d, expected 3 (batch, timesteps, features)", x->rank);
    int64_t T = x->dims[1], F = x->dims[2], u = c->units;
    if (u < 1)
        return layer__err(e, n, d, ERR_CONFIG, "units %lld must be positive", (long long)u);
    if (T < 1 || F < 1)
        return layer__err(e, n, d, ERR_SHAPE, "input of %lld steps of %lld features", (long long)T,
                          (long long)F);
    /* OpenBLAS takes int extents: rows * T rows of G * units (the largest matrix). */
    int64_t gu = (int64_t)G * u;
    if (gu > INT_MAX / T || n->max_batch > INT_MAX / (T * gu))
        return layer__err(e, n, d, ERR_UNSUPPORTED,
                          "%lld rows x %lld steps x %lld gate units exceed %d elements",
                          (long long)n->max_batch, (long long)T, (long long)gu, INT_MAX);
    for (int i = 1; i < d->n_in; i++) {
        const ltensor *s = layer__in(n, d, i);
        if (s->rank != 2 || s->dims[1] != u)
            return layer__err(e, n, d, ERR_SHAPE,
                              "initial state %d has rank %d and %lld units, expected [batch, "
                              "%lld]",
                              i - 1, s->rank, (long long)(s->rank >= 2 ? s->dims[1] : 0),
                              (long long)u);
    }
    int want_out = 1 + (c->return_state ? nst : 0);
    if (d->n_out != want_out)
        return layer__err(e, n, d, ERR_SHAPE, "%d outputs, expected %d", d->n_out, want_out);
    int64_t seq[3] = {-1, T, u}, last[2] = {-1, u};
    if ((rc = c->return_sequences ? layer__expect_out(n, d, 3, seq, e)
                                  : layer__expect_out(n, d, 2, last, e)) != ERR_OK)
        return rc;
    for (int i = 1; i < d->n_out; i++) {
        const ltensor *y = layer__out(n, d, i);
        if (y->rank != 2 || y->dims[1] != u)
            return layer__err(e, n, d, ERR_SHAPE, "state output %d is not [batch, %lld]", i,
                              (long long)u);
    }
    int64_t kd[2] = {F, gu}, rd[2] = {u, gu}, bd2[2] = {2, gu};
    if ((rc = layer__weight(n, d, W_KERNEL, "kernel", true, 2, kd, e)) != ERR_OK)
        return rc;
    if ((rc = layer__weight(n, d, W_RECURRENT, "recurrent_kernel", true, 2, rd, e)) != ERR_OK)
        return rc;
    if (c->use_bias) {
        bool two = k == LAYER_GRU && c->reset_after;
        rc = layer__weight(n, d, W_BIAS, "bias", true, two ? 2 : 1, two ? bd2 : &gu, e);
        if (rc != ERR_OK)
            return rc;
    }
    int ids = -1;
    if ((rc = mask_source(n, d, d->in[0].t, 0, &ids, e)) != ERR_OK)
        return rc;
    if (ids >= 0) {
        const ltensor *m = &n->tensors[ids];
        if (m->row != T)
            return layer__err(e, n, d, ERR_UNSUPPORTED,
                              "the input mask has %lld entries per sample, expected one per "
                              "step (%lld)",
                              (long long)m->row, (long long)T);
    }
    d->p[P_T] = T;
    d->p[P_F] = F;
    d->p[P_U] = u;
    d->p[P_G] = G;
    d->p[P_NST] = nst;
    d->p[P_MASK] = ids;
    d->need_ws = ws_floats(n->max_batch, d, d->bwd, NULL, NULL);
    if (d->bwd)
        d->need_z = rec_floats(n->max_batch, d, NULL, NULL);
    return ERR_OK;
}

/* ---- forward ---- */

/* act over each of the `blocks` gate blocks [u] of every row of a [rows, G u] matrix, from
 * column block b0 on: rows and blocks are separate calls so that softmax normalises over one
 * gate's units, as Keras applies the activation to each gate tensor [batch, units]. */
static void act_blocks(act_kind k, int64_t rows, int64_t gu, int64_t u, int b0, int blocks,
                       const float *in, float *out)
{
    for (int64_t i = 0; i < rows; i++)
        for (int b = b0; b < b0 + blocks; b++)
            kern_act_forward(k, 1, u, in + i * gu + b * u, out + i * gu + b * u);
}

/* Whether row i skips the step at input time t (its id is 0). */
static bool masked(const float *ids, int64_t T, int64_t i, int64_t t)
{
    return ids != NULL && ids[i * T + t] == 0.0f;
}

int layer_rnn_forward(layer_net *n, lnode *d, int64_t rows, bool training, err_info *e)
{
    (void)training, (void)e;
    const model_layer *L = layer__L(n, d);
    const layer_config *c = &L->cfg;
    const layer_kind k = L->kind;
    const int64_t T = d->p[P_T], F = d->p[P_F], u = d->p[P_U], G = d->p[P_G];
    const int64_t gu = G * u, ru = rows * u;
    const bool gru_after = k == LAYER_GRU && c->reset_after;
    if (rows == 0)
        return ERR_OK;
    rnn_ws w;
    (void)ws_floats(n->max_batch, d, false, &w, n->ws);
    rnn_rec r = {false, rows, u, gu, NULL, NULL, NULL, NULL, NULL};
    if (d->z != NULL)
        (void)rec_floats(rows, d, &r, d->z);
    const float *W = layer__w(n, d, W_KERNEL), *U = layer__w(n, d, W_RECURRENT);
    const float *bias = layer__w(n, d, W_BIAS);
    const float *rbias = gru_after && bias != NULL ? bias + gu : NULL;
    const float *ids = d->p[P_MASK] >= 0 ? n->tensors[d->p[P_MASK]].val : NULL;
    ltensor *y = layer__out(n, d, 0);

    /* All steps' input projections at once: [rows * T, F] x [F, G u]. */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(rows * T), (int)gu, (int)F, 1.0f,
                layer__in(n, d, 0)->val, (int)F, W, (int)gu, 0.0f, w.xw, (int)gu);
    if (bias != NULL) {
        for (int64_t q = 0; q < rows * T; q++)
            for (int64_t j = 0; j < gu; j++)
                w.xw[q * gu + j] += bias[j];
    }
    /* Initial states: the extra inputs, or zeros. */
    float *h0 = rec_h(&r, &w, 0), *c0 = k == LAYER_LSTM ? rec_c(&r, &w, 0) : NULL;
    if (d->n_in > 1)
        memcpy(h0, layer__in(n, d, 1)->val, sizeof(float) * (size_t)ru);
    else
        memset(h0, 0, sizeof(float) * (size_t)ru);
    if (c0 != NULL) {
        if (d->n_in > 2)
            memcpy(c0, layer__in(n, d, 2)->val, sizeof(float) * (size_t)ru);
        else
            memset(c0, 0, sizeof(float) * (size_t)ru);
    }
    for (int64_t i = 0; i < rows; i++)
        w.seen[i] = 0.0f;

    for (int64_t s = 0; s < T; s++) {
        const int64_t t = c->go_backwards ? T - 1 - s : s;
        float *h = rec_h(&r, &w, s), *hn = rec_h(&r, &w, s + 1);
        float *pre = rec_p(&r, &w, s), *act = rec_a(&r, &w, s), *aux = rec_x(&r, &w, s);
        /* Recurrent projection of the previous state. */
        int64_t ncols = (k == LAYER_GRU && !c->reset_after) ? 2 * u : gu;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)ncols, (int)u, 1.0f,
                    h, (int)u, U, (int)gu, 0.0f, w.hw, (int)gu);
        if (rbias != NULL) {
            for (int64_t i = 0; i < rows; i++)
                for (int64_t j = 0; j < gu; j++)
                    w.hw[i * gu + j] += rbias[j];
        }
        /* Pre-activations of the gates that take x_t + h U directly. */
        int64_t direct = k == LAYER_GRU ? 2 * u : gu;
        for (int64_t i = 0; i < rows; i++) {
            const float *xr = w.xw + (i * T + t) * gu;
            for (int64_t j = 0; j < direct; j++)
                pre[i * gu + j] = xr[j] + w.hw[i * gu + j];
        }
        switch (k) {
        case LAYER_SIMPLERNN:
            act_blocks(c->activation, rows, gu, u, 0, 1, pre, act);
            memcpy(hn, act, sizeof(float) * (size_t)ru);
            break;
        case LAYER_LSTM: {
            float *cs = rec_c(&r, &w, s), *cn = rec_c(&r, &w, s + 1);
            act_blocks(c->recurrent_activation, rows, gu, u, 0, 2, pre, act);
            act_blocks(c->activation, rows, gu, u, 2, 1, pre, act);
            act_blocks(c->recurrent_activation, rows, gu, u, 3, 1, pre, act);
            for (int64_t i = 0; i < rows; i++) {
                const float *a = act + i * gu;
                for (int64_t j = 0; j < u; j++)
                    cn[i * u + j] = a[u + j] * cs[i * u + j] + a[j] * a[2 * u + j];
            }
            kern_act_forward(c->activation, rows, u, cn, aux);
            for (int64_t i = 0; i < rows; i++)
                for (int64_t j = 0; j < u; j++)
                    hn[i * u + j] = act[i * gu + 3 * u + j] * aux[i * u + j];
            break;
        }
        case LAYER_GRU:
            act_blocks(c->recurrent_activation, rows, gu, u, 0, 2, pre, act);
            if (c->reset_after) {
                /* The reset gate scales the recurrent part after the matmul (and its bias). */
                for (int64_t i = 0; i < rows; i++)
                    for (int64_t j = 0; j < u; j++) {
                        float m = w.hw[i * gu + 2 * u + j];
                        aux[i * u + j] = m;
                        pre[i * gu + 2 * u + j] =
                            w.xw[(i * T + t) * gu + 2 * u + j] + act[i * gu + u + j] * m;
                    }
            } else {
                /* The reset gate scales the state before the matmul with U[:, 2u:]. */
                for (int64_t i = 0; i < rows; i++)
                    for (int64_t j = 0; j < u; j++)
                        aux[i * u + j] = act[i * gu + u + j] * h[i * u + j];
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)u, (int)u,
                            1.0f, aux, (int)u, U + 2 * u, (int)gu, 0.0f, w.hw + 2 * u, (int)gu);
                for (int64_t i = 0; i < rows; i++)
                    for (int64_t j = 0; j < u; j++)
                        pre[i * gu + 2 * u + j] =
                            w.xw[(i * T + t) * gu + 2 * u + j] + w.hw[i * gu + 2 * u + j];
            }
            act_blocks(c->activation, rows, gu, u, 2, 1, pre, act);
            for (int64_t i = 0; i < rows; i++) {
                const float *a = act + i * gu;
                for (int64_t j = 0; j < u; j++)
                    hn[i * u + j] = a[j] * h[i * u + j] + (1.0f - a[j]) * a[2 * u + j];
            }
            break;
        case LAYER_INPUT:
        case LAYER_DENSE:
        case LAYER_CONV2D:
        case LAYER_CONV1D:
        case LAYER_MAXPOOL2D:
        case LAYER_AVGPOOL2D:
        case LAYER_GAP2D:
        case LAYER_GMP2D:
        case LAYER_MAXPOOL1D:
        case LAYER_AVGPOOL1D:
        case LAYER_GAP1D:
        case LAYER_GMP1D:
        case LAYER_FLATTEN:
        case LAYER_RESHAPE:
        case LAYER_DROPOUT:
        case LAYER_ACTIVATION:
        case LAYER_BATCHNORM:
        case LAYER_ZEROPAD2D:
        case LAYER_RELU:
        case LAYER_LEAKYRELU:
        case LAYER_SOFTMAX:
        case LAYER_ELU:
        case LAYER_ADD:
        case LAYER_SUBTRACT:
        case LAYER_MULTIPLY:
        case LAYER_AVERAGE:
        case LAYER_CONCAT:
        case LAYER_EMBEDDING:
        case LAYER_COUNT:
            CHECK(!"not a recurrent layer");
        }
        /* Masked rows keep their states; the step's output is then the previous output. */
        for (int64_t i = 0; i < rows; i++) {
            float *hrow = hn + i * u;
            if (masked(ids, T, i, t)) {
                memcpy(hrow, h + i * u, sizeof(float) * (size_t)u);
                if (k == LAYER_LSTM)
                    memcpy(rec_c(&r, &w, s + 1) + i * u, rec_c(&r, &w, s) + i * u,
                           sizeof(float) * (size_t)u);
            } else {
                w.seen[i] = 1.0f;
            }
            if (c->return_sequences || s == T - 1) {
                float *dst = c->return_sequences ? y->val + (i * T + s) * u : y->val + i * u;
                if (w.seen[i] != 0.0f)
                    memcpy(dst, hrow, sizeof(float) * (size_t)u);
                else
                    memset(dst, 0, sizeof(float) * (size_t)u);
            }
        }
    }
    if (d->n_out > 1)
        memcpy(layer__out(n, d, 1)->val, rec_h(&r, &w, T), sizeof(float) * (size_t)ru);
    if (d->n_out > 2)
        memcpy(layer__out(n, d, 2)->val, rec_c(&r, &w, T), sizeof(float) * (size_t)ru);
    return ERR_OK;
}

/* ---- backward through time ----
 * Walks the recorded steps from the last to the first with dh (and dc) = d(loss)/d(state after
 * the step), writes d(loss)/d(pre-activation) per step (dgx by input time for the kernel, the
 * input bias and the input gradient, each one sgemm over all steps at the end; dm by step for
 * the recurrent kernel, likewise), and passes dh back through U. A masked step passes dh and dc
 * through unchanged and contributes nothing. An output position that was still zero because no
 * step had been used yet gets no gradient. */

/* dx = dy * act'(...) over gate block b of every row (x: pre-activations, y: activations);
 * dx == dy allowed. */
static void act_back_blocks(act_kind k, int64_t rows, int64_t gu, int64_t u, int b,
                            const float *pre, const float *act, const float *dy, float *dx)
{
    for (int64_t i = 0; i < rows; i++) {
        int64_t o = i * gu + b * u;
        kern_act_backward(k, 1, u, pre + o, act + o, dy + o, dx + o);
    }
}

static void put_sum_rows(float *db, const float *g, int64_t nrows, int64_t cols, bool acc)
{
    for (int64_t j = 0; j < cols; j++) {
        float sum = 0.0f;
        for (int64_t q = 0; q < nrows; q++)
            sum += g[q * cols + j];
        db[j] = acc ? db[j] + sum : sum;
    }
}

int layer_rnn_backward(layer_net *n, lnode *d, int64_t rows, err_info *e)
{
    const model_layer *L = layer__L(n, d);
    const layer_config *c = &L->cfg;
    const layer_kind k = L->kind;
    const int64_t T = d->p[P_T], F = d->p[P_F], u = d->p[P_U], G = d->p[P_G];
    const int64_t gu = G * u, ru = rows * u;
    if (d->z == NULL)
        return layer__err(e, n, d, ERR_INTERNAL, "backward without a recorded forward");
    float *dW = layer__dw(n, d, W_KERNEL), *dU = layer__dw(n, d, W_RECURRENT);
    float *db = layer__dw(n, d, W_BIAS);
    const float wbeta = d->w_first ? 0.0f : 1.0f;
    if (rows == 0) {
        /* Nothing flows; the first call of the layer still owns the weight gradients. */
        if (d->w_first) {
            const size_t nb = k == LAYER_GRU && c->reset_after ? 2 * (size_t)gu : (size_t)gu;
            if (dW != NULL)
                memset(dW, 0, sizeof(float) * (size_t)(F * gu));
            if (dU != NULL)
                memset(dU, 0, sizeof(float) * (size_t)(u * gu));
            if (db != NULL)
                memset(db, 0, sizeof(float) * nb);
        }
        return ERR_OK;
    }
    rnn_ws w;
    (void)ws_floats(n->max_batch, d, true, &w, n->ws);
    rnn_rec r;
    (void)rec_floats(rows, d, &r, d->z);
    float *dgx = w.xw; /* the forward's projections are not needed any more */
    const float *U = layer__w(n, d, W_RECURRENT), *W = layer__w(n, d, W_KERNEL);
    const float *ids = d->p[P_MASK] >= 0 ? n->tensors[d->p[P_MASK]].val : NULL;
    const ltensor *x = layer__in(n, d, 0), *y = layer__out(n, d, 0);
    const act_kind ak = c->activation, rk = c->recurrent_activation;
    float *dh = w.dh, *dhn = w.dhn, *dc = w.dc, *dcn = w.dcn;

    /* First used step of each row (in processing order): outputs before it are constant 0. */
    for (int64_t i = 0; i < rows; i++) {
        int64_t f = T;
        for (int64_t s = 0; s < T && f == T; s++)
            if (!masked(ids, T, i, c->go_backwards ? T - 1 - s : s))
                f = s;
        w.first[i] = (float)f;
    }
    /* Gradients of the final states: the returned states, and the last output. */
    memset(dh, 0, sizeof(float) * (size_t)ru);
    memset(dc, 0, sizeof(float) * (size_t)ru);
    if (d->n_out > 1)
        layer__put(dh, layer__out(n, d, 1)->grad, ru, true);
    if (d->n_out > 2)
        layer__put(dc, layer__out(n, d, 2)->grad, ru, true);
    if (!c->return_sequences) {
        for (int64_t i = 0; i < rows; i++)
            if (w.first[i] < (float)T)
                layer__put(dh + i * u, y->grad + i * u, u, true);
    }

    for (int64_t s = T - 1; s >= 0; s--) {
        const int64_t t = c->go_backwards ? T - 1 - s : s;
        const float *h = rec_h(&r, &w, s), *hn = rec_h(&r, &w, s + 1);
        const float *pre = rec_p(&r, &w, s), *act = rec_a(&r, &w, s), *aux = rec_x(&r, &w, s);
        float *dm = w.dm + s * rows * gu;
        if (c->return_sequences) {
            for (int64_t i = 0; i < rows; i++)
                if ((float)s >= w.first[i])
                    layer__put(dh + i * u, y->grad + (i * T + s) * u, u, true);
        }
        /* Element-wise part into dm (row-major [rows, G u]); the input side is the same except
         * for the h block of GRU(reset_after), which dgx keeps separately. */
        switch (k) {
        case LAYER_SIMPLERNN:
            for (int64_t i = 0; i < rows; i++)
                kern_act_backward(ak, 1, u, pre + i * gu, hn + i * u, dh + i * u, dm + i * gu);
            break;
        case LAYER_LSTM: {
            const float *cs = rec_c(&r, &w, s), *cn = rec_c(&r, &w, s + 1);
            for (int64_t i = 0; i < rows; i++) {
                const float *a = act + i * gu;
                float *g = dm + i * gu, *dca = w.tmp + i * u;
                for (int64_t j = 0; j < u; j++) {
                    float dhj = dh[i * u + j];
                    g[3 * u + j] = dhj * aux[i * u + j]; /* o */
                    dca[j] = dhj * a[3 * u + j];         /* act(c') */
                }
                kern_act_backward(ak, 1, u, cn + i * u, aux + i * u, dca, dca);
                for (int64_t j = 0; j < u; j++) {
                    float dct = dc[i * u + j] + dca[j];
                    g[j] = dct * a[2 * u + j];      /* i */
                    g[u + j] = dct * cs[i * u + j]; /* f */
                    g[2 * u + j] = dct * a[j];      /* candidate */
                    dcn[i * u + j] = dct * a[u + j];
                }
            }
            act_back_blocks(rk, rows, gu, u, 0, pre, act, dm, dm);
            act_back_blocks(rk, rows, gu, u, 1, pre, act, dm, dm);
            act_back_blocks(ak, rows, gu, u, 2, pre, act, dm, dm);
            act_back_blocks(rk, rows, gu, u, 3, pre, act, dm, dm);
            break;
        }
        case LAYER_GRU:
            for (int64_t i = 0; i < rows; i++) {
                const float *a = act + i * gu;
                float *g = dm + i * gu;
                for (int64_t j = 0; j < u; j++) {
                    float dhj = dh[i * u + j];
                    g[j] = dhj * (h[i * u + j] - a[2 * u + j]); /* z */
                    g[2 * u + j] = dhj * (1.0f - a[j]);         /* candidate */
                }
            }
            act_back_blocks(ak, rows, gu, u, 2, pre, act, dm, dm);
            if (c->reset_after) {
                /* pre_h = x_h + r * m_h: dr = dpre_h * m_h; the recurrent side sees r dpre_h. */
                for (int64_t i = 0; i < rows; i++) {
                    const float *a = act + i * gu;
                    float *g = dm + i * gu, *gx = dgx + (i * T + t) * gu;
                    for (int64_t j = 0; j < u; j++) {
                        float dp = g[2 * u + j];
                        gx[2 * u + j] = dp;
                        g[u + j] = dp * aux[i * u + j];
                        g[2 * u + j] = dp * a[u + j];
                    }
                }
            } else {
                /* pre_h = x_h + (r * h) U_h: d(r * h) = dpre_h U_h^T. */
                for (int64_t i = 0; ids != NULL && i < rows; i++)
                    if (masked(ids, T, i, t))
                        memset(dm + i * gu + 2 * u, 0, sizeof(float) * (size_t)u);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)u, (int)u,
                            1.0f, dm + 2 * u, (int)gu, U + 2 * u, (int)gu, 0.0f, w.tmp, (int)u);
                for (int64_t i = 0; i < rows; i++)
                    for (int64_t j = 0; j < u; j++)
                        dm[i * gu + u + j] = w.tmp[i * u + j] * h[i * u + j];
            }
            act_back_blocks(rk, rows, gu, u, 0, pre, act, dm, dm);
            act_back_blocks(rk, rows, gu, u, 1, pre, act, dm, dm);
            break;
        case LAYER_INPUT:
        case LAYER_DENSE:
        case LAYER_CONV2D:
        case LAYER_CONV1D:
        case LAYER_MAXPOOL2D:
        case LAYER_AVGPOOL2D:
        case LAYER_GAP2D:
        case LAYER_GMP2D:
        case LAYER_MAXPOOL1D:
        case LAYER_AVGPOOL1D:
        case LAYER_GAP1D:
        case LAYER_GMP1D:
        case LAYER_FLATTEN:
        case LAYER_RESHAPE:
        case LAYER_DROPOUT:
        case LAYER_ACTIVATION:
        case LAYER_BATCHNORM:
        case LAYER_ZEROPAD2D:
        case LAYER_RELU:
        case LAYER_LEAKYRELU:
        case LAYER_SOFTMAX:
        case LAYER_ELU:
        case LAYER_ADD:
        case LAYER_SUBTRACT:
        case LAYER_MULTIPLY:
        case LAYER_AVERAGE:
        case LAYER_CONCAT:
        case LAYER_EMBEDDING:
        case LAYER_COUNT:
            CHECK(!"not a recurrent layer");
        }
        /* Masked rows: no gate gradient. Then the input side (GRU reset_after's h block was
         * written above). */
        const bool after = k == LAYER_GRU && c->reset_after;
        for (int64_t i = 0; i < rows; i++) {
            float *gx = dgx + (i * T + t) * gu;
            if (masked(ids, T, i, t)) {
                memset(dm + i * gu, 0, sizeof(float) * (size_t)gu);
                memset(gx, 0, sizeof(float) * (size_t)gu);
            } else {
                memcpy(gx, dm + i * gu, sizeof(float) * (size_t)(after ? 2 * u : gu));
            }
        }
        /* dh before the step: through U, plus the direct paths (GRU: z * dh, and r * d(r h)
         * for reset_before). */
        if (k == LAYER_GRU && !c->reset_after) {
            for (int64_t i = 0; i < rows; i++)
                for (int64_t j = 0; j < u; j++)
                    dhn[i * u + j] =
                        dh[i * u + j] * act[i * gu + j] + w.tmp[i * u + j] * act[i * gu + u + j];
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)u, (int)(2 * u),
                        1.0f, dm, (int)gu, U, (int)gu, 1.0f, dhn, (int)u);
        } else {
            const float beta = k == LAYER_GRU ? 1.0f : 0.0f;
            if (k == LAYER_GRU) {
                for (int64_t i = 0; i < rows; i++)
                    for (int64_t j = 0; j < u; j++)
                        dhn[i * u + j] = dh[i * u + j] * act[i * gu + j];
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)u, (int)gu, 1.0f,
                        dm, (int)gu, U, (int)gu, beta, dhn, (int)u);
        }
        for (int64_t i = 0; ids != NULL && i < rows; i++) {
            if (masked(ids, T, i, t)) {
                memcpy(dhn + i * u, dh + i * u, sizeof(float) * (size_t)u);
                if (k == LAYER_LSTM)
                    memcpy(dcn + i * u, dc + i * u, sizeof(float) * (size_t)u);
            }
        }
        float *tmp = dh;
        dh = dhn;
        dhn = tmp;
        if (k == LAYER_LSTM) {
            tmp = dc;
            dc = dcn;
            dcn = tmp;
        }
    }

    /* Initial states. */
    if (d->n_in > 1 && d->in[1].dx)
        layer__put(layer__in(n, d, 1)->grad, dh, ru, d->in[1].acc);
    if (d->n_in > 2 && d->in[2].dx)
        layer__put(layer__in(n, d, 2)->grad, dc, ru, d->in[2].acc);
    /* Weights: all steps at once. */
    if (dW != NULL)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)F, (int)gu, (int)(rows * T), 1.0f,
                    x->val, (int)F, dgx, (int)gu, wbeta, dW, (int)gu);
    if (dU != NULL) {
        if (k == LAYER_GRU && !c->reset_after) {
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)u, (int)(2 * u),
                        (int)(rows * T), 1.0f, r.H, (int)u, w.dm, (int)gu, wbeta, dU, (int)gu);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)u, (int)u, (int)(rows * T),
                        1.0f, r.X, (int)u, w.dm + 2 * u, (int)gu, wbeta, dU + 2 * u, (int)gu);
        } else {
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)u, (int)gu, (int)(rows * T),
                        1.0f, r.H, (int)u, w.dm, (int)gu, wbeta, dU, (int)gu);
        }
    }
    if (db != NULL) {
        put_sum_rows(db, dgx, rows * T, gu, !d->w_first);
        if (k == LAYER_GRU && c->reset_after)
            put_sum_rows(db + gu, w.dm, rows * T, gu, !d->w_first);
    }
    if (d->in[0].dx)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(rows * T), (int)F, (int)gu, 1.0f,
                    dgx, (int)gu, W, (int)gu, d->in[0].acc ? 1.0f : 0.0f, x->grad, (int)F);
    return ERR_OK;
}
