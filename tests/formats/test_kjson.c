/* formats/keras_json: model_config and training_config parsing in every Keras dialect, the
 * writer (parse(write(m)) == m for every layer kind), and one handcrafted bad input per
 * rejection path (code and message). */
#include "formats/keras_json.h"

#include "test_kjson_util.h"

static model *parse_ok(const char *json, int line)
{
    model *m = NULL;
    err_info e = {0};
    int rc = kjson_model_parse(json, strlen(json), "test.json", &m, &e);
    EXPECT_MSG(rc == ERR_OK, "line %d: %s", line, e.msg);
    return rc == ERR_OK ? m : NULL;
}
#define PARSE(json) parse_ok(json, __LINE__)

static const model_shape *out_shape(const model *m, const char *name, int node, int t)
{
    int l = model_layer_find(m, name);
    if (l < 0 || node >= m->layers[l].n_nodes || t >= m->layers[l].nodes[node].n_out)
        return NULL;
    return &m->layers[l].nodes[node].out[t];
}

static int dims_are(const model_shape *s, int rank, const int64_t *d)
{
    if (s == NULL || s->rank != rank)
        return 0;
    for (int i = 0; i < rank; i++)
        if (s->dims[i] != d[i])
            return 0;
    return 1;
}
#define DIMS(...) ((const int64_t[]){__VA_ARGS__})

static const model_layer *find(const model *m, const char *name)
{
    int l = model_layer_find(m, name);
    return l >= 0 ? &m->layers[l] : NULL;
}

/* ---- dialects ---- */

static void test_keras1(void)
{
    /* Keras 1.2: a bare list, Keras 1 option names, the th dim ordering. */
    const char *j =
        "{\"class_name\": \"Sequential\", \"config\": ["
        "{\"class_name\": \"Convolution2D\", \"config\": {\"name\": \"conv\", \"nb_filter\": 4, "
        "\"nb_row\": 3, \"nb_col\": 2, \"border_mode\": \"same\", \"subsample\": [2, 1], "
        "\"dim_ordering\": \"th\", \"init\": \"he_normal\", \"bias\": false, \"activation\": "
        "\"relu\", \"W_regularizer\": {\"l2\": 0.01, \"name\": \"WeightRegularizer\", \"l1\": "
        "0.0}, "
        "\"batch_input_shape\": [null, 1, 8, 8], \"input_dtype\": \"float32\", \"trainable\": "
        "true}},"
        "{\"class_name\": \"MaxPooling2D\", \"config\": {\"name\": \"pool\", \"pool_size\": [2, "
        "2], "
        "\"strides\": null, \"border_mode\": \"valid\", \"dim_ordering\": \"th\"}},"
        "{\"class_name\": \"BatchNormalization\", \"config\": {\"name\": \"bn\", \"mode\": 0, "
        "\"axis\": 1, \"epsilon\": 1e-05, \"momentum\": 0.9, \"gamma_init\": \"one\", "
        "\"beta_init\": \"zero\"}},"
        "{\"class_name\": \"Flatten\", \"config\": {\"name\": \"flat\"}},"
        "{\"class_name\": \"Dropout\", \"config\": {\"name\": \"drop\", \"p\": 0.25}},"
        "{\"class_name\": \"Dense\", \"config\": {\"name\": \"dense\", \"output_dim\": 3, "
        "\"init\": \"uniform\", \"bias\": true, \"activation\": \"softmax\"}}]}";
    model *m = PARSE(j);
    if (m == NULL)
        return;
    EXPECT(m->sequential && m->n_layers == 7);
    EXPECT(strcmp(m->layers[0].name, "conv_input") == 0 && m->layers[0].kind == LAYER_INPUT);
    const model_layer *c = find(m, "conv");
    EXPECT(c != NULL && c->kind == LAYER_CONV2D && c->cfg.filters == 4 &&
           c->cfg.kernel_size[0] == 3 && c->cfg.kernel_size[1] == 2 && c->cfg.strides[0] == 2 &&
           c->cfg.strides[1] == 1 && c->cfg.padding == PAD_SAME && c->cfg.channels_first &&
           !c->cfg.use_bias && c->cfg.activation == ACT_RELU && c->cfg.kernel_reg.l2 == 0.01);
    EXPECT(c != NULL && c->cfg.kernel_init.kind == INIT_VARIANCE_SCALING &&
           c->cfg.kernel_init.a == 2.0 && c->cfg.kernel_init.mode == INIT_FAN_IN &&
           strcmp(c->cfg.kernel_init.keras_name, "he_normal") == 0);
    /* th ordering: [b, channels, rows, cols]. */
    EXPECT(dims_are(out_shape(m, "conv", 0, 0), 4, DIMS(-1, 4, 4, 8)));
    EXPECT(dims_are(out_shape(m, "pool", 0, 0), 4, DIMS(-1, 4, 2, 4)));
    const model_layer *bn = find(m, "bn");
    EXPECT(bn != NULL && bn->cfg.axis == 1 && bn->cfg.epsilon == 1e-5 && bn->cfg.momentum == 0.9);
    EXPECT(find(m, "drop") != NULL && find(m, "drop")->cfg.rate == 0.25);
    const model_layer *d = find(m, "dense");
    EXPECT(d != NULL && d->cfg.units == 3 && d->cfg.kernel_init.kind == INIT_RANDOM_UNIFORM &&
           d->cfg.kernel_init.a == -0.05 && d->cfg.activation == ACT_SOFTMAX);
    EXPECT(m->n_params == 3 * 2 * 1 * 4 + 16 + 32 * 3 + 3);
    model_destroy(m);

    /* Keras 1 functional: 3-element inbound nodes, Merge(mode="concat"), an LSTM with
     * hard_sigmoid (the Keras 1 formula), input_dim/input_length. */
    j = "{\"class_name\": \"Model\", \"config\": {\"name\": \"m\", \"layers\": ["
        "{\"class_name\": \"InputLayer\", \"name\": \"a\", \"config\": {\"name\": \"a\", "
        "\"batch_input_shape\": [null, 5, 2], \"input_dtype\": \"float32\", \"sparse\": false}, "
        "\"inbound_nodes\": []},"
        "{\"class_name\": \"LSTM\", \"name\": \"lstm\", \"config\": {\"name\": \"lstm\", "
        "\"output_dim\": 3, \"inner_activation\": \"hard_sigmoid\", \"activation\": \"tanh\", "
        "\"init\": \"glorot_uniform\", \"inner_init\": \"orthogonal\", \"forget_bias_init\": "
        "\"zero\", \"dropout_W\": 0.1, \"dropout_U\": 0.2, \"return_sequences\": false, "
        "\"consume_less\": \"cpu\"}, \"inbound_nodes\": [[[\"a\", 0, 0]]]},"
        "{\"class_name\": \"Flatten\", \"name\": \"f\", \"config\": {\"name\": \"f\"}, "
        "\"inbound_nodes\": [[[\"a\", 0, 0]]]},"
        "{\"class_name\": \"Merge\", \"name\": \"merge\", \"config\": {\"name\": \"merge\", "
        "\"mode\": \"concat\", \"concat_axis\": -1, \"mode_type\": \"raw\"}, "
        "\"inbound_nodes\": [[[\"lstm\", 0, 0], [\"f\", 0, 0]]]}],"
        "\"input_layers\": [[\"a\", 0, 0]], \"output_layers\": [[\"merge\", 0, 0]]}}";
    m = PARSE(j);
    if (m == NULL)
        return;
    const model_layer *l = find(m, "lstm");
    EXPECT(l != NULL && l->cfg.units == 3 && l->cfg.recurrent_activation == ACT_HARD_SIGMOID_K2 &&
           !l->cfg.unit_forget_bias && l->cfg.dropout == 0.1 && l->cfg.recurrent_dropout == 0.2);
    EXPECT(find(m, "merge") != NULL && find(m, "merge")->kind == LAYER_CONCAT);
    EXPECT(dims_are(out_shape(m, "merge", 0, 0), 2, DIMS(-1, 13)));
    EXPECT(!m->sequential && strcmp(m->name, "m") == 0);
    model_destroy(m);
}

