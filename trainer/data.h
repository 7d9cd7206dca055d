#ifndef CORNU_TRAINER_DATA_H
#define CORNU_TRAINER_DATA_H

/* The data pipeline: on-disk arrays (IDX, NPY, HDF5) read row by row as float32, and the loader
 * that shuffles, batches and shards them across ranks. MPI-free: the loader is told its rank and
 * the number of ranks and reads only its own rows.
 *
 * Memory and streaming: a source whose data takes at most DATA_MEM_LIMIT bytes is read into
 * memory at open (one sequential read; for a gzip IDX file, its decompression). A larger source is
 * never loaded whole: NPY files, raw IDX files and contiguous HDF5 datasets of plain integer or
 * IEEE types are read with pread() at row offsets, HDF5 datasets of any other layout (chunked,
 * compressed) with one hyperslab selection per read, and a gzip IDX file (not seekable) is
 * decompressed once at open, streaming, into an unlinked temporary file from tmpfile() (in
 * P_tmpdir, normally /tmp; TMPDIR is not read because library code never calls getenv) that is
 * then read like a raw file. Rows that are consecutive on disk are read with one call.
 *
 * Conversion: every element is converted to float32 (integers exactly up to 2^24, float64 and
 * int64 rounded to nearest, float16 exactly) and then multiplied by the caller's scale in float32.
 *
 * Errors name the file (and the HDF5 dataset), and for sizes the expected and the found byte
 * counts. Sizes read from headers go through tensor_nbytes(): overflow is refused before any
 * allocation. Handles are not thread-safe (each owns a read buffer); use one per thread. */

#include <stdbool.h>
#include <stdint.h>

#include "kernels/err.h"
#include "kernels/tensor.h"

/* Data bytes up to which a source is read into memory at open (256 MiB). */
#define DATA_MEM_LIMIT ((uint64_t)256 << 20)
/* Longest path data_fashion_mnist_paths() writes, NUL included. */
#define DATA_PATH_MAX 4096

/* One on-disk array with its rows along axis 0 (rank >= 1 on disk). */
typedef struct data_source data_source;

/* Opens an IDX file (LeCun's MNIST format: 0x00 0x00 type ndims, big-endian uint32 extents, then
 * big-endian data of type u8, i8, i16, i32, f32 or f64), raw or gzip-compressed (detected by its
 * magic bytes, not by its name). Errors: ERR_IO (cannot open or read, with errno text),
 * ERR_FORMAT (bad magic, unknown type code, no dimensions, truncated header, file or gzip stream
 * size differing from the declared one: "expected N bytes, found M", corrupt gzip data),
 * ERR_UNSUPPORTED (more than TENSOR_MAX_RANK dimensions), ERR_RANGE (sizes overflow), ERR_NOMEM.
 * On success *out owns the source (free with data_source_destroy()); on failure *out is untouched
 * and e names the file. */
int data_source_open_idx(const char *path, data_source **out, err_info *e);

/* Opens a NumPy .npy file, format versions 1.0, 2.0 and 3.0, C order, descr one of b1 (bool), u1,
 * i1, u2, i2, u4, i4, u8, i8, f2, f4, f8 in little ('<'), big ('>'), native ('=') or
 * not-applicable ('|', one-byte types only) byte order, rank 1..TENSOR_MAX_RANK. The header is
 * parsed as the Python dict literal numpy writes (keys descr, fortran_order, shape, each exactly
 * once, nothing else). Errors as data_source_open_idx(), plus ERR_UNSUPPORTED for
 * fortran_order=True, structured, complex, string or object dtypes and unknown versions. */
int data_source_open_npy(const char *path, data_source **out, err_info *e);

