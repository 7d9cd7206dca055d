#ifndef CORNU_FORMATS_KERAS_H5_H
#define CORNU_FORMATS_KERAS_H5_H

/* Keras legacy HDF5 files <-> the model description (docs/formats/keras-h5.md).
 *
 * Reads what every Keras generation wrote with model.save('x.h5') (a "full" file: model_config,
 * training_config, model_weights, optimizer_weights) and model.save_weights('x.h5') (a
 * "weights-only" file: the layer groups at the root): Keras 1.x, standalone Keras 2.0-2.3,
 * tf.keras 2.x and Keras 3's legacy h5. Weights are matched to the model's layers by order, as
 * Keras does, with Keras's Keras-1 / Theano conversions. Optimizer state is mapped into
 * m->opt (iterations, slots, scalars) for every optimizer_weights layout listed in the doc.
 *
 * Writes the tf.keras 2.x dialect (keras_version KH5_KERAS_VERSION, backend "tensorflow")
 * that tf.keras 2.x and Keras 3 load; optimizer state in the layout of the optimizer class
 * tf.keras builds from the training_config written with it: OptimizerV2 (iter, then one block
 * per slot kind), or tf.keras >= 2.11's when that config says "is_legacy_optimizer": false
 * (AdamW). Keras 3 loads the model and the iteration count, then starts a fresh optimizer.
 *
 * Keras 3 native weights (*.weights.h5) and .keras zip archives are recognised and refused.
 *
 * Errors name the file, the HDF5 object and the layer, e.g.
 *   "m.h5: /model_weights/dense/dense/kernel:0: shape [10, 4], expected [4, 10] (layer "dense")".
 * Codes: ERR_IO (cannot read/write the file system), ERR_FORMAT (not HDF5, truncated or
 * corrupt, not a Keras file, missing group/attribute/dataset, attribute of the wrong type,
 * a weights-only file where a model is expected), ERR_SHAPE (layer or weight count or shape
 * disagrees with the model), ERR_UNSUPPORTED (Keras 3 native formats, layouts we do not map),
 * ERR_RANGE (sizes that overflow), ERR_CONFIG and others as returned by the JSON config parser.
 * No function here prints; HDF5's own error printing is silenced inside every call. None is
 * collective or thread-safe (HDF5 is not). */

#include <stdbool.h>
#include <stddef.h>

#include "kernels/err.h"
#include "trainer/model.h"

/* The keras_version attribute cornu writes (a tf.keras 2.x version: both tf.keras 2.x and
 * Keras 3 then read the file as a tf.keras 2.x file). */
#define KH5_KERAS_VERSION "2.15.0"
#define KH5_BACKEND "tensorflow"

typedef enum kh5_kind {
    KH5_FULL,           /* model.save('x.h5'): root attribute model_config */
    KH5_WEIGHTS,        /* model.save_weights('x.h5'): root attribute layer_names[0] */
    KH5_KERAS3_WEIGHTS, /* Keras 3 native *.weights.h5 (groups layers/ and vars/), not read */
    KH5_KERAS_ARCHIVE,  /* Keras 3 .keras zip archive, not read */
    KH5_KIND_COUNT
} kh5_kind;

/* Static description, e.g. "Keras full-model .h5". */
const char *kh5_kind_name(kh5_kind k);

/* Non-fatal findings of a read (NaN or Inf weights, saved layer names that differ from the
 * model's, ...). Fixed size, no allocation: the first KH5_WARN_MAX messages are kept, count
 * says how many there were. Zero it (or pass NULL to ignore warnings). */
#define KH5_WARN_MAX 16
typedef struct kh5_warnings {
    int count;
    char msg[KH5_WARN_MAX][ERR_MSG_MAX];
} kh5_warnings;

/* What kind of Keras file path is: .keras archives are detected by their zip magic, HDF5 files
 * by their attributes and groups. ERR_FORMAT if it is neither (or not HDF5 at all), ERR_IO if
 * it cannot be read. Not collective. */
int kh5_probe(const char *path, kh5_kind *out, err_info *e);

/* Reads a full-model file: model_config (-> a built model), model_weights (by topology, with
 * Keras's conversions), training_config (-> m->train) and optimizer_weights (-> m->opt). On
 * success *out owns the new model (model_destroy()); on failure *out is untouched. A
 * weights-only file is ERR_FORMAT (it holds no architecture: use kh5_read_weights with a model
 * built from a config). Warnings go to w when it is not NULL (w is reset first). */
int kh5_read(const char *path, model **out, err_info *e);
int kh5_read_ex(const char *path, model **out, kh5_warnings *w, err_info *e);

/* kh5_read_ex on an in-memory image of a file (buf, len), e.g. for fuzzing; source names it in
 * messages. buf is only read. */
int kh5_read_mem(const void *buf, size_t len, const char *source, model **out, kh5_warnings *w,
                 err_info *e);

/* Loads the weights of a weights-only file (or of a full file's model_weights group, as Keras's
 * load_weights does) into the built model m, by topology like Keras: the saved layers with
 * weights are matched in order to m's layers with weights, and each layer's weights in order.
 * Counts, shapes and dtypes are checked for every layer before any value is written, so on a
 * format error m is unchanged; only an I/O failure while reading the values can leave m's
 * weights partly overwritten. The optimizer state of m is not touched. */
int kh5_read_weights(const char *path, model *m, err_info *e);
int kh5_read_weights_ex(const char *path, model *m, kh5_warnings *w, err_info *e);

/* Writes m (built) as a full-model file in the tf.keras 2.x dialect: model_config,
 * training_config and optimizer_weights (the latter two only when include_optimizer and m is
 * compiled), model_weights. Atomic: the file is written as PATH.tmp.<pid> and renamed over
 * PATH; on failure nothing is left behind and PATH is untouched. */
int kh5_write(const char *path, const model *m, bool include_optimizer, err_info *e);

/* Writes m's weights as a weights-only file (model.save_weights layout), atomically. */
int kh5_write_weights(const char *path, const model *m, err_info *e);

#endif
