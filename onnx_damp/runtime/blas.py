"""numpy's and scipy's BLAS threads while onnx-damp's host arithmetic runs: one by default, restored afterwards.

OpenBLAS's threads meet at every call; where the cores are busy (other jobs, the machine's other tenants) a
descheduled thread stalls each call for a time slice. On 2 cores beside two busy processes, efficientnet_b0's
planning took 68.7 s with OpenBLAS's two threads and 6.0 s with one (5.6 and 4.4 s on an idle machine);
densenet121's whole `forget -q` 111.5 s against 17.8 s, and 14.0 against 10.1 s idle (bench/busy_machine.py,
docs/benchmarks.md). onnxruntime's own thread pool is not affected.

An explicit OPENBLAS_NUM_THREADS, GOTO_NUM_THREADS, OMP_NUM_THREADS, MKL_NUM_THREADS or BLIS_NUM_THREADS in the
environment is the user's choice and is left alone. The limit is the process's, as BLAS thread counts are: while
any scope is open, the caller's other threads get one BLAS thread too. scipy brings its own OpenBLAS when first
imported (lazily: scipy.linalg on wide layers, scipy.optimize for a verification probe): refresh(what) after such
an import limits libraries loaded since the scope began (once per what). Limiting or restoring never fails a run:
where threadpoolctl cannot, BLAS keeps its threads.
"""
from __future__ import annotations

import functools
import os
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Mapping

BLAS_THREADS = 1
USER_VARIABLES = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                  "BLIS_NUM_THREADS")

Limiter = Callable[[int], object]  # threads -> an object with restore_original_limits() (threadpoolctl's)


def _threadpoolctl_limit(threads: int) -> object:
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads, user_api="blas")


class _Scope:
    """The limits taken while any host_blas_threads scope is open, restored last-first when the last one closes."""

    def __init__(self, threads: int, limiter: Limiter) -> None:
        self.threads, self.limiter, self.taken = threads, limiter, [limiter(threads)]
        self.refreshed: set[str] = set()

    def refresh(self, what: str) -> None:
        if what in self.refreshed:  # once per import: each call walks the process's loaded libraries (about 2 ms)
            return
        self.refreshed.add(what)
        try:
            self.taken.append(self.limiter(self.threads))
        except Exception:  # as on opening: the library keeps its threads
            pass

    def restore(self) -> None:
        for limit in reversed(self.taken):
            try:
                limit.restore_original_limits()
            except Exception:  # the others are still restored; a run's result never hangs on this
                pass


# BLAS thread counts belong to the process, so the scope does too: the first scope opened (on any thread) takes the
# limit, the last one closed restores it (two threads' forget calls must not restore each other's limit)
_LOCK = threading.Lock()
_OPEN = 0
_SCOPE: _Scope | None = None


@contextmanager
def host_blas_threads(threads: int | None = BLAS_THREADS, environ: Mapping[str, str] = os.environ,
                      limiter: Limiter = _threadpoolctl_limit) -> Iterator[bool]:
    """Within the scope, the loaded BLAS libraries use at most threads threads (None, or a thread variable set
    in environ: unchanged). Yields whether this scope took the limit (not when one was open already).
    limiter: what limits them (threadpoolctl's)."""
    global _OPEN, _SCOPE
    with _LOCK:
        took = _OPEN == 0 and threads is not None and not any(v in environ for v in USER_VARIABLES)
        if took:
            try:
                _SCOPE = _Scope(threads, limiter)
            except Exception:  # a BLAS threadpoolctl cannot drive: run unlimited rather than not at all
                took = False
        _OPEN += 1
    try:
        yield took
    finally:
        with _LOCK:
            _OPEN -= 1
            if _OPEN == 0 and _SCOPE is not None:
                scope, _SCOPE = _SCOPE, None
                scope.restore()


def refresh(what: str) -> None:
    """Limit, as the open scope does, BLAS libraries loaded since it began, once per what (the module just imported,
    e.g. "scipy.linalg"); no scope open: nothing."""
    with _LOCK:
        if _SCOPE is not None:
            _SCOPE.refresh(what)


def host_blas_limited(func):
    """func run inside host_blas_threads() (the API's forget, collect and evaluate)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with host_blas_threads():
            return func(*args, **kwargs)

    return wrapper
