/* Layer engine semantics beyond gradients: the dispatch table, forward values against plain
 * references (Dense, Conv2D/Conv1D incl. channels_first and causal, pooling channels_first,
 * Flatten channels_first order, BatchNormalization train vs inference with the moving-statistics
 * update), Dropout determinism, partial batches, zero-copy views, gradient planning (no dx into
 * model inputs, zeroed dead branches), distributed BatchNormalization through the reduce hook
 * (two simulated ranks with uneven shards against one process on the whole batch), the ready
 * hook's errors, and the error paths (each checks the code and that the message names the
 * layer).
 *
 * Tolerances are stated at each comparison: forward values vs double references 1e-5 relative
 * + 1e-6 absolute unless noted. */

#include "kernels/kern_conv.h"
#include "kernels/kern_dense.h"
#include "kernels/kern_pool.h"
#include "layers_test.h"
#include "trainer/layers_impl.h"

static float *wptr(model *m, const char *layer, const char *w)
{
    int l = model_layer_find(m, layer);
    int i = model_weight_find(m, l, w);
    CHECK(i >= 0);
    return m->params + m->weights[i].offset;
}

static void fill(float *x, int64_t n, uint64_t seed)
{
    rng r;
    rng_seed(&r, seed, 3);
    for (int64_t i = 0; i < n; i++)
        x[i] = 2.0f * rng_uniform_f(&r) - 1.0f;
}

static int count_far(const float *a, const float *b, int64_t n, double rtol, double atol)
{
    int bad = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!test_close(a[i], b[i], rtol, atol)) {
            if (bad < 3)
                fprintf(stderr, "  at %lld: %.8g vs %.8g\n", (long long)i, (double)a[i],
                        (double)b[i]);
            bad++;
        }
    }
    return bad;
}

static void test_dispatch(void)
{
    for (int k = 0; k < LAYER_COUNT; k++) {
        const layer_ops *o = layer__ops((layer_kind)k);
        EXPECT_MSG(o != NULL && o->plan != NULL && o->forward != NULL && o->backward != NULL,
                   "dispatch entry %d (%s) is empty", k, model_kind_class_name((layer_kind)k));
    }
    EXPECT(layer__ops(LAYER_COUNT) == NULL);
}

/* Runs an inference forward of a one-input one-output model on x; returns the output copy. */
static float *run_inference(model *m, int64_t batch, int64_t rows, const float *x, int64_t in_row,
                            int64_t out_row)
{
    layer_net *net = NULL;
    err_info e = {0};
    int rc = layer_net_create(m, batch, false, &net, &e);
    EXPECT_MSG(rc == ERR_OK, "create: %s", e.msg);
    if (rc != ERR_OK)
        return NULL;
    memcpy(layer_net_input(net, 0), x, sizeof(float) * (size_t)(rows * in_row));
    rc = layer_net_forward(net, rows, false, 0, 0, &e);
    EXPECT_MSG(rc == ERR_OK, "forward: %s", e.msg);
    float *y = malloc(sizeof(float) * (size_t)(rows * out_row + 1));
    memcpy(y, layer_net_output(net, 0), sizeof(float) * (size_t)(rows * out_row));
    layer_net_destroy(net);
    return y;
}

/* Dense over a rank-3 input vs the reference kernel, awkward sizes. */
static void test_dense_forward(void)
{
    const int64_t sizes[][3] = {{1, 1, 1}, {7, 33, 1}, {33, 7, 33}, {2, 1, 7}};
    for (size_t s = 0; s < 4; s++) {
        int64_t t = sizes[s][0], in = sizes[s][1], out = sizes[s][2], rows = 3;
        tb b;
        tb_init(&b);
        model_ref x = tb_input(&b, "x", 2, TB_DIMS(t, in));
        int d = tb_layer(&b, LAYER_DENSE, "d");
        tb_cfg(&b, d)->units = out;
        tb_cfg(&b, d)->activation = ACT_SELU;
        model_ref y = tb_call(&b, d, 1, x);
        model *m = tb_build(&b, 1, &x, 1, &y);
        float *xv = malloc(sizeof(float) * (size_t)(rows * t * in));
        float *ref = malloc(sizeof(float) * (size_t)(rows * t * out));
        fill(xv, rows * t * in, 5);
        kern_ref_dense_forward(rows * t, in, out, ACT_SELU, xv, wptr(m, "d", "kernel"),
                               wptr(m, "d", "bias"), ref);
        float *got = run_inference(m, 4, rows, xv, t * in, t * out);
        EXPECT_MSG(got && count_far(got, ref, rows * t * out, 1e-5, 1e-6) == 0,
                   "Dense forward %lldx%lld->%lld", (long long)t, (long long)in, (long long)out);
        free(got), free(xv), free(ref);
        model_destroy(m);
    }
}

/* NCHW [n, c, s] <-> NHWC [n, s, c]. */
static void to_last(int64_t n, int64_t c, int64_t s, const float *in, float *out)
{
    for (int64_t b = 0; b < n; b++)
        for (int64_t i = 0; i < c; i++)
            for (int64_t j = 0; j < s; j++)
                out[(b * s + j) * c + i] = in[(b * c + i) * s + j];
}

static void to_first(int64_t n, int64_t c, int64_t s, const float *in, float *out)
{
    for (int64_t b = 0; b < n; b++)
        for (int64_t i = 0; i < c; i++)
            for (int64_t j = 0; j < s; j++)
                out[(b * c + i) * s + j] = in[(b * s + j) * c + i];
}

