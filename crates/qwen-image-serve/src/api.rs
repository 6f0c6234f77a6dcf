//! The HTTP API's JSON: the images request (OpenAI's `POST /v1/images/generations` shape plus
//! Qwen-Image's own fields), its translation into a [`GenerateRequest`] checked with the same
//! rules as the command line, and the JSON errors that name the field at fault.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use qwen_image::{
    CheckpointConfigs, Field, GenerateRequest, InitImage, Noise, PipelineError, SchedulerOverrides,
};
use serde::Deserialize;

/// Default image side when a request gives no size and no picture (as the command line).
pub const DEFAULT_SIDE: usize = 1024;
/// Default denoising steps (as the command line and diffusers).
pub const DEFAULT_STEPS: usize = 50;
/// Default true-CFG scale (as the command line and diffusers).
pub const DEFAULT_TRUE_CFG_SCALE: f32 = 4.0;

/// An error answered as `{"error": {"message", "type", "param", "code"}}` (OpenAI's shape).
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, in words.
    pub message: String,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    /// Seconds to wait before retrying (429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A 400 naming `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: Some(param.to_string()),
            retry_after: None,
        }
    }

    /// An error without a field.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
            retry_after: None,
        }
    }

    /// OpenAI's error `type` for the status.
    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            StatusCode::PAYLOAD_TOO_LARGE => "invalid_request_error",
            StatusCode::CONFLICT => "cancelled",
            s if s.is_client_error() => "invalid_request_error",
            _ => "server_error",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind(),
                "param": self.param,
                "code": self.status.as_u16(),
            }
        })
    }

    /// A pipeline error: requests it refuses are 400s naming the field, the rest 500s.
    pub fn from_pipeline(e: &PipelineError) -> Self {
        match e {
            PipelineError::InvalidRequest { field, msg } => Self::invalid(param_of(*field), msg),
            PipelineError::InputImage { path, msg } => {
                Self::invalid(&path.display().to_string(), msg)
            }
            PipelineError::Cancelled => Self::new(StatusCode::CONFLICT, "the job was cancelled"),
            e => Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, axum::Json(self.body())).into_response();
        if let Some(v) = self
            .retry_after
            .and_then(|s| HeaderValue::from_str(&s.to_string()).ok())
        {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

/// The API field a request field comes from.
pub fn param_of(field: Field) -> &'static str {
    match field {
        Field::Prompt => "prompt",
        Field::NegativePrompt => "negative_prompt",
        Field::TrueCfgScale => "true_cfg_scale",
        Field::Steps => "steps",
        Field::Width | Field::Height => "size",
        Field::NumImages => "n",
        Field::Noise => "seed",
        Field::Image | Field::ImageNoise | Field::EditImages => "image",
        Field::Mask => "mask",
        Field::Strength => "strength",
        // Not settable through the API: the server's own configuration.
        Field::MaxSequenceLength | Field::VaeTiling | Field::Quantize => "server",
    }
}

/// How images come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFormat {
    /// Base64 PNG in the JSON.
    B64Json,
    /// A URL of this server (`/v1/jobs/{id}/images/{i}`).
    Url,
}

/// `POST /v1/images/generations` (and `POST /v1/jobs`): OpenAI's fields (`prompt`, `n`,
/// `size`, `response_format`, `model`, `user`) and Qwen-Image's. Unknown fields are refused,
/// so a misspelt parameter is not silently ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesRequest {
    /// The prompt.
    pub prompt: String,
    /// Number of images (1..=64), each with seed + index.
    #[serde(default = "one")]
    pub n: usize,
    /// `"WIDTHxHEIGHT"` (multiples of 16) or `"auto"`: the input picture's aspect ratio at
    /// about 1024² when one is given, else 1024×1024.
    #[serde(default)]
    pub size: Option<String>,
    /// `"b64_json"` (default) or `"url"`.
    #[serde(default)]
    pub response_format: Option<String>,
    /// Must name the served model when given.
    #[serde(default)]
    pub model: Option<String>,
    /// OpenAI's end-user id; accepted and ignored.
    #[serde(default)]
    pub user: Option<String>,
    /// The negative prompt (true CFG runs with one and `true_cfg_scale` > 1).
    #[serde(default)]
    pub negative_prompt: Option<String>,
    /// Denoising steps (default 50).
    #[serde(default, alias = "num_inference_steps")]
    pub steps: Option<usize>,
    /// True CFG scale (default 4).
    #[serde(default)]
    pub true_cfg_scale: Option<f32>,
    /// Seed of image 0 (random when absent).
    #[serde(default)]
    pub seed: Option<u64>,
    /// A picture to start from (img2img): base64 PNG/JPEG/WebP, or a `data:` URL.
    #[serde(default)]
    pub image: Option<String>,
    /// An inpainting mask (white = repaint), as `image`.
    #[serde(default)]
    pub mask: Option<String>,
    /// How much of the picture to change, in (0, 1] (default 0.6).
    #[serde(default)]
    pub strength: Option<f64>,
}

