#!/usr/bin/env python3
"""One true-CFG denoising step of diffusers' QwenImageTransformer2DModel on a CUDA GPU.

The PyTorch/diffusers side of the side-by-side in docs/speed.md (the Rust side is
`benches/dit_step.rs`). Full-size model (60 layers, 24 heads x 128, joint dim 3584) with
random bf16 weights (PyTorch's default init, made directly on the GPU in bf16), called as
`QwenImagePipeline` calls it at batch 1: two forwards (cond + uncond, TXT text tokens each,
no text mask), the true-CFG combine with its norm rescale and the Euler update, timed per
step with a host clock around the step and a device synchronise (as the Rust bench times
`eval`). Modes: eager; CFG batched as one B=2 forward; and, with --compile, diffusers'
`compile_repeated_blocks` (regional torch.compile of the 60 identical blocks).

Also (--profile SIZE): a torch.profiler breakdown of one eager step by kernel class (GEMM,
attention, elementwise/other) and the isolated cuBLAS GEMMs / SDPA at the block's shapes,
to compare with the Rust bench's per-piece profile.

Usage (GPU machine, diffusers wheel on PYTHONPATH):
    python3 scripts/bench/diffusers_step.py --sizes 512,1024,1328 --compile --profile 1024 \
        --json $OUT/diffusers.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

VAE_SCALE = 8
PATCH = 2
GIB = float(1 << 30)
DEV = "cuda"  # --device cpu: a smoke test of this script without a GPU (use --layers 1)


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def forward_flops(cfg: dict, batch: int, n: int, t: int) -> float:
    """FLOPs of one forward (same count as qwen_image_benches::forward_flops)."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    f = 4 * d
    layers = cfg["num_layers"]
    s = n + t
    per_token = 2 * (4 * d * d + 2 * d * f)
    attn = 4 * s * s * d
    modulation = 2 * (2 * d * 6 * d) * layers + 2 * d * 2 * d + 2 * (256 * d + d * d)
    io = 2 * n * cfg["in_channels"] * d + 2 * t * cfg["joint_attention_dim"] * d + 2 * n * d * PATCH * PATCH * cfg["out_channels"]
    return float(batch * (layers * (n + t) * per_token + layers * attn + modulation + io))


def build_model(cfg: dict):
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(DEV):
            model = QwenImageTransformer2DModel(**cfg)
    finally:
        torch.set_default_dtype(prev)
    model.eval().requires_grad_(False)
    dtypes = {p.dtype for p in model.parameters()}
    assert dtypes == {torch.bfloat16}, dtypes
    return model


class Inputs:
    def __init__(self, size: int, txt: int, cfg: dict, gen: torch.Generator, pictures: int = 0):
        self.h = self.w = size // (VAE_SCALE * PATCH)
        self.n = self.h * self.w
        dev, bf = DEV, torch.bfloat16
        self.x = torch.randn(1, self.n, cfg["in_channels"], generator=gen, device=dev, dtype=bf)
        # An edit step (QwenImageEditPipeline): reference pictures' tokens after the latents.
        self.pictures = pictures
        self.ref = (torch.randn(1, pictures * self.n, cfg["in_channels"], generator=gen, device=dev, dtype=bf)
                    if pictures else None)
        self.ctx_c = torch.randn(1, txt, cfg["joint_attention_dim"], generator=gen, device=dev, dtype=bf)
        self.ctx_u = torch.randn(1, txt, cfg["joint_attention_dim"], generator=gen, device=dev, dtype=bf)
        self.t = torch.full((1,), 0.6, device=dev, dtype=torch.float32)
        self.x2 = torch.cat([self.x, self.x])
        self.ctx2 = torch.cat([self.ctx_c, self.ctx_u])
        self.t2 = torch.full((2,), 0.6, device=dev, dtype=torch.float32)


def step(model, inp: Inputs, batched: bool, scale: float = 4.0) -> torch.Tensor:
    shapes = [(1, inp.h, inp.w)] * (1 + inp.pictures)
    if inp.pictures:
        # As QwenImageEditPipeline: cat([latents, image_latents], dim=1), [:, :latents.size(1)].
        x = torch.cat([inp.x, inp.ref], dim=1)
        n = inp.x.size(1)
        cond = model(hidden_states=x, encoder_hidden_states=inp.ctx_c, encoder_hidden_states_mask=None,
                     timestep=inp.t, img_shapes=[shapes], return_dict=False)[0][:, :n]
        uncond = model(hidden_states=x, encoder_hidden_states=inp.ctx_u, encoder_hidden_states_mask=None,
                       timestep=inp.t, img_shapes=[shapes], return_dict=False)[0][:, :n]
    elif batched:
        v = model(hidden_states=inp.x2, encoder_hidden_states=inp.ctx2, encoder_hidden_states_mask=None,
                  timestep=inp.t2, img_shapes=shapes * 2, return_dict=False)[0]
        cond, uncond = v.chunk(2)
    else:
        shapes = [(1, inp.h, inp.w)]
        cond = model(hidden_states=inp.x, encoder_hidden_states=inp.ctx_c, encoder_hidden_states_mask=None,
                     timestep=inp.t, img_shapes=shapes, return_dict=False)[0]
        uncond = model(hidden_states=inp.x, encoder_hidden_states=inp.ctx_u, encoder_hidden_states_mask=None,
                       timestep=inp.t, img_shapes=shapes, return_dict=False)[0]
    assert cond.dtype == torch.bfloat16, cond.dtype
    comb = uncond + scale * (cond - uncond)
    pred = comb * (torch.norm(cond, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))
    return inp.x + (-0.02) * pred


