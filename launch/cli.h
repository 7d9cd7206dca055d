#ifndef CORNU_LAUNCH_CLI_H
#define CORNU_LAUNCH_CLI_H

/* The cornu command: option table, config files, dataset specs, progress output. Only launch/
 * prints and chooses exit statuses: 0 ok, 1 runtime failure, 2 bad input or usage. */

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "kernels/err.h"
#include "trainer/fit.h"
#include "trainer/model.h"

#define CLI_MAX_POS 16

typedef enum cli_opt_kind {
    CLI_FLAG,
    CLI_INT,
    CLI_FLOAT,
    CLI_STR,
    CLI_OPT_KIND_COUNT
} cli_opt_kind;

typedef struct cli_opt {
    const char *name; /* without the leading "--" */
    cli_opt_kind kind;
    const char *arg; /* placeholder in help, e.g. "N" */
    const char *help;
    const char *def; /* default value as text, or NULL */
} cli_opt;

/* Parsed options: values by option index, plus positional arguments. */
typedef struct cli_args {
    const cli_opt *opts;
    int n_opts;
    bool set[64];
    const char *val[64];
    int n_pos;
    const char *pos[CLI_MAX_POS];
    char *owned; /* storage for values read from --config files */
} cli_args;

/* Parses argv[0..argc) against opts; "--config FILE" lines ("name value", "name = value" or
 * "--name value"; '#' comments) are read first and the command line overrides them. */
int cli_parse(const cli_opt *opts, int n_opts, int argc, char **argv, cli_args *out, err_info *e);
void cli_args_free(cli_args *a);
bool cli_has(const cli_args *a, const char *name);
const char *cli_str(const cli_args *a, const char *name); /* value or default, NULL if neither */
int cli_int(const cli_args *a, const char *name, int64_t *out, err_info *e);
int cli_float(const cli_args *a, const char *name, double *out, err_info *e);
void cli_print_help(FILE *f, const char *usage, const char *about, const cli_opt *opts, int n);

/* Dataset specs: "fashion-mnist" (train split; "fashion-mnist:test" for the test split),
 * "FILE.h5" (datasets named by --x-dataset/--y-dataset, comma-separated for several),
 * "IMAGES.idx[.gz],LABELS.idx[.gz]", "X.npy,Y.npy" (or "X1.npy,X2.npy,Y.npy" with --inputs 2). */
typedef struct cli_dataset {
    int n_src;
    data_source *src[16];
    fit_data d;
} cli_dataset;

typedef struct cli_data_opts {
    const char *x_datasets; /* HDF5 dataset names for inputs (comma list) */
    const char *y_datasets;
    double scale; /* < 0: automatic (1/255 for uint8 inputs) */
    int n_inputs, n_outputs;
    bool test_split; /* fashion-mnist: use t10k */
} cli_data_opts;

int cli_dataset_open(const char *spec, const cli_data_opts *o, cli_dataset *out, err_info *e);
void cli_dataset_close(cli_dataset *d);

/* A file the user named must exist and be readable: ERR_USAGE (exit status 2) naming it and
 * `what` ("model", "data", ...). Missing inputs are bad input, not a runtime failure. */
int cli_input_check(const char *path, const char *what, err_info *e);

/* Loads a model: Keras model_config JSON (.json) or a Keras .h5 file (full model; a weights-only
 * file needs config_json). */
int cli_model_load(const char *path, const char *config_json, model **out, err_info *e);
/* Saves by extension/kind: "h5" full model, "weights-h5" weights only. */
int cli_model_save(const char *path, const char *kind, const model *m, err_info *e);

/* Progress printer (Keras style), for rank 0. */
typedef struct cli_progress {
    FILE *out;
    bool tty, quiet;
    double last_draw;
    int64_t epochs, header_epoch;
    FILE *history; /* CSV, or NULL */
    bool history_header;
} cli_progress;
void cli_progress_on_step(void *ctx, int64_t epoch, int64_t step, int64_t steps,
                          const fit_logs *logs, double elapsed_s);
void cli_progress_on_epoch(void *ctx, int64_t epoch, int64_t epochs, int64_t steps,
                           const fit_logs *logs, double elapsed_s, const fit_timing *t);
/* Shortest decimal that reads back as v (Python repr of a float). */
void cli_format_double(double v, char *buf, size_t len);

#endif
