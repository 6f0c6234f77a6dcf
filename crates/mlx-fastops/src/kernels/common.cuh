// mlx-fastops CUDA helpers, placed before MLX's generated kernel (header argument).
// Mirrored line by line by common.metal.

// Loads W consecutive elements of p as f32; one 16-byte access when W·sizeof(T) == 16
// (the caller checks alignment), else W scalar loads.
template <typename T, int W>
__device__ __forceinline__ void fo_load(const T* p, float* v) {
  if (W * sizeof(T) == 16) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    const T* t = reinterpret_cast<const T*>(&u);
#pragma unroll
    for (int j = 0; j < W; ++j) v[j] = static_cast<float>(t[j]);
  } else {
#pragma unroll
    for (int j = 0; j < W; ++j) v[j] = static_cast<float>(p[j]);
  }
}

// Stores W f32 values to p rounded to T; one 16-byte access when W·sizeof(T) == 16.
template <typename T, int W>
__device__ __forceinline__ void fo_store(T* p, const float* v) {
  if (W * sizeof(T) == 16) {
    uint4 u;
    T* t = reinterpret_cast<T*>(&u);
#pragma unroll
    for (int j = 0; j < W; ++j) t[j] = static_cast<T>(v[j]);
    *reinterpret_cast<uint4*>(p) = u;
  } else {
#pragma unroll
    for (int j = 0; j < W; ++j) p[j] = static_cast<T>(v[j]);
  }
}

// Whether every pointer is 16-byte aligned.
__device__ __forceinline__ bool fo_aligned16(const void* a, const void* b, const void* c, const void* d) {
  return ((reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(b) |
           reinterpret_cast<uintptr_t>(c) | reinterpret_cast<uintptr_t>(d)) & 15) == 0;
}

// Sum over the 32 lanes of a warp; every lane gets the total.
__device__ __forceinline__ float fo_warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over a block of TPB threads (a multiple of 32); every thread gets the total.
// `red` holds TPB/32 floats of shared memory; reusable right after return.
template <int TPB>
__device__ __forceinline__ float fo_block_sum(float v, float* red, int tid) {
  v = fo_warp_sum(v);
  if (TPB > 32) {
    const int lane = tid & 31;
    const int warp = tid >> 5;
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = lane < TPB / 32 ? red[lane] : 0.0f;
    v = fo_warp_sum(v);
    __syncthreads();
  }
  return v;
}

// One row of LayerNorm(x)·(1 + scale) + shift: C elements, TPB threads, accesses of W
// elements. The row stays in registers (APT·W floats per thread): one read of x, one write.
template <typename T, int C, int TPB, int W>
__device__ __forceinline__ void fo_ln_modulate_row(
    const T* xr, const T* sh, const T* sc, T* yr, float eps, float* red, int tid) {
  constexpr int NACC = C / W;
  // at least 1: the vector instantiation exists (unused) even when C < W
  constexpr int APT = NACC > 0 ? (NACC + TPB - 1) / TPB : 1;
  float v[APT * W];
  float s = 0.0f;
#pragma unroll
  for (int i = 0; i < APT; ++i) {
    const int a = tid + i * TPB;
    if (a < NACC) {
      fo_load<T, W>(xr + a * W, &v[i * W]);
    } else {
#pragma unroll
      for (int j = 0; j < W; ++j) v[i * W + j] = 0.0f;
    }
#pragma unroll
    for (int j = 0; j < W; ++j) s += v[i * W + j];
  }
  const float mean = fo_block_sum<TPB>(s, red, tid) * (1.0f / C);
  float q = 0.0f;
#pragma unroll
  for (int i = 0; i < APT; ++i) {
    const int a = tid + i * TPB;
    if (a < NACC) {
#pragma unroll
      for (int j = 0; j < W; ++j) {
        const float d = v[i * W + j] - mean;
        q += d * d;
      }
    }
  }
  const float rstd = rsqrtf(fo_block_sum<TPB>(q, red, tid) * (1.0f / C) + eps);
#pragma unroll
  for (int i = 0; i < APT; ++i) {
    const int a = tid + i * TPB;
    if (a < NACC) {
      float b[W];
      float g[W];
      float o[W];
      fo_load<T, W>(sh + a * W, b);
      fo_load<T, W>(sc + a * W, g);
#pragma unroll
      for (int j = 0; j < W; ++j) o[j] = (v[i * W + j] - mean) * rstd * (1.0f + g[j]) + b[j];
      fo_store<T, W>(yr + a * W, o);
    }
  }
}

// GELU with the tanh approximation (PyTorch approximate="tanh") in f32:
// 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
__device__ __forceinline__ float fo_gelu_tanh(float x) {
  const float k = 0.7978845608028654f;  // √(2/π)
  return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}
