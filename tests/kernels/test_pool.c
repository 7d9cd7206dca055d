/* Optimised max/avg pooling against the plain-loop reference on awkward shapes, TF's tie rule
 * for max (first max wins), and TF's "same" average (divide by non-padded cells only).
 *
 * Tolerances: max pooling and its gradient are exact (selection, and dx sums at most
 * ph*pw values in an order that is not fixed: |d| <= 1e-6 * windows). Average pooling:
 * |opt - ref| <= 1e-6 + 1e-5 * |ref| (float sum of at most ph*pw = 9 values in [-1, 1]). */

#include "kernels/kern_pool.h"
#include "kernels/rng.h"
#include "test_util.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static float *alloc_nan(int64_t count)
{
    float *p = malloc(sizeof(float) * (size_t)(count > 0 ? count : 1));
    for (int64_t i = 0; i < count; i++)
        p[i] = NAN;
    return p;
}

static kern_pool_geom make(int64_t n, int64_t h, int64_t w, int64_t c, int64_t ph, int64_t pw,
                           int64_t sh, int64_t sw, bool same)
{
    kern_pool_geom g = {.n = n, .h = h, .w = w, .c = c, .ph = ph, .pw = pw, .sh = sh, .sw = sw};
    kern_pool_geom_set(&g, same);
    return g;
}

static int64_t count_bad(const char *what, const kern_pool_geom *g, const float *a,
                         const float *ref, int64_t count, double rtol, double atol)
{
    int64_t bad = 0;
    for (int64_t i = 0; i < count; i++)
        if (!test_close(a[i], ref[i], rtol, atol)) {
            if (bad < 3)
                fprintf(stderr,
                        "%s [n%ld h%ld w%ld c%ld p%ldx%ld s%ld,%ld pad%ld,%ld o%ldx%ld] at %ld: "
                        "%.8g vs ref %.8g\n",
                        what, (long)g->n, (long)g->h, (long)g->w, (long)g->c, (long)g->ph,
                        (long)g->pw, (long)g->sh, (long)g->sw, (long)g->pad_top, (long)g->pad_left,
                        (long)g->oh, (long)g->ow, (long)i, (double)a[i], (double)ref[i]);
            bad++;
        }
    return bad;
}

/* Every supported instruction-set variant against the reference. Inputs are quantised to a few
 * levels, so that windows often hold tied maxima. y, dx start as NaN to check that they are
 * overwritten. */
