/* Reads every legacy file of the shared Keras .h5 corpus and checks what was loaded against
 * independent sources: the h5py dump in expected/<file>.json (kinds, parameter counts, weight order
 * and shapes), the raw datasets read here with the plain HDF5 API (values, bit for bit), the
 * Keras 1 gate layout assembled here by hand, spot checks of optimizer slots against named
 * datasets, and first-layer outputs recomputed here against predict/<file>/layers/. */
#include <cJSON.h>
#include <math.h>

#include "formats/keras_h5.h"
#include "formats/keras_json.h"
#include "test_kh5_util.h"

typedef struct corpus_file {
    const char *stem;
    kh5_kind kind;
} corpus_file;

static const corpus_file FILES[] = {
    {"keras1_seq_lstm_weights_theano", KH5_WEIGHTS},
    {"keras1.2.2_seq_lstm_rmsprop_tf", KH5_FULL},
    {"keras2.0.0_func_4dense_weights", KH5_WEIGHTS},
    {"keras2.0.4_func_embedding_gru_rmsprop", KH5_FULL},
    {"keras2.0.8_func_dense_bn_activation_weights", KH5_WEIGHTS},
    {"keras2.1.3_seq_conv2d_bn_activation_adam", KH5_FULL},
    {"keras2.1.3_seq_embedding_conv1d_dropout_adam", KH5_FULL},
    {"keras2.1.3_seq_simplernn_rmsprop", KH5_FULL},
    {"keras2.2.0_func_shared_concat_weights", KH5_WEIGHTS},
    {"keras2.2.4_seq_cnn_maxpool_sgd", KH5_FULL},
    {"tfkeras2.2.4_func_gru_initialstate_nobias_noopt", KH5_FULL},
    {"tfkeras2.3.0_func_resnet_conv_bn_add_adam", KH5_FULL},
    {"tfkeras2.4.0_func_dense_concat_sgd", KH5_FULL},
    {"tfkeras2.5.0_seq_conv2d_bn_gap_dropout_adam", KH5_FULL},
    {"tfkeras2.9.0_seq_lstm_sgd", KH5_FULL},
    {"tfkeras2.10.0_seq_gru_resetafter_adam", KH5_FULL},
    {"tfkeras2.12.0_seq_dense_newadam", KH5_FULL},
    {"tfkeras2.14.0_lstm_dense_weights", KH5_WEIGHTS},
    {"keras3.5.0_seq_dense_adam", KH5_FULL},
    {"keras3.6.0_seq_embedding_gru_adam", KH5_FULL},
    {"keras3.10.0_func_8inputs_2outputs_embedding_concat_adam", KH5_FULL},
    {"keras3.10.0_seq_conv2d_bn_maxpool_dropout_adam", KH5_FULL},
    {"keras3.13.2_seq_2lstm_dense_noopt", KH5_FULL},
};
#define N_FILES ((int)(sizeof FILES / sizeof FILES[0]))

/* Optimizer slot spot checks: slot `slot` of weight `weight` of layer `layer`, columns
 * [col0, col0 + ncols) of its last axis (ncols 0: all), must equal /optimizer_weights/<dset>. */
typedef struct slot_check {
    const char *stem, *layer, *weight;
    int slot;
    const char *dset;
    int col0, ncols;
} slot_check;

