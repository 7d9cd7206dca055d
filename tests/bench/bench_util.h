#ifndef CORNU_TESTS_BENCH_UTIL_H
#define CORNU_TESTS_BENCH_UTIL_H

/* Small helpers shared by the benchmark programs of tests/bench. */

#include <stdio.h>
#include <stdlib.h>

#include "kernels/err.h"

/* Reads the whole file at path into a new buffer (*out, free()), *len bytes. */
static inline int bench_read_file(const char *path, char **out, size_t *len, err_info *e)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return err_set(e, ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    char *buf = NULL;
    size_t n = 0, cap = 0;
    int rc = ERR_OK;
    for (;;) {
        if (n == cap) {
            cap = cap ? 2 * cap : 65536;
            char *nb = realloc(buf, cap);
            if (nb == NULL) {
                rc = err_set(e, ERR_NOMEM, "%s: reading", path);
                break;
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f))
                rc = err_set(e, ERR_IO, "%s: read error", path);
            break;
        }
    }
    fclose(f);
    if (rc != ERR_OK) {
        free(buf);
        return rc;
    }
    *out = buf;
    *len = n;
    return ERR_OK;
}

#endif
