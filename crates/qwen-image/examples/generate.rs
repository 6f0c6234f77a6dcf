//! Loads a checkpoint and writes a PNG: the library in ten lines.
//!
//! `cargo run -p qwen-image --example generate -- MODEL OUT.png [PROMPT]`, e.g. with the tiny
//! fixture: `cargo run -p qwen-image --example generate -- fixtures/data/pipeline/tiny fox.png`.

use qwen_image::{GenerateRequest, Noise, PipelineOptions, QwenImagePipeline};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (model, out) = match (args.next(), args.next()) {
        (Some(m), Some(o)) => (m, o),
        _ => return Err("usage: generate MODEL OUT.png [PROMPT]".into()),
    };
    let prompt = args
        .next()
        .unwrap_or_else(|| "a red fox in the snow, watercolor".into());

    let dir = qwen_image::hub::resolve_model(&model, &qwen_image::hub::HubEnv::from_process())?;
    let mut pipe = QwenImagePipeline::load(&dir, PipelineOptions::default())?;
    let mut req = GenerateRequest::new(prompt);
    (req.width, req.height, req.steps) = (128, 96, 4);
    req.negative_prompt = Some(" ".into());
    req.noise = Noise::Seed(7);
    let images = pipe.generate(&req)?;
    qwen_image::output::write_png(out.as_ref(), &images[0])?;
    println!("wrote {out}");
    Ok(())
}