static const slot_check SLOTS[] = {
    /* Keras 1.2.2 sorts the trainable weights by name: dense_1_W, dense_1_b, lstm_1_U_c, _U_f,
     * _U_i, _U_o, _W_c, _W_f, _W_i, _W_o, _b_c, ... -> Variable_4 ... Variable_17. Keras 2 gate
     * order i, f, c, o puts W_f in columns [50, 100). */
    {"keras1.2.2_seq_lstm_rmsprop_tf", "dense_1", "kernel", 0, "Variable_4:0", 0, 0},
    {"keras1.2.2_seq_lstm_rmsprop_tf", "lstm_1", "kernel", 0, "Variable_11:0", 50, 50},
    {"keras1.2.2_seq_lstm_rmsprop_tf", "lstm_1", "recurrent_kernel", 0, "Variable_6:0", 100, 50},
    {"keras1.2.2_seq_lstm_rmsprop_tf", "lstm_1", "bias", 0, "Variable_17:0", 150, 50},
    /* Keras 2.0.4 also sorts by name: dense_7/bias first. */
    {"keras2.0.4_func_embedding_gru_rmsprop", "dense_7", "bias", 0, "Variable_28:0", 0, 0},
    {"keras2.0.4_func_embedding_gru_rmsprop", "embedding_2", "embeddings", 0, "Variable_30:0", 0,
     0},
    {"keras2.0.4_func_embedding_gru_rmsprop", "gru_2", "recurrent_kernel", 0, "Variable_33:0", 0,
     0},
    {"keras2.1.3_seq_simplernn_rmsprop", "simple_rnn_1", "kernel", 0, "training/RMSprop/Variable:0",
     0, 0},
    {"keras2.1.3_seq_simplernn_rmsprop", "dense_1", "bias", 0, "training/RMSprop/Variable_4:0", 0,
     0},
    {"tfkeras2.3.0_func_resnet_conv_bn_add_adam", "conv2d_164", "kernel", 1,
     "Adam/conv2d_164/kernel/v:0", 0, 0},
    {"tfkeras2.3.0_func_resnet_conv_bn_add_adam", "batch_normalization_124", "beta", 0,
     "Adam/batch_normalization_124/beta/m:0", 0, 0},
    {"tfkeras2.5.0_seq_conv2d_bn_gap_dropout_adam", "dense_2", "kernel", 1,
     "Adam/dense_2/kernel/v:0", 0, 0},
    {"tfkeras2.9.0_seq_lstm_sgd", "lstm", "recurrent_kernel", 0,
     "SGD/lstm/lstm_cell/recurrent_kernel/momentum:0", 0, 0},
    {"tfkeras2.10.0_seq_gru_resetafter_adam", "gru", "bias", 1, "Adam/gru/gru_cell/bias/v:0", 0, 0},
    {"tfkeras2.12.0_seq_dense_newadam", "dense_1", "kernel", 1, "Adam/v/dense_1/kernel:0", 0, 0},
    {"tfkeras2.12.0_seq_dense_newadam", "dense_2", "bias", 0, "Adam/m/dense_2/bias:0", 0, 0},
    {"keras3.5.0_seq_dense_adam", "dense_7", "kernel", 1,
     "adam/sequential_2_dense_7_kernel_velocity", 0, 0},
    {"keras3.6.0_seq_embedding_gru_adam", "gru", "recurrent_kernel", 0,
     "adam/sequential_1_gru_gru_cell_recurrent_kernel_momentum", 0, 0},
    {"keras3.10.0_func_8inputs_2outputs_embedding_concat_adam", "embedding_1", "embeddings", 1,
     "adam/embedding_1_embeddings_velocity", 0, 0},
    {"keras3.10.0_seq_conv2d_bn_maxpool_dropout_adam", "batch_normalization", "gamma", 0,
     "adam/sequential_batch_normalization_gamma_momentum", 0, 0},
};
#define N_SLOTS ((int)(sizeof SLOTS / sizeof SLOTS[0]))

static cJSON *load_expected(const char *stem)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/expected/%s.h5.json", KH5T_CORPUS, stem);
    size_t len;
    char *txt = kh5t_slurp(path, &len);
    if (txt == NULL)
        return NULL;
    cJSON *j = cJSON_ParseWithLength(txt, len);
    free(txt);
    return j;
}

