/* HDF5 plumbing for the Keras .h5 reader and writer: opening files and memory images, string
 * attributes in every encoding Keras produced, chunked list attributes, float datasets. */
#include "formats/keras_h5_impl.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

void kh5__strs_free(kh5__strs *l)
{
    if (l == NULL)
        return;
    for (int i = 0; i < l->n; i++)
        free(l->s[i]);
    free(l->s);
    l->s = NULL;
    l->n = 0;
}

int kh5__strs_push(kh5__strs *l, const char *s, size_t len, err_info *e)
{
    char **grown = realloc(l->s, ((size_t)l->n + 1) * sizeof *grown);
    if (grown == NULL)
        return err_set(e, ERR_NOMEM, "out of memory for a string list");
    l->s = grown;
    char *copy = malloc(len + 1);
    if (copy == NULL)
        return err_set(e, ERR_NOMEM, "out of memory for a string of %zu bytes", len);
    memcpy(copy, s, len);
    copy[len] = '\0';
    l->s[l->n++] = copy;
    return ERR_OK;
}

void kh5__warn(kh5_warnings *w, const char *fmt, ...)
{
    if (w == NULL)
        return;
    if (w->count < KH5_WARN_MAX) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(w->msg[w->count], sizeof w->msg[w->count], fmt, ap);
        va_end(ap);
    }
    w->count++;
}

static herr_t reason_walk(unsigned n, const H5E_error2_t *err, void *data)
{
    (void)n;
    /* Walking downwards, the last entry is the innermost, most specific one. */
    char *buf = data;
    if (err->desc != NULL && err->desc[0] != '\0')
        snprintf(buf, 256, "%s", err->desc);
    return 0;
}

void kh5__h5_reason(char *buf, size_t len)
{
    char tmp[256] = "";
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, reason_walk, tmp);
    snprintf(buf, len, "%s", tmp);
}

int kh5__open_path(const char *path, hid_t *out, err_info *e)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return err_set(e, ERR_IO, "cannot open: %s", strerror(errno));
    if (S_ISDIR(st.st_mode))
        return err_set(e, ERR_IO, "is a directory, not a file");
    FILE *probe = fopen(path, "rb");
    if (probe == NULL)
        return err_set(e, ERR_IO, "cannot open: %s", strerror(errno));
    fclose(probe);
    H5Eclear2(H5E_DEFAULT);
    htri_t is_h5 = H5Fis_hdf5(path);
    if (is_h5 <= 0) {
        char why[256];
        kh5__h5_reason(why, sizeof why);
        return err_set(e, ERR_FORMAT, "not an HDF5 file (%lld bytes)%s%s", (long long)st.st_size,
                       why[0] ? ": " : "", why);
    }
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        char why[256];
        kh5__h5_reason(why, sizeof why);
        return err_set(e, ERR_FORMAT, "cannot open as HDF5 (truncated or corrupt?)%s%s",
                       why[0] ? ": " : "", why);
    }
    *out = f;
    return ERR_OK;
}

int kh5__open_mem(const void *buf, size_t len, hid_t *out, err_info *e)
{
    /* The HDF5 signature alone is 8 bytes; an empty image would make the core driver look for
     * a file on disk instead. */
    static const unsigned char sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    if (buf == NULL || len < sizeof sig)
        return err_set(e, ERR_FORMAT, "not an HDF5 file (%zu bytes)", len);
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0)
        return err_set(e, ERR_INTERNAL, "H5Pcreate failed");
    int rc = ERR_OK;
    if (H5Pset_fapl_core(fapl, 1 << 16, 0) < 0 ||
        H5Pset_file_image(fapl, (void *)(uintptr_t)buf, len) < 0) {
        rc = err_set(e, ERR_INTERNAL, "cannot set up an in-memory HDF5 file");
        goto done;
    }
    H5Eclear2(H5E_DEFAULT);
    hid_t f = H5Fopen("cornu-memory-image.h5", H5F_ACC_RDONLY, fapl);
    if (f < 0) {
        char why[256];
        kh5__h5_reason(why, sizeof why);
        rc = err_set(e, ERR_FORMAT, "cannot open as HDF5 (%zu bytes; truncated or corrupt?)%s%s",
                     len, why[0] ? ": " : "", why);
        goto done;
    }
    *out = f;
done:
    H5Pclose(fapl);
    return rc;
}

int kh5__attr_exists(hid_t obj, const char *name)
{
    htri_t r = H5Aexists(obj, name);
    return r < 0 ? -1 : (int)r;
}

