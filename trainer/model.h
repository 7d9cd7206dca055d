#ifndef CORNU_TRAINER_MODEL_H
#define CORNU_TRAINER_MODEL_H

/* The one in-memory model description shared by the trainer and every format: layers with their
 * Keras configs, the call graph (nodes), inferred shapes, weights (views into one flat parameter
 * buffer), the training config (loss, metrics, optimizer) and the optimizer state.
 *
 * Graph: every layer has one node per call (a shared layer has several). A node consumes
 * tensors named by model_ref {layer, node, tensor} and produces n_out tensors. Sequential models
 * are stored as the equivalent chain graph with an explicit InputLayer. Batch extents are -1.
 *
 * Parameters: m->params holds every weight in one float32 buffer; trainable weights come first
 * (offsets 0 .. n_trainable), non-trainable after, each group in layer order, each weight in
 * Keras saving order. m->weights lists the weights in Keras order (layer by layer, trainable then
 * non-trainable within a layer) with their offsets. The struct is public because every module
 * reads it; only model.c allocates or frees its arrays. Not thread-safe, no MPI. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/err.h"
#include "kernels/kern_act.h"
#include "kernels/tensor.h"

#define MODEL_NAME_MAX 256
#define MODEL_NODE_MAX_OUT 4 /* an LSTM with return_state has 3 outputs */
#define MODEL_MAX_BOUNDS 32  /* PiecewiseConstantDecay boundaries */
#define MODEL_MAX_METRICS 8
#define MODEL_MAX_SLOTS 3 /* optimizer slots per trainable parameter */
/* Longest layer name model_layer_add() accepts, so that every weight name
 * "<layer>/<cell>/<weight>:0" fits in MODEL_NAME_MAX. */
#define MODEL_LAYER_NAME_MAX 200

typedef enum layer_kind {
    LAYER_INPUT,
    LAYER_DENSE,
    LAYER_CONV2D,
    LAYER_CONV1D,
    LAYER_MAXPOOL2D,
    LAYER_AVGPOOL2D,
    LAYER_GAP2D, /* GlobalAveragePooling2D */
    LAYER_GMP2D, /* GlobalMaxPooling2D */
    LAYER_MAXPOOL1D,
    LAYER_AVGPOOL1D,
    LAYER_GAP1D,
    LAYER_GMP1D,
    LAYER_FLATTEN,
    LAYER_RESHAPE,
    LAYER_DROPOUT,
    LAYER_ACTIVATION,
    LAYER_BATCHNORM,
    LAYER_ZEROPAD2D,
    LAYER_RELU,
    LAYER_LEAKYRELU,
    LAYER_SOFTMAX,
    LAYER_ELU,
    LAYER_ADD,
    LAYER_SUBTRACT,
    LAYER_MULTIPLY,
    LAYER_AVERAGE,
    LAYER_CONCAT,
    LAYER_EMBEDDING,
    LAYER_SIMPLERNN,
    LAYER_LSTM,
    LAYER_GRU,
    LAYER_COUNT
} layer_kind;

typedef enum pad_kind { PAD_VALID, PAD_SAME, PAD_CAUSAL, PAD_COUNT } pad_kind;

typedef enum init_kind {
    INIT_ZEROS,
    INIT_ONES,
    INIT_CONSTANT,         /* value */
    INIT_RANDOM_UNIFORM,   /* minval, maxval */
    INIT_RANDOM_NORMAL,    /* mean, stddev */
    INIT_TRUNCATED_NORMAL, /* mean, stddev; redraw beyond 2 stddev */
    INIT_VARIANCE_SCALING, /* scale, mode, distribution: glorot_*, he_*, lecun_* are this */
    INIT_ORTHOGONAL,       /* gain */
    INIT_IDENTITY,         /* gain */
    INIT_COUNT
} init_kind;

typedef enum init_mode { INIT_FAN_IN, INIT_FAN_OUT, INIT_FAN_AVG, INIT_MODE_COUNT } init_mode;
typedef enum init_dist {
    INIT_DIST_TRUNCATED_NORMAL,
    INIT_DIST_UNTRUNCATED_NORMAL,
    INIT_DIST_UNIFORM,
    INIT_DIST_COUNT
} init_dist;

