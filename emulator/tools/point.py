"""One sweep point as a process of its own, on this machine or on a Dask worker.

``oomemu sweep`` runs every point the same way, with ``--jobs`` here and with
``--dask`` on a cluster: :func:`run_point`, in a thread of the caller (the
sweep's own process, or a Dask worker), starts

    python -m emulator.tools.point --sweep ID --parent PID

in a fresh session (so a process group of its own: a terminal's Ctrl-C does
not reach it), hands it the point on stdin and reads the run's result from
its stdout. The run's workers are in a group of their own (the forkserver's)
and die with the point's supervisor (PR_SET_PDEATHSIG). The point process:

* **watches its parent** through a pidfd: if the process that started it
  dies (a Dask worker killed mid-point, the sweep SIGKILLed), it sends itself
  SIGTERM, and the run tears down as it does for any terminating signal
  (runtime/signals.py): its workers, segments and semaphores go with it. A
  Dask nanny's worker is daemonic and may not have multiprocessing children;
  a subprocess it may.
* **is stopped by name**: :func:`stop_points` ends every point of one sweep
  running in this process, SIGTERM first (the run tears down), then, past the
  grace, SIGKILL to its group (its workers follow it) and ``oomemu cleanup``'s
  sweep of what a dead run left. The sweep calls it for Ctrl-C: locally, and on every Dask
  worker through ``Client.run``.

A point's answer is a dict: ``{"status": "ok", "result": {...}}``, or
``"usage"`` (the run refused, or the point process was ended by a signal from
outside the sweep: one line, exit 2), ``"stopped"``, ``"fault"`` (the process
failed or said something that is no result), each with ``message``. A point
process that died by a signal leaves its run's objects to ``cleanup()``, called
at once.
Nothing raises across Dask, so every answer comes back as it is.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import platform
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..scenario import Scenario

STOP_GRACE_S = 20.0        # a run's teardown waits for its workers; past this, SIGKILL and cleanup


@dataclass(frozen=True)
class PointSpec:
    """What one point process needs: the scenario itself (a family member exists only
    in the sweep's memory), the policy and constants, the speed, and whose it is."""
    scenario: Scenario
    policy: str
    settings: dict = field(default_factory=dict)
    speed: float = 10.0
    sweep: str = ""          # the sweep's id: stop_points(sweep) ends its points
    digest: str = ""         # code_digest() where the sweep began: a point run by other code refuses


# -- the caller's side: a thread per running point ---------------------------------------

_lock = threading.Lock()
_running: dict[str, set[subprocess.Popen]] = {}
_stopped: set[str] = set()


def run_point(spec: PointSpec) -> dict:
    """Run one point in a process of its own and wait for it; its answer (never raises)."""
    with _lock:
        if spec.sweep in _stopped:
            return {"status": "stopped", "message": "the sweep was stopped before this point began"}
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "emulator.tools.point", "--sweep", spec.sweep, "--parent", str(os.getpid())],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        except OSError as e:
            return {"status": "fault", "message": f"could not start a point process: {e}"}
        _running.setdefault(spec.sweep, set()).add(proc)
    try:
        try:
            out, err = proc.communicate(pickle.dumps(spec))
        except BaseException:
            _end(proc, 0.0)
            raise
    finally:
        with _lock:
            _running.get(spec.sweep, set()).discard(proc)
    if proc.returncode < 0:            # its supervisor died by a signal: what its run left goes now
        from ..runtime.cleanup import cleanup
        cleanup()
    return _answer(proc.returncode, out, err, spec.sweep in _stopped)