static void check_geom(rng *r, const kern_pool_geom *g)
{
    const int64_t nx = g->n * g->h * g->w * g->c;
    const int64_t ny = g->n * (g->oh > 0 && g->ow > 0 ? g->oh * g->ow : 0) * g->c;
    float *x = malloc(sizeof(float) * (size_t)(nx + 1)),
          *xa = malloc(sizeof(float) * (size_t)(nx + 1));
    float *dy = malloc(sizeof(float) * (size_t)(ny + 1));
    for (int64_t i = 0; i < nx; i++) {
        x[i] = (float)rng_below(r, 4) - 1.5f;
        xa[i] = 2.0f * rng_uniform_f(r) - 1.0f;
    }
    for (int64_t i = 0; i < ny; i++)
        dy[i] = 2.0f * rng_uniform_f(r) - 1.0f;
    float *y = alloc_nan(ny), *y_ref = alloc_nan(ny), *dx = alloc_nan(nx), *dx_ref = alloc_nan(nx);
    float *ya_ref = alloc_nan(ny), *dxa_ref = alloc_nan(nx);
    int32_t *am = malloc(sizeof(int32_t) * (size_t)(ny + 1));
    int32_t *am_ref = malloc(sizeof(int32_t) * (size_t)(ny + 1));
    kern_ref_maxpool2d_forward(g, x, y_ref, am_ref);
    kern_ref_maxpool2d_backward(g, dy, am_ref, dx_ref);
    kern_ref_avgpool2d_forward(g, xa, ya_ref);
    kern_ref_avgpool2d_backward(g, dy, dxa_ref);

    for (int isa = KERN_ISA_AUTO; isa < KERN_ISA_COUNT; isa++) {
        if (!kern_isa_supported((kern_isa)isa))
            continue;
        for (int64_t i = 0; i < ny; i++)
            y[i] = NAN;
        kern_maxpool2d_forward_isa(g, x, y, am, (kern_isa)isa);
        EXPECT_MSG(count_bad("max y", g, y, y_ref, ny, 0, 0) == 0, "isa %d", isa);
        EXPECT_MSG(memcmp(am, am_ref, sizeof(int32_t) * (size_t)ny) == 0, "isa %d", isa);
        /* The argmax encoding is the documented one: it points at a cell holding the max. */
        bool enc_ok = true;
        for (int64_t i = 0; i < ny; i++) {
            int64_t b = i / (g->oh * g->ow * g->c);
            enc_ok = enc_ok && am[i] >= 0 && am[i] % g->c == i % g->c &&
                     x[b * g->h * g->w * g->c + am[i]] == y[i];
        }
        EXPECT(enc_ok);
        /* Inference (argmax NULL) gives the same maxima. */
        for (int64_t i = 0; i < ny; i++)
            y[i] = NAN;
        kern_maxpool2d_forward_isa(g, x, y, NULL, (kern_isa)isa);
        EXPECT_MSG(count_bad("max y (no argmax)", g, y, y_ref, ny, 0, 0) == 0, "isa %d", isa);
        for (int64_t i = 0; i < nx; i++)
            dx[i] = NAN;
        kern_maxpool2d_backward_isa(g, dy, am, dx, (kern_isa)isa);
        EXPECT_MSG(count_bad("max dx", g, dx, dx_ref, nx, 0, 1e-6 * (double)(g->ph * g->pw)) == 0,
                   "isa %d", isa);

        for (int64_t i = 0; i < ny; i++)
            y[i] = NAN;
        kern_avgpool2d_forward_isa(g, xa, y, (kern_isa)isa);
        EXPECT_MSG(count_bad("avg y", g, y, ya_ref, ny, 1e-5, 1e-6) == 0, "isa %d", isa);
        for (int64_t i = 0; i < nx; i++)
            dx[i] = NAN;
        kern_avgpool2d_backward_isa(g, dy, dx, (kern_isa)isa);
        EXPECT_MSG(count_bad("avg dx", g, dx, dxa_ref, nx, 1e-5, 1e-6 * (double)(g->ph * g->pw)) ==
                       0,
                   "isa %d", isa);
    }
    free(x);
    free(xa);
    free(dy);
    free(y);
    free(y_ref);
    free(ya_ref);
    free(dx);
    free(dx_ref);
    free(dxa_ref);
    free(am);
    free(am_ref);
}

static void test_geom_set(void)
{
    kern_pool_geom g = make(1, 26, 26, 32, 2, 2, 2, 2, false);
    EXPECT(g.oh == 13 && g.ow == 13 && g.pad_top == 0);
    g = make(1, 11, 11, 64, 2, 2, 2, 2, false);
    EXPECT(g.oh == 5 && g.ow == 5);
    g = make(1, 11, 11, 64, 2, 2, 2, 2, true);
    EXPECT(g.oh == 6 && g.ow == 6 && g.pad_top == 0 && g.pad_left == 0);
    /* in 5, pool 3, stride 1, same: pad_total 2 -> 1 before. */
    g = make(1, 5, 5, 1, 3, 3, 1, 1, true);
    EXPECT(g.oh == 5 && g.pad_top == 1);
    /* in 6, pool 3, stride 2, same: out 3, pad_total 1 -> 0 before (1 after). */
    g = make(1, 6, 6, 1, 3, 3, 2, 2, true);
    EXPECT(g.oh == 3 && g.pad_top == 0);
    g = make(1, 2, 2, 1, 3, 3, 1, 1, false);
    EXPECT(g.oh == 0);
}

/* Ties: a 2x2 window of equal values selects its top-left cell; equal maxima later in row-major
 * order lose; a negative window picks its largest, not 0 (padding never competes). */
