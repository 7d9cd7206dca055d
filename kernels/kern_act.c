#include "kernels/kern_act.h"

#include <math.h>
#include <string.h>

/* Keras 3 SELU constants (keras/src/activations/activations.py), which equal TensorFlow's
 * float32 values of the Klambauer et al. constants. */
#define SELU_ALPHA 1.67326324f
#define SELU_SCALE 1.05070098f
#define LEAKY_SLOPE 0.2f /* Keras activation "leaky_relu" default negative_slope */

typedef struct act_name {
    const char *name;
    act_kind kind;
} act_name;

/* Parse table: several spellings may map to one kind; the first entry of a kind is canonical.
 * "hard_sigmoid" parses as the Keras 3 formula; readers of Keras 2 files switch to
 * ACT_HARD_SIGMOID_K2 themselves, which prints under the same name. */
static const act_name ACT_NAMES[] = {
    {"linear", ACT_LINEAR},
    {"relu", ACT_RELU},
    {"sigmoid", ACT_SIGMOID},
    {"tanh", ACT_TANH},
    {"softmax", ACT_SOFTMAX},
    {"elu", ACT_ELU},
    {"selu", ACT_SELU},
    {"softplus", ACT_SOFTPLUS},
    {"softsign", ACT_SOFTSIGN},
    {"swish", ACT_SWISH},
    {"silu", ACT_SWISH},
    {"gelu", ACT_GELU},
    {"hard_sigmoid", ACT_HARD_SIGMOID},
    {"exponential", ACT_EXPONENTIAL},
    {"relu6", ACT_RELU6},
    {"leaky_relu", ACT_LEAKY_RELU},
};

int kern_act_from_name(const char *name, act_kind *out, err_info *e)
{
    for (size_t i = 0; i < sizeof ACT_NAMES / sizeof ACT_NAMES[0]; i++) {
        if (strcmp(ACT_NAMES[i].name, name) == 0) {
            *out = ACT_NAMES[i].kind;
            return ERR_OK;
        }
    }
    return err_set(e, ERR_CONFIG,
                   "unknown activation \"%s\" (supported: linear, relu, sigmoid, tanh, softmax, "
                   "elu, selu, softplus, softsign, swish/silu, gelu, hard_sigmoid, exponential, "
                   "relu6, leaky_relu)",
                   name);
}

const char *kern_act_name(act_kind k)
{
    if (k == ACT_HARD_SIGMOID_K2)
        return "hard_sigmoid";
    for (size_t i = 0; i < sizeof ACT_NAMES / sizeof ACT_NAMES[0]; i++) {
        if (ACT_NAMES[i].kind == k)
            return ACT_NAMES[i].name;
    }
    return "unknown";
}

/* ---- scalar forms (float32, like Keras) ---- */

static inline float sigmoid_f(float x)
{
    /* Two branches so that exp never overflows. */
    if (x >= 0.0f)
        return 1.0f / (1.0f + expf(-x));
    float t = expf(x);
    return t / (1.0f + t);
}

static inline float softplus_f(float x)
{
    /* log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), exact in both tails. */
    return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x)));
}

