"""What the front door adds to an Anthropic Messages call (unary and ``messages.stream``):
the Messages rows of the per-API gateway bench, bench/model_overhead.py, which measures them
beside the other APIs and LiteLLM in ``make bench``. Kept as a shortcut for that one API,
without LiteLLM unless asked (``--litellm auto``).

    python bench/messages_overhead.py [--calls 300] [--litellm off|auto|PATH]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.model_overhead import main

if __name__ == "__main__":
    sys.exit(main(["--only", "messages", "--litellm", "off", *sys.argv[1:]]))
