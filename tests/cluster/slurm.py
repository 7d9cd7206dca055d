#!/usr/bin/python3
"""cornu under Slurm, on a private single-node cluster (usage: slurm.py CORNU CASE).

The test starts its own munged, slurmctld and slurmd (cluster_util.Slurm: Debian 12's slurm-wlm
22.05, a private slurm.conf, state and spool directories and free ports, all in a temporary
directory; nothing under /etc is read or written), runs the case, and stops everything it
started. The node, cornu0, is this machine at 127.0.0.1.

Cases:
  srun      `srun --mpi=pmix -n 2` and `-n 3 --overcommit` (Open MPI direct launch through
            PMIx): weights == 1 rank's within 1e-5, every rank finished, a timing line per rank.
  sbatch    launch/cornu.sbatch through `sbatch` (2 tasks x 1 CPU; the job polled with
            scontrol), and launch/cornu-mpirun inside `salloc` (mpirun reads the allocation):
            same check; cornu.sbatch fails the job when the binary is missing or no rank finished.
  failure   a task SIGKILLed in the middle of an epoch, under `srun --kill-on-bad-exit=1`,
            under plain `srun` (ended by Slurm's pmix plugin, else by cornu's --comm-timeout 5)
            and under cornu.sbatch: the step ends within 30 s, srun names the task, the
            survivors name their step, cornu.sbatch's post-mortem names the rank and its step.

Skips (77) only without root or without the Slurm/munge binaries; a daemon that does not come
up is a failure, reported with its log.
"""
import os
import re
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as cu  # noqa: E402

CORNU = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else ""


def case_srun(sl, tmp):
    ref = cu.reference(CORNU, tmp)
    if not ref:
        return
    cu.srun_equivalence(sl, CORNU, ref, ["-n", "2", "--cpu-bind=cores"], ["cornu0"] * 2, "srun -n 2")
    cu.srun_equivalence(sl, CORNU, ref, ["-n", "3", "--overcommit", "--cpu-bind=cores"], ["cornu0"] * 3,
                        "srun -n 3 --overcommit")


def case_sbatch(sl, tmp):
    ref = cu.reference(CORNU, tmp)
    if not ref:
        return
    cu.sbatch_equivalence(sl, CORNU, ref, nodes=1, per_node=2, what="cornu.sbatch 2 tasks")

    # A step that cannot start (no such binary) must fail the job, not end it with status 0;
    # and a step whose tasks exit 0 without training (here /bin/true; in the wild a launch
    # failure after which srun still exits 0): the script's check of the status files fails it.
    def submit(name, exe):
        return sl.sbatch(["-N", "1", "--ntasks-per-node=2", "--cpus-per-task=1",
                          f"--output={tmp}/{name}-%j.out", cu.SBATCH_SCRIPT] + cu.TRAIN_ARGS,
                         dict(sl.env, CORNU=exe, OUT=os.path.join(tmp, f"run-{name}")))
    bad, true = submit("bad", os.path.join(tmp, "no-such-cornu")), submit("true", "/bin/true")
    if bad:
        job = sl.job_wait(bad)
        cu.check(job.rc not in (0, None),
                 f"cornu.sbatch with a missing binary: the job fails ({job.state}, exit {job.rc})",
                 sl.job_output("bad-"))
    if true:
        job, out = sl.job_wait(true), sl.job_output("true-")
        said = "cornu.sbatch: srun exited 0 but only 0 of 2 ranks finished" in out
        cu.check(job.rc not in (0, None) and said, "cornu.sbatch whose ranks never trained: the job fails "
                 f"({job.state}, exit {job.rc}) and says why", out)

    # cornu-mpirun inside an allocation.
    cu.salloc_mpirun(sl, CORNU, ref, ["-n", "2"], 2, ["cornu0"] * 2, "cornu-mpirun in salloc -n 2")


def case_failure(sl, tmp):
    # 1. srun --kill-on-bad-exit=1: the survivor gets SIGTERM first and names its step.
    out, _ = cu.srun_kill(sl, CORNU, ["-n", "2", "--kill-on-bad-exit=1"], ntasks=2, victim=1, victim_node=0,
                          what="srun kill-on-bad-exit")
    if out is not None:
        cu.check(cu.stopped_by_sigterm(out, [0]) == [0], "the surviving rank 0 names its step", out)

    # 2. srun without --kill-on-bad-exit (Slurm's default KillOnBadExit=0): Slurm may let the
    #    survivor run on, and then cornu's own --comm-timeout (5 s here) must end the step.
    #    Measured with Slurm 22.05's pmix_v4 plugin: the PMIx error handler cancels the step ~1 s
    #    after a task dies even without --kill-on-bad-exit (the survivor gets SIGKILL, so it
    #    cannot report its step); a plugin that does not would leave it to the comm timeout.
    #    Either way the message must say which.
    out, _ = cu.srun_kill(sl, CORNU, ["-n", "2"], ntasks=2, victim=1, victim_node=0, what="plain srun",
                          train_args=["--comm-timeout", "5"])
    if out is not None:
        timed_out = re.search(r"cornu: rank 0 \[epoch 1 step \d+: [a-z ]+\]: .*did not complete "
                              r"within 5 s", out) is not None
        cancelled = re.search(r"STEP \S+ ON \S+ CANCELLED", out) is not None
        how = "cancelled by Slurm" if cancelled else "ended by the comm timeout"
        cu.check(timed_out or cancelled, f"plain srun: the step was {how}", out)

    # 3. Through launch/cornu.sbatch, whose post-mortem reads the status files.
    cu.sbatch_kill(sl, CORNU, nodes=1, per_node=2, victim=1, what="cornu.sbatch")


def setup(tmp, teardown):
    sl = cu.Slurm(tmp)
    teardown.callback(sl.down)
    sl.up()
    return sl


if __name__ == "__main__":
    sys.exit(cu.main({"srun": case_srun, "sbatch": case_sbatch, "failure": case_failure},
                     cu.Slurm.probe, setup, "slurmd runs jobs as root here"))
