/* Write -> read round trips of the Keras .h5 writer and reader: weights, config and optimizer
 * state must come back exactly, for every optimizer cornu has, for full and weights-only files
 * in both directions, for models large enough that Keras splits the name lists into chunked
 * attributes, and for every file of the shared corpus (read -> write -> read). Also checks the
 * HDF5 types of what is written against what Keras writes. */
#include <math.h>
#include <time.h>

#include "formats/keras_h5.h"
#include "formats/keras_json.h"
#include "test_kh5_util.h"

/* ---- model builders ---- */

static model *mlp(void)
{
    int64_t in[1] = {8};
    model *m = kh5t_seq("mlp", 1, in, DTYPE_F32);
    layer_config c = kh5t_cfg(LAYER_DENSE);
    c.units = 16;
    c.activation = ACT_RELU;
    kh5t_add(m, LAYER_DENSE, "dense", &c);
    kh5t_add(m, LAYER_BATCHNORM, "batch_normalization", NULL);
    layer_config d = kh5t_cfg(LAYER_DROPOUT);
    d.rate = 0.25;
    kh5t_add(m, LAYER_DROPOUT, "dropout", &d);
    c.units = 3;
    c.activation = ACT_SOFTMAX;
    kh5t_add(m, LAYER_DENSE, "dense_1", &c);
    return kh5t_finish(m, 1) == 0 ? m : NULL;
}

static model *cnn(void)
{
    int64_t in[3] = {8, 8, 2};
    model *m = kh5t_seq("cnn", 3, in, DTYPE_F32);
    layer_config c = kh5t_cfg(LAYER_CONV2D);
    c.filters = 4;
    c.kernel_size[0] = c.kernel_size[1] = 3;
    c.activation = ACT_RELU;
    kh5t_add(m, LAYER_CONV2D, "conv2d", &c);
    kh5t_add(m, LAYER_MAXPOOL2D, "max_pooling2d", NULL);
    kh5t_add(m, LAYER_FLATTEN, "flatten", NULL);
    layer_config d = kh5t_cfg(LAYER_DENSE);
    d.units = 2;
    kh5t_add(m, LAYER_DENSE, "dense", &d);
    return kh5t_finish(m, 2) == 0 ? m : NULL;
}

static model *rnn(void)
{
    int64_t in[2] = {5, 3};
    model *m = kh5t_seq("rnn", 2, in, DTYPE_F32);
    layer_config c = kh5t_cfg(LAYER_LSTM);
    c.units = 4;
    c.return_sequences = true;
    kh5t_add(m, LAYER_LSTM, "lstm", &c);
    c = kh5t_cfg(LAYER_SIMPLERNN);
    c.units = 3;
    c.return_sequences = true;
    kh5t_add(m, LAYER_SIMPLERNN, "simple_rnn", &c);
    c = kh5t_cfg(LAYER_GRU);
    c.units = 3;
    kh5t_add(m, LAYER_GRU, "gru", &c);
    c = kh5t_cfg(LAYER_DENSE);
    c.units = 1;
    kh5t_add(m, LAYER_DENSE, "dense", &c);
    return kh5t_finish(m, 3) == 0 ? m : NULL;
}

static model *text(void)
{
    int64_t in[1] = {10};
    model *m = kh5t_seq("text", 1, in, DTYPE_I32);
    layer_config c = kh5t_cfg(LAYER_EMBEDDING);
    c.input_dim = 50;
    c.output_dim = 6;
    kh5t_add(m, LAYER_EMBEDDING, "embedding", &c);
    c = kh5t_cfg(LAYER_CONV1D);
    c.filters = 5;
    c.kernel_size[0] = 3;
    kh5t_add(m, LAYER_CONV1D, "conv1d", &c);
    c = kh5t_cfg(LAYER_GRU);
    c.units = 2;
    c.reset_after = false;
    kh5t_add(m, LAYER_GRU, "gru", &c);
    return kh5t_finish(m, 4) == 0 ? m : NULL;
}

