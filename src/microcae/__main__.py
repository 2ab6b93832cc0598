"""``python -m microcae``: the command line."""

import sys

from microcae.cli import main

sys.exit(main())
