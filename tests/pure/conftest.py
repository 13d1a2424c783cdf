"""A pure test starts no process and opens nothing in /dev/shm: each way there fails it.

What the layer promises is checked, not trusted: while a test of tests/pure
runs, starting a process (subprocess, fork, posix_spawn, multiprocessing) or
opening a POSIX segment or semaphore raises, naming the layers where such a
test belongs.
"""

import contextlib
import importlib
import multiprocessing.process
import os
import subprocess

import posix_ipc
import pytest

# matplotlib builds its font cache on first import, with fc-list in a subprocess:
# on a fresh machine, let it do so before any pure test runs.
with contextlib.suppress(ImportError):
    importlib.import_module("matplotlib.font_manager")


def _refuse(what: str):
    def refused(*args, **kwargs):
        raise AssertionError(f"a pure test {what}: it belongs in tests/ipc, tests/runs or tests/cli")
    return refused


@pytest.fixture(autouse=True)
def no_process_no_shm(monkeypatch):
    monkeypatch.setattr(subprocess, "Popen", _refuse("started a process (subprocess)"))
    monkeypatch.setattr(os, "fork", _refuse("forked"))
    monkeypatch.setattr(os, "posix_spawn", _refuse("started a process (posix_spawn)"))
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", _refuse("started a process (multiprocessing)"))
    monkeypatch.setattr(posix_ipc, "SharedMemory", _refuse("opened a segment in /dev/shm"))
    monkeypatch.setattr(posix_ipc, "Semaphore", _refuse("opened a semaphore in /dev/shm"))
    yield
