"""Objects shared between a Rust and a Python driver on one node (started with
`arca start --head`): Python bytes read in Rust as arca::Buffer, and Rust's
Buffer, ArrowBatch and typed values read in Python."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile

import pytest
from conftest import driver_env, start_head, stop_node

REPO = pathlib.Path(__file__).resolve().parents[2]


def _bin(name: str) -> pathlib.Path:
    dirs = [os.environ.get("ARCA_BIN_DIR"), REPO / "target/debug", REPO / "target/release"]
    for d in dirs:
        if d and (pathlib.Path(d) / name).exists():
            return pathlib.Path(d) / name
    pytest.skip(f"{name} is not built (cargo test builds it)")


DRIVER = r"""
import subprocess, sys
import arca as ray

ray.init()
small, big = ray.put(b"abc"), ray.put(bytes(range(256)) * 4096)
rust = subprocess.Popen(
    [sys.argv[1], small.hex(), big.hex()],
    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
)
ids = {}
for line in rust.stdout:
    print("rust:", line.rstrip(), flush=True)
    if line.startswith("read"):
        continue
    kind, hex_id = line.split()
    ids[kind] = ray._native._borrow_ref(bytes.fromhex(hex_id))
    if kind == "typed":
        break
buf = ray.get(ids["buffer"])
print("buffer", type(buf).__name__, len(buf), set(buf))
batch = ray.get(ids["arrow"])
print("arrow", type(batch).__name__, batch.num_rows, batch.column(0)[999])
try:
    ray.get(ids["typed"])
except TypeError as e:
    print("typed TypeError:", e)
rust.stdin.close()
print("rust exit", rust.wait(timeout=30))
"""


def test_rust_and_python_share_objects():
    arca_bin, interop = _bin("arca"), _bin("examples/interop")
    with tempfile.TemporaryDirectory(prefix="arca-interop-") as d:
        env = driver_env()
        try:
            start_head(arca_bin, d, "--num-cpus", "1", "--memory", "256MiB")
            # Both drivers (and the Rust one it starts) use the node in d.
            env["ARCA_TEMP_DIR"] = d
            out = subprocess.run(
                [sys.executable, "-c", DRIVER, str(interop)],
                env=env,
                timeout=120,
                capture_output=True,
                text=True,
            )
        finally:
            stop_node(arca_bin, d)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "3 bytes sum 294" in text, text
    assert f"{256 * 4096} bytes sum {sum(range(256)) * 4096}" in text, text
    assert "buffer bytes 1048576 {7}" in text, text
    assert "arrow RecordBatch 1000 999" in text, text
    assert "typed TypeError: this object holds a typed Rust value" in text, text
    assert "rust exit 0" in text, text
