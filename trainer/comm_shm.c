/* The gradient reducer over node-shared memory (comm_reducer_create_shm, trainer/comm.h).
 *
 * Why: ranks on one machine that sum gradients with MPI_Iallreduce pay for copies through
 * Open MPI's shared-memory transport and its temporary buffers, and Open MPI moves a
 * non-blocking collective only inside MPI calls, so little of it overlaps backward. Here every
 * rank's weight gradient buffer IS its slot in an MPI-3 shared window: backward writes straight
 * into memory the other ranks of the node can read. Summing a bucket is then one pass: its owner
 * (bucket b belongs to local rank b % L) reads the L slots in local-rank order, writes the sum,
 * and copies it into the other slots, so every rank's optimizer finds the sum in its own buffer.
 * Per step and rank that is about one read and one write of the gradient, spread evenly over
 * the ranks, and no message at all: what is left to wait for is the slowest rank.
 *
 * Across nodes (several nodes, equal rank counts), the owner of a bucket sums it on its node
 * first, then runs MPI_Iallreduce on it with the owners of the same bucket on the other nodes
 * (the ranks with the same local rank), then copies the result into its node's slots. Fewer
 * bytes leave each node than with a flat allreduce over all ranks.
 *
 * Synchronisation is per bucket, with step counters in the window (C11 atomics, lock-free and
 * therefore address-free, so they work between processes): pub[q][b] = t once rank q's bucket b
 * is final in step t; done[o][b] = t once owner o has written the sum of step t into every slot.
 * A rank leaves finish only when every bucket is done, which is also what makes reuse safe: no
 * owner reads or writes a slot of step t after its rank has left finish(t), and no owner touches
 * a slot of step t+1 before that rank published it, i.e. after it finished using step t's sum.
 *
 * Shared update (comm_reducer_share): the model's parameters and optimizer slots move into one
 * node-shared copy, and each bucket's owner alone updates that bucket of it. Within a node the
 * owner then no longer sums during backward at all: finish only waits until every rank of the
 * node has published the owned buckets, and the update reads the L slots directly
 * (comm__shm_grad, in local-rank order, into a small buffer), so the sum is never written back
 * and each rank runs 1/L of the optimizer. Across nodes the owner still sums into its own slot
 * and reduces it between nodes during backward, and the update reads that slot. upd[q] = t once
 * rank q has applied its part of step t's update; a rank waits for every upd (comm__shm_sync)
 * before it reads the shared state again or writes its slot for step t+1, and no rank writes its
 * slot before it updated (so after it finished reading the others' slots).
 *
 * Determinism: each bucket is summed in local-rank order (then by MPI across nodes), so the
 * result is the same for the same rank layout, and identical on every rank. */

#include "trainer/comm_impl.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "trainer/comm.h"

enum {
    SHM_FLAG_STRIDE = 8,  /* int64 per flag: one cache line each, no false sharing */
    SHM_ALIGN = 4096,     /* the gradient part of a segment starts on a page */
    SHM_SUM_CHUNK = 1024, /* floats summed per pass through the slots */
};

enum { OWN_WAIT, OWN_CROSS, OWN_DONE };

typedef _Atomic int64_t shm_flag;

struct comm__shm {
    rt *r;
    MPI_Comm node, cross; /* this node's ranks; the ranks with this local rank on every node */
    MPI_Win win;
    bool win_ok, locked;
    int lrank, lsize, nodes;
    int *granks; /* [lsize] global rank of each local rank, for error messages */
    size_t n, per, nb;
    float **slot;             /* [lsize] gradient slot of each local rank */
    shm_flag **pub;           /* [lsize] per rank, per bucket (stride SHM_FLAG_STRIDE) */
    shm_flag **done;          /* [lsize] */
    bool *published;          /* [nb] this rank published the bucket this step */
    unsigned char *own_state; /* [nb] for owned buckets: OWN_* */
    MPI_Request *req;         /* [nb] cross-node reductions */
    size_t next_own;          /* next owned bucket to sum (owned buckets are summed in order) */
    size_t check_from;
    int64_t step;
    double t_first, t_complete;
    /* Shared update (comm__shm_share). */
    bool sharded;
    MPI_Win swin;
    bool swin_ok, slocked;
    shm_flag **upd;           /* [lsize] step whose update each rank has applied */
    int64_t synced;           /* last step whose updates comm__shm_sync saw complete */
    float **user_a, **user_b; /* the caller's pointers, redirected to the shared copy */
    float *own_a, *own_b;     /* what they pointed to before */
    size_t na, nbf;
};

