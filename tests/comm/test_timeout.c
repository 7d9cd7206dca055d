/* The comm timeout: rank 1 stops taking part (as if stuck in a long computation) and every
 * other rank's collective must return ERR_PEER after the timeout, not hang. Run by
 * expect_run.sh, because the job then ends the way a real run would: the survivors'
 * rt_finalize() finds the runtime failed and aborts the job with the timeout message.
 *
 * usage: test_comm_timeout allreduce|reducer|reducer_shm|shared|agree TIMEOUT_S
 * (reducer_shm: the shared-memory reducer, whose message also names the rank it waits for;
 * shared: its shared update, where rank 1 finishes the gradient sum but never applies its part
 * of the update, so the others' comm_reducer_sync() must time out naming it)
 * Each survivor prints "timeout-test rank R: P passed, F failed" before the abort. */

#include "trainer/comm.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "test_util.h"

int main(int argc, char **argv)
{
    rt *r = NULL;
    err_info e = {ERR_OK, ""};
    rt_config cfg = rt_config_default();
    const char *mode = argc > 1 ? argv[1] : "reducer";
    cfg.comm_timeout_s = argc > 2 ? atof(argv[2]) : 1.0;
    if (rt_init(&argc, &argv, &cfg, &r, &e) != ERR_OK) {
        fprintf(stderr, "rt_init: %s\n", e.msg);
        return 1;
    }
    int rank = rt_rank(r);
    CHECK(rt_size(r) >= 2);
    /* The survivors' own communicator, for a last barrier that the broken one cannot give. */
    MPI_Comm surv = MPI_COMM_NULL;
    MPI_Comm_split(MPI_COMM_WORLD, rank == 1, rank, &surv);

    float own[1000];
    double sums[100];
    for (int i = 0; i < 1000; i++)
        own[i] = 1.0f;
    for (int i = 0; i < 100; i++)
        sums[i] = 1.0;
    comm_reducer *c = NULL;
    bool shared = strcmp(mode, "shared") == 0;
    bool shm = shared || strcmp(mode, "reducer_shm") == 0;
    int rc = shm ? comm_reducer_create_shm(r, 1000, 4000, 0, &c, &e)
                 : comm_reducer_create(r, own, 1000, 4000, &c, &e);
    CHECK(rc == ERR_OK);
    float state_own[1000] = {0}, *state = state_own, *no_slots = NULL;
    if (shared)
        CHECK(comm_reducer_share(c, &state, 1000, &no_slots, 0, &e) == ERR_OK);
    float *grads = comm_reducer_buffer(c);
    for (int i = 0; i < 1000; i++)
        grads[i] = 1.0f;
    /* A successful round with everyone first, so that connection setup is not timed below. */
    rc = comm_reducer_begin(c, &e);
    if (rc == ERR_OK)
        rc = comm_reducer_ready(c, 0, 1000, &e);
    if (rc == ERR_OK)
        rc = comm_reducer_finish(c, &e);
    if (rc == ERR_OK && shared) {
        comm_reducer_updated(c);
        rc = comm_reducer_sync(c, &e);
    }
    rc = comm_agree(r, rc, &e);
    CHECK(rc == ERR_OK);

    if (shared && rank == 1) {
        /* Joins the gradient sum of the next step, then never applies its part of the update. */
        rc = comm_reducer_begin(c, &e);
        if (rc == ERR_OK)
            rc = comm_reducer_ready(c, 0, 1000, &e);
        if (rc == ERR_OK)
            rc = comm_reducer_finish(c, &e);
        CHECK(rc == ERR_OK);
    }
    if (rank == 1) {
        rt_status_set(r, "epoch 1 step 5: stuck in a long computation");
        /* Never joins again; the job ends by abort from the others long before this. */
        struct timespec ts = {1, 0};
        for (int i = 0; i < 120; i++)
            nanosleep(&ts, NULL);
        fprintf(stderr, "timeout-test rank 1: was not stopped by the others' abort\n");
        return 1;
    }

    rt_status_set(r, "epoch 1 step 5: %s", mode);
    double t0 = MPI_Wtime();
    const char *where = NULL;
    if (strcmp(mode, "allreduce") == 0) {
        rc = comm_allreduce_sum_d(r, sums, 100, &e);
        where = "sum of 100 doubles";
    } else if (strcmp(mode, "agree") == 0) {
        rc = comm_agree(r, ERR_OK, &e);
        where = "error agreement";
    } else if (shared) {
        rc = comm_reducer_begin(c, &e);
        if (rc == ERR_OK)
            rc = comm_reducer_ready(c, 0, 1000, &e);
        if (rc == ERR_OK)
            rc = comm_reducer_finish(c, &e);
        EXPECT_MSG(rc == ERR_OK, "the gradient sum itself completes: %s", e.msg);
        comm_reducer_updated(c);
        rc = comm_reducer_sync(c, &e);
        where = "shared parameter update: rank 1 did not apply its part";
    } else {
        rc = comm_reducer_begin(c, &e);
        if (rc == ERR_OK)
            rc = comm_reducer_ready(c, 0, 1000, &e);
        if (rc == ERR_OK)
            rc = comm_reducer_finish(c, &e);
        where =
            shm ? "bucket 0 of 1 (floats [0, 1000))" : "gradient bucket 0 of 1 (floats [0, 1000))";
        if (shm)
            EXPECT_MSG(strstr(e.msg, "waiting for rank 1") != NULL, "%s", e.msg);
    }
    double dt = MPI_Wtime() - t0;
    char within[64];
    snprintf(within, sizeof within, "%swithin %g s", shared ? "" : "did not complete ",
             cfg.comm_timeout_s);
    EXPECT_MSG(rc == ERR_PEER, "rc %d: %s", rc, e.msg);
    EXPECT_MSG(dt >= cfg.comm_timeout_s - 0.01 && dt < cfg.comm_timeout_s + 3.0,
               "returned after %.3f s, timeout %g s", dt, cfg.comm_timeout_s);
    EXPECT_MSG(strstr(e.msg, within) != NULL && strstr(e.msg, where) != NULL, "%s", e.msg);
    EXPECT(rt_failed(r));

    /* The failure sticks: the next collective returns it at once without communicating. */
    err_info e2 = {ERR_OK, ""};
    t0 = MPI_Wtime();
    rc = comm_agree(r, ERR_OK, &e2);
    EXPECT(rc == ERR_PEER && strcmp(e2.msg, e.msg) == 0);
    rc = comm_reducer_begin(c, &e2);
    EXPECT(rc == ERR_PEER);
    EXPECT(MPI_Wtime() - t0 < 0.5);

    printf("timeout-test rank %d: %d passed, %d failed\n", rank, test_passed_, test_failed_);
    fflush(stdout);
    MPI_Barrier(surv);
    comm_reducer_destroy(c);
    rt_finalize(r); /* failed runtime: aborts the job with e.msg */
    fprintf(stderr, "timeout-test rank %d: rt_finalize returned on a failed runtime\n", rank);
    return 1;
}
