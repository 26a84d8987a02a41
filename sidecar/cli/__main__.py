"""``python -m sidecar.cli``: how the supervisor starts its workers."""

import sys

from sidecar.cli import main

sys.exit(main())
