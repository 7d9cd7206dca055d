#include "formats/keras_json.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ==== context, errors and JSON access ==== */

typedef struct kctx {
    const char *source;
    bool keras3;       /* Keras 3 semantics (hard_sigmoid) */
    const char *where; /* JSON path of the object being read, e.g. config.layers[3] "dense" */
    err_info *e;
} kctx;

static int kerr(const kctx *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int kerr(const kctx *c, int code, const char *fmt, ...)
{
    char msg[ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (c->where != NULL && c->where[0] != '\0')
        return err_set(c->e, code, "%s: %s: %s", c->source, c->where, msg);
    return err_set(c->e, code, "%s: %s", c->source, msg);
}

static const cJSON *jget(const cJSON *obj, const char *key)
{
    return cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
}

static bool jnull(const cJSON *v)
{
    return v == NULL || cJSON_IsNull(v);
}

static const char *jstring(const cJSON *v)
{
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* The first of two spellings that is present (Keras 2 name first, Keras 1 name second). */
static const cJSON *jget2(const cJSON *obj, const char *k2, const char *k1)
{
    const cJSON *v = jget(obj, k2);
    if (v == NULL && k1 != NULL)
        v = jget(obj, k1);
    return v;
}

/* Integral JSON number within +-2^53 into *out. */
static bool jas_int(const cJSON *v, int64_t *out)
{
    if (!cJSON_IsNumber(v))
        return false;
    double d = v->valuedouble;
    if (!(d >= -9007199254740992.0 && d <= 9007199254740992.0) || d != floor(d))
        return false;
    *out = (int64_t)d;
    return true;
}

/* Optional number: absent or null keeps *out. */
static int jnum(const kctx *c, const cJSON *v, const char *key, double *out)
{
    if (jnull(v))
        return ERR_OK;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return kerr(c, ERR_CONFIG, "\"%s\" is not a finite number", key);
    *out = v->valuedouble;
    return ERR_OK;
}

static int jint(const kctx *c, const cJSON *v, const char *key, int64_t *out)
{
    if (jnull(v))
        return ERR_OK;
    int64_t x;
    if (!jas_int(v, &x))
        return kerr(c, ERR_CONFIG, "\"%s\" is not an integer", key);
    *out = x;
    return ERR_OK;
}

static int jint32(const kctx *c, const cJSON *v, const char *key, int *out)
{
    int64_t x = *out;
    int rc = jint(c, v, key, &x);
    if (rc != ERR_OK)
        return rc;
    if (x < -1000000 || x > 1000000)
        return kerr(c, ERR_CONFIG, "\"%s\" %lld is out of range", key, (long long)x);
    *out = (int)x;
    return ERR_OK;
}

static int jbool(const kctx *c, const cJSON *v, const char *key, bool *out)
{
    if (jnull(v))
        return ERR_OK;
    if (!cJSON_IsBool(v))
        return kerr(c, ERR_CONFIG, "\"%s\" is not true or false", key);
    *out = cJSON_IsTrue(v);
    return ERR_OK;
}

/* An int or a list of n ints (Keras accepts both for kernel_size, strides, pool_size...). */
static int jints(const kctx *c, const cJSON *v, const char *key, int n, int64_t *out)
{
    if (jnull(v))
        return ERR_OK;
    int64_t x;
    if (jas_int(v, &x)) {
        for (int i = 0; i < n; i++)
            out[i] = x;
        return ERR_OK;
    }
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != n)
        return kerr(c, ERR_CONFIG, "\"%s\" is not an integer or a list of %d integers", key, n);
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, v)
    {
        if (!jas_int(it, &x))
            return kerr(c, ERR_CONFIG, "\"%s\"[%d] is not an integer", key, i);
        out[i++] = x;
    }
    return ERR_OK;
}

/* The class name of a serialized object, with tf.keras's "Custom>" registration prefix and a
 * Keras 3 registered package prefix ("keras>Foo") removed. */
static const char *jclass(const cJSON *obj)
{
    const char *s = jstring(jget(obj, "class_name"));
    if (s == NULL)
        return NULL;
    if (strncmp(s, "Custom>", 7) == 0)
        return s + 7;
    return s;
}

/* True if the whole document looks like Keras 3 output: serialized objects carry "module" or
 * "registered_name" keys, dtypes are DTypePolicy objects, call arguments __keras_tensor__s. */
static bool looks_keras3(const cJSON *v)
{
    if (cJSON_IsObject(v)) {
        if (jget(v, "class_name") != NULL &&
            (jget(v, "module") != NULL || jget(v, "registered_name") != NULL))
            return true;
        const char *cls = jstring(jget(v, "class_name"));
        if (cls != NULL &&
            (strcmp(cls, "DTypePolicy") == 0 || strcmp(cls, "__keras_tensor__") == 0))
            return true;
    }
    const cJSON *it;
    if (cJSON_IsObject(v) || cJSON_IsArray(v)) {
        cJSON_ArrayForEach(it, v)
        {
            if (looks_keras3(it))
                return true;
        }
    }
    return false;
}

/* Parses the text, reporting the byte offset of a syntax error. */
static int jparse(const char *json, size_t len, const char *source, cJSON **out, err_info *e)
{
    if (json == NULL)
        return err_set(e, ERR_FORMAT, "%s: no JSON text", source);
    /* h5py and Keras leave NUL padding after fixed-length string attributes. */
    while (len > 0 && (json[len - 1] == '\0' || json[len - 1] == ' ' || json[len - 1] == '\n' ||
                       json[len - 1] == '\r' || json[len - 1] == '\t'))
        len--;
    if (len == 0)
        return err_set(e, ERR_FORMAT, "%s: empty JSON text", source);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (root == NULL) {
        size_t off = end != NULL && end >= json ? (size_t)(end - json) : 0;
        if (off > len)
            off = len;
        return err_set(e, ERR_FORMAT, "%s: invalid JSON at byte %zu of %zu", source, off, len);
    }
    if (end != NULL && (size_t)(end - json) < len) {
        size_t off = (size_t)(end - json);
        cJSON_Delete(root);
        return err_set(e, ERR_FORMAT, "%s: trailing data after the JSON value at byte %zu of %zu",
                       source, off, len);
    }
    *out = root;
    return ERR_OK;
}

/* ==== values shared by layers: activations, initializers, regularizers, dtypes ==== */

/* A Keras activation: a string, null (linear) or a Keras 3 serialized function
 * {"module": "keras.activations", "class_name": "function", "config": "relu", ...}. */
static int parse_activation(const kctx *c, const cJSON *v, const char *key, act_kind *out)
{
    if (jnull(v))
        return ERR_OK;
    const char *name = jstring(v);
    bool keras3 = c->keras3;
    if (name == NULL && cJSON_IsObject(v)) {
        const char *cls = jstring(jget(v, "class_name"));
        if (cls != NULL && strcmp(cls, "function") == 0)
            name = jstring(jget(v, "config"));
        if (name == NULL)
            return kerr(c, ERR_UNSUPPORTED,
                        "\"%s\": activation object of class %s is not supported", key,
                        cls != NULL ? cls : "?");
        if (jget(v, "module") != NULL)
            keras3 = true;
    }
    if (name == NULL)
        return kerr(c, ERR_CONFIG, "\"%s\" is not an activation name", key);
    if (strcmp(name, "hard_sigmoid") == 0) {
        *out = keras3 ? ACT_HARD_SIGMOID : ACT_HARD_SIGMOID_K2;
        return ERR_OK;
    }
    err_info tmp;
    act_kind k;
    if (kern_act_from_name(name, &k, &tmp) != ERR_OK)
        return kerr(c, ERR_UNSUPPORTED, "\"%s\": activation \"%s\" is not supported", key, name);
    *out = k;
    return ERR_OK;
}

typedef struct init_alias {
    const char *name;
    init_kind kind;
    double scale; /* variance scaling */
    init_mode mode;
    init_dist dist;
} init_alias;

/* Keras's named variance-scaling initializers and their parameters. */
static const init_alias VS_ALIASES[] = {
    {"GlorotUniform", INIT_VARIANCE_SCALING, 1.0, INIT_FAN_AVG, INIT_DIST_UNIFORM},
    {"GlorotNormal", INIT_VARIANCE_SCALING, 1.0, INIT_FAN_AVG, INIT_DIST_TRUNCATED_NORMAL},
    {"HeNormal", INIT_VARIANCE_SCALING, 2.0, INIT_FAN_IN, INIT_DIST_TRUNCATED_NORMAL},
    {"HeUniform", INIT_VARIANCE_SCALING, 2.0, INIT_FAN_IN, INIT_DIST_UNIFORM},
    {"LecunNormal", INIT_VARIANCE_SCALING, 1.0, INIT_FAN_IN, INIT_DIST_TRUNCATED_NORMAL},
    {"LecunUniform", INIT_VARIANCE_SCALING, 1.0, INIT_FAN_IN, INIT_DIST_UNIFORM},
};

/* Keras 1/2 string identifiers -> class names. */
static const struct {
    const char *str;
    const char *cls;
} INIT_STRINGS[] = {
    {"glorot_uniform", "GlorotUniform"},
    {"glorot_normal", "GlorotNormal"},
    {"he_normal", "HeNormal"},
    {"he_uniform", "HeUniform"},
    {"lecun_normal", "LecunNormal"},
    {"lecun_uniform", "LecunUniform"},
    {"zeros", "Zeros"},
    {"zero", "Zeros"},
    {"ones", "Ones"},
    {"one", "Ones"},
    {"constant", "Constant"},
    {"orthogonal", "Orthogonal"},
    {"identity", "Identity"},
    {"random_uniform", "RandomUniform"},
    {"random_normal", "RandomNormal"},
    {"truncated_normal", "TruncatedNormal"},
    {"variance_scaling", "VarianceScaling"},
    /* Keras 1: uniform(-0.05, 0.05) and normal(0, 0.05). */
    {"uniform", "RandomUniform"},
    {"normal", "RandomNormal"},
};

static int init_from_class(const kctx *c, const char *key, const char *cls, const cJSON *cfg,
                           model_init *out)
{
    model_init in;
    memset(&in, 0, sizeof in);
    in.mode = INIT_FAN_IN;
    in.dist = INIT_DIST_TRUNCATED_NORMAL;
    int rc = ERR_OK;
    bool done = false;
    for (size_t i = 0; i < sizeof VS_ALIASES / sizeof VS_ALIASES[0]; i++) {
        if (strcmp(cls, VS_ALIASES[i].name) == 0) {
            in.kind = VS_ALIASES[i].kind;
            in.a = VS_ALIASES[i].scale;
            in.mode = VS_ALIASES[i].mode;
            in.dist = VS_ALIASES[i].dist;
            done = true;
        }
    }
    if (done) {
    } else if (strcmp(cls, "Zeros") == 0 || strcmp(cls, "Zero") == 0) {
        in.kind = INIT_ZEROS;
    } else if (strcmp(cls, "Ones") == 0 || strcmp(cls, "One") == 0) {
        in.kind = INIT_ONES;
    } else if (strcmp(cls, "Constant") == 0) {
        in.kind = INIT_CONSTANT;
        const cJSON *v = jget(cfg, "value");
        if (!jnull(v) && !cJSON_IsNumber(v))
            return kerr(c, ERR_UNSUPPORTED, "\"%s\": Constant initializer with a non-scalar value",
                        key);
        rc = jnum(c, v, "value", &in.a);
    } else if (strcmp(cls, "RandomUniform") == 0) {
        in.kind = INIT_RANDOM_UNIFORM;
        in.a = -0.05;
        in.b = 0.05;
        if ((rc = jnum(c, jget(cfg, "minval"), "minval", &in.a)) == ERR_OK)
            rc = jnum(c, jget(cfg, "maxval"), "maxval", &in.b);
    } else if (strcmp(cls, "RandomNormal") == 0 || strcmp(cls, "TruncatedNormal") == 0) {
        in.kind = cls[0] == 'R' ? INIT_RANDOM_NORMAL : INIT_TRUNCATED_NORMAL;
        in.a = 0.0;
        in.b = 0.05;
        if ((rc = jnum(c, jget(cfg, "mean"), "mean", &in.a)) == ERR_OK)
            rc = jnum(c, jget(cfg, "stddev"), "stddev", &in.b);
    } else if (strcmp(cls, "VarianceScaling") == 0) {
        in.kind = INIT_VARIANCE_SCALING;
        in.a = 1.0;
        if ((rc = jnum(c, jget(cfg, "scale"), "scale", &in.a)) != ERR_OK)
            return rc;
        const char *mode = jstring(jget(cfg, "mode"));
        const char *dist = jstring(jget(cfg, "distribution"));
        if (mode == NULL || strcmp(mode, "fan_in") == 0)
            in.mode = INIT_FAN_IN;
        else if (strcmp(mode, "fan_out") == 0)
            in.mode = INIT_FAN_OUT;
        else if (strcmp(mode, "fan_avg") == 0)
            in.mode = INIT_FAN_AVG;
        else
            return kerr(c, ERR_CONFIG, "\"%s\": VarianceScaling mode \"%s\" is unknown", key, mode);
        /* Keras 2.0-2.2 "normal" is the truncated normal (renamed later). */
        if (dist == NULL || strcmp(dist, "truncated_normal") == 0 || strcmp(dist, "normal") == 0)
            in.dist = INIT_DIST_TRUNCATED_NORMAL;
        else if (strcmp(dist, "untruncated_normal") == 0)
            in.dist = INIT_DIST_UNTRUNCATED_NORMAL;
        else if (strcmp(dist, "uniform") == 0)
            in.dist = INIT_DIST_UNIFORM;
        else
            return kerr(c, ERR_CONFIG, "\"%s\": VarianceScaling distribution \"%s\" is unknown",
                        key, dist);
    } else if (strcmp(cls, "Orthogonal") == 0 || strcmp(cls, "OrthogonalInitializer") == 0) {
        in.kind = INIT_ORTHOGONAL;
        in.a = 1.0;
        rc = jnum(c, jget(cfg, "gain"), "gain", &in.a);
    } else if (strcmp(cls, "Identity") == 0 || strcmp(cls, "IdentityInitializer") == 0) {
        in.kind = INIT_IDENTITY;
        in.a = 1.0;
        rc = jnum(c, jget(cfg, "gain"), "gain", &in.a);
    } else {
        return kerr(c, ERR_UNSUPPORTED, "\"%s\": initializer %s is not supported", key, cls);
    }
    if (rc != ERR_OK)
        return rc;
    const cJSON *seed = jget(cfg, "seed");
    if (!jnull(seed)) {
        if (!jas_int(seed, &in.seed))
            return kerr(c, ERR_CONFIG, "\"%s\": seed is not an integer", key);
        in.has_seed = true;
    }
    snprintf(in.keras_name, sizeof in.keras_name, "%s", cls);
    *out = in;
    return ERR_OK;
}

/* An initializer: a string identifier, a {"class_name", "config"} object (any generation), or
 * null (keeps the default). */
static int parse_init(const kctx *c, const cJSON *v, const char *key, model_init *out)
{
    if (jnull(v))
        return ERR_OK;
    const char *s = jstring(v);
    if (s != NULL) {
        const char *cls = s;
        for (size_t i = 0; i < sizeof INIT_STRINGS / sizeof INIT_STRINGS[0]; i++)
            if (strcmp(INIT_STRINGS[i].str, s) == 0)
                cls = INIT_STRINGS[i].cls;
        model_init in;
        int rc = init_from_class(c, key, cls, NULL, &in);
        if (rc != ERR_OK)
            return rc;
        snprintf(in.keras_name, sizeof in.keras_name, "%s", s);
        *out = in;
        return ERR_OK;
    }
    const char *cls = jclass(v);
    if (cls == NULL)
        return kerr(c, ERR_CONFIG, "\"%s\" is not an initializer", key);
    const cJSON *cfg = jget(v, "config");
    if (!jnull(cfg) && !cJSON_IsObject(cfg))
        return kerr(c, ERR_CONFIG, "\"%s\": initializer config is not an object", key);
    /* Keras 3 also serializes lower-case identifiers as class names. */
    for (size_t i = 0; i < sizeof INIT_STRINGS / sizeof INIT_STRINGS[0]; i++)
        if (strcmp(INIT_STRINGS[i].str, cls) == 0 && strcmp(cls, "uniform") != 0 &&
            strcmp(cls, "normal") != 0) {
            model_init in;
            int rc = init_from_class(c, key, INIT_STRINGS[i].cls, cfg, &in);
            if (rc == ERR_OK) {
                snprintf(in.keras_name, sizeof in.keras_name, "%s", cls);
                *out = in;
            }
            return rc;
        }
    return init_from_class(c, key, cls, cfg, out);
}

/* A regularizer: null, L1L2 / L1 / L2 objects, or the strings "l1", "l2", "l1_l2". */
static int parse_reg(const kctx *c, const cJSON *v, const char *key, model_reg *out)
{
    model_reg r = {0.0, 0.0};
    if (jnull(v)) {
        *out = r;
        return ERR_OK;
    }
    const char *s = jstring(v);
    const char *cls = s != NULL ? s : jclass(v);
    const cJSON *cfg = jget(v, "config");
    int rc = ERR_OK;
    if (cls == NULL && cJSON_IsObject(v) && (jget(v, "l1") != NULL || jget(v, "l2") != NULL)) {
        /* Keras 1: {"name": "WeightRegularizer", "l1": ..., "l2": ...}. */
        cls = "L1L2";
        cfg = v;
    }
    if (cls == NULL)
        return kerr(c, ERR_CONFIG, "\"%s\" is not a regularizer", key);
    if (strcmp(cls, "L1L2") == 0 || strcmp(cls, "l1_l2") == 0) {
        if ((rc = jnum(c, jget(cfg, "l1"), "l1", &r.l1)) == ERR_OK)
            rc = jnum(c, jget(cfg, "l2"), "l2", &r.l2);
    } else if (strcmp(cls, "L1") == 0 || strcmp(cls, "l1") == 0) {
        r.l1 = 0.01;
        rc = jnum(c, jget(cfg, "l1"), "l1", &r.l1);
    } else if (strcmp(cls, "L2") == 0 || strcmp(cls, "l2") == 0) {
        r.l2 = 0.01;
        rc = jnum(c, jget(cfg, "l2"), "l2", &r.l2);
    } else {
        return kerr(c, ERR_UNSUPPORTED, "\"%s\": regularizer %s is not supported", key, cls);
    }
    if (rc != ERR_OK)
        return rc;
    if (r.l1 < 0 || r.l2 < 0)
        return kerr(c, ERR_CONFIG, "\"%s\": negative penalty", key);
    *out = r;
    return ERR_OK;
}

/* The dtype name of a "dtype" value: a string or a Keras 3 DTypePolicy object. */
static const char *dtype_string(const cJSON *v)
{
    const char *s = jstring(v);
    if (s != NULL)
        return s;
    return jstring(jget(jget(v, "config"), "name"));
}

static bool dtype_is_int(const char *s)
{
    return strncmp(s, "int", 3) == 0 || strncmp(s, "uint", 4) == 0;
}

/* Options that cornu refuses unless they hold their neutral value. */
static int refuse_set(const kctx *c, const cJSON *cfg, const char *const *keys)
{
    for (int i = 0; keys[i] != NULL; i++) {
        const cJSON *v = jget(cfg, keys[i]);
        if (!jnull(v) && !cJSON_IsFalse(v))
            return kerr(c, ERR_UNSUPPORTED, "option \"%s\" is not supported (only null/false)",
                        keys[i]);
    }
    return ERR_OK;
}

/* The Keras 3 / tf.keras "data_format" or Keras 1 "dim_ordering" ("th" = channels first). */
static int parse_data_format(const kctx *c, const cJSON *cfg, bool *out)
{
    const char *s = jstring(jget(cfg, "data_format"));
    if (s != NULL) {
        if (strcmp(s, "channels_last") == 0)
            *out = false;
        else if (strcmp(s, "channels_first") == 0)
            *out = true;
        else
            return kerr(c, ERR_CONFIG, "data_format \"%s\" is unknown", s);
        return ERR_OK;
    }
    s = jstring(jget(cfg, "dim_ordering"));
    if (s != NULL) {
        if (strcmp(s, "th") == 0)
            *out = true;
        else if (strcmp(s, "tf") == 0 || strcmp(s, "default") == 0)
            *out = false;
        else
            return kerr(c, ERR_CONFIG, "dim_ordering \"%s\" is unknown", s);
    }
    return ERR_OK;
}

static int parse_padding(const kctx *c, const cJSON *cfg, pad_kind *out)
{
    const cJSON *v = jget2(cfg, "padding", "border_mode");
    if (jnull(v))
        return ERR_OK;
    const char *s = jstring(v);
    if (s == NULL)
        return kerr(c, ERR_CONFIG, "\"padding\" is not a string");
    if (strcmp(s, "valid") == 0)
        *out = PAD_VALID;
    else if (strcmp(s, "same") == 0)
        *out = PAD_SAME;
    else if (strcmp(s, "causal") == 0)
        *out = PAD_CAUSAL;
    else
        return kerr(c, ERR_UNSUPPORTED, "padding \"%s\" is not supported", s);
    return ERR_OK;
}

/* A single axis: an int or a list holding one int (BatchNormalization after build). */
static int parse_axis(const kctx *c, const cJSON *v, int *out)
{
    if (jnull(v))
        return ERR_OK;
    if (cJSON_IsArray(v)) {
        if (cJSON_GetArraySize(v) != 1)
            return kerr(c, ERR_UNSUPPORTED, "\"axis\" with %d axes is not supported (one only)",
                        cJSON_GetArraySize(v));
        v = cJSON_GetArrayItem(v, 0);
    }
    return jint32(c, v, "axis", out);
}

/* ==== layer configs ==== */

#define TRY(x)                                                                                     \
    do {                                                                                           \
        int rc_ = (x);                                                                             \
        if (rc_ != ERR_OK)                                                                         \
            return rc_;                                                                            \
    } while (0)

static const char *const CONSTRAINTS[] = {"kernel_constraint",    "bias_constraint",
                                          "recurrent_constraint", "embeddings_constraint",
                                          "W_constraint",         "b_constraint",
                                          "U_constraint",         "beta_constraint",
                                          "gamma_constraint",     NULL};
/* Keras 3 low-rank adaptation and quantization: neutral values only. */
static const char *const K3_EXTRAS[] = {"lora_rank", "quantization_config", NULL};

static int opts_dense(const kctx *c, layer_config *g, const cJSON *cfg)
{
    TRY(jint(c, jget2(cfg, "units", "output_dim"), "units", &g->units));
    TRY(parse_activation(c, jget(cfg, "activation"), "activation", &g->activation));
    TRY(jbool(c, jget2(cfg, "use_bias", "bias"), "use_bias", &g->use_bias));
    TRY(parse_init(c, jget2(cfg, "kernel_initializer", "init"), "kernel_initializer",
                   &g->kernel_init));
    TRY(parse_init(c, jget(cfg, "bias_initializer"), "bias_initializer", &g->bias_init));
    TRY(parse_reg(c, jget2(cfg, "kernel_regularizer", "W_regularizer"), "kernel_regularizer",
                  &g->kernel_reg));
    TRY(parse_reg(c, jget2(cfg, "bias_regularizer", "b_regularizer"), "bias_regularizer",
                  &g->bias_reg));
    TRY(parse_reg(c, jget(cfg, "activity_regularizer"), "activity_regularizer", &g->activity_reg));
    TRY(refuse_set(c, cfg, CONSTRAINTS));
    return refuse_set(c, cfg, K3_EXTRAS);
}

static int opts_conv(const kctx *c, layer_kind kind, layer_config *g, const cJSON *cfg)
{
    int n = kind == LAYER_CONV2D ? 2 : 1;
    TRY(jint(c, jget2(cfg, "filters", "nb_filter"), "filters", &g->filters));
    const cJSON *ks = jget(cfg, "kernel_size");
    if (ks != NULL) {
        TRY(jints(c, ks, "kernel_size", n, g->kernel_size));
    } else if (n == 2) {
        TRY(jint(c, jget(cfg, "nb_row"), "nb_row", &g->kernel_size[0]));
        TRY(jint(c, jget(cfg, "nb_col"), "nb_col", &g->kernel_size[1]));
    } else {
        TRY(jint(c, jget(cfg, "filter_length"), "filter_length", &g->kernel_size[0]));
    }
    const cJSON *st = jget(cfg, "strides");
    if (st == NULL)
        st = n == 2 ? jget(cfg, "subsample") : jget(cfg, "subsample_length");
    TRY(jints(c, st, "strides", n, g->strides));
    TRY(jints(c, jget2(cfg, "dilation_rate", "atrous_rate"), "dilation_rate", n, g->dilation));
    TRY(parse_padding(c, cfg, &g->padding));
    TRY(parse_data_format(c, cfg, &g->channels_first));
    int64_t groups = 1;
    TRY(jint(c, jget(cfg, "groups"), "groups", &groups));
    if (groups != 1)
        return kerr(c, ERR_UNSUPPORTED, "groups=%lld is not supported (1 only)", (long long)groups);
    TRY(parse_activation(c, jget(cfg, "activation"), "activation", &g->activation));
    TRY(jbool(c, jget2(cfg, "use_bias", "bias"), "use_bias", &g->use_bias));
    TRY(parse_init(c, jget2(cfg, "kernel_initializer", "init"), "kernel_initializer",
                   &g->kernel_init));
    TRY(parse_init(c, jget(cfg, "bias_initializer"), "bias_initializer", &g->bias_init));
    TRY(parse_reg(c, jget2(cfg, "kernel_regularizer", "W_regularizer"), "kernel_regularizer",
                  &g->kernel_reg));
    TRY(parse_reg(c, jget2(cfg, "bias_regularizer", "b_regularizer"), "bias_regularizer",
                  &g->bias_reg));
    TRY(parse_reg(c, jget(cfg, "activity_regularizer"), "activity_regularizer", &g->activity_reg));
    TRY(refuse_set(c, cfg, CONSTRAINTS));
    return refuse_set(c, cfg, K3_EXTRAS);
}

static int opts_pool(const kctx *c, layer_kind kind, layer_config *g, const cJSON *cfg)
{
    int n = kind == LAYER_MAXPOOL2D || kind == LAYER_AVGPOOL2D ? 2 : 1;
    TRY(jints(c, jget2(cfg, "pool_size", "pool_length"), "pool_size", n, g->pool_size));
    /* strides null means pool_size (Keras 1 1D pooling calls it "stride"). */
    for (int i = 0; i < n; i++)
        g->pool_strides[i] = g->pool_size[i];
    TRY(jints(c, jget2(cfg, "strides", "stride"), "strides", n, g->pool_strides));
    TRY(parse_padding(c, cfg, &g->padding));
    return parse_data_format(c, cfg, &g->channels_first);
}

static int opts_gpool(const kctx *c, layer_config *g, const cJSON *cfg)
{
    static const char *const keys[] = {"keepdims", NULL};
    TRY(refuse_set(c, cfg, keys));
    return parse_data_format(c, cfg, &g->channels_first);
}

static int opts_reshape(const kctx *c, layer_config *g, const cJSON *cfg)
{
    const cJSON *t = jget(cfg, "target_shape");
    if (!cJSON_IsArray(t))
        return kerr(c, ERR_CONFIG, "\"target_shape\" is missing or not a list");
    int n = cJSON_GetArraySize(t);
    if (n < 1 || n >= TENSOR_MAX_RANK)
        return kerr(c, ERR_UNSUPPORTED, "\"target_shape\" has %d axes (1 to %d supported)", n,
                    TENSOR_MAX_RANK - 1);
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, t)
    {
        int64_t d = -1;
        if (!jnull(it) && !jas_int(it, &d))
            return kerr(c, ERR_CONFIG, "\"target_shape\"[%d] is not an integer", i);
        g->target_shape[i++] = d;
    }
    g->target_rank = n;
    return ERR_OK;
}

