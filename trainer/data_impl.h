#ifndef CORNU_TRAINER_DATA_IMPL_H
#define CORNU_TRAINER_DATA_IMPL_H

/* Shared inside the data module (data*.c), its tests and its fuzz targets: the source struct, the
 * on-disk element types, the header parsers (buffer, length) and in-memory openers. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/err.h"
#include "kernels/tensor.h"
#include "trainer/data.h"

/* Element types as stored on disk (before conversion to float32). */
typedef enum data_elem {
    DATA_ELEM_BOOL,
    DATA_ELEM_U8,
    DATA_ELEM_I8,
    DATA_ELEM_U16,
    DATA_ELEM_I16,
    DATA_ELEM_U32,
    DATA_ELEM_I32,
    DATA_ELEM_U64,
    DATA_ELEM_I64,
    DATA_ELEM_F16,
    DATA_ELEM_F32,
    DATA_ELEM_F64,
    DATA_ELEM_COUNT
} data_elem;

/* Where a source's rows come from. */
typedef enum data_backend {
    DATA_BACKEND_FD,  /* pread() from fd at data_off */
    DATA_BACKEND_MEM, /* mem + data_off (owned) */
    DATA_BACKEND_H5,  /* an HDF5 dataset (h5, see data_h5.c) */
    DATA_BACKEND_COUNT
} data_backend;

/* A parsed header: element type, byte order, full on-disk shape (axis 0 = rows) and the offset of
 * the first data byte. */
typedef struct data_layout {
    data_elem elem;
    bool big_endian;
    int rank;
    int64_t shape[TENSOR_MAX_RANK];
    uint64_t data_off;
} data_layout;

/* A row id and the destination slot it is read into; reads sort these by row. */
typedef struct data_pair {
    int64_t row, pos;
} data_pair;

/* Bytes of the raw read buffer of fd-backed sources (a multiple of every element size). */
#define DATA_SCRATCH_BYTES ((size_t)1 << 20)
/* Longest NPY header accepted (numpy itself refuses more than 10000 bytes by default). */
#define DATA_NPY_MAX_HEADER ((uint64_t)1 << 20)

struct data_source {
    char *name; /* "path" or "path:/dataset" */
    data_backend backend;
    data_elem elem;
    bool big_endian; /* on-disk byte order */
    dtype dt;
    int64_t rows;
    int row_rank;
    int64_t row_shape[TENSOR_MAX_RANK];
    int64_t row_len;
    size_t row_bytes; /* on-disk bytes per row (FD and MEM) */
    int fd;           /* FD: owned, -1 otherwise */
    uint64_t data_off;
    unsigned char *mem;     /* MEM: owned */
    unsigned char *scratch; /* FD: raw bytes; H5: float32 rows */
    size_t scratch_bytes;
    data_pair *pairs; /* DATA_READ_BLOCK entries for data_source_read() */
    void *h5;         /* H5: data_h5.c's state */
};

/* Bytes per element. */
size_t data__elem_size(data_elem el);
/* Name for messages ("uint16"). */
const char *data__elem_name(data_elem el);
/* The cornu dtype reported for el (see data_source_dtype()). */
dtype data__elem_dtype(data_elem el);
/* True on a big-endian host. */
bool data__host_big_endian(void);

/* Converts count elements of el at src (any alignment; big-endian when big_endian) to float32,
 * multiplies them by scale and stores them at dst. */
void data__convert(data_elem el, bool big_endian, const unsigned char *src, size_t count,
                   float scale, float *dst);

/* Sorts p[0..n) by row (then by pos), in place, without allocating. */
void data__pairs_sort(data_pair *p, int64_t n);

/* Allocates a source named name (copied) with the row geometry of l (axis 0 = rows) and checks
 * every size: tensor_nbytes() on the whole array and on a float32 row. *data_bytes receives the
 * on-disk data size. Backend fields are left for the caller (fd = -1, no memory). */
int data__source_new(const char *name, const data_layout *l, data_source **out,
                     uint64_t *data_bytes, err_info *e);

/* Checks that a file of file_size bytes holds exactly data_off + data_bytes bytes: ERR_FORMAT
 * "truncated: expected N bytes, found M" or "trailing data: expected N bytes, found M". */
int data__check_size(uint64_t data_off, uint64_t data_bytes, uint64_t file_size, err_info *e);

/* Gives s its data: `bytes` bytes at offset `off` of fd, which s now owns (also on error). Data of
 * at most mem_limit bytes is read into memory at once (MEM backend, fd closed); larger data stays
 * in the file and is read with pread() (FD backend). */
int data__source_attach_fd(data_source *s, int fd, uint64_t off, uint64_t bytes, uint64_t mem_limit,
                           err_info *e);

/* Reads sorted pairs p[0..n) (rows checked in range by the caller) into dst slots. */
int data__read_sorted(data_source *s, const data_pair *p, int64_t n, float scale, float *dst,
                      err_info *e);

/* Hints the CPU to bring rows[0..n) of an in-memory source (MEM backend; others: nothing) into
 * its caches: the loader calls it for the next step's rows, so that the random rows of a
 * shuffled batch come from cache instead of memory when the step reads them. */
void data__prefetch_rows(const data_source *s, const int64_t *rows, int64_t n);

/* pread() exactly n bytes at off, retrying on EINTR and short reads; ERR_IO naming `what` on
 * error or early end of file. */
int data__pread_full(int fd, void *buf, size_t n, uint64_t off, const char *what, err_info *e);

/* write() all n bytes, retrying on EINTR and short writes; ERR_IO naming `what`. */
int data__write_full(int fd, const void *buf, size_t n, const char *what, err_info *e);

/* NPY: parses the header at buf[0..len) (len may exceed the header). ERR_FORMAT when the magic
 * or the header is malformed or len is shorter than the header; see data_source_open_npy(). */
int data__npy_parse(const unsigned char *buf, size_t len, data_layout *out, err_info *e);
/* NPY: from the first len >= 12 bytes (or fewer, then ERR_FORMAT), the total header length
 * (magic, version, length field and header text) into *total. */
int data__npy_header_total(const unsigned char *buf, size_t len, uint64_t *total, err_info *e);
/* NPY: opens path; data above mem_limit bytes is streamed (data_source_open_npy() passes
 * DATA_MEM_LIMIT). */
int data__npy_open_file(const char *path, uint64_t mem_limit, data_source **out, err_info *e);
/* NPY: a memory-backed source over a copy of buf[0..len), named name. */
int data__npy_open_mem(const unsigned char *buf, size_t len, const char *name, data_source **out,
                       err_info *e);

/* IDX: parses the header at buf[0..len) (len may exceed it). */
int data__idx_parse(const unsigned char *buf, size_t len, data_layout *out, err_info *e);
/* IDX: opens path; data above mem_limit bytes is streamed (gzip: through a temporary file). */
int data__idx_open_file(const char *path, uint64_t mem_limit, data_source **out, err_info *e);
/* IDX: a source over buf[0..len), raw (copied) or gzip (decompressed as from a file). */
int data__idx_open_mem(const unsigned char *buf, size_t len, const char *name, uint64_t mem_limit,
                       data_source **out, err_info *e);

/* HDF5: opens a dataset; data above mem_limit bytes (after conversion to the native type) is
 * streamed. */
int data__h5_open(const char *path, const char *dataset, uint64_t mem_limit, data_source **out,
                  err_info *e);
/* HDF5 backend (data_h5.c). */
int data__h5_read_sorted(data_source *s, const data_pair *p, int64_t n, float scale, float *dst,
                         err_info *e);
void data__h5_close(data_source *s);

#endif
