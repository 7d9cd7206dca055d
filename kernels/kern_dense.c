#include "kernels/kern_dense.h"

#include <cblas.h>
#include <string.h>

#include "kernels/kern_mm.h"

/* Who multiplies: our own register-tiled products (kern_mm.h, the same ones as the
 * convolutions) when they beat cblas_sgemm on this CPU (kern__mm_own: AVX-512 with OpenBLAS on
 * its AVX2 kernels or one thread, measured 2x sgemm on the MLP's shapes), otherwise sgemm.
 * OpenBLAS takes int extents; the layer engine checks at plan time that every extent fits. */

/* Columns of k^T packed at a time for our dx product. */
enum { DENSE_DX_BLOCK = 64 };

size_t kern_dense_workspace(int64_t in, int64_t out)
{
    (void)in;
    return out > 0 ? (size_t)out * DENSE_DX_BLOCK : 0;
}

void kern_dense_forward(int64_t rows, int64_t in, int64_t out, act_kind act, const float *x,
                        const float *k, const float *b, float *z, float *y)
{
    if (rows <= 0)
        return;
    if (in > 0 && out > 0 && kern__mm_own(in)) {
        /* The bias starts the accumulators; the epilogue only keeps z and applies act. */
        kern__mm_nn(rows, out, in, x, in, k, out, b, y, out);
        kern_act_bias_forward(act, rows, out, NULL, y, z);
        return;
    }
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
                         float *db, bool acc_w, float *dx, bool acc_x, float *ws)
{
    /* dz in place, fused with the bias gradient (column sums). */
    kern_act_bias_backward(act, rows, out, z, y, dy, db, acc_w);
    if (dk != NULL) {
        if (rows > 0 && in > 0 && out > 0 && kern__mm_own(in)) {
            if (!acc_w)
                memset(dk, 0, sizeof(float) * (size_t)(in * out));
            kern__mm_tn(rows, in, out, x, in, dy, out, dk, out);
        } else if (rows > 0 && in > 0) {
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)in, (int)out, (int)rows, 1.0f,
                        x, (int)in, dy, (int)out, acc_w ? 1.0f : 0.0f, dk, (int)out);
        } else if (!acc_w) {
            memset(dk, 0, sizeof(float) * (size_t)(in * out));
        }
    }
    if (dx != NULL && rows > 0 && in > 0) {
        if (out > 0 && !acc_x && ws != NULL && kern__mm_own(out)) {
            /* dx[:, block] = dz k[block, :]^T, with the block of k^T packed into ws first. */
            for (int64_t j0 = 0; j0 < in; j0 += DENSE_DX_BLOCK) {
                const int64_t nb = in - j0 < DENSE_DX_BLOCK ? in - j0 : DENSE_DX_BLOCK;
                kern__transpose(nb, out, k + j0 * out, out, ws, DENSE_DX_BLOCK);
                kern__mm_nn(rows, nb, out, dy, out, ws, DENSE_DX_BLOCK, NULL, dx + j0, in);
            }
        } else if (out > 0) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)in, (int)out, 1.0f,
                        dy, (int)out, k, (int)out, acc_x ? 1.0f : 0.0f, dx, (int)in);
        } else if (!acc_x) {
            memset(dx, 0, sizeof(float) * (size_t)(rows * in));
        }
    }
}
