"""``python -m mlmfast``: the ``mlmfast`` command."""

import sys

from mlmfast.cli import main

if __name__ == "__main__":
    sys.exit(main())
