//! Shared helpers of the integration tests: fixture lookup and error measures.

use std::path::PathBuf;

/// `fixtures/data/text_encoder/<rel>` (see [`fixture_in`]).
#[allow(dead_code)] // not every test binary reads the text-encoder fixtures
pub fn fixture(rel: &str) -> PathBuf {
    fixture_in("text_encoder", rel)
}

/// `fixtures/data/<dir>/<rel>`: next to the crate when built here, else relative to the
/// current directory (test binaries also run from the repository root on the GPU machine).
pub fn fixture_in(dir: &str, rel: &str) -> PathBuf {
    let here = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/data"))
        .join(dir)
        .join(rel);
    if here.exists() {
        return here;
    }
    PathBuf::from("fixtures/data").join(dir).join(rel)
}

/// max |a − b| / max |b|: the error relative to the reference's scale. Element-wise relative
/// error is meaningless for entries near zero (hidden states cross zero), so the error is
/// measured against the tensor's largest magnitude.
#[allow(dead_code)] // each test binary compiles this module; not all use every helper
pub fn max_rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    // f32::max ignores NaN, so check finiteness first.
    assert!(a.iter().all(|x| x.is_finite()), "non-finite output");
    let scale = b
        .iter()
        .fold(0f32, |m, x| m.max(x.abs()))
        .max(f32::MIN_POSITIVE);
    let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}
