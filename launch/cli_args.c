#include "launch/cli.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int find_opt(const cli_opt *opts, int n, const char *name, size_t len)
{
    for (int i = 0; i < n; i++)
        if (strlen(opts[i].name) == len && strncmp(opts[i].name, name, len) == 0)
            return i;
    return -1;
}

static int set_opt(cli_args *a, const char *name, size_t len, const char *value, bool have_value,
                   const char *origin, err_info *e)
{
    /* "--no-X" turns a flag X off. */
    bool negate = false;
    int i = find_opt(a->opts, a->n_opts, name, len);
    if (i < 0 && len > 3 && strncmp(name, "no-", 3) == 0) {
        i = find_opt(a->opts, a->n_opts, name + 3, len - 3);
        negate = i >= 0 && a->opts[i].kind == CLI_FLAG;
        if (!negate)
            i = -1;
    }
    if (i < 0)
        return err_set(e, ERR_USAGE, "%sunknown option --%.*s (see --help)", origin, (int)len,
                       name);
    if (a->opts[i].kind == CLI_FLAG) {
        if (have_value)
            return err_set(e, ERR_USAGE, "%soption --%s takes no value", origin, a->opts[i].name);
        a->set[i] = true;
        a->val[i] = negate ? "0" : "1";
        return ERR_OK;
    }
    if (!have_value)
        return err_set(e, ERR_USAGE, "%soption --%s needs a value (%s)", origin, a->opts[i].name,
                       a->opts[i].arg ? a->opts[i].arg : "VALUE");
    a->set[i] = true;
    a->val[i] = value;
    return ERR_OK;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
        s[--n] = '\0';
    return s;
}

/* Reads "name value" / "name = value" / "--name value" lines. Values point into a->owned. */
static int read_config(cli_args *a, const char *path, err_info *e)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return err_set(e, ERR_IO, "%s: cannot open config file: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return err_set(e, ERR_IO, "%s: cannot read config file", path);
    }
    long size = ftell(f);
    rewind(f);
    if (size < 0 || size > (1L << 20)) {
        fclose(f);
        return err_set(e, ERR_USAGE, "%s: config file larger than 1 MiB", path);
    }
    a->owned = malloc((size_t)size + 1);
    if (a->owned == NULL) {
        fclose(f);
        return err_set(e, ERR_NOMEM, "%s: config file buffer", path);
    }
    size_t got = fread(a->owned, 1, (size_t)size, f);
    fclose(f);
    a->owned[got] = '\0';
    int lineno = 0;
    for (char *line = a->owned; line != NULL;) {
        char *next = strchr(line, '\n');
        if (next != NULL)
            *next++ = '\0';
        lineno++;
        char *hash = strchr(line, '#');
        if (hash != NULL)
            *hash = '\0';
        char *s = trim(line);
        line = next;
        if (*s == '\0')
            continue;
        if (s[0] == '-' && s[1] == '-')
            s += 2;
        size_t klen = strcspn(s, " \t=");
        char *v = s + klen;
        while (*v == ' ' || *v == '\t' || *v == '=')
            v++;
        char origin[600];
        snprintf(origin, sizeof origin, "%s:%d: ", path, lineno);
        int rc = set_opt(a, s, klen, v, *v != '\0', origin, e);
        if (rc != ERR_OK)
            return rc;
    }
    return ERR_OK;
}