static int opts_dropout(const kctx *c, layer_config *g, const cJSON *cfg)
{
    static const char *const keys[] = {"noise_shape", NULL};
    TRY(jnum(c, jget2(cfg, "rate", "p"), "rate", &g->rate));
    TRY(refuse_set(c, cfg, keys));
    g->dropout_seed = -1;
    return jint(c, jget(cfg, "seed"), "seed", &g->dropout_seed);
}

static int opts_batchnorm(const kctx *c, layer_config *g, const cJSON *cfg)
{
    static const char *const keys[] = {"renorm",           "virtual_batch_size", "adjustment",
                                       "beta_regularizer", "gamma_regularizer",  NULL};
    int64_t mode = 0;
    TRY(jint(c, jget(cfg, "mode"), "mode", &mode));
    if (mode != 0)
        return kerr(c, ERR_UNSUPPORTED, "Keras 1 BatchNormalization mode %lld is not supported",
                    (long long)mode);
    TRY(parse_axis(c, jget(cfg, "axis"), &g->axis));
    TRY(jnum(c, jget(cfg, "momentum"), "momentum", &g->momentum));
    TRY(jnum(c, jget(cfg, "epsilon"), "epsilon", &g->epsilon));
    TRY(jbool(c, jget(cfg, "center"), "center", &g->center));
    TRY(jbool(c, jget(cfg, "scale"), "scale", &g->scale));
    TRY(parse_init(c, jget2(cfg, "beta_initializer", "beta_init"), "beta_initializer",
                   &g->beta_init));
    TRY(parse_init(c, jget2(cfg, "gamma_initializer", "gamma_init"), "gamma_initializer",
                   &g->gamma_init));
    TRY(parse_init(c, jget(cfg, "moving_mean_initializer"), "moving_mean_initializer",
                   &g->moving_mean_init));
    TRY(parse_init(c, jget(cfg, "moving_variance_initializer"), "moving_variance_initializer",
                   &g->moving_variance_init));
    TRY(refuse_set(c, cfg, CONSTRAINTS));
    return refuse_set(c, cfg, keys);
}

