/* The bucketed gradient reducer under real mpirun (1..4 ranks), the MPI one and (with
 * --shm K) the node-shared-memory one, K ranks per simulated node (0 = real nodes): sums against a
 * plain MPI_Allreduce for awkward sizes (n not a multiple of the bucket, bucket larger than n, n =
 * 1, one-element buckets), every way of reporting ready ranges (one call, arbitrary decreasing
 * chunks that differ between ranks, increasing chunks, partial, none), several steps on one
 * reducer, identical results on every rank, the bucket layout and the layout mismatch error. */

#include "trainer/comm.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/rng.h"
#include "test_util.h"

enum { READY_ALL, READY_DOWN_RANDOM, READY_UP, READY_HALF, READY_NONE, READY_DOWN_ONE, READY_N };
static const char *const READY_NAMES[READY_N] = {"all",  "down-random", "up",
                                                 "half", "none",        "down-one-by-one"};

/* Integer values keep float sums exact whatever the reduction order. */
static float value_int(size_t i, int rank, int step)
{
    return (float)((long)((i * 7 + (size_t)rank * 13 + (size_t)step * 5) % 101) - 50);
}

/* -1: comm_reducer_create (MPI); else comm_reducer_create_shm with this node_ranks. */
static int g_shm = -1;

static int create(rt *r, float *buf, size_t n, size_t bucket_bytes, comm_reducer **c, err_info *e)
{
    if (g_shm < 0)
        return comm_reducer_create(r, buf, n, bucket_bytes, c, e);
    return comm_reducer_create_shm(r, n, bucket_bytes, g_shm, c, e);
}

static uint64_t fnv(const float *x, size_t n)
{
    const unsigned char *p = (const unsigned char *)x;
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n * sizeof *x; i++)
        h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

/* Reports buf[0, n) ready in the given pattern; the random chunking is seeded by the rank so
 * that ranks chunk differently (the start order must still agree). */
static int report(comm_reducer *c, size_t n, int how, int rank, int step, err_info *e)
{
    int rc = ERR_OK;
    rng g;
    rng_seed(&g, 1234, (uint64_t)(rank * 100 + step));
    switch (how) {
    case READY_ALL:
        rc = comm_reducer_ready(c, 0, n, e);
        break;
    case READY_DOWN_RANDOM:
        for (size_t hi = n; hi > 0 && rc == ERR_OK;) {
            size_t len = 1 + (size_t)rng_below(&g, n / 3 + 2);
            size_t lo = hi > len ? hi - len : 0;
            rc = comm_reducer_ready(c, lo, hi, e);
            hi = lo;
        }
        break;
    case READY_UP:
        for (size_t lo = 0; lo < n && rc == ERR_OK;) {
            size_t len = 1 + (size_t)rng_below(&g, n / 4 + 2);
            size_t hi = lo + len < n ? lo + len : n;
            rc = comm_reducer_ready(c, lo, hi, e);
            lo = hi;
        }
        break;
    case READY_HALF:
        rc = comm_reducer_ready(c, n / 2, n, e);
        if (rc == ERR_OK)
            rc = comm_reducer_ready(c, n / 2, n / 2, e); /* empty range: progress only */
        break;
    case READY_NONE:
        break;
    case READY_DOWN_ONE:
        for (size_t hi = n; hi > 0 && rc == ERR_OK; hi--)
            rc = comm_reducer_ready(c, hi - 1, hi, e);
        break;
    }
    return rc;
}

static void check_layout(const comm_reducer *c, size_t n, size_t bucket_bytes)
{
    size_t per = bucket_bytes / sizeof(float) > 0 ? bucket_bytes / sizeof(float) : 1;
    size_t nb = comm_reducer_buckets(c);
    EXPECT(nb == (n + per - 1) / per);
    size_t expect_hi = n;
    for (size_t i = 0; i < nb; i++) {
        size_t lo = 0, hi = 0;
        comm_reducer_bucket_range(c, i, &lo, &hi);
        EXPECT_MSG(hi == expect_hi && lo < hi && hi - lo <= per, "bucket %zu [%zu,%zu)", i, lo, hi);
        if (i + 1 < nb)
            EXPECT(hi - lo == per);
        expect_hi = lo;
    }
    EXPECT(expect_hi == 0);
}

