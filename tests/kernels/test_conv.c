/* Optimised conv2d against the plain-loop reference on awkward shapes, forward and backward, in
 * every instruction-set variant the CPU supports (so both our own multiply kernels and the sgemm
 * path, the row-major and the tap-major im2col, and the pointwise path run), plus TF's padding
 * arithmetic and a case worked by hand.
 *
 * Tolerance: |opt - ref| <= 1e-5 * (terms + 1) * scale + 1e-5 * |ref|, where terms is the number
 * of products summed into the element (K = kh*kw*cin for y, n*oh*ow for dk and db, kh*kw*cout
 * for dx) and scale the largest |operand product| (inputs are uniform in [-1, 1], so 1). Float32
 * summation of `terms` products has an error of at most about terms * 6e-8 * scale; the bound
 * leaves room for any summation order and for the accumulated initial value of dk and db. */

#include "kernels/kern_conv.h"
#include "kernels/rng.h"
#include "test_util.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static float *alloc_rand(rng *r, int64_t count)
{
    float *p = malloc(sizeof(float) * (size_t)(count > 0 ? count : 1));
    for (int64_t i = 0; i < count; i++)
        p[i] = 2.0f * rng_uniform_f(r) - 1.0f;
    return p;
}

static float *alloc_nan(int64_t count)
{
    float *p = malloc(sizeof(float) * (size_t)(count > 0 ? count : 1));
    for (int64_t i = 0; i < count; i++)
        p[i] = NAN;
    return p;
}

/* Number of mismatches between a and ref over count elements (each element summed terms). */
static int64_t count_bad(const char *what, const kern_conv_geom *g, const float *a,
                         const float *ref, int64_t count, int64_t terms)
{
    int64_t bad = 0;
    double atol = 1e-5 * (double)(terms + 1);
    for (int64_t i = 0; i < count; i++)
        if (!test_close(a[i], ref[i], 1e-5, atol)) {
            if (bad < 3)
                fprintf(stderr,
                        "%s [n%ld h%ld w%ld cin%ld k%ldx%ld cout%ld s%ld,%ld d%ld,%ld p%ld,%ld "
                        "o%ldx%ld] at %ld: %.8g vs ref %.8g\n",
                        what, (long)g->n, (long)g->h, (long)g->w, (long)g->cin, (long)g->kh,
                        (long)g->kw, (long)g->cout, (long)g->sh, (long)g->sw, (long)g->dh,
                        (long)g->dw, (long)g->pad_top, (long)g->pad_left, (long)g->oh, (long)g->ow,
                        (long)i, (double)a[i], (double)ref[i]);
            bad++;
        }
    return bad;
}

/* Runs forward and backward of geometry g (already set) against the reference, for every
 * instruction-set variant this CPU supports, with the workspace sized for g and, as a second
 * pass, for a bigger batch while calling with g->n (the partial-batch use). dk and db start from
 * random values to check that they are accumulated, dx, y and the workspace from NaN to check
 * that they are overwritten and that no kernel relies on zeroed scratch. */
