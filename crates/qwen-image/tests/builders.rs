//! A pipeline assembled from in-memory components (`QwenImagePipeline::from_builders`, what
//! the full-size benchmark uses with random weights) runs exactly as the one read from the
//! checkpoint folder: same image, bit for bit, and the same memory staging (text encoder built
//! and dropped before the transformer is built; VAE built after denoising).

mod common;
mod logged;

use std::cell::RefCell;
use std::rc::Rc;

use common::*;
use logged::*;
use qwen_image::{ComponentBuilders, GenerateRequest, Noise, PipelineOptions, QwenImagePipeline};

#[test]
fn builders_match_the_folder_pipeline_and_keep_the_staging() -> anyhow::Result<()> {
    let dir = fixtures().join("tiny");
    let options = PipelineOptions {
        dtype: qwen_image::ComputeDtype::F32,
        quantize: None,
        residency: qwen_image::Residency::Staged,
        activation_budget: qwen_image::ActivationBudget::Auto,
    };
    let mut req = GenerateRequest::new("A cat sitting on a mat");
    req.negative_prompt = Some("blurry".into());
    req.steps = 3;
    req.width = 48;
    req.height = 32;
    req.noise = Noise::Seed(5);

    let mut from_disk = QwenImagePipeline::load(&dir, options.clone())?;
    let want = from_disk.generate(&req)?;
    let configs = from_disk.configs().clone();
    let paths = from_disk
        .paths()
        .expect("a folder pipeline has paths")
        .clone();
    drop(from_disk);

    let log: Rc<RefCell<Vec<&'static str>>> = Rc::default();
    let builders = logged_builders(&paths, &log);
    let mut in_memory = QwenImagePipeline::from_builders(configs, options, builders)?;
    assert!(in_memory.paths().is_none());
    let got = in_memory.generate(&req)?;
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!((g.width, g.height), (w.width, w.height));
        assert!(g.data == w.data, "in-memory components gave another image");
    }
    assert_eq!(*log.borrow(), ["text_encoder", "transformer", "vae"]);
    // Residency::Staged: a second generation builds every component again.
    in_memory.generate(&req)?;
    assert_eq!(log.borrow().len(), 6);
    Ok(())
}

#[test]
fn builders_reject_components_that_do_not_fit() -> anyhow::Result<()> {
    let pipe = QwenImagePipeline::load(&fixtures().join("tiny"), PipelineOptions::default())?;
    let mut configs = pipe.configs().clone();
    configs.text.hidden_size += 1;
    let never = || -> ComponentBuilders {
        ComponentBuilders {
            text_encoder: Box::new(|_| unreachable!()),
            transformer: Box::new(|_| unreachable!()),
            vae: Box::new(|_| unreachable!()),
            edit_encoder: None,
        }
    };
    let err = QwenImagePipeline::from_builders(configs, PipelineOptions::default(), never())
        .expect_err("text width differs from the transformer's joint dim");
    assert!(err.to_string().contains("do not fit"), "{err}");
    Ok(())
}
