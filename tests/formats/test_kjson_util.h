#ifndef CORNU_TESTS_FORMATS_TEST_KJSON_UTIL_H
#define CORNU_TESTS_FORMATS_TEST_KJSON_UTIL_H

/* Helpers for the Keras JSON config tests: field-by-field model comparison (configs, graph,
 * weights, training config) and file reading. */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/keras_json.h"
#include "test_util.h"
#include "trainer/model.h"

static inline char *kjt_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (buf != NULL && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf != NULL) {
        buf[n] = '\0';
        if (len != NULL)
            *len = (size_t)n;
    }
    return buf;
}

/* Writes the first difference into why (if any) and returns 0; 1 when equal. */
#define KJT_DIFF(cond, ...)                                                                        \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            snprintf(why, why_len, __VA_ARGS__);                                                   \
            return 0;                                                                              \
        }                                                                                          \
    } while (0)

static inline int kjt_init_eq(const model_init *a, const model_init *b, int names, char *why,
                              size_t why_len, const char *what)
{
    KJT_DIFF(a->kind == b->kind, "%s: kind %d vs %d", what, a->kind, b->kind);
    KJT_DIFF(a->a == b->a && a->b == b->b, "%s: params %g,%g vs %g,%g", what, a->a, a->b, b->a,
             b->b);
    if (a->kind == INIT_VARIANCE_SCALING)
        KJT_DIFF(a->mode == b->mode && a->dist == b->dist, "%s: mode/dist", what);
    KJT_DIFF(a->has_seed == b->has_seed && (!a->has_seed || a->seed == b->seed), "%s: seed", what);
    if (names)
        KJT_DIFF(strcmp(a->keras_name, b->keras_name) == 0, "%s: name %s vs %s", what,
                 a->keras_name, b->keras_name);
    return 1;
}

static inline int kjt_reg_eq(const model_reg *a, const model_reg *b)
{
    return a->l1 == b->l1 && a->l2 == b->l2;
}

static inline int kjt_cfg_eq(const layer_config *a, const layer_config *b, int names, char *why,
                             size_t why_len)
{
#define F(f) KJT_DIFF(a->f == b->f, "config field " #f " differs")
    F(units);
    F(filters);
    for (int i = 0; i < 2; i++) {
        F(kernel_size[i]);
        F(strides[i]);
        F(dilation[i]);
        F(pool_size[i]);
        F(pool_strides[i]);
    }
    F(padding);
    for (int i = 0; i < 4; i++)
        F(zero_pad[i]);
    F(channels_first);
    F(use_bias);
    F(activation);
    F(recurrent_activation);
    F(axis);
    F(momentum);
    F(epsilon);
    F(center);
    F(scale);
    F(rate);
    F(dropout_seed);
    F(target_rank);
    for (int i = 0; i < a->target_rank && i < TENSOR_MAX_RANK; i++)
        F(target_shape[i]);
    F(alpha);
    F(max_value);
    F(negative_slope);
    F(threshold);
    F(input_dim);
    F(output_dim);
    F(mask_zero);
    F(return_sequences);
    F(return_state);
    F(go_backwards);
    F(reset_after);
    F(stateful);
    F(dropout);
    F(recurrent_dropout);
    F(unit_forget_bias);
#undef F
    KJT_DIFF(kjt_reg_eq(&a->kernel_reg, &b->kernel_reg) && kjt_reg_eq(&a->bias_reg, &b->bias_reg) &&
                 kjt_reg_eq(&a->recurrent_reg, &b->recurrent_reg) &&
                 kjt_reg_eq(&a->embeddings_reg, &b->embeddings_reg) &&
                 kjt_reg_eq(&a->activity_reg, &b->activity_reg),
             "regularizers differ");
    const model_init *ia[] = {&a->kernel_init,      &a->bias_init,           &a->recurrent_init,
                              &a->embeddings_init,  &a->gamma_init,          &a->beta_init,
                              &a->moving_mean_init, &a->moving_variance_init};
    const model_init *ib[] = {&b->kernel_init,      &b->bias_init,           &b->recurrent_init,
                              &b->embeddings_init,  &b->gamma_init,          &b->beta_init,
                              &b->moving_mean_init, &b->moving_variance_init};
    static const char *const nm[] = {"kernel_init",      "bias_init",           "recurrent_init",
                                     "embeddings_init",  "gamma_init",          "beta_init",
                                     "moving_mean_init", "moving_variance_init"};
    for (int i = 0; i < 8; i++)
        if (!kjt_init_eq(ia[i], ib[i], names, why, why_len, nm[i]))
            return 0;
    return 1;
}

/* The layers a kind actually reads, so that unused fields of a parsed config (left at their
 * defaults) do not count. Here every field is compared: both models come from the same code. */
