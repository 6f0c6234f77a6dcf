//! Criterion benches: building a schedule (plain Rust) and one Euler step (MLX).

use criterion::{Criterion, criterion_group, criterion_main};
use flow_scheduler::{FlowMatchEulerScheduler, SchedulerConfig};
use mlx_rs::{Dtype, random};
use std::hint::black_box;

fn bench_set_timesteps(c: &mut Criterion) {
    let mut sched = FlowMatchEulerScheduler::new(SchedulerConfig::qwen_image()).expect("config");
    let mu = sched.mu(6889).expect("mu");
    let mut group = c.benchmark_group("set_timesteps/f32/n50");
    group.bench_function("qwen-image", |b| {
        b.iter(|| {
            sched
                .set_timesteps(black_box(50), Some(mu))
                .expect("schedule");
            black_box(sched.sigmas()[1])
        })
    });
    group.finish();
}

fn bench_step(c: &mut Criterion) {
    let mut sched = FlowMatchEulerScheduler::new(SchedulerConfig::qwen_image()).expect("config");
    let seq = 4096; // 1024² image: (1024/16)²
    let mu = sched.mu(seq).expect("mu");
    sched.set_timesteps(50, Some(mu)).expect("schedule");
    for (name, dtype) in [("f32", Dtype::Float32), ("bf16", Dtype::Bfloat16)] {
        let shape = [1, seq as i32, 64];
        let x = random::normal::<f32>(&shape, None, None, None)
            .and_then(|a| a.as_dtype(dtype))
            .expect("sample");
        let v = random::normal::<f32>(&shape, None, None, None)
            .and_then(|a| a.as_dtype(dtype))
            .expect("model output");
        x.eval().expect("eval");
        v.eval().expect("eval");
        let mut group = c.benchmark_group(format!("step/{name}/1x{seq}x64"));
        group.bench_function("euler", |b| {
            b.iter(|| {
                let out = sched.step(&v, 10, &x).expect("step");
                out.eval().expect("eval"); // MLX is lazy: evaluate before stopping the clock
                out
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench_set_timesteps, bench_step);
criterion_main!(benches);
