#ifndef CORNU_TRAINER_FIT_POOL_H
#define CORNU_TRAINER_FIT_POOL_H

/* A fixed team of worker threads for the training loop (docs/design.md, "Threads"). A pool of
 * N workers owns N - 1 threads, created once by fit_pool_create(); worker 0 is always the thread
 * that calls fit_pool_run(), so that the thread which initialised MPI (MPI_THREAD_FUNNELED) is
 * the one that makes every MPI call. Running work and the barriers allocate nothing and create
 * no threads.
 *
 * Waiting (between runs and in barriers) spins for a short while, then blocks on a condition
 * variable: on a machine shared with other processes, or with more workers than cores, a pure
 * spin would steal the core the awaited worker needs. */

#include <stdbool.h>
#include <stdint.h>

#include "kernels/err.h"

typedef struct fit_pool fit_pool;

/* Work for one run: called once per worker with its index 0 .. workers - 1. */
typedef void (*fit_pool_fn)(void *ctx, int worker);

/* Starts workers - 1 threads (workers >= 1; 1 starts none). spin_us is how long a waiting
 * worker polls before it blocks (0: block at once, e.g. when cores are oversubscribed).
 * Errors: ERR_USAGE (workers < 1), ERR_NOMEM, ERR_INTERNAL (pthread_create failed, with its
 * error text). On success *out owns the pool; on failure *out is untouched. */
int fit_pool_create(int workers, double spin_us, fit_pool **out, err_info *e);
/* Stops and joins the threads; NULL does nothing. Not during a run. */
void fit_pool_destroy(fit_pool *p);
int fit_pool_size(const fit_pool *p);

/* Runs fn(ctx, w) for every worker w (w = 0 on the calling thread) and returns when all have
 * returned. Memory written by any worker before it returns is visible to the caller afterwards,
 * and what the caller wrote before the call is visible to every worker. Not reentrant. */
void fit_pool_run(fit_pool *p, fit_pool_fn fn, void *ctx);

/* Inside fn: waits until every worker of the run has reached the barrier (the same number of
 * calls on every worker). Orders memory like fit_pool_run(). */
void fit_pool_barrier(fit_pool *p);

/* Contiguous share [*lo, *hi) of worker w among workers over n items: the rank slicing rule of
 * trainer/data.h (w * q + min(w, r), q = n / workers, r = n % workers), shares differ by at most
 * one item. align > 1 rounds the boundaries to multiples of align (the last share ends at n). */
void fit_pool_share(int64_t n, int workers, int w, int64_t align, int64_t *lo, int64_t *hi);

#endif
