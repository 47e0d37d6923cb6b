"""runtime.blas: the host's BLAS thread limit, its scope, the user's variables and scipy's late library."""
import itertools
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from onnx_damp.runtime import blas


class FakeLimits:
    def __init__(self, log, threads, ident):
        self.log, self.threads, self.ident = log, threads, ident
        log.append(("limit", ident))

    def restore_original_limits(self):
        self.log.append(("restore", self.ident))


def fake(log):
    ids = itertools.count()
    return lambda threads: FakeLimits(log, threads, next(ids))


def test_limit_taken_refreshed_once_per_import_and_restored_last_first():
    log = []
    with blas.host_blas_threads(1, environ={}, limiter=fake(log)) as taken:
        assert taken
        blas.refresh("scipy.linalg")
        blas.refresh("scipy.linalg")  # once per import: a second library walk would cost time for nothing
        blas.refresh("scipy.optimize")
    assert log == [("limit", 0), ("limit", 1), ("limit", 2), ("restore", 2), ("restore", 1), ("restore", 0)]
    blas.refresh("scipy.linalg")  # outside any scope: nothing
    assert len(log) == 6


def test_user_thread_variables_and_none_leave_blas_alone():
    log = []
    for env in ({"OPENBLAS_NUM_THREADS": "4"}, {"OMP_NUM_THREADS": "2"}, {"MKL_NUM_THREADS": "8"},
                {"GOTO_NUM_THREADS": "2"}):
        with blas.host_blas_threads(1, environ=env, limiter=fake(log)) as taken:
            assert not taken
    with blas.host_blas_threads(None, environ={}, limiter=fake(log)) as taken:
        assert not taken
    assert log == []


def test_nested_scopes_limit_once():
    log = []
    with blas.host_blas_threads(1, environ={}, limiter=fake(log)):
        with blas.host_blas_threads(1, environ={}, limiter=fake(log)) as inner:
            assert not inner
    assert log == [("limit", 0), ("restore", 0)]


def test_restored_after_an_error():
    log = []
    with pytest.raises(ValueError):
        with blas.host_blas_threads(1, environ={}, limiter=fake(log)):
            raise ValueError("boom")
    assert log == [("limit", 0), ("restore", 0)]
    assert blas._SCOPE is None and blas._OPEN == 0


def test_two_threads_scopes_restore_once_when_the_last_closes():
    """BLAS limits are the process's: a second thread's scope opened inside the first neither limits again nor
    restores when the first closes; the limit is restored once, when the last scope closes."""
    log, seen = [], []
    inner_open, outer_closed = threading.Event(), threading.Event()

    def second():
        with blas.host_blas_threads(1, environ={}, limiter=fake(log)) as taken:
            seen.append(taken)
            inner_open.set()
            outer_closed.wait(5)

    t = threading.Thread(target=second)
    try:
        with blas.host_blas_threads(1, environ={}, limiter=fake(log)) as taken:
            assert taken
            t.start()
            assert inner_open.wait(5)
        assert log == [("limit", 0)]  # the first closed while the second is open: nothing restored yet
    finally:
        outer_closed.set()
        t.join(5)
    assert seen == [False]
    assert log == [("limit", 0), ("restore", 0)]
    assert blas._SCOPE is None and blas._OPEN == 0


def test_a_limiter_that_fails_never_fails_the_run():
    def broken(threads):
        raise OSError("no BLAS found")

    with blas.host_blas_threads(1, environ={}, limiter=broken) as taken:
        assert not taken
        blas.refresh("scipy.linalg")
    assert blas._SCOPE is None and blas._OPEN == 0

    class BadRestore(FakeLimits):
        def restore_original_limits(self):
            super().restore_original_limits()
            raise RuntimeError("cannot restore")

    calls, log = itertools.count(), []
    flaky = lambda threads: (BadRestore if next(calls) == 1 else FakeLimits)(log, threads, len(log))  # noqa: E731
    with blas.host_blas_threads(1, environ={}, limiter=flaky):
        blas.refresh("scipy.linalg")  # its limit cannot be restored: the first one still is
    assert log == [("limit", 0), ("limit", 1), ("restore", 1), ("restore", 0)]


def _blas_threads() -> dict:
    from threadpoolctl import threadpool_info

    return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def test_threadpoolctl_limits_numpys_blas_within_the_scope_only():
    np.ones((2, 2)) @ np.ones((2, 2))  # numpy's BLAS is loaded
    before = _blas_threads()
    if not before:
        pytest.skip("threadpoolctl finds no BLAS it can limit here")
    with blas.host_blas_threads(1, environ={}) as taken:
        inside = _blas_threads()
    assert taken
    assert inside and all(n == 1 for n in inside.values())
    assert _blas_threads() == before


def test_scipys_blas_is_limited_too_when_the_method_loads_it_later():
    """scipy brings its own OpenBLAS, loaded only when the method or a probe first imports it: refresh limits it
    then. In a fresh process, so that scipy is not loaded before the scope opens."""
    code = textwrap.dedent("""
        import sys, numpy as np
        from threadpoolctl import threadpool_info
        from onnx_damp.runtime import blas
        from onnx_damp.method import projection as pj
        assert "scipy.linalg" not in sys.modules
        with blas.host_blas_threads(1, environ={}):
            assert pj._cholesky(np.eye(3) * 2.0) is not None
            inside = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        print(len(inside), all(n == 1 for n in inside))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    libraries, all_one = out.stdout.split()
    if int(libraries) == 0:
        pytest.skip("threadpoolctl finds no BLAS it can limit here")
    assert all_one == "True"
