#ifndef CORNU_LAUNCH_DIST_H
#define CORNU_LAUNCH_DIST_H

/* Wires the MPI runtime (trainer/rt.h) and gradient communication (trainer/comm.h) into the
 * training loop's fit_comm hooks, and prints progress on rank 0 only. One process without
 * mpirun is a world of size 1 and uses no hooks. */

#include <stdbool.h>
#include <stddef.h>

#include "launch/cli.h"
#include "trainer/fit.h"

typedef struct dist dist;

typedef struct dist_config {
    int threads; /* OpenBLAS threads per rank, 0 = auto */
    uint64_t seed;
    double comm_timeout_s;
    bool verbose_ranks;
} dist_config;

/* Whether this process is rank 0 according to the launcher's environment (before MPI starts):
 * used only to avoid printing usage errors once per rank. */
int dist_env_is_root(void);

int dist_create(int *argc, char ***argv, const dist_config *c, dist **out, err_info *e);
void dist_destroy(dist *d);
int dist_rank(const dist *d);
int dist_size(const dist *d);
/* The fit hooks, or NULL for a single process. */
const fit_comm *dist_comm(dist *d);
/* Collective: checks that every rank holds bit-identical initial parameters (a checksum). */
int dist_check_model(dist *d, const model *m, err_info *e);
/* Collective: sets up the bucketed reducer over the session's gradient buffer (m->n_trainable
 * floats). With the shared-memory reducer, more than one rank per node, share_update and an
 * optimizer that does not clip by norm, the ranks of a node also share one copy of m's parameters
 * and optimizer state and each updates its buckets (comm_reducer_share); dist_detach() gives m
 * its own copy back. */
int dist_attach(dist *d, fit_session *s, model *m, double bucket_mb, const char *how,
                bool share_update, err_info *e);
/* Not collective; after fit_train (which leaves the shared state synced), before m is used
 * elsewhere or destroyed. Does nothing when nothing is shared. */
void dist_detach(dist *d);
/* Collective: worst code over ranks. */
int dist_agree(dist *d, int rc, err_info *e);
/* Splits this rank's threads (--threads; auto: $OPENBLAS_NUM_THREADS, else its cores / the ranks
 * sharing them, as rt_init chose) into worker threads of blas_per_worker OpenBLAS threads each
 * (<= 0 means 1): returns the number of workers (at least 1) and sets OpenBLAS accordingly. With
 * one worker OpenBLAS keeps all the threads. Not collective. */
int dist_workers(dist *d, int blas_per_worker);

/* Progress context for fit callbacks: prints on rank 0, per-rank timing with --verbose-ranks. */
typedef struct dist_progress {
    cli_progress *p;
    dist *d;
    bool verbose;
} dist_progress;
void dist_on_step(void *ctx, int64_t epoch, int64_t step, int64_t steps, const fit_logs *logs,
                  double elapsed_s);
void dist_on_epoch(void *ctx, int64_t epoch, int64_t epochs, int64_t steps, const fit_logs *logs,
                   double elapsed_s, const fit_timing *t);

#endif