/* Functional: two inputs, a shared Dense, a concatenation, two outputs; one frozen layer. */
static model *functional(void)
{
    model *m = NULL;
    err_info e = {0};
    if (model_create(&m, &e) != ERR_OK)
        return NULL;
    snprintf(m->name, sizeof m->name, "two_towers");
    int a, b, sh, sh2, cat, o1, o2;
    model_layer_add(m, LAYER_INPUT, "in_a", &a, &e);
    m->layers[a].input_shape = (model_shape){2, {-1, 4}};
    model_layer_add(m, LAYER_INPUT, "in_b", &b, &e);
    m->layers[b].input_shape = (model_shape){2, {-1, 4}};
    model_layer_add(m, LAYER_DENSE, "shared", &sh, &e);
    m->layers[sh].cfg.units = 3;
    model_layer_add(m, LAYER_CONCAT, "concatenate", &cat, &e);
    model_layer_add(m, LAYER_DENSE, "out_1", &o1, &e);
    m->layers[o1].cfg.units = 2;
    model_layer_add(m, LAYER_DENSE, "frozen", &sh2, &e);
    m->layers[sh2].cfg.units = 3;
    m->layers[sh2].trainable = false;
    model_layer_add(m, LAYER_DENSE, "out_2", &o2, &e);
    m->layers[o2].cfg.units = 1;
    model_ref ra = {a, 0, 0}, rb = {b, 0, 0};
    model_node_add(m, sh, 1, &ra, &e);
    model_node_add(m, sh, 1, &rb, &e);
    model_ref both[2] = {{sh, 0, 0}, {sh, 1, 0}};
    model_node_add(m, cat, 2, both, &e);
    model_ref rc = {cat, 0, 0};
    model_node_add(m, o1, 1, &rc, &e);
    model_node_add(m, sh2, 1, &rc, &e);
    model_ref rf = {sh2, 0, 0};
    model_node_add(m, o2, 1, &rf, &e);
    model_ref ins[2] = {ra, rb}, outs[2] = {{o1, 0, 0}, {o2, 0, 0}};
    model_inputs_set(m, 2, ins, &e);
    model_outputs_set(m, 2, outs, &e);
    if (model_build(m, &e) != ERR_OK) {
        fprintf(stderr, "functional: %s\n", e.msg);
        model_destroy(m);
        return NULL;
    }
    for (size_t i = 0; i < m->n_params; i++)
        m->params[i] = (float)sin((double)i * 0.37);
    return m;
}

typedef model *(*builder)(void);
static const struct {
    const char *name;
    builder make;
} MODELS[] = {{"mlp", mlp}, {"cnn", cnn}, {"rnn", rnn}, {"text", text}, {"functional", functional}};
#define N_MODELS ((int)(sizeof MODELS / sizeof MODELS[0]))

/* ---- comparisons ---- */

static char *config_of(const model *m)
{
    char *s = NULL;
    err_info e = {0};
    if (kjson_model_write(m, &s, &e) != ERR_OK) {
        fprintf(stderr, "kjson_model_write: %s\n", e.msg);
        return NULL;
    }
    return s;
}

static char *training_of(const model *m)
{
    char *s = NULL;
    err_info e = {0};
    if (!m->train.compiled)
        return NULL;
    if (kjson_training_write(m, &s, &e) != ERR_OK) {
        fprintf(stderr, "kjson_training_write: %s\n", e.msg);
        return NULL;
    }
    return s;
}

