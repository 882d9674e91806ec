"""mplog's benchmark suite: one scenario, every multi-process logging setup side by side.

Run it with ``python -m benchmarks.run`` (see docs/benchmarks.md). Nothing here is
imported by mplog or by the test suite's assertions.
"""
