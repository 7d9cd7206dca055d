/* Keras .h5 read/write speed (issue 3, "Speed"): writing and reading a large generated model
 * (about 1 GB of float32 weights) against `cp` of a file of the same size, measured in the same
 * run, with peak memory as a multiple of the model size (docs/benchmarks.md, ".h5 I/O").
 *
 *   bench_h5_io [--mb N] [--dir DIR] [--reps N] [--settle S]
 *
 * Defaults: 1024 MB, 5 repetitions, 4 s idle; below 64 MB (CTest's smoke mode, --mb 32) 1
 * repetition and no idle.
 *
 * What is compared. Every timed operation runs in its own child process (so its peak RSS is its
 * own) and starts from the same state: sync() (no dirty pages of anyone else), then S seconds
 * idle, then the clock starts:
 *   write: kh5_write(model) to a name that does not exist (as cp's target does not), through
 *          its temporary file and rename; the model is built before the idle time, so only
 *          the write is timed;
 *   raw:   one write() of the model's flat parameter buffer to a new file: the floor for any
 *          writer that goes through the page cache, to show the .h5 format's own cost;
 *   cp:    `cp --reflink=never` of the file kh5_write produced to a new file (read + write
 *          through a small buffer; no reflink or copy_file_range);
 *   read:  kh5_read of that file (in the page cache, as cp's source is).
 * Neither cp nor kh5_write calls fsync: both end with the data in the page cache.
 *
 * Why the idle time: on this kind of VM, guest memory freed less than ~2 s ago is still backed
 * by the host, while older free memory has been handed back (virtio-balloon free page
 * reporting) and costs a host page fault per 4 KiB on first touch. Writing 1 GB into the page
 * cache therefore takes 0.25 s right after another process freed 1 GB and ~1-3 s otherwise; an
 * operation run right after a process exits gets the fast case. The idle time puts every
 * operation in the same (slow) state. --settle 0 shows the order-dependent numbers.
 *
 * Prints medians over the repetitions (and the minimum), ratios of medians and PASS/MISS against
 * the targets (<= 1.5x cp, peak <= 1.3x model); exits non-zero only if something fails, never
 * on a missed target. */

/* sync() is not in POSIX.1-2008 base. */
#define _DEFAULT_SOURCE 1
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "formats/keras_h5.h"
#include "trainer/model.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A chain of square Dense layers of width w holding about `mb` MB of weights. */
static int make_model(int64_t mb, model **out, err_info *e)
{
    model *m = NULL;
    int rc = model_create(&m, e);
    int64_t w = 4096;
    int64_t per = (w * w + w) * 4;
    int64_t n = (mb * 1024 * 1024 + per - 1) / per;
    if (n < 1)
        n = 1;
    if (mb < 64) {
        w = 1024;
        per = (w * w + w) * 4;
        n = (mb * 1024 * 1024 + per - 1) / per;
    }
    int in = -1, prev = -1;
    if (rc == ERR_OK)
        rc = model_layer_add(m, LAYER_INPUT, "input_1", &in, e);
    if (rc == ERR_OK) {
        m->layers[in].input_shape.rank = 2;
        m->layers[in].input_shape.dims[0] = -1;
        m->layers[in].input_shape.dims[1] = w;
        prev = in;
    }
    for (int64_t i = 0; rc == ERR_OK && i < n; i++) {
        char name[32];
        int li;
        snprintf(name, sizeof name, "dense_%lld", (long long)i);
        rc = model_layer_add(m, LAYER_DENSE, name, &li, e);
        if (rc == ERR_OK) {
            m->layers[li].cfg.units = w;
            model_ref r = {prev, 0, 0};
            rc = model_node_add(m, li, 1, &r, e);
            prev = li;
        }
    }
    if (rc == ERR_OK) {
        model_ref r = {prev, 0, 0};
        rc = model_outputs_set(m, 1, &r, e);
    }
    if (rc == ERR_OK) {
        model_ref r = {in, 0, 0};
        rc = model_inputs_set(m, 1, &r, e);
    }
    if (rc == ERR_OK)
        rc = model_build(m, e);
    if (rc == ERR_OK)
        for (size_t k = 0; k < m->n_params; k++)
            m->params[k] = (float)(k % 1000) * 1e-3f;
    if (rc != ERR_OK) {
        model_destroy(m);
        return rc;
    }
    *out = m;
    return ERR_OK;
}

typedef struct phase {
    double seconds;
    double peak_mb;
    double model_mb;
    int ok;
} phase;

typedef enum op { OP_WRITE, OP_RAW, OP_CP, OP_READ, OP_COUNT } op;

static const char *const OP_NAMES[] = {"kh5_write", "raw write()", "cp", "kh5_read"};
_Static_assert(sizeof OP_NAMES / sizeof OP_NAMES[0] == OP_COUNT, "one name per operation");

/* One write() loop of n bytes to a new file (the kernel may write less than asked). */
static int raw_write(const char *path, const void *buf, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return -1;
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n);
        if (w <= 0) {
            close(fd);
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return close(fd);
}

/* `cp --reflink=never from to`, without a shell. */
static int run_cp(const char *from, const char *to)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        execlp("cp", "cp", "--reflink=never", from, to, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return -1;
    return 0;
}

/* Runs one operation in a child: path is the .h5 file (written by OP_WRITE, read by the
 * others), out the target of OP_RAW and OP_CP. */
