/* formats/keras_json on real configs: every sidecar config in
 * ../shared/corpus/keras_h5_sidecar_configs and the model_config / training_config attributes
 * of every full-model file in ../shared/corpus/keras_h5 (read here straight through the HDF5 C
 * API). Layer counts, the weights (order and shapes) and the training settings are checked
 * against expected/<file>.json (what h5py reads) and MANIFEST.md; every model is then written
 * and parsed back. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <hdf5.h>

#include "test_kjson_util.h"

#define CORPUS_H5 CORNU_CORPUS "/keras_h5"
#define CORPUS_SIDECAR CORNU_CORPUS "/keras_h5_sidecar_configs"

/* A string attribute of the root group (fixed or variable length), or NULL if absent. */
static char *h5_root_attr(const char *path, const char *name, size_t *len)
{
    char *out = NULL;
    hid_t f = H5I_INVALID_HID, a = H5I_INVALID_HID, t = H5I_INVALID_HID, mt = H5I_INVALID_HID;
    H5E_BEGIN_TRY
    {
        f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        if (f >= 0 && H5Aexists(f, name) > 0)
            a = H5Aopen(f, name, H5P_DEFAULT);
        if (a >= 0)
            t = H5Aget_type(a);
        if (t >= 0 && H5Tget_class(t) == H5T_STRING) {
            if (H5Tis_variable_str(t) > 0) {
                char *s = NULL;
                mt = H5Tcopy(H5T_C_S1);
                H5Tset_size(mt, H5T_VARIABLE);
                H5Tset_cset(mt, H5Tget_cset(t));
                if (H5Aread(a, mt, &s) >= 0 && s != NULL) {
                    *len = strlen(s);
                    out = malloc(*len + 1);
                    if (out != NULL)
                        memcpy(out, s, *len + 1);
                    H5free_memory(s);
                }
            } else {
                size_t n = H5Tget_size(t);
                out = calloc(n + 1, 1);
                if (out != NULL && H5Aread(a, t, out) < 0) {
                    free(out);
                    out = NULL;
                }
                *len = n; /* NUL padding included: the parser must ignore it */
            }
        }
        if (mt >= 0)
            H5Tclose(mt);
        if (t >= 0)
            H5Tclose(t);
        if (a >= 0)
            H5Aclose(a);
        if (f >= 0)
            H5Fclose(f);
    }
    H5E_END_TRY;
    return out;
}

static cJSON *load_json(const char *path)
{
    size_t n = 0;
    char *text = kjt_slurp(path, &n);
    if (text == NULL)
        return NULL;
    cJSON *j = cJSON_ParseWithLength(text, n);
    free(text);
    return j;
}

/* Checks m against expected/<h5name>.json: config layer count (plus the InputLayer cornu adds
 * to a Sequential model without one), total parameters, and the weights in Keras order with
 * their shapes (Keras 1 files store an LSTM as 12 tensors: only the total is compared). */