static int opts_zeropad(const kctx *c, layer_config *g, const cJSON *cfg)
{
    TRY(parse_data_format(c, cfg, &g->channels_first));
    const cJSON *p = jget(cfg, "padding");
    int64_t x;
    if (jnull(p)) {
        for (int i = 0; i < 4; i++)
            g->zero_pad[i] = 1;
        return ERR_OK;
    }
    if (jas_int(p, &x)) {
        for (int i = 0; i < 4; i++)
            g->zero_pad[i] = x;
        return ERR_OK;
    }
    if (cJSON_IsObject(p)) { /* Keras 1 {"top_pad", "bottom_pad", "left_pad", "right_pad"} */
        static const char *const k[] = {"top_pad", "bottom_pad", "left_pad", "right_pad"};
        for (int i = 0; i < 4; i++)
            TRY(jint(c, jget(p, k[i]), k[i], &g->zero_pad[i]));
        return ERR_OK;
    }
    if (!cJSON_IsArray(p) || cJSON_GetArraySize(p) != 2)
        return kerr(c, ERR_CONFIG, "\"padding\" is not an int, a pair or a pair of pairs");
    for (int i = 0; i < 2; i++) {
        const cJSON *it = cJSON_GetArrayItem(p, i);
        if (jas_int(it, &x)) {
            g->zero_pad[2 * i] = g->zero_pad[2 * i + 1] = x;
        } else {
            int64_t pair[2] = {0, 0};
            TRY(jints(c, it, "padding", 2, pair));
            g->zero_pad[2 * i] = pair[0];
            g->zero_pad[2 * i + 1] = pair[1];
        }
    }
    return ERR_OK;
}

static int opts_embedding(const kctx *c, layer_config *g, const cJSON *cfg)
{
    static const char *const keys[] = {"sparse", NULL};
    TRY(jint(c, jget(cfg, "input_dim"), "input_dim", &g->input_dim));
    TRY(jint(c, jget(cfg, "output_dim"), "output_dim", &g->output_dim));
    TRY(parse_init(c, jget2(cfg, "embeddings_initializer", "init"), "embeddings_initializer",
                   &g->embeddings_init));
    TRY(parse_reg(c, jget2(cfg, "embeddings_regularizer", "W_regularizer"),
                  "embeddings_regularizer", &g->embeddings_reg));
    TRY(parse_reg(c, jget(cfg, "activity_regularizer"), "activity_regularizer", &g->activity_reg));
    TRY(jbool(c, jget(cfg, "mask_zero"), "mask_zero", &g->mask_zero));
    double drop = 0.0; /* Keras 1 Embedding(dropout=...) */
    TRY(jnum(c, jget(cfg, "dropout"), "dropout", &drop));
    if (drop != 0.0)
        return kerr(c, ERR_UNSUPPORTED, "Keras 1 Embedding dropout %g is not supported", drop);
    TRY(refuse_set(c, cfg, CONSTRAINTS));
    TRY(refuse_set(c, cfg, K3_EXTRAS));
    return refuse_set(c, cfg, keys);
}

static int opts_rnn(const kctx *c, layer_kind kind, layer_config *g, const cJSON *cfg)
{
    static const char *const keys[] = {"time_major", NULL};
    TRY(jint(c, jget2(cfg, "units", "output_dim"), "units", &g->units));
    TRY(parse_activation(c, jget(cfg, "activation"), "activation", &g->activation));
    if (kind != LAYER_SIMPLERNN)
        TRY(parse_activation(c, jget2(cfg, "recurrent_activation", "inner_activation"),
                             "recurrent_activation", &g->recurrent_activation));
    TRY(jbool(c, jget(cfg, "use_bias"), "use_bias", &g->use_bias));
    TRY(parse_init(c, jget2(cfg, "kernel_initializer", "init"), "kernel_initializer",
                   &g->kernel_init));
    TRY(parse_init(c, jget2(cfg, "recurrent_initializer", "inner_init"), "recurrent_initializer",
                   &g->recurrent_init));
    TRY(parse_init(c, jget(cfg, "bias_initializer"), "bias_initializer", &g->bias_init));
    if (kind == LAYER_LSTM) {
        TRY(jbool(c, jget(cfg, "unit_forget_bias"), "unit_forget_bias", &g->unit_forget_bias));
        const char *fb = jstring(jget(cfg, "forget_bias_init")); /* Keras 1 */
        if (fb != NULL) {
            if (strcmp(fb, "one") == 0 || strcmp(fb, "ones") == 0)
                g->unit_forget_bias = true;
            else if (strcmp(fb, "zero") == 0 || strcmp(fb, "zeros") == 0)
                g->unit_forget_bias = false;
            else
                return kerr(c, ERR_UNSUPPORTED, "forget_bias_init \"%s\" is not supported", fb);
        }
    }
    TRY(parse_reg(c, jget2(cfg, "kernel_regularizer", "W_regularizer"), "kernel_regularizer",
                  &g->kernel_reg));
    TRY(parse_reg(c, jget2(cfg, "recurrent_regularizer", "U_regularizer"), "recurrent_regularizer",
                  &g->recurrent_reg));
    TRY(parse_reg(c, jget2(cfg, "bias_regularizer", "b_regularizer"), "bias_regularizer",
                  &g->bias_reg));
    TRY(parse_reg(c, jget(cfg, "activity_regularizer"), "activity_regularizer", &g->activity_reg));
    TRY(jnum(c, jget2(cfg, "dropout", "dropout_W"), "dropout", &g->dropout));
    TRY(jnum(c, jget2(cfg, "recurrent_dropout", "dropout_U"), "recurrent_dropout",
             &g->recurrent_dropout));
    TRY(jbool(c, jget(cfg, "return_sequences"), "return_sequences", &g->return_sequences));
    TRY(jbool(c, jget(cfg, "return_state"), "return_state", &g->return_state));
    TRY(jbool(c, jget(cfg, "go_backwards"), "go_backwards", &g->go_backwards));
    TRY(jbool(c, jget(cfg, "stateful"), "stateful", &g->stateful));
    if (g->stateful)
        return kerr(c, ERR_UNSUPPORTED, "stateful=True is not supported");
    if (kind == LAYER_GRU) {
        /* Absent before Keras 2.1.? / tf.keras: the original GRU is reset_after=False. */
        g->reset_after = false;
        TRY(jbool(c, jget(cfg, "reset_after"), "reset_after", &g->reset_after));
    }
    TRY(refuse_set(c, cfg, CONSTRAINTS));
    return refuse_set(c, cfg, keys);
}

/* Keras 1 Merge(mode=...) -> the Keras 2 merge layer. */
static int merge_kind(const kctx *c, const cJSON *cfg, layer_kind *out)
{
    const char *mode = jstring(jget(cfg, "mode"));
    if (mode == NULL)
        return kerr(c, ERR_UNSUPPORTED, "Merge layer without a string mode (a lambda?)");
    if (strcmp(mode, "sum") == 0)
        *out = LAYER_ADD;
    else if (strcmp(mode, "mul") == 0)
        *out = LAYER_MULTIPLY;
    else if (strcmp(mode, "concat") == 0)
        *out = LAYER_CONCAT;
    else if (strcmp(mode, "ave") == 0)
        *out = LAYER_AVERAGE;
    else
        return kerr(c, ERR_UNSUPPORTED, "Merge mode \"%s\" is not supported", mode);
    if (cJSON_IsArray(jget(cfg, "layers")))
        return kerr(c, ERR_UNSUPPORTED, "a Keras 1 Sequential Merge of branches is not supported");
    return ERR_OK;
}

/* Class name -> kind, with the Keras 1 spellings. */
static int resolve_class(const kctx *c, const char *cls, const cJSON *cfg, layer_kind *out)
{
    if (strcmp(cls, "Merge") == 0)
        return merge_kind(c, cfg, out);
    int k = model_kind_from_class_name(cls);
    if (k >= 0) {
        *out = (layer_kind)k;
        return ERR_OK;
    }
    if (strcmp(cls, "Sequential") == 0 || strcmp(cls, "Functional") == 0 ||
        strcmp(cls, "Model") == 0)
        return kerr(c, ERR_UNSUPPORTED, "nested model of class %s is not supported", cls);
    return kerr(c, ERR_UNSUPPORTED, "class %s is not supported", cls);
}

/* Reads every option of layer L (kind already set) from its config object. */
static int parse_layer_options(const kctx *c, model_layer *L, const cJSON *cfg)
{
    layer_config *g = &L->cfg;
    TRY(jbool(c, jget(cfg, "trainable"), "trainable", &L->trainable));
    const char *dt = dtype_string(jget(cfg, "dtype"));
    if (dt != NULL && strcmp(dt, "float32") != 0 &&
        !(dtype_is_int(dt) && (L->kind == LAYER_EMBEDDING || L->kind == LAYER_INPUT)))
        return kerr(c, ERR_UNSUPPORTED, "dtype \"%s\" is not supported (float32 only)", dt);
    switch (L->kind) {
    case LAYER_INPUT:
        return ERR_OK; /* read by the caller (shape, dtype) */
    case LAYER_DENSE:
        return opts_dense(c, g, cfg);
    case LAYER_CONV2D:
    case LAYER_CONV1D:
        return opts_conv(c, L->kind, g, cfg);
    case LAYER_MAXPOOL2D:
    case LAYER_AVGPOOL2D:
    case LAYER_MAXPOOL1D:
    case LAYER_AVGPOOL1D:
        return opts_pool(c, L->kind, g, cfg);
    case LAYER_GAP2D:
    case LAYER_GMP2D:
    case LAYER_GAP1D:
    case LAYER_GMP1D:
        return opts_gpool(c, g, cfg);
    case LAYER_FLATTEN:
        return parse_data_format(c, cfg, &g->channels_first);
    case LAYER_RESHAPE:
        return opts_reshape(c, g, cfg);
    case LAYER_DROPOUT:
        return opts_dropout(c, g, cfg);
    case LAYER_ACTIVATION:
        if (jget(cfg, "activation") == NULL)
            return kerr(c, ERR_CONFIG, "Activation layer without \"activation\"");
        return parse_activation(c, jget(cfg, "activation"), "activation", &g->activation);
    case LAYER_BATCHNORM:
        return opts_batchnorm(c, g, cfg);
    case LAYER_ZEROPAD2D:
        return opts_zeropad(c, g, cfg);
    case LAYER_RELU:
        g->max_value = -1.0;
        TRY(jnum(c, jget(cfg, "max_value"), "max_value", &g->max_value));
        if (!jnull(jget(cfg, "max_value")) && g->max_value < 0)
            return kerr(c, ERR_CONFIG, "max_value %g is negative", g->max_value);
        TRY(jnum(c, jget(cfg, "negative_slope"), "negative_slope", &g->negative_slope));
        return jnum(c, jget(cfg, "threshold"), "threshold", &g->threshold);
    case LAYER_LEAKYRELU:
        return jnum(c, jget2(cfg, "negative_slope", "alpha"), "alpha", &g->alpha);
    case LAYER_SOFTMAX:
        return parse_axis(c, jget(cfg, "axis"), &g->axis);
    case LAYER_ELU:
        return jnum(c, jget(cfg, "alpha"), "alpha", &g->alpha);
    case LAYER_ADD:
    case LAYER_SUBTRACT:
    case LAYER_MULTIPLY:
    case LAYER_AVERAGE:
        return ERR_OK;
    case LAYER_CONCAT:
        return parse_axis(c, jget2(cfg, "axis", "concat_axis"), &g->axis);
    case LAYER_EMBEDDING:
        return opts_embedding(c, g, cfg);
    case LAYER_SIMPLERNN:
    case LAYER_LSTM:
    case LAYER_GRU:
        return opts_rnn(c, L->kind, g, cfg);
    case LAYER_COUNT:
        break;
    }
    return kerr(c, ERR_INTERNAL, "unknown layer kind %d", (int)L->kind);
}

/* ==== graphs ==== */