def measure(model, inp: Inputs, batched: bool, warmup: int, iters: int):
    for _ in range(warmup):
        step(model, inp, batched)
    sync()
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        out = step(model, inp, batched)
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    assert out.dtype == torch.bfloat16
    return times, (torch.cuda.max_memory_allocated() if DEV == "cuda" else 0)


def classify(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ("flash", "fmha", "attention", "sdpa", "cudnn_generated_fort_native_sdpa")):
        return "attention"
    if any(k in n for k in ("gemm", "xmma", "cutlass", "nvjet", "matmul", "splitk", "cublas")):
        return "GEMM"
    return "elementwise/other"


def profile_step(model, inp: Inputs, label: str) -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    step(model, inp, False)
    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        step(model, inp, False)
        sync()
        wall = (time.perf_counter() - t0) * 1e3
    per_class: dict[str, float] = {}
    per_kernel: dict[str, list[float]] = {}
    for ev in prof.events():
        if ev.device_type != torch.autograd.DeviceType.CUDA:
            continue
        us = ev.device_time if hasattr(ev, "device_time") else ev.cuda_time
        c = classify(ev.name)
        per_class[c] = per_class.get(c, 0.0) + us / 1e3
        per_kernel.setdefault(ev.name, []).append(us / 1e3)
    total = sum(per_class.values())
    lines = [f"\n## diffusers {label}: one step at {inp.h * 16}² under torch.profiler (wall {wall:.1f} ms with profiler on)"]
    for c, ms in sorted(per_class.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {c:<20} {ms:9.2f} ms  {100 * ms / total:5.1f}% of kernel time")
    lines.append(f"  {'kernel time total':<20} {total:9.2f} ms; wall − kernel time = {wall - total:.2f} ms (launch gaps / host)")
    lines.append("  top kernels (total ms, count, class):")
    top = sorted(per_kernel.items(), key=lambda kv: -sum(kv[1]))[:14]
    for name, v in top:
        lines.append(f"    {sum(v):8.2f} ms  ×{len(v):<5} {classify(name):<10} {name[:110]}")
    return lines


def bench_ms(fn, reps: int = 20) -> float:
    """Median ms of fn() with CUDA events, after warm-up."""
    for _ in range(3):
        fn()
    sync()
    ts = []
    for _ in range(reps):
        if DEV != "cuda":
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
            continue
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def pieces(size: int, txt: int, cfg: dict) -> list[str]:
    """cuBLAS GEMMs and SDPA at one block's shapes (PyTorch), to compare with the MLX profile."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    f = 4 * d
    heads, hd = cfg["num_attention_heads"], cfg["attention_head_dim"]
    n = (size // (VAE_SCALE * PATCH)) ** 2
    s = n + txt
    bf, dev = torch.bfloat16, DEV
    r = lambda *shape: torch.randn(*shape, device=dev, dtype=bf)  # noqa: E731
    lines = [f"\n## PyTorch {torch.__version__} pieces at {size}² ({n} image + {txt} text tokens), CUDA events, median of 20"]
    lines.append(f"{'piece':<44} {'ms':>9} {'TFLOP/s':>8}")
    rows = []
    for label, m in (("img", n), ("txt", txt)):
        x = r(1, m, d)
        ws = [(r(d, d), r(d)) for _ in range(4)]
        ms = bench_ms(lambda: [F.linear(x, w, b) for w, b in ws]) / 4
        rows.append((f"{label} Q/K/V/out proj ({m}×{d}·{d}×{d})", ms, 2.0 * m * d * d))
        w1, b1, w2, b2 = r(f, d), r(f), r(d, f), r(d)
        ms = bench_ms(lambda: F.linear(F.linear(x, w1, b1), w2, b2))
        rows.append((f"{label} FFN up+down ({m}×{d}→{f}→{d})", ms, 4.0 * m * d * f))
    x1 = r(1, d)
    wm = [(r(6 * d, d), r(6 * d)) for _ in range(2)]
    ms = bench_ms(lambda: [F.linear(x1, w, b) for w, b in wm]) / 2
    rows.append((f"img_mod/txt_mod (1×{d}·{d}×{6 * d})", ms, 2.0 * 6 * d * d))
    q, k, v = r(1, heads, s, hd), r(1, heads, s, hd), r(1, heads, s, hd)
    ms = bench_ms(lambda: F.scaled_dot_product_attention(q, k, v))
    rows.append((f"SDPA (1×{heads}×{s}×{hd})", ms, 4.0 * s * s * d))
    big = 8192 if DEV == "cuda" else 512
    a, b = r(big, big), r(big, big)
    ms = bench_ms(lambda: a @ b, reps=10)
    rows.append((f"matmul {big}³ (ceiling)", ms, 2.0 * big**3))
    for name, ms, fl in rows:
        lines.append(f"{name:<44} {ms:9.4f} {fl / (ms * 1e-3) / 1e12:8.0f}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="512,1024,1328")
    ap.add_argument("--txt", type=int, default=32)
    ap.add_argument("--edit-pictures", type=int, default=0,
                    help="an edit step: this many same-size reference pictures after the latents")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--layers", type=int, default=60)
    ap.add_argument("--no-batched", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also time compile_repeated_blocks")
    ap.add_argument("--compile-sizes", default=None, help="sizes for the compiled mode (default: --sizes)")
    ap.add_argument("--eager-skip", action="store_true", help="time only the compiled mode")
    ap.add_argument("--profile", type=int, default=0, help="profile one eager step at this size (0: off)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke test")
    a = ap.parse_args()
    global DEV
    DEV = a.device
    sizes = [int(s) for s in a.sizes.split(",")]
    csizes = [int(s) for s in a.compile_sizes.split(",")] if a.compile_sizes else sizes

    import diffusers

    cfg = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=a.layers, attention_head_dim=128,
               num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False, axes_dims_rope=(16, 56, 56))
    gpu = torch.cuda.get_device_name() if DEV == "cuda" else "cpu"
    print(f"diffusers {diffusers.__version__}, torch {torch.__version__}, {gpu}, "
          f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}", flush=True)
    t0 = time.perf_counter()
    model = build_model(cfg)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"random bf16 model: {nparams} params built in {time.perf_counter() - t0:.1f} s; "
          f"allocated {(torch.cuda.memory_allocated() if DEV == 'cuda' else 0) / GIB:.2f} GiB", flush=True)

    gen = torch.Generator(device=DEV).manual_seed(1)
    inputs = {s: Inputs(s, a.txt, cfg, gen, a.edit_pictures) for s in sorted(set(sizes) | set(csizes) | ({a.profile} - {0}))}
    rows = []

    def run(mode: str, batched: bool, size: int):
        inp = inputs[size]
        times, peak = measure(model, inp, batched, a.warmup, a.iters)
        fl = 2 * forward_flops(cfg, 1, inp.n * (1 + inp.pictures), a.txt)
        row = dict(impl="diffusers", size=size, mode=mode, median_ms=statistics.median(times), min_ms=min(times),
                   tflops=fl / (statistics.median(times) * 1e-3) / 1e12, flops_per_step=fl, peak_bytes=peak,
                   times_ms=times)
        rows.append(row)
        print(f"{size:>5}² {mode:<22} median {row['median_ms']:8.1f} ms  min {row['min_ms']:8.1f} ms  "
              f"{row['tflops']:6.1f} TFLOP/s  peak {peak / GIB:6.2f} GiB  [{', '.join(f'{t:.1f}' for t in times)}]",
              flush=True)

    with torch.inference_mode():
        for size in [] if a.eager_skip else sizes:
            run("eager 2×B=1", False, size)
            if not a.no_batched:
                run("eager B=2", True, size)
        prof_lines: list[str] = []
        if a.profile and not a.eager_skip:
            prof_lines += profile_step(model, inputs[a.profile], "eager")
            prof_lines += pieces(a.profile, a.txt, cfg)
        if a.compile:
            t0 = time.perf_counter()
            try:
                model.compile_repeated_blocks(fullgraph=True, dynamic=False)
                kind = "compiled 2×B=1"
                for size in csizes:
                    tc = time.perf_counter()
                    step(model, inputs[size], False)
                    sync()
                    print(f"compile + first step at {size}²: {time.perf_counter() - tc:.1f} s", flush=True)
                    run(kind, False, size)
                if a.profile and a.profile in csizes:
                    prof_lines += profile_step(model, inputs[a.profile], "compile_repeated_blocks")
            except Exception as e:  # report and keep the eager numbers
                print(f"compile_repeated_blocks failed after {time.perf_counter() - t0:.1f} s: "
                      f"{type(e).__name__}: {str(e)[:400]}", flush=True)

    print(f"\n## one true-CFG step, diffusers {diffusers.__version__} / torch {torch.__version__}, bf16, "
          f"{a.txt} text tokens, {a.iters} iters after {a.warmup} warm-up")
    print("| size | mode | ms/step (median) | min | TFLOP/s | peak GiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']}² | {r['mode']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['tflops']:.0f} | "
              f"{r['peak_bytes'] / GIB:.1f} |")
    for line in prof_lines:
        print(line)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
