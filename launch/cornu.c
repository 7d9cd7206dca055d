/* The cornu command: train, evaluate, predict, summary, convert. */

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "launch/cli.h"
#include "launch/crashguard.h"
#include "launch/dist.h"
#include "trainer/data.h"
#include "trainer/init.h"
#include "trainer/loss.h"
#include "trainer/model_summary.h"

#define VERSION "0.1.0"

#if defined(__SANITIZE_ADDRESS__)
/* cornu always starts MPI, and Open MPI's own start-up allocations are never freed: in sanitizer
 * builds the binary does not report leaks (the library tests, which do not start MPI, do). */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
    return "detect_leaks=0";
}
#endif

/* Options shared by the commands that load a model and read data. */
#define OPTS_MODEL                                                                                 \
    {"config-json", CLI_STR, "FILE", "architecture for a weights-only .h5 model", NULL},           \
        {"threads", CLI_INT, "N",                                                                  \
         "threads per rank (0 = $OPENBLAS_NUM_THREADS, else cores / ranks sharing them)", "0"},    \
    {                                                                                              \
        "blas-threads", CLI_INT, "N",                                                              \
            "OpenBLAS threads per worker; threads / N workers split each batch", "1"               \
    }
#define OPTS_DATA                                                                                  \
    {"data", CLI_STR, "SPEC", "fashion-mnist, FILE.h5, X.idx[.gz],Y.idx[.gz] or X.npy,Y.npy",      \
     "fashion-mnist"},                                                                             \
        {"x-dataset", CLI_STR, "NAMES", "HDF5 input dataset name(s), comma-separated", "x"},       \
        {"y-dataset", CLI_STR, "NAMES", "HDF5 target dataset name(s), comma-separated", "y"},      \
    {                                                                                              \
        "scale", CLI_FLOAT, "F", "multiply inputs by F (default: 1/255 for uint8 data, else 1)",   \
            NULL                                                                                   \
    }
#define OPTS_COMPILE                                                                               \
    {"loss", CLI_STR, "NAME",                                                                      \
     "sparse_categorical_crossentropy, categorical_crossentropy, binary_crossentropy, mse, mae, "  \
     "huber (default: the file's, else sparse_categorical_crossentropy)",                          \
     NULL},                                                                                        \
        {"from-logits", CLI_FLAG, NULL, "the loss takes logits (from_logits=True)", NULL},         \
        {"metrics", CLI_STR, "LIST", "accuracy, mse, mae, ... comma-separated (default accuracy)", \
         NULL},                                                                                    \
        {"optimizer", CLI_STR, "NAME",                                                             \
         "sgd, adam, adamw, rmsprop, adagrad, nadam (default: the "                                \
         "file's, else adam)",                                                                     \
         NULL},                                                                                    \
        {"lr", CLI_FLOAT, "F", "learning rate (default: Keras's for the optimizer)", NULL},        \
        {"lr-schedule", CLI_STR, "SPEC",                                                           \
         "exponential:STEPS:RATE[:staircase], piecewise:B1,B2..:V0,V1.., cosine:STEPS[:ALPHA]",    \
         NULL},                                                                                    \
        {"momentum", CLI_FLOAT, "F", "SGD/RMSprop momentum", NULL},                                \
        {"nesterov", CLI_FLAG, NULL, "SGD Nesterov momentum", NULL},                               \
        {"beta1", CLI_FLOAT, "F", "Adam-family beta_1", NULL},                                     \
        {"beta2", CLI_FLOAT, "F", "Adam-family beta_2", NULL},                                     \
        {"epsilon", CLI_FLOAT, "F", "optimizer epsilon", NULL},                                    \
        {"amsgrad", CLI_FLAG, NULL, "Adam/AdamW AMSGrad variant", NULL},                           \
        {"weight-decay", CLI_FLOAT, "F", "decoupled weight decay (AdamW; any optimizer)", NULL},   \
        {"rho", CLI_FLOAT, "F", "RMSprop rho", NULL},                                              \
        {"centered", CLI_FLAG, NULL, "centered RMSprop", NULL},                                    \
        {"clipnorm", CLI_FLOAT, "F", "clip each gradient's norm to F", NULL},                      \
        {"clipvalue", CLI_FLOAT, "F", "clip gradient values to [-F, F]", NULL},                    \
    {                                                                                              \
        "global-clipnorm", CLI_FLOAT, "F", "clip the global gradient norm to F", NULL              \
    }