static void test_keras2(void)
{
    /* Keras 2.2+ dict Sequential, input_shape on the first layer, initializer objects,
     * VarianceScaling "normal" (truncated), L1L2, Conv1D causal, pooling strides null. */
    const char *j =
        "{\"class_name\": \"Sequential\", \"config\": {\"name\": \"seq\", \"layers\": ["
        "{\"class_name\": \"Conv1D\", \"config\": {\"name\": \"c1\", \"filters\": 2, "
        "\"kernel_size\": [3], \"strides\": [1], \"padding\": \"causal\", \"dilation_rate\": [2], "
        "\"input_shape\": [10, 4], \"kernel_initializer\": {\"class_name\": \"VarianceScaling\", "
        "\"config\": {\"scale\": 2.0, \"mode\": \"fan_out\", \"distribution\": \"normal\", "
        "\"seed\": 3}}, \"kernel_regularizer\": {\"class_name\": \"L1L2\", \"config\": {\"l1\": "
        "0.5, \"l2\": 0.25}}, \"activity_regularizer\": \"l2\"}},"
        "{\"class_name\": \"MaxPooling1D\", \"config\": {\"name\": \"p\", \"pool_size\": [3], "
        "\"strides\": null, \"padding\": \"valid\"}},"
        "{\"class_name\": \"LeakyReLU\", \"config\": {\"name\": \"lr\", \"alpha\": 0.1}},"
        "{\"class_name\": \"GlobalAveragePooling1D\", \"config\": {\"name\": \"g\"}}]}, "
        "\"keras_version\": \"2.2.4\", \"backend\": \"tensorflow\"}";
    model *m = PARSE(j);
    if (m == NULL)
        return;
    EXPECT(strcmp(m->name, "seq") == 0 && m->n_layers == 5);
    EXPECT(dims_are(out_shape(m, "c1", 0, 0), 3, DIMS(-1, 10, 2)));
    EXPECT(dims_are(out_shape(m, "p", 0, 0), 3, DIMS(-1, 3, 2)));
    const model_layer *c = find(m, "c1");
    EXPECT(c != NULL && c->cfg.kernel_init.a == 2.0 && c->cfg.kernel_init.mode == INIT_FAN_OUT &&
           c->cfg.kernel_init.dist == INIT_DIST_TRUNCATED_NORMAL && c->cfg.kernel_init.has_seed &&
           c->cfg.kernel_init.seed == 3 && c->cfg.kernel_reg.l1 == 0.5 &&
           c->cfg.activity_reg.l2 == 0.01);
    EXPECT(find(m, "p") != NULL && find(m, "p")->cfg.pool_strides[0] == 3);
    EXPECT(find(m, "lr") != NULL && find(m, "lr")->cfg.alpha == 0.1);
    model_destroy(m);

    /* Keras 2 functional with a shared layer called twice, 4-element nodes, a GRU without
     * reset_after (Keras 2.0: reset_after=False), build_input_shape not needed. */
    j = "{\"class_name\": \"Model\", \"config\": {\"name\": \"f\", \"layers\": ["
        "{\"class_name\": \"InputLayer\", \"name\": \"x\", \"config\": {\"name\": \"x\", "
        "\"batch_input_shape\": [null, 6, 3], \"dtype\": \"float32\"}, \"inbound_nodes\": []},"
        "{\"class_name\": \"InputLayer\", \"name\": \"y\", \"config\": {\"name\": \"y\", "
        "\"batch_input_shape\": [null, 6, 3], \"dtype\": \"float32\"}, \"inbound_nodes\": []},"
        "{\"class_name\": \"GRU\", \"name\": \"gru\", \"config\": {\"name\": \"gru\", \"units\": "
        "4, \"recurrent_activation\": \"hard_sigmoid\", \"implementation\": 0}, "
        "\"inbound_nodes\": [[[\"x\", 0, 0, {}]], [[\"y\", 0, 0, {}]]]},"
        "{\"class_name\": \"Subtract\", \"name\": \"sub\", \"config\": {\"name\": \"sub\"}, "
        "\"inbound_nodes\": [[[\"gru\", 0, 0, {}], [\"gru\", 1, 0, {}]]]}],"
        "\"input_layers\": [[\"x\", 0, 0], [\"y\", 0, 0]], \"output_layers\": [[\"sub\", 0, 0]]}}";
    m = PARSE(j);
    if (m == NULL)
        return;
    const model_layer *g = find(m, "gru");
    EXPECT(g != NULL && g->n_nodes == 2 && !g->cfg.reset_after &&
           g->cfg.recurrent_activation == ACT_HARD_SIGMOID_K2);
    EXPECT(m->n_weights == 3 && m->weights[2].rank == 1 && m->weights[2].shape[0] == 12);
    EXPECT(dims_are(out_shape(m, "sub", 0, 0), 2, DIMS(-1, 4)));
    model_destroy(m);
}

static void test_keras3(void)
{
    /* Keras 3: module wrappers, DTypePolicy, batch_shape, {"args","kwargs"} nodes with
     * __keras_tensor__s, a merge layer receiving a list, an RNN given initial_state as a
     * kwarg, hard_sigmoid meaning the Keras 3 formula, a single input triple. */
#define KT(name, node, shape)                                                                      \
    "{\"class_name\": \"__keras_tensor__\", \"config\": {\"shape\": " shape ", \"dtype\": "        \
    "\"float32\", \"keras_history\": [\"" name "\", " #node ", 0]}}"
#define POL                                                                                        \
    "{\"module\": \"keras\", \"class_name\": \"DTypePolicy\", \"config\": {\"name\": "             \
    "\"float32\"}, \"registered_name\": null}"
    const char *k =
        "{\"module\": \"keras\", \"class_name\": \"Functional\", \"config\": {\"name\": \"k3\", "
        "\"trainable\": true, \"layers\": ["
        "{\"module\": \"keras.layers\", \"class_name\": \"InputLayer\", \"config\": "
        "{\"batch_shape\": "
        "[null, 4, 2], \"dtype\": \"float32\", \"sparse\": false, \"name\": \"in\"}, "
        "\"registered_name\": null, \"name\": \"in\", \"inbound_nodes\": []},"
        "{\"module\": \"keras.layers\", \"class_name\": \"InputLayer\", \"config\": "
        "{\"batch_shape\": "
        "[null, 5], \"dtype\": \"float32\", \"sparse\": false, \"name\": \"s0\"}, "
        "\"registered_name\": null, \"name\": \"s0\", \"inbound_nodes\": []},"
        "{\"module\": \"keras.layers\", \"class_name\": \"Dense\", \"config\": {\"name\": \"h\", "
        "\"trainable\": true, \"dtype\": " POL ", \"units\": 3, \"activation\": \"hard_sigmoid\", "
        "\"use_bias\": true, \"kernel_initializer\": {\"module\": \"keras.initializers\", "
        "\"class_name\": \"GlorotNormal\", \"config\": {\"seed\": null}, \"registered_name\": "
        "null}, "
        "\"bias_initializer\": {\"module\": \"keras.initializers\", \"class_name\": \"Zeros\", "
        "\"config\": {}, \"registered_name\": null}, \"kernel_regularizer\": null, "
        "\"bias_regularizer\": null, \"kernel_constraint\": null, \"bias_constraint\": null, "
        "\"quantization_config\": null}, \"registered_name\": null, \"build_config\": "
        "{\"input_shape\": [null, 4, 2]}, \"name\": \"h\", \"inbound_nodes\": [{\"args\": [" KT(
            "in", 0,
            "[null, 4, 2]") "], \"kwargs\": {}}]},"
                            "{\"module\": \"keras.layers\", \"class_name\": "
                            "\"Concatenate\", "
                            "\"config\": {\"name\": "
                            "\"cat\", \"trainable\": true, \"dtype\": " POL
                            ", \"axis\": -1}, \"registered_name\": "
                            "null, \"name\": \"cat\", \"inbound_nodes\": [{\"args\": "
                            "[[" KT("h", 0, "[null, 4, 3]") ", " KT(
                                "in", 0,
                                "[null, 4, 2]") "]], \"kwargs\": {}}]},"
                                                "{\"module\": \"keras.layers\", "
                                                "\"class_name\": "
                                                "\"SimpleRNN\", \"config\": {\"name\": "
                                                "\"rnn\", \"trainable\": true, "
                                                "\"dtype\": " POL ", \"units\": 5, \"activation\": "
                                                "\"tanh\", \"use_bias\": true, "
                                                "\"return_sequences\": false, "
                                                "\"return_state\": "
                                                "false, "
                                                "\"go_backwards\": false, \"stateful\": "
                                                "false, "
                                                "\"unroll\": false, "
                                                "\"recurrent_initializer\": "
                                                "{\"module\": \"keras.initializers\", "
                                                "\"class_name\": "
                                                "\"OrthogonalInitializer\", "
                                                "\"config\": "
                                                "{\"seed\": 5, \"gain\": 2.0}, "
                                                "\"registered_name\": null}, \"seed\": "
                                                "null}, "
                                                "\"registered_name\": null, \"name\": "
                                                "\"rnn\", "
                                                "\"inbound_nodes\": [{\"args\": [" KT(
                                                    "cat", 0,
                                                    "[null, 4, 5]") "], \"kwargs\": "
                                                                    "{\"initial_state\": "
                                                                    "[" KT("s0", 0,
                                                                           "[null, 5]") "], "
                                                                                        "\"tr"
                                                                                        "aini"
                                                                                        "n"
                                                                                        "g\":"
                                                                                        " "
                                                                                        "fals"
                                                                                        "e, "
                                                                                        "\"ma"
                                                                                        "sk\""
                                                                                        ": "
                                                                                        "null"
                                                                                        "}}]}"
                                                                                        "],"
                                                                                        "\"in"
                                                                                        "put_"
                                                                                        "laye"
                                                                                        "rs\""
                                                                                        ": "
                                                                                        "[["
                                                                                        "\"in"
                                                                                        "\", "
                                                                                        "0, "
                                                                                        "0], "
                                                                                        "[\"s"
                                                                                        "0\","
                                                                                        " 0, "
                                                                                        "0]],"
                                                                                        " \"o"
                                                                                        "utpu"
                                                                                        "t_"
                                                                                        "laye"
                                                                                        "rs\""
                                                                                        ": "
                                                                                        "[\"r"
                                                                                        "nn\""
                                                                                        ", "
                                                                                        "0, "
                                                                                        "0]},"
                                                                                        " "
                                                                                        "\"re"
                                                                                        "gist"
                                                                                        "ered"
                                                                                        "_nam"
                                                                                        "e\":"
                                                                                        " nul"
                                                                                        "l}";
#undef KT
#undef POL
    model *m = PARSE(k);
    if (m == NULL)
        return;
    const model_layer *h = find(m, "h");
    EXPECT(h != NULL && h->cfg.activation == ACT_HARD_SIGMOID);
    EXPECT(h != NULL && h->cfg.kernel_init.kind == INIT_VARIANCE_SCALING &&
           h->cfg.kernel_init.dist == INIT_DIST_TRUNCATED_NORMAL &&
           strcmp(h->cfg.kernel_init.keras_name, "GlorotNormal") == 0);
    EXPECT(dims_are(out_shape(m, "cat", 0, 0), 3, DIMS(-1, 4, 5)));
    const model_layer *r = find(m, "rnn");
    EXPECT(r != NULL && r->nodes[0].n_in == 2 && r->cfg.recurrent_init.kind == INIT_ORTHOGONAL &&
           r->cfg.recurrent_init.a == 2.0 && r->cfg.recurrent_init.seed == 5);
    EXPECT(m->n_inputs == 2 && m->n_outputs == 1 && m->outputs[0].layer == 4);
    model_destroy(m);

    /* The dialect flags override the guess. */
    const char *s = "{\"class_name\": \"Sequential\", \"config\": {\"layers\": [{\"class_name\": "
                    "\"InputLayer\", \"config\": {\"batch_shape\": [null, 2], \"name\": \"i\"}}, "
                    "{\"class_name\": \"Activation\", \"config\": {\"name\": \"a\", "
                    "\"activation\": \"hard_sigmoid\"}}]}}";
    err_info e = {0};
    m = NULL;
    EXPECT(kjson_model_parse(s, strlen(s), "s", &m, &e) == ERR_OK && m != NULL &&
           m->layers[1].cfg.activation == ACT_HARD_SIGMOID_K2);
    model_destroy(m);
    m = NULL;
    EXPECT(kjson_model_parse_ex(s, strlen(s), "s", KJSON_KERAS3, &m, &e) == ERR_OK && m != NULL &&
           m->layers[1].cfg.activation == ACT_HARD_SIGMOID);
    model_destroy(m);
    /* Trailing NUL padding (fixed-length HDF5 strings) is ignored. */
    char padded[600];
    size_t n = strlen(s);
    memcpy(padded, s, n);
    memset(padded + n, 0, 8);
    m = NULL;
    EXPECT(kjson_model_parse(padded, n + 8, "s", &m, &e) == ERR_OK);
    model_destroy(m);
}

