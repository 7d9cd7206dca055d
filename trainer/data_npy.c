/* NumPy .npy files: the header parser, the reader (a data_source over pread() or memory) and the
 * atomic float32 writer. Format: numpy/lib/format.py ("\x93NUMPY", major, minor, a little-endian
 * header length of 2 bytes (1.0) or 4 bytes (2.0, 3.0), then a Python dict literal padded with
 * spaces and ended by '\n', then the raw array). */

#include "trainer/data.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "trainer/data_impl.h"

static const unsigned char NPY_MAGIC[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};

int data__npy_header_total(const unsigned char *buf, size_t len, uint64_t *total, err_info *e)
{
    size_t cmp = len < sizeof NPY_MAGIC ? len : sizeof NPY_MAGIC;
    if (memcmp(buf, NPY_MAGIC, cmp) != 0)
        return err_set(e, ERR_FORMAT, "not an NPY file: bad magic (expected \\x93NUMPY)");
    if (len < 8)
        return err_set(e, ERR_FORMAT, "truncated header: %zu bytes, an NPY file has at least 10",
                       len);
    unsigned major = buf[6], minor = buf[7];
    if (major < 1 || major > 3 || minor != 0)
        return err_set(e, ERR_UNSUPPORTED, "NPY format version %u.%u (supported: 1.0, 2.0, 3.0)",
                       major, minor);
    size_t pre = major == 1 ? 10 : 12;
    if (len < pre)
        return err_set(e, ERR_FORMAT,
                       "truncated header: %zu bytes, a version %u.0 preamble has %zu", len, major,
                       pre);
    uint64_t hlen = major == 1 ? (uint64_t)buf[8] | (uint64_t)buf[9] << 8
                               : (uint64_t)buf[8] | (uint64_t)buf[9] << 8 |
                                     (uint64_t)buf[10] << 16 | (uint64_t)buf[11] << 24;
    if (hlen > DATA_NPY_MAX_HEADER)
        return err_set(e, ERR_FORMAT, "header length %llu exceeds the limit of %llu bytes",
                       (unsigned long long)hlen, (unsigned long long)DATA_NPY_MAX_HEADER);
    *total = pre + hlen;
    return ERR_OK;
}

/* ---- the header dict ---- */

typedef struct npy_lex {
    const char *p, *begin, *end;
} npy_lex;

static long lex_off(const npy_lex *x)
{
    return (long)(x->p - x->begin);
}

static void lex_ws(npy_lex *x)
{
    while (x->p < x->end && (*x->p == ' ' || *x->p == '\t' || *x->p == '\n' || *x->p == '\r'))
        x->p++;
}

static bool lex_peek(const npy_lex *x, char c)
{
    return x->p < x->end && *x->p == c;
}

static int lex_expect(npy_lex *x, char c, const char *what, err_info *e)
{
    lex_ws(x);
    if (!lex_peek(x, c))
        return err_set(e, ERR_FORMAT, "header: expected '%c' %s at offset %ld", c, what,
                       lex_off(x));
    x->p++;
    return ERR_OK;
}

/* A quoted string without escapes into out (cap bytes, NUL-terminated); longer strings are
 * truncated in out but consumed whole. */
static int lex_string(npy_lex *x, char *out, size_t cap, err_info *e)
{
    lex_ws(x);
    if (!lex_peek(x, '\'') && !lex_peek(x, '"'))
        return err_set(e, ERR_FORMAT, "header: expected a quoted string at offset %ld", lex_off(x));
    char q = *x->p++;
    size_t n = 0;
    while (x->p < x->end && *x->p != q) {
        char c = *x->p;
        if (c == '\\' || c == '\n' || (unsigned char)c < 0x20)
            return err_set(e, ERR_FORMAT,
                           "header: escape or control character in a string at offset %ld",
                           lex_off(x));
        if (n + 1 < cap)
            out[n++] = c;
        x->p++;
    }
    if (x->p >= x->end)
        return err_set(e, ERR_FORMAT, "header: unterminated string");
    x->p++;
    out[n] = '\0';
    return ERR_OK;
}

static bool lex_word(npy_lex *x, const char *w)
{
    size_t n = strlen(w);
    if ((size_t)(x->end - x->p) < n || memcmp(x->p, w, n) != 0)
        return false;
    x->p += n;
    return true;
}

