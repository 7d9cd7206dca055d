/* The loader: every row exactly once per epoch, the same global order whatever the number of
 * ranks, uneven and empty shards, partial and dropped last batches, seeds and epochs, sub-ranges,
 * configuration errors, and no allocation in data_loader_next(). */

#include "trainer/data.h"

#include <malloc.h>
#include <stdint.h>

#include "data_test.h"
#include "trainer/data_impl.h"

static char g_dir[4096];
static const float XSCALE = 0.5f;

/* x: [n, 2] rows (i, -i); y: [n] labels i % 10. Streamed from the file when stream is set. */
static void make_sources(int64_t n, const char *tag, bool stream, data_source **x, data_source **y)
{
    char px[4352], py[4352];
    snprintf(px, sizeof px, "%s/x_%s.npy", g_dir, tag);
    snprintf(py, sizeof py, "%s/y_%s.npy", g_dir, tag);
    float *xv = malloc((size_t)(2 * n + 1) * sizeof *xv),
          *yv = malloc((size_t)(n + 1) * sizeof *yv);
    for (int64_t i = 0; i < n; i++) {
        xv[2 * i] = (float)i;
        xv[2 * i + 1] = -(float)i;
        yv[i] = (float)(i % 10);
    }
    const int64_t sx[2] = {n, 2}, sy[1] = {n};
    err_info e = {0};
    if (data_npy_write(px, 2, sx, xv, &e) != ERR_OK ||
        data_npy_write(py, 1, sy, yv, &e) != ERR_OK ||
        data__npy_open_file(px, stream ? 0 : DATA_MEM_LIMIT, x, &e) != ERR_OK ||
        data__npy_open_file(py, stream ? 0 : DATA_MEM_LIMIT, y, &e) != ERR_OK) {
        fprintf(stderr, "make_sources: %s\n", e.msg);
        exit(1);
    }
    free(xv);
    free(yv);
}

/* Runs epoch `epoch` on every rank of c->nranks and returns the global sequence of rows (the rank
 * slices of each step concatenated in rank order) in seq (*nseq rows), checking the shard
 * contract on the way. Returns the number of steps, or -1 on a failed check. */
