"""The recorder thread behind a saturated loop: events kept, heartbeats, a block found.

200 tasks loop on ``sleep(0.001)`` (every ``epoll`` drops the GIL and takes it straight back,
which can starve the recorder's thread); after 4 s a 0.6 s CPU-bound block; after 8 s the
recorder's counters and the blocks in a snapshot. Run per core (pure:
``FLIGHTDECK_NO_EXTENSIONS=1``) on an otherwise idle machine:
``.venv/bin/python benchmarks/bench_starvation.py``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flightdeck import FlightRecorder


async def main(tasks: int) -> dict[str, object]:
    stop = False

    async def sleeper() -> None:
        while not stop:
            await asyncio.sleep(0.001)

    load = [asyncio.create_task(sleeper()) for _ in range(tasks)]
    await asyncio.sleep(1)
    rec = FlightRecorder(max_bytes=16 << 20, loop_blocked=0.2)
    rec.start()
    try:
        await asyncio.sleep(4)
        end = time.perf_counter() + 0.6
        while time.perf_counter() < end:  # a CPU-bound block
            pass
        await asyncio.sleep(3)
        st = rec.stats
        doc = rec.snapshot(reason="bench_starvation").to_dict()
    finally:
        rec.stop()
        stop = True
        await asyncio.gather(*load)
    return {
        "core": st["core"],
        "recorded": st["recorded"],
        "dropped": st["dropped"],
        "heartbeats": st["watchdog"]["beats"],
        "blocks_detected": st["watchdog"]["blocks"],
        "blocks_in_snapshot": [
            round(e["duration"], 3) for e in doc["loop"] if e["kind"] == "block"
        ],
        "recorder_thread_starved": st.get("recorder_thread_starved"),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200))))