static void expect_same_model(const char *what, const model *a, const model *b, bool state)
{
    EXPECT_MSG(a->n_params == b->n_params && a->n_trainable == b->n_trainable &&
                   a->n_weights == b->n_weights,
               "%s: sizes differ", what);
    if (a->n_params == b->n_params)
        EXPECT_MSG(memcmp(a->params, b->params, a->n_params * sizeof(float)) == 0,
                   "%s: weights differ", what);
    char *ca = config_of(a), *cb = config_of(b);
    EXPECT_MSG(ca != NULL && cb != NULL && strcmp(ca, cb) == 0, "%s: model_config differs:\n%s\n%s",
               what, ca ? ca : "(null)", cb ? cb : "(null)");
    free(ca);
    free(cb);
    if (!state)
        return;
    char *ta = training_of(a), *tb = training_of(b);
    EXPECT_MSG((ta == NULL) == (tb == NULL) && (ta == NULL || strcmp(ta, tb) == 0),
               "%s: training_config differs:\n%s\n%s", what, ta ? ta : "(null)",
               tb ? tb : "(null)");
    free(ta);
    free(tb);
    EXPECT_MSG(a->opt.iterations == b->opt.iterations, "%s: iterations %lld vs %lld", what,
               (long long)a->opt.iterations, (long long)b->opt.iterations);
    EXPECT_MSG(a->opt.n_slots == b->opt.n_slots, "%s: %d vs %d slots", what, a->opt.n_slots,
               b->opt.n_slots);
    if (a->opt.n_slots == b->opt.n_slots && a->opt.n_slots > 0)
        EXPECT_MSG(memcmp(a->opt.slots, b->opt.slots,
                          (size_t)a->opt.n_slots * a->n_trainable * sizeof(float)) == 0,
                   "%s: optimizer slots differ", what);
    if (a->train.optim.kind == OPTIM_NADAM)
        EXPECT_MSG((float)a->opt.scalars[0] == (float)b->opt.scalars[0],
                   "%s: Nadam product %g vs %g", what, a->opt.scalars[0], b->opt.scalars[0]);
}

/* ---- optimizer configurations ---- */

typedef struct opt_case {
    const char *name;
    optim_kind kind;
    double momentum;
    bool nesterov, amsgrad, centered;
    int slots;
} opt_case;

static const opt_case OPTS[] = {
    {"sgd", OPTIM_SGD, 0, false, false, false, 0},
    {"sgd_momentum", OPTIM_SGD, 0.9, true, false, false, 1},
    {"adam", OPTIM_ADAM, 0, false, false, false, 2},
    {"adam_amsgrad", OPTIM_ADAM, 0, false, true, false, 3},
    {"adamw", OPTIM_ADAMW, 0, false, false, false, 2},
    {"adamw_amsgrad", OPTIM_ADAMW, 0, false, true, false, 3},
    {"rmsprop", OPTIM_RMSPROP, 0, false, false, false, 1},
    {"rmsprop_momentum_centered", OPTIM_RMSPROP, 0.5, false, false, true, 3},
    {"rmsprop_centered", OPTIM_RMSPROP, 0, false, false, true, 2},
    {"adagrad", OPTIM_ADAGRAD, 0, false, false, false, 1},
    {"nadam", OPTIM_NADAM, 0, false, false, false, 2},
};
#define N_OPTS ((int)(sizeof OPTS / sizeof OPTS[0]))

static int compile(model *m, const opt_case *oc, int64_t iterations, bool with_state)
{
    err_info e = {0};
    model_loss loss[2];
    memset(loss, 0, sizeof loss);
    loss[0].kind = LOSS_MSE;
    loss[1].kind = LOSS_MAE;
    loss[0].delta = loss[1].delta = 1.0;
    if (model_train_set_losses(m, m->n_outputs, loss, NULL, &e) != ERR_OK)
        return -1;
    model_optim_config c = model_optim_config_default(oc->kind);
    c.momentum = oc->momentum;
    c.nesterov = oc->nesterov;
    c.amsgrad = oc->amsgrad;
    c.centered = oc->centered;
    c.lr.initial = 0.0125;
    m->train.optim = c;
    if (!with_state)
        return 0;
    if (model_opt_state_alloc(m, oc->slots, &e) != ERR_OK)
        return -1;
    for (size_t i = 0; i < (size_t)oc->slots * m->n_trainable; i++)
        m->opt.slots[i] = (float)cos((double)i * 0.11) * 0.01f;
    m->opt.iterations = iterations;
    if (oc->kind == OPTIM_NADAM)
        m->opt.scalars[0] = 0.123456789;
    return 0;
}