static const cli_opt TRAIN_OPTS[] = {
    OPTS_MODEL,
    OPTS_DATA,
    OPTS_COMPILE,
    {"val-data", CLI_STR, "SPEC", "separate validation data (same forms as --data)", NULL},
    {"validation-split", CLI_FLOAT, "F", "last fraction F of the data is validation", "0"},
    {"epochs", CLI_INT, "N", "epochs to train", "10"},
    {"initial-epoch", CLI_INT, "N", "epoch to start at (when resuming)", "0"},
    {"batch-size", CLI_INT, "N", "global batch size (split across ranks)", "32"},
    {"per-rank-batch", CLI_INT, "N", "batch size per rank instead (global = N x ranks)", NULL},
    {"steps-per-epoch", CLI_INT, "N", "stop each epoch after N steps (0 = whole data)", "0"},
    {"seed", CLI_INT, "N", "seed for weights, shuffling and dropout", "0"},
    {"no-shuffle", CLI_FLAG, NULL, "do not shuffle the training data", NULL},
    {"output", CLI_STR, "FILE", "save the trained model (Keras .h5, with optimizer state)", NULL},
    {"output-kind", CLI_STR, "KIND", "h5 (full model), weights-h5 or json (config only)", "h5"},
    {"history", CLI_STR, "FILE", "write per-epoch logs as CSV (Keras CSVLogger format)", NULL},
    {"quiet", CLI_FLAG, NULL, "print nothing but errors", NULL},
    {"bucket-mb", CLI_FLOAT, "MB", "gradient allreduce bucket size", "0.25"},
    {"allreduce", CLI_STR, "HOW",
     "gradient sum: shm (node shared memory, MPI between nodes), mpi, or auto", "auto"},
    {"shard-update", CLI_FLAG, NULL,
     "with shm: the ranks of a node share one copy of the weights and optimizer state and each "
     "updates its part (less memory; see docs/scaling.md)",
     NULL},
    {"comm-timeout", CLI_FLOAT, "S", "abort when a collective takes longer than S seconds", "600"},
    {"verbose-ranks", CLI_FLAG, NULL, "print per-rank timing (compute, exposed comm, data)", NULL},
};

static const cli_opt EVAL_OPTS[] = {
    OPTS_MODEL,
    OPTS_DATA,
    OPTS_COMPILE,
    {"batch-size", CLI_INT, "N", "batch size", "32"},
    {"quiet", CLI_FLAG, NULL, "print only the result line", NULL},
};

static const cli_opt PREDICT_OPTS[] = {
    OPTS_MODEL,
    {"output", CLI_STR, "FILE", "output .npy (several outputs: FILE_0.npy, FILE_1.npy, ...)", NULL},
    {"batch-size", CLI_INT, "N", "batch size", "32"},
};

static const cli_opt SUMMARY_OPTS[] = {OPTS_MODEL};

static const cli_opt CONVERT_OPTS[] = {
    OPTS_MODEL,
    {"to", CLI_STR, "KIND", "h5 (full model), weights-h5 or json", "h5"},
    {"no-optimizer", CLI_FLAG, NULL, "leave out the optimizer state", NULL},
};

#define N_OPTS(t) ((int)(sizeof(t) / sizeof((t)[0])))

static int g_is_root = 1; /* whether this process prints (rank 0); set once in main() */

static void print_error(const err_info *e)
{
    fprintf(stderr, "cornu: error: %s\n", e->msg);
}

