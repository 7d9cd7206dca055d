#ifndef CORNU_TRAINER_LAYERS_IMPL_H
#define CORNU_TRAINER_LAYERS_IMPL_H

/* Internals of the layer engine shared by trainer/layers*.c (not part of the public API).
 *
 * The net keeps one lnode per model node, in m->order (dependency order), and one ltensor per
 * node output. A layer kind is a row of the dispatch table in layers.c: plan (validate shapes
 * against the layer's own geometry, pick weights, request buffers), forward and backward.
 *
 * Planning runs in this order (layers.c):
 *  1. tensors and nodes from the model; which tensors depend on trainable weights ("tracked");
 *     which nodes run backward ("bwd") and which of their inputs get a gradient (slot .dx);
 *  2. the kind's plan(): checks, weights, aliasing, buffer requests (need_* counts, in floats /
 *     elements for max_batch rows) and shared scratch (need_ws floats);
 *  3. alias groups, gradient first-writer flags (slot .acc), one allocation, binding.
 * Backward contract for a kind: read g(out) (may overwrite it: nobody reads it afterwards),
 * write every input slot with .dx set (add into it if .acc, else overwrite), and write its
 * layer's trainable weight gradients (overwrite if w_first, else add). */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/kern_conv.h"
#include "kernels/kern_pool.h"
#include "trainer/layers.h"

#define LAYER_NO_WEIGHT SIZE_MAX

typedef struct lslot {
    int t;    /* tensor id */
    bool dx;  /* a gradient must be written for this input */
    bool acc; /* add into it: another contribution was written first */
} lslot;

typedef struct ltensor {
    bool exists;
    int rank;
    int64_t dims[TENSOR_MAX_RANK]; /* dims[0] is the batch (-1) */
    int64_t row;                   /* elements per sample */
    int node;                      /* producing lnode */
    int group;                     /* tensor id owning the shared buffers */
    bool tracked;                  /* depends on a trainable weight */
    bool live;                     /* receives a gradient in backward */
    float *val, *grad;
} ltensor;

typedef struct lnode {
    int layer, node; /* model indices */
    int n_in;
    lslot *in;
    int n_out;
    int out[MODEL_NODE_MAX_OUT];
    bool bwd;             /* runs in backward */
    bool w_first, w_last; /* first / last backward call of its layer (weights overwrite / ready) */
    bool alias;           /* out[0] shares in[0]'s buffers: nothing to do in either pass */
    bool coll_fwd, coll_bwd; /* calls the reduce hook in forward / backward */
    /* Weights by kind-specific slot (kernel, bias, gamma, ...): element offsets into m->params
     * (LAYER_NO_WEIGHT if absent) and whether each is trainable (then the gradient lives at the
     * same offset of the flat gradient). */
    size_t w[4];
    bool w_train[4];
    /* Requests (plan) and their bindings. */
    size_t need_z, need_xt, need_argmax, need_mask, need_stats, need_ws;
    float *z;        /* pre-activation, or other per-node floats */
    float *xt;       /* channels_last copy of a channels_first input */
    int32_t *argmax; /* max pooling / global max pooling */
    uint8_t *mask;   /* dropout */
    double *stats;   /* BatchNormalization */
    bool cf;         /* channels_first: transposes around the channels_last kernel */
    union {
        kern_conv_geom conv;
        kern_pool_geom pool;
    } g;
    int64_t p[8];    /* kind-specific extents (documented where used) */
    double bn_count; /* BatchNormalization: global element count per channel, last forward */
    int64_t red_n;   /* most doubles one reduce-hook call of this node sums (coll_fwd nodes) */
} lnode;

typedef struct lrange {
    size_t lo, hi;
    int layer;
} lrange;

struct layer_net {
    model *m;
    int64_t max_batch;
    bool training;
    int n_nodes;
    lnode *nodes;
    int n_tensors;
    ltensor *tensors;
    int *node_base;    /* per layer: first tensor-id block */
    int *in_t;         /* model input i -> tensor id */
    int *out_t;        /* model output i -> tensor id */
    float **out_extra; /* duplicate output gradients (NULL if the group grad is used) */
    float *grads;      /* the weight gradient in use: grads_own or a caller's buffer */
    float *grads_own;  /* the one the net allocated (freed by layer_net_destroy) */
    float *ws;         /* shared scratch */
    size_t ws_floats;
    void *arena;
    size_t arena_bytes;
    /* Zeroing before backward: node outputs without a gradient of a backward node. */
    int n_zero_t;
    int *zero_t;
    /* Trainable ranges per layer, decreasing lo; which layers get no gradient. */
    int n_ranges;
    lrange *ranges;
    bool *layer_done; /* per layer during backward */
    bool *layer_bwd;  /* per layer: some node writes its gradients */
    layer_reduce_fn reduce;
    void *reduce_ctx;
    bool update_moving; /* training forwards update moving statistics (default true) */
    /* The last forward. */
    int64_t fwd_rows;
    bool fwd_training;
    bool fwd_ok;
    uint64_t seed;
    int64_t step;
    int64_t row0; /* global index of local row 0 (layer_net_set_row_offset) */
};