static void test_sequential_inputs(void)
{
    /* build_input_shape (Keras 2.2.3+ / Keras 3 without InputLayer). */
    model *m = PARSE("{\"class_name\": \"Sequential\", \"config\": {\"name\": \"s\", "
                     "\"layers\": [{\"class_name\": \"Dense\", \"config\": {\"name\": \"d\", "
                     "\"units\": 2}}], \"build_input_shape\": [null, 7]}}");
    if (m != NULL) {
        EXPECT(m->n_params == 16 && strcmp(m->layers[0].name, "d_input") == 0);
        model_destroy(m);
    }
    /* Keras 1 input_dim on Dense; Embedding input_length and an int32 dtype. */
    m = PARSE("{\"class_name\": \"Sequential\", \"config\": [{\"class_name\": \"Dense\", "
              "\"config\": {\"name\": \"d\", \"output_dim\": 2, \"input_dim\": 3}}]}");
    if (m != NULL) {
        EXPECT(m->n_params == 8);
        model_destroy(m);
    }
    m = PARSE("{\"class_name\": \"Sequential\", \"config\": [{\"class_name\": \"Embedding\", "
              "\"config\": {\"name\": \"e\", \"input_dim\": 50, \"output_dim\": 4, "
              "\"input_length\": 9, \"dtype\": \"int32\"}}]}");
    if (m != NULL) {
        EXPECT(m->layers[0].input_dtype == DTYPE_I32);
        EXPECT(dims_are(out_shape(m, "e", 0, 0), 3, DIMS(-1, 9, 4)));
        model_destroy(m);
    }
    /* A layer name that collides with the derived input name. */
    m = PARSE("{\"class_name\": \"Sequential\", \"config\": [{\"class_name\": \"Dense\", "
              "\"config\": {\"name\": \"d\", \"units\": 2, \"batch_input_shape\": [4, 3]}}, "
              "{\"class_name\": \"Dense\", \"config\": {\"name\": \"d_input\", \"units\": 2}}]}");
    if (m != NULL) {
        EXPECT(strcmp(m->layers[0].name, "d_input_1") == 0);
        EXPECT(m->layers[0].input_shape.dims[0] == 4); /* the fixed batch size is kept */
        model_destroy(m);
    }
}

/* ---- bad inputs: one per rejection path ---- */

typedef struct bad_case {
    const char *json;
    int code;
    const char *text1, *text2;
} bad_case;

#define SEQ(layers)                                                                                \
    "{\"class_name\": \"Sequential\", \"config\": {\"name\": \"s\", \"layers\": "                  \
    "[{\"class_name\": "                                                                           \
    "\"InputLayer\", \"config\": {\"name\": \"in\", \"batch_input_shape\": [null, 8, 8, "          \
    "3]}}, " layers "]}}"
#define L(cls, cfg) "{\"class_name\": \"" cls "\", \"config\": {\"name\": \"bad\", " cfg "}}"

