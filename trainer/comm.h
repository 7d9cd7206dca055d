#ifndef CORNU_TRAINER_COMM_H
#define CORNU_TRAINER_COMM_H

/* Communication between ranks: error agreement, small sums (metrics, BatchNormalization
 * statistics) and the bucketed, overlapped gradient allreduce. Everything runs on rt_comm(r)
 * with non-blocking MPI calls that are polled by rt_wait(), so that no rank can hang: a
 * collective that does not finish within rt_comm_timeout(r) returns ERR_PEER, and the runtime is
 * then failed (rt_finalize() aborts the job with the message). All functions marked collective
 * must be called by every rank of rt_comm(r), in the same order. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/err.h"
#include "trainer/rt.h"

/* Collective. Agrees on an error: returns ERR_OK on every rank iff rc == ERR_OK on every rank.
 * Otherwise every rank returns the same code and e holds the same message on every rank: that
 * of the lowest failing rank, preferring a real error over ERR_PEER (which only says "another
 * rank failed"), as "rank R [its status]: <its message>" (without the prefix when there is one
 * rank), followed by " (also failed: ranks a, b)" when several ranks failed. On ERR_OK e is
 * untouched. If the runtime has already failed, returns its stored error without communicating.
 * Out-of-range rc values count as ERR_INTERNAL. */
int comm_agree(rt *r, int rc, err_info *e);

/* Collective. Sums buf[0..n) over all ranks in place (n may be 0; same n on every rank).
 * Blocking for the caller, but polled with the comm timeout. */
int comm_allreduce_sum_d(rt *r, double *buf, int64_t n, err_info *e);

typedef struct comm_reducer comm_reducer;

/* Collective. Prepares the gradient reduction of buf[0..n) (borrowed; it must outlive the
 * reducer): after every step buf holds the SUM over ranks. The buffer is cut into buckets of
 * bucket_bytes / sizeof(float) elements (at least 1, at most INT_MAX) counted from the END,
 * because backward produces the last layers' gradients first: bucket 0 is
 * [n - b, n), bucket 1 is [n - 2b, n - b), ..., and the last bucket, at the start of the buffer,
 * may be shorter. Every rank must pass the same n and bucket_bytes; a mismatch is ERR_SHAPE
 * naming both ranks' values. On success *out owns the reducer. */
int comm_reducer_create(rt *r, float *buf, size_t n, size_t bucket_bytes, comm_reducer **out,
                        err_info *e);

/* Collective. The same reducer, but the gradient lives in node-shared memory that the reducer
 * allocates (an MPI-3 shared window; comm_reducer_buffer() returns this rank's part, n floats,
 * zeroed): backward must write its gradients there (layer_net_set_grads), and after finish it
 * holds the sum over ranks, identical on every rank. Each bucket is summed by one rank of its
 * node (bucket b by local rank b % ranks-per-node) reading the other ranks' memory directly, in
 * local-rank order, then, with several nodes, by an MPI_Iallreduce among the ranks with the same
 * local rank on every node; no message moves within a node (trainer/comm_shm.c explains the
 * protocol). node_ranks = 0 groups ranks by the node they run on (MPI_COMM_TYPE_SHARED);
 * node_ranks = k > 0 treats each k consecutive ranks as one node (they must share memory), which
 * lets one machine exercise the path between nodes. Every node needs the same number of ranks
 * (else ERR_UNSUPPORTED, on every rank). Begin, ready and finish behave as for the MPI reducer,
 * except that ready never calls MPI within a node and finish waits on the other ranks' progress
 * counters with the comm timeout (ERR_PEER naming the bucket and the ranks it waits for). */
int comm_reducer_create_shm(rt *r, size_t n, size_t bucket_bytes, int node_ranks,
                            comm_reducer **out, err_info *e);
void comm_reducer_destroy(comm_reducer *c);
/* The reduced buffer: the one given to comm_reducer_create(), or the shared one. Borrowed. */
float *comm_reducer_buffer(comm_reducer *c);
/* True for a shared-memory reducer; then *local_size and *nodes (either may be NULL) give the
 * ranks per node and the number of nodes. */
bool comm_reducer_is_shm(const comm_reducer *c, int *local_size, int *nodes);

/* This rank's rank within its node (0 for the MPI reducer). */
int comm_reducer_local_rank(const comm_reducer *c);