static int64_t run_epoch(data_source *x, data_source *y, const data_loader_config *base,
                         int64_t epoch, int64_t *seq, int64_t *nseq)
{
    const int R = base->nranks;
    const int64_t count = base->end - base->begin;
    const int64_t want_steps =
        base->drop_remainder ? count / base->batch : (count + base->batch - 1) / base->batch;
    data_loader **l = calloc((size_t)R, sizeof *l);
    err_info e = {0};
    int64_t steps = -1, maxl = base->batch / R + (base->batch % R != 0);
    float *xb = malloc((size_t)maxl * 2 * sizeof *xb), *yb = malloc((size_t)maxl * sizeof *yb);
    int fails = 0;
    for (int r = 0; r < R; r++) {
        data_loader_config c = *base;
        c.rank = r;
        if (data_loader_create(&x, &XSCALE, 1, &y, 1, &c, &l[r], &e) != ERR_OK ||
            data_loader_epoch(l[r], epoch, &e) != ERR_OK) {
            fprintf(stderr, "run_epoch: %s\n", e.msg);
            fails++;
            goto done;
        }
        fails += data_loader_steps(l[r]) != want_steps;
        fails += data_loader_max_local_rows(l[r]) != maxl;
    }
    *nseq = 0;
    for (int64_t k = 0;; k++) {
        int64_t g0 = -1, sum = 0, lo = INT64_MAX, hi = -1;
        int ended = 0;
        for (int r = 0; r < R; r++) {
            int64_t g, n;
            bool done = false;
            if (data_loader_next(l[r], &xb, &yb, &g, &n, &done, &e) != ERR_OK) {
                fprintf(stderr, "next: %s\n", e.msg);
                fails++;
                goto done;
            }
            if (done) {
                fails += g != 0 || n != 0;
                ended++;
                continue;
            }
            if (g0 < 0)
                g0 = g;
            fails += g != g0;
            /* The slice formula of data.h. */
            const int64_t q = g / R, m = g % R;
            fails += n != q + (r < m);
            sum += n;
            lo = n < lo ? n : lo;
            hi = n > hi ? n : hi;
            for (int64_t i = 0; i < n; i++) {
                int64_t row = (int64_t)(xb[2 * i] / XSCALE);
                fails += xb[2 * i + 1] != -(float)row * XSCALE;
                fails += yb[i] != (float)(row % 10);
                fails += row < base->begin || row >= base->end;
                seq[(*nseq)++] = row;
            }
        }
        if (ended == R) {
            steps = k;
            break;
        }
        fails += ended != 0; /* all ranks end together */
        fails += sum != g0 || hi - lo > 1;
        /* Full global batches except perhaps the last (never partial with drop_remainder). */
        const int64_t left = count - k * base->batch;
        fails += g0 != (left < base->batch ? left : base->batch);
        fails += base->drop_remainder && g0 != base->batch;
        if (k > want_steps + 1)
            break;
    }
    /* After the end, next() keeps reporting done. */
    for (int r = 0; r < R; r++) {
        int64_t g = 1, n = 1;
        bool done = false;
        fails += data_loader_next(l[r], &xb, &yb, &g, &n, &done, &e) != ERR_OK || !done || g != 0 ||
                 n != 0;
    }
    fails += steps != want_steps;
done:
    for (int r = 0; r < R; r++)
        data_loader_destroy(l[r]);
    free(l);
    free(xb);
    free(yb);
    return fails ? -1 : steps;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* The grid: sizes around the batch, odd sizes, batch 1, nranks 1, 2, 3, 5. */
static void check_grid(bool stream)
{
    const int64_t sizes[] = {0, 1, 5, 127, 128, 129, 1000, 1001};
    const int64_t batches[] = {1, 7, 128, 1000};
    const int ranks[] = {1, 2, 3, 5};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        const int64_t N = sizes[si];
        data_source *x, *y;
        char tag[32];
        snprintf(tag, sizeof tag, "g%lld", (long long)N);
        make_sources(N, tag, stream, &x, &y);
        int64_t *ref = malloc((size_t)(N + 1) * sizeof *ref);
        int64_t *seq = malloc((size_t)(N + 1) * sizeof *seq);
        int64_t *sorted = malloc((size_t)(N + 1) * sizeof *sorted);
        for (size_t bi = 0; bi < sizeof batches / sizeof batches[0]; bi++)
            for (int drop = 0; drop < 2; drop++)
                for (int shuffle = 0; shuffle < 2; shuffle++) {
                    int64_t nref = 0;
                    for (size_t ri = 0; ri < sizeof ranks / sizeof ranks[0]; ri++) {
                        data_loader_config c = data_loader_config_default();
                        c.end = N;
                        c.batch = batches[bi];
                        c.drop_remainder = drop;
                        c.shuffle = shuffle;
                        c.seed = 1234;
                        c.nranks = ranks[ri];
                        int64_t nseq = 0;
                        int64_t steps =
                            run_epoch(x, y, &c, 3, ri == 0 ? ref : seq, ri == 0 ? &nref : &nseq);
                        EXPECT_MSG(steps >= 0, "N %lld batch %lld drop %d shuffle %d nranks %d",
                                   (long long)N, (long long)c.batch, drop, shuffle, c.nranks);
                        if (ri == 0) {
                            /* Rows: each exactly once (a prefix of the permutation when the
                             * remainder is dropped); in order without shuffling. */
                            int64_t want = drop ? N / c.batch * c.batch : N;
                            EXPECT(nref == want);
                            memcpy(sorted, ref, (size_t)nref * sizeof *ref);
                            qsort(sorted, (size_t)nref, sizeof *sorted, cmp_i64);
                            int bad = 0;
                            for (int64_t i = 1; i < nref; i++)
                                bad += sorted[i] == sorted[i - 1];
                            for (int64_t i = 0; !drop && i < nref; i++)
                                bad += sorted[i] != i;
                            for (int64_t i = 0; !shuffle && i < nref; i++)
                                bad += ref[i] != i;
                            EXPECT_MSG(bad == 0, "N %lld batch %lld: %d bad rows", (long long)N,
                                       (long long)c.batch, bad);
                        } else {
                            /* The union over ranks is the single-rank order. */
                            EXPECT_MSG(nseq == nref &&
                                           memcmp(seq, ref, (size_t)nref * sizeof *ref) == 0,
                                       "N %lld batch %lld nranks %d: order differs from 1 rank",
                                       (long long)N, (long long)c.batch, c.nranks);
                        }
                    }
                }
        free(ref);
        free(seq);
        free(sorted);
        data_source_destroy(x);
        data_source_destroy(y);
    }
}