static int exit_status(int rc)
{
    if (rc == ERR_OK)
        return 0;
    return err_is_input((err_code)rc) ? 2 : 1;
}

/* ---- compile options -> m->train ---- */

static int parse_schedule(const char *spec, double lr, model_schedule *s, err_info *e)
{
    memset(s, 0, sizeof *s);
    s->initial = lr;
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", spec);
    char *parts[4] = {0};
    int n = 0;
    for (char *t = buf; t != NULL && n < 4;) {
        char *c = strchr(t, ':');
        if (c)
            *c = '\0';
        parts[n++] = t;
        t = c ? c + 1 : NULL;
    }
    char *end;
    if (strcmp(parts[0], "exponential") == 0 && (n == 3 || n == 4)) {
        s->kind = SCHED_EXPONENTIAL;
        s->decay_steps = strtod(parts[1], &end);
        s->decay_rate = strtod(parts[2], &end);
        s->staircase = n == 4 && strcmp(parts[3], "staircase") == 0;
        if (s->decay_steps > 0)
            return ERR_OK;
    } else if (strcmp(parts[0], "cosine") == 0 && (n == 2 || n == 3)) {
        s->kind = SCHED_COSINE;
        s->decay_steps = strtod(parts[1], &end);
        s->alpha = n == 3 ? strtod(parts[2], &end) : 0.0;
        if (s->decay_steps > 0)
            return ERR_OK;
    } else if (strcmp(parts[0], "piecewise") == 0 && n == 3) {
        s->kind = SCHED_PIECEWISE;
        int nb = 0, nv = 0;
        for (char *t = parts[1]; t && *t && nb < MODEL_MAX_BOUNDS; nb++) {
            s->bounds[nb] = strtod(t, &end);
            t = *end == ',' ? end + 1 : NULL;
        }
        for (char *t = parts[2]; t && *t && nv < MODEL_MAX_BOUNDS + 1; nv++) {
            s->values[nv] = strtod(t, &end);
            t = *end == ',' ? end + 1 : NULL;
        }
        s->n_bounds = nb;
        if (nb > 0 && nv == nb + 1)
            return ERR_OK;
    }
    return err_set(e, ERR_USAGE,
                   "--lr-schedule \"%s\": expected exponential:STEPS:RATE[:staircase], "
                   "piecewise:B1,..,Bn:V0,..,Vn or cosine:STEPS[:ALPHA]",
                   spec);
}

static int optim_kind_from(const char *name, optim_kind *out, err_info *e)
{
    for (int k = 0; k < OPTIM_COUNT; k++)
        if (strcasecmp(name, model_optim_name((optim_kind)k)) == 0) {
            *out = (optim_kind)k;
            return ERR_OK;
        }
    return err_set(e, ERR_USAGE,
                   "--optimizer \"%s\": unknown (sgd, adam, adamw, rmsprop, adagrad, nadam)", name);
}

