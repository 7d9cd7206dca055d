/* Bad input for the Keras .h5 reader: one handcrafted file per rejection path, each generated
 * here (a good file written by kh5_write, then damaged through the HDF5 API or byte by byte).
 * Each case checks the error code and that the message names the file and the object. */
#include <math.h>

#include "formats/keras_h5.h"
#include "formats/keras_json.h"
#include "test_kh5_util.h"

static char good[256], bad[256], good_w[256];

/* Sequential: Input(8) -> Dense "dense" (16) -> Dense "dense_1" (3); Adam state. */
static model *make_model(void)
{
    int64_t in[1] = {8};
    model *m = kh5t_seq("seq", 1, in, DTYPE_F32);
    layer_config c = kh5t_cfg(LAYER_DENSE);
    c.units = 16;
    kh5t_add(m, LAYER_DENSE, "dense", &c);
    c.units = 3;
    kh5t_add(m, LAYER_DENSE, "dense_1", &c);
    if (kh5t_finish(m, 5) != 0)
        return NULL;
    err_info e = {0};
    model_loss loss;
    memset(&loss, 0, sizeof loss);
    loss.kind = LOSS_MSE;
    model_train_set_losses(m, 1, &loss, NULL, &e);
    m->train.optim = model_optim_config_default(OPTIM_ADAM);
    model_opt_state_alloc(m, 2, &e);
    m->opt.iterations = 42;
    return m;
}

static void copy_file(const char *from, const char *to, long keep)
{
    size_t n;
    char *b = kh5t_slurp(from, &n);
    FILE *f = fopen(to, "wb");
    if (b != NULL && f != NULL)
        fwrite(b, 1, keep >= 0 && (size_t)keep < n ? (size_t)keep : n, f);
    if (f != NULL)
        fclose(f);
    free(b);
}

static hid_t open_bad(void)
{
    copy_file(good, bad, -1);
    return H5Fopen(bad, H5F_ACC_RDWR, H5P_DEFAULT);
}

static void set_str_list(hid_t obj, const char *name, int n, const char *const *v)
{
    if (H5Aexists(obj, name) > 0)
        H5Adelete(obj, name);
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    hsize_t d = (hsize_t)n;
    hid_t s = H5Screate_simple(1, &d, NULL);
    hid_t a = H5Acreate2(obj, name, t, s, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, t, v);
    H5Aclose(a);
    H5Sclose(s);
    H5Tclose(t);
}

static void set_scalar_str(hid_t obj, const char *name, const char *v)
{
    if (H5Aexists(obj, name) > 0)
        H5Adelete(obj, name);
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    hid_t s = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, t, s, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, t, &v);
    H5Aclose(a);
    H5Sclose(s);
    H5Tclose(t);
}

static char *get_scalar_str(hid_t obj, const char *name)
{
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    char *v = NULL;
    H5Aread(a, t, &v);
    char *copy = v ? strdup(v) : NULL;
    H5free_memory(v);
    H5Tclose(t);
    H5Aclose(a);
    return copy;
}

