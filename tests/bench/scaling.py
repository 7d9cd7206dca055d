#!/usr/bin/python3
"""cornu's data-parallel scaling benchmark (issue 4, "Speed"), measured side by side in one run.

  /usr/bin/python3 tests/bench/scaling.py [--smoke] [--build-dir DIR] [--reps N] [--json FILE]
                                          [--log FILE] [--models mlp,cnn] [--bind core|none]

On the real Fashion-MNIST training set, Adam (Keras defaults), the built-in MLP (784-512-256-10)
and CNN, every rank with 1 OpenBLAS thread, it measures in one run, interleaved repetition by
repetition so that a noisy period of the shared machine hurts every measurement alike:

  * cornu 1 rank x 1 thread (batch 128) and 2 ranks x 1 thread (`mpirun -np 2 cornu train`):
    weak scaling (128 rows per rank, global batch 256) and strong scaling (global batch 128);
  * the ceiling of the weak-scaling speedup: two independent single-rank `cornu train`
    processes (batch 128 each, the same command as the 1x1 run) running at the same time with no
    communication; and, for reference, two independent `bench_gemm` processes (the step's GEMMs
    alone);
  * PyTorch: DistributedDataParallel with gloo, 2 processes x 1 thread, 128 rows per rank
    (tests/bench/ddp_torch.py), and PyTorch's best single-process 2-thread configuration at the
    same global batch 256 (tests/bench/bench_torch.py, in the configurations of tests/bench/run);
  * the gradient communication: a plain blocking MPI_Allreduce of the model's gradient bytes,
    cornu's bucketed reducers alone on the same bytes (tests/bench/scaling_comm.c: the default
    shared-memory one, `--allreduce shm`, and the MPI_Iallreduce one, `--allreduce mpi`), and a size
    sweep of MPI_Allreduce for the alpha-beta fit; against them the exposed communication and
    the allreduce time in flight that `cornu train --verbose-ranks` reports;
  * a --bucket-mb sweep of the 2x1 weak-scaling run;
  * an alpha-beta cost model with the latency and bandwidth fitted in this run, predicting the
    scaling efficiency at 8, 64 and 512 ranks for a 25M-parameter model.

Step times are per-epoch averages of `cornu train --verbose-ranks` over short epochs (windows of a
few steps; the first epoch is warm-up), and the best window over all repetitions is kept: the
machine is shared, and the best window is the one least disturbed by other processes. With each
number the runner records the 1-minute load average when its process started and the CPU time
other processes used while it ran ("foreign cores": 0 = a quiet machine, 2 = both cores taken).
Before each measurement it waits (up to --settle seconds) for a moment when other processes use
less than --quiet-cores, so that measurements fall into the machine's quieter periods.

--smoke runs a few steps of everything (well under a minute): it fails when a program fails,
never on the targets. Exit status: 0, 1 (a program failed), 77 (Fashion-MNIST missing, smoke
mode only, for CTest's SKIP_RETURN_CODE).
"""

import argparse
import importlib.machinery
import importlib.util
import json
import math
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PYTHON = "/usr/bin/python3"  # Debian's torch works with this interpreter only
FASHION = "/usr/share/datasets/fashion-mnist"

MODELS = {"mlp": ("fashion-mlp", 535818), "cnn": ("fashion-cnn", 225034)}  # name, parameters
BATCH = 128  # rows per rank (weak scaling) and the global batch of the strong-scaling runs
WEAK_TARGET = 0.95       # weak-scaling speedup / ceiling
DDP_TARGET = 2.0         # cornu 2x1 samples/s / PyTorch DDP 2x1 samples/s
TORCH2_TARGET = 1.5      # cornu 2x1 samples/s / PyTorch's best single process with 2 threads
HIDE_TARGET = 0.5        # 1 - exposed / plain allreduce
COMM_COST_TARGET = 1.1   # reducer's communication alone / plain allreduce
BUCKETS_FULL = [0.25, 0.5, 1, 2, 4]
BUCKETS_SMOKE = [0.25, 4]
# (epochs incl. 1 warm-up, steps per epoch) of every cornu run; DDP/torch (warmup, steps, windows)
FULL = {"mlp": {"cornu": (13, 10), "torch": (10, 10, 8)},
        "cnn": {"cornu": (9, 5), "torch": (3, 4, 4)}}
SMOKE = {"mlp": {"cornu": (2, 2), "torch": (1, 2, 1)},
         "cnn": {"cornu": (2, 2), "torch": (1, 1, 1)}}
# scaling_step (warm-up steps, steps, window) per model.
PROBE = {"mlp": (5, 60, 10), "cnn": (3, 20, 5)}
PROBE_SMOKE = (1, 4, 2)
# ASAN_OPTIONS: in sanitizer builds, Open MPI's own allocations (its shared-memory windows among
# them) are still held at exit; the comm tests run with the same setting (tests/comm).
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "ASAN_OPTIONS": "detect_leaks=0"}
# The 25M-parameter model of the cost model and the cluster links docs/cluster.md assumes.
BIG_PARAMS = 25_000_000
BIG_RANKS = (8, 64, 512)
NODE_RANKS = 8  # ranks (cores) per node assumed by the prediction
NETWORKS = [("10 GbE TCP (assumed: alpha 50 us, 1.1 GB/s)", 50e-6, 1 / 1.1e9),
            ("100 Gb/s InfiniBand (assumed: alpha 3 us, 11 GB/s)", 3e-6, 1 / 11e9)]

VERBOSE_RE = re.compile(r"rank (\d+): step ([\d.]+) ms = compute ([\d.]+) ms \+ exposed comm "
                        r"([\d.]+) ms \+ data ([\d.]+) ms \(allreduce in flight ([\d.]+) ms/step\)")


