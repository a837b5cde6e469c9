"""``runtime_env``: what Arca does with each of Ray's fields.

Workers run the driver's interpreter in its working directory with its
``sys.path``, so there is no environment to build: ``env_vars`` are set
(for the job's workers from ``init``, around a task, for an actor's life),
``working_dir`` may name the directory they already run in, and the
packaging fields are ignored with a warning. An unknown field is an error.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

# Fields that ship or install code: the workers already have the driver's.
_PACKAGING = frozenset(
    {
        "pip",
        "conda",
        "uv",
        "py_modules",
        "py_executable",
        "excludes",
        "container",
        "image_uri",
        "java_jars",
    }
)
# Fields that only tune how Ray sets the environment up.
_TUNING = frozenset({"config", "_ray_release", "_inject_current_ray", "nsight", "mpi"})
_warned: set[str] = set()


def env_vars(runtime_env: Any) -> dict[str, str]:
    """The environment variables ``runtime_env`` sets; raises ``TypeError``
    or ``ValueError`` for what Arca cannot honour."""
    if runtime_env is None:
        return {}
    if not isinstance(runtime_env, dict):
        raise TypeError(f"runtime_env must be a dict, got {type(runtime_env).__name__}")
    out: dict[str, str] = {}
    for field, value in runtime_env.items():
        if field == "env_vars":
            if value is None:
                continue
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                raise TypeError("runtime_env['env_vars'] must be of type Dict[str, str]")
            out.update(value)
        elif field == "working_dir":
            _check_working_dir(value)
        elif field in _PACKAGING:
            if value and field not in _warned:
                _warned.add(field)
                warnings.warn(
                    f"runtime_env[{field!r}] is ignored: Arca's workers run the driver's "
                    "Python with its sys.path, so install what they need there",
                    stacklevel=4,
                )
        elif field not in _TUNING:
            raise ValueError(
                f"runtime_env field {field!r} is not known; Arca takes env_vars, working_dir "
                f"(the driver's own) and ignores {', '.join(sorted(_PACKAGING))}"
            )
    return out


def _check_working_dir(value: Any) -> None:
    if value is None:
        return
    if isinstance(value, (str, os.PathLike)) and os.path.isdir(value):
        if os.path.samefile(value, os.getcwd()):
            return
    raise ValueError(
        f"runtime_env['working_dir']={value!r}: Arca's workers run in the driver's working "
        f"directory ({os.getcwd()}) with its sys.path; start the driver in the directory "
        "to use instead (remote URIs are not fetched)"
    )


class Applied:
    """Sets ``vars`` in ``os.environ`` while a task runs, then puts back
    what was there."""

    __slots__ = ("vars", "saved")

    def __init__(self, vars: dict[str, str]) -> None:
        self.vars = vars
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> None:
        for k, v in self.vars.items():
            self.saved[k] = os.environ.get(k)
            os.environ[k] = v

    def __exit__(self, *exc: object) -> None:
        for k, old in self.saved.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old