static const bad_case BAD_MODELS[] = {
    {"{\"class_name\": ", ERR_FORMAT, "invalid JSON at byte", NULL},
    {"{\"class_name\": \"Sequential\"} x", ERR_FORMAT, "trailing", NULL},
    {"", ERR_FORMAT, "empty", NULL},
    {"[1, 2]", ERR_FORMAT, "class_name", NULL},
    {"{\"class_name\": \"Foo\", \"config\": {}}", ERR_UNSUPPORTED, "Foo", NULL},
    {SEQ("{\"class_name\": \"Lambda\", \"config\": {\"name\": \"lambda_1\", \"function\": \"x\"}}"),
     ERR_UNSUPPORTED, "config.layers[1] \"lambda_1\"", "Lambda"},
    {SEQ(L("Conv2D", "\"filters\": 2, \"kernel_size\": 3, \"padding\": \"full\"")), ERR_UNSUPPORTED,
     "\"bad\"", "full"},
    {SEQ(L("Conv2D", "\"filters\": 2, \"kernel_size\": 3, \"groups\": 2")), ERR_UNSUPPORTED,
     "groups", NULL},
    {SEQ(L("Dense", "\"units\": 2, \"kernel_constraint\": {\"class_name\": \"MaxNorm\"}")),
     ERR_UNSUPPORTED, "kernel_constraint", "\"bad\""},
    {SEQ(L("Dense", "\"units\": \"ten\"")), ERR_CONFIG, "units", "\"bad\""},
    {SEQ(L("Dense", "\"units\": 2.5")), ERR_CONFIG, "units", NULL},
    {SEQ(L("Dense", "\"units\": 2, \"activation\": \"crelu\"")), ERR_UNSUPPORTED, "crelu", NULL},
    {SEQ(L("Dense", "\"units\": 2, \"activation\": {\"class_name\": \"ReLU\"}")), ERR_UNSUPPORTED,
     "ReLU", NULL},
    {SEQ(L("Dense", "\"units\": 2, \"kernel_initializer\": {\"class_name\": \"Foo\", "
                    "\"config\": {}}")),
     ERR_UNSUPPORTED, "Foo", "kernel_initializer"},
    {SEQ(L("Dense", "\"units\": 2, \"kernel_regularizer\": {\"class_name\": "
                    "\"OrthogonalRegularizer\", \"config\": {}}")),
     ERR_UNSUPPORTED, "OrthogonalRegularizer", NULL},
    {SEQ(L("Dense", "\"units\": 2, \"dtype\": \"mixed_float16\"")), ERR_UNSUPPORTED,
     "mixed_float16", NULL},
    {SEQ(L("Dense", "\"units\": 2, \"use_bias\": 1")), ERR_CONFIG, "use_bias", NULL},
    {SEQ(L("Dense", "\"units\": 2") ", " L("Dense", "\"units\": 2")), ERR_CONFIG, "\"bad\"",
     "twice"},
    {SEQ(L("Dense", "\"units\": 2") ", {\"class_name\": \"InputLayer\", \"config\": "
                                    "{\"name\": \"in2\", \"batch_input_shape\": [null, 2]}}"),
     ERR_CONFIG, "InputLayer", "config.layers[2]"},
    {SEQ(L("BatchNormalization", "\"axis\": [1, 2]")), ERR_UNSUPPORTED, "axis", NULL},
    {SEQ(L("BatchNormalization", "\"renorm\": true")), ERR_UNSUPPORTED, "renorm", NULL},
    {SEQ(L("Dropout", "\"rate\": 0.5, \"noise_shape\": [null, 1, 1, 3]")), ERR_UNSUPPORTED,
     "noise_shape", NULL},
    {SEQ(L("GlobalAveragePooling2D", "\"keepdims\": true")), ERR_UNSUPPORTED, "keepdims", NULL},
    {SEQ(L("Reshape", "\"target_shape\": 5")), ERR_CONFIG, "target_shape", NULL},
    {SEQ(L("Reshape", "\"target_shape\": [7, 7]")), ERR_SHAPE, "\"bad\"", "[None, 8, 8, 3]"},
    {SEQ(L("Conv2D", "\"filters\": 2, \"kernel_size\": 9")), ERR_SHAPE, "\"bad\"", "too small"},
    {SEQ(L("Flatten", "\"trainable\": true") ", " L("LSTM", "\"units\": 2")), ERR_CONFIG, "twice",
     NULL},
    {SEQ("{\"class_name\": \"Reshape\", \"config\": {\"name\": \"rs\", \"target_shape\": [64, "
         "3]}}, " L("GRU", "\"units\": 2, \"stateful\": true")),
     ERR_UNSUPPORTED, "stateful", "config.layers[2]"},
    {SEQ("{\"class_name\": \"Reshape\", \"config\": {\"name\": \"rs\", \"target_shape\": [64, "
         "3]}}, " L("LSTM", "\"units\": 2, \"time_major\": true")),
     ERR_UNSUPPORTED, "time_major", NULL},
    {SEQ(L("Embedding", "\"input_dim\": 5, \"output_dim\": 2, \"dropout\": 0.5")), ERR_UNSUPPORTED,
     "dropout", NULL},
    {SEQ(L("ZeroPadding2D", "\"padding\": [1, 2, 3]")), ERR_CONFIG, "padding", NULL},
    {SEQ(L("Conv2D", "\"filters\": 2, \"kernel_size\": 3, \"data_format\": \"channels_middle\"")),
     ERR_CONFIG, "channels_middle", NULL},
    {SEQ("{\"class_name\": \"Sequential\", \"config\": {\"name\": \"inner\", \"layers\": []}}"),
     ERR_UNSUPPORTED, "nested", NULL},
    {"{\"class_name\": \"Sequential\", \"config\": [{\"class_name\": \"Dense\", \"config\": "
     "{\"name\": \"d\", \"units\": 2}}]}",
     ERR_CONFIG, "input shape", "\"d\""},
    {"{\"class_name\": \"Sequential\", \"config\": []}", ERR_CONFIG, "empty", NULL},
    {"{\"class_name\": \"Sequential\", \"config\": {\"layers\": 3}}", ERR_CONFIG, "list", NULL},
    {"{\"class_name\": \"Sequential\", \"config\": [{\"class_name\": \"Merge\", \"config\": "
     "{\"name\": \"m\", \"mode\": \"dot\", \"batch_input_shape\": [null, 2]}}]}",
     ERR_UNSUPPORTED, "dot", NULL},
    {"{\"class_name\": \"Sequential\", \"config\": [{\"class_name\": \"Merge\", \"config\": "
     "{\"name\": \"m\", \"mode\": \"sum\", \"layers\": [], \"batch_input_shape\": [null, 2]}}]}",
     ERR_UNSUPPORTED, "branches", NULL},
    {"{\"class_name\": \"Sequential\", \"config\": [{\"class_name\": \"Dense\", \"config\": "
     "{\"units\": 2, \"batch_input_shape\": [null, 2]}}]}",
     ERR_CONFIG, "without a name", NULL},
    {"{\"class_name\": \"Sequential\", \"config\": [{\"class_name\": \"Dense\", \"config\": "
     "{\"name\": \"d\", \"units\": 2, \"batch_input_shape\": [null, -2]}}]}",
     ERR_CONFIG, "batch_input_shape", NULL},
    {"{\"class_name\": \"Sequential\", \"config\": [{\"class_name\": \"Dense\", \"config\": "
     "{\"name\": \"d\", \"units\": 2, \"batch_input_shape\": [null, 1,1,1,1,1,1,1,1]}}]}",
     ERR_UNSUPPORTED, "rank 9", NULL},
    {"{\"class_name\": \"Sequential\", \"config\": [{\"class_name\": \"InputLayer\", \"config\": "
     "{\"name\": \"i\", \"sparse\": true, \"batch_input_shape\": [null, 2]}}]}",
     ERR_UNSUPPORTED, "sparse", NULL},
    {"{\"class_name\": \"Sequential\", \"config\": [{\"class_name\": \"InputLayer\", \"config\": "
     "{\"name\": \"i\"}}]}",
     ERR_CONFIG, "batch_shape", NULL},
    /* Functional graphs. */
    {"{\"class_name\": \"Functional\", \"config\": {\"name\": \"f\", \"layers\": [{\"class_name\": "
     "\"InputLayer\", \"name\": \"i\", \"config\": {\"name\": \"i\", \"batch_input_shape\": [null, "
     "2]}, \"inbound_nodes\": []}, {\"class_name\": \"Dense\", \"name\": \"d\", \"config\": "
     "{\"name\": \"d\", \"units\": 2}, \"inbound_nodes\": [[[\"ghost\", 0, 0, {}]]]}], "
     "\"input_layers\": [[\"i\", 0, 0]], \"output_layers\": [[\"d\", 0, 0]]}}",
     ERR_CONFIG, "ghost", "config.layers[1] \"d\" inbound_nodes"},
    {"{\"class_name\": \"Functional\", \"config\": {\"name\": \"f\", \"layers\": [{\"class_name\": "
     "\"InputLayer\", \"name\": \"i\", \"config\": {\"name\": \"i\", \"batch_input_shape\": [null, "
     "2]}, \"inbound_nodes\": []}, {\"class_name\": \"Dense\", \"name\": \"d\", \"config\": "
     "{\"name\": \"d\", \"units\": 2}, \"inbound_nodes\": [[[\"i\", 0, 0, {\"training\": "
     "true}]]]}], \"input_layers\": [[\"i\", 0, 0]], \"output_layers\": [[\"d\", 0, 0]]}}",
     ERR_UNSUPPORTED, "training", NULL},
    {"{\"class_name\": \"Functional\", \"config\": {\"name\": \"f\", \"layers\": [{\"class_name\": "
     "\"InputLayer\", \"name\": \"i\", \"config\": {\"name\": \"i\", \"batch_input_shape\": [null, "
     "2]}, \"inbound_nodes\": []}, {\"class_name\": \"Add\", \"name\": \"a\", \"config\": "
     "{\"name\": \"a\"}, \"inbound_nodes\": [[[\"i\", 0, 0, {}], [\"r\", 0, 0, {}]]]}, "
     "{\"class_name\": \"ReLU\", \"name\": \"r\", \"config\": {\"name\": \"r\"}, "
     "\"inbound_nodes\": [[[\"a\", 0, 0, {}]]]}], \"input_layers\": [[\"i\", 0, 0]], "
     "\"output_layers\": [[\"r\", 0, 0]]}}",
     ERR_CONFIG, "cycle", NULL},
    {"{\"class_name\": \"Functional\", \"config\": {\"name\": \"f\", \"layers\": [{\"class_name\": "
     "\"InputLayer\", \"name\": \"i\", \"config\": {\"name\": \"i\", \"batch_input_shape\": [null, "
     "2]}, \"inbound_nodes\": []}], \"output_layers\": [[\"i\", 0, 0]]}}",
     ERR_CONFIG, "input_layers", NULL},
    {"{\"class_name\": \"Functional\", \"config\": {\"name\": \"f\", \"layers\": [{\"class_name\": "
     "\"InputLayer\", \"name\": \"i\", \"config\": {\"name\": \"i\", \"batch_input_shape\": [null, "
     "2]}, \"inbound_nodes\": []}, {\"class_name\": \"Dense\", \"name\": \"d\", \"config\": "
     "{\"name\": \"d\", \"units\": 2}, \"inbound_nodes\": [{\"args\": [{\"class_name\": "
     "\"__keras_tensor__\", \"config\": {\"keras_history\": [\"i\", 0, 0]}}], \"kwargs\": "
     "{\"mask\": {\"x\": 1}}}]}], \"input_layers\": [[\"i\", 0, 0]], \"output_layers\": [[\"d\", "
     "0, 0]]}}",
     ERR_UNSUPPORTED, "mask", NULL},
    {"{\"class_name\": \"Functional\", \"config\": {\"name\": \"f\", \"layers\": [{\"class_name\": "
     "\"InputLayer\", \"name\": \"i\", \"config\": {\"name\": \"i\", \"batch_input_shape\": [null, "
     "2]}, \"inbound_nodes\": []}, {\"class_name\": \"Dense\", \"name\": \"d\", \"config\": "
     "{\"name\": \"d\", \"units\": 2}, \"inbound_nodes\": [[[\"i\", 0, 0, {}]]]}], "
     "\"input_layers\": [[\"i\", 0, 0]], \"output_layers\": [[\"d\", 0, 3]]}}",
     ERR_CONFIG, "\"d\"", "output 3"},
    {"{\"class_name\": \"Functional\", \"config\": {\"name\": \"f\", \"layers\": [{\"class_name\": "
     "\"InputLayer\", \"name\": \"i\", \"config\": {\"name\": \"i\", \"batch_input_shape\": [null, "
     "2]}, \"inbound_nodes\": []}, {\"class_name\": \"Dense\", \"name\": \"d\", \"config\": "
     "{\"name\": \"d\", \"units\": 2}, \"inbound_nodes\": [[[\"i\", \"zero\", 0, {}]]]}], "
     "\"input_layers\": [[\"i\", 0, 0]], \"output_layers\": [[\"d\", 0, 0]]}}",
     ERR_CONFIG, "node/tensor", NULL},
};

