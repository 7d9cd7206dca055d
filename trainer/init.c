#include "trainer/init.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Keras' truncated normal cuts at two standard deviations; the standard deviation of a unit
 * normal truncated to [-2, 2] is 0.87962566103423978, which VarianceScaling divides out. */
#define INIT_TRUNC_STD 0.87962566103423978

void init_fans(int rank, const int64_t *shape, double *fan_in, double *fan_out)
{
    if (rank < 1) {
        *fan_in = *fan_out = 1.0;
    } else if (rank == 1) {
        *fan_in = *fan_out = (double)shape[0];
    } else if (rank == 2) {
        *fan_in = (double)shape[0];
        *fan_out = (double)shape[1];
    } else {
        double field = 1.0;
        for (int d = 0; d < rank - 2; d++)
            field *= (double)shape[d];
        *fan_in = (double)shape[rank - 2] * field;
        *fan_out = (double)shape[rank - 1] * field;
    }
}

static double trunc_normal(rng *r)
{
    for (;;) {
        double z = rng_normal(r);
        if (z >= -2.0 && z <= 2.0)
            return z;
    }
}

/* Householder QR of the row-major rows x cols matrix a (rows >= cols, overwritten). Writes the
 * thin Q (rows x cols, row-major) into q and diag(R) into d. v is rows x cols scratch. The
 * factorisation is computed in double; with the signs fixed afterwards (Q diag(sign R)) the
 * result is the unique QR with a positive diagonal, so the algorithm does not matter. */
static void householder_qr(double *a, int64_t rows, int64_t cols, double *q, double *d, double *v,
                           double *w)
{
    for (int64_t j = 0; j < cols; j++) {
        double nrm = 0.0;
        for (int64_t i = j; i < rows; i++)
            nrm += a[i * cols + j] * a[i * cols + j];
        nrm = sqrt(nrm);
        double x0 = a[j * cols + j];
        double alpha = x0 > 0.0 ? -nrm : nrm;
        /* v = x - alpha e_0, normalised; a zero column needs no reflection. */
        double vn = 0.0;
        for (int64_t i = j; i < rows; i++) {
            double vi = a[i * cols + j] - (i == j ? alpha : 0.0);
            v[i * cols + j] = vi;
            vn += vi * vi;
        }
        vn = sqrt(vn);
        if (vn == 0.0) {
            for (int64_t i = j; i < rows; i++)
                v[i * cols + j] = 0.0;
            d[j] = x0;
            continue;
        }
        for (int64_t i = j; i < rows; i++)
            v[i * cols + j] /= vn;
        /* a[j:, j:] -= 2 v (v^T a[j:, j:]) */
        for (int64_t k = j; k < cols; k++)
            w[k] = 0.0;
        for (int64_t i = j; i < rows; i++) {
            double vi = v[i * cols + j];
            for (int64_t k = j; k < cols; k++)
                w[k] += vi * a[i * cols + k];
        }
        for (int64_t i = j; i < rows; i++) {
            double vi = 2.0 * v[i * cols + j];
            for (int64_t k = j; k < cols; k++)
                a[i * cols + k] -= vi * w[k];
        }
        d[j] = a[j * cols + j];
    }
    /* Q = H_0 H_1 ... H_{cols-1} I[:, :cols], applied right to left. */
    for (int64_t i = 0; i < rows; i++)
        for (int64_t k = 0; k < cols; k++)
            q[i * cols + k] = i == k ? 1.0 : 0.0;
    for (int64_t j = cols - 1; j >= 0; j--) {
        for (int64_t k = 0; k < cols; k++)
            w[k] = 0.0;
        for (int64_t i = j; i < rows; i++) {
            double vi = v[i * cols + j];
            for (int64_t k = 0; k < cols; k++)
                w[k] += vi * q[i * cols + k];
        }
        for (int64_t i = j; i < rows; i++) {
            double vi = 2.0 * v[i * cols + j];
            for (int64_t k = 0; k < cols; k++)
                q[i * cols + k] -= vi * w[k];
        }
    }
}