int kh5__link_exists(hid_t loc, const char *path)
{
    /* H5Lexists fails (rather than returning false) when an intermediate component is missing,
     * so check each prefix in turn. */
    char buf[KH5__PATH_MAX];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf)
        return 0;
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] == '/' || buf[i] == '\0') {
            char keep = buf[i];
            buf[i] = '\0';
            htri_t r = H5Lexists(loc, buf, H5P_DEFAULT);
            buf[i] = keep;
            if (r <= 0)
                return 0;
        }
    }
    return 1;
}

static const char *type_class_name(H5T_class_t c)
{
    switch (c) {
    case H5T_INTEGER:
        return "integer";
    case H5T_FLOAT:
        return "float";
    case H5T_STRING:
        return "string";
    case H5T_COMPOUND:
        return "compound";
    case H5T_ARRAY:
        return "array";
    case H5T_ENUM:
        return "enum";
    case H5T_VLEN:
        return "vlen";
    case H5T_OPAQUE:
        return "opaque";
    case H5T_REFERENCE:
        return "reference";
    case H5T_BITFIELD:
        return "bitfield";
    case H5T_TIME:
        return "time";
    case H5T_NO_CLASS:
    case H5T_NCLASSES:
        break;
    }
    return "unknown";
}

/* Reads the strings of an open attribute into out (appending). */
static int attr_strings(hid_t attr, const char *where, const char *name, kh5__strs *out,
                        err_info *e)
{
    int rc = ERR_OK;
    hid_t ftype = H5I_INVALID_HID, space = H5I_INVALID_HID, mtype = H5I_INVALID_HID;
    char **vbuf = NULL;
    char *fbuf = NULL;
    bool reclaim = false;

    ftype = H5Aget_type(attr);
    space = H5Aget_space(attr);
    if (ftype < 0 || space < 0) {
        rc = err_set(e, ERR_FORMAT, "%s: attribute %s: unreadable type or dataspace", where, name);
        goto done;
    }
    H5S_class_t sclass = H5Sget_simple_extent_type(space);
    hssize_t np = sclass == H5S_NULL ? 0 : H5Sget_simple_extent_npoints(space);
    if (np < 0) {
        rc = err_set(e, ERR_FORMAT, "%s: attribute %s: unreadable dataspace", where, name);
        goto done;
    }
    H5T_class_t tclass = H5Tget_class(ftype);
    if (tclass != H5T_STRING) {
        /* Keras writes an empty list as an empty float64 array. */
        if (np == 0)
            goto done;
        rc = err_set(e, ERR_FORMAT,
                     "%s: attribute %s is %s data with %lld elements, expected strings", where,
                     name, type_class_name(tclass), (long long)np);
        goto done;
    }
    if (np == 0)
        goto done;
    /* Guard allocations against a dataspace that claims more than the attribute stores. */
    hsize_t stored = H5Aget_storage_size(attr);
    H5T_cset_t cset = H5Tget_cset(ftype);
    if (cset != H5T_CSET_ASCII && cset != H5T_CSET_UTF8) {
        rc = err_set(e, ERR_FORMAT, "%s: attribute %s: unknown string character set", where, name);
        goto done;
    }
    htri_t is_vlen = H5Tis_variable_str(ftype);
    if (is_vlen < 0) {
        rc = err_set(e, ERR_FORMAT, "%s: attribute %s: unreadable string type", where, name);
        goto done;
    }
    if (is_vlen) {
        /* Each variable-length string is stored as a heap reference of at least 8 bytes. */
        if ((hsize_t)np > stored / 8 + 1) {
            rc = err_set(e, ERR_FORMAT, "%s: attribute %s: %lld strings in %llu stored bytes",
                         where, name, (long long)np, (unsigned long long)stored);
            goto done;
        }
        mtype = H5Tcopy(H5T_C_S1);
        if (mtype < 0 || H5Tset_size(mtype, H5T_VARIABLE) < 0 || H5Tset_cset(mtype, cset) < 0) {
            rc = err_set(e, ERR_INTERNAL, "%s: attribute %s: cannot make a string type", where,
                         name);
            goto done;
        }
        vbuf = calloc((size_t)np, sizeof *vbuf);
        if (vbuf == NULL) {
            rc = err_set(e, ERR_NOMEM, "%s: attribute %s: out of memory", where, name);
            goto done;
        }
        if (H5Aread(attr, mtype, vbuf) < 0) {
            char why[256];
            kh5__h5_reason(why, sizeof why);
            rc = err_set(e, ERR_FORMAT, "%s: attribute %s: cannot read (%s)", where, name, why);
            goto done;
        }
        reclaim = true;
        for (hssize_t i = 0; i < np && rc == ERR_OK; i++) {
            const char *s = vbuf[i] ? vbuf[i] : "";
            rc = kh5__strs_push(out, s, strlen(s), e);
        }
    } else {
        size_t sz = H5Tget_size(ftype);
        if (sz == 0 || (uint64_t)np > SIZE_MAX / sz || (hsize_t)np * sz > stored) {
            rc = err_set(e, ERR_FORMAT,
                         "%s: attribute %s: %lld strings of %zu bytes but %llu bytes stored", where,
                         name, (long long)np, sz, (unsigned long long)stored);
            goto done;
        }
        mtype = H5Tcopy(H5T_C_S1);
        if (mtype < 0 || H5Tset_size(mtype, sz) < 0 || H5Tset_strpad(mtype, H5T_STR_NULLPAD) < 0 ||
            H5Tset_cset(mtype, cset) < 0) {
            rc = err_set(e, ERR_INTERNAL, "%s: attribute %s: cannot make a string type", where,
                         name);
            goto done;
        }
        fbuf = malloc((size_t)np * sz);
        if (fbuf == NULL) {
            rc = err_set(e, ERR_NOMEM, "%s: attribute %s: out of memory", where, name);
            goto done;
        }
        if (H5Aread(attr, mtype, fbuf) < 0) {
            char why[256];
            kh5__h5_reason(why, sizeof why);
            rc = err_set(e, ERR_FORMAT, "%s: attribute %s: cannot read (%s)", where, name, why);
            goto done;
        }
        /* NULLPAD: the longest entry fills the whole size and has no terminator. */
        for (hssize_t i = 0; i < np && rc == ERR_OK; i++) {
            const char *s = fbuf + (size_t)i * sz;
            size_t l = 0;
            while (l < sz && s[l] != '\0')
                l++;
            rc = kh5__strs_push(out, s, l, e);
        }
    }
done:
    if (reclaim)
        H5Dvlen_reclaim(mtype, space, H5P_DEFAULT, vbuf);
    free(vbuf);
    free(fbuf);
    if (mtype >= 0)
        H5Tclose(mtype);
    if (space >= 0)
        H5Sclose(space);
    if (ftype >= 0)
        H5Tclose(ftype);
    return rc;
}

