"""``python -m perhap``: the same as the ``perhap`` command."""

import sys

from .cli.main import main

sys.exit(main())
