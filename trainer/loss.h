#ifndef CORNU_TRAINER_LOSS_H
#define CORNU_TRAINER_LOSS_H

/* Losses and metrics with Keras 3 semantics (keras/src/losses, keras/src/metrics, TensorFlow
 * backend formulas). Compute only: no MPI, no allocation, nothing global.
 *
 * Layout: pred and y are [rows, row_len] row-major float32, where a "row" is one sample (or one
 * sample-timestep for sequence outputs: the caller flattens every axis but the last into rows).
 * For the sparse categorical crossentropy and the sparse categorical accuracy y is [rows] and
 * holds class ids stored as float.
 *
 * Reduction: Keras "sum_over_batch_size" divides the summed per-sample losses by the number of
 * samples in the global batch. loss_compute() returns the SUM over its rows (so that ranks can
 * add their sums) and, if asked, the gradient of sum / denom, where denom is the number of rows
 * in the GLOBAL batch (correct for uneven shards). */

#include <stdint.h>

#include "kernels/err.h"
#include "trainer/model.h"

/* Probability clipping bound of Keras (backend.epsilon(), as float32). */
#define LOSS_EPSILON 1e-7f

/* Per-sample loss (one value per row) summed over rows into *sum (double accumulation), and if
 * dpred != NULL the gradient d(sum / denom) / dpred into dpred[rows * row_len] (overwritten).
 *
 * Formulas per row (C = row_len, ls = label_smoothing):
 *  - LOSS_SPARSE_CCE, from_logits: logsumexp(z) - z[y]. Otherwise (TF backend) the probabilities
 *    are clipped to [eps, 1 - eps] and renormalised: -log(c[y] / sum(c)).
 *  - LOSS_CCE: labels smoothed y' = y (1 - ls) + ls / C; from_logits: -sum y' log_softmax(z);
 *    otherwise q = p / sum(p), clipped to [eps, 1 - eps], -sum y' log(q).
 *  - LOSS_BCE: y' = y (1 - ls) + ls / 2; from_logits: the stable max(z, 0) - z y' +
 *    log1p(exp(-|z|)); otherwise c = clip(p, eps, 1 - eps), -(y' log c + (1 - y') log(1 - c));
 *    averaged over the row.
 *  - LOSS_MSE, LOSS_MAE: mean over the row of (p - y)^2, |p - y|.
 *  - LOSS_HUBER: mean over the row of 0.5 e^2 if |e| <= delta else delta (|e| - 0.5 delta).
 * Gradients through a clip are zero where the clip is active (like tf.clip_by_value); |e| has
 * derivative sign(e) (0 at 0).
 *
 * Errors (nothing is written on failure): ERR_CONFIG for LOSS_NONE or an unknown kind;
 * ERR_USAGE if rows < 0, row_len < 1 or (dpred != NULL and denom <= 0); ERR_RANGE for a sparse
 * label that is not an integer in [0, row_len), naming the row and the value. */
int loss_compute(const model_loss *l, const float *pred, const float *y, int64_t rows,
                 int64_t row_len, double denom, double *sum, float *dpred, err_info *e);

/* Keras loss identifier -> loss with Keras defaults (from_logits false, delta 1, no smoothing).
 * Accepts the function names ("sparse_categorical_crossentropy", "categorical_crossentropy",
 * "binary_crossentropy", "mean_squared_error", "mean_absolute_error", "huber", tf.keras 2
 * "huber_loss"), the aliases "mse", "MSE", "mae", "MAE", "bce", "BCE", and the class names
 * ("SparseCategoricalCrossentropy", "CategoricalCrossentropy", "BinaryCrossentropy",
 * "MeanSquaredError", "MeanAbsoluteError", "Huber"). ERR_UNSUPPORTED naming the identifier
 * otherwise (including the shape-dependent "crossentropy"/"ce"). */
int loss_from_name(const char *name, model_loss *out, err_info *e);

/* What Keras 3 compile() turns "accuracy"/"acc" into (trainers/compile_utils.py, which decides
 * by shapes): binary_accuracy when the output has one unit (row_len == 1), else
 * sparse_categorical_accuracy when the targets are class ids (l is the sparse categorical
 * crossentropy), else categorical_accuracy (also for multi-label binary crossentropy, as in
 * Keras 3). Every other kind is returned unchanged. l may be NULL (no loss: not sparse). */
metric_kind metric_resolve(metric_kind k, const model_loss *l, int64_t row_len);

/* Adds the metric's per-sample values of these rows to *sum and the number of samples to *count
 * (the Keras MeanMetricWrapper: result = sum / count; ranks add sums and counts). Per row:
 * sparse accuracy argmax(pred) == y (first maximum wins); categorical argmax(pred) ==
 * argmax(y); binary the mean over the row of (pred > 0.5) == y; mse/mae the mean over the row.
 * k must be resolved (not METRIC_ACCURACY: CHECK). */
void metric_accumulate(metric_kind k, const float *pred, const float *y, int64_t rows,
                       int64_t row_len, double *sum, double *count);

/* Keras metric identifier -> kind: "accuracy", "acc" (METRIC_ACCURACY, resolve it with
 * metric_resolve), "sparse_categorical_accuracy", "categorical_accuracy", "binary_accuracy",
 * "mse", "MSE", "mean_squared_error", "mae", "MAE", "mean_absolute_error" and the class names
 * ("SparseCategoricalAccuracy", "CategoricalAccuracy", "BinaryAccuracy", "MeanSquaredError",
 * "MeanAbsoluteError"). ERR_UNSUPPORTED naming the identifier otherwise. */
int metric_from_name(const char *name, metric_kind *out, err_info *e);

/* The name Keras prints in the progress line for a metric compiled under this kind: Keras 3
 * uses the identifier the user gave, so pass the UNRESOLVED kind (METRIC_ACCURACY prints
 * "accuracy"); "sparse_categorical_accuracy", "categorical_accuracy", "binary_accuracy", "mse",
 * "mae" for the others. Static string. */
const char *metric_display_name(metric_kind k);

#endif