int kh5__attr_read_strs(hid_t obj, const char *where, const char *name, kh5__strs *out, err_info *e)
{
    hid_t attr = H5Aopen(obj, name, H5P_DEFAULT);
    if (attr < 0)
        return err_set(e, ERR_FORMAT, "%s: attribute %s missing or unreadable", where, name);
    kh5__strs got = {0, NULL};
    int rc = attr_strings(attr, where, name, &got, e);
    H5Aclose(attr);
    if (rc != ERR_OK) {
        kh5__strs_free(&got);
        return rc;
    }
    *out = got;
    return ERR_OK;
}

int kh5__attr_read_list(hid_t obj, const char *where, const char *name, kh5__strs *out,
                        bool *present, err_info *e)
{
    kh5__strs got = {0, NULL};
    int rc = ERR_OK;
    bool found = false;
    int ex = kh5__attr_exists(obj, name);
    if (ex < 0)
        return err_set(e, ERR_FORMAT, "%s: cannot list attributes", where);
    if (ex) {
        found = true;
        rc = kh5__attr_read_strs(obj, where, name, &got, e);
    } else {
        /* Keras >= 2.1.5 splits a list over 64512 bytes into name0, name1, ... */
        char chunk[256];
        for (int k = 0; rc == ERR_OK; k++) {
            snprintf(chunk, sizeof chunk, "%s%d", name, k);
            ex = kh5__attr_exists(obj, chunk);
            if (ex <= 0)
                break;
            found = true;
            hid_t attr = H5Aopen(obj, chunk, H5P_DEFAULT);
            if (attr < 0) {
                rc = err_set(e, ERR_FORMAT, "%s: attribute %s unreadable", where, chunk);
                break;
            }
            rc = attr_strings(attr, where, chunk, &got, e);
            H5Aclose(attr);
        }
    }
    if (rc != ERR_OK) {
        kh5__strs_free(&got);
        return rc;
    }
    *out = got;
    if (present != NULL)
        *present = found;
    return ERR_OK;
}