static int parse_descr(const char *d, data_layout *l, err_info *e)
{
    const char *s = d;
    char order = '=';
    if (*s == '<' || *s == '>' || *s == '|' || *s == '=')
        order = *s++;
    char kind = *s ? *s++ : '\0';
    int size = 0, digits = 0;
    while (*s >= '0' && *s <= '9' && digits < 4) {
        size = size * 10 + (*s++ - '0');
        digits++;
    }
    bool ok = *s == '\0' && digits > 0;
    data_elem el = DATA_ELEM_COUNT;
    if (ok && kind == 'b' && size == 1)
        el = DATA_ELEM_BOOL;
    else if (ok && kind == 'u')
        el = size == 1   ? DATA_ELEM_U8
             : size == 2 ? DATA_ELEM_U16
             : size == 4 ? DATA_ELEM_U32
             : size == 8 ? DATA_ELEM_U64
                         : DATA_ELEM_COUNT;
    else if (ok && kind == 'i')
        el = size == 1   ? DATA_ELEM_I8
             : size == 2 ? DATA_ELEM_I16
             : size == 4 ? DATA_ELEM_I32
             : size == 8 ? DATA_ELEM_I64
                         : DATA_ELEM_COUNT;
    else if (ok && kind == 'f')
        el = size == 2   ? DATA_ELEM_F16
             : size == 4 ? DATA_ELEM_F32
             : size == 8 ? DATA_ELEM_F64
                         : DATA_ELEM_COUNT;
    if (el == DATA_ELEM_COUNT)
        return err_set(e, ERR_UNSUPPORTED,
                       "dtype '%s' (supported: b1, u1, i1, u2, i2, u4, i4, u8, i8, f2, f4, f8)", d);
    if (order == '|' && size > 1)
        return err_set(e, ERR_FORMAT, "dtype '%s': byte order '|' for a multi-byte type", d);
    l->elem = el;
    l->big_endian = order == '>' || (order == '=' && data__host_big_endian());
    return ERR_OK;
}

static int parse_shape(npy_lex *x, data_layout *l, err_info *e)
{
    int rc = lex_expect(x, '(', "(shape must be a tuple)", e);
    if (rc != ERR_OK)
        return rc;
    int n = 0;
    bool comma = false; /* a comma followed the last extent */
    for (;;) {
        lex_ws(x);
        if (lex_peek(x, ')')) {
            x->p++;
            break;
        }
        if (n > 0 && !comma)
            return err_set(e, ERR_FORMAT, "header: expected ',' or ')' in shape at offset %ld",
                           lex_off(x));
        if (!(x->p < x->end && *x->p >= '0' && *x->p <= '9'))
            return err_set(e, ERR_FORMAT,
                           "header: expected a non-negative integer in shape at offset %ld",
                           lex_off(x));
        int64_t v = 0;
        while (x->p < x->end && *x->p >= '0' && *x->p <= '9') {
            int dgt = *x->p++ - '0';
            if (v > (INT64_MAX - dgt) / 10)
                return err_set(e, ERR_RANGE, "header: shape extent overflows int64 at offset %ld",
                               lex_off(x));
            v = v * 10 + dgt;
        }
        if (lex_peek(x, 'L') || lex_peek(x, 'l')) /* Python 2 long literal */
            x->p++;
        if (n >= TENSOR_MAX_RANK)
            return err_set(e, ERR_UNSUPPORTED, "shape has more than %d dimensions",
                           TENSOR_MAX_RANK);
        l->shape[n++] = v;
        lex_ws(x);
        comma = lex_peek(x, ',');
        if (comma)
            x->p++;
    }
    if (n == 1 && !comma)
        return err_set(e, ERR_FORMAT, "header: shape (%lld) is not a tuple (expected (%lld,))",
                       (long long)l->shape[0], (long long)l->shape[0]);
    if (n == 0)
        return err_set(e, ERR_UNSUPPORTED, "shape (): a 0-d array has no rows");
    l->rank = n;
    return ERR_OK;
}

