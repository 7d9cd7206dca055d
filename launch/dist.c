#include "launch/dist.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "trainer/comm.h"
#include "trainer/rt.h"

struct dist {
    rt *r;
    comm_reducer *red;
    fit_comm comm;
    double prev_inflight; /* reducer's cumulative in-flight time at the previous epoch end */
    double prev_ready;    /* reducer's cumulative time in ready hooks at the previous epoch end */
    bool shared;          /* the model's state is shared (comm_reducer_share) until dist_detach */
};

int dist_env_is_root(void)
{
    /* Set by Open MPI, PMIx/PMI launchers and Slurm before main() runs. */
    const char *vars[] = {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v != NULL && *v != '\0')
            return strcmp(v, "0") == 0;
    }
    return 1;
}

static int hook_begin(void *ctx, err_info *e)
{
    dist *d = ctx;
    return comm_reducer_begin(d->red, e);
}

static int hook_ready(void *ctx, size_t lo, size_t hi, err_info *e)
{
    dist *d = ctx;
    return comm_reducer_ready(d->red, lo, hi, e);
}

static int hook_finish(void *ctx, err_info *e)
{
    dist *d = ctx;
    return comm_reducer_finish(d->red, e);
}

static int hook_sum(void *ctx, double *buf, int64_t n, err_info *e)
{
    dist *d = ctx;
    return comm_allreduce_sum_d(d->r, buf, n, e);
}

static int hook_agree(void *ctx, int rc, err_info *e)
{
    dist *d = ctx;
    return comm_agree(d->r, rc, e);
}

static void hook_status(void *ctx, const char *what)
{
    dist *d = ctx;
    rt_status_set(d->r, "%s", what);
}

int dist_create(int *argc, char ***argv, const dist_config *c, dist **out, err_info *e)
{
    dist *d = calloc(1, sizeof *d);
    if (d == NULL)
        return err_set(e, ERR_NOMEM, "runtime");
    rt_config rc_ = rt_config_default();
    rc_.blas_threads = c->threads;
    rc_.seed = c->seed;
    rc_.comm_timeout_s = c->comm_timeout_s;
    rc_.verbose_ranks = c->verbose_ranks;
    int rc = rt_init(argc, argv, &rc_, &d->r, e);
    if (rc != ERR_OK) {
        free(d);
        return rc;
    }
    d->comm.ctx = d;
    d->comm.rank = rt_rank(d->r);
    d->comm.size = rt_size(d->r);
    d->comm.grad_begin = hook_begin;
    d->comm.grad_ready = hook_ready;
    d->comm.grad_finish = hook_finish;
    d->comm.sum = hook_sum;
    d->comm.agree = hook_agree;
    d->comm.status = hook_status;
    *out = d;
    return ERR_OK;
}

void dist_destroy(dist *d)
{
    if (d == NULL)
        return;
    comm_reducer_destroy(d->red);
    rt_finalize(d->r);
    free(d);
}

int dist_rank(const dist *d)
{
    return rt_rank(d->r);
}

int dist_size(const dist *d)
{
    return rt_size(d->r);
}

const fit_comm *dist_comm(dist *d)
{
    return rt_size(d->r) > 1 ? &d->comm : NULL;
}

int dist_agree(dist *d, int rc, err_info *e)
{
    if (rt_size(d->r) == 1)
        return rc;
    return comm_agree(d->r, rc, e);
}

int dist_check_model(dist *d, const model *m, err_info *e)
{
    if (rt_size(d->r) == 1)
        return ERR_OK;
    /* FNV-1a over the parameter bytes: every rank must start from identical weights. */
    uint64_t h = 1469598103934665603ULL;
    const unsigned char *p = (const unsigned char *)m->params;
    for (size_t i = 0; i < m->n_params * sizeof(float); i++)
        h = (h ^ p[i]) * 1099511628211ULL;
    /* Compare through the timed allreduce: the hash in four 16-bit pieces, summed with their
     * squares. sum(x) == n*x and sum(x^2) == n*x^2 hold on every rank only if all x are equal
     * (Cauchy-Schwarz), and these sums are exact in double. */
    double v[8];
    for (int k = 0; k < 4; k++) {
        double piece = (double)((h >> (16 * k)) & 0xffffu);
        v[k] = piece;
        v[4 + k] = piece * piece;
    }
    int rc = comm_allreduce_sum_d(d->r, v, 8, e);
    if (rc != ERR_OK)
        return err_wrap(e, "initial weight checksum");
    int n = rt_size(d->r);
    bool same = true;
    for (int k = 0; k < 4; k++) {
        double piece = (double)((h >> (16 * k)) & 0xffffu);
        same = same && v[k] == n * piece && v[4 + k] == n * piece * piece;
    }
    uint64_t lo = 0, hi = same ? 0 : 1;
    if (lo != hi)
        return err_set(e, ERR_INTERNAL,
                       "ranks start from different initial weights (checksum %016llx on rank %d); "
                       "same --seed and model file on every rank are required",
                       (unsigned long long)h, rt_rank(d->r));
    return ERR_OK;
}

static bool shard_range(void *ctx, size_t i, size_t *lo, size_t *hi)
{
    dist *d = ctx;
    return comm_reducer_owned(d->red, i, lo, hi);
}

static void shard_grad(void *ctx, size_t lo, size_t hi, float *dst)
{
    dist *d = ctx;
    comm_reducer_grad(d->red, lo, hi, dst);
}

static void shard_updated(void *ctx)
{
    dist *d = ctx;
    comm_reducer_updated(d->red);
}

