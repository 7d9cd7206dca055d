/* libFuzzer target for the Keras .h5 reader: the input is an in-memory image of an HDF5 file
 * (HDF5's core driver opens it via kh5_read_mem), read as a full-model file with warnings
 * collected. Anything but a crash, a leak or a sanitizer report is fine. The corpus is
 * tests/fuzz/corpus/kh5/ (small files written by cornu, plus truncated and altered copies). */
#include <stddef.h>
#include <stdint.h>

#include "formats/keras_h5.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    model *m = NULL;
    kh5_warnings w;
    err_info e = {0};
    if (kh5_read_mem(data, size, "fuzz.h5", &m, &w, &e) == ERR_OK)
        model_destroy(m);
    return 0;
}
