"""`python -m flows.cli ...`: the `bertflow` command."""

import sys

from flows.cli import main

sys.exit(main())