int kh5__attr_read_str(hid_t obj, const char *where, const char *name, char **out, size_t *len,
                       err_info *e)
{
    kh5__strs l = {0, NULL};
    int rc = kh5__attr_read_strs(obj, where, name, &l, e);
    if (rc != ERR_OK)
        return rc;
    if (l.n != 1) {
        rc = err_set(e, ERR_FORMAT, "%s: attribute %s holds %d strings, expected one", where, name,
                     l.n);
        kh5__strs_free(&l);
        return rc;
    }
    *out = l.s[0];
    if (len != NULL)
        *len = strlen(l.s[0]);
    free(l.s);
    return ERR_OK;
}

int kh5__attr_write_vlen(hid_t obj, const char *where, const char *name, const char *s, bool utf8,
                         err_info *e)
{
    int rc = ERR_OK;
    hid_t type = H5Tcopy(H5T_C_S1), space = H5Screate(H5S_SCALAR), attr = H5I_INVALID_HID;
    if (type < 0 || space < 0 || H5Tset_size(type, H5T_VARIABLE) < 0 ||
        H5Tset_cset(type, utf8 ? H5T_CSET_UTF8 : H5T_CSET_ASCII) < 0) {
        rc = err_set(e, ERR_INTERNAL, "%s: cannot make a string type", where);
        goto done;
    }
    attr = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    if (attr < 0 || H5Awrite(attr, type, &s) < 0) {
        char why[256];
        kh5__h5_reason(why, sizeof why);
        rc = err_set(e, ERR_IO, "%s: cannot write attribute %s (%s)", where, name, why);
    }
done:
    if (attr >= 0)
        H5Aclose(attr);
    if (space >= 0)
        H5Sclose(space);
    if (type >= 0)
        H5Tclose(type);
    return rc;
}

/* One fixed-length NULLPAD string array attribute from s[0..n), entries sz bytes. */
static int write_fixed(hid_t obj, const char *where, const char *name, int n, const char *const *s,
                       size_t sz, err_info *e)
{
    int rc = ERR_OK;
    hsize_t dims[1] = {(hsize_t)n};
    hid_t type = H5Tcopy(H5T_C_S1), space = H5Screate_simple(1, dims, NULL);
    hid_t attr = H5I_INVALID_HID;
    char *buf = calloc((size_t)n, sz);
    if (buf == NULL) {
        rc = err_set(e, ERR_NOMEM, "%s: out of memory for attribute %s", where, name);
        goto done;
    }
    if (type < 0 || space < 0 || H5Tset_size(type, sz) < 0 ||
        H5Tset_strpad(type, H5T_STR_NULLPAD) < 0 || H5Tset_cset(type, H5T_CSET_ASCII) < 0) {
        rc = err_set(e, ERR_INTERNAL, "%s: cannot make a string type", where);
        goto done;
    }
    for (int i = 0; i < n; i++)
        memcpy(buf + (size_t)i * sz, s[i], strlen(s[i]));
    attr = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    if (attr < 0 || H5Awrite(attr, type, buf) < 0) {
        char why[256];
        kh5__h5_reason(why, sizeof why);
        rc = err_set(e, ERR_IO, "%s: cannot write attribute %s (%s)", where, name, why);
    }
done:
    free(buf);
    if (attr >= 0)
        H5Aclose(attr);
    if (space >= 0)
        H5Sclose(space);
    if (type >= 0)
        H5Tclose(type);
    return rc;
}

