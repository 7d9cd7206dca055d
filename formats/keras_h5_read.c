/* Reading Keras legacy .h5 files: probing, matching saved layers to the model by topology (as
 * Keras's load_weights_from_hdf5_group does), the Keras 1 / Theano weight conversions of
 * preprocess_weights_for_loading, and the public read entry points. */
#include "formats/keras_h5.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/keras_h5_impl.h"
#include "formats/keras_json.h"

const char *kh5_kind_name(kh5_kind k)
{
    switch (k) {
    case KH5_FULL:
        return "Keras full-model .h5 (model.save)";
    case KH5_WEIGHTS:
        return "Keras weights-only .h5 (model.save_weights)";
    case KH5_KERAS3_WEIGHTS:
        return "Keras 3 native weights file (*.weights.h5)";
    case KH5_KERAS_ARCHIVE:
        return "Keras 3 .keras archive (zip)";
    case KH5_KIND_COUNT:
        break;
    }
    return "unknown";
}

/* ---- small helpers ---- */

static char *path_join(const char *a, const char *b, const char *c)
{
    size_t n = strlen(a) + strlen(b) + (c ? strlen(c) : 0) + 3;
    char *p = malloc(n);
    if (p == NULL)
        return NULL;
    if (c != NULL)
        snprintf(p, n, "%s/%s/%s", a, b, c);
    else
        snprintf(p, n, "%s/%s", a, b);
    return p;
}

static void shape_str(int rank, const int64_t *shape, char *buf, size_t len)
{
    tensor_shape_str(rank, shape, buf, len);
}

static bool is_conv(layer_kind k)
{
    return k == LAYER_CONV1D || k == LAYER_CONV2D;
}

static int64_t shape_count(int rank, const int64_t *shape)
{
    int64_t n = 1;
    for (int i = 0; i < rank; i++)
        n *= shape[i];
    return n;
}

/* ---- recipes ---- */

/* Shape of a recipe's result; false (with why) when the saved shapes cannot be combined. */
static bool recipe_shape(const kh5__lplan *lp, const kh5__recipe *r, int *rank, int64_t *shape,
                         char *why, size_t len)
{
    const kh5__src *s0 = &lp->src[r->parts[0]];
    int rk = s0->rank;
    int64_t sh[TENSOR_MAX_RANK];
    memcpy(sh, s0->shape, sizeof sh);
    if (r->n_parts > 1) {
        if (rk < 1) {
            snprintf(why, len, "cannot concatenate scalars");
            return false;
        }
        for (int i = 1; i < r->n_parts; i++) {
            const kh5__src *si = &lp->src[r->parts[i]];
            bool same = si->rank == rk;
            for (int d = 0; same && d < rk - 1; d++)
                same = si->shape[d] == sh[d];
            if (!same) {
                char a[96], b[96];
                shape_str(s0->rank, s0->shape, a, sizeof a);
                shape_str(si->rank, si->shape, b, sizeof b);
                snprintf(why, len, "gate tensors %s and %s do not concatenate", a, b);
                return false;
            }
            sh[rk - 1] += si->shape[rk - 1];
        }
    }
    if (r->has_t1) {
        if (rk != 4) {
            snprintf(why, len, "a legacy kernel layout needs rank 4, found rank %d", rk);
            return false;
        }
        int64_t t[4];
        for (int i = 0; i < 4; i++)
            t[i] = sh[r->t1[i]];
        memcpy(sh, t, sizeof t);
    }
    if (r->drop1) {
        if (rk < 2 || sh[1] != 1) {
            snprintf(why, len, "legacy Conv1D kernel without a unit axis 1");
            return false;
        }
        for (int i = 1; i < rk - 1; i++)
            sh[i] = sh[i + 1];
        rk--;
    }
    if (r->has_t2) {
        if (rk != 4) {
            snprintf(why, len, "kernel of rank %d cannot be transposed (3, 2, 0, 1)", rk);
            return false;
        }
        int64_t t[4] = {sh[3], sh[2], sh[0], sh[1]};
        memcpy(sh, t, sizeof t);
    }
    *rank = rk;
    memcpy(shape, sh, sizeof sh);
    return true;
}