/* MPI errors of this reducer say where they come from. */
static int shm_mpi_err(comm__shm *s, err_info *e, int mrc, const char *what)
{
    char where[160];
    snprintf(where, sizeof where, "gradient sum in shared memory: %s", what);
    return comm__mpi_err(s->r, e, mrc, where);
}

static void bucket_range(const comm__shm *s, size_t b, size_t *lo, size_t *hi)
{
    size_t h = s->n - b * s->per;
    *hi = h;
    *lo = h > s->per ? h - s->per : 0;
}

static int64_t flag_load(shm_flag *const *f, int q, size_t b)
{
    return atomic_load_explicit(&f[q][b * SHM_FLAG_STRIDE], memory_order_acquire);
}

static void flag_store(shm_flag **f, int q, size_t b, int64_t v)
{
    atomic_store_explicit(&f[q][b * SHM_FLAG_STRIDE], v, memory_order_release);
}

/* A collective on the node or cross communicator, waited for with the comm timeout. */
static int shm_wait(comm__shm *s, MPI_Request *req, const char *what, err_info *e)
{
    return rt_wait(s->r, 1, req, MPI_Wtime(), what, e);
}

void comm__shm_destroy(comm__shm *s)
{
    if (s == NULL)
        return;
    /* Freeing the window is collective over the node: after a failure (a rank dead or stuck)
     * it could hang, and the job is about to be aborted anyway, so leave it to the OS. */
    if (!rt_failed(s->r)) {
        if (s->slocked)
            MPI_Win_unlock_all(s->swin);
        if (s->swin_ok)
            MPI_Win_free(&s->swin);
        if (s->locked)
            MPI_Win_unlock_all(s->win);
        if (s->win_ok)
            MPI_Win_free(&s->win);
        if (s->cross != MPI_COMM_NULL)
            MPI_Comm_free(&s->cross);
        if (s->node != MPI_COMM_NULL)
            MPI_Comm_free(&s->node);
    }
    free(s->granks);
    free(s->slot);
    free(s->pub);
    free(s->done);
    free(s->upd);
    free(s->published);
    free(s->own_state);
    free(s->req);
    free(s);
}

static int shm_split(comm__shm *s, int node_ranks, err_info *e)
{
    MPI_Comm world = rt_comm(s->r);
    int rank = rt_rank(s->r);
    int mrc = node_ranks > 0
                  ? MPI_Comm_split(world, rank / node_ranks, rank, &s->node)
                  : MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &s->node);
    if (mrc != MPI_SUCCESS)
        return shm_mpi_err(s, e, mrc, "splitting the ranks by node");
    MPI_Comm_rank(s->node, &s->lrank);
    MPI_Comm_size(s->node, &s->lsize);
    if ((mrc = MPI_Comm_split(world, s->lrank, rank, &s->cross)) != MPI_SUCCESS)
        return shm_mpi_err(s, e, mrc, "splitting the ranks by local rank");
    MPI_Comm_size(s->cross, &s->nodes);
    MPI_Comm_set_errhandler(s->node, MPI_ERRORS_RETURN);
    MPI_Comm_set_errhandler(s->cross, MPI_ERRORS_RETURN);

    /* Owners pair up across nodes by local rank, so every node needs the same number of ranks. */
    int mine[2] = {s->lsize, -s->lsize}, ext[2] = {0, 0};
    MPI_Request req = MPI_REQUEST_NULL;
    if ((mrc = MPI_Iallreduce(mine, ext, 2, MPI_INT, MPI_MAX, world, &req)) != MPI_SUCCESS)
        return shm_mpi_err(s, e, mrc, "MPI_Iallreduce of node sizes");
    int rc = shm_wait(s, &req, "node size exchange", e);
    if (rc != ERR_OK)
        return rc;
    if (ext[0] != -ext[1])
        return err_set(e, ERR_UNSUPPORTED,
                       "gradient sum in shared memory needs the same number of ranks on every "
                       "node; nodes have between %d and %d ranks (use --allreduce mpi)",
                       -ext[1], ext[0]);

    s->granks = malloc((size_t)s->lsize * sizeof *s->granks);
    if (s->granks == NULL)
        return err_set(e, ERR_NOMEM, "ranks of the node");
    req = MPI_REQUEST_NULL;
    mrc = MPI_Iallgather(&rank, 1, MPI_INT, s->granks, 1, MPI_INT, s->node, &req);
    if (mrc != MPI_SUCCESS)
        return shm_mpi_err(s, e, mrc, "MPI_Iallgather of node ranks");
    return shm_wait(s, &req, "node rank exchange", e);
}

