"""Host mode: a scenario run on the machine's own kernel, in a temporary memory cgroup."""
