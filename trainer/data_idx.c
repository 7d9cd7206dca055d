/* IDX files (the MNIST format): 0x00 0x00, a type code, the number of dimensions, big-endian
 * uint32 extents, then big-endian data. Raw files are read with pread(); gzip files are inflated
 * once at open (zlib, streaming) into memory or into an unlinked temporary file. */

#include "trainer/data.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "trainer/data_impl.h"

#define IDX_MAX_HEADER (4 + 4 * 255)
#define GZ_IN_BYTES ((size_t)1 << 16)
#define GZ_CHUNK ((size_t)1 << 20)

int data__idx_parse(const unsigned char *buf, size_t len, data_layout *out, err_info *e)
{
    if (len < 4)
        return err_set(e, ERR_FORMAT, "truncated header: expected at least 4 bytes, found %zu",
                       len);
    if (buf[0] != 0 || buf[1] != 0)
        return err_set(e, ERR_FORMAT,
                       "not an IDX file: bad magic 0x%02x%02x%02x%02x (expected 0x0000 then a "
                       "type code and the number of dimensions)",
                       buf[0], buf[1], buf[2], buf[3]);
    data_layout l;
    memset(&l, 0, sizeof l);
    switch (buf[2]) {
    case 0x08:
        l.elem = DATA_ELEM_U8;
        break;
    case 0x09:
        l.elem = DATA_ELEM_I8;
        break;
    case 0x0b:
        l.elem = DATA_ELEM_I16;
        break;
    case 0x0c:
        l.elem = DATA_ELEM_I32;
        break;
    case 0x0d:
        l.elem = DATA_ELEM_F32;
        break;
    case 0x0e:
        l.elem = DATA_ELEM_F64;
        break;
    default:
        return err_set(e, ERR_FORMAT,
                       "unknown IDX type code 0x%02x (expected 0x08, 0x09, 0x0b, 0x0c, 0x0d or "
                       "0x0e)",
                       buf[2]);
    }
    unsigned nd = buf[3];
    if (nd == 0)
        return err_set(e, ERR_FORMAT, "IDX header declares no dimensions (axis 0 holds the rows)");
    if (nd > TENSOR_MAX_RANK)
        return err_set(e, ERR_UNSUPPORTED, "IDX header declares %u dimensions (at most %d)", nd,
                       TENSOR_MAX_RANK);
    size_t need = 4 + 4 * (size_t)nd;
    if (len < need)
        return err_set(e, ERR_FORMAT, "truncated header: expected %zu bytes, found %zu", need, len);
    for (unsigned i = 0; i < nd; i++) {
        const unsigned char *p = buf + 4 + 4 * i;
        l.shape[i] =
            (int64_t)((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]);
    }
    l.rank = (int)nd;
    l.big_endian = true;
    l.data_off = need;
    *out = l;
    return ERR_OK;
}

/* ---- gzip input, from a file descriptor or from memory ---- */

typedef struct gz_reader {
    z_stream z;
    bool z_ready;   /* inflateInit2 succeeded */
    bool in_member; /* inside a gzip member (its end not yet seen) */
    bool ended;     /* all input consumed after a complete member */
    int fd;         /* -1: read mem */
    uint64_t fpos;
    const unsigned char *mem;
    size_t mem_len, mem_pos;
    uint64_t out_total; /* uncompressed bytes produced */
    unsigned char in[GZ_IN_BYTES];
} gz_reader;

/* Makes input available; *eof when there is none left. */
static int gz_fill(gz_reader *g, bool *eof, err_info *e)
{
    *eof = false;
    if (g->z.avail_in > 0)
        return ERR_OK;
    if (g->fd < 0) {
        size_t left = g->mem_len - g->mem_pos;
        if (left == 0) {
            *eof = true;
            return ERR_OK;
        }
        size_t take = left < UINT_MAX ? left : UINT_MAX;
        g->z.next_in = (unsigned char *)(uintptr_t)(g->mem + g->mem_pos);
        g->z.avail_in = (unsigned)take;
        g->mem_pos += take;
        return ERR_OK;
    }
    for (;;) {
        ssize_t got = pread(g->fd, g->in, sizeof g->in, (off_t)g->fpos);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return err_set(e, ERR_IO, "read failed at offset %llu: %s", (unsigned long long)g->fpos,
                           strerror(errno));
        if (got == 0) {
            *eof = true;
            return ERR_OK;
        }
        g->fpos += (uint64_t)got;
        g->z.next_in = g->in;
        g->z.avail_in = (unsigned)got;
        return ERR_OK;
    }
}