/* Allocates a node-shared window of `bytes` on this rank (collective over the node) and opens a
 * passive access epoch on it for load/store use; *ok and *locked record what to undo. */
static int shm_win_open(comm__shm *s, size_t bytes, MPI_Info info, void **base, MPI_Win *win,
                        bool *ok, bool *locked, const char *what, err_info *e)
{
    char where[96];
    int mrc = MPI_Win_allocate_shared((MPI_Aint)bytes, 1, info, s->node, base, win);
    if (mrc != MPI_SUCCESS) {
        snprintf(where, sizeof where, "MPI_Win_allocate_shared (%s)", what);
        return shm_mpi_err(s, e, mrc, where);
    }
    *ok = true;
    if ((mrc = MPI_Win_lock_all(MPI_MODE_NOCHECK, *win)) != MPI_SUCCESS) {
        snprintf(where, sizeof where, "MPI_Win_lock_all (%s)", what);
        return shm_mpi_err(s, e, mrc, where);
    }
    *locked = true;
    return ERR_OK;
}

static int shm_window(comm__shm *s, err_info *e)
{
    size_t flags = (2 * s->nb + 1) * SHM_FLAG_STRIDE * sizeof(int64_t);
    size_t head = (flags + SHM_ALIGN - 1) / SHM_ALIGN * SHM_ALIGN;
    size_t bytes = head + s->n * sizeof(float);
    if (bytes < 64)
        bytes = 64; /* an empty gradient still gets a segment: no NULL bases below */
    if (bytes > (size_t)INT64_MAX / 2)
        return err_set(e, ERR_NOMEM, "gradient window of %zu bytes", bytes);
    MPI_Info info;
    MPI_Info_create(&info);
    /* Each rank's segment on its own pages (first touch by its owner, no false sharing). */
    MPI_Info_set(info, "alloc_shared_noncontig", "true");
    void *base = NULL;
    int rc = shm_win_open(s, bytes, info, &base, &s->win, &s->win_ok, &s->locked, "gradient", e);
    MPI_Info_free(&info);
    if (rc != ERR_OK)
        return rc;
    int mrc = MPI_SUCCESS;
    /* Zeroed flags: step counters start at 1, so nothing looks published. Touching the whole
     * segment here also takes its page faults out of the first step. */
    memset(base, 0, bytes);
    size_t L = (size_t)s->lsize;
    s->slot = calloc(L, sizeof *s->slot);
    s->pub = calloc(L, sizeof *s->pub);
    s->done = calloc(L, sizeof *s->done);
    s->upd = calloc(L, sizeof *s->upd);
    if (s->slot == NULL || s->pub == NULL || s->done == NULL || s->upd == NULL)
        return err_set(e, ERR_NOMEM, "gradient window pointers");
    for (int q = 0; q < s->lsize; q++) {
        MPI_Aint qsize = 0;
        int unit = 0;
        void *p = NULL;
        if ((mrc = MPI_Win_shared_query(s->win, q, &qsize, &unit, &p)) != MPI_SUCCESS)
            return shm_mpi_err(s, e, mrc, "MPI_Win_shared_query");
        if ((size_t)qsize < bytes)
            return err_set(e, ERR_SHAPE,
                           "gradient window: local rank %d has a segment of %lld bytes, "
                           "expected at least %zu",
                           q, (long long)qsize, bytes);
        s->pub[q] = (shm_flag *)p;
        s->done[q] = (shm_flag *)p + s->nb * SHM_FLAG_STRIDE;
        s->upd[q] = (shm_flag *)p + 2 * s->nb * SHM_FLAG_STRIDE;
        s->slot[q] = (float *)(void *)((char *)p + head);
    }
    /* Everyone's flags are zero before anyone can publish. */
    MPI_Request req = MPI_REQUEST_NULL;
    if ((mrc = MPI_Ibarrier(s->node, &req)) != MPI_SUCCESS)
        return shm_mpi_err(s, e, mrc, "MPI_Ibarrier");
    return shm_wait(s, &req, "gradient window setup", e);
}