/* Seeds and epochs: the order is a pure function of (seed, epoch). */
static void check_seeds(void)
{
    data_source *x, *y;
    make_sources(1000, "seeds", false, &x, &y);
    enum { N = 1000 };
    static int64_t a[N], b[N], c2[N];
    int64_t na, nb, nc;
    data_loader_config c = data_loader_config_default();
    c.end = N;
    c.batch = 64;
    c.seed = 7;
    EXPECT(run_epoch(x, y, &c, 0, a, &na) == 16);
    EXPECT(run_epoch(x, y, &c, 0, b, &nb) == 16);
    EXPECT(na == N && nb == N && memcmp(a, b, sizeof a) == 0); /* same seed, same order */
    EXPECT(run_epoch(x, y, &c, 1, c2, &nc) == 16);
    EXPECT(memcmp(a, c2, sizeof a) != 0); /* another epoch */
    c.seed = 8;
    EXPECT(run_epoch(x, y, &c, 0, b, &nb) == 16);
    EXPECT(memcmp(a, b, sizeof a) != 0); /* another seed */
    int fixed = 0;
    for (int i = 0; i < N; i++)
        fixed += a[i] == b[i];
    EXPECT(fixed < 20); /* two independent permutations share ~1 fixed point */

    /* One loader: epoch 1 then epoch 0 again reproduces epoch 0. */
    c.seed = 7;
    data_loader *l = NULL;
    err_info e = {0};
    EXPECT(data_loader_create(&x, &XSCALE, 1, &y, 1, &c, &l, &e) == ERR_OK);
    float xb[64 * 2], yb[64];
    float *xp = xb, *yp = yb;
    int64_t g, n;
    bool done;
    EXPECT(data_loader_epoch(l, 1, &e) == ERR_OK);
    EXPECT(data_loader_next(l, &xp, &yp, &g, &n, &done, &e) == ERR_OK);
    EXPECT((int64_t)(xb[0] / XSCALE) == c2[0]);
    EXPECT(data_loader_epoch(l, 0, &e) == ERR_OK);
    int bad = 0;
    for (int k = 0; k < 3; k++) {
        EXPECT(data_loader_next(l, &xp, &yp, &g, &n, &done, &e) == ERR_OK && n == 64);
        for (int i = 0; i < 64; i++)
            bad += (int64_t)(xb[2 * i] / XSCALE) != a[k * 64 + i];
    }
    EXPECT(bad == 0);

    /* Every position is equally likely: where row 0 lands, over many epochs (N = 10). */
    data_loader_destroy(l);
    data_source_destroy(x);
    data_source_destroy(y);
    make_sources(10, "uniform", false, &x, &y);
    c = data_loader_config_default();
    c.end = 10;
    c.batch = 10;
    c.seed = 99;
    EXPECT(data_loader_create(&x, &XSCALE, 1, &y, 1, &c, &l, &e) == ERR_OK);
    int hist[10] = {0};
    float xb10[20], yb10[10];
    float *xp10 = xb10, *yp10 = yb10;
    for (int ep = 0; ep < 3000; ep++) {
        data_loader_epoch(l, ep, &e);
        data_loader_next(l, &xp10, &yp10, &g, &n, &done, &e);
        for (int i = 0; i < 10; i++)
            if (xb10[2 * i] == 0.0f)
                hist[i]++;
    }
    for (int i = 0; i < 10; i++)
        EXPECT_MSG(hist[i] > 200 && hist[i] < 400, "row 0 at position %d in %d of 3000 epochs", i,
                   hist[i]);
    data_loader_destroy(l);
    data_source_destroy(x);
    data_source_destroy(y);
}

