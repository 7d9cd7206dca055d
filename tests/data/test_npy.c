/* NPY: writer -> reader round trips, every dtype and byte order from hand-made bytes and from
 * numpy itself, big rows and chunked runs, and one check per rejection path. */

#include "trainer/data.h"

#include <math.h>
#include <stdint.h>

#include "data_test.h"
#include "trainer/data_impl.h"

static char g_dir[4096];
/* Every check runs twice: sources read into memory at open, and streamed with pread(). */
static uint64_t g_limit = DATA_MEM_LIMIT;

static int open_npy(const char *path, data_source **out, err_info *e)
{
    if (g_limit == DATA_MEM_LIMIT)
        return data_source_open_npy(path, out, e);
    int rc = data__npy_open_file(path, g_limit, out, e);
    EXPECT(rc != ERR_OK || (*out)->backend == DATA_BACKEND_FD || (*out)->rows == 0);
    return rc;
}

/* Builds an NPY file image: magic, version major.0, header length, dict padded to 64 with '\n'
 * at the end, then dlen data bytes. Returns the total length. */
static size_t npy_image(unsigned char *out, size_t cap, int major, const char *dict,
                        const void *data, size_t dlen)
{
    size_t pre = major == 1 ? 10 : 12, dl = strlen(dict);
    size_t hl = dl + 1;
    while ((pre + hl) % 64 != 0)
        hl++;
    if (pre + hl + dlen > cap) {
        fprintf(stderr, "npy_image: buffer too small\n");
        exit(1);
    }
    memcpy(out, "\x93NUMPY", 6);
    out[6] = (unsigned char)major;
    out[7] = 0;
    for (size_t i = 0; i < pre - 8; i++)
        out[8 + i] = (unsigned char)(hl >> (8 * i));
    memcpy(out + pre, dict, dl);
    memset(out + pre + dl, ' ', hl - dl - 1);
    out[pre + hl - 1] = '\n';
    if (dlen)
        memcpy(out + pre + hl, data, dlen);
    return pre + hl + dlen;
}

static void path_of(char *p, size_t cap, const char *name)
{
    snprintf(p, cap, "%s/%s", g_dir, name);
}

/* ---- round trip through data_npy_write ---- */

static void check_roundtrip(int rank, const int64_t *shape)
{
    int64_t count = 1;
    for (int i = 0; i < rank; i++)
        count *= shape[i];
    float *data = malloc((size_t)(count ? count : 1) * sizeof *data);
    for (int64_t i = 0; i < count; i++)
        data[i] = (float)i * 0.25f - 3.0f;
    char p[4352];
    path_of(p, sizeof p, "rt.npy");
    err_info e = {0};
    int rc = data_npy_write(p, rank, shape, data, &e);
    EXPECT_MSG(rc == ERR_OK, "%s", e.msg);
    EXPECT(dt_count_files(g_dir, ".tmp.") == 0);
    data_source *s = NULL;
    rc = open_npy(p, &s, &e);
    if (rank == 0) {
        EXPECT_ERR(rc, e, ERR_UNSUPPORTED, p, "0-d");
        free(data);
        return;
    }
    EXPECT_MSG(rc == ERR_OK, "%s", e.msg);
    if (rc != ERR_OK) {
        free(data);
        return;
    }
    EXPECT(data_source_rows(s) == shape[0]);
    EXPECT(data_source_row_rank(s) == rank - 1);
    EXPECT(data_source_dtype(s) == DTYPE_F32);
    int64_t rl = data_source_row_len(s);
    EXPECT(rl * shape[0] == count);
    for (int i = 1; i < rank; i++)
        EXPECT(data_source_row_shape(s)[i - 1] == shape[i]);
    /* All rows reversed, then with a duplicate, scaled by 2. */
    int64_t n = shape[0] + (shape[0] > 0);
    int64_t *rows = malloc((size_t)(n ? n : 1) * sizeof *rows);
    for (int64_t i = 0; i < shape[0]; i++)
        rows[i] = shape[0] - 1 - i;
    if (shape[0] > 0)
        rows[n - 1] = shape[0] / 2;
    float *got = malloc((size_t)(n * rl > 0 ? n * rl : 1) * sizeof *got);
    rc = data_source_read(s, rows, n, 2.0f, got, &e);
    EXPECT_MSG(rc == ERR_OK, "%s", e.msg);
    int bad = 0;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < rl; j++)
            bad += got[i * rl + j] != data[rows[i] * rl + j] * 2.0f;
    EXPECT_MSG(bad == 0, "%d mismatches (rank %d)", bad, rank);
    free(rows);
    free(got);
    free(data);
    data_source_destroy(s);
}

