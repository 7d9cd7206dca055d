#include "trainer/data.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "trainer/data_impl.h"

/* ---- element types ---- */

size_t data__elem_size(data_elem el)
{
    switch (el) {
    case DATA_ELEM_BOOL:
    case DATA_ELEM_U8:
    case DATA_ELEM_I8:
        return 1;
    case DATA_ELEM_U16:
    case DATA_ELEM_I16:
    case DATA_ELEM_F16:
        return 2;
    case DATA_ELEM_U32:
    case DATA_ELEM_I32:
    case DATA_ELEM_F32:
        return 4;
    case DATA_ELEM_U64:
    case DATA_ELEM_I64:
    case DATA_ELEM_F64:
        return 8;
    case DATA_ELEM_COUNT:
        break;
    }
    return 0;
}

const char *data__elem_name(data_elem el)
{
    switch (el) {
    case DATA_ELEM_BOOL:
        return "bool";
    case DATA_ELEM_U8:
        return "uint8";
    case DATA_ELEM_I8:
        return "int8";
    case DATA_ELEM_U16:
        return "uint16";
    case DATA_ELEM_I16:
        return "int16";
    case DATA_ELEM_U32:
        return "uint32";
    case DATA_ELEM_I32:
        return "int32";
    case DATA_ELEM_U64:
        return "uint64";
    case DATA_ELEM_I64:
        return "int64";
    case DATA_ELEM_F16:
        return "float16";
    case DATA_ELEM_F32:
        return "float32";
    case DATA_ELEM_F64:
        return "float64";
    case DATA_ELEM_COUNT:
        break;
    }
    return "?";
}

dtype data__elem_dtype(data_elem el)
{
    switch (el) {
    case DATA_ELEM_U8:
        return DTYPE_U8;
    /* bool is not reported as uint8: callers treat uint8 arrays as images and scale them. */
    case DATA_ELEM_BOOL:
    case DATA_ELEM_I8:
    case DATA_ELEM_U16:
    case DATA_ELEM_I16:
    case DATA_ELEM_I32:
        return DTYPE_I32;
    case DATA_ELEM_U32:
    case DATA_ELEM_U64:
    case DATA_ELEM_I64:
        return DTYPE_I64;
    case DATA_ELEM_F16:
    case DATA_ELEM_F32:
        return DTYPE_F32;
    case DATA_ELEM_F64:
        return DTYPE_F64;
    case DATA_ELEM_COUNT:
        break;
    }
    return DTYPE_F32;
}

bool data__host_big_endian(void)
{
    const uint16_t one = 1;
    unsigned char b[2];
    memcpy(b, &one, sizeof b);
    return b[0] == 0;
}

/* ---- conversion to float32 ----
 * Loads assemble values from bytes in the file's byte order, so they are independent of the
 * host's order and of alignment; compilers turn the little-endian form into a plain load. */

static inline uint16_t ld16(const unsigned char *p, bool be)
{
    return be ? (uint16_t)((unsigned)p[0] << 8 | p[1]) : (uint16_t)((unsigned)p[1] << 8 | p[0]);
}

static inline uint32_t ld32(const unsigned char *p, bool be)
{
    if (be)
        return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
    return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}

static inline uint64_t ld64(const unsigned char *p, bool be)
{
    uint64_t a = ld32(p, be), b = ld32(p + 4, be);
    return be ? a << 32 | b : b << 32 | a;
}

/* IEEE binary16 -> binary32, exact for every input (subnormals are renormalised, NaN payloads
 * kept). */