static int apply_compile(const cli_args *a, model *m, err_info *e)
{
    int rc;
    bool fresh = !m->train.compiled;
    const char *loss = cli_str(a, "loss");
    if (loss != NULL || fresh || m->train.n_losses == 0) {
        model_loss l;
        rc = loss_from_name(loss ? loss : "sparse_categorical_crossentropy", &l, e);
        if (rc != ERR_OK)
            return err_wrap(e, "--loss");
        if (cli_has(a, "from-logits"))
            l.from_logits = true;
        if ((rc = model_train_set_losses(m, 1, &l, NULL, e)) != ERR_OK)
            return rc;
    } else if (cli_has(a, "from-logits")) {
        for (int i = 0; i < m->train.n_losses; i++)
            m->train.losses[i].from_logits = true;
    }
    const char *metrics = cli_str(a, "metrics");
    if (metrics != NULL || fresh) {
        char buf[512];
        snprintf(buf, sizeof buf, "%s", metrics ? metrics : "accuracy");
        m->train.n_metrics = 0;
        for (char *t = strtok(buf, ","); t != NULL; t = strtok(NULL, ",")) {
            if (*t == '\0' || strcmp(t, "none") == 0)
                continue;
            if (m->train.n_metrics >= MODEL_MAX_METRICS)
                return err_set(e, ERR_USAGE, "--metrics: at most %d", MODEL_MAX_METRICS);
            rc = metric_from_name(t, &m->train.metrics[m->train.n_metrics], e);
            if (rc != ERR_OK)
                return err_wrap(e, "--metrics");
            m->train.n_metrics++;
        }
    }
    const char *opt = cli_str(a, "optimizer");
    if (opt != NULL || fresh) {
        optim_kind k = OPTIM_ADAM;
        if (opt != NULL && (rc = optim_kind_from(opt, &k, e)) != ERR_OK)
            return rc;
        if (!(m->train.compiled && m->train.optim.kind == k))
            m->train.optim = model_optim_config_default(k);
    }
    model_optim_config *o = &m->train.optim;
    double v;
    if (cli_has(a, "lr")) {
        if ((rc = cli_float(a, "lr", &v, e)) != ERR_OK)
            return rc;
        if (!(v > 0))
            return err_set(e, ERR_USAGE, "--lr %g must be positive", v);
        o->lr.kind = SCHED_CONSTANT;
        o->lr.initial = v;
    }
    if (cli_str(a, "lr-schedule") != NULL &&
        (rc = parse_schedule(cli_str(a, "lr-schedule"), o->lr.initial, &o->lr, e)) != ERR_OK)
        return rc;
    struct {
        const char *name;
        double *field;
    } nums[] = {{"momentum", &o->momentum},
                {"beta1", &o->beta_1},
                {"beta2", &o->beta_2},
                {"epsilon", &o->epsilon},
                {"weight-decay", &o->weight_decay},
                {"rho", &o->rho},
                {"clipnorm", &o->clipnorm},
                {"clipvalue", &o->clipvalue},
                {"global-clipnorm", &o->global_clipnorm}};
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        if (!cli_has(a, nums[i].name))
            continue;
        if ((rc = cli_float(a, nums[i].name, &v, e)) != ERR_OK)
            return rc;
        if (v < 0)
            return err_set(e, ERR_USAGE, "--%s %g must not be negative", nums[i].name, v);
        *nums[i].field = v;
    }
    if (cli_has(a, "nesterov"))
        o->nesterov = true;
    if (cli_has(a, "amsgrad"))
        o->amsgrad = true;
    if (cli_has(a, "centered"))
        o->centered = true;
    m->train.compiled = true;
    return ERR_OK;
}

static int open_data(const cli_args *a, const char *spec, const model *m, bool test, cli_dataset *d,
                     err_info *e)
{
    cli_data_opts o;
    memset(&o, 0, sizeof o);
    o.x_datasets = cli_str(a, "x-dataset");
    o.y_datasets = cli_str(a, "y-dataset");
    o.scale = -1;
    if (cli_has(a, "scale") && cli_float(a, "scale", &o.scale, e) != ERR_OK)
        return e->code;
    o.n_inputs = m->n_inputs;
    o.n_outputs = m->n_outputs;
    o.test_split = test;
    return cli_dataset_open(spec, &o, d, e);
}

/* ---- commands ---- */

static int load_model(const cli_args *a, const char *path, model **m, err_info *e)
{
    /* libhdf5 1.10 can crash on a corrupted object header: turn that into exit status 2 with a
     * message naming the file (launch/crashguard.h). */
    crashguard *g = crashguard_enter(path);
    int rc = cli_model_load(path, cli_str(a, "config-json"), m, e);
    crashguard_leave(g);
    return rc;
}