static void check_geom(rng *r, const kern_conv_geom *g_in, bool use_bias)
{
    kern_conv_geom g = *g_in;
    const int64_t K = g.kh * g.kw * g.cin;
    const int64_t nx = g.n * g.h * g.w * g.cin, nk = K * g.cout;
    const int64_t rows = g.n * (g.oh > 0 && g.ow > 0 ? g.oh * g.ow : 0), ny = rows * g.cout;
    float *x = alloc_rand(r, nx), *k = alloc_rand(r, nk), *bias = alloc_rand(r, g.cout);
    float *dy = alloc_rand(r, ny), *dk0 = alloc_rand(r, nk), *db0 = alloc_rand(r, g.cout);
    float *y = alloc_nan(ny), *y_ref = alloc_nan(ny), *dx = alloc_nan(nx), *dx_ref = alloc_nan(nx);
    float *dk = alloc_nan(nk), *dk_ref = alloc_nan(nk), *db = alloc_nan(g.cout);
    float *db_ref = alloc_nan(g.cout);
    const float *b = use_bias ? bias : NULL;

    kern_ref_conv2d_forward(&g, x, k, b, y_ref);
    memcpy(dk_ref, dk0, sizeof(float) * (size_t)nk);
    memcpy(db_ref, db0, sizeof(float) * (size_t)g.cout);
    kern_ref_conv2d_backward(&g, x, k, dy, dx_ref, dk_ref, use_bias ? db_ref : NULL);
    /* A reference that skips dx accumulates dk the same way. */
    float *dk_ref2 = alloc_nan(nk);
    memcpy(dk_ref2, dk0, sizeof(float) * (size_t)nk);
    kern_ref_conv2d_backward(&g, x, k, dy, NULL, dk_ref2, NULL);
    EXPECT(nk == 0 || memcmp(dk_ref, dk_ref2, sizeof(float) * (size_t)nk) == 0);

    for (int isa = KERN_ISA_GENERIC; isa < KERN_ISA_COUNT; isa++) {
        if (!kern_isa_supported((kern_isa)isa))
            continue;
        for (int pass = 0; pass < 2; pass++) {
            kern_conv_geom gw = g;
            if (pass == 1)
                gw.n = 2 * g.n + 3;
            const size_t wsz = kern_conv2d_workspace(&gw);
            EXPECT(wsz >= kern_conv2d_workspace(&g));
            /* Exactly the promised size, so that ASan catches overruns. */
            float *ws = wsz ? alloc_nan((int64_t)wsz) : NULL;
            for (int64_t i = 0; i < ny; i++)
                y[i] = NAN;
            kern_conv2d_forward_isa(&g, x, k, b, y, ws, (kern_isa)isa);
            EXPECT_MSG(count_bad("forward y", &g, y, y_ref, ny, K) == 0, "isa %d pass %d", isa,
                       pass);

            for (size_t i = 0; i < wsz; i++)
                ws[i] = NAN;
            for (int64_t i = 0; i < nx; i++)
                dx[i] = NAN;
            memcpy(dk, dk0, sizeof(float) * (size_t)nk);
            memcpy(db, db0, sizeof(float) * (size_t)g.cout);
            kern_conv2d_backward_isa(&g, x, k, dy, dx, dk, use_bias ? db : NULL, ws, (kern_isa)isa);
            EXPECT_MSG(count_bad("backward dx", &g, dx, dx_ref, nx, g.kh * g.kw * g.cout) == 0,
                       "isa %d pass %d", isa, pass);
            EXPECT_MSG(count_bad("backward dk", &g, dk, dk_ref, nk, rows + 1) == 0,
                       "isa %d pass %d", isa, pass);
            if (use_bias)
                EXPECT_MSG(count_bad("backward db", &g, db, db_ref, g.cout, rows + 1) == 0,
                           "isa %d pass %d", isa, pass);
            else
                EXPECT(memcmp(db, db0, sizeof(float) * (size_t)g.cout) == 0);

            /* dx == NULL skips dx and still accumulates dk; dk == NULL still writes dx. */
            memcpy(dk, dk0, sizeof(float) * (size_t)nk);
            kern_conv2d_backward_isa(&g, x, k, dy, NULL, dk, NULL, ws, (kern_isa)isa);
            EXPECT_MSG(count_bad("dk with dx=NULL", &g, dk, dk_ref, nk, rows + 1) == 0,
                       "isa %d pass %d", isa, pass);
            for (int64_t i = 0; i < nx; i++)
                dx[i] = NAN;
            kern_conv2d_backward_isa(&g, x, k, dy, dx, NULL, NULL, ws, (kern_isa)isa);
            EXPECT_MSG(count_bad("dx with dk=NULL", &g, dx, dx_ref, nx, g.kh * g.kw * g.cout) == 0,
                       "isa %d pass %d", isa, pass);
            free(ws);
        }
    }
    /* The default entry points agree with the pinned best variant. */
    {
        const size_t wsz = kern_conv2d_workspace(&g);
        float *ws = wsz ? alloc_nan((int64_t)wsz) : NULL;
        kern_conv2d_forward(&g, x, k, b, y, ws);
        EXPECT(count_bad("forward y (auto)", &g, y, y_ref, ny, K) == 0);
        memcpy(dk, dk0, sizeof(float) * (size_t)nk);
        kern_conv2d_backward(&g, x, k, dy, dx, dk, NULL, ws);
        EXPECT(count_bad("backward dx (auto)", &g, dx, dx_ref, nx, g.kh * g.kw * g.cout) == 0);
        EXPECT(count_bad("backward dk (auto)", &g, dk, dk_ref, nk, rows + 1) == 0);
        free(ws);
    }
    free(x);
    free(k);
    free(bias);
    free(dy);
    free(dk0);
    free(db0);
    free(y);
    free(y_ref);
    free(dx);
    free(dx_ref);
    free(dk);
    free(dk_ref);
    free(dk_ref2);
    free(db);
    free(db_ref);
}

