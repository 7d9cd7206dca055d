/* The optimizer_weights group: every layout a Keras generation wrote, mapped onto cornu's flat
 * optimizer state (trainer/optim.h: slot k of trainable element i at slots[k * n_trainable + i]),
 * and the layout cornu writes.
 *
 * Keras assigns optimizer weights purely by position (optimizer.set_weights), so the reader
 * reproduces each generation's order:
 *   Keras 1, Keras <= 2.0.5  optimizer.weights over the trainable weights SORTED BY NAME
 *                            (training.py sorted _collected_trainable_weights); SGD/Adam/Nadam
 *                            start with iterations (float32 before 2.0.8), RMSprop/Adagrad have
 *                            accumulators only; slot kinds in blocks (all m, then all v).
 *   Keras 2.0.6 - 2.3.x      the same blocks in layer (topological) order; SGD always keeps
 *                            moments; Adam (>= 2.1) adds vhats, shape (1,) dummies unless amsgrad;
 *                            2.3 adds iterations to RMSprop/Adagrad and m_schedule to Nadam.
 *   tf.keras OptimizerV2     iter, [Nadam momentum_cache], then blocks per slot kind.
 *   tf.keras >= 2.11 (new)   iteration, then m and v interleaved per variable, then vhats.
 *   Keras 3                  iteration, learning_rate, then m/v interleaved (Adam, AdamW, Nadam)
 *                            or blocks (RMSprop), u_product (Nadam) as a scalar.
 * Scalars are told apart from slot tensors by rank; slot tensors are checked against the shape of
 * the weight they belong to. Conversions applied to a layer's weights (Keras 1 LSTM gates,
 * Theano flips) are applied to its slots as well. */
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/keras_h5_impl.h"

typedef enum gen {
    GEN_SORTED,     /* Keras 1.x and Keras 2.0.0 - 2.0.5 */
    GEN_STANDALONE, /* Keras 2.0.6 - 2.3.x */
    GEN_TFV2,       /* tf.keras OptimizerV2 (2.2.4-tf ... 2.15, legacy optimizers) */
    GEN_TFNEW,      /* tf.keras >= 2.11 new optimizers */
    GEN_K3          /* Keras 3 */
} gen;

static const char *gen_name(gen g)
{
    switch (g) {
    case GEN_SORTED:
        return "Keras 1 / Keras <= 2.0.5";
    case GEN_STANDALONE:
        return "Keras 2.0.6 - 2.3";
    case GEN_TFV2:
        return "tf.keras OptimizerV2";
    case GEN_TFNEW:
        return "tf.keras >= 2.11 optimizer";
    case GEN_K3:
        return "Keras 3";
    }
    return "?";
}

/* Slots cornu keeps for this configuration (the table of trainer/optim.h). */
static int our_slots(const model_optim_config *c)
{
    switch (c->kind) {
    case OPTIM_SGD:
        return c->momentum > 0 ? 1 : 0;
    case OPTIM_ADAM:
    case OPTIM_ADAMW:
        return c->amsgrad ? 3 : 2;
    case OPTIM_RMSPROP:
        return 1 + (c->momentum > 0 ? 1 : 0) + (c->centered ? 1 : 0);
    case OPTIM_ADAGRAD:
        return 1;
    case OPTIM_NADAM:
        return 2;
    case OPTIM_COUNT:
        break;
    }
    return 0;
}

static bool optimizer_is_new(const char *json, size_t len)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (root == NULL)
        return false;
    bool is_new = false;
    const cJSON *oc = cJSON_GetObjectItemCaseSensitive(root, "optimizer_config");
    const cJSON *cn = cJSON_GetObjectItemCaseSensitive(oc, "class_name");
    const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(oc, "config");
    const cJSON *legacy = cJSON_GetObjectItemCaseSensitive(cfg, "is_legacy_optimizer");
    /* tf.keras >= 2.11 builds the new optimizer when is_legacy_optimizer is false (and the
     * legacy one when the key is missing); new optimizers register as "Custom>Adam". */
    if (cJSON_IsFalse(legacy))
        is_new = true;
    else if (legacy == NULL && cJSON_IsString(cn) && strncmp(cn->valuestring, "Custom>", 7) == 0)
        is_new = true;
    cJSON_Delete(root);
    return is_new;
}

