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
    import math
    import tomllib

    from emulator.scenario import builtin_path, parse_scenario

    with open(builtin_path(name), "rb") as f:
        data = tomllib.load(f)

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("memory_mb", "limit_mb"):             # whole MB
                    node[k] = math.ceil(v * mb)
                elif k in ("mb", "pgtables_mb"):
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


class HeldRun:
    """``oomemu run ... --hold`` in a subprocess, as a user in one terminal starts it."""

    def __init__(self, scenario: str, policy: str = "v4.17", *extra: str, trace: str | None = None):
        import subprocess
        import sys
        args = [sys.executable, "-m", "emulator", "run", scenario, "--policy", policy, "--hold", *extra]
        if trace:
            args += ["--trace", trace]
        self.trace = trace
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = self.proc.stdout.readline()
        if not first.startswith("oomemu: run "):
            self.proc.kill()
            raise RuntimeError(f"run did not start: {first}{self.proc.stderr.read()}")
        self.id = first.split()[2].rstrip(":")
        self.out = ""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if self.proc.poll() is None:
            if exc_type is None:
                self.stop()
            else:                                         # keep the test's own error in view
                import signal
                self.proc.send_signal(signal.SIGINT)
                self.proc.communicate(timeout=60)

    def stop(self) -> str:
        import signal
        self.proc.send_signal(signal.SIGINT)            # what 'oomemu stop' does
        out, err = self.proc.communicate(timeout=60)
        self.out = out
        assert self.proc.returncode == 0, err
        return out

    def events(self) -> list[dict]:
        import json
        try:
            with open(self.trace) as f:
                return [json.loads(line) for line in f if line.endswith("\n")]
        except FileNotFoundError:
            return []

    def wait_event(self, predicate, timeout: float = 30.0) -> dict:
        found = wait_for(lambda: next((e for e in self.events() if predicate(e)), None), timeout, 0.05)
        assert found, f"no such event within {timeout}s"
        return found


def oomemu(*args, timeout: float = 60):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "emulator", *args], capture_output=True, text=True,
                          timeout=timeout)