static model *load(const corpus_file *cf, kh5_warnings *w)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.h5", KH5T_CORPUS, cf->stem);
    err_info e = {0};
    model *m = NULL;
    if (cf->kind == KH5_FULL) {
        int rc = kh5_read_ex(path, &m, w, &e);
        EXPECT_MSG(rc == ERR_OK, "%s: %s", cf->stem, e.msg);
        return rc == ERR_OK ? m : NULL;
    }
    char cpath[1024];
    snprintf(cpath, sizeof cpath, "%s/%s.json", KH5T_SIDECAR, cf->stem);
    size_t len;
    char *json = kh5t_slurp(cpath, &len);
    EXPECT_MSG(json != NULL, "%s", cpath);
    if (json == NULL)
        return NULL;
    int rc = kjson_model_parse(json, len, cpath, &m, &e);
    free(json);
    EXPECT_MSG(rc == ERR_OK, "%s: %s", cpath, e.msg);
    if (rc != ERR_OK)
        return NULL;
    rc = kh5_read_weights_ex(path, m, w, &e);
    EXPECT_MSG(rc == ERR_OK, "%s: %s", cf->stem, e.msg);
    if (rc != ERR_OK) {
        model_destroy(m);
        return NULL;
    }
    return m;
}

static bool is_keras1(const char *stem)
{
    return strncmp(stem, "keras1", 6) == 0;
}

/* Compares every model weight with the raw dataset listed at the same position of
 * expected["weights"] (non-Keras-1 files: one saved tensor per model weight). */
static void check_weights(const corpus_file *cf, const model *m, const cJSON *exp)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.h5", KH5T_CORPUS, cf->stem);
    const cJSON *ws = cJSON_GetObjectItem(exp, "weights");
    int n = cJSON_GetArraySize(ws);
    EXPECT_MSG(n == m->n_weights, "%s: %d saved weights, model has %d", cf->stem, n, m->n_weights);
    const char *prefix = cf->kind == KH5_FULL ? "/model_weights" : "";
    for (int k = 0; k < n && k < m->n_weights; k++) {
        const cJSON *item = cJSON_GetArrayItem(ws, k);
        const char *layer = cJSON_GetArrayItem(item, 0)->valuestring;
        const char *wname = cJSON_GetArrayItem(item, 1)->valuestring;
        char dpath[1024];
        snprintf(dpath, sizeof dpath, "%s/%s/%s", prefix, layer, wname);
        size_t cnt = 0;
        float *raw = kh5t_h5_read(path, dpath, &cnt);
        EXPECT_MSG(raw != NULL, "%s: %s", cf->stem, dpath);
        if (raw == NULL)
            continue;
        const model_weight *mw = &m->weights[k];
        EXPECT_MSG(cnt == mw->count, "%s: %s count %zu vs %zu", cf->stem, dpath, cnt, mw->count);
        const cJSON *shape = cJSON_GetArrayItem(item, 2);
        bool same_shape = cJSON_GetArraySize(shape) == mw->rank;
        for (int d = 0; same_shape && d < mw->rank; d++)
            same_shape = (int64_t)cJSON_GetArrayItem(shape, d)->valuedouble == mw->shape[d];
        EXPECT_MSG(same_shape, "%s: %s shape differs from the model's", cf->stem, dpath);
        if (cnt == mw->count)
            EXPECT_MSG(memcmp(raw, m->params + mw->offset, cnt * sizeof *raw) == 0,
                       "%s: %s values differ", cf->stem, dpath);
        free(raw);
    }
}

