/* model.c: the kind table, Keras defaults, graph editing, and model_build (validation, shape
 * inference and weight creation) for every layer kind, including each error path. */
#include "trainer/model.h"

#include <string.h>

#include "test_util.h"

static model *new_model(void)
{
    model *m = NULL;
    err_info e = {0};
    EXPECT(model_create(&m, &e) == ERR_OK);
    return m;
}

/* Adds an InputLayer with batch shape [-1, dims...]; returns its index. */
static int add_input(model *m, const char *name, int rank, const int64_t *dims)
{
    int idx = -1;
    err_info e = {0};
    EXPECT(model_layer_add(m, LAYER_INPUT, name, &idx, &e) == ERR_OK);
    m->layers[idx].input_shape.rank = rank + 1;
    m->layers[idx].input_shape.dims[0] = -1;
    for (int i = 0; i < rank; i++)
        m->layers[idx].input_shape.dims[i + 1] = dims[i];
    return idx;
}

/* Appends layer `kind` called on output 0 of node 0 of layer `src`. */
static int add_on(model *m, layer_kind kind, const char *name, int src)
{
    int idx = -1;
    err_info e = {0};
    EXPECT(model_layer_add(m, kind, name, &idx, &e) == ERR_OK);
    model_ref r = {src, 0, 0};
    EXPECT(model_node_add(m, idx, 1, &r, &e) == ERR_OK);
    return idx;
}

static void set_io(model *m, int in, int out)
{
    err_info e = {0};
    model_ref a = {in, 0, 0}, b = {out, 0, 0};
    EXPECT(model_inputs_set(m, 1, &a, &e) == ERR_OK);
    EXPECT(model_outputs_set(m, 1, &b, &e) == ERR_OK);
}

static int shape_is(const model_shape *s, int rank, const int64_t *dims)
{
    if (s->rank != rank)
        return 0;
    for (int i = 0; i < rank; i++)
        if (s->dims[i] != dims[i])
            return 0;
    return 1;
}

static void test_tables(void)
{
    for (int k = 0; k < LAYER_COUNT; k++) {
        const char *n = model_kind_class_name((layer_kind)k);
        EXPECT_MSG(n != NULL && n[0] != '\0', "kind %d has no class name", k);
        EXPECT_MSG(n != NULL && model_kind_from_class_name(n) == k, "kind %d round trip", k);
    }
    EXPECT(model_kind_from_class_name("Lambda") == -1);
    EXPECT(model_kind_from_class_name("MaxPool2D") == LAYER_MAXPOOL2D);
    EXPECT(model_kind_class_name(LAYER_COUNT) == NULL);
    for (int k = 0; k < LOSS_COUNT; k++)
        EXPECT(model_loss_name((loss_kind)k)[0] != '\0' &&
               strcmp(model_loss_name((loss_kind)k), "?") != 0);
    for (int k = 0; k < METRIC_COUNT; k++)
        EXPECT(strcmp(model_metric_name((metric_kind)k), "?") != 0);
    for (int k = 0; k < OPTIM_COUNT; k++)
        EXPECT(strcmp(model_optim_name((optim_kind)k), "?") != 0);
    for (int k = 0; k < PAD_COUNT; k++)
        EXPECT(strcmp(model_pad_name((pad_kind)k), "?") != 0);
    for (int k = 0; k < SCHED_COUNT; k++)
        EXPECT(strcmp(model_sched_name((sched_kind)k), "?") != 0);
    for (int k = 0; k < INIT_COUNT; k++)
        EXPECT(strcmp(model_init_class_name((init_kind)k), "?") != 0);
    EXPECT(strcmp(model_loss_name(LOSS_SPARSE_CCE), "sparse_categorical_crossentropy") == 0);
    EXPECT(strcmp(model_optim_name(OPTIM_RMSPROP), "RMSprop") == 0);
}

