/* model_summary: the Keras 3 model.summary() text. The expected tables below are what Keras 3
 * prints for these models when its output is not a terminal (line_length 76) or on a wide
 * terminal (88): summary_utils.print_summary's columns (positions 0.45/0.80/1.0, or
 * 0.3/0.56/0.74/1.0 with "Connected to"), drawn by rich with the HEAVY_HEAD box, show_lines,
 * one space of padding, ellipsis overflow and word wrapping. */
#include "trainer/model_summary.h"

#include <stdlib.h>
#include <string.h>

#include "test_util.h"

static const char SEQ_76[] =
    "Model: \"sequential\"\n"
    "┏━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━┓\n"
    "┃ Layer (type)                    ┃ Output Shape           ┃       Param # ┃\n"
    "┡━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━┩\n"
    "│ dense (Dense)                   │ (None, 64)             │        50,240 │\n"
    "├─────────────────────────────────┼────────────────────────┼───────────────┤\n"
    "│ dropout (Dropout)               │ (None, 64)             │             0 │\n"
    "├─────────────────────────────────┼────────────────────────┼───────────────┤\n"
    "│ dense_1 (Dense)                 │ (None, 10)             │           650 │\n"
    "└─────────────────────────────────┴────────────────────────┴───────────────┘\n"
    " Total params: 50,890 (198.79 KB)\n"
    " Trainable params: 50,890 (198.79 KB)\n"
    " Non-trainable params: 0 (0.00 B)\n";

static const char SEQ_88[] =
    "Model: \"sequential\"\n"
    "┏━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━┓\n"
    "┃ Layer (type)                         ┃ Output Shape                ┃         Param # ┃\n"
    "┡━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━┩\n"
    "│ dense (Dense)                        │ (None, 64)                  │          50,240 │\n"
    "├──────────────────────────────────────┼─────────────────────────────┼─────────────────┤\n"
    "│ dropout (Dropout)                    │ (None, 64)                  │               0 │\n"
    "├──────────────────────────────────────┼─────────────────────────────┼─────────────────┤\n"
    "│ dense_1 (Dense)                      │ (None, 10)                  │             650 │\n"
    "└──────────────────────────────────────┴─────────────────────────────┴─────────────────┘\n"
    " Total params: 50,890 (198.79 KB)\n"
    " Trainable params: 50,890 (198.79 KB)\n"
    " Non-trainable params: 0 (0.00 B)\n";

static const char FUNC_76[] =
    "Model: \"functional\"\n"
    "┏━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━┓\n"
    "┃ Layer (type)        ┃ Output Shape      ┃    Param # ┃ Connected to      ┃\n"
    "┡━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━┩\n"
    "│ input_layer         │ (None, 32)        │          0 │ -                 │\n"
    "│ (InputLayer)        │                   │            │                   │\n"
    "├─────────────────────┼───────────────────┼────────────┼───────────────────┤\n"
    "│ input_layer_1       │ (None, 16)        │          0 │ -                 │\n"
    "│ (InputLayer)        │                   │            │                   │\n"
    "├─────────────────────┼───────────────────┼────────────┼───────────────────┤\n"
    "│ dense (Dense)       │ (None, 64)        │      2,112 │ input_layer[0][0] │\n"
    "├─────────────────────┼───────────────────┼────────────┼───────────────────┤\n"
    "│ dense_1 (Dense)     │ (None, 64)        │      1,088 │ input_layer_1[0]… │\n"
    "├─────────────────────┼───────────────────┼────────────┼───────────────────┤\n"
    "│ concatenate         │ (None, 128)       │          0 │ dense[0][0],      │\n"
    "│ (Concatenate)       │                   │            │ dense_1[0][0]     │\n"
    "├─────────────────────┼───────────────────┼────────────┼───────────────────┤\n"
    "│ batch_normalization │ (None, 128)       │        512 │ concatenate[0][0] │\n"
    "│ (BatchNormalizatio… │                   │            │                   │\n"
    "├─────────────────────┼───────────────────┼────────────┼───────────────────┤\n"
    "│ dense_2 (Dense)     │ (None, 10)        │      1,290 │ batch_normalizat… │\n"
    "└─────────────────────┴───────────────────┴────────────┴───────────────────┘\n"
    " Total params: 5,002 (19.54 KB)\n"
    " Trainable params: 4,746 (18.54 KB)\n"
    " Non-trainable params: 256 (1.00 KB)\n";

static const char CHAIN_76[] =
    "Model: \"chain\"\n"
    "┏━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━┓\n"
    "┃ Layer (type)                    ┃ Output Shape           ┃       Param # ┃\n"
    "┡━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━┩\n"
    "│ x (InputLayer)                  │ (None, 7, 3)           │             0 │\n"
    "├─────────────────────────────────┼────────────────────────┼───────────────┤\n"
    "│ lstm (LSTM)                     │ [(None, 4), (None, 4), │           128 │\n"
    "│                                 │ (None, 4)]             │               │\n"
    "└─────────────────────────────────┴────────────────────────┴───────────────┘\n"
    " Total params: 128 (512.00 B)\n"
    " Trainable params: 128 (512.00 B)\n"
    " Non-trainable params: 0 (0.00 B)\n";

static int add(model *m, layer_kind k, const char *name, int n_in, const model_ref *in)
{
    int idx = -1;
    err_info e = {0};
    EXPECT(model_layer_add(m, k, name, &idx, &e) == ERR_OK);
    if (n_in > 0)
        EXPECT(model_node_add(m, idx, n_in, in, &e) == ERR_OK);
    return idx;
}

