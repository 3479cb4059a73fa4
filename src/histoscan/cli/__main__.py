"""`python -m histoscan.cli`: the same as the `histoscan` console script."""

import sys

from histoscan.cli import main

sys.exit(main())
