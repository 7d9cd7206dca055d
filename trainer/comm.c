#include "trainer/comm.h"

#include "trainer/comm_impl.h"

#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int comm__mpi_err(rt *r, err_info *e, int mpi_rc, const char *what)
{
    char s[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(mpi_rc, s, &len) != MPI_SUCCESS)
        snprintf(s, sizeof s, "MPI error %d", mpi_rc);
    err_info w;
    err_set(&w, ERR_MPI, "%s: %s", what, s);
    /* A collective that failed to start on one rank leaves the others waiting in it: the
     * communicator is no longer usable, so the job has to end (rt_finalize aborts). */
    rt_fail(r, &w);
    if (e != NULL)
        *e = w;
    return ERR_MPI;
}

/* err_wrap, then the wrapped message becomes the runtime's failure record (rt_fail keeps the
 * same error with more context), so that the final abort names e.g. the bucket. */
static int comm__fail_wrapped(rt *r, err_info *e, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int comm__fail_wrapped(rt *r, err_info *e, const char *fmt, ...)
{
    char ctx[ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx, sizeof ctx, fmt, ap);
    va_end(ap);
    if (e == NULL)
        return rt_failure(r, NULL);
    int rc = err_wrap(e, "%s", ctx);
    rt_fail(r, e);
    return rc;
}

/* ---- agreement ---- */

/* What comm_agree sends from the chosen rank to all others. */
typedef struct comm__verdict {
    char msg[ERR_MSG_MAX];
} comm__verdict;

/* A wait inside comm_agree failed (timeout or MPI error): keep this rank's own error visible. */
static int comm__agree_lost(int rc, const err_info *local, err_info *wait_err, err_info *e)
{
    if (rc != ERR_OK && local != NULL) {
        err_info both = *wait_err;
        err_set(&both, wait_err->code, "%s; this rank's own error: %s", wait_err->msg, local->msg);
        *wait_err = both;
    }
    if (e != NULL)
        *e = *wait_err;
    return (int)wait_err->code;
}

int comm_agree(rt *r, int rc, err_info *e)
{
    if (rt_failed(r))
        return rt_failure(r, e);
    int code = rc >= 0 && rc < ERR_COUNT ? rc : ERR_INTERNAL;
    if (rt_size(r) == 1) {
        if (code != rc)
            err_wrap(e, "error code %d", rc);
        return code;
    }
    err_info local;
    if (e != NULL)
        local = *e;
    else
        err_set(&local, (err_code)code, "(no message)");
    /* Phase 1, every time: the most severe failure and the lowest rank having it. MPI_MAXLOC
     * breaks ties towards the lower index, here the rank. ERR_PEER ("another rank failed") is
     * less informative than the error that caused it, so it ranks below real errors. */
    int sev = code == ERR_OK ? 0 : code == ERR_PEER ? 1 : 2;
    int in[2] = {sev, rt_rank(r)}, worst[2] = {0, 0};
    MPI_Request req[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
    err_info werr;
    int mrc = MPI_Iallreduce(in, worst, 1, MPI_2INT, MPI_MAXLOC, rt_comm(r), &req[0]);
    if (mrc != MPI_SUCCESS) {
        comm__mpi_err(r, &werr, mrc, "error agreement: MPI_Iallreduce");
        return comm__agree_lost(code, &local, &werr, e);
    }
    if (rt_wait(r, 1, req, MPI_Wtime(), "error agreement", &werr) != ERR_OK)
        return comm__agree_lost(code, &local, &werr, e);
    if (worst[0] == 0)
        return ERR_OK;

    /* Phase 2, only on failure: everyone learns every rank's code and the chosen message. */
    int chosen = worst[1], n = rt_size(r);
    int *codes = malloc((size_t)n * sizeof *codes);
    comm__verdict v;
    memset(&v, 0, sizeof v);
    if (rt_rank(r) == chosen) {
        char label[RT_STATUS_MAX + 32];
        rt_rank_label(r, label, sizeof label);
        err_info labelled = local;
        err_wrap(&labelled, "%s", label); /* truncates a long chain at ERR_MSG_MAX */
        memcpy(v.msg, labelled.msg, sizeof v.msg);
    }
    /* Every rank must join the collectives below with matching counts; a rank that cannot even
     * allocate the code table cannot take part, so it ends the job (STYLE.md section 5). */
    if (codes == NULL)
        rt_abort(r, 1, "error agreement: out of memory for %d codes; own error: %s", n, local.msg);
    mrc = MPI_Iallgather(&code, 1, MPI_INT, codes, 1, MPI_INT, rt_comm(r), &req[0]);
    if (mrc == MPI_SUCCESS)
        mrc = MPI_Ibcast(&v, (int)sizeof v, MPI_BYTE, chosen, rt_comm(r), &req[1]);
    if (mrc != MPI_SUCCESS) {
        free(codes);
        comm__mpi_err(r, &werr, mrc, "error agreement: sharing the message");
        return comm__agree_lost(code, &local, &werr, e);
    }
    if (rt_wait(r, 2, req, MPI_Wtime(), "error agreement", &werr) != ERR_OK) {
        free(codes);
        return comm__agree_lost(code, &local, &werr, e);
    }
    v.msg[sizeof v.msg - 1] = '\0';
    int agreed = codes[chosen];
    char also[160] = "";
    size_t at = 0;
    int listed = 0, more = 0;
    for (int i = 0; i < n; i++) {
        if (i == chosen || codes[i] == ERR_OK)
            continue;
        if (listed == 8) {
            more++;
            continue;
        }
        int w = snprintf(also + at, sizeof also - at, "%s%d",
                         listed ? ", " : " (also failed: ranks ", i);
        if (w > 0 && (size_t)w < sizeof also - at)
            at += (size_t)w;
        listed++;
    }
    if (more > 0) {
        int w = snprintf(also + at, sizeof also - at, " and %d more", more);
        if (w > 0 && (size_t)w < sizeof also - at)
            at += (size_t)w;
    }
    if (listed > 0 && at + 1 < sizeof also) {
        also[at++] = ')';
        also[at] = '\0';
    }
    free(codes);
    if (agreed <= ERR_OK || agreed >= ERR_COUNT)
        agreed = ERR_INTERNAL;
    err_set(e, (err_code)agreed, "%s%s", v.msg, also);
    return agreed;
}

/* ---- small sums ---- */

int comm_allreduce_sum_d(rt *r, double *buf, int64_t n, err_info *e)
{
    CHECK(n >= 0);
    if (rt_failed(r))
        return rt_failure(r, e);
    if (rt_size(r) == 1)
        return ERR_OK;
    for (int64_t at = 0; at < n;) {
        int count = n - at > INT_MAX ? INT_MAX : (int)(n - at);
        MPI_Request req = MPI_REQUEST_NULL;
        int mrc =
            MPI_Iallreduce(MPI_IN_PLACE, buf + at, count, MPI_DOUBLE, MPI_SUM, rt_comm(r), &req);
        if (mrc != MPI_SUCCESS) {
            comm__mpi_err(r, e, mrc, "MPI_Iallreduce");
            return comm__fail_wrapped(r, e, "sum of %lld doubles", (long long)n);
        }
        if (rt_wait(r, 1, &req, MPI_Wtime(), "sum of doubles (MPI_Iallreduce)", e) != ERR_OK)
            return comm__fail_wrapped(r, e, "sum of %lld doubles", (long long)n);
        at += count;
    }
    return ERR_OK;
}

/* ---- gradient reducer ---- */

struct comm_reducer {
    rt *r;
    float *buf;
    size_t n, per, nb;    /* elements, elements per bucket, buckets */
    size_t *covered;      /* per bucket: elements reported final this step */
    MPI_Request *req;     /* per bucket */
    size_t started, done; /* buckets [0, started) started, [0, done) seen complete */
    bool active;          /* between begin and finish */
    double t_first, t_complete;
    double exposed_s, total_s;
    double ready_s; /* cumulative time inside comm_reducer_ready (MPI starts and progress) */
    comm__shm *shm; /* non-NULL: the gradient is summed in node-shared memory (comm_shm.c) */
};

size_t comm_reducer_buckets(const comm_reducer *c)
{
    return c->nb;
}

void comm_reducer_bucket_range(const comm_reducer *c, size_t i, size_t *lo, size_t *hi)
{
    CHECK(i < c->nb);
    size_t h = c->n - i * c->per;
    *hi = h;
    *lo = h > c->per ? h - c->per : 0;
}

void comm_reducer_destroy(comm_reducer *c)
{
    if (c == NULL)
        return;
    comm__shm_destroy(c->shm);
    free(c->covered);
    free(c->req);
    free(c);
}

/* Allocates the reducer's bookkeeping (no communication). */
static int reducer_alloc(rt *r, float *buf, size_t n, size_t bucket_bytes, comm_reducer **out,
                         err_info *e)
{
    comm_reducer *c = calloc(1, sizeof *c);
    size_t per = bucket_bytes / sizeof(float);
    if (per == 0)
        per = 1;
    if (per > (size_t)INT_MAX) /* MPI counts are int */
        per = (size_t)INT_MAX;
    size_t nb = n / per + (n % per != 0);
    if (c == NULL)
        return err_set(e, ERR_NOMEM, "gradient reducer");
    c->r = r;
    c->buf = buf;
    c->n = n;
    c->per = per;
    c->nb = nb;
    c->covered = calloc(nb > 0 ? nb : 1, sizeof *c->covered);
    c->req = malloc((nb > 0 ? nb : 1) * sizeof *c->req);
    if (c->covered == NULL || c->req == NULL) {
        comm_reducer_destroy(c);
        return err_set(e, ERR_NOMEM, "gradient reducer: %zu buckets", nb);
    }
    for (size_t i = 0; i < nb; i++)
        c->req[i] = MPI_REQUEST_NULL;
    *out = c;
    return ERR_OK;
}

/* Collective. The buckets must be identical on every rank or the reductions pair up wrong
 * pieces of the buffer (or hang on a count mismatch): compare everyone's layout with rank 0's. */
static int check_layout(rt *r, size_t n, size_t bucket_bytes, err_info *e)
{
    int size = rt_size(r);
    int64_t mine[2] = {(int64_t)n, (int64_t)bucket_bytes};
    int64_t *all = malloc((size_t)size * sizeof mine);
    int rc = all == NULL ? err_set(e, ERR_NOMEM, "gradient reducer: layouts of %d ranks", size) : 0;
    if ((rc = comm_agree(r, rc, e)) != ERR_OK) {
        free(all);
        return rc;
    }
    MPI_Request req = MPI_REQUEST_NULL;
    int mrc = MPI_Iallgather(mine, 2, MPI_INT64_T, all, 2, MPI_INT64_T, rt_comm(r), &req);
    if (mrc != MPI_SUCCESS)
        rc = comm__mpi_err(r, e, mrc, "gradient reducer: MPI_Iallgather of layouts");
    else
        rc = rt_wait(r, 1, &req, MPI_Wtime(), "gradient reducer layout exchange", e);
    for (int i = 1; rc == ERR_OK && i < size; i++) {
        if (all[2 * i] != all[0] || all[2 * i + 1] != all[1])
            rc = err_set(e, ERR_SHAPE,
                         "gradient reducer: rank %d has %lld gradients in buckets of %lld bytes, "
                         "rank 0 has %lld in buckets of %lld bytes",
                         i, (long long)all[2 * i], (long long)all[2 * i + 1], (long long)all[0],
                         (long long)all[1]);
    }
    free(all);
    return rc;
}

int comm_reducer_create(rt *r, float *buf, size_t n, size_t bucket_bytes, comm_reducer **out,
                        err_info *e)
{
    comm_reducer *c = NULL;
    int rc = reducer_alloc(r, buf, n, bucket_bytes, &c, e);
    if ((rc = comm_agree(r, rc, e)) == ERR_OK)
        rc = check_layout(r, n, bucket_bytes, e);
    if (rc != ERR_OK) {
        comm_reducer_destroy(c);
        return rc;
    }
    *out = c;
    return ERR_OK;
}

int comm_reducer_create_shm(rt *r, size_t n, size_t bucket_bytes, int node_ranks,
                            comm_reducer **out, err_info *e)
{
    comm_reducer *c = NULL;
    int rc = reducer_alloc(r, NULL, n, bucket_bytes, &c, e);
    if ((rc = comm_agree(r, rc, e)) == ERR_OK)
        rc = check_layout(r, n, bucket_bytes, e);
    if (rc == ERR_OK)
        rc = comm__shm_create(r, n, c->per, c->nb, node_ranks, &c->shm, e);
    if (rc != ERR_OK) {
        comm_reducer_destroy(c);
        return rc;
    }
    c->buf = comm__shm_buffer(c->shm);
    *out = c;
    return ERR_OK;
}

float *comm_reducer_buffer(comm_reducer *c)
{
    return c->buf;
}

bool comm_reducer_is_shm(const comm_reducer *c, int *local_size, int *nodes)
{
    if (c->shm == NULL)
        return false;
    comm__shm_layout(c->shm, local_size, nodes);
    return true;
}

int comm_reducer_local_rank(const comm_reducer *c)
{
    return c->shm != NULL ? comm__shm_local_rank(c->shm) : 0;
}

int comm_reducer_share(comm_reducer *c, float **a, size_t na, float **b, size_t nb, err_info *e)
{
    int local = 0;
    int rc = comm_reducer_is_shm(c, &local, NULL) && local > 1
                 ? ERR_OK
                 : err_set(e, ERR_UNSUPPORTED,
                           "a shared update needs the shared-memory reducer and more than one "
                           "rank per node");
    /* Every rank must agree before the collective window allocation. */
    if ((rc = comm_agree(c->r, rc, e)) != ERR_OK)
        return rc;
    rc = comm__shm_share(c->shm, a, na, b, nb, e);
    if ((rc = comm_agree(c->r, rc, e)) != ERR_OK)
        comm__shm_unshare(c->shm);
    return rc;
}

void comm_reducer_unshare(comm_reducer *c)
{
    if (c != NULL && c->shm != NULL)
        comm__shm_unshare(c->shm);
}

bool comm_reducer_owned(const comm_reducer *c, size_t i, size_t *lo, size_t *hi)
{
    return c->shm != NULL && comm__shm_owned(c->shm, i, lo, hi);
}

void comm_reducer_grad(const comm_reducer *c, size_t lo, size_t hi, float *dst)
{
    CHECK(c->shm != NULL && hi >= lo);
    comm__shm_grad(c->shm, lo, hi, dst);
}

void comm_reducer_updated(comm_reducer *c)
{
    if (c->shm != NULL)
        comm__shm_updated(c->shm);
}

int comm_reducer_sync(comm_reducer *c, err_info *e)
{
    return c->shm != NULL ? comm__shm_sync(c->shm, e) : ERR_OK;
}

int comm_reducer_begin(comm_reducer *c, err_info *e)
{
    CHECK(!c->active);
    if (rt_failed(c->r))
        return rt_failure(c->r, e);
    memset(c->covered, 0, (c->nb > 0 ? c->nb : 1) * sizeof *c->covered);
    c->active = true;
    if (c->shm != NULL)
        return comm__shm_begin(c->shm, e);
    c->started = 0;
    c->done = 0;
    c->t_first = 0;
    c->t_complete = 0;
    return ERR_OK;
}

static int comm__start(comm_reducer *c, err_info *e)
{
    size_t i = c->started, lo = 0, hi = 0;
    comm_reducer_bucket_range(c, i, &lo, &hi);
    if (c->started == 0)
        c->t_first = MPI_Wtime();
    if (rt_size(c->r) == 1) {
        /* One rank: the sum is the buffer itself. */
        c->req[i] = MPI_REQUEST_NULL;
    } else {
        int mrc = MPI_Iallreduce(MPI_IN_PLACE, c->buf + lo, (int)(hi - lo), MPI_FLOAT, MPI_SUM,
                                 rt_comm(c->r), &c->req[i]);
        if (mrc != MPI_SUCCESS) {
            comm__mpi_err(c->r, e, mrc, "MPI_Iallreduce");
            return comm__fail_wrapped(c->r, e, "gradient bucket %zu of %zu (floats [%zu, %zu))", i,
                                      c->nb, lo, hi);
        }
    }
    c->started++;
    return ERR_OK;
}

/* One MPI_Testall over the outstanding buckets: this call is what moves Open MPI's
 * non-blocking collectives forward between backward's layers. */
static int comm__progress(comm_reducer *c, err_info *e)
{
    if (c->done == c->started)
        return ERR_OK;
    int flag = 0;
    int mrc =
        MPI_Testall((int)(c->started - c->done), c->req + c->done, &flag, MPI_STATUSES_IGNORE);
    if (mrc != MPI_SUCCESS) {
        comm__mpi_err(c->r, e, mrc, "MPI_Testall");
        return comm__fail_wrapped(c->r, e, "gradient buckets %zu..%zu of %zu", c->done,
                                  c->started - 1, c->nb);
    }
    if (flag) {
        c->done = c->started;
        if (c->done == c->nb)
            c->t_complete = MPI_Wtime();
    }
    return ERR_OK;
}

int comm_reducer_ready(comm_reducer *c, size_t lo, size_t hi, err_info *e)
{
    CHECK(c->active);
    CHECK(lo <= hi && hi <= c->n);
    if (rt_failed(c->r))
        return rt_failure(c->r, e);
    double t0 = MPI_Wtime();
    if (lo < hi) {
        /* Buckets count from the end: element x is in bucket (n - 1 - x) / per. */
        size_t first = (c->n - hi) / c->per, last = (c->n - 1 - lo) / c->per;
        for (size_t b = first; b <= last; b++) {
            size_t blo = 0, bhi = 0;
            comm_reducer_bucket_range(c, b, &blo, &bhi);
            size_t a = lo > blo ? lo : blo, z = hi < bhi ? hi : bhi;
            c->covered[b] += z - a;
            /* Reporting an element twice would start a bucket before it is final. */
            CHECK(c->covered[b] <= bhi - blo);
        }
    }
    int rc;
    if (c->shm != NULL) {
        rc = comm__shm_ready(c->shm, c->covered, e);
        c->ready_s += MPI_Wtime() - t0;
        return rc;
    }
    while (c->started < c->nb) {
        size_t blo = 0, bhi = 0;
        comm_reducer_bucket_range(c, c->started, &blo, &bhi);
        if (c->covered[c->started] != bhi - blo)
            break;
        if ((rc = comm__start(c, e)) != ERR_OK)
            return rc;
    }
    rc = comm__progress(c, e);
    c->ready_s += MPI_Wtime() - t0;
    return rc;
}

int comm_reducer_finish(comm_reducer *c, err_info *e)
{
    CHECK(c->active);
    c->active = false;
    if (rt_failed(c->r))
        return rt_failure(c->r, e);
    double t0 = MPI_Wtime();
    int rc;
    if (c->shm != NULL) {
        if ((rc = comm__shm_finish(c->shm, e)) != ERR_OK)
            return rc;
        c->exposed_s += MPI_Wtime() - t0;
        double first = 0, complete = 0;
        comm__shm_times(c->shm, &first, &complete);
        if (c->nb > 0)
            c->total_s += complete - first;
        return ERR_OK;
    }
    while (c->started < c->nb)
        if ((rc = comm__start(c, e)) != ERR_OK)
            return rc;
    for (size_t i = c->done; i < c->nb; i++) {
        if (rt_wait(c->r, 1, &c->req[i], t0, "gradient allreduce", e) != ERR_OK) {
            size_t lo = 0, hi = 0;
            comm_reducer_bucket_range(c, i, &lo, &hi);
            return comm__fail_wrapped(c->r, e, "gradient bucket %zu of %zu (floats [%zu, %zu))", i,
                                      c->nb, lo, hi);
        }
    }
    double t1 = MPI_Wtime();
    if (c->done < c->nb) {
        c->done = c->nb;
        c->t_complete = t1;
    }
    c->exposed_s += t1 - t0;
    if (c->nb > 0)
        c->total_s += c->t_complete - c->t_first;
    return ERR_OK;
}

void comm_reducer_stats(const comm_reducer *c, double *exposed_s, double *total_s)
{
    if (exposed_s != NULL)
        *exposed_s = c->exposed_s;
    if (total_s != NULL)
        *total_s = c->total_s;
}

double comm_reducer_ready_time(const comm_reducer *c)
{
    return c->ready_s;
}
