//! Checkpoint loading: strict key checks through `mlx-weights`, and the PyTorch → MLX layout
//! changes, each done once at load time.
//!
//! Checkpoint keys are diffusers' module paths (`decoder.up_blocks.0.resnets.1.conv2.weight`,
//! `decoder.mid_block.attentions.0.to_qkv.weight`, `quant_conv.bias`, …); the model structs
//! mirror that nesting, so names map by identity.

use std::collections::BTreeMap;
use std::path::Path;

use mlx_rs::{Array, Dtype, ops::indexing::TryIndexOp};
use mlx_weights::{StrictLoader, Tensors};

use crate::config::VaeConfig;
use crate::error::{Result, VaeError};

/// PyTorch Conv3d kernel `(O, I, kt, kh, kw)` → one channels-last 2-D kernel `(O, kh, kw, I)`
/// per temporal tap (`kt` of them, oldest frame first). Stacked on axis 1 they form MLX's
/// `conv3d` kernel `(O, kt, kh, kw, I)`; the last one alone is the single-frame kernel.
pub fn conv3d_to_taps(w: &Array) -> Result<Vec<Array>> {
    let s = w.shape();
    if s.len() != 5 {
        return Err(VaeError::Shape(format!(
            "Conv3d weight must be (O, I, kt, kh, kw), got {s:?}"
        )));
    }
    let t = w.transpose_axes(&[2, 0, 3, 4, 1])?; // (kt, O, kh, kw, I)
    (0..s[2])
        .map(|k| Ok(t.try_index(k)?.contiguous()?))
        .collect()
}

/// PyTorch Conv2d kernel `(O, I, kh, kw)` → MLX channels-last `(O, kh, kw, I)`.
pub fn conv2d_to_ohwi(w: &Array) -> Result<Array> {
    let s = w.shape();
    if s.len() != 4 {
        return Err(VaeError::Shape(format!(
            "Conv2d weight must be (O, I, kh, kw), got {s:?}"
        )));
    }
    Ok(w.transpose_axes(&[0, 2, 3, 1])?.contiguous()?)
}

/// RMS-norm `gamma` stored channel-first with broadcast axes, `(C, 1, 1[, 1])` → `(C,)`.
pub fn norm_gamma_to_vector(g: &Array) -> Result<Array> {
    let s = g.shape();
    if s.is_empty() || s[1..].iter().any(|&d| d != 1) {
        return Err(VaeError::Shape(format!(
            "RMS-norm gamma must be (C, 1, …), got {s:?}"
        )));
    }
    Ok(g.reshape(&[s[0]])?)
}

/// A [`StrictLoader`] taking shapes as `usize` (config values).
#[derive(Debug)]
pub(crate) struct Loader {
    inner: StrictLoader,
}

impl Loader {
    /// Reads every safetensors file of a component folder (`vae/`).
    pub(crate) fn open(dir: &Path, dtype: Dtype) -> Result<Self> {
        Ok(Self::from_tensors(mlx_weights::load_component(dir)?, dtype))
    }

    pub(crate) fn from_tensors(tensors: Tensors, dtype: Dtype) -> Self {
        Self {
            inner: StrictLoader::new(tensors, dtype),
        }
    }

    /// Takes `key` with `shape`, cast to the model dtype (zeros + a recorded problem if absent
    /// or mis-shaped; [`Loader::finish`] reports them all).
    pub(crate) fn take(&mut self, key: &str, shape: &[usize]) -> Array {
        let shape: Vec<i32> = shape.iter().map(|&d| d as i32).collect();
        self.inner.take(key, &shape)
    }

    /// Fails listing every missing, unexpected and mis-shaped key.
    pub(crate) fn finish(self) -> Result<()> {
        Ok(self.inner.finish(&[])?)
    }
}