def _answer(rc: int, out: bytes, err: bytes, stopped: bool) -> dict:
    last = (err.decode(errors="replace").strip().splitlines() or [""])[-1]
    if rc == 0:
        try:
            result = json.loads(out)
        except ValueError:
            return {"status": "fault", "message": f"the point process gave no result ({last or 'no output'})"}
        return {"status": "ok", "result": result}
    if stopped:
        return {"status": "stopped", "message": "the sweep was stopped"}
    if rc == 2:
        return {"status": "usage", "message": last.removeprefix("oomemu: error: ")}
    sig = -rc if rc < 0 else rc - 128 if 128 < rc < 128 + signal.NSIG else 0
    if sig:                       # not the sweep's doing: the machine's or someone's (exit 2, not a fault)
        name = _signal_name(sig)
        why = " (the host's OOM killer? see dmesg)" if sig == signal.SIGKILL else ""
        return {"status": "usage", "message": f"its point process was ended by {name} from outside the sweep{why}"}
    return {"status": "fault", "message": f"the point process ended with exit status {rc}"
            + (f": {last}" if last else "")}


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def stop_points(sweep: str, grace_s: float = STOP_GRACE_S) -> int:
    """End every point of ``sweep`` running in this process, and start none of it again
    here: SIGTERM (each run tears down), then SIGKILL to what outlives the grace, and
    the leftovers of its dead run removed. Returns how many were running."""
    with _lock:
        _stopped.add(sweep)
        procs = list(_running.get(sweep, ()))
    for p in procs:
        _signal_group(p, signal.SIGTERM)
    killed, deadline = False, time.monotonic() + grace_s      # one grace for all, not one each in turn
    for p in procs:
        killed |= _end(p, max(0.0, deadline - time.monotonic()))
    if killed:
        from ..runtime.cleanup import cleanup
        cleanup()
    return len(procs)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)         # the point leads its group; its run's workers die with it
        except (ProcessLookupError, PermissionError):
            pass


def _end(proc: subprocess.Popen, grace_s: float) -> bool:
    """Wait ``grace_s`` for the point process, then SIGKILL its group. True if it had to."""
    try:
        proc.wait(grace_s)
        return False
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
        return True


def forget(sweep: str) -> None:
    """A sweep is over: this process keeps nothing of it (a Dask worker serves many)."""
    with _lock:
        _stopped.discard(sweep)
        _running.pop(sweep, None)


# -- what a worker is --------------------------------------------------------------------

def code_digest() -> str:
    """A digest of the code that decides outcomes (emulator/ and workers/, scenarios
    included): a sweep refuses workers whose code is not the sweep's own."""
    root = Path(__file__).resolve().parents[2]
    h = hashlib.sha256()
    for top in ("emulator", "workers"):
        for path in sorted((root / top).rglob("*")):
            if path.suffix in (".py", ".toml") and "__pycache__" not in path.parts:
                h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def worker_facts() -> dict:
    """What the sweep checks of a worker before it sends points there."""
    return {"host": socket.gethostname(), "digest": code_digest(), "python": platform.python_version(),
            "system": platform.system(), "cpus": os.cpu_count()}


# -- the point process itself ------------------------------------------------------------

def _watch_parent(parent: int) -> None:
    """SIGTERM to ourselves when ``parent`` goes (the run then tears down)."""
    try:
        fd = os.pidfd_open(parent)
    except OSError:
        fd = None
    if fd is None or os.getppid() != parent:     # gone already, or someone else's pid by now
        os.kill(os.getpid(), signal.SIGTERM)
        return

    def watch():
        select.select([fd], [], [])
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m emulator.tools.point")
    p.add_argument("--sweep", required=True)
    p.add_argument("--parent", type=int, required=True)
    a = p.parse_args(argv)
    out = os.fdopen(os.dup(1), "w")          # the result alone goes to the caller's pipe;
    os.dup2(2, 1)                            # anything else printed goes to stderr
    from .cli import _terminate
    from ..runtime.signals import TERMINATING
    for sig in TERMINATING:                  # as the command line: 128+N outside a run
        signal.signal(sig, _terminate)
    _watch_parent(a.parent)
    spec: PointSpec = pickle.load(sys.stdin.buffer)
    from ..errors import UsageError
    if spec.digest and code_digest() != spec.digest:
        print(f"oomemu: error: the oomemu code on {socket.gethostname()} changed since the sweep began "
              f"(digest {code_digest()}, the sweep's {spec.digest}): results of two codes would mix",
              file=sys.stderr)
        return 2
    from ..runtime.supervisor import run_scenario
    try:
        result = run_scenario(spec.scenario, policy=spec.policy, speed=spec.speed,
                              overrides=spec.settings).to_dict()
    except UsageError as e:
        print(f"oomemu: error: {e}", file=sys.stderr)
        return 2
    result["host"] = socket.gethostname()
    json.dump(result, out, default=str)
    out.flush()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
