/* Finite-difference gradient checks for every layer kind and every activation, through the
 * whole engine (see layers_test.h for the loss, the tolerances and the extra checks each run
 * makes). Every model puts a trainable layer in front of the layer under test, so its input
 * gradient is exercised too, and runs a partial batch (3 of 5 rows; the other rows are NaN). */

#include "layers_test.h"

static int uid;

static const char *nm(const char *base)
{
    static char buf[64][32];
    char *s = buf[uid % 64];
    snprintf(s, sizeof buf[0], "%s_%d", base, uid++);
    return s;
}

/* Dense over the last axis: trainable, keeps the other extents. */
static model_ref pre(tb *b, model_ref x, int64_t units)
{
    int d = tb_layer(b, LAYER_DENSE, nm("pre"));
    tb_cfg(b, d)->units = units;
    tb_cfg(b, d)->activation = ACT_TANH;
    return tb_call(b, d, 1, x);
}

static model *finish1(tb *b, model_ref in, model_ref out)
{
    return tb_build(b, 1, &in, 1, &out);
}

static bool kinked(act_kind k)
{
    return k == ACT_RELU || k == ACT_RELU6 || k == ACT_LEAKY_RELU || k == ACT_HARD_SIGMOID ||
           k == ACT_HARD_SIGMOID_K2;
}

static void check_and_free(model *m, const char *what, gc_opts o)
{
    gradcheck(m, what, o);
    model_destroy(m);
}

static void test_dense_activations(void)
{
    for (int k = 0; k < ACT_COUNT; k++) {
        tb b;
        tb_init(&b);
        model_ref x = tb_input(&b, "x", 1, TB_DIMS(6));
        int d1 = tb_layer(&b, LAYER_DENSE, "d1"), d2 = tb_layer(&b, LAYER_DENSE, "d2");
        tb_cfg(&b, d1)->units = 5;
        tb_cfg(&b, d1)->activation = (act_kind)k;
        tb_cfg(&b, d2)->units = 4;
        tb_cfg(&b, d2)->activation = (act_kind)k;
        model_ref y = tb_call(&b, d2, 1, tb_call(&b, d1, 1, x));
        gc_opts o = gc_default();
        if (kinked((act_kind)k))
            o.max_bad_frac = 0.05;
        char what[64];
        snprintf(what, sizeof what, "Dense activation %s", kern_act_name((act_kind)k));
        check_and_free(finish1(&b, x, y), what, o);
    }
    /* Rank 3 input, no bias on the second layer, and a frozen first layer. */
    for (int v = 0; v < 2; v++) {
        tb b;
        tb_init(&b);
        model_ref x = tb_input(&b, "x", 2, TB_DIMS(3, 6));
        int d0 = tb_layer(&b, LAYER_DENSE, "d0");
        int d1 = tb_layer(&b, LAYER_DENSE, "d1"), d2 = tb_layer(&b, LAYER_DENSE, "d2");
        tb_cfg(&b, d0)->units = 5;
        tb_cfg(&b, d1)->units = 4;
        tb_cfg(&b, d1)->activation = ACT_SWISH;
        tb_cfg(&b, d2)->units = 2;
        tb_cfg(&b, d2)->use_bias = false;
        if (v == 1)
            b.m->layers[d1].trainable = false;
        model_ref y = tb_call(&b, d2, 1, tb_call(&b, d1, 1, tb_call(&b, d0, 1, x)));
        check_and_free(finish1(&b, x, y), v ? "Dense rank 3, frozen middle" : "Dense rank 3",
                       gc_default());
    }
}

