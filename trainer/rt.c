#include "trainer/rt.h"

#include <cblas.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* Affinity masks are exchanged between the ranks of a node as fixed-size byte arrays. */
#define RT_MAX_CPUS 4096
#define RT_MASK_BYTES (RT_MAX_CPUS / 8)

/* Status file layout (plain text, fixed width, so that it can be rewritten in place through a
 * memory mapping and read by a shell script after the process is gone):
 *   cornu-status 1\nrank=R\nsize=N\nhost=H\npid=P\nstate=<12 chars>\nstatus=<255 chars>\n */
#define RT_STATE_WIDTH 12
#define RT_STATUS_WIDTH (RT_STATUS_MAX - 1)

struct rt {
    MPI_Comm comm;
    int rank, size, local_rank, local_size;
    int blas_threads, cores;
    uint64_t seed;
    double timeout;
    bool verbose, we_initialised, oversub;
    /* Two status buffers: rt_status_set() writes the one not in use and then publishes it, so
     * that the SIGTERM handler (which may run on any thread) reads a complete line. */
    char status[2][RT_STATUS_MAX];
    atomic_int status_idx;
    /* The operation rt_wait() is blocked in (a string literal), for the SIGTERM report. */
    _Atomic(const char *) waiting;
    bool failed;
    err_info failure;
    char label[32]; /* "cornu: rank R", preformatted for the signal handler */
    char status_path[1024];
    char *map; /* the status file's mapping, or NULL */
    size_t map_len, map_state_off, map_status_off;
    bool term_installed;
    struct sigaction old_term;
};

/* The SIGTERM handler has no argument to find the runtime through, so the runtime registers
 * itself here for the time between rt_init() and rt_finalize(). This is the one mutable static
 * in cornu; it is part of the runtime that STYLE.md section 6 allows to be global. */
static _Atomic(rt *) rt__signal_target;

rt_config rt_config_default(void)
{
    rt_config c;
    memset(&c, 0, sizeof c);
    return c;
}

static int rt__mpi_err(err_info *e, int mpi_rc, const char *what)
{
    char s[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(mpi_rc, s, &len) != MPI_SUCCESS)
        snprintf(s, sizeof s, "MPI error %d", mpi_rc);
    return err_set(e, ERR_MPI, "%s: %s", what, s);
}

/* ---- status file ---- */

static void rt__map_put(char *map, size_t off, size_t width, const char *s)
{
    size_t n = strlen(s);
    if (n > width)
        n = width;
    memcpy(map + off, s, n);
    memset(map + off + n, ' ', width - n);
}

static void rt__set_state(rt *r, const char *state)
{
    if (r->map != NULL)
        rt__map_put(r->map, r->map_state_off, RT_STATE_WIDTH, state);
}

/* Creates <dir>/rank-R.status and maps it. Best effort by contract: any failure leaves
 * r->map NULL and the run goes on (the file is a diagnostic aid, not a result). */
static void rt__status_file_open(rt *r, const char *dir)
{
    /* The directory is not created here: on a multi-node run, a launcher's local temporary
     * directory does not exist on the other nodes, and files there would never be cleaned. */
    if (dir == NULL || dir[0] == '\0')
        return;
    int n = snprintf(r->status_path, sizeof r->status_path, "%s/rank-%d.status", dir, r->rank);
    if (n < 0 || (size_t)n >= sizeof r->status_path) {
        r->status_path[0] = '\0';
        return;
    }
    char host[MPI_MAX_PROCESSOR_NAME + 1] = "";
    int hlen = 0;
    if (MPI_Get_processor_name(host, &hlen) != MPI_SUCCESS)
        snprintf(host, sizeof host, "unknown");
    char head[MPI_MAX_PROCESSOR_NAME + 160];
    int hn = snprintf(head, sizeof head, "cornu-status 1\nrank=%d\nsize=%d\nhost=%s\npid=%ld\n",
                      r->rank, r->size, host, (long)getpid());
    if (hn < 0 || (size_t)hn >= sizeof head) {
        r->status_path[0] = '\0';
        return;
    }
    size_t state_off = (size_t)hn + strlen("state=");
    size_t status_off = state_off + RT_STATE_WIDTH + 1 + strlen("status=");
    size_t len = status_off + RT_STATUS_WIDTH + 1;
    int fd = open(r->status_path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        r->status_path[0] = '\0';
        return;
    }
    void *p = MAP_FAILED;
    if (ftruncate(fd, (off_t)len) == 0)
        p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd); /* the mapping keeps the file open */
    if (p == MAP_FAILED) {
        unlink(r->status_path);
        r->status_path[0] = '\0';
        return;
    }
    char *m = p;
    memcpy(m, head, (size_t)hn);
    memcpy(m + hn, "state=", strlen("state="));
    m[state_off + RT_STATE_WIDTH] = '\n';
    memcpy(m + state_off + RT_STATE_WIDTH + 1, "status=", strlen("status="));
    m[len - 1] = '\n';
    r->map = m;
    r->map_len = len;
    r->map_state_off = state_off;
    r->map_status_off = status_off;
    rt__set_state(r, "running");
    rt__map_put(m, status_off, RT_STATUS_WIDTH, "");
}

