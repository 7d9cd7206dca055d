/* main() for the corpus replay tests: feeds every regular file of the directories (or the files)
 * named on the command line to LLVMFuzzerTestOneInput, in name order. A crash or sanitizer report
 * fails the test; an empty corpus fails too. Shared by every fuzz target. */

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "%s: cannot open\n", path);
        return 1;
    }
    size_t cap = 4096, n = 0;
    uint8_t *buf = malloc(cap);
    for (;;) {
        if (n == cap) {
            cap *= 2;
            uint8_t *b = realloc(buf, cap);
            if (b == NULL) {
                free(buf);
                fclose(f);
                return 1;
            }
            buf = b;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        if (got == 0)
            break;
        n += got;
    }
    fclose(f);
    /* An exact-size copy, so that AddressSanitizer sees reads past the end of the input. */
    uint8_t *exact = malloc(n ? n : 1);
    if (n)
        memcpy(exact, buf, n);
    free(buf);
    LLVMFuzzerTestOneInput(exact, n);
    free(exact);
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv)
{
    int files = 0, fails = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "%s: not found\n", argv[i]);
            fails++;
            continue;
        }
        if (!S_ISDIR(st.st_mode)) {
            fails += replay_file(argv[i]);
            files++;
            continue;
        }
        DIR *d = opendir(argv[i]);
        if (d == NULL) {
            fails++;
            continue;
        }
        char **names = NULL;
        size_t n = 0, cap = 0;
        struct dirent *ent;
        while ((ent = readdir(d)) != NULL) {
            if (ent->d_name[0] == '.')
                continue;
            if (n == cap) {
                cap = cap ? 2 * cap : 64;
                names = realloc(names, cap * sizeof *names);
            }
            size_t len = strlen(argv[i]) + strlen(ent->d_name) + 2;
            names[n] = malloc(len);
            snprintf(names[n], len, "%s/%s", argv[i], ent->d_name);
            n++;
        }
        closedir(d);
        qsort(names, n, sizeof *names, cmp_str);
        for (size_t k = 0; k < n; k++) {
            if (stat(names[k], &st) == 0 && S_ISREG(st.st_mode)) {
                fails += replay_file(names[k]);
                files++;
            }
            free(names[k]);
        }
        free(names);
    }
    if (files == 0) {
        fprintf(stderr, "no corpus files replayed\n");
        fails++;
    }
    printf("%d inputs replayed\n", files);
    printf("%d passed, %d failed\n", files - fails, fails);
    return fails ? 1 : 0;
}
