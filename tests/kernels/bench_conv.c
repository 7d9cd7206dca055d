/* Microbenchmark (build target only, not a test): the Fashion-MNIST CNN's conv and pool layers
 * at batch 128, forward and backward, against a plain cblas_sgemm of the same (M, N, K) measured
 * in the same run. Threads come from OPENBLAS_NUM_THREADS. Each figure is the minimum over
 * repetitions (the machine is shared). Usage: bench_conv [reps] */

#include "kernels/kern_conv.h"
#include "kernels/kern_pool.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static float *alloc_fill(size_t count, float v)
{
    float *p = malloc(sizeof(float) * (count ? count : 1));
    for (size_t i = 0; i < count; i++)
        p[i] = v * (float)((i * 7919u) % 97u) / 97.0f;
    return p;
}

/* Minimum seconds of one plain sgemm C[M,N] = op(A) op(B) (row-major). */
static double time_sgemm(int reps, bool ta, bool tb, int m, int n, int k)
{
    float *a = alloc_fill((size_t)m * (size_t)k, 1.0f),
          *b = alloc_fill((size_t)k * (size_t)n, 1.0f);
    float *c = alloc_fill((size_t)m * (size_t)n, 0.0f);
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t = now_s();
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    m, n, k, 1.0f, a, ta ? m : k, b, tb ? k : n, 0.0f, c, n);
        t = now_s() - t;
        best = t < best ? t : best;
    }
    free(a);
    free(b);
    free(c);
    return best;
}

/* Minimum forward and backward seconds of one conv layer through variant isa. */
static void time_conv(const kern_conv_geom *g, int reps, bool need_dx, kern_isa isa, double *fwd,
                      double *bwd)
{
    const int64_t M = g->n * g->oh * g->ow, N = g->cout, K = g->kh * g->kw * g->cin;
    const size_t nx = (size_t)(g->n * g->h * g->w * g->cin), nk = (size_t)(K * N);
    float *x = alloc_fill(nx, 1.0f), *k = alloc_fill(nk, 0.1f), *bias = alloc_fill((size_t)N, 1.0f);
    float *y = alloc_fill((size_t)(M * N), 0.0f), *dy = alloc_fill((size_t)(M * N), 0.5f);
    float *dx = alloc_fill(nx, 0.0f), *dk = alloc_fill(nk, 0.0f), *db = alloc_fill((size_t)N, 0.0f);
    float *ws = alloc_fill(kern_conv2d_workspace(g), 0.0f);
    *fwd = *bwd = 1e30;
    for (int r = 0; r < reps; r++) {
        double t = now_s();
        kern_conv2d_forward_isa(g, x, k, bias, y, ws, isa);
        t = now_s() - t;
        *fwd = t < *fwd ? t : *fwd;
        t = now_s();
        kern_conv2d_backward_isa(g, x, k, dy, need_dx ? dx : NULL, dk, db, ws, isa);
        t = now_s() - t;
        *bwd = t < *bwd ? t : *bwd;
    }
    free(x);
    free(k);
    free(bias);
    free(y);
    free(dy);
    free(dx);
    free(dk);
    free(db);
    free(ws);
}

static void print_row(const char *what, double t, double flop, double t_sgemm)
{
    printf("  %-30s %7.3f ms %6.1f GFLOP/s  %4.0f%% of sgemm\n", what, t * 1e3, flop / t * 1e-9,
           100.0 * t_sgemm / t);
}