static inline float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t ex = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (ex == 0) {
        if (man == 0) {
            bits = sign;
        } else {
            ex = 127 - 15 + 1;
            while ((man & 0x400u) == 0) {
                man <<= 1;
                ex--;
            }
            bits = sign | ex << 23 | (man & 0x3ffu) << 13;
        }
    } else if (ex == 31) {
        bits = sign | 0x7f800000u | man << 13;
    } else {
        bits = sign | (ex + 127 - 15) << 23 | man << 13;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline float f_bool(const unsigned char *p, bool be)
{
    (void)be;
    return p[0] != 0 ? 1.0f : 0.0f;
}
static inline float f_u8(const unsigned char *p, bool be)
{
    (void)be;
    return (float)p[0];
}
static inline float f_i8(const unsigned char *p, bool be)
{
    (void)be;
    return (float)(int8_t)p[0];
}
static inline float f_u16(const unsigned char *p, bool be)
{
    return (float)ld16(p, be);
}
static inline float f_i16(const unsigned char *p, bool be)
{
    return (float)(int16_t)ld16(p, be);
}
static inline float f_u32(const unsigned char *p, bool be)
{
    return (float)ld32(p, be);
}
static inline float f_i32(const unsigned char *p, bool be)
{
    return (float)(int32_t)ld32(p, be);
}
static inline float f_u64(const unsigned char *p, bool be)
{
    return (float)ld64(p, be);
}
static inline float f_i64(const unsigned char *p, bool be)
{
    return (float)(int64_t)ld64(p, be);
}
static inline float f_f16(const unsigned char *p, bool be)
{
    return half_to_float(ld16(p, be));
}
static inline float f_f32(const unsigned char *p, bool be)
{
    uint32_t u = ld32(p, be);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
static inline float f_f64(const unsigned char *p, bool be)
{
    uint64_t u = ld64(p, be);
    double d;
    memcpy(&d, &u, sizeof d);
    return (float)d;
}

/* One loop per element type and byte order, so the byte-order test is outside the loop. */
#define DATA_CONV_FN(name, load, size)                                                             \
    static void name(const unsigned char *src, size_t n, float scale, float *dst, bool be)         \
    {                                                                                              \
        if (be) {                                                                                  \
            for (size_t i = 0; i < n; i++)                                                         \
                dst[i] = load(src + (size)*i, true) * scale;                                       \
        } else {                                                                                   \
            for (size_t i = 0; i < n; i++)                                                         \
                dst[i] = load(src + (size)*i, false) * scale;                                      \
        }                                                                                          \
    }
DATA_CONV_FN(conv_bool, f_bool, 1)
DATA_CONV_FN(conv_u8, f_u8, 1)
DATA_CONV_FN(conv_i8, f_i8, 1)
DATA_CONV_FN(conv_u16, f_u16, 2)
DATA_CONV_FN(conv_i16, f_i16, 2)
DATA_CONV_FN(conv_u32, f_u32, 4)
DATA_CONV_FN(conv_i32, f_i32, 4)
DATA_CONV_FN(conv_u64, f_u64, 8)
DATA_CONV_FN(conv_i64, f_i64, 8)
DATA_CONV_FN(conv_f16, f_f16, 2)
DATA_CONV_FN(conv_f32, f_f32, 4)
DATA_CONV_FN(conv_f64, f_f64, 8)
#undef DATA_CONV_FN

void data__convert(data_elem el, bool big_endian, const unsigned char *src, size_t count,
                   float scale, float *dst)
{
    switch (el) {
    case DATA_ELEM_BOOL:
        conv_bool(src, count, scale, dst, big_endian);
        return;
    case DATA_ELEM_U8:
        conv_u8(src, count, scale, dst, big_endian);
        return;
    case DATA_ELEM_I8:
        conv_i8(src, count, scale, dst, big_endian);
        return;
    case DATA_ELEM_U16:
        conv_u16(src, count, scale, dst, big_endian);
        return;
    case DATA_ELEM_I16:
        conv_i16(src, count, scale, dst, big_endian);
        return;
    case DATA_ELEM_U32:
        conv_u32(src, count, scale, dst, big_endian);
        return;
    case DATA_ELEM_I32:
        conv_i32(src, count, scale, dst, big_endian);
        return;
    case DATA_ELEM_U64:
        conv_u64(src, count, scale, dst, big_endian);
        return;
    case DATA_ELEM_I64:
        conv_i64(src, count, scale, dst, big_endian);
        return;
    case DATA_ELEM_F16:
        conv_f16(src, count, scale, dst, big_endian);
        return;
    case DATA_ELEM_F32:
        conv_f32(src, count, scale, dst, big_endian);
        return;
    case DATA_ELEM_F64:
        conv_f64(src, count, scale, dst, big_endian);
        return;
    case DATA_ELEM_COUNT:
        break;
    }
    CHECK(el < DATA_ELEM_COUNT); /* unreachable: every element type has a case */
}

/* ---- sorting (row, pos) pairs without allocating ---- */

static inline bool pair_less(const data_pair *a, const data_pair *b)
{
    return a->row < b->row || (a->row == b->row && a->pos < b->pos);
}

static void sift_down(data_pair *p, int64_t root, int64_t n)
{
    for (;;) {
        int64_t c = 2 * root + 1;
        if (c >= n)
            return;
        if (c + 1 < n && pair_less(&p[c], &p[c + 1]))
            c++;
        if (!pair_less(&p[root], &p[c]))
            return;
        data_pair t = p[root];
        p[root] = p[c];
        p[c] = t;
        root = c;
    }
}

void data__pairs_sort(data_pair *p, int64_t n)
{
    /* Unshuffled loaders hand over sorted ids: detect that in one pass. */
    int64_t i = 1;
    while (i < n && !pair_less(&p[i], &p[i - 1]))
        i++;
    if (i >= n)
        return;
    if (n <= 24) {
        for (i = 1; i < n; i++) {
            data_pair t = p[i];
            int64_t j = i;
            while (j > 0 && pair_less(&t, &p[j - 1])) {
                p[j] = p[j - 1];
                j--;
            }
            p[j] = t;
        }
        return;
    }
    /* Heapsort: O(n log n) worst case, in place (glibc's qsort may call malloc). */
    for (i = n / 2 - 1; i >= 0; i--)
        sift_down(p, i, n);
    for (i = n - 1; i > 0; i--) {
        data_pair t = p[0];
        p[0] = p[i];
        p[i] = t;
        sift_down(p, 0, i);
    }
}

/* ---- sources ---- */

int data__source_new(const char *name, const data_layout *l, data_source **out,
                     uint64_t *data_bytes, err_info *e)
{
    if (l->rank < 1 || l->rank > TENSOR_MAX_RANK)
        return err_set(e, ERR_FORMAT, "rank %d outside 1..%d (axis 0 holds the rows)", l->rank,
                       TENSOR_MAX_RANK);
    size_t es = data__elem_size(l->elem);
    CHECK(es > 0);
    size_t count, row_f64;
    char sh[160];
    int rc = tensor_nbytes(DTYPE_U8, l->rank, l->shape, &count, e);
    if (rc == ERR_OK && count > SIZE_MAX / es)
        rc = err_set(e, ERR_RANGE, "%zu elements of %s overflow size_t", count,
                     data__elem_name(l->elem));
    /* A row must be addressable both on disk (up to 8-byte elements) and as float32. */
    if (rc == ERR_OK)
        rc = tensor_nbytes(DTYPE_F64, l->rank - 1, l->shape + 1, &row_f64, e);
    if (rc != ERR_OK)
        return err_wrap(e, "shape %s", tensor_shape_str(l->rank, l->shape, sh, sizeof sh));
    data_source *s = calloc(1, sizeof *s);
    if (s == NULL)
        return err_set(e, ERR_NOMEM, "out of memory for a data source");
    s->fd = -1;
    s->name = malloc(strlen(name) + 1);
    s->pairs = malloc(DATA_READ_BLOCK * sizeof *s->pairs);
    if (s->name == NULL || s->pairs == NULL) {
        data_source_destroy(s);
        return err_set(e, ERR_NOMEM, "out of memory for a data source");
    }
    memcpy(s->name, name, strlen(name) + 1);
    s->elem = l->elem;
    s->big_endian = l->big_endian;
    s->dt = data__elem_dtype(l->elem);
    s->rows = l->shape[0];
    s->row_rank = l->rank - 1;
    s->row_len = 1;
    for (int i = 1; i < l->rank; i++) {
        s->row_shape[i - 1] = l->shape[i];
        s->row_len *= l->shape[i];
    }
    s->row_bytes = (size_t)s->row_len * es;
    s->data_off = l->data_off;
    *data_bytes = (uint64_t)count * es;
    *out = s;
    return ERR_OK;
}

int data__check_size(uint64_t data_off, uint64_t data_bytes, uint64_t file_size, err_info *e)
{
    if (data_off > file_size || data_bytes > file_size - data_off)
        return err_set(e, ERR_FORMAT,
                       "truncated: expected %llu bytes (header %llu + data %llu), found %llu",
                       (unsigned long long)data_off + data_bytes, (unsigned long long)data_off,
                       (unsigned long long)data_bytes, (unsigned long long)file_size);
    if (data_bytes < file_size - data_off)
        return err_set(e, ERR_FORMAT,
                       "trailing data: expected %llu bytes (header %llu + data %llu), found %llu",
                       (unsigned long long)data_off + data_bytes, (unsigned long long)data_off,
                       (unsigned long long)data_bytes, (unsigned long long)file_size);
    return ERR_OK;
}

void data_source_destroy(data_source *s)
{
    if (s == NULL)
        return;
    if (s->backend == DATA_BACKEND_H5)
        data__h5_close(s);
    if (s->fd >= 0)
        close(s->fd);
    free(s->mem);
    free(s->scratch);
    free(s->pairs);
    free(s->name);
    free(s);
}

int64_t data_source_rows(const data_source *s)
{
    return s->rows;
}

int data_source_row_rank(const data_source *s)
{
    return s->row_rank;
}

const int64_t *data_source_row_shape(const data_source *s)
{
    return s->row_shape;
}

int64_t data_source_row_len(const data_source *s)
{
    return s->row_len;
}

dtype data_source_dtype(const data_source *s)
{
    return s->dt;
}

const char *data_source_name(const data_source *s)
{
    return s->name;
}

int data__pread_full(int fd, void *buf, size_t n, uint64_t off, const char *what, err_info *e)
{
    unsigned char *p = buf;
    size_t done = 0;
    while (done < n) {
        ssize_t got = pread(fd, p + done, n - done, (off_t)(off + done));
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return err_set(e, ERR_IO, "%s: read of %zu bytes at offset %llu failed: %s", what, n,
                           (unsigned long long)off, strerror(errno));
        }
        if (got == 0)
            return err_set(e, ERR_IO,
                           "%s: end of file at offset %llu, expected %zu more bytes (file "
                           "changed since it was opened?)",
                           what, (unsigned long long)(off + done), n - done);
        done += (size_t)got;
    }
    return ERR_OK;
}

int data__write_full(int fd, const void *buf, size_t n, const char *what, err_info *e)
{
    const unsigned char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return err_set(e, ERR_IO, "%s: write failed: %s", what, strerror(errno));
        }
        p += w;
        n -= (size_t)w;
    }
    return ERR_OK;
}