static void test_activation_layers(void)
{
    for (int k = 0; k < ACT_COUNT; k++) {
        tb b;
        tb_init(&b);
        model_ref x = tb_input(&b, "x", 2, TB_DIMS(2, 7));
        int a = tb_layer(&b, LAYER_ACTIVATION, "act");
        tb_cfg(&b, a)->activation = (act_kind)k;
        model_ref y = tb_call(&b, a, 1, pre(&b, x, 7));
        gc_opts o = gc_default();
        if (kinked((act_kind)k))
            o.max_bad_frac = 0.05;
        char what[64];
        snprintf(what, sizeof what, "Activation %s", kern_act_name((act_kind)k));
        check_and_free(finish1(&b, x, y), what, o);
    }
    struct {
        layer_kind k;
        double a, b, c;
        int axis;
        const char *what;
    } cases[] = {
        {LAYER_RELU, -1, 0, 0, 0, "ReLU"},
        {LAYER_RELU, 0.5, 0.1, 0.2, 0, "ReLU max 0.5 slope 0.1 threshold 0.2"},
        {LAYER_RELU, -1, 0, -0.3, 0, "ReLU threshold -0.3"},
        {LAYER_LEAKYRELU, 0.3, 0, 0, 0, "LeakyReLU"},
        {LAYER_ELU, 0.7, 0, 0, 0, "ELU 0.7"},
        {LAYER_SOFTMAX, 0, 0, 0, -1, "Softmax axis -1"},
        {LAYER_SOFTMAX, 0, 0, 0, 1, "Softmax axis 1"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tb b;
        tb_init(&b);
        model_ref x = tb_input(&b, "x", 2, TB_DIMS(3, 4));
        int l = tb_layer(&b, cases[i].k, "l");
        layer_config *c = tb_cfg(&b, l);
        if (cases[i].k == LAYER_RELU) {
            c->max_value = cases[i].a;
            c->negative_slope = cases[i].b;
            c->threshold = cases[i].c;
        } else if (cases[i].k == LAYER_SOFTMAX) {
            c->axis = cases[i].axis;
        } else {
            c->alpha = cases[i].a;
        }
        model_ref y = tb_call(&b, l, 1, pre(&b, x, 4));
        gc_opts o = gc_default();
        if (cases[i].k == LAYER_RELU || cases[i].k == LAYER_LEAKYRELU)
            o.max_bad_frac = 0.05;
        check_and_free(finish1(&b, x, y), cases[i].what, o);
    }
}

typedef struct conv_case {
    layer_kind k;
    int64_t k0, k1, s0, s1, d0, d1;
    pad_kind pad;
    bool cf, bias;
    act_kind act;
    const char *what;
} conv_case;

static void test_conv(void)
{
    const conv_case cases[] = {
        {LAYER_CONV2D, 3, 3, 1, 1, 1, 1, PAD_VALID, false, true, ACT_TANH, "Conv2D valid"},
        {LAYER_CONV2D, 3, 2, 2, 2, 1, 1, PAD_SAME, false, true, ACT_LINEAR, "Conv2D same s2"},
        {LAYER_CONV2D, 2, 3, 1, 1, 2, 1, PAD_SAME, false, false, ACT_GELU,
         "Conv2D same dilation 2, no bias, gelu"},
        {LAYER_CONV2D, 3, 3, 2, 1, 1, 1, PAD_VALID, true, true, ACT_SIGMOID,
         "Conv2D channels_first"},
        {LAYER_CONV2D, 1, 1, 1, 1, 1, 1, PAD_SAME, false, true, ACT_SOFTMAX, "Conv2D 1x1 softmax"},
        {LAYER_CONV1D, 3, 0, 1, 0, 2, 0, PAD_CAUSAL, false, true, ACT_TANH,
         "Conv1D causal dilation 2"},
        {LAYER_CONV1D, 3, 0, 2, 0, 1, 0, PAD_SAME, false, true, ACT_LINEAR, "Conv1D same s2"},
        {LAYER_CONV1D, 2, 0, 1, 0, 1, 0, PAD_VALID, true, true, ACT_ELU, "Conv1D channels_first"},
        {LAYER_CONV1D, 3, 0, 3, 0, 1, 0, PAD_CAUSAL, false, false, ACT_LINEAR, "Conv1D causal s3"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const conv_case *cc = &cases[i];
        bool is1d = cc->k == LAYER_CONV1D;
        tb b;
        tb_init(&b);
        model_ref x =
            is1d ? tb_input(&b, "x", 2, TB_DIMS(7, 3)) : tb_input(&b, "x", 3, TB_DIMS(6, 7, 3));
        int l = tb_layer(&b, cc->k, "conv");
        layer_config *c = tb_cfg(&b, l);
        c->filters = 4;
        c->kernel_size[0] = cc->k0;
        c->kernel_size[1] = is1d ? 1 : cc->k1;
        c->strides[0] = cc->s0;
        c->strides[1] = is1d ? 1 : cc->s1;
        c->dilation[0] = cc->d0;
        c->dilation[1] = is1d ? 1 : cc->d1;
        c->padding = cc->pad;
        c->channels_first = cc->cf;
        c->use_bias = cc->bias;
        c->activation = cc->act;
        /* channels_first: the pre Dense runs over the last (spatial) axis, which is fine. */
        model_ref y = tb_call(&b, l, 1, pre(&b, x, is1d ? 3 : 3));
        check_and_free(finish1(&b, x, y), cc->what, gc_default());
    }
}

static void test_pool(void)
{
    struct {
        layer_kind k;
        int64_t p0, p1, s0, s1;
        pad_kind pad;
        bool cf;
        const char *what;
    } cases[] = {
        {LAYER_MAXPOOL2D, 2, 2, 0, 0, PAD_VALID, false, "MaxPooling2D 2"},
        {LAYER_MAXPOOL2D, 3, 2, 2, 1, PAD_SAME, false, "MaxPooling2D 3x2 s2x1 same"},
        {LAYER_AVGPOOL2D, 3, 3, 2, 2, PAD_SAME, false, "AveragePooling2D 3 s2 same"},
        {LAYER_AVGPOOL2D, 2, 2, 1, 1, PAD_VALID, true, "AveragePooling2D channels_first"},
        {LAYER_MAXPOOL2D, 2, 2, 0, 0, PAD_SAME, true, "MaxPooling2D channels_first same"},
        {LAYER_MAXPOOL1D, 2, 0, 0, 0, PAD_VALID, false, "MaxPooling1D"},
        {LAYER_AVGPOOL1D, 3, 0, 2, 0, PAD_SAME, false, "AveragePooling1D same"},
        {LAYER_MAXPOOL1D, 3, 0, 1, 0, PAD_SAME, true, "MaxPooling1D channels_first overlap"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bool is1d = cases[i].k == LAYER_MAXPOOL1D || cases[i].k == LAYER_AVGPOOL1D;
        tb b;
        tb_init(&b);
        model_ref x =
            is1d ? tb_input(&b, "x", 2, TB_DIMS(7, 3)) : tb_input(&b, "x", 3, TB_DIMS(5, 7, 3));
        int l = tb_layer(&b, cases[i].k, "pool");
        layer_config *c = tb_cfg(&b, l);
        c->pool_size[0] = cases[i].p0;
        c->pool_size[1] = is1d ? 1 : cases[i].p1;
        c->pool_strides[0] = cases[i].s0;
        c->pool_strides[1] = is1d ? 1 : cases[i].s1;
        c->padding = cases[i].pad;
        c->channels_first = cases[i].cf;
        model_ref y = tb_call(&b, l, 1, pre(&b, x, 3));
        gc_opts o = gc_default();
        o.max_bad_frac = 0.03; /* a perturbation may move a window's maximum */
        check_and_free(finish1(&b, x, y), cases[i].what, o);
    }
    const layer_kind g[] = {LAYER_GAP2D, LAYER_GMP2D, LAYER_GAP1D, LAYER_GMP1D};
    for (int i = 0; i < 8; i++) {
        layer_kind k = g[i % 4];
        bool cf = i >= 4, is1d = k == LAYER_GAP1D || k == LAYER_GMP1D;
        tb b;
        tb_init(&b);
        model_ref x =
            is1d ? tb_input(&b, "x", 2, TB_DIMS(5, 3)) : tb_input(&b, "x", 3, TB_DIMS(4, 5, 3));
        int l = tb_layer(&b, k, "gpool");
        tb_cfg(&b, l)->channels_first = cf;
        model_ref y = tb_call(&b, l, 1, pre(&b, x, 3));
        char what[64];
        snprintf(what, sizeof what, "global pooling %d%s", i % 4, cf ? " channels_first" : "");
        gc_opts o = gc_default();
        o.max_bad_frac = 0.03;
        check_and_free(finish1(&b, x, y), what, o);
    }
}

static void test_reshaping(void)
{
    for (int cf = 0; cf < 2; cf++) {
        tb b;
        tb_init(&b);
        model_ref x = tb_input(&b, "x", 3, TB_DIMS(3, 4, 2));
        int f = tb_layer(&b, LAYER_FLATTEN, "flat");
        tb_cfg(&b, f)->channels_first = cf;
        int d = tb_layer(&b, LAYER_DENSE, "post");
        tb_cfg(&b, d)->units = 3;
        model_ref y = tb_call(&b, d, 1, tb_call(&b, f, 1, pre(&b, x, 2)));
        check_and_free(finish1(&b, x, y), cf ? "Flatten channels_first" : "Flatten", gc_default());
    }
    {
        tb b;
        tb_init(&b);
        model_ref x = tb_input(&b, "x", 1, TB_DIMS(12));
        int r = tb_layer(&b, LAYER_RESHAPE, "resh");
        tb_cfg(&b, r)->target_rank = 2;
        tb_cfg(&b, r)->target_shape[0] = -1;
        tb_cfg(&b, r)->target_shape[1] = 4;
        int d = tb_layer(&b, LAYER_DENSE, "post");
        tb_cfg(&b, d)->units = 2;
        model_ref y = tb_call(&b, d, 1, tb_call(&b, r, 1, pre(&b, x, 12)));
        check_and_free(finish1(&b, x, y), "Reshape", gc_default());
    }
    for (int cf = 0; cf < 2; cf++) {
        tb b;
        tb_init(&b);
        model_ref x = tb_input(&b, "x", 3, TB_DIMS(3, 4, 2));
        int z = tb_layer(&b, LAYER_ZEROPAD2D, "zp");
        layer_config *c = tb_cfg(&b, z);
        c->channels_first = cf;
        c->zero_pad[0] = 1, c->zero_pad[1] = 0, c->zero_pad[2] = 2, c->zero_pad[3] = 1;
        int cv = tb_layer(&b, LAYER_CONV2D, "conv");
        tb_cfg(&b, cv)->filters = 2;
        tb_cfg(&b, cv)->kernel_size[0] = 2;
        tb_cfg(&b, cv)->kernel_size[1] = 2;
        tb_cfg(&b, cv)->channels_first = cf;
        model_ref y = tb_call(&b, cv, 1, tb_call(&b, z, 1, pre(&b, x, 2)));
        check_and_free(finish1(&b, x, y), cf ? "ZeroPadding2D channels_first" : "ZeroPadding2D",
                       gc_default());
    }
    {
        tb b;
        tb_init(&b);
        model_ref x = tb_input(&b, "x", 1, TB_DIMS(8));
        int dr = tb_layer(&b, LAYER_DROPOUT, "drop");
        tb_cfg(&b, dr)->rate = 0.4;
        int d = tb_layer(&b, LAYER_DENSE, "post");
        tb_cfg(&b, d)->units = 3;
        model_ref y = tb_call(&b, d, 1, tb_call(&b, dr, 1, pre(&b, x, 8)));
        check_and_free(finish1(&b, x, y), "Dropout 0.4 (training)", gc_default());
    }
}

static void test_batchnorm(void)
{
    struct {
        int axis;
        bool center, scale, frozen, spatial;
        const char *what;
    } cases[] = {
        {-1, true, true, false, false, "BatchNormalization"},
        {-1, false, true, false, false, "BatchNormalization center=False"},
        {-1, true, false, false, false, "BatchNormalization scale=False"},
        {-1, true, true, false, true, "BatchNormalization on 4-D, axis -1"},
        {1, true, true, false, true, "BatchNormalization on 4-D, axis 1"},
        {2, true, true, false, true, "BatchNormalization on 4-D, axis 2"},
        {-1, true, true, true, false, "BatchNormalization frozen (inference mode)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tb b;
        tb_init(&b);
        model_ref x = cases[i].spatial ? tb_input(&b, "x", 3, TB_DIMS(3, 2, 4))
                                       : tb_input(&b, "x", 1, TB_DIMS(5));
        int bn = tb_layer(&b, LAYER_BATCHNORM, "bn");
        layer_config *c = tb_cfg(&b, bn);
        c->axis = cases[i].axis;
        c->center = cases[i].center;
        c->scale = cases[i].scale;
        c->momentum = 0.9;
        if (cases[i].frozen)
            b.m->layers[bn].trainable = false;
        int d = tb_layer(&b, LAYER_DENSE, "post");
        tb_cfg(&b, d)->units = 3;
        tb_cfg(&b, d)->activation = ACT_TANH;
        model_ref y = tb_call(&b, d, 1, tb_call(&b, bn, 1, pre(&b, x, 4)));
        gc_opts o = gc_default();
        o.rows = 4;
        check_and_free(finish1(&b, x, y), cases[i].what, o);
    }
}

static void test_merges(void)
{
    const layer_kind kinds[] = {LAYER_ADD, LAYER_SUBTRACT, LAYER_MULTIPLY, LAYER_AVERAGE};
    for (int i = 0; i < 4; i++) {
        tb b;
        tb_init(&b);
        model_ref x = tb_input(&b, "x", 1, TB_DIMS(5));
        model_ref a = pre(&b, x, 4), c = pre(&b, x, 4);
        int l = tb_layer(&b, kinds[i], "merge");
        /* Subtract takes two inputs; the others get a repeated input as well. */
        model_ref y =
            kinds[i] == LAYER_SUBTRACT ? tb_call(&b, l, 2, a, c) : tb_call(&b, l, 3, a, c, a);
        char what[64];
        snprintf(what, sizeof what, "merge %s", model_kind_class_name(kinds[i]));
        check_and_free(finish1(&b, x, y), what, gc_default());
    }
    for (int axis = -1; axis <= 2; axis += 2) {
        tb b;
        tb_init(&b);
        model_ref x = tb_input(&b, "x", 2, TB_DIMS(3, 4));
        model_ref a = pre(&b, x, 2), c = pre(&b, x, 2);
        int l = tb_layer(&b, LAYER_CONCAT, "cat");
        tb_cfg(&b, l)->axis = axis == 2 ? 1 : axis;
        model_ref y = tb_call(&b, l, 3, a, c, a);
        check_and_free(finish1(&b, x, y), axis < 0 ? "Concatenate axis -1" : "Concatenate axis 1",
                       gc_default());
    }
}

static void test_embedding(void)
{
    tb b;
    tb_init(&b);
    model_ref x = tb_input(&b, "ids", 1, TB_DIMS(6));
    int em = tb_layer(&b, LAYER_EMBEDDING, "emb");
    tb_cfg(&b, em)->input_dim = 5;
    tb_cfg(&b, em)->output_dim = 3;
    int f = tb_layer(&b, LAYER_FLATTEN, "flat");
    int d = tb_layer(&b, LAYER_DENSE, "post");
    tb_cfg(&b, d)->units = 2;
    tb_cfg(&b, d)->activation = ACT_TANH;
    model_ref y = tb_call(&b, d, 1, tb_call(&b, f, 1, tb_call(&b, em, 1, x)));
    gc_opts o = gc_default();
    o.int_inputs = 5; /* 6 ids per row from 5: repeats are certain */
    check_and_free(finish1(&b, x, y), "Embedding", o);
}

/* Shared layers (several calls) and graphs with several inputs and outputs. */
static void test_graphs(void)
{
    {
        tb b;
        tb_init(&b);
        model_ref x1 = tb_input(&b, "x1", 1, TB_DIMS(4)), x2 = tb_input(&b, "x2", 1, TB_DIMS(4));
        int sh = tb_layer(&b, LAYER_DENSE, "shared");
        tb_cfg(&b, sh)->units = 4;
        tb_cfg(&b, sh)->activation = ACT_TANH;
        int bn = tb_layer(&b, LAYER_BATCHNORM, "bn");
        model_ref a = tb_call(&b, bn, 1, tb_call(&b, sh, 1, x1));
        /* Call the shared Dense on its own output too (a chain through one layer). */
        model_ref c = tb_call(&b, sh, 1, tb_call(&b, sh, 1, x2));
        model_ref c2 = tb_call(&b, bn, 1, c);
        int add = tb_layer(&b, LAYER_ADD, "add");
        model_ref s = tb_call(&b, add, 2, a, c2);
        int o2 = tb_layer(&b, LAYER_DENSE, "head2");
        tb_cfg(&b, o2)->units = 2;
        model_ref y2 = tb_call(&b, o2, 1, s);
        /* Outputs: s (also consumed by head2), y2, and s again (a duplicate output). */
        model_ref ins[2] = {x1, x2}, outs[3] = {s, y2, s};
        model *m = tb_build(&b, 2, ins, 3, outs);
        gc_opts o = gc_default();
        o.rows = 4;
        check_and_free(m, "shared Dense x3 and shared BatchNormalization, 2 in, 3 out", o);
    }
    {
        /* An output that is a Flatten (a view) of another output, and a conv shared by two
         * inputs. */
        tb b;
        tb_init(&b);
        model_ref x1 = tb_input(&b, "x1", 3, TB_DIMS(4, 4, 2)),
                  x2 = tb_input(&b, "x2", 3, TB_DIMS(4, 4, 2));
        int cv = tb_layer(&b, LAYER_CONV2D, "conv");
        tb_cfg(&b, cv)->filters = 2;
        tb_cfg(&b, cv)->kernel_size[0] = 3;
        tb_cfg(&b, cv)->kernel_size[1] = 3;
        tb_cfg(&b, cv)->padding = PAD_SAME;
        model_ref a = tb_call(&b, cv, 1, x1), c = tb_call(&b, cv, 1, x2);
        int cat = tb_layer(&b, LAYER_CONCAT, "cat");
        model_ref s = tb_call(&b, cat, 2, a, c);
        model_ref f = tb_add1(&b, LAYER_FLATTEN, "flat", s);
        model_ref ins[2] = {x1, x2}, outs[2] = {s, f};
        check_and_free(tb_build(&b, 2, ins, 2, outs), "shared Conv2D, output and its Flatten",
                       gc_default());
    }
}

int main(void)
{
    test_dense_activations();
    test_activation_layers();
    test_conv();
    test_pool();
    test_reshaping();
    test_batchnorm();
    test_merges();
    test_embedding();
    test_graphs();
    return test_finish();
}