static void rt__status_file_close(rt *r, const char *state)
{
    if (r->map == NULL)
        return;
    rt__set_state(r, state);
    munmap(r->map, r->map_len);
    r->map = NULL;
}

/* ---- SIGTERM report ---- */

static void rt__append(char *buf, size_t cap, size_t *at, const char *s)
{
    size_t n = strlen(s);
    if (n > cap - *at)
        n = cap - *at;
    memcpy(buf + *at, s, n);
    *at += n;
}

/* Async-signal-safe: only atomics, strlen/memcpy/memset, write, sigaction and raise. Launchers
 * (mpirun, srun, Slurm at the time limit) stop the surviving ranks with SIGTERM, so this is
 * where a survivor says what it was doing when the job ended. */
static void rt__on_sigterm(int sig)
{
    rt *r = atomic_load(&rt__signal_target);
    if (r != NULL) {
        char buf[RT_STATUS_MAX + 512];
        size_t at = 0, cap = sizeof buf - 1;
        const char *status = r->status[atomic_load(&r->status_idx)];
        const char *waiting = atomic_load(&r->waiting);
        rt__append(buf, cap, &at, r->label);
        if (status[0] != '\0') {
            rt__append(buf, cap, &at, " [");
            rt__append(buf, cap, &at, status);
            rt__append(buf, cap, &at, "]");
        }
        rt__append(buf, cap, &at,
                   ": stopped by SIGTERM (the launcher ends all ranks when one fails, is "
                   "killed or the job hits its time limit)");
        if (waiting != NULL) {
            rt__append(buf, cap, &at, "; was waiting for ");
            rt__append(buf, cap, &at, waiting);
        }
        buf[at++] = '\n';
        ssize_t w = write(STDERR_FILENO, buf, at);
        (void)w;
        rt__set_state(r, "terminated");
    }
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, NULL);
    raise(sig);
}

/* ---- affinity and threads ---- */

static int rt__popcount(const unsigned char *m)
{
    int n = 0;
    for (size_t i = 0; i < RT_MASK_BYTES; i++)
        for (unsigned b = m[i]; b != 0; b &= b - 1)
            n++;
    return n;
}

static int rt__hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The CPUs this process may run on, from Linux's /proc/self/status "Cpus_allowed:" (a hex mask,
 * most significant group first, groups of 32 bits separated by commas). mpirun --bind-to,
 * srun --cpu-bind and cgroups all show up here. Falls back to all online CPUs. */
static void rt__mask_read(unsigned char *m)
{
    memset(m, 0, RT_MASK_BYTES);
    FILE *f = fopen("/proc/self/status", "r");
    char line[4096];
    bool found = false;
    while (f != NULL && fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, "Cpus_allowed:", 13) != 0)
            continue;
        size_t end = strlen(line);
        size_t bit = 0;
        for (size_t i = end; i > 13 && bit < RT_MAX_CPUS; i--) {
            int v = rt__hexval((unsigned char)line[i - 1]);
            if (v < 0)
                continue;
            for (int k = 0; k < 4 && bit < RT_MAX_CPUS; k++, bit++)
                if (v & (1 << k))
                    m[bit / 8] |= (unsigned char)(1u << (bit % 8));
        }
        found = rt__popcount(m) > 0;
        break;
    }
    if (f != NULL)
        fclose(f);
    if (!found) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        if (n < 1)
            n = 1;
        if (n > RT_MAX_CPUS)
            n = RT_MAX_CPUS;
        memset(m, 0, RT_MASK_BYTES);
        for (long i = 0; i < n; i++)
            m[i / 8] |= (unsigned char)(1u << (i % 8));
    }
}

/* Finds the local rank and size, this rank's cores and how many local ranks share them, by
 * exchanging affinity masks within the node: bound ranks (one core each, or PE=T cores each)
 * get their own cores; unbound ranks share the node's cores equally. */