int data__npy_parse(const unsigned char *buf, size_t len, data_layout *out, err_info *e)
{
    uint64_t total;
    int rc = data__npy_header_total(buf, len, &total, e);
    if (rc != ERR_OK)
        return rc;
    if (len < total)
        return err_set(e, ERR_FORMAT, "truncated header: expected %llu bytes, found %zu",
                       (unsigned long long)total, len);
    size_t pre = buf[6] == 1 ? 10 : 12;
    npy_lex x = {(const char *)buf + pre, (const char *)buf + pre, (const char *)buf + total};
    data_layout l;
    memset(&l, 0, sizeof l);
    bool has_descr = false, has_fortran = false, has_shape = false, fortran = false;
    char descr[32];
    if ((rc = lex_expect(&x, '{', "(header must be a dict)", e)) != ERR_OK)
        return rc;
    for (;;) {
        lex_ws(&x);
        if (lex_peek(&x, '}')) {
            x.p++;
            break;
        }
        char key[32];
        if ((rc = lex_string(&x, key, sizeof key, e)) != ERR_OK)
            return rc;
        if ((rc = lex_expect(&x, ':', "after a key", e)) != ERR_OK)
            return rc;
        lex_ws(&x);
        if (strcmp(key, "descr") == 0) {
            if (has_descr)
                return err_set(e, ERR_FORMAT, "header: duplicate key 'descr'");
            if (lex_peek(&x, '['))
                return err_set(e, ERR_UNSUPPORTED, "structured dtype (a list descr)");
            if ((rc = lex_string(&x, descr, sizeof descr, e)) != ERR_OK)
                return rc;
            if ((rc = parse_descr(descr, &l, e)) != ERR_OK)
                return rc;
            has_descr = true;
        } else if (strcmp(key, "fortran_order") == 0) {
            if (has_fortran)
                return err_set(e, ERR_FORMAT, "header: duplicate key 'fortran_order'");
            if (lex_word(&x, "True"))
                fortran = true;
            else if (lex_word(&x, "False"))
                fortran = false;
            else
                return err_set(e, ERR_FORMAT,
                               "header: fortran_order is not True or False at offset %ld",
                               lex_off(&x));
            has_fortran = true;
        } else if (strcmp(key, "shape") == 0) {
            if (has_shape)
                return err_set(e, ERR_FORMAT, "header: duplicate key 'shape'");
            if ((rc = parse_shape(&x, &l, e)) != ERR_OK)
                return rc;
            has_shape = true;
        } else {
            return err_set(e, ERR_FORMAT,
                           "header: unknown key '%s' (expected descr, fortran_order, shape)", key);
        }
        lex_ws(&x);
        if (lex_peek(&x, ',')) {
            x.p++;
            continue;
        }
        if ((rc = lex_expect(&x, '}', "or ',' after a value", e)) != ERR_OK)
            return rc;
        break;
    }
    lex_ws(&x);
    if (x.p != x.end)
        return err_set(e, ERR_FORMAT, "header: unexpected characters after the dict at offset %ld",
                       lex_off(&x));
    if (!has_descr || !has_fortran || !has_shape)
        return err_set(e, ERR_FORMAT, "header: missing key '%s'",
                       !has_descr     ? "descr"
                       : !has_fortran ? "fortran_order"
                                      : "shape");
    if (fortran) {
        /* Fortran and C order coincide when at most one extent exceeds 1. */
        int big = 0;
        for (int i = 0; i < l.rank; i++)
            big += l.shape[i] > 1;
        if (big > 1)
            return err_set(e, ERR_UNSUPPORTED,
                           "fortran_order=True (a column-major array); save it in C order");
    }
    l.data_off = total;
    *out = l;
    return ERR_OK;
}

/* ---- opening ---- */

