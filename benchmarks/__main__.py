"""``python -m benchmarks ARGS`` = ``budgetkit bench ARGS``."""

import sys

from benchmarks import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