static void test_bad_models(void)
{
    for (size_t i = 0; i < sizeof BAD_MODELS / sizeof BAD_MODELS[0]; i++) {
        const bad_case *b = &BAD_MODELS[i];
        model *m = NULL;
        err_info e = {0};
        int rc = kjson_model_parse(b->json, strlen(b->json), "bad.json", &m, &e);
        EXPECT_MSG(rc == b->code, "case %zu: code %s, expected %s (%s)", i,
                   err_code_str((err_code)rc), err_code_str((err_code)b->code), e.msg);
        EXPECT_MSG(m == NULL, "case %zu: *out written on failure", i);
        EXPECT_MSG(strncmp(e.msg, "bad.json", 8) == 0, "case %zu: source not named: %s", i, e.msg);
        EXPECT_MSG(b->text1 == NULL || strstr(e.msg, b->text1) != NULL,
                   "case %zu: message lacks \"%s\": %s", i, b->text1, e.msg);
        EXPECT_MSG(b->text2 == NULL || strstr(e.msg, b->text2) != NULL,
                   "case %zu: message lacks \"%s\": %s", i, b->text2, e.msg);
        model_destroy(m);
    }
}

/* ---- round trips: write -> parse gives the same model, for every layer kind ---- */

static int add(model *m, layer_kind k, const char *name, int n_in, const model_ref *in)
{
    int idx = -1;
    err_info e = {0};
    EXPECT(model_layer_add(m, k, name, &idx, &e) == ERR_OK);
    if (n_in > 0)
        EXPECT(model_node_add(m, idx, n_in, in, &e) == ERR_OK);
    return idx;
}

/* Appends a layer on output 0 of the previous layer (a chain). */
static layer_config *chain(model *m, layer_kind k, const char *name)
{
    model_ref r = {m->n_layers - 1, 0, 0};
    int idx = add(m, k, name, 1, &r);
    return &m->layers[idx].cfg;
}

static void input(model *m, const char *name, int rank, const int64_t *dims, dtype dt)
{
    int i = add(m, LAYER_INPUT, name, 0, NULL);
    model_shape *s = &m->layers[i].input_shape;
    s->rank = rank;
    for (int d = 0; d < rank; d++)
        s->dims[d] = dims[d];
    m->layers[i].input_dtype = dt;
}

static void finish_chain(model *m, const char *name)
{
    err_info e = {0};
    snprintf(m->name, sizeof m->name, "%s", name);
    m->sequential = true;
    model_ref in = {0, 0, 0}, out = {m->n_layers - 1, 0, 0};
    EXPECT(model_inputs_set(m, 1, &in, &e) == ERR_OK);
    EXPECT(model_outputs_set(m, 1, &out, &e) == ERR_OK);
    int rc = model_build(m, &e);
    EXPECT_MSG(rc == ERR_OK, "%s: %s", name, e.msg);
}

static model *model_conv(void)
{
    model *m = NULL;
    err_info e = {0};
    EXPECT(model_create(&m, &e) == ERR_OK);
    input(m, "image", 4, DIMS(-1, 28, 28, 1), DTYPE_F32);
    layer_config *c = chain(m, LAYER_ZEROPAD2D, "pad");
    c->zero_pad[0] = 1;
    c->zero_pad[1] = 2;
    c->zero_pad[2] = 0;
    c->zero_pad[3] = 3;
    c = chain(m, LAYER_CONV2D, "conv");
    c->filters = 8;
    c->kernel_size[0] = 3;
    c->kernel_size[1] = 5;
    c->strides[1] = 2;
    c->padding = PAD_SAME;
    c->activation = ACT_RELU;
    c->kernel_init.kind = INIT_VARIANCE_SCALING;
    c->kernel_init.a = 2.0;
    c->kernel_init.mode = INIT_FAN_IN;
    c->kernel_init.dist = INIT_DIST_TRUNCATED_NORMAL;
    c->kernel_init.has_seed = true;
    c->kernel_init.seed = 42;
    snprintf(c->kernel_init.keras_name, sizeof c->kernel_init.keras_name, "HeNormal");
    c->bias_init.kind = INIT_CONSTANT;
    c->bias_init.a = 0.1;
    snprintf(c->bias_init.keras_name, sizeof c->bias_init.keras_name, "Constant");
    c->kernel_reg.l2 = 1e-4;
    c->bias_reg.l1 = 0.5;
    c = chain(m, LAYER_BATCHNORM, "bn");
    c->momentum = 0.9;
    c->epsilon = 1e-5;
    c->center = false;
    c->gamma_init.kind = INIT_RANDOM_NORMAL;
    c->gamma_init.a = 1.0;
    c->gamma_init.b = 0.02;
    snprintf(c->gamma_init.keras_name, sizeof c->gamma_init.keras_name, "RandomNormal");
    c = chain(m, LAYER_RELU, "relu6");
    c->max_value = 6.0;
    c->negative_slope = 0.1;
    c->threshold = 0.5;
    c = chain(m, LAYER_MAXPOOL2D, "maxpool");
    c->pool_size[0] = c->pool_size[1] = 3;
    c->padding = PAD_SAME;
    c = chain(m, LAYER_AVGPOOL2D, "avgpool");
    c->pool_strides[0] = 1;
    c = chain(m, LAYER_CONV2D, "conv_cf");
    c->filters = 2;
    c->channels_first = true;
    c->use_bias = false;
    c->dilation[0] = c->dilation[1] = 2;
    c->kernel_init.kind = INIT_TRUNCATED_NORMAL;
    c->kernel_init.a = 0.0;
    c->kernel_init.b = 0.3;
    snprintf(c->kernel_init.keras_name, sizeof c->kernel_init.keras_name, "TruncatedNormal");
    c = chain(m, LAYER_DROPOUT, "dropout");
    c->rate = 0.25;
    c->dropout_seed = 7;
    c = chain(m, LAYER_FLATTEN, "flatten");
    c = chain(m, LAYER_DENSE, "logits");
    c->units = 10;
    c->use_bias = false;
    c->activation = ACT_SOFTMAX;
    c->activity_reg.l1 = 0.01;
    c->kernel_init.kind = INIT_IDENTITY;
    c->kernel_init.a = 1.5;
    snprintf(c->kernel_init.keras_name, sizeof c->kernel_init.keras_name, "Identity");
    m->layers[m->n_layers - 1].trainable = false;
    finish_chain(m, "convnet");
    return m;
}