static gen detect_gen(const char *version, const char *training, size_t training_len)
{
    if (version == NULL)
        return GEN_SORTED;
    int major = 0, minor = 0, patch = 0;
    if (sscanf(version, "%d.%d.%d", &major, &minor, &patch) < 1)
        return GEN_K3;
    if (major <= 1)
        return GEN_SORTED;
    if (major >= 3)
        return GEN_K3;
    bool tf = strstr(version, "-tf") != NULL || minor >= 4;
    if (!tf)
        return (minor == 0 && patch <= 5) ? GEN_SORTED : GEN_STANDALONE;
    return optimizer_is_new(training, training_len) ? GEN_TFNEW : GEN_TFV2;
}

/* The last component of an optimizer weight name without ":0" ("Adam/iter:0" -> "iter"). */
static void base_name(const char *name, char *buf, size_t len)
{
    const char *s = strrchr(name, '/');
    s = s ? s + 1 : name;
    snprintf(buf, len, "%s", s);
    size_t n = strlen(buf);
    if (n >= 2 && strcmp(buf + n - 2, ":0") == 0)
        buf[n - 2] = '\0';
}

typedef struct oentry {
    char *name;
    char *path;
    int rank;
    int64_t shape[TENSOR_MAX_RANK];
    bool is_float;
} oentry;

typedef struct ovar {
    int lp;  /* plan layer */
    int src; /* source index in that layer */
    const char *name;
} ovar;

static int cmp_var_name(const void *a, const void *b)
{
    const ovar *x = a, *y = b;
    /* Python sorts str by code point, which for UTF-8 is byte order. */
    int c = strcmp(x->name, y->name);
    if (c != 0)
        return c;
    return x->lp != y->lp ? (x->lp < y->lp ? -1 : 1) : (x->src < y->src ? -1 : x->src > y->src);
}

/* Entry position of file slot kind f of optimizer variable j among the n-variable tensors. */
static int entry_index(gen g, optim_kind k, int f, int j, int n)
{
    bool interleaved = (g == GEN_TFNEW || g == GEN_K3) &&
                       (k == OPTIM_ADAM || k == OPTIM_ADAMW || k == OPTIM_NADAM);
    if (interleaved && f < 2)
        return 2 * j + f;
    return f * n + j;
}

