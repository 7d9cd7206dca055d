#!/usr/bin/python3
"""cornu under Slurm across several nodes, on one machine (usage: slurm_multinode.py CORNU CASE).

Three "nodes" are network namespaces with their own host names and addresses, linked by a bridge
(multihost.py's Cluster). slurmctld runs on node0, one slurmd on each node (`slurmd -N nodeI`,
its own spool, pid and log files), all with a private slurm.conf, state directory and munged
(slurm.py's Slurm: fresh key, private socket, which is a path and so reachable from every
namespace). Every Slurm client command runs on node0. The ranks of a step therefore run on
different hosts as Open MPI sees them, and talk TCP between the namespaces.

Cases:
  srun      `srun --mpi=pmix -N 3 -n 4`: weights == the 1-rank run within 1e-5, ranks placed on
            node0, node0, node1, node2 (block distribution over 2-CPU nodes), every rank finished.
  sbatch    launch/cornu.sbatch with `sbatch -N 2 --ntasks-per-node=1`: the same checks.
  failure   the task alone on node2 SIGKILLed inside epoch 1 (`--kill-on-bad-exit=1`): the step
            ends within 30 s, srun names node2 and the task, no rank is left anywhere.

Skips (77) without root, the Slurm/munge/iproute2/ssh tools, or network namespaces; a daemon
that does not come up is a failure, reported with its log.
"""
import os
import re
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as cu  # noqa: E402
import multihost as mh  # noqa: E402
import slurm as sm  # noqa: E402

CORNU = os.path.abspath(sys.argv[1])
CASE = sys.argv[2]
NODES = 3


class MultiSlurm(sm.Slurm):
    """slurm.py's private cluster, with slurmctld and one slurmd per namespace host."""

    def __init__(self, tmp, cl):
        super().__init__(tmp)
        self.cl = cl

    def on(self, i, cmd):
        """cmd on node i: its network namespace, host name and private PMIx directory (the nodes
        share one file system, where the steps of the nodes would otherwise create the same
        directory). Not `ip netns exec`, which mounts a fresh /sys where slurmd then finds no
        cgroup file systems."""
        t = self.tmp
        os.makedirs(f"{t}/pmix-node{i}", exist_ok=True)
        return ["nsenter", f"--net=/run/netns/{self.cl.ns[i]}", "unshare", "--uts", "--mount", "sh",
                "-c", f'mount --bind {t}/pmix-node{i} {t}/pmix && hostname node{i} && exec "$@"',
                "sh"] + [str(c) for c in cmd]

    def client(self, cmd, timeout, env=None, cwd=None):
        return super().client(self.on(0, cmd), timeout, env=env, cwd=cwd)

    def try_daemons(self, task_plugin):
        self.stop_daemons(["slurmctld"] + [f"slurmd{i}" for i in range(NODES)])
        self.fresh_dirs()
        for i in range(NODES):
            os.makedirs(f"{self.tmp}/spool/node{i}")
        # Fixed ports are fine: every daemon listens on its own namespace's address.
        self.ctld_port, self.slurmd_port = 6817, 6818
        nodes = "\n".join(f"NodeName=node{i} NodeHostname=node{i} NodeAddr={mh.ip_of(i)} {self.hw} "
                          "State=UNKNOWN" for i in range(NODES))
        self.write_conf(task_plugin, f"node0({mh.ip_of(0)})", nodes, f"node[0-{NODES - 1}]",
                        per_node=True)
        self.start("slurmctld", self.on(0, ["slurmctld", "-D", "-i", "-f", self.conf]))
        for i in range(NODES):
            self.start(f"slurmd{i}", self.on(i, ["slurmd", "-D", "-N", f"node{i}", "-f", self.conf]))
        names = ["slurmctld"] + [f"slurmd{i}" for i in range(NODES)]
        deadline = time.time() + 30
        while time.time() < deadline:
            if any(self.daemons[d].poll() is not None for d in names):
                print(f"{task_plugin}: a daemon exited:\n" + self.logs())
                return False
            rc, out, _ = self.client(["sinfo", "-h", "-o", "%n %T"], 15)
            states = dict(line.split() for line in out.splitlines() if len(line.split()) == 2)
            if rc == 0 and all(states.get(f"node{i}") == "idle" for i in range(NODES)):
                return True
            time.sleep(0.5)
        print(f"{task_plugin}: nodes not all idle after 30 s:\n" + self.logs())
        return False

    def logs(self):
        return "".join(self.log(n) for n in ["slurmctld"] + [f"slurmd-node{i}" for i in range(NODES)])


def check_run(status_dir, out_h5, ref, want_hosts, what, text):
    cu.compare(out_h5, ref, what, text)
    st = cu.read_status(status_dir)
    hosts = {r: st[r].get("host") for r in st}
    cu.check(hosts == want_hosts, f"{what}: ranks ran on {hosts} (expected {want_hosts})", text)
    cu.check(bool(st) and all(st[r].get("state") == "finished" for r in st),
             f"{what}: every rank finished", text)