static void test_conv_forward(void)
{
    /* Conv2D channels_first == transpose, reference conv, transpose. */
    for (int cf = 0; cf < 2; cf++) {
        int64_t n = 2, h = 7, w = 5, c = 3, f = 4;
        tb b;
        tb_init(&b);
        model_ref x =
            cf ? tb_input(&b, "x", 3, TB_DIMS(c, h, w)) : tb_input(&b, "x", 3, TB_DIMS(h, w, c));
        int l = tb_layer(&b, LAYER_CONV2D, "conv");
        layer_config *cc = tb_cfg(&b, l);
        cc->filters = f;
        cc->kernel_size[0] = 3, cc->kernel_size[1] = 2;
        cc->strides[0] = 2, cc->strides[1] = 1;
        cc->padding = PAD_SAME;
        cc->channels_first = cf;
        cc->activation = ACT_TANH;
        model_ref y = tb_call(&b, l, 1, x);
        model *m = tb_build(&b, 1, &x, 1, &y);
        kern_conv_geom g = {.n = n,
                            .h = h,
                            .w = w,
                            .cin = c,
                            .kh = 3,
                            .kw = 2,
                            .cout = f,
                            .sh = 2,
                            .sw = 1,
                            .dh = 1,
                            .dw = 1};
        kern_conv_geom_set(&g, true);
        int64_t in_n = n * h * w * c, out_n = n * g.oh * g.ow * f;
        float *xv = malloc(sizeof(float) * (size_t)in_n),
              *xl = malloc(sizeof(float) * (size_t)in_n);
        float *ref = malloc(sizeof(float) * (size_t)out_n),
              *rf = malloc(sizeof(float) * (size_t)out_n);
        fill(xv, in_n, 11);
        if (cf)
            to_last(n, c, h * w, xv, xl);
        else
            memcpy(xl, xv, sizeof(float) * (size_t)in_n);
        kern_ref_conv2d_forward(&g, xl, wptr(m, "conv", "kernel"), wptr(m, "conv", "bias"), ref);
        kern_ref_act_forward(ACT_TANH, 1, out_n, ref, ref);
        if (cf)
            to_first(n, f, g.oh * g.ow, ref, rf);
        else
            memcpy(rf, ref, sizeof(float) * (size_t)out_n);
        float *got = run_inference(m, 3, n, xv, h * w * c, g.oh * g.ow * f);
        EXPECT_MSG(got && count_far(got, rf, out_n, 1e-5, 1e-6) == 0, "Conv2D forward cf=%d", cf);
        free(got), free(xv), free(xl), free(ref), free(rf);
        model_destroy(m);
    }
    /* Conv1D causal == left zero padding of (k-1)*d, then valid. */
    {
        int64_t n = 2, steps = 9, c = 2, f = 3, k = 3, dil = 2;
        tb b;
        tb_init(&b);
        model_ref x = tb_input(&b, "x", 2, TB_DIMS(steps, c));
        int l = tb_layer(&b, LAYER_CONV1D, "conv");
        layer_config *cc = tb_cfg(&b, l);
        cc->filters = f;
        cc->kernel_size[0] = k;
        cc->dilation[0] = dil;
        cc->padding = PAD_CAUSAL;
        model_ref y = tb_call(&b, l, 1, x);
        model *m = tb_build(&b, 1, &x, 1, &y);
        int64_t pad = (k - 1) * dil, ps = steps + pad;
        float *xv = malloc(sizeof(float) * (size_t)(n * steps * c));
        float *xp = calloc((size_t)(n * ps * c), sizeof(float));
        float *ref = malloc(sizeof(float) * (size_t)(n * steps * f));
        fill(xv, n * steps * c, 12);
        for (int64_t i = 0; i < n; i++)
            memcpy(xp + (i * ps + pad) * c, xv + i * steps * c,
                   sizeof(float) * (size_t)(steps * c));
        kern_conv_geom g = {.n = n,
                            .h = 1,
                            .w = ps,
                            .cin = c,
                            .kh = 1,
                            .kw = k,
                            .cout = f,
                            .sh = 1,
                            .sw = 1,
                            .dh = 1,
                            .dw = dil};
        kern_conv_geom_set(&g, false);
        EXPECT(g.ow == steps);
        kern_ref_conv2d_forward(&g, xp, wptr(m, "conv", "kernel"), wptr(m, "conv", "bias"), ref);
        float *got = run_inference(m, 2, n, xv, steps * c, steps * f);
        EXPECT_MSG(got && count_far(got, ref, n * steps * f, 1e-5, 1e-6) == 0,
                   "Conv1D causal forward");
        free(got), free(xv), free(xp), free(ref);
        model_destroy(m);
    }
}

