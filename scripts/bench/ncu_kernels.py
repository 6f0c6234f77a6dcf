#!/usr/bin/env python3
"""Per-kernel summary of an Nsight Compute CSV log (`ncu --metrics gpu__time_duration.sum
--csv --print-units base --log-file F ...`): launches, median µs and name, largest total
first; kernels totalling under 50 µs are left out.

Usage: ncu_kernels.py LOG.csv
"""
import csv
import io
import statistics
import sys


def main() -> int:
    with open(sys.argv[1], errors="replace") as fh:
        rows = [ln for ln in fh if ln.startswith('"')]
    by: dict[str, list[float]] = {}
    for r in csv.DictReader(io.StringIO("".join(rows))):
        if r.get("Metric Name") == "gpu__time_duration.sum":
            us = float(r["Metric Value"].replace(",", "")) / 1e3
            by.setdefault(r["Kernel Name"], []).append(us)
    for name, ts in sorted(by.items(), key=lambda kv: -sum(kv[1])):
        if sum(ts) > 50:
            print(f"{len(ts):5d} {statistics.median(ts):9.2f} us  {name[:150]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
