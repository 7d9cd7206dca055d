/* A miniature training loop (forward, backward reporting gradient chunks to the reducer, finish,
 * error agreement) in which rank 1 fails at step 20 in the middle of backward. Run by
 * expect_run.sh, which checks how the job ended: exit status, messages, time.
 *
 * usage: test_comm_kill MODE [TIMEOUT_S]
 *   none   nobody fails: every rank completes and exits 0
 *   kill   rank 1 raises SIGKILL on itself
 *   abort  rank 1 calls rt_abort(code 3) (a rank that cannot continue and cannot agree)
 *   exit   rank 1 calls exit(3) without finalising (a crash the runtime never sees)
 *   error  rank 1 reports a local error; comm_agree carries it to everyone, all exit 1 */

#include "trainer/comm.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define N_GRADS 30000
#define STEPS 200
#define FAIL_STEP 20
#define CHUNKS 5

static void nap_us(long us)
{
    struct timespec ts = {0, us * 1000L};
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "none";
    rt *r = NULL;
    err_info e = {ERR_OK, ""};
    rt_config cfg = rt_config_default();
    cfg.comm_timeout_s = argc > 2 ? atof(argv[2]) : 0;
    if (rt_init(&argc, &argv, &cfg, &r, &e) != ERR_OK) {
        fprintf(stderr, "rt_init: %s\n", e.msg);
        return 1;
    }
    int rank = rt_rank(r);
    static float grads[N_GRADS];
    comm_reducer *c = NULL;
    int rc = comm_reducer_create(r, grads, N_GRADS, 16384, &c, &e);
    for (int step = 1; rc == ERR_OK && step <= STEPS; step++) {
        rt_status_set(r, "epoch 1 step %d: forward", step);
        nap_us(1000);
        int local = comm_reducer_begin(c, &e);
        for (int k = 0; local == ERR_OK && k < CHUNKS; k++) {
            rt_status_set(r, "epoch 1 step %d: backward", step);
            size_t hi = (size_t)N_GRADS * (size_t)(CHUNKS - k) / CHUNKS;
            size_t lo = (size_t)N_GRADS * (size_t)(CHUNKS - k - 1) / CHUNKS;
            for (size_t i = lo; i < hi; i++)
                grads[i] = (float)(rank + 1);
            if (rank == 1 && step == FAIL_STEP && k == 2) {
                if (strcmp(mode, "kill") == 0)
                    raise(SIGKILL);
                if (strcmp(mode, "abort") == 0)
                    rt_abort(r, 3, "simulated failure: out of memory in layer dense_2");
                if (strcmp(mode, "exit") == 0)
                    exit(3);
                if (strcmp(mode, "error") == 0) {
                    local = err_set(&e, ERR_IO, "data.h5: /x: read failed at row 1234");
                    break;
                }
            }
            local = comm_reducer_ready(c, lo, hi, &e);
            nap_us(200);
        }
        if (local == ERR_OK)
            local = comm_reducer_finish(c, &e);
        else if (local != ERR_OK && !rt_failed(r)) {
            /* A rank that failed locally still joins the collectives of this step. */
            err_info ignore;
            comm_reducer_finish(c, &ignore);
        }
        rc = comm_agree(r, local, &e);
    }
    comm_reducer_destroy(c);
    if (rc != ERR_OK) {
        /* As launch/ does: rank 0 prints the agreed message, everyone exits non-zero. */
        if (rank == 0)
            fprintf(stderr, "cornu: %s\n", e.msg);
        rt_finalize(r); /* aborts instead if the runtime failed (a timeout) */
        return 1;
    }
    printf("kill-test rank %d: completed %d steps\n", rank, STEPS);
    rt_finalize(r);
    return 0;
}
