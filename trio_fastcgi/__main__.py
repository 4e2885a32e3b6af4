"""``python -m trio_fastcgi MODULE:APP``: the ``trio-fastcgi`` command."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
