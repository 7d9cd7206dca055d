#include "trainer/loss.h"

#include <math.h>
#include <string.h>

/* The clip bounds are the float32 values Keras compares against: backend.epsilon() is a Python
 * float cast to the tensor's dtype, and 1 - 1e-7 rounds to 1 - 2^-23 in float32. */
static const float CLIP_LO = LOSS_EPSILON;
static const float CLIP_HI = 1.0f - LOSS_EPSILON;

static float clipf(float x, int *active)
{
    if (x < CLIP_LO) {
        *active = 1;
        return CLIP_LO;
    }
    if (x > CLIP_HI) {
        *active = 1;
        return CLIP_HI;
    }
    *active = 0;
    return x;
}

/* Sparse labels are validated before anything is written, so a bad label leaves the outputs
 * untouched (STYLE.md section 5). */
static int check_labels(const float *y, int64_t rows, int64_t row_len, err_info *e)
{
    for (int64_t r = 0; r < rows; r++) {
        float v = y[r];
        if (!(v >= 0.0f) || !((double)v < (double)row_len) || floorf(v) != v)
            return err_set(e, ERR_RANGE,
                           "sparse_categorical_crossentropy: row %lld: label %g is not an "
                           "integer class id in [0, %lld)",
                           (long long)r, (double)v, (long long)row_len);
    }
    return ERR_OK;
}

/* Sparse CCE. From logits: log-softmax. From probabilities, like the TensorFlow backend:
 * log(clip(p)) fed to the softmax crossentropy, i.e. -log(c[y] / sum(c)). */
static double sparse_cce_row(const model_loss *l, const float *p, int64_t cls, int64_t n, float *d,
                             double scale)
{
    if (l->from_logits) {
        double mx = p[0];
        for (int64_t j = 1; j < n; j++)
            mx = p[j] > mx ? p[j] : mx;
        double s = 0.0;
        for (int64_t j = 0; j < n; j++)
            s += exp((double)p[j] - mx);
        double lse = mx + log(s);
        if (d) {
            for (int64_t j = 0; j < n; j++)
                d[j] = (float)(scale * exp((double)p[j] - lse));
            d[cls] = (float)(scale * (exp((double)p[cls] - lse) - 1.0));
        }
        return lse - (double)p[cls];
    }
    double s = 0.0;
    int act;
    for (int64_t j = 0; j < n; j++)
        s += (double)clipf(p[j], &act);
    double c = (double)clipf(p[cls], &act);
    if (d) {
        /* dL/dc_j = 1/S - [j == y]/c_y, zero where the clip is active. */
        for (int64_t j = 0; j < n; j++) {
            clipf(p[j], &act);
            d[j] = act ? 0.0f : (float)(scale / s);
        }
        clipf(p[cls], &act);
        d[cls] = act ? 0.0f : (float)(scale * (1.0 / s - 1.0 / c));
    }
    return log(s) - log(c);
}

/* CCE with smoothed labels yt. From logits: sum y (lse - z), gradient softmax * sum(y) - y
 * (the exact derivative; equal to TF's softmax - y whenever the labels sum to 1). From
 * probabilities: q = p / sum(p), clipped, -sum y log q. */
