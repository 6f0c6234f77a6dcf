// mlx-fastops Metal helpers, placed before MLX's generated kernel (header argument).
// Line-by-line mirror of common.cuh. NOT RUN: the project's machines have no Apple GPU.

// Loads W consecutive elements of p as f32 (Metal coalesces the scalar loads).
template <typename T, int W>
inline void fo_load(const device T* p, thread float* v) {
  for (int j = 0; j < W; ++j) v[j] = static_cast<float>(p[j]);
}

// Stores W f32 values to p rounded to T.
template <typename T, int W>
inline void fo_store(device T* p, const thread float* v) {
  for (int j = 0; j < W; ++j) p[j] = static_cast<T>(v[j]);
}

// Alignment does not gate a faster path on Metal: always true.
inline bool fo_aligned16() {
  return true;
}

// Sum over the 32 lanes of a SIMD-group; every lane gets the total.
inline float fo_warp_sum(float v) {
  return metal::simd_sum(v);
}

// Sum over a threadgroup of TPB threads (a multiple of 32); every thread gets the total.
// `red` holds TPB/32 floats of threadgroup memory; reusable right after return.
template <int TPB>
inline float fo_block_sum(float v, threadgroup float* red, int tid) {
  v = fo_warp_sum(v);
  if (TPB > 32) {
    const int lane = tid & 31;
    const int warp = tid >> 5;
    if (lane == 0) red[warp] = v;
    metal::threadgroup_barrier(metal::mem_flags::mem_threadgroup);
    v = lane < TPB / 32 ? red[lane] : 0.0f;
    v = fo_warp_sum(v);
    metal::threadgroup_barrier(metal::mem_flags::mem_threadgroup);
  }
  return v;
}

// One row of LayerNorm(x)·(1 + scale) + shift: C elements, TPB threads, accesses of W
// elements. The row stays in registers (APT·W floats per thread): one read of x, one write.
template <typename T, int C, int TPB, int W>
inline void fo_ln_modulate_row(
    const device T* xr, const device T* sh, const device T* sc, device T* yr, float eps,
    threadgroup float* red, int tid) {
  constexpr int NACC = C / W;
  // at least 1: the vector instantiation exists (unused) even when C < W
  constexpr int APT = NACC > 0 ? (NACC + TPB - 1) / TPB : 1;
  float v[APT * W];
  float s = 0.0f;
  for (int i = 0; i < APT; ++i) {
    const int a = tid + i * TPB;
    if (a < NACC) {
      fo_load<T, W>(xr + a * W, &v[i * W]);
    } else {
      for (int j = 0; j < W; ++j) v[i * W + j] = 0.0f;
    }
    for (int j = 0; j < W; ++j) s += v[i * W + j];
  }
  const float mean = fo_block_sum<TPB>(s, red, tid) * (1.0f / C);
  float q = 0.0f;
  for (int i = 0; i < APT; ++i) {
    const int a = tid + i * TPB;
    if (a < NACC) {
      for (int j = 0; j < W; ++j) {
        const float d = v[i * W + j] - mean;
        q += d * d;
      }
    }
  }
  const float rstd = metal::rsqrt(fo_block_sum<TPB>(q, red, tid) * (1.0f / C) + eps);
  for (int i = 0; i < APT; ++i) {
    const int a = tid + i * TPB;
    if (a < NACC) {
      float b[W];
      float g[W];
      float o[W];
      fo_load<T, W>(sh + a * W, b);
      fo_load<T, W>(sc + a * W, g);
      for (int j = 0; j < W; ++j) o[j] = (v[i * W + j] - mean) * rstd * (1.0f + g[j]) + b[j];
      fo_store<T, W>(yr + a * W, o);
    }
  }
}

// GELU with the tanh approximation (PyTorch approximate="tanh") in f32:
// 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))). precise::tanh: the fast-math tanh is not
// accurate to f32 and overflows for large arguments.
inline float fo_gelu_tanh(float x) {
  const float k = 0.7978845608028654f;  // √(2/π)
  return 0.5f * x * (1.0f + metal::precise::tanh(k * (x + 0.044715f * x * x * x)));
}