/* Rows [begin, end) only, sharded over 3 ranks; empty shards; streamed sources. */
static void check_ranges(void)
{
    data_source *x, *y;
    make_sources(400, "range", true, &x, &y);
    static int64_t seq[400];
    int64_t n;
    data_loader_config c = data_loader_config_default();
    c.begin = 100;
    c.end = 351;
    c.batch = 32;
    c.nranks = 3;
    c.seed = 5;
    EXPECT(run_epoch(x, y, &c, 2, seq, &n) == 8);
    EXPECT(n == 251);
    qsort(seq, (size_t)n, sizeof *seq, cmp_i64);
    int bad = 0;
    for (int64_t i = 0; i < n; i++)
        bad += seq[i] != 100 + i;
    EXPECT(bad == 0);

    /* 2 rows, batch 2, 3 ranks: rank 2 gets nothing but still steps with the others. */
    c = data_loader_config_default();
    c.end = 2;
    c.batch = 2;
    c.nranks = 3;
    c.rank = 2;
    data_loader *l = NULL;
    err_info e = {0};
    EXPECT(data_loader_create(&x, &XSCALE, 1, &y, 1, &c, &l, &e) == ERR_OK);
    float xb[2], yb[1];
    float *xp = xb, *yp = yb;
    int64_t g = -1, ln = -1;
    bool done = true;
    EXPECT(data_loader_next(l, &xp, &yp, &g, &ln, &done, &e) == ERR_OK);
    EXPECT(!done && g == 2 && ln == 0);
    EXPECT(data_loader_next(l, &xp, &yp, &g, &ln, &done, &e) == ERR_OK && done);
    data_loader_destroy(l);

    /* Several inputs and targets, each with its own scale; no targets at all (predict). */
    data_source *xs[2] = {x, y}, *ys[2] = {y, x};
    const float sc[2] = {2.0f, 3.0f};
    c = data_loader_config_default();
    c.end = 400;
    c.batch = 50;
    c.seed = 1;
    EXPECT(data_loader_create(xs, sc, 2, ys, 2, &c, &l, &e) == ERR_OK);
    float x0[100], x1[50], y0[50], y1[100];
    float *xd[2] = {x0, x1}, *yd[2] = {y0, y1};
    EXPECT(data_loader_next(l, xd, yd, &g, &ln, &done, &e) == ERR_OK && ln == 50);
    bad = 0;
    for (int i = 0; i < 50; i++) {
        float row = x0[2 * i] / 2.0f;
        bad += x0[2 * i + 1] != -row * 2.0f || x1[i] != (float)((int)row % 10) * 3.0f;
        bad += y0[i] != (float)((int)row % 10) || y1[2 * i] != row;
    }
    EXPECT(bad == 0);
    data_loader_destroy(l);
    EXPECT(data_loader_create(xs, NULL, 1, NULL, 0, &c, &l, &e) == ERR_OK);
    EXPECT(data_loader_next(l, xd, NULL, &g, &ln, &done, &e) == ERR_OK && ln == 50);
    EXPECT(x0[0] == (float)(int64_t)x0[0]); /* NULL xscale: unscaled */
    data_loader_destroy(l);
    data_source_destroy(x);
    data_source_destroy(y);
}