class Failure(Exception):
    pass


def load_bench_run():
    """tests/bench/run (bench's single-process runner) as a module, for its PyTorch configs."""
    path = os.path.join(HERE, "run")
    loader = importlib.machinery.SourceFileLoader("bench_run", path)
    spec = importlib.util.spec_from_loader("bench_run", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def cpu_busy_s():
    """Seconds of CPU time the whole machine has spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def foreign_now(interval=0.5):
    """Cores kept busy by other processes right now (none of ours runs between measurements)."""
    b0, t0 = cpu_busy_s(), time.monotonic()
    time.sleep(interval)
    return (cpu_busy_s() - b0) / (time.monotonic() - t0)


class Meter:
    """Load around one measurement: the 1-minute load average at the start and the cores that
    processes other than ours kept busy meanwhile (machine busy time minus our children's CPU
    time, over the wall time). Our children are only counted once they are waited for, so a
    Meter must span whole processes."""

    def __init__(self):
        self.load = os.getloadavg()[0]
        self.t0, self.busy0, self.own0 = time.monotonic(), cpu_busy_s(), children_cpu_s()

    def stop(self):
        wall = max(time.monotonic() - self.t0, 1e-9)
        busy, own = cpu_busy_s() - self.busy0, children_cpu_s() - self.own0
        return {"load": self.load, "foreign": max(0.0, (busy - own) / wall), "wall_s": wall}


class Proc:
    """A started program whose output lines are timestamped as they arrive."""

    def __init__(self, cmd, env_extra, log):
        env = dict(os.environ)
        env.update(env_extra)
        self.shown = (" ".join(f"{k}={v}" for k, v in env_extra.items()) + " " +
                      shlex.join(cmd)).strip()
        self.log = log
        self.lines = []
        self.t_start = time.monotonic()
        self.p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, bufsize=1)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait(self, timeout):
        try:
            rc = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = self.p.wait()
            self.lines.append((time.monotonic(), f"(killed after {timeout} s)"))
        self.reader.join()
        text = "\n".join(line for _, line in self.lines)
        self.log.write(f"$ {self.shown}\n{text}\n(exit {rc}, "
                       f"{time.monotonic() - self.t_start:.1f} s)\n")
        self.log.flush()
        if rc != 0:
            raise Failure(f"{self.shown}: exit status {rc}\n{text[-3000:]}")
        return text


def results_of(text):
    """Every 'RESULT k=v ...' line as a dict (numbers as floats)."""
    out = []
    for line in text.splitlines():
        if line.startswith("RESULT "):
            d = {}
            for kv in line.split()[1:]:
                k, _, v = kv.partition("=")
                try:
                    d[k] = float(v)
                except ValueError:
                    d[k] = v
            out.append(d)
    return out


def windows_of(proc, ranks):
    """The epochs of a `cornu train --verbose-ranks` run as timing windows, warm-up epoch
    dropped: [{"t0", "t1", "step_ms", "ranks": [(step, compute, exposed, data, inflight)]}]."""
    epochs, cur = [], []
    for t, line in proc.lines:
        m = VERBOSE_RE.search(line)
        if not m:
            continue
        cur.append((t, [float(x) for x in m.groups()[1:]]))
        if len(cur) == ranks:
            epochs.append((cur[0][0], [v for _, v in cur]))
            cur = []
    if len(epochs) < 2:
        raise Failure(f"{proc.shown}: expected at least 2 epochs of --verbose-ranks lines, "
                      f"found {len(epochs)}")
    wins = []
    for (t_prev, _), (t, rs) in zip(epochs, epochs[1:]):
        wins.append({"t0": t_prev, "t1": t, "step_ms": max(r[0] for r in rs), "ranks": rs})
    return wins


class Bench:
    def __init__(self, args, log):
        self.args, self.log = args, log
        self.sizes = SMOKE if args.smoke else FULL
        self.cornu = os.path.join(args.build_dir, "launch", "cornu") if not args.cornu \
            else args.cornu
        self.comm = args.scaling_comm or os.path.join(args.build_dir, "tests", "bench",
                                                      "scaling_comm")
        self.gemm = args.bench_gemm or os.path.join(args.build_dir, "tests", "bench",
                                                    "bench_gemm")
        self.step = args.scaling_step or os.path.join(args.build_dir, "tests", "bench",
                                                      "scaling_step")
        self.mpirun = ["mpirun", "-np", "2", "--oversubscribe"] + (
            ["--bind-to", "none"] if args.bind == "none" else [])
        self.runs = {}  # key -> list of {"wins"| results, "meter"}
        self.failed = []  # PyTorch runs left out

    def tolerant(self, fn, *a, **kw):
        """PyTorch runs are the peers, not the subject: in a full run a failed one is retried
        once and then left out (reported), instead of losing the whole run. Smoke runs fail."""
        for attempt in range(1 if self.args.smoke else 2):
            try:
                return fn(*a, **kw)
            except Failure as f:
                if self.args.smoke:
                    raise
                print(f"scaling: warning: {'retrying' if attempt == 0 else 'left out'}: "
                      f"{str(f)[-1500:]}", file=sys.stderr)
        self.failed.append(f"{fn.__name__}{a}")
        return None

    def settle(self):
        """Waits (at most --settle seconds) until other processes use less than --quiet-cores,
        so that measurements fall into the machine's quieter moments."""
        t_end = time.monotonic() + self.args.settle
        while time.monotonic() < t_end and foreign_now() > self.args.quiet_cores:
            pass

    def add(self, key, rec):
        self.runs.setdefault(key, []).append(rec)

    # ---- cornu ----
    def cornu_cmd(self, model, extra):
        epochs, steps = self.sizes[model]["cornu"]
        return [self.cornu, "train", MODELS[model][0], "--optimizer", "adam", "--epochs",
                str(epochs), "--steps-per-epoch", str(steps), "--verbose-ranks", "--quiet",
                "--threads", "1"] + extra

    def run_single(self, model):
        self.settle()
        m = Meter()
        p = Proc(self.cornu_cmd(model, ["--batch-size", str(BATCH)]), MPI_ENV, self.log)
        p.wait(600)
        self.add((model, "1x1"), {"wins": windows_of(p, 1), **m.stop()})

    def run_pair(self, model):
        """Two independent single-rank processes at once: the weak-scaling ceiling. Only windows
        inside the interval where both were past warm-up and still running count."""
        self.settle()
        m = Meter()
        ps = [Proc(self.cornu_cmd(model, ["--batch-size", str(BATCH)]), MPI_ENV, self.log)
              for _ in range(2)]
        for p in ps:
            p.wait(600)
        ws = [windows_of(p, 1) for p in ps]
        lo, hi = max(w[0]["t0"] for w in ws), min(w[-1]["t1"] for w in ws)
        inside = [[x for x in w if x["t0"] >= lo and x["t1"] <= hi] for w in ws]
        if not all(inside):  # too short to overlap (smoke): every window, flagged
            inside = ws
        self.add((model, "pair"), {"wins": inside, **m.stop()})

    def run_dist(self, model, key, extra):
        self.settle()
        m = Meter()
        p = Proc(self.mpirun + self.cornu_cmd(model, extra), MPI_ENV, self.log)
        p.wait(600)
        self.add((model, key), {"wins": windows_of(p, 2), **m.stop()})

    # ---- GEMMs alone ----
    def gemm_cmd(self, model):
        it = ["--iters", "2", "--reps", "1", "--peak", "0"] if self.args.smoke else \
            ["--iters", "30", "--reps", "10" if model == "mlp" else "3", "--peak", "0"]
        return [self.gemm, "--model", model, "--threads", "1", "--batch", str(BATCH), *it]

    def run_gemm(self, model):
        self.settle()
        m = Meter()
        p = Proc(self.gemm_cmd(model), MPI_ENV, self.log)
        r = results_of(p.wait(600))[-1]
        self.add((model, "gemm1"), {"res": [r], **m.stop()})
        self.settle()
        m = Meter()
        ps = [Proc(self.gemm_cmd(model), MPI_ENV, self.log) for _ in range(2)]
        rs = [results_of(p.wait(600))[-1] for p in ps]
        self.add((model, "gemm_pair"), {"res": rs, **m.stop()})

    def run_peak(self):
        self.settle()
        m = Meter()
        p = Proc([self.gemm, "--model", "mlp", "--threads", "1", "--iters", "1", "--reps", "1",
                  "--peak", "256" if self.args.smoke else "1024"], MPI_ENV, self.log)
        self.add(("peak",), {"res": results_of(p.wait(600)), **m.stop()})

    # ---- communication alone ----
    def run_comm(self, allreduce):
        """scaling_comm with cornu's shared-memory reducer ("comm", plus the size sweep of the
        plain allreduce) or its MPI reducer ("comm_mpi")."""
        self.settle()
        m = Meter()
        sizes = [MODELS[k][1] for k in MODELS]
        if allreduce == "shm" and not self.args.smoke:
            sizes.append(BIG_PARAMS)  # the cost model's node memory traffic, out of cache
        floats = ",".join(str(x) for x in sizes)
        sweep = ["--sweep"] if allreduce == "shm" else []
        p = Proc(self.mpirun + [self.comm, "--floats", floats, "--bucket-mb",
                                ",".join(f"{b:g}" for b in self.buckets()), "--reps",
                                "5" if self.args.smoke else "100", "--allreduce", allreduce]
                 + sweep, MPI_ENV, self.log)
        key = ("comm",) if allreduce == "shm" else ("comm_mpi",)
        self.add(key, {"res": results_of(p.wait(600)), **m.stop()})

    def run_probe(self, model, mb, allreduce):
        """tests/bench/scaling_step: the 2x1 weak step with every communication call timed,
        with cornu's shared-memory reducer (allreduce="shm", the default of `cornu train` on
        one node) or its MPI_Iallreduce reducer ("mpi")."""
        wu, st, wi = PROBE_SMOKE if self.args.smoke else PROBE[model]
        self.settle()
        m = Meter()
        p = Proc(self.mpirun + [self.step, "--allreduce", allreduce, "--model", model, "--per-rank-batch", str(BATCH),
                                      "--bucket-mb", f"{mb:g}", "--warmup", str(wu), "--steps",
                                      str(st), "--window", str(wi)], MPI_ENV, self.log)
        self.add((model, "probe", mb, allreduce), {"res": results_of(p.wait(600)), **m.stop()})

    def buckets(self):
        return BUCKETS_SMOKE if self.args.smoke else BUCKETS_FULL

    # ---- PyTorch ----
    def run_ddp(self, model):
        wu, st, wi = self.sizes[model]["torch"]
        self.settle()
        m = Meter()
        p = Proc([PYTHON, os.path.join(HERE, "ddp_torch.py"), "--model", model, "--nprocs", "2",
                  "--per-rank-batch", str(BATCH), "--warmup", str(wu), "--steps", str(st),
                  "--windows", str(wi), "--foreach", "--timeout",
                  "60" if self.args.smoke else "300"] + (["--pin"] if self.args.bind == "core"
                                                        else []), {}, self.log)
        self.add((model, "ddp"), {"res": results_of(p.wait(900)), **m.stop()})

    def run_torch2(self, model, cfg, screen=False):
        label, threads, extra, env = cfg
        wu, st, wi = self.sizes[model]["torch"]
        if screen:
            wi, extra = 1, extra + ["--max-seconds", "5"]
        self.settle()
        m = Meter()
        p = Proc([PYTHON, os.path.join(HERE, "bench_torch.py"), "--model", model, "--threads",
                  str(threads), "--batch", str(2 * BATCH), "--warmup", str(wu), "--steps",
                  str(st), "--windows", str(wi), *extra], env, self.log)
        r = results_of(p.wait(900))[-1]
        r["config"] = label
        self.add((model, "torch2", label), {"res": [r], **m.stop()})


# ---- reductions over repetitions ----

def best_window(recs):
    """The fastest window over every run of a measurement, with its run's load."""
    best = None
    for rec in recs:
        for w in rec["wins"]:
            if best is None or w["step_ms"] < best[0]["step_ms"]:
                best = (w, rec)
    w, rec = best
    return dict(w, load=rec["load"], foreign=rec["foreign"])


def pair_ceiling(recs):
    """Per-process step time of the pair: the slower process's best window (the 2-rank job is
    as fast as its slower rank), best over repetitions."""
    best = None
    for rec in recs:
        per = [min(x["step_ms"] for x in w) for w in rec["wins"]]
        v = max(per)
        if best is None or v < best[0]:
            best = (v, rec)
    return {"step_ms": best[0], "load": best[1]["load"], "foreign": best[1]["foreign"]}


def best_res(recs, key, field, lower=True, **match):
    best = None
    for rec in recs:
        for r in rec["res"]:
            if r.get("kind", key) != key or any(r.get(k) != v for k, v in match.items()):
                continue
            if best is None or (r[field] < best[0][field]) == lower:
                best = (r, rec)
    if best is None:
        return None
    r, rec = best
    return dict(r, load=rec["load"], foreign=rec["foreign"])


def fit_alpha_beta(recs):
    """alpha: half the best time of a 4-byte allreduce (2 (p-1) alpha at p = 2); beta: the
    least-squares slope of the best times over 64 KiB .. 4 MiB (2 (p-1)/p n beta = n beta)."""
    pts = {}
    for rec in recs:
        for r in rec["res"]:
            if r.get("kind") == "sweep":
                b = int(r["bytes"])
                pts[b] = min(pts.get(b, 1e30), r["best_us"] * 1e-6)
    alpha = pts[min(pts)] / 2
    xs = [b for b in sorted(pts) if 65536 <= b <= 4 << 20]
    if len(xs) < 2:
        xs = sorted(pts)[-2:]
    ys = [pts[b] for b in xs]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    beta = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return alpha, max(beta, 1e-15), my - beta * mx, pts


def two_level_time(p, per_node, nbytes, buckets, alpha, beta, gamma):
    """cornu's gradient sum on p ranks, per_node ranks per node: the shared-memory sum within
    the node (2 per_node nbytes of memory traffic at gamma s/byte), then, with N > 1 nodes, the
    per_node bucket owners of each node run a ring allreduce over the N nodes on their nbytes /
    per_node bytes (buckets / per_node messages each) through the node's one link."""
    L = min(per_node, p)
    nodes = max(1, p // L)
    t = gamma * 2 * L * nbytes
    if nodes > 1:
        t += math.ceil(buckets / L) * 2 * (nodes - 1) * alpha + \
            2 * (nodes - 1) / nodes * nbytes * beta
    return t


def ring_time(p, nbytes, buckets, alpha, beta):
    """Ring allreduce of nbytes in `buckets` messages: 2 (p-1) alpha per bucket plus
    2 (p-1)/p n beta for the bytes."""
    return buckets * 2 * (p - 1) * alpha + 2 * (p - 1) / p * nbytes * beta


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--smoke", action="store_true", help="a few steps of everything")
    ap.add_argument("--build-dir", default=os.path.join(REPO, "build", "release"),
                    help="a cmake build directory (default: build/release)")
    ap.add_argument("--cornu", help="the cornu executable (default: in --build-dir)")
    ap.add_argument("--scaling-comm", help="scaling_comm executable (default: in --build-dir)")
    ap.add_argument("--bench-gemm", help="bench_gemm executable (default: in --build-dir)")
    ap.add_argument("--scaling-step", help="scaling_step executable (default: in --build-dir)")
    ap.add_argument("--reps", type=int, default=4, help="repetitions (best window is kept)")
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--bind", choices=["core", "none"], default="core",
                    help="core: mpirun's default binding for 2 ranks (one core each; DDP ranks "
                         "are pinned alike); none: --bind-to none, DDP unpinned")
    ap.add_argument("--settle", type=float, default=None,
                    help="before each measurement wait up to this many seconds for the machine "
                         "to be quiet (default 30, 0 with --smoke)")
    ap.add_argument("--quiet-cores", type=float, default=0.3,
                    help="'quiet': other processes use less than this many cores (default 0.3)")
    ap.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    ap.add_argument("--json", help="also write every measurement to this JSON file")
    ap.add_argument("--log", help="write every command and its output here")
    args = ap.parse_args()
    if args.settle is None:
        args.settle = 0.0 if args.smoke else 30.0

    b = Bench(args, open(args.log, "w") if args.log else open(os.devnull, "w"))
    for path in (b.cornu, b.comm, b.gemm, b.step):
        if not os.access(path, os.X_OK):
            print(f"scaling: {path} not found: build it first (cmake --build {args.build_dir} "
                  f"--target cornu scaling_comm scaling_step bench_gemm), or pass --build-dir", file=sys.stderr)
            return 1
    if not any(os.path.exists(os.path.join(FASHION, "train-images-idx3-ubyte" + s))
               for s in (".gz", "")):
        print(f"SKIP: Fashion-MNIST not found in {FASHION} (apt-get install dataset-fashion-mnist)")
        return 77 if args.smoke else 1
    models = args.models.split(",")
    for m in models:
        if m not in MODELS:
            ap.error(f"--models: unknown model {m!r} (mlp, cnn)")
    reps = 1 if args.smoke else max(1, args.reps)
    bench_run = None
    torch_ok = False
    if not args.no_torch:
        try:
            bench_run = load_bench_run()
            torch_ok = bench_run.have_torch()
        except Exception as ex:  # bench's runner is another engineer's file: degrade, say so
            print(f"scaling: cannot use tests/bench/run ({ex}): PyTorch left out", file=sys.stderr)
    default_mb = None
    try:
        h = subprocess.run([b.cornu, "train", "--help"], capture_output=True, text=True)
        mm = re.search(r"--bucket-mb MB.*\(default: ([\d.]+)\)", h.stdout + h.stderr)
        default_mb = float(mm.group(1)) if mm else None
    except OSError:
        pass

    t_begin = time.time()
    load_begin = os.getloadavg()
    try:
        torch2_cfgs = {}
        if torch_ok:
            cfgs = bench_run.TORCH_CONFIGS[2]
            for m in models:
                if args.smoke:
                    torch2_cfgs[m] = cfgs[:1]
                    continue
                for cfg in cfgs:  # screen every configuration once, keep the best two
                    b.tolerant(b.run_torch2, m, cfg, screen=True)
                torch2_cfgs[m] = sorted(
                    cfgs, key=lambda c: -b.runs[(m, "torch2", c[0])][0]["res"][0]["samples_per_s"]
                    if (m, "torch2", c[0]) in b.runs else 0)[:2]
        b.run_peak()
        for rep in range(reps):
            b.run_comm("shm")
            b.run_comm("mpi")
            for m in models:
                b.run_single(m)
                b.run_pair(m)
                b.run_dist(m, "weak", ["--per-rank-batch", str(BATCH)])
                b.run_dist(m, "strong", ["--batch-size", str(BATCH)])
                for mb in b.buckets():
                    if mb != default_mb:  # the default is the weak-scaling run itself
                        b.run_dist(m, ("bucket", mb), ["--per-rank-batch", str(BATCH),
                                                        "--bucket-mb", f"{mb:g}"])
                for mb in b.buckets():
                    b.run_probe(m, mb, "shm")
                    b.run_probe(m, mb, "mpi")
                b.run_gemm(m)
                if torch_ok:
                    b.tolerant(b.run_ddp, m)
                    for cfg in torch2_cfgs[m]:
                        b.tolerant(b.run_torch2, m, cfg)
    except Failure as f:
        print(f"scaling: FAILED: {f}", file=sys.stderr)
        return 1

    report, data = summarize(b, models, torch_ok, default_mb, reps, t_begin, load_begin)
    print("\n".join(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": data, "report": report,
                       "runs": {"/".join(map(str, k)): v for k, v in b.runs.items()}}, f, indent=1)
    return 0


def summarize(b, models, torch_ok, default_mb, reps, t_begin, load_begin):
    smoke = b.args.smoke
    out, data = [], {}
    p = out.append

    def verdict(ok):
        return "" if smoke else ("PASS" if ok else "MISS")

    def ld(r):
        return f"[load {r['load']:.1f}, foreign {r['foreign']:.1f} cores]"

    title = "SMOKE RUN (a few steps: numbers are not measurements, targets not checked)" \
        if smoke else "cornu scaling benchmark"
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    p(f"{title}: Fashion-MNIST train set, Adam, 1 OpenBLAS thread per rank, "
      f"{platform.node()} ({os.cpu_count()} cores, {cpu}), {time.strftime('%Y-%m-%d %H:%M')}")
    p(f"{reps} repetition(s), interleaved; best window of each measurement (epochs of "
      + ", ".join(f"{m}: {b.sizes[m]['cornu'][1]} steps" for m in models)
      + "; first epoch dropped); mpirun binding: "
      + ("default (--bind-to core)" if b.args.bind == "core" else "--bind-to none"))
    p(f"load average (1/5/15 min) at start {load_begin[0]:.1f}/{load_begin[1]:.1f}/"
      f"{load_begin[2]:.1f}; [load L, foreign F cores] after a number: 1-min load average when "
      f"its run started (includes this benchmark's previous process) and the cores other "
      f"processes kept busy during that run")

    # ---- communication alone, alpha-beta ----
    comm = b.runs[("comm",)]
    alpha, beta, icpt, pts = fit_alpha_beta(comm)
    data["alpha_s"], data["beta_s_per_byte"] = alpha, beta
    comm_mpi = b.runs[("comm_mpi",)]
    plain, reducer, reducer_mpi = {}, {}, {}
    for m in models:
        n = MODELS[m][1]
        plain[m] = best_res(comm, "plain", "best_us", floats=float(n))
        reducer[m] = {mb: best_res(comm, "bucketed", "best_us", floats=float(n),
                                   bucket_mb=float(mb)) for mb in b.buckets()}
        reducer_mpi[m] = {mb: best_res(comm_mpi, "bucketed", "best_us", floats=float(n),
                                       bucket_mb=float(mb)) for mb in b.buckets()}

    # ---- scaling ----
    p("")
    p("1. Scaling, 2 ranks x 1 thread vs 1 rank x 1 thread (step = per-step time of the "
      "slowest rank, ms)")
    res = {}
    for m in models:
        r1 = best_window(b.runs[(m, "1x1")])
        rp = pair_ceiling(b.runs[(m, "pair")])
        rw = best_window(b.runs[(m, "weak")])
        rs = best_window(b.runs[(m, "strong")])
        res[m] = (r1, rp, rw, rs)
        for label, r in ((f"1x1, batch {BATCH}", r1),
                         (f"pair: two 1x1 at once (ceiling)", rp),
                         (f"2x1 weak, {BATCH} per rank", rw),
                         (f"2x1 strong, {BATCH // 2} per rank", rs)):
            p(f"   {m if label.startswith('1x1') else '':<5}{label:<36}{r['step_ms']:>8.2f} ms  "
              f"{ld(r)}")
    p("")
    for m in models:
        r1, rp, rw, rs = res[m]
        ceil = 2 * r1["step_ms"] / rp["step_ms"]
        weak = 2 * r1["step_ms"] / rw["step_ms"]
        strong = r1["step_ms"] / rs["step_ms"]
        g1 = best_res(b.runs[(m, "gemm1")], "gemm", "gemm_s", model=m)
        gp = [max(r["gemm_s"] for r in rec["res"]) for rec in b.runs[(m, "gemm_pair")]]
        gceil = 2 * g1["gemm_s"] / min(gp)
        frac = weak / ceil
        data[m] = {"step_1x1_ms": r1["step_ms"], "step_pair_ms": rp["step_ms"],
                   "step_weak_ms": rw["step_ms"], "step_strong_ms": rs["step_ms"],
                   "ceiling": ceil, "gemm_ceiling": gceil, "weak_speedup": weak,
                   "strong_speedup": strong, "weak_of_ceiling": frac}
        p(f"   {m}: weak-scaling speedup {weak:.2f}x, ceiling {ceil:.2f}x (two independent 1x1 "
          f"training processes at once) -> {frac:.1%} of the ceiling (target >= "
          f"{WEAK_TARGET:.0%}) {verdict(frac >= WEAK_TARGET)}")
        p(f"        GEMM-only ceiling {gceil:.2f}x (two bench_gemm at once: "
          f"{1e3 * g1['gemm_s']:.2f} ms alone, {1e3 * min(gp):.2f} ms each together); "
          f"strong-scaling speedup {strong:.2f}x ({strong / ceil:.1%} of the ceiling)")

    # ---- where the 2x1 step goes ----
    def probe(m, mb, tun):
        """(exposed: min over repetitions of the median step's exposed communication, record)"""
        best = None
        for rec in b.runs.get((m, "probe", mb, tun), []):
            for r in rec["res"]:
                if r.get("kind") == "exposed" and (best is None or
                                                   r["last_median_ms"] < best[0]["last_median_ms"]):
                    best = (r, rec)
        return best

    def probe_ranks(rec, kind="median"):
        return [r for r in rec["res"] if r.get("kind") == kind]

    dmb = default_mb if default_mb in b.buckets() else b.buckets()[-1]
    p("")
    p(f"2. Gradient communication per step (2x1 weak, {dmb:g} MB buckets), all in ms")
    p("   plain = one blocking MPI_Allreduce of the gradient bytes; reducer = cornu's bucketed "
      "reducer alone on the same bytes, nothing to overlap (scaling_comm, best of the "
      "interleaved repetitions)")
    p("   exposed = time the rank that reached the update last spent in gradient communication "
      "(comm_reducer_ready + comm_reducer_finish; scaling_step, median step, best repetition); "
      "cost vs ceiling = 2x1 weak step - pair step")
    for m in models:
        n = MODELS[m][1]
        pl = plain[m]["best_us"] / 1e3
        rd = reducer[m][dmb]
        pe = probe(m, dmb, "shm")
        exp = pe[0]["last_median_ms"]
        pm = probe(m, dmb, "mpi")
        hidden = 1 - exp / pl
        cost = rd["best_us"] / 1e3 / pl
        over = res[m][2]["step_ms"] - res[m][1]["step_ms"]
        data[m].update({"plain_ms": pl, "reducer_ms": rd["best_us"] / 1e3, "exposed_ms": exp,
                        "hidden": hidden, "comm_cost_ratio": cost, "cost_vs_ceiling_ms": over})
        p(f"   {m}: {n} floats = {4 * n / 1e6:.2f} MB in {int(rd['buckets'])} bucket(s): plain "
          f"{pl:.3f} {ld(plain[m])}, reducer {rd['best_us'] / 1e3:.3f}; exposed {exp:.3f} "
          f"{ld(pe[1])}; cost vs ceiling {over:.2f}")
        for r in probe_ranks(pe[1]):
            p(f"        rank {int(r['rank'])} median step {r['step_ms']:.3f}: ready "
              f"{r['ready_ms']:.3f} (last call {r['last_ms']:.3f}) + finish {r['finish_ms']:.3f}"
              f"; agree {r['agree_ms']:.3f}, metrics sum {r['sum_ms']:.3f}")
        for k, r in enumerate(res[m][2]["ranks"]):
            p(f"        cornu train --verbose-ranks, rank {k}: compute {r[1]:.2f} + exposed comm "
              f"{r[2]:.2f} + data {r[3]:.2f} = step {r[0]:.2f}, in flight {r[4]:.2f} (exposed "
              f"= finish + agreement + time in ready calls)")
        p(f"        for comparison, --allreduce mpi (MPI_Iallreduce per bucket): reducer alone "
          f"{reducer_mpi[m][dmb]['best_us'] / 1e3:.3f}, exposed {pm[0]['last_median_ms']:.3f}")
        p(f"        hidden by bucketing and overlap: 1 - exposed/plain = {hidden:.0%} (target >= "
          f"{HIDE_TARGET:.0%}) {verdict(hidden >= HIDE_TARGET)}; total communication cost "
          f"reducer/plain = {cost:.2f}x (target <= {COMM_COST_TARGET}x) "
          f"{verdict(cost <= COMM_COST_TARGET)}")

    # ---- PyTorch ----
    if torch_ok:
        p("")
        p(f"3. cornu 2x1 vs PyTorch (global batch {2 * BATCH}: {BATCH} rows per rank for the "
          f"2-rank jobs; samples/s of the best window)")
        for m in models:
            rw = res[m][2]
            cs = 2 * BATCH / rw["step_ms"] * 1e3
            dd = best_res(b.runs.get((m, "ddp"), []), "ddp", "samples_per_s", lower=False)
            t2 = None  # the best 2-thread configuration, screening windows included
            for key, recs in b.runs.items():
                if key[:2] == (m, "torch2"):
                    r = best_res(recs, "torch", "samples_per_s", lower=False)
                    if r is not None and (t2 is None or r["samples_per_s"] > t2["samples_per_s"]):
                        t2 = r
            tgt = m == "mlp"
            data[m]["cornu_2x1_sps"] = cs
            p(f"   {m}: cornu 2x1 {cs:8.0f} {ld(rw)}")
            if dd is None:
                p("        PyTorch DDP 2x1 gloo: no result (failed, see the warnings)")
            else:
                rd = cs / dd["samples_per_s"]
                data[m].update({"ddp_sps": dd["samples_per_s"], "vs_ddp": rd})
                p(f"        PyTorch DDP 2x1 gloo {dd['samples_per_s']:8.0f} {ld(dd)} -> cornu "
                  f"{rd:.2f}x" + (f" (target >= {DDP_TARGET:.0f}x) {verdict(rd >= DDP_TARGET)}"
                                  if tgt else ""))
            if t2 is None:
                p("        PyTorch 1 process x 2 threads: no result (failed, see the warnings)")
            else:
                r2 = cs / t2["samples_per_s"]
                data[m].update({"torch2_sps": t2["samples_per_s"], "torch2_config": t2["config"],
                                "vs_torch2": r2})
                p(f"        PyTorch best 1 process x 2 threads {t2['samples_per_s']:8.0f} "
                  f"{ld(t2)} ({t2['config']}) -> cornu {r2:.2f}x" +
                  (f" (target >= {TORCH2_TARGET}x) {verdict(r2 >= TORCH2_TARGET)}" if tgt else ""))
        if b.failed:
            p("   left out after failing twice: " + "; ".join(b.failed))

    # ---- bucket sweep ----
    p("")
    p(f"4. --bucket-mb sweep, 2x1 weak (ms): cornu train step (best window); scaling_step "
      f"median step and exposed communication and the reducer alone, for --allreduce shm and "
      f"mpi"
      + (f"; default {default_mb:g} MB" if default_mb else ""))
    sweep = {}
    for m in models:
        p(f"   {m}: {'MB':>6}{'buckets':>9}{'step':>8}{'shm: step':>11}{'exposed':>9}"
          f"{'alone':>8}{'mpi: step':>11}{'exposed':>9}{'alone':>8}")
        for mb in b.buckets():
            w = best_window(b.runs[(m, ("bucket", mb) if mb != default_mb else "weak")])
            nb = math.ceil(4 * MODELS[m][1] / (mb * 1024 * 1024))
            cols = []
            for how in ("shm", "mpi"):
                pe = probe(m, mb, how)
                cols.append((max(r["step_ms"] for r in probe_ranks(pe[1])),
                             pe[0]["last_median_ms"]))
            sweep[(m, mb)] = {"step": w["step_ms"], "shm": cols[0], "mpi": cols[1]}
            p(f"        {mb:>6g}{nb:>9}{w['step_ms']:>8.2f}{cols[0][0]:>11.2f}{cols[0][1]:>9.3f}"
              f"{reducer[m][mb]['best_us'] / 1e3:>8.3f}{cols[1][0]:>11.2f}{cols[1][1]:>9.3f}"
              f"{reducer_mpi[m][mb]['best_us'] / 1e3:>8.3f}")
    data["sweep"] = {f"{m}/{mb:g}": v for (m, mb), v in sweep.items()}
    best = {m: min(b.buckets(), key=lambda mb: sweep[(m, mb)]["step"]) for m in models}
    p("   fastest cornu train step: " + ", ".join(f"{m} {best[m]:g} MB" for m in models) +
      " (buckets >= the gradient size are all one bucket: their spread is noise)")

    # ---- cost model ----
    p("")
    p("5. Cost model (alpha-beta), for cornu's two-level gradient sum: within a node the "
      "shared-memory sum, between nodes a ring allreduce among the bucket owners")
    swp = ", ".join(f"{n if n < 1024 else str(n // 1024) + 'K'}B {t * 1e6:.1f}us"
                    for n, t in sorted(pts.items()))
    p(f"   plain MPI_Allreduce measured here (2 ranks, shared memory, best of repetitions): {swp}")
    p(f"   alpha = {alpha * 1e6:.2f} us (half the 4-byte allreduce), beta = {beta * 1e9:.3f} "
      f"ns/byte ({1e-9 / beta:.2f} GB/s; slope over 64 KiB..4 MiB, includes the reduction "
      f"arithmetic; the fit's intercept is {icpt * 1e6:.1f} us)")
    peak = max(r.get("peak_gflops", 0) for r in b.runs[("peak",)][0]["res"]) * 1e9
    h_meas = {m: max(0.0, min(1.0, data[m]["hidden"])) for m in models}
    h = h_meas.get("mlp", next(iter(h_meas.values())))
    mb = default_mb or 4
    S = 4 * BIG_PARAMS
    B = math.ceil(S / (mb * 1024 * 1024))
    tc = 6 * BIG_PARAMS * BATCH / peak
    # gamma: seconds per byte of node memory traffic of the shared-memory sum (each rank reads
    # and writes its share: 2 L S bytes per node), from the reducer alone at 2 ranks on the
    # 25M-parameter gradient (out of cache), or in smoke runs on the MLP's.
    big = best_res(comm, "bucketed", "best_us", floats=float(BIG_PARAMS), bucket_mb=float(mb))
    g_bytes = S if big else 4 * MODELS["mlp"][1]
    g_time = (big or reducer["mlp"][b.buckets()[-1]])["best_us"] * 1e-6
    gamma = g_time / (2 * 2 * g_bytes)
    data["model"] = {"peak_flops": peak, "tc_s": tc, "buckets": B, "hidden": h, "gamma": gamma,
                     "ranks_per_node": NODE_RANKS}
    p(f"   shared-memory sum: gamma = {gamma * 1e12:.1f} ps per byte of node memory traffic "
      f"(cornu's reducer alone on {g_bytes / 1e6:.1f} MB at 2 ranks: {g_time * 1e3:.2f} ms for "
      f"2 x 2 x {g_bytes / 1e6:.1f} MB); T_node = gamma 2 L S (assumes a node's memory "
      f"bandwidth as this machine's: pessimistic for nodes with more memory channels)")
    p(f"   between N nodes: the L owners of a node each run a ring allreduce over N nodes on "
      f"their S/L bytes (B/L buckets) and share the node's link: T_net = (B/L) 2 (N-1) alpha + "
      f"2 (N-1)/N S beta_link; T = T_node + T_net, exposed (1 - h) T")
    p(f"   check at p = 2 (one node): predicted weak efficiency vs the measured fraction of the "
      f"ceiling")
    for m in models:
        n = 4 * MODELS[m][1]
        t = two_level_time(2, 2, n, max(1, math.ceil(n / (mb * 1024 * 1024))), 0, 0, gamma)
        tcm = data[m]["step_pair_ms"] / 1e3
        e0, eh = tcm / (tcm + t), tcm / (tcm + (1 - h_meas[m]) * t)
        p(f"     {m}: T(2) = {t * 1e3:.3f} ms on a {tcm * 1e3:.2f} ms step: {e0:.1%} with no "
          f"overlap, {eh:.1%} with the measured overlap {h_meas[m]:.0%}; measured "
          f"{data[m]['weak_of_ceiling']:.1%}")
    p(f"   prediction for a {BIG_PARAMS / 1e6:.0f}M-parameter model (S = {S / 1e6:.0f} MB, "
      f"{mb:g} MB buckets: B = {B}), {BATCH} rows and one core per rank, L = {NODE_RANKS} ranks "
      f"per node (assumed), compute Tc = 6 x params x rows / ({peak / 1e9:.1f} GFLOP/s, this "
      f"run's 1-thread square sgemm rate) = {tc * 1e3:.0f} ms per step; h = {h:.0%} (the MLP's "
      f"measured hidden fraction, clamped to [0, 1]); flat = one ring over all p ranks (what "
      f"--allreduce mpi does), for comparison")
    p(f"   {'links between nodes':<52}{'p':>5}{'T(p) ms':>10}{'eff h=0':>9}{'eff h':>8}"
      f"{'speedup':>9}{'flat ring ms':>14}")
    data["model"]["rows"] = []
    for name, a, bt in NETWORKS:
        for pr in BIG_RANKS:
            t = two_level_time(pr, NODE_RANKS, S, B, a, bt, gamma)
            # One node: the flat ring runs over shared memory (this machine's alpha, beta).
            flat = ring_time(pr, S, B, *((alpha, beta) if pr <= NODE_RANKS else (a, bt)))
            e0, eh = tc / (tc + t), tc / (tc + (1 - h) * t)
            data["model"]["rows"].append({"links": name, "p": pr, "T_s": t, "eff0": e0,
                                          "eff_h": eh, "flat_s": flat})
            p(f"   {name if pr == BIG_RANKS[0] else '':<52}{pr:>5}{t * 1e3:>10.1f}{e0:>9.1%}"
              f"{eh:>8.1%}{pr * eh:>9.1f}{flat * 1e3:>14.1f}")
    a_ib, b_ib = NETWORKS[1][1], NETWORKS[1][2]
    p(f"   bucket size for the {BIG_PARAMS / 1e6:.0f}M model at p = 64 ({64 // NODE_RANKS} nodes, "
      f"InfiniBand as assumed above; T(64), and the last bucket, which cannot overlap backward):")
    line = "    "
    for bmb in (0.25, 1, 4, 16, 64):
        Bb = math.ceil(S / (bmb * 1024 * 1024))
        t = two_level_time(64, NODE_RANKS, S, Bb, a_ib, b_ib, gamma)
        last = two_level_time(64, NODE_RANKS, S / Bb, 1, a_ib, b_ib, gamma)
        line += f" {bmb:g} MB: T {t * 1e3:.1f} ms, last bucket {last * 1e3:.2f} ms;"
    p(line)
    p("")
    p(f"total wall time {time.time() - t_begin:.0f} s; load average at the end "
      f"{os.getloadavg()[0]:.1f}")
    return out, data


if __name__ == "__main__":
    sys.exit(main())
