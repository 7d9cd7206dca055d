/* Merge layers: Add, Subtract, Multiply, Average (inputs of one shape; Keras' broadcasting of
 * unequal shapes is not supported) and Concatenate (any non-batch axis). */
#include "trainer/layers_impl.h"

#include <string.h>

int layer__merge_plan(layer_net *n, lnode *d, err_info *e)
{
    const model_layer *L = layer__L(n, d);
    if (L->kind == LAYER_SUBTRACT && d->n_in != 2)
        return layer__err(e, n, d, ERR_CONFIG, "called on %d inputs, expected exactly 2", d->n_in);
    const ltensor *y = layer__out(n, d, 0);
    for (int i = 0; i < d->n_in; i++) {
        const ltensor *x = layer__in(n, d, i);
        bool same = x->rank == y->rank;
        for (int j = 1; same && j < x->rank; j++)
            same = x->dims[j] == y->dims[j];
        if (!same) {
            char a[128], b[128];
            return layer__err(e, n, d, ERR_UNSUPPORTED,
                              "input %d has shape %s but the output has %s (broadcasting "
                              "between merge inputs is not supported)",
                              i, tensor_shape_str(x->rank, x->dims, a, sizeof a),
                              tensor_shape_str(y->rank, y->dims, b, sizeof b));
        }
    }
    return ERR_OK;
}

int layer__merge_forward(layer_net *n, lnode *d, int64_t rows, bool training, err_info *e)
{
    (void)training, (void)e;
    layer_kind kind = layer__L(n, d)->kind;
    ltensor *yt = layer__out(n, d, 0);
    float *y = yt->val;
    int64_t cnt = rows * yt->row;
    memcpy(y, layer__in(n, d, 0)->val, sizeof(float) * (size_t)cnt);
    for (int i = 1; i < d->n_in; i++) {
        const float *x = layer__in(n, d, i)->val;
        if (kind == LAYER_SUBTRACT) {
            for (int64_t j = 0; j < cnt; j++)
                y[j] -= x[j];
        } else if (kind == LAYER_MULTIPLY) {
            for (int64_t j = 0; j < cnt; j++)
                y[j] *= x[j];
        } else { /* Add, Average */
            for (int64_t j = 0; j < cnt; j++)
                y[j] += x[j];
        }
    }
    if (kind == LAYER_AVERAGE) {
        /* Keras divides the sum by the number of inputs. */
        float k = (float)d->n_in;
        for (int64_t j = 0; j < cnt; j++)
            y[j] /= k;
    }
    return ERR_OK;
}

int layer__merge_backward(layer_net *n, lnode *d, int64_t rows, err_info *e)
{
    (void)e;
    layer_kind kind = layer__L(n, d)->kind;
    const ltensor *yt = layer__out(n, d, 0);
    const float *dy = yt->grad;
    int64_t cnt = rows * yt->row;
    for (int i = 0; i < d->n_in; i++) {
        if (!d->in[i].dx)
            continue;
        float *dx = layer__in(n, d, i)->grad;
        bool acc = d->in[i].acc;
        if (kind == LAYER_SUBTRACT && i == 0) {
            layer__put(dx, dy, cnt, acc);
        } else if (kind == LAYER_SUBTRACT) {
            layer__put_scaled(dx, dy, -1.0f, cnt, acc);
        } else if (kind == LAYER_AVERAGE) {
            layer__put_scaled(dx, dy, 1.0f / (float)d->n_in, cnt, acc);
        } else if (kind == LAYER_MULTIPLY) {
            /* d/dx_i of the product: dy times every other input (x_i may repeat). */
            for (int64_t j = 0; j < cnt; j++) {
                float v = dy[j];
                for (int k = 0; k < d->n_in; k++) {
                    if (k != i)
                        v *= layer__in(n, d, k)->val[j];
                }
                dx[j] = acc ? dx[j] + v : v;
            }
        } else { /* Add */
            layer__put(dx, dy, cnt, acc);
        }
    }
    return ERR_OK;
}

/* Concatenate: p[0] = blocks per sample (product of the extents before the axis); input i
 * contributes row_i / p[0] contiguous floats to each block. */
int layer__concat_plan(layer_net *n, lnode *d, err_info *e)
{
    const ltensor *y = layer__out(n, d, 0);
    int axis = layer__L(n, d)->cfg.axis;
    if (axis < 0)
        axis += y->rank;
    if (axis < 1 || axis >= y->rank)
        return layer__err(e, n, d, ERR_UNSUPPORTED, "axis %d of rank-%d inputs",
                          layer__L(n, d)->cfg.axis, y->rank);
    int64_t sum = 0;
    for (int i = 0; i < d->n_in; i++) {
        const ltensor *x = layer__in(n, d, i);
        bool same = x->rank == y->rank;
        for (int j = 1; same && j < x->rank; j++)
            same = j == axis || x->dims[j] == y->dims[j];
        if (!same) {
            char a[128], b[128];
            return layer__err(e, n, d, ERR_SHAPE,
                              "input %d has shape %s, which does not concatenate into %s on "
                              "axis %d",
                              i, tensor_shape_str(x->rank, x->dims, a, sizeof a),
                              tensor_shape_str(y->rank, y->dims, b, sizeof b), axis);
        }
        sum += x->dims[axis];
    }
    if (sum != y->dims[axis])
        return layer__err(e, n, d, ERR_SHAPE, "inputs add up to %lld on axis %d, output has %lld",
                          (long long)sum, axis, (long long)y->dims[axis]);
    d->p[0] = 1;
    for (int j = 1; j < axis; j++)
        d->p[0] *= y->dims[j];
    return ERR_OK;
}

int layer__concat_forward(layer_net *n, lnode *d, int64_t rows, bool training, err_info *e)
{
    (void)training, (void)e;
    const ltensor *yt = layer__out(n, d, 0);
    int64_t blocks = rows * d->p[0], ylen = d->p[0] > 0 ? yt->row / d->p[0] : 0;
    int64_t off = 0;
    for (int i = 0; i < d->n_in; i++) {
        const ltensor *x = layer__in(n, d, i);
        int64_t len = d->p[0] > 0 ? x->row / d->p[0] : 0;
        for (int64_t b = 0; b < blocks; b++)
            memcpy(yt->val + b * ylen + off, x->val + b * len, sizeof(float) * (size_t)len);
        off += len;
    }
    return ERR_OK;
}

int layer__concat_backward(layer_net *n, lnode *d, int64_t rows, err_info *e)
{
    (void)e;
    const ltensor *yt = layer__out(n, d, 0);
    int64_t blocks = rows * d->p[0], ylen = d->p[0] > 0 ? yt->row / d->p[0] : 0;
    int64_t off = 0;
    for (int i = 0; i < d->n_in; i++) {
        const ltensor *x = layer__in(n, d, i);
        int64_t len = d->p[0] > 0 ? x->row / d->p[0] : 0;
        if (d->in[i].dx) {
            for (int64_t b = 0; b < blocks; b++)
                layer__put(x->grad + b * len, yt->grad + b * ylen + off, len, d->in[i].acc);
        }
        off += len;
    }
    return ERR_OK;
}
