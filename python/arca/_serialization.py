"""Values to objects and back.

``bytes`` are stored as they are (encoding RAW, the same kind of object as
Rust's ``arca::Buffer``). Everything else is pickled with cloudpickle,
protocol 5: large contiguous buffers (numpy arrays, Arrow buffers,
``PickleBuffer``) go out of band, and the native layer writes them once,
64-byte aligned, straight into shared memory. ``get`` rebuilds them as
read-only views of the store that keep the object pinned while they live.

ObjectRefs nested in a value are recorded as it is pickled (their
``__reduce__`` reports them), so the node counts them as held by the value;
a reader's refs read out of it lean on its hold of the value.
"""

from __future__ import annotations

import inspect
import pickle
from typing import Any

import cloudpickle

from . import _native

POSTCARD, RAW, ARROW, PICKLE5 = 0, 1, 2, 3

_NO_REFS = _native.end_collect(True)

# Exact instances of these pickle the same with the C pickler, much faster.
_PRIMITIVE = frozenset({int, float, str, bool, type(None)})


class _Kwargs:
    """The last argument of a task called with keyword arguments: their names
    (the values are the arguments before it, each passed like a positional)."""

    __slots__ = ("names",)

    def __init__(self, names: tuple[str, ...]):
        self.names = names

    def __reduce__(self):
        return (_Kwargs, (self.names,))


class _Generate:
    """The last argument of a generator task: the worker runs the generator
    to its end, putting each value (see ``_generator``)."""

    __slots__ = ()

    def __reduce__(self):
        return (_Generate, ())


class _Groups:
    """The last argument of an actor's constructor with
    ``concurrency_groups``: each group's limit, and the default group's."""

    __slots__ = ("limits", "default")

    def __init__(self, limits: dict[str, int], default: int):
        self.limits = limits
        self.default = default

    def __reduce__(self):
        return (_Groups, (self.limits, self.default))


class _CallGroup:
    """The last argument of an actor call made with
    ``.options(concurrency_group=...)``."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __reduce__(self):
        return (_CallGroup, (self.name,))


class _EnvVars:
    """The last argument of a task or actor with ``runtime_env={"env_vars":
    ...}``: set in the worker while it runs."""

    __slots__ = ("vars",)

    def __init__(self, vars: dict[str, str]):
        self.vars = vars

    def __reduce__(self):
        return (_EnvVars, (self.vars,))


def serialize(value: Any) -> tuple[int, Any, list | None, Any]:
    """``(encoding, data, out-of-band buffers, contained refs)`` for the native layer."""
    t = type(value)
    if t is bytes:
        return (RAW, value, None, _NO_REFS)
    if t in _PRIMITIVE:
        return (PICKLE5, pickle.dumps(value, protocol=5), None, _NO_REFS)
    nested = _native.begin_collect()
    buffers: list[pickle.PickleBuffer] = []
    try:
        data = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    except Exception as e:
        _native.end_collect(nested)
        raise _pickling_error(value, e) from e
    contained = _native.end_collect(nested)
    raws = [b.raw() for b in buffers] if buffers else None
    return (PICKLE5, data, raws, contained)


def deserialize(encoding: int, data: Any, buffers: list | None, source: Any = None) -> Any:
    """A value from its parts. ``source`` (from ``get``): refs nested in the
    value lean on this process's hold of its object (no message each)."""
    if encoding == PICKLE5:
        _native.begin_borrow(source)
        try:
            return pickle.loads(data, buffers=buffers or ())
        finally:
            _native.end_borrow()
    if encoding == RAW:
        return bytes(data)
    if encoding == ARROW:
        try:
            import pyarrow
        except ImportError as e:
            raise TypeError(
                "this object is an Arrow record batch (written by arca::ArrowBatch); "
                "install pyarrow to read it"
            ) from e
        reader = pyarrow.ipc.open_stream(pyarrow.py_buffer(data))
        batches = list(reader)
        if len(batches) == 1:
            return batches[0]
        return pyarrow.Table.from_batches(batches, schema=reader.schema)
    if encoding == POSTCARD:
        raise TypeError(
            "this object holds a typed Rust value (serde + postcard), which Python cannot "
            "read; share bytes (arca::Buffer / Python bytes), Arrow batches (arca::ArrowBatch) "
            "or Python values between Rust and Python"
        )
    raise TypeError(f"this object has an unknown encoding ({encoding})")


def _pickling_error(value: Any, e: Exception) -> TypeError:
    path = _find_unpicklable(value, "the value", 0, set())
    where = f": {path}" if path else ""
    return TypeError(f"Could not serialize {_describe(value)}{where} ({type(e).__name__}: {e})")


def _describe(x: Any) -> str:
    name = getattr(x, "__qualname__", None) or type(x).__qualname__
    return f"{name!s} ({type(x).__name__})" if name != type(x).__qualname__ else repr(type(x))


def _pickles(x: Any) -> bool:
    try:
        cloudpickle.dumps(x, protocol=5, buffer_callback=lambda _: None)
        return True
    except Exception:
        return False


def _children(x: Any) -> list[tuple[str, Any]]:
    """What a value is made of, with a name for each part."""
    if inspect.isfunction(x):
        out = []
        closure = inspect.getclosurevars(x)
        for k, v in closure.nonlocals.items():
            out.append((f"closure variable {k!r} of {x.__qualname__}", v))
        for k, v in closure.globals.items():
            if not inspect.ismodule(v):
                out.append((f"global {k!r} used by {x.__qualname__}", v))
        return out
    if isinstance(x, dict):
        return [(f"item {k!r}", v) for k, v in x.items()]
    if isinstance(x, (list, tuple, set, frozenset)):
        return [(f"element {i}", v) for i, v in enumerate(x)]
    d = getattr(x, "__dict__", None)
    if isinstance(d, dict):
        return [(f"attribute {k!r} of {type(x).__qualname__}", v) for k, v in d.items()]
    return []


def _find_unpicklable(x: Any, where: str, depth: int, seen: set[int]) -> str:
    """The path to the innermost part of ``x`` that does not pickle."""
    if depth > 6 or id(x) in seen:
        return ""
    seen.add(id(x))
    for name, child in _children(x):
        if not _pickles(child):
            inner = _find_unpicklable(child, name, depth + 1, seen)
            return f"{name} ({type(child).__qualname__})" + (f", in it {inner}" if inner else "")
    return ""