/* A shape list of ints and nulls; with_batch says whether it includes the batch axis. */
static int parse_shape(const kctx *c, const cJSON *v, const char *key, bool with_batch,
                       model_shape *out)
{
    if (!cJSON_IsArray(v))
        return kerr(c, ERR_CONFIG, "\"%s\" is not a list", key);
    int n = cJSON_GetArraySize(v) + (with_batch ? 0 : 1);
    if (n < 1 || n > TENSOR_MAX_RANK)
        return kerr(c, ERR_UNSUPPORTED, "\"%s\" has rank %d (1 to %d supported)", key, n,
                    TENSOR_MAX_RANK);
    model_shape s;
    memset(&s, 0, sizeof s);
    s.rank = n;
    int i = with_batch ? 0 : 1;
    s.dims[0] = -1;
    const cJSON *it;
    cJSON_ArrayForEach(it, v)
    {
        int64_t d = -1;
        if (!jnull(it) && (!jas_int(it, &d) || d < 0))
            return kerr(c, ERR_CONFIG, "\"%s\"[%d] is not a non-negative integer or null", key,
                        i - (with_batch ? 0 : 1));
        s.dims[i++] = d;
    }
    *out = s;
    return ERR_OK;
}

static dtype input_dtype_of(const char *s)
{
    return s != NULL && dtype_is_int(s) ? DTYPE_I32 : DTYPE_F32;
}

static int parse_input_layer(const kctx *c, model_layer *L, const cJSON *cfg)
{
    static const char *const keys[] = {"sparse", "ragged", "optional", NULL};
    TRY(refuse_set(c, cfg, keys));
    const cJSON *bs = jget2(cfg, "batch_shape", "batch_input_shape");
    if (bs != NULL) {
        TRY(parse_shape(c, bs, "batch_shape", true, &L->input_shape));
    } else if (jget(cfg, "shape") != NULL) {
        TRY(parse_shape(c, jget(cfg, "shape"), "shape", false, &L->input_shape));
    } else {
        return kerr(c, ERR_CONFIG, "InputLayer without batch_shape / batch_input_shape");
    }
    const char *dt = dtype_string(jget(cfg, "dtype"));
    if (dt == NULL)
        dt = jstring(jget(cfg, "input_dtype")); /* Keras 1 */
    L->input_dtype = input_dtype_of(dt);
    return ERR_OK;
}

/* Adds the layer described by entry ({"class_name", "config", ...}); *li receives its index. */
static int add_layer(kctx *c, model *m, const cJSON *entry, int *li)
{
    if (!cJSON_IsObject(entry))
        return kerr(c, ERR_CONFIG, "layer entry is not an object");
    const char *cls = jclass(entry);
    const cJSON *cfg = jget(entry, "config");
    if (cls == NULL)
        return kerr(c, ERR_CONFIG, "layer without \"class_name\"");
    if (!cJSON_IsObject(cfg))
        return kerr(c, ERR_CONFIG, "%s layer without a \"config\" object", cls);
    const char *name = jstring(jget(cfg, "name"));
    if (name == NULL)
        name = jstring(jget(entry, "name"));
    if (name == NULL)
        return kerr(c, ERR_CONFIG, "%s layer without a name", cls);
    layer_kind kind;
    TRY(resolve_class(c, cls, cfg, &kind));
    int idx;
    int rc = model_layer_add(m, kind, name, &idx, c->e);
    if (rc != ERR_OK)
        return err_wrap(c->e, "%s: %s", c->source, c->where);
    model_layer *L = &m->layers[idx];
    TRY(parse_layer_options(c, L, cfg));
    if (kind == LAYER_INPUT)
        TRY(parse_input_layer(c, L, cfg));
    *li = idx;
    return ERR_OK;
}

static bool name_in_config(const cJSON *layers, const char *name)
{
    const cJSON *it;
    cJSON_ArrayForEach(it, layers)
    {
        const char *n = jstring(jget(jget(it, "config"), "name"));
        if (n != NULL && strcmp(n, name) == 0)
            return true;
    }
    return false;
}

/* A name for an extra layer that neither the model nor the config uses: base, base_1, ... */
static void unique_name(const model *m, const cJSON *layers, const char *base, char *out,
                        size_t len)
{
    snprintf(out, len, "%s", base);
    for (int i = 1; (model_layer_find(m, out) >= 0 || name_in_config(layers, out)) && i < 100000;
         i++)
        snprintf(out, len, "%.*s_%d", MODEL_LAYER_NAME_MAX - 8, base, i);
}

/* The batch input shape Keras derives for a Sequential model from its first layer. */
static int first_layer_shape(const kctx *c, const cJSON *entry, const cJSON *build_shape,
                             model_shape *s, dtype *dt, bool *found)
{
    const cJSON *cfg = jget(entry, "config");
    const char *cls = jclass(entry);
    const cJSON *v;
    *found = true;
    const char *dts = dtype_string(jget(cfg, "dtype"));
    if (dts == NULL)
        dts = jstring(jget(cfg, "input_dtype"));
    *dt = input_dtype_of(dts);
    if ((v = jget2(cfg, "batch_input_shape", "batch_shape")) != NULL && !jnull(v))
        return parse_shape(c, v, "batch_input_shape", true, s);
    if ((v = jget(cfg, "input_shape")) != NULL && !jnull(v))
        return parse_shape(c, v, "input_shape", false, s);
    bool embedding = cls != NULL && strcmp(cls, "Embedding") == 0;
    const cJSON *len = jget(cfg, "input_length");
    if (embedding && len != NULL) {
        memset(s, 0, sizeof *s);
        s->rank = 2;
        s->dims[0] = -1;
        s->dims[1] = -1;
        return jint(c, len, "input_length", &s->dims[1]);
    }
    if (!embedding && (v = jget(cfg, "input_dim")) != NULL && !jnull(v)) {
        memset(s, 0, sizeof *s);
        s->dims[0] = -1;
        if (len != NULL) { /* Keras 1 recurrent layers: (input_length, input_dim) */
            s->rank = 3;
            s->dims[1] = -1;
            TRY(jint(c, len, "input_length", &s->dims[1]));
            return jint(c, v, "input_dim", &s->dims[2]);
        }
        s->rank = 2;
        return jint(c, v, "input_dim", &s->dims[1]);
    }
    if (!jnull(build_shape))
        return parse_shape(c, build_shape, "build_input_shape", true, s);
    *found = false;
    return ERR_OK;
}

static int parse_sequential(kctx *c, model *m, const cJSON *config)
{
    const cJSON *layers = config;
    const cJSON *build_shape = NULL;
    char where[MODEL_NAME_MAX + 64];
    const char *list_path = "config";
    snprintf(m->name, sizeof m->name, "sequential");
    if (cJSON_IsObject(config)) {
        layers = jget(config, "layers");
        list_path = "config.layers";
        build_shape = jget(config, "build_input_shape");
        const char *nm = jstring(jget(config, "name"));
        if (nm != NULL)
            snprintf(m->name, sizeof m->name, "%s", nm);
    }
    if (!cJSON_IsArray(layers))
        return kerr(c, ERR_CONFIG, "%s is not a list of layers", list_path);
    int n = cJSON_GetArraySize(layers);
    if (n == 0)
        return kerr(c, ERR_CONFIG, "%s is empty", list_path);
    m->sequential = true;
    int prev = -1, i = 0;
    const cJSON *entry;
    cJSON_ArrayForEach(entry, layers)
    {
        const char *nm = jstring(jget(jget(entry, "config"), "name"));
        snprintf(where, sizeof where, "%s[%d] \"%.*s\"", list_path, i, MODEL_LAYER_NAME_MAX,
                 nm != NULL ? nm : "?");
        c->where = where;
        const char *cls = jclass(entry);
        bool is_input = cls != NULL && strcmp(cls, "InputLayer") == 0;
        if (is_input && i > 0)
            return kerr(c, ERR_CONFIG, "InputLayer inside a Sequential model (only first)");
        if (i == 0 && !is_input) {
            model_shape s;
            dtype dt;
            bool found;
            TRY(first_layer_shape(c, entry, build_shape, &s, &dt, &found));
            if (!found)
                return kerr(c, ERR_CONFIG,
                            "the first layer has no batch_input_shape / input_shape / input_dim "
                            "and the model no build_input_shape: the input shape is unknown");
            char base[MODEL_NAME_MAX], name[MODEL_NAME_MAX];
            snprintf(base, sizeof base, "%.*s_input", MODEL_LAYER_NAME_MAX - 6,
                     nm != NULL ? nm : "sequential");
            unique_name(m, layers, base, name, sizeof name);
            int rc = model_layer_add(m, LAYER_INPUT, name, &prev, c->e);
            if (rc != ERR_OK)
                return err_wrap(c->e, "%s: %s", c->source, where);
            m->layers[prev].input_shape = s;
            m->layers[prev].input_dtype = dt;
        }
        int li;
        TRY(add_layer(c, m, entry, &li));
        if (prev >= 0) {
            model_ref r = {prev, 0, 0};
            int rc = model_node_add(m, li, 1, &r, c->e);
            if (rc != ERR_OK)
                return err_wrap(c->e, "%s: %s", c->source, where);
        }
        prev = li;
        i++;
    }
    c->where = "config";
    model_ref in = {0, 0, 0}, out = {prev, 0, 0};
    int rc = model_inputs_set(m, 1, &in, c->e);
    if (rc == ERR_OK)
        rc = model_outputs_set(m, 1, &out, c->e);
    return rc;
}

/* [name, node, tensor(, kwargs)] or a Keras 3 __keras_tensor__ object -> ref. */
static int parse_ref(const kctx *c, const model *m, const cJSON *v, model_ref *out)
{
    const cJSON *hist = v;
    if (cJSON_IsObject(v)) {
        const char *cls = jstring(jget(v, "class_name"));
        if (cls == NULL || strcmp(cls, "__keras_tensor__") != 0)
            return kerr(c, ERR_UNSUPPORTED, "call argument of class %s is not a tensor",
                        cls != NULL ? cls : "?");
        hist = jget(jget(v, "config"), "keras_history");
    }
    int n = cJSON_IsArray(hist) ? cJSON_GetArraySize(hist) : 0;
    if (n < 3 || n > 4 || !cJSON_IsString(cJSON_GetArrayItem(hist, 0)))
        return kerr(c, ERR_CONFIG, "tensor reference is not [layer name, node, tensor]");
    const char *name = cJSON_GetArrayItem(hist, 0)->valuestring;
    int64_t node, tidx;
    if (!jas_int(cJSON_GetArrayItem(hist, 1), &node) ||
        !jas_int(cJSON_GetArrayItem(hist, 2), &tidx) || node < 0 || node > 1000000 || tidx < 0 ||
        tidx > 1000000)
        return kerr(c, ERR_CONFIG, "tensor reference to \"%.*s\" has bad node/tensor indices",
                    MODEL_LAYER_NAME_MAX, name);
    if (n == 4) {
        const cJSON *kw = cJSON_GetArrayItem(hist, 3);
        const cJSON *it;
        if (!jnull(kw) && !cJSON_IsObject(kw))
            return kerr(c, ERR_CONFIG, "call kwargs are not an object");
        cJSON_ArrayForEach(it, kw)
        {
            if (!jnull(it) && !cJSON_IsFalse(it))
                return kerr(c, ERR_UNSUPPORTED, "call argument \"%s\" is not supported",
                            it->string != NULL ? it->string : "?");
        }
    }
    int li = model_layer_find(m, name);
    if (li < 0)
        return kerr(c, ERR_CONFIG, "refers to unknown layer \"%.*s\"", MODEL_LAYER_NAME_MAX, name);
    out->layer = li;
    out->node = (int)node;
    out->tensor = (int)tidx;
    return ERR_OK;
}

#define MAX_NODE_INPUTS 64

/* Appends every tensor in a Keras 3 call argument (a tensor or a nested list of tensors). */
static int collect_k3_tensors(const kctx *c, const model *m, const cJSON *v, model_ref *refs,
                              int *n, int depth)
{
    if (jnull(v))
        return kerr(c, ERR_UNSUPPORTED, "a null positional call argument is not supported");
    if (cJSON_IsArray(v)) {
        if (depth > 2)
            return kerr(c, ERR_UNSUPPORTED, "call arguments nested too deeply");
        const cJSON *it;
        cJSON_ArrayForEach(it, v)
        {
            TRY(collect_k3_tensors(c, m, it, refs, n, depth + 1));
        }
        return ERR_OK;
    }
    if (*n >= MAX_NODE_INPUTS)
        return kerr(c, ERR_UNSUPPORTED, "more than %d call inputs", MAX_NODE_INPUTS);
    return parse_ref(c, m, v, &refs[(*n)++]);
}

static int parse_node(const kctx *c, model *m, int li, const cJSON *node)
{
    model_ref refs[MAX_NODE_INPUTS];
    int n = 0;
    if (cJSON_IsObject(node)) { /* Keras 3 {"args": [...], "kwargs": {...}} */
        const cJSON *args = jget(node, "args");
        const cJSON *kwargs = jget(node, "kwargs");
        if (!cJSON_IsArray(args))
            return kerr(c, ERR_CONFIG, "inbound node without an \"args\" list");
        const cJSON *it;
        cJSON_ArrayForEach(it, args)
        {
            TRY(collect_k3_tensors(c, m, it, refs, &n, 0));
        }
        cJSON_ArrayForEach(it, kwargs)
        {
            const char *k = it->string != NULL ? it->string : "?";
            if (strcmp(k, "initial_state") == 0 && !jnull(it)) {
                TRY(collect_k3_tensors(c, m, it, refs, &n, 0));
            } else if (!jnull(it) && !cJSON_IsFalse(it)) {
                return kerr(c, ERR_UNSUPPORTED, "call argument \"%s\" is not supported", k);
            }
        }
    } else if (cJSON_IsArray(node)) { /* Keras 1/2: a list of [name, node, tensor(, kwargs)] */
        const cJSON *it;
        cJSON_ArrayForEach(it, node)
        {
            if (n >= MAX_NODE_INPUTS)
                return kerr(c, ERR_UNSUPPORTED, "more than %d call inputs", MAX_NODE_INPUTS);
            TRY(parse_ref(c, m, it, &refs[n++]));
        }
    } else {
        return kerr(c, ERR_CONFIG, "inbound node is neither a list nor an object");
    }
    int rc = model_node_add(m, li, n, refs, c->e);
    if (rc != ERR_OK)
        return err_wrap(c->e, "%s: %s", c->source, c->where);
    return ERR_OK;
}

