  // gelu_tanh: out = GELU_tanh(x) over the flat (row-contiguous) x; each thread handles W
  // consecutive elements (W divides x's size). Template: T, W. Line-by-line mirror of
  // gelu_tanh.cu. NOT RUN (no Apple GPU here).
  size_t n = 1;
  for (int d = 0; d < x_ndim; ++d) n *= (size_t)x_shape[d];
  const size_t g = (size_t)thread_position_in_grid.x;
  if (g >= n / W) return;
  const device T* xp = x + g * W;
  device T* op = out + g * W;
  float v[W];
  const bool vec = fo_aligned16();
  if (vec) {
    fo_load<T, W>(xp, v);
  } else {
    for (int j = 0; j < W; ++j) v[j] = static_cast<float>(xp[j]);
  }
  for (int j = 0; j < W; ++j) v[j] = fo_gelu_tanh(v[j]);
  if (vec) {
    fo_store<T, W>(op, v);
  } else {
    for (int j = 0; j < W; ++j) op[j] = static_cast<T>(v[j]);
  }
