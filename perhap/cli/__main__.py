"""``python -m perhap.cli``: the same as the ``perhap`` command."""

import sys

from .main import main

sys.exit(main())
