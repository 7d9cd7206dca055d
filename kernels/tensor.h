#ifndef CORNU_KERNELS_TENSOR_H
#define CORNU_KERNELS_TENSOR_H

/* Tensor descriptor: row-major, contiguous, Keras layouts as they are (STYLE.md section 4).
 * A tensor never owns its data: the owner is a model (parameters) or a step workspace. */

#include <stddef.h>
#include <stdint.h>

#include "kernels/err.h"

#define TENSOR_MAX_RANK 8

typedef enum dtype { DTYPE_F32, DTYPE_F64, DTYPE_I32, DTYPE_I64, DTYPE_U8, DTYPE_COUNT } dtype;

typedef struct tensor {
    dtype dt;
    int rank;                       /* 0 for a scalar */
    int64_t shape[TENSOR_MAX_RANK]; /* outermost first, exactly as Keras and NumPy */
    void *data;                     /* borrowed */
} tensor;

/* Bytes per element of dt. */
size_t dtype_size(dtype dt);
/* Static name: "float32", "float64", "int32", "int64", "uint8". */
const char *dtype_name(dtype dt);

/* Number of elements of shape[0..rank) into *out; ERR_RANGE if an extent is negative or the
 * product overflows int64. */
int tensor_shape_count(int rank, const int64_t *shape, int64_t *out, err_info *e);

/* Bytes of a tensor of this dtype and shape into *out; ERR_RANGE on negative extents or on
 * overflow of size_t. Use it for every size that comes from outside data. */
int tensor_nbytes(dtype dt, int rank, const int64_t *shape, size_t *out, err_info *e);

/* Element count of t (its shape is trusted). */
int64_t tensor_count(const tensor *t);

/* Zeroed memory for large buffers (parameters, activations, gradients), released with free().
 * Buffers of 2 MiB or more are 2 MiB-aligned and marked for transparent huge pages, so touching
 * them costs one page fault per 2 MiB instead of per 4 KiB (a fault costs microseconds). The
 * pages are touched here, once, so a training step never faults. NULL on failure. */
void *tensor_alloc_big(size_t bytes);

/* Writes "[a, b, c]" into buf (always NUL-terminated); returns buf. Unknown extents (< 0)
 * print as "None". */
char *tensor_shape_str(int rank, const int64_t *shape, char *buf, size_t len);

#endif
