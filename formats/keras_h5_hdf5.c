/* HDF5 plumbing for the Keras .h5 reader and writer: opening files and memory images, string
 * attributes in every encoding Keras produced, chunked list attributes, float datasets. */
#include "formats/keras_h5_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void kh5__strs_free(kh5__strs *l)
{
    if (l == NULL)
        return;
    for (int i = 0; i < l->n; i++)
        free(l->s[i]);
    free(l->s);
    l->s = NULL;
    l->n = 0;
}

int kh5__strs_push(kh5__strs *l, const char *s, size_t len, err_info *e)
{
    char **grown = realloc(l->s, ((size_t)l->n + 1) * sizeof *grown);
    if (grown == NULL)
        return err_set(e, ERR_NOMEM, "out of memory for a string list");
    l->s = grown;
    char *copy = malloc(len + 1);
    if (copy == NULL)
        return err_set(e, ERR_NOMEM, "out of memory for a string of %zu bytes", len);
    memcpy(copy, s, len);
    copy[len] = '\0';
    l->s[l->n++] = copy;
    return ERR_OK;
}

void kh5__warn(kh5_warnings *w, const char *fmt, ...)
{
    if (w == NULL)
        return;
    if (w->count < KH5_WARN_MAX) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(w->msg[w->count], sizeof w->msg[w->count], fmt, ap);
        va_end(ap);
    }
    w->count++;
}

static herr_t reason_walk(unsigned n, const H5E_error2_t *err, void *data)
{
    (void)n;
    /* Walking downwards, the last entry is the innermost, most specific one. */
    char *buf = data;
    if (err->desc != NULL && err->desc[0] != '\0')
        snprintf(buf, 256, "%s", err->desc);
    return 0;
}

void kh5__h5_reason(char *buf, size_t len)
{
    char tmp[256] = "";
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, reason_walk, tmp);
    snprintf(buf, len, "%s", tmp);
}

int kh5__open_path(const char *path, hid_t *out, err_info *e)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return err_set(e, ERR_IO, "cannot open: %s", strerror(errno));
    if (S_ISDIR(st.st_mode))
        return err_set(e, ERR_IO, "is a directory, not a file");
    FILE *probe = fopen(path, "rb");
    if (probe == NULL)
        return err_set(e, ERR_IO, "cannot open: %s", strerror(errno));
    fclose(probe);
    H5Eclear2(H5E_DEFAULT);
    htri_t is_h5 = H5Fis_hdf5(path);
    if (is_h5 <= 0) {
        char why[256];
        kh5__h5_reason(why, sizeof why);
        return err_set(e, ERR_FORMAT, "not an HDF5 file (%lld bytes)%s%s", (long long)st.st_size,
                       why[0] ? ": " : "", why);
    }
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        char why[256];
        kh5__h5_reason(why, sizeof why);
        return err_set(e, ERR_FORMAT, "cannot open as HDF5 (truncated or corrupt?)%s%s",
                       why[0] ? ": " : "", why);
    }
    *out = f;
    return ERR_OK;
}

int kh5__open_mem(const void *buf, size_t len, hid_t *out, err_info *e)
{
    /* The HDF5 signature alone is 8 bytes; an empty image would make the core driver look for
     * a file on disk instead. */
    static const unsigned char sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    if (buf == NULL || len < sizeof sig)
        return err_set(e, ERR_FORMAT, "not an HDF5 file (%zu bytes)", len);
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0)
        return err_set(e, ERR_INTERNAL, "H5Pcreate failed");
    int rc = ERR_OK;
    if (H5Pset_fapl_core(fapl, 1 << 16, 0) < 0 ||
        H5Pset_file_image(fapl, (void *)(uintptr_t)buf, len) < 0) {
        rc = err_set(e, ERR_INTERNAL, "cannot set up an in-memory HDF5 file");
        goto done;
    }
    H5Eclear2(H5E_DEFAULT);
    hid_t f = H5Fopen("cornu-memory-image.h5", H5F_ACC_RDONLY, fapl);
    if (f < 0) {
        char why[256];
        kh5__h5_reason(why, sizeof why);
        rc = err_set(e, ERR_FORMAT, "cannot open as HDF5 (%zu bytes; truncated or corrupt?)%s%s",
                     len, why[0] ? ": " : "", why);
        goto done;
    }
    *out = f;
done:
    H5Pclose(fapl);
    return rc;
}

int kh5__attr_exists(hid_t obj, const char *name)
{
    /* H5Aexists decodes every attribute message of obj: check them first. */
    if (kh5__ohdr_check(obj, "", NULL) != ERR_OK)
        return -1;
    htri_t r = H5Aexists(obj, name);
    return r < 0 ? -1 : (int)r;
}

int kh5__link_exists(hid_t loc, const char *path)
{
    /* H5Lexists fails (rather than returning false) when an intermediate component is missing,
     * so check each prefix in turn. */
    char buf[KH5__PATH_MAX];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf)
        return 0;
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] == '/' || buf[i] == '\0') {
            char keep = buf[i];
            buf[i] = '\0';
            htri_t r = H5Lexists(loc, buf, H5P_DEFAULT);
            buf[i] = keep;
            if (r <= 0)
                return 0;
        }
    }
    return 1;
}

static const char *type_class_name(H5T_class_t c)
{
    switch (c) {
    case H5T_INTEGER:
        return "integer";
    case H5T_FLOAT:
        return "float";
    case H5T_STRING:
        return "string";
    case H5T_COMPOUND:
        return "compound";
    case H5T_ARRAY:
        return "array";
    case H5T_ENUM:
        return "enum";
    case H5T_VLEN:
        return "vlen";
    case H5T_OPAQUE:
        return "opaque";
    case H5T_REFERENCE:
        return "reference";
    case H5T_BITFIELD:
        return "bitfield";
    case H5T_TIME:
        return "time";
    case H5T_NO_CLASS:
    case H5T_NCLASSES:
        break;
    }
    return "unknown";
}