static void roundtrip_optimizers(void)
{
    char path[256];
    kh5t_tmp(path, sizeof path, "opt");
    for (int mi = 0; mi < N_MODELS; mi++)
        for (int oi = 0; oi < N_OPTS; oi++) {
            model *a = MODELS[mi].make();
            EXPECT_MSG(a != NULL, "build %s", MODELS[mi].name);
            if (a == NULL)
                continue;
            char what[128];
            snprintf(what, sizeof what, "%s/%s", MODELS[mi].name, OPTS[oi].name);
            EXPECT(compile(a, &OPTS[oi], 1000 + oi, true) == 0);
            err_info e = {0};
            int rc = kh5_write(path, a, true, &e);
            EXPECT_MSG(rc == ERR_OK, "%s: write: %s", what, e.msg);
            model *b = NULL;
            kh5_warnings w;
            rc = kh5_read_ex(path, &b, &w, &e);
            EXPECT_MSG(rc == ERR_OK, "%s: read: %s", what, e.msg);
            EXPECT_MSG(w.count == 0, "%s: %d warnings: %s", what, w.count, w.msg[0]);
            if (b != NULL)
                expect_same_model(what, a, b, true);
            model_destroy(b);
            model_destroy(a);
        }
    remove(path);
}

/* Compiled but never trained: no optimizer_weights (as Keras), state comes back empty; without
 * include_optimizer there is no training_config at all. */
static void roundtrip_no_state(void)
{
    char path[256];
    kh5t_tmp(path, sizeof path, "nostate");
    model *a = mlp();
    EXPECT(a != NULL && compile(a, &OPTS[2], 0, false) == 0);
    err_info e = {0};
    EXPECT(kh5_write(path, a, true, &e) == ERR_OK);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    EXPECT(f >= 0 && H5Lexists(f, "optimizer_weights", H5P_DEFAULT) == 0 &&
           H5Aexists(f, "training_config") > 0);
    H5Fclose(f);
    model *b = NULL;
    EXPECT_MSG(kh5_read(path, &b, &e) == ERR_OK, "%s", e.msg);
    if (b != NULL) {
        expect_same_model("no state", a, b, true);
        EXPECT(b->train.compiled && b->opt.n_slots == 0);
    }
    model_destroy(b);
    b = NULL;
    EXPECT(kh5_write(path, a, false, &e) == ERR_OK);
    EXPECT_MSG(kh5_read(path, &b, &e) == ERR_OK, "%s", e.msg);
    if (b != NULL) {
        expect_same_model("no optimizer", a, b, false);
        EXPECT(!b->train.compiled);
    }
    model_destroy(b);
    model_destroy(a);
    remove(path);
}

/* full -> weights-only -> model, weights-only -> model, full -> load_weights. */
static void roundtrip_weights_only(void)
{
    char full[256], wts[256];
    kh5t_tmp(full, sizeof full, "full");
    kh5t_tmp(wts, sizeof wts, "weights");
    for (int mi = 0; mi < N_MODELS; mi++) {
        model *a = MODELS[mi].make();
        if (a == NULL)
            continue;
        err_info e = {0};
        EXPECT_MSG(kh5_write_weights(wts, a, &e) == ERR_OK, "%s: %s", MODELS[mi].name, e.msg);
        EXPECT_MSG(kh5_write(full, a, false, &e) == ERR_OK, "%s: %s", MODELS[mi].name, e.msg);
        kh5_kind k;
        EXPECT(kh5_probe(wts, &k, &e) == ERR_OK && k == KH5_WEIGHTS);
        EXPECT(kh5_probe(full, &k, &e) == ERR_OK && k == KH5_FULL);
        /* weights-only into a freshly built twin */
        model *b = MODELS[mi].make();
        if (b != NULL) {
            memset(b->params, 0, b->n_params * sizeof(float));
            EXPECT_MSG(kh5_read_weights(wts, b, &e) == ERR_OK, "%s: %s", MODELS[mi].name, e.msg);
            expect_same_model(MODELS[mi].name, a, b, false);
            /* a full file's model_weights, as Keras's load_weights accepts */
            memset(b->params, 0, b->n_params * sizeof(float));
            EXPECT_MSG(kh5_read_weights(full, b, &e) == ERR_OK, "%s: %s", MODELS[mi].name, e.msg);
            expect_same_model(MODELS[mi].name, a, b, false);
        }
        model_destroy(b);
        /* full -> read -> weights-only -> twin */
        model *c = NULL;
        EXPECT(kh5_read(full, &c, &e) == ERR_OK);
        if (c != NULL) {
            EXPECT(kh5_write_weights(wts, c, &e) == ERR_OK);
            model *d = MODELS[mi].make();
            if (d != NULL) {
                EXPECT(kh5_read_weights(wts, d, &e) == ERR_OK);
                expect_same_model(MODELS[mi].name, a, d, false);
            }
            model_destroy(d);
        }
        model_destroy(c);
        /* a weights-only file where a model is expected */
        model *x = NULL;
        EXPECT(kh5_read(wts, &x, &e) == ERR_FORMAT && x == NULL);
        model_destroy(a);
    }
    remove(full);
    remove(wts);
}