static void test_defaults(void)
{
    layer_config d = layer_config_default(LAYER_DENSE);
    EXPECT(d.use_bias && d.activation == ACT_LINEAR);
    EXPECT(d.kernel_init.kind == INIT_VARIANCE_SCALING && d.kernel_init.a == 1.0 &&
           d.kernel_init.mode == INIT_FAN_AVG && d.kernel_init.dist == INIT_DIST_UNIFORM);
    EXPECT(d.bias_init.kind == INIT_ZEROS);
    layer_config c = layer_config_default(LAYER_CONV2D);
    EXPECT(c.strides[0] == 1 && c.strides[1] == 1 && c.dilation[0] == 1 && c.padding == PAD_VALID);
    layer_config p = layer_config_default(LAYER_MAXPOOL2D);
    EXPECT(p.pool_size[0] == 2 && p.pool_strides[0] == 2 && p.pool_strides[1] == 2);
    layer_config b = layer_config_default(LAYER_BATCHNORM);
    EXPECT(b.axis == -1 && b.momentum == 0.99 && b.epsilon == 1e-3 && b.center && b.scale);
    EXPECT(b.gamma_init.kind == INIT_ONES && b.beta_init.kind == INIT_ZEROS &&
           b.moving_mean_init.kind == INIT_ZEROS && b.moving_variance_init.kind == INIT_ONES);
    EXPECT(layer_config_default(LAYER_DROPOUT).dropout_seed == -1);
    EXPECT(layer_config_default(LAYER_RELU).max_value < 0);
    EXPECT(layer_config_default(LAYER_LEAKYRELU).alpha == 0.3);
    EXPECT(layer_config_default(LAYER_ELU).alpha == 1.0);
    EXPECT(layer_config_default(LAYER_SOFTMAX).axis == -1);
    layer_config g = layer_config_default(LAYER_GRU);
    EXPECT(g.activation == ACT_TANH && g.recurrent_activation == ACT_SIGMOID && g.reset_after);
    EXPECT(g.recurrent_init.kind == INIT_ORTHOGONAL && g.recurrent_init.a == 1.0);
    EXPECT(layer_config_default(LAYER_LSTM).unit_forget_bias);
    layer_config em = layer_config_default(LAYER_EMBEDDING);
    EXPECT(em.embeddings_init.kind == INIT_RANDOM_UNIFORM && em.embeddings_init.a == -0.05 &&
           em.embeddings_init.b == 0.05);
    model_optim_config o = model_optim_config_default(OPTIM_SGD);
    EXPECT(o.lr.kind == SCHED_CONSTANT && o.lr.initial == 0.01 && o.momentum == 0);
    o = model_optim_config_default(OPTIM_ADAM);
    EXPECT(o.lr.initial == 0.001 && o.beta_1 == 0.9 && o.beta_2 == 0.999 && o.epsilon == 1e-7);
    EXPECT(model_optim_config_default(OPTIM_ADAMW).weight_decay == 0.004);
    o = model_optim_config_default(OPTIM_RMSPROP);
    EXPECT(o.lr.initial == 0.001 && o.rho == 0.9 && o.epsilon == 1e-7 && o.momentum == 0);
    o = model_optim_config_default(OPTIM_ADAGRAD);
    EXPECT(o.lr.initial == 0.001 && o.initial_accumulator_value == 0.1 && o.epsilon == 1e-7);
    o = model_optim_config_default(OPTIM_NADAM);
    EXPECT(o.lr.initial == 0.001 && o.beta_1 == 0.9 && o.beta_2 == 0.999);
}

static void test_mlp(void)
{
    model *m = new_model();
    err_info e = {0};
    int in = add_input(m, "input", 1, (int64_t[]){784});
    int d1 = add_on(m, LAYER_DENSE, "dense", in);
    m->layers[d1].cfg.units = 128;
    int bn = add_on(m, LAYER_BATCHNORM, "bn", d1);
    int d2 = add_on(m, LAYER_DENSE, "dense_1", bn);
    m->layers[d2].cfg.units = 10;
    m->layers[d2].cfg.use_bias = false;
    set_io(m, in, d2);
    int rc = model_build(m, &e);
    EXPECT_MSG(rc == ERR_OK, "%s", e.msg);
    EXPECT(m->built);
    EXPECT(m->n_order == 4);
    EXPECT(m->n_weights == 7);
    EXPECT(m->n_params == 784 * 128 + 128 + 4 * 128 + 1280);
    EXPECT(m->n_trainable == 784 * 128 + 128 + 2 * 128 + 1280);
    EXPECT(strcmp(m->weights[0].name, "dense/kernel:0") == 0);
    EXPECT(m->weights[0].shape[0] == 784 && m->weights[0].shape[1] == 128);
    EXPECT(strcmp(m->weights[4].name, "bn/moving_mean:0") == 0);
    EXPECT(!m->weights[4].trainable);
    /* Non-trainable weights come after every trainable one in params. */
    EXPECT(m->weights[4].offset == m->n_trainable);
    EXPECT(m->weights[5].offset == m->n_trainable + 128);
    EXPECT(m->weights[6].offset == 784 * 128 + 128 + 2 * 128);
    EXPECT(m->layers[bn].weight0 == 2 && m->layers[bn].n_weights == 4);
    EXPECT(model_weight_find(m, d1, "bias") == 1);
    EXPECT(model_weight_find(m, bn, "moving_variance") == 5);
    EXPECT(model_weight_find(m, d2, "bias") == -1);
    EXPECT(model_weight_find(m, 99, "bias") == -1);
    tensor t = model_weight_tensor(m, 6);
    EXPECT(t.rank == 2 && t.shape[0] == 128 && t.shape[1] == 10 && t.dt == DTYPE_F32);
    EXPECT((float *)t.data == m->params + m->weights[6].offset);
    EXPECT(shape_is(&m->layers[d2].nodes[0].out[0], 2, (int64_t[]){-1, 10}));
    for (size_t i = 0; i < m->n_params; i++)
        if (m->params[i] != 0.0f) {
            EXPECT(!"params not zeroed");
            break;
        }
    EXPECT(model_build(m, &e) == ERR_USAGE);
    EXPECT(model_layer_add(m, LAYER_DENSE, "late", NULL, &e) == ERR_USAGE);

    /* Optimizer state and training config. */
    EXPECT(model_opt_state_alloc(m, 2, &e) == ERR_OK);
    EXPECT(m->opt.n_slots == 2 && m->opt.slots != NULL && m->opt.iterations == 0);
    m->opt.slots[2 * m->n_trainable - 1] = 1.0f;
    m->opt.iterations = 5;
    EXPECT(model_opt_state_alloc(m, 1, &e) == ERR_OK);
    EXPECT(m->opt.n_slots == 1 && m->opt.slots[m->n_trainable - 1] == 0.0f &&
           m->opt.iterations == 0);
    EXPECT(model_opt_state_alloc(m, MODEL_MAX_SLOTS + 1, &e) == ERR_USAGE);
    EXPECT(model_opt_state_alloc(m, 0, &e) == ERR_OK && m->opt.slots == NULL);
    model_loss l[2] = {{LOSS_MSE, false, 1.0, 0.0}, {LOSS_CCE, true, 1.0, 0.1}};
    double w[2] = {0.5, 2.0};
    EXPECT(model_train_set_losses(m, 2, l, w, &e) == ERR_OK);
    EXPECT(m->train.compiled && m->train.n_losses == 2 && m->train.losses[1].from_logits &&
           m->train.loss_weights[1] == 2.0);
    EXPECT(model_train_set_losses(m, 1, l, NULL, &e) == ERR_OK);
    EXPECT(m->train.n_losses == 1 && m->train.loss_weights[0] == 1.0);
    model_destroy(m);
    model_destroy(NULL);
}

