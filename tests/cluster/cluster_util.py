"""Helpers shared by the cluster tests (multihost.py, slurm.py, slurm_multinode.py): checks,
weight comparison, status files, process lookup and clean-up by process id, killing a rank and
collecting the job's end, and the scripts' common main().

Exit statuses follow CTest: 0 passed, 1 failed, 77 skipped (SKIP_RETURN_CODE), always with the
reason on stdout.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

SKIP = 77
FAILED = []
PASSED = []

# The training run every equivalence check uses (as cli.mpi_equivalence): SGD with momentum is
# linear in the gradient, so the comparison measures the reduced gradient itself.
TRAIN_ARGS = ["fashion-mlp", "--epochs", "1", "--steps-per-epoch", "25", "--batch-size", "100",
              "--seed", "2", "--optimizer", "sgd", "--lr", "0.01", "--momentum", "0.9"]
# A run long enough to be killed in the middle of its first epoch.
LONG_ARGS = ["fashion-mlp", "--epochs", "50", "--batch-size", "32", "--seed", "1"]
ROOT_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
            "OPENBLAS_NUM_THREADS": "1"}


def skip(reason):
    print(f"SKIP: {reason}")
    sys.exit(SKIP)


def need_numpy():
    try:
        import h5py  # noqa: F401
        import numpy  # noqa: F401
    except ImportError as exc:
        skip(f"needs python3-numpy and python3-h5py ({exc})")


def check(cond, what, text=None):
    if cond:
        PASSED.append(what)
        print(f"ok: {what}")
        return True
    FAILED.append(what)
    print(f"FAILED: {what}")
    if text:
        print("  output (end):\n" + text[-3000:])
    return False


def finish():
    """Prints the closing line ("N passed, N failed") and returns the exit status."""
    for what in FAILED:
        print(f"failed: {what}")
    print(f"{len(PASSED)} passed, {len(FAILED)} failed")
    return 1 if FAILED or not PASSED else 0


def run(cmd, timeout, env=None, cwd=None):
    """Runs cmd, returns (status, combined output, seconds); a hang is a status of None."""
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=timeout)
        return p.returncode, p.stdout, time.time() - t0
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return None, out + f"\n(timed out after {timeout} s)", time.time() - t0


def weights(h5file):
    """All datasets under model_weights, by path (read with h5py, not with our own code)."""
    import h5py
    out = {}
    with h5py.File(h5file, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        root.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


def max_rel(a, b):
    """Largest |a - b| over each weight, relative to the largest |b| of that weight."""
    import numpy as np
    if a.keys() != b.keys():
        return float("inf")
    worst = 0.0
    for k in a:
        scale = max(float(np.max(np.abs(b[k]))), 1e-12)
        worst = max(worst, float(np.max(np.abs(a[k] - b[k]))) / scale)
    return worst


def compare(out_h5, ref_h5, what, text):
    if not check(os.path.exists(out_h5), f"{what}: wrote {os.path.basename(out_h5)}", text):
        return
    err = max_rel(weights(out_h5), weights(ref_h5))
    check(err <= 1e-5, f"{what}: weights == 1 rank's (max rel err {err:.2e} <= 1e-5)", text)


def read_status(status_dir):
    """rank -> {host, pid, state, status} from the runtime's rank-R.status files."""
    out = {}
    if not os.path.isdir(status_dir):
        return out
    for name in os.listdir(status_dir):
        if not (name.startswith("rank-") and name.endswith(".status")):
            continue
        fields = {}
        with open(os.path.join(status_dir, name), errors="replace") as f:
            for line in f:
                if "=" in line:
                    k, v = line.rstrip("\n").split("=", 1)
                    fields[k] = v.strip()
        if "rank" in fields:
            out[int(fields["rank"])] = fields
    return out


def environ_of(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def pids_with_env(entry):
    """Processes whose environment holds exactly `entry` ("NAME=value")."""
    want = entry.encode()
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and want in environ_of(p)]


def rank_pids(exe, rank, tag_entry):
    """PIDs of `exe` processes with Open MPI rank `rank` (or Slurm task `rank`) and our tag."""
    out = []
    for pid in pids_with_env(tag_entry):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if not f.read().startswith(exe.encode()):
                    continue
        except OSError:
            continue
        env = environ_of(pid)
        if f"OMPI_COMM_WORLD_RANK={rank}".encode() in env or f"SLURM_PROCID={rank}".encode() in env:
            out.append(pid)
    return out


def kill_pids(pids, sig=signal.SIGKILL):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def stop_popen(proc, grace=5.0):
    """SIGTERM, then SIGKILL after `grace` seconds, for a process this test started."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def on_signals_raise():
    """Turns SIGTERM/SIGHUP/SIGINT into SystemExit, so that `finally` blocks tear down."""
    def handler(signum, _frame):
        raise SystemExit(f"stopped by signal {signum}")
    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(s, handler)


def kill_and_collect(proc, victim, timeout=60):
    """SIGKILLs the victim PIDs and waits for proc (the launcher) to end: (its output, seconds
    from the kill to its end). A launcher still running after `timeout` is stopped."""
    t0 = time.time()
    kill_pids(victim)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_popen(proc)
        out, _ = proc.communicate()
    return out, time.time() - t0


def script_main(script, case, cases, root_why, setup):
    """The cluster scripts' main(): checks the case and root, makes a temporary directory, runs
    setup(tmp, undo) -- which builds the cluster, appending a teardown callable to `undo` for
    everything it starts, and returns what the case takes -- then the case, then every teardown
    in reverse order, whatever failed. CORNU_KEEP_TMP=1 keeps the directory."""
    if case not in cases:
        print(f"usage: {script} CORNU {{{'|'.join(cases)}}}")
        return 2
    if os.geteuid() != 0:
        skip(f"needs root ({root_why})")
    need_numpy()
    on_signals_raise()
    tmp = tempfile.mkdtemp(prefix=f"cornu-{os.path.splitext(script)[0]}-{case}-")
    undo = []
    try:
        cases[case](setup(tmp, undo), tmp)
    except (RuntimeError, OSError) as exc:
        check(False, f"setup or run: {exc}")
    finally:
        for fn in reversed(undo):
            fn()
        if os.environ.get("CORNU_KEEP_TMP"):
            print(f"kept {tmp} (CORNU_KEEP_TMP)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return finish()
