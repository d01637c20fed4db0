"""`python -m middleware` is the `labgate` command."""

import sys

from middleware.cli import main

sys.exit(main())