/* ---- variable-length strings, read with checks libhdf5 1.10 lacks ----
 *
 * A variable-length string attribute stores, per element, its length and a reference into a
 * "global heap collection" (GCOL) elsewhere in the file. libhdf5 1.10's H5Aread trusts those
 * numbers: a corrupted reference or collection makes it read out of bounds (H5HG_read crashes)
 * or allocate gigabytes. So the references are fetched raw (through a conversion function that
 * copies the disk form unchanged, registered only for the duration of one read), and the
 * collection is parsed here with every offset and size checked against the file before any
 * byte is copied. Files on another driver than sec2 / core fall back to H5Aread. */

#define KH5__RAW_TAG "cornu-raw-vlen"
#define KH5__RAW_CONV "cornu_raw_vlen"

static herr_t raw_vlen_conv(hid_t src, hid_t dst, H5T_cdata_t *cdata, size_t nelmts,
                            size_t buf_stride, size_t bkg_stride, void *buf, void *bkg, hid_t plist)
{
    (void)nelmts, (void)buf_stride, (void)bkg_stride, (void)buf, (void)bkg, (void)plist;
    switch (cdata->command) {
    case H5T_CONV_INIT: {
        /* Only for the opaque memory type made below, and only when it has exactly the size
         * of the disk form, so that "converting" is leaving the bytes where they are. */
        char *tag = H5Tget_tag(dst);
        bool ours = tag != NULL && strcmp(tag, KH5__RAW_TAG) == 0;
        H5free_memory(tag);
        cdata->need_bkg = H5T_BKG_NO;
        return ours && H5Tget_size(src) == H5Tget_size(dst) ? 0 : -1;
    }
    case H5T_CONV_CONV:
    case H5T_CONV_FREE:
        return 0;
    }
    return -1;
}

/* Where a file's bytes can be read directly. */
typedef struct raw_file {
    int fd;                   /* sec2 driver, or -1 */
    const unsigned char *mem; /* core driver image, or NULL */
    uint64_t size;            /* bytes in the file */
    uint64_t base;            /* userblock: HDF5 addresses are relative to it */
    size_t sizeof_addr, sizeof_size;
} raw_file;

static bool raw_open(hid_t obj, raw_file *rf)
{
    memset(rf, 0, sizeof *rf);
    rf->fd = -1;
    bool ok = false;
    hid_t file = H5Iget_file_id(obj);
    hid_t fapl = file < 0 ? H5I_INVALID_HID : H5Fget_access_plist(file);
    hid_t fcpl = file < 0 ? H5I_INVALID_HID : H5Fget_create_plist(file);
    hsize_t size = 0, ub = 0;
    void *handle = NULL;
    if (fapl >= 0 && fcpl >= 0 && H5Fget_filesize(file, &size) >= 0 &&
        H5Pget_sizes(fcpl, &rf->sizeof_addr, &rf->sizeof_size) >= 0 &&
        H5Pget_userblock(fcpl, &ub) >= 0 && H5Fget_vfd_handle(file, fapl, &handle) >= 0 &&
        handle != NULL && rf->sizeof_addr <= 8 && rf->sizeof_size <= 8 && rf->sizeof_addr > 0 &&
        rf->sizeof_size > 0) {
        hid_t drv = H5Pget_driver(fapl);
        rf->size = size;
        rf->base = ub;
        if (drv == H5FD_SEC2) {
            rf->fd = *(int *)handle;
            ok = true;
        } else if (drv == H5FD_CORE) {
            rf->mem = *(unsigned char **)handle;
            ok = rf->mem != NULL;
        }
    }
    if (fcpl >= 0)
        H5Pclose(fcpl);
    if (fapl >= 0)
        H5Pclose(fapl);
    if (file >= 0)
        H5Fclose(file);
    return ok;
}

/* Copies n bytes at HDF5 address addr; false if they are not all inside the file. */
static bool raw_read(const raw_file *rf, uint64_t addr, void *dst, size_t n)
{
    uint64_t at = rf->base + addr;
    if (at < addr || at > rf->size || n > rf->size - at)
        return false;
    if (rf->mem != NULL) {
        memcpy(dst, rf->mem + at, n);
        return true;
    }
    size_t done = 0;
    while (done < n) {
        ssize_t got = pread(rf->fd, (char *)dst + done, n - done, (off_t)(at + done));
        if (got <= 0)
            return false;
        done += (size_t)got;
    }
    return true;
}

static uint64_t le(const unsigned char *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = n; i-- > 0;)
        v = v << 8 | p[i];
    return v;
}

/* Object header message types (HDF5 file format spec, section IV.A.2). */
#define OH_MSG_DATASPACE 0x0001
#define OH_MSG_ATTRIBUTE 0x000C
#define OH_MSG_CONTINUATION 0x0010
/* More chunks than any Keras object needs; a loop of continuation messages ends here too. */
#define OH_MAX_CHUNKS 256
#define OH_MAX_CHUNK_BYTES ((uint64_t)64 << 20)

static uint64_t pad8(uint64_t n)
{
    return (n + 7) / 8 * 8;
}

/* Elements of an encoded dataspace message (body, len); false if it does not parse. */
static bool dataspace_points(const unsigned char *b, uint64_t len, size_t sizeof_size,
                             uint64_t *points)
{
    if (len < 8)
        return false;
    unsigned version = b[0], rank = b[1];
    uint64_t at = version == 1 ? 8 : 4;
    if ((version != 1 && version != 2) || rank > 32)
        return false;
    if (version == 2 && b[3] == 2) { /* null dataspace */
        *points = 0;
        return true;
    }
    uint64_t n = 1;
    for (unsigned i = 0; i < rank; i++) {
        if (at + sizeof_size > len)
            return false;
        uint64_t d = le(b + at, sizeof_size);
        at += sizeof_size;
        if (d != 0 && n > UINT64_MAX / d)
            return false;
        n *= d;
    }
    *points = n;
    return true;
}

/* Checks one attribute message body (b, len) the way libhdf5 1.10's H5O_attr_decode will use
 * it: the name, datatype and dataspace must fit in the message, and so must the value
 * (elements x element size), which it copies with memcpy without looking at the message size. */