static model *model_seq1d(void)
{
    model *m = NULL;
    err_info e = {0};
    EXPECT(model_create(&m, &e) == ERR_OK);
    input(m, "tokens", 2, DIMS(-1, 20), DTYPE_I32);
    layer_config *c = chain(m, LAYER_EMBEDDING, "embed");
    c->input_dim = 100;
    c->output_dim = 8;
    c->mask_zero = true;
    c->embeddings_reg.l2 = 0.5;
    c = chain(m, LAYER_CONV1D, "conv1d");
    c->filters = 4;
    c->kernel_size[0] = 3;
    c->padding = PAD_CAUSAL;
    c->dilation[0] = 2;
    c->activation = ACT_GELU;
    c = chain(m, LAYER_MAXPOOL1D, "mp1");
    c = chain(m, LAYER_AVGPOOL1D, "ap1");
    c->pool_strides[0] = 1;
    c->padding = PAD_SAME;
    c = chain(m, LAYER_LSTM, "lstm");
    c->units = 6;
    c->return_sequences = true;
    c->go_backwards = true;
    c->dropout = 0.1;
    c->recurrent_dropout = 0.2;
    c->unit_forget_bias = false;
    c->recurrent_activation = ACT_HARD_SIGMOID_K2;
    c->recurrent_reg.l1 = 0.25;
    c = chain(m, LAYER_GRU, "gru");
    c->units = 5;
    c->return_sequences = true;
    c->reset_after = false;
    c->use_bias = false;
    c = chain(m, LAYER_SIMPLERNN, "rnn");
    c->units = 4;
    c->return_sequences = true;
    c->activation = ACT_RELU;
    c->recurrent_init.kind = INIT_ORTHOGONAL;
    c->recurrent_init.a = 0.5;
    c->recurrent_init.has_seed = true;
    c->recurrent_init.seed = 9;
    c = chain(m, LAYER_GAP1D, "gap1");
    c = chain(m, LAYER_RESHAPE, "reshape");
    c->target_rank = 2;
    c->target_shape[0] = 2;
    c->target_shape[1] = -1;
    c = chain(m, LAYER_GMP1D, "gmp1");
    c = chain(m, LAYER_ACTIVATION, "act");
    c->activation = ACT_SWISH;
    c = chain(m, LAYER_LEAKYRELU, "leaky");
    c->alpha = 0.2;
    c = chain(m, LAYER_ELU, "elu");
    c->alpha = 0.5;
    c = chain(m, LAYER_SOFTMAX, "softmax");
    c->axis = 1;
    finish_chain(m, "seq1d");
    return m;
}

static model *model_graph(void)
{
    model *m = NULL;
    err_info e = {0};
    EXPECT(model_create(&m, &e) == ERR_OK);
    snprintf(m->name, sizeof m->name, "graph");
    input(m, "a", 2, DIMS(-1, 8), DTYPE_F32);
    input(m, "b", 2, DIMS(-1, 8), DTYPE_F32);
    input(m, "img", 4, DIMS(-1, 3, 4, 4), DTYPE_F32);
    input(m, "seq", 3, DIMS(-1, 5, 8), DTYPE_F32);
    model_ref ra = {0, 0, 0}, rb = {1, 0, 0}, ri = {2, 0, 0}, rs = {3, 0, 0};
    int sh = add(m, LAYER_DENSE, "shared", 1, &ra);
    m->layers[sh].cfg.units = 8;
    EXPECT(model_node_add(m, sh, 1, &rb, &e) == ERR_OK);
    model_ref two[2] = {{sh, 0, 0}, {sh, 1, 0}};
    int ad = add(m, LAYER_ADD, "add", 2, two);
    int sb = add(m, LAYER_SUBTRACT, "sub", 2, two);
    model_ref three[3] = {{ad, 0, 0}, {sb, 0, 0}, {0, 0, 0}};
    int mu = add(m, LAYER_MULTIPLY, "mul", 3, three);
    int av = add(m, LAYER_AVERAGE, "avg", 3, three);
    int gp = add(m, LAYER_GMP2D, "gmp", 1, &ri);
    m->layers[gp].cfg.channels_first = true;
    int ga = add(m, LAYER_GAP2D, "gap", 1, &ri);
    int ls = add(m, LAYER_LSTM, "lstm", 1, &rs);
    m->layers[ls].cfg.units = 3;
    m->layers[ls].cfg.return_state = true;
    model_ref st[2] = {{rs.layer, 0, 0}, {ls, 0, 1}};
    int gr = add(m, LAYER_GRU, "gru", 2, st);
    m->layers[gr].cfg.units = 3;
    model_ref cat_in[6] = {{mu, 0, 0}, {av, 0, 0}, {gp, 0, 0}, {ga, 0, 0}, {ls, 0, 2}, {gr, 0, 0}};
    int ct = add(m, LAYER_CONCAT, "cat", 6, cat_in);
    m->layers[ct].cfg.axis = 1;
    model_ref rc = {ct, 0, 0};
    int out = add(m, LAYER_DENSE, "out", 1, &rc);
    m->layers[out].cfg.units = 2;
    m->layers[out].cfg.activation = ACT_HARD_SIGMOID;
    model_ref ins[4] = {ra, rb, ri, rs};
    model_ref outs[3] = {{out, 0, 0}, {ls, 0, 1}, {sh, 1, 0}};
    EXPECT(model_inputs_set(m, 4, ins, &e) == ERR_OK);
    EXPECT(model_outputs_set(m, 3, outs, &e) == ERR_OK);
    int r = model_build(m, &e);
    EXPECT_MSG(r == ERR_OK, "graph: %s", e.msg);
    return m;
}

static void roundtrip(model *m, const char *what)
{
    if (m == NULL || !m->built)
        return;
    char *text = NULL, *text2 = NULL;
    err_info e = {0};
    int rc = kjson_model_write(m, &text, &e);
    EXPECT_MSG(rc == ERR_OK, "%s: write: %s", what, e.msg);
    if (rc != ERR_OK)
        return;
    model *back = NULL;
    rc = kjson_model_parse(text, strlen(text), what, &back, &e);
    EXPECT_MSG(rc == ERR_OK, "%s: parse(write): %s\n%s", what, e.msg, text);
    if (rc == ERR_OK) {
        char why[512] = "";
        EXPECT_MSG(kjt_model_eq(m, back, 1, why, sizeof why), "%s: %s", what, why);
        EXPECT(kjson_model_write(back, &text2, &e) == ERR_OK);
        EXPECT_MSG(text2 != NULL && strcmp(text, text2) == 0, "%s: second write differs", what);
        EXPECT(strstr(text, "\"keras_version\":\"" KJSON_KERAS_VERSION "\"") != NULL);
    }
    free(text);
    free(text2);
    model_destroy(back);
}

static void test_roundtrip(void)
{
    model *a = model_conv(), *b = model_seq1d(), *c = model_graph();
    bool seen[LAYER_COUNT] = {false};
    model *all[3] = {a, b, c};
    for (int k = 0; k < 3; k++)
        for (int i = 0; all[k] != NULL && i < all[k]->n_layers; i++)
            seen[all[k]->layers[i].kind] = true;
    for (int k = 0; k < LAYER_COUNT; k++)
        EXPECT_MSG(seen[k], "round trip misses kind %s", model_kind_class_name((layer_kind)k));
    roundtrip(a, "convnet");
    roundtrip(b, "seq1d");
    roundtrip(c, "graph");
    /* The Sequential writer form has an explicit InputLayer and no inbound nodes. */
    char *text = NULL;
    err_info e = {0};
    if (a != NULL && kjson_model_write(a, &text, &e) == ERR_OK) {
        EXPECT(strstr(text, "\"class_name\":\"Sequential\"") != NULL);
        EXPECT(strstr(text, "\"batch_input_shape\":[null,28,28,1]") != NULL);
        EXPECT(strstr(text, "inbound_nodes") == NULL);
        EXPECT(strstr(text, "{\"class_name\":\"HeNormal\",\"config\":{\"seed\":42}}") != NULL);
        free(text);
    }
    if (c != NULL && kjson_model_write(c, &text, &e) == ERR_OK) {
        EXPECT(strstr(text, "\"class_name\":\"Functional\"") != NULL);
        EXPECT(strstr(text, "[[[\"shared\",0,0,{}],[\"shared\",1,0,{}]]]") != NULL);
        EXPECT(strstr(text, "\"module\":\"keras.activations\"") != NULL); /* Keras 3 hard_sigmoid */
        free(text);
    }
    /* Keras 2 and Keras 3 hard_sigmoid in one model cannot be written. */
    if (c != NULL) {
        int l = model_layer_find(c, "gru");
        c->layers[l].cfg.recurrent_activation = ACT_HARD_SIGMOID_K2;
        text = NULL;
        EXPECT(kjson_model_write(c, &text, &e) == ERR_UNSUPPORTED && text == NULL &&
               strstr(e.msg, "hard_sigmoid"));
    }
    model_destroy(a);
    model_destroy(b);
    model_destroy(c);
}