/* input_layers / output_layers: a list of [name, node, tensor], one such triple, or a dict of
 * them (Keras 3 dict inputs, in key order). */
static int parse_io(kctx *c, model *m, const cJSON *v, const char *key, bool out)
{
    char where[64];
    snprintf(where, sizeof where, "config.%s", key);
    c->where = where;
    if (!cJSON_IsArray(v) && !cJSON_IsObject(v))
        return kerr(c, ERR_CONFIG, "missing or not a list");
    model_ref *refs = NULL;
    int n = 0, rc = ERR_OK;
    if (cJSON_IsArray(v) && cJSON_IsString(cJSON_GetArrayItem(v, 0))) {
        refs = malloc(sizeof *refs);
        if (refs == NULL)
            return kerr(c, ERR_NOMEM, "out of memory");
        rc = parse_ref(c, m, v, &refs[0]);
        n = 1;
    } else {
        int cnt = cJSON_GetArraySize(v);
        refs = malloc(((size_t)cnt + 1) * sizeof *refs);
        if (refs == NULL)
            return kerr(c, ERR_NOMEM, "out of memory");
        const cJSON *it;
        cJSON_ArrayForEach(it, v)
        {
            if (rc == ERR_OK)
                rc = parse_ref(c, m, it, &refs[n++]);
        }
    }
    if (rc == ERR_OK) {
        rc = out ? model_outputs_set(m, n, refs, c->e) : model_inputs_set(m, n, refs, c->e);
        if (rc != ERR_OK)
            err_wrap(c->e, "%s: %s", c->source, where);
    }
    free(refs);
    return rc;
}

static int parse_functional(kctx *c, model *m, const cJSON *config)
{
    char where[MODEL_NAME_MAX + 64];
    if (!cJSON_IsObject(config))
        return kerr(c, ERR_CONFIG, "config is not an object");
    const char *nm = jstring(jget(config, "name"));
    snprintf(m->name, sizeof m->name, "%s", nm != NULL ? nm : "model");
    m->sequential = false;
    const cJSON *layers = jget(config, "layers");
    if (!cJSON_IsArray(layers) || cJSON_GetArraySize(layers) == 0)
        return kerr(c, ERR_CONFIG, "config.layers is missing, empty or not a list");
    int i = 0;
    const cJSON *entry;
    cJSON_ArrayForEach(entry, layers)
    {
        const char *ln = jstring(jget(jget(entry, "config"), "name"));
        if (ln == NULL)
            ln = jstring(jget(entry, "name"));
        snprintf(where, sizeof where, "config.layers[%d] \"%.*s\"", i, MODEL_LAYER_NAME_MAX,
                 ln != NULL ? ln : "?");
        c->where = where;
        int li;
        TRY(add_layer(c, m, entry, &li));
        i++;
    }
    /* Nodes may name layers listed later, so they are read once every layer exists. */
    i = 0;
    cJSON_ArrayForEach(entry, layers)
    {
        snprintf(where, sizeof where, "config.layers[%d] \"%.*s\" inbound_nodes", i,
                 MODEL_LAYER_NAME_MAX, m->layers[i].name);
        c->where = where;
        const cJSON *nodes = jget(entry, "inbound_nodes");
        if (jnull(nodes)) {
            i++;
            continue;
        }
        if (!cJSON_IsArray(nodes))
            return kerr(c, ERR_CONFIG, "not a list");
        const cJSON *nd;
        cJSON_ArrayForEach(nd, nodes)
        {
            TRY(parse_node(c, m, i, nd));
        }
        i++;
    }
    TRY(parse_io(c, m, jget(config, "input_layers"), "input_layers", false));
    return parse_io(c, m, jget(config, "output_layers"), "output_layers", true);
}

int kjson_model_parse_ex(const char *json, size_t len, const char *source, unsigned flags,
                         model **out, err_info *e)
{
    if (source == NULL)
        source = "model_config";
    cJSON *root = NULL;
    model *m = NULL;
    int rc = jparse(json, len, source, &root, e);
    if (rc != ERR_OK)
        return rc;
    kctx c = {source, false, "", e};
    if (flags & KJSON_KERAS3)
        c.keras3 = true;
    else if (flags & KJSON_KERAS2)
        c.keras3 = false;
    else
        c.keras3 = looks_keras3(root);
    const char *cls = jclass(root);
    const cJSON *config = jget(root, "config");
    if (cls == NULL) {
        rc = kerr(&c, ERR_FORMAT, "not a Keras model config (no \"class_name\")");
        goto done;
    }
    if ((rc = model_create(&m, e)) != ERR_OK)
        goto done;
    if (strcmp(cls, "Sequential") == 0) {
        rc = parse_sequential(&c, m, config);
    } else if (strcmp(cls, "Functional") == 0 || strcmp(cls, "Model") == 0) {
        rc = parse_functional(&c, m, config);
    } else {
        rc = kerr(&c, ERR_UNSUPPORTED, "model class %s is not supported (Sequential, Functional)",
                  cls);
    }
    if (rc != ERR_OK)
        goto done;
    if ((rc = model_build(m, e)) != ERR_OK) {
        err_wrap(e, "%s", source);
        goto done;
    }
    *out = m;
    m = NULL;
done:
    model_destroy(m);
    cJSON_Delete(root);
    return rc;
}

int kjson_model_parse(const char *json, size_t len, const char *source, model **out, err_info *e)
{
    return kjson_model_parse_ex(json, len, source, 0, out, e);
}

/* ==== training_config ==== */

static const struct {
    const char *name;
    loss_kind kind;
} LOSS_IDS[] = {
    {"sparse_categorical_crossentropy", LOSS_SPARSE_CCE},
    {"SparseCategoricalCrossentropy", LOSS_SPARSE_CCE},
    {"categorical_crossentropy", LOSS_CCE},
    {"CategoricalCrossentropy", LOSS_CCE},
    {"binary_crossentropy", LOSS_BCE},
    {"BinaryCrossentropy", LOSS_BCE},
    {"bce", LOSS_BCE},
    {"BCE", LOSS_BCE},
    {"mean_squared_error", LOSS_MSE},
    {"MeanSquaredError", LOSS_MSE},
    {"mse", LOSS_MSE},
    {"MSE", LOSS_MSE},
    {"mean_absolute_error", LOSS_MAE},
    {"MeanAbsoluteError", LOSS_MAE},
    {"mae", LOSS_MAE},
    {"MAE", LOSS_MAE},
    {"huber", LOSS_HUBER},
    {"huber_loss", LOSS_HUBER},
    {"Huber", LOSS_HUBER},
};

static const struct {
    const char *name;
    metric_kind kind;
} METRIC_IDS[] = {
    {"accuracy", METRIC_ACCURACY},
    {"acc", METRIC_ACCURACY},
    {"sparse_categorical_accuracy", METRIC_SPARSE_CAT_ACC},
    {"SparseCategoricalAccuracy", METRIC_SPARSE_CAT_ACC},
    {"categorical_accuracy", METRIC_CAT_ACC},
    {"CategoricalAccuracy", METRIC_CAT_ACC},
    {"binary_accuracy", METRIC_BIN_ACC},
    {"BinaryAccuracy", METRIC_BIN_ACC},
    {"mean_squared_error", METRIC_MSE},
    {"MeanSquaredError", METRIC_MSE},
    {"mse", METRIC_MSE},
    {"MSE", METRIC_MSE},
    {"mean_absolute_error", METRIC_MAE},
    {"MeanAbsoluteError", METRIC_MAE},
    {"mae", METRIC_MAE},
    {"MAE", METRIC_MAE},
};

static void loss_defaults(model_loss *l, loss_kind k)
{
    memset(l, 0, sizeof *l);
    l->kind = k;
    l->from_logits = false;
    l->delta = 1.0;
    l->label_smoothing = 0.0;
}

/* A loss: an identifier string, a loss object ({"class_name": "CategoricalCrossentropy",
 * "config": {...}}) or a Keras 3 serialized function; null is no loss. */
static int parse_loss(const kctx *c, const cJSON *v, model_loss *out)
{
    loss_defaults(out, LOSS_NONE);
    if (jnull(v))
        return ERR_OK;
    const char *name = jstring(v);
    const cJSON *cfg = NULL;
    if (name == NULL) {
        name = jclass(v);
        cfg = jget(v, "config");
        if (name != NULL && strcmp(name, "function") == 0) {
            name = jstring(cfg);
            cfg = NULL;
        }
    }
    if (name == NULL)
        return kerr(c, ERR_CONFIG, "loss is neither a name nor a loss object");
    for (size_t i = 0; i < sizeof LOSS_IDS / sizeof LOSS_IDS[0]; i++) {
        if (strcmp(LOSS_IDS[i].name, name) != 0)
            continue;
        loss_defaults(out, LOSS_IDS[i].kind);
        if (!cJSON_IsObject(cfg))
            return ERR_OK;
        TRY(jbool(c, jget(cfg, "from_logits"), "from_logits", &out->from_logits));
        TRY(jnum(c, jget(cfg, "label_smoothing"), "label_smoothing", &out->label_smoothing));
        TRY(jnum(c, jget(cfg, "delta"), "delta", &out->delta));
        const char *red = jstring(jget(cfg, "reduction"));
        if (red != NULL && strcmp(red, "auto") != 0 && strcmp(red, "sum_over_batch_size") != 0)
            return kerr(c, ERR_UNSUPPORTED, "loss %s: reduction \"%s\" is not supported", name,
                        red);
        int axis = -1;
        TRY(jint32(c, jget(cfg, "axis"), "axis", &axis));
        if (axis != -1)
            return kerr(c, ERR_UNSUPPORTED, "loss %s: axis %d is not supported (-1 only)", name,
                        axis);
        if (!jnull(jget(cfg, "ignore_class")))
            return kerr(c, ERR_UNSUPPORTED, "loss %s: ignore_class is not supported", name);
        if (out->label_smoothing < 0 || out->label_smoothing > 1 || out->delta <= 0)
            return kerr(c, ERR_CONFIG, "loss %s: label_smoothing %g / delta %g out of range", name,
                        out->label_smoothing, out->delta);
        return ERR_OK;
    }
    return kerr(c, ERR_UNSUPPORTED, "loss \"%s\" is not supported", name);
}

typedef struct metric_set {
    int n;
    metric_kind k[MODEL_MAX_METRICS];
    unsigned flags;
    kjson_warn_fn warn;
    void *warn_ctx;
} metric_set;

static int metric_add(const kctx *c, metric_set *s, const char *name)
{
    for (size_t i = 0; i < sizeof METRIC_IDS / sizeof METRIC_IDS[0]; i++) {
        if (strcmp(METRIC_IDS[i].name, name) != 0)
            continue;
        for (int j = 0; j < s->n; j++)
            if (s->k[j] == METRIC_IDS[i].kind)
                return ERR_OK;
        if (s->n == MODEL_MAX_METRICS)
            return kerr(c, ERR_UNSUPPORTED, "more than %d metrics", MODEL_MAX_METRICS);
        s->k[s->n++] = METRIC_IDS[i].kind;
        return ERR_OK;
    }
    if (s->flags & KJSON_SKIP_UNKNOWN_METRICS) {
        if (s->warn != NULL) {
            char msg[ERR_MSG_MAX];
            snprintf(msg, sizeof msg, "%s: %s: metric \"%s\" is not supported and was dropped",
                     c->source, c->where, name);
            s->warn(s->warn_ctx, msg);
        }
        return ERR_OK;
    }
    return kerr(c, ERR_UNSUPPORTED, "metric \"%s\" is not supported", name);
}

/* Metrics in any nesting Keras wrote: strings, lists (per output), dicts (by output name),
 * MeanMetricWrapper objects (the wrapped "fn" decides) and metric class objects. */
static int parse_metrics(const kctx *c, const cJSON *v, metric_set *s, int depth)
{
    if (jnull(v))
        return ERR_OK;
    if (depth > 4)
        return kerr(c, ERR_UNSUPPORTED, "metrics nested too deeply");
    const char *name = jstring(v);
    if (name != NULL)
        return metric_add(c, s, name);
    if (cJSON_IsArray(v) || (cJSON_IsObject(v) && jget(v, "class_name") == NULL)) {
        const cJSON *it;
        cJSON_ArrayForEach(it, v)
        {
            TRY(parse_metrics(c, it, s, depth + 1));
        }
        return ERR_OK;
    }
    const char *cls = jclass(v);
    if (cls == NULL)
        return kerr(c, ERR_CONFIG, "metric is not a name, list or metric object");
    const cJSON *cfg = jget(v, "config");
    if (strcmp(cls, "MeanMetricWrapper") == 0) {
        const cJSON *fn = jget(cfg, "fn");
        const char *f = jstring(fn);
        if (f == NULL && cJSON_IsObject(fn))
            f = jstring(jget(fn, "config")); /* Keras 3 serialized function */
        if (f == NULL)
            return kerr(c, ERR_CONFIG, "MeanMetricWrapper without \"fn\"");
        return metric_add(c, s, f);
    }
    if (strcmp(cls, "function") == 0 && jstring(cfg) != NULL)
        return metric_add(c, s, jstring(cfg));
    if (strcmp(cls, "BinaryAccuracy") == 0) {
        double th = 0.5;
        TRY(jnum(c, jget(cfg, "threshold"), "threshold", &th));
        if (th != 0.5)
            return kerr(c, ERR_UNSUPPORTED, "BinaryAccuracy threshold %g is not supported", th);
    }
    return metric_add(c, s, cls);
}

