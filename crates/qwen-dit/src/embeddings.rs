//! Timestep embedding (diffusers `QwenTimestepProjEmbeddings`: `Timesteps` + `TimestepEmbedding`).

use mlx_rs::{Array, Dtype, ops};

use crate::config::TIMESTEP_PROJ_DIM;
use crate::error::Result;
use crate::linear::Linear;
use crate::module::declare_module;
use crate::ops::silu;

/// Scale diffusers' `Timesteps(scale=1000)` applies: the model receives σ ∈ [0, 1].
const TIMESTEP_SCALE: f32 = 1000.0;

declare_module! {
    /// `linear_1 → SiLU → linear_2` over the sinusoidal projection of σ·1000 (`[cos, sin]`,
    /// 256 wide, `downscale_freq_shift=0`, `max_period=10000`); built with `inner_dim`. The
    /// frequency table ([`timestep_freqs`]) is made once by the model.
    struct TimestepEmbedder(d: usize) {
        linear_1: Linear = "linear_1" (TIMESTEP_PROJ_DIM, d),
        linear_2: Linear = "linear_2" (d, d),
    }
}

/// The frequency table of the sinusoidal projection, computed in f32 like diffusers'
/// `get_timestep_embedding` (`exponent = −ln(max_period)·arange(half)/half`, then `exp`).
pub(crate) fn timestep_freqs() -> Vec<f32> {
    let half = TIMESTEP_PROJ_DIM / 2;
    let ln = (10000f64).ln() as f32;
    (0..half)
        .map(|k| {
            let e = (-ln * k as f32) / half as f32;
            (e as f64).exp() as f32
        })
        .collect()
}

/// The frequency table as a `(1, 128)` f32 array.
pub(crate) fn timestep_freq_table() -> Array {
    let f = timestep_freqs();
    Array::from_slice(&f, &[1, f.len() as i32])
}

impl TimestepEmbedder {
    /// `sigma` `(B,)` → `(B, inner_dim)` in `dtype`; `freqs` from [`timestep_freq_table`].
    pub(crate) fn forward(&self, sigma: &Array, freqs: &Array, dtype: Dtype) -> Result<Array> {
        // diffusers casts the timestep to the activation dtype first, then computes the
        // sinusoid in f32.
        let t = sigma.as_dtype(dtype)?.as_dtype(Dtype::Float32)?;
        let n = t.dim(0);
        let arg = ops::multiply(t.reshape(&[n, 1])?, freqs)?;
        let arg = ops::multiply(arg, Array::from_f32(TIMESTEP_SCALE))?;
        // flip_sin_to_cos: [cos, sin]
        let emb = ops::concatenate(&[ops::cos(&arg)?, ops::sin(&arg)?], 1)?;
        let emb = emb.as_dtype(dtype)?;
        let h = silu(&self.linear_1.forward(&emb)?)?;
        self.linear_2.forward(&h)
    }
}