/* ---- what is written, at the HDF5 level ---- */

static bool attr_is(hid_t obj, const char *name, bool vlen, H5T_cset_t cset, int rank)
{
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0)
        return false;
    hid_t t = H5Aget_type(a), s = H5Aget_space(a);
    bool ok = H5Tget_class(t) == H5T_STRING && (H5Tis_variable_str(t) > 0) == vlen &&
              H5Tget_cset(t) == cset && H5Sget_simple_extent_ndims(s) == rank;
    if (ok && !vlen)
        ok = H5Tget_strpad(t) == H5T_STR_NULLPAD;
    H5Sclose(s);
    H5Tclose(t);
    H5Aclose(a);
    return ok;
}

static void check_written_types(void)
{
    char path[256];
    kh5t_tmp(path, sizeof path, "types");
    model *a = mlp();
    EXPECT(a != NULL && compile(a, &OPTS[2], 7, true) == 0);
    err_info e = {0};
    EXPECT(kh5_write(path, a, true, &e) == ERR_OK);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    EXPECT(f >= 0);
    /* tf.keras: root keras_version/backend are str (vlen UTF-8), JSON is bytes (vlen ASCII). */
    EXPECT(attr_is(f, "keras_version", true, H5T_CSET_UTF8, 0));
    EXPECT(attr_is(f, "backend", true, H5T_CSET_UTF8, 0));
    EXPECT(attr_is(f, "model_config", true, H5T_CSET_ASCII, 0));
    EXPECT(attr_is(f, "training_config", true, H5T_CSET_ASCII, 0));
    hid_t g = H5Gopen2(f, "model_weights", H5P_DEFAULT);
    EXPECT(attr_is(g, "layer_names", false, H5T_CSET_ASCII, 1));
    EXPECT(attr_is(g, "keras_version", true, H5T_CSET_ASCII, 0));
    EXPECT(attr_is(g, "backend", true, H5T_CSET_ASCII, 0));
    /* Sequential: no InputLayer in layer_names; fixed size = longest name, no terminator. */
    hid_t at = H5Aopen(g, "layer_names", H5P_DEFAULT);
    hid_t t = H5Aget_type(at), s = H5Aget_space(at);
    hsize_t n = 0;
    H5Sget_simple_extent_dims(s, &n, NULL);
    EXPECT(n == 4 && H5Tget_size(t) == strlen("batch_normalization"));
    H5Sclose(s);
    H5Tclose(t);
    H5Aclose(at);
    EXPECT(H5Lexists(g, "dense/dense/kernel:0", H5P_DEFAULT) > 0);
    EXPECT(H5Lexists(g, "top_level_model_weights", H5P_DEFAULT) > 0);
    /* Layers without weights: weight_names is an empty float64 array. */
    hid_t dg = H5Gopen2(g, "dropout", H5P_DEFAULT);
    hid_t wa = H5Aopen(dg, "weight_names", H5P_DEFAULT);
    hid_t wt = H5Aget_type(wa), ws = H5Aget_space(wa);
    EXPECT(H5Tget_class(wt) == H5T_FLOAT && H5Tget_size(wt) == 8 &&
           H5Sget_simple_extent_npoints(ws) == 0);
    H5Sclose(ws);
    H5Tclose(wt);
    H5Aclose(wa);
    H5Gclose(dg);
    H5Gclose(g);
    /* OptimizerV2 layout: Adam/iter:0 (int64 scalar), then all m, then all v. */
    EXPECT(H5Lexists(f, "optimizer_weights", H5P_DEFAULT) > 0);
    hid_t it = H5Dopen2(f, "optimizer_weights/Adam/iter:0", H5P_DEFAULT);
    EXPECT(it >= 0);
    if (it >= 0) {
        hid_t itype = H5Dget_type(it);
        int64_t v = 0;
        EXPECT(H5Tget_class(itype) == H5T_INTEGER && H5Tget_size(itype) == 8);
        H5Dread(it, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, &v);
        EXPECT(v == 7);
        H5Tclose(itype);
        H5Dclose(it);
    }
    EXPECT(H5Lexists(f, "optimizer_weights/Adam/dense/kernel/m:0", H5P_DEFAULT) > 0);
    EXPECT(H5Lexists(f, "optimizer_weights/Adam/batch_normalization/beta/v:0", H5P_DEFAULT) > 0);
    H5Fclose(f);
    /* Nothing but the output is left behind. */
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    EXPECT(access(tmp, F_OK) != 0);
    model_destroy(a);
    remove(path);
}

