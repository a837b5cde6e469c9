"""The process's connection: ``init``, ``shutdown``, ``get``/``put``/``wait``,
``cancel``/``kill``, and what the cluster looks like."""

from __future__ import annotations

import atexit
import contextvars
import hashlib
import os
import pickle
import socket
import sys
import threading
from typing import Any

from . import _native
from . import exceptions as exc
from ._serialization import deserialize, serialize

ObjectRef = _native.ObjectRef

DEFAULT_SESSION_DIR = "/tmp/arca"

# ErrorKind numbers (proto/arca/node.proto).
_TASK_FAILED, _CANCELLED, _CRASHED, _ACTOR_DIED, _UNSCHEDULABLE, _LOST, _UNKNOWN_FN = range(7)


class _State:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.connected = False
        self.session_dir = ""
        self.job_id = 0
        self.embedded = False
        self.namespace = ""
        self.worker = False
        # Bumped at every init: functions and classes are put again per session.
        self.session = 0
        self.log_to_driver = True
        # In an actor's worker: the actor, the resources its constructor
        # asked for, and whether this is a restart.
        self.current_actor_id: bytes | None = None
        self.actor_resources: dict[str, float] = {}
        self.actor_reconstructed = False
        self.actor_handle: tuple | None = None
        self.node_id = ""
        # The head's HOST:PORT (empty outside a cluster) and this node's IP.
        self.cluster_address = ""
        self.node_ip = ""


_state = _State()

# The task this thread (or asyncio task) runs in a worker: its id and the
# resources it holds. A context variable, because a threaded or async
# actor runs several calls at once.
_current_task: contextvars.ContextVar[tuple[bytes, dict[str, float]] | None] = (
    contextvars.ContextVar("arca_current_task", default=None)
)


class RayContext(dict):
    """What ``init`` returns: ``address_info`` and versions; a context manager
    that calls ``shutdown`` on exit. Indexing reads ``address_info``."""

    def __init__(self, address_info: dict[str, Any]):
        super().__init__(address_info)
        self.address_info = address_info
        self.dashboard_url = None
        self.python_version = ".".join(map(str, sys.version_info[:3]))
        self.ray_version = _version()
        self.ray_commit = ""

    def __enter__(self) -> RayContext:
        return self

    def __exit__(self, *a: Any) -> None:
        shutdown()

    def __repr__(self) -> str:
        return f"RayContext({self.address_info!r})"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("arca")
    except Exception:
        return "0.1.0"


_KNOWN_INIT_ARGS = {
    "include_dashboard",
    "dashboard_host",
    "dashboard_port",
    "configure_logging",
    "logging_level",
    "logging_format",
    "log_to_driver",
    "labels",
    "_system_config",
    "job_config",
    "local_mode",
    "namespace",
    "storage",
    "_node_ip_address",
}


