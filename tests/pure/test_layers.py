"""The three layers the folders show, kept so by reading every module's imports.

kernel/ (the pure model) and userspace/ (the daemon models, as pure) import
nothing of runtime/ or tools/, and nothing
that sleeps, reads the real clock, or touches a process, a semaphore or
/dev/shm; runtime/ imports nothing of tools/; the shared modules at the top
(errors, scenario, result, policies) import only kernel/ and each other; the
workers (workers/) use kernel/ and runtime/, not tools/. An import inside a
function counts as much as one at the top.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

pytestmark = pytest.mark.timeout(30)

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "emulator"
SHARED = ("emulator.errors", "emulator.scenario", "emulator.result", "emulator.policies")

# What kernel/ must not import: processes, IPC, memory maps, signals, threads, the real clock.
KERNEL_FORBIDDEN = ("posix_ipc", "psutil", "subprocess", "mmap", "signal", "threading", "time",
                    "multiprocessing", "concurrent", "selectors", "socket", "select", "fcntl",
                    "resource", "ctypes", "asyncio", "os")      # os: kill, fork, open, getpid


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: pathlib.Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in the file, nested ones included;
    ``from pkg import name`` counts as importing ``pkg.name`` too (it may be a module)."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    source = path.read_text() if source is None else source
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            out.append((node.lineno, target))
            out += [(node.lineno, f"{target}.{a.name}") for a in node.names]
    return out


def modules(under: str) -> list[pathlib.Path]:
    return sorted((PACKAGE / under).rglob("*.py")) if under else []


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(paths, forbidden, source: str | None = None) -> list[str]:
    bad = []
    for path in paths:
        for line, name in imports_of(path, source):
            for f in forbidden:
                if within(name, f):
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return bad


def test_every_layer_has_modules():
    """A guard that scans nothing guards nothing."""
    for layer in ("kernel", "runtime", "tools"):
        assert len(modules(layer)) >= 3, layer


def test_kernel_imports_neither_runtime_nor_tools():
    assert violations(modules("kernel"), ("emulator.runtime", "emulator.tools")) == []


def test_kernel_touches_no_process_ipc_clock_or_thread():
    assert violations(modules("kernel"), KERNEL_FORBIDDEN) == []


def test_daemon_models_are_as_pure_as_the_kernel_model():
    """userspace/ (earlyoom, lmkd, oomd, systemd-oomd as decision logic) sees a run only
    through the snapshots it is handed: no runtime/, no tools/, no process, no clock."""
    assert len(modules("userspace")) >= 5
    assert violations(modules("userspace"), ("emulator.runtime", "emulator.tools") + KERNEL_FORBIDDEN) == []


def test_runtime_does_not_import_tools():
    assert violations(modules("runtime"), ("emulator.tools",)) == []


# What host/ (a run on the machine's own kernel) may use of runtime/.
HOST_RUNTIME = ("emulator.runtime.names", "emulator.runtime.signals", "emulator.runtime.trace")


def test_host_imports_nothing_of_tools_and_little_of_runtime():
    """host/ uses the kernel model, the shared modules and runtime's names, signals and
    trace; nothing of tools/, nothing else of runtime/."""
    bad = violations(modules("host"), ("emulator.tools",))
    bad += [f"{path.relative_to(ROOT)}:{line} imports {name}" for path in modules("host")
            for line, name in imports_of(path)
            if within(name, "emulator.runtime") and name != "emulator.runtime"
            and not any(within(name, allowed) for allowed in HOST_RUNTIME)]
    assert bad == []


def test_workers_import_nothing_of_tools():
    workers = sorted((ROOT / "workers").glob("*.py"))
    assert workers and violations(workers, ("emulator.tools",)) == []


def test_shared_modules_import_only_kernel_and_each_other():
    paths = [p for p in PACKAGE.rglob("*.py") if module_name(p).startswith(SHARED)]
    assert {module_name(p) for p in paths} >= set(SHARED)
    assert violations(paths, ("emulator.runtime", "emulator.tools")) == []


def test_the_guard_sees_a_lazy_import_inside_a_function():
    """The scan reads nested imports and resolves relative ones, so a lazy
    ``from ..runtime import mm`` inside a kernel function is caught."""
    probe = PACKAGE / "kernel" / "policies" / "probe.py"
    source = "def f():\n    from ...runtime import mm\n    import time\n"
    found = violations([probe], ("emulator.runtime",), source) + violations([probe], KERNEL_FORBIDDEN, source)
    assert found == ["emulator/kernel/policies/probe.py:2 imports emulator.runtime",
                     "emulator/kernel/policies/probe.py:2 imports emulator.runtime.mm",
                     "emulator/kernel/policies/probe.py:3 imports time"]