typedef struct model_init {
    init_kind kind;
    double a; /* value | minval | mean | scale | gain */
    double b; /* maxval | stddev */
    init_mode mode;
    init_dist dist;
    bool has_seed;
    int64_t seed;
    char keras_name[64]; /* the spelling read, e.g. "GlorotUniform" or "glorot_uniform" */
} model_init;

/* An L1/L2 weight penalty (Keras L1L2, L1, L2): l1 * sum|w| + l2 * sum w^2; 0, 0 = none. */
typedef struct model_reg {
    double l1, l2;
} model_reg;

/* Every option any supported layer reads; each kind uses a subset (docs/model-config.md). */
typedef struct layer_config {
    int64_t units;                                   /* Dense, SimpleRNN, LSTM, GRU */
    int64_t filters;                                 /* Conv1D, Conv2D */
    int64_t kernel_size[2], strides[2], dilation[2]; /* conv; 1D uses [0] */
    int64_t pool_size[2], pool_strides[2];           /* pooling; 1D uses [0] */
    pad_kind padding;
    int64_t zero_pad[4]; /* ZeroPadding2D: top, bottom, left, right */
    bool channels_first; /* data_format "channels_first" (Keras 1: dim_ordering "th") */
    bool use_bias;
    act_kind activation; /* Dense, Conv, Activation, RNN output activation */
    act_kind recurrent_activation;
    int axis;                 /* BatchNormalization, Concatenate, Softmax (negative counts back) */
    double momentum, epsilon; /* BatchNormalization */
    bool center, scale;
    double rate;          /* Dropout */
    int64_t dropout_seed; /* Dropout "seed"; -1 when absent */
    int target_rank;      /* Reshape: target_shape without batch, -1 allowed once */
    int64_t target_shape[TENSOR_MAX_RANK];
    double alpha;                     /* ELU alpha; LeakyReLU negative_slope (Keras 2 "alpha") */
    double max_value;                 /* ReLU: < 0 means none */
    double negative_slope, threshold; /* ReLU */
    int64_t input_dim, output_dim;    /* Embedding */
    bool mask_zero;
    bool return_sequences, return_state, go_backwards, reset_after, stateful;
    model_init kernel_init, bias_init, recurrent_init, embeddings_init;
    model_init gamma_init, beta_init, moving_mean_init, moving_variance_init;
    /* Added by the config reader: */
    double dropout, recurrent_dropout; /* RNN input / recurrent dropout rates (0 = none) */
    bool unit_forget_bias;             /* LSTM: forget-gate bias starts at 1 (Keras default) */
    /* Penalties (Dense/Conv kernel+bias, RNN kernel+recurrent+bias, Embedding embeddings) and
     * the activity penalty on the layer output; all zero when the config has null. */
    model_reg kernel_reg, bias_reg, recurrent_reg, embeddings_reg, activity_reg;
} layer_config;

/* Keras defaults for a kind (Dense: use_bias, glorot_uniform kernel, zeros bias, ...). */
layer_config layer_config_default(layer_kind kind);
/* The default kernel initializer: GlorotUniform (variance scaling 1, fan_avg, uniform). */
model_init model_init_default(void);

typedef struct model_ref {
    int layer;  /* index into m->layers */
    int node;   /* which call of that layer */
    int tensor; /* which output of that call */
} model_ref;

typedef struct model_shape {
    int rank;                      /* including the batch axis */
    int64_t dims[TENSOR_MAX_RANK]; /* dims[0] == -1 (batch); -1 also for an unknown extent */
} model_shape;

typedef struct model_node {
    int n_in;
    model_ref *in; /* owned by the model */
    int n_out;     /* set by model_build */
    model_shape out[MODEL_NODE_MAX_OUT];
} model_node;

typedef struct model_layer {
    layer_kind kind;
    char name[MODEL_NAME_MAX];
    layer_config cfg;
    bool trainable;
    model_shape input_shape; /* InputLayer: batch_shape (rank 0 if not given) */
    dtype input_dtype;       /* InputLayer: float32 or int32 (Embedding inputs) */
    int n_nodes;
    model_node *nodes;      /* owned by the model */
    int weight0, n_weights; /* this layer's slice of m->weights (set by model_build) */
} model_layer;

