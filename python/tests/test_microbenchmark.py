"""`python -m arca.microbenchmark --json`: one {"metrics": [...]} object with
Ray's `ray microbenchmark` names."""

import json
import math
import subprocess
import sys

SINGLE_CLIENT = [
    "single client get calls (Plasma Store) per second",
    "single client put calls (Plasma Store) per second",
    "single client put gigabytes per second",
    "single client tasks and get batch per second",
    "single client get object containing 10k refs per second",
    "single client wait 1k refs per second",
    "single client tasks sync per second",
    "single client tasks async per second",
]


def test_microbenchmark_json_single_client():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "arca.microbenchmark",
            "--json",
            "--seconds",
            "0.05",
            "--filter",
            "single client",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert set(report) == {"metrics"}
    metrics = report["metrics"]
    assert isinstance(metrics, list) and metrics
    for m in metrics:
        assert {"name", "value", "unit"} <= set(m), m
        assert isinstance(m["name"], str)
        assert "single client" in m["name"]
        assert isinstance(m["value"], (int, float)) and not isinstance(m["value"], bool)
        assert math.isfinite(m["value"]) and m["value"] > 0, m
        expected_unit = "GB/s" if "gigabytes" in m["name"] else "per second"
        assert m["unit"] == expected_unit, m
    names = [m["name"] for m in metrics]
    assert len(names) == len(set(names))
    assert sorted(names) == sorted(SINGLE_CLIENT)