/* ---- training_config ---- */

static model *two_output_model(void)
{
    return PARSE("{\"class_name\": \"Functional\", \"config\": {\"name\": \"f\", \"layers\": ["
                 "{\"class_name\": \"InputLayer\", \"name\": \"i\", \"config\": {\"name\": \"i\", "
                 "\"batch_input_shape\": [null, 4]}, \"inbound_nodes\": []},"
                 "{\"class_name\": \"Dense\", \"name\": \"main\", \"config\": {\"name\": "
                 "\"main\", \"units\": 3}, \"inbound_nodes\": [[[\"i\", 0, 0, {}]]]},"
                 "{\"class_name\": \"Dense\", \"name\": \"aux\", \"config\": {\"name\": \"aux\", "
                 "\"units\": 1}, \"inbound_nodes\": [[[\"i\", 0, 0, {}]]]}],"
                 "\"input_layers\": [[\"i\", 0, 0]], \"output_layers\": [[\"main\", 0, 0], "
                 "[\"aux\", 0, 0]]}}");
}

static int tparse(model *m, const char *json, unsigned flags, err_info *e)
{
    return kjson_training_parse_ex(json, strlen(json), "train.json", m, flags, NULL, NULL, e);
}

static void count_warn(void *ctx, const char *msg)
{
    (void)msg;
    (*(int *)ctx)++;
}