static void check_expected(const model *m, const char *h5name, bool full_file)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/expected/%s.json", CORPUS_H5, h5name);
    cJSON *x = load_json(path);
    EXPECT_MSG(x != NULL, "%s: cannot read", path);
    if (x == NULL)
        return;
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(x, "weights");
    size_t total = 0;
    int nw = cJSON_GetArraySize(w);
    bool keras1 = false;
    const cJSON *it;
    cJSON_ArrayForEach(it, w)
    {
        const cJSON *shape = cJSON_GetArrayItem(it, 2);
        size_t c = 1;
        const cJSON *d;
        cJSON_ArrayForEach(d, shape)
        {
            c *= (size_t)d->valuedouble;
        }
        total += c;
        const char *wn = cJSON_GetArrayItem(it, 1)->valuestring;
        if (strstr(wn, "_W_i") != NULL || strstr(wn, "_W") != NULL)
            keras1 = true;
    }
    EXPECT_MSG(m->n_params == total, "%s: %zu params, h5py sees %zu", h5name, m->n_params, total);
    if (!keras1) {
        EXPECT_MSG(m->n_weights == nw, "%s: %d weights, h5py sees %d", h5name, m->n_weights, nw);
        for (int i = 0; i < nw && i < m->n_weights; i++) {
            const cJSON *e = cJSON_GetArrayItem(w, i);
            const cJSON *shape = cJSON_GetArrayItem(e, 2);
            const model_weight *mw = &m->weights[i];
            bool same =
                cJSON_GetArraySize(shape) == mw->rank &&
                strcmp(cJSON_GetArrayItem(e, 0)->valuestring, m->layers[mw->layer].name) == 0;
            for (int d = 0; same && d < mw->rank; d++)
                same = (int64_t)cJSON_GetArrayItem(shape, d)->valuedouble == mw->shape[d];
            /* Names: the files use every generation's spelling ("gru_2/kernel:0" before
             * tf.keras 2.3, "gru/gru_cell/kernel:0" after, Keras 3 without ":0" and maybe with a
             * model prefix), so compare the short name after the last '/'. */
            const char *wn = cJSON_GetArrayItem(e, 1)->valuestring;
            const char *mine = strrchr(mw->name, '/');
            const char *theirs = strrchr(wn, '/');
            char a[MODEL_NAME_MAX], b[MODEL_NAME_MAX];
            snprintf(a, sizeof a, "%s", mine != NULL ? mine + 1 : mw->name);
            snprintf(b, sizeof b, "%s", theirs != NULL ? theirs + 1 : wn);
            a[strcspn(a, ":")] = '\0';
            b[strcspn(b, ":")] = '\0';
            same = same && strcmp(a, b) == 0;
            EXPECT_MSG(same, "%s: weight %d is %s, h5py sees %s", h5name, i, mw->name, wn);
        }
    }
    if (full_file) {
        const cJSON *lc = cJSON_GetObjectItemCaseSensitive(x, "layers_cfg");
        int n_cfg = cJSON_GetArraySize(lc);
        int added = m->layers[0].kind == LAYER_INPUT &&
                            strcmp(cJSON_GetArrayItem(lc, 0)->valuestring, "InputLayer") != 0
                        ? 1
                        : 0;
        EXPECT_MSG(m->n_layers == n_cfg + added, "%s: %d layers, config lists %d", h5name,
                   m->n_layers, n_cfg);
        for (int i = 0; i < n_cfg && i + added < m->n_layers; i++) {
            const char *cls = cJSON_GetArrayItem(lc, i)->valuestring;
            const char *mine = model_kind_class_name(m->layers[i + added].kind);
            EXPECT_MSG(strcmp(cls, mine) == 0, "%s: layer %d is %s, config says %s", h5name, i,
                       mine, cls);
        }
        const char *cls = cJSON_GetObjectItemCaseSensitive(x, "model_class")->valuestring;
        EXPECT_MSG(m->sequential == (strcmp(cls, "Sequential") == 0), "%s: model class %s", h5name,
                   cls);
    }
    cJSON_Delete(x);
}

static void roundtrip(const model *m, const char *what)
{
    char *text = NULL, *text2 = NULL;
    err_info e = {0};
    int rc = kjson_model_write(m, &text, &e);
    EXPECT_MSG(rc == ERR_OK, "%s: write: %s", what, e.msg);
    if (rc != ERR_OK)
        return;
    model *back = NULL, *back2 = NULL;
    rc = kjson_model_parse(text, strlen(text), what, &back, &e);
    EXPECT_MSG(rc == ERR_OK, "%s: parse(write): %s", what, e.msg);
    if (rc == ERR_OK) {
        char why[512] = "";
        /* Initializer spellings are normalised by the writer ("glorot_uniform" becomes
         * GlorotUniform): compare without them once, then exactly after a second trip. */
        EXPECT_MSG(kjt_model_eq(m, back, 0, why, sizeof why), "%s: %s", what, why);
        EXPECT(kjson_model_write(back, &text2, &e) == ERR_OK);
        rc = text2 != NULL ? kjson_model_parse(text2, strlen(text2), what, &back2, &e) : ERR_NOMEM;
        EXPECT(rc == ERR_OK && kjt_model_eq(back, back2, 1, why, sizeof why));
        EXPECT_MSG(text2 != NULL && strcmp(text, text2) == 0, "%s: writing is not stable", what);
    }
    free(text);
    free(text2);
    model_destroy(back);
    model_destroy(back2);
}

static void drop_warning(void *ctx, const char *msg)
{
    (void)msg;
    (*(int *)ctx)++;
}

typedef struct train_expect {
    const char *file;
    optim_kind optim;
    loss_kind loss;
    int n_losses;
    int n_metrics;
    int dropped; /* unsupported metrics in the file */
} train_expect;