static int fill_orthogonal(double gain, int rank, const int64_t *shape, int64_t count, float *out,
                           rng *r, const char *what, err_info *e)
{
    if (rank < 2)
        return err_set(e, ERR_CONFIG,
                       "%s: the orthogonal initializer needs a tensor of rank >= 2, found rank %d",
                       what, rank);
    int64_t cols = shape[rank - 1];
    int64_t rows = cols > 0 ? count / cols : 0;
    if (count == 0)
        return ERR_OK;
    int64_t fr = rows > cols ? rows : cols; /* Keras flat_shape (max, min) */
    int64_t fc = rows > cols ? cols : rows;
    size_t nm = (size_t)fr * (size_t)fc;
    double *a = malloc(nm * sizeof *a);
    double *q = malloc(nm * sizeof *q);
    double *v = calloc(nm, sizeof *v);
    double *d = malloc((size_t)fc * sizeof *d);
    double *w = malloc((size_t)fc * sizeof *w);
    int rc = ERR_OK;
    if (!a || !q || !v || !d || !w) {
        rc = err_set(e, ERR_NOMEM,
                     "%s: orthogonal initializer: out of memory for a %lld x %lld "
                     "matrix",
                     what, (long long)fr, (long long)fc);
        goto done;
    }
    for (size_t i = 0; i < nm; i++)
        a[i] = rng_normal(r);
    householder_qr(a, fr, fc, q, d, v, w);
    /* q *= sign(diag(r)) column-wise (ops.sign(0) is 0, as in Keras). */
    for (int64_t k = 0; k < fc; k++) {
        double sg = (double)(d[k] > 0.0) - (double)(d[k] < 0.0);
        for (int64_t i = 0; i < fr; i++)
            q[i * fc + k] *= sg;
    }
    if (rows >= cols) {
        for (int64_t i = 0; i < rows; i++)
            for (int64_t k = 0; k < cols; k++)
                out[i * cols + k] = (float)(gain * q[i * fc + k]);
    } else {
        /* Q is cols x rows; the weight is its transpose. */
        for (int64_t i = 0; i < rows; i++)
            for (int64_t k = 0; k < cols; k++)
                out[i * cols + k] = (float)(gain * q[k * fc + i]);
    }
done:
    free(a);
    free(q);
    free(v);
    free(d);
    free(w);
    return rc;
}

int init_fill(const model_init *in, int rank, const int64_t *shape, float *out, rng *r,
              const char *what, err_info *e)
{
    int64_t count = 1;
    for (int d = 0; d < rank; d++)
        count *= shape[d];
    switch (in->kind) {
    case INIT_ZEROS:
        for (int64_t i = 0; i < count; i++)
            out[i] = 0.0f;
        return ERR_OK;
    case INIT_ONES:
        for (int64_t i = 0; i < count; i++)
            out[i] = 1.0f;
        return ERR_OK;
    case INIT_CONSTANT:
        for (int64_t i = 0; i < count; i++)
            out[i] = (float)in->a;
        return ERR_OK;
    case INIT_RANDOM_UNIFORM:
        for (int64_t i = 0; i < count; i++)
            out[i] = (float)(in->a + (in->b - in->a) * rng_uniform(r));
        return ERR_OK;
    case INIT_RANDOM_NORMAL:
    case INIT_TRUNCATED_NORMAL:
        if (!(in->b >= 0.0))
            return err_set(e, ERR_CONFIG, "%s: %s stddev %g (expected >= 0)", what,
                           in->keras_name[0] ? in->keras_name : "normal initializer", in->b);
        for (int64_t i = 0; i < count; i++) {
            double z = in->kind == INIT_RANDOM_NORMAL ? rng_normal(r) : trunc_normal(r);
            out[i] = (float)(in->a + in->b * z);
        }
        return ERR_OK;
    case INIT_VARIANCE_SCALING: {
        if (!(in->a > 0.0))
            return err_set(e, ERR_CONFIG, "%s: %s scale %g (expected > 0)", what,
                           in->keras_name[0] ? in->keras_name : "VarianceScaling", in->a);
        if ((int)in->mode < 0 || in->mode >= INIT_MODE_COUNT || (int)in->dist < 0 ||
            in->dist >= INIT_DIST_COUNT)
            return err_set(e, ERR_CONFIG, "%s: VarianceScaling: unknown mode %d or distribution %d",
                           what, (int)in->mode, (int)in->dist);
        double fan_in, fan_out, fan = 1.0;
        init_fans(rank, shape, &fan_in, &fan_out);
        switch (in->mode) {
        case INIT_FAN_IN:
            fan = fan_in;
            break;
        case INIT_FAN_OUT:
            fan = fan_out;
            break;
        case INIT_FAN_AVG:
            fan = 0.5 * (fan_in + fan_out);
            break;
        case INIT_MODE_COUNT:
            break;
        }
        double scale = in->a / (fan > 1.0 ? fan : 1.0);
        switch (in->dist) {
        case INIT_DIST_TRUNCATED_NORMAL: {
            double sd = sqrt(scale) / INIT_TRUNC_STD;
            for (int64_t i = 0; i < count; i++)
                out[i] = (float)(sd * trunc_normal(r));
            return ERR_OK;
        }
        case INIT_DIST_UNTRUNCATED_NORMAL: {
            double sd = sqrt(scale);
            for (int64_t i = 0; i < count; i++)
                out[i] = (float)(sd * rng_normal(r));
            return ERR_OK;
        }
        case INIT_DIST_UNIFORM: {
            double lim = sqrt(3.0 * scale);
            for (int64_t i = 0; i < count; i++)
                out[i] = (float)(lim * (2.0 * rng_uniform(r) - 1.0));
            return ERR_OK;
        }
        case INIT_DIST_COUNT:
            break;
        }
        return ERR_OK;
    }
    case INIT_ORTHOGONAL:
        return fill_orthogonal(in->a, rank, shape, count, out, r, what, e);
    case INIT_IDENTITY:
        if (rank != 2)
            return err_set(e, ERR_CONFIG,
                           "%s: the identity initializer needs a 2D tensor, found rank %d", what,
                           rank);
        for (int64_t i = 0; i < shape[0]; i++)
            for (int64_t k = 0; k < shape[1]; k++)
                out[i * shape[1] + k] = i == k ? (float)in->a : 0.0f;
        return ERR_OK;
    case INIT_COUNT:
        break;
    }
    return err_set(e, ERR_CONFIG, "%s: unknown initializer kind %d", what, (int)in->kind);
}