/* ---- every dtype from hand-made bytes ---- */

static void put(unsigned char *p, uint64_t v, int size, bool be)
{
    for (int i = 0; i < size; i++)
        p[be ? size - 1 - i : i] = (unsigned char)(v >> (8 * i));
}

typedef struct dtcase {
    char kind;
    int size;
    double v[6];          /* integer and float values */
    uint16_t half[6];     /* f2: raw bits */
    float half_expect[6]; /* f2: exact values */
} dtcase;

static void check_dtypes(void)
{
    const dtcase cases[] = {
        {'b', 1, {0, 1, 2, 0, 1, 255}, {0}, {0}},
        {'u', 1, {0, 1, 127, 128, 255, 3}, {0}, {0}},
        {'i', 1, {-128, -1, 0, 1, 127, 5}, {0}, {0}},
        {'u', 2, {0, 65535, 256, 1, 300, 40000}, {0}, {0}},
        {'i', 2, {-32768, 32767, -1, 0, 256, -300}, {0}, {0}},
        {'u', 4, {0, 4294967295.0, 16777217, 1, 65536, 7}, {0}, {0}},
        {'i', 4, {-2147483648.0, 2147483647, -1, 16777217, 0, 42}, {0}, {0}},
        {'u', 8, {0, 9007199254740993.0, 16777217, 1, 12345678901234.0, 5}, {0}, {0}},
        {'i', 8, {-9007199254740993.0, 9007199254740993.0, -1, 0, -12345678901234.0, 99}, {0}, {0}},
        {'f', 4, {1.5, -0.0, 3.4e38, 1.401298464324817e-45, INFINITY, NAN}, {0}, {0}},
        {'f', 8, {1e300, -2.5, 1e-50, 0.1, 16777217.0, NAN}, {0}, {0}},
        {'f',
         2,
         {0},
         {0x3c00, 0xc000, 0x7bff, 0x0001, 0x8400, 0x3555},
         {1.0f, -2.0f, 65504.0f, 5.9604644775390625e-08f, -6.103515625e-05f, 0.333251953125f}},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const dtcase *t = &cases[c];
        for (int be = 0; be < 2; be++) {
            if (t->size == 1 && be)
                continue;
            unsigned char data[48], img[256];
            float expect[6];
            for (int i = 0; i < 6; i++) {
                double v = t->v[i];
                unsigned char *p = data + (size_t)t->size * (size_t)i;
                if (t->kind == 'f' && t->size == 2) {
                    put(p, t->half[i], 2, be);
                    expect[i] = t->half_expect[i];
                } else if (t->kind == 'f' && t->size == 4) {
                    float f = (float)v;
                    uint32_t u;
                    memcpy(&u, &f, 4);
                    put(p, u, 4, be);
                    expect[i] = f;
                } else if (t->kind == 'f') {
                    uint64_t u;
                    memcpy(&u, &v, 8);
                    put(p, u, 8, be);
                    expect[i] = (float)v;
                } else if (t->kind == 'u') {
                    uint64_t u = (uint64_t)v;
                    put(p, u, t->size, be);
                    expect[i] = (float)u;
                } else if (t->kind == 'i') {
                    int64_t s = (int64_t)v;
                    put(p, (uint64_t)s, t->size, be);
                    expect[i] = (float)s;
                } else {
                    put(p, (uint64_t)v, 1, be);
                    expect[i] = v != 0 ? 1.0f : 0.0f;
                }
            }
            char dict[128];
            snprintf(dict, sizeof dict,
                     "{'descr': '%c%c%d', 'fortran_order': False, 'shape': (3, 2), }",
                     t->size == 1 ? '|'
                     : be         ? '>'
                                  : '<',
                     t->kind, t->size);
            int major = 1 + (int)(c % 3); /* versions 1.0, 2.0 and 3.0 */
            size_t len = npy_image(img, sizeof img, major, dict, data, (size_t)(6 * t->size));
            char p[4352];
            path_of(p, sizeof p, "dt.npy");
            dt_write(p, img, len);
            data_source *s = NULL;
            err_info e = {0};
            int rc = open_npy(p, &s, &e);
            EXPECT_MSG(rc == ERR_OK, "%s: %s", dict, e.msg);
            if (rc != ERR_OK)
                continue;
            EXPECT(data_source_rows(s) == 3 && data_source_row_len(s) == 2);
            const int64_t rows[3] = {2, 0, 1};
            float got[6];
            for (int pass = 0; pass < 2; pass++) {
                float scale = pass ? 0.5f : 1.0f;
                rc = data_source_read(s, rows, 3, scale, got, &e);
                EXPECT_MSG(rc == ERR_OK, "%s", e.msg);
                int bad = 0;
                for (int i = 0; i < 3; i++)
                    for (int j = 0; j < 2; j++) {
                        float want = expect[rows[i] * 2 + j] * scale, g = got[i * 2 + j];
                        bad += isnan(want) ? !isnan(g) : (g != want || signbit(g) != signbit(want));
                    }
                EXPECT_MSG(bad == 0, "%s scale %g: %d mismatches", dict, (double)scale, bad);
            }
            dtype want_dt = t->kind == 'u' && t->size == 1 ? DTYPE_U8
                            : t->kind == 'f'               ? (t->size == 8 ? DTYPE_F64 : DTYPE_F32)
                            : (t->size == 8 || (t->kind == 'u' && t->size == 4)) ? DTYPE_I64
                                                                                 : DTYPE_I32;
            EXPECT_MSG(data_source_dtype(s) == want_dt, "%s: dtype %s", dict,
                       dtype_name(data_source_dtype(s)));
            data_source_destroy(s);
            /* The in-memory opener (used by the fuzz target) agrees. */
            rc = data__npy_open_mem(img, len, "mem", &s, &e);
            EXPECT_MSG(rc == ERR_OK, "%s", e.msg);
            if (rc == ERR_OK) {
                rc = data_source_read(s, rows, 3, 1.0f, got, &e);
                EXPECT(rc == ERR_OK && (isnan(expect[4]) || got[0] == expect[4]));
                data_source_destroy(s);
            }
        }
    }
}

