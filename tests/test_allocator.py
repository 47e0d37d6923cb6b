"""The CLI's glibc malloc setting: what it asks mallopt for, and that a user's MALLOC_ARENA_MAX wins."""
import platform
import sys

from onnx_damp.runtime import allocator


class Recorder:
    def __init__(self, answer: int = 1):
        self.calls, self.answer = [], answer

    def __call__(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.answer


def test_one_malloc_arena_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    rec = Recorder()
    assert allocator.limit_malloc_arenas(mallopt=rec) is True and rec.calls == [(allocator.M_ARENA_MAX, 1)]
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    rec = Recorder()
    assert allocator.limit_malloc_arenas(mallopt=rec) is False and rec.calls == []


def test_the_real_mallopt_is_found_with_glibc_only():
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert (allocator._mallopt() is not None) is glibc