static inline float gelu_f(float x)
{
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

static inline float gelu_grad_f(float x)
{
    /* d/dx [x Phi(x)] = Phi(x) + x phi(x). */
    float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
    float pdf = 0.39894228040143268f * expf(-0.5f * x * x);
    return cdf + x * pdf;
}

static inline float clampf(float v, float lo, float hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

static inline float act_scalar(act_kind k, float x)
{
    switch (k) {
    case ACT_LINEAR:
    case ACT_SOFTMAX: /* handled row-wise by the callers */
        return x;
    case ACT_RELU:
        return x <= 0.0f ? 0.0f : x; /* NaN propagates, as in Keras */
    case ACT_SIGMOID:
        return sigmoid_f(x);
    case ACT_TANH:
        return tanhf(x);
    case ACT_ELU:
        return x > 0.0f ? x : expm1f(x);
    case ACT_SELU:
        return x > 0.0f ? SELU_SCALE * x : SELU_SCALE * SELU_ALPHA * expm1f(x);
    case ACT_SOFTPLUS:
        return softplus_f(x);
    case ACT_SOFTSIGN:
        return x / (1.0f + fabsf(x));
    case ACT_SWISH:
        return x * sigmoid_f(x);
    case ACT_GELU:
        return gelu_f(x);
    case ACT_HARD_SIGMOID:
        return clampf(x * (1.0f / 6.0f) + 0.5f, 0.0f, 1.0f);
    case ACT_HARD_SIGMOID_K2:
        return clampf(0.2f * x + 0.5f, 0.0f, 1.0f);
    case ACT_EXPONENTIAL:
        return expf(x);
    case ACT_RELU6:
        return clampf(x, 0.0f, 6.0f);
    case ACT_LEAKY_RELU:
        return x >= 0.0f ? x : LEAKY_SLOPE * x;
    case ACT_COUNT:
        break;
    }
    return x;
}

/* act'(x) expressed through y = act(x) (x only for gelu and swish). At kinks the derivative is
 * TensorFlow's choice: relu'(0) = 0, elu'(0) = alpha, leaky_relu'(0) = slope. */
static inline float act_grad_scalar(act_kind k, float x, float y)
{
    switch (k) {
    case ACT_LINEAR:
    case ACT_SOFTMAX:
        return 1.0f;
    case ACT_RELU:
        return y > 0.0f ? 1.0f : 0.0f;
    case ACT_SIGMOID:
        return y * (1.0f - y);
    case ACT_TANH:
        return 1.0f - y * y;
    case ACT_ELU:
        return y > 0.0f ? 1.0f : y + 1.0f;
    case ACT_SELU:
        return y > 0.0f ? SELU_SCALE : y + SELU_SCALE * SELU_ALPHA;
    case ACT_SOFTPLUS:
        /* sigmoid(x) = 1 - exp(-softplus(x)); expm1 keeps it exact when y is tiny. */
        return -expm1f(-y);
    case ACT_SOFTSIGN: {
        float t = 1.0f - fabsf(y); /* = 1 / (1 + |x|) */
        return t * t;
    }
    case ACT_SWISH: {
        float s = sigmoid_f(x);
        return s * (1.0f + x * (1.0f - s));
    }
    case ACT_GELU:
        return gelu_grad_f(x);
    case ACT_HARD_SIGMOID:
        return (y > 0.0f && y < 1.0f) ? (1.0f / 6.0f) : 0.0f;
    case ACT_HARD_SIGMOID_K2:
        return (y > 0.0f && y < 1.0f) ? 0.2f : 0.0f;
    case ACT_EXPONENTIAL:
        return y;
    case ACT_RELU6:
        return (y > 0.0f && y < 6.0f) ? 1.0f : 0.0f;
    case ACT_LEAKY_RELU:
        return y > 0.0f ? 1.0f : LEAKY_SLOPE;
    case ACT_COUNT:
        break;
    }
    return 1.0f;
}

bool kern_act_backward_needs_x(act_kind k)
{
    return k == ACT_SWISH || k == ACT_GELU;
}

/* ---- softmax rows ---- */

static void softmax_row(int64_t n, const float *x, float *y)
{
    float mx = x[0];
    for (int64_t j = 1; j < n; j++)
        mx = x[j] > mx ? x[j] : mx;
    float sum = 0.0f;
    for (int64_t j = 0; j < n; j++) {
        y[j] = expf(x[j] - mx);
        sum += y[j];
    }
    float inv = 1.0f / sum;
    for (int64_t j = 0; j < n; j++)
        y[j] *= inv;
}

static void softmax_row_grad(int64_t n, const float *y, const float *dy, float *dx)
{
    float dot = 0.0f;
    for (int64_t j = 0; j < n; j++)
        dot += dy[j] * y[j];
    for (int64_t j = 0; j < n; j++)
        dx[j] = y[j] * (dy[j] - dot);
}

/* ---- public kernels ---- */

/* The kind is tested outside the loops so that each loop is a tight body (relu vectorises);
 * the generic loops call the inlined scalar forms. If-chains rather than a switch with a
 * default: the scalar forms' switches are the exhaustive ones. */

void kern_act_forward(act_kind k, int64_t rows, int64_t cols, const float *x, float *y)
{
    int64_t n = rows * cols;
    if (k == ACT_LINEAR) {
        if (x != y)
            memcpy(y, x, sizeof(float) * (size_t)n);
    } else if (k == ACT_SOFTMAX) {
        for (int64_t r = 0; r < rows; r++)
            softmax_row(cols, x + r * cols, y + r * cols);
    } else if (k == ACT_RELU) {
        for (int64_t i = 0; i < n; i++)
            y[i] = x[i] <= 0.0f ? 0.0f : x[i]; /* keeps NaN */
    } else {
        for (int64_t i = 0; i < n; i++)
            y[i] = act_scalar(k, x[i]);
    }
}

static void relu_mask_inplace(int64_t n, const float *restrict y, float *restrict g)
{
    for (int64_t i = 0; i < n; i++)
        g[i] = g[i] * (float)isgreater(y[i], 0.0f);
}

/* g[i] *= act'(...) over n elements (x only for the kinds that need it). */
static void grad_scale(act_kind k, int64_t n, const float *x, const float *y, const float *dy,
                       float *dx)
{
    if (k == ACT_LINEAR) {
        if (dx != dy)
            memcpy(dx, dy, sizeof(float) * (size_t)n);
    } else if (k == ACT_RELU) {
        /* A multiply by the 0/1 mask instead of a select (dy * 0 keeps NaN and the sign of zero
         * like the chain rule). The mask comes from isgreater(), the quiet comparison: GCC will
         * not turn a possibly trapping `y > 0` into a vector compare and left this loop scalar
         * with a branch (mispredicted on half the elements; ~8% of an MLP step). In place (the
         * fused Dense backward) gets its own two-pointer loop so the vectoriser needs no alias
         * check. */
        if (dx == dy)
            relu_mask_inplace(n, y, dx);
        else
            for (int64_t i = 0; i < n; i++)
                dx[i] = dy[i] * (float)isgreater(y[i], 0.0f);
    } else if (kern_act_backward_needs_x(k)) {
        for (int64_t i = 0; i < n; i++)
            dx[i] = dy[i] * act_grad_scalar(k, x[i], 0.0f);
    } else {
        for (int64_t i = 0; i < n; i++)
            dx[i] = dy[i] * act_grad_scalar(k, 0.0f, y[i]);
    }
}

void kern_act_backward(act_kind k, int64_t rows, int64_t cols, const float *x, const float *y,
                       const float *dy, float *dx)
{
    if (k == ACT_SOFTMAX) {
        for (int64_t r = 0; r < rows; r++)
            softmax_row_grad(cols, y + r * cols, dy + r * cols, dx + r * cols);
        return;
    }
    grad_scale(k, rows * cols, x, y, dy, dx);
}

void kern_act_bias_forward(act_kind k, int64_t rows, int64_t cols, const float *b, float *y,
                           float *z)
{
    /* Row by row, so that the bias, the copy and the activation touch each row once while it
     * is in cache. */
    for (int64_t r = 0; r < rows; r++) {
        float *yr = y + r * cols;
        if (b != NULL) {
            for (int64_t j = 0; j < cols; j++)
                yr[j] += b[j];
        }
        if (z != NULL)
            memcpy(z + r * cols, yr, sizeof(float) * (size_t)cols);
        kern_act_forward(k, 1, cols, yr, yr);
    }
}

void kern_act_bias_backward(act_kind k, int64_t rows, int64_t cols, const float *z, const float *y,
                            float *dy, float *db, bool acc_db)
{
    if (db != NULL && !acc_db)
        memset(db, 0, sizeof(float) * (size_t)cols);
    for (int64_t r = 0; r < rows; r++) {
        float *g = dy + r * cols;
        if (k == ACT_SOFTMAX)
            softmax_row_grad(cols, y + r * cols, g, g);
        else
            grad_scale(k, cols, z != NULL ? z + r * cols : NULL, y + r * cols, g, g);
        if (db != NULL) {
            for (int64_t j = 0; j < cols; j++)
                db[j] += g[j];
        }
    }
}

/* ---- parametrised layers ---- */

void kern_relu_ex_forward(const kern_relu_params *p, int64_t n, const float *x, float *y)
{
    /* Same order of operations as keras.activations.relu / tf.keras.backend.relu. */
    bool clip = p->max_value >= 0.0f;
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        float a;
        if (p->threshold != 0.0f)
            a = v > p->threshold ? v : 0.0f;
        else
            a = v <= 0.0f ? 0.0f : v;
        if (clip)
            a = clampf(a, 0.0f, p->max_value);
        if (p->negative_slope != 0.0f) {
            float neg = p->threshold - v;
            a -= p->negative_slope * (neg > 0.0f ? neg : 0.0f);
        }
        y[i] = a;
    }
}

void kern_relu_ex_backward(const kern_relu_params *p, int64_t n, const float *x, const float *dy,
                           float *dx)
{
    bool clip = p->max_value >= 0.0f;
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        float g = 0.0f;
        bool pos = p->threshold != 0.0f ? v > p->threshold : v > 0.0f;
        if (pos) {
            /* The positive branch passes through the clip only strictly inside (0, max). */
            g = (!clip || (v > 0.0f && v < p->max_value)) ? 1.0f : 0.0f;
        }
        if (p->negative_slope != 0.0f && p->threshold - v > 0.0f)
            g += p->negative_slope;
        dx[i] = dy[i] * g;
    }
}

