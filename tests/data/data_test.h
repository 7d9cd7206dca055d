#ifndef CORNU_TESTS_DATA_DATA_TEST_H
#define CORNU_TESTS_DATA_DATA_TEST_H

/* Helpers shared by the data module's tests: a scratch directory, files from bytes, error checks,
 * and the system Python (numpy) for independent fixtures. */

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kernels/err.h"
#include "test_util.h"

/* Creates a fresh directory under TMPDIR (or /tmp) into dir. */
static inline void dt_mkdtemp(char *dir, size_t cap)
{
    const char *base = getenv("TMPDIR");
    snprintf(dir, cap, "%s/cornu_data_XXXXXX", base && base[0] ? base : "/tmp");
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        exit(1);
    }
}

/* Removes the files of dir (one level) and dir. */
static inline void dt_rmdir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return;
    struct dirent *ent;
    char p[4352];
    while ((ent = readdir(d)) != NULL) {
        if (strcmp(ent->d_name, ".") == 0 || strcmp(ent->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof p, "%s/%s", dir, ent->d_name);
        if (unlink(p) != 0)
            rmdir(p);
    }
    closedir(d);
    rmdir(dir);
}

/* Number of entries of dir whose name contains needle. */
static inline int dt_count_files(const char *dir, const char *needle)
{
    DIR *d = opendir(dir);
    int n = 0;
    if (d == NULL)
        return -1;
    struct dirent *ent;
    while ((ent = readdir(d)) != NULL)
        if (strstr(ent->d_name, needle) != NULL)
            n++;
    closedir(d);
    return n;
}

static inline void dt_write(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(buf, 1, len, f) != len || fclose(f) != 0) {
        perror(path);
        exit(1);
    }
}

/* Reads a whole file into a malloc'd buffer (caller frees); *len its size. */
static inline unsigned char *dt_read(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)n + 1);
    if (b == NULL || fread(b, 1, (size_t)n, f) != (size_t)n) {
        fclose(f);
        free(b);
        return NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return b;
}

/* An error check: code as expected and every needle (NULL-terminated list) in the message. */
#define EXPECT_ERR(rc, e, want_code, ...)                                                          \
    do {                                                                                           \
        const char *needles_[] = {__VA_ARGS__, NULL};                                              \
        int ok_ = (int)(rc) == (int)(want_code) && (int)(e).code == (int)(want_code);              \
        for (int i_ = 0; ok_ && needles_[i_] != NULL; i_++)                                        \
            ok_ = strstr((e).msg, needles_[i_]) != NULL;                                           \
        EXPECT_MSG(ok_, "rc %s (want %s), msg \"%s\"", err_code_str((err_code)(rc)),               \
                   err_code_str(want_code), (e).msg);                                              \
    } while (0)

/* True when /usr/bin/python3 with numpy runs. */
static inline int dt_have_numpy(void)
{
    return system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") == 0;
}

/* Writes script to dir/name.py and runs it with dir as its only argument; returns its status. */
static inline int dt_python(const char *dir, const char *name, const char *script)
{
    char p[4352], cmd[8800];
    snprintf(p, sizeof p, "%s/%s.py", dir, name);
    dt_write(p, script, strlen(script));
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s' '%s'", p, dir);
    return system(cmd);
}

#endif