/// Checks a `vae/` folder against `cfg` from the safetensors headers alone, before anything is
/// loaded: a config whose block counts the checkpoint cannot hold is refused before the
/// parameter list is made, then one error lists every missing, unexpected, mis-shaped or
/// non-float tensor.
pub fn check_checkpoint(dir: &Path, cfg: &VaeConfig) -> Result<()> {
    cfg.validate()?;
    let inv = mlx_weights::inventory(dir)?;
    // Every residual block holds at least 6 tensors (two norms, two biased convolutions).
    let blocks = cfg.num_res_blocks.saturating_mul(cfg.dim_mult.len());
    mlx_weights::check_count(
        dir,
        "num_res_blocks × len(dim_mult)",
        blocks,
        6,
        0,
        inv.len(),
    )?;
    let expected: Vec<mlx_weights::Expected> = checkpoint_shapes(cfg)
        .into_iter()
        .map(|(key, shape)| mlx_weights::Expected {
            key,
            shape: shape.iter().map(|&d| d.max(0) as usize).collect(),
            floating: true,
        })
        .collect();
    Ok(mlx_weights::check_inventory(dir, &expected, &inv, &[])?)
}

/// Every tensor a diffusers `AutoencoderKLQwenImage` checkpoint for `cfg` holds, with its
/// PyTorch shape (what [`crate::QwenImageVae::load`] expects; useful to build random test
/// or benchmark checkpoints).
pub fn checkpoint_shapes(cfg: &VaeConfig) -> BTreeMap<String, Vec<i32>> {
    let mut m = BTreeMap::new();
    let conv3 = |m: &mut BTreeMap<String, Vec<i32>>, p: &str, i: usize, o: usize, k: [usize; 3]| {
        m.insert(
            format!("{p}.weight"),
            vec![o as i32, i as i32, k[0] as i32, k[1] as i32, k[2] as i32],
        );
        m.insert(format!("{p}.bias"), vec![o as i32]);
    };
    fn conv2(m: &mut BTreeMap<String, Vec<i32>>, p: &str, i: usize, o: usize, k: usize) {
        m.insert(
            format!("{p}.weight"),
            vec![o as i32, i as i32, k as i32, k as i32],
        );
        m.insert(format!("{p}.bias"), vec![o as i32]);
    }
    fn norm(m: &mut BTreeMap<String, Vec<i32>>, p: &str, c: usize, images: bool) {
        let s = if images {
            vec![c as i32, 1, 1]
        } else {
            vec![c as i32, 1, 1, 1]
        };
        m.insert(format!("{p}.gamma"), s);
    }
    let res = |m: &mut BTreeMap<String, Vec<i32>>, p: &str, i: usize, o: usize| {
        norm(m, &format!("{p}.norm1"), i, false);
        norm(m, &format!("{p}.norm2"), o, false);
        for (n, a) in [("conv1", i), ("conv2", o)] {
            m.insert(format!("{p}.{n}.weight"), vec![o as i32, a as i32, 3, 3, 3]);
            m.insert(format!("{p}.{n}.bias"), vec![o as i32]);
        }
        if i != o {
            m.insert(
                format!("{p}.conv_shortcut.weight"),
                vec![o as i32, i as i32, 1, 1, 1],
            );
            m.insert(format!("{p}.conv_shortcut.bias"), vec![o as i32]);
        }
    };
    let attn = |m: &mut BTreeMap<String, Vec<i32>>, p: &str, c: usize| {
        norm(m, &format!("{p}.norm"), c, true);
        conv2(m, &format!("{p}.to_qkv"), c, 3 * c, 1);
        conv2(m, &format!("{p}.proj"), c, c, 1);
    };
    let z = cfg.z_dim;
    let levels = cfg.dim_mult.len();
    // encoder
    let d = cfg.encoder_dims();
    conv3(
        &mut m,
        "encoder.conv_in",
        cfg.input_channels,
        d[0],
        [3, 3, 3],
    );
    let mut idx = 0;
    let mut scale = 1.0f64;
    for i in 0..levels {
        let mut cin = d[i];
        for _ in 0..cfg.num_res_blocks {
            res(&mut m, &format!("encoder.down_blocks.{idx}"), cin, d[i + 1]);
            idx += 1;
            if cfg.attn_scales.contains(&scale) {
                attn(&mut m, &format!("encoder.down_blocks.{idx}"), d[i + 1]);
                idx += 1;
            }
            cin = d[i + 1];
        }
        if i != levels - 1 {
            let p = format!("encoder.down_blocks.{idx}");
            conv2(&mut m, &format!("{p}.resample.1"), d[i + 1], d[i + 1], 3);
            if cfg.temperal_downsample[i] {
                conv3(
                    &mut m,
                    &format!("{p}.time_conv"),
                    d[i + 1],
                    d[i + 1],
                    [3, 1, 1],
                );
            }
            idx += 1;
            scale /= 2.0;
        }
    }
    let top = d[levels];
    res(&mut m, "encoder.mid_block.resnets.0", top, top);
    attn(&mut m, "encoder.mid_block.attentions.0", top);
    res(&mut m, "encoder.mid_block.resnets.1", top, top);
    norm(&mut m, "encoder.norm_out", top, false);
    conv3(&mut m, "encoder.conv_out", top, 2 * z, [3, 3, 3]);
    conv3(&mut m, "quant_conv", 2 * z, 2 * z, [1, 1, 1]);
    conv3(&mut m, "post_quant_conv", z, z, [1, 1, 1]);
    // decoder
    let d = cfg.decoder_dims();
    conv3(&mut m, "decoder.conv_in", z, d[0], [3, 3, 3]);
    res(&mut m, "decoder.mid_block.resnets.0", d[0], d[0]);
    attn(&mut m, "decoder.mid_block.attentions.0", d[0]);
    res(&mut m, "decoder.mid_block.resnets.1", d[0], d[0]);
    let up: Vec<bool> = cfg.temperal_downsample.iter().rev().copied().collect();
    for i in 0..levels {
        let mut cin = if i > 0 { d[i] / 2 } else { d[i] };
        for j in 0..=cfg.num_res_blocks {
            res(
                &mut m,
                &format!("decoder.up_blocks.{i}.resnets.{j}"),
                cin,
                d[i + 1],
            );
            cin = d[i + 1];
        }
        if i != levels - 1 {
            let p = format!("decoder.up_blocks.{i}.upsamplers.0");
            conv2(
                &mut m,
                &format!("{p}.resample.1"),
                d[i + 1],
                d[i + 1] / 2,
                3,
            );
            if up[i] {
                conv3(
                    &mut m,
                    &format!("{p}.time_conv"),
                    d[i + 1],
                    2 * d[i + 1],
                    [3, 1, 1],
                );
            }
        }
    }
    norm(&mut m, "decoder.norm_out", d[levels], false);
    conv3(
        &mut m,
        "decoder.conv_out",
        d[levels],
        cfg.input_channels,
        [3, 3, 3],
    );
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iota(shape: &[i32]) -> Array {
        let n: i32 = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| i as f32).collect();
        Array::from_slice(&v, shape)
    }

    /// Row-major flat index.
    fn at(shape: &[i32], idx: &[i32]) -> usize {
        let mut f = 0usize;
        for (d, i) in shape.iter().zip(idx) {
            f = f * *d as usize + *i as usize;
        }
        f
    }

    #[test]
    fn conv3d_taps_hold_each_element_at_its_permuted_place() -> anyhow::Result<()> {
        // Exact: the transform only moves values. Checked element by element against the
        // definition taps[t][o, y, x, i] == w[o, i, t, y, x].
        let shape = [5, 3, 3, 2, 4];
        let w = iota(&shape);
        let taps = conv3d_to_taps(&w)?;
        assert_eq!(taps.len(), 3);
        let src = w.as_slice::<f32>();
        for (t, tap) in taps.iter().enumerate() {
            assert_eq!(tap.shape(), &[5, 2, 4, 3]);
            let v = tap.as_slice::<f32>();
            for o in 0..5 {
                for y in 0..2 {
                    for x in 0..4 {
                        for i in 0..3 {
                            let got = v[at(&[5, 2, 4, 3], &[o, y, x, i])];
                            let want = src[at(&shape, &[o, i, t as i32, y, x])];
                            assert_eq!(got, want, "tap {t} o{o} y{y} x{x} i{i}");
                        }
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn conv2d_ohwi_holds_each_element_at_its_permuted_place() -> anyhow::Result<()> {
        let shape = [4, 3, 2, 5];
        let w = iota(&shape);
        let m = conv2d_to_ohwi(&w)?;
        assert_eq!(m.shape(), &[4, 2, 5, 3]);
        let (src, v) = (w.as_slice::<f32>(), m.as_slice::<f32>());
        for o in 0..4 {
            for y in 0..2 {
                for x in 0..5 {
                    for i in 0..3 {
                        assert_eq!(
                            v[at(&[4, 2, 5, 3], &[o, y, x, i])],
                            src[at(&shape, &[o, i, y, x])]
                        );
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn conv2d_ohwi_computes_the_pytorch_convolution() -> anyhow::Result<()> {
        // A hand-computed PyTorch-semantics conv (cross-correlation, OIHW kernel, NCHW input)
        // on integers: MLX's conv2d with the transformed kernel must give the same numbers.
        mlx_rs::Device::set_default(&mlx_rs::Device::cpu()); // full f32, no TF32
        let (o, i, k, h, w) = (2, 3, 3, 4, 5);
        let wt = iota(&[o, i, k, k]).multiply(Array::from_f32(0.01))?;
        let x_nchw = iota(&[1, i, h, w]).multiply(Array::from_f32(0.1))?;
        let x_nhwc = x_nchw.transpose_axes(&[0, 2, 3, 1])?;
        let y = mlx_rs::ops::conv2d(&x_nhwc, conv2d_to_ohwi(&wt)?, None, (1, 1), None, None)?;
        let (ws, xs, ys) = (
            wt.as_slice::<f32>(),
            x_nchw.as_slice::<f32>(),
            y.as_slice::<f32>(),
        );
        for oo in 0..o {
            for yy in 0..h {
                for xx in 0..w {
                    let mut acc = 0.0f64;
                    for ii in 0..i {
                        for dy in 0..k {
                            for dx in 0..k {
                                let (sy, sx) = (yy + dy - 1, xx + dx - 1);
                                if sy < 0 || sx < 0 || sy >= h || sx >= w {
                                    continue;
                                }
                                acc += ws[at(&[o, i, k, k], &[oo, ii, dy, dx])] as f64
                                    * xs[at(&[1, i, h, w], &[0, ii, sy, sx])] as f64;
                            }
                        }
                    }
                    let got = ys[at(&[1, h, w, o], &[0, yy, xx, oo])] as f64;
                    // f32 sums of ≤27 products of magnitude ≤ ~10: 1e-4 relative is ample.
                    assert!(
                        (got - acc).abs() <= 1e-4 * acc.abs().max(1.0),
                        "{got} vs {acc}"
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn checkpoint_shapes_match_the_diffusers_fixtures() -> anyhow::Result<()> {
        for model in ["tiny", "tiny_attn"] {
            let dir = std::path::Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../fixtures/data/vae"
            ))
            .join(model)
            .join("vae");
            let dir = if dir.exists() {
                dir
            } else {
                std::path::Path::new("fixtures/data/vae")
                    .join(model)
                    .join("vae")
            };
            let cfg = VaeConfig::from_dir(&dir)?;
            let t = mlx_weights::load_component(&dir)?;
            let got: BTreeMap<String, Vec<i32>> = t
                .keys()
                .map(|k| {
                    (
                        k.to_string(),
                        t.get(k).map(|a| a.shape().to_vec()).unwrap_or_default(),
                    )
                })
                .collect();
            let want = checkpoint_shapes(&cfg);
            let diff: Vec<_> = want
                .iter()
                .filter(|(k, v)| got.get(*k) != Some(v))
                .chain(got.iter().filter(|(k, _)| !want.contains_key(*k)))
                .collect();
            assert!(diff.is_empty(), "{model}: differs at {diff:?}");
        }
        Ok(())
    }

    #[test]
    fn norm_gamma_flattens_and_rejects_non_broadcast_shapes() -> anyhow::Result<()> {
        let g = iota(&[6, 1, 1, 1]);
        let v = norm_gamma_to_vector(&g)?;
        assert_eq!(v.shape(), &[6]);
        assert_eq!(v.as_slice::<f32>(), &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(norm_gamma_to_vector(&iota(&[6, 1, 1]))?.shape(), &[6]);
        assert!(norm_gamma_to_vector(&iota(&[6, 2, 1])).is_err());
        Ok(())
    }
}
