  // gated_residual: out = x + gate·y; each thread handles W consecutive elements of a row.
  // x, y (B, L, C); gate (MB, C). Template: T, W, MB. Line-by-line mirror of
  // gated_residual.cu. NOT RUN (no Apple GPU here).
  const uint L = (uint)x_shape[1];
  const uint C = (uint)x_shape[2];
  const uint NA = C / W;
  const uint g = thread_position_in_grid.x;
  if (g >= (uint)x_shape[0] * L * NA) return;
  const uint row = g / NA;
  const uint a = g - row * NA;
  const uint b = MB == 1 ? 0 : row / L;
  const size_t off = (size_t)row * C + (size_t)a * W;
  const device T* xp = x + off;
  const device T* yp = y + off;
  const device T* gp = gate + (size_t)b * C + (size_t)a * W;
  device T* op = out + off;
  float xv[W];
  float yv[W];
  float gv[W];
  float o[W];
  if (fo_aligned16()) {
    fo_load<T, W>(xp, xv);
    fo_load<T, W>(yp, yv);
    fo_load<T, W>(gp, gv);
  } else {
    for (int j = 0; j < W; ++j) {
      xv[j] = static_cast<float>(xp[j]);
      yv[j] = static_cast<float>(yp[j]);
      gv[j] = static_cast<float>(gp[j]);
    }
  }
  for (int j = 0; j < W; ++j) o[j] = xv[j] + gv[j] * yv[j];
  if (fo_aligned16()) {
    fo_store<T, W>(op, o);
  } else {
    for (int j = 0; j < W; ++j) op[j] = static_cast<T>(o[j]);
  }
