/* Fuzz target: the NPY header parser and the reader over an in-memory file (trainer/data_npy.c).
 * Invariants checked besides memory safety: a failure carries an error code and a message naming
 * the input; a success describes a shape whose rows can all be read. */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "trainer/data.h"
#include "trainer/data_impl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reads a few rows (in a scrambled order with a duplicate) when the rows are small enough. */
static void read_some(data_source *s)
{
    const int64_t rows = data_source_rows(s), rl = data_source_row_len(s);
    if (rows == 0 || rl > (1 << 16))
        return;
    int64_t ids[9];
    int64_t n = rows < 8 ? rows : 8;
    for (int64_t i = 0; i < n; i++)
        ids[i] = (i * 5 + 3) % rows;
    ids[n++] = rows - 1;
    float *dst = malloc((size_t)(n * rl) * sizeof *dst + 1);
    err_info e = {ERR_OK, ""};
    if (dst == NULL || data_source_read(s, ids, n, 0.5f, dst, &e) != ERR_OK)
        abort(); /* every row of an opened in-memory source must be readable */
    free(dst);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    data_layout l;
    err_info e = {ERR_OK, ""};
    int rc = data__npy_parse(data, size, &l, &e);
    if (rc != ERR_OK && (e.code == ERR_OK || e.msg[0] == '\0'))
        abort();
    data_source *s = NULL;
    memset(&e, 0, sizeof e);
    rc = data__npy_open_mem(data, size, "fuzz.npy", &s, &e);
    if (rc != ERR_OK) {
        if (s != NULL || e.code != (err_code)rc || strstr(e.msg, "fuzz.npy") == NULL)
            abort();
        return 0;
    }
    read_some(s);
    data_source_destroy(s);
    return 0;
}
