"""``python -m bulkpipe.cli``: the same as the ``bulkpipe`` console script."""

from __future__ import annotations

import sys

from . import main

sys.exit(main())