/* One layer of `kind` on an input of shape [-1, in...]: checks the output shape, the weight
 * count and the parameter count. cfg (may be NULL) adjusts the config. */
typedef void (*cfg_fn)(layer_config *c);

static void one_layer(layer_kind kind, int in_rank, const int64_t *in, cfg_fn cfg, int out_rank,
                      const int64_t *out, int n_weights, size_t n_params, int line)
{
    model *m = new_model();
    err_info e = {0};
    int i = add_input(m, "in", in_rank, in);
    int l = add_on(m, kind, "layer", i);
    if (cfg != NULL)
        cfg(&m->layers[l].cfg);
    set_io(m, i, l);
    int rc = model_build(m, &e);
    EXPECT_MSG(rc == ERR_OK, "line %d: %s", line, e.msg);
    if (rc == ERR_OK) {
        const model_shape *s = &m->layers[l].nodes[0].out[0];
        char b[128];
        EXPECT_MSG(shape_is(s, out_rank + 1, (int64_t[]){-1, out[0], out[1], out[2], out[3]}),
                   "line %d: output %s", line, tensor_shape_str(s->rank, s->dims, b, sizeof b));
        EXPECT_MSG(m->n_weights == n_weights, "line %d: %d weights", line, m->n_weights);
        EXPECT_MSG(m->n_params == n_params, "line %d: %zu params", line, m->n_params);
    }
    model_destroy(m);
}

#define D(...) ((const int64_t[]){__VA_ARGS__, 0, 0, 0, 0})
#define ONE(kind, ir, in, cfg, orank, out, nw, np)                                                 \
    one_layer(kind, ir, in, cfg, orank, out, nw, np, __LINE__)

static void c_dense5(layer_config *c)
{
    c->units = 5;
}
static void c_conv(layer_config *c)
{
    c->filters = 4;
    c->kernel_size[0] = c->kernel_size[1] = 3;
}
static void c_conv_same2(layer_config *c)
{
    c_conv(c);
    c->padding = PAD_SAME;
    c->strides[0] = c->strides[1] = 2;
}
static void c_conv_first(layer_config *c)
{
    c_conv(c);
    c->channels_first = true;
}
static void c_conv_dil(layer_config *c)
{
    c_conv(c);
    c->dilation[0] = c->dilation[1] = 2;
    c->use_bias = false;
}
static void c_conv1_causal(layer_config *c)
{
    c->filters = 2;
    c->kernel_size[0] = 3;
    c->dilation[0] = 2;
    c->padding = PAD_CAUSAL;
}
static void c_conv1_s2(layer_config *c)
{
    c->filters = 2;
    c->kernel_size[0] = 3;
    c->strides[0] = 2;
}
static void c_same(layer_config *c)
{
    c->padding = PAD_SAME;
}
static void c_pool3s1(layer_config *c)
{
    c->pool_size[0] = c->pool_size[1] = 3;
    c->pool_strides[0] = c->pool_strides[1] = 1;
}
static void c_first(layer_config *c)
{
    c->channels_first = true;
}
static void c_reshape(layer_config *c)
{
    c->target_rank = 2;
    c->target_shape[0] = 3;
    c->target_shape[1] = -1;
}
static void c_zeropad(layer_config *c)
{
    c->zero_pad[0] = 1;
    c->zero_pad[1] = 2;
    c->zero_pad[2] = 3;
    c->zero_pad[3] = 4;
}
static void c_bn_noscale(layer_config *c)
{
    c->scale = false;
}
static void c_bn_axis1(layer_config *c)
{
    c->axis = 1;
}
static void c_embed(layer_config *c)
{
    c->input_dim = 10;
    c->output_dim = 4;
}
static void c_rnn5(layer_config *c)
{
    c->units = 5;
}
static void c_rnn5_seq(layer_config *c)
{
    c->units = 5;
    c->return_sequences = true;
}
static void c_gru_v1(layer_config *c)
{
    c->units = 5;
    c->reset_after = false;
}
static void c_softmax1(layer_config *c)
{
    c->axis = 1;
}
static void c_dropout(layer_config *c)
{
    c->rate = 0.5;
}