static void test_pool_flatten_forward(void)
{
    /* MaxPooling2D channels_first == transpose, reference pool, transpose. */
    int64_t n = 2, c = 3, h = 5, w = 4;
    tb b;
    tb_init(&b);
    model_ref x = tb_input(&b, "x", 3, TB_DIMS(c, h, w));
    int l = tb_layer(&b, LAYER_MAXPOOL2D, "pool");
    tb_cfg(&b, l)->channels_first = true;
    tb_cfg(&b, l)->padding = PAD_SAME;
    model_ref y = tb_call(&b, l, 1, x);
    int f = tb_layer(&b, LAYER_FLATTEN, "flat");
    tb_cfg(&b, f)->channels_first = true;
    model_ref z = tb_call(&b, f, 1, y);
    model_ref outs[2] = {y, z};
    model *m = tb_build(&b, 1, &x, 2, outs);
    kern_pool_geom g = {.n = n, .h = h, .w = w, .c = c, .ph = 2, .pw = 2, .sh = 2, .sw = 2};
    kern_pool_geom_set(&g, true);
    int64_t in_n = n * c * h * w, out_n = n * c * g.oh * g.ow;
    float xv[120], xl[120], ref[60], rf[60];
    fill(xv, in_n, 13);
    to_last(n, c, h * w, xv, xl);
    kern_ref_maxpool2d_forward(&g, xl, ref, NULL);
    to_first(n, c, g.oh * g.ow, ref, rf);
    layer_net *net = NULL;
    err_info e = {0};
    EXPECT(layer_net_create(m, n, false, &net, &e) == ERR_OK);
    memcpy(layer_net_input(net, 0), xv, sizeof(float) * (size_t)in_n);
    EXPECT(layer_net_forward(net, n, false, 0, 0, &e) == ERR_OK);
    EXPECT_MSG(count_far(layer_net_output(net, 0), rf, out_n, 0, 0) == 0,
               "MaxPooling2D channels_first forward");
    /* Keras' Flatten(data_format="channels_first") moves channels last first: the flattened
     * order is the channels_last pooled tensor. */
    EXPECT_MSG(count_far(layer_net_output(net, 1), ref, out_n, 0, 0) == 0,
               "Flatten channels_first order");
    layer_net_destroy(net);
    model_destroy(m);
}

static void test_batchnorm_values(void)
{
    const int64_t C = 3, rows = 4;
    tb b;
    tb_init(&b);
    model_ref x = tb_input(&b, "x", 1, TB_DIMS(C));
    int l = tb_layer(&b, LAYER_BATCHNORM, "bn");
    tb_cfg(&b, l)->momentum = 0.8;
    tb_cfg(&b, l)->epsilon = 0.01;
    model_ref y = tb_call(&b, l, 1, x);
    model *m = tb_build(&b, 1, &x, 1, &y);
    float *gamma = wptr(m, "bn", "gamma"), *beta = wptr(m, "bn", "beta");
    float *mm = wptr(m, "bn", "moving_mean"), *mv = wptr(m, "bn", "moving_variance");
    float mm0[3], mv0[3];
    memcpy(mm0, mm, sizeof mm0);
    memcpy(mv0, mv, sizeof mv0);
    float xv[12];
    fill(xv, rows * C, 21);
    for (int i = 0; i < 12; i++)
        xv[i] = 3.0f * xv[i] + 5.0f; /* mean far from 0: exercises the shifted sums */
    layer_net *net = NULL;
    err_info e = {0};
    EXPECT(layer_net_create(m, rows, true, &net, &e) == ERR_OK);
    memcpy(layer_net_input(net, 0), xv, sizeof xv);
    EXPECT(layer_net_forward(net, rows, true, 0, 0, &e) == ERR_OK);
    const float *out = layer_net_output(net, 0);
    int bad = 0;
    for (int64_t ch = 0; ch < C; ch++) {
        double mean = 0, var = 0;
        for (int64_t r = 0; r < rows; r++)
            mean += xv[r * C + ch];
        mean /= (double)rows;
        for (int64_t r = 0; r < rows; r++)
            var += (xv[r * C + ch] - mean) * (xv[r * C + ch] - mean);
        var /= (double)rows; /* biased, like Keras 3 */
        for (int64_t r = 0; r < rows; r++) {
            double want = (xv[r * C + ch] - mean) / sqrt(var + 0.01) * gamma[ch] + beta[ch];
            bad += !test_close(out[r * C + ch], want, 1e-5, 1e-5);
        }
        bad += !test_close(mm[ch], mm0[ch] * 0.8 + mean * 0.2, 1e-6, 1e-6);
        bad += !test_close(mv[ch], mv0[ch] * 0.8 + var * 0.2, 1e-6, 1e-6);
    }
    EXPECT_MSG(bad == 0, "BatchNormalization training values: %d off", bad);
    /* Inference mode (even on the training net) uses the (updated) moving statistics and does
     * not change them. */
    float mm1[3], mv1[3];
    memcpy(mm1, mm, sizeof mm1);
    memcpy(mv1, mv, sizeof mv1);
    EXPECT(layer_net_forward(net, rows, false, 0, 0, &e) == ERR_OK);
    bad = 0;
    for (int64_t ch = 0; ch < C; ch++) {
        for (int64_t r = 0; r < rows; r++) {
            double want = (xv[r * C + ch] - mm1[ch]) / sqrt(mv1[ch] + 0.01) * gamma[ch] + beta[ch];
            bad += !test_close(out[r * C + ch], want, 1e-5, 1e-5);
        }
        bad += mm[ch] != mm1[ch] || mv[ch] != mv1[ch];
    }
    EXPECT_MSG(bad == 0, "BatchNormalization inference values: %d off", bad);
    /* Backward after an inference forward is refused. */
    EXPECT(layer_net_backward(net, rows, NULL, NULL, &e) == ERR_USAGE);
    layer_net_destroy(net);
    model_destroy(m);
}

static model *dropout_model(double rate)
{
    tb b;
    tb_init(&b);
    model_ref x = tb_input(&b, "x", 1, TB_DIMS(1000));
    int l = tb_layer(&b, LAYER_DROPOUT, "drop");
    tb_cfg(&b, l)->rate = rate;
    model_ref y = tb_call(&b, l, 1, x);
    return tb_build(&b, 1, &x, 1, &y);
}

