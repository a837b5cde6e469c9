"""`python -m arca.microbenchmark --json`: one {"metrics": [...]} object with
Ray's `ray microbenchmark` names."""

import json
import math
import re
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


RAY_PRINTED = """\
2026-12-06 15:08:51,507\tINFO worker.py:2038 -- Started a local Ray instance.
single client get calls (Plasma Store) per second 12714.19 +- 490.69
single client put gigabytes per second 9.55 +- 12.12
placement group create/removal per second 525.35 +- 12.8
"""


def test_read_ray_takes_the_figures_ray_printed():
    from arca.microbenchmark import read_ray

    assert read_ray(RAY_PRINTED) == {
        "single client get calls (Plasma Store) per second": 12714.19,
        "single client put gigabytes per second": 9.55,
        "placement group create/removal per second": 525.35,
    }


def test_the_table_puts_rays_figure_and_the_ratio_beside(tmp_path):
    ray = tmp_path / "ray.txt"
    ray.write_text(RAY_PRINTED)
    args = [sys.executable, "-m", "arca.microbenchmark", "--seconds", "0.05"]
    out = subprocess.run(
        args + ["--filter", "get calls", "--ray", str(ray)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    # The table's row (after the progress lines).
    table = out.stdout.split("\n\n", 1)[1]
    row = [line for line in table.splitlines() if line.startswith("single client get calls")]
    assert len(row) == 1, out.stdout
    m = re.search(r"per second +([0-9.]+) \+- .* ([0-9.]+)x$", row[0])
    assert m, row
    value, ratio = float(m[1]), float(m[2])
    assert "Ray    12714" in row[0], row
    assert abs(ratio - value / 12714.19) < 0.06, row
    # A file without a figure is a usage error that says so.
    empty = tmp_path / "empty.txt"
    empty.write_text("nothing here\n")
    out = subprocess.run(args + ["--ray", str(empty)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "no `<name> per second <value> +- <std>` line" in out.stderr
