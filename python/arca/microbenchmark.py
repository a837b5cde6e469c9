"""``python -m arca.microbenchmark``: Ray's ``ray microbenchmark`` on Arca.

The workloads are those of Ray's ``python/ray/_private/ray_perf.py`` (tasks,
actors, async actors and the object store), under the names Ray prints, so the
figures line up with ``ray microbenchmark``'s. Each is timed as Ray's
``timeit`` does: a warm-up, then rounds that count calls in steps of a tenth of
the warm-up's count; the figure is the mean of the rounds' rates, ``+-`` their
standard deviation. Ray sleeps 10 s before each workload, warms up for 1 s and
times 4 rounds of 2 s; here ``--seconds`` (default 2) is each workload's timed
total, split into ``--rounds`` (default 3) rounds, after a warm-up of a quarter
of it (at most 1 s), so that a whole run takes about 3 minutes on 2 cores. A
round always makes at least one call: the workloads whose one call takes
longer (``multi client tasks async``: 40,000 tasks) take longer.

Two figures are added: ``init to first task result seconds`` (``init()`` to
the first task's result, in a fresh interpreter that has imported ``arca``)
and ``memcpy gigabytes per second`` (numpy copying 1 GiB into a preallocated
array, in 1e9 bytes), the physical limit beside the put bandwidths. The put
bandwidths keep Ray's accounting: a put of 100 Mi int64 (838.9 MB) counts as
0.8 GB, so Ray's and Arca's figures compare one to one (bytes/1e9 is 4.9%
higher).

Options: ``--json`` prints one ``{"metrics": [{"name", "value", "unit",
"std"}, ...]}`` object on stdout (progress goes to stderr); ``--seconds S``
per workload; ``--rounds N``; ``--filter SUBSTRING`` runs only the workloads whose
name contains it; ``--ray FILE`` reads what ``ray microbenchmark`` printed (on
this machine, the same day: ``scripts/bench-vs-ray`` runs both) and adds Ray's
figure and the ratio to the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import arca as ray

# The remote functions and classes of ray_perf.py.


@ray.remote(num_cpus=0)
class Actor:
    def small_value(self):
        return b"ok"

    def small_value_arg(self, x):
        return b"ok"

    def small_value_batch(self, n):
        ray.get([small_value.remote() for _ in range(n)])


@ray.remote
class AsyncActor:
    async def small_value(self):
        return b"ok"

    async def small_value_with_arg(self, x):
        return b"ok"

    async def small_value_batch(self, n):
        await asyncio.wait([small_value.remote() for _ in range(n)])


@ray.remote(num_cpus=0)
class Client:
    def __init__(self, servers):
        if not isinstance(servers, list):
            servers = [servers]
        self.servers = servers

    def small_value_batch(self, n):
        results = []
        for s in self.servers:
            results.extend([s.small_value.remote() for _ in range(n)])
        ray.get(results)

    def small_value_batch_arg(self, n):
        x = ray.put(0)
        results = []
        for s in self.servers:
            results.extend([s.small_value_arg.remote(x) for _ in range(n)])
        ray.get(results)


@ray.remote
def small_value():
    return b"ok"


@ray.remote
def create_object_containing_ref():
    obj_refs = []
    for _ in range(10000):
        obj_refs.append(ray.put(1))
    return obj_refs


@ray.remote
def do_put_small():
    for _ in range(100):
        ray.put(0)


@ray.remote
def do_put():
    for _ in range(10):
        ray.put(np.zeros(10 * 1024 * 1024, dtype=np.int64))


@ray.remote
def work(actors, n):
    n_cpu = len(actors)
    ray.get([actors[i % n_cpu].small_value.remote() for i in range(n)])


# The workloads: each a setup that returns (the function timed, multiplier),
# run only when its name passes the filter. The setup's locals (actors, refs)
# live until the workload ends, as in ray_perf.py where each rebinding drops
# the previous workload's actors.

Setup = Callable[[], tuple[Callable[[], Any], float]]


def _workloads() -> list[tuple[str, Setup]]:
    w: list[tuple[str, Setup]] = []

    def add(name: str) -> Callable[[Setup], Setup]:
        def deco(setup: Setup) -> Setup:
            w.append((name, setup))
            return setup

        return deco

    n_cpu = multiprocessing.cpu_count() // 2

    @add("single client get calls (Plasma Store)")
    def _():
        value = ray.put(0)
        return lambda: ray.get(value), 1

    @add("single client put calls (Plasma Store)")
    def _():
        return lambda: ray.put(0), 1

    @add("multi client put calls (Plasma Store)")
    def _():
        return lambda: ray.get([do_put_small.remote() for _ in range(10)]), 1000

    @add("single client put gigabytes")
    def _():
        arr = np.zeros(100 * 1024 * 1024, dtype=np.int64)
        return lambda: ray.put(arr), 8 * 0.1

    @add("single client tasks and get batch")
    def _():
        def small_value_batch():
            submitted = [small_value.remote() for _ in range(1000)]
            ray.get(submitted)
            return 0

        return small_value_batch, 1

    @add("multi client put gigabytes")
    def _():
        return lambda: ray.get([do_put.remote() for _ in range(10)]), 10 * 8 * 0.1

    @add("single client get object containing 10k refs")
    def _():
        obj_containing_ref = create_object_containing_ref.remote()
        return lambda: ray.get(obj_containing_ref), 1

    @add("single client wait 1k refs")
    def _():
        def wait_multiple_refs():
            num_objs = 1000
            not_ready = [small_value.remote() for _ in range(num_objs)]
            fetch_local = True
            for _ in range(num_objs):
                _ready, not_ready = ray.wait(not_ready, fetch_local=fetch_local)
                if fetch_local:
                    fetch_local = False

        return wait_multiple_refs, 1

    @add("single client tasks sync")
    def _():
        return lambda: ray.get(small_value.remote()), 1

    @add("single client tasks async")
    def _():
        return lambda: ray.get([small_value.remote() for _ in range(1000)]), 1000

    @add("multi client tasks async")
    def _():
        n, m = 10000, 4
        actors = [Actor.remote() for _ in range(m)]
        return lambda: ray.get([a.small_value_batch.remote(n) for a in actors]), n * m

    @add("1:1 actor calls sync")
    def _():
        a = Actor.remote()
        return lambda: ray.get(a.small_value.remote()), 1

    @add("1:1 actor calls async")
    def _():
        a = Actor.remote()
        return lambda: ray.get([a.small_value.remote() for _ in range(1000)]), 1000

    @add("1:1 actor calls concurrent")
    def _():
        a = Actor.options(max_concurrency=16).remote()
        return lambda: ray.get([a.small_value.remote() for _ in range(1000)]), 1000

    @add("1:n actor calls async")
    def _():
        n = 5000
        actors = [Actor.remote() for _ in range(n_cpu)]
        client = Client.remote(actors)
        return lambda: ray.get(client.small_value_batch.remote(n)), n * len(actors)

    @add("n:n actor calls async")
    def _():
        n, m = 5000, 4
        a = [Actor.remote() for _ in range(n_cpu)]
        return lambda: ray.get([work.remote(a, n) for _ in range(m)]), m * n

    @add("n:n actor calls with arg async")
    def _():
        n = 1000
        actors = [Actor.remote() for _ in range(n_cpu)]
        clients = [Client.remote(a) for a in actors]
        return (
            lambda: ray.get([c.small_value_batch_arg.remote(n) for c in clients]),
            n * len(clients),
        )

    @add("1:1 async-actor calls sync")
    def _():
        a = AsyncActor.remote()
        return lambda: ray.get(a.small_value.remote()), 1

    @add("1:1 async-actor calls async")
    def _():
        a = AsyncActor.remote()
        return lambda: ray.get([a.small_value.remote() for _ in range(1000)]), 1000

    @add("1:1 async-actor calls with args async")
    def _():
        a = AsyncActor.remote()
        return lambda: ray.get([a.small_value_with_arg.remote(i) for i in range(1000)]), 1000

    @add("1:n async-actor calls async")
    def _():
        n = 5000
        actors = [AsyncActor.remote() for _ in range(n_cpu)]
        client = Client.remote(actors)
        return lambda: ray.get(client.small_value_batch.remote(n)), n * len(actors)

    @add("n:n async-actor calls async")
    def _():
        n, m = 5000, 4
        a = [AsyncActor.remote() for _ in range(n_cpu)]
        return lambda: ray.get([work.remote(a, n) for _ in range(m)]), m * n

    return w


def timeit(
    fn: Callable[[], Any], multiplier: float, seconds: float, rounds: int
) -> tuple[float, float]:
    """Ray's ``timeit``: (mean, std) over ``rounds`` rounds of ``multiplier`` ×
    calls per second, after a warm-up; ``seconds`` in all, at least a call a
    round."""
    warmup = min(1.0, seconds / 4)
    per_round = seconds / rounds
    start = time.perf_counter()
    count = 0
    while time.perf_counter() - start < warmup:
        fn()
        count += 1
    step = count // 10 + 1
    stats = []
    for _ in range(rounds):
        start = time.perf_counter()
        count = 0
        while time.perf_counter() - start < per_round:
            for _ in range(step):
                fn()
            count += step
        stats.append(multiplier * count / (time.perf_counter() - start))
    return float(np.mean(stats)), float(np.std(stats))


_INIT_PROBE = """
import time
import arca as ray

