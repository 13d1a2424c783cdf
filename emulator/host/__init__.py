"""Host runs: a scenario on the machine's own kernel, in a temporary memory cgroup."""