int data__source_attach_fd(data_source *s, int fd, uint64_t off, uint64_t bytes, uint64_t mem_limit,
                           err_info *e)
{
    int rc;
    if (bytes <= mem_limit) {
        /* Small data: one sequential read now saves a system call per run later. */
        if ((s->mem = malloc(bytes ? (size_t)bytes : 1)) == NULL)
            rc = err_set(e, ERR_NOMEM, "%s: out of memory for %llu bytes", s->name,
                         (unsigned long long)bytes);
        else
            rc = data__pread_full(fd, s->mem, (size_t)bytes, off, s->name, e);
        close(fd);
        s->data_off = 0;
        s->backend = DATA_BACKEND_MEM;
        return rc;
    }
    if ((s->scratch = malloc(DATA_SCRATCH_BYTES)) == NULL) {
        close(fd);
        return err_set(e, ERR_NOMEM, "%s: out of memory for a read buffer", s->name);
    }
    s->scratch_bytes = DATA_SCRATCH_BYTES;
    s->fd = fd;
    s->data_off = off;
    s->backend = DATA_BACKEND_FD;
    return ERR_OK;
}

/* Hints the CPU to fetch the len bytes at p (every 64-byte line) into its caches. Locality 2:
 * the outer caches. */
static void prefetch_row(const unsigned char *p, size_t len)
{
#if defined(__GNUC__)
    for (size_t off = 0; off < len; off += 64)
        __builtin_prefetch(p + off, 0, 2);
    __builtin_prefetch(p + len - 1, 0, 2);
#else
    (void)p;
    (void)len;
#endif
}