static void test_kinds(void)
{
    ONE(LAYER_DENSE, 1, D(3), c_dense5, 1, D(5), 2, 20);
    ONE(LAYER_DENSE, 2, D(4, 3), c_dense5, 2, D(4, 5), 2, 20); /* acts on the last axis */
    ONE(LAYER_CONV2D, 3, D(8, 8, 2), c_conv, 3, D(6, 6, 4), 2, 3 * 3 * 2 * 4 + 4);
    ONE(LAYER_CONV2D, 3, D(8, 7, 2), c_conv_same2, 3, D(4, 4, 4), 2, 76);
    ONE(LAYER_CONV2D, 3, D(2, 8, 8), c_conv_first, 3, D(4, 6, 6), 2, 76);
    ONE(LAYER_CONV2D, 3, D(8, 8, 2), c_conv_dil, 3, D(4, 4, 4), 1, 72);
    ONE(LAYER_CONV2D, 3, D(-1, -1, 2), c_conv, 3, D(-1, -1, 4), 2, 76);
    ONE(LAYER_CONV1D, 2, D(10, 3), c_conv1_causal, 2, D(10, 2), 2, 3 * 3 * 2 + 2);
    ONE(LAYER_CONV1D, 2, D(10, 3), c_conv1_s2, 2, D(4, 2), 2, 20);
    ONE(LAYER_MAXPOOL2D, 3, D(7, 7, 3), NULL, 3, D(3, 3, 3), 0, 0);
    ONE(LAYER_MAXPOOL2D, 3, D(7, 7, 3), c_same, 3, D(4, 4, 3), 0, 0);
    ONE(LAYER_AVGPOOL2D, 3, D(7, 7, 3), c_pool3s1, 3, D(5, 5, 3), 0, 0);
    ONE(LAYER_AVGPOOL2D, 3, D(3, 7, 6), c_first, 3, D(3, 3, 3), 0, 0);
    ONE(LAYER_MAXPOOL1D, 2, D(9, 3), NULL, 2, D(4, 3), 0, 0);
    ONE(LAYER_AVGPOOL1D, 2, D(9, 3), c_same, 2, D(5, 3), 0, 0);
    ONE(LAYER_GAP2D, 3, D(5, 5, 3), NULL, 1, D(3), 0, 0);
    ONE(LAYER_GMP2D, 3, D(3, 5, 5), c_first, 1, D(3), 0, 0);
    ONE(LAYER_GAP1D, 2, D(5, 3), NULL, 1, D(3), 0, 0);
    ONE(LAYER_GMP1D, 2, D(5, 3), NULL, 1, D(3), 0, 0);
    ONE(LAYER_FLATTEN, 3, D(2, 3, 4), NULL, 1, D(24), 0, 0);
    ONE(LAYER_FLATTEN, 2, D(-1, 3), NULL, 1, D(-1), 0, 0);
    ONE(LAYER_RESHAPE, 1, D(12), c_reshape, 2, D(3, 4), 0, 0);
    ONE(LAYER_RESHAPE, 2, D(-1, 6), c_reshape, 2, D(3, -1), 0, 0);
    ONE(LAYER_DROPOUT, 2, D(4, 3), c_dropout, 2, D(4, 3), 0, 0);
    ONE(LAYER_ACTIVATION, 1, D(3), NULL, 1, D(3), 0, 0);
    ONE(LAYER_BATCHNORM, 3, D(4, 4, 3), NULL, 3, D(4, 4, 3), 4, 12);
    ONE(LAYER_BATCHNORM, 3, D(4, 4, 3), c_bn_noscale, 3, D(4, 4, 3), 3, 9);
    ONE(LAYER_BATCHNORM, 3, D(2, 4, 4), c_bn_axis1, 3, D(2, 4, 4), 4, 8);
    ONE(LAYER_ZEROPAD2D, 3, D(5, 5, 1), c_zeropad, 3, D(8, 12, 1), 0, 0);
    ONE(LAYER_RELU, 1, D(3), NULL, 1, D(3), 0, 0);
    ONE(LAYER_LEAKYRELU, 1, D(3), NULL, 1, D(3), 0, 0);
    ONE(LAYER_SOFTMAX, 2, D(4, 3), c_softmax1, 2, D(4, 3), 0, 0);
    ONE(LAYER_ELU, 1, D(3), NULL, 1, D(3), 0, 0);
    ONE(LAYER_EMBEDDING, 1, D(7), c_embed, 2, D(7, 4), 1, 40);
    ONE(LAYER_EMBEDDING, 2, D(7, 2), c_embed, 3, D(7, 2, 4), 1, 40);
    ONE(LAYER_SIMPLERNN, 2, D(7, 3), c_rnn5, 1, D(5), 3, 15 + 25 + 5);
    ONE(LAYER_LSTM, 2, D(7, 3), c_rnn5_seq, 2, D(7, 5), 3, 4 * (15 + 25 + 5));
    ONE(LAYER_GRU, 2, D(-1, 3), c_rnn5_seq, 2, D(-1, 5), 3, 3 * (15 + 25) + 30);
    ONE(LAYER_GRU, 2, D(7, 3), c_gru_v1, 1, D(5), 3, 3 * (15 + 25 + 5));
}

