"""Fast, in-process unit tests: no service processes, no network."""