/* Keras 1 LSTM: 12 tensors (gates i, c, f, o) -> kernel/recurrent/bias with gates i, f, c, o. */
static void check_keras1_lstm(const corpus_file *cf, const model *m)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.h5", KH5T_CORPUS, cf->stem);
    const char *prefix = cf->kind == KH5_FULL ? "/model_weights" : "";
    const char *suffix = cf->kind == KH5_FULL ? ":0" : "";
    int li = model_layer_find(m, "lstm_1");
    EXPECT(li >= 0);
    if (li < 0)
        return;
    static const char *gates[4] = {"i", "f", "c", "o"}; /* Keras 2 block order */
    static const char *parts[3] = {"W", "U", "b"};
    static const char *weights[3] = {"kernel", "recurrent_kernel", "bias"};
    for (int p = 0; p < 3; p++) {
        int w = model_weight_find(m, li, weights[p]);
        EXPECT(w >= 0);
        if (w < 0)
            continue;
        const model_weight *mw = &m->weights[w];
        int64_t units = mw->shape[mw->rank - 1] / 4;
        int64_t rows = mw->rank == 2 ? mw->shape[0] : 1;
        for (int g = 0; g < 4; g++) {
            char dpath[256];
            snprintf(dpath, sizeof dpath, "%s/lstm_1/lstm_1_%s_%s%s", prefix, parts[p], gates[g],
                     suffix);
            size_t cnt = 0;
            float *raw = kh5t_h5_read(path, dpath, &cnt);
            EXPECT_MSG(raw != NULL && cnt == (size_t)(rows * units), "%s: %s", cf->stem, dpath);
            if (raw == NULL)
                continue;
            int bad = 0;
            for (int64_t r = 0; r < rows; r++)
                for (int64_t u = 0; u < units; u++)
                    bad += m->params[mw->offset + (size_t)(r * 4 * units + g * units + u)] !=
                           raw[r * units + u];
            EXPECT_MSG(bad == 0, "%s: %s placed wrongly (%d values)", cf->stem, dpath, bad);
            free(raw);
        }
    }
}

static void check_slots(const corpus_file *cf, const model *m)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.h5", KH5T_CORPUS, cf->stem);
    for (int i = 0; i < N_SLOTS; i++) {
        const slot_check *s = &SLOTS[i];
        if (strcmp(s->stem, cf->stem) != 0)
            continue;
        int li = model_layer_find(m, s->layer);
        int w = li < 0 ? -1 : model_weight_find(m, li, s->weight);
        EXPECT_MSG(w >= 0, "%s: %s/%s", cf->stem, s->layer, s->weight);
        EXPECT_MSG(m->opt.n_slots > s->slot, "%s: %d slots", cf->stem, m->opt.n_slots);
        if (w < 0 || m->opt.n_slots <= s->slot)
            continue;
        char dpath[512];
        snprintf(dpath, sizeof dpath, "/optimizer_weights/%s", s->dset);
        size_t cnt = 0;
        float *raw = kh5t_h5_read(path, dpath, &cnt);
        EXPECT_MSG(raw != NULL, "%s: %s", cf->stem, dpath);
        if (raw == NULL)
            continue;
        const model_weight *mw = &m->weights[w];
        int64_t width = mw->shape[mw->rank - 1];
        int64_t ncols = s->ncols ? s->ncols : width;
        int64_t rows = (int64_t)mw->count / width;
        const float *slot = m->opt.slots + (size_t)s->slot * m->n_trainable + mw->offset;
        EXPECT_MSG(cnt == (size_t)(rows * ncols), "%s: %s has %zu values", cf->stem, dpath, cnt);
        int bad = 0;
        for (int64_t r = 0; r < rows && cnt == (size_t)(rows * ncols); r++)
            for (int64_t c = 0; c < ncols; c++)
                bad += slot[r * width + s->col0 + c] != raw[r * ncols + c];
        EXPECT_MSG(bad == 0, "%s: slot %d of %s/%s differs from %s (%d values)", cf->stem, s->slot,
                   s->layer, s->weight, dpath, bad);
        free(raw);
    }
}

/* The iteration counter as the file stores it: the first scalar of optimizer_weights that is
 * not Keras 3's learning_rate. */
static void check_iterations(const corpus_file *cf, const model *m, const cJSON *exp)
{
    const cJSON *ow = cJSON_GetObjectItem(exp, "optimizer_weights");
    if (!cJSON_IsArray(ow))
        return;
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.h5", KH5T_CORPUS, cf->stem);
    for (int i = 0; i < cJSON_GetArraySize(ow); i++) {
        const cJSON *it = cJSON_GetArrayItem(ow, i);
        const char *name = cJSON_GetArrayItem(it, 0)->valuestring;
        if (cJSON_GetArraySize(cJSON_GetArrayItem(it, 1)) != 0 || strstr(name, "learning_rate"))
            continue;
        char dpath[512];
        snprintf(dpath, sizeof dpath, "/optimizer_weights/%s", name);
        float *raw = kh5t_h5_read(path, dpath, NULL);
        EXPECT_MSG(raw != NULL, "%s", dpath);
        if (raw != NULL)
            EXPECT_MSG((double)m->opt.iterations == (double)raw[0], "%s: iterations %lld vs %g",
                       cf->stem, (long long)m->opt.iterations, (double)raw[0]);
        EXPECT_MSG(m->opt.iterations > 0, "%s: iterations restored", cf->stem);
        free(raw);
        return;
    }
}