/* Inflates up to n (<= GZ_CHUNK) bytes into dst; *got < n only at the end of the stream.
 * Concatenated gzip members are read as one stream (as gzip -d does); anything else after a
 * member is an error. */
static int gz_read(gz_reader *g, unsigned char *dst, size_t n, size_t *got, err_info *e)
{
    g->z.next_out = dst;
    g->z.avail_out = (unsigned)n;
    while (g->z.avail_out > 0 && !g->ended) {
        bool eof;
        int rc = gz_fill(g, &eof, e);
        if (rc != ERR_OK)
            return rc;
        if (eof) {
            if (g->in_member)
                return err_set(e, ERR_FORMAT,
                               "gzip stream truncated: input ends inside a member after %llu "
                               "uncompressed bytes",
                               (unsigned long long)(g->out_total + (n - g->z.avail_out)));
            g->ended = true;
            break;
        }
        if (!g->in_member) {
            if (*g->z.next_in != 0x1f)
                return err_set(e, ERR_FORMAT,
                               "trailing garbage after the gzip stream (byte 0x%02x after %llu "
                               "uncompressed bytes)",
                               *g->z.next_in,
                               (unsigned long long)(g->out_total + (n - g->z.avail_out)));
            if (inflateReset(&g->z) != Z_OK)
                return err_set(e, ERR_INTERNAL, "inflateReset failed");
            g->in_member = true;
        }
        int zr = inflate(&g->z, Z_NO_FLUSH);
        if (zr == Z_STREAM_END) {
            g->in_member = false;
        } else if (zr != Z_OK && zr != Z_BUF_ERROR) {
            return err_set(e, zr == Z_MEM_ERROR ? ERR_NOMEM : ERR_FORMAT,
                           "corrupt gzip data after %llu uncompressed bytes: %s",
                           (unsigned long long)(g->out_total + (n - g->z.avail_out)),
                           g->z.msg ? g->z.msg : zError(zr));
        }
    }
    *got = n - g->z.avail_out;
    g->out_total += *got;
    return ERR_OK;
}

/* Reads exactly n bytes or fails with ERR_FORMAT "expected ... found". */
static int gz_read_exact(gz_reader *g, unsigned char *dst, size_t n, uint64_t expect_total,
                         err_info *e)
{
    size_t got;
    int rc = gz_read(g, dst, n, &got, e);
    if (rc == ERR_OK && got < n)
        rc = err_set(e, ERR_FORMAT,
                     "truncated: expected %llu uncompressed bytes, the gzip stream holds %llu",
                     (unsigned long long)expect_total, (unsigned long long)g->out_total);
    return rc;
}

/* Inflates an IDX file (from fd, or from mem when fd < 0) and makes a source over its data:
 * in memory when the data has at most mem_limit bytes (the buffer grows with the data actually
 * present, so a lying header cannot make us allocate more than the stream holds), else in an
 * unlinked temporary file. */
