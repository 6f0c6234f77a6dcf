#!/usr/bin/env python3
"""PyTorch eager timings of the DiT's element-wise ops on the same GPU and shapes as
benches/modulate_table.rs: LayerNorm(no affine)·(1+scale)+shift, x + gate·y and the
interleaved-pair RoPE (as diffusers' apply_rotary_emb_qwen, use_real=False), bf16,
1×(4096+T)×3072, T ∈ {32, 64, 128, 256, 512}.

Method: like the MLX table, K=32 ops over 4 rotating input sets per measurement (inputs
larger than L2 together), timed with CUDA events, median of 15 repetitions after warm-up.

Usage: python3 torch_modulate.py [--quick | --ncu]
"""
import sys

import torch
import torch.nn.functional as F

K, SETS = 32, 4


def time_ms(fn, reps):
    for _ in range(3):
        for i in range(K):
            fn(i)
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        for i in range(K):
            fn(i)
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) / K)
    ts.sort()
    return ts[len(ts) // 2]


def main():
    ncu = "--ncu" in sys.argv  # one shape, 3 calls of each op: for `ncu` kernel timings
    reps = 5 if "--quick" in sys.argv else 15
    dev = "cuda"
    dt = torch.bfloat16
    c = 3072
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    rows = []
    g = torch.Generator(device=dev).manual_seed(0)
    for t in ((128,) if ncu else (32, 64, 128, 256, 512)):
        l = 4096 + t
        xs = [torch.randn(1, l, c, device=dev, dtype=dt, generator=g) for _ in range(SETS)]
        ys = [torch.randn(1, l, c, device=dev, dtype=dt, generator=g) for _ in range(SETS)]
        sh = torch.randn(1, c, device=dev, dtype=dt, generator=g)
        sc = torch.randn(1, c, device=dev, dtype=dt, generator=g)

        def modulate(i):
            x = xs[i % SETS]
            return F.layer_norm(x, (c,), eps=1e-6) * (1 + sc[:, None]) + sh[:, None]

        def gated(i):
            return xs[i % SETS] + sc[:, None] * ys[i % SETS]

        qs = [x.view(1, l, 24, 128) for x in xs]  # diffusers applies RoPE on (B, L, H, D)
        theta = torch.randn(l, 64, device=dev, generator=g)
        freqs = torch.polar(torch.ones_like(theta), theta)[None, :, None, :]

        def rope(i):
            q = qs[i % SETS]
            qc = torch.view_as_complex(q.float().reshape(*q.shape[:-1], -1, 2))
            return torch.view_as_real(qc * freqs).flatten(3).type_as(q)

        if ncu:
            for i in range(3):
                modulate(i), gated(i), rope(i)
            torch.cuda.synchronize()
            print("ncu pass done")
            return
        m = time_ms(modulate, reps)
        gt = time_ms(gated, reps)
        r = time_ms(rope, reps)
        rows.append((t, l, m, gt, r))
        print(f"T={t:<4} modulate {m:.4f} gated {gt:.4f} rope {r:.4f} (ms)", flush=True)
    print("\n## PyTorch eager, bf16 (ms per op, median)")
    print("| T | L | LN·(1+scale)+shift | x + gate·y | rope (complex, as diffusers) |")
    print("|---|---|---|---|---|")
    for t, l, m, gt, r in rows:
        print(f"| {t} | {l} | {m:.4f} | {gt:.4f} | {r:.4f} |")


if __name__ == "__main__":
    main()
