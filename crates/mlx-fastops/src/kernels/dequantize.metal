  // dequantize: MLX's affine dequantization of a (rows, cols·BITS/32) uint32 matrix packed
  // little-end first, out = scale·q + bias with scale and bias of each GROUP columns,
  // computed in f32 (scale·q is exact there) and rounded once to T. Each
  // thread expands 16 bytes of packed weights (V = 128/BITS values, all in one group).
  // Template: T, BITS, GROUP. Line-by-line mirror of dequantize.cu. NOT RUN (no Apple GPU
  // here).
  constexpr int V = 128 / BITS;
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  size_t words = 1;
  for (int d = 0; d < w_ndim; ++d) words *= (size_t)w_shape[d];
  const size_t g = (size_t)thread_position_in_grid.x;
  if (g >= words / 4) return;
  const device uint32_t* wp = w + g * 4;
  uint32_t packed[4];
  for (int k = 0; k < 4; ++k) packed[k] = wp[k];
  const size_t group = g * V / GROUP;
  const float scale = static_cast<float>(scales[group]);
  const float bias = static_cast<float>(biases[group]);
  device T* op = out + g * V;
  for (int k = 0; k < 4; ++k) {
    for (int j = 0; j < PER_WORD; ++j) {
      const uint32_t q = (packed[k] >> (BITS * j)) & MASK;
      op[k * PER_WORD + j] = static_cast<T>(scale * static_cast<float>(q) + bias);
    }
  }
