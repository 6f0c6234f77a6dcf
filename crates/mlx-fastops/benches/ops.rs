//! Criterion benches of each op through the dispatching entry points, on MLX's default
//! device: the CPU here (reference path, f32, small shapes), the GPU on the GPU machine
//! (fused kernels, bf16, DiT shapes). Group names `{op}/{dtype}/{shape}`; each iteration
//! evaluates its output before the clock stops.

use criterion::{Criterion, criterion_group, criterion_main};
use mlx_fastops as fo;
use mlx_rs::{Array, Dtype};

fn randn(shape: &[i32], seed: u64, dt: Dtype) -> Array {
    let key = mlx_rs::random::key(seed).expect("key");
    let a = mlx_rs::random::normal::<f32>(shape, None, None, &key)
        .and_then(|a| a.as_dtype(dt))
        .expect("randn");
    a.eval().expect("eval");
    a
}

fn setup() -> (Dtype, i32, &'static str) {
    if matches!(
        fo::current_backend(),
        fo::Backend::Cuda | fo::Backend::Metal
    ) {
        (Dtype::Bfloat16, 4224, "bf16")
    } else {
        (Dtype::Float32, 256, "f32")
    }
}

fn bench_ops(cr: &mut Criterion) {
    let (dt, l, dname) = setup();
    let c = 3072;
    let x = randn(&[1, l, c], 1, dt);
    let y = randn(&[1, l, c], 2, dt);
    let v = randn(&[1, c], 3, dt);
    let w = randn(&[c], 4, dt);

    let shape = format!("1x{l}x{c}");
    let mut g = cr.benchmark_group(format!("layer_norm_modulate/{dname}/{shape}"));
    g.bench_function("dispatch", |b| {
        b.iter(|| fo::layer_norm_modulate(&x, &v, &v, 1e-6).and_then(|o| Ok(o.eval()?)))
    });
    g.bench_function("reference", |b| {
        b.iter(|| fo::reference::layer_norm_modulate(&x, &v, &v, 1e-6).and_then(|o| Ok(o.eval()?)))
    });
    g.finish();

    let mut g = cr.benchmark_group(format!("gated_residual/{dname}/{shape}"));
    g.bench_function("dispatch", |b| {
        b.iter(|| fo::gated_residual(&x, &v, &y).and_then(|o| Ok(o.eval()?)))
    });
    g.bench_function("reference", |b| {
        b.iter(|| fo::reference::gated_residual(&x, &v, &y).and_then(|o| Ok(o.eval()?)))
    });
    g.finish();

    let q = mlx_rs::ops::reshape(&x, &[1, 24, l, 128]).expect("reshape");
    let theta = randn(&[l, 64], 5, Dtype::Float32);
    let cos = mlx_rs::ops::cos(&theta).expect("cos");
    let sin = mlx_rs::ops::sin(&theta).expect("sin");
    let mut g = cr.benchmark_group(format!("apply_rope/{dname}/1x24x{l}x128"));
    g.bench_function("dispatch", |b| {
        b.iter(|| fo::apply_rope(&q, &cos, &sin).and_then(|o| Ok(o.eval()?)))
    });
    g.bench_function("reference", |b| {
        b.iter(|| fo::reference::apply_rope(&q, &cos, &sin).and_then(|o| Ok(o.eval()?)))
    });
    g.finish();

    let mut g = cr.benchmark_group(format!("norms/{dname}/{shape}"));
    g.bench_function("layer_norm", |b| {
        b.iter(|| fo::layer_norm(&x, 1e-6).and_then(|o| Ok(o.eval()?)))
    });
    g.bench_function("rms_norm", |b| {
        b.iter(|| fo::rms_norm(&x, &w, 1e-6).and_then(|o| Ok(o.eval()?)))
    });
    g.bench_function("gelu_tanh", |b| {
        b.iter(|| fo::gelu_tanh(&x).and_then(|o| Ok(o.eval()?)))
    });
    g.finish();

    let (h, lq) = if dt == Dtype::Bfloat16 {
        (24, 4224)
    } else {
        (4, 256)
    };
    let qa = randn(&[1, h, lq, 128], 6, dt);
    let mut g = cr.benchmark_group(format!("sdpa/{dname}/1x{h}x{lq}x128"));
    g.sample_size(10);
    g.bench_function("sdpa", |b| {
        b.iter(|| fo::sdpa(&qa, &qa, &qa, 0.088, None).and_then(|o| Ok(o.eval()?)))
    });
    g.finish();
}

criterion_group!(benches, bench_ops);
criterion_main!(benches);