/* numpy.transpose(in, perm): out.shape[i] = in.shape[perm[i]]. */
static void transpose(const float *in, int rank, const int64_t *shape, const int *perm, float *out)
{
    int64_t in_stride[TENSOR_MAX_RANK], oshape[TENSOR_MAX_RANK], idx[TENSOR_MAX_RANK];
    int64_t s = 1;
    for (int i = rank - 1; i >= 0; i--) {
        in_stride[i] = s;
        s *= shape[i];
    }
    for (int i = 0; i < rank; i++) {
        oshape[i] = shape[perm[i]];
        idx[i] = 0;
    }
    int64_t total = shape_count(rank, shape);
    for (int64_t o = 0; o < total; o++) {
        int64_t src = 0;
        for (int i = 0; i < rank; i++)
            src += idx[i] * in_stride[perm[i]];
        out[o] = in[src];
        for (int i = rank - 1; i >= 0; i--) {
            if (++idx[i] < oshape[i])
                break;
            idx[i] = 0;
        }
    }
}

/* Keras's conv_utils.convert_kernel: reverse every axis except the last two. */
static void flip_leading(const float *in, int rank, const int64_t *shape, float *out)
{
    int64_t block = shape[rank - 1] * shape[rank - 2];
    int lead = rank - 2;
    int64_t n_lead = shape_count(lead, shape);
    int64_t idx[TENSOR_MAX_RANK] = {0};
    for (int64_t l = 0; l < n_lead; l++) {
        int64_t flipped = 0;
        for (int i = 0; i < lead; i++)
            flipped = flipped * shape[i] + (shape[i] - 1 - idx[i]);
        memcpy(out + l * block, in + flipped * block, (size_t)block * sizeof *out);
        for (int i = lead - 1; i >= 0; i--) {
            if (++idx[i] < shape[i])
                break;
            idx[i] = 0;
        }
    }
}

void kh5__recipe_apply(const kh5__lplan *lp, const kh5__recipe *r, const float *const *parts,
                       float *tmp, float *out)
{
    const kh5__src *s0 = &lp->src[r->parts[0]];
    int rk = s0->rank;
    int64_t sh[TENSOR_MAX_RANK];
    memcpy(sh, s0->shape, sizeof sh);
    /* cur is the current data; dst alternates between out and tmp. */
    const float *cur = parts[0];
    float *bufs[2] = {out, tmp};
    int next = 0;
    if (r->n_parts > 1) {
        int64_t lead = shape_count(rk - 1, sh);
        int64_t width = 0;
        for (int i = 0; i < r->n_parts; i++)
            width += lp->src[r->parts[i]].shape[rk - 1];
        float *dst = bufs[next];
        int64_t at = 0;
        for (int i = 0; i < r->n_parts; i++) {
            int64_t c = lp->src[r->parts[i]].shape[rk - 1];
            for (int64_t l = 0; l < lead; l++)
                memcpy(dst + l * width + at, parts[i] + l * c, (size_t)c * sizeof *dst);
            at += c;
        }
        sh[rk - 1] = width;
        cur = dst;
        next ^= 1;
    }
    if (r->has_t1) {
        float *dst = bufs[next];
        transpose(cur, 4, sh, r->t1, dst);
        int64_t t[4];
        for (int i = 0; i < 4; i++)
            t[i] = sh[r->t1[i]];
        memcpy(sh, t, sizeof t);
        cur = dst;
        next ^= 1;
    }
    if (r->drop1) {
        /* Removing a unit axis keeps the element order. */
        for (int i = 1; i < rk - 1; i++)
            sh[i] = sh[i + 1];
        rk--;
    }
    if (r->flip && rk >= 3) {
        float *dst = bufs[next];
        flip_leading(cur, rk, sh, dst);
        cur = dst;
        next ^= 1;
    }
    if (r->has_t2) {
        static const int perm[4] = {3, 2, 0, 1};
        float *dst = bufs[next];
        transpose(cur, 4, sh, perm, dst);
        int64_t t[4] = {sh[3], sh[2], sh[0], sh[1]};
        memcpy(sh, t, sizeof t);
        cur = dst;
        next ^= 1;
    }
    if (cur != out)
        memcpy(out, cur, (size_t)shape_count(rk, sh) * sizeof *out);
}

static bool recipe_is_identity(const kh5__recipe *r)
{
    return r->n_parts == 1 && !r->has_t1 && !r->drop1 && !r->flip && !r->has_t2;
}

