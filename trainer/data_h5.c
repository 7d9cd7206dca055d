/* HDF5 datasets as data sources: serial API, default property lists, read-only. A dataset of at
 * most DATA_MEM_LIMIT bytes is read whole at open. A larger one stored contiguously with a plain
 * element type is read with pread() at its file offset, like NPY (h5_direct). Any other is read
 * through HDF5: each read selects the requested rows as a union of hyperslabs (one per run of
 * consecutive rows). H5Dread converts
 * the stored type to the native type of the same kind and size (exact: only the byte order and
 * float16 -> float32 change), and data__convert() then makes float32 exactly as for NPY and IDX.
 * (Letting HDF5 convert straight to float would differ: its soft conversions, used for
 * non-native byte orders, round ties away from zero, and it clamps overflow to FLT_MAX.) */

#include "trainer/data.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "trainer/data_impl.h"

typedef struct h5_state {
    hid_t file, dset, fspace, mspace;
    hid_t mtype;     /* native memory type (a library constant: never closed) */
    data_elem melem; /* the same type for data__convert() */
    int rank;
    hsize_t dims[TENSOR_MAX_RANK];
    size_t scratch_elems; /* of melem */
} h5_state;

typedef struct h5_walk {
    char *buf;
    size_t cap;
    bool found;
} h5_walk;

static herr_t h5_walk_cb(unsigned n, const H5E_error2_t *err, void *ctx)
{
    h5_walk *w = ctx;
    (void)n;
    /* Walking upward, the first entry is the innermost (most specific) failure. */
    if (!w->found && err->desc != NULL && err->desc[0] != '\0') {
        snprintf(w->buf, w->cap, "%s", err->desc);
        w->found = true;
    }
    return 0;
}

/* HDF5's own reason for the last failure (from the default error stack), then clears it. */
static const char *h5_reason(char *buf, size_t cap)
{
    h5_walk w = {buf, cap, false};
    snprintf(buf, cap, "no reason given by HDF5");
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, h5_walk_cb, &w);
    H5Eclear2(H5E_DEFAULT);
    return buf;
}

static const char *class_name(H5T_class_t c)
{
    switch (c) {
    case H5T_INTEGER:
        return "integer";
    case H5T_FLOAT:
        return "float";
    case H5T_TIME:
        return "time";
    case H5T_STRING:
        return "string";
    case H5T_BITFIELD:
        return "bitfield";
    case H5T_OPAQUE:
        return "opaque";
    case H5T_COMPOUND:
        return "compound";
    case H5T_REFERENCE:
        return "reference";
    case H5T_ENUM:
        return "enum";
    case H5T_VLEN:
        return "variable-length";
    case H5T_ARRAY:
        return "array";
    case H5T_NO_CLASS:
    case H5T_NCLASSES:
        break;
    }
    return "unknown";
}

static void h5_state_free(h5_state *h)
{
    if (h == NULL)
        return;
    H5E_BEGIN_TRY
    {
        if (h->mspace >= 0)
            H5Sclose(h->mspace);
        if (h->fspace >= 0)
            H5Sclose(h->fspace);
        if (h->dset >= 0)
            H5Dclose(h->dset);
        if (h->file >= 0)
            H5Fclose(h->file);
    }
    H5E_END_TRY;
    free(h);
}

void data__h5_close(data_source *s)
{
    h5_state_free(s->h5);
    s->h5 = NULL;
}

/* True when the dataset's rows can be read with pread() like an NPY file: contiguous storage
 * allocated inside the file (no filters, no external files) holding exactly `bytes` bytes, and a
 * plain element type (two's-complement integers or IEEE floats of 1, 2, 4 or 8 bytes, no padding
 * bits, either byte order). Then *off is the absolute file offset of the data and *big_endian its
 * byte order. Random row access through HDF5's selections costs ~5 us per row; pread() ~1 us. */