int comm__shm_create(rt *r, size_t n, size_t per, size_t nb, int node_ranks, comm__shm **out,
                     err_info *e)
{
    comm__shm *s = calloc(1, sizeof *s);
    if (s == NULL)
        return err_set(e, ERR_NOMEM, "gradient reducer");
    s->r = r;
    s->node = MPI_COMM_NULL;
    s->cross = MPI_COMM_NULL;
    s->n = n;
    s->per = per;
    s->nb = nb;
    int rc = ERR_OK;
    shm_flag probe = 0;
    if (!atomic_is_lock_free(&probe))
        rc = err_set(e, ERR_UNSUPPORTED,
                     "gradient sum in shared memory needs lock-free 64-bit atomics");
    size_t k = nb > 0 ? nb : 1;
    if (rc == ERR_OK) {
        s->published = calloc(k, sizeof *s->published);
        s->own_state = calloc(k, sizeof *s->own_state);
        s->req = malloc(k * sizeof *s->req);
        if (s->published == NULL || s->own_state == NULL || s->req == NULL)
            rc = err_set(e, ERR_NOMEM, "gradient reducer: %zu buckets", nb);
        else
            for (size_t i = 0; i < k; i++)
                s->req[i] = MPI_REQUEST_NULL;
    }
    /* Split and allocate are collective: a local failure is agreed on before and after. */
    if ((rc = comm_agree(r, rc, e)) == ERR_OK)
        rc = shm_split(s, node_ranks, e);
    if ((rc = comm_agree(r, rc, e)) == ERR_OK)
        rc = shm_window(s, e);
    if ((rc = comm_agree(r, rc, e)) != ERR_OK) {
        comm__shm_destroy(s);
        return rc;
    }
    *out = s;
    return ERR_OK;
}

float *comm__shm_buffer(comm__shm *s)
{
    return s->slot[s->lrank];
}

void comm__shm_layout(const comm__shm *s, int *local_size, int *nodes)
{
    if (local_size != NULL)
        *local_size = s->lsize;
    if (nodes != NULL)
        *nodes = s->nodes;
}

int comm__shm_local_rank(const comm__shm *s)
{
    return s->lrank;
}

void comm__shm_times(const comm__shm *s, double *t_first, double *t_complete)
{
    *t_first = s->t_first;
    *t_complete = s->t_complete;
}

int comm__shm_begin(comm__shm *s, err_info *e)
{
    if (rt_failed(s->r))
        return rt_failure(s->r, e);
    if (s->sharded && s->step > 0) {
        /* This rank's slot is written again in this step: only after every rank of the node has
         * applied (so stopped reading the slots for) the last step's update. */
        int rc = comm__shm_sync(s, e);
        if (rc != ERR_OK)
            return rc;
    }
    s->step++;
    memset(s->published, 0, (s->nb > 0 ? s->nb : 1) * sizeof *s->published);
    memset(s->own_state, OWN_WAIT, (s->nb > 0 ? s->nb : 1) * sizeof *s->own_state);
    s->next_own = (size_t)s->lrank;
    s->check_from = 0;
    s->t_first = 0;
    s->t_complete = 0;
    return ERR_OK;
}

static void publish(comm__shm *s, size_t b)
{
    if (s->t_first == 0)
        s->t_first = MPI_Wtime();
    s->published[b] = true;
    flag_store(s->pub, s->lrank, b, s->step);
}

/* The sum over local ranks, in local-rank order, of slot[q][lo, hi), written into this rank's slot
 * only (every_slot false: the sum still goes between nodes) or straight into every slot (one
 * node). Chunks go through a small buffer that stays in L1, so each slot is read once and
 * written once. With two ranks, one loop reads both slots and writes both. */
