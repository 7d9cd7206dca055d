"""What the cluster tests (multihost.py, slurm.py, slurm_multinode.py) share, so that each script
is only its cases:

  outcome     skip / check / finish: CTest's statuses (0 passed, 1 failed, 77 skipped, always
              with the reason on stdout)
  results     the 1-rank reference run, weight comparison, the ranks' status files
  processes   finding a rank by its environment, killing it inside an epoch, waiting for the end
  Hosts       "hosts" node0..nodeN-1 as network namespaces on a private bridge (and their sshd)
  Slurm       a private Slurm cluster: munged, slurmctld and one slurmd per node, on this machine
              (one node) or on Hosts (one node per host); sbatch and job polling
  steps       the Slurm runs both Slurm scripts make: srun / sbatch equivalence, a killed task
  main        the scripts' main(): checks, temporary directory, teardown whatever happened,
              removal of what an earlier run that was killed (CTest timeout) left behind

Every process a test starts carries CORNU_CLUSTER_TAG=<pid of the test> in its environment (and
so do their children, Slurm's steps included; mpirun's remote ranks where it is passed with -x)
and every namespace and temporary directory has that pid in its name: a later run removes those
whose test process is gone, and a namespace is removed with every process in it. Nothing in
~/.ssh, /etc/ssh, /etc/slurm or /etc/munge is read or written.
"""
import collections
import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
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
LAUNCH = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "launch"))
WRAPPER = os.path.join(LAUNCH, "cornu-mpirun")
SBATCH_SCRIPT = os.path.join(LAUNCH, "cornu.sbatch")

TAG_VAR = "CORNU_CLUSTER_TAG"
TAG = f"{TAG_VAR}={os.getpid()}"
NS_PREFIX = "cornu-ns-"
TMP_RE = re.compile(r"cornu-(?:multihost|slurm|slurm_multinode)-\w+-(\d+)-")


# ---- outcome -------------------------------------------------------------------------------

def skip(reason):
    print(f"SKIP: {reason}")
    sys.exit(SKIP)


def need_numpy():
    try:
        import h5py  # noqa: F401
        import numpy  # noqa: F401
    except ImportError as exc:
        skip(f"needs python3-numpy and python3-h5py ({exc})")


def need_tools(tools, packages):
    missing = [t for t in tools if which(t) is None]
    if missing:
        skip(f"missing {', '.join(missing)} (Debian: {packages})")


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


# ---- running commands ----------------------------------------------------------------------

def run(cmd, timeout, env=None, cwd=None):
    """Runs cmd, returns (status, combined output, seconds); a hang is a status of None."""
    t0 = time.time()
    try:
        p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=timeout)
        return p.returncode, p.stdout, time.time() - t0
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return None, out + f"\n(timed out after {timeout} s)", time.time() - t0


def sh(*cmd, check=True):
    """A setup command that must work (RuntimeError with its output otherwise)."""
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {p.returncode}: {p.stdout.strip()}")
    return p


def which(tool):
    for d in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        if os.access(os.path.join(d, tool), os.X_OK):
            return os.path.join(d, tool)
    return shutil.which(tool)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tagged_env(**extra):
    """The environment of everything a test starts: root allowed for Open MPI, one BLAS thread,
    the tag, sbin on PATH."""
    env = dict(os.environ, **ROOT_ENV)
    env[TAG_VAR] = TAG.split("=", 1)[1]
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin:" + env.get("PATH", "")
    env.update({k: str(v) for k, v in extra.items()})
    return env


# ---- results -------------------------------------------------------------------------------

def reference(exe, tmp):
    """The 1-rank run every multi-rank run is compared with; its .h5, or None (check failed)."""
    ref = os.path.join(tmp, "np1.h5")
    rc, out, _ = run([exe, "train"] + TRAIN_ARGS + ["--output", ref], 120, env=tagged_env())
    return ref if check(rc == 0, "1-rank reference run", out) else None


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
    if not status_dir or not os.path.isdir(status_dir):
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


def check_ranks(status_dir, want_hosts, what, text):
    """The status files: rank r ran on host want_hosts[r] (its host name), every rank finished."""
    st = read_status(status_dir)
    hosts = {r: st[r].get("host") for r in sorted(st)}
    check(hosts == want_hosts, f"{what}: ranks ran on {hosts} (expected {want_hosts})", text)
    states = {r: st[r].get("state") for r in sorted(st)}
    check(bool(st) and set(states.values()) == {"finished"}, f"{what}: every rank finished ({states})",
          text)