static void run_case(rt *r, size_t n, size_t bucket_bytes, int how)
{
    int rank = rt_rank(r), size = rt_size(r);
    err_info e = {ERR_OK, ""};
    float *own = malloc((n > 0 ? n : 1) * sizeof *own);
    float *ref = malloc((n > 0 ? n : 1) * sizeof *ref);
    comm_reducer *c = NULL;
    CHECK(own != NULL && ref != NULL);
    int rc = create(r, own, n, bucket_bytes, &c, &e);
    EXPECT_MSG(rc == ERR_OK, "create n=%zu bucket=%zu: %s", n, bucket_bytes, e.msg);
    if (rc != ERR_OK)
        goto done;
    float *buf = comm_reducer_buffer(c);
    EXPECT(g_shm >= 0 || buf == own);
    EXPECT(comm_reducer_is_shm(c, NULL, NULL) == (g_shm >= 0));
    check_layout(c, n, bucket_bytes);
    double prev_exposed = 0, prev_total = 0;
    for (int step = 0; step < 3; step++) {
        /* Steps 0 and 1 use exact integers, step 2 random floats compared with a tolerance. */
        rng g;
        rng_seed(&g, 99, (uint64_t)rank);
        for (size_t i = 0; i < n; i++)
            buf[i] = step < 2 ? value_int(i, rank, step) : (float)(rng_normal(&g) * 3.0);
        memcpy(ref, buf, n * sizeof *buf);
        if (n > 0)
            MPI_Allreduce(MPI_IN_PLACE, ref, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        rc = comm_reducer_begin(c, &e);
        if (rc == ERR_OK)
            rc = report(c, n, how, rank, step, &e);
        if (rc == ERR_OK)
            rc = comm_reducer_finish(c, &e);
        EXPECT_MSG(rc == ERR_OK, "n=%zu bucket=%zu ready=%s step %d: %s", n, bucket_bytes,
                   READY_NAMES[how], step, e.msg);
        size_t bad = 0, first_bad = 0;
        for (size_t i = 0; i < n; i++) {
            bool ok;
            if (step < 2) {
                float want = 0;
                for (int q = 0; q < size; q++)
                    want += value_int(i, q, step);
                ok = buf[i] == want && ref[i] == want;
            } else {
                ok = test_close(buf[i], ref[i], 1e-5, 1e-5);
            }
            if (!ok && bad++ == 0)
                first_bad = i;
        }
        EXPECT_MSG(bad == 0, "n=%zu bucket=%zu ready=%s step %d: %zu wrong, first [%zu] = %g vs %g",
                   n, bucket_bytes, READY_NAMES[how], step, bad, first_bad,
                   n ? (double)buf[first_bad] : 0.0, n ? (double)ref[first_bad] : 0.0);
        /* Every rank applies the same update only if the sums are bitwise identical. */
        unsigned long long h = fnv(buf, n), hmin = 0, hmax = 0;
        MPI_Allreduce(&h, &hmin, 1, MPI_UNSIGNED_LONG_LONG, MPI_MIN, MPI_COMM_WORLD);
        MPI_Allreduce(&h, &hmax, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX, MPI_COMM_WORLD);
        EXPECT_MSG(hmin == hmax, "n=%zu ready=%s step %d: results differ between ranks", n,
                   READY_NAMES[how], step);
        double exposed = -1, total = -1;
        comm_reducer_stats(c, &exposed, &total);
        EXPECT(exposed >= prev_exposed && total >= prev_total);
        prev_exposed = exposed;
        prev_total = total;
    }
done:
    comm_reducer_destroy(c);
    free(own);
    free(ref);
}

/* Every rank must describe the same buffer: rank 1 claiming one more gradient is ERR_SHAPE on
 * every rank, naming rank 1's and rank 0's layouts. */
static void mismatch(rt *r)
{
    if (rt_size(r) < 2)
        return;
    float buf[16] = {0};
    size_t n = rt_rank(r) == 1 ? 11 : 10;
    comm_reducer *c = NULL;
    err_info e = {ERR_OK, ""};
    int rc = create(r, buf, n, 8, &c, &e);
    EXPECT_MSG(rc == ERR_SHAPE, "rc %d: %s", rc, e.msg);
    EXPECT_MSG(strstr(e.msg, "rank 1 has 11 gradients") && strstr(e.msg, "rank 0 has 10"), "%s",
               e.msg);
    EXPECT(c == NULL);
}

/* Shared memory, node_ranks that do not divide the ranks: nodes of unequal size are refused on
 * every rank with a message that says why. */
static void uneven_nodes(rt *r)
{
    if (g_shm <= 0 || rt_size(r) % g_shm == 0)
        return;
    comm_reducer *c = NULL;
    err_info e = {ERR_OK, ""};
    int rc = comm_reducer_create_shm(r, 100, 64, g_shm, &c, &e);
    EXPECT_MSG(rc == ERR_UNSUPPORTED && strstr(e.msg, "same number of ranks on every node"),
               "rc %d: %s", rc, e.msg);
    EXPECT(c == NULL);
}

/* The shared update (comm_reducer_share): n trainable elements plus 3 more parameters that only
 * local rank 0 writes, and two slots per element. Each step every rank writes integer
 * gradients, the buckets it owns (which must cover every element exactly once over the node)
 * get the exact sum from comm_reducer_grad, and it applies p -= g, s0 += g, s1 += 2 g to them
 * in the shared copy; after sync every rank sees every element updated, and unshare gives each
 * rank its own buffers back holding the final values. */
static void shared_case(rt *r, size_t n, size_t bucket_bytes)
{
    int rank = rt_rank(r), size = rt_size(r);
    err_info e = {ERR_OK, ""};
    comm_reducer *c = NULL;
    const size_t np = n + 3;
    float *p_own = malloc(np * sizeof(float)), *s_own = malloc((2 * n + 1) * sizeof(float));
    float *dst = malloc((n > 0 ? n : 1) * sizeof(float));
    int *hits = calloc(n > 0 ? n : 1, sizeof(int));
    CHECK(p_own != NULL && s_own != NULL && dst != NULL && hits != NULL);
    for (size_t i = 0; i < np; i++)
        p_own[i] = (float)(i % 17);
    for (size_t i = 0; i < 2 * n; i++)
        s_own[i] = 1.0f;
    float *p = p_own, *sl = s_own;
    int rc = create(r, NULL, n, bucket_bytes, &c, &e);
    EXPECT_MSG(rc == ERR_OK, "create: %s", e.msg);
    if (rc != ERR_OK)
        goto done;
    int local = 0, nodes = 0;
    comm_reducer_is_shm(c, &local, &nodes);
    rc = comm_reducer_share(c, &p, np, &sl, 2 * n, &e);
    if (local < 2) {
        EXPECT_MSG(rc == ERR_UNSUPPORTED && p == p_own && sl == s_own, "one rank per node: %s",
                   e.msg);
        goto done;
    }
    EXPECT_MSG(rc == ERR_OK && p != p_own && (n == 0 || sl == p + np), "share: %s", e.msg);
    if (rc != ERR_OK)
        goto done;
    float *g = comm_reducer_buffer(c);
    for (int step = 0; step < 3; step++) {
        EXPECT(comm_reducer_sync(c, &e) == ERR_OK);
        for (size_t i = 0; i < n; i++)
            g[i] = value_int(i, rank, step);
        rc = comm_reducer_begin(c, &e);
        if (rc == ERR_OK)
            rc = report(c, n, READY_DOWN_RANDOM, rank, step, &e);
        if (rc == ERR_OK)
            rc = comm_reducer_finish(c, &e);
        EXPECT_MSG(rc == ERR_OK, "n=%zu step %d: %s", n, step, e.msg);
        size_t lo = 0, hi = 0, wrong = 0;
        for (size_t k = 0; comm_reducer_owned(c, k, &lo, &hi); k++) {
            comm_reducer_grad(c, lo, hi, dst);
            for (size_t i = lo; i < hi; i++) {
                float want = 0;
                for (int q = 0; q < size; q++)
                    want += value_int(i, q, step);
                wrong += dst[i - lo] != want;
                p[i] -= dst[i - lo];
                sl[i] += dst[i - lo];
                sl[n + i] += 2 * dst[i - lo];
                if (step == 0)
                    hits[i]++;
            }
        }
        EXPECT_MSG(wrong == 0, "n=%zu step %d: %zu wrong sums", n, step, wrong);
        if (comm_reducer_local_rank(c) == 0)
            p[n] += 1.0f; /* a non-trainable parameter: one writer per node */
        comm_reducer_updated(c);
    }
    EXPECT(comm_reducer_sync(c, &e) == ERR_OK);
    /* Every element owned exactly once per node: the nodes' owner counts add up to `nodes`. */
    MPI_Allreduce(MPI_IN_PLACE, hits, (int)n, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    size_t bad_own = 0, bad_val = 0;
    for (size_t i = 0; i < n; i++) {
        float total = 0;
        for (int step = 0; step < 3; step++)
            for (int q = 0; q < size; q++)
                total += value_int(i, q, step);
        bad_own += hits[i] != nodes;
        bad_val += p[i] != (float)(i % 17) - total || sl[i] != 1.0f + total ||
                   sl[n + i] != 1.0f + 2 * total;
    }
    EXPECT_MSG(bad_own == 0 && bad_val == 0 && p[n] == (float)(n % 17) + 3.0f,
               "n=%zu: %zu elements not owned once per node, %zu wrong values", n, bad_own,
               bad_val);
    comm_reducer_unshare(c);
    EXPECT(p == p_own && sl == s_own);
    bool back = n == 0 || (p_own[0] == p[0] && s_own[2 * n - 1] == sl[2 * n - 1]);
    for (size_t i = 0; i < n && back; i++) {
        float total = 0;
        for (int step = 0; step < 3; step++)
            for (int q = 0; q < size; q++)
                total += value_int(i, q, step);
        back = p_own[i] == (float)(i % 17) - total && s_own[n + i] == 1.0f + 2 * total;
    }
    EXPECT_MSG(back && p_own[n] == (float)(n % 17) + 3.0f, "n=%zu: unshare copied back", n);
done:
    comm_reducer_destroy(c);
    free(p_own);
    free(s_own);
    free(dst);
    free(hits);
}

/* The MPI reducer cannot share: ERR_UNSUPPORTED on every rank, pointers untouched. */
static void shared_refused(rt *r)
{
    float buf[8] = {0}, *p = buf, *sl = NULL;
    comm_reducer *c = NULL;
    err_info e = {ERR_OK, ""};
    int rc = comm_reducer_create(r, buf, 8, 16, &c, &e);
    EXPECT_MSG(rc == ERR_OK, "%s", e.msg);
    if (rc == ERR_OK) {
        rc = comm_reducer_share(c, &p, 8, &sl, 0, &e);
        EXPECT_MSG(rc == ERR_UNSUPPORTED && p == buf && strstr(e.msg, "shared-memory reducer"),
                   "rc %d: %s", rc, e.msg);
    }
    comm_reducer_destroy(c);
}

/* Shared memory: the layout the reducer reports. */
static void shm_layout(rt *r)
{
    if (g_shm < 0 || (g_shm > 0 && rt_size(r) % g_shm != 0))
        return;
    comm_reducer *c = NULL;
    err_info e = {ERR_OK, ""};
    int rc = comm_reducer_create_shm(r, 10, 8, g_shm, &c, &e);
    EXPECT_MSG(rc == ERR_OK, "%s", e.msg);
    int local = 0, nodes = 0;
    if (rc == ERR_OK && comm_reducer_is_shm(c, &local, &nodes)) {
        int want_local = g_shm > 0 ? g_shm : rt_size(r);
        EXPECT_MSG(local == want_local && nodes == rt_size(r) / want_local, "local %d nodes %d",
                   local, nodes);
    }
    comm_reducer_destroy(c);
}

int main(int argc, char **argv)
{
    rt *r = NULL;
    err_info e = {ERR_OK, ""};
    rt_config cfg = rt_config_default();
    cfg.comm_timeout_s = 60;
    if (rt_init(&argc, &argv, &cfg, &r, &e) != ERR_OK) {
        fprintf(stderr, "rt_init: %s\n", e.msg);
        return 1;
    }
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], "--shm") == 0)
            g_shm = atoi(argv[i + 1]);
    bool runnable = g_shm <= 0 || rt_size(r) % g_shm == 0;
    static const struct {
        size_t n, bucket_bytes;
    } cases[] = {
        {1, 4},
        {1, 4096},
        {2, 4},
        {7, 8},
        {10, 1},
        {1000, 256},
        {1000, 4000},
        {1000, 3996},
        {1000, 4004},
        {4099, 1024},
        {33, 4 * 33 - 1},
        {100000, 65536},
        {250000, 1 << 20},
        {0, 64},
    };
    for (size_t k = 0; runnable && k < sizeof cases / sizeof cases[0]; k++)
        for (int how = 0; how < READY_N; how++) {
            if (how == READY_DOWN_ONE && cases[k].n > 5000)
                continue; /* one call per element: keep the test fast */
            run_case(r, cases[k].n, cases[k].bucket_bytes, how);
        }
    if (runnable)
        mismatch(r);
    if (runnable && g_shm >= 0) {
        static const size_t shared_n[][2] = {
            {1, 4}, {1000, 256}, {4099, 1024}, {100000, 65536}, {0, 64}};
        for (size_t k = 0; k < sizeof shared_n / sizeof shared_n[0]; k++)
            shared_case(r, shared_n[k][0], shared_n[k][1]);
    }
    if (g_shm < 0)
        shared_refused(r);
    uneven_nodes(r);
    shm_layout(r);
    int failed = test_finish();
    int any = 0;
    MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    rt_finalize(r);
    return any;
}
