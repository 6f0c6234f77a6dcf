  // layer_norm_modulate: one block of TPB threads per row; grid (L·TPB, B) threads.
  // Template: T (x dtype), C, TPB, MB (batch of shift/scale: 1 = shared), EPS_BITS.
  // Mirrored line by line by layer_norm_modulate.metal.
  __shared__ float fo_red[32];
  const int tid = threadIdx.x;
  const float eps = __int_as_float(EPS_BITS);
  const size_t row = (size_t)blockIdx.y * gridDim.x + blockIdx.x;
  const size_t mrow = MB == 1 ? 0 : (size_t)blockIdx.y;
  const T* xr = x + row * C;
  T* yr = out + row * C;
  const T* sh = shift + mrow * C;
  const T* sc = scale + mrow * C;
  constexpr int W = 16 / sizeof(T);
  if (C % W == 0 && fo_aligned16(xr, yr, sh, sc)) {
    fo_ln_modulate_row<T, C, TPB, W>(xr, sh, sc, yr, eps, fo_red, tid);
  } else {
    fo_ln_modulate_row<T, C, TPB, 1>(xr, sh, sc, yr, eps, fo_red, tid);
  }
