//! Smoke tests: mlx-rs works on this platform (Linux CPU in CI, CUDA or Metal elsewhere).
//!
//! Each MLX result is checked against plain Rust arithmetic in f64, so these tests do not
//! depend on MLX being right about anything they check.

use mlx_rs::{Array, Dtype};

/// Deterministic pseudo-random values in [-1, 1) (a 64-bit LCG), independent of MLX.
fn host_random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn elementwise_and_matmul_match_host_math() -> anyhow::Result<()> {
    let (m, k, n) = (5usize, 7usize, 3usize);
    let a = host_random(m * k, 1);
    let b = host_random(k * n, 2);
    let am = Array::from_slice(&a, &[m as i32, k as i32]);
    let bm = Array::from_slice(&b, &[k as i32, n as i32]);
    let c = mlx_rs::ops::matmul(&am, &bm)?;
    let mut want = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            want[i * n + j] = (0..k)
                .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                .sum();
        }
    }
    // f32 dot products of length 7 with |x| < 1: error well under 1e-5.
    assert!(max_abs_diff(c.as_slice::<f32>(), &want) < 1e-5);

    let e = mlx_rs::ops::exp(&mlx_rs::ops::multiply(&am, &am)?)?;
    let want: Vec<f64> = a
        .iter()
        .map(|x| ((*x as f64) * (*x as f64)).exp())
        .collect();
    assert!(max_abs_diff(e.as_slice::<f32>(), &want) < 1e-5);
    Ok(())
}

#[test]
fn fast_sdpa_matches_naive_softmax_attention() -> anyhow::Result<()> {
    let (b, h, l, s, d) = (2usize, 3usize, 5usize, 6usize, 8usize);
    let q = host_random(b * h * l * d, 3);
    let k = host_random(b * h * s * d, 4);
    let v = host_random(b * h * s * d, 5);
    let scale = 1.0 / (d as f32).sqrt();
    let qa = Array::from_slice(&q, &[b as i32, h as i32, l as i32, d as i32]);
    let ka = Array::from_slice(&k, &[b as i32, h as i32, s as i32, d as i32]);
    let va = Array::from_slice(&v, &[b as i32, h as i32, s as i32, d as i32]);
    let out = mlx_rs::fast::scaled_dot_product_attention(&qa, &ka, &va, scale, None, None)?;
    assert_eq!(out.shape(), &[b as i32, h as i32, l as i32, d as i32]);

    let mut want = vec![0f64; b * h * l * d];
    for bh in 0..b * h {
        for i in 0..l {
            let scores: Vec<f64> = (0..s)
                .map(|j| {
                    (0..d)
                        .map(|p| q[(bh * l + i) * d + p] as f64 * k[(bh * s + j) * d + p] as f64)
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let mx = scores.iter().cloned().fold(f64::MIN, f64::max);
            let ex: Vec<f64> = scores.iter().map(|x| (x - mx).exp()).collect();
            let z: f64 = ex.iter().sum();
            for p in 0..d {
                want[(bh * l + i) * d + p] = (0..s)
                    .map(|j| ex[j] / z * v[(bh * s + j) * d + p] as f64)
                    .sum();
            }
        }
    }
    // f32 softmax over 6 keys and an 8-wide dot product: errors ~1e-7; 1e-5 leaves margin.
    assert!(max_abs_diff(out.as_slice::<f32>(), &want) < 1e-5);
    Ok(())
}

#[test]
fn fast_rms_norm_matches_naive() -> anyhow::Result<()> {
    let (rows, c) = (4usize, 33usize);
    let x = host_random(rows * c, 6);
    let w = host_random(c, 7);
    let eps = 1e-6f32;
    let xa = Array::from_slice(&x, &[rows as i32, c as i32]);
    let wa = Array::from_slice(&w, &[c as i32]);
    let out = mlx_rs::fast::rms_norm(&xa, Some(&wa), eps)?;
    let mut want = vec![0f64; rows * c];
    for r in 0..rows {
        let ms: f64 = x[r * c..(r + 1) * c]
            .iter()
            .map(|v| (*v as f64).powi(2))
            .sum::<f64>()
            / c as f64;
        let inv = 1.0 / (ms + eps as f64).sqrt();
        for j in 0..c {
            want[r * c + j] = x[r * c + j] as f64 * inv * w[j] as f64;
        }
    }
    assert!(max_abs_diff(out.as_slice::<f32>(), &want) < 1e-5);
    Ok(())
}

#[test]
fn seeded_rng_is_reproducible() -> anyhow::Result<()> {
    let draw = |seed: u64| -> anyhow::Result<Vec<f32>> {
        let key = mlx_rs::random::key(seed)?;
        let a = mlx_rs::random::normal::<f32>(&[64], None, None, Some(&key))?;
        Ok(a.as_slice::<f32>().to_vec())
    };
    let a = draw(42)?;
    assert_eq!(a, draw(42)?, "same seed, different numbers");
    assert_ne!(a, draw(43)?, "different seeds, same numbers");
    let mean = a.iter().map(|v| *v as f64).sum::<f64>() / a.len() as f64;
    assert!(mean.abs() < 0.5, "N(0,1) sample mean {mean}");
    Ok(())
}

#[test]
fn half_precision_conversions_round_trip() -> anyhow::Result<()> {
    // Values exactly representable in bf16 and f16 survive a round trip bit for bit.
    let v = [0.5f32, -1.25, 3.0, 1024.0, -0.0078125];
    let a = Array::from_slice(&v, &[5]);
    for dt in [Dtype::Bfloat16, Dtype::Float16] {
        let back = a.as_dtype(dt)?.as_dtype(Dtype::Float32)?;
        assert_eq!(back.as_slice::<f32>(), &v, "{dt:?}");
    }
    let rounded = Array::from_slice(&[1.0f32 + 1.0 / 512.0], &[1])
        .as_dtype(Dtype::Bfloat16)?
        .as_dtype(Dtype::Float32)?;
    assert_eq!(
        rounded.as_slice::<f32>(),
        &[1.0],
        "bf16 keeps 8 mantissa bits"
    );
    Ok(())
}
