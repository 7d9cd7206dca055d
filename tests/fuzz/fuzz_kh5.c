/* libFuzzer target for the Keras .h5 reader: the input is an in-memory image of an HDF5 file
 * (HDF5's core driver opens it via kh5_read_mem), read as a full-model file with warnings
 * collected. Anything but a crash, a leak or a sanitizer report is fine.
 *
 * The corpus is tests/fuzz/corpus/kh5/: small files written by cornu, regenerated with
 *   build/dev/tests/formats/test_formats_kh5_roundtrip --write-seeds tests/fuzz/corpus/kh5
 * Run with ASAN_OPTIONS=allocator_may_return_null=1: libhdf5 1.10 allocates whatever size a
 * corrupted header says, and returns an error when that fails. Crashes inside libhdf5's own
 * object-header parsing are libhdf5 bugs (docs/formats/keras-h5.md, "Damaged files"); crashes
 * with cornu frames (kh5_*, kjson_*) are ours: fix them and add the input to the corpus. */
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
