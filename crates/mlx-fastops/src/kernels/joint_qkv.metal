  // joint_qkv: packed Q/K/V projections of two sequences (a first, then b) to attention
  // heads: RMSNorm of each q and k head (weights per sequence), RoPE on interleaved pairs
  // with the joint table, v copied; out is (3, B, H, LA + LB, D) = [q, k, v].
  // One SIMD-group per (batch, token, head); lane l holds elements [l·E, l·E + E).
  // Template: T, TC, H, D (E = D/32 even), EPS_BITS. Line-by-line mirror of joint_qkv.cu.
  // NOT RUN (no Apple GPU here).
  constexpr int E = D / 32;
  constexpr int HD = H * D;
  const int la = a_shape[1];
  const int lb = b_shape[1];
  const int nb = a_shape[0];
  const int S = la + lb;
  const float eps = metal::as_type<float>(EPS_BITS);
  const uint g = thread_position_in_grid.x;
  const uint warp = g / 32;
  const int lane = (int)(g % 32);
  // whole SIMD-groups leave together (the thread count is a multiple of 32)
  if (warp >= (uint)(nb * S * H)) return;
  const int h = (int)(warp % H);
  const int s = (int)((warp / H) % S);
  const int bi = (int)(warp / ((uint)H * S));
  const bool first = s < la;
  const device T* src = first ? a + ((size_t)bi * la + s) * 3 * HD : b + ((size_t)bi * lb + (s - la)) * 3 * HD;
  const device T* wq = first ? wqa : wqb;
  const device T* wk = first ? wka : wkb;
  const int e0 = lane * E;
  const size_t plane = (size_t)nb * H * S * D;
  const size_t dst = (((size_t)bi * H + h) * S + s) * D + e0;
  const device TC* cp = tcos + (size_t)s * (D / 2) + e0 / 2;
  const device TC* sp = tsin + (size_t)s * (D / 2) + e0 / 2;
  for (int p = 0; p < 2; ++p) {
    const device T* xp = src + p * HD + h * D + e0;
    const device T* wp = (p == 0 ? wq : wk) + e0;
    float v[E];
    for (int j = 0; j < E; ++j) v[j] = static_cast<float>(xp[j]);
    float ss = 0.0f;
    for (int j = 0; j < E; ++j) ss += v[j] * v[j];
    const float r = metal::rsqrt(fo_warp_sum(ss) / D + eps);
    // as MLX's rms_norm: w · (x·r rounded to T), rounded to T; RoPE reads that
    for (int j = 0; j < E; ++j) {
      const float y = static_cast<float>(static_cast<T>(v[j] * r));
      v[j] = static_cast<float>(static_cast<T>(static_cast<float>(wp[j]) * y));
    }
    device T* op = out + p * plane + dst;
    for (int k = 0; k < E / 2; ++k) {
      const float c = static_cast<float>(cp[k]);
      const float sn = static_cast<float>(sp[k]);
      op[2 * k] = static_cast<T>(v[2 * k] * c - v[2 * k + 1] * sn);
      op[2 * k + 1] = static_cast<T>(v[2 * k] * sn + v[2 * k + 1] * c);
    }
  }
  const device T* vp = src + 2 * HD + h * D + e0;
  device T* ov = out + 2 * plane + dst;
  for (int j = 0; j < E; ++j) ov[j] = vp[j];
