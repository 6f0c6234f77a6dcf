//! Criterion bench: encode one prompt with the tiny fixture model (f32, CPU by default).
//!
//! Group name `{op}/{dtype}/{shape}`: `encode_prompt/f32/tiny-h64-l2`. The output is evaluated
//! before the clock stops (MLX is lazy). Tokenization is included, as in the pipeline.

use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use mlx_rs::Dtype;
use qwen_text_encoder::TextEncoder;

fn fixture(rel: &str) -> PathBuf {
    let here = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/data/text_encoder"
    ))
    .join(rel);
    if here.exists() {
        here
    } else {
        PathBuf::from("fixtures/data/text_encoder").join(rel)
    }
}

fn bench(c: &mut Criterion) {
    let enc = TextEncoder::load(
        &fixture("tiny/text_encoder"),
        &fixture("tiny/tokenizer"),
        Dtype::Float32,
    )
    .expect("tiny fixture loads");
    let prompt = "A cat sitting on a mat in the sun, watercolor style, pastel colors, with a sign";
    let mut g = c.benchmark_group("encode_prompt/f32/tiny-h64-l2");
    g.bench_function("batch1", |b| {
        b.iter(|| {
            let out = enc.encode_prompts(&[prompt], 512).expect("encodes");
            mlx_rs::transforms::eval([&out.embeds, &out.mask]).expect("evaluates");
            out
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
