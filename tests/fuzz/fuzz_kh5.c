/* libFuzzer target for the Keras .h5 reader: the input is an in-memory image of an HDF5 file
 * (HDF5's core driver opens it via kh5_read_mem), read as a full-model file with warnings
 * collected. Anything but a crash, a leak or a sanitizer report is fine.
 *
 * The corpus is tests/fuzz/corpus/kh5/: small files written by cornu, regenerated with
 *   build/dev/tests/formats/test_formats_kh5_roundtrip --write-seeds tests/fuzz/corpus/kh5
 * Run with ASAN_OPTIONS=allocator_may_return_null=1: libhdf5 1.10 allocates whatever size a
 * corrupted header says, and returns an error when that fails. A crash inside libhdf5 is a
 * libhdf5 1.10 bug that a check of ours must keep it from reaching (kh5__ohdr_check, the dtype
 * size check in kh5__dset_shape; docs/formats/keras-h5.md, "Damaged files"); crashes with cornu
 * frames (kh5_*, kjson_*) are ours. Either way: fix, then add the input to the corpus (the
 * 40-hex-digit names are such inputs: libhdf5 crashes or allocates gigabytes on them without
 * the checks). Inputs on which libhdf5 still crashes go to corpus/kh5_crash/ instead (run by
 * tests/cli/test_cli.py case corrupt_h5 through the cornu command, not replayed here). */
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
