#!/usr/bin/python3
"""PyTorch DistributedDataParallel peer of cornu's 2-rank training (tests/bench/scaling.py).

  ddp_torch.py --model mlp|cnn [--nprocs 2] [--per-rank-batch 128] [--warmup N] [--steps N]
               [--windows N] [--bucket-cap-mb MB] [--foreach] [--pin]

Starts --nprocs worker processes of itself (gloo backend on 127.0.0.1, torch.set_num_threads(1)
and OPENBLAS_NUM_THREADS=OMP_NUM_THREADS=1 in each: ranks x 1 thread), each training the same
model as tests/bench/bench_torch.py (imported from there: torch.nn modules, CrossEntropyLoss on
logits, torch.optim.Adam with Keras's defaults lr 1e-3, eps 1e-7) wrapped in
torch.nn.parallel.DistributedDataParallel, on the real Fashion-MNIST training set. Every rank
draws the same shuffled permutation each epoch and takes its own disjoint slice of each global
batch of nprocs x per-rank-batch rows (what DistributedSampler does, and what cornu's loader
does), so the samples per step match `mpirun -np 2 cornu train --per-rank-batch B`.

Timing: warm-up steps, then --windows windows of --steps steps. Every window starts after a
dist.barrier(); its time is the slowest rank's (an all_reduce MAX), i.e. the time the job took.
The parent prints every window and a RESULT line (best and median samples/s over the whole job,
step time), in the format of bench_torch.py. --pin binds rank r to CPU r (as mpirun's default
--bind-to core does for cornu's ranks). Exit status 0, or 1 if a worker failed or did not finish within --timeout.
"""

import argparse
import datetime
import importlib.util
import os
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def load_bench_torch():
    """tests/bench/bench_torch.py as a module: the same model definitions and data reader."""
    spec = importlib.util.spec_from_file_location("bench_torch", os.path.join(HERE, "bench_torch.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parent(args):
    port = free_port()
    procs = []
    for r in range(args.nprocs):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(r),
                   WORLD_SIZE=str(args.nprocs), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker"] + sys.argv[1:]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    rc = 0
    outs = []
    deadline = time.time() + args.timeout
    for r, p in enumerate(procs):
        try:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for q in procs:  # a worker that never finishes must not hang the benchmark
                if q.poll() is None:
                    q.kill()
            out, _ = p.communicate()
            out += f"ddp_torch: rank {r} did not finish within {args.timeout:g} s: killed\n"
        outs.append(out)
        rc = rc or p.returncode
    for r, out in enumerate(outs):
        if rc != 0 or r == 0:
            sys.stdout.write(out if r == 0 else f"--- rank {r} ---\n{out}")
    return 1 if rc != 0 else 0


def worker(args):
    import numpy as np
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import faulthandler

    # A stuck worker prints where it is before the parent kills it.
    faulthandler.dump_traceback_later(max(1.0, args.timeout - 5), exit=False)
    bt = load_bench_torch()
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[rank % len(cpus)]})
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=size,
                            timeout=datetime.timedelta(seconds=args.timeout))
    x_all = torch.from_numpy(bt.read_idx(bt.find("train-images-idx3-ubyte", args.data_dir)).copy())
    y_all = torch.from_numpy(bt.read_idx(bt.find("train-labels-idx1-ubyte", args.data_dir))
                             .astype(np.int64))
    n = x_all.shape[0]
    torch.manual_seed(args.seed)  # same initial weights on every rank (DDP broadcasts anyway)
    model = DistributedDataParallel(bt.make_model(args.model), bucket_cap_mb=args.bucket_cap_mb)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7,
                           foreach=True if args.foreach else None)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()

    b, g = args.per_rank_batch, args.per_rank_batch * size
    per_epoch = n // g
    gen = torch.Generator().manual_seed(args.seed)  # the same permutation on every rank
    state = {"perm": torch.randperm(n, generator=gen), "pos": 0}

    def batch():
        if state["pos"] >= per_epoch:
            state["perm"], state["pos"] = torch.randperm(n, generator=gen), 0
        i = state["pos"]
        state["pos"] += 1
        idx = state["perm"][i * g + rank * b:i * g + (rank + 1) * b]
        x = x_all[idx].float().div_(255.0)
        if args.model == "cnn":
            x = x.unsqueeze(1)
        return x, y_all[idx]

    def step():
        x, y = batch()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()  # DDP's hooks allreduce the gradient buckets during backward
        opt.step()
        return loss

    for _ in range(args.warmup):
        loss = step()
    wins = []
    for w in range(args.windows):
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
        t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        wins.append(float(t[0]))
        if rank == 0:
            print(f"window {w}: {args.steps} steps in {wins[-1]:.4f} s = "
                  f"{args.steps * g / wins[-1]:.1f} samples/s "
                  f"({1e3 * wins[-1] / args.steps:.3f} ms/step)")
    loss_v = float(loss)
    best, median = min(wins), statistics.median(wins)
    if rank == 0:
        print(f"RESULT impl=ddp model={args.model} ranks={size} per_rank_batch={b} batch={g} "
              f"steps={args.steps} windows={len(wins)} bucket_cap_mb={args.bucket_cap_mb} "
              f"samples_per_s={args.steps * g / best:.2f} "
              f"median_samples_per_s={args.steps * g / median:.2f} "
              f"step_ms={1e3 * best / args.steps:.4f} loss={loss_v:.4f} torch={torch.__version__}",
              flush=True)
    dist.barrier()
    # Leave without tearing anything down: with PyTorch 1.13, destroying the DDP module or the
    # gloo process group (at destroy_process_group(), or when this function's locals go away)
    # sometimes hangs forever joining gloo's threads once the other rank has gone. Everything
    # is printed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0 if np.isfinite(loss_v) else 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    ap.add_argument("--nprocs", type=int, default=2)
    ap.add_argument("--per-rank-batch", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--windows", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bucket-cap-mb", type=float, default=25.0, help="DDP's default is 25")
    ap.add_argument("--foreach", action="store_true", help="torch.optim.Adam(foreach=True)")
    ap.add_argument("--pin", action="store_true", help="bind rank r to CPU r")
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--timeout", type=float, default=300,
                    help="kill the workers after this many seconds (and gloo's own timeout)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.nprocs < 1 or args.per_rank_batch < 1 or args.steps < 1 or args.windows < 1:
        ap.error("--nprocs, --per-rank-batch, --steps and --windows must be >= 1")
    if not args.worker:
        return parent(args)
    return worker(args)  # does not return: see its end


if __name__ == "__main__":
    sys.exit(main())