void kern_elu_forward(float alpha, int64_t n, const float *x, float *y)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = x[i] > 0.0f ? x[i] : alpha * expm1f(x[i]);
}

void kern_elu_backward(float alpha, int64_t n, const float *x, const float *dy, float *dx)
{
    for (int64_t i = 0; i < n; i++)
        dx[i] = x[i] > 0.0f ? dy[i] : dy[i] * alpha * expf(x[i]);
}

void kern_leaky_relu_forward(float alpha, int64_t n, const float *x, float *y)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = x[i] >= 0.0f ? x[i] : alpha * x[i];
}

void kern_leaky_relu_backward(float alpha, int64_t n, const float *x, const float *dy, float *dx)
{
    /* TensorFlow's LeakyReluGrad: slope 1 only where x > 0. */
    for (int64_t i = 0; i < n; i++)
        dx[i] = x[i] > 0.0f ? dy[i] : alpha * dy[i];
}

void kern_softmax_forward(int64_t outer, int64_t len, int64_t inner, const float *x, float *y)
{
    if (inner == 1) {
        for (int64_t o = 0; o < outer; o++)
            softmax_row(len, x + o * len, y + o * len);
        return;
    }
    for (int64_t o = 0; o < outer; o++) {
        const float *xo = x + o * len * inner;
        float *yo = y + o * len * inner;
        for (int64_t i = 0; i < inner; i++) {
            float mx = xo[i];
            for (int64_t j = 1; j < len; j++)
                mx = xo[j * inner + i] > mx ? xo[j * inner + i] : mx;
            float sum = 0.0f;
            for (int64_t j = 0; j < len; j++) {
                float t = expf(xo[j * inner + i] - mx);
                yo[j * inner + i] = t;
                sum += t;
            }
            float inv = 1.0f / sum;
            for (int64_t j = 0; j < len; j++)
                yo[j * inner + i] *= inv;
        }
    }
}

void kern_softmax_backward(int64_t outer, int64_t len, int64_t inner, const float *y,
                           const float *dy, float *dx)
{
    if (inner == 1) {
        for (int64_t o = 0; o < outer; o++)
            softmax_row_grad(len, y + o * len, dy + o * len, dx + o * len);
        return;
    }
    for (int64_t o = 0; o < outer; o++) {
        int64_t base = o * len * inner;
        for (int64_t i = 0; i < inner; i++) {
            float dot = 0.0f;
            for (int64_t j = 0; j < len; j++)
                dot += dy[base + j * inner + i] * y[base + j * inner + i];
            for (int64_t j = 0; j < len; j++) {
                int64_t q = base + j * inner + i;
                dx[q] = y[q] * (dy[q] - dot);
            }
        }
    }
}
