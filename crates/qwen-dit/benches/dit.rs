//! Criterion benches of the Qwen-Image transformer: one dual-stream block and the full
//! forward, at a small config (runs on CPU in CI) and — with `QWEN_DIT_BENCH_FULL=1`, for
//! the GPU machine — at the real size (random weights; the work does not depend on them).
//!
//! Groups: `{op}/{dtype}/{shape}`, shape = `d{inner}_l{layers}_n{image tokens}_t{text tokens}`.
//! Every measured closure evaluates its outputs before the clock stops (MLX is lazy).

use criterion::{Criterion, criterion_group, criterion_main};
use mlx_rs::{Array, Dtype, random};
use qwen_dit::{QuantizeSpec, QwenImageTransformer, QwenImageTransformerConfig, RopeTables};

struct Setup {
    model: QwenImageTransformer,
    rope: RopeTables,
    x: Array,
    ctx: Array,
    img: Array,
    txt: Array,
    t: Array,
    name: String,
}

fn setup(
    cfg: QwenImageTransformerConfig,
    dtype: Dtype,
    grid: (usize, usize),
    txt_len: usize,
) -> Setup {
    let (h, w) = grid;
    let n = (h * w) as i32;
    let t = txt_len as i32;
    let d = cfg.inner_dim() as i32;
    let k = random::key(0).unwrap();
    let norm = |shape: &[i32]| {
        random::normal::<f32>(shape, None, None, &k)
            .unwrap()
            .as_dtype(dtype)
            .unwrap()
    };
    let name = format!("{dtype:?}/d{d}_l{}_n{n}_t{t}", cfg.num_layers).to_lowercase();
    let s = Setup {
        rope: RopeTables::new(&cfg, &[(1, h, w)], txt_len).unwrap(),
        x: norm(&[1, n, cfg.in_channels as i32]),
        ctx: norm(&[1, t, cfg.joint_attention_dim as i32]),
        img: norm(&[1, n, d]),
        txt: norm(&[1, t, d]),
        t: Array::from_slice(&[0.5f32], &[1]),
        model: QwenImageTransformer::random(cfg, dtype, 0).unwrap(),
        name,
    };
    for a in [&s.x, &s.ctx, &s.img, &s.txt] {
        a.eval().unwrap();
    }
    s
}

fn run(c: &mut Criterion, s: &Setup, full_forward: bool) {
    c.bench_function(&format!("block/{}", s.name), |b| {
        b.iter(|| {
            let (i, t) = s
                .model
                .forward_block(0, &s.img, &s.txt, None, &s.t, &s.rope)
                .unwrap();
            mlx_rs::transforms::eval([&i, &t]).unwrap();
        })
    });
    if full_forward {
        c.bench_function(&format!("forward/{}", s.name), |b| {
            b.iter(|| {
                let y = s.model.forward(&s.x, &s.ctx, None, &s.t, &s.rope).unwrap();
                y.eval().unwrap();
            })
        });
    }
}

fn small(c: &mut Criterion) {
    let cfg = QwenImageTransformerConfig {
        num_layers: 2,
        attention_head_dim: 64,
        num_attention_heads: 4,
        joint_attention_dim: 256,
        axes_dims_rope: vec![16, 24, 24],
        ..Default::default()
    };
    for dtype in [Dtype::Float32, Dtype::Bfloat16] {
        let s = setup(cfg.clone(), dtype, (16, 16), 32);
        run(c, &s, true);
    }
}

fn full(c: &mut Criterion) {
    if std::env::var("QWEN_DIT_BENCH_FULL").as_deref() != Ok("1") {
        return;
    }
    // Qwen-Image at 1024×1024 (64×64 tokens) with a 32-token prompt, bf16, then the same
    // weights quantized to 8 and 4 bits (group 64).
    let cfg = QwenImageTransformerConfig::default();
    let mut s = setup(cfg, Dtype::Bfloat16, (64, 64), 32);
    run(c, &s, true);
    let float = s.model.clone();
    for bits in [8, 4] {
        let mut q = float.clone();
        q.quantize(&QuantizeSpec::new(bits)).unwrap();
        s.model = q;
        s.name = s.name.replace("bfloat16", &format!("bfloat16-q{bits}"));
        run(c, &s, true);
        s.name = s.name.replace(&format!("bfloat16-q{bits}"), "bfloat16");
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = small, full
}
criterion_main!(benches);