static bool attr_message_ok(const unsigned char *b, uint64_t len, size_t sizeof_addr,
                            size_t sizeof_size)
{
    if (len < 8)
        return false;
    unsigned version = b[0], flags = b[1];
    uint64_t ns = le(b + 2, 2), dts = le(b + 4, 2), dss = le(b + 6, 2);
    uint64_t dt_at, ds_at, data_at;
    if (version == 1) {
        dt_at = 8 + pad8(ns);
        ds_at = dt_at + pad8(dts);
        data_at = ds_at + pad8(dss);
    } else if (version == 2 || version == 3) {
        dt_at = (version == 3 ? 9 : 8) + ns;
        ds_at = dt_at + dts;
        data_at = ds_at + dss;
    } else {
        return false;
    }
    if (data_at > len || dts < 8)
        return false;
    if (flags & 3) /* shared datatype or dataspace: encoded elsewhere, not checked here */
        return true;
    uint64_t points = 0;
    if (!dataspace_points(b + ds_at, dss, sizeof_size, &points))
        return false;
    /* Datatype: class in the low 4 bits of byte 0, element size at byte 4. A variable-length
     * element is stored on disk as length + global heap address + index. */
    unsigned cls = b[dt_at] & 0x0f;
    uint64_t esize = cls == 9 ? 4 + sizeof_addr + 4 : le(b + dt_at + 4, 4);
    if (esize != 0 && points > (len - data_at) / esize)
        return false;
    return true;
}

int kh5__ohdr_check(hid_t obj, const char *where, err_info *e)
{
    raw_file rf;
    H5O_info_t oi;
    /* Only the basic fields: they come from the message headers, not from decoding messages. */
    if (!raw_open(obj, &rf) || H5Oget_info2(obj, &oi, H5O_INFO_BASIC) < 0)
        return ERR_OK; /* another driver, or nothing to check: libhdf5 decides alone */
    unsigned char prefix[16];
    if (!raw_read(&rf, oi.addr, prefix, sizeof prefix))
        return e ? err_set(e, ERR_FORMAT, "%s: object header outside the file (corrupt file)",
                           where[0] ? where : "/")
                 : ERR_FORMAT;
    if (prefix[0] != 1)
        return ERR_OK; /* version 2 headers ("OHDR") carry checksums that libhdf5 verifies */
    uint64_t chunk_addr[OH_MAX_CHUNKS], chunk_len[OH_MAX_CHUNKS];
    int n_chunks = 1, msg = 0;
    chunk_addr[0] = oi.addr + 16;
    chunk_len[0] = le(prefix + 8, 4);
    int rc = ERR_OK;
    unsigned char *buf = NULL;
    for (int c = 0; c < n_chunks && rc == ERR_OK; c++) {
        free(buf);
        buf = NULL;
        uint64_t len = chunk_len[c];
        if (len > OH_MAX_CHUNK_BYTES || (buf = malloc(len ? len : 1)) == NULL ||
            !raw_read(&rf, chunk_addr[c], buf, (size_t)len)) {
            rc = ERR_FORMAT;
            if (e)
                err_set(e, ERR_FORMAT,
                        "%s: object header chunk %d (%llu bytes at %llu) is not inside the file "
                        "(corrupt file)",
                        where[0] ? where : "/", c, (unsigned long long)len,
                        (unsigned long long)chunk_addr[c]);
            break;
        }
        for (uint64_t p = 0; p + 8 <= len; msg++) {
            unsigned type = (unsigned)le(buf + p, 2);
            uint64_t size = le(buf + p + 2, 2);
            unsigned mflags = buf[p + 4];
            const unsigned char *body = buf + p + 8;
            bool ok = p + 8 + size <= len;
            if (ok && type == OH_MSG_ATTRIBUTE && !(mflags & 2))
                ok = attr_message_ok(body, size, rf.sizeof_addr, rf.sizeof_size);
            if (ok && type == OH_MSG_CONTINUATION) {
                ok = size >= rf.sizeof_addr + rf.sizeof_size && n_chunks < OH_MAX_CHUNKS;
                if (ok) {
                    chunk_addr[n_chunks] = le(body, rf.sizeof_addr);
                    chunk_len[n_chunks] = le(body + rf.sizeof_addr, rf.sizeof_size);
                    n_chunks++;
                }
            }
            if (!ok) {
                rc = ERR_FORMAT;
                if (e)
                    err_set(e, ERR_FORMAT,
                            "%s: object header message %d (type %u, %llu bytes) is inconsistent "
                            "(corrupt file)",
                            where[0] ? where : "/", msg, type, (unsigned long long)size);
                break;
            }
            p += 8 + size;
        }
    }
    free(buf);
    return rc;
}

/* One global heap collection, parsed and checked. */
typedef struct gcol {
    uint64_t addr;
    unsigned char *buf;
    size_t size;
} gcol;

/* Finds object idx of the collection at addr: *data / *n point into g->buf. */
static int gcol_object(const raw_file *rf, gcol *g, uint64_t addr, uint64_t idx,
                       const unsigned char **data, size_t *n, char *why, size_t wl)
{
    size_t hdr = 8 + rf->sizeof_size; /* "GCOL", version, 3 reserved, collection size */
    if (g->buf == NULL || g->addr != addr) {
        unsigned char h[16];
        free(g->buf);
        g->buf = NULL;
        if (!raw_read(rf, addr, h, hdr)) {
            snprintf(why, wl, "heap collection at %llu lies outside the file",
                     (unsigned long long)addr);
            return -1;
        }
        uint64_t cs = le(h + 8, rf->sizeof_size);
        if (memcmp(h, "GCOL", 4) != 0 || h[4] != 1 || cs < hdr || cs > rf->size || cs > SIZE_MAX) {
            snprintf(why, wl, "no valid heap collection at %llu", (unsigned long long)addr);
            return -1;
        }
        g->buf = malloc((size_t)cs);
        if (g->buf == NULL || !raw_read(rf, addr, g->buf, (size_t)cs)) {
            snprintf(why, wl, "heap collection at %llu (%llu bytes) unreadable",
                     (unsigned long long)addr, (unsigned long long)cs);
            free(g->buf);
            g->buf = NULL;
            return -1;
        }
        g->addr = addr;
        g->size = (size_t)cs;
    }
    /* Objects: index (2), reference count (2), reserved (4), size, data padded to 8 bytes;
     * index 0 is the free space that ends the list. */
    size_t oh = 8 + rf->sizeof_size, pos = hdr;
    while (pos + oh <= g->size) {
        uint64_t oi = le(g->buf + pos, 2);
        uint64_t os = le(g->buf + pos + 8, rf->sizeof_size);
        if (oi == 0)
            break;
        if (os > g->size - pos - oh) {
            snprintf(why, wl, "heap object %llu overruns its collection", (unsigned long long)oi);
            return -1;
        }
        if (oi == idx) {
            *data = g->buf + pos + oh;
            *n = (size_t)os;
            return 0;
        }
        pos += oh + (size_t)((os + 7) & ~(uint64_t)7);
    }
    snprintf(why, wl, "heap object %llu missing from its collection", (unsigned long long)idx);
    return -1;
}

