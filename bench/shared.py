"""What every part of the benchmark shares: where things are, the questions, logging.

Importing it also puts this checkout's ``src`` and ``tests`` on ``sys.path``, so the bench runs
from a checkout without an install and uses the tests' GGUF generator.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT / "tests", ROOT / "src"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

CACHE = ROOT / ".cache" / "bench"

MTMD_CLI = ROOT / ".cache" / "bench-ref" / "bin" / "llama-mtmd-cli"

QUESTION = "Describe this image."

EXTRA_QUESTION = "What colours are in it?"
# The extra-question ratio rows: with the run's answer length (keys extra_s / fresh_s), and
# with one-token answers (extra_1_s / fresh_1_s), which take the answer's own decoding out.
EXTRA_ROWS = (("extra / fresh", ""), ("extra / fresh, 1-token answers", "_1"))

Q4_NAME = "moondream2-text-model-Q4_K_M.gguf"


def log(msg: str) -> None:
    sys.stderr.write(f"bench: {msg}\n")
    sys.stderr.flush()
