/* Error agreement and small sums under real mpirun (1..4 ranks): all-OK leaves the message
 * alone; one failing rank's code and text (with its rank and status) reach every rank; the
 * lowest of several failing ranks wins and the others are listed; a real error beats ERR_PEER;
 * out-of-range codes become ERR_INTERNAL; comm_allreduce_sum_d sums exactly. */

#include "trainer/comm.h"

#include <stdlib.h>
#include <string.h>

#include "test_util.h"

/* Every rank must end with the same code and byte-identical message. */
static void expect_same_everywhere(int rc, const err_info *e)
{
    char mine[ERR_MSG_MAX], root[ERR_MSG_MAX];
    memset(mine, 0, sizeof mine); /* compared as whole arrays: no garbage after the NUL */
    memcpy(mine, e->msg, strnlen(e->msg, sizeof mine - 1));
    memcpy(root, mine, sizeof root);
    MPI_Bcast(root, (int)sizeof root, MPI_CHAR, 0, MPI_COMM_WORLD);
    int rcs[2] = {rc, -rc}, ext[2];
    MPI_Allreduce(rcs, ext, 2, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    EXPECT_MSG(ext[0] == -ext[1], "codes differ between ranks: %d..%d", -ext[1], ext[0]);
    EXPECT_MSG(strcmp(root, mine) == 0, "message differs: \"%s\" vs rank 0 \"%s\"", mine, root);
}

static void all_ok(rt *r)
{
    err_info e;
    err_set(&e, ERR_OK, "untouched");
    int rc = comm_agree(r, ERR_OK, &e);
    EXPECT(rc == ERR_OK);
    EXPECT(strcmp(e.msg, "untouched") == 0);
    EXPECT(comm_agree(r, ERR_OK, NULL) == ERR_OK);
}

/* The last rank fails reading a file while loading data; everyone gets its message. */
static void one_fails(rt *r)
{
    int rank = rt_rank(r), size = rt_size(r), bad = size - 1;
    err_info e = {ERR_OK, ""};
    int rc = ERR_OK;
    rt_status_set(r, "epoch %d step %d: %s", 1, 3, "data");
    if (rank == bad)
        rc = err_set(&e, ERR_IO, "data.h5: /x: read failed at row %d", 17 + rank);
    rc = comm_agree(r, rc, &e);
    EXPECT_MSG(rc == ERR_IO, "rc %d", rc);
    char want[ERR_MSG_MAX];
    if (size > 1)
        snprintf(want, sizeof want,
                 "rank %d [epoch 1 step 3: data]: data.h5: /x: read failed at row %d", bad,
                 17 + bad);
    else
        snprintf(want, sizeof want, "data.h5: /x: read failed at row %d", 17 + bad);
    EXPECT_MSG(strcmp(e.msg, want) == 0, "got \"%s\", want \"%s\"", e.msg, want);
    expect_same_everywhere(rc, &e);
    rt_status_set(r, "%s", "");
}

/* Rank 0 saw only a peer failure, the last rank the real cause: the real one wins. */
static void real_beats_peer(rt *r)
{
    int rank = rt_rank(r), size = rt_size(r);
    if (size < 2)
        return;
    err_info e = {ERR_OK, ""};
    int rc = ERR_OK;
    if (rank == 0)
        rc = err_set(&e, ERR_PEER, "peer went away");
    if (rank == size - 1)
        rc = err_set(&e, ERR_SHAPE, "dense_1: kernel [3, 4], expected [4, 3]");
    rc = comm_agree(r, rc, &e);
    EXPECT(rc == ERR_SHAPE);
    char want[ERR_MSG_MAX];
    snprintf(want, sizeof want,
             "rank %d: dense_1: kernel [3, 4], expected [4, 3] (also failed: ranks 0)", size - 1);
    EXPECT_MSG(strcmp(e.msg, want) == 0, "got \"%s\", want \"%s\"", e.msg, want);
    expect_same_everywhere(rc, &e);
}

/* Every rank but 0 fails with a different code: the lowest failing rank (1) wins. */
static void lowest_wins(rt *r)
{
    int rank = rt_rank(r), size = rt_size(r);
    if (size < 3)
        return;
    err_info e = {ERR_OK, ""};
    int rc = ERR_OK;
    if (rank > 0)
        rc = err_set(&e, rank == 1 ? ERR_NUMERIC : ERR_RANGE, "failure on %d", rank);
    rc = comm_agree(r, rc, &e);
    EXPECT(rc == ERR_NUMERIC);
    char want[ERR_MSG_MAX];
    int at = snprintf(want, sizeof want, "rank 1: failure on 1 (also failed: ranks 2");
    for (int i = 3; i < size; i++)
        at += snprintf(want + at, sizeof want - (size_t)at, ", %d", i);
    snprintf(want + at, sizeof want - (size_t)at, ")");
    EXPECT_MSG(strcmp(e.msg, want) == 0, "got \"%s\", want \"%s\"", e.msg, want);
    expect_same_everywhere(rc, &e);
}

static void bad_code(rt *r)
{
    err_info e = {ERR_OK, ""};
    int rc = rt_rank(r) == 0 ? 999 : ERR_OK;
    if (rc != ERR_OK)
        err_set(&e, ERR_INTERNAL, "weird");
    rc = comm_agree(r, rc, &e);
    EXPECT(rc == ERR_INTERNAL);
    EXPECT_MSG(strstr(e.msg, "weird") != NULL, "%s", e.msg);
    rc = comm_agree(r, rt_rank(r) == 0 ? ERR_IO : ERR_OK, NULL); /* no message to carry */
    EXPECT(rc == ERR_IO);
}

static void sums(rt *r)
{
    int rank = rt_rank(r), size = rt_size(r);
    static const int64_t lens[] = {0, 1, 3, 12345};
    for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
        int64_t n = lens[k];
        double *x = malloc((size_t)(n > 0 ? n : 1) * sizeof *x);
        CHECK(x != NULL);
        for (int64_t i = 0; i < n; i++)
            x[i] = (double)(i % 1000) * 0.5 + rank * 1000.0;
        err_info e = {ERR_OK, ""};
        int rc = comm_allreduce_sum_d(r, x, n, &e);
        EXPECT_MSG(rc == ERR_OK, "%s", e.msg);
        int64_t bad = 0;
        for (int64_t i = 0; i < n; i++) {
            /* Exact: halves and thousands are representable and the sums stay far below 2^53. */
            double want = size * ((double)(i % 1000) * 0.5) + 1000.0 * size * (size - 1) / 2;
            bad += x[i] != want;
        }
        EXPECT_MSG(bad == 0, "n=%lld: %lld wrong", (long long)n, (long long)bad);
        free(x);
    }
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
    all_ok(r);
    one_fails(r);
    real_beats_peer(r);
    lowest_wins(r);
    bad_code(r);
    sums(r);
    all_ok(r); /* failures do not stick: agreement is not a runtime failure */
    EXPECT(!rt_failed(r));
    int failed = test_finish();
    int any = 0;
    MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    rt_finalize(r);
    return any;
}
