  // linear_rows: out (M, N) = x (M, K) · wᵀ + bias for a few rows M; w (N, K) row-major.
  // One warp per output column n: the lanes stride along K (16-byte accesses when every
  // pointer allows), M f32 accumulators each, a warp sum; lane 0 adds the bias and rounds
  // once. The weight is read once, at full width: a matrix-vector product is bound by it.
  // Template: T, M (rows of x), K, V (elements per 16 bytes). Mirrored by linear_rows.metal.
  const int N = w_shape[0];
  const unsigned int g = blockIdx.x * blockDim.x + threadIdx.x;
  const unsigned int n = g / 32;
  const int lane = (int)(g % 32);
  // whole warps leave together (the thread count is a multiple of 32)
  if (n >= (unsigned int)N) return;
  const T* wr = w + (size_t)n * K;
  float acc[M];
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = 0.0f;
  if (K % V == 0 && fo_aligned16(wr, x, wr, x)) {
    // a constant trip count, unrolled: the row's loads are issued before the sums
    constexpr int ITERS = (K + 32 * V - 1) / (32 * V);
#pragma unroll
    for (int i = 0; i < ITERS; ++i) {
      const int k = (i * 32 + lane) * V;
      if (k < K) {
        float wv[V];
        fo_load<T, V>(wr + k, wv);
#pragma unroll
        for (int m = 0; m < M; ++m) {
          float xv[V];
          fo_load<T, V>(x + (size_t)m * K + k, xv);
#pragma unroll
          for (int j = 0; j < V; ++j) acc[m] += wv[j] * xv[j];
        }
      }
    }
  } else {
    for (int k = lane; k < K; k += 32) {
      const float wv = static_cast<float>(wr[k]);
#pragma unroll
      for (int m = 0; m < M; ++m) acc[m] += wv * static_cast<float>(x[(size_t)m * K + k]);
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = fo_warp_sum(acc[m]);
  if (lane == 0) {
    const float b = static_cast<float>(bias[n]);
#pragma unroll
    for (int m = 0; m < M; ++m) out[(size_t)m * N + n] = static_cast<T>(acc[m] + b);
  }
