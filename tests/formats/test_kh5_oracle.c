/* Files cornu writes must load in loaders nobody on this project wrote: every file passes
 * ../shared/tools/keras-oracle's two checkers (`node oracle.mjs check --strict`, the tfjs one,
 * and `keras_h5_check.py check --strict`, the h5py one). Then every legacy corpus file is read
 * by cornu, written back, and the tfjs oracle's prediction on cornu's file must match the
 * corpus's expected outputs (predict/<file>/out_*.npy) within 1e-5 relative: the weights and
 * the config cornu wrote mean what the original file meant.
 *
 * Exits 77 (CTest SKIP_RETURN_CODE) with a message when the tools cannot run here: the oracle's
 * node_modules (run `npm ci` in its folder) or Debian's python3-h5py missing.
 * Usage: test_kh5_oracle [--no-predict] */
#include <math.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "formats/keras_h5.h"
#include "formats/keras_json.h"
#include "test_kh5_util.h"

#define ORACLE CORNU_TOOLS "/keras-oracle"

static char dir[128];

static int run(const char *cmd, const char *log)
{
    char full[4096];
    snprintf(full, sizeof full, "%s > '%s' 2>&1", cmd, log);
    int st = system(full);
    return st == -1 ? -1 : WEXITSTATUS(st);
}

static void show_log(const char *log)
{
    char *t = kh5t_slurp(log, NULL);
    if (t != NULL)
        fprintf(stderr, "---- %s\n%s\n----\n", log, t);
    free(t);
}

/* Both checkers, strict, on one file (a weights-only file with its config). A file whose
 * weights hold NaN (one corpus file does) gets a warning for that, so it is checked without
 * --strict. */
static void check_file(const char *what, const char *file, const char *config)
{
    const char *strict = strstr(what, "8inputs") != NULL ? "" : " --strict";
    char cmd[2048], log[512];
    snprintf(log, sizeof log, "%s/check.log", dir);
    if (config != NULL)
        snprintf(cmd, sizeof cmd, "node '%s/oracle.mjs' check --weights '%s' --config '%s'%s",
                 ORACLE, file, config, strict);
    else
        snprintf(cmd, sizeof cmd, "node '%s/oracle.mjs' check '%s'%s", ORACLE, file, strict);
    int rc = run(cmd, log);
    EXPECT_MSG(rc == 0, "%s: tfjs check exit %d", what, rc);
    if (rc != 0)
        show_log(log);
    if (config != NULL)
        snprintf(cmd, sizeof cmd,
                 "/usr/bin/python3 '%s/keras_h5_check.py' check --weights '%s' --config '%s'%s",
                 ORACLE, file, config, strict);
    else
        snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s/keras_h5_check.py' check '%s'%s", ORACLE,
                 file, strict);
    rc = run(cmd, log);
    EXPECT_MSG(rc == 0, "%s: h5py check exit %d", what, rc);
    if (rc != 0)
        show_log(log);
    printf("checked %-40s\n", what);
}

/* ---- models written by cornu ---- */

static model *build(int which)
{
    int64_t in2[3] = {6, 6, 2}, in1[1] = {5}, seq[2] = {4, 3}, ids[1] = {7};
    model *m = NULL;
    layer_config c;
    switch (which) {
    case 0:
        m = kh5t_seq("mlp", 1, in1, DTYPE_F32);
        c = kh5t_cfg(LAYER_DENSE);
        c.units = 8;
        c.activation = ACT_RELU;
        kh5t_add(m, LAYER_DENSE, "dense", &c);
        kh5t_add(m, LAYER_BATCHNORM, "batch_normalization", NULL);
        c = kh5t_cfg(LAYER_DROPOUT);
        c.rate = 0.1;
        kh5t_add(m, LAYER_DROPOUT, "dropout", &c);
        c = kh5t_cfg(LAYER_DENSE);
        c.units = 3;
        c.activation = ACT_SOFTMAX;
        kh5t_add(m, LAYER_DENSE, "dense_1", &c);
        break;
    case 1:
        m = kh5t_seq("cnn", 3, in2, DTYPE_F32);
        c = kh5t_cfg(LAYER_CONV2D);
        c.filters = 3;
        c.kernel_size[0] = c.kernel_size[1] = 3;
        c.padding = PAD_SAME;
        c.activation = ACT_RELU;
        kh5t_add(m, LAYER_CONV2D, "conv2d", &c);
        kh5t_add(m, LAYER_MAXPOOL2D, "max_pooling2d", NULL);
        kh5t_add(m, LAYER_FLATTEN, "flatten", NULL);
        c = kh5t_cfg(LAYER_DENSE);
        c.units = 2;
        kh5t_add(m, LAYER_DENSE, "dense", &c);
        break;
    case 2:
        m = kh5t_seq("rnn", 2, seq, DTYPE_F32);
        c = kh5t_cfg(LAYER_LSTM);
        c.units = 3;
        c.return_sequences = true;
        kh5t_add(m, LAYER_LSTM, "lstm", &c);
        c = kh5t_cfg(LAYER_GRU);
        c.units = 2;
        kh5t_add(m, LAYER_GRU, "gru", &c);
        c = kh5t_cfg(LAYER_DENSE);
        c.units = 1;
        kh5t_add(m, LAYER_DENSE, "dense", &c);
        break;
    default:
        m = kh5t_seq("text", 1, ids, DTYPE_I32);
        c = kh5t_cfg(LAYER_EMBEDDING);
        c.input_dim = 20;
        c.output_dim = 4;
        kh5t_add(m, LAYER_EMBEDDING, "embedding", &c);
        c = kh5t_cfg(LAYER_CONV1D);
        c.filters = 3;
        c.kernel_size[0] = 2;
        kh5t_add(m, LAYER_CONV1D, "conv1d", &c);
        c = kh5t_cfg(LAYER_SIMPLERNN);
        c.units = 2;
        kh5t_add(m, LAYER_SIMPLERNN, "simple_rnn", &c);
        break;
    }
    if (m == NULL || kh5t_finish(m, (unsigned)which + 1) != 0) {
        model_destroy(m);
        return NULL;
    }
    return m;
}

