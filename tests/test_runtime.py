import os

import pytest

from deepret import runtime


def test_allocator_tuning_applies_on_glibc_and_can_be_turned_off(monkeypatch):
    if not runtime._glibc():
        pytest.skip("not a glibc system: mallopt does not exist here")
    assert runtime.tune_allocator() is True
    monkeypatch.setenv("DEEPRET_MALLOC_TUNING", "0")
    assert runtime.tune_allocator() is False
    assert runtime.tune_allocator(False) is True  # restoring glibc's defaults is always allowed


@pytest.mark.parametrize("cores,workers", [(1, 0), (2, 0), (4, 1), (8, 2), (16, 4), (64, 4)])
def test_default_workers_by_core_count(monkeypatch, cores, workers):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert runtime.default_workers() == workers