/* What each full-model file's training_config holds (MANIFEST.md and the expected JSON files). */
static const train_expect TRAIN[] = {
    {"keras1.2.2_seq_lstm_rmsprop_tf.h5", OPTIM_RMSPROP, LOSS_MSE, 1, 0, 0},
    {"keras2.0.4_func_embedding_gru_rmsprop.h5", OPTIM_RMSPROP, LOSS_CCE, 1, 1, 1},
    {"keras2.1.3_seq_conv2d_bn_activation_adam.h5", OPTIM_ADAM, LOSS_MSE, 1, 0, 0},
    {"keras2.1.3_seq_embedding_conv1d_dropout_adam.h5", OPTIM_ADAM, LOSS_MSE, 1, 0, 0},
    {"keras2.1.3_seq_simplernn_rmsprop.h5", OPTIM_RMSPROP, LOSS_MSE, 1, 0, 0},
    {"keras2.2.4_seq_cnn_maxpool_sgd.h5", OPTIM_SGD, LOSS_CCE, 1, 1, 0},
    {"keras3.10.0_func_8inputs_2outputs_embedding_concat_adam.h5", OPTIM_ADAM, LOSS_SPARSE_CCE, 1,
     1, 0},
    {"keras3.10.0_seq_conv2d_bn_maxpool_dropout_adam.h5", OPTIM_ADAM, LOSS_CCE, 1, 1, 0},
    {"keras3.5.0_seq_dense_adam.h5", OPTIM_ADAM, LOSS_BCE, 1, 1, 0},
    {"keras3.6.0_seq_embedding_gru_adam.h5", OPTIM_ADAM, LOSS_CCE, 1, 1, 0},
    {"tfkeras2.10.0_seq_gru_resetafter_adam.h5", OPTIM_ADAM, LOSS_MSE, 1, 0, 0},
    {"tfkeras2.12.0_seq_dense_newadam.h5", OPTIM_ADAM, LOSS_BCE, 1, 1, 0},
    {"tfkeras2.3.0_func_resnet_conv_bn_add_adam.h5", OPTIM_ADAM, LOSS_CCE, 1, 2, 0},
    {"tfkeras2.4.0_func_dense_concat_sgd.h5", OPTIM_SGD, LOSS_MSE, 2, 0, 0},
    {"tfkeras2.5.0_seq_conv2d_bn_gap_dropout_adam.h5", OPTIM_ADAM, LOSS_CCE, 1, 1, 0},
    {"tfkeras2.9.0_seq_lstm_sgd.h5", OPTIM_SGD, LOSS_MSE, 1, 0, 1},
};