static void test_training(void)
{
    model *m = two_output_model();
    if (m == NULL)
        return;
    err_info e = {0};
    /* Keras 1/2: lr, per-output loss list, nested metric lists. */
    int rc = tparse(m,
                    "{\"loss\": [\"categorical_crossentropy\", \"mse\"], \"loss_weights\": [1.0, "
                    "0.5], \"metrics\": [[\"acc\"], [\"mae\", \"accuracy\"]], "
                    "\"optimizer_config\": {\"class_name\": \"SGD\", \"config\": {\"lr\": 0.1, "
                    "\"momentum\": 0.9, \"decay\": 0.0, \"nesterov\": true}}}",
                    0, &e);
    EXPECT_MSG(rc == ERR_OK, "%s", e.msg);
    EXPECT(m->train.compiled && m->train.n_losses == 2 && m->train.losses[0].kind == LOSS_CCE &&
           m->train.losses[1].kind == LOSS_MSE && m->train.loss_weights[1] == 0.5);
    EXPECT(m->train.n_metrics == 2 && m->train.metrics[0] == METRIC_ACCURACY &&
           m->train.metrics[1] == METRIC_MAE);
    EXPECT(m->train.optim.kind == OPTIM_SGD && m->train.optim.lr.initial == 0.1 &&
           m->train.optim.momentum == 0.9 && m->train.optim.nesterov);
    /* Dict forms, loss objects, tf.keras Custom>, a schedule, clipping. */
    rc = tparse(m,
                "{\"loss\": {\"aux\": {\"class_name\": \"BinaryCrossentropy\", \"config\": "
                "{\"from_logits\": true, \"label_smoothing\": 0.1, \"reduction\": \"auto\", "
                "\"name\": \"bce\"}}, \"main\": {\"module\": \"keras.losses\", \"class_name\": "
                "\"Huber\", \"config\": {\"delta\": 2.0}}}, \"loss_weights\": {\"aux\": 0.25}, "
                "\"metrics\": {\"main\": [{\"class_name\": \"MeanMetricWrapper\", \"config\": "
                "{\"name\": \"accuracy\", \"fn\": \"categorical_accuracy\"}}], \"aux\": "
                "[{\"class_name\": \"BinaryAccuracy\", \"config\": {\"threshold\": 0.5}}]}, "
                "\"optimizer_config\": {\"class_name\": \"Custom>Adam\", \"config\": {\"name\": "
                "\"Adam\", \"learning_rate\": {\"module\": \"keras.optimizers.schedules\", "
                "\"class_name\": \"ExponentialDecay\", \"config\": {\"initial_learning_rate\": "
                "0.01, \"decay_steps\": 100, \"decay_rate\": 0.5, \"staircase\": true}}, "
                "\"clipnorm\": 1.5, \"global_clipnorm\": null, \"use_ema\": false, "
                "\"is_legacy_optimizer\": false, \"amsgrad\": true, \"epsilon\": null}}}",
                0, &e);
    EXPECT_MSG(rc == ERR_OK, "%s", e.msg);
    EXPECT(m->train.n_losses == 2 && m->train.losses[0].kind == LOSS_HUBER &&
           m->train.losses[0].delta == 2.0 && m->train.losses[1].kind == LOSS_BCE &&
           m->train.losses[1].from_logits && m->train.losses[1].label_smoothing == 0.1 &&
           m->train.loss_weights[0] == 1.0 && m->train.loss_weights[1] == 0.25);
    EXPECT(m->train.n_metrics == 2 && m->train.metrics[0] == METRIC_CAT_ACC &&
           m->train.metrics[1] == METRIC_BIN_ACC);
    const model_optim_config *o = &m->train.optim;
    EXPECT(o->kind == OPTIM_ADAM && o->lr.kind == SCHED_EXPONENTIAL && o->lr.initial == 0.01 &&
           o->lr.decay_steps == 100 && o->lr.decay_rate == 0.5 && o->lr.staircase &&
           o->clipnorm == 1.5 && o->amsgrad && o->epsilon == 1e-7);
    /* One loss for all outputs, Piecewise / Cosine schedules, other optimizers. */
    rc = tparse(m,
                "{\"loss\": \"sparse_categorical_crossentropy\", \"metrics\": null, "
                "\"optimizer_config\": {\"class_name\": \"RMSprop\", \"config\": "
                "{\"learning_rate\": {\"class_name\": \"PiecewiseConstantDecay\", \"config\": "
                "{\"boundaries\": [10, 20], \"values\": [0.1, 0.01, 0.001]}}, \"rho\": 0.8, "
                "\"momentum\": 0.5, \"centered\": true, \"clipvalue\": 0.5}}}",
                0, &e);
    EXPECT_MSG(rc == ERR_OK, "%s", e.msg);
    EXPECT(m->train.n_losses == 1 && m->train.losses[0].kind == LOSS_SPARSE_CCE &&
           m->train.n_metrics == 0 && o->kind == OPTIM_RMSPROP && o->lr.kind == SCHED_PIECEWISE &&
           o->lr.n_bounds == 2 && o->lr.values[2] == 0.001 && o->rho == 0.8 && o->centered &&
           o->clipvalue == 0.5);
    rc = tparse(m,
                "{\"loss\": \"mae\", \"optimizer_config\": {\"class_name\": \"Adagrad\", "
                "\"config\": {\"lr\": 0.01, \"epsilon\": 1e-08, \"decay\": 0.0}}}",
                0, &e);
    EXPECT(rc == ERR_OK && o->kind == OPTIM_ADAGRAD && o->initial_accumulator_value == 0.0 &&
           o->epsilon == 1e-8);
    rc = tparse(m,
                "{\"loss\": \"mae\", \"optimizer_config\": {\"class_name\": \"AdamW\", "
                "\"config\": {\"learning_rate\": {\"class_name\": \"CosineDecay\", \"config\": "
                "{\"initial_learning_rate\": 0.1, \"decay_steps\": 1000, \"alpha\": 0.1, "
                "\"warmup_target\": null, \"warmup_steps\": 0}}, \"weight_decay\": 0.01}}}",
                0, &e);
    EXPECT(rc == ERR_OK && o->kind == OPTIM_ADAMW && o->weight_decay == 0.01 &&
           o->lr.kind == SCHED_COSINE && o->lr.alpha == 0.1);
    rc = tparse(m,
                "{\"loss\": \"mae\", \"optimizer_config\": {\"class_name\": \"Nadam\", "
                "\"config\": {\"lr\": 0.002, \"schedule_decay\": 0.004}}}",
                0, &e);
    EXPECT(rc == ERR_OK && o->kind == OPTIM_NADAM && o->lr.initial == 0.002);
    /* Loss null: nothing compiled (the previous config stays). */
    model *m2 = two_output_model();
    if (m2 != NULL) {
        EXPECT(tparse(m2, "{\"loss\": null, \"optimizer_config\": null}", 0, &e) == ERR_OK &&
               !m2->train.compiled);
        model_destroy(m2);
    }

    /* Unknown metrics: an error, or dropped with a warning. */
    const char *fm = "{\"loss\": \"mse\", \"metrics\": [\"accuracy\", \"fmeasure\", "
                     "[{\"class_name\": \"RootMeanSquaredError\", \"config\": {}}]]}";
    model_train_config before = m->train;
    rc = tparse(m, fm, 0, &e);
    EXPECT(rc == ERR_UNSUPPORTED && strstr(e.msg, "fmeasure") && strstr(e.msg, "train.json"));
    EXPECT(m->train.optim.kind == before.optim.kind && m->train.losses == before.losses);
    int warned = 0;
    rc = kjson_training_parse_ex(fm, strlen(fm), "t", m, KJSON_SKIP_UNKNOWN_METRICS, count_warn,
                                 &warned, &e);
    EXPECT(rc == ERR_OK && warned == 2 && m->train.n_metrics == 1);

    /* Bad training configs. */
    static const struct {
        const char *json;
        int code;
        const char *text;
    } bad[] = {
        {"{\"loss\": \"hinge\"}", ERR_UNSUPPORTED, "hinge"},
        {"{\"loss\": [\"mse\"]}", ERR_CONFIG, "1 losses"},
        {"{\"loss\": {\"nope\": \"mse\"}}", ERR_CONFIG, "nope"},
        {"{\"loss\": \"mse\", \"loss_weights\": [1]}", ERR_CONFIG, "1 loss weights"},
        {"{\"loss\": \"mse\", \"loss_weights\": {\"zzz\": 1}}", ERR_CONFIG, "zzz"},
        {"{\"loss\": \"mse\", \"loss_weights\": 3}", ERR_CONFIG, "loss_weights"},
        {"{\"loss\": {\"class_name\": \"MeanSquaredError\", \"config\": {\"reduction\": "
         "\"sum\"}}}",
         ERR_UNSUPPORTED, "reduction"},
        {"{\"loss\": {\"class_name\": \"CategoricalCrossentropy\", \"config\": {\"axis\": 1}}}",
         ERR_UNSUPPORTED, "axis"},
        {"{\"loss\": 5}", ERR_CONFIG, "loss"},
        {"{\"loss\": \"mse\", \"metrics\": [{\"class_name\": \"BinaryAccuracy\", \"config\": "
         "{\"threshold\": 0.7}}]}",
         ERR_UNSUPPORTED, "threshold"},
        {"{\"loss\": \"mse\", \"weighted_metrics\": [\"mae\"]}", ERR_UNSUPPORTED,
         "weighted_metrics"},
        {"{\"loss\": \"mse\", \"optimizer_config\": {\"class_name\": \"Adadelta\", \"config\": "
         "{}}}",
         ERR_UNSUPPORTED, "Adadelta"},
        {"{\"loss\": \"mse\", \"optimizer_config\": {\"class_name\": \"SGD\", \"config\": {\"lr\": "
         "0.1, \"decay\": 0.01}}}",
         ERR_UNSUPPORTED, "decay"},
        {"{\"loss\": \"mse\", \"optimizer_config\": {\"class_name\": \"SGD\", \"config\": "
         "{\"learning_rate\": {\"class_name\": \"InverseTimeDecay\", \"config\": {}}}}}",
         ERR_UNSUPPORTED, "InverseTimeDecay"},
        {"{\"loss\": \"mse\", \"optimizer_config\": {\"class_name\": \"SGD\", \"config\": "
         "{\"learning_rate\": {\"class_name\": \"PiecewiseConstantDecay\", \"config\": "
         "{\"boundaries\": [1], \"values\": [1]}}}}}",
         ERR_CONFIG, "boundaries"},
        {"{\"loss\": \"mse\", \"optimizer_config\": {\"class_name\": \"Adam\", \"config\": "
         "{\"use_ema\": true}}}",
         ERR_UNSUPPORTED, "use_ema"},
        {"{\"loss\": \"mse\", \"optimizer_config\": {\"class_name\": \"Nadam\", \"config\": "
         "{\"schedule_decay\": 0.1}}}",
         ERR_UNSUPPORTED, "schedule_decay"},
        {"{\"loss\": \"mse\", \"optimizer_config\": {\"config\": {}}}", ERR_CONFIG, "class_name"},
        {"{\"loss\": \"mse\", \"optimizer_config\": {\"class_name\": \"SGD\", \"config\": "
         "{\"momentum\": \"high\"}}}",
         ERR_CONFIG, "momentum"},
        {"[", ERR_FORMAT, "byte"},
        {"[1]", ERR_FORMAT, "not a training config"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rc = tparse(m, bad[i].json, 0, &e);
        EXPECT_MSG(rc == bad[i].code && strstr(e.msg, bad[i].text) != NULL &&
                       strncmp(e.msg, "train.json", 10) == 0,
                   "training case %zu: %s (%s)", i, err_code_str((err_code)rc), e.msg);
    }
    model_destroy(m);
}

static void training_roundtrip(model *m, const char *what)
{
    char *text = NULL;
    err_info e = {0};
    int rc = kjson_training_write(m, &text, &e);
    EXPECT_MSG(rc == ERR_OK, "%s: %s", what, e.msg);
    if (rc != ERR_OK)
        return;
    model *back = two_output_model();
    if (back != NULL) {
        rc = kjson_training_parse(text, strlen(text), what, back, &e);
        EXPECT_MSG(rc == ERR_OK, "%s: %s\n%s", what, e.msg, text);
        char why[256] = "";
        EXPECT_MSG(rc == ERR_OK && kjt_train_eq(&m->train, &back->train, why, sizeof why),
                   "%s: %s\n%s", what, why, text);
    }
    model_destroy(back);
    free(text);
}

static void test_training_roundtrip(void)
{
    model *m = two_output_model();
    if (m == NULL)
        return;
    err_info e = {0};
    char *text = NULL;
    EXPECT(kjson_training_write(m, &text, &e) == ERR_USAGE);
    model_loss l[2] = {{LOSS_CCE, true, 1.0, 0.2}, {LOSS_HUBER, false, 0.5, 0.0}};
    double w[2] = {1.0, 0.3};
    EXPECT(model_train_set_losses(m, 2, l, w, &e) == ERR_OK);
    m->train.n_metrics = 3;
    m->train.metrics[0] = METRIC_ACCURACY;
    m->train.metrics[1] = METRIC_MSE;
    m->train.metrics[2] = METRIC_SPARSE_CAT_ACC;
    for (int k = 0; k < OPTIM_COUNT; k++) {
        model_optim_config o = model_optim_config_default((optim_kind)k);
        o.lr.initial = 0.0123;
        o.momentum = k == OPTIM_SGD || k == OPTIM_RMSPROP ? 0.7 : 0.0;
        o.clipnorm = k == OPTIM_ADAM ? 2.0 : 0.0;
        o.global_clipnorm = k == OPTIM_ADAMW ? 3.0 : 0.0;
        o.clipvalue = k == OPTIM_NADAM ? 0.25 : 0.0;
        if (k == OPTIM_RMSPROP) {
            o.centered = true;
            o.weight_decay = 0.05; /* needs the new-optimizer form */
        }
        if (k == OPTIM_SGD) {
            o.lr.kind = SCHED_PIECEWISE;
            o.lr.n_bounds = 2;
            o.lr.bounds[0] = 100;
            o.lr.bounds[1] = 200;
            o.lr.values[0] = 0.1;
            o.lr.values[1] = 0.05;
            o.lr.values[2] = 0.01;
            o.lr.initial = 0.1;
        }
        if (k == OPTIM_ADAGRAD) {
            o.lr.kind = SCHED_COSINE;
            o.lr.decay_steps = 1000;
            o.lr.alpha = 0.01;
        }
        if (k == OPTIM_ADAM) {
            o.lr.kind = SCHED_EXPONENTIAL;
            o.lr.decay_steps = 10;
            o.lr.decay_rate = 0.96;
            o.amsgrad = true;
        }
        m->train.optim = o;
        training_roundtrip(m, model_optim_name((optim_kind)k));
    }
    /* One loss applied to both outputs, with a weight. */
    model_loss one = {LOSS_SPARSE_CCE, true, 1.0, 0.0};
    double w1 = 2.0;
    EXPECT(model_train_set_losses(m, 1, &one, &w1, &e) == ERR_OK);
    m->train.n_metrics = 0;
    text = NULL;
    EXPECT(kjson_training_write(m, &text, &e) == ERR_OK);
    model *back = two_output_model();
    if (text != NULL && back != NULL) {
        EXPECT(kjson_training_parse(text, strlen(text), "t", back, &e) == ERR_OK);
        EXPECT(back->train.n_losses == 2 && back->train.losses[1].kind == LOSS_SPARSE_CCE &&
               back->train.losses[1].from_logits && back->train.loss_weights[1] == 2.0);
    }
    free(text);
    model_destroy(back);
    model_destroy(m);
}

int main(void)
{
    test_keras1();
    test_keras2();
    test_keras3();
    test_sequential_inputs();
    test_bad_models();
    test_roundtrip();
    test_training();
    test_training_roundtrip();
    return test_finish();
}
