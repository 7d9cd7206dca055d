#!/usr/bin/python3
"""Multi-host `mpirun` over a real TCP network, on one machine (usage: multihost.py CORNU CASE).

Three network namespaces are the "hosts" node0, node1 and node2 (own IP addresses on a bridge,
own host names through a UTS namespace), each running its own sshd with a throwaway host key,
a throwaway client key, a private known_hosts and a private config (nothing in ~/.ssh or
/etc/ssh is read or written). mpirun runs in node0 with a hostfile of the three addresses and
starts its daemons on node1 and node2 through Open MPI's ssh launcher, exactly as on a cluster,
so ranks on different hosts talk over TCP.

Cases:
  equivalence  plain mpirun, 4 ranks on 3 hosts (2+1+1), btl tcp,self, interfaces selected by
               CIDR: weights == 1 rank's within 1e-5; the ranks ran on the hosts the map says.
  wrapper      the same through launch/cornu-mpirun (--hostfile, --iface, default placement and
               transports), with 4 ranks (uneven slots) and 3 ranks (one per host).
  failure      a rank on a remote host is SIGKILLed in the middle of an epoch: the job stops
               within 30 s, mpirun names the rank and host, cornu-mpirun's post-mortem names the
               rank, its host and what it was doing.

Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN), iproute2, openssh-server and openssh-client; skips
(77) only when one of those is missing. Namespaces and daemons are torn down on every exit,
and namespaces left by an earlier run that was killed are removed at start.
"""
import os
import re
import shutil
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as cu  # noqa: E402

CORNU = os.path.abspath(sys.argv[1])
CASE = sys.argv[2]
HERE = os.path.dirname(os.path.abspath(__file__))
WRAPPER = os.path.join(HERE, "..", "..", "launch", "cornu-mpirun")
NS_PREFIX = "cornu-mh-"
SUBNET = "10.213.0.0/24"
NHOSTS = 3


def ip_of(i):
    return f"10.213.0.{i + 1}"


def sh(*cmd, check=True):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {p.returncode}: {p.stdout.strip()}")
    return p


def netns_list():
    p = sh("ip", "netns", "list", check=False)
    return [line.split()[0] for line in p.stdout.splitlines() if line.strip()]


def netns_remove(name):
    """Kills every process inside namespace `name` (by pid), then deletes the namespace."""
    for sig in (15, 9):
        pids = [int(x) for x in sh("ip", "netns", "pids", name, check=False).stdout.split() if x.isdigit()]
        if not pids:
            break
        cu.kill_pids(pids, sig)
        for _ in range(50):
            if not any(cu.pid_alive(p) for p in pids):
                break
            time.sleep(0.1)
    sh("ip", "netns", "del", name, check=False)


def remove_stale():
    """Namespaces of an earlier run whose test process is gone (killed by a CTest timeout)."""
    for name in netns_list():
        m = re.match(NS_PREFIX + r"(\d+)-", name)
        if m and not cu.pid_alive(int(m.group(1))):
            print(f"removing stale namespace {name}")
            netns_remove(name)


def probe_capabilities():
    for tool in ("ip", "ssh", "ssh-keygen", "unshare", "mpirun"):
        if shutil.which(tool) is None:
            cu.skip(f"no `{tool}` (Debian: iproute2, openssh-client, util-linux, openmpi-bin)")
    if not os.access("/usr/sbin/sshd", os.X_OK):
        cu.skip("no /usr/sbin/sshd (Debian: openssh-server)")
    probe = f"{NS_PREFIX}{os.getpid()}-probe"
    p = sh("ip", "netns", "add", probe, check=False)
    if p.returncode != 0:
        cu.skip(f"cannot create a network namespace (needs root with CAP_NET_ADMIN and CAP_SYS_ADMIN): {p.stdout.strip()}")
    try:
        p = sh("ip", "-n", probe, "link", "add", "name", "va", "type", "veth", "peer", "name", "vb", check=False)
        if p.returncode != 0:
            cu.skip(f"cannot create a veth pair (kernel without veth?): {p.stdout.strip()}")
        p = sh("ip", "-n", probe, "link", "add", "name", "vbr", "type", "bridge", check=False)
        if p.returncode != 0:
            cu.skip(f"cannot create a bridge (kernel without bridge support?): {p.stdout.strip()}")
    finally:
        sh("ip", "netns", "del", probe, check=False)