static bool h5_direct(const h5_state *h, hid_t type, H5T_class_t cls, size_t tsize, uint64_t bytes,
                      uint64_t *off, bool *big_endian)
{
    bool ok = false;
    H5E_BEGIN_TRY
    {
        hid_t dcpl = H5Dget_create_plist(h->dset);
        haddr_t addr = H5Dget_offset(h->dset);
        H5T_order_t order = H5Tget_order(type);
        ok = dcpl >= 0 && H5Pget_layout(dcpl) == H5D_CONTIGUOUS &&
             H5Pget_external_count(dcpl) == 0 && H5Pget_nfilters(dcpl) == 0 &&
             addr != HADDR_UNDEF && bytes > 0 && H5Dget_storage_size(h->dset) == bytes &&
             (order == H5T_ORDER_LE || order == H5T_ORDER_BE) &&
             H5Tget_precision(type) == 8 * tsize && H5Tget_offset(type) == 0 &&
             (tsize == 1 || tsize == 2 || tsize == 4 || tsize == 8);
        if (ok && cls == H5T_FLOAT) {
            /* IEEE binary16/32/64: sign bit, exponent and mantissa positions, bias, implied
             * leading bit. */
            size_t spos, epos, esize, mpos, msize;
            ok = tsize >= 2 && H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize) >= 0 &&
                 H5Tget_norm(type) == H5T_NORM_IMPLIED && spos == 8 * tsize - 1 && mpos == 0;
            if (ok && tsize == 2)
                ok = epos == 10 && esize == 5 && msize == 10 && H5Tget_ebias(type) == 15;
            else if (ok && tsize == 4)
                ok = epos == 23 && esize == 8 && msize == 23 && H5Tget_ebias(type) == 127;
            else if (ok)
                ok = epos == 52 && esize == 11 && msize == 52 && H5Tget_ebias(type) == 1023;
        }
        if (dcpl >= 0)
            H5Pclose(dcpl);
        *off = addr;
        *big_endian = order == H5T_ORDER_BE;
    }
    H5E_END_TRY;
    H5Eclear2(H5E_DEFAULT);
    return ok;
}

/* Gives s the dataset's bytes at `off` of path, read like an NPY file (see h5_direct). */
static int h5_attach_file(data_source *s, const char *path, uint64_t off, uint64_t bytes,
                          uint64_t mem_limit, err_info *e)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0)
        return err_set(e, ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (fstat(fd, &st) != 0 || off > (uint64_t)st.st_size || bytes > (uint64_t)st.st_size - off) {
        close(fd);
        return err_set(e, ERR_FORMAT,
                       "%s: truncated: expected the data at bytes [%llu, %llu), found %llu bytes",
                       s->name, (unsigned long long)off, (unsigned long long)(off + bytes),
                       (unsigned long long)st.st_size);
    }
    return data__source_attach_fd(s, fd, off, bytes, mem_limit, e);
}

