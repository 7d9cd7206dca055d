#include "kernels/kern_dense.h"

#include <cblas.h>
#include <string.h>

/* OpenBLAS takes int extents; the layer engine checks at plan time that every extent fits. */
void kern_dense_forward(int64_t rows, int64_t in, int64_t out, act_kind act, const float *x,
                        const float *k, const float *b, float *z, float *y)
{
    if (rows <= 0)
        return;
    if (in > 0) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)out, (int)in, 1.0f,
                    x, (int)in, k, (int)out, 0.0f, y, (int)out);
    } else {
        memset(y, 0, sizeof(float) * (size_t)(rows * out));
    }
    /* One pass adds the bias, keeps the pre-activation if asked and applies the activation. */
    kern_act_bias_forward(act, rows, out, b, y, z);
}

void kern_dense_backward(int64_t rows, int64_t in, int64_t out, act_kind act, const float *x,
                         const float *k, const float *z, const float *y, float *dy, float *dk,
                         float *db, bool acc_w, float *dx, bool acc_x)
{
    /* dz in place, fused with the bias gradient (column sums). */
    kern_act_bias_backward(act, rows, out, z, y, dy, db, acc_w);
    if (dk != NULL) {
        if (rows > 0 && in > 0) {
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)in, (int)out, (int)rows, 1.0f,
                        x, (int)in, dy, (int)out, acc_w ? 1.0f : 0.0f, dk, (int)out);
        } else if (!acc_w) {
            memset(dk, 0, sizeof(float) * (size_t)(in * out));
        }
    }
    if (dx != NULL && rows > 0 && in > 0) {
        if (out > 0) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)in, (int)out, 1.0f,
                        dy, (int)out, k, (int)out, acc_x ? 1.0f : 0.0f, dx, (int)in);
        } else if (!acc_x) {
            memset(dx, 0, sizeof(float) * (size_t)(rows * in));
        }
    }
}