static const struct {
    optim_kind kind;
    double momentum;
    bool amsgrad, centered;
    int slots;
} OPTS[] = {
    {OPTIM_SGD, 0.0, false, false, 0},   {OPTIM_SGD, 0.9, false, false, 1},
    {OPTIM_ADAM, 0, false, false, 2},    {OPTIM_ADAM, 0, true, false, 3},
    {OPTIM_ADAMW, 0, false, false, 2},   {OPTIM_RMSPROP, 0.5, false, true, 3},
    {OPTIM_ADAGRAD, 0, false, false, 1}, {OPTIM_NADAM, 0, false, false, 2},
};
#define N_OPTS ((int)(sizeof OPTS / sizeof OPTS[0]))

static void written_files(void)
{
    for (int mi = 0; mi < 4; mi++)
        for (int oi = 0; oi < N_OPTS; oi++) {
            model *m = build(mi);
            EXPECT(m != NULL);
            if (m == NULL)
                continue;
            err_info e = {0};
            model_loss loss;
            memset(&loss, 0, sizeof loss);
            loss.kind = LOSS_MSE;
            model_train_set_losses(m, 1, &loss, NULL, &e);
            m->train.optim = model_optim_config_default(OPTS[oi].kind);
            m->train.optim.momentum = OPTS[oi].momentum;
            m->train.optim.amsgrad = OPTS[oi].amsgrad;
            m->train.optim.centered = OPTS[oi].centered;
            model_opt_state_alloc(m, OPTS[oi].slots, &e);
            m->opt.iterations = 17;
            m->opt.scalars[0] = 0.5;
            char file[1024], what[600];
            snprintf(what, sizeof what, "%s + %s%s", m->name, model_optim_name(OPTS[oi].kind),
                     OPTS[oi].slots == 3 ? " (3 slots)" : "");
            snprintf(file, sizeof file, "%s/%s_%d.h5", dir, m->name, oi);
            EXPECT_MSG(kh5_write(file, m, true, &e) == ERR_OK, "%s: %s", what, e.msg);
            check_file(what, file, NULL);
            if (oi == 0) {
                /* weights-only, with its config */
                char wfile[1100], cfile[1100];
                snprintf(wfile, sizeof wfile, "%s/%s_weights.h5", dir, m->name);
                snprintf(cfile, sizeof cfile, "%s/%s.json", dir, m->name);
                EXPECT(kh5_write_weights(wfile, m, &e) == ERR_OK);
                char *json = NULL;
                EXPECT(kjson_model_write(m, &json, &e) == ERR_OK);
                FILE *f = fopen(cfile, "w");
                if (f != NULL && json != NULL)
                    fputs(json, f);
                if (f != NULL)
                    fclose(f);
                free(json);
                snprintf(what, sizeof what, "%s weights-only", m->name);
                check_file(what, wfile, cfile);
            }
            model_destroy(m);
        }
}

/* ---- corpus files rewritten by cornu ---- */

static const char *CORPUS[] = {
    "keras1.2.2_seq_lstm_rmsprop_tf",
    "keras2.0.4_func_embedding_gru_rmsprop",
    "keras2.1.3_seq_conv2d_bn_activation_adam",
    "keras2.1.3_seq_embedding_conv1d_dropout_adam",
    "keras2.1.3_seq_simplernn_rmsprop",
    "keras2.2.4_seq_cnn_maxpool_sgd",
    "tfkeras2.2.4_func_gru_initialstate_nobias_noopt",
    "tfkeras2.3.0_func_resnet_conv_bn_add_adam",
    "tfkeras2.4.0_func_dense_concat_sgd",
    "tfkeras2.5.0_seq_conv2d_bn_gap_dropout_adam",
    "tfkeras2.9.0_seq_lstm_sgd",
    "tfkeras2.10.0_seq_gru_resetafter_adam",
    "tfkeras2.12.0_seq_dense_newadam",
    "keras3.5.0_seq_dense_adam",
    "keras3.6.0_seq_embedding_gru_adam",
    "keras3.10.0_func_8inputs_2outputs_embedding_concat_adam",
    "keras3.10.0_seq_conv2d_bn_maxpool_dropout_adam",
    "keras3.13.2_seq_2lstm_dense_noopt",
};
#define N_CORPUS ((int)(sizeof CORPUS / sizeof CORPUS[0]))

