/* Writing Keras legacy .h5 files in the tf.keras 2.x dialect (what tf.keras 2.15's
 * hdf5_format.save_model_to_hdf5 / save_weights_to_hdf5_group produce), with list attributes as
 * fixed-length NULLPAD strings, the one encoding every Keras generation reads. */
#include "formats/keras_h5.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/keras_h5_impl.h"
#include "formats/keras_json.h"

void kh5__var_name(const model *m, int wi, char *buf, size_t len)
{
    const model_weight *mw = &m->weights[wi];
    const model_layer *L = &m->layers[mw->layer];
    /* The short name is the last component of the model's name, without ":0". */
    const char *s = strrchr(mw->name, '/');
    s = s ? s + 1 : mw->name;
    char shortn[MODEL_NAME_MAX];
    snprintf(shortn, sizeof shortn, "%s", s);
    size_t n = strlen(shortn);
    if (n >= 2 && strcmp(shortn + n - 2, ":0") == 0)
        shortn[n - 2] = '\0';
    /* tf.keras 2.x RNN layers own their weights through a cell: "lstm/lstm_cell/kernel:0". */
    const char *cell = NULL;
    switch (L->kind) {
    case LAYER_LSTM:
        cell = "lstm_cell";
        break;
    case LAYER_GRU:
        cell = "gru_cell";
        break;
    case LAYER_SIMPLERNN:
        cell = "simple_rnn_cell";
        break;
    default:
        break;
    }
    if (cell != NULL)
        snprintf(buf, len, "%s/%s/%s:0", L->name, cell, shortn);
    else
        snprintf(buf, len, "%s/%s:0", L->name, shortn);
}

/* Layers listed in layer_names: all of model.layers; a Sequential model's layers exclude its
 * InputLayer (tf.keras 2.x and Keras 3 Sequential.layers). */
static bool listed(const model *m, int li)
{
    return !(m->sequential && m->layers[li].kind == LAYER_INPUT);
}

typedef struct named {
    const char *name;
    int layer;
} named;

static int cmp_named(const void *a, const void *b)
{
    return strcmp(((const named *)a)->name, ((const named *)b)->name);
}

/* save_weights_to_hdf5_group: layer_names, backend, keras_version, one group per layer (created
 * sorted by name, as tf.keras >= 2.7), top_level_model_weights. */
