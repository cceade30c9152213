"""Run every benchmark section side by side in one process: ``python -m bench [SECTION ...]``.

Each section module has ``run() -> None`` and prints its own table of
ratios; absolute times on this shared machine are noise, ratios measured in
the same run are not.
"""

from __future__ import annotations

import importlib
import sys
import time

# section name -> bench/<module>.py, in this order ("async" is a keyword: aio.py)
SECTIONS = {
    "core": "core",
    "pool": "pool",
    "cipher": "cipher",
    "replication": "replication",
    "tenants": "tenants",
    "async": "aio",
}


def main(argv: list[str]) -> int:
    wanted = argv or SECTIONS
    for name in wanted:
        if name not in SECTIONS:
            print(f"error: unknown section {name!r}; choose from {', '.join(SECTIONS)}")
            return 2
        module = importlib.import_module(f"bench.{SECTIONS[name]}")
        print(f"\n=== {name} ===", flush=True)
        started = time.perf_counter()
        module.run()
        print(f"({name}: {time.perf_counter() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
