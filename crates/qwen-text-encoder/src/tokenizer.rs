//! Qwen2's byte-level BPE tokenizer, as transformers' `Qwen2Tokenizer` (5.23) builds it.
//!
//! Mirrors `transformers/models/qwen2/tokenization_qwen2.py`. A checkpoint's `tokenizer/`
//! folder has either a `tokenizer.json` (loaded as is with the `tokenizers` crate), or only
//! `vocab.json` + `merges.txt` + `tokenizer_config.json`; the pipeline is then rebuilt here:
//! NFC normalisation; pre-tokenisation by Qwen2's split regex ([`PRETOKENIZE_REGEX`], isolated
//! pieces) followed by the GPT-2 byte-to-unicode mapping (no prefix space); a BPE model without
//! unknown token, dropout or subword affixes; the added/special tokens of
//! `tokenizer_config.json`'s `added_tokens_decoder` (matched before normalisation, with their
//! declared ids). No BOS/EOS is added.
//!
//! Padding and truncation follow `tokenizer_config.json` (`padding_side`, `truncation_side`,
//! `pad_token`), defaulting to transformers' right/right and Qwen2's `<|endoftext|>`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::error::{Result, TextEncoderError};

/// Qwen2's pre-tokenizer split regex (`PRETOKENIZE_REGEX` in `tokenization_qwen2.py`).
pub const PRETOKENIZE_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2Tokenizer's default padding token.
pub const DEFAULT_PAD_TOKEN: &str = "<|endoftext|>";

/// Which end of a sequence padding or truncation applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The start of the sequence.
    Left,
    /// The end of the sequence (transformers' default).
    Right,
}

impl Side {
    fn parse(value: Option<&Value>, key: &str) -> Result<Self> {
        match value.and_then(Value::as_str) {
            None => Ok(Side::Right),
            Some("right") => Ok(Side::Right),
            Some("left") => Ok(Side::Left),
            Some(other) => Err(TextEncoderError::Tokenizer(format!(
                "{key} must be \"left\" or \"right\", not {other:?}"
            ))),
        }
    }
}

/// A padded batch of token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Token ids, each row padded to the longest row.
    pub input_ids: Vec<Vec<u32>>,
    /// `true` for real tokens, `false` for padding.
    pub attention_mask: Vec<Vec<bool>>,
    /// Whether each row was truncated to `max_length`.
    pub truncated: Vec<bool>,
}

/// Qwen2 tokenizer (byte-level BPE) with transformers' padding and truncation behaviour.
#[derive(Debug, Clone)]
pub struct QwenTokenizer {
    inner: Tokenizer,
    pad_id: u32,
    padding_side: Side,
    truncation_side: Side,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| TextEncoderError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| TextEncoderError::json(path, e))
}

fn tk_err(what: &str) -> impl Fn(tokenizers::Error) -> TextEncoderError + '_ {
    move |e| TextEncoderError::Tokenizer(format!("{what}: {e}"))
}

