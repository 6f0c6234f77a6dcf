//! `TextEncoder::load` hands back materialised weights: a cast to the compute dtype (here the
//! f32 fixture loaded as bf16) runs at load, layer by layer, not inside the first encode.
//! The encode output itself is checked by `parity.rs`, which loads the same way.

mod common;

use anyhow::Result;
use mlx_rs::{Array, Dtype};
use qwen_text_encoder::TextEncoder;

/// MLX's `array::is_available`: whether `a` holds its data (asking does not evaluate).
fn is_evaluated(a: &Array) -> bool {
    let mut res = false;
    // SAFETY: `res` is a valid out-pointer and `a` a live array for the call.
    let status = unsafe { mlx_sys::_mlx_array_is_available(&mut res, a.as_ptr()) };
    assert_eq!(status, 0, "_mlx_array_is_available failed");
    res
}

#[test]
fn loaded_weights_are_evaluated_in_the_compute_dtype() -> Result<()> {
    for dtype in [Dtype::Bfloat16, Dtype::Float32] {
        let enc = TextEncoder::load(
            &common::fixture("tiny/text_encoder"),
            &common::fixture("tiny/tokenizer"),
            dtype,
        )?;
        let w = enc.model().weights();
        let n = w.arrays().count();
        assert_eq!(n, 2 + 12 * enc.model().config().num_hidden_layers);
        for (i, a) in w.arrays().enumerate() {
            assert_eq!(a.dtype(), dtype, "array {i} of {n}");
            assert!(is_evaluated(a), "{dtype:?}: array {i} of {n} is still lazy");
        }
    }
    Ok(())
}