static void check_training(model *m, const char *file, const char *json, size_t len)
{
    const train_expect *t = NULL;
    for (size_t i = 0; i < sizeof TRAIN / sizeof TRAIN[0]; i++)
        if (strcmp(TRAIN[i].file, file) == 0)
            t = &TRAIN[i];
    EXPECT_MSG(t != NULL, "%s: training_config not expected", file);
    if (t == NULL)
        return;
    err_info e = {0};
    int dropped = 0;
    int rc = kjson_training_parse(json, len, file, m, &e);
    if (t->dropped > 0) {
        EXPECT_MSG(rc == ERR_UNSUPPORTED && strstr(e.msg, "metric"), "%s: %s", file, e.msg);
        rc = kjson_training_parse_ex(json, len, file, m, KJSON_SKIP_UNKNOWN_METRICS, drop_warning,
                                     &dropped, &e);
    }
    EXPECT_MSG(rc == ERR_OK, "%s: %s", file, e.msg);
    if (rc != ERR_OK)
        return;
    EXPECT_MSG(dropped == t->dropped, "%s: %d metrics dropped", file, dropped);
    EXPECT_MSG(
        m->train.compiled && m->train.optim.kind == t->optim && m->train.n_losses == t->n_losses &&
            m->train.losses[0].kind == t->loss && m->train.n_metrics == t->n_metrics,
        "%s: optimizer %s, %d losses (%s), %d metrics", file, model_optim_name(m->train.optim.kind),
        m->train.n_losses, model_loss_name(m->train.losses[0].kind), m->train.n_metrics);
    /* The training config survives writing too. */
    char *text = NULL;
    rc = kjson_training_write(m, &text, &e);
    EXPECT_MSG(rc == ERR_OK, "%s: %s", file, e.msg);
    model_train_config saved = m->train;
    if (text != NULL) {
        model *copy = NULL;
        /* Parse into a second model so that the first keeps its config for comparison. */
        char *cfg = NULL;
        EXPECT(kjson_model_write(m, &cfg, &e) == ERR_OK);
        if (cfg != NULL && kjson_model_parse(cfg, strlen(cfg), file, &copy, &e) == ERR_OK) {
            rc = kjson_training_parse(text, strlen(text), file, copy, &e);
            char why[256] = "";
            EXPECT_MSG(rc == ERR_OK && kjt_train_eq(&saved, &copy->train, why, sizeof why),
                       "%s: training round trip: %s %s", file, e.msg, why);
        }
        free(cfg);
        model_destroy(copy);
    }
    free(text);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted names of the files in dir ending in suffix; returns the count. */
static int list_dir(const char *dir, const char *suffix, char names[][256], int max)
{
    DIR *d = opendir(dir);
    int n = 0;
    if (d == NULL)
        return 0;
    struct dirent *ent;
    size_t sl = strlen(suffix);
    while ((ent = readdir(d)) != NULL && n < max) {
        size_t l = strlen(ent->d_name);
        if (l > sl && strcmp(ent->d_name + l - sl, suffix) == 0)
            snprintf(names[n++], 256, "%s", ent->d_name);
    }
    closedir(d);
    char *ptrs[64];
    for (int i = 0; i < n; i++)
        ptrs[i] = names[i];
    qsort(ptrs, (size_t)n, sizeof ptrs[0], cmp_str);
    char tmp[64][256];
    for (int i = 0; i < n; i++)
        snprintf(tmp[i], 256, "%s", ptrs[i]);
    memcpy(names, tmp, (size_t)n * 256);
    return n;
}

static void test_h5_configs(void)
{
    static char names[64][256];
    int n = list_dir(CORPUS_H5, ".h5", names, 64);
    EXPECT_MSG(n >= 20, "only %d .h5 files in %s", n, CORPUS_H5);
    int configs = 0, trainings = 0;
    for (int i = 0; i < n; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", CORPUS_H5, names[i]);
        size_t len = 0, tlen = 0;
        char *cfg = h5_root_attr(path, "model_config", &len);
        if (cfg == NULL)
            continue; /* weights-only files: their configs are the sidecars */
        configs++;
        model *m = NULL;
        err_info e = {0};
        int rc = kjson_model_parse(cfg, len, names[i], &m, &e);
        EXPECT_MSG(rc == ERR_OK, "%s: %s", names[i], e.msg);
        if (rc == ERR_OK) {
            check_expected(m, names[i], true);
            roundtrip(m, names[i]);
            char *tc = h5_root_attr(path, "training_config", &tlen);
            if (tc != NULL) {
                trainings++;
                check_training(m, names[i], tc, tlen);
            }
            free(tc);
        }
        model_destroy(m);
        free(cfg);
    }
    EXPECT_MSG(configs == 18, "%d files with a model_config (MANIFEST lists 18)", configs);
    EXPECT_MSG(trainings == 16, "%d files with a training_config", trainings);
}

static void test_sidecars(void)
{
    static char names[64][256];
    int n = list_dir(CORPUS_SIDECAR, ".json", names, 64);
    EXPECT_MSG(n == 5, "%d sidecar configs (MANIFEST lists 5)", n);
    for (int i = 0; i < n; i++) {
        char path[1024], h5[300];
        snprintf(path, sizeof path, "%s/%s", CORPUS_SIDECAR, names[i]);
        size_t len = 0;
        char *text = kjt_slurp(path, &len);
        EXPECT_MSG(text != NULL, "%s: cannot read", path);
        if (text == NULL)
            continue;
        model *m = NULL;
        err_info e = {0};
        int rc = kjson_model_parse(text, len, names[i], &m, &e);
        EXPECT_MSG(rc == ERR_OK, "%s: %s", names[i], e.msg);
        if (rc == ERR_OK) {
            /* <stem>.json pairs with <stem>.h5 */
            snprintf(h5, sizeof h5, "%.*s.h5", (int)(strlen(names[i]) - 5), names[i]);
            check_expected(m, h5, false);
            roundtrip(m, names[i]);
        }
        model_destroy(m);
        free(text);
    }
}

int main(void)
{
    H5open();
    test_h5_configs();
    test_sidecars();
    return test_finish();
}