int data__npy_open_file(const char *path, uint64_t mem_limit, data_source **out, err_info *e)
{
    data_source *s = NULL;
    unsigned char *hdr = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    int rc = ERR_OK;
    struct stat st;
    if (fd < 0) {
        rc = err_set(e, ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        goto done;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = err_set(e, ERR_IO, "%s: not a regular file", path);
        goto done;
    }
    const uint64_t size = (uint64_t)st.st_size;
    unsigned char pre[12];
    size_t npre = size < sizeof pre ? (size_t)size : sizeof pre;
    uint64_t total;
    data_layout l;
    uint64_t data_bytes;
    if ((rc = data__pread_full(fd, pre, npre, 0, path, e)) != ERR_OK)
        goto done;
    if ((rc = data__npy_header_total(pre, npre, &total, e)) != ERR_OK)
        goto wrap;
    if (total > size) {
        rc = err_set(e, ERR_FORMAT, "truncated header: expected %llu bytes, found %llu",
                     (unsigned long long)total, (unsigned long long)size);
        goto wrap;
    }
    if ((hdr = malloc((size_t)total)) == NULL) {
        rc = err_set(e, ERR_NOMEM, "out of memory for a %llu-byte header",
                     (unsigned long long)total);
        goto wrap;
    }
    if ((rc = data__pread_full(fd, hdr, (size_t)total, 0, path, e)) != ERR_OK)
        goto done;
    if ((rc = data__npy_parse(hdr, (size_t)total, &l, e)) != ERR_OK)
        goto wrap;
    if ((rc = data__source_new(path, &l, &s, &data_bytes, e)) != ERR_OK)
        goto wrap;
    if ((rc = data__check_size(l.data_off, data_bytes, size, e)) != ERR_OK)
        goto wrap;
    rc = data__source_attach_fd(s, fd, l.data_off, data_bytes, mem_limit, e);
    fd = -1;
    if (rc != ERR_OK)
        goto done;
    *out = s;
    s = NULL;
    goto done;
wrap:
    err_wrap(e, "%s", path);
done:
    data_source_destroy(s);
    free(hdr);
    if (fd >= 0)
        close(fd);
    return rc;
}

int data_source_open_npy(const char *path, data_source **out, err_info *e)
{
    return data__npy_open_file(path, DATA_MEM_LIMIT, out, e);
}

int data__npy_open_mem(const unsigned char *buf, size_t len, const char *name, data_source **out,
                       err_info *e)
{
    data_layout l;
    uint64_t data_bytes;
    data_source *s = NULL;
    int rc = data__npy_parse(buf, len, &l, e);
    if (rc == ERR_OK)
        rc = data__source_new(name, &l, &s, &data_bytes, e);
    if (rc == ERR_OK)
        rc = data__check_size(l.data_off, data_bytes, len, e);
    if (rc == ERR_OK && (s->mem = malloc(len ? len : 1)) == NULL)
        rc = err_set(e, ERR_NOMEM, "out of memory for %zu bytes", len);
    if (rc != ERR_OK) {
        data_source_destroy(s);
        return err_wrap(e, "%s", name);
    }
    memcpy(s->mem, buf, len);
    s->backend = DATA_BACKEND_MEM;
    *out = s;
    return ERR_OK;
}

/* ---- writing ---- */

int data_npy_write(const char *path, int rank, const int64_t *shape, const float *data, err_info *e)
{
    if (rank < 0 || rank > TENSOR_MAX_RANK)
        return err_set(e, ERR_USAGE, "%s: rank %d outside 0..%d", path, rank, TENSOR_MAX_RANK);
    size_t nbytes;
    int rc = tensor_nbytes(DTYPE_F32, rank, shape, &nbytes, e);
    if (rc != ERR_OK)
        return err_wrap(e, "%s", path);
    /* Version 1.0: with at most 8 extents of at most 19 digits the dict is far below 64 KiB. */
    char hdr[512];
    memcpy(hdr, NPY_MAGIC, sizeof NPY_MAGIC);
    hdr[6] = 1; /* version 1.0 */
    hdr[7] = 0;
    int n = 10 + snprintf(hdr + 10, sizeof hdr - 10,
                          "{'descr': '<f4', 'fortran_order': False, 'shape': (");
    for (int i = 0; i < rank; i++)
        n +=
            snprintf(hdr + n, sizeof hdr - (size_t)n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    n += snprintf(hdr + n, sizeof hdr - (size_t)n, "%s), }", rank == 1 ? "," : "");
    /* Pad with spaces so that the data starts at a multiple of 64 bytes, then '\n'. */
    while ((n + 1) % 64 != 0)
        hdr[n++] = ' ';
    hdr[n++] = '\n';
    CHECK(n < (int)sizeof hdr);
    hdr[8] = (char)((n - 10) & 0xff);
    hdr[9] = (char)((n - 10) >> 8);

    char tmp[DATA_PATH_MAX + 32];
    int tn = snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    if (tn < 0 || (size_t)tn >= sizeof tmp)
        return err_set(e, ERR_USAGE, "%s: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0)
        return err_set(e, ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    rc = data__write_full(fd, hdr, (size_t)n, tmp, e);
    if (rc == ERR_OK && !data__host_big_endian()) {
        rc = data__write_full(fd, data, nbytes, tmp, e);
    } else if (rc == ERR_OK) {
        /* The file is little-endian: swap through a small buffer on big-endian hosts. */
        unsigned char buf[4096];
        const unsigned char *src = (const unsigned char *)data;
        for (size_t off = 0; rc == ERR_OK && off < nbytes; off += sizeof buf) {
            size_t len = nbytes - off < sizeof buf ? nbytes - off : sizeof buf;
            for (size_t i = 0; i < len; i += 4) {
                buf[i] = src[off + i + 3];
                buf[i + 1] = src[off + i + 2];
                buf[i + 2] = src[off + i + 1];
                buf[i + 3] = src[off + i];
            }
            rc = data__write_full(fd, buf, len, tmp, e);
        }
    }
    if (rc == ERR_OK && fsync(fd) != 0)
        rc = err_set(e, ERR_IO, "%s: fsync failed: %s", tmp, strerror(errno));
    if (close(fd) != 0 && rc == ERR_OK)
        rc = err_set(e, ERR_IO, "%s: close failed: %s", tmp, strerror(errno));
    if (rc == ERR_OK && rename(tmp, path) != 0)
        rc = err_set(e, ERR_IO, "%s: cannot rename %s to it: %s", path, tmp, strerror(errno));
    if (rc != ERR_OK)
        unlink(tmp);
    return rc;
}
