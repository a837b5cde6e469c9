"""What the cluster looks like: nodes, resources, the runtime context."""

from __future__ import annotations

import os
import time
from pathlib import Path

from conftest import wait_for

import arca

RAY_NODE_KEYS = {
    "NodeID",
    "Alive",
    "NodeManagerAddress",
    "NodeManagerHostname",
    "NodeManagerPort",
    "ObjectManagerPort",
    "ObjectStoreSocketName",
    "RayletSocketName",
    "MetricsExportPort",
    "NodeName",
    "Resources",
    "alive",
    "Labels",
}


def test_nodes_has_rays_keys(ray):
    nodes = ray.nodes()
    assert len(nodes) == 1
    node = nodes[0]
    missing = RAY_NODE_KEYS - set(node)
    assert not missing, missing
    assert node["Alive"] is True
    assert isinstance(node["NodeID"], str) and node["NodeID"]
    assert node["Resources"]["CPU"] == 2
    assert node["NodeID"] == ray.get_runtime_context().get_node_id()


def test_cluster_resources(ray):
    res = ray.cluster_resources()
    assert res["CPU"] == 2
    assert "object_store_memory" in res
    assert all(isinstance(v, float) for v in res.values())


@arca.remote(num_cpus=2)
def hold_all_cpus(started: str, release: str):
    Path(started).touch()
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.02)
    return "released"


def test_available_resources_omits_zeros(ray, tmp_path):
    started, release = tmp_path / "started", tmp_path / "release"
    ref = hold_all_cpus.remote(str(started), str(release))
    try:
        wait_for(started.exists, what="the task to start")
        avail = wait_for(
            lambda: (a := ray.available_resources()) and "CPU" not in a and a,
            what="CPU to disappear from available_resources()",
        )
        assert all(v != 0 for v in avail.values())
    finally:
        release.touch()
    assert ray.get(ref, timeout=30) == "released"
    wait_for(lambda: ray.available_resources().get("CPU") == 2, what="CPUs to be returned")


def test_node_id_same_in_task_and_driver(ray):
    @arca.remote
    def node_id():
        return arca.get_runtime_context().get_node_id()

    driver = ray.get_runtime_context().get_node_id()
    assert isinstance(driver, str) and driver
    assert ray.get(node_id.remote(), timeout=30) == driver


@arca.remote
def context_ids():
    ctx = arca.get_runtime_context()
    return ctx.get_task_id(), ctx.get_job_id(), ctx.get_worker_id()


def test_runtime_context_ids(ray):
    task_id, _, worker_id = ray.get(context_ids.remote(), timeout=30)
    assert isinstance(task_id, str) and task_id
    assert worker_id != ray.get_runtime_context().get_worker_id()


def test_job_id_same_in_task_and_driver(ray):
    _, job_id, _ = ray.get(context_ids.remote(), timeout=30)
    assert job_id == ray.get_runtime_context().get_job_id()