typedef struct layer_ops {
    int (*plan)(layer_net *n, lnode *d, err_info *e);
    int (*forward)(layer_net *n, lnode *d, int64_t rows, bool training, err_info *e);
    int (*backward)(layer_net *n, lnode *d, int64_t rows, err_info *e);
    bool diff_inputs; /* false: inputs never get a gradient (Embedding ids) */
} layer_ops;

/* ---- helpers (layers.c) ---- */

static inline const model_layer *layer__L(const layer_net *n, const lnode *d)
{
    return &n->m->layers[d->layer];
}
static inline ltensor *layer__in(const layer_net *n, const lnode *d, int i)
{
    return &n->tensors[d->in[i].t];
}
static inline ltensor *layer__out(const layer_net *n, const lnode *d, int i)
{
    return &n->tensors[d->out[i]];
}
/* Parameter / gradient pointers of weight slot k (NULL if absent / not trainable). */
static inline float *layer__w(const layer_net *n, const lnode *d, int k)
{
    return d->w[k] == LAYER_NO_WEIGHT ? NULL : n->m->params + d->w[k];
}
static inline float *layer__dw(const layer_net *n, const lnode *d, int k)
{
    return (d->w[k] == LAYER_NO_WEIGHT || !d->w_train[k] || n->grads == NULL) ? NULL
                                                                              : n->grads + d->w[k];
}

/* Sets e to code with the message prefixed by the layer: layer "name" (Class): ...; returns
 * code. (e comes first here because of the variadic format.) */
int layer__err(err_info *e, const layer_net *n, const lnode *d, int code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Finds weight `name` of d's layer into slot k, checking its shape [dims[0..rank)). Absent and
 * !required: slot stays LAYER_NO_WEIGHT. Errors name the layer, the weight and both shapes. */
int layer__weight(layer_net *n, lnode *d, int k, const char *name, bool required, int rank,
                  const int64_t *dims, err_info *e);
/* Checks that output 0 of d has exactly the shape dims[0..rank) (dims[0] ignored, batch). */
int layer__expect_out(const layer_net *n, const lnode *d, int rank, const int64_t *dims,
                      err_info *e);
/* dst (+)= src over count floats. */
void layer__put(float *dst, const float *src, int64_t count, bool acc);
/* dst (+)= s * src over count floats. */
void layer__put_scaled(float *dst, const float *src, float s, int64_t count, bool acc);
/* Batched transpose: in [b, r, c] -> out [b, c, r] (overwrites) or += when acc. */
void layer__transpose(int64_t b, int64_t r, int64_t c, const float *in, float *out, bool acc);

/* ---- per-kind entry points (one file per family) ---- */

#define LAYER_DECLARE(kind)                                                                        \
    int layer__##kind##_plan(layer_net *n, lnode *d, err_info *e);                                 \
    int layer__##kind##_forward(layer_net *n, lnode *d, int64_t rows, bool training, err_info *e); \
    int layer__##kind##_backward(layer_net *n, lnode *d, int64_t rows, err_info *e);

/* layers_core.c */
LAYER_DECLARE(input)
LAYER_DECLARE(dense)
LAYER_DECLARE(embedding)
LAYER_DECLARE(activation)
LAYER_DECLARE(relu)
LAYER_DECLARE(leakyrelu)
LAYER_DECLARE(elu)
LAYER_DECLARE(softmax)
LAYER_DECLARE(dropout)
LAYER_DECLARE(flatten)
LAYER_DECLARE(reshape)
/* layers_conv.c */
LAYER_DECLARE(conv)
LAYER_DECLARE(pool)
LAYER_DECLARE(gpool)
LAYER_DECLARE(zeropad)
/* layers_norm.c */
LAYER_DECLARE(batchnorm)
/* layers_merge.c */
LAYER_DECLARE(merge)
LAYER_DECLARE(concat)
/* layers_rnn.c: SimpleRNN, LSTM, GRU (one entry point each, dispatching on the kind). */
/* TODO(#3): recurrent layers; until then plan reports ERR_UNSUPPORTED naming the layer. */
int layer_rnn_plan(layer_net *n, lnode *d, err_info *e);
int layer_rnn_forward(layer_net *n, lnode *d, int64_t rows, bool training, err_info *e);
int layer_rnn_backward(layer_net *n, lnode *d, int64_t rows, err_info *e);

/* BatchNormalization collective calls with zeros, for a rank that failed earlier in the pass. */
int layer__batchnorm_dummy(layer_net *n, lnode *d, bool forward, err_info *e);

/* Exposed for the dispatch test: the table and its size. */
const layer_ops *layer__ops(layer_kind k);

#endif