static void sum_slots(comm__shm *s, size_t lo, size_t hi, bool every_slot)
{
    if (s->lsize == 2 && every_slot) {
        float *restrict x = s->slot[0] + lo;
        float *restrict y = s->slot[1] + lo;
        for (size_t i = 0; i < hi - lo; i++) {
            float v = x[i] + y[i];
            x[i] = v;
            y[i] = v;
        }
        return;
    }
    float acc[SHM_SUM_CHUNK];
    for (size_t a = lo; a < hi; a += SHM_SUM_CHUNK) {
        size_t len = hi - a < SHM_SUM_CHUNK ? hi - a : SHM_SUM_CHUNK;
        memcpy(acc, s->slot[0] + a, len * sizeof(float));
        for (int q = 1; q < s->lsize; q++) {
            const float *src = s->slot[q] + a;
            for (size_t i = 0; i < len; i++)
                acc[i] += src[i];
        }
        for (int q = 0; q < s->lsize; q++)
            if (every_slot || q == s->lrank)
                memcpy(s->slot[q] + a, acc, len * sizeof(float));
    }
}

/* Marks owned bucket b done for this step (its sum is in every slot of the node). */
static void mark_done(comm__shm *s, size_t b)
{
    s->own_state[b] = OWN_DONE;
    flag_store(s->done, s->lrank, b, s->step);
}

/* After the reduction between nodes: copies this rank's slot range of bucket b into the other
 * slots of the node. */
static void write_out(comm__shm *s, size_t b)
{
    size_t lo = 0, hi = 0;
    bucket_range(s, b, &lo, &hi);
    const float *src = s->slot[s->lrank];
    for (int q = 0; q < s->lsize; q++)
        if (q != s->lrank)
            memcpy(s->slot[q] + lo, src + lo, (hi - lo) * sizeof(float));
    mark_done(s, b);
}

/* Sums every owned bucket whose slots are all published (in bucket order, so that cross-node
 * reductions start in the same order on every node), and completes cross-node reductions. */
static int progress(comm__shm *s, err_info *e)
{
    size_t L = (size_t)s->lsize;
    for (size_t b = s->next_own; b < s->nb; b += L) {
        bool all = true;
        for (int q = 0; q < s->lsize && all; q++)
            all = flag_load(s->pub, q, b) >= s->step;
        if (!all)
            break;
        size_t lo = 0, hi = 0;
        bucket_range(s, b, &lo, &hi);
        s->next_own = b + L;
        if (s->sharded && s->nodes == 1) {
            mark_done(s, b); /* the update sums it (comm__shm_grad) */
            continue;
        }
        sum_slots(s, lo, hi, s->nodes == 1 && !s->sharded);
        if (s->nodes == 1) {
            mark_done(s, b);
            continue;
        }
        int mrc = MPI_Iallreduce(MPI_IN_PLACE, s->slot[s->lrank] + lo, (int)(hi - lo), MPI_FLOAT,
                                 MPI_SUM, s->cross, &s->req[b]);
        if (mrc != MPI_SUCCESS)
            return shm_mpi_err(s, e, mrc, "MPI_Iallreduce between nodes");
        s->own_state[b] = OWN_CROSS;
    }
    if (s->nodes > 1) {
        for (size_t b = (size_t)s->lrank; b < s->next_own && b < s->nb; b += L) {
            if (s->own_state[b] != OWN_CROSS)
                continue;
            int flag = 0;
            int mrc = MPI_Test(&s->req[b], &flag, MPI_STATUS_IGNORE);
            if (mrc != MPI_SUCCESS)
                return shm_mpi_err(s, e, mrc, "MPI_Test of a reduction between nodes");
            if (flag && s->sharded)
                mark_done(s, b); /* only this rank's update reads it */
            else if (flag)
                write_out(s, b);
        }
    }
    return ERR_OK;
}

int comm__shm_ready(comm__shm *s, const size_t *covered, err_info *e)
{
    if (rt_failed(s->r))
        return rt_failure(s->r, e);
    for (size_t b = 0; b < s->nb; b++) {
        size_t lo = 0, hi = 0;
        bucket_range(s, b, &lo, &hi);
        if (!s->published[b] && covered[b] == hi - lo)
            publish(s, b);
    }
    return progress(s, e);
}