static kern_conv_geom make(int64_t n, int64_t h, int64_t w, int64_t cin, int64_t kh, int64_t kw,
                           int64_t cout, int64_t sh, int64_t sw, int64_t dh, int64_t dw, bool same)
{
    kern_conv_geom g = {.n = n,
                        .h = h,
                        .w = w,
                        .cin = cin,
                        .kh = kh,
                        .kw = kw,
                        .cout = cout,
                        .sh = sh,
                        .sw = sw,
                        .dh = dh,
                        .dw = dw};
    kern_conv_geom_set(&g, same);
    return g;
}

/* Padding and output sizes against values worked out by hand from TF's rules. */
static void test_geom_set(void)
{
    kern_conv_geom g = make(1, 28, 28, 1, 3, 3, 32, 1, 1, 1, 1, false);
    EXPECT(g.oh == 26 && g.ow == 26 && g.pad_top == 0 && g.pad_left == 0);
    g = make(1, 28, 28, 1, 3, 3, 32, 1, 1, 1, 1, true);
    EXPECT(g.oh == 28 && g.ow == 28 && g.pad_top == 1 && g.pad_left == 1);
    /* in 5, k 2, s 2, same: out 3, pad_total 1 -> 0 before, 1 after. */
    g = make(1, 5, 5, 1, 2, 2, 1, 2, 2, 1, 1, true);
    EXPECT(g.oh == 3 && g.pad_top == 0);
    /* in 7, k 3, d 2 (extent 5), s 2: same out 4, pad_total 4 -> 2; valid out 2. */
    g = make(1, 7, 7, 1, 3, 3, 1, 2, 2, 2, 2, true);
    EXPECT(g.oh == 4 && g.pad_top == 2);
    g = make(1, 7, 7, 1, 3, 3, 1, 2, 2, 2, 2, false);
    EXPECT(g.oh == 2 && g.pad_top == 0);
    /* in 6, k 4, s 1, same: pad_total 3 -> 1 before, 2 after. */
    g = make(1, 6, 6, 1, 4, 4, 1, 1, 1, 1, 1, true);
    EXPECT(g.oh == 6 && g.pad_top == 1);
    /* Window bigger than the input under "valid": no output. */
    g = make(1, 2, 2, 1, 3, 3, 1, 1, 1, 1, 1, false);
    EXPECT(g.oh == 0);
    /* Stride larger than the input under "same": one output, no padding needed. */
    g = make(1, 2, 9, 1, 1, 1, 1, 3, 4, 1, 1, true);
    EXPECT(g.oh == 1 && g.ow == 3 && g.pad_top == 0 && g.pad_left == 0);
}

/* A tiny case computed by hand: 1x3x3x1 input 1..9, 2x2 kernel of ones, bias 0.5, valid. */
static void test_by_hand(void)
{
    kern_conv_geom g = make(1, 3, 3, 1, 2, 2, 1, 1, 1, 1, 1, false);
    float x[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9}, k[4] = {1, 1, 1, 1}, bias[1] = {0.5f}, y[4];
    float ws[64];
    EXPECT(kern_conv2d_workspace(&g) <= 64);
    kern_conv2d_forward(&g, x, k, bias, y, ws);
    EXPECT(y[0] == 12.5f && y[1] == 16.5f && y[2] == 24.5f && y[3] == 28.5f);
    /* dy = 1: dx counts how many windows cover each cell; dk sums each window position. */
    float dy[4] = {1, 1, 1, 1}, dx[9], dk[4] = {100, 0, 0, 0}, db[1] = {1};
    kern_conv2d_backward(&g, x, k, dy, dx, dk, db, ws);
    const float dx_want[9] = {1, 2, 1, 2, 4, 2, 1, 2, 1};
    EXPECT(memcmp(dx, dx_want, sizeof dx) == 0);
    EXPECT(dk[0] == 112 && dk[1] == 16 && dk[2] == 24 && dk[3] == 28);
    EXPECT(db[0] == 5);
}

