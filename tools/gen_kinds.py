"""Write ``flightdeck/core/_kinds.h`` from the event table (``flightdeck/core/events.py``).

Run after changing ``SPECS``, then rebuild the extensions. ``--check`` exits 1 when the
checked-in header differs from the table (``tests/core/test_events.py`` checks it too).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flightdeck.core import events  # noqa: E402


def main() -> int:
    path = ROOT / events.HEADER_PATH
    text = events.c_header()
    if sys.argv[1:] == ["--check"]:
        if path.read_text() != text:
            print(f"{events.HEADER_PATH} differs from the table: run python tools/gen_kinds.py")
            return 1
        return 0
    path.write_text(text)
    print(f"wrote {events.HEADER_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