/* What bucket b still waits for, for the timeout message. */
static void describe_wait(const comm__shm *s, size_t b, char *buf, size_t len)
{
    int owner = (int)(b % (size_t)s->lsize);
    size_t used = 0;
    buf[0] = '\0';
    for (int q = 0; q < s->lsize; q++)
        if (flag_load(s->pub, q, b) < s->step && used < len) {
            int k = snprintf(buf + used, len - used, "%srank %d", used ? ", " : "waiting for ",
                             s->granks[q]);
            used += k > 0 ? (size_t)k : 0;
        }
    if (used == 0)
        snprintf(buf, len, "%s rank %d (its owner) to %s", "waiting for", s->granks[owner],
                 s->nodes > 1 ? "finish the reduction between nodes" : "write the sum");
}

int comm__shm_finish(comm__shm *s, err_info *e)
{
    if (rt_failed(s->r))
        return rt_failure(s->r, e);
    /* Elements never reported count as final. */
    for (size_t b = 0; b < s->nb; b++)
        if (!s->published[b])
            publish(s, b);
    double t0 = MPI_Wtime(), timeout = rt_comm_timeout(s->r);
    long nap_ns = 0;
    for (;;) {
        int rc = progress(s, e);
        if (rc != ERR_OK)
            return rc;
        bool complete = true;
        if (s->sharded) {
            /* Only the owned buckets: the others are summed by their owners' updates. */
            for (size_t b = (size_t)s->lrank; b < s->nb && complete; b += (size_t)s->lsize)
                if (s->own_state[b] != OWN_DONE) {
                    complete = false;
                    s->check_from = b;
                }
        } else {
            while (s->check_from < s->nb &&
                   flag_load(s->done, (int)(s->check_from % (size_t)s->lsize), s->check_from) >=
                       s->step)
                s->check_from++;
            complete = s->check_from == s->nb;
        }
        if (complete)
            break;
        if (rt_failed(s->r))
            return rt_failure(s->r, e);
        double now = MPI_Wtime();
        if (now - t0 > timeout) {
            size_t b = s->check_from, lo = 0, hi = 0;
            bucket_range(s, b, &lo, &hi);
            char who[256];
            describe_wait(s, b, who, sizeof who);
            err_info w;
            err_set(&w, ERR_PEER,
                    "gradient allreduce: bucket %zu of %zu (floats [%zu, %zu)) did not complete "
                    "within %g s (the comm timeout), %s: a rank is dead, stuck or far behind",
                    b, s->nb, lo, hi, timeout, who);
            rt_fail(s->r, &w);
            if (e != NULL)
                *e = w;
            return ERR_PEER;
        }
        rt_backoff(s->r, now - t0, &nap_ns);
    }
    s->t_complete = MPI_Wtime();
    return ERR_OK;
}

/* ---- the shared update ---- */

int comm__shm_share(comm__shm *s, float **a, size_t na, float **b, size_t nb, err_info *e)
{
    if (s->sharded)
        return err_set(e, ERR_USAGE, "model state is already shared");
    if (na > (SIZE_MAX / sizeof(float) - 64) - nb)
        return err_set(e, ERR_NOMEM, "shared model state of %zu + %zu floats", na, nb);
    size_t bytes = (na + nb) * sizeof(float);
    if (bytes < 64)
        bytes = 64;
    /* One copy per node, in local rank 0's segment (the others' segments are empty). */
    void *base = NULL;
    int rc = shm_win_open(s, s->lrank == 0 ? bytes : 0, MPI_INFO_NULL, &base, &s->swin, &s->swin_ok,
                          &s->slocked, "model state", e);
    if (rc != ERR_OK)
        return rc;
    int mrc = MPI_SUCCESS;
    MPI_Aint qsize = 0;
    int unit = 0;
    void *p = NULL;
    if ((mrc = MPI_Win_shared_query(s->swin, 0, &qsize, &unit, &p)) != MPI_SUCCESS)
        return shm_mpi_err(s, e, mrc, "MPI_Win_shared_query (model state)");
    if ((size_t)qsize < bytes || p == NULL)
        return err_set(e, ERR_SHAPE,
                       "shared model state: local rank 0 has a segment of %lld bytes, expected "
                       "at least %zu",
                       (long long)qsize, bytes);
    float *state = p;
    if (s->lrank == 0) {
        /* Every rank starts from the same values (checked by the caller), so rank 0's do. */
        if (na > 0)
            memcpy(state, *a, na * sizeof(float));
        if (nb > 0)
            memcpy(state + na, *b, nb * sizeof(float));
        atomic_thread_fence(memory_order_release);
    }
    MPI_Request req = MPI_REQUEST_NULL;
    if ((mrc = MPI_Ibarrier(s->node, &req)) != MPI_SUCCESS)
        return shm_mpi_err(s, e, mrc, "MPI_Ibarrier (model state)");
    rc = shm_wait(s, &req, "model state setup", e);
    if (rc != ERR_OK)
        return rc;
    atomic_thread_fence(memory_order_acquire);
    s->user_a = a;
    s->user_b = b;
    s->own_a = *a;
    s->own_b = *b;
    s->na = na;
    s->nbf = nb;
    *a = state;
    if (nb > 0)
        *b = state + na;
    s->sharded = true;
    s->synced = s->step;
    return ERR_OK;
}

