#!/usr/bin/python3
"""PyTorch's side of the training benchmark (tests/bench/run).

The same models as cornu's built-in Fashion-MNIST MLP and CNN, written the way PyTorch users
write them (torch.nn modules, NCHW for the CNN, CrossEntropyLoss on logits -- the fused, stable
form of softmax + sparse categorical crossentropy -- torch.optim.Adam with Keras's defaults
lr 1e-3, betas (0.9, 0.999), eps 1e-7), trained on the real Fashion-MNIST training set
(the uint8 images are kept in memory and each batch is gathered, converted to float and scaled
by 1/255, like cornu's loader; batches are shuffled once per epoch).

Timing: warm-up steps, then --windows windows of --steps steps, each timed with
time.perf_counter() around the steps only. Prints every window and a RESULT line (best and
median samples/s, step time, peak RSS from getrusage).

Threads: --threads is torch.set_num_threads() (its OpenMP pool: oneDNN convolutions, elementwise
ops); OpenBLAS's own pool (Debian's torch does its GEMMs in OpenBLAS) is sized by the
OPENBLAS_NUM_THREADS environment variable, which the runner sets. --interop sets
torch.set_num_interop_threads().
"""

import argparse
import gzip
import os
import resource
import statistics
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


def read_idx(path):
    """An IDX file (gzip or raw) as a numpy array."""
    opener = gzip.open if open(path, "rb").read(2) == b"\x1f\x8b" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not a uint8 IDX file")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find(name, data_dir):
    for p in (os.path.join(data_dir, name + ".gz"), os.path.join(data_dir, name)):
        if os.path.exists(p):
            return p
    raise FileNotFoundError(f"{data_dir}/{name}[.gz] (apt-get install dataset-fashion-mnist)")


def make_model(kind):
    if kind == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256),
                             nn.ReLU(), nn.Linear(256, 10))
    return nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1600, 128),
                         nn.ReLU(), nn.Linear(128, 10))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--interop", type=int, default=0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data-dir", default=FASHION_DIR)
    ap.add_argument("--max-seconds", type=float, default=0,
                    help="stop after the window that passes this much time (0: no limit)")
    ap.add_argument("--foreach", action="store_true", help="torch.optim.Adam(foreach=True)")
    ap.add_argument("--channels-last", action="store_true",
                    help="CNN in torch.channels_last memory format")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    if args.interop > 0:
        torch.set_num_interop_threads(args.interop)
    torch.manual_seed(args.seed)
    x_all = torch.from_numpy(read_idx(find("train-images-idx3-ubyte", args.data_dir)).copy())
    y_all = torch.from_numpy(read_idx(find("train-labels-idx1-ubyte", args.data_dir))
                             .astype(np.int64))
    n = x_all.shape[0]
    model = make_model(args.model)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7,
                           foreach=True if args.foreach else None)
    loss_fn = nn.CrossEntropyLoss()
    model.train()

    per_epoch = (n + args.batch - 1) // args.batch
    state = {"perm": torch.randperm(n), "pos": 0}

    def batch():
        if state["pos"] >= per_epoch:
            state["perm"], state["pos"] = torch.randperm(n), 0
        i = state["pos"]
        state["pos"] += 1
        idx = state["perm"][i * args.batch:(i + 1) * args.batch]
        x = x_all[idx].float().div_(255.0)
        if args.model == "cnn":
            x = x.unsqueeze(1)
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        return x, y_all[idx]

    def step():
        x, y = batch()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    for _ in range(args.warmup):
        loss = step()
    wins = []
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t_start = time.perf_counter()
    for w in range(args.windows):
        if wins and args.max_seconds > 0 and time.perf_counter() - t_start > args.max_seconds:
            break
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
        t = time.perf_counter() - t0
        wins.append(t)
        print(f"window {w}: {args.steps} steps in {t:.4f} s = "
              f"{args.steps * args.batch / t:.1f} samples/s ({1e3 * t / args.steps:.3f} ms/step)")
    best, median = min(wins), statistics.median(wins)
    loss_v = float(loss)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    rss_mb = ru.ru_maxrss / 1024.0
    faults = (ru.ru_minflt - faults0) / (len(wins) * args.steps)
    print(f"RESULT impl=torch model={args.model} threads={args.threads} batch={args.batch} "
          f"steps={args.steps} windows={len(wins)} "
          f"samples_per_s={args.steps * args.batch / best:.2f} "
          f"median_samples_per_s={args.steps * args.batch / median:.2f} "
          f"step_ms={1e3 * best / args.steps:.4f} peak_rss_mb={rss_mb:.1f} "
          f"faults_per_step={faults:.1f} loss={loss_v:.4f} "
          f"torch={torch.__version__}")
    return 0 if np.isfinite(loss_v) else 1


if __name__ == "__main__":
    sys.exit(main())