static void test_dropout(void)
{
    model *m = dropout_model(0.3);
    layer_net *net = NULL, *inf = NULL;
    err_info e = {0};
    EXPECT(layer_net_create(m, 4, true, &net, &e) == ERR_OK);
    EXPECT(layer_net_create(m, 4, false, &inf, &e) == ERR_OK);
    float *x = layer_net_input(net, 0);
    for (int i = 0; i < 4000; i++)
        x[i] = 1.0f + (float)(i % 7);
    float *a = malloc(sizeof(float) * 4000), *b2 = malloc(sizeof(float) * 4000);
    EXPECT(layer_net_forward(net, 4, true, 5, 10, &e) == ERR_OK);
    memcpy(a, layer_net_output(net, 0), sizeof(float) * 4000);
    int kept = 0, bad = 0;
    for (int i = 0; i < 4000; i++) {
        if (a[i] != 0) {
            kept++;
            bad += !test_close(a[i], x[i] / 0.7, 1e-6, 0);
        }
    }
    EXPECT_MSG(bad == 0, "kept values are scaled by 1 / (1 - rate)");
    /* 4000 draws at p = 0.7: the standard deviation of the count is 29. */
    EXPECT_MSG(kept > 2800 - 150 && kept < 2800 + 150, "kept %d of 4000 at rate 0.3", kept);
    EXPECT(layer_net_forward(net, 4, true, 5, 10, &e) == ERR_OK);
    EXPECT_MSG(memcmp(a, layer_net_output(net, 0), sizeof(float) * 4000) == 0,
               "same seed and step give the same mask");
    EXPECT(layer_net_forward(net, 4, true, 5, 11, &e) == ERR_OK);
    EXPECT(memcmp(a, layer_net_output(net, 0), sizeof(float) * 4000) != 0);
    EXPECT(layer_net_forward(net, 4, true, 6, 10, &e) == ERR_OK);
    EXPECT(memcmp(a, layer_net_output(net, 0), sizeof(float) * 4000) != 0);
    /* A partial batch draws a prefix of the full batch's mask, and a shard starting at global
     * row 2 draws rows 2.. of it (masks do not depend on the number of ranks). */
    EXPECT(layer_net_forward(net, 2, true, 5, 10, &e) == ERR_OK);
    EXPECT(memcmp(a, layer_net_output(net, 0), sizeof(float) * 2000) == 0);
    memmove(x, x + 2000, sizeof(float) * 2000);
    layer_net_set_row_offset(net, 2);
    EXPECT(layer_net_forward(net, 2, true, 5, 10, &e) == ERR_OK);
    EXPECT(memcmp(a + 2000, layer_net_output(net, 0), sizeof(float) * 2000) == 0);
    layer_net_set_row_offset(net, 0);
    for (int i = 0; i < 4000; i++)
        x[i] = 1.0f + (float)(i % 7);
    /* Backward: the gradient passes through the same mask and scale. */
    float *g = layer_net_output_grad(net, 0);
    EXPECT(layer_net_forward(net, 4, true, 5, 10, &e) == ERR_OK);
    for (int i = 0; i < 4000; i++)
        g[i] = 1.0f;
    EXPECT(layer_net_backward(net, 4, NULL, NULL, &e) == ERR_OK);
    /* Training net, inference forward: identity. */
    EXPECT(layer_net_forward(net, 4, false, 5, 10, &e) == ERR_OK);
    EXPECT(memcmp(x, layer_net_output(net, 0), sizeof(float) * 4000) == 0);
    /* Inference net: the output is the input buffer itself (zero copy). */
    EXPECT(layer_net_output(inf, 0) == layer_net_input(inf, 0));
    EXPECT(layer_net_forward(inf, 4, false, 5, 10, &e) == ERR_OK);
    EXPECT(layer_net_forward(inf, 4, true, 5, 10, &e) == ERR_USAGE);
    EXPECT(layer_net_grads(inf) == NULL && layer_net_output_grad(inf, 0) == NULL);
    free(a), free(b2);
    layer_net_destroy(net);
    layer_net_destroy(inf);
    model_destroy(m);
}

/* Output rows of a partial batch equal the same rows of a full batch (inference and training
 * forward of a conv / BN-inference / dense net), and views share buffers. */
