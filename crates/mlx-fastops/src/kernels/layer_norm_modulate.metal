  // layer_norm_modulate: one threadgroup of TPB threads per row; grid (L·TPB, B) threads.
  // Template: T (x dtype), C, TPB, MB (batch of shift/scale: 1 = shared), EPS_BITS.
  // Line-by-line mirror of layer_norm_modulate.cu. NOT RUN (no Apple GPU here).
  threadgroup float fo_red[32];
  const int tid = (int)thread_position_in_threadgroup.x;
  const float eps = metal::as_type<float>(EPS_BITS);
  const size_t row = (size_t)threadgroup_position_in_grid.y * threadgroups_per_grid.x + threadgroup_position_in_grid.x;
  const size_t mrow = MB == 1 ? 0 : (size_t)threadgroup_position_in_grid.y;
  const device T* xr = x + row * C;
  device T* yr = out + row * C;
  const device T* sh = shift + mrow * C;
  const device T* sc = scale + mrow * C;
  constexpr int W = 16 / sizeof(T);
  if (C % W == 0 && fo_aligned16()) {
    fo_ln_modulate_row<T, C, TPB, W>(xr, sh, sc, yr, eps, fo_red, tid);
  } else {
    fo_ln_modulate_row<T, C, TPB, 1>(xr, sh, sc, yr, eps, fo_red, tid);
  }
