#include "kernels/err.h"

#include <stdarg.h>
#include <string.h>

int err_set(err_info *e, err_code code, const char *fmt, ...)
{
    if (e == NULL)
        return (int)code;
    e->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return (int)code;
}

int err_wrap(err_info *e, const char *fmt, ...)
{
    if (e == NULL)
        return ERR_INTERNAL;
    char prefix[ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    /* Build "<prefix>: <old>" by hand: truncation is intended when the chain grows long. */
    char old[ERR_MSG_MAX];
    memcpy(old, e->msg, sizeof old);
    old[sizeof old - 1] = '\0';
    size_t np = strlen(prefix), no = strlen(old), cap = sizeof e->msg - 1, at = 0;
    if (np > cap)
        np = cap;
    memcpy(e->msg, prefix, np);
    at = np;
    if (at + 2 <= cap) {
        memcpy(e->msg + at, ": ", 2);
        at += 2;
    }
    if (no > cap - at)
        no = cap - at;
    memcpy(e->msg + at, old, no);
    e->msg[at + no] = '\0';
    return (int)e->code;
}

const char *err_code_str(err_code code)
{
    switch (code) {
#define ERR_STR_(name, desc)                                                                       \
    case name:                                                                                     \
        return #name;
        ERR_CODES(ERR_STR_)
#undef ERR_STR_
    case ERR_COUNT:
        break;
    }
    return "ERR_UNKNOWN";
}

int err_is_input(err_code code)
{
    switch (code) {
    case ERR_USAGE:
    case ERR_FORMAT:
    case ERR_CONFIG:
    case ERR_SHAPE:
    case ERR_UNSUPPORTED:
    case ERR_RANGE:
        return 1;
    case ERR_OK:
    case ERR_IO:
    case ERR_NOMEM:
    case ERR_NUMERIC:
    case ERR_MPI:
    case ERR_PEER:
    case ERR_INTERNAL:
    case ERR_COUNT:
        return 0;
    }
    return 0;
}