/* Thousands of layers: layer_names and optimizer_weights/weight_names exceed 64512 bytes and
 * are split into name0, name1, ... like Keras does. */
static void roundtrip_chunked(void)
{
    char path[256], wpath[256];
    kh5t_tmp(path, sizeof path, "chunked");
    kh5t_tmp(wpath, sizeof wpath, "chunked_w");
    int64_t in[1] = {2};
    model *a = kh5t_seq("deep", 1, in, DTYPE_F32);
    layer_config c = kh5t_cfg(LAYER_DENSE);
    c.units = 2;
    const int n = 2000; /* 2000 names of 39 bytes: 78000 bytes, two chunks */
    for (int i = 0; i < n && a != NULL; i++) {
        char name[64];
        snprintf(name, sizeof name, "dense_layer_with_a_rather_long_name_%04d", i);
        kh5t_add(a, LAYER_DENSE, name, &c);
    }
    EXPECT(a != NULL && kh5t_finish(a, 9) == 0);
    EXPECT(compile(a, &OPTS[2], 3, true) == 0);
    err_info e = {0};
    EXPECT_MSG(kh5_write(path, a, true, &e) == ERR_OK, "%s", e.msg);
    EXPECT_MSG(kh5_write_weights(wpath, a, &e) == ERR_OK, "%s", e.msg);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t g = H5Gopen2(f, "model_weights", H5P_DEFAULT);
    EXPECT(H5Aexists(g, "layer_names") == 0 && H5Aexists(g, "layer_names0") > 0 &&
           H5Aexists(g, "layer_names1") > 0 && H5Aexists(g, "layer_names2") == 0);
    hid_t og = H5Gopen2(f, "optimizer_weights", H5P_DEFAULT);
    EXPECT(H5Aexists(og, "weight_names") == 0 && H5Aexists(og, "weight_names0") > 0);
    /* every chunk within Keras's limit */
    for (int k = 0;; k++) {
        char an[32];
        snprintf(an, sizeof an, "weight_names%d", k);
        if (H5Aexists(og, an) <= 0)
            break;
        hid_t at = H5Aopen(og, an, H5P_DEFAULT);
        EXPECT(H5Aget_storage_size(at) <= 64512);
        H5Aclose(at);
    }
    H5Gclose(og);
    H5Gclose(g);
    H5Fclose(f);
    model *b = NULL;
    EXPECT_MSG(kh5_read(path, &b, &e) == ERR_OK, "%s", e.msg);
    if (b != NULL)
        expect_same_model("chunked", a, b, true);
    model_destroy(b);
    if (a != NULL) {
        memset(a->params, 0, a->n_params * sizeof(float));
        EXPECT_MSG(kh5_read_weights(wpath, a, &e) == ERR_OK, "%s", e.msg);
        b = NULL;
        EXPECT(kh5_read(path, &b, &e) == ERR_OK);
        if (b != NULL)
            EXPECT(memcmp(a->params, b->params, a->n_params * sizeof(float)) == 0);
        model_destroy(b);
    }
    model_destroy(a);
    remove(path);
    remove(wpath);
}