def init(
    address: str | None = None,
    *,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    resources: dict[str, float] | None = None,
    object_store_memory: int | None = None,
    ignore_reinit_error: bool = False,
    log_to_driver: bool = True,
    namespace: str | None = None,
    runtime_env: dict[str, Any] | None = None,
    _temp_dir: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> RayContext:
    """Connects to a node, or starts one inside this process, as ``ray.init``.

    ``address``: ``None`` uses ``$ARCA_ADDRESS`` (or ``$RAY_ADDRESS``) if set, else
    the node running on this machine in ``_temp_dir`` (default ``$ARCA_TEMP_DIR``,
    else ``/tmp/arca``), else starts an embedded node; ``"auto"`` the same but
    raises ``ConnectionError`` instead of starting one; ``"local"`` always starts
    one; ``"HOST:PORT"`` is a cluster's head: the driver uses the node of that
    cluster running on this machine (in ``_temp_dir``), as ``ray.init(address=)``.
    A directory given as ``_temp_dir`` (or ``$ARCA_TEMP_DIR``) must hold a running
    node (``arca start --temp-dir``): ``init`` raises ``ConnectionError`` otherwise.
    ``runtime_env``: its ``env_vars`` are set in every worker of this job
    (see ``_runtime_env`` for the other fields).
    """
    unknown = set(kwargs) - _KNOWN_INIT_ARGS
    if unknown:
        raise TypeError(f"Unknown keyword argument(s): {', '.join(sorted(unknown))}")
    from ._runtime_env import env_vars

    # The job's: every worker of it starts with these.
    job_env = env_vars(runtime_env)
    if kwargs.get("local_mode"):
        raise RuntimeError("local_mode is no longer supported (as in Ray); remove it")
    with _state.lock:
        if _state.connected:
            if ignore_reinit_error:
                return _context()
            raise RuntimeError(
                "Maybe you called ray.init twice by accident? This error can be suppressed by "
                "passing in 'ignore_reinit_error=True' or by calling 'ray.shutdown()' prior to "
                "'ray.init()'."
            )
        node_args = {
            "num_cpus": num_cpus,
            "num_gpus": num_gpus,
            "resources": resources,
            "object_store_memory": object_store_memory,
        }
        target = _resolve(address, _temp_dir)
        if target is not None:
            # Ray's checks and messages, in Ray's order.
            if num_cpus is not None or num_gpus is not None:
                given = "num_cpus and num_gpus"
            else:
                given = next((k for k, v in node_args.items() if v is not None), None)
            if given is not None:
                raise ValueError(
                    f"When connecting to an existing cluster, {given} must not be provided."
                )
        embedded = None
        if target is None:
            embedded = {k: v for k, v in node_args.items() if v is not None}
            if object_store_memory is not None:
                embedded["object_store_memory"] = int(object_store_memory)
        head, temp_dir = target if target is not None else (None, None)
        cwd = os.getcwd()
        path = [p or cwd for p in sys.path]
        env = [*job_env.items()]
        env += [("PYTHONPATH", os.pathsep.join(path)), ("ARCA_DRIVER_NAMESPACE", namespace or "")]
        # Without an address the native client would read $ARCA_ADDRESS itself,
        # which was overridden here (address="local", or "auto" from the env).
        hidden = os.environ.pop("ARCA_ADDRESS", None) if head is None else None
        try:
            session_dir, job_id = _native.connect(
                head,
                temp_dir,
                embedded,
                [sys.executable, "-m", "arca._worker"],
                cwd,
                env,
                bool(log_to_driver),
            )
        except exc.RaySystemError as e:
            if target is None:
                raise
            # The node runs but is not of the cluster asked for, or went away.
            raise ConnectionError(str(e.client_exc)) from None
        finally:
            if hidden is not None:
                os.environ["ARCA_ADDRESS"] = hidden
        _state.connected = True
        _state.session_dir = session_dir
        _state.job_id = job_id
        _state.embedded = target is None
        _state.namespace = namespace or ""
        _state.session += 1
        _state.node_id = _node_id()
        atexit.register(shutdown)
        return _context()


def _resolve(
    address: str | None, temp_dir: str | os.PathLike[str] | None
) -> tuple[str | None, str] | None:
    """Which node ``init`` connects to: ``(head HOST:PORT or None, temp dir)``,
    or ``None`` to start an embedded node. Raises ``ConnectionError`` if the
    node asked for does not run."""
    from_env = None
    if not address:
        address = None
    if address in (None, "auto"):
        for var in ("ARCA_ADDRESS", "RAY_ADDRESS"):
            if os.environ.get(var):
                address, from_env = os.environ[var], var
                break
    named = f"${from_env}" if from_env else "the address given"
    dir_from_env = temp_dir is None and bool(os.environ.get("ARCA_TEMP_DIR"))
    if temp_dir is None:
        temp_dir = os.environ.get("ARCA_TEMP_DIR") or None
    if address == "local":
        if not dir_from_env and temp_dir is not None:
            raise ValueError(
                "address='local' starts a node inside this process, in a directory of its "
                "own; _temp_dir names a running node's directory: pass one or the other"
            )
        return None
    dir_given = temp_dir is not None
    where = os.fspath(temp_dir) if temp_dir is not None else DEFAULT_SESSION_DIR
    which = (
        "from $ARCA_TEMP_DIR"
        if dir_from_env
        else "from _temp_dir"
        if dir_given
        else "the default temp dir"
    )
    running = _native.node_running(where)
    if address is None or address == "auto":
        if running:
            return None, where
        if dir_given:
            raise ConnectionError(
                f"No Arca node runs in {where} ({which}): start one with "
                f"`arca start --head --temp-dir {where}`, or "
                + ("unset ARCA_TEMP_DIR" if dir_from_env else "leave out _temp_dir")
                + (" to start one in this process" if address is None else "")
            )
        if address == "auto":
            raise ConnectionError(
                f"Could not find any running Arca instance (none in {DEFAULT_SESSION_DIR}, "
                "the default temp dir). Please specify the one to connect to by setting "
                "ARCA_TEMP_DIR (or ARCA_ADDRESS), start one with `arca start --head`, or call "
                "init() without an address to start one in this process."
            )
        return None
    unset = f", or unset {from_env} to start a node in this process" if from_env else ""
    if "://" in address:
        raise ConnectionError(
            f"{named} is {address!r}: Ray Client addresses (ray://) are not supported; give "
            f"the head's HOST:PORT and run the driver on a machine with a node of the "
            f"cluster{unset}"
        )
    host, sep, port = address.rpartition(":")
    if "/" in address or address.startswith(("~", ".")) or not sep or not port.isdigit():
        raise ConnectionError(
            f"{named} is {address!r}, but an address is the cluster head's HOST:PORT "
            "(e.g. 127.0.0.1:6379); to use the node in a directory, set ARCA_TEMP_DIR=DIR "
            f"or pass init(_temp_dir=DIR){unset}"
        )
    if not running:
        start = f"arca start --address {address}" + (f" --temp-dir {where}" if dir_given else "")
        other = "" if dir_given else ", or set ARCA_TEMP_DIR (or _temp_dir=) to the temp dir of one"
        raise ConnectionError(
            f"No node of the Arca cluster at {address} (from {named}) runs on this machine "
            f"(none in {where}, {which}): start one with "
            f"`{start}`{other}{unset}"
        )
    return address, where


def _context() -> RayContext:
    d = _state.session_dir
    ip, cluster = _node_ip(), _state.cluster_address or ""
    return RayContext(
        {
            "node_ip_address": ip,
            "raylet_ip_address": ip,
            "redis_address": None,
            "object_store_address": os.path.join(d, "store.sock"),
            "raylet_socket_name": os.path.join(d, "node.sock"),
            "webui_url": None,
            "session_dir": d,
            "metrics_export_port": None,
            "gcs_address": cluster,
            "address": cluster,
            "dashboard_agent_listen_port": None,
            "node_id": _state.node_id,
        }
    )


def _node_id() -> str:
    """This node's id in its cluster; for a node outside a cluster, an id of
    its own (the same in the driver and in its workers)."""
    s = _native.status()
    _state.cluster_address = s.get("cluster_address") or ""
    _state.node_ip = "127.0.0.1"
    nid = _native.node_id()
    for n in s.get("cluster", []):
        if nid and n["node_id"] == nid:
            _state.node_ip = _split_address(n["address"])[0] or "127.0.0.1"
    if nid:
        return nid
    return hashlib.sha1(f"{s['node_name']}:{s['pid']}:{s['session_dir']}".encode()).hexdigest()[:56]


def _node_ip() -> str:
    return _state.node_ip or "127.0.0.1"


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else 0


def connect_worker() -> None:
    """In a worker process started by the node."""
    _state.job_id = _native.worker_connect()
    _state.connected = True
    _state.worker = True
    _state.namespace = os.environ.get("ARCA_DRIVER_NAMESPACE", "")
    _state.session = 1
    _state.node_id = _node_id()


def is_initialized() -> bool:
    return _state.connected


def shutdown(_exiting_interpreter: bool = False) -> None:
    """Disconnects; stops the embedded node if ``init`` started one. Idempotent."""
    with _state.lock:
        if not _state.connected or _state.worker:
            return
        _native.shutdown()
        _state.connected = False
        _state.embedded = False


def ensure_init() -> None:
    if not _state.connected:
        if os.environ.get("RAY_ENABLE_AUTO_CONNECT", "1") == "0":
            raise exc.RaySystemError("Arca is not initialized: call arca.init() first")
        init()


def put(value: Any, **kwargs: Any) -> ObjectRef:
    """Stores ``value`` and returns a reference to it."""
    if kwargs:
        raise TypeError(f"put() got unexpected keyword arguments: {', '.join(kwargs)}")
    ensure_init()
    if isinstance(value, ObjectRef):
        raise TypeError(
            "Calling 'put' on an ray.ObjectRef is not allowed. If you really want to do this, "
            "you can wrap the ray.ObjectRef in a list and call 'put' on it."
        )
    enc, data, buffers, contained = serialize(value)
    return _native.put(enc, data, buffers, contained)


def get(object_refs: Any, *, timeout: float | None = None) -> Any:
    """The value of a ref, or the values of a list of refs (in order)."""
    ensure_init()
    single = isinstance(object_refs, ObjectRef)
    if single:
        refs = [object_refs]
    elif isinstance(object_refs, list):
        refs = object_refs
        for r in refs:
            if not isinstance(r, ObjectRef):
                raise ValueError(
                    f"Invalid type of object refs, {type(r)}, is given. 'object_refs' must "
                    "either be an ObjectRef or a list of ObjectRefs."
                )
    else:
        raise ValueError(
            f"Invalid type of object refs, {type(object_refs)}, is given. 'object_refs' must "
            "either be an ObjectRef or a list of ObjectRefs."
        )
    if not refs:
        return []
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number or None")
    values = []
    for item in _native.get(refs, timeout):
        if item[0] < 0:
            raise error_from_info(item)
        values.append(deserialize(item[0], item[1], item[2], item[3]))
    return values[0] if single else values


def error_from_info(t: tuple) -> Exception:
    """The exception for a failed object (see ``errors.rs`` for the tuple)."""
    _, kind, function, message, backtrace, cause, cause_type, pid = t
    name = function.rsplit("::", 1)[-1] if "::" in function else function.rsplit(".", 1)[-1]
    if kind == _TASK_FAILED:
        cause_exc: BaseException | None = None
        if cause:
            try:
                cause_exc = pickle.loads(cause)
            except Exception:
                cause_exc = None
        if cause_exc is None:
            cause_exc = exc.UnserializableException(
                backtrace or message, cause_type or "Exception", message
            )
        err = exc.RayTaskError(
            name, backtrace or message, cause_exc, pid=pid or None, cause_type=cause_type
        )
        return err.as_instanceof_cause()
    cls = {
        _CANCELLED: exc.TaskCancelledError,
        _CRASHED: exc.WorkerCrashedError,
        _ACTOR_DIED: exc.ActorDiedError,
        _UNSCHEDULABLE: exc.TaskUnschedulableError,
        _LOST: exc.ObjectLostError,
    }.get(kind)
    if cls is None:
        return exc.RaySystemError(message)
    if cls is exc.TaskCancelledError:
        return exc.TaskCancelledError(error_message=message)
    if cls is exc.ActorDiedError:
        return exc.ActorDiedError(error_msg=message)
    return cls(message)


def wait(
    object_refs: list,
    *,
    num_returns: int = 1,
    timeout: float | None = None,
    fetch_local: bool = True,
) -> tuple[list, list]:
    """``(ready, not_ready)``, each in the order given, once ``num_returns`` are
    ready or ``timeout`` seconds pass."""
    ensure_init()
    if isinstance(object_refs, ObjectRef) or not isinstance(object_refs, list):
        raise TypeError(f"wait() expected a list of ray.ObjectRef, got {type(object_refs)}")
    if timeout is not None and timeout < 0:
        raise ValueError(f"The 'timeout' argument must be nonnegative. Received {timeout}")
    if not object_refs:
        return [], []
    if num_returns <= 0:
        raise ValueError(f"Invalid number of objects to return {num_returns}.")
    if num_returns > len(object_refs):
        raise ValueError(
            "num_returns cannot be greater than the number of objects provided to ray.wait."
        )
    # The native call checks every element is an ObjectRef (TypeError) and
    # that none is there twice (ValueError).
    ready_idx = _native.wait(object_refs, num_returns, timeout, fetch_local)
    if len(ready_idx) == len(object_refs):
        return list(object_refs), []
    # The indices come in input order: the refs between them are not ready,
    # copied a slice at a time.
    ready = [object_refs[i] for i in ready_idx]
    not_ready: list = []
    start = 0
    for i in ready_idx:
        not_ready += object_refs[start:i]
        start = i + 1
    not_ready += object_refs[start:]
    return ready, not_ready


def cancel(object_ref: Any, *, force: bool = False, recursive: bool = True) -> None:
    """Cancels the task that makes ``object_ref``; ``get`` then raises
    ``TaskCancelledError``. A running task gets ``KeyboardInterrupt``; with
    ``force`` its worker is killed."""
    ensure_init()
    if not isinstance(object_ref, ObjectRef):
        raise TypeError(
            "ray.cancel() only supported for object refs. For actors, try ray.kill(). "
            f"Got: {type(object_ref)}."
        )
    _native.cancel(object_ref, force)


def _as_future(ref: ObjectRef):
    import asyncio

    loop = asyncio.get_running_loop()
    return asyncio.wrap_future(_future(ref), loop=loop)


_executor = None


def _future(ref: ObjectRef):
    import concurrent.futures

    global _executor
    if _executor is None:
        _executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=32, thread_name_prefix="arca-future"
        )
    return _executor.submit(get, ref)


