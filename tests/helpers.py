"""Test helpers, psutil-style: find what a run left behind, burn CPU, write scenarios."""

from __future__ import annotations

import multiprocessing
import os
import textwrap
import time

import psutil

from emulator import names


def shm_leftovers() -> set[str]:
    """Every oomemu object in /dev/shm (segments and semaphores)."""
    return {e for entries in names.leftovers().values() for e in entries}


def worker_processes() -> list[psutil.Process]:
    """Worker processes of this test session (other runs on the machine are not ours)."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "workers.task" in cmd:
            try:
                if p.environ().get("OOMEMU_PREFIX") == names.PREFIX:
                    out.append(p)
            except psutil.Error:
                pass
    return out


def wait_for(predicate, timeout: float, interval: float = 0.01):
    """Bounded wait for a condition; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def write_scenario(tmp_path, text: str, name: str = "scenario") -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def _burn(stop):
    while not stop.is_set():
        sum(range(10000))


class CpuBurner:
    """Keep every core busy (a noisy neighbour) while a test runs."""

    def __init__(self, n: int | None = None):
        self.n = n or os.cpu_count() or 2
        self._stop = multiprocessing.Event()
        self._procs = []

    def __enter__(self):
        for _ in range(self.n):
            p = multiprocessing.Process(target=_burn, args=(self._stop,), daemon=True)
            p.start()
            self._procs.append(p)
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for p in self._procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()


def scaled_variant(name: str, mb: float = 1.0, ms: float = 1.0):
    """A built-in scenario with every size times ``mb`` and every duration times ``ms``.

    Sizes and durations move together, so the mechanism stays and only the
    numbers change (``exit_unmap_ms_per_mb`` stays: unmapping more takes longer).
    """
    import tomllib

    from emulator.scenario import builtin_path, parse_scenario

    with open(builtin_path(name), "rb") as f:
        data = tomllib.load(f)

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("mb", "memory_mb", "limit_mb", "pgtables_mb"):
                    node[k] = v * mb
                elif k in ("ms", "exit_free_pgtables_ms"):
                    node[k] = v * ms
                else:
                    walk(v)
        elif isinstance(node, list):
            for x in node:
                walk(x)

    walk(data)
    data["name"] = f"{name}-x{mb:g}mb-x{ms:g}ms"
    data.pop("expected", None)
    return parse_scenario(data, source=f"<{data['name']}>")