typedef struct model_weight {
    char name[MODEL_NAME_MAX]; /* Keras variable name, e.g. "dense/kernel:0" */
    int layer;
    bool trainable;
    int rank;
    int64_t shape[TENSOR_MAX_RANK];
    size_t offset; /* element offset into m->params */
    size_t count;  /* element count */
} model_weight;

typedef enum loss_kind {
    LOSS_NONE,
    LOSS_SPARSE_CCE,
    LOSS_CCE,
    LOSS_BCE,
    LOSS_MSE,
    LOSS_MAE,
    LOSS_HUBER,
    LOSS_COUNT
} loss_kind;

typedef struct model_loss {
    loss_kind kind;
    bool from_logits;
    double delta;           /* Huber, default 1.0 */
    double label_smoothing; /* CCE/BCE, default 0 */
} model_loss;

typedef enum metric_kind {
    METRIC_ACCURACY, /* "accuracy"/"acc": resolved against the loss like Keras */
    METRIC_SPARSE_CAT_ACC,
    METRIC_CAT_ACC,
    METRIC_BIN_ACC,
    METRIC_MSE,
    METRIC_MAE,
    METRIC_COUNT
} metric_kind;

typedef enum optim_kind {
    OPTIM_SGD,
    OPTIM_ADAM,
    OPTIM_ADAMW,
    OPTIM_RMSPROP,
    OPTIM_ADAGRAD,
    OPTIM_NADAM,
    OPTIM_COUNT
} optim_kind;

typedef enum sched_kind {
    SCHED_CONSTANT,
    SCHED_EXPONENTIAL, /* initial * rate ^ (step / decay_steps), floor()ed if staircase */
    SCHED_PIECEWISE,   /* values[i] while step <= bounds[i] */
    SCHED_COSINE,      /* CosineDecay(initial, decay_steps, alpha) */
    SCHED_COUNT
} sched_kind;

typedef struct model_schedule {
    sched_kind kind;
    double initial;
    double decay_steps, decay_rate, alpha;
    bool staircase;
    int n_bounds;
    double bounds[MODEL_MAX_BOUNDS];
    double values[MODEL_MAX_BOUNDS + 1];
} model_schedule;

typedef struct model_optim_config {
    optim_kind kind;
    model_schedule lr;
    double momentum; /* SGD, RMSprop */
    bool nesterov;
    double beta_1, beta_2, epsilon;
    bool amsgrad;
    double weight_decay; /* AdamW (and Keras 3 weight_decay on any optimizer); 0 = off */
    double rho;          /* RMSprop */
    bool centered;
    double initial_accumulator_value;            /* Adagrad */
    double clipnorm, clipvalue, global_clipnorm; /* 0 = off */
} model_optim_config;

/* Keras defaults for each optimizer (learning rate 0.001 except SGD 0.01, ...). */
model_optim_config model_optim_config_default(optim_kind kind);

/* Optimizer state in a flat layout: slot k of trainable element i is slots[k * n_trainable + i].
 * Slot meanings per optimizer are fixed by trainer/optim.h. */
typedef struct model_optim_state {
    int64_t iterations;
    int n_slots;
    float *slots;      /* owned by the model; NULL when n_slots == 0 */
    double scalars[4]; /* per-optimizer scalars (Nadam's momentum-schedule product) */
} model_optim_state;

typedef struct model_train_config {
    bool compiled;        /* a training_config was given or set */
    int n_losses;         /* one per output (or 1 applied to all) */
    model_loss *losses;   /* owned */
    double *loss_weights; /* owned, n_losses entries, default 1 */
    int n_metrics;
    metric_kind metrics[MODEL_MAX_METRICS];
    model_optim_config optim;
} model_train_config;

