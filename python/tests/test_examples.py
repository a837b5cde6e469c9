"""Runs each script in python/examples/ and checks a line of what it prints."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import driver_env

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

DATABASE = ["Learning", "Ray", "Flexible", "Distributed", "Python", "for", "Machine", "Learning"]


def simple_task(out: str) -> None:
    assert "Tasks executed" in out
    counts = [int(n) for n in re.findall(r"^    (\d+) tasks on \S+$", out, re.M)]
    assert sum(counts) == 20, out
    assert re.search(r"^    1 nodes in total$", out, re.M), out


def retrieve_walkthrough(out: str) -> None:
    rows = [str((i, w)) for i, w in enumerate(DATABASE)]
    # The sequential run and the parallel run print the rows in order; the
    # ray.wait loop's final print has them in the order they finished.
    assert out.count("seconds, data:\n" + "\n".join(rows) + "\n") >= 2, out
    waited = out.split("seconds, data:\n")[-1].splitlines()[: len(rows)]
    assert sorted(waited) == sorted(rows), out
    for i in (0, 2, 4, 6):
        assert f"{(i, DATABASE[i]), (i + 1, DATABASE[i + 1])}\n" in out, out
    assert f"{list(enumerate(DATABASE))}\n8\n" in out, out


def fibonacci_tasks(out: str) -> None:
    n = os.cpu_count()
    assert out.startswith(f"{n}\n"), out
    assert out.count(f"{[100000] * n}\n") == 2, out


def core_walkthrough(out: str) -> None:
    assert "Object reference was cancelled.\n`get` timed out.\n1 2\n" in out, out
    assert "[1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n[2, 3, 4, 5, 6]\n" in out, out


def tips_first_time(out: str) -> None:
    assert out.count("results =  [0, 1, 2, 3]\n") == 3, out
    assert "results =  [ObjectRef(" in out, out
    assert out.count("\nresult =  6\n") == 2, out
    assert "per task overhead (ms) =" in out, out


def monte_carlo_pi(out: str) -> None:
    assert "Progress: 100%\n" in out, out
    m = re.search(r"^Estimated value of π is: ([0-9.]+)$", out, re.M)
    assert m, out
    assert abs(float(m.group(1)) - math.pi) < 0.1, out


CASES = [
    ("simple_task.py", simple_task),
    ("square_tasks.py", "[0, 1, 4, 9]\n"),
    ("retrieve_walkthrough.py", retrieve_walkthrough),
    ("fibonacci_tasks.py", fibonacci_tasks),
    ("core_walkthrough.py", core_walkthrough),
    ("tips_first_time.py", tips_first_time),
    ("monte_carlo_pi.py", monte_carlo_pi),
]


def test_every_example_is_listed():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(s for s, _ in CASES)


def run_example(script: str, expected, **env: str) -> None:
    """Runs `script` from python/examples with the test driver's environment
    (and `env`) and checks its output."""
    e = {**driver_env(), "PYTHONIOENCODING": "utf-8", **env}
    proc = subprocess.run(
        [sys.executable, script],
        cwd=EXAMPLES,
        env=e,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
    )
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    if callable(expected):
        expected(proc.stdout)
    else:
        assert expected in proc.stdout, proc.stdout


@pytest.mark.parametrize(("script", "expected"), CASES, ids=[s for s, _ in CASES])
def test_example(script, expected):
    run_example(script, expected)