static void test_ties(void)
{
    kern_pool_geom g = make(1, 2, 4, 1, 2, 2, 2, 2, false);
    const float x[8] = {5, 5, -3, -2, 5, 5, -2, -4};
    float y[2], dx[8], dy[2] = {1.5f, -2.0f};
    int32_t am[2];
    kern_maxpool2d_forward(&g, x, y, am);
    EXPECT(y[0] == 5 && am[0] == 0);
    EXPECT(y[1] == -2 && am[1] == 3); /* -2 at (0,3) comes before -2 at (1,2) */
    kern_maxpool2d_backward(&g, dy, am, dx);
    const float want[8] = {1.5f, 0, 0, -2.0f, 0, 0, 0, 0};
    EXPECT(memcmp(dx, want, sizeof dx) == 0);

    /* "same" 3x3/1 on an all-negative 3x3 image: every max is over real cells only. */
    g = make(1, 3, 3, 1, 3, 3, 1, 1, true);
    const float xn[9] = {-9, -8, -7, -6, -5, -4, -3, -2, -1};
    float yn[9];
    int32_t amn[9];
    kern_maxpool2d_forward(&g, xn, yn, amn);
    EXPECT(yn[0] == -5 && yn[4] == -1 && yn[8] == -1 && yn[2] == -4);
    EXPECT(amn[0] == 4 && amn[8] == 8);
    /* Overlapping windows selecting the same cell add up: cell 8 wins in 4 windows. */
    float dyn[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1}, dxn[9];
    kern_maxpool2d_backward(&g, dyn, amn, dxn);
    EXPECT(dxn[8] == 4 && dxn[4] == 1 && dxn[0] == 0);
}

/* "same" average divides by the cells inside the input: 3x3 input 1..9, pool 2, stride 2 gives
 * windows {1,2,4,5}, {3,6}, {7,8}, {9}. */
static void test_avg_same_counts(void)
{
    kern_pool_geom g = make(1, 3, 3, 1, 2, 2, 2, 2, true);
    EXPECT(g.oh == 2 && g.pad_top == 0);
    const float x[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    float y[4], dx[9], dy[4] = {4, 2, 2, 1};
    kern_avgpool2d_forward(&g, x, y);
    EXPECT(y[0] == 3.0f && y[1] == 4.5f && y[2] == 7.5f && y[3] == 9.0f);
    kern_avgpool2d_backward(&g, dy, dx);
    const float want[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    EXPECT(memcmp(dx, want, sizeof dx) == 0);
    /* An all-ones input stays exactly 1 under "same" padding (3x3/1 on 4x5). */
    g = make(2, 4, 5, 3, 3, 3, 1, 1, true);
    float ones[120], yo[120];
    for (int i = 0; i < 120; i++)
        ones[i] = 1.0f;
    kern_avgpool2d_forward(&g, ones, yo);
    bool all_one = true;
    for (int i = 0; i < 120; i++)
        all_one = all_one && fabsf(yo[i] - 1.0f) < 1e-6f;
    EXPECT(all_one);
}

int main(void)
{
    rng r;
    rng_seed(&r, 99, 0);
    test_geom_set();
    test_ties();
    test_avg_same_counts();

    static const int64_t ns[] = {1, 7, 3};
    static const int64_t hws[] = {1, 5, 7, 33, 6};
    static const int64_t cs[] = {1, 3, 7, 33};
    int idx = 0;
    for (int64_t ph = 1; ph <= 3; ph++)
        for (int64_t pw = 1; pw <= 3; pw++)
            for (int64_t s = 1; s <= 3; s++)
                for (int same = 0; same <= 1; same++, idx++) {
                    kern_pool_geom g = make(ns[idx % 3], hws[idx % 5], hws[(idx / 5) % 5],
                                            cs[idx % 4], ph, pw, s, (idx % 3) + 1, same);
                    if (g.oh > 0 && g.ow > 0)
                        check_geom(&r, &g);
                    /* Keras default strides == pool_size. */
                    g = make(ns[(idx + 1) % 3], hws[(idx + 2) % 5], hws[(idx + 3) % 5],
                             cs[(idx + 1) % 4], ph, pw, ph, pw, same);
                    if (g.oh > 0 && g.ow > 0)
                        check_geom(&r, &g);
                }
    /* The CNN's pools, MaxPooling1D-like (h = 1), and a partial batch of the first. */
    kern_pool_geom g = make(7, 26, 26, 32, 2, 2, 2, 2, false);
    check_geom(&r, &g);
    g.n = 3;
    check_geom(&r, &g);
    g = make(7, 11, 11, 64, 2, 2, 2, 2, false);
    check_geom(&r, &g);
    g = make(5, 1, 33, 7, 1, 3, 1, 2, true);
    check_geom(&r, &g);
    return test_finish();
}