# What the cluster looks like.


def nodes() -> list[dict[str, Any]]:
    """One dict per node of the cluster (dead ones included), as ``ray.nodes()``."""
    ensure_init()
    s = _native.status()
    out = []
    for n in _cluster(s):
        nid = n["node_id"] or _state.node_id
        ip, port = _split_address(n["address"])
        ip = ip or "127.0.0.1"
        temp_dir = n["temp_dir"] or s["session_dir"]
        alive = bool(n["alive"])
        out.append(
            {
                "NodeID": nid,
                "Alive": alive,
                "NodeManagerAddress": ip,
                "NodeManagerHostname": n["name"] or socket.gethostname(),
                "NodeManagerPort": port,
                "ObjectManagerPort": port,
                "ObjectStoreSocketName": os.path.join(temp_dir, "store.sock"),
                "RayletSocketName": os.path.join(temp_dir, "node.sock"),
                "MetricsExportPort": 0,
                "NodeName": ip,
                "RuntimeEnvAgentPort": 0,
                "alive": alive,
                "Resources": _resources(n, available=False),
                "Labels": {"ray.io/node_id": nid},
                "DeathReason": 0 if alive else 1,
                "DeathReasonMessage": n["death_reason"],
                "IsHead": bool(n["is_head"]),
            }
        )
    return out