int kh5__read_optimizer(hid_t file, const kh5__plan *p, model *m, const char *keras_version,
                        const char *training_json, size_t training_len, kh5_warnings *w,
                        err_info *e)
{
    const char *where = "/optimizer_weights";
    const model_optim_config *c = &m->train.optim;
    int rc = ERR_OK;
    hid_t g = H5I_INVALID_HID;
    kh5__strs names = {0, NULL};
    oentry *ent = NULL;
    int *tens = NULL; /* indices of rank >= 1 entries, in order */
    ovar *vars = NULL;
    int *var_of = NULL; /* [lp][src] -> optimizer variable, flattened */
    int *var_base = NULL;
    const char **paths = NULL;
    (void)w;

    gen gn = detect_gen(keras_version, training_json, training_len);
    g = H5Gopen2(file, where, H5P_DEFAULT);
    if (g < 0) {
        rc = err_set(e, ERR_FORMAT, "%s: not a group", where);
        goto done;
    }
    if ((rc = kh5__attr_read_list(g, where, "weight_names", &names, NULL, e)) != ERR_OK)
        goto done;
    ent = calloc((size_t)names.n + 1, sizeof *ent);
    tens = calloc((size_t)names.n + 1, sizeof *tens);
    if (ent == NULL || tens == NULL) {
        rc = err_set(e, ERR_NOMEM, "out of memory");
        goto done;
    }
    int n_tens = 0;
    bool have_iter = false, have_lr = false, have_prod = false;
    double iter = 0, lr = 0, prod = 0;
    for (int i = 0; i < names.n; i++) {
        oentry *o = &ent[i];
        o->name = names.s[i];
        size_t l = strlen(where) + strlen(o->name) + 2;
        o->path = malloc(l);
        if (o->path == NULL) {
            rc = err_set(e, ERR_NOMEM, "out of memory");
            goto done;
        }
        snprintf(o->path, l, "%s/%s", where, o->name);
        if ((rc = kh5__dset_shape(file, o->path, &o->rank, o->shape, &o->is_float, e)) != ERR_OK)
            goto done;
        if (o->rank >= 1) {
            if (!o->is_float) {
                rc = err_set(e, ERR_FORMAT, "%s: integer dtype, expected a float slot", o->path);
                goto done;
            }
            tens[n_tens++] = i;
            continue;
        }
        /* Scalars: the iteration counter (int64, float32 before Keras 2.0.8), Keras 3's
         * learning_rate, Nadam's momentum-schedule product. */
        char base[128];
        base_name(o->name, base, sizeof base);
        double v;
        if ((rc = kh5__dset_read_scalar(file, o->path, &v, e)) != ERR_OK)
            goto done;
        if (strcmp(base, "learning_rate") == 0 && !have_lr) {
            have_lr = true;
            lr = v;
        } else if (!have_iter) {
            have_iter = true;
            iter = v;
        } else if (c->kind == OPTIM_NADAM && !have_prod) {
            have_prod = true;
            prod = v;
        } else {
            rc = err_set(e, ERR_FORMAT, "%s: unexpected scalar in %s's optimizer state", o->path,
                         model_optim_name(c->kind));
            goto done;
        }
    }
    if (have_iter &&
        (!isfinite(iter) || iter < 0 || iter > 9007199254740992.0 || iter != floor(iter))) {
        rc = err_set(e, ERR_FORMAT, "%s: iteration counter %g is not a count", where, iter);
        goto done;
    }

    /* The optimizer's variables: the trainable saved tensors, in layer order or sorted by
     * name (Keras <= 2.0.5). */
    int n_vars = 0;
    var_base = calloc((size_t)p->n + 1, sizeof *var_base);
    if (var_base == NULL) {
        rc = err_set(e, ERR_NOMEM, "out of memory");
        goto done;
    }
    int n_src_total = 0;
    for (int i = 0; i < p->n; i++) {
        var_base[i] = n_src_total;
        n_src_total += p->l[i].n_src;
        for (int s = 0; s < p->l[i].n_src; s++)
            n_vars += p->l[i].src[s].trainable;
    }
    vars = calloc((size_t)n_vars + 1, sizeof *vars);
    var_of = malloc(((size_t)n_src_total + 1) * sizeof *var_of);
    if (vars == NULL || var_of == NULL) {
        rc = err_set(e, ERR_NOMEM, "out of memory");
        goto done;
    }
    int nv = 0;
    for (int i = 0; i < p->n; i++)
        for (int s = 0; s < p->l[i].n_src; s++) {
            var_of[var_base[i] + s] = -1;
            if (p->l[i].src[s].trainable)
                vars[nv++] = (ovar){i, s, p->l[i].src[s].name};
        }
    if (gn == GEN_SORTED)
        qsort(vars, (size_t)n_vars, sizeof *vars, cmp_var_name);
    for (int j = 0; j < n_vars; j++)
        var_of[var_base[vars[j].lp] + vars[j].src] = j;

    /* Which slot kinds the file holds, and which of them cornu keeps (always a prefix). */
    int ours = our_slots(c);
    int kinds = 0;
    if (n_tens > 0) {
        if (n_vars == 0 || n_tens % n_vars != 0) {
            rc = err_set(e, ERR_SHAPE,
                         "%s: %d slot tensors for %d trainable weights (%s layout, %s)", where,
                         n_tens, n_vars, gen_name(gn), model_optim_name(c->kind));
            goto done;
        }
        kinds = n_tens / n_vars;
        bool old = gn == GEN_SORTED || gn == GEN_STANDALONE;
        bool ok = kinds == ours;
        /* Standalone SGD keeps moments even with momentum 0 (cornu keeps none); standalone
         * Adam >= 2.1 keeps shape-(1,) dummy vhats unless amsgrad. */
        if (old && c->kind == OPTIM_SGD && ours == 0 && kinds == 1)
            ok = true;
        if (old && (c->kind == OPTIM_ADAM || c->kind == OPTIM_ADAMW) && !c->amsgrad && kinds == 3)
            ok = true;
        if (!ok) {
            rc = err_set(e, ERR_SHAPE,
                         "%s: %d slot tensors per trainable weight (%d tensors, %d weights, %s "
                         "layout), but %s with this configuration keeps %d",
                         where, kinds, n_tens, n_vars, gen_name(gn), model_optim_name(c->kind),
                         ours);
            goto done;
        }
        /* Every kept slot tensor must have its weight's saved shape. */
        for (int f = 0; f < ours; f++)
            for (int j = 0; j < n_vars; j++) {
                const oentry *o = &ent[tens[entry_index(gn, c->kind, f, j, n_vars)]];
                const kh5__src *s = &p->l[vars[j].lp].src[vars[j].src];
                bool same = o->rank == s->rank;
                for (int d = 0; same && d < s->rank; d++)
                    same = o->shape[d] == s->shape[d];
                if (!same) {
                    char a[96], b[96];
                    tensor_shape_str(o->rank, o->shape, a, sizeof a);
                    tensor_shape_str(s->rank, s->shape, b, sizeof b);
                    rc = err_set(e, ERR_SHAPE,
                                 "%s: shape %s, expected %s as weight %s (layer \"%s\"; %s "
                                 "layout)",
                                 o->path, a, b, s->name, m->layers[p->l[vars[j].lp].layer].name,
                                 gen_name(gn));
                    goto done;
                }
            }
    }

    /* Everything checked: fill the state. */
    if (n_tens > 0 && ours > 0) {
        if ((rc = model_opt_state_alloc(m, ours, e)) != ERR_OK)
            goto done;
        for (int pi = 0; pi < p->n && rc == ERR_OK; pi++) {
            const kh5__lplan *lp = &p->l[pi];
            free(paths);
            paths = calloc((size_t)lp->n_src + 1, sizeof *paths);
            if (paths == NULL) {
                rc = err_set(e, ERR_NOMEM, "out of memory");
                goto done;
            }
            for (int f = 0; f < ours && rc == ERR_OK; f++) {
                for (int s = 0; s < lp->n_src; s++) {
                    int j = var_of[var_base[pi] + s];
                    paths[s] =
                        j < 0 ? NULL : ent[tens[entry_index(gn, c->kind, f, j, n_vars)]].path;
                }
                for (int r = 0; r < lp->n_rec && rc == ERR_OK; r++) {
                    const kh5__recipe *rec = &lp->rec[r];
                    const model_weight *mw = &m->weights[rec->weight];
                    if (!mw->trainable)
                        continue;
                    float *dst = m->opt.slots + (size_t)f * m->n_trainable + mw->offset;
                    rc = kh5__load_recipe(file, lp, rec, m, paths, dst, e);
                }
            }
        }
        if (rc != ERR_OK)
            goto done;
    }
    m->opt.iterations = have_iter ? (int64_t)iter : 0;
    if (c->kind == OPTIM_NADAM)
        /* A stored product is kept as is; without one, 0 asks the optimizer to recompute it
         * from iterations (trainer/optim.h). */
        m->opt.scalars[0] = have_prod ? prod : 0.0;
    if (have_lr && m->train.optim.lr.kind == SCHED_CONSTANT && isfinite(lr) && lr >= 0)
        /* Keras 3 restores its learning_rate variable, which callbacks may have changed. */
        m->train.optim.lr.initial = lr;
done:
    free(paths);
    free(var_base);
    free(var_of);
    free(vars);
    if (ent != NULL)
        for (int i = 0; i < names.n; i++)
            free(ent[i].path);
    free(ent);
    free(tens);
    kh5__strs_free(&names);
    if (g >= 0)
        H5Gclose(g);
    if (rc != ERR_OK && rc != ERR_NOMEM)
        err_wrap(e, "optimizer state (%s)", model_optim_name(c->kind));
    return rc;
}