static void test_rnn_details(void)
{
    model *m = new_model();
    err_info e = {0};
    int in = add_input(m, "x", 2, D(7, 3));
    int l = add_on(m, LAYER_LSTM, "lstm", in);
    m->layers[l].cfg.units = 4;
    m->layers[l].cfg.return_state = true;
    int g = add_on(m, LAYER_GRU, "gru", in);
    m->layers[g].cfg.units = 2;
    m->layers[g].cfg.return_state = true;
    m->layers[g].cfg.return_sequences = true;
    int s = add_on(m, LAYER_SIMPLERNN, "rnn", in);
    m->layers[s].cfg.units = 4;
    /* The SimpleRNN starts from the LSTM's hidden state (initial_state). */
    model_ref st[2] = {{in, 0, 0}, {l, 0, 1}};
    EXPECT(model_node_add(m, s, 2, st, &e) == ERR_OK);
    model_ref outs[4] = {{l, 0, 0}, {l, 0, 2}, {g, 0, 1}, {s, 1, 0}};
    model_ref ins = {in, 0, 0};
    EXPECT(model_inputs_set(m, 1, &ins, &e) == ERR_OK);
    EXPECT(model_outputs_set(m, 4, outs, &e) == ERR_OK);
    int rc = model_build(m, &e);
    EXPECT_MSG(rc == ERR_OK, "%s", e.msg);
    if (rc == ERR_OK) {
        EXPECT(m->layers[l].nodes[0].n_out == 3);
        EXPECT(m->layers[g].nodes[0].n_out == 2);
        EXPECT(shape_is(&m->layers[g].nodes[0].out[0], 3, D(-1, 7, 2)));
        EXPECT(shape_is(&m->layers[g].nodes[0].out[1], 2, D(-1, 2)));
        EXPECT(m->layers[s].n_nodes == 2 && m->layers[s].nodes[1].n_out == 1);
        EXPECT(strcmp(m->weights[0].name, "lstm/lstm_cell/kernel:0") == 0);
        EXPECT(strcmp(m->weights[4].name, "gru/gru_cell/recurrent_kernel:0") == 0);
        EXPECT(m->weights[5].rank == 2 && m->weights[5].shape[0] == 2 &&
               m->weights[5].shape[1] == 6);
        EXPECT(strcmp(m->weights[8].name, "rnn/simple_rnn_cell/bias:0") == 0);
        EXPECT(m->n_order == 5);
    }
    model_destroy(m);
}

static void test_merge_shared_order(void)
{
    model *m = new_model();
    err_info e = {0};
    int a = add_input(m, "a", 1, D(3));
    int b = add_input(m, "b", 1, D(3));
    /* Layer order deliberately puts the consumers before the producers. */
    int cat = -1, add = -1, sh = -1, frz = -1;
    EXPECT(model_layer_add(m, LAYER_CONCAT, "cat", &cat, &e) == ERR_OK);
    EXPECT(model_layer_add(m, LAYER_ADD, "add", &add, &e) == ERR_OK);
    EXPECT(model_layer_add(m, LAYER_DENSE, "shared", &sh, &e) == ERR_OK);
    EXPECT(model_layer_add(m, LAYER_DENSE, "frozen", &frz, &e) == ERR_OK);
    m->layers[sh].cfg.units = 4;
    m->layers[frz].cfg.units = 2;
    m->layers[frz].trainable = false;
    model_ref ra = {a, 0, 0}, rb = {b, 0, 0};
    EXPECT(model_node_add(m, sh, 1, &ra, &e) == ERR_OK);
    EXPECT(model_node_add(m, sh, 1, &rb, &e) == ERR_OK);
    model_ref two[2] = {{sh, 0, 0}, {sh, 1, 0}};
    EXPECT(model_node_add(m, add, 2, two, &e) == ERR_OK);
    model_ref cc[2] = {{add, 0, 0}, {a, 0, 0}};
    EXPECT(model_node_add(m, cat, 2, cc, &e) == ERR_OK);
    model_ref rc_ = {cat, 0, 0};
    EXPECT(model_node_add(m, frz, 1, &rc_, &e) == ERR_OK);
    model_ref ins[2] = {{a, 0, 0}, {b, 0, 0}};
    model_ref out = {frz, 0, 0};
    EXPECT(model_inputs_set(m, 2, ins, &e) == ERR_OK);
    EXPECT(model_outputs_set(m, 1, &out, &e) == ERR_OK);
    int rc = model_build(m, &e);
    EXPECT_MSG(rc == ERR_OK, "%s", e.msg);
    if (rc == ERR_OK) {
        EXPECT(shape_is(&m->layers[cat].nodes[0].out[0], 2, D(-1, 7)));
        EXPECT(m->n_weights == 4); /* shared layer: one kernel, one bias */
        EXPECT(m->n_trainable == 16 && m->n_params == 16 + 16);
        EXPECT(!m->weights[2].trainable && !m->weights[3].trainable);
        EXPECT(m->weights[2].offset == 16 && m->weights[3].offset == 30);
        /* Producers come before consumers in m->order. */
        int pos[8][2];
        memset(pos, -1, sizeof pos);
        for (int i = 0; i < m->n_order; i++)
            pos[m->order[i].layer][m->order[i].node] = i;
        EXPECT(m->n_order == 7);
        EXPECT(pos[sh][0] < pos[add][0] && pos[sh][1] < pos[add][0] && pos[add][0] < pos[cat][0] &&
               pos[cat][0] < pos[frz][0] && pos[a][0] < pos[sh][0] && pos[b][0] < pos[sh][1]);
    }
    model_destroy(m);
}