/* The short name of a Keras variable: "lstm/lstm_cell/kernel:0" -> "kernel". */
static void short_name(const char *name, char *buf, size_t len)
{
    const char *s = strrchr(name, '/');
    s = s ? s + 1 : name;
    size_t n = strcspn(s, ":");
    if (n >= len)
        n = len - 1;
    memcpy(buf, s, n);
    buf[n] = '\0';
}

static const model_init *init_for(const layer_config *cfg, const char *sn)
{
    if (strcmp(sn, "kernel") == 0)
        return &cfg->kernel_init;
    if (strcmp(sn, "recurrent_kernel") == 0)
        return &cfg->recurrent_init;
    if (strcmp(sn, "bias") == 0)
        return &cfg->bias_init;
    if (strcmp(sn, "embeddings") == 0)
        return &cfg->embeddings_init;
    if (strcmp(sn, "gamma") == 0)
        return &cfg->gamma_init;
    if (strcmp(sn, "beta") == 0)
        return &cfg->beta_init;
    if (strcmp(sn, "moving_mean") == 0)
        return &cfg->moving_mean_init;
    if (strcmp(sn, "moving_variance") == 0)
        return &cfg->moving_variance_init;
    return NULL;
}

int init_model(model *m, uint64_t seed, err_info *e)
{
    if (!m->built)
        return err_set(e, ERR_USAGE, "init: model \"%s\" is not built", m->name);
    for (int w = 0; w < m->n_weights; w++) {
        const model_weight *wt = &m->weights[w];
        if (wt->layer < 0 || wt->layer >= m->n_layers || wt->offset > m->n_params ||
            wt->count > m->n_params - wt->offset)
            return err_set(e, ERR_INTERNAL,
                           "init: weight \"%s\" has layer %d, [%zu, +%zu) in "
                           "%zu parameters",
                           wt->name, wt->layer, wt->offset, wt->count, m->n_params);
        int64_t n_el = 1;
        for (int d = 0; d < wt->rank && d < TENSOR_MAX_RANK; d++)
            n_el *= wt->shape[d];
        if (wt->rank < 0 || wt->rank > TENSOR_MAX_RANK || n_el != (int64_t)wt->count)
            return err_set(e, ERR_INTERNAL,
                           "init: weight \"%s\": rank %d shape has %lld elements, "
                           "count %zu",
                           wt->name, wt->rank, (long long)n_el, wt->count);
        const model_layer *ly = &m->layers[wt->layer];
        char sn[MODEL_NAME_MAX];
        short_name(wt->name, sn, sizeof sn);
        const model_init *in = init_for(&ly->cfg, sn);
        if (!in)
            return err_set(e, ERR_CONFIG,
                           "init: weight \"%s\" of layer \"%s\": no initializer for a weight "
                           "named \"%s\"",
                           wt->name, ly->name, sn);
        rng r;
        if (in->has_seed)
            rng_seed(&r, (uint64_t)in->seed, 0);
        else
            rng_seed(&r, seed, (uint64_t)w);
        float *out = m->params + wt->offset;
        int rc;
        if (ly->kind == LAYER_LSTM && ly->cfg.unit_forget_bias && strcmp(sn, "bias") == 0) {
            /* Keras LSTM unit_forget_bias: concat(bias_init(units), ones(units),
             * bias_init(2 units)). */
            int64_t u = ly->cfg.units;
            if (u < 1 || wt->count != (size_t)(4 * u))
                return err_set(e, ERR_CONFIG,
                               "init: LSTM bias \"%s\" has %zu elements, expected 4 * units = "
                               "%lld",
                               wt->name, wt->count, (long long)(4 * u));
            int64_t s1 = u, s2 = 2 * u;
            rc = init_fill(in, 1, &s1, out, &r, wt->name, e);
            for (int64_t i = 0; rc == ERR_OK && i < u; i++)
                out[u + i] = 1.0f;
            if (rc == ERR_OK)
                rc = init_fill(in, 1, &s2, out + 2 * u, &r, wt->name, e);
        } else {
            rc = init_fill(in, wt->rank, wt->shape, out, &r, wt->name, e);
        }
        if (rc != ERR_OK)
            return err_wrap(e, "init: layer \"%s\"", ly->name);
    }
    return ERR_OK;
}