/* Every corpus file: read -> write -> read gives identical weights, config and state. */
static void roundtrip_corpus(void)
{
    static const char *full[] = {
        "keras1.2.2_seq_lstm_rmsprop_tf",
        "keras2.0.4_func_embedding_gru_rmsprop",
        "keras2.1.3_seq_conv2d_bn_activation_adam",
        "keras2.1.3_seq_embedding_conv1d_dropout_adam",
        "keras2.1.3_seq_simplernn_rmsprop",
        "keras2.2.4_seq_cnn_maxpool_sgd",
        "tfkeras2.2.4_func_gru_initialstate_nobias_noopt",
        "tfkeras2.3.0_func_resnet_conv_bn_add_adam",
        "tfkeras2.4.0_func_dense_concat_sgd",
        "tfkeras2.5.0_seq_conv2d_bn_gap_dropout_adam",
        "tfkeras2.9.0_seq_lstm_sgd",
        "tfkeras2.10.0_seq_gru_resetafter_adam",
        "tfkeras2.12.0_seq_dense_newadam",
        "keras3.5.0_seq_dense_adam",
        "keras3.6.0_seq_embedding_gru_adam",
        "keras3.10.0_func_8inputs_2outputs_embedding_concat_adam",
        "keras3.10.0_seq_conv2d_bn_maxpool_dropout_adam",
        "keras3.13.2_seq_2lstm_dense_noopt",
    };
    char out[256];
    kh5t_tmp(out, sizeof out, "corpus");
    for (size_t i = 0; i < sizeof full / sizeof full[0]; i++) {
        char in[1024];
        snprintf(in, sizeof in, "%s/%s.h5", KH5T_CORPUS, full[i]);
        err_info e = {0};
        model *a = NULL, *b = NULL;
        EXPECT_MSG(kh5_read(in, &a, &e) == ERR_OK, "%s", e.msg);
        if (a == NULL)
            continue;
        EXPECT_MSG(kh5_write(out, a, true, &e) == ERR_OK, "%s: %s", full[i], e.msg);
        EXPECT_MSG(kh5_read(out, &b, &e) == ERR_OK, "%s: %s", full[i], e.msg);
        if (b != NULL)
            expect_same_model(full[i], a, b, true);
        model_destroy(a);
        model_destroy(b);
    }
    remove(out);
}

/* The seed corpus of tests/fuzz/corpus/kh5: small files of each kind cornu writes, with
 * optimizer state of several layouts. Regenerate with
 *   test_formats_kh5_roundtrip --write-seeds tests/fuzz/corpus/kh5 */
static int write_seeds(const char *dir)
{
    static const int opt_of[N_MODELS] = {2, 1, 10, 4, 7};
    err_info e = {0};
    for (int mi = 0; mi < N_MODELS; mi++) {
        model *m = MODELS[mi].make();
        if (m == NULL || compile(m, &OPTS[opt_of[mi]], 5, true) != 0)
            return 1;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s_%s.h5", dir, MODELS[mi].name, OPTS[opt_of[mi]].name);
        if (kh5_write(path, m, true, &e) != ERR_OK)
            return fprintf(stderr, "%s\n", e.msg), 1;
        model_destroy(m);
    }
    return 0;
}

static double seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--write-seeds") == 0)
        return write_seeds(argv[2]);
    static const struct {
        const char *name;
        void (*run)(void);
    } parts[] = {
        {"optimizers", roundtrip_optimizers},     {"no state", roundtrip_no_state},
        {"weights-only", roundtrip_weights_only}, {"written types", check_written_types},
        {"chunked", roundtrip_chunked},           {"corpus", roundtrip_corpus},
    };
    /* "--only NAME" runs one part (CTest runs "chunked" as its own test: it is the slow one). */
    const char *only = argc == 3 && strcmp(argv[1], "--only") == 0 ? argv[2] : NULL;
    const char *skip = argc == 3 && strcmp(argv[1], "--skip") == 0 ? argv[2] : NULL;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        if ((only != NULL && strcmp(only, parts[i].name) != 0) ||
            (skip != NULL && strcmp(skip, parts[i].name) == 0))
            continue;
        double t0 = seconds();
        parts[i].run();
        printf("%-14s %.2f s\n", parts[i].name, seconds() - t0);
    }
    return test_finish();
}