/* ---- error paths: each returns the code and names the layer ---- */

typedef void (*mutate_fn)(model *m, int in, int l);

static void expect_error(layer_kind kind, int in_rank, const int64_t *in, cfg_fn cfg, int want_code,
                         const char *want_text, int line)
{
    model *m = new_model();
    err_info e = {0};
    int i = add_input(m, "in", in_rank, in);
    int l = add_on(m, kind, "bad_layer", i);
    if (cfg != NULL)
        cfg(&m->layers[l].cfg);
    set_io(m, i, l);
    int rc = model_build(m, &e);
    EXPECT_MSG(rc == want_code, "line %d: code %s, expected %s (%s)", line,
               err_code_str((err_code)rc), err_code_str((err_code)want_code), e.msg);
    EXPECT_MSG(strstr(e.msg, "bad_layer") != NULL, "line %d: message does not name the layer: %s",
               line, e.msg);
    EXPECT_MSG(want_text == NULL || strstr(e.msg, want_text) != NULL,
               "line %d: message lacks \"%s\": %s", line, want_text, e.msg);
    EXPECT(!m->built);
    model_destroy(m);
}
#define BAD(kind, ir, in, cfg, code, text) expect_error(kind, ir, in, cfg, code, text, __LINE__)

static void c_units0(layer_config *c)
{
    c->units = 0;
}
static void c_conv_causal(layer_config *c)
{
    c_conv(c);
    c->padding = PAD_CAUSAL;
}
static void c_conv_s2d2(layer_config *c)
{
    c_conv_dil(c);
    c->strides[0] = 2;
}
static void c_conv_nofilters(layer_config *c)
{
    c->kernel_size[0] = 3;
}
static void c_pool5(layer_config *c)
{
    c->pool_size[0] = c->pool_size[1] = 5;
}
static void c_reshape5(layer_config *c)
{
    c->target_rank = 1;
    c->target_shape[0] = 5;
}
static void c_reshape_2unknown(layer_config *c)
{
    c->target_rank = 2;
    c->target_shape[0] = -1;
    c->target_shape[1] = -1;
}
static void c_reshape_7(layer_config *c)
{
    c->target_rank = 2;
    c->target_shape[0] = 7;
    c->target_shape[1] = -1;
}
static void c_axis5(layer_config *c)
{
    c->axis = 5;
}
static void c_axis0(layer_config *c)
{
    c->axis = 0;
}
static void c_stateful(layer_config *c)
{
    c->units = 3;
    c->stateful = true;
}
static void c_embed0(layer_config *c)
{
    c->output_dim = 3;
}
static void c_rate1(layer_config *c)
{
    c->rate = 1.0;
}
static void c_negpad(layer_config *c)
{
    c->zero_pad[2] = -1;
}
static void c_eps0(layer_config *c)
{
    c->epsilon = 0;
}

