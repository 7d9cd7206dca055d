#ifndef CORNU_LAUNCH_BUILTIN_MODELS_H
#define CORNU_LAUNCH_BUILTIN_MODELS_H

/* Model configs compiled into the binary from launch/models/<name>.json, found by name
 * ("fashion-mlp", "fashion-cnn"). The table ends with a {NULL, NULL} entry. */
typedef struct builtin_model {
    const char *name;
    const char *json;
} builtin_model;

extern const builtin_model BUILTIN_MODELS[];

#endif