static void test_partial_and_views(void)
{
    tb b;
    tb_init(&b);
    model_ref x = tb_input(&b, "x", 3, TB_DIMS(5, 5, 2));
    int cv = tb_layer(&b, LAYER_CONV2D, "conv");
    tb_cfg(&b, cv)->filters = 3;
    tb_cfg(&b, cv)->kernel_size[0] = 3, tb_cfg(&b, cv)->kernel_size[1] = 3;
    tb_cfg(&b, cv)->activation = ACT_RELU;
    model_ref h = tb_add1(&b, LAYER_MAXPOOL2D, "pool", tb_call(&b, cv, 1, x));
    model_ref f = tb_add1(&b, LAYER_FLATTEN, "flat", tb_add1(&b, LAYER_BATCHNORM, "bn", h));
    int r = tb_layer(&b, LAYER_RESHAPE, "resh");
    tb_cfg(&b, r)->target_rank = 1;
    tb_cfg(&b, r)->target_shape[0] = 3;
    model_ref y = tb_call(&b, r, 1, f);
    int d = tb_layer(&b, LAYER_DENSE, "dense");
    tb_cfg(&b, d)->units = 4;
    model_ref z = tb_call(&b, d, 1, y);
    model_ref outs[2] = {y, z};
    model *m = tb_build(&b, 1, &x, 2, outs);
    layer_net *net = NULL;
    err_info e = {0};
    EXPECT(layer_net_create(m, 7, false, &net, &e) == ERR_OK);
    float *xin = layer_net_input(net, 0);
    fill(xin, 7 * 50, 31);
    EXPECT(layer_net_forward(net, 7, false, 0, 0, &e) == ERR_OK);
    float full[28];
    memcpy(full, layer_net_output(net, 1), sizeof full);
    for (int i = 3 * 50; i < 7 * 50; i++)
        xin[i] = NAN;
    EXPECT(layer_net_forward(net, 3, false, 0, 0, &e) == ERR_OK);
    EXPECT_MSG(memcmp(full, layer_net_output(net, 1), sizeof(float) * 12) == 0,
               "partial batch rows equal the full batch's");
    /* Flatten (channels_last) and Reshape are views of the BatchNormalization output. */
    layer_net_destroy(net);
    EXPECT(layer_net_create(m, 7, true, &net, &e) == ERR_OK);
    const lnode *nodes = net->nodes;
    int bn_t = -1, y_t = net->out_t[0];
    for (int k = 0; k < net->n_nodes; k++)
        if (m->layers[nodes[k].layer].kind == LAYER_BATCHNORM)
            bn_t = nodes[k].out[0];
    EXPECT(bn_t >= 0 && net->tensors[bn_t].val == net->tensors[y_t].val);
    EXPECT(bn_t >= 0 && net->tensors[bn_t].grad == net->tensors[y_t].grad);
    /* The conv right after the input computes no input gradient. */
    for (int k = 0; k < net->n_nodes; k++)
        if (m->layers[nodes[k].layer].kind == LAYER_CONV2D)
            EXPECT(nodes[k].bwd && !nodes[k].in[0].dx);
    EXPECT(layer_net_bytes(net) > 0);
    layer_net_destroy(net);
    model_destroy(m);
}

/* A trainable layer whose output reaches no model output gets zero gradients; ready ranges
 * cover it. */
static void test_dead_branch(void)
{
    tb b;
    tb_init(&b);
    model_ref x = tb_input(&b, "x", 1, TB_DIMS(3));
    int d1 = tb_layer(&b, LAYER_DENSE, "live"), d2 = tb_layer(&b, LAYER_DENSE, "dead");
    tb_cfg(&b, d1)->units = 2;
    tb_cfg(&b, d2)->units = 2;
    model_ref y = tb_call(&b, d1, 1, x);
    (void)tb_call(&b, d2, 1, x);
    model *m = tb_build(&b, 1, &x, 1, &y);
    layer_net *net = NULL;
    err_info e = {0};
    EXPECT(layer_net_create(m, 2, true, &net, &e) == ERR_OK);
    fill(layer_net_input(net, 0), 6, 1);
    float *g = layer_net_grads(net);
    for (size_t i = 0; i < m->n_trainable; i++)
        g[i] = NAN;
    EXPECT(layer_net_forward(net, 2, true, 0, 0, &e) == ERR_OK);
    fill(layer_net_output_grad(net, 0), 4, 2);
    float shadow[16];
    gc_ready rd = {m->n_trainable, 0, 0, shadow, g};
    EXPECT(layer_net_backward(net, 2, gc_ready_cb, &rd, &e) == ERR_OK);
    EXPECT(rd.bad == 0 && rd.next_hi == 0);
    float *dk = g + m->weights[model_weight_find(m, d2, "kernel")].offset;
    int nonzero = 0;
    for (int i = 0; i < 6; i++)
        nonzero += dk[i] != 0.0f;
    EXPECT_MSG(nonzero == 0, "dead branch gradient is zero");
    for (size_t i = 0; i < m->n_trainable; i++)
        EXPECT(isfinite(g[i]));
    layer_net_destroy(net);
    model_destroy(m);
}

/* ---- distributed BatchNormalization, simulated ---- */

typedef struct sim {
    double rec_f[16], rec_b[16]; /* this rank's local sums, recorded */
    const double *add_f, *add_b; /* the other rank's, added in (NULL: none) */
    int calls;
} sim;

static int sim_reduce(void *ctx, double *buf, int64_t n, err_info *e)
{
    (void)e;
    sim *s = ctx;
    s->calls++;
    bool fwd = n % 2 == 1; /* forward sends 2C + 1 values, backward 2C */
    memcpy(fwd ? s->rec_f : s->rec_b, buf, sizeof(double) * (size_t)n);
    const double *add = fwd ? s->add_f : s->add_b;
    for (int64_t i = 0; add != NULL && i < n; i++)
        buf[i] += add[i];
    return ERR_OK;
}