/// The content of a token entry in `tokenizer_config.json` (a string, or an `AddedToken` dict).
fn token_content(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// One entry of `added_tokens_decoder`.
#[derive(Debug, Clone)]
struct AddedEntry {
    id: u32,
    token: AddedToken,
}

fn added_entries(dir: &Path, config: &Value) -> Result<Vec<AddedEntry>> {
    let flag = |o: &serde_json::Map<String, Value>, k: &str, d: bool| {
        o.get(k).and_then(Value::as_bool).unwrap_or(d)
    };
    let mut out = Vec::new();
    if let Some(decoder) = config
        .get("added_tokens_decoder")
        .and_then(Value::as_object)
    {
        for (id, entry) in decoder {
            let id: u32 = id.parse().map_err(|_| {
                TextEncoderError::Tokenizer(format!(
                    "added_tokens_decoder id {id:?} is not a number"
                ))
            })?;
            let o = entry.as_object().ok_or_else(|| {
                TextEncoderError::Tokenizer(format!("added_tokens_decoder[{id}] is not an object"))
            })?;
            let content = o.get("content").and_then(Value::as_str).ok_or_else(|| {
                TextEncoderError::Tokenizer(format!("added_tokens_decoder[{id}] has no content"))
            })?;
            let special = flag(o, "special", false);
            let token = AddedToken::from(content.to_string(), special)
                .single_word(flag(o, "single_word", false))
                .lstrip(flag(o, "lstrip", false))
                .rstrip(flag(o, "rstrip", false))
                .normalized(flag(o, "normalized", !special));
            out.push(AddedEntry { id, token });
        }
    } else {
        // Legacy layout: `added_tokens.json` maps content → id; treat them as special tokens.
        let legacy = dir.join("added_tokens.json");
        if legacy.exists() {
            let map: BTreeMap<String, u32> = serde_json::from_value(read_json(&legacy)?)
                .map_err(|e| TextEncoderError::json(&legacy, e))?;
            for (content, id) in map {
                let token = AddedToken::from(content, true).normalized(false);
                out.push(AddedEntry { id, token });
            }
        }
    }
    out.sort_by_key(|e| e.id);
    Ok(out)
}

/// Builds Qwen2's tokenizer pipeline from `vocab.json` + `merges.txt`.
fn build_from_vocab_merges(dir: &Path, added: &[AddedEntry]) -> Result<Tokenizer> {
    let vocab_path = dir.join("vocab.json");
    let merges_path = dir.join("merges.txt");
    for p in [&vocab_path, &merges_path] {
        if !p.exists() {
            return Err(TextEncoderError::Tokenizer(format!(
                "{} not found (and no tokenizer.json)",
                p.display()
            )));
        }
    }
    let (vocab, merges) = BPE::read_file(
        &vocab_path.to_string_lossy(),
        &merges_path.to_string_lossy(),
    )
    .map_err(tk_err("reading vocab.json/merges.txt"))?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix(String::new())
        .fuse_unk(false)
        .byte_fallback(false)
        .build()
        .map_err(tk_err("building the BPE model"))?;
    let split = Split::new(
        SplitPattern::Regex(PRETOKENIZE_REGEX.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(tk_err("compiling the split regex"))?;
    let pre = Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
    ]);
    let mut tk = Tokenizer::new(bpe);
    tk.with_normalizer(Some(NFC))
        .with_pre_tokenizer(Some(pre))
        .with_decoder(Some(ByteLevelDecoder::default()));
    // Added tokens get the next free ids in the order added: add them by id and check below
    // that each got the id the config declares.
    for e in added {
        if e.token.special {
            tk.add_special_tokens(std::slice::from_ref(&e.token));
        } else {
            tk.add_tokens(std::slice::from_ref(&e.token));
        }
    }
    Ok(tk)
}

impl QwenTokenizer {
    /// Loads a checkpoint's `tokenizer/` folder: `tokenizer.json` when present, else
    /// `vocab.json` + `merges.txt`; `tokenizer_config.json` (optional) gives the added tokens,
    /// padding/truncation sides and the padding token.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("tokenizer_config.json");
        let config = if cfg_path.exists() {
            read_json(&cfg_path)?
        } else {
            Value::Object(Default::default())
        };
        let added = added_entries(dir, &config)?;
        let json = dir.join("tokenizer.json");
        let inner = if json.exists() {
            let mut tk = Tokenizer::from_file(&json).map_err(tk_err("reading tokenizer.json"))?;
            // transformers adds the config's added tokens on top of tokenizer.json's own.
            for e in &added {
                if tk.token_to_id(&e.token.content).is_none() {
                    if e.token.special {
                        tk.add_special_tokens(std::slice::from_ref(&e.token));
                    } else {
                        tk.add_tokens(std::slice::from_ref(&e.token));
                    }
                }
            }
            tk
        } else {
            build_from_vocab_merges(dir, &added)?
        };
        for e in &added {
            let got = inner.token_to_id(&e.token.content);
            if got != Some(e.id) {
                return Err(TextEncoderError::Tokenizer(format!(
                    "added token {:?} declared with id {} but the vocabulary gives {got:?}",
                    e.token.content, e.id
                )));
            }
        }
        let pad_token = match config.get("pad_token") {
            Some(Value::Null) => None,
            Some(v) => token_content(v),
            None => Some(DEFAULT_PAD_TOKEN.to_string()),
        };
        // Without a padding token transformers refuses to pad; the id is only used to fill
        // masked positions, which never influence real tokens, so fall back to 0.
        let pad_id = pad_token
            .as_deref()
            .and_then(|t| inner.token_to_id(t))
            .unwrap_or(0);
        Ok(Self {
            inner,
            pad_id,
            padding_side: Side::parse(config.get("padding_side"), "padding_side")?,
            truncation_side: Side::parse(config.get("truncation_side"), "truncation_side")?,
        })
    }

    /// Token ids of `text` as `tokenizer(text)["input_ids"]` gives them (no BOS/EOS for Qwen2).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, true).map_err(tk_err("encoding"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids back to text (byte-level decoding; special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(tk_err("decoding"))
    }

    /// The id of `token` when it is in the vocabulary or an added token.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The padding side (`padding_side` of `tokenizer_config.json`).
    pub fn padding_side(&self) -> Side {
        self.padding_side
    }

    /// The truncation side (`truncation_side` of `tokenizer_config.json`).
    pub fn truncation_side(&self) -> Side {
        self.truncation_side
    }

    /// The id used to fill padded positions.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// `tokenizer(texts, max_length=max_length, padding=True, truncation=True)`: each text is
    /// encoded, truncated to `max_length` on the truncation side, and padded to the longest
    /// row on the padding side.
    pub fn encode_batch(&self, texts: &[&str], max_length: usize) -> Result<Batch> {
        let mut rows = Vec::with_capacity(texts.len());
        let mut truncated = Vec::with_capacity(texts.len());
        for t in texts {
            let mut ids = self.encode(t)?;
            let cut = ids.len() > max_length;
            if cut {
                match self.truncation_side {
                    Side::Right => ids.truncate(max_length),
                    Side::Left => {
                        ids.drain(..ids.len() - max_length);
                    }
                }
            }
            truncated.push(cut);
            rows.push(ids);
        }
        let longest = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut input_ids = Vec::with_capacity(rows.len());
        let mut attention_mask = Vec::with_capacity(rows.len());
        for ids in rows {
            let pad = longest - ids.len();
            let (mut r, mut m) = (Vec::with_capacity(longest), Vec::with_capacity(longest));
            if self.padding_side == Side::Left {
                r.extend(std::iter::repeat_n(self.pad_id, pad));
                m.extend(std::iter::repeat_n(false, pad));
            }
            m.extend(std::iter::repeat_n(true, ids.len()));
            r.extend(ids);
            if self.padding_side == Side::Right {
                r.extend(std::iter::repeat_n(self.pad_id, pad));
                m.extend(std::iter::repeat_n(false, pad));
            }
            input_ids.push(r);
            attention_mask.push(m);
        }
        Ok(Batch {
            input_ids,
            attention_mask,
            truncated,
        })
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}
