"""runtime.blas: the host's BLAS thread limit, its scope, the user's variables and scipy's late library."""
import numpy as np

from onnx_damp.runtime import blas


class FakeLimits:
    def __init__(self, log, threads):
        self.log, self.threads = log, threads
        log.append(("limit", threads))

    def restore_original_limits(self):
        self.log.append(("restore", self.threads))


def fake(log):
    return lambda threads: FakeLimits(log, threads)


def test_limit_taken_and_restored_and_refreshed_once():
    log = []
    with blas.host_blas_threads(1, environ={}, limiter=fake(log)) as taken:
        assert taken
        blas.refresh()
        blas.refresh()  # once per scope: a second library walk would cost time for nothing
    assert log == [("limit", 1), ("limit", 1), ("restore", 1), ("restore", 1)]
    blas.refresh()  # outside any scope: nothing
    assert len(log) == 4


def test_user_thread_variables_and_none_leave_blas_alone():
    log = []
    for env in ({"OPENBLAS_NUM_THREADS": "4"}, {"OMP_NUM_THREADS": "2"}, {"MKL_NUM_THREADS": "8"}):
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
    assert log == [("limit", 1), ("restore", 1)]


def test_restored_after_an_error():
    log = []
    try:
        with blas.host_blas_threads(1, environ={}, limiter=fake(log)):
            raise ValueError("boom")
    except ValueError:
        pass
    assert log == [("limit", 1), ("restore", 1)]
    assert blas._SCOPE is None and blas._OPEN == 0


def test_threadpoolctl_limits_numpys_blas_within_the_scope_only():
    from threadpoolctl import threadpool_info

    np.ones((2, 2)) @ np.ones((2, 2))  # numpy's BLAS is loaded
    before = {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
    with blas.host_blas_threads(1, environ={}) as taken:
        inside = {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
    after = {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
    assert taken
    assert all(n == 1 for n in inside.values())
    assert after == before


def test_scipys_blas_is_limited_too_when_the_method_loads_it():
    """scipy.linalg brings its own OpenBLAS, loaded on the method's first wide layer: projection refreshes the
    limit then, so every BLAS library is at one thread while the scope lasts."""
    from threadpoolctl import threadpool_info

    from onnx_damp.method import projection as pj

    with blas.host_blas_threads(1, environ={}):
        assert pj._cholesky(np.eye(3) * 2.0) is not None
        inside = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    assert inside and all(n == 1 for n in inside)


def test_two_threads_scopes_restore_once_when_the_last_closes():
    """BLAS limits are the process's: a second thread's scope inside the first neither limits again nor restores
    when it closes first; the limit is restored once, when the last scope closes."""
    import threading

    log = []
    inner_open, outer_may_close = threading.Event(), threading.Event()

    def second():
        with blas.host_blas_threads(1, environ={}, limiter=fake(log)) as taken:
            assert not taken
            inner_open.set()
            outer_may_close.wait(5)

    with blas.host_blas_threads(1, environ={}, limiter=fake(log)) as taken:
        assert taken
        t = threading.Thread(target=second)
        t.start()
        inner_open.wait(5)
    assert log == [("limit", 1)]  # the first closed while the second is open: nothing restored yet
    outer_may_close.set()
    t.join(5)
    assert log == [("limit", 1), ("restore", 1)]


def test_a_limiter_that_fails_leaves_blas_unlimited():
    def broken(threads):
        raise OSError("no BLAS found")

    with blas.host_blas_threads(1, environ={}, limiter=broken) as taken:
        assert not taken
        blas.refresh()
    assert blas._SCOPE is None and blas._OPEN == 0
