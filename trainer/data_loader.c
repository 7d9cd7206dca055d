/* The loader: a seeded global permutation per epoch, global batches, contiguous rank slices. */

#include "trainer/data.h"

#include <stdlib.h>
#include <string.h>

#include "kernels/rng.h"
#include "trainer/data_impl.h"

struct data_loader {
    data_source **x, **y;
    float *xscale;
    int nx, ny;
    data_loader_config c;
    int64_t count; /* end - begin */
    int64_t steps, step, epoch;
    int64_t *perm;     /* count row ids: the epoch's order */
    data_pair *pairs;  /* max_local entries: this step's rows, sorted for reading */
    int64_t max_local; /* ceil(batch / nranks) */
};

data_loader_config data_loader_config_default(void)
{
    data_loader_config c;
    memset(&c, 0, sizeof c);
    c.batch = 32;
    c.shuffle = true;
    c.nranks = 1;
    return c;
}

void data_loader_destroy(data_loader *l)
{
    if (l == NULL)
        return;
    free(l->x);
    free(l->y);
    free(l->xscale);
    free(l->perm);
    free(l->pairs);
    free(l);
}

static const char *role(int is_y)
{
    return is_y ? "y" : "x";
}

int data_loader_create(data_source *const *x, const float *xscale, int nx, data_source *const *y,
                       int ny, const data_loader_config *c, data_loader **out, err_info *e)
{
    if (c == NULL || nx < 0 || ny < 0 || nx + ny < 1)
        return err_set(e, ERR_USAGE,
                       "data loader: need a config and at least one source (nx %d, "
                       "ny %d)",
                       nx, ny);
    if (c->batch < 1)
        return err_set(e, ERR_USAGE, "data loader: batch %lld < 1", (long long)c->batch);
    if (c->nranks < 1 || c->rank < 0 || c->rank >= c->nranks)
        return err_set(e, ERR_USAGE, "data loader: rank %d outside [0, %d)", c->rank, c->nranks);
    const data_source *first = NULL;
    int first_y = 0, first_i = 0;
    for (int is_y = 0; is_y < 2; is_y++) {
        int n = is_y ? ny : nx;
        data_source *const *v = is_y ? y : x;
        for (int i = 0; i < n; i++) {
            if (v == NULL || v[i] == NULL)
                return err_set(e, ERR_USAGE, "data loader: %s[%d] is NULL", role(is_y), i);
            if (first == NULL) {
                first = v[i];
                first_y = is_y;
                first_i = i;
            } else if (v[i]->rows != first->rows) {
                return err_set(e, ERR_SHAPE,
                               "data loader: %s[%d] (%s) has %lld rows but %s[%d] (%s) has %lld",
                               role(first_y), first_i, first->name, (long long)first->rows,
                               role(is_y), i, v[i]->name, (long long)v[i]->rows);
            }
        }
    }
    if (c->begin < 0 || c->end < c->begin || c->end > first->rows)
        return err_set(e, ERR_RANGE, "data loader: rows [%lld, %lld) not within [0, %lld) of %s",
                       (long long)c->begin, (long long)c->end, (long long)first->rows, first->name);
    data_loader *l = calloc(1, sizeof *l);
    if (l == NULL)
        return err_set(e, ERR_NOMEM, "data loader: out of memory");
    l->c = *c;
    l->nx = nx;
    l->ny = ny;
    l->count = c->end - c->begin;
    l->steps =
        c->drop_remainder ? l->count / c->batch : l->count / c->batch + (l->count % c->batch != 0);
    l->max_local = c->batch / c->nranks + (c->batch % c->nranks != 0);
    size_t perm_bytes;
    int rc = tensor_nbytes(DTYPE_I64, 1, &l->count, &perm_bytes, e);
    if (rc != ERR_OK) {
        data_loader_destroy(l);
        return err_wrap(e, "data loader permutation");
    }
    l->x = malloc((size_t)(nx ? nx : 1) * sizeof *l->x);
    l->y = malloc((size_t)(ny ? ny : 1) * sizeof *l->y);
    l->xscale = malloc((size_t)(nx ? nx : 1) * sizeof *l->xscale);
    l->perm = malloc(perm_bytes ? perm_bytes : 1);
    l->pairs = malloc((size_t)l->max_local * sizeof *l->pairs);
    if (l->x == NULL || l->y == NULL || l->xscale == NULL || l->perm == NULL || l->pairs == NULL) {
        int64_t count = l->count;
        data_loader_destroy(l);
        return err_set(e, ERR_NOMEM, "data loader: out of memory for %lld rows", (long long)count);
    }
    for (int i = 0; i < nx; i++) {
        l->x[i] = x[i];
        l->xscale[i] = xscale ? xscale[i] : 1.0f;
    }
    for (int i = 0; i < ny; i++)
        l->y[i] = y[i];
    if ((rc = data_loader_epoch(l, 0, e)) != ERR_OK) {
        data_loader_destroy(l);
        return rc;
    }
    *out = l;
    return ERR_OK;
}