static void test_distributed_bn(void)
{
    tb b;
    tb_init(&b);
    model_ref x = tb_input(&b, "x", 1, TB_DIMS(4));
    int d = tb_layer(&b, LAYER_DENSE, "d");
    tb_cfg(&b, d)->units = 3;
    tb_cfg(&b, d)->activation = ACT_TANH;
    int bn = tb_layer(&b, LAYER_BATCHNORM, "bn");
    int o = tb_layer(&b, LAYER_DENSE, "o");
    tb_cfg(&b, o)->units = 2;
    model_ref y = tb_call(&b, o, 1, tb_call(&b, bn, 1, tb_call(&b, d, 1, x)));
    model *m = tb_build(&b, 1, &x, 1, &y);
    const int64_t NA = 2, NB = 4, N = 6;
    size_t np = m->n_params, nt = m->n_trainable;
    float X[24], W[12];
    fill(X, N * 4, 41);
    fill(W, N * 2, 42);
    float *p0 = malloc(sizeof(float) * np), *p_ref = malloc(sizeof(float) * np);
    float *g_ref = malloc(sizeof(float) * nt), *y_ref = malloc(sizeof(float) * N * 2);
    memcpy(p0, m->params, sizeof(float) * np);
    err_info e = {0};

    /* One process on the whole batch. */
    layer_net *one = NULL;
    EXPECT(layer_net_create(m, N, true, &one, &e) == ERR_OK);
    memcpy(layer_net_input(one, 0), X, sizeof X);
    EXPECT(layer_net_forward(one, N, true, 0, 0, &e) == ERR_OK);
    memcpy(y_ref, layer_net_output(one, 0), sizeof(float) * N * 2);
    memcpy(p_ref, m->params, sizeof(float) * np);
    memcpy(layer_net_output_grad(one, 0), W, sizeof W);
    EXPECT(layer_net_backward(one, N, NULL, NULL, &e) == ERR_OK);
    memcpy(g_ref, layer_net_grads(one), sizeof(float) * nt);
    layer_net_destroy(one);

    /* Two ranks: A has rows 0..1, B rows 2..5. */
    layer_net *A = NULL, *B = NULL;
    sim sa, sb;
    memset(&sa, 0, sizeof sa);
    memset(&sb, 0, sizeof sb);
    EXPECT(layer_net_create(m, NB, true, &A, &e) == ERR_OK);
    EXPECT(layer_net_create(m, NB, true, &B, &e) == ERR_OK);
    layer_net_set_reduce(A, sim_reduce, &sa);
    layer_net_set_reduce(B, sim_reduce, &sb);
    memcpy(layer_net_input(A, 0), X, sizeof(float) * NA * 4);
    memcpy(layer_net_input(B, 0), X + NA * 4, sizeof(float) * NB * 4);
    /* B's local forward sums, then A with them (global statistics). */
    memcpy(m->params, p0, sizeof(float) * np);
    EXPECT(layer_net_forward(B, NB, true, 0, 0, &e) == ERR_OK);
    memcpy(m->params, p0, sizeof(float) * np);
    sa.add_f = sb.rec_f;
    EXPECT(layer_net_forward(A, NA, true, 0, 0, &e) == ERR_OK);
    int bad = count_far(m->params + nt, p_ref + nt, (int64_t)(np - nt), 1e-6, 1e-7);
    EXPECT_MSG(bad == 0, "moving statistics from the global batch");
    EXPECT_MSG(count_far(layer_net_output(A, 0), y_ref, NA * 2, 1e-5, 1e-6) == 0,
               "rank A output with global statistics");
    /* B forward again with A's sums; B backward once to record its local backward sums. */
    memcpy(m->params, p0, sizeof(float) * np);
    sb.add_f = sa.rec_f;
    EXPECT(layer_net_forward(B, NB, true, 0, 0, &e) == ERR_OK);
    EXPECT_MSG(count_far(layer_net_output(B, 0), y_ref + NA * 2, NB * 2, 1e-5, 1e-6) == 0,
               "rank B output with global statistics");
    memcpy(layer_net_output_grad(B, 0), W + NA * 2, sizeof(float) * NB * 2);
    EXPECT(layer_net_backward(B, NB, NULL, NULL, &e) == ERR_OK);
    /* A backward with B's backward sums (recording A's). */
    sa.add_b = sb.rec_b;
    memcpy(layer_net_output_grad(A, 0), W, sizeof(float) * NA * 2);
    EXPECT(layer_net_backward(A, NA, NULL, NULL, &e) == ERR_OK);
    /* B forward + backward with A's sums. */
    memcpy(m->params, p0, sizeof(float) * np);
    EXPECT(layer_net_forward(B, NB, true, 0, 0, &e) == ERR_OK);
    sb.add_b = sa.rec_b;
    memcpy(layer_net_output_grad(B, 0), W + NA * 2, sizeof(float) * NB * 2);
    EXPECT(layer_net_backward(B, NB, NULL, NULL, &e) == ERR_OK);
    float *gsum = malloc(sizeof(float) * nt);
    for (size_t i = 0; i < nt; i++)
        gsum[i] = layer_net_grads(A)[i] + layer_net_grads(B)[i];
    /* Float sums in different orders: 1e-4 relative + 1e-5 absolute. */
    EXPECT_MSG(count_far(gsum, g_ref, (int64_t)nt, 1e-4, 1e-5) == 0,
               "sum of rank gradients equals the one-process gradient");
    /* One call per BatchNormalization forward and one per backward. */
    EXPECT(sa.calls == 2 && sb.calls == 5);
    /* Zero rows on a rank still joins the collectives. */
    int before = sa.calls;
    sa.add_f = NULL;
    sa.add_b = NULL;
    memcpy(m->params, p0, sizeof(float) * np);
    EXPECT(layer_net_forward(A, 0, true, 0, 0, &e) == ERR_OK);
    EXPECT(layer_net_backward(A, 0, NULL, NULL, &e) == ERR_OK);
    EXPECT(sa.calls == before + 2);
    for (size_t i = 0; i < nt; i++)
        EXPECT(layer_net_grads(A)[i] == 0.0f);
    memcpy(m->params, p0, sizeof(float) * np);
    free(gsum), free(p0), free(p_ref), free(g_ref), free(y_ref);
    layer_net_destroy(A);
    layer_net_destroy(B);
    model_destroy(m);
}

static int failing_ready(void *ctx, size_t lo, size_t hi, err_info *e)
{
    (void)ctx;
    return err_set(e, ERR_MPI, "bucket [%zu, %zu) failed", lo, hi);
}