static void test_errors(void)
{
    BAD(LAYER_DENSE, 1, D(-1), c_dense5, ERR_SHAPE, "[None, None]");
    BAD(LAYER_DENSE, 1, D(3), c_units0, ERR_CONFIG, "units");
    BAD(LAYER_CONV2D, 2, D(8, 2), c_conv, ERR_SHAPE, "expected rank 4");
    BAD(LAYER_CONV2D, 3, D(2, 2, 2), c_conv, ERR_SHAPE, "too small");
    BAD(LAYER_CONV2D, 3, D(8, 8, 2), c_conv_causal, ERR_CONFIG, "causal");
    BAD(LAYER_CONV2D, 3, D(8, 8, 2), c_conv_s2d2, ERR_CONFIG, "dilation");
    BAD(LAYER_CONV2D, 3, D(8, 8, 2), c_conv_nofilters, ERR_CONFIG, "filters");
    BAD(LAYER_CONV2D, 3, D(8, 8, -1), c_conv, ERR_SHAPE, "channels");
    BAD(LAYER_CONV1D, 3, D(8, 8, 2), c_conv1_s2, ERR_SHAPE, "rank");
    BAD(LAYER_MAXPOOL2D, 3, D(3, 3, 1), c_pool5, ERR_SHAPE, "pool_size 5");
    BAD(LAYER_AVGPOOL1D, 3, D(3, 3, 1), NULL, ERR_SHAPE, "rank");
    BAD(LAYER_GAP2D, 2, D(3, 3), NULL, ERR_SHAPE, "rank");
    BAD(LAYER_RESHAPE, 1, D(12), c_reshape5, ERR_SHAPE, "12");
    BAD(LAYER_RESHAPE, 1, D(12), c_reshape_2unknown, ERR_CONFIG, "target_shape");
    BAD(LAYER_RESHAPE, 1, D(12), c_reshape_7, ERR_SHAPE, "reshaped");
    BAD(LAYER_RESHAPE, 1, D(12), NULL, ERR_CONFIG, "target_shape");
    BAD(LAYER_BATCHNORM, 1, D(3), c_axis5, ERR_CONFIG, "axis 5");
    BAD(LAYER_BATCHNORM, 1, D(3), c_axis0, ERR_CONFIG, "axis 0");
    BAD(LAYER_BATCHNORM, 1, D(-1), NULL, ERR_SHAPE, "must be known");
    BAD(LAYER_BATCHNORM, 1, D(3), c_eps0, ERR_CONFIG, "epsilon");
    BAD(LAYER_SOFTMAX, 1, D(3), c_axis5, ERR_CONFIG, "axis");
    BAD(LAYER_LSTM, 1, D(3), c_rnn5, ERR_SHAPE, "timesteps");
    BAD(LAYER_GRU, 2, D(4, 3), c_stateful, ERR_UNSUPPORTED, "stateful");
    BAD(LAYER_SIMPLERNN, 2, D(4, -1), c_rnn5, ERR_SHAPE, "feature");
    BAD(LAYER_EMBEDDING, 1, D(4), c_embed0, ERR_CONFIG, "input_dim");
    BAD(LAYER_DROPOUT, 1, D(4), c_rate1, ERR_CONFIG, "rate");
    BAD(LAYER_ZEROPAD2D, 3, D(4, 4, 1), c_negpad, ERR_CONFIG, "negative");
    BAD(LAYER_ZEROPAD2D, 2, D(4, 4), NULL, ERR_SHAPE, "rank");
    BAD(LAYER_SUBTRACT, 1, D(4), NULL, ERR_CONFIG, "expected 2");
}

static int build_code(model *m, err_info *e)
{
    int rc = model_build(m, e);
    return rc;
}

