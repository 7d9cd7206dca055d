/* Microbenchmark (build-only target, not a test): one training step (forward + backward) of
 * the MLP 784-512-256-10 (relu, relu, linear) through the layer engine, against the same eight
 * GEMMs called directly (3 forward, 3 weight gradients, 2 input gradients; the first layer
 * needs no input gradient). Prints milliseconds per step and the ratio.
 *   cmake --build <dir> --target bench_mlp && OPENBLAS_NUM_THREADS=1 <dir>/tests/layers/bench_mlp
 * [batch] [steps]
 */

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "layers_test.h"

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void gemms(int b, const int *u, float **a, float **w, float **g, float **dw)
{
    for (int l = 0; l < 3; l++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, b, u[l + 1], u[l], 1.0f, a[l], u[l],
                    w[l], u[l + 1], 0.0f, a[l + 1], u[l + 1]);
    for (int l = 2; l >= 0; l--) {
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, u[l], u[l + 1], b, 1.0f, a[l], u[l],
                    g[l + 1], u[l + 1], 0.0f, dw[l], u[l + 1]);
        if (l > 0)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, b, u[l], u[l + 1], 1.0f, g[l + 1],
                        u[l + 1], w[l], u[l + 1], 0.0f, g[l], u[l]);
    }
}

int main(int argc, char **argv)
{
    int batch = argc > 1 ? atoi(argv[1]) : 128;
    int steps = argc > 2 ? atoi(argv[2]) : 200;
    const int u[4] = {784, 512, 256, 10};
    tb b;
    tb_init(&b);
    model_ref x = tb_input(&b, "x", 1, TB_DIMS(784));
    model_ref h = x;
    for (int l = 0; l < 3; l++) {
        char name[16];
        snprintf(name, sizeof name, "dense_%d", l);
        int d = tb_layer(&b, LAYER_DENSE, name);
        tb_cfg(&b, d)->units = u[l + 1];
        tb_cfg(&b, d)->activation = l < 2 ? ACT_RELU : ACT_LINEAR;
        h = tb_call(&b, d, 1, h);
    }
    model *m = tb_build(&b, 1, &x, 1, &h);
    layer_net *net = NULL;
    err_info e = {0};
    if (m == NULL || layer_net_create(m, batch, true, &net, &e) != ERR_OK) {
        fprintf(stderr, "setup: %s\n", e.msg);
        return 1;
    }
    rng r;
    rng_seed(&r, 1, 2);
    float *in = layer_net_input(net, 0);
    for (int i = 0; i < batch * 784; i++)
        in[i] = rng_uniform_f(&r);
    float *a[4], *w[3], *g[4], *dw[3];
    for (int l = 0; l < 4; l++) {
        a[l] = calloc((size_t)batch * (size_t)u[l], sizeof(float));
        g[l] = calloc((size_t)batch * (size_t)u[l], sizeof(float));
    }
    for (int l = 0; l < 3; l++) {
        w[l] = calloc((size_t)u[l] * (size_t)u[l + 1], sizeof(float));
        dw[l] = calloc((size_t)u[l] * (size_t)u[l + 1], sizeof(float));
    }
    double best_net = 1e9, best_gemm = 1e9;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now_s();
        for (int s = 0; s < steps; s++) {
            layer_net_forward(net, batch, true, 0, s, &e);
            float *og = layer_net_output_grad(net, 0);
            for (int i = 0; i < batch * 10; i++)
                og[i] = 0.01f;
            layer_net_backward(net, batch, NULL, NULL, &e);
        }
        double t1 = now_s();
        for (int s = 0; s < steps; s++)
            gemms(batch, u, a, w, g, dw);
        double t2 = now_s();
        best_net = (t1 - t0) < best_net ? (t1 - t0) : best_net;
        best_gemm = (t2 - t1) < best_gemm ? (t2 - t1) : best_gemm;
    }
    printf("batch %d: engine step %.3f ms, GEMMs alone %.3f ms, ratio %.3f\n", batch,
           1e3 * best_net / steps, 1e3 * best_gemm / steps, best_net / best_gemm);
    for (int l = 0; l < 4; l++)
        free(a[l]), free(g[l]);
    for (int l = 0; l < 3; l++)
        free(w[l]), free(dw[l]);
    layer_net_destroy(net);
    model_destroy(m);
    return 0;
}
