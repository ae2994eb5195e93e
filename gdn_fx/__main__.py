"""``python -m gdn_fx``: the command line (``gdn_fx.cli``)."""

import sys

from gdn_fx.cli import main

if __name__ == "__main__":
    sys.exit(main())