static int shard_sync(void *ctx, err_info *e)
{
    dist *d = ctx;
    return comm_reducer_sync(d->red, e);
}

/* The shared update (comm_reducer_share) when the reducer and the optimizer allow it; every rank
 * decides alike (same reducer kind, same node size, same optimizer). */
static int attach_shared_update(dist *d, fit_session *s, model *m, err_info *e)
{
    int local = 0;
    if (!comm_reducer_is_shm(d->red, &local, NULL) || local < 2 || !fit_session_can_shard(s))
        return ERR_OK;
    size_t nslots = (size_t)m->opt.n_slots * m->n_trainable;
    int rc = comm_reducer_share(d->red, &m->params, m->n_params, &m->opt.slots, nslots, e);
    if (rc != ERR_OK)
        return rc;
    d->shared = true;
    fit_shard sh = {d,          shard_range,
                    shard_grad, shard_updated,
                    shard_sync, comm_reducer_local_rank(d->red) == 0};
    rc = fit_session_set_shard(s, &sh, e);
    return comm_agree(d->r, rc, e);
}

void dist_detach(dist *d)
{
    if (d == NULL || !d->shared)
        return;
    comm_reducer_unshare(d->red);
    d->shared = false;
}

int dist_attach(dist *d, fit_session *s, model *m, double bucket_mb, const char *how,
                bool share_update, err_info *e)
{
    if (rt_size(d->r) == 1)
        return ERR_OK;
    size_t n = m->n_trainable;
    if (!(bucket_mb > 0))
        return err_set(e, ERR_USAGE, "--bucket-mb %g must be positive", bucket_mb);
    bool shm = strcmp(how, "shm") == 0, automatic = strcmp(how, "auto") == 0;
    if (!shm && !automatic && strcmp(how, "mpi") != 0)
        return err_set(e, ERR_USAGE, "--allreduce %s: expected shm, mpi or auto", how);
    size_t bytes = (size_t)(bucket_mb * 1024.0 * 1024.0);
    if (bytes < sizeof(float))
        bytes = sizeof(float);
    if (shm || automatic) {
        /* auto: shared memory unless nodes have different rank counts (then every rank gets
         * ERR_UNSUPPORTED from the collective create and all fall back together). */
        err_info e2 = {ERR_OK, ""};
        int rc = comm_reducer_create_shm(d->r, n, bytes, 0, &d->red, &e2);
        if (rc == ERR_OK) {
            fit_session_set_grads(s, comm_reducer_buffer(d->red));
            return share_update ? attach_shared_update(d, s, m, e) : ERR_OK;
        }
        if (shm || rc != ERR_UNSUPPORTED) {
            *e = e2;
            return rc;
        }
    }
    return comm_reducer_create(d->r, fit_session_grads(s), n, bytes, &d->red, e);
}

void dist_on_step(void *ctx, int64_t epoch, int64_t step, int64_t steps, const fit_logs *logs,
                  double elapsed_s)
{
    dist_progress *p = ctx;
    if (rt_rank(p->d->r) == 0)
        cli_progress_on_step(p->p, epoch, step, steps, logs, elapsed_s);
}

void dist_on_epoch(void *ctx, int64_t epoch, int64_t epochs, int64_t steps, const fit_logs *logs,
                   double elapsed_s, const fit_timing *t)
{
    dist_progress *p = ctx;
    rt *r = p->d->r;
    if (rt_rank(r) == 0)
        cli_progress_on_epoch(p->p, epoch, epochs, steps, logs, elapsed_s, t);
    if (!p->verbose)
        return;
    /* Every rank's timing, gathered to rank 0 and printed in rank order. */
    int size = rt_size(r);
    double mine[5] = {t->step_s, t->compute_s, t->comm_s, t->data_s, 0};
    if (p->d->red != NULL) {
        double exposed, total;
        comm_reducer_stats(p->d->red, &exposed, &total);
        mine[4] = total - p->d->prev_inflight;
        p->d->prev_inflight = total;
        /* Time in the ready hooks ran inside backward, so the fit loop counted it as compute;
         * it is communication the rank did instead of computing: move it to exposed. */
        double ready = comm_reducer_ready_time(p->d->red);
        mine[1] -= ready - p->d->prev_ready;
        mine[2] += ready - p->d->prev_ready;
        p->d->prev_ready = ready;
    }
    double *all = rt_rank(r) == 0 ? malloc(sizeof(double) * 5 * (size_t)size) : NULL;
    if (size > 1)
        MPI_Gather(mine, 5, MPI_DOUBLE, all, 5, MPI_DOUBLE, 0, rt_comm(r));
    else if (all != NULL)
        memcpy(all, mine, sizeof mine);
    if (all != NULL) {
        for (int k = 0; k < size; k++) {
            const double *v = all + 5 * k;
            double per = steps > 0 ? 1e3 / (double)steps : 0;
            printf("  rank %d: step %.2f ms = compute %.2f ms + exposed comm %.2f ms + data %.2f "
                   "ms (allreduce in flight %.2f ms/step)\n",
                   k, v[0] * per, v[1] * per, v[2] * per, v[3] * per, v[4] * per);
        }
        fflush(stdout);
        free(all);
    }
}

int dist_workers(dist *d, int blas_per_worker)
{
    int total = rt_blas_threads(d->r);
    int blas = blas_per_worker > 0 ? blas_per_worker : 1;
    if (blas >= total)
        return 1;
    rt_blas_threads_set(d->r, blas);
    return total / blas;
}
