"""Daemon models for tests of the user-space runtime (a module of their own, free of
pytest, so that a run's user-space process can import them by name: see
runtime/userspace.py's --daemon-class).

Each does one scripted thing at a stated emulated time, so a test can hold the
runtime to what it did."""

from __future__ import annotations

from emulator.userspace.base import Daemon, Decision, Kill, Log


class Scripted(Daemon):
    """At ``at`` (s): send ``signal`` to every task named in ``targets`` (comma-separated
    names, in the class attribute: --set takes numbers), process_mrelease each if ``mrelease``;
    then log, every ``interval``, each victim's state until all are gone."""
    name = "scripted"
    summary = "kills the tasks a test names, at a time it names"
    DEFAULTS = {"at": 0.15, "mrelease": 0, "interval": 0.1}
    targets = "nfs-client"
    signal = "SIGKILL"

    def start(self, now):
        self.done = False
        return Decision((Log("scripted: started"),), next_at=self.consts["at"])

    def poll(self, snap, results):
        acts = [Log(f"scripted: kill {pid}: {err or 'ok'}") for pid, err in sorted(results.kill.items())]
        if snap.meminfo.SwapTotal:
            acts.append(Log(f"scripted: SwapFree {snap.meminfo.SwapFree} kB of {snap.meminfo.SwapTotal} kB"))
        acts += [Log(f"scripted: mrelease {pid}: {err or 'ok'}") for pid, err in sorted(results.mrelease.items())]
        if not self.done:
            self.done = True
            for name in self.targets.split(","):
                t = next(t for t in snap.tasks if t.comm == name)
                acts.append(Kill(t.pid, self.signal, mrelease=bool(self.consts["mrelease"]), reason="test"))
        return Decision(tuple(acts), next_at=snap.now + self.consts["interval"])


class TermAll(Scripted):
    """SIGTERM to three tasks that answer it three ways."""
    name = "term-all"
    targets = "default,ignorer,handler"
    signal = "SIGTERM"
    DEFAULTS = {"at": 0.1, "mrelease": 0, "interval": 1.0}


class TermApp(Scripted):
    """SIGTERM to the app, whose handler takes 3 s."""
    name = "term-app"
    targets = "app"
    signal = "SIGTERM"
    DEFAULTS = {"at": 0.1, "mrelease": 0, "interval": 1.0}


class KillVictim(Scripted):
    """SIGKILL and process_mrelease to the victim, part of whose memory is on swap."""
    name = "kill-victim"
    targets = "victim"
    DEFAULTS = {"at": 0.5, "mrelease": 1, "interval": 0.1}


class Broken(Daemon):
    """Fails at its first look (a daemon model with a bug)."""
    name = "broken"
    summary = "raises"

    def poll(self, snap, results):
        raise ZeroDivisionError("the model divided by zero")
