#!/usr/bin/env python3
"""Summarises `ncu --csv --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum`
output: mean duration (µs) and DRAM bytes per kernel name, in launch order of first use.
Usage: python3 ncu_summary.py ncu.csv"""
import csv
import sys
from collections import OrderedDict


def main():
    lines = open(sys.argv[1]).read().splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith('"ID"'))
    rows = list(csv.DictReader(lines[start:]))
    agg = OrderedDict()
    for r in rows:
        name = r["Kernel Name"][:90]
        key = (name, r.get("Grid Size", ""), r.get("Block Size", ""))
        m = agg.setdefault(key, {})
        val = float(r["Metric Value"].replace(",", ""))
        unit = r["Metric Unit"]
        if unit in ("nsecond", "ns"):
            val /= 1e3
        elif unit in ("usecond", "us"):
            pass
        elif unit in ("msecond", "ms"):
            val *= 1e3
        elif unit == "Kbyte":
            val *= 1e3
        elif unit == "Mbyte":
            val *= 1e6
        elif unit == "Gbyte":
            val *= 1e9
        m.setdefault(r["Metric Name"], []).append(val)
    print(f"{'kernel':<90} {'grid':>16} {'block':>12} {'n':>3} {'us':>8} {'MB rd':>7} {'MB wr':>7} {'GB/s':>6}")
    for (name, grid, block), m in agg.items():
        t = m.get("gpu__time_duration.sum", [0])
        rd = m.get("dram__bytes_read.sum", [0])
        wr = m.get("dram__bytes_write.sum", [0])
        tm = sum(t) / len(t)
        rdm, wrm = sum(rd) / len(rd), sum(wr) / len(wr)
        bw = (rdm + wrm) / (tm * 1e-6) / 1e9 if tm else 0
        print(f"{name:<90} {grid:>16} {block:>12} {len(t):>3} {tm:8.2f} {rdm/1e6:7.1f} {wrm/1e6:7.1f} {bw:6.0f}")


if __name__ == "__main__":
    main()