/* max|c - e| / max(1, max|e|) < 1e-5, non-finite values at the same places. */
static void compare_outputs(const char *stem, const char *got_base, int n_out)
{
    for (int k = 0; k < n_out; k++) {
        char exp_path[1024], got_path[1024];
        snprintf(exp_path, sizeof exp_path, "%s/predict/%s/out_%d.npy", KH5T_CORPUS, stem, k);
        if (n_out == 1)
            snprintf(got_path, sizeof got_path, "%s.npy", got_base);
        else
            snprintf(got_path, sizeof got_path, "%s_%d.npy", got_base, k);
        int r1, r2;
        int64_t s1[8], s2[8];
        float *ex = kh5t_npy(exp_path, &r1, s1);
        float *got = kh5t_npy(got_path, &r2, s2);
        EXPECT_MSG(ex != NULL && got != NULL && r1 == r2, "%s: output %d missing", stem, k);
        if (ex != NULL && got != NULL && r1 == r2) {
            int64_t n = 1;
            for (int d = 0; d < r1; d++)
                n *= s1[d];
            double scale = 1, worst = 0;
            int nonfinite_mismatch = 0;
            for (int64_t i = 0; i < n; i++)
                if (isfinite(ex[i]))
                    scale = fmax(scale, fabs(ex[i]));
            for (int64_t i = 0; i < n; i++) {
                if (!isfinite(ex[i]) || !isfinite(got[i]))
                    nonfinite_mismatch += isfinite(ex[i]) != isfinite(got[i]);
                else
                    worst = fmax(worst, fabs((double)got[i] - ex[i]));
            }
            EXPECT_MSG(worst / scale < 1e-5 && nonfinite_mismatch == 0,
                       "%s: output %d differs by %g (scaled), %d non-finite mismatches", stem, k,
                       worst / scale, nonfinite_mismatch);
            printf("predict %-58s out_%d scaled diff %.2g\n", stem, k, worst / scale);
        }
        free(ex);
        free(got);
    }
}

static void corpus_files(bool predict)
{
    for (int i = 0; i < N_CORPUS; i++) {
        char in[1024], out[1024];
        snprintf(in, sizeof in, "%s/%s.h5", KH5T_CORPUS, CORPUS[i]);
        snprintf(out, sizeof out, "%s/%s.h5", dir, CORPUS[i]);
        err_info e = {0};
        model *m = NULL;
        EXPECT_MSG(kh5_read(in, &m, &e) == ERR_OK, "%s", e.msg);
        if (m == NULL)
            continue;
        EXPECT_MSG(kh5_write(out, m, true, &e) == ERR_OK, "%s: %s", CORPUS[i], e.msg);
        int n_in = m->n_inputs, n_out = m->n_outputs;
        model_destroy(m);
        check_file(CORPUS[i], out, NULL);
        if (!predict)
            continue;
        char cmd[8192], log[512], got[512];
        snprintf(log, sizeof log, "%s/predict.log", dir);
        snprintf(got, sizeof got, "%s/%s_out", dir, CORPUS[i]);
        int at = snprintf(cmd, sizeof cmd, "node '%s/oracle.mjs' predict '%s'", ORACLE, out);
        for (int k = 0; k < n_in && at > 0 && (size_t)at < sizeof cmd; k++)
            at += snprintf(cmd + at, sizeof cmd - (size_t)at, " '%s/predict/%s/in_%d.npy'",
                           KH5T_CORPUS, CORPUS[i], k);
        snprintf(cmd + at, sizeof cmd - (size_t)at, " --out '%s.npy' --quiet", got);
        int rc = run(cmd, log);
        EXPECT_MSG(rc == 0, "%s: oracle predict exit %d", CORPUS[i], rc);
        if (rc != 0) {
            show_log(log);
            continue;
        }
        compare_outputs(CORPUS[i], got, n_out);
    }
}

int main(int argc, char **argv)
{
    bool predict = !(argc > 1 && strcmp(argv[1], "--no-predict") == 0);
    struct stat st;
    if (stat(ORACLE "/node_modules/@tensorflow/tfjs", &st) != 0) {
        printf("SKIP: %s/node_modules missing (run `npm ci` there)\n", ORACLE);
        return 77;
    }
    if (system("node --version > /dev/null 2>&1") != 0) {
        printf("SKIP: node not found\n");
        return 77;
    }
    if (system("/usr/bin/python3 -c 'import h5py, numpy' > /dev/null 2>&1") != 0) {
        printf("SKIP: Debian's python3-h5py / python3-numpy missing\n");
        return 77;
    }
    snprintf(dir, sizeof dir, "/tmp/kh5oracle.%ld", (long)getpid());
    mkdir(dir, 0700);
    written_files();
    corpus_files(predict);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (test_failed_ == 0 && system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return test_finish();
}