static int rt__node_layout(rt *r, int *sharers, err_info *e)
{
    MPI_Comm node = MPI_COMM_NULL;
    unsigned char *all = NULL;
    unsigned char mine[RT_MASK_BYTES];
    int rc = ERR_OK;
    int mrc = MPI_Comm_split_type(r->comm, MPI_COMM_TYPE_SHARED, r->rank, MPI_INFO_NULL, &node);
    if (mrc != MPI_SUCCESS) {
        rc = rt__mpi_err(e, mrc, "MPI_Comm_split_type(SHARED)");
        goto done;
    }
    MPI_Comm_rank(node, &r->local_rank);
    MPI_Comm_size(node, &r->local_size);
    rt__mask_read(mine);
    r->cores = rt__popcount(mine);
    all = malloc((size_t)r->local_size * RT_MASK_BYTES);
    if (all == NULL) {
        rc = err_set(e, ERR_NOMEM, "affinity masks of %d local ranks", r->local_size);
        goto done;
    }
    MPI_Request req = MPI_REQUEST_NULL;
    mrc = MPI_Iallgather(mine, RT_MASK_BYTES, MPI_BYTE, all, RT_MASK_BYTES, MPI_BYTE, node, &req);
    if (mrc != MPI_SUCCESS) {
        rc = rt__mpi_err(e, mrc, "MPI_Iallgather of affinity masks");
        goto done;
    }
    if ((rc = rt_wait(r, 1, &req, MPI_Wtime(), "affinity mask exchange", e)) != ERR_OK)
        goto done;
    unsigned char uni[RT_MASK_BYTES];
    memset(uni, 0, sizeof uni);
    int share = 0;
    for (int i = 0; i < r->local_size; i++) {
        const unsigned char *o = all + (size_t)i * RT_MASK_BYTES;
        bool overlap = false;
        for (size_t b = 0; b < RT_MASK_BYTES; b++) {
            uni[b] |= o[b];
            if (o[b] & mine[b])
                overlap = true;
        }
        if (overlap)
            share++;
    }
    *sharers = share > 0 ? share : 1;
    r->oversub = r->local_size > rt__popcount(uni);
done:
    free(all);
    if (node != MPI_COMM_NULL)
        MPI_Comm_free(&node);
    return rc;
}

static int rt__env_threads(void)
{
    const char *s = getenv("OPENBLAS_NUM_THREADS");
    if (s == NULL || s[0] == '\0')
        return 0;
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (*end != '\0' || v < 1 || v > 4096)
        return 0;
    return (int)v;
}

/* ---- init / finalize ---- */

