#include "trainer/fit_pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define POOL_PAUSE() _mm_pause()
#else
#define POOL_PAUSE() ((void)0)
#endif

/* A reusable barrier: arrivals are counted atomically; the last one resets the count and bumps
 * the generation under the mutex and wakes the sleepers. Waiters poll the generation for a
 * while, then sleep on the condition variable (rechecking the generation under the mutex, so a
 * wake-up cannot be lost). */
typedef struct pool_barrier {
    atomic_uint count;
    atomic_uint gen;
    atomic_uint n; /* participants; lowered only when thread creation fails */
    pthread_mutex_t mu;
    pthread_cond_t cv;
} pool_barrier;

struct fit_pool {
    int workers;
    int started; /* threads running (workers - 1 once created) */
    double spin_s;
    pool_barrier b;
    pthread_t *threads;
    struct pool_arg {
        fit_pool *p;
        int w;
    } * args;
    /* The current run, written by worker 0 before the start barrier. */
    fit_pool_fn fn;
    void *ctx;
    bool stop;
};

static double pool_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void barrier_wait(pool_barrier *b, double spin_s)
{
    unsigned g = atomic_load_explicit(&b->gen, memory_order_acquire);
    unsigned arrived = atomic_fetch_add_explicit(&b->count, 1, memory_order_acq_rel) + 1;
    if (arrived == atomic_load_explicit(&b->n, memory_order_acquire)) {
        atomic_store_explicit(&b->count, 0, memory_order_relaxed);
        pthread_mutex_lock(&b->mu);
        atomic_store_explicit(&b->gen, g + 1, memory_order_release);
        pthread_cond_broadcast(&b->cv);
        pthread_mutex_unlock(&b->mu);
        return;
    }
    if (spin_s > 0) {
        double until = pool_now() + spin_s;
        do {
            for (int i = 0; i < 64; i++) {
                if (atomic_load_explicit(&b->gen, memory_order_acquire) != g)
                    return;
                POOL_PAUSE();
            }
        } while (pool_now() < until);
    }
    pthread_mutex_lock(&b->mu);
    while (atomic_load_explicit(&b->gen, memory_order_acquire) == g)
        pthread_cond_wait(&b->cv, &b->mu);
    pthread_mutex_unlock(&b->mu);
}

static void *pool_main(void *arg)
{
    const struct pool_arg *a = arg;
    fit_pool *p = a->p;
    for (;;) {
        barrier_wait(&p->b, p->spin_s);
        if (p->stop)
            break;
        p->fn(p->ctx, a->w);
        barrier_wait(&p->b, p->spin_s);
    }
    return NULL;
}

int fit_pool_create(int workers, double spin_us, fit_pool **out, err_info *e)
{
    if (workers < 1)
        return err_set(e, ERR_USAGE, "thread pool of %d workers: need at least 1", workers);
    fit_pool *p = calloc(1, sizeof *p);
    if (p == NULL)
        return err_set(e, ERR_NOMEM, "thread pool");
    p->workers = workers;
    p->spin_s = spin_us > 0 ? 1e-6 * spin_us : 0.0;
    atomic_init(&p->b.count, 0);
    atomic_init(&p->b.gen, 0);
    atomic_init(&p->b.n, (unsigned)workers);
    pthread_mutex_init(&p->b.mu, NULL);
    pthread_cond_init(&p->b.cv, NULL);
    p->threads = calloc((size_t)workers, sizeof *p->threads);
    p->args = calloc((size_t)workers, sizeof *p->args);
    if (p->threads == NULL || p->args == NULL) {
        fit_pool_destroy(p);
        return err_set(e, ERR_NOMEM, "thread pool of %d workers", workers);
    }
    for (int w = 1; w < workers; w++) {
        p->args[w].p = p;
        p->args[w].w = w;
        int prc = pthread_create(&p->threads[w], NULL, pool_main, &p->args[w]);
        if (prc != 0) {
            /* The threads already started wait at the start barrier for `workers`
             * participants: lower the count to those that exist, then stop them. */
            atomic_store_explicit(&p->b.n, (unsigned)w, memory_order_release);
            fit_pool_destroy(p);
            return err_set(e, ERR_INTERNAL, "thread pool: starting worker %d of %d: %s", w, workers,
                           strerror(prc));
        }
        p->started = w;
    }
    *out = p;
    return ERR_OK;
}

void fit_pool_destroy(fit_pool *p)
{
    if (p == NULL)
        return;
    if (p->started > 0) {
        p->stop = true;
        barrier_wait(&p->b, 0.0);
        for (int w = 1; w <= p->started; w++)
            pthread_join(p->threads[w], NULL);
    }
    pthread_cond_destroy(&p->b.cv);
    pthread_mutex_destroy(&p->b.mu);
    free(p->threads);
    free(p->args);
    free(p);
}

int fit_pool_size(const fit_pool *p)
{
    return p->workers;
}

void fit_pool_run(fit_pool *p, fit_pool_fn fn, void *ctx)
{
    if (p->workers == 1) {
        fn(ctx, 0);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    barrier_wait(&p->b, p->spin_s);
    fn(ctx, 0);
    barrier_wait(&p->b, p->spin_s);
}

void fit_pool_barrier(fit_pool *p)
{
    if (p->workers > 1)
        barrier_wait(&p->b, p->spin_s);
}

static int64_t share_bound(int64_t n, int workers, int w, int64_t align)
{
    if (w <= 0)
        return 0;
    if (w >= workers)
        return n;
    int64_t q = n / workers, r = n % workers;
    int64_t b = (int64_t)w * q + (w < r ? w : r);
    if (align > 1) {
        b = (b + align - 1) / align * align;
        if (b > n)
            b = n;
    }
    return b;
}

void fit_pool_share(int64_t n, int workers, int w, int64_t align, int64_t *lo, int64_t *hi)
{
    *lo = share_bound(n, workers, w, align);
    *hi = share_bound(n, workers, w + 1, align);
}
