//! A pipeline over the tiny checkpoint whose component builds are logged (what is loaded, and
//! when), for the tests of staging, residency and cancellation.
#![allow(dead_code)]

use super::common::fixtures;

/// Builders that load the components of a checkpoint folder and record each build in `log`
/// (to check what a pipeline loads, and when).
pub fn logged_builders(
    paths: &qwen_image::ComponentPaths,
    log: &std::rc::Rc<std::cell::RefCell<Vec<&'static str>>>,
) -> qwen_image::ComponentBuilders {
    let (l1, l2, l3) = (log.clone(), log.clone(), log.clone());
    let (p1, p2, p3) = (paths.clone(), paths.clone(), paths.clone());
    qwen_image::ComponentBuilders {
        text_encoder: Box::new(move |dt| {
            l1.borrow_mut().push("text_encoder");
            Ok(qwen_text_encoder::TextEncoder::load(
                &p1.text_encoder,
                &p1.tokenizer,
                dt,
            )?)
        }),
        transformer: Box::new(move |dt| {
            l2.borrow_mut().push("transformer");
            Ok(qwen_dit::QwenImageTransformer::load(
                &p2.transformer,
                dt,
                None,
            )?)
        }),
        vae: Box::new(move |dt| {
            l3.borrow_mut().push("vae");
            Ok(qwen_vae::QwenImageVae::load(&p3.vae, dt)?)
        }),
        edit_encoder: None,
    }
}

/// A small true-CFG request on the tiny checkpoint.
pub fn request() -> qwen_image::GenerateRequest {
    let mut req = qwen_image::GenerateRequest::new("A cat sitting on a mat");
    req.negative_prompt = Some("blurry".into());
    req.steps = 4;
    req.width = 48;
    req.height = 32;
    req.noise = qwen_image::Noise::Seed(11);
    req
}

/// A pipeline over the tiny checkpoint whose builds are logged, and the log.
pub fn logged(
    residency: qwen_image::Residency,
) -> anyhow::Result<(
    qwen_image::QwenImagePipeline,
    std::rc::Rc<std::cell::RefCell<Vec<&'static str>>>,
)> {
    let options = qwen_image::PipelineOptions {
        residency,
        ..qwen_image::PipelineOptions::default()
    };
    let disk = qwen_image::QwenImagePipeline::load(&fixtures().join("tiny"), options.clone())?;
    let paths = disk.paths().expect("folder pipeline").clone();
    let log: std::rc::Rc<std::cell::RefCell<Vec<&'static str>>> = Default::default();
    let pipe = qwen_image::QwenImagePipeline::from_builders(
        disk.configs().clone(),
        options,
        logged_builders(&paths, &log),
    )?;
    Ok((pipe, log))
}