static int input(model *m, const char *name, int64_t batch, int64_t d1, int64_t d2)
{
    int i = add(m, LAYER_INPUT, name, 0, NULL);
    model_shape *s = &m->layers[i].input_shape;
    s->rank = d2 > 0 ? 3 : 2;
    s->dims[0] = batch;
    s->dims[1] = d1;
    s->dims[2] = d2;
    return i;
}

static void io(model *m, int n_in, const model_ref *in, int n_out, const model_ref *out)
{
    err_info e = {0};
    EXPECT(model_inputs_set(m, n_in, in, &e) == ERR_OK);
    EXPECT(model_outputs_set(m, n_out, out, &e) == ERR_OK);
    int rc = model_build(m, &e);
    EXPECT_MSG(rc == ERR_OK, "%s", e.msg);
}

static void expect_text(const model *m, int line_length, const char *want, const char *what)
{
    char *got = NULL;
    err_info e = {0};
    int rc = model_summary_text_ex(m, line_length, &got, &e);
    EXPECT_MSG(rc == ERR_OK, "%s: %s", what, e.msg);
    EXPECT_MSG(got != NULL && strcmp(got, want) == 0, "%s: got\n%s\nexpected\n%s", what,
               got ? got : "(null)", want);
    free(got);
}

static model *mlp(int64_t batch)
{
    model *m = NULL;
    err_info e = {0};
    EXPECT(model_create(&m, &e) == ERR_OK);
    snprintf(m->name, sizeof m->name, "sequential");
    m->sequential = true;
    int in = input(m, "input_layer", batch, 784, 0);
    model_ref r = {in, 0, 0};
    int d = add(m, LAYER_DENSE, "dense", 1, &r);
    m->layers[d].cfg.units = 64;
    m->layers[d].cfg.activation = ACT_RELU;
    r.layer = d;
    int dr = add(m, LAYER_DROPOUT, "dropout", 1, &r);
    m->layers[dr].cfg.rate = 0.2;
    r.layer = dr;
    int d1 = add(m, LAYER_DENSE, "dense_1", 1, &r);
    m->layers[d1].cfg.units = 10;
    model_ref i0 = {in, 0, 0}, o0 = {d1, 0, 0};
    io(m, 1, &i0, 1, &o0);
    return m;
}

static void test_sequential(void)
{
    model *m = mlp(-1);
    expect_text(m, 0, SEQ_76, "sequential, default width");
    expect_text(m, 76, SEQ_76, "sequential, 76");
    expect_text(m, 88, SEQ_88, "sequential, 88");
    char *s = NULL;
    err_info e = {0};
    EXPECT(model_summary_text(m, &s, &e) == ERR_OK && s != NULL && strcmp(s, SEQ_76) == 0);
    free(s);
    s = NULL;
    EXPECT(model_summary_text_ex(m, 8, &s, &e) == ERR_RANGE && s == NULL);
    model_destroy(m);
    /* A fixed batch size shows in every shape, as in Keras. */
    m = mlp(32);
    s = NULL;
    EXPECT(model_summary_text(m, &s, &e) == ERR_OK && s != NULL && strstr(s, "│ (32, 64) ") &&
           !strstr(s, "None"));
    free(s);
    model_destroy(m);
    /* Not built. */
    model *u = NULL;
    EXPECT(model_create(&u, &e) == ERR_OK);
    s = NULL;
    EXPECT(model_summary_text(u, &s, &e) == ERR_USAGE && s == NULL);
    model_destroy(u);
}

static void test_functional(void)
{
    model *m = NULL;
    err_info e = {0};
    EXPECT(model_create(&m, &e) == ERR_OK);
    snprintf(m->name, sizeof m->name, "functional");
    int a = input(m, "input_layer", -1, 32, 0);
    int b = input(m, "input_layer_1", -1, 16, 0);
    model_ref ra = {a, 0, 0}, rb = {b, 0, 0};
    int d = add(m, LAYER_DENSE, "dense", 1, &ra);
    m->layers[d].cfg.units = 64;
    int d1 = add(m, LAYER_DENSE, "dense_1", 1, &rb);
    m->layers[d1].cfg.units = 64;
    model_ref two[2] = {{d, 0, 0}, {d1, 0, 0}};
    int c = add(m, LAYER_CONCAT, "concatenate", 2, two);
    model_ref rc = {c, 0, 0};
    int bn = add(m, LAYER_BATCHNORM, "batch_normalization", 1, &rc);
    model_ref rbn = {bn, 0, 0};
    int d2 = add(m, LAYER_DENSE, "dense_2", 1, &rbn);
    m->layers[d2].cfg.units = 10;
    model_ref ins[2] = {ra, rb}, out = {d2, 0, 0};
    io(m, 2, ins, 1, &out);
    expect_text(m, 0, FUNC_76, "functional");
    model_destroy(m);

    /* A Functional chain is shown like a Sequential model, InputLayer row included; a layer
     * with several outputs shows the list of their shapes. */
    EXPECT(model_create(&m, &e) == ERR_OK);
    snprintf(m->name, sizeof m->name, "chain");
    int x = input(m, "x", -1, 7, 3);
    model_ref rx = {x, 0, 0};
    int l = add(m, LAYER_LSTM, "lstm", 1, &rx);
    m->layers[l].cfg.units = 4;
    m->layers[l].cfg.return_state = true;
    model_ref outs[3] = {{l, 0, 0}, {l, 0, 1}, {l, 0, 2}};
    io(m, 1, &rx, 3, outs);
    expect_text(m, 0, CHAIN_76, "functional chain");
    model_destroy(m);
}

int main(void)
{
    test_sequential();
    test_functional();
    return test_finish();
}
