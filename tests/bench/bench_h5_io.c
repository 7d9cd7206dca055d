/* Keras .h5 read/write speed (issue 3, "Speed"): writing and reading a large generated model
 * (about 1 GB of float32 weights) against `cp` of a file of the same size, measured in the same
 * run, with peak memory as a multiple of the model size. Each phase runs in a child process so
 * its peak RSS is its own.
 *
 *   bench_h5_io [--mb N] [--dir DIR]     (default 1024 MB; --mb 32 is the CTest smoke mode)
 *
 * Prints ratios and PASS/MISS against the targets (<= 1.5x cp, peak <= 1.3x model); exits non-zero
 * only if something fails, never on a missed target. */

/* sync() is not in POSIX.1-2008 base. */
#define _DEFAULT_SOURCE 1
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* Runs what in a child: 0 = write (build + kh5_write), 1 = read (kh5_read). */
static phase run_phase(int what, int64_t mb, const char *path)
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
        phase out = {0, 0, 0, 0};
        double t0 = 0;
        int rc;
        if (what == 0) {
            rc = make_model(mb, &m, &e);
            sync(); /* start from no dirty pages, like the cp measurement */
            t0 = now_s();
            if (rc == ERR_OK)
                rc = kh5_write(path, m, false, &e);
        } else {
            sync();
            t0 = now_s();
            rc = kh5_read(path, &m, &e);
        }
        out.seconds = now_s() - t0;
        if (rc != ERR_OK)
            fprintf(stderr, "bench_h5_io: %s\n", e.msg);
        out.ok = rc == ERR_OK;
        out.model_mb = m ? (double)m->n_params * 4.0 / (1024.0 * 1024.0) : 0;
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        out.peak_mb = (double)ru.ru_maxrss / 1024.0;
        model_destroy(m);
        ssize_t wr = write(fd[1], &out, sizeof out);
        _exit(wr == (ssize_t)sizeof out ? 0 : 1);
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

static double time_cp(const char *from, const char *to)
{
    char cmd[8400];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", from, to);
    sync(); /* the writer's dirty pages must not be charged to cp (or the reverse) */
    double t0 = now_s();
    int rc = system(cmd);
    double t = now_s() - t0;
    return rc == 0 ? t : -1;
}

int main(int argc, char **argv)
{
    int64_t mb = 1024;
    const char *dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--mb") == 0 && i + 1 < argc)
            mb = atoll(argv[++i]);
        else if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc)
            dir = argv[++i];
        else {
            fprintf(stderr, "usage: bench_h5_io [--mb N] [--dir DIR]\n");
            return 2;
        }
    }
    char a[4096], b[4200], c[4200];
    snprintf(a, sizeof a, "%s/cornu_bench_io_%d.h5", dir, (int)getpid());
    snprintf(b, sizeof b, "%s.cp", a);
    snprintf(c, sizeof c, "%s.cp2", a);
    int fails = 0;
    double best_w = 1e30, best_r = 1e30, best_cp = 1e30, peak_w = 0, peak_r = 0, model_mb = 0;
    for (int rep = 0; rep < 3; rep++) {
        phase w = run_phase(0, mb, a);
        if (!w.ok) {
            fails++;
            break;
        }
        /* cp of the file just written: the same bytes, the same page cache state. */
        double t_cp = time_cp(a, b);
        phase r = run_phase(1, mb, a);
        double t_cp2 = time_cp(b, c);
        if (!r.ok || t_cp < 0 || t_cp2 < 0) {
            fails++;
            break;
        }
        best_w = fmin(best_w, w.seconds);
        best_r = fmin(best_r, r.seconds);
        best_cp = fmin(best_cp, fmin(t_cp, t_cp2));
        peak_w = fmax(peak_w, w.peak_mb);
        peak_r = fmax(peak_r, r.peak_mb);
        model_mb = w.model_mb;
        unlink(b);
        unlink(c);
    }
    unlink(a);
    unlink(b);
    unlink(c);
    if (fails) {
        fprintf(stderr, "bench_h5_io: a phase failed\n");
        return 1;
    }
    printf("model: %.0f MB of float32 weights (best of 3)\n", model_mb);
    printf("cp of the same file: %.3f s\n", best_cp);
    printf("kh5_write: %.3f s = %.2fx cp  [target <= 1.5x: %s]; peak RSS %.0f MB = %.2fx model "
           "[target <= 1.3x: %s]\n",
           best_w, best_w / best_cp, best_w / best_cp <= 1.5 ? "PASS" : "MISS", peak_w,
           peak_w / model_mb, peak_w / model_mb <= 1.3 ? "PASS" : "MISS");
    printf("kh5_read:  %.3f s = %.2fx cp  [target <= 1.5x: %s]; peak RSS %.0f MB = %.2fx model "
           "[target <= 1.3x: %s]\n",
           best_r, best_r / best_cp, best_r / best_cp <= 1.5 ? "PASS" : "MISS", peak_r,
           peak_r / model_mb, peak_r / model_mb <= 1.3 ? "PASS" : "MISS");
    return 0;
}
