/* Reference twins of kern_dense.c: plain loops with double accumulation. */
#include "kernels/kern_dense.h"

#include <stdlib.h>

void kern_ref_dense_forward(int64_t rows, int64_t in, int64_t out, act_kind act, const float *x,
                            const float *k, const float *b, float *y)
{
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t j = 0; j < out; j++) {
            double s = b != NULL ? b[j] : 0.0;
            for (int64_t i = 0; i < in; i++)
                s += (double)x[r * in + i] * k[i * out + j];
            y[r * out + j] = (float)s;
        }
        kern_ref_act_forward(act, 1, out, y + r * out, y + r * out);
    }
}

void kern_ref_dense_backward(int64_t rows, int64_t in, int64_t out, act_kind act, const float *x,
                             const float *k, const float *b, const float *dy, float *dk, float *db,
                             float *dx)
{
    /* Recompute the pre-activation, then dz through the reference activation derivative. */
    float *z = malloc(sizeof(float) * (size_t)(rows * out + 1));
    float *dz = malloc(sizeof(float) * (size_t)(rows * out + 1));
    CHECK(z != NULL && dz != NULL);
    kern_ref_dense_forward(rows, in, out, ACT_LINEAR, x, k, b, z);
    kern_ref_act_backward(act, rows, out, z, dy, dz);
    if (dk != NULL) {
        for (int64_t i = 0; i < in; i++) {
            for (int64_t j = 0; j < out; j++) {
                double s = 0;
                for (int64_t r = 0; r < rows; r++)
                    s += (double)x[r * in + i] * dz[r * out + j];
                dk[i * out + j] = (float)s;
            }
        }
    }
    if (db != NULL) {
        for (int64_t j = 0; j < out; j++) {
            double s = 0;
            for (int64_t r = 0; r < rows; r++)
                s += dz[r * out + j];
            db[j] = (float)s;
        }
    }
    if (dx != NULL) {
        for (int64_t r = 0; r < rows; r++) {
            for (int64_t i = 0; i < in; i++) {
                double s = 0;
                for (int64_t j = 0; j < out; j++)
                    s += (double)dz[r * out + j] * k[i * out + j];
                dx[r * in + i] = (float)s;
            }
        }
    }
    free(z);
    free(dz);
}
