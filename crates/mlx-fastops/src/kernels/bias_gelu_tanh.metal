  // bias_gelu_tanh: out = GELU_tanh(x + bias), bias (N,) broadcast over the last axis of the
  // row-contiguous x (..., N); each thread handles W consecutive elements of a row (W
  // divides N). Template: T, W. Line-by-line mirror of bias_gelu_tanh.cu. NOT RUN (no
  // Apple GPU here).
  const size_t N = (size_t)x_shape[x_ndim - 1];
  size_t n = 1;
  for (int d = 0; d < x_ndim; ++d) n *= (size_t)x_shape[d];
  const size_t g = (size_t)thread_position_in_grid.x;
  if (g >= n / W) return;
  const size_t e = g * W;
  const device T* xp = x + e;
  const device T* bp = bias + e % N;
  device T* op = out + e;
  float v[W];
  float b[W];
  const bool vec = fo_aligned16();
  if (vec) {
    fo_load<T, W>(xp, v);
    fo_load<T, W>(bp, b);
  } else {
    for (int j = 0; j < W; ++j) {
      v[j] = static_cast<float>(xp[j]);
      b[j] = static_cast<float>(bp[j]);
    }
  }
  for (int j = 0; j < W; ++j) v[j] = fo_gelu_tanh(v[j] + b[j]);
  if (vec) {
    fo_store<T, W>(op, v);
  } else {
    for (int j = 0; j < W; ++j) op[j] = static_cast<T>(v[j]);
  }