static int parse_schedule(const kctx *c, const cJSON *v, model_schedule *out)
{
    model_schedule s;
    memset(&s, 0, sizeof s);
    if (cJSON_IsNumber(v)) {
        s.kind = SCHED_CONSTANT;
        TRY(jnum(c, v, "learning_rate", &s.initial));
        *out = s;
        return ERR_OK;
    }
    const char *cls = jclass(v);
    const cJSON *cfg = jget(v, "config");
    if (cls == NULL || !cJSON_IsObject(cfg))
        return kerr(c, ERR_CONFIG, "learning_rate is neither a number nor a schedule object");
    TRY(jnum(c, jget(cfg, "initial_learning_rate"), "initial_learning_rate", &s.initial));
    if (strcmp(cls, "ExponentialDecay") == 0) {
        s.kind = SCHED_EXPONENTIAL;
        TRY(jnum(c, jget(cfg, "decay_steps"), "decay_steps", &s.decay_steps));
        TRY(jnum(c, jget(cfg, "decay_rate"), "decay_rate", &s.decay_rate));
        TRY(jbool(c, jget(cfg, "staircase"), "staircase", &s.staircase));
    } else if (strcmp(cls, "CosineDecay") == 0) {
        s.kind = SCHED_COSINE;
        TRY(jnum(c, jget(cfg, "decay_steps"), "decay_steps", &s.decay_steps));
        TRY(jnum(c, jget(cfg, "alpha"), "alpha", &s.alpha));
        double warm = 0.0;
        TRY(jnum(c, jget(cfg, "warmup_steps"), "warmup_steps", &warm));
        if (warm != 0.0 || !jnull(jget(cfg, "warmup_target")))
            return kerr(c, ERR_UNSUPPORTED, "CosineDecay warmup is not supported");
    } else if (strcmp(cls, "PiecewiseConstantDecay") == 0) {
        s.kind = SCHED_PIECEWISE;
        const cJSON *b = jget(cfg, "boundaries"), *vals = jget(cfg, "values");
        int nb = cJSON_IsArray(b) ? cJSON_GetArraySize(b) : -1;
        int nv = cJSON_IsArray(vals) ? cJSON_GetArraySize(vals) : -1;
        if (nb < 1 || nv != nb + 1)
            return kerr(c, ERR_CONFIG,
                        "PiecewiseConstantDecay needs boundaries and one more value (%d, %d)", nb,
                        nv);
        if (nb > MODEL_MAX_BOUNDS)
            return kerr(c, ERR_UNSUPPORTED, "PiecewiseConstantDecay with %d boundaries (max %d)",
                        nb, MODEL_MAX_BOUNDS);
        s.n_bounds = nb;
        for (int i = 0; i < nb; i++)
            TRY(jnum(c, cJSON_GetArrayItem(b, i), "boundaries", &s.bounds[i]));
        for (int i = 0; i <= nb; i++)
            TRY(jnum(c, cJSON_GetArrayItem(vals, i), "values", &s.values[i]));
        s.initial = s.values[0];
    } else {
        return kerr(c, ERR_UNSUPPORTED, "learning rate schedule %s is not supported", cls);
    }
    *out = s;
    return ERR_OK;
}

static int parse_optimizer(const kctx *c, const cJSON *v, model_optim_config *out)
{
    const char *cls = jstring(v);
    const cJSON *cfg = NULL;
    if (cls == NULL) {
        cls = jclass(v);
        cfg = jget(v, "config");
    }
    if (cls == NULL)
        return kerr(c, ERR_CONFIG, "optimizer_config has no class_name");
    static const struct {
        const char *name;
        optim_kind kind;
    } names[] = {{"SGD", OPTIM_SGD},         {"sgd", OPTIM_SGD},         {"Adam", OPTIM_ADAM},
                 {"adam", OPTIM_ADAM},       {"AdamW", OPTIM_ADAMW},     {"adamw", OPTIM_ADAMW},
                 {"RMSprop", OPTIM_RMSPROP}, {"rmsprop", OPTIM_RMSPROP}, {"Adagrad", OPTIM_ADAGRAD},
                 {"adagrad", OPTIM_ADAGRAD}, {"Nadam", OPTIM_NADAM},     {"nadam", OPTIM_NADAM}};
    int kind = -1;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(names[i].name, cls) == 0)
            kind = (int)names[i].kind;
    if (kind < 0)
        return kerr(c, ERR_UNSUPPORTED, "optimizer %s is not supported", cls);
    model_optim_config o = model_optim_config_default((optim_kind)kind);
    if (!cJSON_IsObject(cfg)) {
        *out = o;
        return ERR_OK;
    }
    const cJSON *lr = jget2(cfg, "learning_rate", "lr");
    if (!jnull(lr))
        TRY(parse_schedule(c, lr, &o.lr));
    double decay = 0.0;
    TRY(jnum(c, jget(cfg, "decay"), "decay", &decay));
    if (decay != 0.0)
        return kerr(c, ERR_UNSUPPORTED,
                    "optimizer %s: decay=%g (Keras 1/2 inverse time decay) is not supported", cls,
                    decay);
    static const char *const k3[] = {"use_ema", "loss_scale_factor", "gradient_accumulation_steps",
                                     NULL};
    TRY(refuse_set(c, cfg, k3));
    TRY(jnum(c, jget(cfg, "momentum"), "momentum", &o.momentum));
    TRY(jbool(c, jget(cfg, "nesterov"), "nesterov", &o.nesterov));
    TRY(jnum(c, jget(cfg, "beta_1"), "beta_1", &o.beta_1));
    TRY(jnum(c, jget(cfg, "beta_2"), "beta_2", &o.beta_2));
    TRY(jnum(c, jget(cfg, "epsilon"), "epsilon", &o.epsilon));
    TRY(jbool(c, jget(cfg, "amsgrad"), "amsgrad", &o.amsgrad));
    TRY(jnum(c, jget(cfg, "rho"), "rho", &o.rho));
    TRY(jbool(c, jget(cfg, "centered"), "centered", &o.centered));
    if (o.kind == OPTIM_ADAGRAD) {
        /* Standalone Keras 1/2 Adagrad has no such option and starts its accumulators at 0. */
        const cJSON *iav = jget(cfg, "initial_accumulator_value");
        o.initial_accumulator_value = iav == NULL ? 0.0 : 0.1;
        TRY(jnum(c, iav, "initial_accumulator_value", &o.initial_accumulator_value));
    }
    if (o.kind == OPTIM_NADAM) {
        double sd = 0.004;
        TRY(jnum(c, jget(cfg, "schedule_decay"), "schedule_decay", &sd));
        if (fabs(sd - 0.004) > 1e-12)
            return kerr(c, ERR_UNSUPPORTED, "Nadam schedule_decay %g is not supported (0.004)", sd);
    }
    TRY(jnum(c, jget(cfg, "weight_decay"), "weight_decay", &o.weight_decay));
    TRY(jnum(c, jget(cfg, "clipnorm"), "clipnorm", &o.clipnorm));
    TRY(jnum(c, jget(cfg, "clipvalue"), "clipvalue", &o.clipvalue));
    TRY(jnum(c, jget(cfg, "global_clipnorm"), "global_clipnorm", &o.global_clipnorm));
    *out = o;
    return ERR_OK;
}

/* Output index of an output layer name, or -1. */
static int output_by_name(const model *m, const char *name)
{
    for (int o = 0; o < m->n_outputs; o++)
        if (strcmp(m->layers[m->outputs[o].layer].name, name) == 0)
            return o;
    return -1;
}

int kjson_training_parse_ex(const char *json, size_t len, const char *source, model *m,
                            unsigned flags, kjson_warn_fn warn, void *warn_ctx, err_info *e)
{
    if (source == NULL)
        source = "training_config";
    if (!m->built)
        return err_set(e, ERR_USAGE, "%s: the model is not built", source);
    cJSON *root = NULL;
    int rc = jparse(json, len, source, &root, e);
    if (rc != ERR_OK)
        return rc;
    kctx c = {source, false, "", e};
    int no = m->n_outputs;
    model_loss *losses = calloc((size_t)no + 1, sizeof *losses);
    double *weights = calloc((size_t)no + 1, sizeof *weights);
    metric_set ms;
    memset(&ms, 0, sizeof ms);
    ms.flags = flags;
    ms.warn = warn;
    ms.warn_ctx = warn_ctx;
    model_optim_config opt = m->train.optim;
    int n_losses = 1;
    bool per_output = false;
    if (losses == NULL || weights == NULL) {
        rc = err_set(e, ERR_NOMEM, "%s: out of memory", source);
        goto done;
    }
    if (!cJSON_IsObject(root)) {
        rc = kerr(&c, ERR_FORMAT, "not a training config (not a JSON object)");
        goto done;
    }
    for (int o = 0; o <= no; o++)
        weights[o] = 1.0;
    /* loss */
    c.where = "loss";
    const cJSON *lv = jget(root, "loss");
    if (cJSON_IsArray(lv)) {
        if (cJSON_GetArraySize(lv) != no) {
            rc = kerr(&c, ERR_CONFIG, "%d losses for a model with %d outputs",
                      cJSON_GetArraySize(lv), no);
            goto done;
        }
        per_output = true;
        for (int o = 0; o < no && rc == ERR_OK; o++)
            rc = parse_loss(&c, cJSON_GetArrayItem(lv, o), &losses[o]);
    } else if (cJSON_IsObject(lv) && jget(lv, "class_name") == NULL) {
        per_output = true;
        for (int o = 0; o < no; o++)
            loss_defaults(&losses[o], LOSS_NONE);
        const cJSON *it;
        cJSON_ArrayForEach(it, lv)
        {
            int o = it->string != NULL ? output_by_name(m, it->string) : -1;
            if (o < 0) {
                rc = kerr(&c, ERR_CONFIG, "loss for \"%s\", which is not a model output",
                          it->string != NULL ? it->string : "?");
                break;
            }
            if ((rc = parse_loss(&c, it, &losses[o])) != ERR_OK)
                break;
        }
    } else {
        rc = parse_loss(&c, lv, &losses[0]);
    }
    if (rc != ERR_OK)
        goto done;
    /* loss_weights */
    c.where = "loss_weights";
    const cJSON *wv = jget(root, "loss_weights");
    if (cJSON_IsArray(wv) || cJSON_IsObject(wv)) {
        if (!per_output) {
            for (int o = 1; o < no; o++)
                losses[o] = losses[0];
            per_output = true;
        }
        if (cJSON_IsArray(wv) && cJSON_GetArraySize(wv) != no) {
            rc = kerr(&c, ERR_CONFIG, "%d loss weights for a model with %d outputs",
                      cJSON_GetArraySize(wv), no);
            goto done;
        }
        int i = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, wv)
        {
            int o = cJSON_IsArray(wv) ? i : output_by_name(m, it->string != NULL ? it->string : "");
            if (o < 0) {
                rc = kerr(&c, ERR_CONFIG, "weight for \"%s\", which is not a model output",
                          it->string != NULL ? it->string : "?");
                goto done;
            }
            if ((rc = jnum(&c, it, "loss_weights", &weights[o])) != ERR_OK)
                goto done;
            i++;
        }
    } else if (!jnull(wv)) {
        rc = kerr(&c, ERR_CONFIG, "neither a list nor a dict");
        goto done;
    }
    n_losses = per_output ? no : 1;
    /* metrics */
    c.where = "metrics";
    if ((rc = parse_metrics(&c, jget(root, "metrics"), &ms, 0)) != ERR_OK)
        goto done;
    c.where = "weighted_metrics";
    const cJSON *wm = jget(root, "weighted_metrics");
    if (!jnull(wm) && cJSON_GetArraySize(wm) > 0) {
        if (!(flags & KJSON_SKIP_UNKNOWN_METRICS)) {
            rc = kerr(&c, ERR_UNSUPPORTED, "weighted_metrics are not supported");
            goto done;
        }
        if (warn != NULL) {
            char msg[ERR_MSG_MAX];
            snprintf(msg, sizeof msg, "%s: weighted_metrics are not supported and were dropped",
                     source);
            warn(warn_ctx, msg);
        }
    }
    /* optimizer */
    c.where = "optimizer_config";
    const cJSON *ov = jget(root, "optimizer_config");
    if (!jnull(ov) && (rc = parse_optimizer(&c, ov, &opt)) != ERR_OK)
        goto done;
    c.where = "";
    if (losses[0].kind == LOSS_NONE && !per_output) {
        /* No loss: the model was never compiled (Keras writes null then). */
        rc = ERR_OK;
        goto done;
    }
    if ((rc = model_train_set_losses(m, n_losses, losses, weights, e)) != ERR_OK)
        goto done;
    m->train.n_metrics = ms.n;
    memcpy(m->train.metrics, ms.k, sizeof ms.k);
    m->train.optim = opt;
done:
    free(losses);
    free(weights);
    cJSON_Delete(root);
    return rc;
}

int kjson_training_parse(const char *json, size_t len, const char *source, model *m, err_info *e)
{
    return kjson_training_parse_ex(json, len, source, m, 0, NULL, NULL, e);
}

/* ==== writers ==== */

typedef struct wctx {
    bool oom;
} wctx;

static cJSON *wadd(wctx *w, cJSON *parent, const char *key, cJSON *item)
{
    if (item == NULL) {
        w->oom = true;
        return NULL;
    }
    bool ok =
        key != NULL ? cJSON_AddItemToObject(parent, key, item) : cJSON_AddItemToArray(parent, item);
    if (!ok) {
        cJSON_Delete(item);
        w->oom = true;
        return NULL;
    }
    return item;
}

/* Numbers are printed here, not by cJSON: its printer accepts 15 digits when they come back
 * within a relative epsilon, which changes float32-derived values such as 0.8999999761581421.
 * This prints the shortest of %.15g, %.16g and %.17g that strtod turns back into exactly v
 * (what Python's repr, and so Keras, writes). */
