"""A cluster of two nodes started with `arca start` (a head, and a node with
the custom resource "special"), used by drivers in their own processes: the
pytest process already runs an embedded node of its own (conftest's ``ray``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from conftest import driver_env, start_head, stop_node
from test_examples import CASES as EXAMPLE_CASES
from test_examples import run_example

NODE_IP = "127.0.3.2"


def _status(arca_bin: Path, temp_dir: Path) -> dict:
    p = subprocess.run(
        [str(arca_bin), "status", "--temp-dir", str(temp_dir), "--json"],
        timeout=30,
        capture_output=True,
        text=True,
        env=driver_env(),
    )
    return json.loads(p.stdout) if p.returncode == 0 else {}


@pytest.fixture(scope="module")
def cluster(arca_bin):
    """``{"address", "head_dir", "node_dir", "head_id", "node_id"}`` of a running
    two-node cluster. Its directories are under /tmp named ``arca*``, where a
    node on the head's machine finds the head's token."""
    head_dir = Path(tempfile.mkdtemp(prefix="arca-test-head-", dir="/tmp"))
    node_dir = Path(tempfile.mkdtemp(prefix="arca-test-node-", dir="/tmp"))
    try:
        address = start_head(arca_bin, head_dir, "--num-cpus", "2", "--memory", "1GiB")
        p = subprocess.run(
            [str(arca_bin), "start", "--address", address, "--node-ip-address", NODE_IP]
            + ["--temp-dir", str(node_dir), "--num-cpus", "2", "--memory", "1GiB"]
            + ["--resources", '{"special": 1}'],
            timeout=60,
            capture_output=True,
            text=True,
            env=driver_env(),
        )
        assert p.returncode == 0, p.stdout + p.stderr
        deadline = time.monotonic() + 30
        while True:
            nodes = _status(arca_bin, head_dir).get("nodes", [])
            if len([n for n in nodes if n["alive"]]) == 2:
                break
            assert time.monotonic() < deadline, f"the second node did not join: {nodes}"
            time.sleep(0.1)
        ids = {n["temp_dir"]: n["node_id"] for n in nodes}
        yield {
            "address": address,
            "head_dir": str(head_dir),
            "node_dir": str(node_dir),
            "head_id": ids[str(head_dir)],
            "node_id": ids[str(node_dir)],
        }
    finally:
        stop_node(arca_bin, node_dir)
        stop_node(arca_bin, head_dir)
        shutil.rmtree(head_dir, ignore_errors=True)
        shutil.rmtree(node_dir, ignore_errors=True)


def run_driver(cluster: dict, code: str, tmp_path: Path, **env: str) -> dict:
    """Runs ``code`` as a driver of the cluster (``ARCA_TEMP_DIR`` is the
    head's directory unless ``env`` says otherwise); its last line of output,
    ``RESULT <json>``, is returned."""
    e = driver_env()
    e["ARCA_TEMP_DIR"] = cluster["head_dir"]
    e.update(env)
    p = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        env=e,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    results = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    assert results, p.stdout + p.stderr
    return json.loads(results[-1].removeprefix("RESULT "))


def test_nodes_lists_both_nodes(cluster, tmp_path):
    out = run_driver(
        cluster,
        """
        import json
        import arca as ray
        ray.init()
        print("RESULT", json.dumps({
            "nodes": ray.nodes(),
            "cluster": ray.cluster_resources(),
            "available": ray.available_resources(),
            "me": ray.get_runtime_context().get_node_id(),
        }))
        ray.shutdown()
        """,
        tmp_path,
    )
    nodes = {n["NodeID"]: n for n in out["nodes"]}
    assert set(nodes) == {cluster["head_id"], cluster["node_id"]}
    assert all(n["Alive"] and n["alive"] for n in nodes.values())
    head, other = nodes[cluster["head_id"]], nodes[cluster["node_id"]]
    assert head["NodeManagerAddress"] == cluster["address"].split(":")[0]
    assert other["NodeManagerAddress"] == NODE_IP
    assert isinstance(other["NodeManagerPort"], int) and other["NodeManagerPort"] > 0
    assert head["Resources"]["CPU"] == 2 and other["Resources"]["CPU"] == 2
    assert other["Resources"]["special"] == 1 and "special" not in head["Resources"]
    assert other["Resources"][f"node:{NODE_IP}"] == 1
    assert "node:__internal_head__" in head["Resources"]
    assert "node:__internal_head__" not in other["Resources"]
    assert other["Labels"]["ray.io/node_id"] == cluster["node_id"]

    res = out["cluster"]
    assert res["CPU"] == 4
    assert res["special"] == 1
    assert res["object_store_memory"] == 2 * 2**30
    assert res[f"node:{NODE_IP}"] == 1
    assert all(isinstance(v, float) for v in res.values())
    assert out["available"]["CPU"] <= 4 and out["available"]["special"] == 1
    # The driver runs on the head's node (ARCA_TEMP_DIR).
    assert out["me"] == cluster["head_id"]


def test_task_needing_special_runs_on_the_other_node(cluster, tmp_path):
    out = run_driver(
        cluster,
        """
        import json
        import arca as ray
        ray.init()

        @ray.remote(resources={"special": 1})
        def where():
            return ray.get_runtime_context().get_node_id()

        @ray.remote
        def plain():
            return ray.get_runtime_context().get_node_id()

        print("RESULT", json.dumps({
            "special": ray.get([where.remote() for _ in range(3)], timeout=60),
            "driver": ray.get_runtime_context().get_node_id(),
            "plain": ray.get(plain.remote(), timeout=60),
        }))
        ray.shutdown()
        """,
        tmp_path,
    )
    assert out["special"] == [cluster["node_id"]] * 3
    assert out["driver"] == cluster["head_id"]
    assert out["plain"] in (cluster["head_id"], cluster["node_id"])


def test_scheduling_strategies_place_tasks_and_actors(cluster, tmp_path):
    out = run_driver(
        cluster,
        """
        import json, os
        import arca as ray
        from arca.exceptions import TaskUnschedulableError
        from arca.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        ray.init()

        @ray.remote
        def where():
            c = ray.get_runtime_context()
            return c.get_node_id(), c.get_assigned_resources()

        @ray.remote
        class Where:
            def node(self):
                return ray.get_runtime_context().get_node_id()

        node_id = os.environ["OTHER_NODE"]
        there = NodeAffinitySchedulingStrategy(node_id, soft=False)
        nowhere = "ff" * 28
        try:
            ray.get(where.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(nowhere, soft=False)
            ).remote(), timeout=60)
            hard_missing = "ran"
        except TaskUnschedulableError:
            hard_missing = "unschedulable"
        print("RESULT", json.dumps({
            "pinned": ray.get(
                [where.options(scheduling_strategy=there).remote() for _ in range(4)], timeout=60
            ),
            "actor": ray.get(
                Where.options(scheduling_strategy=there).remote().node.remote(), timeout=60
            ),
            "soft_missing": ray.get(where.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(nowhere, soft=True)
            ).remote(), timeout=60)[0],
            "hard_missing": hard_missing,
            "spread": ray.get(
                [where.options(scheduling_strategy="SPREAD").remote() for _ in range(8)],
                timeout=60,
            ),
        }))
        ray.shutdown()
        """,
        tmp_path,
        OTHER_NODE=cluster["node_id"],
    )
    both = {cluster["head_id"], cluster["node_id"]}
    assert out["pinned"] == [[cluster["node_id"], {"CPU": 1.0}]] * 4
    assert out["actor"] == cluster["node_id"]
    assert out["soft_missing"] in both
    assert out["hard_missing"] == "unschedulable"
    assert {n for n, _ in out["spread"]} == both


def test_node_ip_resources_pin_tasks_to_a_node(cluster, tmp_path):
    out = run_driver(
        cluster,
        f"""
        import json
        import arca as ray
        ray.init()

        @ray.remote
        def where():
            return ray.get_runtime_context().get_node_id()

        there = where.options(resources={{"node:{NODE_IP}": 0.01}})
        head = where.options(resources={{"node:__internal_head__": 0.01}})
        print("RESULT", json.dumps({{
            "there": ray.get([there.remote() for _ in range(4)], timeout=60),
            "head": ray.get([head.remote() for _ in range(4)], timeout=60),
        }}))
        ray.shutdown()
        """,
        tmp_path,
    )
    assert out == {"there": [cluster["node_id"]] * 4, "head": [cluster["head_id"]] * 4}


def test_actor_needing_special_lives_on_the_other_node(cluster, tmp_path):
    out = run_driver(
        cluster,
        """
        import json
        import arca as ray
        ray.init()

        @ray.remote
        class Where:
            def node(self):
                return ray.get_runtime_context().get_node_id()

        actor = Where.options(resources={"special": 1}).remote()
        print("RESULT", json.dumps(ray.get(actor.node.remote(), timeout=30)))
        ray.kill(actor)
        ray.shutdown()
        """,
        tmp_path,
    )
    assert out == cluster["node_id"]


def test_an_actor_restarted_on_the_other_node_knows_it(cluster, tmp_path):
    out = run_driver(
        cluster,
        """
        import json, os
        import arca as ray
        from arca.exceptions import RayActorError
        ray.init()

        @ray.remote(max_restarts=1)
        class Phoenix:
            def state(self):
                c = ray.get_runtime_context()
                return c.get_node_id(), c.was_current_actor_reconstructed, os.getpid()

            def exit(self):
                os._exit(1)

        actor = Phoenix.options(resources={"special": 1}).remote()
        before = ray.get(actor.state.remote(), timeout=30)
        try:
            ray.get(actor.exit.remote(), timeout=30)
        except RayActorError:
            pass
        after = ray.get(actor.state.remote(), timeout=30)
        print("RESULT", json.dumps([before, after]))
        ray.kill(actor)
        ray.shutdown()
        """,
        tmp_path,
    )
    (node1, rec1, pid1), (node2, rec2, pid2) = out
    assert node1 == node2 == cluster["node_id"]
    assert (rec1, rec2) == (False, True)
    assert pid1 != pid2


def test_many_small_tasks(cluster, tmp_path):
    out = run_driver(
        cluster,
        """
        import json
        import arca as ray
        ray.init()

        @ray.remote
        def square(x):
            return x * x, ray.get_runtime_context().get_node_id()

        got = ray.get([square.remote(i) for i in range(200)], timeout=90)
        print("RESULT", json.dumps({
            "values": [v for v, _ in got],
            "nodes": sorted({n for _, n in got}),
        }))
        ray.shutdown()
        """,
        tmp_path,
    )
    assert out["values"] == [i * i for i in range(200)]
    assert set(out["nodes"]) <= {cluster["head_id"], cluster["node_id"]}


def test_array_put_by_driver_read_on_the_other_node(cluster, tmp_path):
    out = run_driver(
        cluster,
        """
        import hashlib, json
        import numpy as np
        import arca as ray
        ray.init()

        @ray.remote(resources={"special": 1})
        def digest(a):
            node = ray.get_runtime_context().get_node_id()
            return node, a.nbytes, a.dtype.str, hashlib.sha256(a.tobytes()).hexdigest()

        a = np.random.default_rng(7).integers(0, 2**62, size=50 * 2**20 // 8, dtype=np.int64)
        ref = ray.put(a)
        node, nbytes, dtype, remote = ray.get(digest.remote(ref), timeout=90)
        # As a direct argument too (the driver puts it while submitting).
        again = ray.get(digest.remote(a), timeout=90)
        print("RESULT", json.dumps({
            "node": node,
            "nbytes": nbytes,
            "dtype": dtype,
            "remote": remote,
            "again": again[3],
            "local": hashlib.sha256(a.tobytes()).hexdigest(),
        }))
        ray.shutdown()
        """,
        tmp_path,
    )
    assert out["node"] == cluster["node_id"]
    assert out["nbytes"] == 50 * 2**20
    assert out["dtype"] == "<i8"
    assert out["remote"] == out["local"]
    assert out["again"] == out["local"]


def test_wait_fetches_to_this_node_unless_told_not_to(cluster, tmp_path, arca_bin):
    out = run_driver(
        cluster,
        """
        import json, os, subprocess
        import numpy as np
        import arca as ray
        ray.init()

        @ray.remote(resources={"special": 1})
        def make(seed):
            return np.full(4 << 20, seed, dtype=np.uint8)

        def here(ref):
            p = subprocess.run(
                [os.environ["ARCA_BIN"], "memory", "--json", "--temp-dir", os.environ["HEAD_DIR"]],
                capture_output=True, text=True, timeout=30, check=True,
            )
            row = [o for o in json.loads(p.stdout)["objects"] if o["id"] == ref.hex()]
            return row[0]["state"] if row else None

        kept, fetched = make.remote(1), make.remote(2)
        ready, _ = ray.wait([kept], fetch_local=False, timeout=60)
        assert ready == [kept]
        ready, _ = ray.wait([fetched], timeout=60)
        assert ready == [fetched]
        states = {"kept": here(kept), "fetched": here(fetched)}
        assert int(ray.get(fetched, timeout=60)[0]) == 2
        print("RESULT", json.dumps(states))
        ray.shutdown()
        """,
        tmp_path,
        ARCA_BIN=str(arca_bin),
        HEAD_DIR=cluster["head_dir"],
    )
    # Ray's default fetches: the bytes are a pulled copy on the head.
    assert out == {"kept": "remote", "fetched": "copy"}


def test_init_with_the_heads_address(cluster, tmp_path):
    code = """
        import json, os
        import arca as ray
        ctx = ray.init(address=os.environ["HEAD"])
        first = {
            "address": ctx["address"],
            "me": ray.get_runtime_context().get_node_id(),
            "cpus": ray.cluster_resources()["CPU"],
        }
        ray.shutdown()
        # The second node's directory: the driver runs on that node.
        ray.init(address=os.environ["HEAD"], _temp_dir=os.environ["NODE_DIR"])

        @ray.remote
        def where():
            return ray.get_runtime_context().get_node_id()

        second = {
            "me": ray.get_runtime_context().get_node_id(),
            "nodes": len(ray.nodes()),
            "special_task": ray.get(where.options(resources={"special": 1}).remote(), timeout=60),
        }
        ray.shutdown()
        print("RESULT", json.dumps({"first": first, "second": second}))
        """
    out = run_driver(cluster, code, tmp_path, HEAD=cluster["address"], NODE_DIR=cluster["node_dir"])
    assert out["first"] == {
        "address": cluster["address"],
        "me": cluster["head_id"],
        "cpus": 4,
    }
    assert out["second"] == {
        "me": cluster["node_id"],
        "nodes": 2,
        "special_task": cluster["node_id"],
    }


def test_arca_address_from_the_environment(cluster, tmp_path):
    out = run_driver(
        cluster,
        """
        import json
        import arca as ray
        ray.init()
        print("RESULT", json.dumps({
            "me": ray.get_runtime_context().get_node_id(),
            "gcs": ray.get_runtime_context().gcs_address,
        }))
        ray.shutdown()
        """,
        tmp_path,
        ARCA_ADDRESS=cluster["address"],
    )
    assert out == {"me": cluster["head_id"], "gcs": cluster["address"]}


ERRORS = """
import json, os
import arca as ray
errors = {}
for name, kwargs in json.loads(os.environ["CASES"]).items():
    try:
        ray.init(**kwargs)
        errors[name] = None
        ray.shutdown()
    except ConnectionError as e:
        errors[name] = str(e)
    assert not ray.is_initialized()
print("RESULT", json.dumps(errors))
"""


def test_init_with_a_wrong_address_fails_clearly(cluster, tmp_path):
    empty = tmp_path / "no-node"
    empty.mkdir()
    cases = {
        # The node in ARCA_TEMP_DIR (the head's) is of another cluster.
        "other_cluster": {"address": "127.0.3.9:1"},
        # No node at all in the temp dir.
        "no_node": {"address": "127.0.3.9:1", "_temp_dir": str(empty)},
        # A directory is not an address.
        "directory": {"address": cluster["head_dir"]},
        "missing_temp_dir": {"_temp_dir": str(empty)},
        "auto_missing_temp_dir": {"address": "auto", "_temp_dir": str(empty)},
    }
    out = run_driver(cluster, ERRORS, tmp_path, CASES=json.dumps(cases))
    assert "127.0.3.9:1" in out["other_cluster"], out
    assert f"belongs to the cluster at {cluster['address']}" in out["other_cluster"], out
    assert "`arca start --address 127.0.3.9:1" in out["no_node"], out
    assert str(empty) in out["no_node"], out
    assert "HOST:PORT" in out["directory"] and "ARCA_TEMP_DIR" in out["directory"], out
    assert "_temp_dir" in out["directory"], out
    assert f"No Arca node runs in {empty}" in out["missing_temp_dir"], out
    assert f"No Arca node runs in {empty}" in out["auto_missing_temp_dir"], out


def test_arca_address_set_to_a_directory_fails_clearly(cluster, tmp_path):
    out = run_driver(
        cluster,
        ERRORS,
        tmp_path,
        CASES=json.dumps({"env": {}}),
        ARCA_ADDRESS=cluster["head_dir"],
    )
    assert "$ARCA_ADDRESS is" in out["env"], out
    assert "ARCA_TEMP_DIR" in out["env"] and "unset ARCA_ADDRESS" in out["env"], out


def test_local_ignores_the_cluster(cluster, tmp_path):
    out = run_driver(
        cluster,
        """
        import json
        import arca as ray
        ray.init(address="local", num_cpus=1)
        print("RESULT", json.dumps({
            "nodes": len(ray.nodes()),
            "cpus": ray.cluster_resources()["CPU"],
            "address": ray.get_runtime_context().gcs_address,
        }))
        ray.shutdown()
        """,
        tmp_path,
        ARCA_ADDRESS=cluster["address"],
    )
    assert out == {"nodes": 1, "cpus": 1, "address": ""}


NAMED_ACTOR = """
import json, os, sys, time
import arca as ray
ray.init()

@ray.remote
class Counter:
    def __init__(self):
        self.n = 0
    def incr(self):
        self.n += 1
        return self.n
    def node(self):
        return ray.get_runtime_context().get_node_id()
"""


def test_a_named_actor_is_found_by_a_driver_on_another_node(cluster, tmp_path):
    """The registry is the head's KV: a driver on the second node finds an
    actor a driver on the head made, and calls it while that driver lives."""
    flag = tmp_path / "done"
    ready = tmp_path / "ready"
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            NAMED_ACTOR
            + f"""
c = Counter.options(name="shared", resources={{"special": 1}}).remote()
ray.get(c.incr.remote(), timeout=30)
open({str(ready)!r}, "w").close()
deadline = time.monotonic() + 60
while not os.path.exists({str(flag)!r}) and time.monotonic() < deadline:
    time.sleep(0.05)
""",
        ],
        cwd=tmp_path,
        env={**driver_env(), "ARCA_TEMP_DIR": cluster["head_dir"]},
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert owner.poll() is None, "the owner driver failed"
            assert time.monotonic() < deadline, "the owner driver did not get ready"
            time.sleep(0.05)
        out = run_driver(
            cluster,
            NAMED_ACTOR
            + """
c = ray.get_actor("shared")
n = ray.get(c.incr.remote(), timeout=30)
print("RESULT", json.dumps([n, ray.get(c.node.remote(), timeout=30)]))
""",
            tmp_path,
            ARCA_TEMP_DIR=cluster["node_dir"],
        )
        assert out == [2, cluster["node_id"]]
    finally:
        flag.touch()
        owner.wait(timeout=60)
    # Its driver gone, the name is free again and a lookup fails as in Ray.
    out = run_driver(
        cluster,
        NAMED_ACTOR
        + """
try:
    ray.get_actor("shared")
    print("RESULT", json.dumps("found"))
except ValueError as e:
    print("RESULT", json.dumps(str(e)))
""",
        tmp_path,
        ARCA_TEMP_DIR=cluster["node_dir"],
    )
    assert "Failed to look up actor with name 'shared'" in out


def test_a_detached_actor_outlives_its_driver(cluster, tmp_path, arca_bin):
    run_driver(
        cluster,
        NAMED_ACTOR
        + """
c = Counter.options(name="keeper", lifetime="detached").remote()
print("RESULT", json.dumps(ray.get(c.incr.remote(), timeout=30)))
""",
        tmp_path,
    )
    out = run_driver(
        cluster,
        NAMED_ACTOR
        + """
c = ray.get_actor("keeper")
n = ray.get(c.incr.remote(), timeout=30)
ray.kill(c)
print("RESULT", json.dumps(n))
""",
        tmp_path,
        ARCA_TEMP_DIR=cluster["node_dir"],
    )
    assert out == 2
    out = run_driver(
        cluster,
        NAMED_ACTOR
        + """
try:
    ray.get_actor("keeper")
    print("RESULT", json.dumps("found"))
except ValueError:
    print("RESULT", json.dumps("gone"))
""",
        tmp_path,
    )
    assert out == "gone"
    # Killed through a handle borrowed on the other node: its process ends.
    deadline = time.monotonic() + 30
    while True:
        dirs = (Path(cluster["head_dir"]), Path(cluster["node_dir"]))
        alive = [_status(arca_bin, d).get("actors_alive") for d in dirs]
        if alive == [0, 0]:
            break
        assert time.monotonic() < deadline, f"the killed actor still runs: {alive}"
        time.sleep(0.1)


def simple_task_on_the_cluster(out: str) -> None:
    """Ray on Golem's simple-task.py sees both nodes and all their CPUs (on
    one machine every node has the same host IP, so its per-IP count is one
    line)."""
    assert out.count("    2 nodes in total\n") == 2, out
    assert "    4.0 CPU resources in total\n" in out, out
    counts = [int(line.split()[0]) for line in out.splitlines() if " tasks on " in line]
    assert sum(counts) == 20, out


def test_resources_passed_while_connecting_are_rays_value_error(cluster, tmp_path):
    out = run_driver(
        cluster,
        """
        import json
        import arca as ray
        errors = []
        for kwargs in (
            {"num_cpus": 4},
            {"num_gpus": 1, "resources": {"X": 1}},
            {"resources": {"X": 1}},
            {"object_store_memory": 10**8},
        ):
            try:
                ray.init(**kwargs)
                errors.append(None)
            except ValueError as e:
                errors.append(str(e))
        ray.init()
        print("RESULT " + json.dumps([errors, len(ray.nodes())]))
        """,
        tmp_path,
    )
    errors, nodes = out
    # Ray's messages, word for word.
    assert errors == [
        "When connecting to an existing cluster, num_cpus and num_gpus must not be provided.",
        "When connecting to an existing cluster, num_cpus and num_gpus must not be provided.",
        "When connecting to an existing cluster, resources must not be provided.",
        "When connecting to an existing cluster, object_store_memory must not be provided.",
    ]
    assert nodes == 2


# Every example, only its import changed from Ray's, as a driver of the
# cluster, with what it prints on one node (simple_task counts the nodes).
# Two start a local instance of their own, `init(num_cpus=...)`: connected
# to a cluster, Ray raises "When connecting to an existing cluster, num_cpus
# and num_gpus must not be provided.", and so does Arca (the test above).
LOCAL_ONLY = {"core_walkthrough.py", "tips_first_time.py"}
ON_THE_CLUSTER = [
    (s, simple_task_on_the_cluster if s == "simple_task.py" else c)
    for s, c in EXAMPLE_CASES
    if s not in LOCAL_ONLY
]


@pytest.mark.parametrize(("script", "expected"), ON_THE_CLUSTER, ids=[s for s, _ in ON_THE_CLUSTER])
def test_the_examples_run_on_the_cluster(cluster, script, expected):
    run_example(script, expected, ARCA_TEMP_DIR=cluster["head_dir"])