fn one() -> usize {
    1
}

/// What the server fixes for every request.
#[derive(Debug, Clone)]
pub struct ServerDefaults {
    /// The model's name (what `model` must say when given).
    pub model: String,
    /// The checkpoint's configs (sizes, scheduler).
    pub configs: CheckpointConfigs,
    /// Name and scale of each LoRA merged into the served transformer (the worker adds the
    /// LoRAs themselves to every request).
    pub loras: Vec<(String, f32)>,
    /// Scheduler overrides of every request.
    pub scheduler_overrides: Option<SchedulerOverrides>,
}

/// A parsed and checked request.
#[derive(Debug)]
pub struct Checked {
    /// What the pipeline runs.
    pub request: GenerateRequest,
    /// How images come back.
    pub format: ResponseFormat,
    /// The resolved parameters, for job views and PNG records.
    pub params: serde_json::Value,
}

/// Parses a JSON body: errors name the field (its path) that did not parse.
pub fn parse(body: &[u8]) -> Result<ImagesRequest, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("the body is not a valid images request: {inner}"),
            )
        } else {
            ApiError::invalid(&path, inner.to_string())
        }
    })
}

/// Decodes a base64 picture (plain, or a `data:image/…;base64,` URL).
fn decode_picture(param: &str, text: &str) -> Result<qwen_image::Image, ApiError> {
    let data = match text.strip_prefix("data:") {
        Some(rest) => match rest.split_once(";base64,") {
            Some((_, d)) => d,
            None => {
                return Err(ApiError::invalid(
                    param,
                    "a data: URL must be base64 (;base64,)",
                ));
            }
        },
        None => text,
    };
    let compact: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = STANDARD.decode(compact.as_bytes()).map_err(|e| {
        ApiError::invalid(
            param,
            format!("not base64 image data ({e}); images are sent inline, never as paths"),
        )
    })?;
    let loaded = qwen_image::image_input::decode_image(&bytes, param)
        .map_err(|e| ApiError::from_pipeline(&e))?;
    Ok(loaded.image)
}

/// `"1024x768"` → (1024, 768).
fn parse_size(size: &str) -> Result<(usize, usize), ApiError> {
    let bad = || {
        ApiError::invalid(
            "size",
            format!("{size:?} is not WIDTHxHEIGHT (e.g. \"1024x1024\") or \"auto\""),
        )
    };
    let (w, h) = size.split_once(['x', 'X', '×']).ok_or_else(bad)?;
    let w = w.trim().parse::<usize>().map_err(|_| bad())?;
    let h = h.trim().parse::<usize>().map_err(|_| bad())?;
    Ok((w, h))
}