static int idx_open_gz(const char *name, int fd, const unsigned char *mem, size_t mem_len,
                       uint64_t mem_limit, data_source **out, err_info *e)
{
    data_source *s = NULL;
    gz_reader *g = calloc(1, sizeof *g);
    int tfd = -1, rc = ERR_OK;
    if (g == NULL)
        return err_set(e, ERR_NOMEM, "%s: out of memory for a gzip reader", name);
    g->fd = fd;
    g->mem = mem;
    g->mem_len = mem_len;
    g->in_member = true;
    if (inflateInit2(&g->z, 16 + MAX_WBITS) != Z_OK) {
        rc = err_set(e, ERR_NOMEM, "inflateInit2 failed");
        goto wrap;
    }
    g->z_ready = true;

    unsigned char hdr[IDX_MAX_HEADER];
    data_layout l;
    uint64_t data_bytes;
    if ((rc = gz_read_exact(g, hdr, 4, 4, e)) != ERR_OK)
        goto wrap;
    /* Read the extents only when the first 4 bytes are plausible; else the parser reports why
     * from those 4 bytes alone. */
    size_t hlen = 4;
    if (hdr[0] == 0 && hdr[1] == 0 && hdr[3] > 0 && hdr[3] <= TENSOR_MAX_RANK) {
        hlen = 4 + 4 * (size_t)hdr[3];
        if ((rc = gz_read_exact(g, hdr + 4, hlen - 4, hlen, e)) != ERR_OK)
            goto wrap;
    }
    if ((rc = data__idx_parse(hdr, hlen, &l, e)) != ERR_OK)
        goto wrap;
    if ((rc = data__source_new(name, &l, &s, &data_bytes, e)) != ERR_OK)
        goto wrap;
    const uint64_t total = l.data_off + data_bytes;
    s->data_off = 0;
    if (data_bytes <= mem_limit) {
        size_t cap = data_bytes < GZ_CHUNK ? (size_t)data_bytes : GZ_CHUNK, have = 0;
        if ((s->mem = malloc(cap ? cap : 1)) == NULL) {
            rc = err_set(e, ERR_NOMEM, "out of memory for %zu bytes", cap);
            goto wrap;
        }
        while (have < data_bytes) {
            if (have == cap) {
                size_t ncap = data_bytes - cap < cap ? (size_t)data_bytes : 2 * cap;
                unsigned char *m = realloc(s->mem, ncap);
                if (m == NULL) {
                    rc = err_set(e, ERR_NOMEM, "out of memory for %zu bytes", ncap);
                    goto wrap;
                }
                s->mem = m;
                cap = ncap;
            }
            size_t want = cap - have < GZ_CHUNK ? cap - have : GZ_CHUNK;
            if ((rc = gz_read_exact(g, s->mem + have, want, total, e)) != ERR_OK)
                goto wrap;
            have += want;
        }
        s->backend = DATA_BACKEND_MEM;
    } else {
        /* tmpfile() creates the file already unlinked: it disappears with its descriptor. */
        FILE *t = tmpfile();
        if (t == NULL) {
            rc =
                err_set(e, ERR_IO, "cannot create a temporary file for %llu decompressed bytes: %s",
                        (unsigned long long)data_bytes, strerror(errno));
            goto wrap;
        }
        tfd = dup(fileno(t));
        int err = errno;
        fclose(t);
        if (tfd < 0) {
            rc = err_set(e, ERR_IO, "dup of a temporary file failed: %s", strerror(err));
            goto wrap;
        }
        if ((s->scratch = malloc(DATA_SCRATCH_BYTES)) == NULL) {
            rc = err_set(e, ERR_NOMEM, "out of memory for a read buffer");
            goto wrap;
        }
        s->scratch_bytes = DATA_SCRATCH_BYTES;
        for (uint64_t have = 0; have < data_bytes;) {
            size_t want = data_bytes - have < GZ_CHUNK ? (size_t)(data_bytes - have) : GZ_CHUNK;
            if ((rc = gz_read_exact(g, s->scratch, want, total, e)) != ERR_OK)
                goto wrap;
            if ((rc = data__write_full(tfd, s->scratch, want, "temporary file", e)) != ERR_OK)
                goto wrap;
            have += want;
        }
        s->backend = DATA_BACKEND_FD;
        s->fd = tfd;
        tfd = -1;
    }
    unsigned char extra[4096];
    size_t got;
    if ((rc = gz_read(g, extra, 1, &got, e)) != ERR_OK)
        goto wrap;
    if (got != 0) {
        /* Count what is left so the message says how much was found. */
        while (got != 0 && (rc = gz_read(g, extra, sizeof extra, &got, e)) == ERR_OK) {
        }
        if (rc == ERR_OK)
            rc = err_set(e, ERR_FORMAT,
                         "trailing data: expected %llu uncompressed bytes, the gzip stream holds "
                         "%llu",
                         (unsigned long long)total, (unsigned long long)g->out_total);
        goto wrap;
    }
    *out = s;
    s = NULL;
    goto done;
wrap:
    err_wrap(e, "%s", name);
done:
    if (tfd >= 0)
        close(tfd);
    data_source_destroy(s);
    if (g->z_ready)
        inflateEnd(&g->z);
    free(g);
    return rc;
}

