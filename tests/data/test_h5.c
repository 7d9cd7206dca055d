/* HDF5 sources: a test file made with the HDF5 C API (several integer and float types, both byte
 * orders, chunked and compressed, nested groups), reads in any order with duplicates, reads
 * larger than the read buffer, a loader over HDF5, and the rejection paths. */

#include "trainer/data.h"

#include <hdf5.h>
#include <stdint.h>

#include "data_test.h"
#include "trainer/data_impl.h"

static char g_dir[4096];
/* The dataset checks run twice: read whole at open, and streamed (pread or HDF5 selections). */
static uint64_t g_limit = DATA_MEM_LIMIT;

static void put(hid_t file, const char *name, hid_t ftype, hid_t mtype, int rank,
                const hsize_t *dims, const void *data, const hsize_t *chunk)
{
    hid_t sp = H5Screate_simple(rank, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (chunk != NULL) {
        H5Pset_chunk(dcpl, rank, chunk);
        H5Pset_deflate(dcpl, 4);
    }
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t d = H5Dcreate2(file, name, ftype, sp, lcpl, dcpl, H5P_DEFAULT);
    if (d < 0 || H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0) {
        fprintf(stderr, "cannot write %s\n", name);
        exit(1);
    }
    H5Dclose(d);
    H5Pclose(lcpl);
    H5Pclose(dcpl);
    H5Sclose(sp);
}

enum { NBIG = 300000 };

static void make_file(const char *path)
{
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    uint8_t u8[60];
    for (int i = 0; i < 60; i++)
        u8[i] = (uint8_t)(i * 4);
    const hsize_t d_u8[3] = {10, 3, 2};
    put(f, "u8", H5T_STD_U8LE, H5T_NATIVE_UINT8, 3, d_u8, u8, NULL);
    int16_t i16[28];
    for (int i = 0; i < 28; i++)
        i16[i] = (int16_t)((i - 14) * 1111);
    const hsize_t d_i16[2] = {7, 4};
    put(f, "i16be", H5T_STD_I16BE, H5T_NATIVE_INT16, 2, d_i16, i16, NULL);
    double f64[5] = {1e300, -2.5, 0.1, 1e-50, 16777217.0};
    const hsize_t d_f64[1] = {5};
    put(f, "/grp/sub/f64", H5T_IEEE_F64BE, H5T_NATIVE_DOUBLE, 1, d_f64, f64, NULL);
    float f32[600];
    for (int i = 0; i < 600; i++)
        f32[i] = (float)i * 0.5f - 7.0f;
    const hsize_t d_f32[2] = {100, 6}, c_f32[2] = {7, 6};
    put(f, "grp/chunked", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, d_f32, f32, c_f32);
    uint64_t u64[4] = {0, 1, (uint64_t)1 << 40, 12345};
    const hsize_t d_u64[1] = {4};
    put(f, "u64", H5T_STD_U64LE, H5T_NATIVE_UINT64, 1, d_u64, u64, NULL);
    float *big = malloc(NBIG * sizeof *big);
    for (int i = 0; i < NBIG; i++)
        big[i] = (float)i;
    const hsize_t d_big[2] = {NBIG, 1}, c_big[2] = {4096, 1};
    put(f, "big", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, d_big, big, c_big);
    free(big);
    /* Unsupported shapes and types. */
    hid_t st = H5Tcopy(H5T_C_S1);
    H5Tset_size(st, 4);
    const hsize_t d_s[1] = {2};
    put(f, "str", st, st, 1, d_s, "abcdefgh", NULL);
    H5Tclose(st);
    hid_t sc = H5Screate(H5S_SCALAR);
    hid_t d = H5Dcreate2(f, "scalar", H5T_NATIVE_FLOAT, sc, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dclose(d);
    H5Sclose(sc);
    const hsize_t d9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    float one = 1;
    put(f, "rank9", H5T_NATIVE_FLOAT, H5T_NATIVE_FLOAT, 9, d9, &one, NULL);
    H5Gclose(H5Gcreate2(f, "agroup", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    H5Fclose(f);
}

/* direct: stored contiguously with a plain type, so streamed with pread(). */
static void check_read(const char *path, const char *ds, bool direct, int64_t rows, int rank_row,
                       int64_t row_len, dtype dt, const int64_t *ids, int n, float scale,
                       const float *expect_all)
{
    data_source *s = NULL;
    err_info e = {0};
    int rc = g_limit == DATA_MEM_LIMIT ? data_source_open_h5(path, ds, &s, &e)
                                       : data__h5_open(path, ds, g_limit, &s, &e);
    EXPECT_MSG(rc == ERR_OK, "%s: %s", ds, e.msg);
    if (rc != ERR_OK)
        return;
    data_backend want = g_limit > 0 && ((uint64_t)rows * (uint64_t)row_len * 8 <= g_limit)
                            ? DATA_BACKEND_MEM
                        : direct ? DATA_BACKEND_FD
                                 : DATA_BACKEND_H5;
    EXPECT_MSG(s->backend == want, "%s: backend %d, expected %d", ds, (int)s->backend, (int)want);
    EXPECT_MSG(data_source_rows(s) == rows && data_source_row_rank(s) == rank_row &&
                   data_source_row_len(s) == row_len && data_source_dtype(s) == dt,
               "%s: rows %lld rank %d len %lld dtype %s", ds, (long long)data_source_rows(s),
               data_source_row_rank(s), (long long)data_source_row_len(s),
               dtype_name(data_source_dtype(s)));
    EXPECT(strstr(data_source_name(s), path) != NULL && strstr(data_source_name(s), ds) != NULL);
    float *got = malloc((size_t)(n * row_len) * sizeof *got);
    rc = data_source_read(s, ids, n, scale, got, &e);
    EXPECT_MSG(rc == ERR_OK, "%s", e.msg);
    int bad = 0;
    for (int i = 0; i < n && rc == ERR_OK; i++)
        for (int64_t k = 0; k < row_len; k++)
            bad += got[i * row_len + k] != expect_all[ids[i] * row_len + k] * scale;
    EXPECT_MSG(bad == 0, "%s: %d mismatches", ds, bad);
    free(got);
    data_source_destroy(s);
}

static void check_datasets(const char *p)
{
    float u8[60], i16[28], f64[5], f32[600], u64[4];
    for (int i = 0; i < 60; i++)
        u8[i] = (float)(i * 4);
    for (int i = 0; i < 28; i++)
        i16[i] = (float)((i - 14) * 1111);
    const double d64[5] = {1e300, -2.5, 0.1, 1e-50, 16777217.0};
    for (int i = 0; i < 5; i++)
        f64[i] = (float)d64[i];
    for (int i = 0; i < 600; i++)
        f32[i] = (float)i * 0.5f - 7.0f;
    u64[0] = 0;
    u64[1] = 1;
    u64[2] = (float)((uint64_t)1 << 40);
    u64[3] = 12345;
    const int64_t a[6] = {9, 0, 0, 5, 6, 4};
    check_read(p, "u8", true, 10, 2, 6, DTYPE_U8, a, 6, 1.0f / 255.0f, u8);
    check_read(p, "/u8", true, 10, 2, 6, DTYPE_U8, a, 6, 1.0f, u8);
    const int64_t b[5] = {6, 1, 2, 3, 1};
    check_read(p, "i16be", true, 7, 1, 4, DTYPE_I32, b, 5, 1.0f, i16);
    const int64_t c[5] = {4, 3, 2, 1, 0};
    check_read(p, "grp/sub/f64", true, 5, 0, 1, DTYPE_F64, c, 5, 1.0f, f64);
    int64_t d[40];
    for (int i = 0; i < 40; i++)
        d[i] = (i * 37 + 11) % 100;
    check_read(p, "/grp/chunked", false, 100, 1, 6, DTYPE_F32, d, 40, 2.0f, f32);
    const int64_t u[4] = {3, 2, 1, 0};
    check_read(p, "u64", true, 4, 0, 1, DTYPE_I64, u, 4, 1.0f, u64);

    /* More rows than the 1 MiB float buffer holds (262144): two reads, runs and gaps. */
    float *big = malloc(NBIG * sizeof *big);
    for (int i = 0; i < NBIG; i++)
        big[i] = (float)i;
    int n = 205000;
    int64_t *ids = malloc((size_t)n * sizeof *ids);
    for (int i = 0; i < n; i++)
        ids[i] = (i < 200000) ? NBIG - 1 - i : ((int64_t)i * 7919) % NBIG;
    check_read(p, "big", false, NBIG, 1, 1, DTYPE_F32, ids, n, 1.0f, big);
    free(ids);
    free(big);
}

/* A user block shifts every address: the direct (pread) path must use absolute offsets. */
static void check_userblock(void)
{
    char p[4352];
    snprintf(p, sizeof p, "%s/ublock.h5", g_dir);
    hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
    H5Pset_userblock(fcpl, 1024);
    hid_t f = H5Fcreate(p, H5F_ACC_TRUNC, fcpl, H5P_DEFAULT);
    int32_t v[12];
    float expect[12];
    for (int i = 0; i < 12; i++) {
        v[i] = i * 1000 - 5000;
        expect[i] = (float)v[i];
    }
    const hsize_t d[2] = {4, 3};
    put(f, "v", H5T_STD_I32BE, H5T_NATIVE_INT32, 2, d, v, NULL);
    H5Fclose(f);
    H5Pclose(fcpl);
    const int64_t ids[4] = {3, 1, 2, 0};
    for (int pass = 0; pass < 2; pass++) {
        g_limit = pass == 0 ? DATA_MEM_LIMIT : 0;
        check_read(p, "v", true, 4, 1, 3, DTYPE_I32, ids, 4, 1.0f, expect);
    }
}

static void check_rejections(const char *p)
{
    data_source *s = NULL;
    err_info e = {0};
    EXPECT_ERR(data_source_open_h5(p, "str", &s, &e), e, ERR_UNSUPPORTED, p, "/str", "string");
    EXPECT_ERR(data_source_open_h5(p, "scalar", &s, &e), e, ERR_FORMAT, "/scalar", "scalar");
    EXPECT_ERR(data_source_open_h5(p, "rank9", &s, &e), e, ERR_UNSUPPORTED, "/rank9", "rank 9");
    EXPECT_ERR(data_source_open_h5(p, "nope", &s, &e), e, ERR_FORMAT, p, "/nope");
    EXPECT_ERR(data_source_open_h5(p, "agroup", &s, &e), e, ERR_FORMAT, "/agroup");
    EXPECT_ERR(data_source_open_h5(p, NULL, &s, &e), e, ERR_USAGE, p);
    EXPECT_ERR(data_source_open_h5(p, "", &s, &e), e, ERR_USAGE, p);
    EXPECT_ERR(data_source_open(p, NULL, &s, &e), e, ERR_USAGE, p);
    char q[4352];
    snprintf(q, sizeof q, "%s/missing.h5", g_dir);
    EXPECT_ERR(data_source_open_h5(q, "u8", &s, &e), e, ERR_IO, q, "No such file");
    snprintf(q, sizeof q, "%s/text.h5", g_dir);
    dt_write(q, "not hdf5 at all", 15);
    EXPECT_ERR(data_source_open_h5(q, "u8", &s, &e), e, ERR_FORMAT, q, "not an HDF5 file");
    /* A truncated copy: HDF5 notices that the end of file is before the end of its data. */
    size_t len = 0;
    unsigned char *b = dt_read(p, &len);
    snprintf(q, sizeof q, "%s/trunc.h5", g_dir);
    dt_write(q, b, len / 2);
    free(b);
    EXPECT_ERR(data_source_open_h5(q, "u8", &s, &e), e, ERR_FORMAT, q);
    printf("truncated HDF5 message: %s\n", e.msg);
    EXPECT(s == NULL);
    /* Out of range rows. */
    EXPECT(data_source_open_h5(p, "u8", &s, &e) == ERR_OK);
    const int64_t bad[2] = {3, 10};
    float out[12];
    EXPECT_ERR(data_source_read(s, bad, 2, 1.0f, out, &e), e, ERR_RANGE, "/u8", "row 10");
    data_source_destroy(s);
}

/* A loader mixing an HDF5 input with an NPY target. */
static void check_loader(const char *p)
{
    data_source *x = NULL, *y = NULL;
    err_info e = {0};
    char q[4352];
    snprintf(q, sizeof q, "%s/y.npy", g_dir);
    float yv[100];
    for (int i = 0; i < 100; i++)
        yv[i] = (float)i;
    const int64_t ys[1] = {100};
    EXPECT(data_npy_write(q, 1, ys, yv, &e) == ERR_OK);
    EXPECT(data_source_open_h5(p, "grp/chunked", &x, &e) == ERR_OK);
    EXPECT(data_source_open_npy(q, &y, &e) == ERR_OK);
    data_loader_config c = data_loader_config_default();
    c.end = 100;
    c.batch = 16;
    c.seed = 3;
    c.rank = 1;
    c.nranks = 3;
    data_loader *l = NULL;
    const float xs = 2.0f;
    EXPECT(data_loader_create(&x, &xs, 1, &y, 1, &c, &l, &e) == ERR_OK);
    if (l == NULL) {
        fprintf(stderr, "%s\n", e.msg);
        data_source_destroy(x);
        data_source_destroy(y);
        return;
    }
    float xb[6 * 6], yb[6];
    float *xp = xb, *yp = yb;
    int64_t g, n;
    bool done = false;
    int bad = 0, steps = 0;
    while (data_loader_next(l, &xp, &yp, &g, &n, &done, &e) == ERR_OK && !done) {
        steps++;
        for (int64_t i = 0; i < n; i++)
            for (int k = 0; k < 6; k++)
                bad += xb[i * 6 + k] != ((float)(yb[i] * 6 + (float)k) * 0.5f - 7.0f) * 2.0f;
    }
    EXPECT(steps == 7 && done && bad == 0);
    data_loader_destroy(l);
    data_source_destroy(x);
    data_source_destroy(y);
}

int main(void)
{
    dt_mkdtemp(g_dir, sizeof g_dir);
    char p[4352];
    snprintf(p, sizeof p, "%s/test.h5", g_dir);
    make_file(p);
    for (int pass = 0; pass < 2; pass++) {
        g_limit = pass == 0 ? DATA_MEM_LIMIT : 0;
        check_datasets(p);
    }
    check_userblock();
    check_rejections(p);
    check_loader(p);
    dt_rmdir(g_dir);
    return test_finish();
}