static void test_errors(void)
{
    err_info e = {0};
    /* Unknown extents (variable-length input): refused at planning, naming the layer. */
    {
        tb b;
        tb_init(&b);
        model_ref x = tb_input(&b, "x", 2, TB_DIMS(-1, 3));
        int l = tb_layer(&b, LAYER_DENSE, "my_dense");
        tb_cfg(&b, l)->units = 4;
        model_ref y = tb_call(&b, l, 1, x);
        model *m = tb_build(&b, 1, &x, 1, &y);
        layer_net *net = NULL;
        EXPECT(m != NULL && layer_net_create(m, 2, false, &net, &e) == ERR_SHAPE);
        EXPECT_MSG(strstr(e.msg, "unknown extent") != NULL && net == NULL, "%s", e.msg);
        model_destroy(m);
    }
    /* Embedding ids out of range, NaN, negative: ERR_RANGE naming the layer and the row. */
    {
        tb b;
        tb_init(&b);
        model_ref x = tb_input(&b, "ids", 1, TB_DIMS(3));
        int l = tb_layer(&b, LAYER_EMBEDDING, "words");
        tb_cfg(&b, l)->input_dim = 10;
        tb_cfg(&b, l)->output_dim = 2;
        model_ref y = tb_call(&b, l, 1, x);
        model *m = tb_build(&b, 1, &x, 1, &y);
        layer_net *net = NULL;
        EXPECT(layer_net_create(m, 2, false, &net, &e) == ERR_OK);
        const float bad_ids[] = {10.0f, -1.0f, NAN, 1e30f};
        for (int i = 0; i < 4; i++) {
            float *in = layer_net_input(net, 0);
            in[0] = 1, in[1] = 2, in[2] = 3, in[3] = 9, in[4] = bad_ids[i], in[5] = 0;
            memset(&e, 0, sizeof e);
            EXPECT(layer_net_forward(net, 2, false, 0, 0, &e) == ERR_RANGE);
            EXPECT_MSG(strstr(e.msg, "\"words\"") && strstr(e.msg, "row 1"), "%s", e.msg);
        }
        float *in = layer_net_input(net, 0);
        in[4] = 9.7f; /* truncated to 9, like Keras' cast */
        EXPECT(layer_net_forward(net, 2, false, 0, 0, &e) == ERR_OK);
        EXPECT(memcmp(layer_net_output(net, 0) + 8, wptr(m, "words", "embeddings") + 18,
                      2 * sizeof(float)) == 0);
        EXPECT(layer_net_forward(net, 3, false, 0, 0, &e) == ERR_USAGE);
        EXPECT(layer_net_forward(net, -1, false, 0, 0, &e) == ERR_USAGE);
        layer_net_destroy(net);
        model_destroy(m);
    }
    /* Usage errors and a failing ready hook. */
    {
        model *m = dropout_model(0.5);
        layer_net *net = NULL;
        EXPECT(layer_net_create(m, 0, true, &net, &e) == ERR_USAGE);
        EXPECT(layer_net_create(m, 2, true, &net, &e) == ERR_OK);
        EXPECT(layer_net_backward(net, 2, NULL, NULL, &e) == ERR_USAGE);
        EXPECT(layer_net_forward(net, 2, true, 0, 0, &e) == ERR_OK);
        EXPECT(layer_net_backward(net, 1, NULL, NULL, &e) == ERR_USAGE);
        layer_net_destroy(net);
        model_destroy(m);
    }
    {
        tb b;
        tb_init(&b);
        model_ref x = tb_input(&b, "x", 1, TB_DIMS(3));
        int l = tb_layer(&b, LAYER_DENSE, "d");
        tb_cfg(&b, l)->units = 2;
        model_ref y = tb_call(&b, l, 1, x);
        model *m = tb_build(&b, 1, &x, 1, &y);
        layer_net *net = NULL;
        EXPECT(layer_net_create(m, 2, true, &net, &e) == ERR_OK);
        EXPECT(layer_net_forward(net, 2, true, 0, 0, &e) == ERR_OK);
        memset(layer_net_output_grad(net, 0), 0, 4 * sizeof(float));
        memset(&e, 0, sizeof e);
        EXPECT(layer_net_backward(net, 2, failing_ready, NULL, &e) == ERR_MPI);
        EXPECT(strstr(e.msg, "bucket") != NULL);
        layer_net_destroy(net);
        model_destroy(m);
    }
}

/* Buffer reuse: an inference net (values freed after their last reader) computes exactly what
 * a training net's inference forward computes (no value reuse there), and a deep chain's
 * training net reuses gradient buffers. */
