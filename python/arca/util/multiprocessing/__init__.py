"""``Pool``: the standard library's ``multiprocessing.Pool`` API over actors,
as Ray's ``ray.util.multiprocessing.Pool``, so a program written for
``multiprocessing`` runs across a cluster by changing its import."""

from __future__ import annotations

from multiprocessing import TimeoutError

from .pool import AsyncResult, Pool

__all__ = ["AsyncResult", "Pool", "TimeoutError"]
