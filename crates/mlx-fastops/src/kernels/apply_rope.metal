  // apply_rope: each thread rotates P consecutive pairs of one row of x (..., D).
  // tcos/tsin have x's rank (left-padded with 1s), last axis D/2, size-1 axes broadcast.
  // Template: T (x dtype), TC (table dtype), P. Line-by-line mirror of apply_rope.cu.
  // NOT RUN (no Apple GPU here).
  const int nd = x_ndim;
  const int D = x_shape[nd - 1];
  const int H2 = D / 2;
  const int G = H2 / P;
  uint rows = 1;
  for (int d = 0; d < nd - 1; ++d) rows *= (uint)x_shape[d];
  const uint g = thread_position_in_grid.x;
  if (g >= rows * (uint)G) return;
  const uint row = g / G;
  const int k0 = (int)(g - row * G) * P;
  uint trow = 0;
  uint tstride = 1;
  uint rem = row;
  for (int d = nd - 2; d >= 0; --d) {
    const uint n = (uint)x_shape[d];
    const uint i = rem % n;
    rem /= n;
    const uint tn = (uint)tcos_shape[d];
    if (tn != 1) trow += i * tstride;
    tstride *= tn;
  }
  const device TC* cp = tcos + (size_t)trow * H2 + k0;
  const device TC* sp = tsin + (size_t)trow * H2 + k0;
  const device T* xp = x + (size_t)row * D + 2 * k0;
  device T* op = out + (size_t)row * D + 2 * k0;
  float v[2 * P];
  float o[2 * P];
  const bool vec = 2 * P * sizeof(T) == 16 && fo_aligned16();
  if (vec) {
    fo_load<T, 2 * P>(xp, v);
  } else {
    for (int j = 0; j < 2 * P; ++j) v[j] = static_cast<float>(xp[j]);
  }
  for (int k = 0; k < P; ++k) {
    const float c = static_cast<float>(cp[k]);
    const float s = static_cast<float>(sp[k]);
    o[2 * k] = v[2 * k] * c - v[2 * k + 1] * s;
    o[2 * k + 1] = v[2 * k] * s + v[2 * k + 1] * c;
  }
  if (vec) {
    fo_store<T, 2 * P>(op, o);
  } else {
    for (int j = 0; j < 2 * P; ++j) op[j] = static_cast<T>(o[j]);
  }