/* The recipes of one layer: identity, or Keras's preprocess_weights_for_loading conversions. */
static int build_recipes(const model *m, kh5__lplan *lp, const char *gpath, bool keras1,
                         bool theano, err_info *e)
{
    const model_layer *L = &m->layers[lp->layer];
    int nw = L->n_weights;
    lp->rec = calloc((size_t)(nw > 0 ? nw : 1), sizeof *lp->rec);
    if (lp->rec == NULL)
        return err_set(e, ERR_NOMEM, "out of memory");
    lp->n_rec = nw;
    for (int i = 0; i < nw; i++) {
        lp->rec[i].weight = L->weight0 + i;
        lp->rec[i].n_parts = 1;
        lp->rec[i].parts[0] = i;
    }
    if (keras1 && L->kind == LAYER_LSTM && lp->n_src == 12 && nw == 3) {
        /* Keras 1 saved W_i, U_i, b_i, W_c, U_c, b_c, W_f, U_f, b_f, W_o, U_o, b_o; Keras 2
         * concatenates the gates in the order i, f, c, o. */
        static const int g[3][4] = {{0, 6, 3, 9}, {1, 7, 4, 10}, {2, 8, 5, 11}};
        for (int i = 0; i < 3; i++) {
            lp->rec[i].n_parts = 4;
            memcpy(lp->rec[i].parts, g[i], sizeof g[i]);
        }
    } else if (keras1 && L->kind == LAYER_GRU && lp->n_src == 9 && nw == 3) {
        /* Keras 1 GRU: W_z, U_z, b_z, W_r, U_r, b_r, W_h, U_h, b_h; gate order kept. */
        static const int g[3][3] = {{0, 3, 6}, {1, 4, 7}, {2, 5, 8}};
        for (int i = 0; i < 3; i++) {
            lp->rec[i].n_parts = 3;
            memcpy(lp->rec[i].parts, g[i], sizeof g[i]);
        }
    } else if (lp->n_src != nw) {
        char names[256] = "";
        size_t at = 0;
        for (int i = 0; i < lp->n_src && at + 4 < sizeof names; i++) {
            int k = snprintf(names + at, sizeof names - at, "%s%s", i ? ", " : "", lp->src[i].name);
            if (k < 0)
                break;
            at += (size_t)k;
        }
        return err_set(e, ERR_SHAPE,
                       "%s/%s: weight count mismatch: layer \"%s\" (%s) expects %d weights, the "
                       "file has %d (%s)",
                       gpath, lp->group, L->name, model_kind_class_name(L->kind), nw, lp->n_src,
                       names);
    }
    if (nw > 0 && is_conv(L->kind)) {
        kh5__recipe *k0 = &lp->rec[0];
        const kh5__src *s = &lp->src[0];
        if (keras1 && L->kind == LAYER_CONV1D && s->rank == 4) {
            /* Keras 1 Convolution1D kept a 2-D kernel: (k, 1, in, filters) for TensorFlow or
             * the legacy (filters, in, k, 1); Keras 2 transposes the latter, then drops axis 1. */
            if (!(s->shape[0] == L->cfg.kernel_size[0] && s->shape[1] == 1 &&
                  s->shape[3] == L->cfg.filters)) {
                static const int t[4] = {2, 3, 1, 0};
                k0->has_t1 = true;
                memcpy(k0->t1, t, sizeof t);
            }
            k0->drop1 = true;
        }
        if (keras1 && L->kind == LAYER_CONV2D && L->cfg.channels_first && s->rank == 4) {
            /* dim_ordering 'th': (filters, in, kh, kw) -> (kh, kw, in, filters). */
            static const int t[4] = {2, 3, 1, 0};
            k0->has_t1 = true;
            memcpy(k0->t1, t, sizeof t);
        }
        if (theano)
            k0->flip = true;
        int rk;
        int64_t sh[TENSOR_MAX_RANK];
        char why[160];
        const model_weight *mw = &m->weights[k0->weight];
        if (recipe_shape(lp, k0, &rk, sh, why, sizeof why) && rk == 4 && mw->rank == 4) {
            bool same = true;
            for (int d = 0; d < 4; d++)
                same = same && sh[d] == mw->shape[d];
            if (!same)
                k0->has_t2 = true; /* Keras's last resort for kernels from other layouts */
        }
    }
    /* Every shape must now be exactly the model's. */
    for (int i = 0; i < lp->n_rec; i++) {
        const kh5__recipe *r = &lp->rec[i];
        const model_weight *mw = &m->weights[r->weight];
        const kh5__src *s0 = &lp->src[r->parts[0]];
        int rk;
        int64_t sh[TENSOR_MAX_RANK];
        char why[160];
        if (!recipe_shape(lp, r, &rk, sh, why, sizeof why))
            return err_set(e, ERR_SHAPE, "%s: %s (layer \"%s\")", s0->path, why, L->name);
        bool same = rk == mw->rank;
        for (int d = 0; same && d < rk; d++)
            same = sh[d] == mw->shape[d];
        if (!same) {
            char a[96], b[96];
            shape_str(rk, sh, a, sizeof a);
            shape_str(mw->rank, mw->shape, b, sizeof b);
            if (recipe_is_identity(r))
                return err_set(e, ERR_SHAPE, "%s: shape %s, expected %s (layer \"%s\")", s0->path,
                               a, b, L->name);
            return err_set(e, ERR_SHAPE,
                           "%s (and %d more): converted shape %s, expected %s (layer \"%s\")",
                           s0->path, r->n_parts - 1, a, b, L->name);
        }
        for (int p = 0; p < r->n_parts; p++)
            lp->src[r->parts[p]].trainable = mw->trainable;
    }
    return ERR_OK;
}

