/* sigaltstack() and SA_ONSTACK are XSI: not in the base _POSIX_C_SOURCE the build defines. */
#define _XOPEN_SOURCE 700
#include "launch/crashguard.h"

#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const int GUARDED[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL};
#define N_GUARDED ((int)(sizeof GUARDED / sizeof GUARDED[0]))

/* Big enough for the handler (one write() and _exit()) whatever MINSIGSTKSZ is. */
#define ALT_STACK_BYTES (64 * 1024)

struct crashguard {
    char msg[4400]; /* built before the guarded call, never in the handler */
    size_t len;
    bool active;
    struct sigaction old[N_GUARDED];
    stack_t old_stack;
    bool stack_set;
};

/* A signal handler receives no context pointer, so its message and the saved dispositions are
 * the one process-wide exception to STYLE.md's "no mutable static variables" (signal
 * dispositions are process-wide state themselves). */
static crashguard the_guard;
static unsigned char alt_stack[ALT_STACK_BYTES];

static void on_crash(int sig)
{
    (void)sig;
    /* Only async-signal-safe calls: write() and _exit(). */
    size_t off = 0;
    while (off < the_guard.len) {
        ssize_t w = write(STDERR_FILENO, the_guard.msg + off, the_guard.len - off);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    _exit(2);
}

crashguard *crashguard_enter(const char *path)
{
    crashguard *g = &the_guard;
    if (g->active)
        return NULL;
    int n = snprintf(g->msg, sizeof g->msg,
                     "cornu: %s: the HDF5 library crashed while reading this file (corrupt "
                     "object header?)\n",
                     path);
    if (n < 0)
        return NULL;
    g->len = (size_t)n < sizeof g->msg ? (size_t)n : sizeof g->msg - 1;
    stack_t st;
    memset(&st, 0, sizeof st);
    st.ss_sp = alt_stack;
    st.ss_size = sizeof alt_stack;
    g->stack_set = sigaltstack(&st, &g->old_stack) == 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_crash;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_ONSTACK | SA_RESETHAND | SA_NODEFER;
    for (int i = 0; i < N_GUARDED; i++)
        if (sigaction(GUARDED[i], &sa, &g->old[i]) != 0) {
            for (int j = 0; j < i; j++)
                sigaction(GUARDED[j], &g->old[j], NULL);
            if (g->stack_set)
                sigaltstack(&g->old_stack, NULL);
            return NULL;
        }
    g->active = true;
    return g;
}

void crashguard_leave(crashguard *g)
{
    if (g == NULL || !g->active)
        return;
    for (int i = 0; i < N_GUARDED; i++)
        sigaction(GUARDED[i], &g->old[i], NULL);
    if (g->stack_set)
        sigaltstack(&g->old_stack, NULL);
    g->active = false;
}
