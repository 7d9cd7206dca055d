#include "launch/cli.h"

#include <stdlib.h>
#include <string.h>

#include "trainer/data.h"

#define FASHION_DIR "/usr/share/datasets/fashion-mnist"

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Splits a comma list into at most max items (copied into store). */
static int split_list(const char *s, char *store, size_t cap, char **items, int max)
{
    snprintf(store, cap, "%s", s);
    int n = 0;
    for (char *tok = store; tok != NULL && n < max;) {
        char *comma = strchr(tok, ',');
        if (comma != NULL)
            *comma = '\0';
        items[n++] = tok;
        tok = comma ? comma + 1 : NULL;
    }
    return n;
}

static int add_source(cli_dataset *d, const char *path, const char *h5_dataset, err_info *e)
{
    if (d->n_src >= 16)
        return err_set(e, ERR_USAGE, "too many data arrays (at most 16)");
    data_source *s = NULL;
    int rc = cli_input_check(path, "data", e);
    if (rc != ERR_OK)
        return rc;
    if (h5_dataset != NULL)
        rc = data_source_open_h5(path, h5_dataset, &s, e);
    else if (ends_with(path, ".npy"))
        rc = data_source_open_npy(path, &s, e);
    else
        rc = data_source_open_idx(path, &s, e);
    if (rc != ERR_OK)
        return rc;
    d->src[d->n_src++] = s;
    return ERR_OK;
}

static float auto_scale(const data_source *s, double scale)
{
    if (scale >= 0)
        return (float)scale;
    /* uint8 arrays are images: scale to [0, 1] like the usual Keras preprocessing. */
    return data_source_dtype(s) == DTYPE_U8 ? 1.0f / 255.0f : 1.0f;
}

int cli_dataset_open(const char *spec, const cli_data_opts *o, cli_dataset *out, err_info *e)
{
    memset(out, 0, sizeof *out);
    int n_in = o->n_inputs > 0 ? o->n_inputs : 1;
    int n_out = o->n_outputs >= 0 ? o->n_outputs : 1;
    int rc = ERR_OK;
    char store[8192];
    char *items[16];
    if (strcmp(spec, "fashion-mnist") == 0 || strcmp(spec, "fashion-mnist:test") == 0 ||
        strcmp(spec, "fashion-mnist:train") == 0) {
        char tx[4096], ty[4096], vx[4096], vy[4096];
        rc = data_fashion_mnist_paths(FASHION_DIR, tx, ty, vx, vy, e);
        if (rc == ERR_IO)
            e->code = ERR_USAGE; /* a missing package is bad setup, exit status 2 */
        rc = e->code == ERR_USAGE && rc != ERR_OK ? ERR_USAGE : rc;
        bool test = o->test_split || strcmp(spec, "fashion-mnist:test") == 0;
        if (rc == ERR_OK)
            rc = add_source(out, test ? vx : tx, NULL, e);
        if (rc == ERR_OK)
            rc = add_source(out, test ? vy : ty, NULL, e);
        if (rc != ERR_OK)
            goto fail;
        out->d.n_x = 1;
        out->d.n_y = 1;
        out->d.x[0].src = out->src[0];
        out->d.x[0].scale = auto_scale(out->src[0], o->scale);
        out->d.y[0].src = out->src[1];
        out->d.y[0].scale = 1.0f;
        return ERR_OK;
    }
    if (ends_with(spec, ".h5") || ends_with(spec, ".hdf5")) {
        char xs[4096], ys[4096];
        char *xn[16], *yn[16];
        int nx = split_list(o->x_datasets ? o->x_datasets : "x", xs, sizeof xs, xn, 16);
        int ny =
            n_out == 0 ? 0 : split_list(o->y_datasets ? o->y_datasets : "y", ys, sizeof ys, yn, 16);
        for (int i = 0; i < nx && rc == ERR_OK; i++)
            rc = add_source(out, spec, xn[i], e);
        for (int i = 0; i < ny && rc == ERR_OK; i++)
            rc = add_source(out, spec, yn[i], e);
        if (rc != ERR_OK)
            goto fail;
        out->d.n_x = nx;
        out->d.n_y = ny;
        for (int i = 0; i < nx; i++) {
            out->d.x[i].src = out->src[i];
            out->d.x[i].scale = auto_scale(out->src[i], o->scale);
        }
        for (int i = 0; i < ny; i++) {
            out->d.y[i].src = out->src[nx + i];
            out->d.y[i].scale = 1.0f;
        }
        return ERR_OK;
    }
    int n = split_list(spec, store, sizeof store, items, 16);
    if (n != n_in + n_out) {
        rc = err_set(e, ERR_USAGE,
                     "data \"%s\": expected %d comma-separated files (%d inputs, %d targets), "
                     "found %d; or use fashion-mnist or an .h5 file",
                     spec, n_in + n_out, n_in, n_out, n);
        goto fail;
    }
    for (int i = 0; i < n && rc == ERR_OK; i++)
        rc = add_source(out, items[i], NULL, e);
    if (rc != ERR_OK)
        goto fail;
    out->d.n_x = n_in;
    out->d.n_y = n_out;
    for (int i = 0; i < n_in; i++) {
        out->d.x[i].src = out->src[i];
        out->d.x[i].scale = auto_scale(out->src[i], o->scale);
    }
    for (int i = 0; i < n_out; i++) {
        out->d.y[i].src = out->src[n_in + i];
        out->d.y[i].scale = 1.0f;
    }
    return ERR_OK;
fail:
    cli_dataset_close(out);
    return rc;
}

void cli_dataset_close(cli_dataset *d)
{
    for (int i = 0; i < d->n_src; i++)
        data_source_destroy(d->src[i]);
    memset(d, 0, sizeof *d);
}