void data__prefetch_rows(const data_source *s, const int64_t *rows, int64_t n)
{
    if (s->backend != DATA_BACKEND_MEM || s->row_bytes == 0)
        return;
    const unsigned char *base = s->mem + s->data_off;
    for (int64_t k = 0; k < n; k++)
        prefetch_row(base + (size_t)rows[k] * s->row_bytes, s->row_bytes);
}

/* Rows from a file or memory: runs of consecutive rows are read with one pread() each (in pieces
 * of at most the scratch buffer), then each requested row is converted into its slot; a
 * duplicate row is converted again from the same bytes. */
static int read_raw(data_source *s, const data_pair *p, int64_t n, float scale, float *dst,
                    err_info *e)
{
    const size_t rb = s->row_bytes, rl = (size_t)s->row_len;
    if (rb == 0)
        return ERR_OK;
    if (s->backend == DATA_BACKEND_MEM) {
        const unsigned char *base = s->mem + s->data_off;
        /* The rows are scattered: ask for a few rows ahead while converting one, so that their
         * cache misses overlap instead of following each other. */
        enum { AHEAD = 6 };
        for (int64_t k = 0; k < n; k++) {
            if (k + AHEAD < n)
                prefetch_row(base + (size_t)p[k + AHEAD].row * rb, rb);
            else if (k == 0)
                for (int64_t j = 0; j < n && j < AHEAD; j++)
                    prefetch_row(base + (size_t)p[j].row * rb, rb);
            data__convert(s->elem, s->big_endian, base + (size_t)p[k].row * rb, rl, scale,
                          dst + (size_t)p[k].pos * rl);
        }
        return ERR_OK;
    }
    const size_t es = data__elem_size(s->elem);
    int64_t i = 0;
    while (i < n) {
        int64_t j = i;
        while (j + 1 < n && p[j + 1].row - p[j].row <= 1)
            j++;
        const int64_t r0 = p[i].row, r1 = p[j].row;
        if (rb <= s->scratch_bytes) {
            const int64_t per = (int64_t)(s->scratch_bytes / rb);
            int64_t k = i;
            for (int64_t c0 = r0; c0 <= r1; c0 += per) {
                const int64_t c1 = r1 - c0 + 1 > per ? c0 + per - 1 : r1;
                int rc = data__pread_full(s->fd, s->scratch, (size_t)(c1 - c0 + 1) * rb,
                                          s->data_off + (uint64_t)c0 * rb, s->name, e);
                if (rc != ERR_OK)
                    return rc;
                for (; k <= j && p[k].row <= c1; k++)
                    data__convert(s->elem, s->big_endian, s->scratch + (size_t)(p[k].row - c0) * rb,
                                  rl, scale, dst + (size_t)p[k].pos * rl);
            }
        } else {
            /* A row larger than the buffer: read it in pieces (the buffer size is a multiple of
             * every element size, so pieces hold whole elements). */
            for (int64_t k = i; k <= j; k++) {
                for (size_t off = 0; off < rb; off += s->scratch_bytes) {
                    size_t len = rb - off < s->scratch_bytes ? rb - off : s->scratch_bytes;
                    int rc =
                        data__pread_full(s->fd, s->scratch, len,
                                         s->data_off + (uint64_t)p[k].row * rb + off, s->name, e);
                    if (rc != ERR_OK)
                        return rc;
                    data__convert(s->elem, s->big_endian, s->scratch, len / es, scale,
                                  dst + (size_t)p[k].pos * rl + off / es);
                }
            }
        }
        i = j + 1;
    }
    return ERR_OK;
}