static phase run_phase(op what, int64_t mb, const char *path, const char *out, int settle)
{
    int fd[2];
    phase r = {0, 0, 0, 0};
    if (pipe(fd) != 0)
        return r;
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        err_info e = {ERR_OK, ""};
        model *m = NULL;
        phase res = {0, 0, 0, 0};
        int rc = ERR_OK;
        if (what == OP_WRITE || what == OP_RAW)
            rc = make_model(mb, &m, &e);
        sync();
        if (settle > 0)
            sleep((unsigned)settle);
        double t0 = now_s();
        if (rc == ERR_OK) {
            switch (what) {
            case OP_WRITE:
                rc = kh5_write(path, m, false, &e);
                break;
            case OP_RAW:
                if (raw_write(out, m->params, m->n_params * sizeof(float)) != 0)
                    rc = err_set(&e, ERR_IO, "%s: write failed", out);
                break;
            case OP_CP:
                if (run_cp(path, out) != 0)
                    rc = err_set(&e, ERR_IO, "cp %s %s failed", path, out);
                break;
            case OP_READ:
                rc = kh5_read(path, &m, &e);
                break;
            case OP_COUNT:
                break;
            }
        }
        res.seconds = now_s() - t0;
        if (rc != ERR_OK)
            fprintf(stderr, "bench_h5_io: %s\n", e.msg);
        res.ok = rc == ERR_OK;
        res.model_mb = m ? (double)m->n_params * 4.0 / (1024.0 * 1024.0) : 0;
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        res.peak_mb = (double)ru.ru_maxrss / 1024.0;
        model_destroy(m);
        ssize_t wr = write(fd[1], &res, sizeof res);
        _exit(wr == (ssize_t)sizeof res ? 0 : 1);
    }
    close(fd[1]);
    ssize_t got = read(fd[0], &r, sizeof r);
    close(fd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    if (got != (ssize_t)sizeof r || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        r.ok = 0;
    return r;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

#define MAX_REPS 64

int main(int argc, char **argv)
{
    int64_t mb = 1024;
    int reps = -1, settle = -1;
    const char *dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--mb") == 0 && i + 1 < argc)
            mb = atoll(argv[++i]);
        else if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc)
            dir = argv[++i];
        else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--settle") == 0 && i + 1 < argc)
            settle = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_h5_io [--mb N] [--dir DIR] [--reps N] [--settle S]\n");
            return 2;
        }
    }
    /* Below 64 MB is CTest's smoke mode: one quick repetition unless told otherwise. */
    if (reps < 0)
        reps = mb < 64 ? 1 : 5;
    if (settle < 0)
        settle = mb < 64 ? 0 : 4;
    if (mb < 1 || reps < 1 || reps > MAX_REPS || settle < 0) {
        fprintf(stderr, "bench_h5_io: need --mb >= 1, 1 <= --reps <= %d, --settle >= 0\n",
                MAX_REPS);
        return 2;
    }
    char a[4096], b[4200];
    snprintf(a, sizeof a, "%s/cornu_bench_io_%d.h5", dir, (int)getpid());
    snprintf(b, sizeof b, "%s.out", a);
    static double t[OP_COUNT][MAX_REPS];
    double peak[OP_COUNT] = {0}, model_mb = 0;
    int fails = 0;
    for (int rep = 0; rep < reps && !fails; rep++) {
        for (int k = 0; k < OP_COUNT && !fails; k++) {
            /* kh5_write creates a new file, as cp does: replacing an existing one would add
             * deleting the old file (its pages and blocks) to the write's time alone. */
            if (k == OP_WRITE)
                unlink(a);
            phase p = run_phase((op)k, mb, a, b, settle);
            unlink(b);
            if (!p.ok) {
                fprintf(stderr, "bench_h5_io: %s failed\n", OP_NAMES[k]);
                fails++;
                break;
            }
            t[k][rep] = p.seconds;
            peak[k] = fmax(peak[k], p.peak_mb);
            if (k == OP_WRITE)
                model_mb = p.model_mb;
        }
    }
    unlink(a);
    unlink(b);
    if (fails)
        return 1;
    double med[OP_COUNT], lo[OP_COUNT];
    for (int k = 0; k < OP_COUNT; k++) {
        med[k] = median(t[k], reps);
        lo[k] = t[k][0];
    }
    printf("model: %.0f MB of float32 weights; %d repetitions, each operation in its own process "
           "after sync + %d s idle; no fsync on either side\n",
           model_mb, reps, settle);
    for (int k = 0; k < OP_COUNT; k++)
        printf("  %-12s median %.3f s (min %.3f s) = %.2fx cp\n", OP_NAMES[k], med[k], lo[k],
               med[k] / med[OP_CP]);
    printf("kh5_write: %.2fx cp  [target <= 1.5x: %s]; peak RSS %.0f MB = %.2fx model "
           "[target <= 1.3x: %s]\n",
           med[OP_WRITE] / med[OP_CP], med[OP_WRITE] / med[OP_CP] <= 1.5 ? "PASS" : "MISS",
           peak[OP_WRITE], peak[OP_WRITE] / model_mb,
           peak[OP_WRITE] / model_mb <= 1.3 ? "PASS" : "MISS");
    printf("kh5_read:  %.2fx cp  [target <= 1.5x: %s]; peak RSS %.0f MB = %.2fx model "
           "[target <= 1.3x: %s]\n",
           med[OP_READ] / med[OP_CP], med[OP_READ] / med[OP_CP] <= 1.5 ? "PASS" : "MISS",
           peak[OP_READ], peak[OP_READ] / model_mb,
           peak[OP_READ] / model_mb <= 1.3 ? "PASS" : "MISS");
    return 0;
}