def case_srun(sl, tmp):
    ref = sm.reference(tmp)
    if not ref:
        return
    out_h5 = os.path.join(tmp, "srun4.h5")
    status = os.path.join(tmp, "status-srun")
    os.makedirs(status)
    env = dict(sl.env, CORNU_STATUS_DIR=status)
    cmd = ["srun", "--mpi=pmix", "-N", str(NODES), "-n", "4", "--kill-on-bad-exit=1",
           CORNU, "train"] + cu.TRAIN_ARGS + ["--verbose-ranks", "--output", out_h5]
    print("running on node0: " + " ".join(cmd))
    rc, out, secs = sl.client(cmd, 90, env=env)
    print(out[-1500:])
    cu.check(rc == 0, f"srun --mpi=pmix -N {NODES} -n 4 exited 0 ({rc}, {secs:.1f} s)", out)
    check_run(status, out_h5, ref, {0: "node0", 1: "node0", 2: "node1", 3: "node2"},
              f"srun over {NODES} nodes", out)


def case_sbatch(sl, tmp):
    ref = sm.reference(tmp)
    if not ref:
        return
    out_h5 = os.path.join(tmp, "sbatch.h5")
    run_dir = os.path.join(tmp, "run-sbatch")
    env = dict(sl.env, CORNU=CORNU, OUT=run_dir)
    args = ["-N", "2", "--ntasks-per-node=1", "--cpus-per-task=1", f"--output={tmp}/sbatch-%j.out",
            sm.SBATCH_SCRIPT] + cu.TRAIN_ARGS + ["--verbose-ranks", "--output", out_h5]
    print("running on node0: sbatch " + " ".join(args))
    job = sm.sbatch(sl, args, env, tmp)
    if job is None:
        return
    code, state, secs = sm.job_wait(sl, job)
    job_out = sm.job_output(tmp, "sbatch-")
    print(job_out[-1500:])
    cu.check(code == 0, f"cornu.sbatch job {job} over 2 nodes: {state}, exit {code} ({secs:.1f} s)",
             job_out)
    check_run(os.path.join(run_dir, "status"), out_h5, ref, {0: "node0", 1: "node1"},
              "cornu.sbatch over 2 nodes", job_out)


def case_failure(sl, tmp):
    """Task 2, alone on node2, SIGKILLed inside epoch 1 of `srun -N 3 -n 3 --kill-on-bad-exit=1`:
    the step ends within 30 s, srun names node2 and the task, no rank is left on any node."""
    status = os.path.join(tmp, "status-failure")
    os.makedirs(status)
    env = dict(sl.env, CORNU_STATUS_DIR=status)
    cmd = sl.on(0, ["srun", "--mpi=pmix", "-N", str(NODES), "-n", str(NODES), "--kill-on-bad-exit=1",
                    CORNU, "train"] + cu.LONG_ARGS)
    print("running on node0: " + " ".join(cmd[cmd.index("srun"):]))
    proc = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        victim = sm.wait_for_step(tmp, status, 2, proc)
        where = {sl.cl.host_of_pid(p) for p in victim}
        if not cu.check(bool(victim) and where == {2}, f"found task 2's process on node2 ({where})",
                        "" if victim else proc.communicate()[0]):
            return
        out, took = cu.kill_and_collect(proc, victim)
        print(out[-1500:])
        cu.check(proc.returncode != 0, f"srun exit status non-zero ({proc.returncode})", out)
        cu.check(took < 30, f"the step ended {took:.1f} s after the kill (< 30 s)", out)
        cu.check(re.search(r"srun: error: node2: task 2: Killed", out) is not None,
                 "srun names node2, task 2 and that it was killed", out)
        cu.check(sm.ranks_gone(tmp, NODES, 5), "no rank left running on any node")
    finally:
        cu.stop_popen(proc)


CASES = {"srun": case_srun, "sbatch": case_sbatch, "failure": case_failure}


def setup(tmp, undo):
    sm.need_tools(("ip", "ssh", "sshd", "unshare", "nsenter"))
    mh.probe_capabilities()
    mh.remove_stale()
    sm.remove_stale()
    cl = mh.Cluster(tmp, NODES)
    sl = MultiSlurm(tmp, cl)
    sl.env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin:" + sl.env.get("PATH", "")
    undo.append(mh.teardown_check)
    undo.append(cl.down)
    cl.up()
    undo.append(sl.down)
    sl.up()
    return sl


def main():
    return cu.script_main("slurm_multinode.py", CASE, CASES, "network namespaces, slurmd", setup)


if __name__ == "__main__":
    sys.exit(main())