@ray.remote
def f():
    return 1

start = time.perf_counter()
ray.init()
assert ray.get(f.remote()) == 1
print(time.perf_counter() - start)
ray.shutdown()
"""


def init_to_first_result(rounds: int) -> tuple[float, float]:
    """Seconds from ``init()`` to the first task's result, each in a fresh
    interpreter (``arca`` imported before the clock starts)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ARCA_ADDRESS", "RAY_ADDRESS", "ARCA_TEMP_DIR")
    }
    times = []
    for _ in range(rounds):
        out = subprocess.run(
            [sys.executable, "-c", _INIT_PROBE],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            check=True,
        )
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.fmean(times), float(np.std(times))


def memcpy_gbps(seconds: float, rounds: int) -> tuple[float, float]:
    """numpy copying 1 GiB into a preallocated, already touched array."""
    size = 1 << 30
    src = np.ones(size, dtype=np.uint8)
    dst = np.zeros(size, dtype=np.uint8)
    np.copyto(dst, src)
    stats = []
    for _ in range(rounds):
        start = time.perf_counter()
        n = 0
        while n == 0 or time.perf_counter() - start < seconds / rounds:
            np.copyto(dst, src)
            n += 1
        stats.append(n * size / (time.perf_counter() - start) / 1e9)
    return float(np.mean(stats)), float(np.std(stats))