/* ---- the plan ---- */

void kh5__plan_free(kh5__plan *p)
{
    if (p == NULL)
        return;
    for (int i = 0; i < p->n; i++) {
        kh5__lplan *lp = &p->l[i];
        for (int s = 0; s < lp->n_src; s++) {
            free(lp->src[s].name);
            free(lp->src[s].path);
        }
        free(lp->src);
        free(lp->rec);
        free(lp->group);
    }
    free(p->l);
    memset(p, 0, sizeof *p);
}

typedef struct saved_layer {
    char *name;
    kh5__strs weights;
} saved_layer;

static void saved_free(saved_layer *s, int n)
{
    for (int i = 0; i < n; i++) {
        free(s[i].name);
        kh5__strs_free(&s[i].weights);
    }
    free(s);
}

static bool has_suffix(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

int kh5__plan_weights(hid_t file, const char *gpath, const model *m, kh5__plan *p, kh5_warnings *w,
                      err_info *e)
{
    const char *where = gpath[0] ? gpath : "/";
    int rc = ERR_OK;
    hid_t g = H5I_INVALID_HID;
    kh5__strs names = {0, NULL};
    saved_layer *saved = NULL;
    int n_saved = 0;
    char *backend = NULL;
    kh5__plan plan;
    memset(&plan, 0, sizeof plan);

    g = H5Gopen2(file, where, H5P_DEFAULT);
    if (g < 0) {
        rc = err_set(e, ERR_FORMAT, "%s: group missing", where);
        goto done;
    }
    /* Keras reads keras_version and backend from the weights group itself; without
     * keras_version it assumes Keras 1 (legacy_h5_format.load_weights_from_hdf5_group). */
    if ((rc = kh5__ohdr_check(g, where, e)) != ERR_OK)
        goto done;
    int has_ver = kh5__attr_exists(g, "keras_version");
    int has_be = kh5__attr_exists(g, "backend");
    if (has_ver < 0 || has_be < 0) {
        rc = err_set(e, ERR_FORMAT, "%s: cannot list attributes", where);
        goto done;
    }
    plan.keras1 = has_ver == 0;
    if (has_be && (rc = kh5__attr_read_str(g, where, "backend", &backend, NULL, e)) != ERR_OK)
        goto done;
    bool present = false;
    if ((rc = kh5__attr_read_list(g, where, "layer_names", &names, &present, e)) != ERR_OK)
        goto done;
    saved = calloc((size_t)names.n + 1, sizeof *saved);
    if (saved == NULL) {
        rc = err_set(e, ERR_NOMEM, "out of memory");
        goto done;
    }
    bool any_colon = false, any_name = false;
    for (int i = 0; i < names.n; i++) {
        char *lpath = path_join(gpath, names.s[i], NULL);
        if (lpath == NULL) {
            rc = err_set(e, ERR_NOMEM, "out of memory");
            goto done;
        }
        hid_t lg =
            kh5__link_exists(file, lpath) ? H5Gopen2(file, lpath, H5P_DEFAULT) : H5I_INVALID_HID;
        if (lg < 0) {
            rc = err_set(e, ERR_FORMAT, "%s: group of layer \"%s\" (listed in layer_names) missing",
                         lpath, names.s[i]);
            free(lpath);
            goto done;
        }
        kh5__strs wn = {0, NULL};
        rc = kh5__attr_read_list(lg, lpath, "weight_names", &wn, NULL, e);
        H5Gclose(lg);
        free(lpath);
        if (rc != ERR_OK)
            goto done;
        if (wn.n == 0) {
            kh5__strs_free(&wn);
            continue;
        }
        for (int k = 0; k < wn.n; k++) {
            any_name = true;
            any_colon = any_colon || has_suffix(wn.s[k], ":0");
        }
        saved[n_saved].name = names.s[i];
        names.s[i] = NULL;
        saved[n_saved].weights = wn;
        n_saved++;
    }
    /* Convolutions saved by Theano are flipped relative to TensorFlow's correlation. Keras 1
     * files record no backend; their TensorFlow weight names end in ":0", Theano's do not. */
    plan.theano =
        backend != NULL ? strcmp(backend, "theano") == 0 : (plan.keras1 && any_name && !any_colon);

    int n_model = 0;
    for (int i = 0; i < m->n_layers; i++)
        n_model += m->layers[i].n_weights > 0;
    if (n_model != n_saved) {
        char detail[2 * MODEL_NAME_MAX] = "";
        if (!present) {
            snprintf(detail, sizeof detail, " (no layer_names attribute)");
        } else {
            int k = 0;
            for (int i = 0; i < m->n_layers; i++) {
                if (m->layers[i].n_weights == 0)
                    continue;
                if (k >= n_saved) {
                    snprintf(detail, sizeof detail,
                             "; first model layer without saved weights: "
                             "\"%s\"",
                             m->layers[i].name);
                    break;
                }
                k++;
            }
            if (detail[0] == '\0' && n_saved > n_model)
                snprintf(detail, sizeof detail, "; first saved layer without a model layer: \"%s\"",
                         saved[n_model].name);
        }
        rc = err_set(e, ERR_SHAPE,
                     "%s: layer count mismatch: the model has %d layers with weights, the file "
                     "has %d%s",
                     where, n_model, n_saved, detail);
        goto done;
    }
    plan.l = calloc((size_t)n_saved + 1, sizeof *plan.l);
    if (plan.l == NULL) {
        rc = err_set(e, ERR_NOMEM, "out of memory");
        goto done;
    }
    int k = 0;
    for (int li = 0; li < m->n_layers; li++) {
        const model_layer *L = &m->layers[li];
        if (L->n_weights == 0)
            continue;
        kh5__lplan *lp = &plan.l[plan.n++];
        lp->layer = li;
        lp->group = saved[k].name;
        saved[k].name = NULL;
        int ns = saved[k].weights.n;
        lp->src = calloc((size_t)ns, sizeof *lp->src);
        if (lp->src == NULL) {
            rc = err_set(e, ERR_NOMEM, "out of memory");
            goto done;
        }
        lp->n_src = ns;
        for (int s = 0; s < ns; s++) {
            kh5__src *src = &lp->src[s];
            src->name = saved[k].weights.s[s];
            saved[k].weights.s[s] = NULL;
            src->path = path_join(gpath, lp->group, src->name);
            if (src->path == NULL) {
                rc = err_set(e, ERR_NOMEM, "out of memory");
                goto done;
            }
            bool is_float = false;
            if ((rc = kh5__dset_shape(file, src->path, &src->rank, src->shape, &is_float, e)) !=
                ERR_OK) {
                err_wrap(e, "layer \"%s\"", L->name);
                goto done;
            }
            if (!is_float) {
                rc = err_set(e, ERR_FORMAT,
                             "%s: integer dtype, expected float weights (layer "
                             "\"%s\")",
                             src->path, L->name);
                goto done;
            }
        }
        if ((rc = build_recipes(m, lp, gpath, plan.keras1, plan.theano, e)) != ERR_OK)
            goto done;
        if (strcmp(lp->group, L->name) != 0)
            kh5__warn(w,
                      "%s/%s: saved layer \"%s\" loaded into model layer \"%s\" (layers are "
                      "matched by order, as Keras does)",
                      gpath, lp->group, lp->group, L->name);
        k++;
    }
    /* tf.keras >= 2.7 and Keras 3 keep the model's own (non-layer) weights here; cornu models
     * have none, so any saved one is a mismatch, as in Keras. */
    char tl[KH5__PATH_MAX];
    snprintf(tl, sizeof tl, "%s/top_level_model_weights", gpath);
    if (kh5__link_exists(file, tl)) {
        hid_t tg = H5Gopen2(file, tl, H5P_DEFAULT);
        kh5__strs tw = {0, NULL};
        if (tg < 0) {
            rc = err_set(e, ERR_FORMAT, "%s: not a group", tl);
            goto done;
        }
        rc = kh5__attr_read_list(tg, tl, "weight_names", &tw, NULL, e);
        H5Gclose(tg);
        int ntw = tw.n;
        kh5__strs_free(&tw);
        if (rc != ERR_OK)
            goto done;
        if (ntw != 0) {
            rc = err_set(e, ERR_SHAPE, "%s: %d top-level weights saved, the model has none", tl,
                         ntw);
            goto done;
        }
    }
    *p = plan;
    memset(&plan, 0, sizeof plan);
done:
    kh5__plan_free(&plan);
    saved_free(saved, n_saved);
    kh5__strs_free(&names);
    free(backend);
    if (g >= 0)
        H5Gclose(g);
    return rc;
}

int kh5__load_recipe(hid_t file, const kh5__lplan *lp, const kh5__recipe *r, const model *m,
                     const char *const *paths, float *dst, err_info *e)
{
    const model_weight *mw = &m->weights[r->weight];
    if (recipe_is_identity(r))
        return kh5__dset_read_f32(file, paths[r->parts[0]], dst, mw->count, e);
    int rc = ERR_OK;
    float *parts[4] = {NULL, NULL, NULL, NULL};
    float *tmp = NULL;
    size_t bytes;
    for (int i = 0; i < r->n_parts && rc == ERR_OK; i++) {
        const kh5__src *s = &lp->src[r->parts[i]];
        if ((rc = tensor_nbytes(DTYPE_F32, s->rank, s->shape, &bytes, e)) != ERR_OK)
            break;
        parts[i] = malloc(bytes ? bytes : 1);
        if (parts[i] == NULL) {
            rc =
                err_set(e, ERR_NOMEM, "%s: out of memory for %zu bytes", paths[r->parts[i]], bytes);
            break;
        }
        rc = kh5__dset_read_f32(file, paths[r->parts[i]], parts[i], bytes / sizeof(float), e);
    }
    if (rc == ERR_OK) {
        tmp = malloc(mw->count ? mw->count * sizeof *tmp : 1);
        if (tmp == NULL)
            rc = err_set(e, ERR_NOMEM, "out of memory");
    }
    if (rc == ERR_OK)
        kh5__recipe_apply(lp, r, (const float *const *)parts, tmp, dst);
    for (int i = 0; i < 4; i++)
        free(parts[i]);
    free(tmp);
    return rc;
}

int kh5__load_weights(hid_t file, const kh5__plan *p, model *m, kh5_warnings *w, err_info *e)
{
    for (int i = 0; i < p->n; i++) {
        const kh5__lplan *lp = &p->l[i];
        const char **paths = calloc((size_t)lp->n_src + 1, sizeof *paths);
        if (paths == NULL)
            return err_set(e, ERR_NOMEM, "out of memory");
        for (int s = 0; s < lp->n_src; s++)
            paths[s] = lp->src[s].path;
        int rc = ERR_OK;
        for (int k = 0; k < lp->n_rec && rc == ERR_OK; k++) {
            const kh5__recipe *r = &lp->rec[k];
            const model_weight *mw = &m->weights[r->weight];
            float *dst = m->params + mw->offset;
            rc = kh5__load_recipe(file, lp, r, m, paths, dst, e);
            if (rc != ERR_OK) {
                err_wrap(e, "layer \"%s\"", m->layers[lp->layer].name);
                break;
            }
            size_t bad = 0;
            for (size_t j = 0; j < mw->count; j++)
                bad += !isfinite(dst[j]);
            if (bad > 0)
                kh5__warn(w, "%s: %zu of %zu values are NaN or Inf (layer \"%s\")",
                          lp->src[r->parts[0]].path, bad, mw->count, m->layers[lp->layer].name);
        }
        free(paths);
        if (rc != ERR_OK)
            return rc;
    }
    return ERR_OK;
}

/* ---- public entry points ---- */

static bool zip_magic(const unsigned char *b, size_t n)
{
    return n >= 4 && b[0] == 'P' && b[1] == 'K' && b[2] == 3 && b[3] == 4;
}

static int check_archive_path(const char *path, err_info *e)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return ERR_OK; /* kh5__open_path reports it */
    unsigned char b[4];
    size_t n = fread(b, 1, sizeof b, f);
    fclose(f);
    if (zip_magic(b, n))
        return err_set(e, ERR_UNSUPPORTED,
                       "a Keras 3 .keras archive (a zip with config.json and model.weights.h5), "
                       "not a legacy .h5 file: not read yet; in Keras, save the model with "
                       "model.save('model.h5')");
    return ERR_OK;
}

