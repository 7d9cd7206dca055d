#ifndef CORNU_FORMATS_KERAS_H5_IMPL_H
#define CORNU_FORMATS_KERAS_H5_IMPL_H

/* Internals shared by the keras_h5*.c files (not an API). Every function here expects to run
 * inside H5E_BEGIN_TRY (the public entry points set it up), so HDF5 never prints. Messages name
 * the HDF5 object; the public entry points prepend the file name. */

#include <hdf5.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "formats/keras_h5.h"
#include "kernels/err.h"
#include "kernels/tensor.h"
#include "trainer/model.h"

/* Keras's HDF5_OBJECT_HEADER_LIMIT: a list attribute larger than this is split into
 * name0, name1, ... (keras/src/legacy/saving/legacy_h5_format.py). */
#define KH5__ATTR_LIMIT 64512

#define KH5__PATH_MAX 1024

/* A list of owned strings. */
typedef struct kh5__strs {
    int n;
    char **s;
} kh5__strs;

void kh5__strs_free(kh5__strs *l);
int kh5__strs_push(kh5__strs *l, const char *s, size_t len, err_info *e);

/* Appends a formatted warning (w may be NULL). */
void kh5__warn(kh5_warnings *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The most specific message on HDF5's current error stack ("" if none), for error texts. */
void kh5__h5_reason(char *buf, size_t len);

/* Opens an existing file read-only. ERR_IO if it cannot be accessed, ERR_FORMAT (with HDF5's
 * reason) if it is not a readable HDF5 file. */
int kh5__open_path(const char *path, hid_t *out, err_info *e);
/* Opens an in-memory image read-only (core driver, the image is copied). */
int kh5__open_mem(const void *buf, size_t len, hid_t *out, err_info *e);

/* Kind of an open file (see kh5_probe); ERR_FORMAT if it is no Keras file. */
int kh5__probe_file(hid_t file, kh5_kind *out, err_info *e);

/* Checks the version 1 object header of obj (libhdf5 1.10 trusts the sizes inside it): every
 * message inside its chunk, continuation chunks inside the file, and every attribute message's
 * name, datatype, dataspace and value inside the message. ERR_FORMAT naming where if not (e may
 * be NULL); ERR_OK for headers it cannot check (version 2, other file drivers). */
int kh5__ohdr_check(hid_t obj, const char *where, err_info *e);

/* 1 if obj has attribute name, 0 if not, negative on error (including a corrupt object header,
 * see kh5__ohdr_check). */
int kh5__attr_exists(hid_t obj, const char *name);
/* 1 if a link called path exists below loc (each component checked), 0 if not. */
int kh5__link_exists(hid_t loc, const char *path);

/* Reads attribute name of obj as strings: fixed- or variable-length, ASCII or UTF-8, scalar or
 * array (flattened). A numeric attribute with no elements (Keras's empty float64 list) gives an
 * empty list; any other non-string attribute is ERR_FORMAT. where names obj in messages. */
int kh5__attr_read_strs(hid_t obj, const char *where, const char *name, kh5__strs *out,
                        err_info *e);
/* A list attribute as Keras's load_attributes_from_hdf5_group reads it: name, else the chunks
 * name0, name1, ... concatenated; absent means empty. *present tells whether any was found. */
int kh5__attr_read_list(hid_t obj, const char *where, const char *name, kh5__strs *out,
                        bool *present, err_info *e);
/* Exactly one string (scalar or one-element array); *out is malloc'd and NUL-terminated, *len
 * its length. */
int kh5__attr_read_str(hid_t obj, const char *where, const char *name, char **out, size_t *len,
                       err_info *e);

/* Writes a scalar variable-length string attribute (UTF-8 or ASCII character set). */
int kh5__attr_write_vlen(hid_t obj, const char *where, const char *name, const char *s, bool utf8,
                         err_info *e);
/* Writes a list attribute like Keras's save_attributes_to_hdf5_group: an array of fixed-length
 * NULLPAD ASCII strings sized to the longest entry (no terminator), split into name0, name1, ...
 * when it exceeds KH5__ATTR_LIMIT bytes; an empty list is an empty float64 array. */
int kh5__attr_write_list(hid_t obj, const char *where, const char *name, int n,
                         const char *const *s, err_info *e);

/* A dataset's float shape: opens path below loc, requires a float dtype and a simple or scalar
 * dataspace of rank <= TENSOR_MAX_RANK. */
int kh5__dset_shape(hid_t loc, const char *path, int *rank, int64_t *shape, bool *is_float,
                    err_info *e);
/* Reads a whole dataset converted to float32 into buf (count elements, checked). */
int kh5__dset_read_f32(hid_t loc, const char *path, float *buf, size_t count, err_info *e);
/* Reads a scalar (any int or float dtype) as double. */
int kh5__dset_read_scalar(hid_t loc, const char *path, double *out, err_info *e);
/* Creates path below loc (intermediate groups as needed) holding data with this shape. */
int kh5__dset_write(hid_t loc, const char *where, const char *path, hid_t mem_type, int rank,
                    const int64_t *shape, const void *data, err_info *e);

/* Raw data of float32 datasets that libhdf5 only allocated: written by kh5__raw_flush() into
 * the closed file at the offsets libhdf5 chose (docs/formats/keras-h5.md, "Writing speed"). The
 * spans borrow the data, which must stay valid until the flush. */
typedef struct kh5__raw_span {
    uint64_t offset;  /* byte offset in the file */
    const void *data; /* borrowed */
    size_t bytes;
    char *name; /* owned: the dataset's path, for messages */
} kh5__raw_span;

typedef struct kh5__raw {
    int n, cap;
    kh5__raw_span *s;
} kh5__raw;

void kh5__raw_free(kh5__raw *r);
/* Like kh5__dset_write, but when raw is not NULL, mem_type is the native float and that is
 * IEEE little-endian float32 (the file type), and the data is large, the dataset is created
 * contiguous with its space allocated at once and its bytes are queued in raw instead of written
 * (which kh5__raw_flush must do after H5Fclose). Otherwise it is kh5__dset_write. */
int kh5__dset_write_raw(hid_t loc, const char *where, const char *path, hid_t mem_type, int rank,
                        const int64_t *shape, const void *data, kh5__raw *raw, err_info *e);
/* Writes the queued spans into the file at path (closed by libhdf5), in pieces of
 * KH5__RAW_PIECE bytes. ERR_IO naming the dataset on failure. */
#define KH5__RAW_PIECE ((size_t)256 * 1024)
int kh5__raw_flush(const char *path, const kh5__raw *r, err_info *e);

/* ---- reading weights (keras_h5_read.c) ---- */

/* One saved tensor of a layer, in the order of the layer's weight_names. */
typedef struct kh5__src {
    char *name; /* the entry of weight_names */
    char *path; /* absolute HDF5 path of its dataset */
    int rank;
    int64_t shape[TENSOR_MAX_RANK];
    bool trainable; /* feeds a trainable weight of the model */
} kh5__src;

/* How one model weight is made from saved tensors, in the order Keras's
 * preprocess_weights_for_loading applies the steps: concatenate parts along the last axis
 * (Keras 1 RNN gates), transpose by t1 (Keras 1 channels_first / legacy Conv1D layouts), drop
 * axis 1 (Keras 1 Conv1D), flip every axis but the last two (Theano kernels), transpose by
 * (3, 2, 0, 1) (a kernel whose shape still differs). */
typedef struct kh5__recipe {
    int weight; /* index into m->weights */
    int n_parts;
    int parts[4]; /* indices into the layer's sources */
    bool has_t1;
    int t1[4];
    bool drop1;
    bool flip;
    bool has_t2;
} kh5__recipe;

typedef struct kh5__lplan {
    int layer;   /* index into m->layers */
    char *group; /* saved layer name (group below the weights group) */
    int n_src;
    kh5__src *src;
    int n_rec;
    kh5__recipe *rec;
} kh5__lplan;

typedef struct kh5__plan {
    int n;
    kh5__lplan *l;
    bool keras1; /* no keras_version on the weights group: Keras treats it as Keras 1 */
    bool theano; /* convolution kernels saved by Theano */
} kh5__plan;

void kh5__plan_free(kh5__plan *p);
/* Matches the weights group (path gpath, "" for the root) to m and checks every count and shape;
 * nothing is read yet. */
int kh5__plan_weights(hid_t file, const char *gpath, const model *m, kh5__plan *p, kh5_warnings *w,
                      err_info *e);
/* Applies a recipe to float buffers: parts[i] holds the saved tensor of src[rec->parts[i]]; out
 * receives the model tensor. tmp has room for the model tensor. */
void kh5__recipe_apply(const kh5__lplan *lp, const kh5__recipe *r, const float *const *parts,
                       float *tmp, float *out);
/* Runs the plan: reads every saved tensor into m->params (reporting non-finite values as
 * warnings). */
int kh5__load_weights(hid_t file, const kh5__plan *p, model *m, kh5_warnings *w, err_info *e);
/* Reads a plan's recipe into dst using dataset paths from path_of(src index) (weights or
 * optimizer slots). */
int kh5__load_recipe(hid_t file, const kh5__lplan *lp, const kh5__recipe *r, const model *m,
                     const char *const *paths, float *dst, err_info *e);

/* ---- optimizer state (keras_h5_opt.c) ---- */

/* Restores /optimizer_weights into m->opt (m->train already parsed from training_config).
 * keras_version is the root attribute (NULL if absent); training_json the raw training_config. */
int kh5__read_optimizer(hid_t file, const kh5__plan *p, model *m, const char *keras_version,
                        const char *training_json, size_t training_len, kh5_warnings *w,
                        err_info *e);
/* Writes /optimizer_weights for m in the layout tf.keras 2.x loads for the optimizer that
 * training_json (the training_config written with it) describes. Slots taken from m->opt go
 * through raw (see kh5__dset_write_raw; raw may be NULL). */
int kh5__write_optimizer(hid_t file, const model *m, const char *training_json, size_t training_len,
                         kh5__raw *raw, err_info *e);

/* ---- names (keras_h5_write.c) ---- */

/* The tf.keras variable name of weight wi: "<layer>/<short>:0", with the RNN cell scope
 * ("lstm/lstm_cell/kernel:0") like tf.keras 2.x. */
void kh5__var_name(const model *m, int wi, char *buf, size_t len);

#endif
