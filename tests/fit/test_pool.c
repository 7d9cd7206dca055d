/* The worker pool: every worker runs each job once, barriers order the phases, shares cover a
 * range exactly once, and the pool is reusable across many runs. */
#include "trainer/fit_pool.h"

#include <stdatomic.h>
#include <string.h>

#include "test_util.h"

#define MAXW 8
#define PHASES 50

typedef struct job {
    fit_pool *p;
    int workers;
    int64_t slot[MAXW][PHASES]; /* what each worker saw of the others at each phase */
    int64_t counter[MAXW];
    int ran[MAXW];
} job;

/* Each phase: every worker bumps its own counter, then after a barrier checks that every other
 * worker has bumped its counter too (the barrier makes the writes visible). */
static void phases(void *ctx, int w)
{
    job *j = ctx;
    j->ran[w]++;
    for (int ph = 0; ph < PHASES; ph++) {
        j->counter[w] = ph + 1;
        fit_pool_barrier(j->p);
        int64_t seen = 0;
        for (int k = 0; k < j->workers; k++)
            seen += j->counter[k];
        j->slot[w][ph] = seen;
        fit_pool_barrier(j->p);
    }
}

static void check_shares(int64_t n, int workers, int64_t align)
{
    int64_t next = 0;
    for (int w = 0; w < workers; w++) {
        int64_t lo, hi;
        fit_pool_share(n, workers, w, align, &lo, &hi);
        EXPECT_MSG(lo == next && hi >= lo, "n %lld w %d/%d align %lld: [%lld, %lld)", (long long)n,
                   w, workers, (long long)align, (long long)lo, (long long)hi);
        if (align > 1 && w > 0 && lo < n)
            EXPECT(lo % align == 0);
        if (align == 1) {
            int64_t q = n / workers;
            EXPECT(hi - lo == q || hi - lo == q + 1);
        }
        next = hi;
    }
    EXPECT(next == n);
}

int main(void)
{
    for (int workers = 1; workers <= 5; workers++) {
        for (int spin = 0; spin < 2; spin++) {
            job j;
            memset(&j, 0, sizeof j);
            err_info e;
            int rc = fit_pool_create(workers, spin ? 50.0 : 0.0, &j.p, &e);
            EXPECT(rc == ERR_OK);
            if (rc != ERR_OK)
                continue;
            j.workers = workers;
            EXPECT(fit_pool_size(j.p) == workers);
            for (int run = 0; run < 20; run++)
                fit_pool_run(j.p, phases, &j);
            for (int w = 0; w < workers; w++) {
                EXPECT(j.ran[w] == 20);
                for (int ph = 0; ph < PHASES; ph++)
                    EXPECT_MSG(j.slot[w][ph] == (int64_t)workers * (ph + 1),
                               "workers %d worker %d phase %d saw %lld", workers, w, ph,
                               (long long)j.slot[w][ph]);
            }
            fit_pool_destroy(j.p);
        }
    }
    fit_pool_destroy(NULL);
    err_info e;
    fit_pool *p = NULL;
    EXPECT(fit_pool_create(0, 0, &p, &e) == ERR_USAGE && p == NULL);

    int64_t ns[] = {0, 1, 7, 33, 100, 128, 535818};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
        for (int workers = 1; workers <= 5; workers++) {
            check_shares(ns[i], workers, 1);
            check_shares(ns[i], workers, 16);
        }
    return test_finish();
}
