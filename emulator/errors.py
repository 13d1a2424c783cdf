"""The two kinds of failure a user sees: their mistake (exit 2) or ours (exit 1)."""


class UsageError(Exception):
    """Bad input from the user: one line, exit code 2, no traceback."""


class ScenarioError(UsageError):
    """A scenario file that cannot be run; the message names the file and the key."""

    def __init__(self, source: str, key: str, message: str):
        self.source, self.key = source, key
        super().__init__(f"{source}: {key}: {message}" if key else f"{source}: {message}")


class EnvironmentProblem(UsageError):
    """The machine cannot give a run what it needs (room in /dev/shm, memory,
    open files, processes, permissions): one line, exit code 2."""