static void wnum(wctx *w, cJSON *o, const char *key, double v)
{
    char buf[40];
    if (!isfinite(v)) {
        wadd(w, o, key, cJSON_CreateNull());
        return;
    }
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    wadd(w, o, key, cJSON_CreateRaw(buf));
}

static void wstr(wctx *w, cJSON *o, const char *key, const char *s)
{
    wadd(w, o, key, cJSON_CreateString(s));
}

static void wbool(wctx *w, cJSON *o, const char *key, bool b)
{
    wadd(w, o, key, cJSON_CreateBool(b));
}

static void wnull(wctx *w, cJSON *o, const char *key)
{
    wadd(w, o, key, cJSON_CreateNull());
}

static cJSON *wobj(wctx *w, cJSON *o, const char *key)
{
    return wadd(w, o, key, cJSON_CreateObject());
}

static cJSON *warr(wctx *w, cJSON *o, const char *key)
{
    return wadd(w, o, key, cJSON_CreateArray());
}

static void wints(wctx *w, cJSON *o, const char *key, int n, const int64_t *v)
{
    cJSON *a = warr(w, o, key);
    for (int i = 0; a != NULL && i < n; i++)
        wnum(w, a, NULL, (double)v[i]);
}

/* A shape with unknown extents as null. */
static void wshape(wctx *w, cJSON *o, const char *key, int rank, const int64_t *dims)
{
    cJSON *a = warr(w, o, key);
    for (int i = 0; a != NULL && i < rank; i++) {
        if (dims[i] < 0)
            wnull(w, a, NULL);
        else
            wnum(w, a, NULL, (double)dims[i]);
    }
}

/* The class name written for an initializer: the named variance-scaling variant when the
 * parameters are one (keeping the spelling that was read when it matches), else the generic
 * class. */
static const char *init_write_class(const model_init *in)
{
    const char *read = in->keras_name;
    for (size_t i = 0; i < sizeof INIT_STRINGS / sizeof INIT_STRINGS[0]; i++)
        if (strcmp(INIT_STRINGS[i].str, read) == 0)
            read = INIT_STRINGS[i].cls;
    switch (in->kind) {
    case INIT_VARIANCE_SCALING: {
        if (strcmp(read, "VarianceScaling") == 0)
            return "VarianceScaling";
        const char *first = NULL;
        for (size_t i = 0; i < sizeof VS_ALIASES / sizeof VS_ALIASES[0]; i++) {
            const init_alias *a = &VS_ALIASES[i];
            if (a->scale == in->a && a->mode == in->mode && a->dist == in->dist) {
                if (strcmp(a->name, read) == 0)
                    return a->name;
                if (first == NULL)
                    first = a->name;
            }
        }
        return first != NULL ? first : "VarianceScaling";
    }
    case INIT_ZEROS:
    case INIT_ONES:
    case INIT_CONSTANT:
    case INIT_RANDOM_UNIFORM:
    case INIT_RANDOM_NORMAL:
    case INIT_TRUNCATED_NORMAL:
    case INIT_ORTHOGONAL:
    case INIT_IDENTITY:
        return model_init_class_name(in->kind);
    case INIT_COUNT:
        break;
    }
    return "?";
}

static void winit(wctx *w, cJSON *o, const char *key, const model_init *in)
{
    static const char *const modes[] = {
        [INIT_FAN_IN] = "fan_in", [INIT_FAN_OUT] = "fan_out", [INIT_FAN_AVG] = "fan_avg"};
    static const char *const dists[] = {[INIT_DIST_TRUNCATED_NORMAL] = "truncated_normal",
                                        [INIT_DIST_UNTRUNCATED_NORMAL] = "untruncated_normal",
                                        [INIT_DIST_UNIFORM] = "uniform"};
    cJSON *obj = wobj(w, o, key);
    if (obj == NULL)
        return;
    const char *cls = init_write_class(in);
    wstr(w, obj, "class_name", cls);
    cJSON *cfg = wobj(w, obj, "config");
    if (cfg == NULL)
        return;
    bool seeded = true;
    switch (in->kind) {
    case INIT_ZEROS:
    case INIT_ONES:
        seeded = false;
        break;
    case INIT_CONSTANT:
        wnum(w, cfg, "value", in->a);
        seeded = false;
        break;
    case INIT_RANDOM_UNIFORM:
        wnum(w, cfg, "minval", in->a);
        wnum(w, cfg, "maxval", in->b);
        break;
    case INIT_RANDOM_NORMAL:
    case INIT_TRUNCATED_NORMAL:
        wnum(w, cfg, "mean", in->a);
        wnum(w, cfg, "stddev", in->b);
        break;
    case INIT_VARIANCE_SCALING:
        if (strcmp(cls, "VarianceScaling") == 0) {
            wnum(w, cfg, "scale", in->a);
            wstr(w, cfg, "mode",
                 (int)in->mode >= 0 && in->mode < INIT_MODE_COUNT ? modes[in->mode] : "fan_in");
            wstr(w, cfg, "distribution",
                 (int)in->dist >= 0 && in->dist < INIT_DIST_COUNT ? dists[in->dist]
                                                                  : "truncated_normal");
        }
        break;
    case INIT_ORTHOGONAL:
        wnum(w, cfg, "gain", in->a);
        break;
    case INIT_IDENTITY:
        wnum(w, cfg, "gain", in->a);
        seeded = false;
        break;
    case INIT_COUNT:
        break;
    }
    if (seeded) {
        if (in->has_seed)
            wnum(w, cfg, "seed", (double)in->seed);
        else
            wnull(w, cfg, "seed");
    }
}

static void wreg(wctx *w, cJSON *o, const char *key, const model_reg *r)
{
    if (r->l1 == 0.0 && r->l2 == 0.0) {
        wnull(w, o, key);
        return;
    }
    cJSON *obj = wobj(w, o, key);
    if (obj == NULL)
        return;
    wstr(w, obj, "class_name", "L1L2");
    cJSON *cfg = wobj(w, obj, "config");
    if (cfg == NULL)
        return;
    wnum(w, cfg, "l1", r->l1);
    wnum(w, cfg, "l2", r->l2);
}

static void wact(wctx *w, cJSON *o, const char *key, act_kind k)
{
    if (k == ACT_HARD_SIGMOID) {
        /* Keras 3's hard_sigmoid has no tf.keras 2 spelling: write the Keras 3 serialized
         * function, which Keras 3 loads and which marks the config as Keras 3 for readers. */
        cJSON *obj = wobj(w, o, key);
        if (obj == NULL)
            return;
        wstr(w, obj, "module", "keras.activations");
        wstr(w, obj, "class_name", "function");
        wstr(w, obj, "config", "hard_sigmoid");
        wstr(w, obj, "registered_name", "hard_sigmoid");
        return;
    }
    wstr(w, o, key, kern_act_name(k));
}

static void wnulls(wctx *w, cJSON *o, const char *const *keys)
{
    for (int i = 0; keys[i] != NULL; i++)
        wnull(w, o, keys[i]);
}

static const char *data_format(bool channels_first)
{
    return channels_first ? "channels_first" : "channels_last";
}

/* The Keras 2 config object of one layer. */
static void layer_config_json(wctx *w, const model_layer *L, cJSON *cfg)
{
    static const char *const dense_c[] = {"kernel_constraint", "bias_constraint", NULL};
    static const char *const rnn_c[] = {"kernel_constraint", "recurrent_constraint",
                                        "bias_constraint", NULL};
    static const char *const bn_c[] = {"beta_regularizer", "gamma_regularizer", "beta_constraint",
                                       "gamma_constraint", NULL};
    const layer_config *g = &L->cfg;
    int n =
        L->kind == LAYER_CONV2D || L->kind == LAYER_MAXPOOL2D || L->kind == LAYER_AVGPOOL2D ? 2 : 1;
    wstr(w, cfg, "name", L->name);
    wbool(w, cfg, "trainable", L->trainable);
    if (L->kind == LAYER_INPUT) {
        wshape(w, cfg, "batch_input_shape", L->input_shape.rank, L->input_shape.dims);
        wstr(w, cfg, "dtype", L->input_dtype == DTYPE_I32 ? "int32" : "float32");
        wbool(w, cfg, "sparse", false);
        wbool(w, cfg, "ragged", false);
        cJSON_DeleteItemFromObjectCaseSensitive(cfg, "trainable");
        return;
    }
    wstr(w, cfg, "dtype", "float32");
    switch (L->kind) {
    case LAYER_INPUT:
        break;
    case LAYER_DENSE:
        wnum(w, cfg, "units", (double)g->units);
        wact(w, cfg, "activation", g->activation);
        wbool(w, cfg, "use_bias", g->use_bias);
        winit(w, cfg, "kernel_initializer", &g->kernel_init);
        winit(w, cfg, "bias_initializer", &g->bias_init);
        wreg(w, cfg, "kernel_regularizer", &g->kernel_reg);
        wreg(w, cfg, "bias_regularizer", &g->bias_reg);
        wreg(w, cfg, "activity_regularizer", &g->activity_reg);
        wnulls(w, cfg, dense_c);
        break;
    case LAYER_CONV2D:
    case LAYER_CONV1D:
        wnum(w, cfg, "filters", (double)g->filters);
        wints(w, cfg, "kernel_size", n, g->kernel_size);
        wints(w, cfg, "strides", n, g->strides);
        wstr(w, cfg, "padding", model_pad_name(g->padding));
        wstr(w, cfg, "data_format", data_format(g->channels_first));
        wints(w, cfg, "dilation_rate", n, g->dilation);
        wnum(w, cfg, "groups", 1);
        wact(w, cfg, "activation", g->activation);
        wbool(w, cfg, "use_bias", g->use_bias);
        winit(w, cfg, "kernel_initializer", &g->kernel_init);
        winit(w, cfg, "bias_initializer", &g->bias_init);
        wreg(w, cfg, "kernel_regularizer", &g->kernel_reg);
        wreg(w, cfg, "bias_regularizer", &g->bias_reg);
        wreg(w, cfg, "activity_regularizer", &g->activity_reg);
        wnulls(w, cfg, dense_c);
        break;
    case LAYER_MAXPOOL2D:
    case LAYER_AVGPOOL2D:
    case LAYER_MAXPOOL1D:
    case LAYER_AVGPOOL1D:
        wints(w, cfg, "pool_size", n, g->pool_size);
        wstr(w, cfg, "padding", model_pad_name(g->padding));
        wints(w, cfg, "strides", n, g->pool_strides);
        wstr(w, cfg, "data_format", data_format(g->channels_first));
        break;
    case LAYER_GAP2D:
    case LAYER_GMP2D:
    case LAYER_GAP1D:
    case LAYER_GMP1D:
        wstr(w, cfg, "data_format", data_format(g->channels_first));
        wbool(w, cfg, "keepdims", false);
        break;
    case LAYER_FLATTEN:
        wstr(w, cfg, "data_format", data_format(g->channels_first));
        break;
    case LAYER_RESHAPE:
        wints(w, cfg, "target_shape", g->target_rank, g->target_shape);
        break;
    case LAYER_DROPOUT:
        wnum(w, cfg, "rate", g->rate);
        wnull(w, cfg, "noise_shape");
        if (g->dropout_seed >= 0)
            wnum(w, cfg, "seed", (double)g->dropout_seed);
        else
            wnull(w, cfg, "seed");
        break;
    case LAYER_ACTIVATION:
        wact(w, cfg, "activation", g->activation);
        break;
    case LAYER_BATCHNORM:
        wnum(w, cfg, "axis", g->axis);
        wnum(w, cfg, "momentum", g->momentum);
        wnum(w, cfg, "epsilon", g->epsilon);
        wbool(w, cfg, "center", g->center);
        wbool(w, cfg, "scale", g->scale);
        winit(w, cfg, "beta_initializer", &g->beta_init);
        winit(w, cfg, "gamma_initializer", &g->gamma_init);
        winit(w, cfg, "moving_mean_initializer", &g->moving_mean_init);
        winit(w, cfg, "moving_variance_initializer", &g->moving_variance_init);
        wnulls(w, cfg, bn_c);
        break;
    case LAYER_ZEROPAD2D: {
        cJSON *p = warr(w, cfg, "padding");
        if (p != NULL) {
            wints(w, p, NULL, 2, &g->zero_pad[0]);
            wints(w, p, NULL, 2, &g->zero_pad[2]);
        }
        wstr(w, cfg, "data_format", data_format(g->channels_first));
        break;
    }
    case LAYER_RELU:
        if (g->max_value >= 0)
            wnum(w, cfg, "max_value", g->max_value);
        else
            wnull(w, cfg, "max_value");
        wnum(w, cfg, "negative_slope", g->negative_slope);
        wnum(w, cfg, "threshold", g->threshold);
        break;
    case LAYER_LEAKYRELU:
    case LAYER_ELU:
        wnum(w, cfg, "alpha", g->alpha);
        break;
    case LAYER_SOFTMAX:
    case LAYER_CONCAT:
        wnum(w, cfg, "axis", g->axis);
        break;
    case LAYER_ADD:
    case LAYER_SUBTRACT:
    case LAYER_MULTIPLY:
    case LAYER_AVERAGE:
        break;
    case LAYER_EMBEDDING:
        wnum(w, cfg, "input_dim", (double)g->input_dim);
        wnum(w, cfg, "output_dim", (double)g->output_dim);
        winit(w, cfg, "embeddings_initializer", &g->embeddings_init);
        wreg(w, cfg, "embeddings_regularizer", &g->embeddings_reg);
        wreg(w, cfg, "activity_regularizer", &g->activity_reg);
        wnull(w, cfg, "embeddings_constraint");
        wbool(w, cfg, "mask_zero", g->mask_zero);
        break;
    case LAYER_SIMPLERNN:
    case LAYER_LSTM:
    case LAYER_GRU:
        wbool(w, cfg, "return_sequences", g->return_sequences);
        wbool(w, cfg, "return_state", g->return_state);
        wbool(w, cfg, "go_backwards", g->go_backwards);
        wbool(w, cfg, "stateful", g->stateful);
        wbool(w, cfg, "unroll", false);
        wnum(w, cfg, "units", (double)g->units);
        wact(w, cfg, "activation", g->activation);
        if (L->kind != LAYER_SIMPLERNN)
            wact(w, cfg, "recurrent_activation", g->recurrent_activation);
        wbool(w, cfg, "use_bias", g->use_bias);
        winit(w, cfg, "kernel_initializer", &g->kernel_init);
        winit(w, cfg, "recurrent_initializer", &g->recurrent_init);
        winit(w, cfg, "bias_initializer", &g->bias_init);
        if (L->kind == LAYER_LSTM)
            wbool(w, cfg, "unit_forget_bias", g->unit_forget_bias);
        wreg(w, cfg, "kernel_regularizer", &g->kernel_reg);
        wreg(w, cfg, "recurrent_regularizer", &g->recurrent_reg);
        wreg(w, cfg, "bias_regularizer", &g->bias_reg);
        wreg(w, cfg, "activity_regularizer", &g->activity_reg);
        wnulls(w, cfg, rnn_c);
        wnum(w, cfg, "dropout", g->dropout);
        wnum(w, cfg, "recurrent_dropout", g->recurrent_dropout);
        if (L->kind == LAYER_GRU)
            wbool(w, cfg, "reset_after", g->reset_after);
        break;
    case LAYER_COUNT:
        break;
    }
}