/* ---- header spellings numpy (or Python 2 numpy) writes ---- */

static void check_spellings(void)
{
    const char *dicts[] = {
        "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }",
        "{\"descr\":\"<f4\",\"fortran_order\":False,\"shape\":(3,2)}",
        "{'shape': (3L, 2L), 'fortran_order': False, 'descr': '<f4'}",
        " { 'descr' : '<f4' ,\n 'fortran_order' : False , 'shape' : ( 3 , 2 , ) , } ",
        "{'descr': '<f4', 'fortran_order': True, 'shape': (6, 1), }", /* F order == C order */
        "{'descr': 'f4', 'fortran_order': False, 'shape': (3, 2), }", /* native order */
    };
    float vals[6] = {1, 2, 3, 4, 5, 6};
    unsigned char img[256];
    for (size_t i = 0; i < sizeof dicts / sizeof dicts[0]; i++) {
        size_t len = npy_image(img, sizeof img, 1, dicts[i], vals, sizeof vals);
        data_source *s = NULL;
        err_info e = {0};
        int rc = data__npy_open_mem(img, len, "spell", &s, &e);
        EXPECT_MSG(rc == ERR_OK, "%s: %s", dicts[i], e.msg);
        if (rc != ERR_OK)
            continue;
        int64_t rows[1] = {data_source_rows(s) - 1};
        float got[2];
        rc = data_source_read(s, rows, 1, 1.0f, got, &e);
        EXPECT(rc == ERR_OK && got[data_source_row_len(s) - 1] == 6.0f);
        data_source_destroy(s);
    }
}