impl ImagesRequest {
    /// The request the pipeline runs, checked as the command line checks it (limits, then
    /// the checkpoint's rules); `seed` is used when the request has none.
    pub fn check(self, defaults: &ServerDefaults, seed: u64) -> Result<Checked, ApiError> {
        let format = match self.response_format.as_deref() {
            None | Some("b64_json") => ResponseFormat::B64Json,
            Some("url") => ResponseFormat::Url,
            Some(other) => {
                return Err(ApiError::invalid(
                    "response_format",
                    format!("{other:?} is not supported: use \"b64_json\" or \"url\""),
                ));
            }
        };
        if let Some(m) = self.model.as_ref().filter(|m| **m != defaults.model) {
            return Err(ApiError::invalid(
                "model",
                format!(
                    "{m:?}: this server serves {:?} only (see GET /v1/models)",
                    defaults.model
                ),
            ));
        }
        if self.mask.is_some() && self.image.is_none() {
            return Err(ApiError::invalid("mask", "a mask needs an image"));
        }
        if self.strength.is_some() && self.image.is_none() {
            return Err(ApiError::invalid(
                "strength",
                "strength applies to an image (img2img)",
            ));
        }
        let image = self
            .image
            .as_deref()
            .map(|t| decode_picture("image", t))
            .transpose()?;
        let mask = self
            .mask
            .as_deref()
            .map(|t| decode_picture("mask", t))
            .transpose()?;
        let (width, height) = match (self.size.as_deref(), &image) {
            (Some(s), _) if s != "auto" => parse_size(s)?,
            (_, Some(img)) => qwen_image::image_input::fit_to_area(
                img.width,
                img.height,
                1 << 20,
                defaults.configs.size_multiple(),
            ),
            _ => (DEFAULT_SIDE, DEFAULT_SIDE),
        };
        let seed = self.seed.unwrap_or(seed);
        let mut req = GenerateRequest::new(self.prompt.clone());
        req.negative_prompt = self.negative_prompt.clone();
        req.true_cfg_scale = self.true_cfg_scale.unwrap_or(DEFAULT_TRUE_CFG_SCALE);
        req.steps = self.steps.unwrap_or(DEFAULT_STEPS);
        req.width = width;
        req.height = height;
        req.num_images = self.n;
        req.noise = Noise::Seed(seed);
        req.scheduler_overrides = defaults.scheduler_overrides.clone();
        req.init_image = image.map(|image| InitImage {
            image,
            mask,
            strength: self
                .strength
                .unwrap_or(qwen_image::img2img::DEFAULT_STRENGTH),
            image_noise: None,
            noise_seed: seed,
        });
        qwen_image::request::check_limits(&req).map_err(|e| ApiError::from_pipeline(&e))?;
        qwen_image::request::validate(&req, &defaults.configs)
            .map_err(|e| ApiError::from_pipeline(&e))?;
        let params = serde_json::json!({
            "prompt": req.prompt,
            "negative_prompt": req.negative_prompt,
            "n": req.num_images,
            "size": format!("{}x{}", req.width, req.height),
            "steps": req.steps,
            "true_cfg_scale": req.true_cfg_scale,
            "seed": seed,
            "img2img": req.init_image.is_some(),
            "inpainting": req.init_image.as_ref().is_some_and(|i| i.mask.is_some()),
            "strength": req.init_image.as_ref().map(|i| i.strength),
        });
        Ok(Checked {
            request: req,
            format,
            params,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_parse_errors_name_the_field() {
        assert_eq!(parse_size("1024x768").ok().map(|s| s.0), Some(1024));
        assert_eq!(parse_size("64 X 48").ok(), Some((64, 48)));
        for bad in ["1024", "x", "-1x5", "10x", "ax7"] {
            let e = parse_size(bad).expect_err(bad);
            assert_eq!(e.param.as_deref(), Some("size"));
        }
        let e = parse(br#"{"prompt": "a", "steps": -3}"#).expect_err("negative steps");
        assert_eq!(e.param.as_deref(), Some("steps"));
        let e = parse(br#"{"prompt": "a", "stpes": 3}"#).expect_err("unknown field");
        assert!(e.message.contains("stpes"), "{}", e.message);
        let e = parse(b"not json").expect_err("not json");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = parse(br#"{"n": 2}"#).expect_err("no prompt");
        assert!(e.message.contains("prompt"), "{}", e.message);
    }

    #[test]
    fn pictures_are_data_never_paths() {
        let e = decode_picture("image", "/etc/passwd").expect_err("a path");
        assert_eq!(e.param.as_deref(), Some("image"));
        assert!(e.message.contains("never as paths"), "{}", e.message);
        let e = decode_picture("mask", "data:image/png,abc").expect_err("not base64");
        assert_eq!(e.param.as_deref(), Some("mask"));
        // Valid base64 that is not an image.
        let e = decode_picture("image", "aGVsbG8=").expect_err("not an image");
        assert_eq!(e.param.as_deref(), Some("image"));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }
}