/* 1: read (strings appended to out); 0: this file needs the plain H5Aread path; < 0: error. */
static int vlen_strings_checked(hid_t attr, hid_t ftype, const char *where, const char *name,
                                size_t np, kh5__strs *out, err_info *e)
{
    raw_file rf;
    if (!raw_open(attr, &rf))
        return 0;
    size_t disk = 4 + rf.sizeof_addr + 4; /* length, collection address, object index */
    int rc = 1;
    hid_t raw = H5Tcreate(H5T_OPAQUE, disk);
    unsigned char *ids = NULL;
    gcol g = {0, NULL, 0};
    bool registered = false;
    if (raw < 0 || H5Tset_tag(raw, KH5__RAW_TAG) < 0) {
        rc = 0;
        goto done;
    }
    registered = H5Tregister(H5T_PERS_SOFT, KH5__RAW_CONV, ftype, raw, raw_vlen_conv) >= 0;
    ids = malloc(np * disk);
    if (!registered || ids == NULL) {
        rc = 0;
        goto done;
    }
    if (H5Aread(attr, raw, ids) < 0) {
        char why[256];
        kh5__h5_reason(why, sizeof why);
        rc = err_set(e, ERR_FORMAT, "%s: attribute %s: cannot read (%s)", where, name, why);
        rc = -rc;
        goto done;
    }
    for (size_t i = 0; i < np; i++) {
        const unsigned char *p = ids + i * disk;
        uint64_t len = le(p, 4), addr = le(p + 4, rf.sizeof_addr);
        uint64_t idx = le(p + 4 + rf.sizeof_addr, 4);
        const unsigned char *data = (const unsigned char *)"";
        size_t n = 0;
        char why[160];
        if (len > 0 && gcol_object(&rf, &g, addr, idx, &data, &n, why, sizeof why) != 0) {
            rc = -err_set(e, ERR_FORMAT, "%s: attribute %s: string %zu: %s (corrupt file)", where,
                          name, i, why);
            goto done;
        }
        if (len > n) {
            rc = -err_set(e, ERR_FORMAT,
                          "%s: attribute %s: string %zu claims %llu bytes, its heap object has "
                          "%zu (corrupt file)",
                          where, name, i, (unsigned long long)len, n);
            goto done;
        }
        /* A string ends at its first NUL, as HDF5 hands it to C. */
        size_t l = 0;
        while (l < len && data[l] != '\0')
            l++;
        int prc = kh5__strs_push(out, (const char *)data, l, e);
        if (prc != ERR_OK) {
            rc = -prc;
            goto done;
        }
    }
done:
    if (registered)
        H5Tunregister(H5T_PERS_SOFT, KH5__RAW_CONV, H5I_INVALID_HID, H5I_INVALID_HID,
                      raw_vlen_conv);
    free(g.buf);
    free(ids);
    if (raw >= 0)
        H5Tclose(raw);
    return rc;
}