/* Opens dataset `dataset` (absolute or relative to the root group) of an HDF5 file through the
 * serial API with default property lists (not collective; the file is opened read-only and, unless
 * rows are read through HDF5, closed again at once). Any integer or floating-point datatype,
 * either byte order, contiguous or chunked and filtered, is accepted; values convert to float32
 * exactly as from NPY. Random rows of a large chunked dataset are slow (each touches a chunk):
 * store big training sets contiguous. Errors: ERR_IO (missing file), ERR_FORMAT
 * (not HDF5, truncated or corrupt, with HDF5's own reason; no such dataset; scalar or null
 * dataspace), ERR_UNSUPPORTED (string, compound, enum, ... datatypes; rank above
 * TENSOR_MAX_RANK), ERR_RANGE. Ownership as data_source_open_idx(). */
int data_source_open_h5(const char *path, const char *dataset, data_source **out, err_info *e);

/* Opens `path` by its magic bytes: NPY, HDF5 (then `dataset` must name the dataset, else
 * ERR_USAGE) or IDX (raw or gzip). Same contract as the specific openers. */
int data_source_open(const char *path, const char *dataset, data_source **out, err_info *e);

/* Closes the file and frees s; NULL does nothing. */
void data_source_destroy(data_source *s);

/* Extent of axis 0. */
int64_t data_source_rows(const data_source *s);
/* Rank of one row (the on-disk rank minus 1; 0 for a vector of labels). */
int data_source_row_rank(const data_source *s);
/* Shape of one row (axis 0 removed), data_source_row_rank() extents; borrowed from s. */
const int64_t *data_source_row_shape(const data_source *s);
/* Elements per row (1 for rank 0 rows). */
int64_t data_source_row_len(const data_source *s);
/* The narrowest cornu dtype that holds the on-disk values exactly: uint8 -> DTYPE_U8; int8,
 * int16, uint16, int32 and bool -> DTYPE_I32; uint32, int64, uint64 -> DTYPE_I64; float16 and
 * float32 -> DTYPE_F32; float64 -> DTYPE_F64. (Reads always produce float32.) */
dtype data_source_dtype(const data_source *s);
/* "path" or "path:/dataset", for messages; borrowed from s. */
const char *data_source_name(const data_source *s);

/* Reads rows[0..n) (any order, duplicates allowed) converted to float32 and multiplied by scale
 * into dst, which holds n * data_source_row_len(s) floats: row rows[i] goes to
 * dst[i * row_len .. (i + 1) * row_len). Rows are sorted internally (in blocks of
 * DATA_READ_BLOCK) and runs of consecutive rows are read with one call. Never allocates.
 * Errors: ERR_RANGE (a row outside [0, rows), naming it), ERR_IO (read failure; file changed
 * since open), ERR_FORMAT (HDF5 read failure). On error dst is partly written. */
int data_source_read(data_source *s, const int64_t *rows, int64_t n, float scale, float *dst,
                     err_info *e);
#define DATA_READ_BLOCK 4096

/* The loader configuration. Rows [begin, end) of the sources take part (e.g. end < rows leaves a
 * Keras-style validation split at the end). batch >= 1 is the GLOBAL batch size. */
typedef struct data_loader_config {
    int64_t begin, end, batch;
    bool shuffle;        /* false: rows in order begin, begin + 1, ... */
    bool drop_remainder; /* drop the last global batch when it has fewer than `batch` rows */
    uint64_t seed;
    int rank, nranks; /* 0 <= rank < nranks */
} data_loader_config;

/* Defaults: the whole of nothing (begin = end = 0), batch 32, shuffle, keep the remainder,
 * seed 0, rank 0 of 1. Set end (and begin) before use. */
data_loader_config data_loader_config_default(void);

typedef struct data_loader data_loader;