int kh5__attr_write_list(hid_t obj, const char *where, const char *name, int n,
                         const char *const *s, err_info *e)
{
    if (n == 0) {
        /* numpy turns [] into an empty float64 array, which is what every Keras wrote. */
        hsize_t dims[1] = {0};
        hid_t space = H5Screate_simple(1, dims, NULL);
        hid_t attr = space < 0
                         ? H5I_INVALID_HID
                         : H5Acreate2(obj, name, H5T_IEEE_F64LE, space, H5P_DEFAULT, H5P_DEFAULT);
        int rc = ERR_OK;
        if (attr < 0)
            rc = err_set(e, ERR_IO, "%s: cannot write attribute %s", where, name);
        if (attr >= 0)
            H5Aclose(attr);
        if (space >= 0)
            H5Sclose(space);
        return rc;
    }
    size_t sz = 0;
    for (int i = 0; i < n; i++) {
        size_t l = strlen(s[i]);
        if (l > KH5__ATTR_LIMIT)
            return err_set(e, ERR_RANGE,
                           "%s: %s entry \"%.40s...\" is %zu bytes, over Keras's "
                           "%d-byte attribute limit",
                           where, name, s[i], l, KH5__ATTR_LIMIT);
        if (l > sz)
            sz = l;
    }
    if (sz == 0)
        sz = 1; /* numpy's S1 for a list of empty strings */
    /* numpy.array_split into k chunks: the largest holds ceil(n / k) rows. Keras takes the
     * smallest k for which every chunk fits. */
    int k = 1;
    while ((size_t)((n + k - 1) / k) * sz > KH5__ATTR_LIMIT)
        k++;
    if (k == 1)
        return write_fixed(obj, where, name, n, s, sz, e);
    int base = n / k, extra = n % k, at = 0;
    for (int c = 0; c < k; c++) {
        int rows = base + (c < extra ? 1 : 0);
        char cname[256];
        snprintf(cname, sizeof cname, "%s%d", name, c);
        int rc = write_fixed(obj, where, cname, rows, s + at, sz, e);
        if (rc != ERR_OK)
            return rc;
        at += rows;
    }
    return ERR_OK;
}

int kh5__dset_shape(hid_t loc, const char *path, int *rank, int64_t *shape, bool *is_float,
                    err_info *e)
{
    int rc = ERR_OK;
    hid_t space = H5I_INVALID_HID, type = H5I_INVALID_HID;
    /* Open directly (one path traversal); only on failure find out why. */
    hid_t d = H5Dopen2(loc, path, H5P_DEFAULT);
    if (d < 0) {
        if (!kh5__link_exists(loc, path))
            return err_set(e, ERR_FORMAT, "%s: dataset missing", path);
        hid_t obj = H5Oopen(loc, path, H5P_DEFAULT);
        bool is_dset = obj >= 0 && H5Iget_type(obj) == H5I_DATASET;
        if (obj >= 0)
            H5Oclose(obj);
        if (!is_dset)
            return err_set(e, ERR_FORMAT, "%s: not a dataset", path);
        return err_set(e, ERR_FORMAT, "%s: cannot open dataset", path);
    }
    space = H5Dget_space(d);
    type = H5Dget_type(d);
    if (space < 0 || type < 0) {
        rc = err_set(e, ERR_FORMAT, "%s: unreadable dataspace or dtype", path);
        goto done;
    }
    H5S_class_t sc = H5Sget_simple_extent_type(space);
    if (sc == H5S_SCALAR) {
        *rank = 0;
    } else if (sc == H5S_SIMPLE) {
        int r = H5Sget_simple_extent_ndims(space);
        if (r < 0 || r > TENSOR_MAX_RANK) {
            rc = err_set(e, ERR_FORMAT, "%s: rank %d (at most %d supported)", path, r,
                         TENSOR_MAX_RANK);
            goto done;
        }
        hsize_t dims[TENSOR_MAX_RANK];
        H5Sget_simple_extent_dims(space, dims, NULL);
        for (int i = 0; i < r; i++) {
            if (dims[i] > (hsize_t)INT64_MAX) {
                rc = err_set(e, ERR_RANGE, "%s: extent %llu too large", path,
                             (unsigned long long)dims[i]);
                goto done;
            }
            shape[i] = (int64_t)dims[i];
        }
        *rank = r;
    } else {
        rc = err_set(e, ERR_FORMAT, "%s: empty (null) dataspace", path);
        goto done;
    }
    H5T_class_t tc = H5Tget_class(type);
    if (tc != H5T_FLOAT && tc != H5T_INTEGER) {
        rc =
            err_set(e, ERR_FORMAT, "%s: dtype class %s, expected float", path, type_class_name(tc));
        goto done;
    }
    *is_float = tc == H5T_FLOAT;
done:
    if (type >= 0)
        H5Tclose(type);
    if (space >= 0)
        H5Sclose(space);
    H5Dclose(d);
    return rc;
}

