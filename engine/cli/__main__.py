"""`python -m engine.cli`: the same as `dermae`."""

import sys

from engine.cli import main

sys.exit(main())