int64_t data_loader_steps(const data_loader *l)
{
    return l->steps;
}

int64_t data_loader_max_local_rows(const data_loader *l)
{
    return l->max_local;
}

int data_loader_epoch(data_loader *l, int64_t epoch, err_info *e)
{
    if (epoch < 0)
        return err_set(e, ERR_RANGE, "data loader: epoch %lld < 0", (long long)epoch);
    for (int64_t i = 0; i < l->count; i++)
        l->perm[i] = l->c.begin + i;
    if (l->c.shuffle && l->count > 1) {
        /* Fisher-Yates from a stream that depends only on (seed, epoch): every rank draws the
         * same permutation, whatever the number of ranks. */
        rng r;
        rng_seed(&r, l->c.seed, rng_mix(DATA_LOADER_STREAM, (uint64_t)epoch));
        for (int64_t i = l->count - 1; i > 0; i--) {
            int64_t j = (int64_t)rng_below(&r, (uint64_t)i + 1);
            int64_t t = l->perm[i];
            l->perm[i] = l->perm[j];
            l->perm[j] = t;
        }
    }
    l->epoch = epoch;
    l->step = 0;
    return ERR_OK;
}

int data_loader_next(data_loader *l, float *const *xdst, float *const *ydst, int64_t *global_rows,
                     int64_t *local_rows, bool *done, err_info *e)
{
    if (l->step >= l->steps) {
        *global_rows = 0;
        *local_rows = 0;
        *done = true;
        return ERR_OK;
    }
    const int64_t g0 = l->step * l->c.batch;
    const int64_t g = l->count - g0 < l->c.batch ? l->count - g0 : l->c.batch;
    const int64_t q = g / l->c.nranks, m = g % l->c.nranks, r = l->c.rank;
    const int64_t lo = g0 + r * q + (r < m ? r : m);
    const int64_t n = q + (r < m);
    l->step++;
    for (int64_t i = 0; i < n; i++) {
        l->pairs[i].row = l->perm[lo + i];
        l->pairs[i].pos = i;
    }
    data__pairs_sort(l->pairs, n);
    for (int i = 0; i < l->nx && n > 0; i++) {
        int rc = data__read_sorted(l->x[i], l->pairs, n, l->xscale[i], xdst[i], e);
        if (rc != ERR_OK)
            return err_wrap(e, "x[%d] (epoch %lld step %lld)", i, (long long)l->epoch,
                            (long long)l->step);
    }
    for (int i = 0; i < l->ny && n > 0; i++) {
        int rc = data__read_sorted(l->y[i], l->pairs, n, 1.0f, ydst[i], e);
        if (rc != ERR_OK)
            return err_wrap(e, "y[%d] (epoch %lld step %lld)", i, (long long)l->epoch,
                            (long long)l->step);
    }
    if (l->step < l->steps) {
        /* The next step's rows of this rank, requested now so that they arrive while this step
         * computes (the epoch's order is already drawn). */
        const int64_t g1 = l->step * l->c.batch;
        const int64_t gn = l->count - g1 < l->c.batch ? l->count - g1 : l->c.batch;
        const int64_t q1 = gn / l->c.nranks, m1 = gn % l->c.nranks;
        const int64_t lo1 = g1 + r * q1 + (r < m1 ? r : m1), n1 = q1 + (r < m1);
        for (int i = 0; i < l->nx; i++)
            data__prefetch_rows(l->x[i], l->perm + lo1, n1);
        for (int i = 0; i < l->ny; i++)
            data__prefetch_rows(l->y[i], l->perm + lo1, n1);
    }
    *global_rows = g;
    *local_rows = n;
    *done = false;
    return ERR_OK;
}
