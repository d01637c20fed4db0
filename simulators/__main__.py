"""`python -m simulators analyser|lis ...`: see `simulators.cli`."""

from __future__ import annotations

import sys

from simulators.cli import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
