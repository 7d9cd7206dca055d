#ifndef CORNU_TRAINER_MODEL_SUMMARY_H
#define CORNU_TRAINER_MODEL_SUMMARY_H

/* The Keras 3 model.summary() table as text (keras/src/utils/summary_utils.py print_summary,
 * rendered the way the rich library draws it): "Model: "<name>"", a box-drawing table with the
 * columns "Layer (type)", "Output Shape", "Param #" (plus "Connected to" for a Functional model
 * that is not a plain chain), then "Total params", "Trainable params" and "Non-trainable params"
 * with Keras's thousands separators and sizes ("10.79 KB", 4 bytes per float32 parameter).
 *
 * Keras fits the table to the terminal: min(88 or 108, columns - 4) characters. The default
 * here is 76, what Keras prints when its output is not a terminal (80 columns assumed): logs,
 * notebooks, captured output. Sequential models list their layers without the InputLayer,
 * Functional ones every layer in config order, as Keras does. Not printed: the "Optimizer
 * params" line (Keras shows it only once an optimizer has been built in that session). Cells
 * too long for their column are word-wrapped (and over-long words folded) like rich does. */

#include "kernels/err.h"
#include "trainer/model.h"

/* The summary of m (built) as a NUL-terminated UTF-8 text ending in a newline; *out is malloc'd
 * and owned by the caller. ERR_USAGE if m is not built, ERR_NOMEM. */
int model_summary_text(const model *m, char **out, err_info *e);

/* The same for a given table width (line_length in Keras's print_summary; 0 = 76). ERR_RANGE if
 * a column would be narrower than 4 characters (Keras: "Insufficient console width"). */
int model_summary_text_ex(const model *m, int line_length, char **out, err_info *e);

#endif