typedef struct model {
    char name[MODEL_NAME_MAX];
    bool sequential; /* came from (and is written as) a Sequential config */
    int n_layers, cap_layers;
    model_layer *layers;
    int n_inputs, n_outputs;
    model_ref *inputs, *outputs; /* owned */
    /* Set by model_build: */
    bool built;
    int n_order;
    model_ref *order; /* every node {layer, node, 0} in dependency order; owned */
    int n_weights;
    model_weight *weights; /* owned */
    size_t n_params, n_trainable;
    float *params; /* owned, n_params floats */
    model_train_config train;
    model_optim_state opt;
} model;

/* A new empty model. *out owns it (model_destroy). */
int model_create(model **out, err_info *e);
void model_destroy(model *m);

/* Appends a layer of this kind with Keras defaults for its config; *index receives its index.
 * ERR_CONFIG if the name is already used. Invalidates model_layer pointers. */
int model_layer_add(model *m, layer_kind kind, const char *name, int *index, err_info *e);
/* Appends a call of layer `layer` consuming in[0..n_in). */
int model_node_add(model *m, int layer, int n_in, const model_ref *in, err_info *e);
int model_inputs_set(model *m, int n, const model_ref *refs, err_info *e);
int model_outputs_set(model *m, int n, const model_ref *refs, err_info *e);
/* Index of the layer with this name, or -1. */
int model_layer_find(const model *m, const char *name);

/* Validates the graph (references, cycles), infers every node's output shapes (errors name the
 * layer and the shapes), orders the nodes, creates the weights with Keras shapes and names
 * "<layer>/<weight>:0", and allocates params (zeroed). Idempotent configuration-wise: calling it
 * again on a built model is an error.
 * Details: an InputLayer without a node gets its single call added here (callers need not
 * model_node_add() it); every InputLayer must be listed in m->inputs; the batch extent of every
 * inferred shape is -1 (an InputLayer's input_shape keeps a fixed batch size if it had one).
 * Recurrent weights are named "<layer>/<kind>_cell/<weight>:0" ("lstm/lstm_cell/kernel:0") as
 * tf.keras does. A recurrent layer's node may have 1 + n_states inputs (initial states). A
 * shared layer's later calls must need the same weight shapes as its first call. On failure
 * nothing but the nodes' out shapes has been written and m->built stays false. */
int model_build(model *m, err_info *e);

/* Fixes the free extents (-1, e.g. a variable number of time steps) of the model inputs to the
 * given row shapes and re-infers every node's shapes; weights are unchanged (an error if a new
 * extent would change a weight's shape). rows[i] is input i's shape without the batch axis
 * (rank = the input's rank - 1). Known extents must match (ERR_SHAPE naming the input). On
 * failure the model is as it was. */
int model_inputs_specialize(model *m, const model_shape *rows, err_info *e);

/* Weight lookup within a layer by its short name ("kernel", "bias", "gamma", ...): index into
 * m->weights or -1. */
int model_weight_find(const model *m, int layer, const char *short_name);
/* A tensor view of weight w (borrowed data pointer into m->params). */
tensor model_weight_tensor(const model *m, int w);

/* Sets the optimizer state size (n_slots for the configured optimizer), zeroing it. */
int model_opt_state_alloc(model *m, int n_slots, err_info *e);

/* Sets the training config: copies losses (n entries) and loss weights (NULL = all 1). */
int model_train_set_losses(model *m, int n, const model_loss *losses, const double *weights,
                           err_info *e);

/* Kind table (the one table of Keras class names, shared by every format). */
const char *model_kind_class_name(layer_kind kind); /* "Dense", "Conv2D", ... */
/* Keras class name (current spellings) -> kind; -1 if unknown. */
int model_kind_from_class_name(const char *class_name);

/* Static spellings of the training enums: "sparse_categorical_crossentropy", "adam", ... */
const char *model_loss_name(loss_kind k);
const char *model_metric_name(metric_kind k);
const char *model_optim_name(optim_kind k);     /* Keras class name: "SGD", "Adam", ... */
const char *model_pad_name(pad_kind k);         /* "valid", "same", "causal" */
const char *model_sched_name(sched_kind k);     /* "constant", "ExponentialDecay", ... */
const char *model_init_class_name(init_kind k); /* Keras class name: "Zeros", "VarianceScaling" */

#endif