void comm__shm_unshare(comm__shm *s)
{
    if (!s->sharded)
        return;
    atomic_thread_fence(memory_order_acquire);
    const float *state = *s->user_a;
    if (s->na > 0)
        memcpy(s->own_a, state, s->na * sizeof(float));
    if (s->nbf > 0)
        memcpy(s->own_b, state + s->na, s->nbf * sizeof(float));
    *s->user_a = s->own_a;
    if (s->nbf > 0)
        *s->user_b = s->own_b;
    s->sharded = false;
}

bool comm__shm_owned(const comm__shm *s, size_t i, size_t *lo, size_t *hi)
{
    size_t b = (size_t)s->lrank + i * (size_t)s->lsize;
    if (!s->sharded || b >= s->nb || i >= s->nb)
        return false;
    bucket_range(s, b, lo, hi);
    return true;
}

void comm__shm_grad(const comm__shm *s, size_t lo, size_t hi, float *dst)
{
    size_t len = hi - lo;
    if (s->nodes > 1 || s->lsize == 1) {
        /* Summed on the node and between nodes into this rank's slot during backward. */
        memcpy(dst, s->slot[s->lrank] + lo, len * sizeof(float));
        return;
    }
    /* In local-rank order, as sum_slots: the same bits as the replicated update. */
    const float *restrict x = s->slot[0] + lo;
    const float *restrict y = s->slot[1] + lo;
    for (size_t i = 0; i < len; i++)
        dst[i] = x[i] + y[i];
    for (int q = 2; q < s->lsize; q++) {
        const float *restrict z = s->slot[q] + lo;
        for (size_t i = 0; i < len; i++)
            dst[i] += z[i];
    }
}

void comm__shm_updated(comm__shm *s)
{
    if (s->sharded)
        flag_store(s->upd, s->lrank, 0, s->step);
}

int comm__shm_sync(comm__shm *s, err_info *e)
{
    if (!s->sharded || s->synced >= s->step)
        return ERR_OK;
    if (rt_failed(s->r))
        return rt_failure(s->r, e);
    comm__shm_updated(s); /* a rank that applied nothing must not make the others wait */
    double t0 = MPI_Wtime(), timeout = rt_comm_timeout(s->r);
    long nap_ns = 0;
    for (int q = 0; q < s->lsize; q++) {
        while (flag_load(s->upd, q, 0) < s->step) {
            if (rt_failed(s->r))
                return rt_failure(s->r, e);
            double now = MPI_Wtime();
            if (now - t0 > timeout) {
                err_info w;
                err_set(&w, ERR_PEER,
                        "shared parameter update: rank %d did not apply its part of step %lld's "
                        "update within %g s (the comm timeout): a rank is dead, stuck or far "
                        "behind",
                        s->granks[q], (long long)s->step, timeout);
                rt_fail(s->r, &w);
                if (e != NULL)
                    *e = w;
                return ERR_PEER;
            }
            rt_backoff(s->r, now - t0, &nap_ns);
        }
    }
    s->synced = s->step;
    return ERR_OK;
}