/* ---- rejection paths: one per check, code and the file named in the message ---- */

typedef struct bad_case {
    const char *what;
    int major;
    const char *dict; /* NULL: raw bytes below */
    size_t data_len;  /* data bytes appended */
    int code;
    const char *needle;
} bad_case;

static void check_rejections(void)
{
    const bad_case cases[] = {
        {"not a dict", 1, "[1, 2]", 0, ERR_FORMAT, "must be a dict"},
        {"missing shape", 1, "{'descr': '<f4', 'fortran_order': False}", 0, ERR_FORMAT,
         "missing key 'shape'"},
        {"missing descr", 1, "{'fortran_order': False, 'shape': (1,)}", 4, ERR_FORMAT,
         "missing key 'descr'"},
        {"unknown key", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}", 4,
         ERR_FORMAT, "unknown key 'x'"},
        {"duplicate key", 1, "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False}", 0,
         ERR_FORMAT, "duplicate key 'descr'"},
        {"structured", 1, "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}", 4,
         ERR_UNSUPPORTED, "structured"},
        {"complex", 1, "{'descr': '<c8', 'fortran_order': False, 'shape': (1,)}", 8,
         ERR_UNSUPPORTED, "dtype '<c8'"},
        {"object", 1, "{'descr': '|O', 'fortran_order': False, 'shape': (1,)}", 8, ERR_UNSUPPORTED,
         "dtype '|O'"},
        {"f3", 1, "{'descr': '<f3', 'fortran_order': False, 'shape': (1,)}", 3, ERR_UNSUPPORTED,
         "dtype '<f3'"},
        {"| multi-byte", 1, "{'descr': '|i4', 'fortran_order': False, 'shape': (1,)}", 4,
         ERR_FORMAT, "byte order '|'"},
        {"descr not a string", 1, "{'descr': 5, 'fortran_order': False, 'shape': (1,)}", 4,
         ERR_FORMAT, "quoted string"},
        {"fortran", 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3)}", 24,
         ERR_UNSUPPORTED, "fortran_order=True"},
        {"fortran not bool", 1, "{'descr': '<f4', 'fortran_order': 0, 'shape': (1,)}", 4,
         ERR_FORMAT, "True or False"},
        {"shape not tuple", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3)}", 12,
         ERR_FORMAT, "not a tuple"},
        {"shape list", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': [3]}", 12, ERR_FORMAT,
         "tuple"},
        {"0-d", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': ()}", 4, ERR_UNSUPPORTED,
         "0-d"},
        {"negative extent", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}", 0,
         ERR_FORMAT, "non-negative integer"},
        {"missing comma", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1 2)}", 8,
         ERR_FORMAT, "expected ',' or ')'"},
        {"rank 9", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1)}", 4,
         ERR_UNSUPPORTED, "more than 8"},
        {"extent overflow", 1,
         "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,)}", 0, ERR_RANGE,
         "overflows int64"},
        {"size overflow", 1,
         "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296)}", 0,
         ERR_RANGE, "overflow"},
        {"row overflow", 1,
         "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4611686018427387904)}", 0,
         ERR_RANGE, "overflow"},
        {"unterminated string", 1, "{'descr': '<f4", 0, ERR_FORMAT, "in a string"},
        {"no colon", 1, "{'descr' '<f4'}", 0, ERR_FORMAT, "':' after a key"},
        {"no comma", 1, "{'descr': '<f4' 'fortran_order': False}", 0, ERR_FORMAT,
         "or ',' after a value"},
        {"escape", 1, "{'de\\scr': '<f4'}", 0, ERR_FORMAT, "escape"},
        {"trailing text", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} x", 4,
         ERR_FORMAT, "after the dict"},
        {"truncated data", 1, "{'descr':'<f4','fortran_order':False,'shape':(3,2)}", 20, ERR_FORMAT,
         "truncated: expected 88 bytes (header 64 + data 24), found 84"},
        {"trailing data", 1, "{'descr':'<f4','fortran_order':False,'shape':(3,2)}", 25, ERR_FORMAT,
         "trailing data: expected 88 bytes (header 64 + data 24), found 89"},
        {"truncated data v2", 2, "{'descr': '<i2', 'fortran_order': False, 'shape': (5,)}", 9,
         ERR_FORMAT, "expected 138 bytes (header 128 + data 10), found 137"},
    };
    unsigned char img[512], zeros[64] = {0};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const bad_case *c = &cases[i];
        size_t len = npy_image(img, sizeof img, c->major, c->dict, zeros, c->data_len);
        char p[4352];
        path_of(p, sizeof p, "bad.npy");
        dt_write(p, img, len);
        data_source *s = NULL;
        err_info e = {0};
        int rc = open_npy(p, &s, &e);
        EXPECT_MSG(s == NULL, "%s", c->what);
        EXPECT_ERR(rc, e, c->code, p, c->needle);
        if (rc == ERR_OK)
            fprintf(stderr, "  (case %s)\n", c->what);
        data_source_destroy(s);
    }

    /* Preamble-level failures, from raw bytes. */
    struct {
        const char *what;
        unsigned char b[16];
        size_t len;
        int code;
        const char *needle;
    } raw[] = {
        {"bad magic", {0x93, 'N', 'U', 'M', 'P', 'X', 1, 0, 0, 0}, 10, ERR_FORMAT, "bad magic"},
        {"empty", {0}, 0, ERR_FORMAT, "truncated header"},
        {"short", {0x93, 'N', 'U', 'M', 'P'}, 5, ERR_FORMAT, "truncated header"},
        {"v1 short", {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 4}, 9, ERR_FORMAT, "preamble"},
        {"version 4.0",
         {0x93, 'N', 'U', 'M', 'P', 'Y', 4, 0, 0, 0},
         10,
         ERR_UNSUPPORTED,
         "version 4.0"},
        {"version 1.1",
         {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 1, 0, 0},
         10,
         ERR_UNSUPPORTED,
         "version 1.1"},
        {"header past end",
         {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 100, 0, '{', '}'},
         12,
         ERR_FORMAT,
         "truncated header: expected 110 bytes, found 12"},
        {"header too long",
         {0x93, 'N', 'U', 'M', 'P', 'Y', 2, 0, 0, 0, 0, 0x40},
         12,
         ERR_FORMAT,
         "exceeds the limit"},
    };
    for (size_t i = 0; i < sizeof raw / sizeof raw[0]; i++) {
        char p[4352];
        path_of(p, sizeof p, "raw.npy");
        dt_write(p, raw[i].b, raw[i].len);
        data_source *s = NULL;
        err_info e = {0};
        int rc = open_npy(p, &s, &e);
        EXPECT_MSG(s == NULL, "%s", raw[i].what);
        EXPECT_ERR(rc, e, raw[i].code, p, raw[i].needle);
        data_source_destroy(s);
    }

    /* Missing file and a directory. */
    char p[4352];
    path_of(p, sizeof p, "missing.npy");
    data_source *s = NULL;
    err_info e = {0};
    EXPECT_ERR(open_npy(p, &s, &e), e, ERR_IO, p, "No such file");
    EXPECT_ERR(open_npy(g_dir, &s, &e), e, ERR_IO, g_dir, "not a regular file");
    EXPECT(s == NULL);
}

