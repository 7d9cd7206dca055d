/* Conversions and optimizer layouts the shared corpus does not exercise, on files handcrafted
 * here with the plain HDF5 API: Keras 1 Theano Convolution2D (dim_ordering "th": transpose and
 * kernel flip), Keras 1 Convolution1D in both legacy layouts, Keras 1 GRU (9 tensors) with
 * RMSprop accumulators in Keras 1's sorted-by-name order, and the optimizer_weights layouts of
 * standalone Keras 2.2 (Adam with dummy vhats, SGD moments), tf.keras >= 2.11 (interleaved),
 * and Keras 3 (iteration, learning_rate, interleaved; Nadam u_product before or after the
 * slots). Expected values are computed here by plain index arithmetic. */
#include <math.h>

#include "formats/keras_h5.h"
#include "formats/keras_json.h"
#include "test_kh5_util.h"

static char path[256];

/* ---- writing helpers (plain HDF5) ---- */

static void attr_vlen(hid_t obj, const char *name, const char *v)
{
    if (H5Aexists(obj, name) > 0)
        H5Adelete(obj, name);
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    hid_t s = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, t, s, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, t, &v);
    H5Aclose(a);
    H5Sclose(s);
    H5Tclose(t);
}

/* numpy S<n> array, NULLPAD, as Keras 1/2 wrote lists. */
static void attr_fixed_list(hid_t obj, const char *name, int n, const char *const *v)
{
    if (H5Aexists(obj, name) > 0)
        H5Adelete(obj, name);
    size_t sz = 1;
    for (int i = 0; i < n; i++)
        if (strlen(v[i]) > sz)
            sz = strlen(v[i]);
    char *buf = calloc((size_t)n, sz);
    for (int i = 0; i < n; i++)
        memcpy(buf + (size_t)i * sz, v[i], strlen(v[i]));
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, sz);
    H5Tset_strpad(t, H5T_STR_NULLPAD);
    hsize_t d = (hsize_t)n;
    hid_t s = H5Screate_simple(1, &d, NULL);
    hid_t a = H5Acreate2(obj, name, t, s, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, t, buf);
    H5Aclose(a);
    H5Sclose(s);
    H5Tclose(t);
    free(buf);
}