static size_t expected_params(const cJSON *exp)
{
    size_t total = 0;
    const cJSON *ws = cJSON_GetObjectItem(exp, "weights");
    for (int k = 0; k < cJSON_GetArraySize(ws); k++) {
        const cJSON *shape = cJSON_GetArrayItem(cJSON_GetArrayItem(ws, k), 2);
        size_t c = 1;
        for (int d = 0; d < cJSON_GetArraySize(shape); d++)
            c *= (size_t)cJSON_GetArrayItem(shape, d)->valuedouble;
        total += c;
    }
    return total;
}

/* fc1_relu of keras2.0.0_func_4dense_weights recomputed from the loaded weights. */
static void check_dense_forward(const model *m)
{
    char p[1024];
    int r1, r2;
    int64_t s1[8], s2[8];
    snprintf(p, sizeof p, "%s/predict/keras2.0.0_func_4dense_weights/in_0.npy", KH5T_CORPUS);
    float *x = kh5t_npy(p, &r1, s1);
    snprintf(p, sizeof p, "%s/predict/keras2.0.0_func_4dense_weights/layers/000_fc1_relu.npy",
             KH5T_CORPUS);
    float *y = kh5t_npy(p, &r2, s2);
    int li = model_layer_find(m, "fc1_relu");
    EXPECT(x != NULL && y != NULL && li >= 0);
    if (x != NULL && y != NULL && li >= 0) {
        const model_weight *k = &m->weights[model_weight_find(m, li, "kernel")];
        const model_weight *b = &m->weights[model_weight_find(m, li, "bias")];
        int64_t in = k->shape[0], out = k->shape[1];
        double worst = 0;
        for (int64_t n = 0; n < s1[0]; n++)
            for (int64_t j = 0; j < out; j++) {
                double acc = m->params[b->offset + (size_t)j];
                for (int64_t i = 0; i < in; i++)
                    acc += (double)x[n * in + i] * m->params[k->offset + (size_t)(i * out + j)];
                acc = acc > 0 ? acc : 0;
                worst = fmax(worst, fabs(acc - y[n * out + j]));
            }
        EXPECT_MSG(worst < 1e-5, "fc1_relu differs by %g", worst);
    }
    free(x);
    free(y);
}

static double hard_sigmoid_k2(double v)
{
    v = 0.2 * v + 0.5;
    return v < 0 ? 0 : v > 1 ? 1 : v;
}

/* One LSTM step from a zero state, gates i, f, c, o: checks the Keras 1 gate regrouping of the
 * kernel and bias against the oracles' layer output. */
static void check_lstm_step(const char *stem, const model *m)
{
    char p[1024];
    int r1, r2;
    int64_t s1[8], s2[8];
    snprintf(p, sizeof p, "%s/predict/%s/in_0.npy", KH5T_CORPUS, stem);
    float *x = kh5t_npy(p, &r1, s1);
    snprintf(p, sizeof p, "%s/predict/%s/layers/000_lstm_1.npy", KH5T_CORPUS, stem);
    float *y = kh5t_npy(p, &r2, s2);
    int li = model_layer_find(m, "lstm_1");
    EXPECT(x != NULL && y != NULL && li >= 0 && r1 == 3 && s1[1] == 1 && s1[2] == 1);
    if (x != NULL && y != NULL && li >= 0) {
        const model_weight *k = &m->weights[model_weight_find(m, li, "kernel")];
        const model_weight *b = &m->weights[model_weight_find(m, li, "bias")];
        int64_t u = k->shape[1] / 4;
        double worst = 0;
        for (int64_t n = 0; n < s1[0]; n++)
            for (int64_t j = 0; j < u; j++) {
                double z[4];
                for (int g = 0; g < 4; g++)
                    z[g] = (double)x[n] * m->params[k->offset + (size_t)(g * u + j)] +
                           m->params[b->offset + (size_t)(g * u + j)];
                double c = hard_sigmoid_k2(z[0]) * tanh(z[2]);
                double h = hard_sigmoid_k2(z[3]) * tanh(c);
                worst = fmax(worst, fabs(h - y[n * u + j]));
            }
        EXPECT_MSG(worst < 1e-5, "%s: lstm_1 step differs by %g", stem, worst);
    }
    free(x);
    free(y);
}