int data__read_sorted(data_source *s, const data_pair *p, int64_t n, float scale, float *dst,
                      err_info *e)
{
    switch (s->backend) {
    case DATA_BACKEND_FD:
    case DATA_BACKEND_MEM:
        return read_raw(s, p, n, scale, dst, e);
    case DATA_BACKEND_H5:
        return data__h5_read_sorted(s, p, n, scale, dst, e);
    case DATA_BACKEND_COUNT:
        break;
    }
    return err_set(e, ERR_INTERNAL, "%s: unknown backend", s->name);
}

int data_source_read(data_source *s, const int64_t *rows, int64_t n, float scale, float *dst,
                     err_info *e)
{
    if (n < 0)
        return err_set(e, ERR_USAGE, "%s: negative row count %lld", s->name, (long long)n);
    for (int64_t b = 0; b < n; b += DATA_READ_BLOCK) {
        const int64_t m = n - b < DATA_READ_BLOCK ? n - b : DATA_READ_BLOCK;
        for (int64_t i = 0; i < m; i++) {
            s->pairs[i].row = rows[b + i];
            s->pairs[i].pos = b + i;
        }
        data__pairs_sort(s->pairs, m);
        /* Sorted: the extremes are the only rows that can be out of range. */
        const data_pair *bad = s->pairs[0].row < 0              ? &s->pairs[0]
                               : s->pairs[m - 1].row >= s->rows ? &s->pairs[m - 1]
                                                                : NULL;
        if (bad != NULL)
            return err_set(e, ERR_RANGE,
                           "%s: row %lld (index %lld of the request) outside [0, %lld)", s->name,
                           (long long)bad->row, (long long)bad->pos, (long long)s->rows);
        int rc = data__read_sorted(s, s->pairs, m, scale, dst, e);
        if (rc != ERR_OK)
            return rc;
    }
    return ERR_OK;
}

int data_source_open(const char *path, const char *dataset, data_source **out, err_info *e)
{
    if (dataset != NULL)
        return data_source_open_h5(path, dataset, out, e);
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return err_set(e, ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    unsigned char m[8] = {0};
    size_t got = fread(m, 1, sizeof m, f);
    fclose(f);
    static const unsigned char npy[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
    static const unsigned char h5[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    if (got >= sizeof npy && memcmp(m, npy, sizeof npy) == 0)
        return data_source_open_npy(path, out, e);
    if (got >= sizeof h5 && memcmp(m, h5, sizeof h5) == 0)
        return err_set(e, ERR_USAGE, "%s: an HDF5 file: name the dataset to read", path);
    if (got >= 2 && ((m[0] == 0 && m[1] == 0) || (m[0] == 0x1f && m[1] == 0x8b)))
        return data_source_open_idx(path, out, e);
    return err_set(e, ERR_FORMAT,
                   "%s: unknown format (expected NPY, IDX, gzip IDX or HDF5 magic bytes)", path);
}