/* Collective (every rank of rt_comm). The shared update, for a shared-memory reducer with more
 * than one rank per node (else ERR_UNSUPPORTED on every rank, nothing changed): the na floats at
 * *a and the nb floats at *b (the model's parameters and optimizer slots; every rank must hold
 * the same values) move into one copy per node in node-shared memory; local rank 0's values are
 * copied in and *a (and *b when nb > 0) then point there on every rank until
 * comm_reducer_unshare(). From then on each rank updates only the buckets it owns:
 *   - after finish, comm_reducer_owned(c, i, ...) for i = 0, 1, ... gives this rank's buckets,
 *     and comm_reducer_grad() their summed gradient (the gradient buffer itself no longer holds
 *     the sum: within a node the owner sums the ranks' buffers while it updates);
 *   - after applying its part, the rank calls comm_reducer_updated(), and comm_reducer_sync()
 *     before it reads the shared state again (the next forward, evaluation, saving): it waits
 *     until every rank of the node has applied its part. begin() syncs too, as a rank's buffer
 *     must not change while the others still read it.
 * Every element is updated by one rank with the same arithmetic, so the result has the same
 * bits as every rank updating everything. Writes to the shared state outside the owned buckets
 * (e.g. moving statistics) are the caller's to make from one rank per node
 * (comm_reducer_local_rank() == 0). */
int comm_reducer_share(comm_reducer *c, float **a, size_t na, float **b, size_t nb, err_info *e);
/* Not collective; after comm_reducer_sync(). Copies the shared state back into the caller's own
 * buffers and points *a and *b at them again; later steps update every element on every rank.
 * Does nothing if the state is not shared. */
void comm_reducer_unshare(comm_reducer *c);
/* The i-th bucket this rank updates (i from 0): false when there are no more, or when the state
 * is not shared. */
bool comm_reducer_owned(const comm_reducer *c, size_t i, size_t *lo, size_t *hi);
/* After finish: the summed gradient of elements [lo, hi) of an owned bucket into dst[0, hi - lo).
 * Safe to call from several threads at once for different dst. */
void comm_reducer_grad(const comm_reducer *c, size_t lo, size_t hi, float *dst);
void comm_reducer_updated(comm_reducer *c);
/* Waits (with the comm timeout: ERR_PEER naming the rank) until every rank of the node has
 * called comm_reducer_updated() for the last finished step. Returns at once when the state is
 * not shared or already synced. */
int comm_reducer_sync(comm_reducer *c, err_info *e);

/* Number of buckets and the element range [*lo, *hi) of bucket i. */
size_t comm_reducer_buckets(const comm_reducer *c);
void comm_reducer_bucket_range(const comm_reducer *c, size_t i, size_t *lo, size_t *hi);

/* Not collective. Starts a step: no element is final yet. The previous step must be finished.
 * Between begin and finish no other collective may run on rt_comm(r) (bucket starts must be
 * in the same order relative to every other collective on every rank), and finish must be
 * called even if backward failed locally: it starts the remaining buckets so that every rank
 * joins the same reductions; only then agree on the error with comm_agree(). */
int comm_reducer_begin(comm_reducer *c, err_info *e);

/* Collective in effect (it starts MPI_Iallreduce calls): buf[lo, hi) is final for this step
 * (each element reported at most once per step, in any order and chunking). Starts, in bucket
 * order, every bucket that is now fully final and all buckets before it are started — so the
 * start order is the same on every rank whatever the chunking — and progresses the outstanding
 * reductions (MPI_Testall) so that communication overlaps the rest of backward without a
 * progress thread. The caller must not touch a started bucket until finish. */
int comm_reducer_ready(comm_reducer *c, size_t lo, size_t hi, err_info *e);

/* Collective. Starts any bucket not started yet (elements never reported count as final), then
 * waits for all of them, polling with the comm timeout measured from this call. A bucket that
 * does not finish in time is ERR_PEER naming the bucket, its range and the timeout; the
 * runtime is then failed. */
int comm_reducer_finish(comm_reducer *c, err_info *e);

/* Cumulative over all finished steps: *exposed_s is the time spent blocked in finish (the
 * communication the step could not hide), *total_s the time from each step's first bucket start
 * to the moment all its buckets were seen complete. Either pointer may be NULL. */
void comm_reducer_stats(const comm_reducer *c, double *exposed_s, double *total_s);
/* Cumulative time spent inside comm_reducer_ready() over all steps: starting buckets and moving
 * them forward while backward runs. It is communication work the rank did instead of computing,
 * so timing reports count it as exposed communication, not as compute. */
double comm_reducer_ready_time(const comm_reducer *c);

#endif
