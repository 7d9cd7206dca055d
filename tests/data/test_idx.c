/* IDX: the real Fashion-MNIST files against an independent zlib read, every IDX type raw and
 * gzip (in memory and through the temporary file), and one check per rejection path. */

#include "trainer/data.h"

#include <math.h>
#include <stdint.h>
#include <time.h>
#include <zlib.h>

#include "data_test.h"
#include "trainer/data_impl.h"

static char g_dir[4096];

static void path_of(char *p, size_t cap, const char *name)
{
    snprintf(p, cap, "%s/%s", g_dir, name);
}

/* Independent reader: the whole decompressed file through zlib's gz* API. */
static unsigned char *gunzip_file(const char *path, size_t *len)
{
    gzFile f = gzopen(path, "rb");
    if (f == NULL)
        return NULL;
    size_t cap = 1 << 20, n = 0;
    unsigned char *b = malloc(cap);
    for (;;) {
        if (n == cap) {
            cap *= 2;
            b = realloc(b, cap);
        }
        int got = gzread(f, b + n, (unsigned)(cap - n < (1u << 30) ? cap - n : (1u << 30)));
        if (got <= 0)
            break;
        n += (size_t)got;
    }
    gzclose(f);
    *len = n;
    return b;
}

static void gzip_to(const char *path, const void *buf, size_t len)
{
    gzFile f = gzopen(path, "wb");
    if (f == NULL || (len > 0 && gzwrite(f, buf, (unsigned)len) != (int)len) ||
        gzclose(f) != Z_OK) {
        fprintf(stderr, "gzip_to %s failed\n", path);
        exit(1);
    }
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ---- Fashion-MNIST ---- */

static void check_fashion(void)
{
    char tx[DATA_PATH_MAX], ty[DATA_PATH_MAX], vx[DATA_PATH_MAX], vy[DATA_PATH_MAX];
    err_info e = {0};
    int rc = data_fashion_mnist_paths(NULL, tx, ty, vx, vy, &e);
    EXPECT_MSG(rc == ERR_OK, "%s", e.msg);
    if (rc != ERR_OK)
        return;
    EXPECT(strstr(tx, "train-images-idx3-ubyte") != NULL);
    EXPECT(strstr(vy, "t10k-labels-idx1-ubyte") != NULL);
    data_source *x = NULL, *y = NULL, *tx_s = NULL, *ty_s = NULL;
    EXPECT((rc = data_source_open_idx(tx, &x, &e)) == ERR_OK);
    EXPECT(data_source_open_idx(ty, &y, &e) == ERR_OK);
    EXPECT(data_source_open_idx(vx, &tx_s, &e) == ERR_OK);
    EXPECT(data_source_open_idx(vy, &ty_s, &e) == ERR_OK);
    if (x == NULL || y == NULL || tx_s == NULL || ty_s == NULL) {
        fprintf(stderr, "%s\n", e.msg);
        goto done;
    }
    EXPECT(data_source_rows(x) == 60000 && data_source_rows(y) == 60000);
    EXPECT(data_source_rows(tx_s) == 10000 && data_source_rows(ty_s) == 10000);
    EXPECT(data_source_row_rank(x) == 2 && data_source_row_shape(x)[0] == 28 &&
           data_source_row_shape(x)[1] == 28 && data_source_row_len(x) == 784);
    EXPECT(data_source_row_rank(y) == 0 && data_source_row_len(y) == 1);
    EXPECT(data_source_dtype(x) == DTYPE_U8 && data_source_dtype(y) == DTYPE_U8);

    /* First labels, as published with the data set. */
    const float first_train[10] = {9, 0, 0, 3, 0, 2, 7, 2, 5, 5};
    const float first_test[10] = {9, 2, 1, 1, 6, 1, 4, 6, 5, 7};
    const int64_t ten[10] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
    float lab[10];
    EXPECT(data_source_read(y, ten, 10, 1.0f, lab, &e) == ERR_OK);
    EXPECT(memcmp(lab, first_train, sizeof lab) == 0);
    EXPECT(data_source_read(ty_s, ten, 10, 1.0f, lab, &e) == ERR_OK);
    EXPECT(memcmp(lab, first_test, sizeof lab) == 0);

    /* Every pixel and label against an independent decompression. */
    size_t nraw = 0, nlab = 0;
    unsigned char *raw = gunzip_file(tx, &nraw), *rawl = gunzip_file(ty, &nlab);
    EXPECT(raw != NULL && nraw == 16 + 60000 * 784 && rawl != NULL && nlab == 8 + 60000);
    if (raw != NULL && nraw == 16 + 60000 * 784 && rawl != NULL && nlab == 8 + 60000) {
        EXPECT(raw[2] == 0x08 && raw[3] == 3 && rawl[3] == 1);
        const float scale = 1.0f / 255.0f;
        enum { B = 1000 };
        int64_t rows[B];
        float *img = malloc((size_t)B * 784 * sizeof *img), l2[B];
        long bad = 0, badl = 0;
        uint64_t sum = 0;
        for (int64_t b0 = 0; b0 < 60000; b0 += B) {
            for (int i = 0; i < B; i++)
                rows[i] = b0 + (i * 7) % B; /* a permutation of the block */
            EXPECT(data_source_read(x, rows, B, scale, img, &e) == ERR_OK);
            EXPECT(data_source_read(y, rows, B, 1.0f, l2, &e) == ERR_OK);
            for (int i = 0; i < B; i++) {
                const unsigned char *px = raw + 16 + rows[i] * 784;
                for (int j = 0; j < 784; j++) {
                    bad += img[i * 784 + j] != (float)px[j] * scale;
                    sum += px[j];
                }
                badl += l2[i] != (float)rawl[8 + rows[i]];
            }
        }
        EXPECT_MSG(bad == 0 && badl == 0, "%ld pixel and %ld label mismatches", bad, badl);
        EXPECT(sum == 3431114169u); /* numpy: frombuffer(...).sum() */
        /* Row 0, line 10, columns 10..19, unscaled. */
        const int64_t r0 = 0;
        EXPECT(data_source_read(x, &r0, 1, 1.0f, img, &e) == ERR_OK);
        const float line[10] = {0, 0, 0, 193, 228, 218, 213, 198, 180, 212};
        EXPECT(memcmp(img + 10 * 28 + 10, line, sizeof line) == 0);
        free(img);
    }
    free(raw);
    free(rawl);

    /* The loader over the real data: one epoch at batch 128, and the per-step cost. */
    data_loader_config c = data_loader_config_default();
    c.end = 60000;
    c.batch = 128;
    c.seed = 42;
    data_loader *l = NULL;
    const float xs = 1.0f / 255.0f;
    EXPECT(data_loader_create(&x, &xs, 1, &y, 1, &c, &l, &e) == ERR_OK);
    if (l != NULL) {
        float *xb = malloc(128 * 784 * sizeof *xb), yb[128];
        int64_t g, n, rows = 0;
        bool done = false;
        double label_sum = 0, t0 = now_s();
        int steps = 0;
        while (data_loader_next(l, &xb, (float *const *)&(float *){yb}, &g, &n, &done, &e) ==
                   ERR_OK &&
               !done) {
            rows += n;
            steps++;
            for (int64_t i = 0; i < n; i++)
                label_sum += yb[i];
        }
        double dt = now_s() - t0;
        EXPECT(steps == 469 && rows == 60000 && done);
        EXPECT(label_sum == 6000.0 * 45); /* 6000 images of each class 0..9 */
        printf("fashion-mnist loader: %d steps of 128 rows, %.1f us per step\n", steps,
               1e6 * dt / steps);
        free(xb);
    }
    data_loader_destroy(l);
done:
    data_source_destroy(x);
    data_source_destroy(y);
    data_source_destroy(tx_s);
    data_source_destroy(ty_s);
}

/* ---- every IDX type, raw and gzip ---- */

static size_t idx_image(unsigned char *out, unsigned char type, int nd, const uint32_t *dims,
                        const void *data, size_t dlen)
{
    out[0] = out[1] = 0;
    out[2] = type;
    out[3] = (unsigned char)nd;
    for (int i = 0; i < nd; i++)
        for (int k = 0; k < 4; k++)
            out[4 + 4 * i + k] = (unsigned char)(dims[i] >> (24 - 8 * k));
    memcpy(out + 4 + 4 * nd, data, dlen);
    return 4 + 4 * (size_t)nd + dlen;
}

static void check_types(void)
{
    struct {
        unsigned char code;
        int size;
        char kind;
        dtype dt;
    } types[] = {
        {0x08, 1, 'u', DTYPE_U8},  {0x09, 1, 'i', DTYPE_I32}, {0x0b, 2, 'i', DTYPE_I32},
        {0x0c, 4, 'i', DTYPE_I32}, {0x0d, 4, 'f', DTYPE_F32}, {0x0e, 8, 'f', DTYPE_F64},
    };
    /* 5 rows of [2, 3]: values (row * 6 + k) * sign - 7, as the type allows. */
    const uint32_t dims[3] = {5, 2, 3};
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        unsigned char data[30 * 8], img[512];
        float expect[30];
        for (int i = 0; i < 30; i++) {
            double v = types[t].kind == 'u' ? i * 8 + 1 : (i - 11) * 1000.5;
            if (types[t].kind == 'i')
                v = types[t].size == 1 ? i * 8 - 120 : (i - 11) * 1001;
            if (types[t].size == 4 && types[t].kind == 'i')
                v = (i - 11) * 100000007.0;
            unsigned char *p = data + i * types[t].size;
            uint64_t u;
            if (types[t].kind == 'f' && types[t].size == 4) {
                float f = (float)v;
                uint32_t w;
                memcpy(&w, &f, 4);
                u = w;
                expect[i] = f;
            } else if (types[t].kind == 'f') {
                memcpy(&u, &v, 8);
                expect[i] = (float)v;
            } else {
                u = (uint64_t)(int64_t)v;
                expect[i] = (float)(int64_t)v;
            }
            for (int k = 0; k < types[t].size; k++)
                p[k] = (unsigned char)(u >> (8 * (types[t].size - 1 - k)));
        }
        size_t len = idx_image(img, types[t].code, 3, dims, data, (size_t)(30 * types[t].size));
        char raw[4352], gz[4352];
        path_of(raw, sizeof raw, "t.idx");
        path_of(gz, sizeof gz, "t.idx.gz");
        dt_write(raw, img, len);
        gzip_to(gz, img, len);
        /* Raw and gzip, each in memory and streamed (gzip: through a temporary file). */
        for (int mode = 0; mode < 6; mode++) {
            data_source *s = NULL;
            err_info e = {0};
            int rc = mode == 0   ? data_source_open_idx(raw, &s, &e)
                     : mode == 1 ? data_source_open_idx(gz, &s, &e)
                     : mode == 2 ? data__idx_open_file(raw, 0, &s, &e)
                     : mode == 3 ? data__idx_open_file(gz, 0, &s, &e)
                     : mode == 4 ? data__idx_open_mem(img, len, "mem", 0, &s, &e)
                                 : data__idx_open_mem(img, len, "mem", DATA_MEM_LIMIT, &s, &e);
            EXPECT_MSG(rc == ERR_OK, "type 0x%02x mode %d: %s", types[t].code, mode, e.msg);
            if (rc != ERR_OK)
                continue;
            EXPECT(s->backend == (mode == 2 || mode == 3 ? DATA_BACKEND_FD : DATA_BACKEND_MEM));
            EXPECT(data_source_rows(s) == 5 && data_source_row_len(s) == 6 &&
                   data_source_row_rank(s) == 2 && data_source_row_shape(s)[1] == 3);
            EXPECT(data_source_dtype(s) == types[t].dt);
            const int64_t rows[6] = {4, 4, 0, 3, 1, 2};
            float got[36];
            EXPECT(data_source_read(s, rows, 6, 0.25f, got, &e) == ERR_OK);
            int bad = 0;
            for (int i = 0; i < 6; i++)
                for (int k = 0; k < 6; k++)
                    bad += got[i * 6 + k] != expect[rows[i] * 6 + k] * 0.25f;
            EXPECT_MSG(bad == 0, "type 0x%02x mode %d: %d mismatches", types[t].code, mode, bad);
            data_source_destroy(s);
        }
    }

    /* Two concatenated gzip members read as one stream (gzip -d does the same). */
    unsigned char img[64], d8[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    const uint32_t d1[1] = {10};
    size_t len = idx_image(img, 0x08, 1, d1, d8, 10);
    char a[4352], b[4352];
    path_of(a, sizeof a, "m1.gz");
    path_of(b, sizeof b, "m2.gz");
    gzip_to(a, img, 9);
    gzip_to(b, img + 9, len - 9);
    size_t la, lb;
    unsigned char *ba = dt_read(a, &la), *bb = dt_read(b, &lb);
    unsigned char *cat = malloc(la + lb);
    memcpy(cat, ba, la);
    memcpy(cat + la, bb, lb);
    data_source *s = NULL;
    err_info e = {0};
    int rc = data__idx_open_mem(cat, la + lb, "members", DATA_MEM_LIMIT, &s, &e);
    EXPECT_MSG(rc == ERR_OK, "%s", e.msg);
    if (rc == ERR_OK) {
        const int64_t r = 9;
        float v;
        EXPECT(data_source_read(s, &r, 1, 1.0f, &v, &e) == ERR_OK && v == 10.0f);
    }
    data_source_destroy(s);
    free(ba);
    free(bb);
    free(cat);
}

/* ---- rejection paths ---- */

static void expect_reject(const char *name, const unsigned char *buf, size_t len, bool gz, int code,
                          const char *needle)
{
    char p[4352];
    path_of(p, sizeof p, name);
    if (gz)
        gzip_to(p, buf, len);
    else
        dt_write(p, buf, len);
    data_source *s = NULL;
    err_info e = {0};
    int rc = data_source_open_idx(p, &s, &e);
    EXPECT_MSG(s == NULL, "%s", name);
    EXPECT_ERR(rc, e, code, p, needle);
    data_source_destroy(s);
}

static void check_rejections(void)
{
    unsigned char img[256], data[100] = {0};
    const uint32_t d3[3] = {2, 5, 10};
    size_t len = idx_image(img, 0x08, 3, d3, data, 100); /* 16 + 100 bytes */
    for (int gz = 0; gz < 2; gz++) {
        unsigned char b[256];
        memcpy(b, img, len);
        expect_reject("trunc_data", b, len - 10, gz, ERR_FORMAT,
                      gz ? "truncated: expected 116 uncompressed bytes, the gzip stream holds 106"
                         : "truncated: expected 116 bytes (header 16 + data 100), found 106");
        b[len] = 7;
        expect_reject("trailing", b, len + 1, gz, ERR_FORMAT,
                      gz ? "trailing data: expected 116 uncompressed bytes, the gzip stream "
                           "holds 117"
                         : "trailing data: expected 116 bytes (header 16 + data 100), found 117");
        expect_reject("trunc_header", b, 10, gz, ERR_FORMAT,
                      gz ? "expected 16 uncompressed bytes, the gzip stream holds 10"
                         : "truncated header: expected 16 bytes, found 10");
        expect_reject("tiny", b, 3, gz, ERR_FORMAT, gz ? "holds 3" : "found 3");
        b[0] = 0x01;
        expect_reject("magic", b, len, gz, ERR_FORMAT, "bad magic 0x01000803");
        b[0] = 0;
        b[2] = 0x0a;
        expect_reject("type", b, len, gz, ERR_FORMAT, "unknown IDX type code 0x0a");
        b[2] = 0x08;
        b[3] = 0;
        expect_reject("nodims", b, len, gz, ERR_FORMAT, "no dimensions");
        b[3] = 9;
        expect_reject("ninedims", b, len, gz, ERR_UNSUPPORTED, "9 dimensions");
        /* 8 extents of 2^32 - 1 elements overflow every size type. */
        unsigned char o[36] = {0, 0, 0x0e, 8};
        memset(o + 4, 0xff, 32);
        expect_reject("overflow", o, sizeof o, gz, ERR_RANGE, "overflow");
    }
    /* gzip-level damage. */
    unsigned char big[4096];
    const uint32_t d2[2] = {4, 1020};
    for (int i = 0; i < 4080; i++)
        big[i] = (unsigned char)((i * 131) ^ (i >> 3));
    size_t blen = idx_image(img, 0x08, 2, d2, big, 0);
    unsigned char full[4200];
    memcpy(full, img, blen);
    memcpy(full + blen, big, 4080);
    blen += 4080;
    char p[4352];
    path_of(p, sizeof p, "good.gz");
    gzip_to(p, full, blen);
    size_t glen;
    unsigned char *g = dt_read(p, &glen);
    unsigned char *m = malloc(glen + 8);
    memcpy(m, g, glen);
    expect_reject("gz_cut", m, glen - 12, false, ERR_FORMAT, "gzip stream truncated");
    memcpy(m, g, glen);
    m[glen - 6] ^= 0xff; /* CRC32 field */
    expect_reject("gz_crc", m, glen, false, ERR_FORMAT, "corrupt gzip data");
    memcpy(m, g, glen);
    m[glen / 2] ^= 0x55;
    expect_reject("gz_body", m, glen, false, ERR_FORMAT, "gzip");
    memcpy(m, g, glen);
    memcpy(m + glen, "junk", 4);
    expect_reject("gz_garbage", m, glen + 4, false, ERR_FORMAT, "trailing garbage");
    free(g);
    free(m);
    /* Empty and missing files. */
    expect_reject("empty", (const unsigned char *)"", 0, false, ERR_FORMAT, "found 0");
    data_source *s = NULL;
    err_info e = {0};
    path_of(p, sizeof p, "missing.idx");
    EXPECT_ERR(data_source_open_idx(p, &s, &e), e, ERR_IO, p, "No such file");
    EXPECT(s == NULL);
}

static void check_fashion_paths(void)
{
    char a[DATA_PATH_MAX] = "", b[DATA_PATH_MAX] = "", c[DATA_PATH_MAX] = "", d[DATA_PATH_MAX] = "";
    err_info e = {0};
    char dir[4352];
    path_of(dir, sizeof dir, "fm");
    mkdir(dir, 0700);
    EXPECT_ERR(data_fashion_mnist_paths(dir, a, b, c, d, &e), e, ERR_IO,
               "fm/train-images-idx3-ubyte.gz", "apt-get install dataset-fashion-mnist");
    EXPECT(a[0] == '\0');
    /* Compressed or not, each of the four is found. */
    const char *names[4] = {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte",
                            "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"};
    char p[4400];
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        dt_write(p, "x", 1);
    }
    EXPECT_ERR(data_fashion_mnist_paths(dir, a, b, c, d, &e), e, ERR_IO,
               "t10k-labels-idx1-ubyte.gz");
    snprintf(p, sizeof p, "%s/%s", dir, names[3]);
    dt_write(p, "x", 1);
    EXPECT(data_fashion_mnist_paths(dir, a, b, c, d, &e) == ERR_OK);
    EXPECT(strstr(b, "train-labels-idx1-ubyte") != NULL && strstr(b, ".gz") == NULL);
    EXPECT(strstr(d, "t10k-labels-idx1-ubyte.gz") != NULL);
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
    char *longdir = malloc(DATA_PATH_MAX + 10);
    memset(longdir, 'a', DATA_PATH_MAX + 9);
    longdir[DATA_PATH_MAX + 9] = '\0';
    EXPECT_ERR(data_fashion_mnist_paths(longdir, a, b, c, d, &e), e, ERR_USAGE, "path longer");
    free(longdir);
}

int main(void)
{
    dt_mkdtemp(g_dir, sizeof g_dir);
    check_fashion();
    check_types();
    check_rejections();
    check_fashion_paths();
    dt_rmdir(g_dir);
    return test_finish();
}