static void test_graph_errors(void)
{
    err_info e = {0};
    model *m = new_model();
    int idx = -1;
    EXPECT(model_layer_add(m, LAYER_DENSE, "x", &idx, &e) == ERR_OK);
    EXPECT(model_layer_add(m, LAYER_RELU, "x", &idx, &e) == ERR_CONFIG && strstr(e.msg, "\"x\""));
    EXPECT(model_layer_add(m, LAYER_RELU, "", &idx, &e) == ERR_CONFIG);
    EXPECT(model_layer_add(m, LAYER_COUNT, "y", &idx, &e) == ERR_USAGE);
    char long_name[300];
    memset(long_name, 'a', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    EXPECT(model_layer_add(m, LAYER_RELU, long_name, &idx, &e) == ERR_CONFIG);
    EXPECT(model_layer_find(m, "x") == 0 && model_layer_find(m, "nope") == -1);
    EXPECT(model_node_add(m, 7, 0, NULL, &e) == ERR_USAGE);
    EXPECT(build_code(m, &e) == ERR_CONFIG && strstr(e.msg, "\"x\"") && strstr(e.msg, "never"));
    model_destroy(m);

    /* A cycle: a -> b -> a. */
    m = new_model();
    int in = add_input(m, "in", 1, D(3));
    int a = -1, b = -1;
    EXPECT(model_layer_add(m, LAYER_ADD, "a", &a, &e) == ERR_OK);
    EXPECT(model_layer_add(m, LAYER_RELU, "b", &b, &e) == ERR_OK);
    model_ref ra[2] = {{in, 0, 0}, {b, 0, 0}}, rb = {a, 0, 0};
    EXPECT(model_node_add(m, a, 2, ra, &e) == ERR_OK);
    EXPECT(model_node_add(m, b, 1, &rb, &e) == ERR_OK);
    set_io(m, in, b);
    EXPECT(build_code(m, &e) == ERR_CONFIG && strstr(e.msg, "cycle") && strstr(e.msg, "\"a\""));
    model_destroy(m);

    /* A reference to a missing layer, node, and tensor. */
    model_ref bad[3] = {{42, 0, 0}, {0, 3, 0}, {0, 0, 2}};
    const char *want[3] = {"layer 42", "call 3", "output 2"};
    for (int k = 0; k < 3; k++) {
        m = new_model();
        in = add_input(m, "in", 1, D(3));
        int l = -1;
        EXPECT(model_layer_add(m, LAYER_RELU, "user", &l, &e) == ERR_OK);
        EXPECT(model_node_add(m, l, 1, &bad[k], &e) == ERR_OK);
        set_io(m, in, l);
        int rc = build_code(m, &e);
        EXPECT_MSG(rc == ERR_CONFIG && strstr(e.msg, "\"user\"") && strstr(e.msg, want[k]),
                   "bad ref %d: %s", k, e.msg);
        model_destroy(m);
    }

    /* Inputs and outputs. */
    m = new_model();
    in = add_input(m, "in", 1, D(3));
    int r = add_on(m, LAYER_RELU, "relu", in);
    EXPECT(build_code(m, &e) == ERR_CONFIG && strstr(e.msg, "no inputs"));
    model_destroy(m);
    m = new_model();
    in = add_input(m, "in", 1, D(3));
    r = add_on(m, LAYER_RELU, "relu", in);
    set_io(m, r, r);
    EXPECT(build_code(m, &e) == ERR_CONFIG && strstr(e.msg, "\"relu\"") &&
           strstr(e.msg, "InputLayer"));
    model_destroy(m);
    m = new_model();
    in = add_input(m, "in", 1, D(3));
    add_input(m, "orphan", 1, D(3));
    r = add_on(m, LAYER_RELU, "relu", in);
    set_io(m, in, r);
    EXPECT(build_code(m, &e) == ERR_CONFIG && strstr(e.msg, "\"orphan\""));
    model_destroy(m);
    m = new_model();
    in = add_input(m, "in", 1, D(3));
    r = add_on(m, LAYER_RELU, "relu", in);
    set_io(m, in, r);
    m->outputs[0].tensor = 1;
    EXPECT(build_code(m, &e) == ERR_CONFIG && strstr(e.msg, "\"relu\""));
    model_destroy(m);
    m = new_model();
    in = add_input(m, "in", 0, NULL);
    m->layers[in].input_shape.rank = 0;
    r = add_on(m, LAYER_RELU, "relu", in);
    set_io(m, in, r);
    EXPECT(build_code(m, &e) == ERR_CONFIG && strstr(e.msg, "\"in\"") &&
           strstr(e.msg, "batch_shape"));
    model_destroy(m);

    /* A shared layer whose second call needs other weights. */
    m = new_model();
    int x = add_input(m, "x", 1, D(3));
    int y = add_input(m, "y", 1, D(4));
    int d = add_on(m, LAYER_DENSE, "shared_dense", x);
    m->layers[d].cfg.units = 2;
    model_ref ry = {y, 0, 0};
    EXPECT(model_node_add(m, d, 1, &ry, &e) == ERR_OK);
    model_ref ins[2] = {{x, 0, 0}, {y, 0, 0}}, outs[2] = {{d, 0, 0}, {d, 1, 0}};
    EXPECT(model_inputs_set(m, 2, ins, &e) == ERR_OK);
    EXPECT(model_outputs_set(m, 2, outs, &e) == ERR_OK);
    EXPECT(build_code(m, &e) == ERR_SHAPE && strstr(e.msg, "\"shared_dense\"") &&
           strstr(e.msg, "call 1"));
    model_destroy(m);

    /* Merge shape mismatch and concat mismatch name the layer and both shapes. */
    for (int k = 0; k < 2; k++) {
        m = new_model();
        x = add_input(m, "x", 1, D(3));
        y = add_input(m, "y", 2, D(4, 2));
        int mg = -1;
        EXPECT(model_layer_add(m, k ? LAYER_CONCAT : LAYER_MULTIPLY, "merge", &mg, &e) == ERR_OK);
        model_ref two[2] = {{x, 0, 0}, {y, 0, 0}};
        EXPECT(model_node_add(m, mg, 2, two, &e) == ERR_OK);
        model_ref out1 = {mg, 0, 0};
        EXPECT(model_inputs_set(m, 2, ins, &e) == ERR_OK);
        EXPECT(model_outputs_set(m, 1, &out1, &e) == ERR_OK);
        EXPECT(build_code(m, &e) == ERR_SHAPE && strstr(e.msg, "\"merge\"") &&
               strstr(e.msg, "[None, 4, 2]") && strstr(e.msg, "[None, 3]"));
        model_destroy(m);
    }
}

int main(void)
{
    test_tables();
    test_defaults();
    test_mlp();
    test_kinds();
    test_rnn_details();
    test_merge_shared_order();
    test_errors();
    test_graph_errors();
    return test_finish();
}