static void bench_layer(const char *name, int reps, kern_conv_geom g, bool need_dx)
{
    kern_conv_geom_set(&g, false);
    const int64_t M = g.n * g.oh * g.ow, N = g.cout, K = g.kh * g.kw * g.cin;
    const double flop = 2.0 * (double)M * (double)N * (double)K;
    const double bflop = need_dx ? 2.0 * flop : flop;
    printf("%s: M=%ld N=%ld K=%ld, workspace %.2f MB, backward %s\n", name, (long)M, (long)N,
           (long)K, (double)kern_conv2d_workspace(&g) * 4.0 / 1e6,
           need_dx ? "dk+db+dx" : "dk+db (dx=NULL, first layer)");
    /* The same products as plain sgemm calls: the yardstick. */
    const double s_fwd = time_sgemm(reps, false, false, (int)M, (int)N, (int)K);
    double s_bwd = time_sgemm(reps, true, false, (int)K, (int)N, (int)M);
    if (need_dx)
        s_bwd += time_sgemm(reps, false, true, (int)M, (int)K, (int)N);
    printf("  %-30s %7.3f ms %6.1f GFLOP/s\n", "sgemm (M,N,K) forward", s_fwd * 1e3,
           flop / s_fwd * 1e-9);
    printf("  %-30s %7.3f ms %6.1f GFLOP/s\n", "sgemm backward product(s)", s_bwd * 1e3,
           bflop / s_bwd * 1e-9);
    double fwd, bwd;
    time_conv(&g, reps, need_dx, KERN_ISA_AUTO, &fwd, &bwd);
    print_row("cornu forward", fwd, flop, s_fwd);
    print_row("cornu backward", bwd, bflop, s_bwd);
    /* The sgemm-based path (what CPUs without AVX-512 get for K > 32). */
    if (K > 32 && kern_isa_supported(KERN_ISA_AVX2) && kern_isa_supported(KERN_ISA_AVX512)) {
        time_conv(&g, reps, need_dx, KERN_ISA_AVX2, &fwd, &bwd);
        print_row("cornu forward, AVX2+sgemm path", fwd, flop, s_fwd);
        print_row("cornu backward, AVX2+sgemm path", bwd, bflop, s_bwd);
    }
}

static void bench_pool(const char *name, int reps, kern_pool_geom g)
{
    kern_pool_geom_set(&g, false);
    const size_t nx = (size_t)(g.n * g.h * g.w * g.c), ny = (size_t)(g.n * g.oh * g.ow * g.c);
    float *x = alloc_fill(nx, 1.0f), *y = alloc_fill(ny, 0.0f), *dx = alloc_fill(nx, 0.0f);
    int32_t *am = malloc(sizeof(int32_t) * ny);
    double fwd = 1e30, bwd = 1e30;
    for (int r = 0; r < reps; r++) {
        double t = now_s();
        kern_maxpool2d_forward(&g, x, y, am);
        t = now_s() - t;
        fwd = t < fwd ? t : fwd;
        t = now_s();
        kern_maxpool2d_backward(&g, y, am, dx);
        t = now_s() - t;
        bwd = t < bwd ? t : bwd;
    }
    printf("%s: forward (with argmax) %6.3f ms, backward %6.3f ms (%.1f MB in)\n", name, fwd * 1e3,
           bwd * 1e3, (double)nx * 4.0 / 1e6);
    free(x);
    free(y);
    free(dx);
    free(am);
}

int main(int argc, char **argv)
{
    int reps = argc > 1 ? atoi(argv[1]) : 20;
    if (reps < 1)
        reps = 1;
    printf("OpenBLAS threads: %d, %s\n", openblas_get_num_threads(), openblas_get_corename());
    kern_conv_geom c1 = {.n = 128,
                         .h = 28,
                         .w = 28,
                         .cin = 1,
                         .kh = 3,
                         .kw = 3,
                         .cout = 32,
                         .sh = 1,
                         .sw = 1,
                         .dh = 1,
                         .dw = 1};
    kern_conv_geom c2 = {.n = 128,
                         .h = 13,
                         .w = 13,
                         .cin = 32,
                         .kh = 3,
                         .kw = 3,
                         .cout = 64,
                         .sh = 1,
                         .sw = 1,
                         .dh = 1,
                         .dw = 1};
    bench_layer("conv1 28x28x1 -> 32, 3x3, batch 128", reps, c1, false);
    bench_layer("conv2 13x13x32 -> 64, 3x3, batch 128", reps, c2, true);
    kern_pool_geom p1 = {.n = 128, .h = 26, .w = 26, .c = 32, .ph = 2, .pw = 2, .sh = 2, .sw = 2};
    kern_pool_geom p2 = {.n = 128, .h = 11, .w = 11, .c = 64, .ph = 2, .pw = 2, .sh = 2, .sw = 2};
    bench_pool("maxpool 26x26x32 /2", reps, p1);
    bench_pool("maxpool 11x11x64 /2", reps, p2);
    return 0;
}
