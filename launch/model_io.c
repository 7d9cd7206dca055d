#include "launch/cli.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/keras_h5.h"
#include "formats/keras_json.h"
#include "launch/builtin_models.h"

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static int read_text(const char *path, char **out, size_t *len, err_info *e)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return err_set(e, ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf != NULL) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n < cap)
            break;
        if (cap >= ((size_t)1 << 30)) {
            free(buf);
            fclose(f);
            return err_set(e, ERR_USAGE, "%s: larger than 1 GiB; not a model config", path);
        }
        char *nb = realloc(buf, cap * 2);
        if (nb == NULL) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    int bad = ferror(f);
    fclose(f);
    if (buf == NULL)
        return err_set(e, ERR_NOMEM, "%s: reading", path);
    if (bad) {
        free(buf);
        return err_set(e, ERR_IO, "%s: read error", path);
    }
    *out = buf;
    *len = n;
    return ERR_OK;
}

static int parse_json_file(const char *path, model **out, err_info *e)
{
    char *text = NULL;
    size_t len = 0;
    int rc = read_text(path, &text, &len, e);
    if (rc != ERR_OK)
        return rc;
    rc = kjson_model_parse(text, len, path, out, e);
    free(text);
    return rc;
}

int cli_input_check(const char *path, const char *what, err_info *e)
{
    if (access(path, R_OK) != 0)
        return err_set(e, ERR_USAGE, "%s: cannot read %s file: %s", path, what, strerror(errno));
    return ERR_OK;
}

int cli_model_load(const char *path, const char *config_json, model **out, err_info *e)
{
    for (const builtin_model *b = BUILTIN_MODELS; b->name != NULL; b++)
        if (strcmp(path, b->name) == 0) {
            char src[64];
            snprintf(src, sizeof src, "built-in model %s", b->name);
            return kjson_model_parse(b->json, strlen(b->json), src, out, e);
        }
    int rc = cli_input_check(path, "model", e);
    if (rc != ERR_OK)
        return rc;
    if (config_json != NULL && (rc = cli_input_check(config_json, "model config", e)) != ERR_OK)
        return rc;
    if (ends_with(path, ".json"))
        return parse_json_file(path, out, e);
    kh5_kind kind;
    rc = kh5_probe(path, &kind, e);
    if (rc != ERR_OK)
        return rc;
    switch (kind) {
    case KH5_FULL:
        return kh5_read(path, out, e);
    case KH5_WEIGHTS: {
        if (config_json == NULL)
            return err_set(e, ERR_USAGE,
                           "%s is a weights-only Keras file: give the architecture with "
                           "--config-json MODEL.json",
                           path);
        model *m = NULL;
        rc = parse_json_file(config_json, &m, e);
        if (rc == ERR_OK)
            rc = kh5_read_weights(path, m, e);
        if (rc != ERR_OK) {
            model_destroy(m);
            return rc;
        }
        *out = m;
        return ERR_OK;
    }
    case KH5_KERAS3_WEIGHTS:
    case KH5_KERAS_ARCHIVE:
    case KH5_KIND_COUNT:
        break;
    }
    return kh5_read(path, out, e); /* kh5_read names what the file is and why it is refused */
}

int cli_model_save(const char *path, const char *kind, const model *m, err_info *e)
{
    if (kind == NULL || strcmp(kind, "h5") == 0)
        return kh5_write(path, m, true, e);
    if (strcmp(kind, "weights-h5") == 0)
        return kh5_write_weights(path, m, e);
    if (strcmp(kind, "json") == 0) {
        char *text = NULL;
        int rc = kjson_model_write(m, &text, e);
        if (rc != ERR_OK)
            return rc;
        char tmp[4200];
        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        FILE *f = fopen(tmp, "wb");
        if (f == NULL) {
            free(text);
            return err_set(e, ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
        }
        size_t n = strlen(text);
        bool ok = fwrite(text, 1, n, f) == n;
        ok = (fclose(f) == 0) && ok;
        free(text);
        if (!ok || rename(tmp, path) != 0) {
            remove(tmp);
            return err_set(e, ERR_IO, "%s: write failed: %s", path, strerror(errno));
        }
        return ERR_OK;
    }
    return err_set(e, ERR_USAGE, "unknown output kind \"%s\" (h5, weights-h5, json)", kind);
}
