#!/usr/bin/python3
"""cornu under Slurm, on a private single-node cluster (usage: slurm.py CORNU CASE).

The test starts its own munged (fresh key, private socket), slurmctld and slurmd (private
slurm.conf, state and spool directories, free ports, all in a temporary directory; nothing under
/etc is read or written) with Debian 12's slurm-wlm 22.05, runs the case, and stops everything
it started (jobs cancelled, daemons and their leftover processes killed by process id).

Cases:
  srun      `srun --mpi=pmix -n 2` and `-n 3 --overcommit` (Open MPI direct launch through
            PMIx): weights == 1 rank's within 1e-5, one timing line per rank.
  sbatch    launch/cornu.sbatch through `sbatch` (2 tasks x 1 CPU; the job polled with
            scontrol), and
            launch/cornu-mpirun inside `salloc` (mpirun reads the allocation): same check;
            cornu.sbatch fails the job when the binary is missing or no rank finished.
  failure   a task SIGKILLed in the middle of an epoch, under `srun --kill-on-bad-exit=1`,
            under plain `srun` (ended by Slurm's pmix plugin, else by cornu's --comm-timeout 5)
            and under cornu.sbatch: the step ends within 30 s, srun names the task, the
            survivors name their step, cornu.sbatch's post-mortem names the rank and its step.

Skips (77) only without root or without the Slurm/munge binaries; a daemon that does not come
up is a failure, reported with its log.
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as cu  # noqa: E402

CORNU = os.path.abspath(sys.argv[1])
CASE = sys.argv[2]
HERE = os.path.dirname(os.path.abspath(__file__))
LAUNCH = os.path.abspath(os.path.join(HERE, "..", "..", "launch"))
SBATCH_SCRIPT = os.path.join(LAUNCH, "cornu.sbatch")
WRAPPER = os.path.join(LAUNCH, "cornu-mpirun")
TAG_VAR = "CORNU_CLUSTER_TAG"
TOOLS = ("slurmctld", "slurmd", "munged", "srun", "sbatch", "salloc", "scontrol", "sinfo",
         "squeue", "scancel", "mpirun")


def which(tool):
    for d in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        if os.access(os.path.join(d, tool), os.X_OK):
            return os.path.join(d, tool)
    return shutil.which(tool)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def remove_stale():
    """Processes (daemons, job steps) of an earlier run whose test process is gone."""
    stale = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        for entry in cu.environ_of(p):
            m = re.match(rb"CORNU_CLUSTER_TAG=slurm:(\d+):", entry)
            if m and not cu.pid_alive(int(m.group(1))):
                stale.append(int(p))
    if stale:
        print(f"killing processes of an earlier, killed run: {stale}")
        cu.kill_pids(stale)


class Slurm:
    def __init__(self, tmp):
        self.tmp = tmp
        self.tag = f"slurm:{os.getpid()}:{tmp}"
        self.conf = os.path.join(tmp, "slurm.conf")
        self.daemons = {}
        self.env = dict(os.environ, **cu.ROOT_ENV)
        self.env.update({"SLURM_CONF": self.conf, TAG_VAR: self.tag, "CORNU_TEST_TAG": tmp})
        self.task_plugin = None

    def client(self, cmd, timeout, env=None, cwd=None):
        """A Slurm client command (sinfo, sbatch, scontrol, ...) where the controller is
        reachable: (exit status, output, seconds)."""
        return cu.run(cmd, timeout, env=env or self.env, cwd=cwd or self.tmp)

    def write_conf(self, task_plugin, ctld, nodes, partition, per_node):
        """slurm.conf: the controller `ctld` ("name(address)"), node lines, the partition's
        node list; per_node: spool, pid and log files per node (%n), for several slurmd sharing
        this machine's file system."""
        t = self.tmp
        n = "-%n" if per_node else ""
        first_job = 1000 + (os.getpid() % 100000) * 100
        with open(self.conf, "w") as f:
            f.write(f"""ClusterName=cornutest
FirstJobId={first_job}
SlurmctldHost={ctld}
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.sock}
CredType=cred/munge
StateSaveLocation={t}/state
SlurmdSpoolDir={t}/spool{'/%n' if per_node else ''}
SlurmctldPidFile={t}/slurmctld.pid
SlurmdPidFile={t}/slurmd{n}.pid
SlurmctldLogFile={t}/slurmctld.log
SlurmdLogFile={t}/slurmd{n}.log
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
PartitionName=debug Nodes={partition} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
""")

    def fresh_dirs(self):
        """Empty state and spool directories, and the PMIx client directories in ours: the pmix
        plugin names them /tmp/spmix_appdir_<uid>_<job>.<step> by default, so two clusters on
        one machine (CTest -j) would otherwise share them."""
        t = self.tmp
        for d in ("state", "spool"):
            shutil.rmtree(f"{t}/{d}", ignore_errors=True)
            os.makedirs(f"{t}/{d}")
        os.makedirs(f"{t}/pmix", exist_ok=True)
        with open(f"{t}/mpi.conf", "w") as f:
            f.write(f"PMIxCliTmpDirBase={t}/pmix\n")

    def start(self, name, cmd):
        log = open(os.path.join(self.tmp, f"{name}.out"), "w")
        self.daemons[name] = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                              cwd=self.tmp)

    def log(self, name):
        text = ""
        for f in (f"{name}.out", f"{name}.log"):
            p = os.path.join(self.tmp, f)
            if os.path.exists(p):
                text += open(p, errors="replace").read()[-2000:]
        return text

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
                raise RuntimeError("munged did not start: " + self.log("munged"))
            time.sleep(0.1)
        # The node as slurmd sees it (CPUs, sockets, cores, memory), under our own node name.
        p = subprocess.run(["slurmd", "-C"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        m = re.search(r"^NodeName=\S+ (.*)$", p.stdout, re.M)
        if not m:
            raise RuntimeError(f"slurmd -C: unexpected output: {p.stdout.strip()}")
        self.hw = m.group(1).strip()
        self.cpus = int(re.search(r"CPUs=(\d+)", self.hw).group(1))
        # task/affinity binds each task to its CPUs (what --cpu-bind=cores needs); task/none
        # is the fallback if the kernel refuses it.
        for plugin in ("task/affinity", "task/none"):
            if self.try_daemons(plugin):
                self.task_plugin = plugin
                break
        else:
            raise RuntimeError("slurmctld/slurmd never reported the node idle; logs:\n"
                               + self.log("slurmctld") + "\n" + self.log("slurmd"))
        print(f"slurm up: nodes of {self.hw}, TaskPlugin={self.task_plugin}, "
              f"ports {self.ctld_port}/{self.slurmd_port}")

    def try_daemons(self, task_plugin):
        self.stop_daemons(("slurmd", "slurmctld"))
        self.fresh_dirs()
        host = socket.gethostname()
        self.ctld_port, self.slurmd_port = free_port(), free_port()
        self.write_conf(task_plugin, f"{host}(127.0.0.1)",
                        f"NodeName=cornu0 NodeHostname={host} NodeAddr=127.0.0.1 {self.hw} "
                        "State=UNKNOWN", "cornu0", per_node=False)
        self.start("slurmctld", ["slurmctld", "-D", "-i", "-f", self.conf])
        self.start("slurmd", ["slurmd", "-D", "-N", "cornu0", "-f", self.conf])
        deadline = time.time() + 20
        while time.time() < deadline:
            if any(self.daemons[d].poll() is not None for d in ("slurmctld", "slurmd")):
                print(f"{task_plugin}: a daemon exited:\n" + self.log("slurmctld") + self.log("slurmd"))
                return False
            _, out, _ = self.client(["sinfo", "-h", "-n", "cornu0", "-o", "%T"], 15)
            if out.strip() == "idle":
                return True
            time.sleep(0.5)
        print(f"{task_plugin}: node not idle after 20 s")
        return False

    def stop_daemons(self, names):
        for n in names:
            cu.stop_popen(self.daemons.pop(n, None), grace=5)

    def down(self):
        if "slurmctld" in self.daemons and self.daemons["slurmctld"].poll() is None:
            self.client(["scancel", "--full", "--partition=debug"], 15)
            deadline = time.time() + 15
            while time.time() < deadline:
                rc, out, _ = self.client(["squeue", "-h"], 15)
                if rc != 0 or not out.strip():
                    break
                time.sleep(0.5)
        # slurmd(s) first, then the controller, then munged.
        self.stop_daemons(sorted(self.daemons, key=lambda d: (d == "munged", d == "slurmctld")))
        # Job steps (slurmstepd and the tasks) outlive slurmd by design: end them by pid.
        left = [p for p in cu.pids_with_env(f"{TAG_VAR}={self.tag}") if p != os.getpid()]
        cu.kill_pids(left)
        time.sleep(0.2)
        left = [p for p in cu.pids_with_env(f"{TAG_VAR}={self.tag}") if p != os.getpid()]
        cu.check(not left, f"teardown: no process of this cluster left ({left})")


def sbatch(sl, args, env, tmp):
    """Submits a batch job; returns its id (or None, with the check failed)."""
    rc, out, _ = sl.client(["sbatch", "--parsable"] + args, 30, env=env, cwd=tmp)
    m = re.match(r"\s*(\d+)", out) if rc == 0 else None
    if not cu.check(m is not None, f"sbatch {' '.join(args[:6])} ... submitted", out):
        return None
    return m.group(1)


def job_wait(sl, job, timeout=90):
    """Polls the job until it ends (sbatch --wait backs off to 10 s and more between polls);
    returns (exit code, state, seconds), exit code None if it did not end in time."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        _, info, _ = sl.client(["scontrol", "-o", "show", "job", job], 15)
        state = re.search(r"JobState=(\S+)", info)
        code = re.search(r"ExitCode=(\d+):(\d+)", info)
        if state and state.group(1) in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                                         "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE"):
            rc = int(code.group(1)) if code else -1
            if code and int(code.group(2)):
                rc = 128 + int(code.group(2))
            return rc, state.group(1), time.time() - t0
        time.sleep(0.3)
    sl.client(["scancel", job], 15)
    return None, "still running", time.time() - t0


def job_output(tmp, prefix):
    return "".join(open(os.path.join(tmp, f), errors="replace").read()
                   for f in sorted(os.listdir(tmp)) if f.startswith(prefix))


def reference(tmp):
    ref = os.path.join(tmp, "np1.h5")
    rc, out, _ = cu.run([CORNU, "train"] + cu.TRAIN_ARGS + ["--output", ref], 120,
                        env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    return ref if cu.check(rc == 0, "1-rank reference run", out) else None


def timing_lines(out, n):
    return all(re.search(rf"^  rank {r}: step .* exposed comm ", out, re.M) for r in range(n))


def case_srun(sl, tmp):
    ref = reference(tmp)
    if not ref:
        return
    for n, extra in ((2, []), (3, ["--overcommit"])):
        out_h5 = os.path.join(tmp, f"srun{n}.h5")
        cmd = ["srun", "--mpi=pmix", "-n", str(n), "--kill-on-bad-exit=1", "--cpu-bind=cores"] + extra + [
            CORNU, "train"] + cu.TRAIN_ARGS + ["--verbose-ranks", "--output", out_h5]
        print("running: " + " ".join(cmd))
        rc, out, secs = cu.run(cmd, 90, env=sl.env, cwd=tmp)
        print(out[-1200:])
        cu.check(rc == 0, f"srun --mpi=pmix -n {n} exited 0 ({rc}, {secs:.1f} s)", out)
        cu.compare(out_h5, ref, f"srun -n {n}", out)
        cu.check(timing_lines(out, n), f"--verbose-ranks printed a line for each of the {n} ranks", out)


def case_sbatch(sl, tmp):
    ref = reference(tmp)
    if not ref:
        return
    out_h5 = os.path.join(tmp, "sbatch2.h5")
    run_dir = os.path.join(tmp, "run-sbatch")
    env = dict(sl.env, CORNU=CORNU, OUT=run_dir)
    base = ["-N", "1", "--ntasks-per-node=2", "--cpus-per-task=1"]
    args = base + [f"--output={tmp}/sbatch-%j.out", SBATCH_SCRIPT] + cu.TRAIN_ARGS + [
        "--verbose-ranks", "--output", out_h5]
    print("running: sbatch " + " ".join(args))
    job = sbatch(sl, args, env, tmp)
    if job is None:
        return
    rc, state, secs = job_wait(sl, job)
    job_out = job_output(tmp, "sbatch-")
    print(job_out[-1500:])
    cu.check(rc == 0, f"cornu.sbatch job {job} {state}, exit {rc} ({secs:.1f} s)", job_out)
    cu.compare(out_h5, ref, "cornu.sbatch, 2 tasks", job_out)
    cu.check(timing_lines(job_out, 2), "the job's output has a timing line for each of the 2 ranks", job_out)
    st = cu.read_status(os.path.join(run_dir, "status"))
    cu.check(sorted(st) == [0, 1] and all(s.get("state") == "finished" for s in st.values()),
             f"status files of ranks 0 and 1 in $OUT/status say finished ({ {r: s.get('state') for r, s in st.items()} })",
             job_out)
    if sl.task_plugin == "task/affinity":
        cu.check("lacks support for cpu binding" not in job_out, "--cpu-bind=cores accepted", job_out)

    # A step that cannot start (no such binary) must fail the job, not end it with status 0;
    # and a step whose tasks exit 0 without training (here /bin/true; in the wild a launch
    # failure after which srun still exits 0): the script's check of the status files fails it.
    bad = sbatch(sl, base + [f"--output={tmp}/bad-%j.out", SBATCH_SCRIPT] + cu.TRAIN_ARGS,
                 dict(env, CORNU=os.path.join(tmp, "no-such-cornu"), OUT=os.path.join(tmp, "run-bad")), tmp)
    true = sbatch(sl, base + [f"--output={tmp}/true-%j.out", SBATCH_SCRIPT] + cu.TRAIN_ARGS,
                  dict(env, CORNU="/bin/true", OUT=os.path.join(tmp, "run-true")), tmp)
    if bad:
        rc, state, _ = job_wait(sl, bad)
        cu.check(rc not in (0, None), f"cornu.sbatch with a missing binary: the job fails ({state}, exit {rc})",
                 job_output(tmp, "bad-"))
    if true:
        rc, state, _ = job_wait(sl, true)
        out = job_output(tmp, "true-")
        cu.check(rc not in (0, None) and "cornu.sbatch: srun exited 0 but only 0 of 2 ranks finished" in out,
                 f"cornu.sbatch whose ranks never trained: the job fails and says why ({state}, exit {rc})", out)

    # cornu-mpirun inside an allocation: mpirun takes the node list and slots from Slurm and
    # starts its daemon with srun.
    out_h5 = os.path.join(tmp, "salloc2.h5")
    cmd = ["salloc", "-n", "2", WRAPPER, "-np", "2", "--", CORNU, "train"] + cu.TRAIN_ARGS + [
        "--output", out_h5]
    print("running: " + " ".join(cmd))
    rc, out, secs = cu.run(cmd, 90, env=sl.env, cwd=tmp)
    print(out[-800:])
    cu.check(rc == 0, f"salloc -n 2 cornu-mpirun -np 2 exited 0 ({rc}, {secs:.1f} s)", out)
    cu.compare(out_h5, ref, "cornu-mpirun in salloc, 2 ranks", out)


def wait_for_step(tmp, status_dir, rank, proc, timeout=45):
    """PIDs of task `rank` once its status line names a step of epoch 1."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        pids = cu.rank_pids(CORNU, rank, f"CORNU_TEST_TAG={tmp}")
        st = cu.read_status(status_dir).get(rank, {}) if status_dir else {"status": "epoch 1 step 1"}
        if pids and re.match(r"epoch 1 step \d+", st.get("status", "")):
            time.sleep(1.0)
            return pids
        time.sleep(0.3)
    return []


def ranks_gone(tmp, n, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not any(cu.rank_pids(CORNU, r, f"CORNU_TEST_TAG={tmp}") for r in range(n)):
            return True
        time.sleep(0.2)
    return False


def case_failure(sl, tmp):
    # 1. srun directly.
    status = os.path.join(tmp, "status-srun")
    os.makedirs(status)
    env = dict(sl.env, CORNU_STATUS_DIR=status)
    cmd = ["srun", "--mpi=pmix", "-n", "2", "--kill-on-bad-exit=1", CORNU, "train"] + cu.LONG_ARGS
    print("running: " + " ".join(cmd))
    proc = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        victim = wait_for_step(tmp, status, 1, proc)
        if not victim:
            cu.stop_popen(proc)
            cu.check(False, "srun: found task 1's process inside epoch 1", proc.communicate()[0])
        else:
            out, took = cu.kill_and_collect(proc, victim)
            print(out[-1500:])
            cu.check(proc.returncode != 0, f"srun exit status non-zero ({proc.returncode})", out)
            cu.check(took < 30, f"srun: the step ended {took:.1f} s after the kill (< 30 s)", out)
            cu.check(re.search(r"srun: error: cornu0: task 1: Killed", out) is not None,
                     "srun names task 1 and that it was killed", out)
            cu.check(re.search(r"cornu: rank 0 \[epoch 1 step \d+: [a-z ]+\]: stopped by SIGTERM", out)
                     is not None, "the surviving rank 0 names its step", out)
            cu.check(ranks_gone(tmp, 2, 5), "no rank left running")
    finally:
        cu.stop_popen(proc)

    # 2. srun without --kill-on-bad-exit (Slurm's default KillOnBadExit=0): Slurm may let the
    #    survivor run on, and then cornu's own --comm-timeout (5 s here) must end the step.
    status = os.path.join(tmp, "status-nokill")
    os.makedirs(status)
    env = dict(sl.env, CORNU_STATUS_DIR=status)
    cmd = ["srun", "--mpi=pmix", "-n", "2", CORNU, "train"] + cu.LONG_ARGS + ["--comm-timeout", "5"]
    print("running: " + " ".join(cmd))
    proc = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        victim = wait_for_step(tmp, status, 1, proc)
        if not victim:
            cu.stop_popen(proc)
            cu.check(False, "srun (no kill-on-bad-exit): found task 1's process inside epoch 1",
                     proc.communicate()[0])
        else:
            out, took = cu.kill_and_collect(proc, victim)
            print(out[-1500:])
            cu.check(proc.returncode != 0, f"srun (no kill-on-bad-exit) exit status non-zero ({proc.returncode})", out)
            cu.check(took < 30, f"srun (no kill-on-bad-exit): the step ended {took:.1f} s after the kill (< 30 s)", out)
            # Measured with Slurm 22.05's pmix_v4 plugin: the PMIx error handler cancels the
            # step ~1 s after a task dies even without --kill-on-bad-exit (the survivor gets
            # SIGKILL, so it cannot report its step); a plugin that does not would leave it to
            # the comm timeout. Either way the message must say which.
            timed_out = re.search(r"cornu: rank 0 \[epoch 1 step \d+: [a-z ]+\]: .*did not complete within 5 s",
                                  out) is not None
            cancelled = re.search(r"STEP \S+ ON \S+ CANCELLED", out) is not None
            cu.check("srun: error: cornu0: task 1: Killed" in out and (timed_out or cancelled),
                     f"srun names task 1; the step was {'cancelled by Slurm' if cancelled else 'ended by the comm timeout'}",
                     out)
            cu.check(ranks_gone(tmp, 2, 5), "no rank left running")
    finally:
        cu.stop_popen(proc)

    # 3. Through launch/cornu.sbatch, whose post-mortem reads the status files.
    run_dir = os.path.join(tmp, "run-kill")
    env = dict(sl.env, CORNU=CORNU, OUT=run_dir)
    args = ["-N", "1", "--ntasks-per-node=2", "--cpus-per-task=1", f"--output={tmp}/kill-%j.out",
            SBATCH_SCRIPT] + cu.LONG_ARGS
    print("running: sbatch " + " ".join(args))
    job = sbatch(sl, args, env, tmp)
    if job is None:
        return
    probe = subprocess.Popen(["sleep", "60"])  # wait_for_step() needs a process to poll
    try:
        victim = wait_for_step(tmp, os.path.join(run_dir, "status"), 1, probe)
    finally:
        cu.stop_popen(probe)
    if not cu.check(bool(victim), "sbatch: found task 1's process inside epoch 1", job_output(tmp, "kill-")):
        return
    t0 = time.time()
    cu.kill_pids(victim)
    gone = ranks_gone(tmp, 2, 30)
    took = time.time() - t0
    rc, state, _ = job_wait(sl, job, 60)
    job_out = job_output(tmp, "kill-")
    print(job_out[-2000:])
    cu.check(gone and took < 30, f"sbatch: every rank stopped {took:.1f} s after the kill (< 30 s)", job_out)
    cu.check(rc not in (0, None), f"the job failed ({state}, exit {rc})", job_out)
    cu.check("srun: error: cornu0: task 1: Killed" in job_out, "the job log names task 1", job_out)
    cu.check(re.search(r"cornu\.sbatch: rank 1 on \S+ ended without a report while: epoch 1 step \d+",
                       job_out) is not None,
             "cornu.sbatch's post-mortem names rank 1 and its step", job_out)


CASES = {"srun": case_srun, "sbatch": case_sbatch, "failure": case_failure}


def need_tools(extra=()):
    missing = [t for t in TOOLS + tuple(extra) if which(t) is None]
    if missing:
        cu.skip(f"missing {', '.join(missing)} (Debian: slurm-wlm, munge, openmpi-bin, iproute2, "
                "openssh)")


def setup(tmp, undo):
    need_tools()
    remove_stale()
    sl = Slurm(tmp)
    sl.env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin:" + sl.env.get("PATH", "")
    undo.append(sl.down)
    sl.up()
    return sl


def main():
    return cu.script_main("slurm.py", CASE, CASES, "slurmd runs jobs as root here", setup)


if __name__ == "__main__":
    sys.exit(main())