static double cce_row(const model_loss *l, const float *p, const float *yt, int64_t n, float *d,
                      double scale)
{
    double ls = l->label_smoothing;
    double lsn = ls / (double)n;
    if (l->from_logits) {
        double mx = p[0];
        for (int64_t j = 1; j < n; j++)
            mx = p[j] > mx ? p[j] : mx;
        double s = 0.0;
        for (int64_t j = 0; j < n; j++)
            s += exp((double)p[j] - mx);
        double lse = mx + log(s);
        double loss = 0.0, ysum = 0.0;
        for (int64_t j = 0; j < n; j++) {
            double yj = (double)yt[j] * (1.0 - ls) + lsn;
            loss += yj * (lse - (double)p[j]);
            ysum += yj;
        }
        if (d) {
            for (int64_t j = 0; j < n; j++) {
                double yj = (double)yt[j] * (1.0 - ls) + lsn;
                d[j] = (float)(scale * (exp((double)p[j] - lse) * ysum - yj));
            }
        }
        return loss;
    }
    double s = 0.0;
    for (int64_t j = 0; j < n; j++)
        s += (double)p[j];
    double loss = 0.0, gq = 0.0;
    int act;
    for (int64_t j = 0; j < n; j++) {
        double yj = (double)yt[j] * (1.0 - ls) + lsn;
        float q = clipf((float)((double)p[j] / s), &act);
        loss -= yj * log((double)q);
        /* g_j = dL/dq_j = -y_j / q_j (0 if clipped); gq = sum_j g_j q_j for the quotient rule. */
        if (!act)
            gq += -yj;
    }
    if (d) {
        /* dL/dp_k = (g_k - sum_j g_j q_j) / S with q_j = p_j / S. */
        for (int64_t j = 0; j < n; j++) {
            double yj = (double)yt[j] * (1.0 - ls) + lsn;
            float q = clipf((float)((double)p[j] / s), &act);
            double g = act ? 0.0 : -yj / (double)q;
            d[j] = (float)(scale * (g - gq) / s);
        }
    }
    return loss;
}

/* BCE averaged over the row. */
static double bce_row(const model_loss *l, const float *p, const float *yt, int64_t n, float *d,
                      double scale)
{
    double ls = l->label_smoothing;
    double inv = 1.0 / (double)n;
    double loss = 0.0;
    for (int64_t j = 0; j < n; j++) {
        double yj = (double)yt[j] * (1.0 - ls) + 0.5 * ls;
        if (l->from_logits) {
            /* tf.nn.sigmoid_cross_entropy_with_logits: max(z, 0) - z y + log(1 + exp(-|z|)). */
            double z = p[j];
            loss += (z > 0.0 ? z : 0.0) - z * yj + log1p(exp(-fabs(z)));
            if (d) {
                double sg = z >= 0.0 ? 1.0 / (1.0 + exp(-z)) : exp(z) / (1.0 + exp(z));
                d[j] = (float)(scale * inv * (sg - yj));
            }
        } else {
            int act;
            double c = (double)clipf(p[j], &act);
            loss -= yj * log(c) + (1.0 - yj) * log(1.0 - c);
            if (d)
                d[j] = act ? 0.0f : (float)(scale * inv * (-yj / c + (1.0 - yj) / (1.0 - c)));
        }
    }
    return loss * inv;
}

static double sign_of(double x)
{
    return (double)(x > 0.0) - (double)(x < 0.0);
}

/* MSE, MAE and Huber: element-wise, averaged over the row. */
static double regress_row(const model_loss *l, const float *p, const float *yt, int64_t n, float *d,
                          double scale)
{
    double inv = 1.0 / (double)n;
    double loss = 0.0;
    double delta = l->delta;
    for (int64_t j = 0; j < n; j++) {
        double err = (double)p[j] - (double)yt[j];
        double g = 0.0;
        switch (l->kind) {
        case LOSS_MSE:
            loss += err * err;
            g = 2.0 * err;
            break;
        case LOSS_MAE:
            loss += fabs(err);
            g = sign_of(err);
            break;
        case LOSS_HUBER:
            if (fabs(err) <= delta) {
                loss += 0.5 * err * err;
                g = err;
            } else {
                loss += delta * fabs(err) - 0.5 * delta * delta;
                g = delta * sign_of(err);
            }
            break;
        case LOSS_NONE:
        case LOSS_SPARSE_CCE:
        case LOSS_CCE:
        case LOSS_BCE:
        case LOSS_COUNT:
            break;
        }
        if (d)
            d[j] = (float)(scale * inv * g);
    }
    return loss * inv;
}

