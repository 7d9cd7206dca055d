#!/usr/bin/python3
"""Regenerates the seed corpora of fuzz_npy and fuzz_idx (tests/fuzz/corpus/{npy,idx}/seed-*).

Run from anywhere with Debian's Python (numpy): /usr/bin/python3 tests/fuzz/gen_corpus_data.py
Files found by libFuzzer (crash-*, other names) are left alone."""
import glob
import gzip
import io
import os
import struct

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def npy_bytes(a, version=None, fortran=False):
    f = io.BytesIO()
    if fortran:
        a = np.asfortranarray(a)
    np.lib.format.write_array(f, a, version=version)
    return f.getvalue()


def npy_raw(header, data=b"", major=1):
    """An NPY image with a hand-written header dict."""
    pre = 10 if major == 1 else 12
    body = header.encode()
    h = body + b" " * ((64 - (pre + len(body) + 1) % 64) % 64) + b"\n"
    ln = struct.pack("<H" if major == 1 else "<I", len(h))
    return b"\x93NUMPY" + bytes([major, 0]) + ln + h + data


def idx_bytes(code, dims, payload):
    return bytes([0, 0, code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + payload


def write(kind, name, data):
    with open(os.path.join(HERE, "corpus", kind, "seed-" + name), "wb") as f:
        f.write(data)


def main():
    for kind in ("npy", "idx"):
        os.makedirs(os.path.join(HERE, "corpus", kind), exist_ok=True)
        for old in glob.glob(os.path.join(HERE, "corpus", kind, "seed-*")):
            os.remove(old)

    r = np.random.default_rng(0)
    for t in ["u1", "i1", "<u2", ">u2", "<i2", ">i2", "<u4", ">i4", "<u8", ">i8",
              "<f2", ">f2", "<f4", ">f4", "<f8", ">f8", "?"]:
        a = (r.standard_normal((4, 3)) * 100).astype(t)
        n = t.replace("<", "le").replace(">", "be").replace("?", "bool")
        write("npy", n, npy_bytes(a))
    write("npy", "v2", npy_bytes(np.arange(6, dtype="<f4").reshape(2, 3), version=(2, 0)))
    write("npy", "v3", npy_bytes(np.arange(6, dtype="<i2"), version=(3, 0)))
    write("npy", "rank1", npy_bytes(np.arange(5, dtype="<f8")))
    write("npy", "rank4", npy_bytes(np.ones((2, 1, 3, 2), "u1")))
    write("npy", "empty", npy_bytes(np.zeros((0, 7), "<f4")))
    write("npy", "fortran-col", npy_bytes(np.ones((5, 1), "<f4"), fortran=True))
    write("npy", "fortran", npy_bytes(np.ones((2, 3), "<f4"), fortran=True))
    write("npy", "scalar", npy_bytes(np.float32(1)))
    write("npy", "complex", npy_bytes(np.ones(2, "<c8")))
    write("npy", "structured", npy_bytes(np.zeros(2, [("a", "<i4"), ("b", "<f4")])))
    write("npy", "py2-long", npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': (2L, 1L), }",
                                     b"\0" * 8))
    write("npy", "dquote", npy_raw('{"descr": "|u1", "fortran_order": False, "shape": (3,)}', b"abc"))
    write("npy", "truncated", npy_bytes(np.arange(10, dtype="<f4"))[:-5])
    write("npy", "trailing", npy_bytes(np.arange(3, dtype="<f4")) + b"xyz")
    write("npy", "bad-version", b"\x93NUMPY\x04\x00\x10\x00{}" + b" " * 13 + b"\n")
    write("npy", "huge-shape", npy_raw("{'descr': '<f8', 'fortran_order': False, "
                                       "'shape': (4294967296, 4294967296), }"))
    write("npy", "dup-key", npy_raw("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, "
                                    "'shape': (1,), }", b"\0" * 4))
    write("npy", "short", b"\x93NUMPY\x01")

    codes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    for code, t in codes.items():
        a = (r.standard_normal((3, 2, 2)) * 50).astype(t)
        raw = idx_bytes(code, a.shape, a.tobytes())
        write("idx", "type%02x" % code, raw)
        write("idx", "type%02x.gz" % code, gzip.compress(raw, mtime=0))
    fm = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
    if os.path.exists(fm):
        img = gzip.open(fm).read()[16:16 + 2 * 784]
        write("idx", "fashion2", idx_bytes(0x08, (2, 28, 28), img))
        write("idx", "fashion2.gz", gzip.compress(idx_bytes(0x08, (2, 28, 28), img), mtime=0))
    lab = idx_bytes(0x08, (10,), bytes(range(10)))
    write("idx", "labels", lab)
    write("idx", "labels-2members.gz", gzip.compress(lab[:7], mtime=0) + gzip.compress(lab[7:], mtime=0))
    write("idx", "truncated", lab[:-3])
    write("idx", "trailing", lab + b"\x01")
    write("idx", "truncated.gz", gzip.compress(lab, mtime=0)[:-9])
    write("idx", "garbage-after.gz", gzip.compress(lab, mtime=0) + b"junk")
    write("idx", "huge-dims", bytes([0, 0, 0x0E, 8]) + b"\xff" * 32)
    write("idx", "huge-dims.gz", gzip.compress(bytes([0, 0, 0x08, 2]) + b"\x7f\xff\xff\xff" * 2 + b"\0" * 100, mtime=0))
    write("idx", "bad-type", bytes([0, 0, 0x0A, 1, 0, 0, 0, 1, 5]))
    write("idx", "no-dims", bytes([0, 0, 0x08, 0]))


if __name__ == "__main__":
    main()