static int cmd_train(dist *dd, int workers, const cli_args *a, err_info *e)
{
    model *m = NULL;
    fit_session *s = NULL;
    cli_dataset train, val;
    memset(&train, 0, sizeof train);
    memset(&val, 0, sizeof val);
    FILE *hist = NULL;
    int64_t epochs, initial, batch, seed, steps_limit;
    double vsplit;
    int rc = cli_int(a, "epochs", &epochs, e);
    if (rc == ERR_OK)
        rc = cli_int(a, "initial-epoch", &initial, e);
    if (rc == ERR_OK)
        rc = cli_int(a, "batch-size", &batch, e);
    if (rc == ERR_OK)
        rc = cli_int(a, "seed", &seed, e);
    if (rc == ERR_OK)
        rc = cli_int(a, "steps-per-epoch", &steps_limit, e);
    if (rc == ERR_OK)
        rc = cli_float(a, "validation-split", &vsplit, e);
    if (rc == ERR_OK && cli_has(a, "per-rank-batch")) {
        int64_t per;
        rc = cli_int(a, "per-rank-batch", &per, e);
        batch = per * dist_size(dd);
    }
    if (rc != ERR_OK)
        goto done;
    if (epochs < 0 || batch <= 0 || initial < 0 || steps_limit < 0 || vsplit < 0 || vsplit >= 1) {
        rc = err_set(e, ERR_USAGE,
                     "need --epochs >= 0, --batch-size > 0, --initial-epoch >= 0, "
                     "0 <= --validation-split < 1");
        goto done;
    }
    const char *path = a->n_pos > 0 ? a->pos[0] : "fashion-mlp";
    bool from_config = strstr(path, ".h5") == NULL && strstr(path, ".hdf5") == NULL;
    if ((rc = load_model(a, path, &m, e)) != ERR_OK)
        goto done;
    if (from_config && (rc = init_model(m, (uint64_t)seed, e)) != ERR_OK)
        goto done;
    if ((rc = apply_compile(a, m, e)) != ERR_OK)
        goto done;
    if ((rc = open_data(a, cli_str(a, "data"), m, false, &train, e)) != ERR_OK)
        goto done;
    if (cli_str(a, "val-data") != NULL &&
        (rc = open_data(a, cli_str(a, "val-data"), m, true, &val, e)) != ERR_OK)
        goto done;
    fit_config fc = fit_config_default();
    fc.epochs = epochs;
    fc.initial_epoch = initial;
    fc.batch = batch;
    fc.seed = (uint64_t)seed;
    fc.shuffle = !cli_has(a, "no-shuffle");
    fc.validation_split = vsplit;
    fc.val = cli_str(a, "val-data") != NULL ? &val.d : NULL;
    fc.steps_limit = steps_limit;
    fc.threads = workers;
    if ((rc = fit_data_specialize(m, &train.d, e)) != ERR_OK)
        goto done;
    if ((rc = dist_check_model(dd, m, e)) != ERR_OK)
        goto done;
    if ((rc = fit_session_create(m, &fc, dist_comm(dd), &s, e)) != ERR_OK)
        goto done;
    double bucket_mb;
    if ((rc = cli_float(a, "bucket-mb", &bucket_mb, e)) != ERR_OK)
        goto done;
    if ((rc = dist_attach(dd, s, m, bucket_mb, cli_str(a, "allreduce"), cli_has(a, "shard-update"),
                          e)) != ERR_OK)
        goto done;
    if (g_is_root && cli_str(a, "history") != NULL) {
        hist = fopen(cli_str(a, "history"), "w");
        if (hist == NULL) {
            rc =
                err_set(e, ERR_IO, "%s: cannot create: %s", cli_str(a, "history"), strerror(errno));
            goto done;
        }
    }
    cli_progress prog;
    memset(&prog, 0, sizeof prog);
    prog.out = stdout;
    /* Under mpirun every rank's stdout is a pseudo-terminal even when the user's is a file, so
     * the live bar is only drawn for a plain process (set CORNU_LIVE_PROGRESS=1 to force it). */
    const char *live = getenv("CORNU_LIVE_PROGRESS");
    prog.tty = live != NULL ? strcmp(live, "1") == 0
                            : (isatty(STDOUT_FILENO) != 0 && dist_size(dd) == 1 &&
                               getenv("OMPI_COMM_WORLD_SIZE") == NULL);
    prog.quiet = cli_has(a, "quiet") || !g_is_root;
    prog.history = hist;
    prog.epochs = epochs;
    dist_progress pctx = {&prog, dd, cli_has(a, "verbose-ranks")};
    fit_callbacks cb = {&pctx, dist_on_step, dist_on_epoch};
    fit_logs last;
    rc = fit_train(s, &train.d, &cb, &last, e);
    dist_detach(dd); /* the model's own buffers hold the trained state again */
    if (rc != ERR_OK)
        goto done;
    if (cli_str(a, "output") != NULL) {
        /* Rank 0 writes; the others learn its result so every rank exits alike. */
        int wrc = ERR_OK;
        if (g_is_root)
            wrc = cli_model_save(cli_str(a, "output"), cli_str(a, "output-kind"), m, e);
        rc = dist_agree(dd, wrc, e);
    }
done:
    dist_detach(dd);
    if (hist != NULL)
        fclose(hist);
    fit_session_destroy(s);
    cli_dataset_close(&val);
    cli_dataset_close(&train);
    model_destroy(m);
    return rc;
}

