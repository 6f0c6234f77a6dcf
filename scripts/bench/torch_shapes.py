"""PyTorch's side of `benches/shapes.rs`: the text stream's few-row GEMMs (F.linear, cuBLAS)
and attention over long joint sequences under each SDPA backend, bf16, on one GPU.

Run: python3 torch_shapes.py [--rows 32,64,128] [--seqs 4128,9500]
"""
import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

CALLS, REPS = 8, 7


def time_calls(f):
    """Median ms per call of f(i), i in 0..CALLS, CUDA events around all of them."""
    def run():
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for i in range(CALLS):
            f(i)
        b.record()
        torch.cuda.synchronize()
        return a.elapsed_time(b) / CALLS
    run()
    ts = sorted(run() for _ in range(REPS))
    return ts[len(ts) // 2]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rows", default="32,64,128")
    p.add_argument("--seqs", default="4128,9500")
    a = p.parse_args()
    dev, bf = "cuda", torch.bfloat16
    d, f, heads, hd = 3072, 12288, 24, 128
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    print("\n## few-row GEMMs (F.linear), ms per call (GB/s of the weight read)")
    print("| rows | K×N | F.linear |")
    print("|---|---|---|")
    with torch.no_grad():
        for k, n in [(d, 3 * d), (d, d), (d, f), (f, d)]:
            ws = [torch.randn(n, k, device=dev, dtype=bf) / k ** 0.5 for _ in range(CALLS)]
            b = torch.randn(n, device=dev, dtype=bf) * 0.02
            for r in [int(x) for x in a.rows.split(",")]:
                x = torch.randn(r, k, device=dev, dtype=bf)
                ms = time_calls(lambda i: F.linear(x, ws[i], b))
                print(f"| {r} | {k}×{n} | {ms:.4f} ({k * n * 2 / (ms * 1e-3) / 1e9:.0f}) |")
            del ws
        print("\n## attention, ms per call (TFLOP/s)")
        backends = [("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION),
                    ("efficient", SDPBackend.EFFICIENT_ATTENTION)]
        print("| S | layout | default | " + " | ".join(n for n, _ in backends) + " |")
        print("|---|---|---|" + "---|" * len(backends))
        for s in [int(x) for x in a.seqs.split(",")]:
            flops = 4.0 * s * s * heads * hd
            for layout in ["BHSD", "BSHD views"]:
                if layout == "BHSD":
                    q, k_, v = (torch.randn(1, heads, s, hd, device=dev, dtype=bf) for _ in range(3))
                else:
                    q, k_, v = (torch.randn(1, s, heads, hd, device=dev, dtype=bf).transpose(1, 2) for _ in range(3))
                cells = []
                ms = time_calls(lambda i: F.scaled_dot_product_attention(q, k_, v))
                cells.append(f"{ms:.3f} ({flops / (ms * 1e-3) / 1e12:.0f})")
                for _, be in backends:
                    try:
                        with sdpa_kernel([be]):
                            ms = time_calls(lambda i: F.scaled_dot_product_attention(q, k_, v))
                        cells.append(f"{ms:.3f} ({flops / (ms * 1e-3) / 1e12:.0f})")
                    except RuntimeError as e:
                        cells.append("n/a")
                print(f"| {s} | {layout} | " + " | ".join(cells) + " |")
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                F.scaled_dot_product_attention(q, k_, v)
                torch.cuda.synchronize()
            names = {e.key for e in prof.key_averages()}
            print(f"default backend's kernels at S={s}: {sorted(names)[:4]}")


if __name__ == "__main__":
    main()