static int refuse_kind(kh5_kind kind, bool want_full, err_info *e)
{
    if (kind == KH5_KERAS3_WEIGHTS)
        return err_set(e, ERR_UNSUPPORTED,
                       "a Keras 3 native weights file (*.weights.h5: groups layers/ and vars/, no "
                       "layer_names), not the legacy .h5 format: not read yet; in Keras 3, save "
                       "the model with model.save('model.h5')");
    if (want_full && kind == KH5_WEIGHTS)
        return err_set(e, ERR_FORMAT,
                       "a weights-only file (model.save_weights: root attribute layer_names, no "
                       "model_config): it holds no architecture; load it into a model built from "
                       "its JSON config (cornu convert --config)");
    return ERR_OK;
}

static void prefix_warnings(kh5_warnings *w, const char *source)
{
    if (w == NULL)
        return;
    int n = w->count < KH5_WARN_MAX ? w->count : KH5_WARN_MAX;
    size_t ls = strlen(source), cap = sizeof w->msg[0] - 1;
    for (int i = 0; i < n; i++) {
        /* "<source>: <message>", truncated to the fixed size. */
        char tmp[ERR_MSG_MAX];
        size_t at = ls < cap ? ls : cap;
        memcpy(tmp, source, at);
        if (at + 2 <= cap) {
            memcpy(tmp + at, ": ", 2);
            at += 2;
        }
        size_t lm = strnlen(w->msg[i], sizeof w->msg[i]);
        if (lm > cap - at)
            lm = cap - at;
        memcpy(tmp + at, w->msg[i], lm);
        tmp[at + lm] = '\0';
        memcpy(w->msg[i], tmp, sizeof tmp);
    }
}