/* Reads the strings of an open attribute into out (appending). */
static int attr_strings(hid_t attr, const char *where, const char *name, kh5__strs *out,
                        err_info *e)
{
    int rc = ERR_OK;
    hid_t ftype = H5I_INVALID_HID, space = H5I_INVALID_HID, mtype = H5I_INVALID_HID;
    char **vbuf = NULL;
    char *fbuf = NULL;
    bool reclaim = false;

    ftype = H5Aget_type(attr);
    space = H5Aget_space(attr);
    if (ftype < 0 || space < 0) {
        rc = err_set(e, ERR_FORMAT, "%s: attribute %s: unreadable type or dataspace", where, name);
        goto done;
    }
    H5S_class_t sclass = H5Sget_simple_extent_type(space);
    hssize_t np = sclass == H5S_NULL ? 0 : H5Sget_simple_extent_npoints(space);
    if (np < 0) {
        rc = err_set(e, ERR_FORMAT, "%s: attribute %s: unreadable dataspace", where, name);
        goto done;
    }
    H5T_class_t tclass = H5Tget_class(ftype);
    if (tclass != H5T_STRING) {
        /* Keras writes an empty list as an empty float64 array. */
        if (np == 0)
            goto done;
        rc = err_set(e, ERR_FORMAT,
                     "%s: attribute %s is %s data with %lld elements, expected strings", where,
                     name, type_class_name(tclass), (long long)np);
        goto done;
    }
    if (np == 0)
        goto done;
    /* Guard allocations against a dataspace that claims more than the attribute stores. */
    hsize_t stored = H5Aget_storage_size(attr);
    H5T_cset_t cset = H5Tget_cset(ftype);
    if (cset != H5T_CSET_ASCII && cset != H5T_CSET_UTF8) {
        rc = err_set(e, ERR_FORMAT, "%s: attribute %s: unknown string character set", where, name);
        goto done;
    }
    htri_t is_vlen = H5Tis_variable_str(ftype);
    if (is_vlen < 0) {
        rc = err_set(e, ERR_FORMAT, "%s: attribute %s: unreadable string type", where, name);
        goto done;
    }
    if (is_vlen) {
        /* Each variable-length string is stored as a heap reference of at least 8 bytes. */
        if ((hsize_t)np > stored / 8 + 1) {
            rc = err_set(e, ERR_FORMAT, "%s: attribute %s: %lld strings in %llu stored bytes",
                         where, name, (long long)np, (unsigned long long)stored);
            goto done;
        }
        int checked = vlen_strings_checked(attr, ftype, where, name, (size_t)np, out, e);
        if (checked != 0) {
            rc = checked > 0 ? ERR_OK : -checked;
            goto done;
        }
        mtype = H5Tcopy(H5T_C_S1);
        if (mtype < 0 || H5Tset_size(mtype, H5T_VARIABLE) < 0 || H5Tset_cset(mtype, cset) < 0) {
            rc = err_set(e, ERR_INTERNAL, "%s: attribute %s: cannot make a string type", where,
                         name);
            goto done;
        }
        vbuf = calloc((size_t)np, sizeof *vbuf);
        if (vbuf == NULL) {
            rc = err_set(e, ERR_NOMEM, "%s: attribute %s: out of memory", where, name);
            goto done;
        }
        if (H5Aread(attr, mtype, vbuf) < 0) {
            char why[256];
            kh5__h5_reason(why, sizeof why);
            rc = err_set(e, ERR_FORMAT, "%s: attribute %s: cannot read (%s)", where, name, why);
            goto done;
        }
        reclaim = true;
        for (hssize_t i = 0; i < np && rc == ERR_OK; i++) {
            const char *s = vbuf[i] ? vbuf[i] : "";
            rc = kh5__strs_push(out, s, strlen(s), e);
        }
    } else {
        size_t sz = H5Tget_size(ftype);
        if (sz == 0 || (uint64_t)np > SIZE_MAX / sz || (hsize_t)np * sz > stored) {
            rc = err_set(e, ERR_FORMAT,
                         "%s: attribute %s: %lld strings of %zu bytes but %llu bytes stored", where,
                         name, (long long)np, sz, (unsigned long long)stored);
            goto done;
        }
        mtype = H5Tcopy(H5T_C_S1);
        if (mtype < 0 || H5Tset_size(mtype, sz) < 0 || H5Tset_strpad(mtype, H5T_STR_NULLPAD) < 0 ||
            H5Tset_cset(mtype, cset) < 0) {
            rc = err_set(e, ERR_INTERNAL, "%s: attribute %s: cannot make a string type", where,
                         name);
            goto done;
        }
        fbuf = malloc((size_t)np * sz);
        if (fbuf == NULL) {
            rc = err_set(e, ERR_NOMEM, "%s: attribute %s: out of memory", where, name);
            goto done;
        }
        if (H5Aread(attr, mtype, fbuf) < 0) {
            char why[256];
            kh5__h5_reason(why, sizeof why);
            rc = err_set(e, ERR_FORMAT, "%s: attribute %s: cannot read (%s)", where, name, why);
            goto done;
        }
        /* NULLPAD: the longest entry fills the whole size and has no terminator. */
        for (hssize_t i = 0; i < np && rc == ERR_OK; i++) {
            const char *s = fbuf + (size_t)i * sz;
            size_t l = 0;
            while (l < sz && s[l] != '\0')
                l++;
            rc = kh5__strs_push(out, s, l, e);
        }
    }
done:
    if (reclaim)
        H5Dvlen_reclaim(mtype, space, H5P_DEFAULT, vbuf);
    free(vbuf);
    free(fbuf);
    if (mtype >= 0)
        H5Tclose(mtype);
    if (space >= 0)
        H5Sclose(space);
    if (ftype >= 0)
        H5Tclose(ftype);
    return rc;
}

int kh5__attr_read_strs(hid_t obj, const char *where, const char *name, kh5__strs *out, err_info *e)
{
    int crc = kh5__ohdr_check(obj, where, e);
    if (crc != ERR_OK)
        return crc;
    hid_t attr = H5Aopen(obj, name, H5P_DEFAULT);
    if (attr < 0)
        return err_set(e, ERR_FORMAT, "%s: attribute %s missing or unreadable", where, name);
    kh5__strs got = {0, NULL};
    int rc = attr_strings(attr, where, name, &got, e);
    H5Aclose(attr);
    if (rc != ERR_OK) {
        kh5__strs_free(&got);
        return rc;
    }
    *out = got;
    return ERR_OK;
}

int kh5__attr_read_list(hid_t obj, const char *where, const char *name, kh5__strs *out,
                        bool *present, err_info *e)
{
    kh5__strs got = {0, NULL};
    int rc = ERR_OK;
    bool found = false;
    if ((rc = kh5__ohdr_check(obj, where, e)) != ERR_OK)
        return rc;
    int ex = kh5__attr_exists(obj, name);
    if (ex < 0)
        return err_set(e, ERR_FORMAT, "%s: cannot list attributes", where);
    if (ex) {
        found = true;
        rc = kh5__attr_read_strs(obj, where, name, &got, e);
    } else {
        /* Keras >= 2.1.5 splits a list over 64512 bytes into name0, name1, ... */
        char chunk[256];
        for (int k = 0; rc == ERR_OK; k++) {
            snprintf(chunk, sizeof chunk, "%s%d", name, k);
            ex = kh5__attr_exists(obj, chunk);
            if (ex <= 0)
                break;
            found = true;
            hid_t attr = H5Aopen(obj, chunk, H5P_DEFAULT);
            if (attr < 0) {
                rc = err_set(e, ERR_FORMAT, "%s: attribute %s unreadable", where, chunk);
                break;
            }
            rc = attr_strings(attr, where, chunk, &got, e);
            H5Aclose(attr);
        }
    }
    if (rc != ERR_OK) {
        kh5__strs_free(&got);
        return rc;
    }
    *out = got;
    if (present != NULL)
        *present = found;
    return ERR_OK;
}

int kh5__attr_read_str(hid_t obj, const char *where, const char *name, char **out, size_t *len,
                       err_info *e)
{
    kh5__strs l = {0, NULL};
    int rc = kh5__attr_read_strs(obj, where, name, &l, e);
    if (rc != ERR_OK)
        return rc;
    if (l.n != 1) {
        rc = err_set(e, ERR_FORMAT, "%s: attribute %s holds %d strings, expected one", where, name,
                     l.n);
        kh5__strs_free(&l);
        return rc;
    }
    *out = l.s[0];
    if (len != NULL)
        *len = strlen(l.s[0]);
    free(l.s);
    return ERR_OK;
}

