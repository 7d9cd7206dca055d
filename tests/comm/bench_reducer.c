/* Microbenchmark (not a test): the bucketed, overlapped gradient reduction against one plain
 * MPI_Allreduce of the same buffer. Backward is simulated by GEMMs (OpenBLAS, this rank's
 * threads) over L layers, each followed by comm_reducer_ready() for that layer's gradients,
 * from the end of the buffer to the start, as the layer engine does.
 *
 * usage: mpirun -np 2 bench_comm_reducer [floats=1000000] [layers=4] [gemm_n=256] [steps=20]
 * Prints, per bucket size: exposed (blocked in finish) and total communication per step, and
 * the plain allreduce time per step, all measured in the same run.
 *
 *        mpirun -np P bench_comm_reducer sweep
 * Times a plain MPI_Allreduce of 1 float .. 16M floats (median of repetitions) and fits the
 * alpha-beta model used in docs/cluster.md: latency alpha = the 1-float time, bandwidth term
 * beta = the slope per byte between the two largest sizes. */

#include "trainer/comm.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

static double plain_allreduce(rt *r, float *buf, size_t n, int steps)
{
    double t = 0;
    for (int s = 0; s < steps; s++) {
        MPI_Barrier(rt_comm(r));
        double t0 = MPI_Wtime();
        MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, rt_comm(r));
        t += MPI_Wtime() - t0;
    }
    return t / steps;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void sweep(rt *r)
{
    size_t nmax = (size_t)16 << 20;
    float *buf = calloc(nmax, sizeof *buf);
    CHECK(buf != NULL);
    double t_small = 0, t_prev = 0;
    size_t n_prev = 0;
    if (rt_rank(r) == 0)
        printf("ranks %d: MPI_Allreduce(MPI_SUM, float) median times\n", rt_size(r));
    for (size_t n = 1; n <= nmax; n *= 4) {
        enum { REPS = 15 };
        double t[REPS];
        int reps = n >= ((size_t)1 << 20) ? 5 : REPS;
        for (int k = 0; k < reps; k++) {
            MPI_Barrier(rt_comm(r));
            double t0 = MPI_Wtime();
            MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, rt_comm(r));
            t[k] = MPI_Wtime() - t0;
        }
        qsort(t, (size_t)reps, sizeof t[0], cmp_double);
        double med = t[reps / 2];
        MPI_Bcast(&med, 1, MPI_DOUBLE, 0, rt_comm(r));
        if (n == 1)
            t_small = med;
        if (rt_rank(r) == 0)
            printf("  %10zu bytes  %10.1f us  %8.1f MB/s\n", n * 4, med * 1e6,
                   (double)n * 4 / med / 1e6);
        if (n * 4 > nmax) {
            double beta = (med - t_prev) / ((double)(n - n_prev) * 4);
            if (rt_rank(r) == 0)
                printf("alpha %.1f us, beta %.3f ns/byte (allreduce time per byte of buffer, "
                       "%.0f MB/s)\n",
                       t_small * 1e6, beta * 1e9, 1e-6 / beta);
        }
        t_prev = med;
        n_prev = n;
    }
    free(buf);
}

int main(int argc, char **argv)
{
    rt *r = NULL;
    err_info e = {ERR_OK, ""};
    size_t n = argc > 1 ? (size_t)atol(argv[1]) : 1000000;
    int layers = argc > 2 ? atoi(argv[2]) : 4;
    int gn = argc > 3 ? atoi(argv[3]) : 256;
    int steps = argc > 4 ? atoi(argv[4]) : 20;
    if (rt_init(&argc, &argv, NULL, &r, &e) != ERR_OK) {
        fprintf(stderr, "rt_init: %s\n", e.msg);
        return 1;
    }
    if (argc > 1 && strcmp(argv[1], "sweep") == 0) {
        sweep(r);
        rt_finalize(r);
        return 0;
    }
    float *buf = calloc(n, sizeof *buf);
    float *a = malloc((size_t)gn * (size_t)gn * sizeof *a);
    float *b = malloc((size_t)gn * (size_t)gn * sizeof *b);
    float *c = malloc((size_t)gn * (size_t)gn * sizeof *c);
    CHECK(buf && a && b && c);
    for (size_t i = 0; i < (size_t)gn * (size_t)gn; i++) {
        a[i] = 0.001f * (float)(i % 97);
        b[i] = 0.002f * (float)(i % 89);
    }
    /* Compute alone, to show how much communication there is to hide. */
    double tc = MPI_Wtime();
    for (int l = 0; l < layers; l++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, gn, gn, gn, 1.0f, a, gn, b, gn, 0.0f,
                    c, gn);
    tc = MPI_Wtime() - tc;
    double plain = plain_allreduce(r, buf, n, steps);
    if (rt_rank(r) == 0)
        printf("ranks %d, %zu floats (%.1f MB), %d layers, backward compute %.2f ms, plain "
               "MPI_Allreduce %.2f ms\n",
               rt_size(r), n, (double)n * 4 / 1e6, layers, tc * 1e3, plain * 1e3);
    static const size_t mbs[] = {64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20};
    for (size_t k = 0; k < sizeof mbs / sizeof mbs[0]; k++) {
        comm_reducer *red = NULL;
        if (comm_reducer_create(r, buf, n, mbs[k], &red, &e) != ERR_OK) {
            fprintf(stderr, "%s\n", e.msg);
            return 1;
        }
        double tstep = 0;
        for (int s = 0; s < steps; s++) {
            MPI_Barrier(rt_comm(r));
            double t0 = MPI_Wtime();
            comm_reducer_begin(red, &e);
            for (int l = 0; l < layers; l++) {
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, gn, gn, gn, 1.0f, a, gn, b,
                            gn, 0.0f, c, gn);
                size_t hi = n * (size_t)(layers - l) / (size_t)layers;
                size_t lo = n * (size_t)(layers - l - 1) / (size_t)layers;
                comm_reducer_ready(red, lo, hi, &e);
            }
            if (comm_reducer_finish(red, &e) != ERR_OK) {
                fprintf(stderr, "%s\n", e.msg);
                return 1;
            }
            tstep += MPI_Wtime() - t0;
        }
        double exposed = 0, total = 0;
        comm_reducer_stats(red, &exposed, &total);
        if (rt_rank(r) == 0)
            printf(
                "bucket %6zu KB (%3zu buckets): step %.2f ms, exposed %.2f ms (%.0f%% of plain), "
                "total comm %.2f ms\n",
                mbs[k] >> 10, comm_reducer_buckets(red), tstep / steps * 1e3, exposed / steps * 1e3,
                100 * exposed / steps / plain, total / steps * 1e3);
        comm_reducer_destroy(red);
    }
    free(buf);
    free(a);
    free(b);
    free(c);
    rt_finalize(r);
    return 0;
}
