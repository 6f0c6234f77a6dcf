  // gelu_tanh: out = GELU_tanh(x) over the flat (row-contiguous) x; each thread handles W
  // consecutive elements (W divides x's size). Template: T, W. Mirrored by gelu_tanh.metal.
  size_t n = 1;
  for (int d = 0; d < x_ndim; ++d) n *= (size_t)x_shape[d];
  const size_t g = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= n / W) return;
  const T* xp = x + g * W;
  T* op = out + g * W;
  float v[W];
  const bool vec = fo_aligned16(xp, op, xp, op);
  if (vec) {
    fo_load<T, W>(xp, v);
  } else {
#pragma unroll
    for (int j = 0; j < W; ++j) v[j] = static_cast<float>(xp[j]);
  }
#pragma unroll
  for (int j = 0; j < W; ++j) v[j] = fo_gelu_tanh(v[j]);
  if (vec) {
    fo_store<T, W>(op, v);
  } else {
#pragma unroll
    for (int j = 0; j < W; ++j) op[j] = static_cast<T>(v[j]);
  }