int kh5__attr_write_vlen(hid_t obj, const char *where, const char *name, const char *s, bool utf8,
                         err_info *e)
{
    int rc = ERR_OK;
    hid_t type = H5Tcopy(H5T_C_S1), space = H5Screate(H5S_SCALAR), attr = H5I_INVALID_HID;
    if (type < 0 || space < 0 || H5Tset_size(type, H5T_VARIABLE) < 0 ||
        H5Tset_cset(type, utf8 ? H5T_CSET_UTF8 : H5T_CSET_ASCII) < 0) {
        rc = err_set(e, ERR_INTERNAL, "%s: cannot make a string type", where);
        goto done;
    }
    attr = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    if (attr < 0 || H5Awrite(attr, type, &s) < 0) {
        char why[256];
        kh5__h5_reason(why, sizeof why);
        rc = err_set(e, ERR_IO, "%s: cannot write attribute %s (%s)", where, name, why);
    }
done:
    if (attr >= 0)
        H5Aclose(attr);
    if (space >= 0)
        H5Sclose(space);
    if (type >= 0)
        H5Tclose(type);
    return rc;
}

/* One fixed-length NULLPAD string array attribute from s[0..n), entries sz bytes. */
static int write_fixed(hid_t obj, const char *where, const char *name, int n, const char *const *s,
                       size_t sz, err_info *e)
{
    int rc = ERR_OK;
    hsize_t dims[1] = {(hsize_t)n};
    hid_t type = H5Tcopy(H5T_C_S1), space = H5Screate_simple(1, dims, NULL);
    hid_t attr = H5I_INVALID_HID;
    char *buf = calloc((size_t)n, sz);
    if (buf == NULL) {
        rc = err_set(e, ERR_NOMEM, "%s: out of memory for attribute %s", where, name);
        goto done;
    }
    if (type < 0 || space < 0 || H5Tset_size(type, sz) < 0 ||
        H5Tset_strpad(type, H5T_STR_NULLPAD) < 0 || H5Tset_cset(type, H5T_CSET_ASCII) < 0) {
        rc = err_set(e, ERR_INTERNAL, "%s: cannot make a string type", where);
        goto done;
    }
    for (int i = 0; i < n; i++)
        memcpy(buf + (size_t)i * sz, s[i], strlen(s[i]));
    attr = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    if (attr < 0 || H5Awrite(attr, type, buf) < 0) {
        char why[256];
        kh5__h5_reason(why, sizeof why);
        rc = err_set(e, ERR_IO, "%s: cannot write attribute %s (%s)", where, name, why);
    }
done:
    free(buf);
    if (attr >= 0)
        H5Aclose(attr);
    if (space >= 0)
        H5Sclose(space);
    if (type >= 0)
        H5Tclose(type);
    return rc;
}

int kh5__attr_write_list(hid_t obj, const char *where, const char *name, int n,
                         const char *const *s, err_info *e)
{
    if (n == 0) {
        /* numpy turns [] into an empty float64 array, which is what every Keras wrote. */
        hsize_t dims[1] = {0};
        hid_t space = H5Screate_simple(1, dims, NULL);
        hid_t attr = space < 0
                         ? H5I_INVALID_HID
                         : H5Acreate2(obj, name, H5T_IEEE_F64LE, space, H5P_DEFAULT, H5P_DEFAULT);
        int rc = ERR_OK;
        if (attr < 0)
            rc = err_set(e, ERR_IO, "%s: cannot write attribute %s", where, name);
        if (attr >= 0)
            H5Aclose(attr);
        if (space >= 0)
            H5Sclose(space);
        return rc;
    }
    size_t sz = 0;
    for (int i = 0; i < n; i++) {
        size_t l = strlen(s[i]);
        if (l > KH5__ATTR_LIMIT)
            return err_set(e, ERR_RANGE,
                           "%s: %s entry \"%.40s...\" is %zu bytes, over Keras's "
                           "%d-byte attribute limit",
                           where, name, s[i], l, KH5__ATTR_LIMIT);
        if (l > sz)
            sz = l;
    }
    if (sz == 0)
        sz = 1; /* numpy's S1 for a list of empty strings */
    /* numpy.array_split into k chunks: the largest holds ceil(n / k) rows. Keras takes the
     * smallest k for which every chunk fits. */
    int k = 1;
    while ((size_t)((n + k - 1) / k) * sz > KH5__ATTR_LIMIT)
        k++;
    if (k == 1)
        return write_fixed(obj, where, name, n, s, sz, e);
    int base = n / k, extra = n % k, at = 0;
    for (int c = 0; c < k; c++) {
        int rows = base + (c < extra ? 1 : 0);
        char cname[256];
        snprintf(cname, sizeof cname, "%s%d", name, c);
        int rc = write_fixed(obj, where, cname, rows, s + at, sz, e);
        if (rc != ERR_OK)
            return rc;
        at += rows;
    }
    return ERR_OK;
}