int loss_compute(const model_loss *l, const float *pred, const float *y, int64_t rows,
                 int64_t row_len, double denom, double *sum, float *dpred, err_info *e)
{
    if (rows < 0 || row_len < 1)
        return err_set(e, ERR_USAGE, "loss: bad extents rows=%lld row_len=%lld", (long long)rows,
                       (long long)row_len);
    if (dpred && !(denom > 0.0))
        return err_set(e, ERR_USAGE, "loss: gradient requested with denominator %g (expected > 0)",
                       denom);
    if (l->kind <= LOSS_NONE || l->kind >= LOSS_COUNT)
        return err_set(e, ERR_CONFIG, "loss: no loss configured (kind %d)", (int)l->kind);
    if (l->kind == LOSS_HUBER && !(l->delta >= 0.0))
        return err_set(e, ERR_CONFIG, "huber loss: delta %g (expected >= 0)", l->delta);
    if (l->kind == LOSS_SPARSE_CCE) {
        int rc = check_labels(y, rows, row_len, e);
        if (rc != ERR_OK)
            return rc;
    }
    double scale = dpred ? 1.0 / denom : 0.0;
    double total = 0.0;
    for (int64_t r = 0; r < rows; r++) {
        const float *p = pred + r * row_len;
        float *d = dpred ? dpred + r * row_len : NULL;
        switch (l->kind) {
        case LOSS_SPARSE_CCE:
            total += sparse_cce_row(l, p, (int64_t)y[r], row_len, d, scale);
            break;
        case LOSS_CCE:
            total += cce_row(l, p, y + r * row_len, row_len, d, scale);
            break;
        case LOSS_BCE:
            total += bce_row(l, p, y + r * row_len, row_len, d, scale);
            break;
        case LOSS_MSE:
        case LOSS_MAE:
        case LOSS_HUBER:
            total += regress_row(l, p, y + r * row_len, row_len, d, scale);
            break;
        case LOSS_NONE:
        case LOSS_COUNT:
            break;
        }
    }
    *sum = total;
    return ERR_OK;
}

typedef struct name_map {
    const char *name;
    int kind;
} name_map;

static const name_map LOSS_NAMES[] = {
    {"sparse_categorical_crossentropy", LOSS_SPARSE_CCE},
    {"SparseCategoricalCrossentropy", LOSS_SPARSE_CCE},
    {"categorical_crossentropy", LOSS_CCE},
    {"CategoricalCrossentropy", LOSS_CCE},
    {"binary_crossentropy", LOSS_BCE},
    {"BinaryCrossentropy", LOSS_BCE},
    {"bce", LOSS_BCE},
    {"BCE", LOSS_BCE},
    {"mean_squared_error", LOSS_MSE},
    {"MeanSquaredError", LOSS_MSE},
    {"mse", LOSS_MSE},
    {"MSE", LOSS_MSE},
    {"mean_absolute_error", LOSS_MAE},
    {"MeanAbsoluteError", LOSS_MAE},
    {"mae", LOSS_MAE},
    {"MAE", LOSS_MAE},
    {"huber", LOSS_HUBER},
    {"huber_loss", LOSS_HUBER},
    {"Huber", LOSS_HUBER},
};

static const name_map METRIC_NAMES[] = {
    {"accuracy", METRIC_ACCURACY},
    {"acc", METRIC_ACCURACY},
    {"sparse_categorical_accuracy", METRIC_SPARSE_CAT_ACC},
    {"SparseCategoricalAccuracy", METRIC_SPARSE_CAT_ACC},
    {"categorical_accuracy", METRIC_CAT_ACC},
    {"CategoricalAccuracy", METRIC_CAT_ACC},
    {"binary_accuracy", METRIC_BIN_ACC},
    {"BinaryAccuracy", METRIC_BIN_ACC},
    {"mean_squared_error", METRIC_MSE},
    {"MeanSquaredError", METRIC_MSE},
    {"mse", METRIC_MSE},
    {"MSE", METRIC_MSE},
    {"mean_absolute_error", METRIC_MAE},
    {"MeanAbsoluteError", METRIC_MAE},
    {"mae", METRIC_MAE},
    {"MAE", METRIC_MAE},
};

static int map_find(const name_map *map, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(map[i].name, name) == 0)
            return map[i].kind;
    return -1;
}