static void warn_metric(void *ctx, const char *msg)
{
    kh5__warn(ctx, "%s", msg); /* kjson names the attribute */
}

static int read_full(hid_t file, model **out, kh5_warnings *w, err_info *e)
{
    int rc;
    kh5_kind kind;
    model *m = NULL;
    char *version = NULL, *config = NULL, *training = NULL;
    size_t config_len = 0, training_len = 0;
    kh5__plan plan;
    memset(&plan, 0, sizeof plan);

    if ((rc = kh5__probe_file(file, &kind, e)) != ERR_OK)
        goto done;
    if ((rc = refuse_kind(kind, true, e)) != ERR_OK)
        goto done;
    if (kh5__attr_exists(file, "keras_version") > 0 &&
        (rc = kh5__attr_read_str(file, "/", "keras_version", &version, NULL, e)) != ERR_OK)
        goto done;
    if ((rc = kh5__attr_read_str(file, "/", "model_config", &config, &config_len, e)) != ERR_OK)
        goto done;
    /* The version tells which Keras wrote the config (hard_sigmoid changed meaning in 3). */
    unsigned dialect = version != NULL && version[0] == '3' ? KJSON_KERAS3 : KJSON_KERAS2;
    if (version != NULL && version[0] != '1' && version[0] != '2' && version[0] != '3')
        dialect = 0;
    if ((rc = kjson_model_parse_ex(config, config_len, "/ attribute model_config", dialect, &m,
                                   e)) != ERR_OK)
        goto done;
    if (!m->built && (rc = model_build(m, e)) != ERR_OK) {
        err_wrap(e, "/ attribute model_config");
        goto done;
    }
    if (!kh5__link_exists(file, "model_weights")) {
        rc = err_set(e, ERR_FORMAT, "/model_weights: group missing");
        goto done;
    }
    if ((rc = kh5__plan_weights(file, "/model_weights", m, &plan, w, e)) != ERR_OK)
        goto done;
    if ((rc = kh5__load_weights(file, &plan, m, w, e)) != ERR_OK)
        goto done;
    if (kh5__attr_exists(file, "training_config") > 0) {
        if ((rc = kh5__attr_read_str(file, "/", "training_config", &training, &training_len, e)) !=
            ERR_OK)
            goto done;
        /* A metric cornu lacks does not stop the model from loading. */
        if ((rc = kjson_training_parse_ex(training, training_len, "/ attribute training_config", m,
                                          dialect | KJSON_SKIP_UNKNOWN_METRICS, warn_metric, w,
                                          e)) != ERR_OK)
            goto done;
    }
    if (kh5__link_exists(file, "optimizer_weights")) {
        if (training == NULL)
            kh5__warn(w, "/optimizer_weights: ignored, the file has no training_config (Keras "
                         "would not compile the model)");
        else if ((rc = kh5__read_optimizer(file, &plan, m, version, training, training_len, w,
                                           e)) != ERR_OK)
            goto done;
    }
    *out = m;
    m = NULL;
done:
    kh5__plan_free(&plan);
    model_destroy(m);
    free(version);
    free(config);
    free(training);
    return rc;
}