int main(void)
{
    rng r;
    rng_seed(&r, 1234, 0);
    test_geom_set();
    test_by_hand();

    /* Every (kernel, stride, dilation, padding) combination, with the batch, image and channel
     * extents cycling through awkward values so that each one meets several geometries. */
    static const int64_t ns[] = {1, 7, 3, 1, 7};
    static const int64_t hws[] = {1, 5, 7, 33, 6};
    static const int64_t cins[] = {1, 3, 7};
    static const int64_t couts[] = {1, 5, 33, 4};
    static const int64_t ks[] = {1, 2, 3, 5};
    int idx = 0;
    for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++)
        for (int64_t s = 1; s <= 3; s++)
            for (int64_t d = 1; d <= 2; d++)
                for (int same = 0; same <= 1; same++, idx++) {
                    int64_t h = hws[idx % 5], w = hws[(idx / 5 + idx) % 5];
                    int64_t n = ns[idx % 5];
                    /* Keep the big-image cases cheap for the reference under Debug/ASan. */
                    if (h * w > 200 && n > 3)
                        n = 3;
                    kern_conv_geom g =
                        make(n, h, w, cins[idx % 3], ks[ki], ks[(ki + (size_t)idx) % 4],
                             couts[idx % 4], s, (s % 3) + 1, d, 3 - d, same);
                    check_geom(&r, &g, idx % 4 != 3);
                    /* The same geometry, square (kh == kw, sh == sw, dh == dw). */
                    g = make(n, h, h, cins[(idx + 1) % 3], ks[ki], ks[ki], couts[(idx + 1) % 4], s,
                             s, d, d, same);
                    check_geom(&r, &g, true);
                }

    /* The Fashion-MNIST CNN's layers at a small batch, pointwise 1x1 (no im2col), Conv1D shapes
     * (h = 1, kh = 1), a Conv1D "causal" geometry filled by hand, and a batch that spans several
     * workspace chunks (33x33x7 images, 3x3 kernel: 3 images per chunk, a partial last one). */
    kern_conv_geom g = make(7, 28, 28, 1, 3, 3, 32, 1, 1, 1, 1, false);
    check_geom(&r, &g, true);
    g = make(5, 13, 13, 32, 3, 3, 64, 1, 1, 1, 1, false);
    check_geom(&r, &g, true);
    g = make(7, 5, 7, 33, 1, 1, 5, 1, 1, 1, 1, true);
    check_geom(&r, &g, true);
    g = make(3, 5, 7, 3, 1, 1, 7, 1, 1, 1, 1, false);
    check_geom(&r, &g, false);
    g = make(7, 1, 33, 3, 1, 5, 5, 1, 2, 1, 1, true);
    check_geom(&r, &g, true);
    g = make(3, 1, 33, 7, 1, 3, 4, 1, 1, 1, 2, false);
    check_geom(&r, &g, true);
    g = make(3, 1, 17, 3, 1, 3, 5, 1, 1, 1, 2, false);
    g.pad_left = (g.kw - 1) * g.dw; /* causal: all padding on the left, ow = w */
    g.ow = g.w;
    check_geom(&r, &g, true);
    g = make(20, 33, 33, 7, 3, 3, 5, 1, 1, 1, 1, true);
    check_geom(&r, &g, true);
    /* The same with K = 9 (tap-major im2col): 17 images per chunk, then 3. */
    g = make(20, 33, 33, 1, 3, 3, 5, 1, 1, 1, 1, true);
    check_geom(&r, &g, true);
    /* No output at all (valid window larger than the input): dx must still be zeroed. */
    g = make(2, 2, 2, 3, 3, 3, 4, 1, 1, 1, 1, false);
    check_geom(&r, &g, true);
    return test_finish();
}
