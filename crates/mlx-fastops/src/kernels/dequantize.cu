  // dequantize: MLX's affine dequantization of a (rows, cols·BITS/32) uint32 matrix packed
  // little-end first, out = scale·q + bias with scale and bias of each GROUP columns,
  // computed in f32 (scale·q is exact there) and rounded once to T. Each
  // thread expands 16 bytes of packed weights (V = 128/BITS values, all in one group: the
  // planner checks GROUP % V == 0) with one 16-byte load and V·sizeof(T)/16 16-byte stores.
  // Template: T, BITS, GROUP. Mirrored by dequantize.metal.
  constexpr int V = 128 / BITS;
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  size_t words = 1;
  for (int d = 0; d < w_ndim; ++d) words *= (size_t)w_shape[d];
  const size_t g = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= words / 4) return;
  const uint32_t* wp = w + g * 4;
  uint32_t packed[4];
  const bool vec = fo_aligned16(wp, out + g * V, wp, wp);
  if (vec) {
    const uint4 u = *reinterpret_cast<const uint4*>(wp);
    packed[0] = u.x; packed[1] = u.y; packed[2] = u.z; packed[3] = u.w;
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k) packed[k] = wp[k];
  }
  const size_t group = g * V / GROUP;
  const float scale = static_cast<float>(scales[group]);
  const float bias = static_cast<float>(biases[group]);
  constexpr int STORES = V * (int)sizeof(T) / 16;
  uint4 buf[STORES];
  T* vals = reinterpret_cast<T*>(buf);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
#pragma unroll
    for (int j = 0; j < PER_WORD; ++j) {
      const uint32_t q = (packed[k] >> (BITS * j)) & MASK;
      vals[k * PER_WORD + j] = static_cast<T>(scale * static_cast<float>(q) + bias);
    }
  }
  T* op = out + g * V;
  if (vec) {
#pragma unroll
    for (int s = 0; s < STORES; ++s) reinterpret_cast<uint4*>(op)[s] = buf[s];
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) op[j] = vals[j];
  }
