"""Support for the tests and the benchmarks (not used by the library itself)."""
