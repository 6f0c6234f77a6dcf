#!/usr/bin/env python3
"""GPU-time breakdown of one DiT step from Nsight Compute logs of `dit_step`.

Input: CSV logs written by
    ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
        --log-file ncu_L1.csv dit_step --layers 1 --sizes 1024 --warmup 1 --iters 2 \
        --no-batched --no-reference --profile 0
and the same with --layers 2 (ncu_L2.csv). ncu serialises kernels, so the sums are pure
kernel time (no launch gaps). The last step of each log is found as the longest tail that
repeats exactly (the last two steps launch the same kernels). Per block = L2 − L1; a
60-layer step = L1 + 59 · block.

Usage: ncu_summary.py ncu_L1.csv ncu_L2.csv [--layers 60] [--wall-ms 384.4]
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections import defaultdict


def read(path: str) -> list[tuple[str, float]]:
    """(kernel name, duration ms) in launch order."""
    with open(path, errors="replace") as fh:
        lines = [ln for ln in fh if ln.startswith('"')]
    rows: dict[int, tuple[str, float]] = {}
    for r in csv.DictReader(io.StringIO("".join(lines))):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        ns = float(r["Metric Value"].replace(",", ""))
        unit = r.get("Metric Unit", "nsecond")
        scale = {"nsecond": 1e-6, "usecond": 1e-3, "msecond": 1.0, "second": 1e3}.get(unit, 1e-6)
        rows[int(r["ID"])] = (r["Kernel Name"], ns * scale)
    return [rows[i] for i in sorted(rows)]


def last_step(ks: list[tuple[str, float]]) -> list[tuple[str, float]]:
    names = [k for k, _ in ks]
    for p in range(len(names) // 2, 9, -1):
        if names[-p:] == names[-2 * p : -p]:
            return ks[-p:]
    print(f"warning: no repeating tail found in {len(ks)} kernels; using the last third", file=sys.stderr)
    return ks[-len(ks) // 3 :]


def classify(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ("sdpa", "attention", "flash", "fmha", "attn")):
        return "attention"
    if any(k in n for k in ("gemm", "nvjet", "xmma", "cutlass", "gemv", "matmul", "cublas")):
        return "GEMM"
    if "custom_kernel" in n:
        return "fastops fused (LN-mod, RoPE, gated res.)"
    if any(k in n for k in ("rms", "layer_norm", "layernorm")):
        return "norms (MLX fast)"
    if any(k in n for k in ("copy", "concat", "gather", "scatter", "slice")):
        return "copies / concat"
    return "other elementwise (MLX unary/binary/reduce)"


def summary(ks: list[tuple[str, float]]) -> dict[str, tuple[float, int]]:
    out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for name, ms in ks:
        c = out[classify(name)]
        c[0] += ms
        c[1] += 1
    return {k: (v[0], int(v[1])) for k, v in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("l1")
    ap.add_argument("l2")
    ap.add_argument("--layers", type=int, default=60)
    ap.add_argument("--wall-ms", type=float, default=None, help="measured wall ms per step (60 layers)")
    a = ap.parse_args()
    s1, s2 = last_step(read(a.l1)), last_step(read(a.l2))
    c1, c2 = summary(s1), summary(s2)
    cats = sorted(set(c1) | set(c2), key=lambda c: -(c2.get(c, (0, 0))[0]))
    print(f"kernels per step: {len(s1)} (1 layer), {len(s2)} (2 layers) → "
          f"{len(s1) + (a.layers - 1) * (len(s2) - len(s1))} at {a.layers} layers")
    full: dict[str, tuple[float, int]] = {}
    for c in cats:
        t1, n1 = c1.get(c, (0.0, 0))
        t2, n2 = c2.get(c, (0.0, 0))
        full[c] = (t1 + (a.layers - 1) * (t2 - t1), n1 + (a.layers - 1) * (n2 - n1))
    total = sum(t for t, _ in full.values())
    print(f"\n## GPU kernel time of one true-CFG step at {a.layers} layers (ncu, extrapolated: L1 + {a.layers - 1}·(L2 − L1))")
    print("| class | ms/step | kernels/step | % of kernel time | per block, ms |")
    print("|---|---|---|---|---|")
    for c in cats:
        t, n = full[c]
        blk = c2.get(c, (0.0, 0))[0] - c1.get(c, (0.0, 0))[0]
        print(f"| {c} | {t:.1f} | {n} | {100 * t / total:.1f} | {blk / 2:.3f} |")
    print(f"| **total kernel time** | **{total:.1f}** | {sum(n for _, n in full.values())} | 100 | |")
    if a.wall_ms:
        print(f"\nmeasured wall {a.wall_ms:.1f} ms/step → GPU busy {100 * total / a.wall_ms:.0f}%, "
              f"idle (launch gaps, host dispatch, graph build) {a.wall_ms - total:.1f} ms")
    # Per-kernel detail of one block (the L2 − L1 difference, per forward).
    agg1: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    agg2: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for name, ms in s1:
        agg1[name][0] += ms
        agg1[name][1] += 1
    for name, ms in s2:
        agg2[name][0] += ms
        agg2[name][1] += 1
    print("\n## one block, one forward (L2 − L1, halved for the two CFG forwards): kernels by time")
    print("| kernel | launches | ms | class |")
    print("|---|---|---|---|")
    diff = []
    for name in agg2:
        dt = (agg2[name][0] - agg1.get(name, [0.0, 0])[0]) / 2
        dn = (agg2[name][1] - agg1.get(name, [0.0, 0])[1]) / 2
        if dn > 0 or dt > 1e-4:
            diff.append((dt, dn, name))
    for dt, dn, name in sorted(diff, reverse=True)[:30]:
        print(f"| `{name[:90]}` | {dn:g} | {dt:.4f} | {classify(name)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
