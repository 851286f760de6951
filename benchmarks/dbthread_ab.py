"""Alternate runs of one benchmark command under several variants (trees, settings):
A, B, A, B, ... and write each run's JSON line, the load, and per-pair ratios.

    python -m benchmarks.dbthread_ab OUT PAIRS VARIANTS_JSON -- COMMAND...

``VARIANTS_JSON`` is a list of ``{"name": ..., "tree": ..., "env": {...}}``: each run
executes ``COMMAND`` with ``{python}`` replaced by ``<tree>/.venv/bin/python`` and
``{tree}`` by the tree, in the tree's directory, with ``PYTHONPATH=<tree>`` (its
``benchmarks``) and the variant's environment. The last line a run prints that parses
as a JSON object is its result (else the file named after ``--out``). Used for
``benchmarks/results/dbthread_ab.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RUN_LIMIT_S = 1800.0  # one run at most


def run(variant: dict[str, Any], command: list[str]) -> dict[str, Any]:
    """One run of ``command`` under ``variant``; its JSON line and the load before it."""
    tree = variant["tree"]
    env = {**os.environ, "PYTHONPATH": tree, **variant.get("env", {})}
    argv = [
        a.replace("{python}", f"{tree}/.venv/bin/python").replace("{tree}", tree) for a in command
    ]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(
        argv, cwd=tree, env=env, capture_output=True, text=True, timeout=RUN_LIMIT_S, check=False
    )
    result: dict[str, Any] = {}
    for line in done.stdout.splitlines():
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            result = parsed
    if not result and "--out" in argv:  # a benchmark that writes its results to a file
        result = json.loads(Path(argv[argv.index("--out") + 1]).read_text())
    if done.returncode != 0 or not result:
        raise SystemExit(f"{variant['name']} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return {
        "variant": variant["name"],
        "load_1min": load,
        "run_s": round(time.perf_counter() - start, 1),
        "result": result,
    }


def main() -> None:
    out, pairs, variants = Path(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
    command = sys.argv[sys.argv.index("--") + 1 :]
    runs: list[dict[str, Any]] = []
    for pair in range(pairs):
        for variant in variants:
            runs.append({"pair": pair, **run(variant, command)})
            print(json.dumps(runs[-1]), flush=True)
            out.write_text(
                json.dumps({"command": command, "variants": variants, "runs": runs}, indent=1)
            )


if __name__ == "__main__":
    main()