static void check_refusals(void)
{
    char path[1024];
    err_info e = {0};
    model *m = NULL;
    kh5_kind kind;
    snprintf(path, sizeof path, "%s/keras3_NEWFORMAT_seq_dense_adam.weights.h5", KH5T_CORPUS);
    EXPECT(kh5_probe(path, &kind, &e) == ERR_OK && kind == KH5_KERAS3_WEIGHTS);
    int rc = kh5_read(path, &m, &e);
    EXPECT_MSG(rc == ERR_UNSUPPORTED && strstr(e.msg, "Keras 3 native weights") &&
                   strstr(e.msg, "keras3_NEWFORMAT"),
               "%s", e.msg);
    EXPECT(m == NULL);
    snprintf(path, sizeof path, "%s/keras2.0.0_func_4dense_weights.h5", KH5T_CORPUS);
    rc = kh5_read(path, &m, &e);
    EXPECT_MSG(rc == ERR_FORMAT && strstr(e.msg, "weights-only") &&
                   strstr(e.msg, "keras2.0.0_func_4dense_weights.h5"),
               "%s", e.msg);
}

int main(void)
{
    for (int i = 0; i < N_FILES; i++) {
        const corpus_file *cf = &FILES[i];
        char path[1024];
        snprintf(path, sizeof path, "%s/%s.h5", KH5T_CORPUS, cf->stem);
        err_info e = {0};
        kh5_kind kind = KH5_KIND_COUNT;
        EXPECT_MSG(kh5_probe(path, &kind, &e) == ERR_OK && kind == cf->kind, "%s: probe %s",
                   cf->stem, e.msg);
        cJSON *exp = load_expected(cf->stem);
        EXPECT_MSG(exp != NULL, "%s: expected json", cf->stem);
        kh5_warnings w;
        model *m = load(cf, &w);
        if (m != NULL && exp != NULL) {
            EXPECT_MSG(m->n_params == expected_params(exp), "%s: %zu params, expected %zu",
                       cf->stem, m->n_params, expected_params(exp));
            if (is_keras1(cf->stem))
                check_keras1_lstm(cf, m);
            else
                check_weights(cf, m, exp);
            if (cf->kind == KH5_FULL) {
                check_slots(cf, m);
                check_iterations(cf, m, exp);
            }
            bool nan_file = strstr(cf->stem, "8inputs") != NULL;
            EXPECT_MSG(nan_file ? w.count > 0 && strstr(w.msg[0], "NaN") &&
                                      strstr(w.msg[0], "layer \"dense\"")
                                : w.count == 0 || strstr(w.msg[0], "NaN") == NULL,
                       "%s: warnings %d: %s", cf->stem, w.count, w.count ? w.msg[0] : "");
            if (strcmp(cf->stem, "keras2.0.0_func_4dense_weights") == 0)
                check_dense_forward(m);
            if (is_keras1(cf->stem))
                check_lstm_step(cf->stem, m);
            printf("%-58s %9zu params, %d slots, iterations %lld, %d warnings\n", cf->stem,
                   m->n_params, m->opt.n_slots, (long long)m->opt.iterations, w.count);
        }
        model_destroy(m);
        cJSON_Delete(exp);
    }
    check_refusals();
    return test_finish();
}
