/* The matrix-product limit of one training step: times the matrix products alone on exactly the
 * GEMM shapes of a training step of the Fashion-MNIST MLP or CNN at a given batch size, as the
 * engine calls them with Keras layouts (row-major, kernel [in, out]):
 *
 *   forward      y  = x k        NoTrans, NoTrans   M = rows, N = out, K = in
 *   kernel grad  dk = x^T dz     Trans,   NoTrans   M = in,   N = out, K = rows
 *   input grad   dx = dz k^T     NoTrans, Trans     M = rows, N = in,  K = out
 *
 * For a convolution (im2col) rows = batch * oh * ow and in = kh * kw * cin. The first layer
 * needs no input gradient. The MLP has three Dense layers: 3 forward + 3 kernel-gradient + 2
 * input-gradient GEMMs. The CNN's convolutions are timed as ONE GEMM over the whole batch (the
 * cheapest way sgemm can do those FLOPs); im2col/col2im, bias, activations, pooling, the loss and
 * the optimizer are not GEMMs and are not timed here.
 *
 * --impl cornu (default) multiplies the way cornu's Dense layer does (kern_dense: our own AVX-512
 * kernels where they beat OpenBLAS on this CPU and thread count, else sgemm; docs/design.md,
 * "Who multiplies"), --impl sgemm with cblas_sgemm alone.
 *
 * Prints one line per GEMM (best time of --iters calls) and a RESULT line with the best time of
 * a whole set (all GEMMs of one step back to back), the FLOPs, and the peak rate of a large
 * square sgemm for reference. Used by tests/bench/run and tests/bench/scaling.py. */

#include <cblas.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/kern_dense.h"

#define MAX_GEMMS 16

typedef struct gemm {
    const char *what;
    enum CBLAS_TRANSPOSE ta, tb;
    int m, n, k;
    float *a, *b, *c;
} gemm;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float *random_buffer(size_t n, uint64_t *state)
{
    float *p = malloc(n * sizeof *p);
    if (p == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        /* xorshift64*: values in [-1, 1), no denormals, no special values. */
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        uint64_t r = *state * UINT64_C(2685821657736338717);
        p[i] = (float)((double)(r >> 40) / (double)(UINT64_C(1) << 23) - 1.0);
    }
    return p;
}

static int g_cornu = 1; /* --impl cornu */
static float *g_ws;     /* kern_dense_workspace of the largest product */

static void run(const gemm *g)
{
    if (g_cornu) {
        if (g->ta == CblasTrans) /* dk[in, out] = x^T dz: m = in, n = out, k = rows */
            kern_dense_backward(g->k, g->m, g->n, ACT_LINEAR, g->a, NULL, NULL, NULL, g->b, g->c,
                                NULL, false, NULL, false, NULL);
        else if (g->tb == CblasTrans) /* dx[rows, in] = dz k^T: m = rows, n = in, k = out */
            kern_dense_backward(g->m, g->n, g->k, ACT_LINEAR, NULL, g->b, NULL, NULL, g->a, NULL,
                                NULL, false, g->c, false, g_ws);
        else /* y[rows, out] = x k: m = rows, n = out, k = in */
            kern_dense_forward(g->m, g->k, g->n, ACT_LINEAR, g->a, g->b, NULL, NULL, g->c);
        return;
    }
    int lda = g->ta == CblasNoTrans ? g->k : g->m;
    int ldb = g->tb == CblasNoTrans ? g->n : g->k;
    cblas_sgemm(CblasRowMajor, g->ta, g->tb, g->m, g->n, g->k, 1.0f, g->a, lda, g->b, ldb, 0.0f,
                g->c, g->n);
}

/* Adds the forward, kernel-gradient and (if need_dx) input-gradient GEMMs of a layer computing
 * [rows, in] x [in, out]. */
static void add_layer(gemm *gs, int *n, const char *what, int rows, int in, int out, int need_dx)
{
    gs[(*n)++] = (gemm){what, CblasNoTrans, CblasNoTrans, rows, out, in, NULL, NULL, NULL};
    gs[(*n)++] = (gemm){what, CblasTrans, CblasNoTrans, in, out, rows, NULL, NULL, NULL};
    if (need_dx)
        gs[(*n)++] = (gemm){what, CblasNoTrans, CblasTrans, rows, in, out, NULL, NULL, NULL};
}

static const char *kind_name(const gemm *g)
{
    if (g->ta == CblasTrans)
        return "kernel grad";
    return g->tb == CblasTrans ? "input grad" : "forward";
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_gemm [--model mlp|cnn] [--batch N] [--threads N] [--iters N] "
                    "[--reps N] [--peak N] [--impl cornu|sgemm]\n");
}