/* True if the graph is the chain a Sequential config describes. */
static bool is_chain(const model *m)
{
    if (m->n_layers < 2 || m->n_inputs != 1 || m->n_outputs != 1)
        return false;
    if (m->layers[0].kind != LAYER_INPUT || m->inputs[0].layer != 0)
        return false;
    for (int i = 1; i < m->n_layers; i++) {
        const model_layer *L = &m->layers[i];
        if (L->kind == LAYER_INPUT || L->n_nodes != 1 || L->nodes[0].n_in != 1)
            return false;
        const model_ref *r = &L->nodes[0].in[0];
        if (r->layer != i - 1 || r->node != 0 || r->tensor != 0)
            return false;
    }
    const model_ref *o = &m->outputs[0];
    return o->layer == m->n_layers - 1 && o->node == 0 && o->tensor == 0;
}

static void wref(wctx *w, const model *m, cJSON *arr, const model_ref *r, bool kwargs)
{
    cJSON *a = warr(w, arr, NULL);
    if (a == NULL)
        return;
    wstr(w, a, NULL, m->layers[r->layer].name);
    wnum(w, a, NULL, r->node);
    wnum(w, a, NULL, r->tensor);
    if (kwargs)
        wobj(w, a, NULL);
}

static bool uses_act(const model *m, act_kind k)
{
    for (int i = 0; i < m->n_layers; i++) {
        const model_layer *L = &m->layers[i];
        bool rnn = L->kind == LAYER_LSTM || L->kind == LAYER_GRU;
        if (L->cfg.activation == k || (rnn && L->cfg.recurrent_activation == k))
            return true;
    }
    return false;
}

int kjson_model_write(const model *m, char **out, err_info *e)
{
    if (!m->built)
        return err_set(e, ERR_USAGE, "kjson_model_write: the model is not built");
    if (uses_act(m, ACT_HARD_SIGMOID) && uses_act(m, ACT_HARD_SIGMOID_K2))
        return err_set(e, ERR_UNSUPPORTED,
                       "model \"%s\" uses both the Keras 3 and the Keras 2 hard_sigmoid, which "
                       "one model config cannot express",
                       m->name);
    wctx w = {false};
    cJSON *root = cJSON_CreateObject();
    if (root == NULL)
        return err_set(e, ERR_NOMEM, "kjson_model_write: out of memory");
    bool seq = m->sequential && is_chain(m);
    wstr(&w, root, "class_name", seq ? "Sequential" : "Functional");
    cJSON *cfg = wobj(&w, root, "config");
    if (cfg != NULL) {
        wstr(&w, cfg, "name", m->name[0] != '\0' ? m->name : seq ? "sequential" : "model");
        cJSON *layers = warr(&w, cfg, "layers");
        for (int i = 0; layers != NULL && i < m->n_layers; i++) {
            const model_layer *L = &m->layers[i];
            cJSON *entry = wobj(&w, layers, NULL);
            if (entry == NULL)
                break;
            wstr(&w, entry, "class_name", model_kind_class_name(L->kind));
            cJSON *lc = wobj(&w, entry, "config");
            if (lc != NULL)
                layer_config_json(&w, L, lc);
            if (seq)
                continue;
            wstr(&w, entry, "name", L->name);
            cJSON *nodes = warr(&w, entry, "inbound_nodes");
            for (int j = 0; nodes != NULL && L->kind != LAYER_INPUT && j < L->n_nodes; j++) {
                cJSON *nd = warr(&w, nodes, NULL);
                for (int k = 0; nd != NULL && k < L->nodes[j].n_in; k++)
                    wref(&w, m, nd, &L->nodes[j].in[k], true);
            }
        }
        if (!seq) {
            cJSON *ins = warr(&w, cfg, "input_layers");
            for (int i = 0; ins != NULL && i < m->n_inputs; i++)
                wref(&w, m, ins, &m->inputs[i], false);
            cJSON *outs = warr(&w, cfg, "output_layers");
            for (int i = 0; outs != NULL && i < m->n_outputs; i++)
                wref(&w, m, outs, &m->outputs[i], false);
        }
    }
    wstr(&w, root, "keras_version", KJSON_KERAS_VERSION);
    wstr(&w, root, "backend", "tensorflow");
    char *text = w.oom ? NULL : cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (text == NULL)
        return err_set(e, ERR_NOMEM, "kjson_model_write: out of memory");
    *out = text;
    return ERR_OK;
}

static const char *loss_class(loss_kind k)
{
    switch (k) {
    case LOSS_SPARSE_CCE:
        return "SparseCategoricalCrossentropy";
    case LOSS_CCE:
        return "CategoricalCrossentropy";
    case LOSS_BCE:
        return "BinaryCrossentropy";
    case LOSS_MSE:
        return "MeanSquaredError";
    case LOSS_MAE:
        return "MeanAbsoluteError";
    case LOSS_HUBER:
        return "Huber";
    case LOSS_NONE:
    case LOSS_COUNT:
        break;
    }
    return NULL;
}

static void wloss(wctx *w, cJSON *o, const char *key, const model_loss *l)
{
    if (l->kind == LOSS_NONE || loss_class(l->kind) == NULL) {
        wnull(w, o, key);
        return;
    }
    if (!l->from_logits && l->label_smoothing == 0.0 && l->delta == 1.0) {
        wstr(w, o, key, model_loss_name(l->kind));
        return;
    }
    cJSON *obj = wobj(w, o, key);
    if (obj == NULL)
        return;
    wstr(w, obj, "class_name", loss_class(l->kind));
    cJSON *cfg = wobj(w, obj, "config");
    if (cfg == NULL)
        return;
    wstr(w, cfg, "reduction", "auto");
    wstr(w, cfg, "name", l->kind == LOSS_HUBER ? "huber_loss" : model_loss_name(l->kind));
    if (l->kind == LOSS_HUBER) {
        wnum(w, cfg, "delta", l->delta);
        return;
    }
    if (l->kind == LOSS_MSE || l->kind == LOSS_MAE)
        return;
    wbool(w, cfg, "from_logits", l->from_logits);
    if (l->kind != LOSS_SPARSE_CCE)
        wnum(w, cfg, "label_smoothing", l->label_smoothing);
}

static void wschedule(wctx *w, cJSON *o, const model_schedule *s)
{
    if (s->kind == SCHED_CONSTANT) {
        wnum(w, o, "learning_rate", s->initial);
        return;
    }
    cJSON *obj = wobj(w, o, "learning_rate");
    if (obj == NULL)
        return;
    wstr(w, obj, "class_name", model_sched_name(s->kind));
    cJSON *cfg = wobj(w, obj, "config");
    if (cfg == NULL)
        return;
    switch (s->kind) {
    case SCHED_EXPONENTIAL:
        wnum(w, cfg, "initial_learning_rate", s->initial);
        wnum(w, cfg, "decay_steps", s->decay_steps);
        wnum(w, cfg, "decay_rate", s->decay_rate);
        wbool(w, cfg, "staircase", s->staircase);
        break;
    case SCHED_COSINE:
        wnum(w, cfg, "initial_learning_rate", s->initial);
        wnum(w, cfg, "decay_steps", s->decay_steps);
        wnum(w, cfg, "alpha", s->alpha);
        break;
    case SCHED_PIECEWISE: {
        int nb = s->n_bounds < 0                  ? 0
                 : s->n_bounds > MODEL_MAX_BOUNDS ? MODEL_MAX_BOUNDS
                                                  : s->n_bounds;
        cJSON *b = warr(w, cfg, "boundaries");
        for (int i = 0; b != NULL && i < nb; i++)
            wnum(w, b, NULL, s->bounds[i]);
        cJSON *v = warr(w, cfg, "values");
        for (int i = 0; v != NULL && i <= nb; i++)
            wnum(w, v, NULL, s->values[i]);
        break;
    }
    case SCHED_CONSTANT:
    case SCHED_COUNT:
        break;
    }
    wnull(w, cfg, "name");
}

static void wclip(wctx *w, cJSON *cfg, const char *key, double v, bool always)
{
    if (v > 0)
        wnum(w, cfg, key, v);
    else if (always)
        wnull(w, cfg, key);
}

static void woptim(wctx *w, cJSON *o, const model_optim_config *p)
{
    cJSON *obj = wobj(w, o, "optimizer_config");
    if (obj == NULL)
        return;
    /* OptimizerV2 spellings (what tf.keras < 2.11 wrote and every later Keras reads) unless the
     * configuration needs the new optimizers: AdamW, or weight decay on another optimizer. */
    bool v2 = p->kind != OPTIM_ADAMW && p->weight_decay == 0.0;
    wstr(w, obj, "class_name", model_optim_name(p->kind));
    cJSON *cfg = wobj(w, obj, "config");
    if (cfg == NULL)
        return;
    wstr(w, cfg, "name", model_optim_name(p->kind));
    if (!v2) {
        wnum(w, cfg, "weight_decay", p->weight_decay);
        wclip(w, cfg, "clipnorm", p->clipnorm, true);
        wclip(w, cfg, "global_clipnorm", p->global_clipnorm, true);
        wclip(w, cfg, "clipvalue", p->clipvalue, true);
        wbool(w, cfg, "use_ema", false);
        wnum(w, cfg, "ema_momentum", 0.99);
        wnull(w, cfg, "ema_overwrite_frequency");
        wbool(w, cfg, "is_legacy_optimizer", false);
    }
    wschedule(w, cfg, &p->lr);
    if (v2) {
        wnum(w, cfg, "decay", 0.0);
        wclip(w, cfg, "clipnorm", p->clipnorm, false);
        wclip(w, cfg, "global_clipnorm", p->global_clipnorm, false);
        wclip(w, cfg, "clipvalue", p->clipvalue, false);
    }
    switch (p->kind) {
    case OPTIM_SGD:
        wnum(w, cfg, "momentum", p->momentum);
        wbool(w, cfg, "nesterov", p->nesterov);
        break;
    case OPTIM_ADAM:
    case OPTIM_ADAMW:
    case OPTIM_NADAM:
        wnum(w, cfg, "beta_1", p->beta_1);
        wnum(w, cfg, "beta_2", p->beta_2);
        wnum(w, cfg, "epsilon", p->epsilon);
        if (p->kind != OPTIM_NADAM)
            wbool(w, cfg, "amsgrad", p->amsgrad);
        break;
    case OPTIM_RMSPROP:
        wnum(w, cfg, "rho", p->rho);
        wnum(w, cfg, "momentum", p->momentum);
        wnum(w, cfg, "epsilon", p->epsilon);
        wbool(w, cfg, "centered", p->centered);
        break;
    case OPTIM_ADAGRAD:
        wnum(w, cfg, "initial_accumulator_value", p->initial_accumulator_value);
        wnum(w, cfg, "epsilon", p->epsilon);
        break;
    case OPTIM_COUNT:
        break;
    }
}

int kjson_training_write(const model *m, char **out, err_info *e)
{
    const model_train_config *t = &m->train;
    if (!t->compiled || t->n_losses < 1)
        return err_set(e, ERR_USAGE, "kjson_training_write: model \"%s\" is not compiled", m->name);
    wctx w = {false};
    cJSON *root = cJSON_CreateObject();
    if (root == NULL)
        return err_set(e, ERR_NOMEM, "kjson_training_write: out of memory");
    if (t->n_losses == 1) {
        wloss(&w, root, "loss", &t->losses[0]);
    } else {
        cJSON *a = warr(&w, root, "loss");
        for (int i = 0; a != NULL && i < t->n_losses; i++)
            wloss(&w, a, NULL, &t->losses[i]);
    }
    if (t->n_metrics > 0) {
        cJSON *a = warr(&w, root, "metrics");
        for (int i = 0; a != NULL && i < t->n_metrics && i < MODEL_MAX_METRICS; i++)
            wstr(&w, a, NULL, model_metric_name(t->metrics[i]));
    } else {
        wnull(&w, root, "metrics");
    }
    wnull(&w, root, "weighted_metrics");
    bool ones = true;
    for (int i = 0; t->loss_weights != NULL && i < t->n_losses; i++)
        ones = ones && t->loss_weights[i] == 1.0;
    if (ones) {
        wnull(&w, root, "loss_weights");
    } else {
        /* One loss for every output: its weight is repeated per output, as Keras expects. */
        int nw = t->n_losses == 1 ? m->n_outputs : t->n_losses;
        cJSON *a = warr(&w, root, "loss_weights");
        for (int i = 0; a != NULL && i < nw; i++)
            wnum(&w, a, NULL, t->loss_weights[t->n_losses == 1 ? 0 : i]);
    }
    woptim(&w, root, &t->optim);
    char *text = w.oom ? NULL : cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (text == NULL)
        return err_set(e, ERR_NOMEM, "kjson_training_write: out of memory");
    *out = text;
    return ERR_OK;
}