int data__idx_open_file(const char *path, uint64_t mem_limit, data_source **out, err_info *e)
{
    data_source *s = NULL;
    int rc = ERR_OK;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0)
        return err_set(e, ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = err_set(e, ERR_IO, "%s: not a regular file", path);
        goto done;
    }
    const uint64_t size = (uint64_t)st.st_size;
    unsigned char hdr[IDX_MAX_HEADER];
    size_t nh = size < sizeof hdr ? (size_t)size : sizeof hdr;
    if ((rc = data__pread_full(fd, hdr, nh, 0, path, e)) != ERR_OK)
        goto done;
    if (nh >= 2 && hdr[0] == 0x1f && hdr[1] == 0x8b) {
        rc = idx_open_gz(path, fd, NULL, 0, mem_limit, out, e);
        goto done;
    }
    data_layout l;
    uint64_t data_bytes;
    if ((rc = data__idx_parse(hdr, nh, &l, e)) != ERR_OK ||
        (rc = data__source_new(path, &l, &s, &data_bytes, e)) != ERR_OK ||
        (rc = data__check_size(l.data_off, data_bytes, size, e)) != ERR_OK) {
        err_wrap(e, "%s", path);
        goto done;
    }
    rc = data__source_attach_fd(s, fd, l.data_off, data_bytes, mem_limit, e);
    fd = -1;
    if (rc != ERR_OK)
        goto done;
    *out = s;
    s = NULL;
done:
    data_source_destroy(s);
    if (fd >= 0)
        close(fd);
    return rc;
}

int data_source_open_idx(const char *path, data_source **out, err_info *e)
{
    return data__idx_open_file(path, DATA_MEM_LIMIT, out, e);
}

int data__idx_open_mem(const unsigned char *buf, size_t len, const char *name, uint64_t mem_limit,
                       data_source **out, err_info *e)
{
    if (len >= 2 && buf[0] == 0x1f && buf[1] == 0x8b)
        return idx_open_gz(name, -1, buf, len, mem_limit, out, e);
    data_layout l;
    uint64_t data_bytes;
    data_source *s = NULL;
    int rc = data__idx_parse(buf, len, &l, e);
    if (rc == ERR_OK)
        rc = data__source_new(name, &l, &s, &data_bytes, e);
    if (rc == ERR_OK)
        rc = data__check_size(l.data_off, data_bytes, len, e);
    if (rc == ERR_OK && (s->mem = malloc(len ? len : 1)) == NULL)
        rc = err_set(e, ERR_NOMEM, "out of memory for %zu bytes", len);
    if (rc != ERR_OK) {
        data_source_destroy(s);
        return err_wrap(e, "%s", name);
    }
    memcpy(s->mem, buf, len);
    s->backend = DATA_BACKEND_MEM;
    *out = s;
    return ERR_OK;
}

/* ---- Fashion-MNIST ---- */

static int fashion_path(const char *dir, const char *file, char out[static DATA_PATH_MAX],
                        err_info *e)
{
    char p[DATA_PATH_MAX];
    int n = snprintf(p, sizeof p, "%s/%s.gz", dir, file);
    if (n < 0 || (size_t)n >= sizeof p)
        return err_set(e, ERR_USAGE, "Fashion-MNIST path longer than %d bytes: %s/%s.gz",
                       DATA_PATH_MAX - 1, dir, file);
    if (access(p, R_OK) != 0) {
        int err = errno;
        /* Accept an uncompressed copy as well. */
        char raw[DATA_PATH_MAX];
        snprintf(raw, sizeof raw, "%s/%s", dir, file);
        if (access(raw, R_OK) != 0)
            return err_set(e, ERR_IO,
                           "%s: %s (Fashion-MNIST is missing: apt-get install "
                           "dataset-fashion-mnist)",
                           p, strerror(err));
        memcpy(p, raw, strlen(raw) + 1);
    }
    memcpy(out, p, strlen(p) + 1);
    return ERR_OK;
}

int data_fashion_mnist_paths(const char *dir, char train_x[static DATA_PATH_MAX],
                             char train_y[static DATA_PATH_MAX], char test_x[static DATA_PATH_MAX],
                             char test_y[static DATA_PATH_MAX], err_info *e)
{
    if (dir == NULL)
        dir = DATA_FASHION_MNIST_DIR;
    char p[4][DATA_PATH_MAX];
    static const char *const files[4] = {"train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"};
    for (int i = 0; i < 4; i++) {
        int rc = fashion_path(dir, files[i], p[i], e);
        if (rc != ERR_OK)
            return rc;
    }
    memcpy(train_x, p[0], DATA_PATH_MAX);
    memcpy(train_y, p[1], DATA_PATH_MAX);
    memcpy(test_x, p[2], DATA_PATH_MAX);
    memcpy(test_y, p[3], DATA_PATH_MAX);
    return ERR_OK;
}