int kh5__dset_shape(hid_t loc, const char *path, int *rank, int64_t *shape, bool *is_float,
                    err_info *e)
{
    int rc = ERR_OK;
    hid_t space = H5I_INVALID_HID, type = H5I_INVALID_HID;
    /* Open directly (one path traversal); only on failure find out why. */
    hid_t d = H5Dopen2(loc, path, H5P_DEFAULT);
    if (d < 0) {
        if (!kh5__link_exists(loc, path))
            return err_set(e, ERR_FORMAT, "%s: dataset missing", path);
        hid_t obj = H5Oopen(loc, path, H5P_DEFAULT);
        bool is_dset = obj >= 0 && H5Iget_type(obj) == H5I_DATASET;
        if (obj >= 0)
            H5Oclose(obj);
        if (!is_dset)
            return err_set(e, ERR_FORMAT, "%s: not a dataset", path);
        return err_set(e, ERR_FORMAT, "%s: cannot open dataset", path);
    }
    space = H5Dget_space(d);
    type = H5Dget_type(d);
    if (space < 0 || type < 0) {
        rc = err_set(e, ERR_FORMAT, "%s: unreadable dataspace or dtype", path);
        goto done;
    }
    H5S_class_t sc = H5Sget_simple_extent_type(space);
    if (sc == H5S_SCALAR) {
        *rank = 0;
    } else if (sc == H5S_SIMPLE) {
        int r = H5Sget_simple_extent_ndims(space);
        if (r < 0 || r > TENSOR_MAX_RANK) {
            rc = err_set(e, ERR_FORMAT, "%s: rank %d (at most %d supported)", path, r,
                         TENSOR_MAX_RANK);
            goto done;
        }
        hsize_t dims[TENSOR_MAX_RANK];
        H5Sget_simple_extent_dims(space, dims, NULL);
        for (int i = 0; i < r; i++) {
            if (dims[i] > (hsize_t)INT64_MAX) {
                rc = err_set(e, ERR_RANGE, "%s: extent %llu too large", path,
                             (unsigned long long)dims[i]);
                goto done;
            }
            shape[i] = (int64_t)dims[i];
        }
        *rank = r;
    } else {
        rc = err_set(e, ERR_FORMAT, "%s: empty (null) dataspace", path);
        goto done;
    }
    H5T_class_t tc = H5Tget_class(type);
    if (tc != H5T_FLOAT && tc != H5T_INTEGER) {
        rc =
            err_set(e, ERR_FORMAT, "%s: dtype class %s, expected float", path, type_class_name(tc));
        goto done;
    }
    /* A corrupted element size would make H5Dread allocate a conversion buffer of
     * elements x that size before failing. */
    size_t tsize = H5Tget_size(type);
    if (tsize != 1 && tsize != 2 && tsize != 4 && tsize != 8) {
        rc = err_set(e, ERR_FORMAT, "%s: %s elements of %zu bytes (corrupt file?)", path,
                     type_class_name(tc), tsize);
        goto done;
    }
    *is_float = tc == H5T_FLOAT;
done:
    if (type >= 0)
        H5Tclose(type);
    if (space >= 0)
        H5Sclose(space);
    H5Dclose(d);
    return rc;
}

int kh5__dset_read_f32(hid_t loc, const char *path, float *buf, size_t count, err_info *e)
{
    hid_t d = H5Dopen2(loc, path, H5P_DEFAULT);
    if (d < 0)
        return err_set(e, ERR_FORMAT, "%s: cannot open dataset", path);
    int rc = ERR_OK;
    hid_t space = H5Dget_space(d);
    hssize_t np = space < 0 ? -1 : H5Sget_simple_extent_npoints(space);
    if (np < 0 || (uint64_t)np != (uint64_t)count) {
        rc = err_set(e, ERR_SHAPE, "%s: %lld elements, expected %zu", path, (long long)np, count);
    } else if (count > 0 && H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0) {
        char why[256];
        kh5__h5_reason(why, sizeof why);
        rc = err_set(e, ERR_FORMAT, "%s: cannot read values (truncated or corrupt?)%s%s", path,
                     why[0] ? ": " : "", why);
    }
    if (space >= 0)
        H5Sclose(space);
    H5Dclose(d);
    return rc;
}

int kh5__dset_read_scalar(hid_t loc, const char *path, double *out, err_info *e)
{
    hid_t d = H5Dopen2(loc, path, H5P_DEFAULT);
    if (d < 0)
        return err_set(e, ERR_FORMAT, "%s: cannot open dataset", path);
    int rc = ERR_OK;
    hid_t space = H5Dget_space(d);
    hssize_t np = space < 0 ? -1 : H5Sget_simple_extent_npoints(space);
    double v = 0;
    if (np != 1) {
        rc = err_set(e, ERR_SHAPE, "%s: %lld elements, expected a scalar", path, (long long)np);
    } else if (H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, &v) < 0) {
        rc = err_set(e, ERR_FORMAT, "%s: cannot read value", path);
    } else {
        *out = v;
    }
    if (space >= 0)
        H5Sclose(space);
    H5Dclose(d);
    return rc;
}

/* Creates dataset `path` under loc (intermediate groups too), contiguous and never filled:
 * every byte is written by the caller. alloc_early: its file space is allocated now, so that
 * its offset is known (kh5__dset_write_raw); otherwise at the first write. `name` names it in
 * errors. On success *out is the open dataset. */
static int dset_create(hid_t loc, const char *name, const char *path, hid_t ftype, int rank,
                       const int64_t *shape, bool alloc_early, hid_t *out, err_info *e)
{
    int rc = ERR_OK;
    hsize_t dims[TENSOR_MAX_RANK];
    for (int i = 0; i < rank; i++)
        dims[i] = (hsize_t)shape[i];
    hid_t space = rank == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(rank, dims, NULL);
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    hid_t d = H5I_INVALID_HID;
    if (space < 0 || lcpl < 0 || dcpl < 0 || H5Pset_create_intermediate_group(lcpl, 1) < 0 ||
        (rank > 0 && H5Pset_layout(dcpl, H5D_CONTIGUOUS) < 0) ||
        H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER) < 0 ||
        H5Pset_alloc_time(dcpl, alloc_early ? H5D_ALLOC_TIME_EARLY : H5D_ALLOC_TIME_LATE) < 0) {
        rc = err_set(e, ERR_INTERNAL, "%s: cannot set up the dataset", name);
    } else if ((d = H5Dcreate2(loc, path, ftype, space, lcpl, dcpl, H5P_DEFAULT)) < 0) {
        char why[256];
        kh5__h5_reason(why, sizeof why);
        rc = err_set(e, ERR_IO, "%s: cannot create dataset (%s)", name, why);
    }
    if (dcpl >= 0)
        H5Pclose(dcpl);
    if (lcpl >= 0)
        H5Pclose(lcpl);
    if (space >= 0)
        H5Sclose(space);
    *out = d;
    return rc;
}