int rt_init(int *argc, char ***argv, const rt_config *c, rt **out, err_info *e)
{
    rt_config cfg = c != NULL ? *c : rt_config_default();
    rt *r = NULL;
    int rc = ERR_OK, init = 0, fin = 0;
    bool we_init = false;
    MPI_Finalized(&fin);
    if (fin)
        return err_set(e, ERR_USAGE, "rt_init: MPI was already finalised in this process");
    if (cfg.comm_timeout_s < 0 || cfg.blas_threads < 0)
        return err_set(e, ERR_USAGE, "rt_init: comm timeout %g s and BLAS threads %d must be >= 0",
                       cfg.comm_timeout_s, cfg.blas_threads);
    MPI_Initialized(&init);
    if (!init) {
        /* Open MPI 4.1's non-blocking allreduce (coll/libnbc) picks a binomial reduce + bcast
         * for every MPI_IN_PLACE call and below 4 ranks: the whole bucket goes through rank 0
         * twice. Rabenseifner's reduce-scatter + allgather moves (p-1)/p of it each way on
         * every rank and measured 1.4-2.2x faster for 64 KB..4 MB buckets on 2 ranks, as fast
         * as the blocking MPI_Allreduce (docs/cluster.md, section 3). Buckets smaller than the
         * rank count fall back to the ring. A value set by the user wins; other MPIs ignore it.
         * It must be in the environment before MPI_Init reads the MCA parameters. */
        setenv("OMPI_MCA_coll_libnbc_iallreduce_algorithm", "3", 0);
        int provided = MPI_THREAD_SINGLE;
        int mrc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
        if (mrc != MPI_SUCCESS)
            return rt__mpi_err(e, mrc, "MPI_Init_thread");
        we_init = true;
        if (provided < MPI_THREAD_FUNNELED) {
            rc = err_set(e, ERR_MPI, "MPI_Init_thread: MPI_THREAD_FUNNELED requested, got %d",
                         provided);
            goto done;
        }
    }
    r = calloc(1, sizeof *r);
    if (r == NULL) {
        rc = err_set(e, ERR_NOMEM, "rt_init: runtime");
        goto done;
    }
    r->comm = MPI_COMM_NULL;
    r->we_initialised = we_init;
    r->seed = cfg.seed;
    r->verbose = cfg.verbose_ranks;
    r->timeout = cfg.comm_timeout_s > 0 ? cfg.comm_timeout_s : RT_COMM_TIMEOUT_DEFAULT_S;
    atomic_init(&r->status_idx, 0);
    atomic_init(&r->waiting, NULL);
    int mrc = MPI_Comm_dup(MPI_COMM_WORLD, &r->comm);
    if (mrc != MPI_SUCCESS) {
        r->comm = MPI_COMM_NULL;
        rc = rt__mpi_err(e, mrc, "MPI_Comm_dup(MPI_COMM_WORLD)");
        goto done;
    }
    /* Errors come back as codes on our communicator so that they can be reported with the rank
     * and its status instead of Open MPI's default abort. */
    MPI_Comm_set_errhandler(r->comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(r->comm, &r->rank);
    MPI_Comm_size(r->comm, &r->size);
    snprintf(r->label, sizeof r->label, "cornu: rank %d", r->rank);
    int sharers = 1;
    if ((rc = rt__node_layout(r, &sharers, e)) != ERR_OK) {
        err_wrap(e, "rt_init: rank %d", r->rank);
        goto done;
    }
    int threads = cfg.blas_threads;
    if (threads == 0)
        threads = rt__env_threads();
    if (threads == 0)
        threads = r->cores / sharers > 1 ? r->cores / sharers : 1;
    openblas_set_num_threads(threads);
    r->blas_threads = threads;

    const char *dir = cfg.status_dir != NULL ? cfg.status_dir : getenv("CORNU_STATUS_DIR");
    rt__status_file_open(r, dir);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = rt__on_sigterm;
    sigemptyset(&sa.sa_mask);
    rt *expected = NULL;
    if (atomic_compare_exchange_strong(&rt__signal_target, &expected, r)) {
        if (sigaction(SIGTERM, &sa, &r->old_term) == 0)
            r->term_installed = true;
        else
            atomic_store(&rt__signal_target, NULL);
    }
    *out = r;
    r = NULL;
done:;
    /* After a timed-out collective MPI_Finalize could wait forever for the missing peer; a
     * process that exits without it makes the launcher end the job instead. */
    bool broken = r != NULL && r->failed;
    if (r != NULL) {
        rt__status_file_close(r, "failed");
        if (r->comm != MPI_COMM_NULL && !broken)
            MPI_Comm_free(&r->comm);
        free(r);
    }
    if (rc != ERR_OK && we_init && !broken)
        MPI_Finalize();
    return rc;
}

static void rt__release(rt *r, const char *state)
{
    if (r->term_installed) {
        sigaction(SIGTERM, &r->old_term, NULL);
        r->term_installed = false;
    }
    rt *self = r;
    atomic_compare_exchange_strong(&rt__signal_target, &self, NULL);
    rt__status_file_close(r, state);
}

void rt_finalize(rt *r)
{
    if (r == NULL)
        return;
    if (r->failed)
        rt_abort(r, 1, "%s", r->failure.msg);
    rt__release(r, "finished");
    MPI_Comm_free(&r->comm);
    if (r->we_initialised)
        MPI_Finalize();
    free(r);
}

/* ---- accessors ---- */

int rt_rank(const rt *r)
{
    return r->rank;
}

int rt_size(const rt *r)
{
    return r->size;
}

int rt_local_rank(const rt *r)
{
    return r->local_rank;
}

int rt_local_size(const rt *r)
{
    return r->local_size;
}

MPI_Comm rt_comm(const rt *r)
{
    return r->comm;
}

double rt_comm_timeout(const rt *r)
{
    return r->timeout;
}

int rt_blas_threads(const rt *r)
{
    return r->blas_threads;
}

void rt_blas_threads_set(rt *r, int n)
{
    CHECK(n >= 1);
    openblas_set_num_threads(n);
    r->blas_threads = n;
}

int rt_cores(const rt *r)
{
    return r->cores;
}

uint64_t rt_seed(const rt *r)
{
    return r->seed;
}

bool rt_verbose_ranks(const rt *r)
{
    return r->verbose;
}

bool rt_oversubscribed(const rt *r)
{
    return r->oversub;
}

const char *rt_status(const rt *r)
{
    return r->status[atomic_load(&r->status_idx)];
}

const char *rt_status_path(const rt *r)
{
    return r->map != NULL ? r->status_path : NULL;
}

void rt_rank_label(const rt *r, char *buf, size_t len)
{
    const char *s = rt_status(r);
    if (s[0] != '\0')
        snprintf(buf, len, "rank %d [%s]", r->rank, s);
    else
        snprintf(buf, len, "rank %d", r->rank);
}

/* ---- status, failure, abort ---- */

void rt_status_set(rt *r, const char *fmt, ...)
{
    int next = 1 - atomic_load_explicit(&r->status_idx, memory_order_relaxed);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->status[next], RT_STATUS_MAX, fmt, ap);
    va_end(ap);
    atomic_store_explicit(&r->status_idx, next, memory_order_release);
    if (r->map != NULL)
        rt__map_put(r->map, r->map_status_off, RT_STATUS_WIDTH, r->status[next]);
}

