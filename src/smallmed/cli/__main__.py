"""``python -m smallmed.cli``: the same as the ``smallmed`` command."""

import sys

from . import main

sys.exit(main())