/* ---- reads: bounds, big rows, runs longer than the buffer ---- */

static void check_reads(void)
{
    char p[4352];
    err_info e = {0};
    /* Rows of 1000 floats: 4000 bytes, so a 1 MiB buffer holds 262 of them and a run of all 600
     * rows is read in three pieces. */
    int64_t shape[2] = {600, 1000};
    float *data = malloc(600 * 1000 * sizeof *data);
    for (int i = 0; i < 600 * 1000; i++)
        data[i] = (float)i;
    path_of(p, sizeof p, "runs.npy");
    EXPECT(data_npy_write(p, 2, shape, data, &e) == ERR_OK);
    data_source *s = NULL;
    EXPECT(open_npy(p, &s, &e) == ERR_OK);
    int64_t rows[700];
    for (int i = 0; i < 600; i++)
        rows[i] = 599 - i;
    for (int i = 600; i < 700; i++)
        rows[i] = (i * 37) % 600;
    float *got = malloc(700 * 1000 * sizeof *got);
    int rc = data_source_read(s, rows, 700, 1.0f, got, &e);
    EXPECT_MSG(rc == ERR_OK, "%s", e.msg);
    int bad = 0;
    for (int i = 0; i < 700; i++)
        for (int j = 0; j < 1000; j++)
            bad += got[i * 1000 + j] != data[rows[i] * 1000 + j];
    EXPECT_MSG(bad == 0, "runs: %d mismatches", bad);
    /* Out of range rows name the source and the row. */
    int64_t oob[3] = {5, 600, 1};
    EXPECT_ERR(data_source_read(s, oob, 3, 1.0f, got, &e), e, ERR_RANGE, p, "row 600");
    oob[1] = -1;
    EXPECT_ERR(data_source_read(s, oob, 3, 1.0f, got, &e), e, ERR_RANGE, p, "row -1");
    EXPECT_ERR(data_source_read(s, oob, -1, 1.0f, got, &e), e, ERR_USAGE, p);
    EXPECT(data_source_read(s, oob, 0, 1.0f, NULL, &e) == ERR_OK);
    data_source_destroy(s);

    /* Rows of 300000 floats (1.2 MB) exceed the read buffer: each is read in pieces. */
    int64_t bshape[2] = {3, 300000};
    float *big = realloc(data, 3 * 300000 * sizeof *big);
    for (int i = 0; i < 3 * 300000; i++)
        big[i] = (float)(i % 1000003) - 5.0f;
    path_of(p, sizeof p, "bigrows.npy");
    EXPECT(data_npy_write(p, 2, bshape, big, &e) == ERR_OK);
    EXPECT(open_npy(p, &s, &e) == ERR_OK);
    int64_t brows[4] = {2, 0, 2, 1};
    float *bgot = malloc(4 * 300000 * sizeof *bgot);
    rc = data_source_read(s, brows, 4, 1.0f, bgot, &e);
    EXPECT_MSG(rc == ERR_OK, "%s", e.msg);
    bad = 0;
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 300000; j++)
            bad += bgot[i * 300000 + j] != big[brows[i] * 300000 + j];
    EXPECT_MSG(bad == 0, "big rows: %d mismatches", bad);
    data_source_destroy(s);
    free(bgot);
    free(big);
    free(got);

    /* More rows than one sort block (DATA_READ_BLOCK). */
    int64_t n = 3 * DATA_READ_BLOCK + 5;
    int64_t vshape[1] = {n};
    float *v = malloc((size_t)n * sizeof *v);
    int64_t *ids = malloc((size_t)n * sizeof *ids);
    float *vg = malloc((size_t)n * sizeof *vg);
    for (int64_t i = 0; i < n; i++) {
        v[i] = (float)i;
        ids[i] = (i * 7919) % n;
    }
    path_of(p, sizeof p, "vec.npy");
    EXPECT(data_npy_write(p, 1, vshape, v, &e) == ERR_OK);
    EXPECT(open_npy(p, &s, &e) == ERR_OK);
    EXPECT(data_source_row_rank(s) == 0 && data_source_row_len(s) == 1);
    EXPECT(data_source_read(s, ids, n, 1.0f, vg, &e) == ERR_OK);
    bad = 0;
    for (int64_t i = 0; i < n; i++)
        bad += vg[i] != (float)ids[i];
    EXPECT_MSG(bad == 0, "blocks: %d mismatches", bad);
    data_source_destroy(s);
    free(v);
    free(ids);
    free(vg);
}

