#ifndef CORNU_TRAINER_RT_H
#define CORNU_TRAINER_RT_H

/* The runtime: the only process-global state of cornu (STYLE.md section 6). main() creates it
 * with rt_init() and undoes it with rt_finalize(); everything that needs MPI, the rank or the
 * base seed receives the rt * explicitly.
 *
 * It owns: MPI (initialised here unless the caller already did), a duplicate of MPI_COMM_WORLD
 * with MPI_ERRORS_RETURN (every cornu collective runs on it), rank/size and the rank's place on
 * its node, the OpenBLAS thread count, the base seed, the communication timeout, and the rank's
 * status line ("epoch 2 step 37: backward") that failure messages quote.
 *
 * Failure reporting, all of it owned here:
 *  - rt_abort() prints "cornu: rank R [status]: message" and aborts the whole job.
 *  - A SIGTERM handler (the launcher's way of stopping the surviving ranks after one died)
 *    prints "cornu: rank R [status]: stopped by SIGTERM ..." before the process ends.
 *  - Optionally a status file per rank (see rt_config.status_dir): a small memory-mapped text
 *    file that rt_status_set() rewrites without a system call, so it still holds the last status
 *    of a rank that was killed with SIGKILL. launch/cornu-mpirun reads it after a failure.
 *  - After a collective timed out (rt_wait), the communicator can no longer be trusted: the
 *    runtime is marked failed, further collectives return the same error at once, and
 *    rt_finalize() aborts the job with that message instead of finalising MPI. */

#include <mpi.h>
#include <stdbool.h>
#include <stdint.h>

#include "kernels/err.h"

/* Default communication timeout: generous, so that a slow rank (checkpoint writing, data
 * loading from a network filesystem) never trips it, but a dead or stuck peer ends the job. */
#define RT_COMM_TIMEOUT_DEFAULT_S 600.0
#define RT_STATUS_MAX 256

typedef struct rt_config {
    int blas_threads;       /* 0 = auto: $OPENBLAS_NUM_THREADS if set, else the cores this rank
                               may run on divided by the local ranks sharing them (at least 1) */
    uint64_t seed;          /* base seed; each rank derives its streams from (seed, rank) */
    double comm_timeout_s;  /* 0 = RT_COMM_TIMEOUT_DEFAULT_S; a collective that does not finish
                               within this many seconds is an error */
    bool verbose_ranks;     /* every rank reports its own timing (launch/ prints it) */
    const char *status_dir; /* existing directory for per-rank status files (rank-R.status);
                               NULL = $CORNU_STATUS_DIR, unset or "" = no files. Best effort:
                               if the file cannot be created (e.g. the directory does not exist
                               on this node) the run continues without it. */
} rt_config;

/* Zero/auto values for every field. */
rt_config rt_config_default(void);

typedef struct rt rt;

/* Initialises MPI (MPI_Init_thread with MPI_THREAD_FUNNELED, unless already initialised: then
 * the caller keeps ownership and rt_finalize() leaves MPI alone; before starting MPI it sets
 * OMPI_MCA_coll_libnbc_iallreduce_algorithm=3 unless the environment has a value, see rt.c),
 * duplicates MPI_COMM_WORLD with
 * MPI_ERRORS_RETURN, finds rank, size and the local rank among the ranks of this node
 * (MPI_Comm_split_type SHARED), sets the OpenBLAS thread count and installs the SIGTERM report.
 * Works under mpirun/srun and as a plain singleton process. Collective over MPI_COMM_WORLD.
 * c may be NULL (defaults). On success *out owns the runtime; on failure *out is untouched and
 * MPI is finalised again if rt_init started it, except after a timed-out exchange (finalising
 * could then wait forever): the caller should print e and exit. */
int rt_init(int *argc, char ***argv, const rt_config *c, rt **out, err_info *e);

