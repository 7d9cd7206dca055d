#include "launch/cli.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void cli_format_double(double v, char *buf, size_t len)
{
    /* Python's repr: the shortest "%.Ng" that reads back to the same double. */
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, len, "%.*g", p, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    if (strchr(buf, '.') == NULL && strchr(buf, 'e') == NULL && strchr(buf, 'n') == NULL &&
        strchr(buf, 'i') == NULL) {
        size_t n = strlen(buf);
        if (n + 2 < len)
            memcpy(buf + n, ".0", 3);
    }
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void print_logs(FILE *f, const fit_logs *logs)
{
    for (int i = 0; i < logs->n; i++) {
        /* Keras's ProgbarLogger prints " - name: %.4f" (and %.4e for tiny values). */
        double v = logs->values[i];
        if (v != 0 && fabs(v) < 1e-3)
            fprintf(f, " - %s: %.4e", logs->names[i], v);
        else
            fprintf(f, " - %s: %.4f", logs->names[i], v);
    }
}

static void print_time(FILE *f, double s)
{
    if (s >= 3600)
        fprintf(f, "%d:%02d:%02d", (int)(s / 3600), (int)fmod(s / 60, 60), (int)fmod(s, 60));
    else if (s >= 60)
        fprintf(f, "%d:%02d", (int)(s / 60), (int)fmod(s, 60));
    else
        fprintf(f, "%ds", (int)s);
}

static void print_per_step(FILE *f, double per)
{
    if (per >= 1)
        fprintf(f, "%.0fs/step", per);
    else if (per >= 1e-3)
        fprintf(f, "%.0fms/step", per * 1e3);
    else
        fprintf(f, "%.0fus/step", per * 1e6);
}

static void print_bar(FILE *f, int64_t step, int64_t steps)
{
    /* Keras: width 30, '=' for done, '>' at the head while running. */
    int width = 30;
    int done = steps > 0 ? (int)((double)width * (double)step / (double)steps) : width;
    int w = (int)snprintf(NULL, 0, "%lld", (long long)steps);
    fprintf(f, "%*lld/%lld [", w, (long long)step, (long long)steps);
    for (int i = 0; i < width; i++) {
        char c = '.';
        if (i < done - 1 || (i == done - 1 && step >= steps))
            c = '=';
        else if (i == done - 1)
            c = '>';
        fputc(c, f);
    }
    fputc(']', f);
}

static void header(cli_progress *p, int64_t epoch)
{
    if (p->header_epoch == epoch + 1)
        return;
    p->header_epoch = epoch + 1;
    fprintf(p->out, "Epoch %lld/%lld\n", (long long)epoch + 1, (long long)p->epochs);
}

void cli_progress_on_step(void *ctx, int64_t epoch, int64_t step, int64_t steps,
                          const fit_logs *logs, double elapsed_s)
{
    cli_progress *p = ctx;
    if (p->quiet || !p->tty || step >= steps)
        return;
    header(p, epoch);
    double t = now_s();
    if (step > 1 && t - p->last_draw < 0.05)
        return;
    p->last_draw = t;
    fputc('\r', p->out);
    print_bar(p->out, step, steps);
    double eta = step > 0 ? elapsed_s / (double)step * (double)(steps - step) : 0;
    fprintf(p->out, " - ETA: ");
    print_time(p->out, eta);
    print_logs(p->out, logs);
    fprintf(p->out, "\033[K");
    fflush(p->out);
}

void cli_progress_on_epoch(void *ctx, int64_t epoch, int64_t epochs, int64_t steps,
                           const fit_logs *logs, double elapsed_s, const fit_timing *t)
{
    cli_progress *p = ctx;
    (void)t;
    if (!p->quiet) {
        p->epochs = epochs;
        header(p, epoch);
        if (p->tty)
            fputc('\r', p->out);
        print_bar(p->out, steps, steps);
        fprintf(p->out, " - ");
        print_time(p->out, elapsed_s);
        fputc(' ', p->out);
        print_per_step(p->out, steps > 0 ? elapsed_s / (double)steps : 0);
        print_logs(p->out, logs);
        if (p->tty)
            fprintf(p->out, "\033[K");
        fputc('\n', p->out);
        fflush(p->out);
    }
    if (p->history != NULL) {
        /* Keras CSVLogger: "epoch" then the log keys sorted, values as Python reprs. */
        int order[FIT_MAX_LOGS];
        for (int i = 0; i < logs->n; i++)
            order[i] = i;
        for (int i = 1; i < logs->n; i++)
            for (int j = i; j > 0 && strcmp(logs->names[order[j - 1]], logs->names[order[j]]) > 0;
                 j--) {
                int tmp = order[j];
                order[j] = order[j - 1];
                order[j - 1] = tmp;
            }
        if (!p->history_header) {
            fprintf(p->history, "epoch");
            for (int i = 0; i < logs->n; i++)
                fprintf(p->history, ",%s", logs->names[order[i]]);
            fputc('\n', p->history);
            p->history_header = true;
        }
        fprintf(p->history, "%lld", (long long)epoch);
        for (int i = 0; i < logs->n; i++) {
            char buf[64];
            cli_format_double(logs->values[order[i]], buf, sizeof buf);
            fprintf(p->history, ",%s", buf);
        }
        fputc('\n', p->history);
        fflush(p->history);
    }
}
