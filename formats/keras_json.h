#ifndef CORNU_FORMATS_KERAS_JSON_H
#define CORNU_FORMATS_KERAS_JSON_H

/* Keras model_config / training_config JSON <-> the model description (docs/model-config.md).
 *
 * Reads what model.to_json() prints and what the model_config / training_config attributes of a
 * Keras .h5 file hold, for every Keras generation: Keras 1.x (Sequential as a bare list, Keras 1
 * spellings such as output_dim/init/nb_filter/border_mode/subsample/dim_ordering, the Merge
 * layer, 3-element inbound nodes), standalone Keras 2.x and tf.keras 2.x (dict Sequential,
 * "Model"/"Functional", 4-element inbound nodes, initializer objects), and Keras 3 (module /
 * registered_name wrappers, DTypePolicy objects, batch_shape, {"args", "kwargs"} inbound nodes
 * holding __keras_tensor__ objects).
 *
 * Dialect: "hard_sigmoid" means clip(0.2 x + 0.5, 0, 1) (ACT_HARD_SIGMOID_K2) in Keras 1/2 and
 * tf.keras configs and clip(x / 6 + 0.5, 0, 1) (ACT_HARD_SIGMOID) in Keras 3 configs. A config
 * is Keras 3 when any object in it has a "module" or "registered_name" key or is a DTypePolicy
 * or __keras_tensor__ object; KJSON_KERAS3 / KJSON_KERAS2 override that guess (a caller that
 * knows the keras_version should pass one).
 *
 * Writes the tf.keras 2.x dialect (keras_version KJSON_KERAS_VERSION, backend "tensorflow")
 * that both tf.keras 2.x and Keras 3 load: class "Sequential" (with an explicit InputLayer
 * carrying batch_input_shape) or "Functional" (4-element inbound nodes), Keras 2 option names,
 * initializers as {"class_name": "GlorotUniform", "config": {"seed": null}}. Parsing what the
 * writer produced gives back the same model (layer configs, graph, names, training config).
 *
 * Errors name the source, the JSON path and the layer, e.g.
 *   "m.h5: model_config: config.layers[3] "lambda_1": class Lambda is not supported".
 * Codes: ERR_FORMAT (not JSON: the message gives the byte offset; not a model config),
 * ERR_CONFIG (bad or inconsistent values, graph errors, shape errors from model_build are
 * passed through as ERR_SHAPE), ERR_UNSUPPORTED (a layer class, option or training setting
 * cornu does not implement), ERR_NOMEM. Nothing here prints, is global or collective. */

#include <stdbool.h>
#include <stddef.h>

#include "kernels/err.h"
#include "trainer/model.h"

/* The keras_version the writer puts into the JSON (a tf.keras 2.x version, as in keras_h5.h). */
#define KJSON_KERAS_VERSION "2.15.0"

/* Flags for the _ex parsers. */
#define KJSON_KERAS3 0x1u /* force Keras 3 semantics (hard_sigmoid) */
#define KJSON_KERAS2 0x2u /* force Keras 1/2 semantics */
/* kjson_training_parse_ex: drop metrics cornu does not implement ("fmeasure",
 * RootMeanSquaredError, ...) instead of failing; each dropped one is reported through warn. */
#define KJSON_SKIP_UNKNOWN_METRICS 0x4u

/* Receives one message per non-fatal finding (a skipped metric). */
typedef void (*kjson_warn_fn)(void *ctx, const char *msg);

/* Parses a model_config JSON text (json[0 .. len), need not be NUL-terminated; trailing NULs
 * and white space are ignored) into a new built model (model_build()), weights zeroed. source
 * names the text in messages (a file name, "model.h5: model_config"). On success *out owns the
 * model (model_destroy()); on failure *out is untouched. */
int kjson_model_parse(const char *json, size_t len, const char *source, model **out, err_info *e);
int kjson_model_parse_ex(const char *json, size_t len, const char *source, unsigned flags,
                         model **out, err_info *e);

/* Parses a training_config JSON text into m->train (m must be built: losses, loss weights and
 * metrics given per output are matched to m's outputs by name and order). Sets
 * m->train.compiled. loss null leaves the model uncompiled. On failure m->train is unchanged. */
int kjson_training_parse(const char *json, size_t len, const char *source, model *m, err_info *e);
int kjson_training_parse_ex(const char *json, size_t len, const char *source, model *m,
                            unsigned flags, kjson_warn_fn warn, void *warn_ctx, err_info *e);

/* Writes m (built) as a model_config JSON text, NUL-terminated, into *out (malloc'd; the caller
 * frees it). ERR_UNSUPPORTED if m mixes Keras 2 and Keras 3 hard_sigmoid (one config cannot
 * say both). */
int kjson_model_write(const model *m, char **out, err_info *e);

/* Writes m->train as a training_config JSON text (tf.keras 2.x OptimizerV2 spellings; AdamW in
 * the tf.keras >= 2.11 form). ERR_USAGE if m is not compiled. */
int kjson_training_write(const model *m, char **out, err_info *e);

#endif
