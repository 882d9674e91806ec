"""``python -m benchmarks.collector``: see :mod:`benchmarks.collector.run`."""

import sys

from benchmarks.collector.run import main

if __name__ == "__main__":
    sys.exit(main())
