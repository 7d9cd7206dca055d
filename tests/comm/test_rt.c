/* The runtime under mpirun (1..3 ranks) and as a plain singleton process: rank and size, the
 * duplicated communicator and its error handler, the local rank, the OpenBLAS thread count, the
 * status line and the status file, config validation before MPI starts.
 *
 * Options: --threads-from-env (OPENBLAS_NUM_THREADS is set: rt must use exactly it)
 *          --threads-auto     (it is unset: rt must pick max(1, cores / sharers))
 *          --expect-threads N (the launcher promised N threads per rank) */

#include "trainer/rt.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_util.h"

static void read_file(const char *path, char *buf, size_t len)
{
    buf[0] = '\0';
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return;
    size_t n = fread(buf, 1, len - 1, f);
    buf[n] = '\0';
    fclose(f);
}

int main(int argc, char **argv)
{
    int expect_threads = 0;
    bool threads_auto = false, threads_env = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--expect-threads") == 0 && i + 1 < argc)
            expect_threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--threads-auto") == 0)
            threads_auto = true;
        else if (strcmp(argv[i], "--threads-from-env") == 0)
            threads_env = true;
    }
    err_info e = {ERR_OK, ""};
    rt *r = NULL;
    bool preset_alg = getenv("OMPI_MCA_coll_libnbc_iallreduce_algorithm") != NULL;

    /* Bad configs are rejected before MPI is touched. */
    rt_config bad = rt_config_default();
    bad.comm_timeout_s = -1;
    EXPECT(rt_init(&argc, &argv, &bad, &r, &e) == ERR_USAGE && r == NULL);
    EXPECT_MSG(strstr(e.msg, "timeout") != NULL, "%s", e.msg);
    int init = 1;
    MPI_Initialized(&init);
    EXPECT(!init);

    /* Each rank gets its own status directory so that cleanup needs no coordination. */
    char dir[256];
    snprintf(dir, sizeof dir, "/tmp/cornu-test-rt-%ld", (long)getpid());
    mkdir(dir, 0755); /* rt_init uses the directory but does not create it */
    rt_config cfg = rt_config_default();
    cfg.seed = 42;
    cfg.comm_timeout_s = 30;
    cfg.verbose_ranks = true;
    cfg.status_dir = dir;
    if (rt_init(&argc, &argv, &cfg, &r, &e) != ERR_OK) {
        fprintf(stderr, "rt_init: %s\n", e.msg);
        return 1;
    }
    /* rt_init chose the bandwidth-optimal non-blocking allreduce unless told otherwise. */
    const char *alg = getenv("OMPI_MCA_coll_libnbc_iallreduce_algorithm");
    EXPECT(alg != NULL && (preset_alg || strcmp(alg, "3") == 0));
    int wrank = -1, wsize = -1, cmp = MPI_UNEQUAL;
    MPI_Comm_rank(MPI_COMM_WORLD, &wrank);
    MPI_Comm_size(MPI_COMM_WORLD, &wsize);
    EXPECT(rt_rank(r) == wrank && rt_size(r) == wsize);
    MPI_Comm_compare(rt_comm(r), MPI_COMM_WORLD, &cmp);
    EXPECT_MSG(cmp == MPI_CONGRUENT, "compare %d", cmp); /* a duplicate, not WORLD itself */
    MPI_Errhandler h = MPI_ERRHANDLER_NULL;
    MPI_Comm_get_errhandler(rt_comm(r), &h);
    EXPECT(h == MPI_ERRORS_RETURN);
    MPI_Errhandler_free(&h);
    EXPECT(rt_seed(r) == 42 && rt_comm_timeout(r) == 30 && rt_verbose_ranks(r));

    /* All test ranks run on this one node. */
    EXPECT(rt_local_size(r) == wsize);
    EXPECT(rt_local_rank(r) >= 0 && rt_local_rank(r) < rt_local_size(r));
    int ones = rt_local_rank(r) == 0, leaders = 0;
    MPI_Allreduce(&ones, &leaders, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    EXPECT(leaders == 1);
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    EXPECT(rt_cores(r) >= 1 && rt_cores(r) <= online);
    EXPECT(rt_oversubscribed(r) == (wsize > online));

    /* Threads: what rt chose is what OpenBLAS runs with. */
    int t = rt_blas_threads(r);
    EXPECT(t >= 1 && openblas_get_num_threads() == t);
    if (threads_env) {
        const char *s = getenv("OPENBLAS_NUM_THREADS");
        EXPECT(s != NULL && t == atoi(s));
    }
    if (expect_threads > 0)
        EXPECT_MSG(t == expect_threads, "threads %d, expected %d", t, expect_threads);
    if (threads_auto) {
        /* Auto never oversubscribes the node: the ranks' threads fit in the cores (or one
         * thread each when there are more ranks than cores), and a lone rank uses all its
         * cores. */
        int sum = 0;
        MPI_Allreduce(&t, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
        EXPECT_MSG(sum <= (online > wsize ? online : wsize), "threads sum %d, cores %ld", sum,
                   online);
        if (wsize == 1)
            EXPECT_MSG(t == rt_cores(r), "threads %d, cores %d", t, rt_cores(r));
    }

    /* Status line, label and file. */
    EXPECT(strcmp(rt_status(r), "") == 0);
    char label[RT_STATUS_MAX + 32], want[RT_STATUS_MAX + 32], file[2048];
    rt_rank_label(r, label, sizeof label);
    snprintf(want, sizeof want, "rank %d", wrank);
    EXPECT(strcmp(label, want) == 0);
    rt_status_set(r, "epoch %d step %d: %s", 1, 2, "backward");
    EXPECT(strcmp(rt_status(r), "epoch 1 step 2: backward") == 0);
    rt_rank_label(r, label, sizeof label);
    snprintf(want, sizeof want, "rank %d [epoch 1 step 2: backward]", wrank);
    EXPECT(strcmp(label, want) == 0);
    char longer[2 * RT_STATUS_MAX];
    memset(longer, 'x', sizeof longer - 1);
    longer[sizeof longer - 1] = '\0';
    rt_status_set(r, "%s", longer);
    EXPECT(strlen(rt_status(r)) == RT_STATUS_MAX - 1);
    rt_status_set(r, "epoch %d step %d: %s", 3, 4, "update");
    const char *path = rt_status_path(r);
    EXPECT(path != NULL);
    char path_copy[1024] = "";
    if (path != NULL) {
        snprintf(path_copy, sizeof path_copy, "%s", path);
        read_file(path, file, sizeof file);
        snprintf(want, sizeof want, "rank=%d\nsize=%d\n", wrank, wsize);
        EXPECT_MSG(strncmp(file, "cornu-status 1\n", 15) == 0 && strstr(file, want), "%s", file);
        EXPECT_MSG(strstr(file, "\nstate=running ") != NULL, "%s", file);
        EXPECT_MSG(strstr(file, "\nstatus=epoch 3 step 4: update    ") != NULL, "%s", file);
        snprintf(want, sizeof want, "\npid=%ld\n", (long)getpid());
        EXPECT(strstr(file, want) != NULL);
    }

    /* rt_wait on nothing, and on a completed request. */
    EXPECT(rt_wait(r, 0, NULL, MPI_Wtime(), "nothing", &e) == ERR_OK);
    MPI_Request q = MPI_REQUEST_NULL;
    MPI_Ibarrier(rt_comm(r), &q);
    EXPECT_MSG(rt_wait(r, 1, &q, MPI_Wtime(), "barrier", &e) == ERR_OK, "%s", e.msg);
    EXPECT(!rt_failed(r) && rt_failure(r, &e) == ERR_OK);

    int failed = test_finish();
    int any = 0;
    MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    rt_finalize(r);
    rt_finalize(NULL);

    /* After finalize the file says the rank finished cleanly. */
    if (path_copy[0] != '\0') {
        read_file(path_copy, file, sizeof file);
        if (strstr(file, "\nstate=finished ") == NULL) {
            fprintf(stderr, "status file after finalize:\n%s\n", file);
            any = 1;
        }
        unlink(path_copy);
    }
    rmdir(dir);
    return any;
}