int kh5__dset_read_f32(hid_t loc, const char *path, float *buf, size_t count, err_info *e)
{
    hid_t d = H5Dopen2(loc, path, H5P_DEFAULT);
    if (d < 0)
        return err_set(e, ERR_FORMAT, "%s: cannot open dataset", path);
    int rc = ERR_OK;
    hid_t space = H5Dget_space(d);
    hssize_t np = space < 0 ? -1 : H5Sget_simple_extent_npoints(space);
    if (np < 0 || (uint64_t)np != (uint64_t)count) {
        rc = err_set(e, ERR_SHAPE, "%s: %lld elements, expected %zu", path, (long long)np, count);
    } else if (count > 0 && H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0) {
        char why[256];
        kh5__h5_reason(why, sizeof why);
        rc = err_set(e, ERR_FORMAT, "%s: cannot read values (truncated or corrupt?)%s%s", path,
                     why[0] ? ": " : "", why);
    }
    if (space >= 0)
        H5Sclose(space);
    H5Dclose(d);
    return rc;
}

int kh5__dset_read_scalar(hid_t loc, const char *path, double *out, err_info *e)
{
    hid_t d = H5Dopen2(loc, path, H5P_DEFAULT);
    if (d < 0)
        return err_set(e, ERR_FORMAT, "%s: cannot open dataset", path);
    int rc = ERR_OK;
    hid_t space = H5Dget_space(d);
    hssize_t np = space < 0 ? -1 : H5Sget_simple_extent_npoints(space);
    double v = 0;
    if (np != 1) {
        rc = err_set(e, ERR_SHAPE, "%s: %lld elements, expected a scalar", path, (long long)np);
    } else if (H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, &v) < 0) {
        rc = err_set(e, ERR_FORMAT, "%s: cannot read value", path);
    } else {
        *out = v;
    }
    if (space >= 0)
        H5Sclose(space);
    H5Dclose(d);
    return rc;
}

int kh5__dset_write(hid_t loc, const char *where, const char *path, hid_t mem_type, int rank,
                    const int64_t *shape, const void *data, err_info *e)
{
    int rc = ERR_OK;
    hsize_t dims[TENSOR_MAX_RANK];
    for (int i = 0; i < rank; i++)
        dims[i] = (hsize_t)shape[i];
    hid_t space = rank == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(rank, dims, NULL);
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    hid_t d = H5I_INVALID_HID;
    /* File dtype = the little-endian twin of the memory dtype, as h5py writes numpy arrays.
     * Contiguous layout, no fill: every byte is written right away. */
    hid_t ftype = H5Tequal(mem_type, H5T_NATIVE_FLOAT) > 0 ? H5T_IEEE_F32LE : H5T_STD_I64LE;
    if (space < 0 || lcpl < 0 || dcpl < 0 || H5Pset_create_intermediate_group(lcpl, 1) < 0 ||
        H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER) < 0 ||
        H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_LATE) < 0) {
        rc = err_set(e, ERR_INTERNAL, "%s/%s: cannot set up the dataset", where, path);
        goto done;
    }
    d = H5Dcreate2(loc, path, ftype, space, lcpl, dcpl, H5P_DEFAULT);
    if (d < 0 || H5Dwrite(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0) {
        char why[256];
        kh5__h5_reason(why, sizeof why);
        rc = err_set(e, ERR_IO, "%s/%s: cannot write dataset (%s)", where, path, why);
    }
done:
    if (d >= 0)
        H5Dclose(d);
    if (dcpl >= 0)
        H5Pclose(dcpl);
    if (lcpl >= 0)
        H5Pclose(lcpl);
    if (space >= 0)
        H5Sclose(space);
    return rc;
}

int kh5__probe_file(hid_t file, kh5_kind *out, err_info *e)
{
    int mc = kh5__attr_exists(file, "model_config");
    if (mc < 0)
        return err_set(e, ERR_FORMAT, "/: cannot list the root attributes");
    if (mc) {
        *out = KH5_FULL;
        return ERR_OK;
    }
    if (kh5__attr_exists(file, "layer_names") > 0 || kh5__attr_exists(file, "layer_names0") > 0) {
        *out = KH5_WEIGHTS;
        return ERR_OK;
    }
    /* Keras 3 save_weights() layout: groups layers/<name>/vars and vars, no root attributes. */
    if (kh5__link_exists(file, "layers") && kh5__link_exists(file, "vars")) {
        *out = KH5_KERAS3_WEIGHTS;
        return ERR_OK;
    }
    if (kh5__link_exists(file, "model_weights"))
        return err_set(e, ERR_FORMAT,
                       "/: group model_weights but no model_config attribute: not a complete "
                       "Keras model file");
    return err_set(e, ERR_FORMAT,
                   "/: no model_config or layer_names attribute: an HDF5 file, but not a Keras "
                   ".h5 file");
}