int data__h5_open(const char *path, const char *dataset, uint64_t mem_limit, data_source **out,
                  err_info *e)
{
    if (dataset == NULL || dataset[0] == '\0')
        return err_set(e, ERR_USAGE, "%s: no HDF5 dataset named", path);
    size_t nlen = strlen(path) + strlen(dataset) + 3;
    char *name = malloc(nlen);
    if (name == NULL)
        return err_set(e, ERR_NOMEM, "%s: out of memory", path);
    snprintf(name, nlen, "%s:%s%s", path, dataset[0] == '/' ? "" : "/", dataset);

    int rc = ERR_OK;
    char why[256];
    data_source *s = NULL;
    hid_t type = H5I_INVALID_HID;
    h5_state *h = calloc(1, sizeof *h);
    if (h == NULL) {
        rc = err_set(e, ERR_NOMEM, "%s: out of memory", name);
        goto done;
    }
    h->file = h->dset = h->fspace = h->mspace = H5I_INVALID_HID;
    if (access(path, R_OK) != 0) {
        rc = err_set(e, ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        goto done;
    }
    htri_t is_h5;
    H5E_BEGIN_TRY
    {
        is_h5 = H5Fis_hdf5(path);
    }
    H5E_END_TRY;
    if (is_h5 <= 0) {
        rc = err_set(e, ERR_FORMAT, "%s: not an HDF5 file (no HDF5 signature)", path);
        H5Eclear2(H5E_DEFAULT);
        goto done;
    }
    H5E_BEGIN_TRY
    {
        h->file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    }
    H5E_END_TRY;
    if (h->file < 0) {
        rc = err_set(e, ERR_FORMAT, "%s: cannot open as HDF5 (truncated or corrupt?): %s", path,
                     h5_reason(why, sizeof why));
        goto done;
    }
    H5E_BEGIN_TRY
    {
        h->dset = H5Dopen2(h->file, dataset, H5P_DEFAULT);
    }
    H5E_END_TRY;
    if (h->dset < 0) {
        rc = err_set(e, ERR_FORMAT, "%s: cannot open the dataset: %s", name,
                     h5_reason(why, sizeof why));
        goto done;
    }
    data_layout l;
    memset(&l, 0, sizeof l);
    H5T_class_t cls = H5T_NO_CLASS;
    size_t tsize = 0;
    H5T_sign_t sign = H5T_SGN_ERROR;
    H5S_class_t scls = H5S_NO_CLASS;
    int nd = -1;
    H5E_BEGIN_TRY
    {
        type = H5Dget_type(h->dset);
        if (type >= 0) {
            cls = H5Tget_class(type);
            tsize = H5Tget_size(type);
            sign = H5Tget_sign(type);
        }
        h->fspace = H5Dget_space(h->dset);
        if (h->fspace >= 0) {
            scls = H5Sget_simple_extent_type(h->fspace);
            nd = H5Sget_simple_extent_ndims(h->fspace);
        }
    }
    H5E_END_TRY;
    if (type < 0 || h->fspace < 0 || nd < 0) {
        rc = err_set(e, ERR_FORMAT, "%s: cannot read the datatype or dataspace: %s", name,
                     h5_reason(why, sizeof why));
        goto done;
    }
    /* l.elem is what is reported; h->melem what HDF5 converts to (float16 has no native type:
     * float32 holds it exactly). Odd sizes (3-byte integers, long double) go to the next wider
     * type. */
    if (cls == H5T_INTEGER) {
        bool u = sign == H5T_SGN_NONE;
        l.elem = tsize == 1   ? (u ? DATA_ELEM_U8 : DATA_ELEM_I8)
                 : tsize == 2 ? (u ? DATA_ELEM_U16 : DATA_ELEM_I16)
                 : tsize <= 4 ? (u ? DATA_ELEM_U32 : DATA_ELEM_I32)
                              : (u ? DATA_ELEM_U64 : DATA_ELEM_I64);
        h->melem = l.elem;
        h->mtype = tsize == 1   ? (u ? H5T_NATIVE_UINT8 : H5T_NATIVE_INT8)
                   : tsize == 2 ? (u ? H5T_NATIVE_UINT16 : H5T_NATIVE_INT16)
                   : tsize <= 4 ? (u ? H5T_NATIVE_UINT32 : H5T_NATIVE_INT32)
                                : (u ? H5T_NATIVE_UINT64 : H5T_NATIVE_INT64);
    } else if (cls == H5T_FLOAT) {
        l.elem = tsize <= 2 ? DATA_ELEM_F16 : tsize <= 4 ? DATA_ELEM_F32 : DATA_ELEM_F64;
        h->melem = tsize <= 4 ? DATA_ELEM_F32 : DATA_ELEM_F64;
        h->mtype = tsize <= 4 ? H5T_NATIVE_FLOAT : H5T_NATIVE_DOUBLE;
    } else {
        rc = err_set(e, ERR_UNSUPPORTED,
                     "%s: datatype class %s (only integer and floating-point datasets are read)",
                     name, class_name(cls));
        goto done;
    }
    if (scls != H5S_SIMPLE || nd == 0) {
        rc = err_set(e, ERR_FORMAT, "%s: %s dataspace: no axis 0 to take rows from", name,
                     scls == H5S_NULL ? "a null" : "a scalar");
        goto done;
    }
    if (nd > TENSOR_MAX_RANK) {
        rc = err_set(e, ERR_UNSUPPORTED, "%s: rank %d (at most %d)", name, nd, TENSOR_MAX_RANK);
        goto done;
    }
    H5Sget_simple_extent_dims(h->fspace, h->dims, NULL);
    h->rank = nd;
    l.rank = nd;
    for (int i = 0; i < nd; i++) {
        if (h->dims[i] > (hsize_t)INT64_MAX) {
            rc = err_set(e, ERR_RANGE, "%s: extent %d overflows int64", name, i);
            goto done;
        }
        l.shape[i] = (int64_t)h->dims[i];
    }
    uint64_t bytes, off;
    if ((rc = data__source_new(name, &l, &s, &bytes, e)) != ERR_OK) {
        err_wrap(e, "%s", name);
        goto done;
    }
    if (h5_direct(h, type, cls, tsize, bytes, &off, &s->big_endian)) {
        /* HDF5 is closed at `done`: the source keeps at most its own descriptor. */
        if ((rc = h5_attach_file(s, path, off, bytes, mem_limit, e)) != ERR_OK)
            goto done;
        *out = s;
        s = NULL;
        goto done;
    }
    /* From here on the rows are in h->melem, native byte order (HDF5 converts). */
    const size_t msize = data__elem_size(h->melem);
    s->elem = h->melem;
    s->big_endian = data__host_big_endian();
    s->row_bytes = (size_t)s->row_len * msize;
    if (bytes / data__elem_size(l.elem) <= mem_limit / msize) {
        /* Small: read the whole dataset now, through HDF5's own conversion. */
        size_t n = (size_t)(bytes / data__elem_size(l.elem)) * msize;
        herr_t st = -1;
        if ((s->mem = malloc(n ? n : 1)) == NULL) {
            rc = err_set(e, ERR_NOMEM, "%s: out of memory for %zu bytes", name, n);
            goto done;
        }
        H5E_BEGIN_TRY
        {
            st = n == 0 ? 0 : H5Dread(h->dset, h->mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, s->mem);
        }
        H5E_END_TRY;
        if (st < 0) {
            rc = err_set(e, ERR_FORMAT, "%s: reading the dataset failed: %s", name,
                         h5_reason(why, sizeof why));
            goto done;
        }
        s->data_off = 0;
        s->backend = DATA_BACKEND_MEM;
        *out = s;
        s = NULL;
        goto done;
    }
    /* The read buffer holds at least one row (data__source_new checked that a row of 8-byte
     * elements fits in size_t). */
    h->scratch_elems = DATA_SCRATCH_BYTES / msize;
    if ((size_t)s->row_len > h->scratch_elems)
        h->scratch_elems = (size_t)s->row_len;
    s->scratch_bytes = h->scratch_elems * msize;
    s->scratch = malloc(s->scratch_bytes);
    if (s->scratch == NULL) {
        rc = err_set(e, ERR_NOMEM, "%s: out of memory for a %zu-byte read buffer", name,
                     s->scratch_bytes);
        goto done;
    }
    hsize_t mdim = h->scratch_elems;
    H5E_BEGIN_TRY
    {
        h->mspace = H5Screate_simple(1, &mdim, NULL);
    }
    H5E_END_TRY;
    if (h->mspace < 0) {
        rc = err_set(e, ERR_INTERNAL, "%s: cannot create a read dataspace or property list: %s",
                     name, h5_reason(why, sizeof why));
        goto done;
    }
    s->backend = DATA_BACKEND_H5;
    s->h5 = h;
    h = NULL;
    *out = s;
    s = NULL;
done:
    if (type >= 0) {
        H5E_BEGIN_TRY
        {
            H5Tclose(type);
        }
        H5E_END_TRY;
    }
    h5_state_free(h);
    data_source_destroy(s);
    free(name);
    return rc;
}

int data__h5_read_sorted(data_source *s, const data_pair *p, int64_t n, float scale, float *dst,
                         err_info *e)
{
    h5_state *h = s->h5;
    const size_t rl = (size_t)s->row_len;
    if (rl == 0 || n == 0)
        return ERR_OK;
    const size_t row_bytes = rl * data__elem_size(h->melem);
    const bool host_be = data__host_big_endian();
    const int64_t per = (int64_t)(h->scratch_elems / rl);
    hsize_t start[TENSOR_MAX_RANK], count[TENSOR_MAX_RANK];
    for (int d = 1; d < h->rank; d++) {
        start[d] = 0;
        count[d] = h->dims[d];
    }
    int64_t k = 0;
    while (k < n) {
        /* Select up to `per` distinct rows as hyperslabs of consecutive rows. */
        const int64_t k0 = k;
        int64_t distinct = 0;
        herr_t st = 0;
        bool first = true;
        H5E_BEGIN_TRY
        {
            while (k < n && distinct < per && st >= 0) {
                const int64_t r0 = p[k].row;
                int64_t r = r0;
                distinct++;
                while (k < n && p[k].row == r)
                    k++;
                while (k < n && distinct < per && p[k].row == r + 1) {
                    r++;
                    distinct++;
                    while (k < n && p[k].row == r)
                        k++;
                }
                start[0] = (hsize_t)r0;
                count[0] = (hsize_t)(r - r0 + 1);
                st = H5Sselect_hyperslab(h->fspace, first ? H5S_SELECT_SET : H5S_SELECT_OR, start,
                                         NULL, count, NULL);
                first = false;
            }
            if (st >= 0) {
                hsize_t m0 = 0, mc = (hsize_t)distinct * rl;
                st = H5Sselect_hyperslab(h->mspace, H5S_SELECT_SET, &m0, NULL, &mc, NULL);
            }
            if (st >= 0)
                st = H5Dread(h->dset, h->mtype, h->mspace, h->fspace, H5P_DEFAULT, s->scratch);
        }
        H5E_END_TRY;
        if (st < 0) {
            char why[256];
            return err_set(e, ERR_FORMAT, "%s: reading %lld rows from row %lld failed: %s", s->name,
                           (long long)distinct, (long long)p[k0].row, h5_reason(why, sizeof why));
        }
        /* Scatter: the buffer holds the distinct rows in ascending order. */
        int64_t slot = -1, prev = -1;
        for (int64_t q = k0; q < k; q++) {
            if (p[q].row != prev) {
                slot++;
                prev = p[q].row;
            }
            data__convert(h->melem, host_be, s->scratch + (size_t)slot * row_bytes, rl, scale,
                          dst + (size_t)p[q].pos * rl);
        }
    }
    return ERR_OK;
}

int data_source_open_h5(const char *path, const char *dataset, data_source **out, err_info *e)
{
    return data__h5_open(path, dataset, DATA_MEM_LIMIT, out, e);
}
