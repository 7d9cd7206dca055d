/* Reference twins of kern_act.c: the textbook formulas in double, written independently of the
 * optimised float code (no shared helpers), derivatives taken from x. */
#include "kernels/kern_act.h"

#include <math.h>

static double ref_sigmoid(double x)
{
    return 1.0 / (1.0 + exp(-x));
}

static double ref_act(act_kind k, double x)
{
    const double selu_alpha = 1.6732632423543772848170429916717;
    const double selu_scale = 1.0507009873554804934193349852946;
    switch (k) {
    case ACT_LINEAR:
    case ACT_SOFTMAX:
        return x;
    case ACT_RELU:
        return x <= 0 ? 0 : x;
    case ACT_SIGMOID:
        return ref_sigmoid(x);
    case ACT_TANH:
        return tanh(x);
    case ACT_ELU:
        return x > 0 ? x : exp(x) - 1.0;
    case ACT_SELU:
        return selu_scale * (x > 0 ? x : selu_alpha * (exp(x) - 1.0));
    case ACT_SOFTPLUS:
        return x > 30 ? x : log(1.0 + exp(x));
    case ACT_SOFTSIGN:
        return x / (1.0 + fabs(x));
    case ACT_SWISH:
        return x * ref_sigmoid(x);
    case ACT_GELU:
        return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
    case ACT_HARD_SIGMOID:
        return fmin(fmax(x + 3.0, 0.0), 6.0) / 6.0;
    case ACT_HARD_SIGMOID_K2:
        return fmin(fmax(0.2 * x + 0.5, 0.0), 1.0);
    case ACT_EXPONENTIAL:
        return exp(x);
    case ACT_RELU6:
        return fmin(fmax(x, 0.0), 6.0);
    case ACT_LEAKY_RELU:
        return x >= 0 ? x : 0.2 * x;
    case ACT_COUNT:
        break;
    }
    return x;
}

static double ref_act_grad(act_kind k, double x)
{
    const double selu_alpha = 1.6732632423543772848170429916717;
    const double selu_scale = 1.0507009873554804934193349852946;
    const double pi = 3.14159265358979323846;
    switch (k) {
    case ACT_LINEAR:
    case ACT_SOFTMAX:
        return 1;
    case ACT_RELU:
        return x > 0 ? 1 : 0;
    case ACT_SIGMOID:
        return ref_sigmoid(x) * (1 - ref_sigmoid(x));
    case ACT_TANH:
        return 1 - tanh(x) * tanh(x);
    case ACT_ELU:
        return x > 0 ? 1 : exp(x);
    case ACT_SELU:
        return x > 0 ? selu_scale : selu_scale * selu_alpha * exp(x);
    case ACT_SOFTPLUS:
        return ref_sigmoid(x);
    case ACT_SOFTSIGN:
        return 1.0 / ((1 + fabs(x)) * (1 + fabs(x)));
    case ACT_SWISH:
        return ref_sigmoid(x) + x * ref_sigmoid(x) * (1 - ref_sigmoid(x));
    case ACT_GELU:
        return 0.5 * (1.0 + erf(x / sqrt(2.0))) + x * exp(-x * x / 2) / sqrt(2 * pi);
    case ACT_HARD_SIGMOID:
        return (x > -3 && x < 3) ? 1.0 / 6.0 : 0;
    case ACT_HARD_SIGMOID_K2:
        return (x > -2.5 && x < 2.5) ? 0.2 : 0;
    case ACT_EXPONENTIAL:
        return exp(x);
    case ACT_RELU6:
        return (x > 0 && x < 6) ? 1 : 0;
    case ACT_LEAKY_RELU:
        return x > 0 ? 1 : 0.2;
    case ACT_COUNT:
        break;
    }
    return 1;
}

void kern_ref_act_forward(act_kind k, int64_t rows, int64_t cols, const float *x, float *y)
{
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        float *yr = y + r * cols;
        if (k == ACT_SOFTMAX) {
            double mx = -INFINITY, s = 0;
            for (int64_t j = 0; j < cols; j++)
                mx = fmax(mx, xr[j]);
            for (int64_t j = 0; j < cols; j++)
                s += exp(xr[j] - mx);
            for (int64_t j = 0; j < cols; j++)
                yr[j] = (float)(exp(xr[j] - mx) / s);
            continue;
        }
        for (int64_t j = 0; j < cols; j++)
            yr[j] = (float)ref_act(k, xr[j]);
    }
}

void kern_ref_act_backward(act_kind k, int64_t rows, int64_t cols, const float *x, const float *dy,
                           float *dx)
{
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        const float *gr = dy + r * cols;
        float *dr = dx + r * cols;
        if (k == ACT_SOFTMAX) {
            /* Full Jacobian: d y_i / d x_j = y_i (delta_ij - y_j). */
            double mx = -INFINITY, s = 0;
            for (int64_t j = 0; j < cols; j++)
                mx = fmax(mx, xr[j]);
            for (int64_t j = 0; j < cols; j++)
                s += exp(xr[j] - mx);
            for (int64_t j = 0; j < cols; j++) {
                double yj = exp(xr[j] - mx) / s, acc = 0;
                for (int64_t i = 0; i < cols; i++) {
                    double yi = exp(xr[i] - mx) / s;
                    acc += gr[i] * yi * ((i == j ? 1.0 : 0.0) - yj);
                }
                dr[j] = (float)acc;
            }
            continue;
        }
        for (int64_t j = 0; j < cols; j++)
            dr[j] = (float)(gr[j] * ref_act_grad(k, xr[j]));
    }
}
