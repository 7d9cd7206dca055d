/* madvise(MADV_HUGEPAGE) is a Linux extension. */
#define _DEFAULT_SOURCE 1
#include "kernels/tensor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

size_t dtype_size(dtype dt)
{
    switch (dt) {
    case DTYPE_F32:
        return 4;
    case DTYPE_F64:
        return 8;
    case DTYPE_I32:
        return 4;
    case DTYPE_I64:
        return 8;
    case DTYPE_U8:
        return 1;
    case DTYPE_COUNT:
        break;
    }
    return 0;
}

const char *dtype_name(dtype dt)
{
    switch (dt) {
    case DTYPE_F32:
        return "float32";
    case DTYPE_F64:
        return "float64";
    case DTYPE_I32:
        return "int32";
    case DTYPE_I64:
        return "int64";
    case DTYPE_U8:
        return "uint8";
    case DTYPE_COUNT:
        break;
    }
    return "?";
}

int tensor_shape_count(int rank, const int64_t *shape, int64_t *out, err_info *e)
{
    if (rank < 0 || rank > TENSOR_MAX_RANK)
        return err_set(e, ERR_RANGE, "rank %d outside 0..%d", rank, TENSOR_MAX_RANK);
    int64_t n = 1;
    for (int i = 0; i < rank; i++) {
        if (shape[i] < 0)
            return err_set(e, ERR_RANGE, "extent %lld of dimension %d is negative",
                           (long long)shape[i], i);
        if (shape[i] != 0 && n > INT64_MAX / shape[i])
            return err_set(e, ERR_RANGE, "element count of a rank-%d shape overflows", rank);
        n *= shape[i];
    }
    *out = n;
    return ERR_OK;
}

int tensor_nbytes(dtype dt, int rank, const int64_t *shape, size_t *out, err_info *e)
{
    int64_t n;
    int rc = tensor_shape_count(rank, shape, &n, e);
    if (rc != ERR_OK)
        return rc;
    size_t es = dtype_size(dt);
    if (es == 0)
        return err_set(e, ERR_RANGE, "unknown dtype %d", (int)dt);
    if ((uint64_t)n > SIZE_MAX / es)
        return err_set(e, ERR_RANGE, "%lld elements of %s overflow size_t", (long long)n,
                       dtype_name(dt));
    *out = (size_t)n * es;
    return ERR_OK;
}

int64_t tensor_count(const tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->rank; i++)
        n *= t->shape[i];
    return n;
}

char *tensor_shape_str(int rank, const int64_t *shape, char *buf, size_t len)
{
    size_t used = 0;
    if (len == 0)
        return buf;
    buf[0] = '\0';
    used += (size_t)snprintf(buf + used, len - used, "[");
    for (int i = 0; i < rank && used < len; i++) {
        if (shape[i] < 0)
            used += (size_t)snprintf(buf + used, len - used, "%sNone", i ? ", " : "");
        else
            used += (size_t)snprintf(buf + used, len - used, "%s%lld", i ? ", " : "",
                                     (long long)shape[i]);
    }
    if (used < len)
        snprintf(buf + used, len - used, "]");
    return buf;
}

void *tensor_alloc_big(size_t bytes)
{
    const size_t huge = (size_t)2 << 20;
    if (bytes < huge)
        return calloc(bytes ? bytes : 1, 1);
    size_t rounded = (bytes + huge - 1) / huge * huge;
    void *p = NULL;
    if (posix_memalign(&p, huge, rounded) != 0)
        return NULL;
#ifdef MADV_HUGEPAGE
    (void)madvise(p, rounded, MADV_HUGEPAGE); /* advice only: fine if refused */
#endif
    memset(p, 0, rounded);
    return p;
}
