#!/usr/bin/env python3
"""A user-space OOM killer of your own, pointed at an oomemu run through its door.

It uses nothing of oomemu but the door's files (docs/door.md) and the two
commands `oomemu kill` and `oomemu mrelease`, as a daemon in any language
would use /proc, kill(2) and process_mrelease(2). Standard library only.

    python3 examples/door_daemon.py DOOR [--min-available-percent 10] [--once]

Every --interval-ms it reads DOOR/meminfo. When MemAvailable falls below
--min-available-percent of MemTotal, it picks the process with the highest
oom_score (DOOR/PID/oom_score; 0 means the OOM killer never picks it), kills
it, calls process_mrelease on it, waits (up to --wait-s) until its
directory DOOR/PID is gone, as earlyoom waits for its victim, and prints
what it saw before and after. It ends when the run's door goes away (the run
is over), or after its first kill with --once.
"""

import argparse
import os
import shlex
import subprocess
import sys
import time


def read(path):
    with open(path) as f:
        return f.read()


def meminfo(door):
    """DOOR/meminfo as {field: kB}."""
    out = {}
    for line in read(os.path.join(door, "meminfo")).splitlines():
        name, _, rest = line.partition(":")
        out[name] = int(rest.split()[0])
    return out


def processes(door):
    """(oom_score, pid, name, VmRSS kB) of each process in the door, read as /proc is read:
    one that goes away between two reads is skipped."""
    out = []
    for entry in os.listdir(door):
        if not entry.isdigit():
            continue
        try:
            score = int(read(os.path.join(door, entry, "oom_score")))
            status = dict(line.split(":\t", 1) for line in read(os.path.join(door, entry, "status")).splitlines())
        except (FileNotFoundError, ValueError):
            continue
        out.append((score, int(entry), status["Name"], int(status["VmRSS"].split()[0])))
    return out


def oomemu(cmd, *args):
    """Run an oomemu command; its output line, and whether it succeeded."""
    p = subprocess.run(cmd + list(args), capture_output=True, text=True)
    return (p.stdout or p.stderr).strip(), p.returncode == 0


def wait_gone(path, timeout, interval):
    """Until ``path`` is gone (True), or ``timeout`` seconds have passed (False)."""
    end = time.monotonic() + timeout
    while os.path.exists(path):
        if time.monotonic() >= end:
            return False
        time.sleep(interval)
    return True


def say(line):
    print(f"door_daemon: {line}", flush=True)


def act(door, run, args, before):
    """Kill the process with the highest oom_score; True if one was killed."""
    candidates = [p for p in processes(door) if p[0] > 0]
    if not candidates:
        say("nothing to kill (every oom_score is 0)")
        return False
    score, pid, name, rss = max(candidates)
    say(f"MemAvailable {before['MemAvailable']} kB of {before['MemTotal']} kB is below "
        f"{args.min_available_percent:g}%: killing {name} (pid {pid}, oom_score {score}, VmRSS {rss} kB)")
    line, ok = oomemu(args.oomemu, "kill", run, str(pid))
    say(line)
    if not ok:
        return False
    line, _ = oomemu(args.oomemu, "mrelease", run, str(pid))
    say(line)                       # ESRCH: it exited already, as it may well have
    if wait_gone(os.path.join(door, str(pid)), args.wait_s, args.interval_ms / 1000):
        after = meminfo(door)
        say(f"{name} (pid {pid}) is gone: MemAvailable {before['MemAvailable']} kB -> {after['MemAvailable']} kB "
            f"({after['MemAvailable'] - before['MemAvailable']:+d} kB), MemFree {before['MemFree']} kB -> "
            f"{after['MemFree']} kB ({after['MemFree'] - before['MemFree']:+d} kB)")
    else:
        say(f"{name} (pid {pid}) is still there after {args.wait_s:g}s")
    return True


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("door", help="the run's door directory (its banner, or 'oomemu ps RUN', says where)")
    p.add_argument("--min-available-percent", type=float, default=10.0)
    p.add_argument("--interval-ms", type=float, default=100.0)
    p.add_argument("--wait-s", type=float, default=10.0, help="how long to wait for a victim to go")
    p.add_argument("--once", action="store_true", help="stop after the first kill")
    p.add_argument("--oomemu", type=shlex.split, default=["oomemu"], help="how to call oomemu")
    args = p.parse_args()
    try:
        run = dict(line.split(": ", 1) for line in read(os.path.join(args.door, "run")).splitlines())["run"]
    except (OSError, KeyError, ValueError) as e:
        sys.exit(f"door_daemon: {args.door} is not a run's door ({e})")
    say(f"watching run {run} through {args.door}")
    while True:
        try:
            m = meminfo(args.door)
            if m["MemAvailable"] * 100 < args.min_available_percent * m["MemTotal"]:
                if act(args.door, run, args, m) and args.once:
                    return 0
        except FileNotFoundError:
            if not os.path.isdir(args.door):
                say(f"the door is gone: run {run} is over")
                return 0
        time.sleep(args.interval_ms / 1000)


if __name__ == "__main__":
    sys.exit(main())
