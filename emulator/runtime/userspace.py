"""The supervisor's handle on a run's user-space process (``workers/userspace.py``).

It is started once the run's objects exist (it opens them by name), says
``ready`` on its stdout once it has opened them and holds the run clock at
time 0 in its own slot (zone.daemon_slot), and waits for a line on its go
pipe: time 0. Closing the go pipe ends it; :meth:`UserSpaceProcess.stop`
then waits for it, and kills it if it does not go. Its stderr is its last
words: one line saying why, if it failed.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

from .clock import release_slot
from .forkserver import REPO_ROOT

STOP_WAIT_S = 2.0


class UserSpaceFailed(RuntimeError):
    """The user-space process died or did not start: its last words."""


class UserSpaceProcess:
    def __init__(self, run_id: str, policy, overrides: dict | None, door: str | None):
        """``policy``: the run's (a ReaperPolicy instance, its ``daemon`` perhaps set)."""
        go_r, self._go_w = os.pipe()
        cmd = [sys.executable, "-m", "workers.userspace", "--run", run_id, "--parent", str(os.getpid()),
               "--go", str(go_r), "--policy", policy.name, "--set", json.dumps(overrides or {})]
        if policy.daemon is not None:        # a daemon registered by a user's module is found there
            cls = type(policy.daemon)
            cmd += ["--daemon-class", f"{cls.__module__}:{cls.__qualname__}"]
        if door:
            cmd += ["--door", door]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
        try:
            self.proc = subprocess.Popen(cmd, pass_fds=(go_r,), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, env=env, process_group=0)
        finally:
            os.close(go_r)
        self.pidfd = os.pidfd_open(self.proc.pid)
        self.what = f"the user-space daemon {policy.daemon.name}" if policy.daemon else "the run's door"

    def wait_ready(self, timeout: float) -> None:
        """Until it says ``ready`` (UserSpaceFailed if it dies first, or takes ``timeout``)."""
        end = time.monotonic() + timeout
        out = self.proc.stdout.fileno()
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise UserSpaceFailed(f"{self.what} (pid {self.proc.pid}) did not start within {timeout:g}s")
            ready, _, _ = select.select([out, self.pidfd], [], [], left)
            if out in ready:
                line = os.read(out, 64)
                if line.startswith(b"ready"):
                    return
            if self.pidfd in ready or out in ready:
                raise UserSpaceFailed(self.last_words())

    def go(self) -> None:
        """Time 0 has come."""
        os.write(self._go_w, b"go\n")

    def last_words(self) -> str:
        """Why it died, in one line (its stderr's last line, or its exit status)."""
        code = self.proc.wait(STOP_WAIT_S)
        err = self.proc.stderr.read().decode(errors="replace").strip().splitlines()
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        return f"{self.what} (pid {self.proc.pid}) died ({how})" + (f": {err[-1]}" if err else "")

    def stop(self, zone=None) -> None:
        """End it (EOF on its go pipe), wait for it, kill it if it lingers; give back its
        clock slot (``zone``) in case it died holding the clock."""
        if self._go_w >= 0:
            os.close(self._go_w)
            self._go_w = -1
        try:
            self.proc.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        if zone is not None:
            release_slot(zone, zone.daemon_slot)
