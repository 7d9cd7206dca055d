/* kern_dense (OpenBLAS GEMMs + fused epilogues) against its plain-loop reference on awkward
 * shapes (every combination of 1, 7 and 33 for rows, in and out) and every activation, with
 * overwrite and accumulate modes and skipped outputs (NULL dk, db or dx).
 *
 * Tolerance: |opt - ref| <= 1e-5 * (1 + |ref|) * sqrt(k) for a length-k float dot product
 * (GEMM sums in a different order than the double reference); the activation derivatives add
 * the from-output error documented in tests/kernels/test_act.c, covered by the 1e-4 relative
 * term. */

#include "kernels/kern_dense.h"
#include "kernels/rng.h"
#include "test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static float *falloc(int64_t n)
{
    float *p = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    CHECK(p != NULL);
    return p;
}

static void fill(rng *r, float *p, int64_t n, float scale)
{
    for (int64_t i = 0; i < n; i++)
        p[i] = scale * (2.0f * rng_uniform_f(r) - 1.0f);
}

static int far(const float *a, const float *b, int64_t n, double k, double mul)
{
    int bad = 0;
    double tol = 1e-5 * sqrt(k);
    for (int64_t i = 0; i < n; i++)
        bad += !test_close(a[i], mul * b[i], 1e-4 + tol, tol);
    return bad;
}

static void check(rng *r, int64_t rows, int64_t in, int64_t out, act_kind act)
{
    float *x = falloc(rows * in), *k = falloc(in * out), *b = falloc(out), *y = falloc(rows * out),
          *yr = falloc(rows * out), *z = falloc(rows * out), *dy = falloc(rows * out),
          *g = falloc(rows * out), *dk = falloc(in * out), *db = falloc(out),
          *dx = falloc(rows * in), *dkr = falloc(in * out), *dbr = falloc(out),
          *dxr = falloc(rows * in), *ws = falloc((int64_t)kern_dense_workspace(in, out) + 1);
    fill(r, x, rows * in, 1.0f);
    fill(r, k, in * out, 1.0f / sqrtf((float)in));
    fill(r, b, out, 0.5f);
    fill(r, dy, rows * out, 1.0f);
    kern_dense_forward(rows, in, out, act, x, k, b, z, y);
    kern_ref_dense_forward(rows, in, out, act, x, k, b, yr);
    EXPECT_MSG(far(y, yr, rows * out, (double)in, 1) == 0, "forward %s %lldx%lld->%lld",
               kern_act_name(act), (long long)rows, (long long)in, (long long)out);
    kern_ref_dense_backward(rows, in, out, act, x, k, b, dy, dkr, dbr, dxr);
    memcpy(g, dy, sizeof(float) * (size_t)(rows * out));
    kern_dense_backward(rows, in, out, act, x, k, z, y, g, dk, db, false, dx, false, ws);
    EXPECT_MSG(far(dk, dkr, in * out, (double)rows, 1) == 0 &&
                   far(db, dbr, out, (double)rows, 1) == 0 &&
                   far(dx, dxr, rows * in, (double)out, 1) == 0,
               "backward %s %lldx%lld->%lld", kern_act_name(act), (long long)rows, (long long)in,
               (long long)out);
    /* Accumulate: a second call adds the same amounts. */
    memcpy(g, dy, sizeof(float) * (size_t)(rows * out));
    kern_dense_backward(rows, in, out, act, x, k, z, y, g, dk, db, true, dx, true, ws);
    EXPECT_MSG(far(dk, dkr, in * out, (double)rows, 2) == 0 &&
                   far(db, dbr, out, (double)rows, 2) == 0 &&
                   far(dx, dxr, rows * in, (double)out, 2) == 0,
               "accumulating backward %s", kern_act_name(act));
    /* Skipped outputs are not touched. */
    memcpy(g, dy, sizeof(float) * (size_t)(rows * out));
    for (int64_t i = 0; i < rows * in; i++)
        dx[i] = 7.0f;
    kern_dense_backward(rows, in, out, act, x, k, z, y, g, NULL, NULL, false, NULL, false, ws);
    bool untouched = true;
    for (int64_t i = 0; i < rows * in; i++)
        untouched = untouched && dx[i] == 7.0f;
    EXPECT(untouched);
    free(x), free(k), free(b), free(y), free(yr), free(z), free(dy), free(g), free(dk), free(db),
        free(dx), free(dkr), free(dbr), free(dxr), free(ws);
}

int main(void)
{
    rng r;
    rng_seed(&r, 2024, 0);
    /* 100 > the 64-column blocks of the dx product and the 16-row tiles: partial ones too. */
    const int64_t s[] = {1, 7, 33, 100};
    for (int a = 0; a < ACT_COUNT; a++)
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++)
                for (int l = 0; l < 4; l++)
                    check(&r, s[i], s[j], s[l], (act_kind)a);
    /* Zero rows: weights gradients are cleared, nothing else happens. */
    float k[6] = {1, 2, 3, 4, 5, 6}, dk[6], db[2] = {9, 9};
    for (int i = 0; i < 6; i++)
        dk[i] = 9;
    kern_dense_forward(0, 3, 2, ACT_RELU, NULL, k, NULL, NULL, NULL);
    kern_dense_backward(0, 3, 2, ACT_RELU, NULL, k, NULL, NULL, NULL, dk, db, false, NULL, false,
                        NULL);
    EXPECT(dk[0] == 0 && dk[5] == 0 && db[0] == 0 && db[1] == 0);
    return test_finish();
}