static void replace_dset(hid_t f, const char *path, hid_t type, int rank, const hsize_t *dims)
{
    H5E_BEGIN_TRY
    {
        H5Ldelete(f, path, H5P_DEFAULT); /* may not exist yet */
    }
    H5E_END_TRY;
    hid_t s = H5Screate_simple(rank, dims, NULL);
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t d = H5Dcreate2(f, path, type, s, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    H5Dclose(d);
    H5Pclose(lcpl);
    H5Sclose(s);
}

/* Reads bad as a full model; checks code and that every needle is in the message. */
static void expect_read(const char *what, int code, const char *n1, const char *n2)
{
    err_info e = {0};
    model *m = NULL;
    int rc = ERR_OK;
    H5E_BEGIN_TRY
    {
        rc = kh5_read(bad, &m, &e);
    }
    H5E_END_TRY;
    EXPECT_MSG(rc == code, "%s: got %s, expected %s: %s", what, err_code_str((err_code)rc),
               err_code_str((err_code)code), e.msg);
    EXPECT_MSG(strstr(e.msg, bad) != NULL, "%s: message does not name the file: %s", what, e.msg);
    EXPECT_MSG(n1 == NULL || strstr(e.msg, n1) != NULL, "%s: \"%s\" not in: %s", what, n1, e.msg);
    EXPECT_MSG(n2 == NULL || strstr(e.msg, n2) != NULL, "%s: \"%s\" not in: %s", what, n2, e.msg);
    EXPECT_MSG(m == NULL, "%s: model returned on failure", what);
    model_destroy(m);
    printf("%-28s %-16s %s\n", what, err_code_str((err_code)rc), e.msg);
}

static void bytes_cases(void)
{
    /* truncated: the first half of a good file */
    size_t n;
    char *b = kh5t_slurp(good, &n);
    copy_file(good, bad, (long)(n / 2));
    free(b);
    expect_read("truncated", ERR_FORMAT, "truncated", NULL);
    FILE *f = NULL;
    /* a string's global heap object claiming more bytes than its collection holds (libhdf5
     * 1.10 would copy out of bounds) */
    b = kh5t_slurp(good, &n);
    for (size_t i = 0; b != NULL && i + 32 < n; i++)
        if (memcmp(b + i, "GCOL", 4) == 0) {
            /* header: "GCOL", version, 3 reserved, 8-byte size; object 1: index, refcount,
             * reserved, 8-byte size */
            memset(b + i + 16 + 8, 0x7f, 4);
            break;
        }
    f = fopen(bad, "wb");
    fwrite(b, 1, n, f);
    fclose(f);
    free(b);
    expect_read("corrupt heap object", ERR_FORMAT, "overruns its collection", "corrupt file");
    /* not HDF5 at all */
    f = fopen(bad, "wb");
    for (int i = 0; i < 5000; i++)
        fputc((i * 7919) & 0xff, f);
    fclose(f);
    expect_read("garbage", ERR_FORMAT, "not an HDF5 file", NULL);
    f = fopen(bad, "wb");
    fclose(f);
    expect_read("empty file", ERR_FORMAT, "not an HDF5 file", NULL);
    /* a .keras archive */
    f = fopen(bad, "wb");
    fputs("PK\003\004 pretend zip with config.json", f);
    fclose(f);
    expect_read("keras archive", ERR_UNSUPPORTED, ".keras archive", NULL);
    kh5_kind k;
    err_info e = {0};
    EXPECT(kh5_probe(bad, &k, &e) == ERR_OK && k == KH5_KERAS_ARCHIVE);
    /* a file that does not exist */
    remove(bad);
    expect_read("missing file", ERR_IO, "No such file", NULL);
    /* in-memory garbage */
    model *m = NULL;
    EXPECT(kh5_read_mem("hello world, not hdf5", 21, "mem.h5", &m, NULL, &e) == ERR_FORMAT &&
           strstr(e.msg, "mem.h5") != NULL);
    /* a good image in memory reads */
    char *img = kh5t_slurp(good, &n);
    EXPECT_MSG(kh5_read_mem(img, n, "mem.h5", &m, NULL, &e) == ERR_OK, "%s", e.msg);
    model_destroy(m);
    free(img);
}

static void structure_cases(void)
{
    hid_t f = open_bad();
    H5Ldelete(f, "/model_weights/dense/dense/kernel:0", H5P_DEFAULT);
    H5Fclose(f);
    expect_read("missing dataset", ERR_FORMAT, "/model_weights/dense/dense/kernel:0",
                "layer \"dense\"");

    f = open_bad();
    hsize_t wrong[2] = {16, 8};
    replace_dset(f, "/model_weights/dense/dense/kernel:0", H5T_IEEE_F32LE, 2, wrong);
    H5Fclose(f);
    expect_read("shape mismatch", ERR_SHAPE, "[16, 8], expected [8, 16]", "layer \"dense\"");

    f = open_bad();
    hsize_t huge[2] = {(hsize_t)1 << 30, (hsize_t)1 << 30};
    replace_dset(f, "/model_weights/dense/dense/kernel:0", H5T_IEEE_F32LE, 2, huge);
    H5Fclose(f);
    expect_read("huge declared shape", ERR_SHAPE, "[1073741824, 1073741824]", "layer \"dense\"");

    f = open_bad();
    hsize_t bdim[1] = {16};
    replace_dset(f, "/model_weights/dense/dense/bias:0", H5T_STD_I32LE, 1, bdim);
    H5Fclose(f);
    expect_read("integer weights", ERR_FORMAT, "/model_weights/dense/dense/bias:0",
                "integer dtype");

    f = open_bad();
    {
        hid_t g = H5Gopen2(f, "/model_weights/dense", H5P_DEFAULT);
        const char *names[3] = {"dense/kernel:0", "dense/bias:0", "dense/extra:0"};
        set_str_list(g, "weight_names", 3, names);
        hsize_t d1[1] = {16};
        replace_dset(g, "dense/extra:0", H5T_IEEE_F32LE, 1, d1);
        H5Gclose(g);
    }
    H5Fclose(f);
    expect_read("weight count", ERR_SHAPE, "/model_weights/dense: weight count mismatch",
                "\"dense\"");

    f = open_bad();
    {
        hid_t g = H5Gopen2(f, "/model_weights", H5P_DEFAULT);
        const char *names[1] = {"dense"};
        H5Adelete(g, "layer_names");
        set_str_list(g, "layer_names", 1, names);
        H5Gclose(g);
    }
    H5Fclose(f);
    expect_read("layer count", ERR_SHAPE, "layer count mismatch", "dense_1");

    f = open_bad();
    H5Ldelete(f, "/model_weights/dense_1", H5P_DEFAULT);
    H5Fclose(f);
    expect_read("missing layer group", ERR_FORMAT, "/model_weights/dense_1", "layer_names");

    f = open_bad();
    H5Ldelete(f, "/model_weights", H5P_DEFAULT);
    H5Fclose(f);
    expect_read("no model_weights", ERR_FORMAT, "/model_weights", NULL);

    f = open_bad();
    {
        hid_t g = H5Gopen2(f, "/model_weights/top_level_model_weights", H5P_DEFAULT);
        const char *names[1] = {"seq/extra:0"};
        set_str_list(g, "weight_names", 1, names);
        H5Gclose(g);
    }
    H5Fclose(f);
    expect_read("top-level weights", ERR_SHAPE, "top_level_model_weights", NULL);

    f = open_bad();
    {
        hid_t g = H5Gopen2(f, "/model_weights", H5P_DEFAULT);
        H5Adelete(g, "layer_names");
        hsize_t d = 2;
        hid_t s = H5Screate_simple(1, &d, NULL);
        hid_t a = H5Acreate2(g, "layer_names", H5T_STD_I32LE, s, H5P_DEFAULT, H5P_DEFAULT);
        int v[2] = {1, 2};
        H5Awrite(a, H5T_NATIVE_INT, v);
        H5Aclose(a);
        H5Sclose(s);
        H5Gclose(g);
    }
    H5Fclose(f);
    expect_read("layer_names not strings", ERR_FORMAT, "layer_names", "expected strings");

    f = open_bad();
    {
        H5Adelete(f, "model_config");
        hid_t s = H5Screate(H5S_SCALAR);
        hid_t a = H5Acreate2(f, "model_config", H5T_IEEE_F64LE, s, H5P_DEFAULT, H5P_DEFAULT);
        double v = 1.5;
        H5Awrite(a, H5T_NATIVE_DOUBLE, &v);
        H5Aclose(a);
        H5Sclose(s);
    }
    H5Fclose(f);
    expect_read("model_config not a string", ERR_FORMAT, "model_config", "expected strings");

    f = open_bad();
    {
        H5Adelete(f, "training_config");
        hid_t s = H5Screate(H5S_SCALAR);
        hid_t a = H5Acreate2(f, "training_config", H5T_STD_I64LE, s, H5P_DEFAULT, H5P_DEFAULT);
        long long v = 3;
        H5Awrite(a, H5T_NATIVE_LLONG, &v);
        H5Aclose(a);
        H5Sclose(s);
    }
    H5Fclose(f);
    expect_read("training_config not a string", ERR_FORMAT, "training_config", NULL);

    f = open_bad();
    set_scalar_str(f, "model_config", "{\"class_name\": \"Sequential\", \"config\": {");
    H5Fclose(f);
    {
        err_info e = {0};
        model *m = NULL;
        int rc = kh5_read(bad, &m, &e);
        EXPECT_MSG(rc != ERR_OK && strstr(e.msg, bad) && strstr(e.msg, "model_config"),
                   "bad json: %s", e.msg);
        printf("%-28s %-16s %s\n", "model_config bad JSON", err_code_str((err_code)rc), e.msg);
    }

    f = open_bad();
    {
        char *cfg = get_scalar_str(f, "model_config");
        char *at = cfg ? strstr(cfg, "\"Dense\"") : NULL;
        if (at != NULL) {
            /* the first Dense becomes a class nobody knows */
            size_t n = strlen(cfg) + 32;
            char *mod = malloc(n);
            snprintf(mod, n, "%.*s\"FancyLayer\"%s", (int)(at - cfg), cfg, at + 7);
            set_scalar_str(f, "model_config", mod);
            free(mod);
        }
        EXPECT(at != NULL);
        free(cfg);
    }
    H5Fclose(f);
    {
        err_info e = {0};
        model *m = NULL;
        int rc = kh5_read(bad, &m, &e);
        EXPECT_MSG(rc != ERR_OK && strstr(e.msg, bad) && strstr(e.msg, "FancyLayer"),
                   "unknown layer: %s", e.msg);
        printf("%-28s %-16s %s\n", "unknown layer class", err_code_str((err_code)rc), e.msg);
    }

    /* a Keras 3 native weights file */
    f = H5Fcreate(bad, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    H5Gclose(H5Gcreate2(f, "layers", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    H5Gclose(H5Gcreate2(f, "vars", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    H5Fclose(f);
    expect_read("keras 3 weights file", ERR_UNSUPPORTED, "Keras 3 native weights", NULL);

    /* HDF5, but not Keras */
    f = H5Fcreate(bad, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    H5Gclose(H5Gcreate2(f, "data", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    H5Fclose(f);
    expect_read("not a Keras file", ERR_FORMAT, "not a Keras .h5 file", NULL);

    /* a weights-only file where a model is expected */
    copy_file(good_w, bad, -1);
    expect_read("weights-only as model", ERR_FORMAT, "weights-only", NULL);
}

static void value_cases(void)
{
    /* NaN weights load, with a warning naming the dataset and the layer. */
    hid_t f = open_bad();
    {
        hid_t d = H5Dopen2(f, "/model_weights/dense_1/dense_1/bias:0", H5P_DEFAULT);
        float v[3] = {NAN, 1.0f, INFINITY};
        H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
        H5Dclose(d);
    }
    H5Fclose(f);
    err_info e = {0};
    model *m = NULL;
    kh5_warnings w;
    EXPECT_MSG(kh5_read_ex(bad, &m, &w, &e) == ERR_OK, "%s", e.msg);
    EXPECT_MSG(w.count == 1 && strstr(w.msg[0], bad) &&
                   strstr(w.msg[0], "/model_weights/dense_1/dense_1/bias:0") &&
                   strstr(w.msg[0], "2 of 3 values are NaN or Inf") &&
                   strstr(w.msg[0], "layer \"dense_1\""),
               "nan warning: %d %s", w.count, w.count ? w.msg[0] : "");
    model_destroy(m);
    printf("%-28s %-16s %s\n", "NaN weights (warning)", "ERR_OK", w.count ? w.msg[0] : "");
}

static void optimizer_cases(void)
{
    hid_t f = open_bad();
    {
        /* drop the last name: 2 * 4 - 1 slot tensors for 4 weights */
        hid_t g = H5Gopen2(f, "/optimizer_weights", H5P_DEFAULT);
        const char *names[8] = {"Adam/iter:0",           "Adam/dense/kernel/m:0",
                                "Adam/dense/bias/m:0",   "Adam/dense_1/kernel/m:0",
                                "Adam/dense_1/bias/m:0", "Adam/dense/kernel/v:0",
                                "Adam/dense/bias/v:0",   "Adam/dense_1/kernel/v:0"};
        set_str_list(g, "weight_names", 8, names);
        H5Gclose(g);
    }
    H5Fclose(f);
    expect_read("optimizer slot count", ERR_SHAPE, "/optimizer_weights", "7 slot tensors");

    f = open_bad();
    hsize_t wrong[2] = {3, 16};
    replace_dset(f, "/optimizer_weights/Adam/dense_1/kernel/v:0", H5T_IEEE_F32LE, 2, wrong);
    H5Fclose(f);
    expect_read("optimizer slot shape", ERR_SHAPE, "/optimizer_weights/Adam/dense_1/kernel/v:0",
                "layer \"dense_1\"");

    f = open_bad();
    H5Ldelete(f, "/optimizer_weights/Adam/dense/bias/m:0", H5P_DEFAULT);
    H5Fclose(f);
    expect_read("optimizer dataset missing", ERR_FORMAT, "/optimizer_weights/Adam/dense/bias/m:0",
                "dataset missing");

    f = open_bad();
    {
        hid_t d = H5Dopen2(f, "/optimizer_weights/Adam/iter:0", H5P_DEFAULT);
        long long v = -5;
        H5Dwrite(d, H5T_NATIVE_LLONG, H5S_ALL, H5S_ALL, H5P_DEFAULT, &v);
        H5Dclose(d);
    }
    H5Fclose(f);
    expect_read("negative iterations", ERR_FORMAT, "iteration counter", NULL);
}

static void weights_cases(void)
{
    /* weights of another architecture */
    int64_t in[1] = {8};
    model *other = kh5t_seq("other", 1, in, DTYPE_F32);
    layer_config c = kh5t_cfg(LAYER_DENSE);
    c.units = 4;
    kh5t_add(other, LAYER_DENSE, "d", &c);
    EXPECT(kh5t_finish(other, 1) == 0);
    err_info e = {0};
    int rc = kh5_read_weights(good_w, other, &e);
    EXPECT_MSG(rc == ERR_SHAPE && strstr(e.msg, good_w) && strstr(e.msg, "layer count mismatch"),
               "%s", e.msg);
    printf("%-28s %-16s %s\n", "weights of another model", err_code_str((err_code)rc), e.msg);
    model_destroy(other);
    /* Keras 3 native weights where legacy weights are expected */
    model *m = make_model();
    hid_t f = H5Fcreate(bad, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    H5Gclose(H5Gcreate2(f, "layers", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    H5Gclose(H5Gcreate2(f, "vars", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    H5Fclose(f);
    float before = m->params[0];
    rc = kh5_read_weights(bad, m, &e);
    EXPECT_MSG(rc == ERR_UNSUPPORTED && strstr(e.msg, bad), "%s", e.msg);
    /* a damaged weights-only file leaves the model untouched */
    copy_file(good_w, bad, -1);
    f = H5Fopen(bad, H5F_ACC_RDWR, H5P_DEFAULT);
    hsize_t wrong[1] = {5};
    replace_dset(f, "/dense_1/dense_1/bias:0", H5T_IEEE_F32LE, 1, wrong);
    H5Fclose(f);
    m->params[0] = 123.0f;
    rc = kh5_read_weights(bad, m, &e);
    EXPECT_MSG(rc == ERR_SHAPE && strstr(e.msg, "/dense_1/dense_1/bias:0") &&
                   m->params[0] == 123.0f,
               "%s", e.msg);
    (void)before;
    model_destroy(m);
}

static void write_failures(void)
{
    model *m = make_model();
    err_info e = {0};
    /* an output directory that does not exist */
    int rc = kh5_write("/nonexistent-dir/x.h5", m, true, &e);
    EXPECT_MSG(rc == ERR_IO && strstr(e.msg, "/nonexistent-dir/x.h5"), "%s", e.msg);
    /* a failing write leaves an existing file as it was, and no temporary behind */
    copy_file(good, bad, -1);
    size_t n0, n1;
    char *before = kh5t_slurp(bad, &n0);
    int64_t in[1] = {2};
    model *r = kh5t_seq("r", 1, in, DTYPE_F32);
    layer_config c = kh5t_cfg(LAYER_DENSE);
    c.units = 1;
    kh5t_add(r, LAYER_DENSE, "top_level_model_weights", &c);
    EXPECT(kh5t_finish(r, 1) == 0);
    rc = kh5_write(bad, r, false, &e);
    EXPECT_MSG(rc == ERR_CONFIG && strstr(e.msg, "top_level_model_weights"), "%s", e.msg);
    char *after = kh5t_slurp(bad, &n1);
    EXPECT(before != NULL && after != NULL && n0 == n1 && memcmp(before, after, n0) == 0);
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", bad, (long)getpid());
    EXPECT(access(tmp, F_OK) != 0);
    free(before);
    free(after);
    model_destroy(r);
    model_destroy(m);
}

int main(void)
{
    kh5t_tmp(good, sizeof good, "good");
    kh5t_tmp(bad, sizeof bad, "bad");
    kh5t_tmp(good_w, sizeof good_w, "good_w");
    model *m = make_model();
    EXPECT(m != NULL);
    if (m == NULL)
        return test_finish();
    err_info e = {0};
    EXPECT_MSG(kh5_write(good, m, true, &e) == ERR_OK, "%s", e.msg);
    EXPECT_MSG(kh5_write_weights(good_w, m, &e) == ERR_OK, "%s", e.msg);
    model_destroy(m);
    model *check = NULL;
    EXPECT_MSG(kh5_read(good, &check, &e) == ERR_OK, "good file: %s", e.msg);
    model_destroy(check);

    bytes_cases();
    structure_cases();
    value_cases();
    optimizer_cases();
    weights_cases();
    write_failures();

    remove(good);
    remove(bad);
    remove(good_w);
    return test_finish();
}
