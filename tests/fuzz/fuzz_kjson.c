/* libFuzzer target for the Keras JSON config reader and writer (formats/keras_json.c). The
 * input is read as a model_config; a model that parses must write, and what was written must
 * parse again to a model that writes the same text (a broken round trip aborts). The input is
 * also read as a training_config, against the parsed model or a fixed two-output model, and a
 * compiled result must survive write -> parse too. The summary is rendered for every model.
 * The corpus is tests/fuzz/corpus/kjson/ (hand-written configs in every Keras dialect); the
 * replay test fuzz.kjson_shared also feeds it the corpus's sidecar configs. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/keras_json.h"
#include "trainer/model_summary.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char FIXED[] =
    "{\"class_name\": \"Functional\", \"config\": {\"name\": \"f\", \"layers\": ["
    "{\"class_name\": \"InputLayer\", \"name\": \"i\", \"config\": {\"name\": \"i\", "
    "\"batch_input_shape\": [null, 4]}, \"inbound_nodes\": []},"
    "{\"class_name\": \"Dense\", \"name\": \"main\", \"config\": {\"name\": \"main\", \"units\": "
    "3}, \"inbound_nodes\": [[[\"i\", 0, 0, {}]]]},"
    "{\"class_name\": \"Dense\", \"name\": \"aux\", \"config\": {\"name\": \"aux\", \"units\": 1}, "
    "\"inbound_nodes\": [[[\"i\", 0, 0, {}]]]}], \"input_layers\": [[\"i\", 0, 0]], "
    "\"output_layers\": [[\"main\", 0, 0], [\"aux\", 0, 0]]}}";

static void fail(const char *what, const char *msg)
{
    fprintf(stderr, "fuzz_kjson: %s: %s\n", what, msg);
    abort();
}

static void check_model(const model *m)
{
    err_info e = {0};
    char *text = NULL, *text2 = NULL, *summary = NULL;
    if (model_summary_text(m, &summary, &e) != ERR_OK)
        fail("summary", e.msg);
    free(summary);
    int rc = kjson_model_write(m, &text, &e);
    if (rc == ERR_UNSUPPORTED)
        return; /* both hard_sigmoid flavours: refused by design */
    if (rc != ERR_OK)
        fail("write", e.msg);
    model *back = NULL;
    if (kjson_model_parse(text, strlen(text), "rewritten", &back, &e) != ERR_OK)
        fail("parse(write(m))", e.msg);
    if (kjson_model_write(back, &text2, &e) != ERR_OK)
        fail("write(parse(write(m)))", e.msg);
    if (strcmp(text, text2) != 0)
        fail("round trip", "the second write differs");
    free(text);
    free(text2);
    model_destroy(back);
}

static void check_training(model *m, const uint8_t *data, size_t size)
{
    err_info e = {0};
    if (kjson_training_parse_ex((const char *)data, size, "fuzz", m, KJSON_SKIP_UNKNOWN_METRICS,
                                NULL, NULL, &e) != ERR_OK ||
        !m->train.compiled)
        return;
    char *text = NULL;
    if (kjson_training_write(m, &text, &e) != ERR_OK)
        fail("training write", e.msg);
    if (kjson_training_parse(text, strlen(text), "rewritten", m, &e) != ERR_OK)
        fail("training parse(write)", e.msg);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    model *m = NULL;
    err_info e = {0};
    if (kjson_model_parse((const char *)data, size, "fuzz", &m, &e) == ERR_OK) {
        check_model(m);
        check_training(m, data, size);
        model_destroy(m);
    }
    m = NULL;
    if (kjson_model_parse(FIXED, sizeof FIXED - 1, "fixed", &m, &e) != ERR_OK)
        fail("fixed model", e.msg);
    check_training(m, data, size);
    model_destroy(m);
    return 0;
}
