"""Benchmarks of Interlock, run by hand or through `make bench-*`, never by the test suite.

bench.harness holds what every benchmark shares (free ports, service processes,
/proc readings, percentiles, markdown tables, Redis clean-up); each benchmark
is one module run with `python -m bench.<name>`. See bench/README.md.
"""
