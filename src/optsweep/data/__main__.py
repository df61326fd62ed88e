"""``python -m optsweep.data check PATH``: see optsweep.data.check."""

import sys

from optsweep.data.check import main

if __name__ == "__main__":
    sys.exit(main())