static int write_weights_group(hid_t g, const char *where, const model *m, kh5__raw *raw,
                               err_info *e)
{
    int rc = ERR_OK;
    int n = 0;
    const char **names = calloc((size_t)m->n_layers + 1, sizeof *names);
    named *order = calloc((size_t)m->n_layers + 1, sizeof *order);
    const char **wnames = NULL;
    char(*wbuf)[KH5__PATH_MAX] = NULL;
    if (names == NULL || order == NULL) {
        rc = err_set(e, ERR_NOMEM, "out of memory");
        goto done;
    }
    int max_w = 0;
    for (int li = 0; li < m->n_layers; li++) {
        if (!listed(m, li))
            continue;
        if (strcmp(m->layers[li].name, "top_level_model_weights") == 0) {
            rc =
                err_set(e, ERR_CONFIG, "layer \"%s\": the name is reserved by the Keras .h5 format",
                        m->layers[li].name);
            goto done;
        }
        names[n] = m->layers[li].name;
        order[n] = (named){m->layers[li].name, li};
        n++;
        if (m->layers[li].n_weights > max_w)
            max_w = m->layers[li].n_weights;
    }
    if ((rc = kh5__attr_write_list(g, where, "layer_names", n, names, e)) != ERR_OK)
        goto done;
    /* The weights group stores backend and version as bytes (vlen ASCII) in every Keras. */
    if ((rc = kh5__attr_write_vlen(g, where, "backend", KH5_BACKEND, false, e)) != ERR_OK ||
        (rc = kh5__attr_write_vlen(g, where, "keras_version", KH5_KERAS_VERSION, false, e)) !=
            ERR_OK)
        goto done;
    qsort(order, (size_t)n, sizeof *order, cmp_named);
    wnames = calloc((size_t)max_w + 1, sizeof *wnames);
    wbuf = calloc((size_t)max_w + 1, sizeof *wbuf);
    if (wnames == NULL || wbuf == NULL) {
        rc = err_set(e, ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int k = 0; k < n && rc == ERR_OK; k++) {
        const model_layer *L = &m->layers[order[k].layer];
        char lpath[KH5__PATH_MAX];
        snprintf(lpath, sizeof lpath, "%s/%s", where[1] ? where : "", L->name);
        hid_t lg = H5Gcreate2(g, L->name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        if (lg < 0) {
            char why[256];
            kh5__h5_reason(why, sizeof why);
            rc = err_set(e, ERR_IO, "%s: cannot create the group of layer \"%s\" (%s)", lpath,
                         L->name, why);
            break;
        }
        for (int i = 0; i < L->n_weights; i++) {
            kh5__var_name(m, L->weight0 + i, wbuf[i], sizeof wbuf[i]);
            wnames[i] = wbuf[i];
        }
        rc = kh5__attr_write_list(lg, lpath, "weight_names", L->n_weights, wnames, e);
        for (int i = 0; i < L->n_weights && rc == ERR_OK; i++) {
            const model_weight *mw = &m->weights[L->weight0 + i];
            rc = kh5__dset_write_raw(lg, lpath, wbuf[i], H5T_NATIVE_FLOAT, mw->rank, mw->shape,
                                     m->params + mw->offset, raw, e);
        }
        H5Gclose(lg);
    }
    if (rc != ERR_OK)
        goto done;
    hid_t tg = H5Gcreate2(g, "top_level_model_weights", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (tg < 0) {
        rc = err_set(e, ERR_IO, "%s: cannot create top_level_model_weights", where);
        goto done;
    }
    rc = kh5__attr_write_list(tg, "top_level_model_weights", "weight_names", 0, NULL, e);
    H5Gclose(tg);
done:
    free(wbuf);
    free(wnames);
    free(order);
    free(names);
    return rc;
}

static int write_contents(hid_t file, const model *m, bool full, const char *config,
                          const char *training, kh5__raw *raw, err_info *e)
{
    int rc;
    if (!full)
        return write_weights_group(file, "/", m, raw, e);
    /* tf.keras writes model_metadata(): str values (vlen UTF-8), JSON as bytes (vlen ASCII). */
    if ((rc = kh5__attr_write_vlen(file, "/", "keras_version", KH5_KERAS_VERSION, true, e)) !=
            ERR_OK ||
        (rc = kh5__attr_write_vlen(file, "/", "backend", KH5_BACKEND, true, e)) != ERR_OK ||
        (rc = kh5__attr_write_vlen(file, "/", "model_config", config, false, e)) != ERR_OK)
        return rc;
    if (training != NULL &&
        (rc = kh5__attr_write_vlen(file, "/", "training_config", training, false, e)) != ERR_OK)
        return rc;
    hid_t g = H5Gcreate2(file, "model_weights", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0)
        return err_set(e, ERR_IO, "/model_weights: cannot create group");
    rc = write_weights_group(g, "/model_weights", m, raw, e);
    H5Gclose(g);
    if (rc == ERR_OK && training != NULL)
        rc = kh5__write_optimizer(file, m, training, strlen(training), raw, e);
    return rc;
}

/* Writes to PATH.tmp.<pid>, then renames over path; removes the temporary file on failure.
 * libhdf5 writes the metadata and allocates the large float datasets; their bytes go in
 * afterwards, straight from the model's buffers (kh5__raw_flush), so that they are written in
 * page-cache-friendly pieces without a staging copy. No fsync: like cp, the data is in the page
 * cache when this returns; the rename makes the file appear whole or not at all. */
static int write_atomic(const char *path, const model *m, bool full, const char *config,
                        const char *training, err_info *e)
{
    size_t n = strlen(path) + 32;
    char *tmp = malloc(n);
    if (tmp == NULL)
        return err_set(e, ERR_NOMEM, "out of memory");
    snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
    int rc = ERR_OK;
    kh5__raw raw = {0, 0, NULL};
    H5E_BEGIN_TRY
    {
        hid_t file = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
        if (file < 0) {
            char why[256];
            kh5__h5_reason(why, sizeof why);
            rc = err_set(e, ERR_IO, "cannot create %s (%s)", tmp, why);
        } else {
            rc = write_contents(file, m, full, config, training, &raw, e);
            if (H5Fclose(file) < 0 && rc == ERR_OK)
                rc = err_set(e, ERR_IO, "cannot close %s (disk full?)", tmp);
        }
    }
    H5E_END_TRY;
    if (rc == ERR_OK)
        rc = kh5__raw_flush(tmp, &raw, e);
    kh5__raw_free(&raw);
    if (rc == ERR_OK && rename(tmp, path) != 0)
        rc = err_set(e, ERR_IO, "cannot rename %s to the output name", tmp);
    if (rc != ERR_OK)
        remove(tmp);
    free(tmp);
    return rc;
}

int kh5_write(const char *path, const model *m, bool include_optimizer, err_info *e)
{
    if (m == NULL || !m->built)
        return err_set(e, ERR_USAGE, "%s: the model must be built before writing", path);
    char *config = NULL, *training = NULL;
    int rc = kjson_model_write(m, &config, e);
    if (rc == ERR_OK && include_optimizer && m->train.compiled)
        rc = kjson_training_write(m, &training, e);
    if (rc == ERR_OK)
        rc = write_atomic(path, m, true, config, training, e);
    free(config);
    free(training);
    if (rc != ERR_OK)
        err_wrap(e, "%s", path);
    return rc;
}

int kh5_write_weights(const char *path, const model *m, err_info *e)
{
    if (m == NULL || !m->built)
        return err_set(e, ERR_USAGE, "%s: the model must be built before writing", path);
    int rc = write_atomic(path, m, false, NULL, NULL, e);
    if (rc != ERR_OK)
        err_wrap(e, "%s", path);
    return rc;
}