static inline int kjt_model_eq(const model *a, const model *b, int names, char *why, size_t why_len)
{
    KJT_DIFF(strcmp(a->name, b->name) == 0, "model name %s vs %s", a->name, b->name);
    KJT_DIFF(a->sequential == b->sequential, "sequential %d vs %d", a->sequential, b->sequential);
    KJT_DIFF(a->n_layers == b->n_layers, "%d vs %d layers", a->n_layers, b->n_layers);
    for (int i = 0; i < a->n_layers; i++) {
        const model_layer *x = &a->layers[i], *y = &b->layers[i];
        KJT_DIFF(x->kind == y->kind && strcmp(x->name, y->name) == 0, "layer %d: %s vs %s", i,
                 x->name, y->name);
        KJT_DIFF(x->trainable == y->trainable, "layer %s: trainable", x->name);
        char sub[256];
        if (!kjt_cfg_eq(&x->cfg, &y->cfg, names, sub, sizeof sub)) {
            snprintf(why, why_len, "layer %s: %s", x->name, sub);
            return 0;
        }
        if (x->kind == LAYER_INPUT) {
            KJT_DIFF(x->input_dtype == y->input_dtype, "layer %s: input dtype", x->name);
            KJT_DIFF(x->input_shape.rank == y->input_shape.rank, "layer %s: input rank", x->name);
            for (int d = 0; d < x->input_shape.rank; d++)
                KJT_DIFF(x->input_shape.dims[d] == y->input_shape.dims[d], "layer %s: input dim %d",
                         x->name, d);
        }
        KJT_DIFF(x->n_nodes == y->n_nodes, "layer %s: %d vs %d nodes", x->name, x->n_nodes,
                 y->n_nodes);
        for (int j = 0; j < x->n_nodes; j++) {
            KJT_DIFF(x->nodes[j].n_in == y->nodes[j].n_in, "layer %s node %d: inputs", x->name, j);
            for (int k = 0; k < x->nodes[j].n_in; k++)
                KJT_DIFF(memcmp(&x->nodes[j].in[k], &y->nodes[j].in[k], sizeof(model_ref)) == 0,
                         "layer %s node %d input %d", x->name, j, k);
            KJT_DIFF(x->nodes[j].n_out == y->nodes[j].n_out, "layer %s node %d: outputs", x->name,
                     j);
            for (int k = 0; k < x->nodes[j].n_out; k++) {
                KJT_DIFF(x->nodes[j].out[k].rank == y->nodes[j].out[k].rank,
                         "layer %s node %d out %d rank", x->name, j, k);
                for (int d = 0; d < x->nodes[j].out[k].rank; d++)
                    KJT_DIFF(x->nodes[j].out[k].dims[d] == y->nodes[j].out[k].dims[d],
                             "layer %s node %d out %d dim %d", x->name, j, k, d);
            }
        }
    }
    KJT_DIFF(a->n_inputs == b->n_inputs && a->n_outputs == b->n_outputs, "input/output counts");
    for (int i = 0; i < a->n_inputs; i++)
        KJT_DIFF(memcmp(&a->inputs[i], &b->inputs[i], sizeof(model_ref)) == 0, "input %d", i);
    for (int i = 0; i < a->n_outputs; i++)
        KJT_DIFF(memcmp(&a->outputs[i], &b->outputs[i], sizeof(model_ref)) == 0, "output %d", i);
    KJT_DIFF(a->n_weights == b->n_weights && a->n_params == b->n_params &&
                 a->n_trainable == b->n_trainable,
             "weights %d/%zu/%zu vs %d/%zu/%zu", a->n_weights, a->n_params, a->n_trainable,
             b->n_weights, b->n_params, b->n_trainable);
    for (int i = 0; i < a->n_weights; i++) {
        const model_weight *x = &a->weights[i], *y = &b->weights[i];
        KJT_DIFF(strcmp(x->name, y->name) == 0 && x->offset == y->offset &&
                     x->trainable == y->trainable && x->rank == y->rank,
                 "weight %s vs %s", x->name, y->name);
    }
    return 1;
}

static inline int kjt_train_eq(const model_train_config *a, const model_train_config *b, char *why,
                               size_t why_len)
{
    KJT_DIFF(a->compiled == b->compiled, "compiled");
    KJT_DIFF(a->n_losses == b->n_losses, "%d vs %d losses", a->n_losses, b->n_losses);
    for (int i = 0; i < a->n_losses; i++) {
        const model_loss *x = &a->losses[i], *y = &b->losses[i];
        KJT_DIFF(x->kind == y->kind && x->from_logits == y->from_logits && x->delta == y->delta &&
                     x->label_smoothing == y->label_smoothing,
                 "loss %d", i);
        KJT_DIFF(a->loss_weights[i] == b->loss_weights[i], "loss weight %d", i);
    }
    KJT_DIFF(a->n_metrics == b->n_metrics, "%d vs %d metrics", a->n_metrics, b->n_metrics);
    for (int i = 0; i < a->n_metrics; i++)
        KJT_DIFF(a->metrics[i] == b->metrics[i], "metric %d", i);
    const model_optim_config *x = &a->optim, *y = &b->optim;
#define F(f) KJT_DIFF(x->f == y->f, "optimizer field " #f " differs")
    F(kind);
    F(lr.kind);
    F(lr.initial);
    F(lr.decay_steps);
    F(lr.decay_rate);
    F(lr.alpha);
    F(lr.staircase);
    F(lr.n_bounds);
    for (int i = 0; i < x->lr.n_bounds; i++) {
        F(lr.bounds[i]);
        F(lr.values[i + 1]);
    }
    F(momentum);
    F(nesterov);
    F(beta_1);
    F(beta_2);
    F(epsilon);
    F(amsgrad);
    F(weight_decay);
    F(rho);
    F(centered);
    F(initial_accumulator_value);
    F(clipnorm);
    F(clipvalue);
    F(global_clipnorm);
#undef F
    return 1;
}

#endif