/* ---- the writer's atomicity ---- */

static void check_writer_errors(void)
{
    err_info e = {0};
    int64_t shape[2] = {2, 2};
    float d[4] = {1, 2, 3, 4};
    char p[4352];
    /* The target is a directory: the rename fails and the temporary file is removed. */
    path_of(p, sizeof p, "adir");
    mkdir(p, 0700);
    EXPECT_ERR(data_npy_write(p, 2, shape, d, &e), e, ERR_IO, p);
    EXPECT(dt_count_files(g_dir, ".tmp.") == 0);
    rmdir(p);
    path_of(p, sizeof p, "nodir/x.npy");
    EXPECT_ERR(data_npy_write(p, 2, shape, d, &e), e, ERR_IO, "nodir/x.npy.tmp.");
    EXPECT_ERR(data_npy_write(p, 9, shape, d, &e), e, ERR_USAGE, "rank 9");
    int64_t huge[2] = {INT64_MAX / 2, 4};
    EXPECT_ERR(data_npy_write(p, 2, huge, d, &e), e, ERR_RANGE, p);
    /* Overwriting an existing file replaces it. */
    path_of(p, sizeof p, "over.npy");
    dt_write(p, "junk", 4);
    EXPECT(data_npy_write(p, 2, shape, d, &e) == ERR_OK);
    data_source *s = NULL;
    EXPECT(open_npy(p, &s, &e) == ERR_OK);
    data_source_destroy(s);
    /* The data starts at a multiple of 64 bytes, as numpy writes it. */
    size_t len = 0;
    unsigned char *b = dt_read(p, &len);
    EXPECT(b != NULL && len == 128 + 16 && b[127] == '\n' && b[8] == 118 && b[9] == 0);
    free(b);
}