def _cluster(s: dict) -> list[dict]:
    """The nodes in a ``status()``: the cluster's, or just this one (older
    nodes, or outside a cluster, with an empty id and address)."""
    nodes = s.get("cluster") or []
    if nodes:
        return nodes
    return [
        {
            "node_id": "",
            "address": "",
            "name": s["node_name"],
            "alive": True,
            "death_reason": "",
            "total": s["total"],
            "available": s["available"],
            "store_capacity": s["store_capacity"],
            "store_used": s["store_used"],
            "is_head": True,
            "temp_dir": s["session_dir"],
        }
    ]


def _resources(n: dict, available: bool) -> dict[str, float]:
    """One node's resources with Ray's keys (``n`` is a ``status()["cluster"]``
    entry): zero amounts left out, as Ray does."""
    src = n["available"] if available else n["total"]
    out = {k: float(v) for k, v in src.items() if v != 0}
    if available:
        out["object_store_memory"] = float(max(0, n["store_capacity"] - n["store_used"]))
    else:
        out["object_store_memory"] = float(n["store_capacity"])
    return {k: v for k, v in out.items() if v != 0}


def _total(available: bool) -> dict[str, float]:
    s = _native.status()
    out: dict[str, float] = {}
    for n in _cluster(s):
        if not n["alive"]:
            continue
        for k, v in _resources(n, available).items():
            out[k] = out.get(k, 0.0) + v
    return out


