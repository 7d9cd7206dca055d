#ifndef CORNU_TESTS_FORMATS_TEST_KH5_UTIL_H
#define CORNU_TESTS_FORMATS_TEST_KH5_UTIL_H

/* Helpers for the Keras .h5 tests: building small models by hand, reading .npy files and raw
 * HDF5 datasets independently of formats/, temporary file names. */

#include <hdf5.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/keras_h5.h"
#include "kernels/err.h"
#include "test_util.h"
#include "trainer/model.h"

#define KH5T_CORPUS CORNU_CORPUS "/keras_h5"
#define KH5T_SIDECAR CORNU_CORPUS "/keras_h5_sidecar_configs"

/* A scratch path unique to this process: /tmp/kh5test.<pid>.<tag>.h5 */
static inline void kh5t_tmp(char *buf, size_t len, const char *tag)
{
    snprintf(buf, len, "/tmp/kh5test.%ld.%s.h5", (long)getpid(), tag);
}

static inline char *kh5t_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf != NULL && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf != NULL) {
        buf[n] = '\0';
        if (len != NULL)
            *len = (size_t)n;
    }
    return buf;
}

/* Reads a whole dataset as float32 straight through the HDF5 C API (no formats/ code). */
static inline float *kh5t_h5_read(const char *file, const char *path, size_t *count)
{
    float *out = NULL;
    H5E_BEGIN_TRY
    {
        hid_t f = H5Fopen(file, H5F_ACC_RDONLY, H5P_DEFAULT);
        hid_t d = f < 0 ? -1 : H5Dopen2(f, path, H5P_DEFAULT);
        hid_t s = d < 0 ? -1 : H5Dget_space(d);
        hssize_t n = s < 0 ? -1 : H5Sget_simple_extent_npoints(s);
        if (n >= 0) {
            out = malloc((size_t)n * sizeof *out + 1);
            if (out != NULL &&
                H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) < 0) {
                free(out);
                out = NULL;
            }
            if (count != NULL)
                *count = (size_t)n;
        }
        if (s >= 0)
            H5Sclose(s);
        if (d >= 0)
            H5Dclose(d);
        if (f >= 0)
            H5Fclose(f);
    }
    H5E_END_TRY;
    return out;
}

/* A little-endian .npy of float32/float64/int32/int64, converted to float32. */
static inline float *kh5t_npy(const char *path, int *rank, int64_t *shape)
{
    size_t len;
    char *b = kh5t_slurp(path, &len);
    if (b == NULL || len < 12 || memcmp(b, "\x93NUMPY", 6) != 0) {
        free(b);
        return NULL;
    }
    size_t hl = (unsigned char)b[8] | ((size_t)(unsigned char)b[9] << 8), hs = 10;
    if (b[6] >= 2) {
        hl = (unsigned char)b[8] | ((size_t)(unsigned char)b[9] << 8) |
             ((size_t)(unsigned char)b[10] << 16) | ((size_t)(unsigned char)b[11] << 24);
        hs = 12;
    }
    char hdr[1024];
    size_t n = hl < sizeof hdr - 1 ? hl : sizeof hdr - 1;
    memcpy(hdr, b + hs, n);
    hdr[n] = '\0';
    const char *d = strstr(hdr, "'descr': '");
    const char *s = strstr(hdr, "'shape': (");
    if (d == NULL || s == NULL || strstr(hdr, "'fortran_order': False") == NULL) {
        free(b);
        return NULL;
    }
    d += 10;
    s += 10;
    int r = 0;
    int64_t total = 1;
    while (*s != ')') {
        while (*s == ' ' || *s == ',')
            s++;
        if (*s == ')')
            break;
        shape[r] = strtoll(s, (char **)&s, 10);
        total *= shape[r];
        r++;
    }
    *rank = r;
    float *out = malloc((size_t)total * sizeof *out + 1);
    const unsigned char *p = (const unsigned char *)b + hs + hl;
    for (int64_t i = 0; out != NULL && i < total; i++) {
        if (strncmp(d, "<f4", 3) == 0) {
            memcpy(&out[i], p + 4 * i, 4);
        } else if (strncmp(d, "<f8", 3) == 0) {
            double v;
            memcpy(&v, p + 8 * i, 8);
            out[i] = (float)v;
        } else if (strncmp(d, "<i4", 3) == 0) {
            int32_t v;
            memcpy(&v, p + 4 * i, 4);
            out[i] = (float)v;
        } else if (strncmp(d, "<i8", 3) == 0) {
            int64_t v;
            memcpy(&v, p + 8 * i, 8);
            out[i] = (float)v;
        } else {
            free(out);
            out = NULL;
        }
    }
    free(b);
    return out;
}

/* ---- hand-built models ---- */

/* A Sequential model "name" whose InputLayer "<name>_input" has shape [-1, dims...]. */
static inline model *kh5t_seq(const char *name, int rank, const int64_t *dims, dtype dt)
{
    model *m = NULL;
    err_info e = {0};
    if (model_create(&m, &e) != ERR_OK)
        return NULL;
    snprintf(m->name, sizeof m->name, "%s", name);
    m->sequential = true;
    char in_name[MODEL_NAME_MAX];
    snprintf(in_name, sizeof in_name, "%s_input", name);
    int li;
    if (model_layer_add(m, LAYER_INPUT, in_name, &li, &e) != ERR_OK) {
        model_destroy(m);
        return NULL;
    }
    m->layers[li].input_shape.rank = rank + 1;
    m->layers[li].input_shape.dims[0] = -1;
    for (int i = 0; i < rank; i++)
        m->layers[li].input_shape.dims[i + 1] = dims[i];
    m->layers[li].input_dtype = dt;
    model_ref in = {li, 0, 0};
    model_inputs_set(m, 1, &in, &e);
    return m;
}

/* Appends a layer fed by the previous one; returns its index or -1. */
static inline int kh5t_add(model *m, layer_kind kind, const char *name, const layer_config *cfg)
{
    err_info e = {0};
    int prev = m->n_layers - 1;
    int li;
    if (model_layer_add(m, kind, name, &li, &e) != ERR_OK) {
        fprintf(stderr, "kh5t_add: %s\n", e.msg);
        return -1;
    }
    if (cfg != NULL)
        m->layers[li].cfg = *cfg;
    model_ref in = {prev, 0, 0};
    if (model_node_add(m, li, 1, &in, &e) != ERR_OK)
        return -1;
    return li;
}

/* Sets the output to the last layer and builds; fills params with distinct values. */
static inline int kh5t_finish(model *m, unsigned seed)
{
    err_info e = {0};
    model_ref out = {m->n_layers - 1, 0, 0};
    if (model_outputs_set(m, 1, &out, &e) != ERR_OK || model_build(m, &e) != ERR_OK) {
        fprintf(stderr, "kh5t_finish: %s\n", e.msg);
        return -1;
    }
    uint32_t s = seed * 2654435761u + 1u;
    for (size_t i = 0; i < m->n_params; i++) {
        s = s * 1664525u + 1013904223u;
        m->params[i] = (float)((double)(s >> 8) / 16777216.0 - 0.5);
    }
    return 0;
}

static inline layer_config kh5t_cfg(layer_kind kind)
{
    return layer_config_default(kind);
}

#endif