/* ---- numpy as the independent oracle ---- */

static const char *PY_SCRIPT =
    "import sys, numpy as np\n"
    "d = sys.argv[1]\n"
    "r = np.random.default_rng(7)\n"
    "names = []\n"
    "for t in ['u1','i1','<u2','>u2','<i2','>i2','<u4','>u4','<i4','>i4','<u8','>u8',\n"
    "          '<i8','>i8','<f2','>f2','<f4','>f4','<f8','>f8','?']:\n"
    "    dt = np.dtype(t)\n"
    "    if dt.kind in 'ui':\n"
    "        info = np.iinfo(dt)\n"
    "        lo, hi = int(info.min), int(info.max)\n"
    "        lo, hi = max(lo, -(1 << 53)), min(hi, 1 << 53)\n"
    "        a = r.integers(lo, hi, size=(7, 3, 2), endpoint=True).astype(dt)\n"
    "    elif dt.kind == 'f':\n"
    "        a = (r.standard_normal((7, 3, 2)) * 1000).astype(dt)\n"
    "        a.flat[0] = np.inf; a.flat[1] = -0.0; a.flat[2] = 1e-7\n"
    "    else:\n"
    "        a = r.integers(0, 2, size=(7, 3, 2)).astype(dt)\n"
    "    n = 'py_' + t.replace('<', 'le').replace('>', 'be').replace('?', 'bool')\n"
    "    np.save(d + '/' + n + '.npy', a)\n"
    "    np.save(d + '/' + n + '_f32.npy', a.astype('<f4'))\n"
    "    names.append(n)\n"
    "open(d + '/py_names.txt', 'w').write('\\n'.join(names) + '\\n')\n"
    "np.save(d + '/py_fortran.npy', np.asfortranarray(np.ones((3, 4), 'f4')))\n"
    "np.save(d + '/py_scalar.npy', np.float32(3))\n"
    "w = np.load(d + '/ours.npy')\n"
    "want = (np.arange(60, dtype='f4') * np.float32(0.25) - np.float32(3)).reshape(3, 4, 5)\n"
    "ok = w.dtype == np.dtype('<f4') and w.shape == (3, 4, 5) and np.array_equal(w, want)\n"
    "sys.exit(0 if ok else 3)\n";

