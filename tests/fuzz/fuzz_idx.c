/* Fuzz target: the IDX header parser, gzip inflation and the reader over an in-memory file
 * (trainer/data_idx.c). Invariants as in fuzz_npy.c. */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "trainer/data.h"
#include "trainer/data_impl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    data_layout l;
    err_info e = {ERR_OK, ""};
    int rc = data__idx_parse(data, size, &l, &e);
    if (rc != ERR_OK && (e.code == ERR_OK || e.msg[0] == '\0'))
        abort();
    data_source *s = NULL;
    memset(&e, 0, sizeof e);
    /* Decompressed data stays in memory up to 64 MiB; the buffer grows only with data that is
     * really there, so a header declaring gigabytes costs nothing. */
    rc = data__idx_open_mem(data, size, "fuzz.idx", (uint64_t)64 << 20, &s, &e);
    if (rc != ERR_OK) {
        if (s != NULL || e.code != (err_code)rc || strstr(e.msg, "fuzz.idx") == NULL)
            abort();
        return 0;
    }
    const int64_t rows = data_source_rows(s), rl = data_source_row_len(s);
    if (rows > 0 && rl <= (1 << 16)) {
        int64_t ids[9], n = rows < 8 ? rows : 8;
        for (int64_t i = 0; i < n; i++)
            ids[i] = (i * 5 + 3) % rows;
        ids[n++] = rows - 1;
        float *dst = malloc((size_t)(n * rl) * sizeof *dst + 1);
        if (dst == NULL || data_source_read(s, ids, n, 1.0f, dst, &e) != ERR_OK)
            abort();
        free(dst);
    }
    data_source_destroy(s);
    return 0;
}
