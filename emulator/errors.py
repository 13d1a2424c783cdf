"""The two kinds of failure a user sees: their mistake (exit 2) or ours (exit 1)."""

import errno

#: errno values that say the machine cannot give a run what it needs (room in
#: /dev/shm, memory, files, processes, permissions), not that oomemu is wrong:
#: exit 2, in the supervisor's set-up and in a worker alike
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.EAGAIN,
                                errno.EDQUOT, errno.EFBIG, errno.EPERM, errno.EACCES})


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