/* Creates a loader over inputs x[0..nx) (xscale[i] multiplies input i; xscale NULL means 1 for
 * all) and targets y[0..ny) (never scaled); nx + ny >= 1. All sources must have the same row
 * count (ERR_SHAPE naming both sources and both counts). The loader borrows the sources: they
 * must outlive it. Errors: ERR_USAGE (NULL source, nx/ny negative, rank outside [0, nranks),
 * batch < 1), ERR_RANGE (begin/end outside [0, rows] or begin > end), ERR_NOMEM.
 *
 * Order: epoch e uses one global permutation of [begin, end), a pure function of (seed, e) (and
 * of the range) drawn with Fisher-Yates from rng stream rng_mix(DATA_LOADER_STREAM, e); it does
 * not depend on rank or nranks. The permutation is cut into global batches of `batch` rows (the
 * last one partial unless drop_remainder); rank r takes the contiguous slice
 * [r * q + min(r, m), ... + q + (r < m)) of a global batch of g rows, q = g / nranks,
 * m = g % nranks, so slices differ by at most one row and a rank may get none.
 *
 * Every buffer (the permutation: 8 bytes per row of the range; one sort buffer) is allocated
 * here, never in data_loader_next(). Epoch 0 is prepared: next() may be called at once. */
int data_loader_create(data_source *const *x, const float *xscale, int nx, data_source *const *y,
                       int ny, const data_loader_config *c, data_loader **out, err_info *e);
#define DATA_LOADER_STREAM UINT64_C(0x64617461) /* "data" */

/* Frees l (not the sources); NULL does nothing. */
void data_loader_destroy(data_loader *l);

/* Global batches per epoch: ceil(n / batch), or floor with drop_remainder (n = end - begin). */
int64_t data_loader_steps(const data_loader *l);

/* Most rows this rank gets in one step: ceil(batch / nranks) (size destination buffers so). */
int64_t data_loader_max_local_rows(const data_loader *l);

/* Starts epoch `epoch` >= 0 (ERR_RANGE otherwise): draws its permutation and rewinds to its
 * first batch. Cost O(end - begin); no allocation. */
int data_loader_epoch(data_loader *l, int64_t epoch, err_info *e);

/* Reads this rank's rows of the next global batch: input i into xdst[i] ([local_rows,
 * row_len of x[i]], scaled) and target j into ydst[j] ([local_rows, row_len of y[j]]), rows in
 * permutation order. *global_rows = rows of the whole global batch (for averaging gradients over
 * ranks), *local_rows = this rank's (may be 0; then nothing is read). When the epoch is over it
 * sets *done = true, both counts to 0 and returns ERR_OK without reading. No allocation; the only
 * work besides reading is sorting this rank's row ids. Errors are the sources' read errors,
 * wrapped with "x[i]"/"y[j]"; the step is then consumed. */
int data_loader_next(data_loader *l, float *const *xdst, float *const *ydst, int64_t *global_rows,
                     int64_t *local_rows, bool *done, err_info *e);

/* Writes a float32 C-order NPY file (format version 1.0, descr '<f4', data aligned to 64 bytes as
 * numpy writes it) of shape[0..rank), 0 <= rank <= TENSOR_MAX_RANK, from data (row-major,
 * shape-product floats; rank 0 writes one scalar, which data_source_open_npy() refuses).
 * Atomic: writes "<path>.tmp.<pid>", fsyncs it and renames it over path; on any error the
 * temporary file is removed and path is untouched. Errors: ERR_USAGE (bad rank, path too long),
 * ERR_RANGE (size overflow), ERR_IO (naming the file and errno text). */
int data_npy_write(const char *path, int rank, const int64_t *shape, const float *data,
                   err_info *e);

/* Default location of Debian's dataset-fashion-mnist package. */
#define DATA_FASHION_MNIST_DIR "/usr/share/datasets/fashion-mnist"

/* Fills the Fashion-MNIST paths under dir (NULL: DATA_FASHION_MNIST_DIR):
 * {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz, or the same name without ".gz" when only the
 * uncompressed file exists. Checks each is readable: ERR_IO naming the missing file and
 * "apt-get install dataset-fashion-mnist"; ERR_USAGE if a path would not fit. Outputs are written
 * only on success. */
int data_fashion_mnist_paths(const char *dir, char train_x[static DATA_PATH_MAX],
                             char train_y[static DATA_PATH_MAX], char test_x[static DATA_PATH_MAX],
                             char test_y[static DATA_PATH_MAX], err_info *e);

#endif
