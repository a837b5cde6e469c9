"""Ray's exception hierarchy, with Ray's names and bases, so that
``from ray.exceptions import X`` carries over as ``from arca.exceptions import X``.

A task that raises ``ValueError`` makes ``get`` raise ``RayTaskError(ValueError)``:
a class made at run time that subclasses both ``RayTaskError`` and ``ValueError``,
so ``except ValueError`` catches it, and its message carries the remote traceback.
"""

from __future__ import annotations

from typing import Any


class RayError(Exception):
    """Base of every error Arca raises."""


class RaySystemError(RayError):
    """Arca itself failed (a lost connection, a protocol error)."""

    def __init__(self, client_exc: Any = "", traceback_str: str | None = None):
        self.client_exc = client_exc
        self.traceback_str = traceback_str
        super().__init__(client_exc)

    def __str__(self) -> str:
        s = f"System error: {self.client_exc}"
        if self.traceback_str:
            s += f"\ntraceback: {self.traceback_str}"
        return s


class RayTaskError(RayError):
    """A task raised an exception (``cause``); ``str()`` shows the remote traceback."""

    def __init__(
        self,
        function_name: str = "",
        traceback_str: str = "",
        cause: BaseException | None = None,
        proctitle: str | None = None,
        pid: int | None = None,
        ip: str | None = None,
        actor_repr: str | None = None,
        actor_id: str | None = None,
        cause_type: str | None = None,
    ):
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.proctitle = proctitle or f"ray::{function_name}"
        self.pid = pid
        self.ip = ip or "127.0.0.1"
        self.actor_repr = actor_repr
        self.actor_id = actor_id
        self.cause_type = cause_type or (type(cause).__name__ if cause is not None else "")
        super().__init__(function_name, traceback_str, cause)

    def __str__(self) -> str:
        head = f"{self.proctitle}() (pid={self.pid}, ip={self.ip})"
        if self.actor_repr:
            head += f", actor={self.actor_repr}"
        body = self.traceback_str.rstrip() if self.traceback_str else ""
        if not body and self.cause is not None:
            body = f"{type(self.cause).__name__}: {self.cause}"
        return f"{head}\n{body}" if body else head

    def __reduce__(self):
        return (
            RayTaskError,
            (
                self.function_name,
                self.traceback_str,
                self.cause,
                self.proctitle,
                self.pid,
                self.ip,
                self.actor_repr,
                self.actor_id,
                self.cause_type,
            ),
        )

    def as_instanceof_cause(self) -> RayTaskError:
        """This error as an instance of ``RayTaskError(<cause class>)``, a class
        that is both a ``RayTaskError`` and the cause's class."""
        cause_cls = type(self.cause) if self.cause is not None else None
        if cause_cls is None or issubclass(cause_cls, RayTaskError):
            return self
        try:
            cls = _dual_class(cause_cls)
        except TypeError:
            return self
        return cls(self)


_dual_classes: dict[type, type] = {}


def _dual_class(cause_cls: type) -> type:
    cls = _dual_classes.get(cause_cls)
    if cls is not None:
        return cls

    def __init__(self, task_error: RayTaskError):
        # The cause's own __init__ may need arguments we do not have; copy state.
        self.__dict__.update(task_error.__dict__)
        self._task_error = task_error

    def __getattr__(self, name):
        cause = self.__dict__.get("cause")
        if cause is None:
            raise AttributeError(name)
        return getattr(cause, name)

    def __str__(self):
        return RayTaskError.__str__(self)

    def __reduce__(self):
        return (_rebuild_dual, (self._task_error,))

    name = f"RayTaskError({cause_cls.__name__})"
    cls = type(
        name,
        (RayTaskError, cause_cls),
        {
            "__init__": __init__,
            "__getattr__": __getattr__,
            "__str__": __str__,
            "__reduce__": __reduce__,
            "args": property(lambda self: (str(self),)),
            "__module__": __name__,
            "__qualname__": name,
        },
    )
    _dual_classes[cause_cls] = cls
    return cls


def _rebuild_dual(task_error: RayTaskError) -> RayTaskError:
    return task_error.as_instanceof_cause()


