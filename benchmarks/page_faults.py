"""Page faults and CPU per request, with and without glibc's malloc tuned.

A backend's CPU per POST moves with how many pages its heap maps anew for
each request (see "The POST and page faults" in docs/performance.md). This
starts each backend, drives requests one at a time straight to it (the
client of ``instructions.py``, no nginx), and reads the backend's minor page
faults and CPU time from ``/proc`` before and after. Each backend runs with
glibc's defaults and with both malloc thresholds fixed
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``), in turn, for
``--rounds`` rounds: a process's figure can differ from one start to the next
with nothing changed, which is why each round starts it anew.

    python benchmarks/page_faults.py                              # native, fcgisgi, floor (d)
    python benchmarks/page_faults.py -b trio-native-mypyc -s post-ka --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "backends"), str(HERE)]

import compiled_build  # noqa: E402
from instructions import (  # noqa: E402
    BACKENDS,
    BACKENDS_DIR,
    MYPYC,
    REPO,
    SCENARIOS,
    drive,
    free_port,
    wait_for_port,
)
from run import cpu_seconds, minor_faults  # noqa: E402

#: The environment variants: glibc's defaults, and both thresholds fixed.
VARIANTS: dict[str, dict[str, str]] = {
    "glibc defaults": {},
    "malloc tuned": {
        "MALLOC_MMAP_THRESHOLD_": str(1 << 20),
        "MALLOC_TRIM_THRESHOLD_": str(8 << 20),
    },
}


def measure(key: str, scenario: str, count: int, extra_env: dict[str, str]) -> tuple[float, float]:
    """(minor faults, CPU µs) per request of one fresh start of backend *key*."""
    script = BACKENDS[key][1]
    package = compiled_build.compiled_tree() if key.endswith(MYPYC) else REPO
    env = {**os.environ, **extra_env, "PYTHONPATH": f"{BACKENDS_DIR}{os.pathsep}{package}"}
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(BACKENDS_DIR / script), "--port", str(port)], env=env
    )
    try:
        wait_for_port(port, proc, 30)
        drive(port, SCENARIOS[scenario], max(count // 10, 10))  # warm up
        faults_before, cpu_before = minor_faults(proc.pid), cpu_seconds(proc.pid)
        drive(port, SCENARIOS[scenario], count)
        faults_after, cpu_after = minor_faults(proc.pid), cpu_seconds(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return (faults_after - faults_before) / count, (cpu_after - cpu_before) * 1e6 / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-b", "--backend", action="append", choices=sorted(BACKENDS))
    parser.add_argument("-s", "--scenario", default="post-ka", choices=sorted(SCENARIOS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=2000, help="requests per measurement")
    args = parser.parse_args()
    keys = args.backend or ["trio-native", "fcgisgi-asgi", "floor-trio-lazy"]
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for round_number in range(1, args.rounds + 1):
        for key in keys:
            for variant, extra_env in VARIANTS.items():
                faults, cpu = measure(key, args.scenario, args.count, extra_env)
                results.setdefault((key, variant), []).append((faults, cpu))
                print(
                    f"round {round_number}  {key:20} {variant:15} "
                    f"{faults:7.1f} faults/req  {cpu:6.0f} µs CPU/req",
                    flush=True,
                )
    print(f"\n{args.scenario}, {args.count} requests one at a time; medians, (min-max) over rounds")
    print("| backend | malloc | page faults/req | CPU µs/req |")
    print("|---|---|---|---|")
    for (key, variant), runs in results.items():
        faults = [f for f, _ in runs]
        cpus = [c for _, c in runs]
        print(
            f"| {key} | {variant} | {statistics.median(faults):.1f} "
            f"({min(faults):.1f}-{max(faults):.1f}) | {statistics.median(cpus):.0f} "
            f"({min(cpus):.0f}-{max(cpus):.0f}) |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