def run(seconds: float, rounds: int, pattern: str, log: Callable[[str], None]) -> list[dict]:
    metrics: list[dict] = []

    def record(name: str, value: float, std: float, unit: str) -> None:
        metrics.append({"name": name, "value": value, "unit": unit, "std": std})
        log(f"{name} {round(value, 2)} +- {round(std, 2)}")

    # Before this process starts its node, so the probe has the machine to itself.
    name = "init to first task result seconds"
    if pattern in name:
        record(name, *init_to_first_result(rounds), "seconds")

    workloads = [(n, s) for n, s in _workloads() if pattern in f"{n} per second"]
    if workloads:
        ray.init()
        try:
            for base, setup in workloads:
                fn, multiplier = setup()
                mean, std = timeit(fn, multiplier, seconds, rounds)
                del fn
                unit = "GB/s" if "gigabytes" in base else "per second"
                record(f"{base} per second", mean, std, unit)
        finally:
            ray.shutdown()

    name = "memcpy gigabytes per second"
    if pattern in name:
        record(name, *memcpy_gbps(seconds, rounds), "GB/s")
    return metrics


def read_ray(text: str) -> dict[str, float]:
    """Ray's figures from what ``ray microbenchmark`` printed: its lines
    ``<name> per second <value> +- <std>`` (log lines and others skipped)."""
    ray = {}
    for line in text.splitlines():
        m = _RAY_LINE.match(line.strip())
        if m:
            ray[m["name"]] = float(m["value"])
    return ray


_RAY_LINE = re.compile(r"^(?P<name>.+ per second) (?P<value>[0-9.]+) \+- [0-9.]+$")


def _fmt(v: float) -> str:
    return ("{:.0f}" if v >= 100 else "{:.2f}" if v >= 0.1 else "{:.4f}").format(v)


def table(metrics: list[dict], ray: dict[str, float] | None = None) -> str:
    """The figures as a table; with `ray` (``read_ray``), Ray's figure for
    the same metric and how many times it Arca's is."""
    w = max((len(m["name"]) for m in metrics), default=0)
    lines = []
    for m in metrics:
        line = f"{m['name']:<{w}}  {_fmt(m['value']):>10} +- {_fmt(m['std']):<8}  {m['unit']:<10}"
        r = (ray or {}).get(m["name"])
        if r:
            line += f"  Ray {_fmt(r):>8}  {m['value'] / r:6.1f}x"
        lines.append(line.rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m arca.microbenchmark",
        description="Ray's `ray microbenchmark` workloads on Arca.",
    )
    p.add_argument("--json", action="store_true", help='print one {"metrics": [...]} object')
    p.add_argument(
        "--seconds", type=float, default=2.0, help="timed seconds per workload (default 2)"
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds per workload (default 3)")
    p.add_argument("--filter", default="", help="run only workloads whose name contains this")
    p.add_argument(
        "--ray",
        metavar="FILE",
        help="what `ray microbenchmark` printed on this machine: the table adds Ray's "
        "figures and the ratio",
    )
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.rounds < 1:
        p.error("--seconds must be positive and --rounds at least 1")
    ray = None
    if args.ray:
        try:
            with open(args.ray, encoding="utf-8") as f:
                ray = read_ray(f.read())
        except OSError as e:
            p.error(f"cannot read --ray {args.ray}: {e.strerror}")
        if not ray:
            p.error(f"--ray {args.ray}: no `<name> per second <value> +- <std>` line in it")

    if args.json:

        def log(line: str) -> None:
            print(line, file=sys.stderr, flush=True)
    else:

        def log(line: str) -> None:
            print(line, flush=True)

    metrics = run(args.seconds, args.rounds, args.filter, log)
    if args.json:
        print(json.dumps({"metrics": metrics}))
    else:
        print()
        print(table(metrics, ray))
    return 0


if __name__ == "__main__":
    # Run the importable module's main, so that tasks and actors pickle the
    # functions and classes above by reference (arca.microbenchmark.X).
    from arca.microbenchmark import main as _main

    sys.exit(_main())