/* Collective. Frees the communicator, restores the SIGTERM disposition, marks the status file
 * "finished" and finalises MPI if rt_init initialised it. If the runtime is failed (a collective
 * timed out) it calls rt_abort() with the stored message instead. NULL does nothing. */
void rt_finalize(rt *r);

int rt_rank(const rt *r);
int rt_size(const rt *r);
int rt_local_rank(const rt *r); /* rank among the ranks on this node */
int rt_local_size(const rt *r); /* ranks on this node */
MPI_Comm rt_comm(const rt *r);  /* borrowed; MPI_ERRORS_RETURN */
double rt_comm_timeout(const rt *r);
int rt_blas_threads(const rt *r); /* OpenBLAS threads of this rank, as set by rt_init */
/* Changes the OpenBLAS thread count (n >= 1) after rt_init, e.g. to 1 when the rank runs worker
 * threads that call BLAS side by side (docs/design.md, "Threads"). Not during a BLAS call. */
void rt_blas_threads_set(rt *r, int n);
int rt_cores(const rt *r); /* cores this rank may run on (its affinity mask) */
uint64_t rt_seed(const rt *r);
bool rt_verbose_ranks(const rt *r);
/* True when this node has more ranks than cores: waits then sleep instead of spinning. */
bool rt_oversubscribed(const rt *r);
/* Borrowed: the last rt_status_set() text ("" before the first). */
const char *rt_status(const rt *r);
/* Borrowed: this rank's status file, or NULL if there is none. */
const char *rt_status_path(const rt *r);

/* Prints "cornu: rank R [status]: <message>" to stderr (just "cornu: <message>" when r is NULL
 * or MPI is not running), marks the status file "aborted" and ends the whole job with
 * MPI_Abort(code) (exit(code) without MPI). Never returns. Use when the ranks cannot agree on
 * an error (comm_agree impossible), e.g. after a timeout. */
void rt_abort(rt *r, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)))
__attribute__((noreturn));

/* Records what this rank is doing ("epoch 2 step 37: backward"), for failure messages and the
 * status file. Cheap: no MPI, no system call (a vsnprintf and a copy); call it freely, several
 * times per step. Truncated to RT_STATUS_MAX - 1 bytes. */
void rt_status_set(rt *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Waits for reqs[0..n) (non-blocking operations on rt_comm(r)), polling with MPI_Testall so
 * that a dead or stuck peer can never hang the rank: returns ERR_PEER "did not complete within
 * T s" once MPI_Wtime() - since exceeds the comm timeout (pass since = MPI_Wtime() to time from
 * the call), ERR_MPI with MPI's error string if MPI reports an error. Either error marks the
 * runtime failed (see above); the requests are then left as they are (MPI forbids freeing a
 * pending collective). `what` must be a string literal: the SIGTERM report quotes it. Spins
 * briefly, then sleeps between polls (at once when the node is oversubscribed). */
int rt_wait(rt *r, int n, MPI_Request *reqs, double since, const char *what, err_info *e);
/* One pause of a polling loop that has waited waited_s so far: nothing while spinning pays
 * (a core per rank, the first 0.1 s), then sleeps growing from ~1 us to 1 ms (*nap_ns keeps the
 * length; start it at 0). rt_wait and the shared-memory reducer poll with it. */
void rt_backoff(const rt *r, double waited_s, long *nap_ns);

/* The runtime's failure state: rt_failed() is true after rt_fail(); rt_failure() copies the
 * stored error into e and returns its code (ERR_OK when not failed). rt_fail() records e and
 * marks the status file "failed"; the first failure wins, but a later call with the same code
 * whose message ends with the recorded one (the same error after err_wrap) replaces it, so
 * callers of rt_wait() call rt_fail() again after adding their context. */
bool rt_failed(const rt *r);
int rt_failure(const rt *r, err_info *e);
void rt_fail(rt *r, const err_info *e);

/* Formats "rank R [status]" (or "rank R" without a status) into buf. */
void rt_rank_label(const rt *r, char *buf, size_t len);

#endif
