/* Communication side of the scaling benchmark (tests/bench/scaling.py): what the gradient
 * reduction of a training step costs on this machine's MPI, measured on the runtime's own
 * communicator (rt_init: the same duplicated communicator and Open MPI settings as `cornu
 * train`, including the libnbc allreduce algorithm rt_init selects).
 *
 *   mpirun -np P scaling_comm [--floats N,N,..] [--bucket-mb MB,MB,..] [--reps R] [--sweep]
 *                             [--allreduce shm|mpi]
 *
 * For every gradient size N (floats) it times, interleaved in the same repetition loop so that
 * a noisy period hurts all of them alike:
 *   plain     one blocking MPI_Allreduce(MPI_IN_PLACE, N floats, MPI_SUM): the reference
 *             "plain allreduce of the same number of bytes";
 *   bucketed  the reducer cornu trains with (comm_reducer_begin, one comm_reducer_ready over
 *             the whole buffer, comm_reducer_finish) at each bucket size: the whole cost of the
 *             bucketed non-blocking path when nothing overlaps it.
 * A repetition starts after an MPI_Barrier; its time is the largest over the ranks. With
 * --sweep it also times the plain allreduce of 1 float .. 4M floats (x4 steps) for the
 * alpha-beta fit done by the runner.
 *
 * Output: one "RESULT kind=... floats=... best_us=... median_us=..." line per measurement
 * (rank 0), parsed by the runner. Exit status 1 on an MPI or reducer error. */

#include "trainer/comm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LIST 16

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Parses "a,b,c" into v (at most MAX_LIST values); returns the count, -1 on a bad list. */
static int parse_list(const char *s, double *v)
{
    int n = 0;
    while (*s != '\0') {
        char *end = NULL;
        double x = strtod(s, &end);
        if (end == s || !(x > 0) || n >= MAX_LIST)
            return -1;
        v[n++] = x;
        s = *end == ',' ? end + 1 : end;
        if (*end != ',' && *end != '\0')
            return -1;
    }
    return n;
}

typedef struct series {
    double *t; /* seconds, one per repetition */
    int n;
} series;

static void series_print(rt *r, const char *kind, size_t floats, double bucket_mb, size_t buckets,
                         series *s)
{
    if (rt_rank(r) != 0)
        return;
    qsort(s->t, (size_t)s->n, sizeof s->t[0], cmp_double);
    printf("RESULT kind=%s ranks=%d floats=%zu bytes=%zu bucket_mb=%g buckets=%zu reps=%d "
           "best_us=%.3f median_us=%.3f\n",
           kind, rt_size(r), floats, floats * sizeof(float), bucket_mb, buckets, s->n,
           s->t[0] * 1e6, s->t[s->n / 2] * 1e6);
}

/* The slowest rank's time of one repetition (every rank gets it). */
static int max_over_ranks(rt *r, double *t, err_info *e)
{
    double v = *t;
    int mrc = MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_DOUBLE, MPI_MAX, rt_comm(r));
    if (mrc != MPI_SUCCESS)
        return err_set(e, ERR_MPI, "timing reduction failed (MPI error %d)", mrc);
    *t = v;
    return ERR_OK;
}

static int time_plain(rt *r, float *buf, size_t n, double *out, err_info *e)
{
    MPI_Barrier(rt_comm(r));
    double t0 = MPI_Wtime();
    int mrc = MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, rt_comm(r));
    double t = MPI_Wtime() - t0;
    if (mrc != MPI_SUCCESS)
        return err_set(e, ERR_MPI, "MPI_Allreduce of %zu floats failed (MPI error %d)", n, mrc);
    *out = t;
    return max_over_ranks(r, out, e);
}

static int time_bucketed(rt *r, comm_reducer *red, size_t n, double *out, err_info *e)
{
    MPI_Barrier(rt_comm(r));
    double t0 = MPI_Wtime();
    int rc = comm_reducer_begin(red, e);
    if (rc == ERR_OK)
        rc = comm_reducer_ready(red, 0, n, e);
    int frc = comm_reducer_finish(red, e);
    if (rc == ERR_OK)
        rc = frc;
    if (rc != ERR_OK)
        return rc;
    *out = MPI_Wtime() - t0;
    return max_over_ranks(r, out, e);
}