int loss_from_name(const char *name, model_loss *out, err_info *e)
{
    int k = map_find(LOSS_NAMES, sizeof LOSS_NAMES / sizeof LOSS_NAMES[0], name);
    if (k < 0)
        return err_set(e, ERR_UNSUPPORTED,
                       "loss \"%s\" is not supported (supported: sparse_categorical_crossentropy, "
                       "categorical_crossentropy, binary_crossentropy, mse, mae, huber)",
                       name);
    model_loss l = {0};
    l.kind = (loss_kind)k;
    l.from_logits = false;
    l.delta = 1.0;
    l.label_smoothing = 0.0;
    *out = l;
    return ERR_OK;
}

int metric_from_name(const char *name, metric_kind *out, err_info *e)
{
    int k = map_find(METRIC_NAMES, sizeof METRIC_NAMES / sizeof METRIC_NAMES[0], name);
    if (k < 0)
        return err_set(e, ERR_UNSUPPORTED,
                       "metric \"%s\" is not supported (supported: accuracy, "
                       "sparse_categorical_accuracy, categorical_accuracy, binary_accuracy, mse, "
                       "mae)",
                       name);
    *out = (metric_kind)k;
    return ERR_OK;
}

metric_kind metric_resolve(metric_kind k, const model_loss *l, int64_t row_len)
{
    if (k != METRIC_ACCURACY)
        return k;
    if (row_len == 1)
        return METRIC_BIN_ACC;
    if (l && l->kind == LOSS_SPARSE_CCE)
        return METRIC_SPARSE_CAT_ACC;
    return METRIC_CAT_ACC;
}

static int64_t argmax_row(const float *p, int64_t n)
{
    int64_t best = 0;
    for (int64_t j = 1; j < n; j++)
        if (p[j] > p[best])
            best = j;
    return best;
}

void metric_accumulate(metric_kind k, const float *pred, const float *y, int64_t rows,
                       int64_t row_len, double *sum, double *count)
{
    double s = 0.0;
    double inv = 1.0 / (double)row_len;
    for (int64_t r = 0; r < rows; r++) {
        const float *p = pred + r * row_len;
        /* Sparse targets are [rows]; every other kind has [rows, row_len] targets. */
        const float *t = k == METRIC_SPARSE_CAT_ACC ? y : y + r * row_len;
        double v = 0.0;
        switch (k) {
        case METRIC_SPARSE_CAT_ACC:
            v = (double)argmax_row(p, row_len) == (double)y[r] ? 1.0 : 0.0;
            break;
        case METRIC_CAT_ACC:
            v = argmax_row(p, row_len) == argmax_row(t, row_len) ? 1.0 : 0.0;
            break;
        case METRIC_BIN_ACC:
            for (int64_t j = 0; j < row_len; j++)
                v += (p[j] > 0.5f ? 1.0f : 0.0f) == t[j] ? 1.0 : 0.0;
            v *= inv;
            break;
        case METRIC_MSE:
            for (int64_t j = 0; j < row_len; j++) {
                double d = (double)p[j] - (double)t[j];
                v += d * d;
            }
            v *= inv;
            break;
        case METRIC_MAE:
            for (int64_t j = 0; j < row_len; j++)
                v += fabs((double)p[j] - (double)t[j]);
            v *= inv;
            break;
        case METRIC_ACCURACY:
        case METRIC_COUNT:
            /* The caller must resolve "accuracy" with metric_resolve() first. */
            CHECK(k != METRIC_ACCURACY && k != METRIC_COUNT);
            break;
        }
        s += v;
    }
    *sum += s;
    *count += (double)rows;
}

const char *metric_display_name(metric_kind k)
{
    switch (k) {
    case METRIC_ACCURACY:
        return "accuracy";
    case METRIC_SPARSE_CAT_ACC:
        return "sparse_categorical_accuracy";
    case METRIC_CAT_ACC:
        return "categorical_accuracy";
    case METRIC_BIN_ACC:
        return "binary_accuracy";
    case METRIC_MSE:
        return "mse";
    case METRIC_MAE:
        return "mae";
    case METRIC_COUNT:
        break;
    }
    return "unknown";
}