static void print_logs_line(const fit_logs *l)
{
    for (int i = 0; i < l->n; i++)
        printf("%s%s: %.4f", i ? " - " : "", l->names[i], l->values[i]);
    printf("\n");
}

static int cmd_evaluate(dist *dd, int workers, const cli_args *a, err_info *e)
{
    if (a->n_pos != 1)
        return err_set(e, ERR_USAGE, "evaluate takes one MODEL (see cornu evaluate --help)");
    model *m = NULL;
    cli_dataset d;
    memset(&d, 0, sizeof d);
    int64_t batch;
    int rc = cli_int(a, "batch-size", &batch, e);
    if (rc == ERR_OK && batch <= 0)
        rc = err_set(e, ERR_USAGE, "--batch-size must be positive");
    if (rc == ERR_OK)
        rc = load_model(a, a->pos[0], &m, e);
    if (rc == ERR_OK)
        rc = apply_compile(a, m, e);
    if (rc == ERR_OK)
        rc = open_data(a, cli_str(a, "data"), m, true, &d, e);
    fit_logs logs;
    if (rc == ERR_OK)
        rc = fit_evaluate(m, &d.d, batch, workers, dist_comm(dd), &logs, e);
    if (rc == ERR_OK && g_is_root)
        print_logs_line(&logs);
    cli_dataset_close(&d);
    model_destroy(m);
    return rc;
}

static int cmd_predict(int workers, const cli_args *a, err_info *e)
{
    if (a->n_pos < 2)
        return err_set(e, ERR_USAGE, "predict takes MODEL IN.npy [IN2.npy ...] -o OUT.npy");
    const char *outp = cli_str(a, "output");
    if (outp == NULL)
        return err_set(e, ERR_USAGE, "predict needs -o OUT.npy");
    model *m = NULL;
    data_source *src[CLI_MAX_POS] = {0};
    float *outs[16] = {0};
    int n_in = a->n_pos - 1;
    int64_t batch;
    int rc = cli_int(a, "batch-size", &batch, e);
    if (rc == ERR_OK)
        rc = load_model(a, a->pos[0], &m, e);
    if (rc == ERR_OK && n_in != m->n_inputs)
        rc = err_set(e, ERR_USAGE, "the model has %d inputs, %d .npy files given", m->n_inputs,
                     n_in);
    if (rc == ERR_OK && m->n_outputs > 16)
        rc = err_set(e, ERR_UNSUPPORTED, "more than 16 outputs");
    for (int i = 0; rc == ERR_OK && i < n_in; i++)
        rc = data_source_open_npy(a->pos[1 + i], &src[i], e);
    int64_t rows = rc == ERR_OK ? data_source_rows(src[0]) : 0;
    for (int o = 0; rc == ERR_OK && o < m->n_outputs; o++) {
        size_t n = (size_t)rows * (size_t)fit_output_row_len(m, o);
        outs[o] = malloc((n ? n : 1) * sizeof(float));
        if (outs[o] == NULL)
            rc = err_set(e, ERR_NOMEM, "output %d: %zu floats", o, n);
    }
    if (rc == ERR_OK)
        rc = fit_predict(m, src, n_in, batch, workers, outs, e);
    for (int o = 0; rc == ERR_OK && o < m->n_outputs; o++) {
        const model_ref *r = &m->outputs[o];
        const model_shape *s = &m->layers[r->layer].nodes[r->node].out[r->tensor];
        int64_t shape[TENSOR_MAX_RANK];
        shape[0] = rows;
        for (int d = 1; d < s->rank; d++)
            shape[d] = s->dims[d];
        char path[4200];
        if (m->n_outputs == 1) {
            snprintf(path, sizeof path, "%s", outp);
        } else {
            size_t n = strlen(outp);
            int stem = (n > 4 && strcmp(outp + n - 4, ".npy") == 0) ? (int)(n - 4) : (int)n;
            snprintf(path, sizeof path, "%.*s_%d.npy", stem, outp, o);
        }
        rc = data_npy_write(path, s->rank, shape, outs[o], e);
    }
    for (int o = 0; o < 16; o++)
        free(outs[o]);
    for (int i = 0; i < n_in; i++)
        data_source_destroy(src[i]);
    model_destroy(m);
    return rc;
}

