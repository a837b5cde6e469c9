"""runtime_env: env_vars for a job, a task and an actor; working_dir as the
driver's own; the packaging fields ignored with a warning; unknown fields
and malformed values refused."""

from __future__ import annotations

import json
import os

import pytest

import arca


@arca.remote
def read_env(name):
    return os.environ.get(name)


def test_a_tasks_env_vars_are_set_while_it_runs(ray):
    with_var = read_env.options(runtime_env={"env_vars": {"ARCA_TEST_VAR": "on"}})
    for _ in range(6):
        # The same workers run both: the variable is gone after the task.
        assert ray.get(with_var.remote("ARCA_TEST_VAR"), timeout=30) == "on"
        assert ray.get(read_env.remote("ARCA_TEST_VAR"), timeout=30) is None


@arca.remote(runtime_env={"env_vars": {"ARCA_ACTOR_VAR": "actor"}})
class EnvActor:
    def read(self, name):
        return os.environ.get(name)


def test_an_actors_env_vars_last_its_life(ray):
    a = EnvActor.remote()
    assert ray.get(a.read.remote("ARCA_ACTOR_VAR"), timeout=30) == "actor"
    assert ray.get(a.read.remote("ARCA_ACTOR_VAR"), timeout=30) == "actor"
    b = EnvActor.options(runtime_env=None).remote()
    assert ray.get(b.read.remote("ARCA_ACTOR_VAR"), timeout=30) is None


def test_the_drivers_working_dir_is_accepted(ray):
    f = read_env.options(runtime_env={"working_dir": os.getcwd()})
    assert ray.get(f.remote("PATH"), timeout=30) == os.environ["PATH"]


def test_bad_runtime_envs_are_refused_clearly(ray, tmp_path):
    with pytest.raises(TypeError, match=r"Dict\[str, str\]"):
        read_env.options(runtime_env={"env_vars": {"N": 1}})
    with pytest.raises(TypeError, match="must be a dict"):
        read_env.options(runtime_env=["env_vars"])
    with pytest.raises(ValueError, match="'nonsense' is not known"):
        read_env.options(runtime_env={"nonsense": 1})
    with pytest.raises(ValueError, match="working directory"):
        read_env.options(runtime_env={"working_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="working directory"):
        read_env.options(runtime_env={"working_dir": "s3://bucket/code.zip"})
    with pytest.raises(TypeError, match=r"Dict\[str, str\]"):
        EnvActor.options(runtime_env={"env_vars": "A=1"})


def test_packaging_fields_are_ignored_with_a_warning(ray):
    with pytest.warns(UserWarning, match=r"runtime_env\['py_modules'\] is ignored"):
        f = read_env.options(runtime_env={"py_modules": ["x"], "env_vars": {"ARCA_PM": "1"}})
    assert ray.get(f.remote("ARCA_PM"), timeout=30) == "1"


def test_init_runtime_env_reaches_every_worker_of_the_job(run_driver):
    p = run_driver(
        """
        import json, os
        import arca as ray
        ray.init(runtime_env={"env_vars": {"ARCA_JOB_VAR": "job"}})

        @ray.remote
        def read(name):
            return os.environ.get(name)

        @ray.remote
        class A:
            def read(self, name):
                return os.environ.get(name)

        over = read.options(runtime_env={"env_vars": {"ARCA_JOB_VAR": "task"}})
        print(json.dumps([
            ray.get(read.remote("ARCA_JOB_VAR")),
            ray.get(A.remote().read.remote("ARCA_JOB_VAR")),
            ray.get(over.remote("ARCA_JOB_VAR")),
            ray.get(read.remote("ARCA_JOB_VAR")),
            os.environ.get("ARCA_JOB_VAR"),
        ]))
        """
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.splitlines()[-1]) == ["job", "job", "task", "job", None]
