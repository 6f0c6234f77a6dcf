  // linear_rows: out (M, N) = x (M, K) · wᵀ + bias for a few rows M; w (N, K) row-major.
  // One SIMD-group per output column n: the lanes stride along K, M f32 accumulators each,
  // a SIMD-group sum; lane 0 adds the bias and rounds once.
  // Template: T, M, K, V. Line-by-line mirror of linear_rows.cu. NOT RUN (no Apple GPU here).
  const int N = w_shape[0];
  const uint g = thread_position_in_grid.x;
  const uint n = g / 32;
  const int lane = (int)(g % 32);
  // whole SIMD-groups leave together (the thread count is a multiple of 32)
  if (n >= (uint)N) return;
  const device T* wr = w + (size_t)n * K;
  float acc[M];
  for (int m = 0; m < M; ++m) acc[m] = 0.0f;
  if (K % V == 0 && fo_aligned16()) {
    // a constant trip count, unrolled: the row's loads are issued before the sums
    constexpr int ITERS = (K + 32 * V - 1) / (32 * V);
    for (int i = 0; i < ITERS; ++i) {
      const int k = (i * 32 + lane) * V;
      if (k < K) {
        float wv[V];
        fo_load<T, V>(wr + k, wv);
        for (int m = 0; m < M; ++m) {
          float xv[V];
          fo_load<T, V>(x + (size_t)m * K + k, xv);
          for (int j = 0; j < V; ++j) acc[m] += wv[j] * xv[j];
        }
      }
    }
  } else {
    for (int k = lane; k < K; k += 32) {
      const float wv = static_cast<float>(wr[k]);
      for (int m = 0; m < M; ++m) acc[m] += wv * static_cast<float>(x[(size_t)m * K + k]);
    }
  }
  for (int m = 0; m < M; ++m) acc[m] = fo_warp_sum(acc[m]);
  if (lane == 0) {
    const float b = static_cast<float>(bias[n]);
    for (int m = 0; m < M; ++m) out[(size_t)m * N + n] = static_cast<T>(acc[m] + b);
  }