int kh5__dset_write(hid_t loc, const char *where, const char *path, hid_t mem_type, int rank,
                    const int64_t *shape, const void *data, err_info *e)
{
    char name[2 * KH5__PATH_MAX];
    snprintf(name, sizeof name, "%s/%s", where, path);
    /* File dtype = the little-endian twin of the memory dtype, as h5py writes numpy arrays. */
    hid_t ftype = H5Tequal(mem_type, H5T_NATIVE_FLOAT) > 0 ? H5T_IEEE_F32LE : H5T_STD_I64LE;
    hid_t d = H5I_INVALID_HID;
    int rc = dset_create(loc, name, path, ftype, rank, shape, false, &d, e);
    if (rc != ERR_OK)
        return rc;
    if (H5Dwrite(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0) {
        char why[256];
        kh5__h5_reason(why, sizeof why);
        rc = err_set(e, ERR_IO, "%s: cannot write dataset (%s)", name, why);
    }
    H5Dclose(d);
    return rc;
}

void kh5__raw_free(kh5__raw *r)
{
    if (r == NULL)
        return;
    for (int i = 0; i < r->n; i++)
        free(r->s[i].name);
    free(r->s);
    r->s = NULL;
    r->n = r->cap = 0;
}

/* Datasets smaller than this go through H5Dwrite: deferring them saves nothing. */
#define RAW_MIN_BYTES ((size_t)64 * 1024)

int kh5__dset_write_raw(hid_t loc, const char *where, const char *path, hid_t mem_type, int rank,
                        const int64_t *shape, const void *data, kh5__raw *raw, err_info *e)
{
    size_t count = 1;
    for (int i = 0; i < rank; i++)
        count *= (size_t)shape[i];
    /* The bytes go to the file unconverted, so the memory type must be the file type. */
    if (raw == NULL || H5Tequal(mem_type, H5T_NATIVE_FLOAT) <= 0 ||
        H5Tequal(H5T_NATIVE_FLOAT, H5T_IEEE_F32LE) <= 0 || rank == 0 ||
        count * sizeof(float) < RAW_MIN_BYTES)
        return kh5__dset_write(loc, where, path, mem_type, rank, shape, data, e);
    char name[2 * KH5__PATH_MAX];
    snprintf(name, sizeof name, "%s/%s", where[1] ? where : "", path);
    hid_t d = H5I_INVALID_HID;
    int rc = dset_create(loc, name, path, H5T_IEEE_F32LE, rank, shape, true, &d, e);
    if (rc != ERR_OK)
        return rc;
    haddr_t off = H5Dget_offset(d);
    if (off == HADDR_UNDEF) {
        char why[256];
        kh5__h5_reason(why, sizeof why);
        rc = err_set(e, ERR_IO, "%s: no file offset for the dataset (%s)", name, why);
        goto done;
    }
    if (raw->n == raw->cap) {
        int cap = raw->cap ? 2 * raw->cap : 64;
        kh5__raw_span *grown = realloc(raw->s, (size_t)cap * sizeof *grown);
        if (grown == NULL) {
            rc = err_set(e, ERR_NOMEM, "out of memory");
            goto done;
        }
        raw->s = grown;
        raw->cap = cap;
    }
    char *copy = malloc(strlen(name) + 1);
    if (copy == NULL) {
        rc = err_set(e, ERR_NOMEM, "out of memory");
        goto done;
    }
    strcpy(copy, name);
    raw->s[raw->n++] = (kh5__raw_span){(uint64_t)off, data, count * sizeof(float), copy};
done:
    H5Dclose(d);
    return rc;
}

int kh5__raw_flush(const char *path, const kh5__raw *r, err_info *e)
{
    if (r == NULL || r->n == 0)
        return ERR_OK;
    int fd = open(path, O_WRONLY);
    if (fd < 0)
        return err_set(e, ERR_IO, "cannot reopen %s to write the weights: %s", path,
                       strerror(errno));
    int rc = ERR_OK;
    /* Pieces of KH5__RAW_PIECE bytes rather than one write per dataset: on the VM we measured
     * (docs/benchmarks.md, ".h5 I/O"), page-cache writes above ~1 MiB cost 4-10x more per byte
     * than writes of <= 512 KiB (presumably the kernel then uses 2 MiB folios). */
    for (int i = 0; i < r->n && rc == ERR_OK; i++) {
        const char *p = r->s[i].data;
        size_t left = r->s[i].bytes;
        uint64_t at = r->s[i].offset;
        while (left > 0) {
            size_t piece = left < KH5__RAW_PIECE ? left : KH5__RAW_PIECE;
            ssize_t w = pwrite(fd, p, piece, (off_t)at);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                rc = err_set(e, ERR_IO, "%s: cannot write %zu bytes at offset %llu of %s: %s",
                             r->s[i].name, piece, (unsigned long long)at, path,
                             w < 0 ? strerror(errno) : "no progress (disk full?)");
                break;
            }
            p += w;
            left -= (size_t)w;
            at += (uint64_t)w;
        }
    }
    if (close(fd) != 0 && rc == ERR_OK)
        rc = err_set(e, ERR_IO, "cannot close %s: %s (disk full?)", path, strerror(errno));
    return rc;
}

int kh5__probe_file(hid_t file, kh5_kind *out, err_info *e)
{
    int crc = kh5__ohdr_check(file, "/", e);
    if (crc != ERR_OK)
        return crc;
    int mc = kh5__attr_exists(file, "model_config");
    if (mc < 0)
        return err_set(e, ERR_FORMAT, "/: cannot list the root attributes");
    if (mc) {
        *out = KH5_FULL;
        return ERR_OK;
    }
    if (kh5__attr_exists(file, "layer_names") > 0 || kh5__attr_exists(file, "layer_names0") > 0) {
        *out = KH5_WEIGHTS;
        return ERR_OK;
    }
    /* Keras 3 save_weights() layout: groups layers/<name>/vars and vars, no root attributes. */
    if (kh5__link_exists(file, "layers") && kh5__link_exists(file, "vars")) {
        *out = KH5_KERAS3_WEIGHTS;
        return ERR_OK;
    }
    if (kh5__link_exists(file, "model_weights"))
        return err_set(e, ERR_FORMAT,
                       "/: group model_weights but no model_config attribute: not a complete "
                       "Keras model file");
    return err_set(e, ERR_FORMAT,
                   "/: no model_config or layer_names attribute: an HDF5 file, but not a Keras "
                   ".h5 file");
}
