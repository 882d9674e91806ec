"""``python -m mplog``: the same as the ``mplog`` command."""

import sys

from mplog.cli import main

sys.exit(main())