int kh5_read(const char *path, model **out, err_info *e)
{
    return kh5_read_ex(path, out, NULL, e);
}

int kh5_read_ex(const char *path, model **out, kh5_warnings *w, err_info *e)
{
    int rc = ERR_OK;
    if (w != NULL)
        memset(w, 0, sizeof *w);
    rc = check_archive_path(path, e);
    if (rc == ERR_OK) {
        H5E_BEGIN_TRY
        {
            hid_t file = H5I_INVALID_HID;
            rc = kh5__open_path(path, &file, e);
            if (rc == ERR_OK) {
                rc = read_full(file, out, w, e);
                H5Fclose(file);
            }
        }
        H5E_END_TRY;
    }
    if (rc != ERR_OK)
        err_wrap(e, "%s", path);
    prefix_warnings(w, path);
    return rc;
}

int kh5_read_mem(const void *buf, size_t len, const char *source, model **out, kh5_warnings *w,
                 err_info *e)
{
    int rc = ERR_OK;
    if (w != NULL)
        memset(w, 0, sizeof *w);
    if (buf != NULL && zip_magic(buf, len)) {
        rc = err_set(e, ERR_UNSUPPORTED, "a Keras 3 .keras archive (zip), not a legacy .h5 file");
    } else {
        H5E_BEGIN_TRY
        {
            hid_t file = H5I_INVALID_HID;
            rc = kh5__open_mem(buf, len, &file, e);
            if (rc == ERR_OK) {
                rc = read_full(file, out, w, e);
                H5Fclose(file);
            }
        }
        H5E_END_TRY;
    }
    if (rc != ERR_OK)
        err_wrap(e, "%s", source);
    prefix_warnings(w, source);
    return rc;
}