def cluster_resources() -> dict[str, float]:
    """What the cluster's alive nodes have in all."""
    ensure_init()
    return _total(available=False)


def available_resources() -> dict[str, float]:
    """What the cluster's alive nodes have free now."""
    ensure_init()
    return _total(available=True)


def get_gpu_ids() -> list:
    ensure_init()
    v = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not v:
        return []
    return [int(x) if x.isdigit() else x for x in v.split(",") if x]


class RuntimeContext:
    """What ``get_runtime_context()`` returns."""

    def get_node_id(self) -> str:
        return _state.node_id

    def get_worker_id(self) -> str:
        return hashlib.sha1(f"{_state.node_id}:{os.getpid()}".encode()).hexdigest()[:56]

    def get_job_id(self) -> str:
        return f"{_state.job_id:08x}"

    def get_task_id(self) -> str | None:
        t = _current_task.get()
        return t[0].hex() if t else None

    def get_actor_id(self) -> str | None:
        a = _state.current_actor_id
        return a.hex() if a else None

    @property
    def current_actor(self) -> Any:
        """This actor's handle (only inside an actor)."""
        if _state.actor_handle is None:
            raise RuntimeError("This method is only available in an actor.")
        from .actor import ActorHandle

        actor_id, class_name, methods, retries = _state.actor_handle
        return ActorHandle(_native._borrow_ref(actor_id), class_name, methods, retries)

    @property
    def namespace(self) -> str:
        return _state.namespace

    @property
    def was_current_actor_reconstructed(self) -> bool:
        """Whether this actor was restarted (after its process died)."""
        return _state.actor_reconstructed

    def get_assigned_resources(self) -> dict[str, float]:
        """The resources the running task (or this actor) holds, as Ray's
        ``{"CPU": 1.0}``; empty in a driver."""
        if _state.current_actor_id is not None:
            return dict(_state.actor_resources)
        t = _current_task.get()
        return _assigned(t[1]) if t else {}

    def is_canceled(self) -> bool:
        """Whether the running task (or actor call) was cancelled: a call
        that is not interrupted (a sync actor's) can check it and stop."""
        t = _current_task.get()
        return t is not None and _native.task_cancelled(t[0])

    @property
    def gcs_address(self) -> str:
        return _state.cluster_address


def _assigned(request: dict[str, float]) -> dict[str, float]:
    # A node:<IP> sliver is how a scheduling strategy placed it, not a
    # resource it was given.
    return {k: v for k, v in request.items() if v > 0 and not k.startswith("node:")}


def get_runtime_context() -> RuntimeContext:
    ensure_init()
    return RuntimeContext()