class Cluster:
    """node0..node{n-1}: one network namespace each, linked by a bridge in its own namespace,
    each with its own sshd (started by this object, stopped by down())."""

    def __init__(self, tmp, n):
        self.tmp = tmp
        self.n = n
        base = f"{NS_PREFIX}{os.getpid()}-"
        self.bridge_ns = base + "br"
        self.ns = [base + f"h{i}" for i in range(n)]
        self.sshd = []
        self.created = []
        self.rsh = os.path.join(tmp, "rsh")
        self.hostfile = os.path.join(tmp, "hosts")

    def up(self):
        t = self.tmp
        sh("ip", "netns", "add", self.bridge_ns)
        self.created.append(self.bridge_ns)
        sh("ip", "-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.bridge_ns, "link", "set", "br0", "up")
        for i, ns in enumerate(self.ns):
            sh("ip", "netns", "add", ns)
            self.created.append(ns)
            # The veth's host end is created directly in the bridge's namespace: nothing is
            # ever added to this machine's own network namespace.
            sh("ip", "-n", self.bridge_ns, "link", "add", f"p{i}", "type", "veth", "peer", "name", "eth0",
               "netns", ns)
            sh("ip", "-n", self.bridge_ns, "link", "set", f"p{i}", "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip_of(i)}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

        # Throwaway keys and private configs; sshd needs its privilege-separation directory.
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{t}/host_key")
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{t}/user_key")
        shutil.copy(f"{t}/user_key.pub", f"{t}/authorized_keys")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        with open(f"{t}/sshd_config", "w") as f:
            f.write(f"HostKey {t}/host_key\nAuthorizedKeysFile {t}/authorized_keys\n"
                    "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                    "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n")
        with open(f"{t}/ssh_config", "w") as f:
            f.write(f"Host *\n  IdentityFile {t}/user_key\n  IdentitiesOnly yes\n"
                    f"  UserKnownHostsFile {t}/known_hosts\n  GlobalKnownHostsFile /dev/null\n"
                    "  StrictHostKeyChecking no\n  BatchMode yes\n  LogLevel ERROR\n  ConnectTimeout 5\n")
        # Open MPI's plm_rsh_agent: the ssh that mpirun uses to start its daemons (orted).
        with open(self.rsh, "w") as f:
            f.write(f'#!/bin/sh\nexec ssh -F {t}/ssh_config "$@"\n')
        os.chmod(self.rsh, 0o755)
        for i, ns in enumerate(self.ns):
            log = open(f"{t}/sshd{i}.log", "w")
            self.sshd.append(subprocess.Popen(
                self.in_host(i, ["/usr/sbin/sshd", "-D", "-e", "-f", f"{t}/sshd_config",
                                 "-o", f"ListenAddress={ip_of(i)}"]),
                stdout=log, stderr=subprocess.STDOUT))
        # Wait until every host answers ssh from node0.
        deadline = time.time() + 20
        for i in range(1, self.n):
            while True:
                p = subprocess.run(self.in_host(0, [self.rsh, ip_of(i), "hostname"]), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
                if p.returncode == 0 and p.stdout.strip() == f"node{i}":
                    break
                if time.time() > deadline:
                    raise RuntimeError(f"ssh from node0 to {ip_of(i)} failed: {p.stdout.strip()}; sshd log: "
                                       + open(f"{t}/sshd{i}.log").read()[-1000:])
                time.sleep(0.3)
        print(f"cluster up: {self.n} hosts {', '.join(ip_of(i) for i in range(self.n))} on {SUBNET}")

    def in_host(self, i, cmd):
        """cmd run on host i: in its network namespace, with its own host name."""
        return ["ip", "netns", "exec", self.ns[i], "unshare", "--uts", "sh", "-c",
                f'hostname node{i} && exec "$@"', "sh"] + [str(c) for c in cmd]

    def write_hostfile(self, slots):
        with open(self.hostfile, "w") as f:
            f.write("# host slots=ranks\n")
            for i, s in enumerate(slots):
                f.write(f"{ip_of(i)} slots={s}\n")

    def host_of_pid(self, pid):
        p = sh("ip", "netns", "identify", str(pid), check=False)
        name = p.stdout.strip()
        return self.ns.index(name) if name in self.ns else None

    def down(self):
        for p in self.sshd:
            cu.stop_popen(p, grace=2)
        for ns in reversed(self.created):
            netns_remove(ns)


def mpi_env(tmp, status_dir):
    env = dict(os.environ, **cu.ROOT_ENV)
    env["CORNU_STATUS_DIR"] = status_dir
    env["CORNU_TEST_TAG"] = tmp
    return env


def check_placement(status_dir, want, text):
    st = cu.read_status(status_dir)
    hosts = {r: st[r].get("host") for r in st}
    cu.check(hosts == want, f"ranks ran on the mapped hosts: {hosts} == {want}", text)
    cu.check(all(st[r].get("state") == "finished" for r in st), "every rank finished", text)


def case_equivalence(cl, tmp):
    ref = os.path.join(tmp, "np1.h5")
    rc, out, _ = cu.run([CORNU, "train"] + cu.TRAIN_ARGS + ["--output", ref], 120,
                        env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    if not cu.check(rc == 0, "1-rank reference run", out):
        return
    cl.write_hostfile([2, 1, 1])
    status = os.path.join(tmp, "status-eq")
    os.makedirs(status)
    out_h5 = os.path.join(tmp, "np4.h5")
    cmd = ["mpirun", "--hostfile", cl.hostfile, "-np", "4",
           "--mca", "plm_rsh_agent", cl.rsh,
           "--mca", "btl", "tcp,self",
           "--mca", "btl_tcp_if_include", SUBNET, "--mca", "oob_tcp_if_include", SUBNET,
           "-x", "OMPI_ALLOW_RUN_AS_ROOT", "-x", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM",
           "-x", "OPENBLAS_NUM_THREADS", "-x", "CORNU_STATUS_DIR",
           CORNU, "train"] + cu.TRAIN_ARGS + ["--verbose-ranks", "--output", out_h5]
    print("running: " + " ".join(cmd))
    rc, out, secs = cu.run(cl.in_host(0, cmd), 90, env=mpi_env(tmp, status))
    print(out[-1500:])
    cu.check(rc == 0, f"mpirun -np 4 over 3 hosts exited 0 ({rc}, {secs:.1f} s)", out)
    compare(out_h5, ref, "4 ranks on 3 hosts over TCP", out)
    check_placement(status, {0: "node0", 1: "node0", 2: "node1", 3: "node2"}, out)
    cu.check(all(re.search(rf"^  rank {r}: step .* exposed comm ", out, re.M) for r in range(4)),
             "--verbose-ranks printed a line for each of the 4 ranks", out)


def compare(out_h5, ref, what, out):
    cu.compare(out_h5, ref, what, out)


def case_wrapper(cl, tmp):
    ref = os.path.join(tmp, "np1.h5")
    rc, out, _ = cu.run([CORNU, "train"] + cu.TRAIN_ARGS + ["--output", ref], 120,
                        env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    if not cu.check(rc == 0, "1-rank reference run", out):
        return
    cl.write_hostfile([2, 1, 1])
    # 4 ranks on slots 2+1+1: round robin over the hosts (rank 3 back on node0); 3 ranks: one
    # per host (ppr:1:node), uneven shards of the batch of 100.
    for np_, want in ((4, {0: "node0", 1: "node1", 2: "node2", 3: "node0"}),
                      (3, {0: "node0", 1: "node1", 2: "node2"})):
        status = os.path.join(tmp, f"status-w{np_}")
        out_h5 = os.path.join(tmp, f"w{np_}.h5")
        cmd = [WRAPPER, "--hostfile", cl.hostfile, "--iface", SUBNET, "--status-dir", status,
               "-np", np_, "--mca", "plm_rsh_agent", cl.rsh, "--",
               CORNU, "train"] + cu.TRAIN_ARGS + ["--verbose-ranks", "--output", out_h5]
        print("running: " + " ".join(map(str, cmd)))
        rc, out, secs = cu.run(cl.in_host(0, cmd), 90, env=mpi_env(tmp, status))
        print(out[-1200:])
        cu.check(rc == 0, f"cornu-mpirun -np {np_} over 3 hosts exited 0 ({rc}, {secs:.1f} s)", out)
        compare(out_h5, ref, f"cornu-mpirun: {np_} ranks on 3 hosts", out)
        check_placement(status, want, out)


def case_failure(cl, tmp):
    cl.write_hostfile([2, 1, 1])
    status = os.path.join(tmp, "status-kill")
    victim_rank = 2
    cmd = [WRAPPER, "--hostfile", cl.hostfile, "--iface", SUBNET, "--status-dir", status,
           "-np", "4", "--mca", "plm_rsh_agent", cl.rsh, "-x", "CORNU_TEST_TAG", "--",
           CORNU, "train"] + cu.LONG_ARGS
    print("running: " + " ".join(map(str, cmd)))
    proc = subprocess.Popen(cl.in_host(0, cmd), env=mpi_env(tmp, status), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        tag = f"CORNU_TEST_TAG={tmp}"
        victim = []
        deadline = time.time() + 45
        # Wait until the victim is inside its first epoch (its status line names a step).
        while time.time() < deadline and proc.poll() is None:
            victim = cu.rank_pids(CORNU, victim_rank, tag)
            st = cu.read_status(status).get(victim_rank, {})
            if victim and re.match(r"epoch 1 step \d+", st.get("status", "")):
                break
            time.sleep(0.3)
        time.sleep(1.0)
        if not cu.check(bool(victim), f"found rank {victim_rank}'s process"):
            return
        host = cl.host_of_pid(victim[0])
        cu.check(host is not None and host != 0, f"rank {victim_rank} runs on a remote host (node{host})")
        out, took = cu.kill_and_collect(proc, victim)
    finally:
        cu.stop_popen(proc)
    print(out[-3000:])
    cu.check(proc.returncode not in (0, None), f"job exit status non-zero ({proc.returncode})", out)
    cu.check(took < 30, f"every rank stopped {took:.1f} s after the kill (< 30 s)", out)
    cu.check(re.search(rf"process rank {victim_rank} with PID \d+ on node {re.escape(ip_of(host or 0))} "
                       r"exited on signal 9", out) is not None,
             f"mpirun names rank {victim_rank}, its host {ip_of(host or 0)} and signal 9", out)
    cu.check(re.search(rf"cornu-mpirun: rank {victim_rank} \(host node{host}, pid \d+\) ended without a report"
                       r".* while: epoch 1 step \d+", out) is not None,
             f"cornu-mpirun's post-mortem names rank {victim_rank}, node{host} and its step", out)
    cu.check(not [p for r in range(4) for p in cu.rank_pids(CORNU, r, f"CORNU_TEST_TAG={tmp}")],
             "no rank left running")


CASES = {"equivalence": case_equivalence, "wrapper": case_wrapper, "failure": case_failure}


def setup(tmp, undo):
    probe_capabilities()
    remove_stale()
    cl = Cluster(tmp, NHOSTS)
    undo.append(teardown_check)
    undo.append(cl.down)
    cl.up()
    return cl


def teardown_check():
    stale = [n for n in netns_list() if n.startswith(f"{NS_PREFIX}{os.getpid()}-")]
    cu.check(not stale, f"teardown removed every namespace ({stale})")


def main():
    return cu.script_main("multihost.py", CASE, CASES, "network namespaces, sshd", setup)


if __name__ == "__main__":
    sys.exit(main())