static void dset(hid_t loc, const char *name, int rank, const hsize_t *dims, const float *v)
{
    hid_t s = rank == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(rank, dims, NULL);
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t d = H5Dcreate2(loc, name, H5T_IEEE_F32LE, s, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
    H5Dclose(d);
    H5Pclose(lcpl);
    H5Sclose(s);
}

static void dset_i64(hid_t loc, const char *name, long long v)
{
    hid_t s = H5Screate(H5S_SCALAR);
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t d = H5Dcreate2(loc, name, H5T_STD_I64LE, s, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(d, H5T_NATIVE_LLONG, H5S_ALL, H5S_ALL, H5P_DEFAULT, &v);
    H5Dclose(d);
    H5Pclose(lcpl);
    H5Sclose(s);
}

static float *seq(size_t n, float base)
{
    float *v = malloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++)
        v[i] = base + (float)i;
    return v;
}

static model *read_ok(const char *what)
{
    model *m = NULL;
    err_info e = {0};
    int rc = kh5_read(path, &m, &e);
    EXPECT_MSG(rc == ERR_OK, "%s: %s", what, e.msg);
    return m;
}

static const float *weight(const model *m, const char *layer, const char *w, int slot)
{
    int li = model_layer_find(m, layer);
    int wi = li < 0 ? -1 : model_weight_find(m, li, w);
    EXPECT_MSG(wi >= 0, "%s/%s", layer, w);
    if (wi < 0)
        return NULL;
    if (slot < 0)
        return m->params + m->weights[wi].offset;
    EXPECT_MSG(slot < m->opt.n_slots, "%s/%s: slot %d of %d", layer, w, slot, m->opt.n_slots);
    if (slot >= m->opt.n_slots)
        return NULL;
    return m->opt.slots + (size_t)slot * m->n_trainable + m->weights[wi].offset;
}

/* ---- Keras 1, Theano: Convolution2D with dim_ordering "th" ---- */

static void keras1_theano_conv2d(void)
{
    const char *cfg =
        "{\"class_name\": \"Sequential\", \"config\": ["
        "{\"class_name\": \"Convolution2D\", \"config\": {\"name\": \"convolution2d_1\", "
        "\"nb_filter\": 2, \"nb_row\": 3, \"nb_col\": 2, \"dim_ordering\": \"th\", "
        "\"border_mode\": \"valid\", \"subsample\": [1, 1], \"activation\": \"linear\", "
        "\"bias\": true, \"init\": \"glorot_uniform\", \"batch_input_shape\": [null, 1, 5, 4], "
        "\"input_dtype\": \"float32\", \"trainable\": true}}, "
        "{\"class_name\": \"Flatten\", \"config\": {\"name\": \"flatten_1\", \"trainable\": "
        "true}}, "
        "{\"class_name\": \"Dense\", \"config\": {\"name\": \"dense_1\", \"output_dim\": 2, "
        "\"init\": \"glorot_uniform\", \"activation\": \"linear\", \"bias\": true, "
        "\"input_dim\": 18, \"trainable\": true}}]}";
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    attr_vlen(f, "keras_version", "1.2.2");
    attr_vlen(f, "model_config", cfg);
    hid_t g = H5Gcreate2(f, "model_weights", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    const char *layers[3] = {"convolution2d_1", "flatten_1", "dense_1"};
    attr_fixed_list(g, "layer_names", 3, layers);
    /* Theano names: no ":0" (and no backend attribute) */
    hid_t c = H5Gcreate2(g, "convolution2d_1", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    const char *cw[2] = {"convolution2d_1_W", "convolution2d_1_b"};
    attr_fixed_list(c, "weight_names", 2, cw);
    hsize_t wd[4] = {2, 1, 3, 2}, bd[1] = {2};
    float *W = seq(12, 1), *b = seq(2, 100);
    dset(c, "convolution2d_1_W", 4, wd, W);
    dset(c, "convolution2d_1_b", 1, bd, b);
    H5Gclose(c);
    hid_t fl = H5Gcreate2(g, "flatten_1", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    attr_fixed_list(fl, "weight_names", 0, NULL);
    H5Gclose(fl);
    hid_t d = H5Gcreate2(g, "dense_1", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    const char *dw[2] = {"dense_1_W", "dense_1_b"};
    attr_fixed_list(d, "weight_names", 2, dw);
    hsize_t dwd[2] = {18, 2}, dbd[1] = {2};
    float *DW = seq(36, 200), *DB = seq(2, 300);
    dset(d, "dense_1_W", 2, dwd, DW);
    dset(d, "dense_1_b", 1, dbd, DB);
    H5Gclose(d);
    H5Gclose(g);
    H5Fclose(f);

    model *m = read_ok("keras 1 theano conv2d");
    if (m != NULL) {
        const float *k = weight(m, "convolution2d_1", "kernel", -1);
        int li = model_layer_find(m, "convolution2d_1");
        EXPECT(li >= 0 && m->layers[li].cfg.channels_first);
        /* (out, in, kh, kw) -> (kh, kw, in, out), then every spatial axis reversed */
        int bad = 0;
        for (int kh = 0; kh < 3; kh++)
            for (int kw = 0; kw < 2; kw++)
                for (int o = 0; o < 2; o++)
                    bad += k != NULL &&
                           k[(kh * 2 + kw) * 2 + o] != W[(o * 3 + (2 - kh)) * 2 + (1 - kw)];
        EXPECT_MSG(k != NULL && bad == 0, "theano conv kernel: %d wrong", bad);
        const float *dk = weight(m, "dense_1", "kernel", -1);
        EXPECT(dk != NULL && memcmp(dk, DW, 36 * sizeof *dk) == 0);
    }
    model_destroy(m);
    free(W);
    free(b);
    free(DW);
    free(DB);
}

/* ---- Keras 1, TensorFlow: Convolution1D + GRU with RMSprop state ---- */

static const char *GRU_NAMES[9] = {"gru_1_W_z:0", "gru_1_U_z:0", "gru_1_b_z:0",
                                   "gru_1_W_r:0", "gru_1_U_r:0", "gru_1_b_r:0",
                                   "gru_1_W_h:0", "gru_1_U_h:0", "gru_1_b_h:0"};

static void keras1_conv1d_gru(bool legacy_conv)
{
    const char *cfg =
        "{\"class_name\": \"Sequential\", \"config\": ["
        "{\"class_name\": \"Convolution1D\", \"config\": {\"name\": \"convolution1d_1\", "
        "\"nb_filter\": 3, \"filter_length\": 2, \"border_mode\": \"valid\", "
        "\"subsample_length\": 1, \"activation\": \"linear\", \"bias\": true, "
        "\"init\": \"glorot_uniform\", \"batch_input_shape\": [null, 6, 4], "
        "\"input_dtype\": \"float32\", \"trainable\": true}}, "
        "{\"class_name\": \"GRU\", \"config\": {\"name\": \"gru_1\", \"output_dim\": 2, "
        "\"activation\": \"tanh\", \"inner_activation\": \"hard_sigmoid\", "
        "\"return_sequences\": false, \"consume_less\": \"cpu\", \"init\": \"glorot_uniform\", "
        "\"inner_init\": \"orthogonal\", \"trainable\": true, \"input_dim\": 3, "
        "\"go_backwards\": false, \"stateful\": false, \"unroll\": false, "
        "\"W_regularizer\": null, \"U_regularizer\": null, \"b_regularizer\": null, "
        "\"dropout_W\": 0.0, \"dropout_U\": 0.0}}]}";
    const char *train = "{\"optimizer_config\": {\"class_name\": \"RMSprop\", \"config\": "
                        "{\"lr\": 0.001, \"rho\": 0.9, \"epsilon\": 1e-08, \"decay\": 0.0}}, "
                        "\"loss\": \"mse\", \"metrics\": [], \"sample_weight_mode\": null, "
                        "\"loss_weights\": null}";
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    attr_vlen(f, "keras_version", "1.2.2");
    attr_vlen(f, "model_config", cfg);
    attr_vlen(f, "training_config", train);
    hid_t g = H5Gcreate2(f, "model_weights", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    const char *layers[2] = {"convolution1d_1", "gru_1"};
    attr_fixed_list(g, "layer_names", 2, layers);
    hid_t c = H5Gcreate2(g, "convolution1d_1", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    const char *cw[2] = {"convolution1d_1_W:0", "convolution1d_1_b:0"};
    attr_fixed_list(c, "weight_names", 2, cw);
    /* Keras 1.2 TensorFlow: (k, 1, in, filters); older Keras 1: (filters, in, k, 1) */
    hsize_t wd_new[4] = {2, 1, 4, 3}, wd_old[4] = {3, 4, 2, 1}, bd[1] = {3};
    float *W = seq(24, 1), *b = seq(3, 50);
    dset(c, cw[0], 4, legacy_conv ? wd_old : wd_new, W);
    dset(c, cw[1], 1, bd, b);
    H5Gclose(c);
    hid_t r = H5Gcreate2(g, "gru_1", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    attr_fixed_list(r, "weight_names", 9, GRU_NAMES);
    float *G[9];
    for (int i = 0; i < 9; i++) {
        int kind = i % 3; /* W (3, 2), U (2, 2), b (2,) */
        hsize_t dims[2] = {kind == 0 ? 3u : 2u, 2};
        size_t n = kind == 2 ? 2 : (size_t)dims[0] * 2;
        G[i] = seq(n, 1000.0f * (float)(i + 1));
        dset(r, GRU_NAMES[i], kind == 2 ? 1 : 2, kind == 2 ? dims + 1 : dims, G[i]);
    }
    H5Gclose(r);
    H5Gclose(g);
    /* RMSprop accumulators over the trainable weights sorted by name (Keras 1 training.py). */
    const char *sorted[11] = {"convolution1d_1_W:0", "convolution1d_1_b:0", "gru_1_U_h:0",
                              "gru_1_U_r:0",         "gru_1_U_z:0",         "gru_1_W_h:0",
                              "gru_1_W_r:0",         "gru_1_W_z:0",         "gru_1_b_h:0",
                              "gru_1_b_r:0",         "gru_1_b_z:0"};
    hid_t o = H5Gcreate2(f, "optimizer_weights", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    const char *onames[11];
    char obuf[11][32];
    float *acc[11];
    for (int i = 0; i < 11; i++) {
        snprintf(obuf[i], sizeof obuf[i], "Variable_%d:0", i + 4);
        onames[i] = obuf[i];
        hsize_t dims[4];
        int rank;
        size_t n;
        if (i == 0) {
            rank = 4;
            memcpy(dims, legacy_conv ? wd_old : wd_new, sizeof dims);
            n = 24;
        } else if (i == 1) {
            rank = 1;
            dims[0] = 3;
            n = 3;
        } else {
            const char *nm = sorted[i] + 6; /* "U_h:0" */
            rank = nm[0] == 'b' ? 1 : 2;
            dims[0] = nm[0] == 'W' ? 3 : 2;
            dims[1] = 2;
            if (rank == 1)
                dims[0] = 2;
            n = rank == 1 ? 2 : (size_t)dims[0] * 2;
        }
        acc[i] = seq(n, -100.0f * (float)(i + 1));
        dset(o, onames[i], rank, dims, acc[i]);
    }
    attr_fixed_list(o, "weight_names", 11, onames);
    H5Gclose(o);
    H5Fclose(f);

    model *m = read_ok(legacy_conv ? "keras 1 legacy conv1d + gru" : "keras 1 conv1d + gru");
    if (m != NULL) {
        /* Conv1D kernel (k, in, filters) */
        const float *k = weight(m, "convolution1d_1", "kernel", -1);
        const float *ks = weight(m, "convolution1d_1", "kernel", 0);
        int bad = 0, bad_s = 0;
        for (int t = 0; t < 2; t++)
            for (int i = 0; i < 4; i++)
                for (int fo = 0; fo < 3; fo++) {
                    int src = legacy_conv ? (fo * 4 + i) * 2 + t : (t * 4 + i) * 3 + fo;
                    bad += k != NULL && k[(t * 4 + i) * 3 + fo] != W[src];
                    bad_s += ks != NULL && ks[(t * 4 + i) * 3 + fo] != acc[0][src];
                }
        EXPECT_MSG(k != NULL && ks != NULL && bad == 0 && bad_s == 0,
                   "conv1d (legacy %d): %d weights, %d slots wrong", legacy_conv, bad, bad_s);
        /* GRU kernel (3, 6) = [W_z | W_r | W_h]; its slot = [acc(W_z) | acc(W_r) | acc(W_h)]:
         * W_z, W_r, W_h are sorted positions 7, 6, 5. */
        const float *gk = weight(m, "gru_1", "kernel", -1);
        const float *gks = weight(m, "gru_1", "kernel", 0);
        const float *gb = weight(m, "gru_1", "bias", -1);
        const float *gus = weight(m, "gru_1", "recurrent_kernel", 0);
        static const int wsrc[3] = {0, 3, 6}, wacc[3] = {7, 6, 5}, uacc[3] = {4, 3, 2};
        bad = bad_s = 0;
        for (int row = 0; row < 3; row++)
            for (int gi = 0; gi < 3; gi++)
                for (int u = 0; u < 2; u++) {
                    bad += gk != NULL && gk[row * 6 + gi * 2 + u] != G[wsrc[gi]][row * 2 + u];
                    bad_s += gks != NULL && gks[row * 6 + gi * 2 + u] != acc[wacc[gi]][row * 2 + u];
                    if (row < 2)
                        bad_s +=
                            gus != NULL && gus[row * 6 + gi * 2 + u] != acc[uacc[gi]][row * 2 + u];
                }
        for (int gi = 0; gi < 3; gi++)
            for (int u = 0; u < 2; u++)
                bad += gb != NULL && gb[gi * 2 + u] != G[wsrc[gi] + 2][u];
        EXPECT_MSG(gk != NULL && gb != NULL && gks != NULL && bad == 0 && bad_s == 0,
                   "gru: %d weights, %d slots wrong", bad, bad_s);
        EXPECT(m->opt.iterations == 0 && m->train.optim.kind == OPTIM_RMSPROP);
    }
    model_destroy(m);
    for (int i = 0; i < 9; i++)
        free(G[i]);
    for (int i = 0; i < 11; i++)
        free(acc[i]);
    free(W);
    free(b);
}

/* ---- optimizer layouts of other generations, on a cornu-written Dense model ---- */

/* Input(3) -> Dense "dense" (2) -> Dense "dense_1" (1): trainable weights in order
 * dense/kernel (3,2), dense/bias (2,), dense_1/kernel (2,1), dense_1/bias (1,). */
static const hsize_t WD[4][2] = {{3, 2}, {2, 0}, {2, 1}, {1, 0}};
static const int WR[4] = {2, 1, 2, 1};
static const char *WN[4] = {"dense/kernel", "dense/bias", "dense_1/kernel", "dense_1/bias"};
static const size_t WC[4] = {6, 2, 2, 1};

static model *small(optim_kind kind, bool amsgrad)
{
    int64_t in[1] = {3};
    model *m = kh5t_seq("small", 1, in, DTYPE_F32);
    layer_config c = kh5t_cfg(LAYER_DENSE);
    c.units = 2;
    kh5t_add(m, LAYER_DENSE, "dense", &c);
    c.units = 1;
    kh5t_add(m, LAYER_DENSE, "dense_1", &c);
    if (kh5t_finish(m, 3) != 0)
        return NULL;
    err_info e = {0};
    model_loss l;
    memset(&l, 0, sizeof l);
    l.kind = LOSS_MSE;
    model_train_set_losses(m, 1, &l, NULL, &e);
    m->train.optim = model_optim_config_default(kind);
    m->train.optim.amsgrad = amsgrad;
    return m;
}

/* Rewrites optimizer_weights of the file at path: entries[i] named names[i]; slot tensors are
 * value (100 * (kind + 1) + 10 * weight + element); scalars given. */
typedef struct lay {
    const char *name;
    int kind;   /* slot kind, or -1 for a scalar */
    int weight; /* 0..3; -2 dummy (1,) vhat */
    double scalar;
    bool int64;
} lay;

static float slot_value(int kind, int w, size_t i)
{
    return (float)(100 * (kind + 1) + 10 * w) + (float)i * 0.5f;
}

static void rewrite_opt(const char *version, const char *train_json, int n, const lay *l)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    if (version != NULL)
        attr_vlen(f, "keras_version", version);
    if (train_json != NULL)
        attr_vlen(f, "training_config", train_json);
    if (H5Lexists(f, "optimizer_weights", H5P_DEFAULT) > 0)
        H5Ldelete(f, "optimizer_weights", H5P_DEFAULT);
    hid_t o = H5Gcreate2(f, "optimizer_weights", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    const char **names = calloc((size_t)n, sizeof *names);
    for (int i = 0; i < n; i++) {
        names[i] = l[i].name;
        if (l[i].kind < 0) {
            if (l[i].int64) {
                dset_i64(o, l[i].name, (long long)l[i].scalar);
            } else {
                float v = (float)l[i].scalar;
                dset(o, l[i].name, 0, NULL, &v);
            }
        } else if (l[i].weight == -2) {
            hsize_t one[1] = {1};
            float z = 0;
            dset(o, l[i].name, 1, one, &z);
        } else {
            int w = l[i].weight;
            float v[6];
            for (size_t k = 0; k < WC[w]; k++)
                v[k] = slot_value(l[i].kind, w, k);
            dset(o, l[i].name, WR[w], WD[w], v);
        }
    }
    attr_fixed_list(o, "weight_names", n, names);
    free(names);
    H5Gclose(o);
    H5Fclose(f);
}

static void expect_slots(const char *what, const model *m, int kinds)
{
    EXPECT_MSG(m->opt.n_slots == kinds, "%s: %d slots, expected %d", what, m->opt.n_slots, kinds);
    if (m->opt.n_slots != kinds)
        return;
    int bad = 0;
    for (int k = 0; k < kinds; k++)
        for (int w = 0; w < 4; w++) {
            char layer[16], short_name[16];
            snprintf(layer, sizeof layer, "%.*s", (int)(strchr(WN[w], '/') - WN[w]), WN[w]);
            snprintf(short_name, sizeof short_name, "%s", strchr(WN[w], '/') + 1);
            const float *s = weight(m, layer, short_name, k);
            for (size_t i = 0; s != NULL && i < WC[w]; i++)
                bad += s[i] != slot_value(k, w, i);
        }
    EXPECT_MSG(bad == 0, "%s: %d slot values misplaced", what, bad);
}

static void layouts(void)
{
    err_info e = {0};
    /* Standalone Keras 2.2: [iterations] + ms + vs + vhats (shape (1,) dummies). */
    {
        model *a = small(OPTIM_ADAM, false);
        EXPECT(a != NULL && kh5_write(path, a, true, &e) == ERR_OK);
        lay l[13] = {{"Adam/iterations:0", -1, 0, 77, true}};
        char nb[12][48];
        for (int k = 0; k < 3; k++)
            for (int w = 0; w < 4; w++) {
                snprintf(nb[k * 4 + w], sizeof nb[0], "training/Adam/Variable_%d:0", k * 4 + w);
                l[1 + k * 4 + w] = (lay){nb[k * 4 + w], k, k == 2 ? -2 : w, 0, false};
            }
        rewrite_opt("2.2.4", NULL, 13, l);
        model *m = read_ok("keras 2.2 adam");
        if (m != NULL) {
            expect_slots("keras 2.2 adam", m, 2);
            EXPECT(m->opt.iterations == 77);
        }
        model_destroy(m);
        model_destroy(a);
    }
    /* Standalone Keras 2.2 SGD with momentum 0: moments are kept by Keras, dropped by cornu. */
    {
        model *a = small(OPTIM_SGD, false);
        EXPECT(a != NULL && kh5_write(path, a, true, &e) == ERR_OK);
        lay l[5] = {{"SGD/iterations:0", -1, 0, 12, true}};
        char nb[4][48];
        for (int w = 0; w < 4; w++) {
            snprintf(nb[w], sizeof nb[0], "training/SGD/Variable_%d:0", w);
            l[1 + w] = (lay){nb[w], 0, w, 0, false};
        }
        rewrite_opt("2.2.4", NULL, 5, l);
        model *m = read_ok("keras 2.2 sgd");
        if (m != NULL)
            EXPECT(m->opt.n_slots == 0 && m->opt.iterations == 12);
        model_destroy(m);
        model_destroy(a);
    }
    /* tf.keras >= 2.11 new optimizer: iteration, then m/v interleaved, then vhats. */
    {
        model *a = small(OPTIM_ADAM, true);
        EXPECT(a != NULL && kh5_write(path, a, true, &e) == ERR_OK);
        const char *train = "{\"loss\": \"mse\", \"metrics\": [], \"optimizer_config\": "
                            "{\"class_name\": \"Custom>Adam\", \"config\": {\"name\": \"Adam\", "
                            "\"learning_rate\": 0.001, \"beta_1\": 0.9, \"beta_2\": 0.999, "
                            "\"epsilon\": 1e-07, \"amsgrad\": true, \"is_legacy_optimizer\": "
                            "false}}}";
        lay l[13] = {{"iteration:0", -1, 0, 31, true}};
        char nb[12][48];
        int at = 1;
        for (int w = 0; w < 4; w++)
            for (int k = 0; k < 2; k++) {
                snprintf(nb[at - 1], sizeof nb[0], "Adam/%c/%s:0", k ? 'v' : 'm', WN[w]);
                l[at] = (lay){nb[at - 1], k, w, 0, false};
                at++;
            }
        for (int w = 0; w < 4; w++) {
            snprintf(nb[at - 1], sizeof nb[0], "Adam/vhat/%s:0", WN[w]);
            l[at] = (lay){nb[at - 1], 2, w, 0, false};
            at++;
        }
        rewrite_opt("2.12.0", train, 13, l);
        model *m = read_ok("tf.keras new adam");
        if (m != NULL) {
            expect_slots("tf.keras new adam (amsgrad)", m, 3);
            EXPECT(m->opt.iterations == 31);
        }
        model_destroy(m);
        model_destroy(a);
    }
    /* Keras 3: iteration, learning_rate, interleaved momentum/velocity. */
    for (int nadam = 0; nadam < 3; nadam++) {
        model *a = small(nadam ? OPTIM_NADAM : OPTIM_ADAM, false);
        EXPECT(a != NULL && kh5_write(path, a, true, &e) == ERR_OK);
        lay l[12];
        char nb[12][64];
        int at = 0;
        l[at++] = (lay){"adam/iteration", -1, 0, 9, true};
        l[at++] = (lay){"adam/learning_rate", -1, 0, 0.25, false};
        if (nadam == 1) /* Keras 3.0 created u_product before the slots */
            l[at++] = (lay){"adam/variable", -1, 0, 0.75, false};
        for (int w = 0; w < 4; w++)
            for (int k = 0; k < 2; k++) {
                snprintf(nb[at], sizeof nb[0], "adam/%s_%s", WN[w], k ? "velocity" : "momentum");
                l[at] = (lay){nb[at], k, w, 0, false};
                at++;
            }
        if (nadam == 2) /* later Keras 3 creates it after */
            l[at++] = (lay){"adam/variable", -1, 0, 0.75, false};
        rewrite_opt("3.5.0", NULL, at, l);
        model *m = read_ok("keras 3");
        if (m != NULL) {
            expect_slots(nadam ? "keras 3 nadam" : "keras 3 adam", m, 2);
            EXPECT(m->opt.iterations == 9);
            EXPECT_MSG(m->train.optim.lr.initial == 0.25, "learning_rate %g",
                       m->train.optim.lr.initial);
            if (nadam)
                EXPECT_MSG(m->opt.scalars[0] == 0.75, "u_product %g", m->opt.scalars[0]);
        }
        model_destroy(m);
        model_destroy(a);
    }
    /* A layout that fits no generation: a slot count the optimizer cannot have. */
    {
        model *a = small(OPTIM_ADAGRAD, false);
        EXPECT(a != NULL && kh5_write(path, a, true, &e) == ERR_OK);
        lay l[9] = {{"Adagrad/iter:0", -1, 0, 1, true}};
        char nb[8][48];
        for (int k = 0; k < 2; k++)
            for (int w = 0; w < 4; w++) {
                snprintf(nb[k * 4 + w], sizeof nb[0], "Adagrad/%s/x%d:0", WN[w], k);
                l[1 + k * 4 + w] = (lay){nb[k * 4 + w], k, w, 0, false};
            }
        rewrite_opt(NULL, NULL, 9, l);
        model *m = NULL;
        int rc = kh5_read(path, &m, &e);
        EXPECT_MSG(rc == ERR_SHAPE && strstr(e.msg, "2 slot tensors per trainable weight") &&
                       strstr(e.msg, "Adagrad"),
                   "%s", e.msg);
        model_destroy(m);
        model_destroy(a);
    }
}

int main(void)
{
    kh5t_tmp(path, sizeof path, "convert");
    keras1_theano_conv2d();
    keras1_conv1d_gru(false);
    keras1_conv1d_gru(true);
    layouts();
    remove(path);
    return test_finish();
}
