#ifndef CORNU_TRAINER_COMM_IMPL_H
#define CORNU_TRAINER_COMM_IMPL_H

/* Shared within trainer/comm*.c: the node-shared-memory gradient reducer behind
 * comm_reducer_create_shm() (trainer/comm_shm.c). comm.c owns the public comm_reducer and
 * dispatches to these when the reducer was created for shared memory. */

#include <stdbool.h>
#include <stddef.h>

#include "kernels/err.h"
#include "trainer/rt.h"

typedef struct comm__shm comm__shm;

/* Converts an MPI error into ERR_MPI "what: <MPI's text>", marks the runtime failed (the other
 * ranks may be left waiting in the collective, so the job has to end) and copies it into e
 * (if not NULL). Returns ERR_MPI. */
int comm__mpi_err(rt *r, err_info *e, int mpi_rc, const char *what);

/* Collective (over rt_comm(r)). See comm_reducer_create_shm(). */
int comm__shm_create(rt *r, size_t n, size_t per, size_t nb, int node_ranks, comm__shm **out,
                     err_info *e);
void comm__shm_destroy(comm__shm *s);
float *comm__shm_buffer(comm__shm *s);
int comm__shm_begin(comm__shm *s, err_info *e);
/* covered[b] == the full bucket length for the buckets that became final: called by comm.c's
 * ready after it updated its per-bucket counts; publishes them and makes progress. */
int comm__shm_ready(comm__shm *s, const size_t *covered, err_info *e);
int comm__shm_finish(comm__shm *s, err_info *e);
/* Time of the first publish and of completion of the last finished step (MPI_Wtime). */
void comm__shm_times(const comm__shm *s, double *t_first, double *t_complete);
/* Ranks per node and nodes (for reports and tests). */
void comm__shm_layout(const comm__shm *s, int *local_size, int *nodes);
int comm__shm_local_rank(const comm__shm *s);
/* The shared update: see comm_reducer_share() and the functions after it in trainer/comm.h. */
int comm__shm_share(comm__shm *s, float **a, size_t na, float **b, size_t nb, err_info *e);
void comm__shm_unshare(comm__shm *s);
bool comm__shm_owned(const comm__shm *s, size_t i, size_t *lo, size_t *hi);
void comm__shm_grad(const comm__shm *s, size_t lo, size_t hi, float *dst);
void comm__shm_updated(comm__shm *s);
int comm__shm_sync(comm__shm *s, err_info *e);

#endif
