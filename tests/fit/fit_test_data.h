#ifndef CORNU_TESTS_FIT_TEST_DATA_H
#define CORNU_TESTS_FIT_TEST_DATA_H

/* What the tests/fit programs share: their data files and their models. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/keras_json.h"
#include "trainer/data.h"
#include "trainer/fit.h"
#include "trainer/init.h"
#include "trainer/loss.h"

/* The test's data directory: /tmp/cornu-test-fit-<tag>-<pid>, created. */
static inline int fit_test_dir(char *dir, size_t len, const char *tag, int pid, err_info *e)
{
    snprintf(dir, len, "/tmp/cornu-test-fit-%s-%d", tag, pid);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", dir);
    return system(cmd) == 0 ? ERR_OK : err_set(e, ERR_IO, "cannot create %s", dir);
}

/* Removes it again (a leftover is reported, not a failure). */
static inline void fit_test_dir_remove(const char *dir)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
}

/* An array written as dir/name.npy and opened as a data source. */
static inline int fit_test_npy(const char *dir, const char *name, int rank, const int64_t *shape,
                               const float *data, data_source **out, err_info *e)
{
    char path[320];
    snprintf(path, sizeof path, "%s/%s.npy", dir, name);
    int rc = data_npy_write(path, rank, shape, data, e);
    if (rc == ERR_OK)
        rc = data_source_open_npy(path, out, e);
    return rc;
}

/* A Keras model_config, initialised with seed, with a sparse categorical cross-entropy loss (the
 * caller picks the optimizer and compiles). */
static inline int fit_test_model(const char *json, uint64_t seed, model **out, err_info *e)
{
    model *m = NULL;
    int rc = kjson_model_parse(json, strlen(json), "test", &m, e);
    if (rc == ERR_OK)
        rc = init_model(m, seed, e);
    model_loss l;
    if (rc == ERR_OK)
        rc = loss_from_name("sparse_categorical_crossentropy", &l, e);
    if (rc == ERR_OK)
        rc = model_train_set_losses(m, 1, &l, NULL, e);
    if (rc != ERR_OK) {
        model_destroy(m);
        return rc;
    }
    *out = m;
    return ERR_OK;
}

/* One input x and one target y, unscaled. */
static inline fit_data fit_test_xy(data_source *x, data_source *y)
{
    fit_data d;
    memset(&d, 0, sizeof d);
    d.n_x = d.n_y = 1;
    d.x[0].src = x;
    d.x[0].scale = 1.0f;
    d.y[0].src = y;
    d.y[0].scale = 1.0f;
    return d;
}

/* Largest |a - b| over the largest |b| (both [n]). */
static inline double fit_test_max_rel(const float *a, const float *b, size_t n)
{
    double scale = 1e-12, worst = 0;
    for (size_t i = 0; i < n; i++)
        scale = fabs(b[i]) > scale ? fabs(b[i]) : scale;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]) / scale;
        worst = d > worst ? d : worst;
    }
    return worst;
}

#endif