def stopped_by_sigterm(out, ranks):
    """Those of `ranks` that reported the step they were in when the launcher's SIGTERM came."""
    return [r for r in ranks
            if re.search(rf"cornu: rank {r} \[epoch 1 step \d+: [a-z ]+\]: stopped by SIGTERM", out)]


def timing_lines(out, n):
    """--verbose-ranks printed its line for each of ranks 0..n-1."""
    return all(re.search(rf"^  rank {r}: step .* exposed comm ", out, re.M) for r in range(n))


# ---- processes -----------------------------------------------------------------------------

def environ_of(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def pids_with_env(entry):
    """Processes whose environment holds exactly `entry` ("NAME=value"), this one excepted."""
    want = entry.encode()
    return [int(p) for p in os.listdir("/proc")
            if p.isdigit() and int(p) != os.getpid() and want in environ_of(p)]


def rank_pids(exe, rank):
    """PIDs of this test's `exe` processes with Open MPI rank (or Slurm task) `rank`."""
    out = []
    for pid in pids_with_env(TAG):
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


def popen(cmd, env, cwd=None):
    return subprocess.Popen([str(c) for c in cmd], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for_step(exe, status_dir, rank, proc=None, timeout=45):
    """PIDs of rank `rank` once its status line names a step of epoch 1 (plus 1 s, to be well
    inside it); [] if that did not happen within `timeout` or while `proc` ran."""
    deadline = time.time() + timeout
    while time.time() < deadline and (proc is None or proc.poll() is None):
        pids = rank_pids(exe, rank)
        st = read_status(status_dir).get(rank, {})
        if pids and re.match(r"epoch 1 step \d+", st.get("status", "")):
            time.sleep(1.0)
            return pids
        time.sleep(0.3)
    return []


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


def ranks_gone(exe, n, timeout):
    """True once no rank 0..n-1 of this test is left (within `timeout` seconds)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not any(rank_pids(exe, r) for r in range(n)):
            return True
        time.sleep(0.2)
    return False


def on_signals_raise():
    """Turns SIGTERM/SIGHUP/SIGINT into SystemExit, so that teardowns run."""
    def handler(signum, _frame):
        raise SystemExit(f"stopped by signal {signum}")
    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(s, handler)


# ---- hosts: network namespaces -------------------------------------------------------------

def netns_list():
    p = sh("ip", "netns", "list", check=False)
    return [line.split()[0] for line in p.stdout.splitlines() if line.strip()]


def netns_remove(name):
    """Kills every process inside namespace `name` (by pid), then deletes the namespace."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [int(x) for x in sh("ip", "netns", "pids", name, check=False).stdout.split() if x.isdigit()]
        if not pids:
            break
        kill_pids(pids, sig)
        for _ in range(50):
            if not any(pid_alive(p) for p in pids):
                break
            time.sleep(0.1)
    sh("ip", "netns", "del", name, check=False)


class Hosts:
    """node0..node{n-1}: one network namespace each (address 10.213.0.<i+1>/24 on eth0), linked
    by a bridge in a namespace of its own, so nothing is added to this machine's network. A
    command runs on host i in its namespace with the host name node<i> (on())."""

    SUBNET = "10.213.0.0/24"
    TOOLS = ("ip", "nsenter", "unshare")
    SSH_TOOLS = ("ssh", "ssh-keygen", "sshd")

    def __init__(self, tmp, n):
        self.tmp, self.n = tmp, n
        base = f"{NS_PREFIX}{os.getpid()}-"
        self.bridge_ns = base + "br"
        self.ns = [base + f"h{i}" for i in range(n)]
        self.created = []
        self.sshd = []
        self.rsh = None

    @staticmethod
    def ip(i):
        return f"10.213.0.{i + 1}"

    @staticmethod
    def probe():
        """Skips (77) unless this machine lets us make namespaces, veth pairs and bridges."""
        need_tools(Hosts.TOOLS, "iproute2, util-linux")
        probe = f"{NS_PREFIX}{os.getpid()}-probe"
        p = sh("ip", "netns", "add", probe, check=False)
        if p.returncode != 0:
            skip("cannot create a network namespace (needs root with CAP_NET_ADMIN and "
                 f"CAP_SYS_ADMIN): {p.stdout.strip()}")
        try:
            p = sh("ip", "-n", probe, "link", "add", "name", "va", "type", "veth", "peer", "name", "vb",
                   check=False)
            if p.returncode != 0:
                skip(f"cannot create a veth pair (kernel without veth?): {p.stdout.strip()}")
            p = sh("ip", "-n", probe, "link", "add", "name", "vbr", "type", "bridge", check=False)
            if p.returncode != 0:
                skip(f"cannot create a bridge (kernel without bridge support?): {p.stdout.strip()}")
        finally:
            sh("ip", "netns", "del", probe, check=False)

    def up(self):
        sh("ip", "netns", "add", self.bridge_ns)
        self.created.append(self.bridge_ns)
        sh("ip", "-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.bridge_ns, "link", "set", "br0", "up")
        for i, ns in enumerate(self.ns):
            sh("ip", "netns", "add", ns)
            self.created.append(ns)
            sh("ip", "-n", self.bridge_ns, "link", "add", f"p{i}", "type", "veth", "peer", "name",
               "eth0", "netns", ns)
            sh("ip", "-n", self.bridge_ns, "link", "set", f"p{i}", "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        print(f"hosts up: node0..node{self.n - 1} = {', '.join(self.ip(i) for i in range(self.n))}")

    def on(self, i, cmd, private=()):
        """cmd as run on host i: in its network namespace, with host name node<i> (a UTS
        namespace of its own) and, in a mount namespace of its own, `<d>.node<i>` mounted over
        each directory d of `private`: what is per machine on a real cluster although this
        machine's file system is shared. Entered with nsenter, not `ip netns exec`, which
        mounts a fresh /sys without /sys/fs/cgroup (slurmd then fails: "No filesystem mounted
        on /sys/fs/cgroup")."""
        binds = "".join(f"mount --bind {shlex.quote(d + f'.node{i}')} {shlex.quote(d)} && "
                        for d in private)
        return ["nsenter", f"--net=/run/netns/{self.ns[i]}", "unshare", "--uts", "--mount", "sh", "-c",
                f'{binds}hostname node{i} && exec "$@"', "sh"] + [str(c) for c in cmd]

    def host_of_pid(self, pid):
        """The host (index) whose namespace process `pid` is in, or None."""
        name = sh("ip", "netns", "identify", str(pid), check=False).stdout.strip()
        return self.ns.index(name) if name in self.ns else None

    def start_sshd(self):
        """An sshd on every host (throwaway host and client keys, private configs and
        known_hosts); self.rsh is the ssh to use (Open MPI's plm_rsh_agent). Waits until node0
        reaches every other host."""
        t = self.tmp
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{t}/host_key")
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{t}/user_key")
        shutil.copy(f"{t}/user_key.pub", f"{t}/authorized_keys")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        with open(f"{t}/sshd_config", "w") as f:
            f.write(f"HostKey {t}/host_key\nAuthorizedKeysFile {t}/authorized_keys\n"
                    "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                    "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n")
        with open(f"{t}/ssh_config", "w") as f:
            f.write(f"Host *\n  IdentityFile {t}/user_key\n  IdentitiesOnly yes\n"
                    f"  UserKnownHostsFile {t}/known_hosts\n  GlobalKnownHostsFile /dev/null\n"
                    "  StrictHostKeyChecking no\n  BatchMode yes\n  LogLevel ERROR\n  ConnectTimeout 5\n")
        self.rsh = f"{t}/rsh"
        with open(self.rsh, "w") as f:
            f.write(f'#!/bin/sh\nexec ssh -F {t}/ssh_config "$@"\n')
        os.chmod(self.rsh, 0o755)
        for i in range(self.n):
            log = open(f"{t}/sshd{i}.log", "w")
            self.sshd.append(subprocess.Popen(
                self.on(i, [which("sshd"), "-D", "-e", "-f", f"{t}/sshd_config",
                            "-o", f"ListenAddress={self.ip(i)}"]),
                env=tagged_env(), stdout=log, stderr=subprocess.STDOUT))
        deadline = time.time() + 20
        for i in range(1, self.n):
            while True:
                rc, out, _ = run(self.on(0, [self.rsh, self.ip(i), "hostname"]), 10)
                if rc == 0 and out.strip() == f"node{i}":
                    break
                if time.time() > deadline:
                    raise RuntimeError(f"ssh from node0 to {self.ip(i)} failed: {out.strip()}; sshd log: "
                                       + open(f"{t}/sshd{i}.log").read()[-1000:])
                time.sleep(0.3)

    def down(self):
        for p in self.sshd:
            stop_popen(p, grace=2)
        for ns in reversed(self.created):
            netns_remove(ns)
        left = [n for n in netns_list() if n.startswith(f"{NS_PREFIX}{os.getpid()}-")]
        check(not left, f"teardown removed every namespace ({left})")


# ---- Slurm ---------------------------------------------------------------------------------

SLURM_TOOLS = ("slurmctld", "slurmd", "munged", "srun", "sbatch", "salloc", "scontrol", "sinfo",
               "squeue", "scancel", "mpirun")
JOB_ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
             "PREEMPTED", "BOOT_FAIL", "DEADLINE")
Job = collections.namedtuple("Job", "id rc state secs nodes")


class Slurm:
    """A private Slurm 22.05 cluster: munged (fresh key, private socket), slurmctld and one
    slurmd per node, from a slurm.conf in `tmp` (state, spool, pid and log files there too).

    Without `hosts`: one node, cornu0, on this machine (127.0.0.1, free ports). With `hosts`:
    node<i> = host i, slurmctld on node0, `slurmd -N node<i>` on host i; every client command
    (srun, sbatch, scontrol, ...) runs on node0. munged's socket is a path, reachable from every
    namespace. Each node has its own PMIx client directory (PMIxCliTmpDirBase): the nodes share
    one file system, where their step daemons would otherwise make and remove the same one."""

    def __init__(self, tmp, hosts=None):
        self.tmp, self.hosts = tmp, hosts
        self.nodes = [f"node{i}" for i in range(hosts.n)] if hosts else ["cornu0"]
        self.conf = os.path.join(tmp, "slurm.conf")
        self.pmix = os.path.join(tmp, "pmix")
        self.env = tagged_env(SLURM_CONF=self.conf)
        self.daemons = {}
        self.task_plugin = None

    def hostname(self, node):
        """The host name a rank on Slurm node `node` has (what its status file says)."""
        return node if self.hosts else socket.gethostname()

    def on(self, i, cmd):
        return self.hosts.on(i, cmd, private=[self.pmix]) if self.hosts else [str(c) for c in cmd]

    def client(self, cmd, timeout, env=None):
        """A client command on node0: (exit status, output, seconds)."""
        return run(self.on(0, cmd), timeout, env=env or self.env, cwd=self.tmp)

    def popen(self, cmd, env=None):
        return popen(self.on(0, cmd), env or self.env, cwd=self.tmp)

    def start(self, name, cmd):
        log = open(os.path.join(self.tmp, f"{name}.out"), "w")
        self.daemons[name] = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                              cwd=self.tmp)

    def logs(self, names=None):
        text = ""
        for name in names or ["slurmctld"] + [f"slurmd-{n}" for n in self.nodes]:
            for f in (f"{name}.out", f"{name}.log"):
                p = os.path.join(self.tmp, f)
                if os.path.exists(p):
                    text += f"--- {f}:\n" + open(p, errors="replace").read()[-2000:]
        return text

    @staticmethod
    def probe():
        need_tools(SLURM_TOOLS, "slurm-wlm, munge, openmpi-bin")

    def up(self):
        t = self.tmp
        os.makedirs(f"{t}/munge", mode=0o700)
        with open(f"{t}/munge/munge.key", "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(f"{t}/munge/munge.key", 0o400)
        self.sock = f"{t}/munge/socket"
        self.start("munged", ["munged", "--foreground", "--force", f"--socket={self.sock}",
                              f"--key-file={t}/munge/munge.key", f"--log-file={t}/munged.log",
                              f"--pid-file={t}/munge/pid", f"--seed-file={t}/munge/seed"])
        deadline = time.time() + 10
        while not os.path.exists(self.sock):
            if time.time() > deadline or self.daemons["munged"].poll() is not None:
                raise RuntimeError("munged did not start: " + self.logs(["munged"]))
            time.sleep(0.1)
        # Every node as slurmd sees this machine (CPUs, sockets, cores, memory).
        rc, out, _ = run(["slurmd", "-C"], 15)
        m = re.search(r"^NodeName=\S+ (.*)$", out, re.M)
        if not m:
            raise RuntimeError(f"slurmd -C: unexpected output: {out.strip()}")
        self.hw = m.group(1).strip()
        # task/affinity binds each task to its CPUs (what --cpu-bind=cores needs); task/none
        # is the fallback if the kernel refuses it.
        for plugin in ("task/affinity", "task/none"):
            if self.start_daemons(plugin):
                self.task_plugin = plugin
                break
        else:
            raise RuntimeError("slurmctld/slurmd never reported every node idle; logs:\n" + self.logs())
        print(f"slurm up: nodes {', '.join(self.nodes)} ({self.hw}), TaskPlugin={self.task_plugin}")

    def start_daemons(self, task_plugin):
        """slurmctld and the slurmds with `task_plugin`: True once every node is idle."""
        self.stop_daemons([d for d in self.daemons if d != "munged"])
        t = self.tmp
        for d in ("state", "spool"):
            shutil.rmtree(f"{t}/{d}", ignore_errors=True)
            os.makedirs(f"{t}/{d}")
        os.makedirs(self.pmix, exist_ok=True)
        for i, node in enumerate(self.nodes):
            os.makedirs(f"{t}/spool/{node}")
            if self.hosts:
                os.makedirs(f"{self.pmix}.node{i}", exist_ok=True)
        with open(f"{t}/mpi.conf", "w") as f:  # read from slurm.conf's directory
            f.write(f"PMIxCliTmpDirBase={self.pmix}\n")
        if self.hosts:
            # Fixed ports are fine: every daemon listens on its own namespace's address.
            ctld_port, slurmd_port = 6817, 6818
            ctld = f"node0({self.hosts.ip(0)})"
            node_lines = [f"NodeName={n} NodeHostname={n} NodeAddr={self.hosts.ip(i)}"
                          for i, n in enumerate(self.nodes)]
        else:
            ctld_port, slurmd_port = free_port(), free_port()
            ctld = f"{socket.gethostname()}(127.0.0.1)"
            node_lines = [f"NodeName=cornu0 NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1"]
        nodes = "\n".join(f"{line} {self.hw} State=UNKNOWN" for line in node_lines)
        # Job ids from a range of this run's own: two clusters at once (CTest -j) never share
        # a job id, and so neither a step's files.
        first_job = 1000 + (os.getpid() % 100000) * 100
        with open(self.conf, "w") as f:
            f.write(f"""ClusterName=cornutest
FirstJobId={first_job}
SlurmctldHost={ctld}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.sock}
CredType=cred/munge
StateSaveLocation={t}/state
SlurmdSpoolDir={t}/spool/%n
SlurmctldPidFile={t}/slurmctld.pid
SlurmdPidFile={t}/slurmd-%n.pid
SlurmctldLogFile={t}/slurmctld.log
SlurmdLogFile={t}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin={task_plugin}
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MailProg=/bin/true
KillWait=5
{nodes}
PartitionName=debug Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
""")
        self.start("slurmctld", self.on(0, ["slurmctld", "-D", "-i", "-f", self.conf]))
        for i, node in enumerate(self.nodes):
            self.start(f"slurmd-{node}", self.on(i, ["slurmd", "-D", "-N", node, "-f", self.conf]))
        deadline = time.time() + 30
        while time.time() < deadline:
            if any(p.poll() is not None for p in self.daemons.values()):
                print(f"{task_plugin}: a daemon exited:\n" + self.logs())
                return False
            rc, out, _ = self.client(["sinfo", "-h", "-N", "-o", "%N %T"], 15)
            states = dict(line.split() for line in out.splitlines() if len(line.split()) == 2)
            if rc == 0 and all(states.get(n) == "idle" for n in self.nodes):
                return True
            time.sleep(0.5)
        print(f"{task_plugin}: not every node idle after 30 s:\n" + self.logs())
        return False

    def stop_daemons(self, names):
        for n in names:
            stop_popen(self.daemons.pop(n, None), grace=5)

    def down(self):
        """Cancels every job, then stops the slurmds, slurmctld and munged. (Job steps outlive
        slurmd by design: main() ends what is left by its tag.)"""
        if "slurmctld" in self.daemons and self.daemons["slurmctld"].poll() is None:
            self.client(["scancel", "--full", "--partition=debug"], 15)
            deadline = time.time() + 15
            while time.time() < deadline:
                rc, out, _ = self.client(["squeue", "-h"], 15)
                if rc != 0 or not out.strip():
                    break
                time.sleep(0.5)
        self.stop_daemons([d for d in self.daemons if d.startswith("slurmd")] + ["slurmctld", "munged"])

    def sbatch(self, args, env):
        """Submits a batch job; its id, or None (with the check failed)."""
        rc, out, _ = self.client(["sbatch", "--parsable"] + args, 30, env=env)
        m = re.match(r"\s*(\d+)", out) if rc == 0 else None
        if not check(m is not None, f"sbatch {' '.join(map(str, args[:6]))} ... submitted", out):
            return None
        return m.group(1)

    def job_wait(self, job, timeout=60):
        """Polls the job until it ends (sbatch --wait backs off to 10 s and more between polls).
        A Job: exit code (128 + signal if killed; None if it did not end in time), state,
        seconds, and the nodes it ran on."""
        t0, info = time.time(), ""
        while time.time() - t0 < timeout:
            _, info, _ = self.client(["scontrol", "-o", "show", "job", job], 15)
            state = re.search(r"JobState=(\S+)", info)
            if state and state.group(1) in JOB_ENDED:
                code = re.search(r"ExitCode=(\d+):(\d+)", info)
                rc = int(code.group(1)) if code else -1
                if code and int(code.group(2)):
                    rc = 128 + int(code.group(2))
                nodelist = re.search(r" NodeList=(\S+)", info)
                _, names, _ = self.client(["scontrol", "show", "hostnames", nodelist.group(1)], 15) \
                    if nodelist else (1, "", 0)
                return Job(job, rc, state.group(1), time.time() - t0, names.split())
            time.sleep(0.3)
        self.client(["scancel", job], 15)
        state = " ".join(re.findall(r"(?:JobState|Reason)=\S+", info)) or info.strip()
        return Job(job, None, f"not ended after {timeout} s: {state}", time.time() - t0, [])

    def job_output(self, prefix):
        return "".join(open(os.path.join(self.tmp, f), errors="replace").read()
                       for f in sorted(os.listdir(self.tmp)) if f.startswith(prefix))


# ---- steps both Slurm scripts run ----------------------------------------------------------

def slug(what):
    """A file name for the run `what` describes."""
    return re.sub(r"[^A-Za-z0-9]+", "-", what).strip("-")


def srun_equivalence(sl, exe, ref, srun_args, want_nodes, what):
    """srun --mpi=pmix <srun_args> cornu train ...: exit 0, weights == the 1-rank run's, rank r
    on Slurm node want_nodes[r], a timing line per rank."""
    name = slug(what)
    out_h5 = os.path.join(sl.tmp, f"{name}.h5")
    status = os.path.join(sl.tmp, f"status-{name}")
    os.makedirs(status)
    cmd = ["srun", "--mpi=pmix", "--kill-on-bad-exit=1"] + srun_args + [
        exe, "train"] + TRAIN_ARGS + ["--verbose-ranks", "--output", out_h5]
    print("running on node0: " + " ".join(cmd))
    rc, out, secs = sl.client(cmd, 90, env=dict(sl.env, CORNU_STATUS_DIR=status))
    print(out[-1500:])
    check(rc == 0, f"{what}: srun exited 0 ({rc}, {secs:.1f} s)", out)
    compare(out_h5, ref, what, out)
    check_ranks(status, {r: sl.hostname(n) for r, n in enumerate(want_nodes)}, what, out)
    check(timing_lines(out, len(want_nodes)), f"{what}: a timing line for each rank", out)


def sbatch_equivalence(sl, exe, ref, nodes, per_node, what, iface=None):
    """launch/cornu.sbatch with -N nodes --ntasks-per-node=per_node: the job COMPLETED with
    exit 0, same weights, the ranks in block order on the job's nodes, all finished, a timing
    line per rank, --cpu-bind=cores accepted where the task plugin binds."""
    name = slug(what)
    out_h5 = os.path.join(sl.tmp, f"{name}.h5")
    run_dir = os.path.join(sl.tmp, f"run-{name}")
    env = dict(sl.env, CORNU=exe, OUT=run_dir)
    if iface:
        env["CORNU_MPI_IFACE"] = iface
    args = ["-N", str(nodes), f"--ntasks-per-node={per_node}", "--cpus-per-task=1",
            f"--output={sl.tmp}/{name}-%j.out", SBATCH_SCRIPT] + TRAIN_ARGS + [
        "--verbose-ranks", "--output", out_h5]
    print("running on node0: sbatch " + " ".join(args))
    job = sl.sbatch(args, env)
    if job is None:
        return
    job = sl.job_wait(job)
    text = sl.job_output(f"{name}-")
    print(text[-1500:])
    check(job.rc == 0 and len(job.nodes) == nodes,
          f"{what}: job {job.id} {job.state} with exit {job.rc} on nodes {job.nodes} ({job.secs:.1f} s)",
          text)
    compare(out_h5, ref, what, text)
    ran_on = job.nodes if len(job.nodes) == nodes else []
    want = {r: sl.hostname(ran_on[r // per_node]) for r in range(len(ran_on) * per_node)}
    check_ranks(os.path.join(run_dir, "status"), want, what, text)
    check(timing_lines(text, nodes * per_node), f"{what}: a timing line for each rank", text)
    if sl.task_plugin == "task/affinity":
        check("lacks support for cpu binding" not in text, f"{what}: --cpu-bind=cores accepted", text)


def salloc_mpirun(sl, exe, ref, salloc_args, nranks, want_nodes, what, iface=None):
    """launch/cornu-mpirun -np nranks inside `salloc <salloc_args>`: mpirun takes the nodes
    and slots from Slurm and starts its daemons on the other nodes with srun. Exit 0, weights ==
    the 1-rank run's, rank r on Slurm node want_nodes[r], every rank finished."""
    name = slug(what)
    out_h5, status = os.path.join(sl.tmp, f"{name}.h5"), os.path.join(sl.tmp, f"status-{name}")
    cmd = ["salloc"] + salloc_args + [WRAPPER] + (["--iface", iface] if iface else []) + [
        "--status-dir", status, "-np", str(nranks), "--", exe, "train"] + TRAIN_ARGS + ["--output", out_h5]
    print("running on node0: " + " ".join(cmd))
    rc, out, secs = sl.client(cmd, 90)
    print(out[-1200:])
    check(rc == 0, f"{what}: exited 0 ({rc}, {secs:.1f} s)", out)
    compare(out_h5, ref, what, out)
    check_ranks(status, {r: sl.hostname(n) for r, n in enumerate(want_nodes)}, what, out)


def srun_kill(sl, exe, srun_args, ntasks, victim, victim_node, what, train_args=()):
    """srun --mpi=pmix <srun_args> cornu train <long run> <train_args>, task `victim` SIGKILLed
    inside epoch 1 (on node `victim_node`, which is checked when the nodes are namespace
    hosts): the step ends within 30 s with a non-zero status, srun names the node and the task,
    and no rank is left. Returns srun's output and the status directory for further checks
    (None, None if the kill did not happen, with a check failed)."""
    status = os.path.join(sl.tmp, f"status-{slug(what)}")
    os.makedirs(status)
    node = sl.nodes[victim_node]
    cmd = ["srun", "--mpi=pmix"] + srun_args + [exe, "train"] + LONG_ARGS + list(train_args)
    print("running on node0: " + " ".join(cmd))
    proc = sl.popen(cmd, env=dict(sl.env, CORNU_STATUS_DIR=status))
    try:
        pids = wait_for_step(exe, status, victim, proc)
        if not pids:
            stop_popen(proc)
            check(False, f"{what}: found task {victim} inside epoch 1", proc.communicate()[0])
            return None, None
        if sl.hosts:
            where = sl.hosts.host_of_pid(pids[0])
            if not check(where == victim_node, f"{what}: task {victim} runs in {node}'s namespace "
                         f"(found in node{where}'s)"):
                return None, None
        out, took = kill_and_collect(proc, pids)
    finally:
        stop_popen(proc)
    print(out[-1500:])
    check(proc.returncode != 0, f"{what}: srun exit status non-zero ({proc.returncode})", out)
    check(took < 30, f"{what}: the step ended {took:.1f} s after the kill (< 30 s)", out)
    check(f"srun: error: {node}: task {victim}: Killed" in out,
          f"{what}: srun names {node}, task {victim} and that it was killed", out)
    check(ranks_gone(exe, ntasks, 5), f"{what}: no rank left running")
    return out, status


def sbatch_kill(sl, exe, nodes, per_node, victim, what):
    """launch/cornu.sbatch (-N nodes --ntasks-per-node=per_node), rank `victim` SIGKILLed inside
    epoch 1: every rank stops within 30 s, the job fails, its log names the task and its node,
    and the script's post-mortem names the rank, its host and its step."""
    name = slug(what)
    run_dir = os.path.join(sl.tmp, f"run-{name}")
    args = ["-N", str(nodes), f"--ntasks-per-node={per_node}", "--cpus-per-task=1",
            f"--output={sl.tmp}/{name}-%j.out", SBATCH_SCRIPT] + LONG_ARGS
    print("running on node0: sbatch " + " ".join(args))
    job = sl.sbatch(args, dict(sl.env, CORNU=exe, OUT=run_dir))
    if job is None:
        return
    pids = wait_for_step(exe, os.path.join(run_dir, "status"), victim)
    if not check(bool(pids), f"{what}: found task {victim} inside epoch 1", sl.job_output(f"{name}-")):
        return
    # Block distribution: rank r on the job's node r // per_node (the job's first nodes here).
    node = sl.nodes[victim // per_node]
    if sl.hosts:
        where = sl.hosts.host_of_pid(pids[0])
        check(where == victim // per_node,
              f"{what}: task {victim} runs in {node}'s namespace (found in node{where}'s)")
    t0 = time.time()
    kill_pids(pids)
    gone = ranks_gone(exe, nodes * per_node, 30)
    took = time.time() - t0
    job = sl.job_wait(job)
    text = sl.job_output(f"{name}-")
    print(text[-2000:])
    host = sl.hostname(node)
    check(gone and took < 30, f"{what}: every rank stopped {took:.1f} s after the kill (< 30 s)", text)
    check(job.rc not in (0, None), f"{what}: the job failed ({job.state}, exit {job.rc})", text)
    check(f"srun: error: {node}: task {victim}: Killed" in text,
          f"{what}: the job log names task {victim} on {node}", text)
    check(re.search(rf"cornu\.sbatch: rank {victim} on {re.escape(host)} ended without a report "
                    r"while: epoch 1 step \d+", text) is not None,
          f"{what}: cornu.sbatch's post-mortem names rank {victim}, its host {host} and its step", text)


# ---- main ----------------------------------------------------------------------------------

def remove_stale():
    """What an earlier run left when it was killed (a CTest timeout, a signal that could not be
    caught): its processes (by tag), namespaces and temporary directory (by pid in the name),
    if its test process is gone. Runs of other tests still running are left alone."""
    def dead(pid):
        return int(pid) != os.getpid() and not pid_alive(int(pid))
    stale = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            for entry in environ_of(p):
                # CORNU_CLUSTER_TAG=<pid>, or slurm:<pid>:<dir> from before this file's tags.
                m = re.match(rb"CORNU_CLUSTER_TAG=(?:slurm:)?(\d+)(?::|$)", entry)
                if m and dead(m.group(1)):
                    stale.append(int(p))
    if stale:
        print(f"killing processes of an earlier, killed run: {stale}")
        kill_pids(stale)
    for name in netns_list() if which("ip") else []:
        m = re.match(r"cornu-(?:ns|mh)-(\d+)-", name)
        if m and dead(m.group(1)):
            print(f"removing stale namespace {name}")
            netns_remove(name)
    tmp = tempfile.gettempdir()
    for name in os.listdir(tmp):
        m = TMP_RE.match(name)
        if m and dead(m.group(1)):
            print(f"removing stale directory {tmp}/{name}")
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)


def main(cases, probe, setup, root_why):
    """The scripts' main(): `script.py CORNU CASE`. Skips without root, numpy/h5py or what
    probe() finds missing (it calls skip()); removes what
    an earlier killed run left; makes a temporary directory; runs setup(tmp, teardown) -- which
    builds what the case runs on, registering a teardown for everything it starts on the
    contextlib.ExitStack `teardown` before starting it, and returns it -- then the case. The
    teardowns run in reverse order whatever happened; then every process with this run's tag
    is killed (and must then be gone). CORNU_KEEP_TMP=1 keeps the directory."""
    script = os.path.basename(sys.argv[0])
    if len(sys.argv) != 3 or sys.argv[2] not in cases:
        print(f"usage: {script} CORNU {{{'|'.join(cases)}}}")
        return 2
    case = sys.argv[2]
    if os.geteuid() != 0:
        skip(f"needs root ({root_why})")
    need_numpy()
    probe()
    on_signals_raise()
    remove_stale()
    tmp = tempfile.mkdtemp(prefix=f"cornu-{os.path.splitext(script)[0]}-{case}-{os.getpid()}-")
    try:
        with contextlib.ExitStack() as teardown:
            try:
                cases[case](setup(tmp, teardown), tmp)
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                check(False, f"setup or run: {exc}")
    finally:
        kill_pids(pids_with_env(TAG))
        time.sleep(0.2)
        left = pids_with_env(TAG)
        check(not left, f"teardown: no process of this test left ({left})")
        if os.environ.get("CORNU_KEEP_TMP"):
            print(f"kept {tmp} (CORNU_KEEP_TMP)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return finish()