static int run(rt *r, int argc, char **argv, err_info *e)
{
    double floats[MAX_LIST] = {535818, 225034}, mbs[MAX_LIST] = {0.25, 1, 4};
    int n_floats = 2, n_mbs = 3, reps = 100;
    bool sweep = false, shm = true;
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(argv[i], "--sweep") == 0) {
            sweep = true;
        } else if (strcmp(argv[i], "--floats") == 0 && v != NULL) {
            n_floats = parse_list(v, floats);
            i++;
        } else if (strcmp(argv[i], "--bucket-mb") == 0 && v != NULL) {
            n_mbs = parse_list(v, mbs);
            i++;
        } else if (strcmp(argv[i], "--allreduce") == 0 && v != NULL &&
                   (strcmp(v, "shm") == 0 || strcmp(v, "mpi") == 0)) {
            shm = strcmp(v, "shm") == 0;
            i++;
        } else if (strcmp(argv[i], "--reps") == 0 && v != NULL) {
            reps = atoi(v);
            i++;
        } else {
            return err_set(e, ERR_USAGE,
                           "argument \"%s\": expected --floats N,.. --bucket-mb "
                           "MB,.. --reps R --sweep --allreduce shm|mpi",
                           argv[i]);
        }
    }
    if (n_floats < 1 || n_mbs < 1 || reps < 1)
        return err_set(e, ERR_USAGE, "--floats and --bucket-mb need positive numbers, --reps >= 1");

    size_t nmax = (size_t)4 << 20;
    for (int i = 0; i < n_floats; i++)
        if ((size_t)floats[i] > nmax)
            nmax = (size_t)floats[i];
    int rc = ERR_OK;
    float *buf = calloc(nmax, sizeof *buf);
    double *times = calloc((size_t)reps * (size_t)(n_floats * (1 + n_mbs)), sizeof *times);
    comm_reducer *red[MAX_LIST * MAX_LIST] = {0};
    if (buf == NULL || times == NULL) {
        rc = err_set(e, ERR_NOMEM, "buffers for %zu floats", nmax);
        goto done;
    }
    series plain[MAX_LIST], bucketed[MAX_LIST * MAX_LIST];
    double *next = times;
    for (int i = 0; i < n_floats; i++) {
        plain[i] = (series){next, 0};
        next += reps;
        for (int k = 0; k < n_mbs; k++) {
            bucketed[i * n_mbs + k] = (series){next, 0};
            next += reps;
            size_t bytes = (size_t)(mbs[k] * 1024.0 * 1024.0);
            rc =
                shm ? comm_reducer_create_shm(r, (size_t)floats[i], bytes, 0, &red[i * n_mbs + k],
                                              e)
                    : comm_reducer_create(r, buf, (size_t)floats[i], bytes, &red[i * n_mbs + k], e);
            if (rc != ERR_OK)
                goto done;
        }
    }
    /* Warm-up: first-touch of the buffers and Open MPI's connection set-up. */
    for (int w = 0; w < 3 && rc == ERR_OK; w++) {
        double t;
        for (int i = 0; i < n_floats && rc == ERR_OK; i++)
            rc = time_plain(r, buf, (size_t)floats[i], &t, e);
    }
    for (int rep = 0; rep < reps && rc == ERR_OK; rep++) {
        for (int i = 0; i < n_floats && rc == ERR_OK; i++) {
            rc = time_plain(r, buf, (size_t)floats[i], &plain[i].t[plain[i].n++], e);
            for (int k = 0; k < n_mbs && rc == ERR_OK; k++) {
                series *s = &bucketed[i * n_mbs + k];
                rc = time_bucketed(r, red[i * n_mbs + k], (size_t)floats[i], &s->t[s->n++], e);
            }
        }
    }
    if (rc != ERR_OK)
        goto done;
    for (int i = 0; i < n_floats; i++) {
        series_print(r, "plain", (size_t)floats[i], 0, 1, &plain[i]);
        for (int k = 0; k < n_mbs; k++)
            series_print(r, "bucketed", (size_t)floats[i], mbs[k],
                         comm_reducer_buckets(red[i * n_mbs + k]), &bucketed[i * n_mbs + k]);
    }
    if (sweep) {
        /* 1 float .. 4M floats; at most 30 repetitions, 10 for the large ones (milliseconds
         * each). */
        double swt[30];
        for (size_t n = 1; n <= ((size_t)4 << 20) && rc == ERR_OK; n *= 4) {
            series s = {swt, 0};
            int cap = n >= ((size_t)1 << 20) ? 10 : 30;
            int k = reps < cap ? reps : cap;
            for (int rep = 0; rep < k && rc == ERR_OK; rep++)
                rc = time_plain(r, buf, n, &s.t[s.n++], e);
            if (rc == ERR_OK)
                series_print(r, "sweep", n, 0, 1, &s);
        }
    }
done:
    for (int i = 0; i < MAX_LIST * MAX_LIST; i++)
        comm_reducer_destroy(red[i]);
    free(times);
    free(buf);
    return rc;
}

int main(int argc, char **argv)
{
    rt *r = NULL;
    err_info e = {ERR_OK, ""};
    if (rt_init(&argc, &argv, NULL, &r, &e) != ERR_OK) {
        fprintf(stderr, "scaling_comm: %s\n", e.msg);
        return 1;
    }
    int rc = run(r, argc, argv, &e);
    if (rc != ERR_OK && rt_rank(r) == 0)
        fprintf(stderr, "scaling_comm: %s\n", e.msg);
    fflush(stdout);
    rt_finalize(r);
    return rc == ERR_OK ? 0 : 1;
}