static int read_weights_file(hid_t file, model *m, kh5_warnings *w, err_info *e)
{
    kh5_kind kind;
    int rc = kh5__probe_file(file, &kind, e);
    if (rc != ERR_OK)
        return rc;
    if ((rc = refuse_kind(kind, false, e)) != ERR_OK)
        return rc;
    /* Like Keras's load_weights, a full-model file gives its model_weights group. */
    const char *gpath = "";
    if (kind == KH5_FULL) {
        if (!kh5__link_exists(file, "model_weights"))
            return err_set(e, ERR_FORMAT, "/model_weights: group missing");
        gpath = "/model_weights";
    }
    kh5__plan plan;
    memset(&plan, 0, sizeof plan);
    rc = kh5__plan_weights(file, gpath, m, &plan, w, e);
    if (rc == ERR_OK)
        rc = kh5__load_weights(file, &plan, m, w, e);
    kh5__plan_free(&plan);
    return rc;
}

int kh5_read_weights(const char *path, model *m, err_info *e)
{
    return kh5_read_weights_ex(path, m, NULL, e);
}

int kh5_read_weights_ex(const char *path, model *m, kh5_warnings *w, err_info *e)
{
    int rc = ERR_OK;
    if (w != NULL)
        memset(w, 0, sizeof *w);
    if (m == NULL || !m->built)
        return err_set(e, ERR_USAGE, "%s: the model must be built before loading weights", path);
    rc = check_archive_path(path, e);
    if (rc == ERR_OK) {
        H5E_BEGIN_TRY
        {
            hid_t file = H5I_INVALID_HID;
            rc = kh5__open_path(path, &file, e);
            if (rc == ERR_OK) {
                rc = read_weights_file(file, m, w, e);
                H5Fclose(file);
            }
        }
        H5E_END_TRY;
    }
    if (rc != ERR_OK)
        err_wrap(e, "%s", path);
    prefix_warnings(w, path);
    return rc;
}

int kh5_probe(const char *path, kh5_kind *out, err_info *e)
{
    FILE *f = fopen(path, "rb");
    if (f != NULL) {
        unsigned char b[4];
        size_t n = fread(b, 1, sizeof b, f);
        fclose(f);
        if (zip_magic(b, n)) {
            *out = KH5_KERAS_ARCHIVE;
            return ERR_OK;
        }
    }
    int rc = ERR_OK;
    H5E_BEGIN_TRY
    {
        hid_t file = H5I_INVALID_HID;
        rc = kh5__open_path(path, &file, e);
        if (rc == ERR_OK) {
            rc = kh5__probe_file(file, out, e);
            H5Fclose(file);
        }
    }
    H5E_END_TRY;
    if (rc != ERR_OK)
        err_wrap(e, "%s", path);
    return rc;
}