/* ---- writing ---- */

/* tf.keras OptimizerV2 slot names, in slot order (trainer/optim.h order). */
static const char *v2_slot_name(const model_optim_config *c, int k)
{
    switch (c->kind) {
    case OPTIM_SGD:
        return "momentum";
    case OPTIM_ADAM:
    case OPTIM_ADAMW:
    case OPTIM_NADAM:
        return k == 0 ? "m" : k == 1 ? "v" : "vhat";
    case OPTIM_RMSPROP:
        if (k == 0)
            return "rms";
        if (k == 1 && c->momentum > 0)
            return "momentum";
        return "mg";
    case OPTIM_ADAGRAD:
        return "accumulator";
    case OPTIM_COUNT:
        break;
    }
    return "slot";
}

typedef struct wentry {
    char name[KH5__PATH_MAX];
    hid_t type;
    int rank;
    const int64_t *shape;
    const void *data;
} wentry;

int kh5__write_optimizer(hid_t file, const model *m, const char *training_json, size_t training_len,
                         kh5__raw *raw, err_info *e)
{
    const model_optim_config *c = &m->train.optim;
    const char *oname = model_optim_name(c->kind);
    int ns = our_slots(c);
    if (m->opt.n_slots != 0 && m->opt.n_slots != ns)
        return err_set(e, ERR_CONFIG,
                       "optimizer state has %d slots per weight, %s with this configuration "
                       "keeps %d",
                       m->opt.n_slots, oname, ns);
    /* A compiled but never trained Keras model has no optimizer weights either. */
    if (ns > 0 && m->opt.n_slots == 0 && m->opt.iterations == 0)
        return ERR_OK;
    int n_tw = 0;
    for (int i = 0; i < m->n_weights; i++)
        n_tw += m->weights[i].trainable;
    int n_ent = 2 + ns * n_tw;
    int rc = ERR_OK;
    wentry *ent = calloc((size_t)n_ent, sizeof *ent);
    const char **names = calloc((size_t)n_ent, sizeof *names);
    float *fresh = NULL;
    hid_t g = H5I_INVALID_HID;
    int64_t iter = m->opt.iterations;
    float prod = (float)m->opt.scalars[0];
    static const int64_t no_shape[1] = {0};
    if (ent == NULL || names == NULL) {
        rc = err_set(e, ERR_NOMEM, "out of memory");
        goto done;
    }
    if (ns > 0 && m->opt.n_slots == 0) {
        /* Iterations without slots: write the state Keras starts from. */
        size_t biggest = 1;
        for (int i = 0; i < m->n_weights; i++)
            if (m->weights[i].count > biggest)
                biggest = m->weights[i].count;
        fresh = malloc(biggest * sizeof *fresh);
        if (fresh == NULL) {
            rc = err_set(e, ERR_NOMEM, "out of memory");
            goto done;
        }
        float v = c->kind == OPTIM_ADAGRAD ? (float)c->initial_accumulator_value : 0.0f;
        for (size_t i = 0; i < biggest; i++)
            fresh[i] = v;
    }
    int n = 0;
    /* The layout must be the one of the optimizer class tf.keras builds from the
     * training_config written next to it: with "is_legacy_optimizer": false (tf.keras >= 2.11,
     * needed for AdamW, which has no OptimizerV2 class) iteration, then m and v interleaved per
     * variable, then vhats; otherwise OptimizerV2: iter, Nadam's momentum_cache, then one block
     * per slot kind. */
    bool is_new = optimizer_is_new(training_json, training_len);
    wentry *it = &ent[n++];
    if (is_new)
        snprintf(it->name, sizeof it->name, "iteration:0");
    else
        snprintf(it->name, sizeof it->name, "%s/iter:0", oname);
    it->type = H5T_NATIVE_INT64;
    it->rank = 0;
    it->shape = no_shape;
    it->data = &iter;
    if (c->kind == OPTIM_NADAM) {
        wentry *mc = &ent[n++];
        snprintf(mc->name, sizeof mc->name, "%s/momentum_cache:0", oname);
        mc->type = H5T_NATIVE_FLOAT;
        mc->rank = 0;
        mc->shape = no_shape;
        mc->data = &prod;
    }
    int base = n;
    int j = 0;
    for (int wi = 0; wi < m->n_weights; wi++) {
        const model_weight *mw = &m->weights[wi];
        if (!mw->trainable)
            continue;
        char var[2 * MODEL_NAME_MAX + 64];
        kh5__var_name(m, wi, var, sizeof var);
        size_t vl = strlen(var);
        if (vl >= 2 && strcmp(var + vl - 2, ":0") == 0)
            var[vl - 2] = '\0';
        for (int k = 0; k < ns; k++) {
            int pos;
            if (is_new)
                pos = k < 2 ? base + 2 * j + k : base + k * n_tw + j;
            else
                pos = base + k * n_tw + j;
            wentry *s = &ent[pos];
            if (is_new)
                snprintf(s->name, sizeof s->name, "%s/%s/%s:0", oname, v2_slot_name(c, k), var);
            else
                snprintf(s->name, sizeof s->name, "%s/%s/%s:0", oname, var, v2_slot_name(c, k));
            s->type = H5T_NATIVE_FLOAT;
            s->rank = mw->rank;
            s->shape = mw->shape;
            s->data = fresh != NULL
                          ? fresh
                          : (const void *)(m->opt.slots + (size_t)k * m->n_trainable + mw->offset);
        }
        j++;
    }
    n = base + ns * n_tw;
    hid_t gcpl = H5Pcreate(H5P_GROUP_CREATE);
    g = H5Gcreate2(file, "optimizer_weights", H5P_DEFAULT, gcpl, H5P_DEFAULT);
    if (gcpl >= 0)
        H5Pclose(gcpl);
    if (g < 0) {
        rc = err_set(e, ERR_IO, "/optimizer_weights: cannot create group");
        goto done;
    }
    for (int i = 0; i < n; i++)
        names[i] = ent[i].name;
    if ((rc = kh5__attr_write_list(g, "/optimizer_weights", "weight_names", n, names, e)) != ERR_OK)
        goto done;
    for (int i = 0; i < n && rc == ERR_OK; i++)
        /* fresh is freed below, before the raw spans are flushed: write it now. */
        rc = kh5__dset_write_raw(g, "/optimizer_weights", ent[i].name, ent[i].type, ent[i].rank,
                                 ent[i].shape, ent[i].data,
                                 fresh != NULL && ent[i].data == fresh ? NULL : raw, e);
done:
    if (g >= 0)
        H5Gclose(g);
    free(fresh);
    free(names);
    free(ent);
    return rc;
}
