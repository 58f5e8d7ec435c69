"""The test suite's shared builders, zoos and plain-framework ground truth (one package)."""