static void check_numpy(void)
{
    if (!dt_have_numpy()) {
        printf("numpy cross-check skipped: /usr/bin/python3 with numpy not found\n");
        return;
    }
    err_info e = {0};
    char p[4352], q[4352];
    int64_t shape[3] = {3, 4, 5};
    float d[60];
    for (int i = 0; i < 60; i++)
        d[i] = (float)i * 0.25f - 3.0f;
    path_of(p, sizeof p, "ours.npy");
    EXPECT(data_npy_write(p, 3, shape, d, &e) == ERR_OK);
    int st = dt_python(g_dir, "fixtures", PY_SCRIPT);
    EXPECT_MSG(st == 0, "python fixture script exited with %d (3: numpy read ours wrongly)", st);
    path_of(p, sizeof p, "py_names.txt");
    FILE *f = fopen(p, "r");
    EXPECT(f != NULL);
    if (f == NULL)
        return;
    char name[64];
    int count = 0;
    while (fscanf(f, "%63s", name) == 1) {
        data_source *a = NULL, *b = NULL;
        snprintf(p, sizeof p, "%s/%s.npy", g_dir, name);
        snprintf(q, sizeof q, "%s/%s_f32.npy", g_dir, name);
        int rc = open_npy(p, &a, &e);
        EXPECT_MSG(rc == ERR_OK, "%s", e.msg);
        rc |= open_npy(q, &b, &e);
        if (rc == ERR_OK) {
            EXPECT(data_source_rows(a) == 7 && data_source_row_len(a) == 6);
            EXPECT(data_source_row_rank(a) == 2 && data_source_row_shape(a)[1] == 2);
            int64_t rows[9] = {6, 5, 4, 3, 2, 1, 0, 3, 3};
            float ga[54], gb[54];
            EXPECT(data_source_read(a, rows, 9, 1.0f, ga, &e) == ERR_OK);
            EXPECT(data_source_read(b, rows, 9, 1.0f, gb, &e) == ERR_OK);
            EXPECT_MSG(memcmp(ga, gb, sizeof ga) == 0, "%s differs from numpy's astype(f4)", name);
        }
        data_source_destroy(a);
        data_source_destroy(b);
        count++;
    }
    fclose(f);
    EXPECT(count == 21);
    data_source *s = NULL;
    path_of(p, sizeof p, "py_fortran.npy");
    EXPECT_ERR(open_npy(p, &s, &e), e, ERR_UNSUPPORTED, p, "fortran_order");
    path_of(p, sizeof p, "py_scalar.npy");
    EXPECT_ERR(open_npy(p, &s, &e), e, ERR_UNSUPPORTED, p, "0-d");
}

static void check_open_sniff(void)
{
    err_info e = {0};
    char p[4352];
    int64_t shape[1] = {4};
    float d[4] = {1, 2, 3, 4};
    data_source *s = NULL;
    path_of(p, sizeof p, "sniff.bin");
    EXPECT(data_npy_write(p, 1, shape, d, &e) == ERR_OK);
    EXPECT(data_source_open(p, NULL, &s, &e) == ERR_OK && data_source_rows(s) == 4);
    data_source_destroy(s);
    s = NULL;
    unsigned char idx[8] = {0, 0, 8, 1, 0, 0, 0, 0};
    dt_write(p, idx, sizeof idx);
    EXPECT(data_source_open(p, NULL, &s, &e) == ERR_OK && data_source_rows(s) == 0);
    data_source_destroy(s);
    s = NULL;
    dt_write(p, "\x89HDF\r\n\x1a\n", 8);
    EXPECT_ERR(data_source_open(p, NULL, &s, &e), e, ERR_USAGE, p, "dataset");
    dt_write(p, "hello", 5);
    EXPECT_ERR(data_source_open(p, NULL, &s, &e), e, ERR_FORMAT, p, "unknown format");
    EXPECT(s == NULL);
}

int main(void)
{
    dt_mkdtemp(g_dir, sizeof g_dir);
    const int64_t s1[1] = {5}, s2[2] = {4, 3}, s3[3] = {2, 3, 4}, s0[2] = {0, 3};
    const int64_t s8[8] = {2, 1, 2, 1, 1, 3, 1, 2};
    for (int pass = 0; pass < 2; pass++) {
        g_limit = pass == 0 ? DATA_MEM_LIMIT : 0;
        check_roundtrip(1, s1);
        check_roundtrip(2, s2);
        check_roundtrip(3, s3);
        check_roundtrip(2, s0);
        check_roundtrip(8, s8);
        check_roundtrip(0, s1);
        check_dtypes();
        check_spellings();
        check_rejections();
        check_reads();
        check_writer_errors();
        if (pass == 0)
            check_numpy();
        check_open_sniff();
    }
    dt_rmdir(g_dir);
    return test_finish();
}