int cli_parse(const cli_opt *opts, int n_opts, int argc, char **argv, cli_args *out, err_info *e)
{
    memset(out, 0, sizeof *out);
    out->opts = opts;
    out->n_opts = n_opts < 64 ? n_opts : 64;
    /* The config file first, so the command line wins. */
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0) {
            if (i + 1 >= argc)
                return err_set(e, ERR_USAGE, "option --config needs a file");
            int rc = read_config(out, argv[i + 1], e);
            if (rc != ERR_OK)
                return rc;
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            int rc = read_config(out, argv[i] + 9, e);
            if (rc != ERR_OK)
                return rc;
        }
    }
    bool only_pos = false;
    for (int i = 0; i < argc; i++) {
        const char *s = argv[i];
        if (!only_pos && strcmp(s, "--") == 0) {
            only_pos = true;
            continue;
        }
        if (!only_pos && s[0] == '-' && s[1] == '-' && s[2] != '\0') {
            const char *name = s + 2;
            if (strcmp(name, "config") == 0) {
                i++;
                continue;
            }
            if (strncmp(name, "config=", 7) == 0)
                continue;
            const char *eq = strchr(name, '=');
            size_t len = eq ? (size_t)(eq - name) : strlen(name);
            int k = find_opt(opts, out->n_opts, name, len);
            int rc;
            if (eq != NULL)
                rc = set_opt(out, name, len, eq + 1, true, "", e);
            else if (k >= 0 && opts[k].kind != CLI_FLAG) {
                if (i + 1 >= argc)
                    return err_set(e, ERR_USAGE, "option --%s needs a value (%s)", opts[k].name,
                                   opts[k].arg ? opts[k].arg : "VALUE");
                rc = set_opt(out, name, len, argv[++i], true, "", e);
            } else
                rc = set_opt(out, name, len, NULL, false, "", e);
            if (rc != ERR_OK)
                return rc;
            continue;
        }
        if (!only_pos && s[0] == '-' && s[1] != '\0' && strcmp(s, "-o") != 0)
            return err_set(e, ERR_USAGE, "unknown option %s (options are spelled --name)", s);
        if (!only_pos && strcmp(s, "-o") == 0) {
            if (i + 1 >= argc)
                return err_set(e, ERR_USAGE, "option -o needs a file");
            int rc = set_opt(out, "output", 6, argv[++i], true, "", e);
            if (rc != ERR_OK)
                return rc;
            continue;
        }
        if (out->n_pos >= CLI_MAX_POS)
            return err_set(e, ERR_USAGE, "too many arguments (at most %d)", CLI_MAX_POS);
        out->pos[out->n_pos++] = s;
    }
    /* Check typed values now, so a bad number is a usage error up front. */
    for (int i = 0; i < out->n_opts; i++) {
        if (!out->set[i])
            continue;
        if (opts[i].kind == CLI_INT) {
            int64_t v;
            int rc = cli_int(out, opts[i].name, &v, e);
            if (rc != ERR_OK)
                return rc;
        } else if (opts[i].kind == CLI_FLOAT) {
            double v;
            int rc = cli_float(out, opts[i].name, &v, e);
            if (rc != ERR_OK)
                return rc;
        }
    }
    return ERR_OK;
}

void cli_args_free(cli_args *a)
{
    free(a->owned);
    a->owned = NULL;
}

static int index_of(const cli_args *a, const char *name)
{
    int i = find_opt(a->opts, a->n_opts, name, strlen(name));
    CHECK(i >= 0); /* asking for an option the table does not have is our bug */
    return i;
}

bool cli_has(const cli_args *a, const char *name)
{
    int i = index_of(a, name);
    if (!a->set[i])
        return false;
    if (a->opts[i].kind == CLI_FLAG)
        return strcmp(a->val[i], "1") == 0;
    return true;
}

const char *cli_str(const cli_args *a, const char *name)
{
    int i = index_of(a, name);
    return a->set[i] ? a->val[i] : a->opts[i].def;
}

int cli_int(const cli_args *a, const char *name, int64_t *out, err_info *e)
{
    const char *s = cli_str(a, name);
    if (s == NULL)
        return err_set(e, ERR_USAGE, "option --%s is required", name);
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0')
        return err_set(e, ERR_USAGE, "option --%s: \"%s\" is not an integer", name, s);
    *out = v;
    return ERR_OK;
}

int cli_float(const cli_args *a, const char *name, double *out, err_info *e)
{
    const char *s = cli_str(a, name);
    if (s == NULL)
        return err_set(e, ERR_USAGE, "option --%s is required", name);
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || v != v)
        return err_set(e, ERR_USAGE, "option --%s: \"%s\" is not a number", name, s);
    *out = v;
    return ERR_OK;
}

void cli_print_help(FILE *f, const char *usage, const char *about, const cli_opt *opts, int n)
{
    fprintf(f, "usage: %s\n\n%s\n\noptions:\n", usage, about);
    for (int i = 0; i < n; i++) {
        char left[64];
        if (opts[i].kind == CLI_FLAG)
            snprintf(left, sizeof left, "--%s", opts[i].name);
        else
            snprintf(left, sizeof left, "--%s %s", opts[i].name, opts[i].arg ? opts[i].arg : "X");
        fprintf(f, "  %-26s %s", left, opts[i].help);
        if (opts[i].def != NULL && opts[i].kind != CLI_FLAG)
            fprintf(f, " (default: %s)", opts[i].def);
        fputc('\n', f);
    }
    fprintf(f, "  %-26s %s\n", "--config FILE",
            "read options from FILE (\"name value\" lines; the command line wins)");
    fprintf(f, "  %-26s %s\n", "--help", "print this help");
}
