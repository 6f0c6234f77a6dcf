#!/usr/bin/env python3
"""Compiles the CUDA kernel bodies standalone for sm_90, the way MLX wraps them (template
arguments as constexpr/using lines in the body), and prints the compiler's resource report
(registers, spills) and how many 128-bit global loads/stores the SASS holds.
Run on the GPU machine (needs nvcc and cuobjdump): python3 nvcc_check.py
"""
import pathlib
import subprocess
import sys
import tempfile

K = pathlib.Path(__file__).resolve().parent.parent / "src" / "kernels"
PRELUDE = """
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>
struct Shape { int v[10]; __device__ int operator[](int i) const { return v[i]; } };
"""

VARIANTS = [
    ("ln_bf16_3072_128", "layer_norm_modulate.cu",
     "const __nv_bfloat16* x, const __nv_bfloat16* shift, const __nv_bfloat16* scale, __nv_bfloat16* out",
     "using T = __nv_bfloat16; constexpr int C = 3072; constexpr int TPB = 128; constexpr int MB = 1; constexpr int EPS_BITS = 897988541;"),
    ("ln_bf16_3072_32", "layer_norm_modulate.cu",
     "const __nv_bfloat16* x, const __nv_bfloat16* shift, const __nv_bfloat16* scale, __nv_bfloat16* out",
     "using T = __nv_bfloat16; constexpr int C = 3072; constexpr int TPB = 32; constexpr int MB = 1; constexpr int EPS_BITS = 897988541;"),
    ("ln_f32_3072_256", "layer_norm_modulate.cu",
     "const float* x, const float* shift, const float* scale, float* out",
     "using T = float; constexpr int C = 3072; constexpr int TPB = 256; constexpr int MB = 1; constexpr int EPS_BITS = 897988541;"),
    ("ln_f32_1_32", "layer_norm_modulate.cu",
     "const float* x, const float* shift, const float* scale, float* out",
     "using T = float; constexpr int C = 1; constexpr int TPB = 32; constexpr int MB = 1; constexpr int EPS_BITS = 897988541;"),
    ("rope_bf16_f32", "apply_rope.cu",
     "const __nv_bfloat16* x, const __grid_constant__ Shape x_shape, const int x_ndim, const float* tcos, const __grid_constant__ Shape tcos_shape, const float* tsin, __nv_bfloat16* out",
     "using T = __nv_bfloat16; using TC = float; constexpr int P = 4;"),
    ("gated_bf16", "gated_residual.cu",
     "const __nv_bfloat16* x, const __grid_constant__ Shape x_shape, const __nv_bfloat16* gate, const __nv_bfloat16* y, __nv_bfloat16* out",
     "using T = __nv_bfloat16; constexpr int W = 8; constexpr int MB = 1;"),
]


def main():
    header = (K / "common.cuh").read_text()
    ok = True
    with tempfile.TemporaryDirectory() as d:
        for name, body, params, consts in VARIANTS:
            src = PRELUDE + header + f"\n__global__ void k_{name}({params}) {{\n{consts}\n{(K / body).read_text()}\n}}\n"
            cu = pathlib.Path(d) / f"{name}.cu"
            cu.write_text(src)
            obj = pathlib.Path(d) / f"{name}.cubin"
            r = subprocess.run(["nvcc", "-arch=sm_90", "-cubin", "-O3", "--resource-usage", "-o", str(obj), str(cu)],
                               capture_output=True, text=True)
            if r.returncode != 0:
                ok = False
                print(f"== {name}: COMPILE FAILED\n{r.stderr[-3000:]}")
                continue
            usage = " ".join(line.strip() for line in r.stderr.splitlines() if "registers" in line or "spill" in line)
            sass = subprocess.run(["cuobjdump", "-sass", str(obj)], capture_output=True, text=True).stdout
            ld128 = sass.count("LDG.E.128")
            st128 = sass.count("STG.E.128")
            ldl = sass.count("LDL") + sass.count("STL")
            print(f"== {name}: {usage} | LDG.E.128 {ld128} STG.E.128 {st128} local ld/st {ldl}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