static void test_reuse(void)
{
    tb b;
    tb_init(&b);
    model_ref x = tb_input(&b, "x", 3, TB_DIMS(6, 6, 2));
    int cv = tb_layer(&b, LAYER_CONV2D, "conv");
    tb_cfg(&b, cv)->filters = 4;
    tb_cfg(&b, cv)->kernel_size[0] = 3, tb_cfg(&b, cv)->kernel_size[1] = 3;
    tb_cfg(&b, cv)->padding = PAD_SAME;
    model_ref c = tb_call(&b, cv, 1, x);
    model_ref p = tb_add1(&b, LAYER_MAXPOOL2D, "pool", c);
    model_ref a1 = tb_add1(&b, LAYER_BATCHNORM, "bn", p);
    int d = tb_layer(&b, LAYER_DENSE, "d");
    tb_cfg(&b, d)->units = 4;
    tb_cfg(&b, d)->activation = ACT_GELU;
    model_ref a2 = tb_call(&b, d, 1, p);
    int cat = tb_layer(&b, LAYER_CONCAT, "cat");
    model_ref j = tb_call(&b, cat, 2, a1, a2);
    model_ref g = tb_add1(&b, LAYER_GAP2D, "gap", j);
    int h = tb_layer(&b, LAYER_DENSE, "head");
    tb_cfg(&b, h)->units = 3;
    model_ref y = tb_call(&b, h, 1, tb_add1(&b, LAYER_ACTIVATION, "act", g));
    model_ref z = tb_call(&b, d, 1, tb_add1(&b, LAYER_ADD, "add2", c)); /* a second call of d */
    model_ref outs[2] = {y, z};
    model *m = tb_build(&b, 1, &x, 2, outs);
    layer_net *inf = NULL, *tr = NULL;
    err_info e = {0};
    EXPECT(layer_net_create(m, 3, false, &inf, &e) == ERR_OK);
    EXPECT(layer_net_create(m, 3, true, &tr, &e) == ERR_OK);
    fill(layer_net_input(inf, 0), 3 * 72, 51);
    memcpy(layer_net_input(tr, 0), layer_net_input(inf, 0), sizeof(float) * 3 * 72);
    EXPECT(layer_net_forward(inf, 3, false, 0, 0, &e) == ERR_OK);
    EXPECT(layer_net_forward(tr, 3, false, 0, 0, &e) == ERR_OK);
    EXPECT(memcmp(layer_net_output(inf, 0), layer_net_output(tr, 0), sizeof(float) * 9) == 0);
    EXPECT(memcmp(layer_net_output(inf, 1), layer_net_output(tr, 1), sizeof(float) * 3 * 144) == 0);
    EXPECT(layer_net_bytes(inf) < layer_net_bytes(tr));
    layer_net_destroy(inf);
    layer_net_destroy(tr);
    model_destroy(m);

    /* Ten Dense(64) layers, batch 16: 11 value buffers of 4 KiB; gradients need at most 3
     * buffers at a time (output, the one being written, and the one being read); one shared
     * scratch for the dx products (kern_dense_workspace). */
    tb_init(&b);
    x = tb_input(&b, "x", 1, TB_DIMS(64));
    model_ref t = x;
    for (int i = 0; i < 10; i++) {
        char name[16];
        snprintf(name, sizeof name, "d%d", i);
        int l = tb_layer(&b, LAYER_DENSE, name);
        tb_cfg(&b, l)->units = 64;
        t = tb_call(&b, l, 1, t);
    }
    m = tb_build(&b, 1, &x, 1, &t);
    EXPECT(layer_net_create(m, 16, true, &tr, &e) == ERR_OK);
    size_t buf = 16 * 64 * sizeof(float);
    size_t scratch = kern_dense_workspace(64, 64) * sizeof(float);
    EXPECT_MSG(layer_net_bytes(tr) <=
                   11 * buf + 3 * buf + m->n_trainable * sizeof(float) + scratch + 4096,
               "training net of a 10-layer chain uses %zu bytes", layer_net_bytes(tr));
    layer_net_destroy(tr);
    EXPECT(layer_net_create(m, 16, false, &inf, &e) == ERR_OK);
    EXPECT_MSG(layer_net_bytes(inf) <= 4 * buf + 4096, "inference net uses %zu bytes",
               layer_net_bytes(inf));
    layer_net_destroy(inf);
    model_destroy(m);
}

static int count_zero_reduce(void *ctx, double *buf, int64_t n, err_info *e)
{
    (void)e;
    int *calls = ctx;
    bool zero = true;
    for (int64_t i = 0; i < n; i++)
        zero = zero && buf[i] == 0.0;
    calls[0]++;
    calls[1] += zero;
    return ERR_OK;
}

/* A rank that fails in forward (a bad Embedding id) still makes its BatchNormalization
 * collective calls, with zeros, so the other ranks do not hang. */
static void test_failed_rank_collectives(void)
{
    tb b;
    tb_init(&b);
    model_ref x = tb_input(&b, "ids", 1, TB_DIMS(3));
    int l = tb_layer(&b, LAYER_EMBEDDING, "emb");
    tb_cfg(&b, l)->input_dim = 4;
    tb_cfg(&b, l)->output_dim = 2;
    model_ref h = tb_add1(&b, LAYER_FLATTEN, "flat", tb_call(&b, l, 1, x));
    model_ref y = tb_add1(&b, LAYER_BATCHNORM, "bn", h);
    model *m = tb_build(&b, 1, &x, 1, &y);
    layer_net *net = NULL;
    err_info e = {0};
    EXPECT(layer_net_create(m, 2, true, &net, &e) == ERR_OK);
    int calls[2] = {0, 0};
    layer_net_set_reduce(net, count_zero_reduce, calls);
    float *in = layer_net_input(net, 0);
    for (int i = 0; i < 6; i++)
        in[i] = (float)(i % 4);
    EXPECT(layer_net_forward(net, 2, true, 0, 0, &e) == ERR_OK);
    EXPECT(calls[0] == 1 && calls[1] == 0);
    in[2] = 4.0f;
    EXPECT(layer_net_forward(net, 2, true, 0, 0, &e) == ERR_RANGE);
    EXPECT_MSG(calls[0] == 2 && calls[1] == 1, "calls %d, zero calls %d", calls[0], calls[1]);
    EXPECT(strstr(e.msg, "\"emb\"") != NULL);
    layer_net_destroy(net);
    model_destroy(m);
}

int main(void)
{
    test_dispatch();
    test_dense_forward();
    test_conv_forward();
    test_pool_flatten_forward();
    test_batchnorm_values();
    test_dropout();
    test_partial_and_views();
    test_dead_branch();
    test_distributed_bn();
    test_errors();
    test_reuse();
    test_failed_rank_collectives();
    return test_finish();
}