static int cmd_summary(const cli_args *a, err_info *e)
{
    if (a->n_pos != 1)
        return err_set(e, ERR_USAGE, "summary takes one MODEL");
    model *m = NULL;
    char *text = NULL;
    int rc = load_model(a, a->pos[0], &m, e);
    if (rc == ERR_OK)
        rc = model_summary_text(m, &text, e);
    if (rc == ERR_OK)
        fputs(text, stdout);
    free(text);
    model_destroy(m);
    return rc;
}

static int cmd_convert(const cli_args *a, err_info *e)
{
    if (a->n_pos != 2)
        return err_set(e, ERR_USAGE, "convert takes IN OUT (see cornu convert --help)");
    model *m = NULL;
    int rc = load_model(a, a->pos[0], &m, e);
    if (rc == ERR_OK && cli_has(a, "no-optimizer")) {
        m->train.compiled = false;
        m->opt.n_slots = 0;
    }
    if (rc == ERR_OK)
        rc = cli_model_save(a->pos[1], cli_str(a, "to"), m, e);
    model_destroy(m);
    return rc;
}

/* ---- dispatch ---- */

typedef struct command {
    const char *name, *usage, *about;
    const cli_opt *opts;
    int n_opts;
} command;

static const command COMMANDS[] = {
    {"train", "cornu train [MODEL] [options]",
     "Train MODEL (a Keras model_config .json, a Keras .h5 to continue training, or a built-in:\n"
     "fashion-mlp (default), fashion-cnn) on --data. Under mpirun each global batch is split\n"
     "across the ranks. Prints Keras-style progress; --output saves a Keras .h5.",
     TRAIN_OPTS, N_OPTS(TRAIN_OPTS)},
    {"evaluate", "cornu evaluate MODEL [options]",
     "Loss and metrics of MODEL on --data (fashion-mnist means its test split).", EVAL_OPTS,
     N_OPTS(EVAL_OPTS)},
    {"predict", "cornu predict MODEL IN.npy [IN2.npy ...] -o OUT.npy",
     "Run MODEL on .npy inputs (one per model input, in input order); several outputs go to\n"
     "OUT_0.npy, OUT_1.npy, ...",
     PREDICT_OPTS, N_OPTS(PREDICT_OPTS)},
    {"summary", "cornu summary MODEL", "Print the Keras model.summary() table of MODEL.",
     SUMMARY_OPTS, N_OPTS(SUMMARY_OPTS)},
    {"convert", "cornu convert IN OUT --to h5|weights-h5|json [--config-json MODEL.json]",
     "Convert between a full Keras .h5, a weights-only .h5 (+ config JSON) and a config JSON.",
     CONVERT_OPTS, N_OPTS(CONVERT_OPTS)},
};

