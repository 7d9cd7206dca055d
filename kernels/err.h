#ifndef CORNU_KERNELS_ERR_H
#define CORNU_KERNELS_ERR_H

/* Error codes and the error record every fallible call fills (STYLE.md section 5).
 * Functions that can fail return int (ERR_OK == 0) and take err_info *e last. */

#include <stdio.h>
#include <stdlib.h>

/* X-macro list: name, exit status class, description. */
#define ERR_CODES(X)                                                                               \
    X(ERR_OK, "ok")                                                                                \
    X(ERR_USAGE, "bad usage")                                                                      \
    X(ERR_IO, "I/O error")                                                                         \
    X(ERR_FORMAT, "bad file format")                                                               \
    X(ERR_CONFIG, "bad model config")                                                              \
    X(ERR_SHAPE, "shape mismatch")                                                                 \
    X(ERR_UNSUPPORTED, "unsupported")                                                              \
    X(ERR_NOMEM, "out of memory")                                                                  \
    X(ERR_RANGE, "value out of range")                                                             \
    X(ERR_NUMERIC, "numeric failure")                                                              \
    X(ERR_MPI, "MPI failure")                                                                      \
    X(ERR_PEER, "another rank failed")                                                             \
    X(ERR_INTERNAL, "internal error")

typedef enum err_code {
#define ERR_ENUM_(name, desc) name,
    ERR_CODES(ERR_ENUM_)
#undef ERR_ENUM_
        ERR_COUNT
} err_code;

#define ERR_MSG_MAX 512

typedef struct err_info {
    err_code code;
    char msg[ERR_MSG_MAX];
} err_info;

/* Sets e (if not NULL) to code and the formatted message; returns code. */
int err_set(err_info *e, err_code code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Prepends "<formatted>: " to e->msg, keeping the code; returns e->code. */
int err_wrap(err_info *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Static name of a code, e.g. "ERR_SHAPE". */
const char *err_code_str(err_code code);

/* True for codes caused by the user's input (exit status 2), false for runtime failures (1). */
int err_is_input(err_code code);

/* For our own bugs only (a broken promise between modules): on in every build type. */
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#endif