class UnserializableException(RayError):
    """A task's exception that could not be unpickled on the caller's side:
    its type name, message and traceback are kept."""

    def __init__(self, original_stack_trace: str = "", type_name: str = "", message: str = ""):
        self.original_stack_trace = original_stack_trace
        self.type_name = type_name
        self.message = message
        super().__init__(original_stack_trace)

    def __str__(self) -> str:
        return (
            f"Failed to unpickle the task's exception {self.type_name}: {self.message}\n"
            f"Original traceback:\n{self.original_stack_trace}"
        )


class _MessageError(RayError):
    """An error with a plain message (the node says what happened and why)."""

    def __init__(self, message: str = "", *args: Any):
        self.message = message
        super().__init__(message, *args)

    def __str__(self) -> str:
        return str(self.message)


class GetTimeoutError(_MessageError, TimeoutError):
    """``get`` gave up after its timeout."""


class TaskCancelledError(_MessageError):
    """The task was cancelled with ``cancel``."""

    def __init__(self, task_id: Any = None, error_message: str | None = None):
        self.task_id = task_id
        msg = error_message or (task_id if isinstance(task_id, str) else "This task was cancelled.")
        super().__init__(msg)


class WorkerCrashedError(_MessageError):
    """The worker running the task died and no retries were left."""


class RayActorError(_MessageError):
    """The actor is dead or unreachable."""

    def __init__(
        self,
        actor_id: Any = None,
        error_msg: str | None = None,
        actor_init_failed: bool = False,
        preempted: bool = False,
    ):
        self.actor_id = actor_id
        self.actor_init_failed = actor_init_failed
        self.preempted = preempted
        msg = error_msg or (actor_id if isinstance(actor_id, str) else "The actor died.")
        super().__init__(msg)


class ActorDiedError(RayActorError):
    """The actor died (killed, crashed with no restarts left, or its constructor failed)."""


class ActorUnavailableError(RayActorError):
    """The actor is temporarily unreachable."""


class ActorAlreadyExistsError(ValueError, RayError):
    """An actor with that name already exists."""


class ObjectLostError(_MessageError):
    """The object is gone: freed, or its owner exited."""


class ObjectFreedError(ObjectLostError):
    pass


class OwnerDiedError(ObjectLostError):
    pass


class ObjectFetchTimedOutError(ObjectLostError):
    pass


class ObjectReconstructionFailedError(ObjectLostError):
    pass


class ObjectStoreFullError(_MessageError):
    """The object store has no room: the message says what holds the memory."""

    def __str__(self) -> str:
        return (
            f"{self.message}\nRun `arca memory` to see what holds the store's memory "
            "(as `ray memory` does)."
        )


class OutOfMemoryError(_MessageError):
    """The task's worker was killed for using too much memory."""


class OutOfDiskError(_MessageError):
    pass


class NodeDiedError(_MessageError):
    pass


class TaskUnschedulableError(_MessageError):
    """No node can ever satisfy the task's resource request."""


class ActorUnschedulableError(_MessageError):
    pass


class PlasmaObjectNotAvailable(RayError):
    pass


class RuntimeEnvSetupError(_MessageError):
    pass


class CrossLanguageError(_MessageError):
    """A value written by another language that Python cannot read."""


__all__ = [
    "RayError",
    "RaySystemError",
    "RayTaskError",
    "UnserializableException",
    "GetTimeoutError",
    "TaskCancelledError",
    "WorkerCrashedError",
    "RayActorError",
    "ActorDiedError",
    "ActorUnavailableError",
    "ActorAlreadyExistsError",
    "ObjectLostError",
    "ObjectFreedError",
    "OwnerDiedError",
    "ObjectFetchTimedOutError",
    "ObjectReconstructionFailedError",
    "ObjectStoreFullError",
    "OutOfMemoryError",
    "OutOfDiskError",
    "NodeDiedError",
    "TaskUnschedulableError",
    "ActorUnschedulableError",
    "PlasmaObjectNotAvailable",
    "RuntimeEnvSetupError",
    "CrossLanguageError",
]
