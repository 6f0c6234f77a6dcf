  // gated_residual: out = x + gate·y; each thread handles W consecutive elements of a row.
  // x, y (B, L, C); gate (MB, C). Template: T, W, MB. Mirrored by gated_residual.metal.
  const unsigned int L = (unsigned int)x_shape[1];
  const unsigned int C = (unsigned int)x_shape[2];
  const unsigned int NA = C / W;
  const unsigned int g = blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= (unsigned int)x_shape[0] * L * NA) return;
  const unsigned int row = g / NA;
  const unsigned int a = g - row * NA;
  const unsigned int b = MB == 1 ? 0 : row / L;
  const size_t off = (size_t)row * C + (size_t)a * W;
  const T* xp = x + off;
  const T* yp = y + off;
  const T* gp = gate + (size_t)b * C + (size_t)a * W;
  T* op = out + off;
  float xv[W];
  float yv[W];
  float gv[W];
  float o[W];
  if (fo_aligned16(xp, yp, gp, op)) {
    fo_load<T, W>(xp, xv);
    fo_load<T, W>(yp, yv);
    fo_load<T, W>(gp, gv);
  } else {
#pragma unroll
    for (int j = 0; j < W; ++j) {
      xv[j] = static_cast<float>(xp[j]);
      yv[j] = static_cast<float>(yp[j]);
      gv[j] = static_cast<float>(gp[j]);
    }
  }
#pragma unroll
  for (int j = 0; j < W; ++j) o[j] = xv[j] + gv[j] * yv[j];
  if (fo_aligned16(xp, yp, gp, op)) {
    fo_store<T, W>(op, o);
  } else {
#pragma unroll
    for (int j = 0; j < W; ++j) op[j] = static_cast<T>(o[j]);
  }
