"""``python -m benchmarks``: see :mod:`benchmarks.run`."""

import sys

from benchmarks.run import main

if __name__ == "__main__":  # dask's spawned workers re-import the main module
    sys.exit(main())