static void check_errors(void)
{
    data_source *x, *y, *x9, *y9;
    make_sources(10, "err10", false, &x, &y);
    make_sources(9, "err9", false, &x9, &y9);
    data_loader *l = NULL;
    err_info e = {0};
    data_loader_config c = data_loader_config_default();
    c.end = 9;
    EXPECT_ERR(data_loader_create(&x, NULL, 1, &y9, 1, &c, &l, &e), e, ERR_SHAPE, "x_err10.npy",
               "y_err9.npy", "10 rows", "has 9");
    data_source *two[2] = {x, x9};
    EXPECT_ERR(data_loader_create(two, NULL, 2, NULL, 0, &c, &l, &e), e, ERR_SHAPE, "x[1]",
               "x_err9.npy");
    c.end = 11;
    EXPECT_ERR(data_loader_create(&x, NULL, 1, &y, 1, &c, &l, &e), e, ERR_RANGE, "[0, 11)",
               "x_err10.npy");
    c.end = 5;
    c.begin = 6;
    EXPECT_ERR(data_loader_create(&x, NULL, 1, &y, 1, &c, &l, &e), e, ERR_RANGE, "[6, 5)");
    c.begin = -1;
    EXPECT_ERR(data_loader_create(&x, NULL, 1, &y, 1, &c, &l, &e), e, ERR_RANGE, "[-1, 5)");
    c = data_loader_config_default();
    c.end = 10;
    c.batch = 0;
    EXPECT_ERR(data_loader_create(&x, NULL, 1, &y, 1, &c, &l, &e), e, ERR_USAGE, "batch 0");
    c.batch = 4;
    c.rank = 2;
    c.nranks = 2;
    EXPECT_ERR(data_loader_create(&x, NULL, 1, &y, 1, &c, &l, &e), e, ERR_USAGE, "rank 2");
    c.rank = 0;
    EXPECT_ERR(data_loader_create(NULL, NULL, 0, NULL, 0, &c, &l, &e), e, ERR_USAGE, "source");
    data_source *none[1] = {NULL};
    EXPECT_ERR(data_loader_create(none, NULL, 1, NULL, 0, &c, &l, &e), e, ERR_USAGE, "x[0]");
    EXPECT(l == NULL);
    EXPECT(data_loader_create(&x, NULL, 1, &y, 1, &c, &l, &e) == ERR_OK);
    EXPECT_ERR(data_loader_epoch(l, -1, &e), e, ERR_RANGE, "epoch -1");
    data_loader_destroy(l);
    data_loader_destroy(NULL);
    data_source_destroy(NULL);
    data_source_destroy(x);
    data_source_destroy(y);
    data_source_destroy(x9);
    data_source_destroy(y9);
}

/* next() allocates nothing (glibc's heap statistics; under ASan they stay constant too). */
static void check_no_alloc(void)
{
    for (int stream = 0; stream < 2; stream++) {
        data_source *x, *y;
        make_sources(5000, stream ? "na_s" : "na_m", stream, &x, &y);
        data_loader_config c = data_loader_config_default();
        c.end = 5000;
        c.batch = 128;
        c.nranks = 3;
        c.rank = 1;
        data_loader *l = NULL;
        err_info e = {0};
        EXPECT(data_loader_create(&x, &XSCALE, 1, &y, 1, &c, &l, &e) == ERR_OK);
        float xb[43 * 2], yb[43];
        float *xp = xb, *yp = yb;
        int64_t g, n;
        bool done = false;
        EXPECT(data_loader_next(l, &xp, &yp, &g, &n, &done, &e) == ERR_OK); /* warm up stdio */
        struct mallinfo2 before = mallinfo2();
        int steps = 0;
        while (data_loader_next(l, &xp, &yp, &g, &n, &done, &e) == ERR_OK && !done)
            steps++;
        EXPECT(data_loader_epoch(l, 1, &e) == ERR_OK);
        struct mallinfo2 after = mallinfo2();
        EXPECT(steps == 39);
        EXPECT_MSG(after.uordblks == before.uordblks && after.hblkhd == before.hblkhd,
                   "heap in use %zu -> %zu bytes", before.uordblks, after.uordblks);
        data_loader_destroy(l);
        data_source_destroy(x);
        data_source_destroy(y);
    }
}

int main(void)
{
    dt_mkdtemp(g_dir, sizeof g_dir);
    check_grid(false);
    check_grid(true);
    check_seeds();
    check_ranges();
    check_errors();
    check_no_alloc();
    dt_rmdir(g_dir);
    return test_finish();
}