static void main_help(FILE *f)
{
    fprintf(f,
            "cornu %s: Keras-compatible training on MPI clusters, and Keras/SavedModel "
            "conversion.\n\nusage: cornu COMMAND [options]   (cornu COMMAND --help for "
            "details)\n\ncommands:\n",
            VERSION);
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++)
        fprintf(f, "  %-10s %s\n", COMMANDS[i].name, COMMANDS[i].usage);
    fprintf(f, "\nexit status: 0 ok, 1 runtime failure, 2 bad input or usage.\n"
               "Run several ranks with: mpirun -np N cornu train ... (see launch/cornu-mpirun).\n");
}

static bool wants_help(int argc, char **argv)
{
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return true;
    return false;
}

int main(int argc, char **argv)
{
    err_info e = {ERR_OK, ""};
    g_is_root = dist_env_is_root();
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        main_help(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("cornu %s\n", VERSION);
        return 0;
    }
    const command *cmd = NULL;
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++)
        if (strcmp(argv[1], COMMANDS[i].name) == 0)
            cmd = &COMMANDS[i];
    if (cmd == NULL) {
        fprintf(stderr, "cornu: error: unknown command \"%s\" (see cornu --help)\n", argv[1]);
        return 2;
    }
    if (wants_help(argc - 2, argv + 2)) {
        cli_print_help(stdout, cmd->usage, cmd->about, cmd->opts, cmd->n_opts);
        return 0;
    }
    cli_args a;
    int rc = cli_parse(cmd->opts, cmd->n_opts, argc - 2, argv + 2, &a, &e);
    if (rc != ERR_OK) {
        if (g_is_root)
            print_error(&e);
        cli_args_free(&a);
        return exit_status(rc);
    }
    dist *dd = NULL;
    dist_config dc;
    memset(&dc, 0, sizeof dc);
    int64_t threads = 0, blas = 1;
    int64_t seed = 0;
    rc = cli_int(&a, "threads", &threads, &e);
    if (rc == ERR_OK)
        rc = cli_int(&a, "blas-threads", &blas, &e);
    if (rc == ERR_OK && (threads < 0 || threads > FIT_MAX_THREADS || blas < 1 || blas > 4096))
        rc = err_set(&e, ERR_USAGE, "--threads %lld must be in 0 .. %d, --blas-threads %lld >= 1",
                     (long long)threads, FIT_MAX_THREADS, (long long)blas);
    if (rc == ERR_OK && strcmp(cmd->name, "train") == 0) {
        rc = cli_int(&a, "seed", &seed, &e);
        if (rc == ERR_OK)
            rc = cli_float(&a, "comm-timeout", &dc.comm_timeout_s, &e);
        dc.verbose_ranks = cli_has(&a, "verbose-ranks");
    }
    dc.threads = (int)threads;
    dc.seed = (uint64_t)seed;
    if (rc == ERR_OK)
        rc = dist_create(&argc, &argv, &dc, &dd, &e);
    if (rc == ERR_OK) {
        g_is_root = dist_rank(dd) == 0;
        int workers = dist_workers(dd, (int)blas);
        if (strcmp(cmd->name, "train") == 0)
            rc = cmd_train(dd, workers, &a, &e);
        else if (strcmp(cmd->name, "evaluate") == 0)
            rc = cmd_evaluate(dd, workers, &a, &e);
        else if (strcmp(cmd->name, "predict") == 0)
            rc = cmd_predict(workers, &a, &e);
        else if (strcmp(cmd->name, "summary") == 0)
            rc = cmd_summary(&a, &e);
        else
            rc = cmd_convert(&a, &e);
    }
    if (rc != ERR_OK && g_is_root)
        print_error(&e);
    cli_args_free(&a);
    dist_destroy(dd);
    return exit_status(rc);
}