int main(int argc, char **argv)
{
    const char *model = "mlp";
    int batch = 128, threads = 1, iters = 20, reps = 5, peak_n = 1024;
    const char *impl = "cornu";
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(argv[i], "--model") == 0 && v)
            model = v;
        else if (strcmp(argv[i], "--batch") == 0 && v)
            batch = atoi(v);
        else if (strcmp(argv[i], "--threads") == 0 && v)
            threads = atoi(v);
        else if (strcmp(argv[i], "--iters") == 0 && v)
            iters = atoi(v);
        else if (strcmp(argv[i], "--reps") == 0 && v)
            reps = atoi(v);
        else if (strcmp(argv[i], "--peak") == 0 && v)
            peak_n = atoi(v);
        else if (strcmp(argv[i], "--impl") == 0 && v &&
                 (strcmp(v, "cornu") == 0 || strcmp(v, "sgemm") == 0))
            impl = v;
        else {
            usage();
            return 2;
        }
        i++;
    }
    if (batch < 1 || threads < 1 || iters < 1 || reps < 1 || peak_n < 0) {
        usage();
        return 2;
    }
    openblas_set_num_threads(threads);
    g_cornu = strcmp(impl, "cornu") == 0;

    gemm gs[MAX_GEMMS];
    int n = 0;
    if (strcmp(model, "mlp") == 0) {
        /* fashion_mlp.json: Flatten 784 -> Dense 512 -> Dense 256 -> Dense 10. */
        add_layer(gs, &n, "dense (784->512)", batch, 784, 512, 0);
        add_layer(gs, &n, "dense_1 (512->256)", batch, 512, 256, 1);
        add_layer(gs, &n, "dense_2 (256->10)", batch, 256, 10, 1);
    } else if (strcmp(model, "cnn") == 0) {
        /* fashion_cnn.json: 28x28x1 -conv 3x3x32-> 26x26x32 -pool-> 13x13x32 -conv 3x3x64->
         * 11x11x64 -pool-> 5x5x64 = 1600 -> Dense 128 -> Dense 10. */
        add_layer(gs, &n, "conv2d (im2col 9->32)", batch * 26 * 26, 9, 32, 0);
        add_layer(gs, &n, "conv2d_1 (im2col 288->64)", batch * 11 * 11, 288, 64, 1);
        add_layer(gs, &n, "dense (1600->128)", batch, 1600, 128, 1);
        add_layer(gs, &n, "dense_1 (128->10)", batch, 128, 10, 1);
    } else {
        usage();
        return 2;
    }

    uint64_t state = UINT64_C(0x9E3779B97F4A7C15);
    double flops = 0;
    int rc = 0;
    size_t ws = 1;
    for (int i = 0; i < n; i++) {
        size_t w = kern_dense_workspace(gs[i].n, gs[i].k);
        ws = w > ws ? w : ws;
    }
    g_ws = malloc(ws * sizeof(float));
    if (g_ws == NULL) {
        fprintf(stderr, "bench_gemm: out of memory\n");
        return 1;
    }
    for (int i = 0; i < n; i++) {
        gemm *g = &gs[i];
        g->a = random_buffer((size_t)g->m * (size_t)g->k, &state);
        g->b = random_buffer((size_t)g->k * (size_t)g->n, &state);
        g->c = random_buffer((size_t)g->m * (size_t)g->n, &state);
        if (g->a == NULL || g->b == NULL || g->c == NULL) {
            fprintf(stderr, "bench_gemm: out of memory\n");
            rc = 1;
            goto done;
        }
        flops += 2.0 * g->m * g->n * g->k;
    }

    /* Warm-up: page in every buffer, start OpenBLAS's threads. */
    for (int w = 0; w < 3; w++)
        for (int i = 0; i < n; i++)
            run(&gs[i]);
    printf("%-28s %-12s %8s %8s %8s %10s %9s\n", "layer", "gemm", "M", "N", "K", "best ms",
           "GFLOP/s");
    for (int i = 0; i < n; i++) {
        double best = 1e30;
        for (int it = 0; it < iters; it++) {
            double t0 = now_s();
            run(&gs[i]);
            double t = now_s() - t0;
            if (t < best)
                best = t;
        }
        const gemm *g = &gs[i];
        printf("%-28s %-12s %8d %8d %8d %10.4f %9.2f\n", g->what, kind_name(g), g->m, g->n, g->k,
               best * 1e3, 2.0 * g->m * g->n * g->k / best * 1e-9);
    }
    double best_set = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = now_s();
        for (int it = 0; it < iters; it++)
            for (int i = 0; i < n; i++)
                run(&gs[i]);
        double t = (now_s() - t0) / iters;
        if (t < best_set)
            best_set = t;
    }

    double peak = 0;
    g_cornu = 0; /* the peak is OpenBLAS's, whatever --impl */
    if (peak_n > 0) {
        gemm p = {"peak", CblasNoTrans, CblasNoTrans, peak_n, peak_n, peak_n, NULL, NULL, NULL};
        size_t sz = (size_t)peak_n * (size_t)peak_n;
        p.a = random_buffer(sz, &state);
        p.b = random_buffer(sz, &state);
        p.c = random_buffer(sz, &state);
        if (p.a && p.b && p.c) {
            run(&p);
            double best = 1e30;
            for (int it = 0; it < 10; it++) {
                double t0 = now_s();
                run(&p);
                double t = now_s() - t0;
                if (t < best)
                    best = t;
            }
            peak = 2.0 * peak_n * (double)peak_n * peak_n / best * 1e-9;
        }
        free(p.a);
        free(p.b);
        free(p.c);
    }
    printf("RESULT model=%s impl=%s threads=%d batch=%d gemms=%d gemm_s=%.6e gflop=%.6f "
           "gflops=%.3f peak_gflops=%.3f\n",
           model, impl, threads, batch, n, best_set, flops * 1e-9, flops / best_set * 1e-9, peak);
done:
    free(g_ws);
    for (int i = 0; i < n; i++) {
        free(gs[i].a);
        free(gs[i].b);
        free(gs[i].c);
    }
    return rc;
}