bool rt_failed(const rt *r)
{
    return r->failed;
}

int rt_failure(const rt *r, err_info *e)
{
    if (!r->failed)
        return ERR_OK;
    if (e != NULL)
        *e = r->failure;
    return (int)r->failure.code;
}

void rt_fail(rt *r, const err_info *e)
{
    if (r->failed) {
        /* The same failure with more context (a caller's err_wrap) replaces the record; any
         * other later error is a consequence of the first and is dropped. */
        size_t have = strlen(r->failure.msg), got = e != NULL ? strlen(e->msg) : 0;
        if (e != NULL && e->code == r->failure.code && got > have &&
            strcmp(e->msg + (got - have), r->failure.msg) == 0)
            r->failure = *e;
        return;
    }
    r->failed = true;
    if (e != NULL && e->code != ERR_OK)
        r->failure = *e;
    else
        err_set(&r->failure, ERR_INTERNAL, "runtime marked failed without an error");
    rt__set_state(r, "failed");
}

void rt_abort(rt *r, int code, const char *fmt, ...)
{
    char msg[ERR_MSG_MAX + 64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (r != NULL) {
        char label[RT_STATUS_MAX + 32];
        rt_rank_label(r, label, sizeof label);
        fprintf(stderr, "cornu: %s: %s\n", label, msg);
        /* The survivors are about to receive SIGTERM from the launcher; this rank is the one
         * that knows why, so its own report is the one above, not the signal handler's. */
        rt__release(r, "aborted");
    } else {
        fprintf(stderr, "cornu: %s\n", msg);
    }
    fflush(stdout);
    fflush(stderr);
    if (init && !fin)
        MPI_Abort(MPI_COMM_WORLD, code);
    exit(code);
}

/* ---- waiting ---- */

void rt_backoff(const rt *r, double waited_s, long *nap_ns)
{
    /* Open MPI progresses non-blocking collectives only inside MPI calls, and shared-memory
     * flags move only when the other rank runs: on a node with a core per rank, spinning for a
     * while gives the lowest latency (up to 0.1 s); after that, or at once when ranks share
     * cores, sleep between polls so that the rank we are waiting for gets the CPU. Sleeps grow
     * from ~1 us to 1 ms. */
    double spin = r->oversub ? 0.0 : 0.1;
    if (waited_s < spin)
        return;
    long cap = waited_s < 0.1 ? 100000L : 1000000L;
    *nap_ns = *nap_ns == 0 ? 1000L : (*nap_ns * 2 < cap ? *nap_ns * 2 : cap);
    struct timespec ts = {0, *nap_ns};
    nanosleep(&ts, NULL);
}

int rt_wait(rt *r, int n, MPI_Request *reqs, double since, const char *what, err_info *e)
{
    if (r->failed)
        return rt_failure(r, e);
    if (n == 0)
        return ERR_OK;
    int rc = ERR_OK;
    atomic_store(&r->waiting, what);
    /* Open MPI progresses non-blocking collectives only inside MPI calls, so this loop is what
     * drives them (pauses: rt_backoff). */
    long nap_ns = 0;
    double t0 = MPI_Wtime();
    err_info w = {ERR_OK, ""};
    for (;;) {
        int flag = 0;
        int mrc = MPI_Testall(n, reqs, &flag, MPI_STATUSES_IGNORE);
        if (mrc != MPI_SUCCESS) {
            rc = rt__mpi_err(&w, mrc, what);
            break;
        }
        if (flag)
            break;
        double now = MPI_Wtime();
        if (now - since > r->timeout) {
            rc = err_set(&w, ERR_PEER,
                         "%s did not complete within %g s (the comm timeout): another rank is "
                         "dead, stuck or far behind",
                         what, r->timeout);
            break;
        }
        rt_backoff(r, now - t0, &nap_ns);
    }
    if (rc != ERR_OK) {
        rt_fail(r, &w);
        if (e != NULL)
            *e = w;
    }
    atomic_store(&r->waiting, NULL);
    return rc;
}
