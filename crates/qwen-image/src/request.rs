//! What a generation asks for ([`GenerateRequest`]), its limits, and the one check of a request
//! against a checkpoint ([`validate`]), done before any heavy work.

use mlx_rs::{Array, Dtype};
use qwen_text_encoder::MAX_SEQUENCE_LENGTH_LIMIT;
use qwen_vae::TilingConfig;

use crate::checkpoint::CheckpointConfigs;
use crate::error::{Field, PipelineError, Result, invalid};
use crate::image_input::check_image;
use crate::img2img::{InitImage, first_step};
use crate::lora::Lora;
use crate::output::Image;

/// Largest image width or height accepted, in pixels.
///
/// Qwen-Image was trained up to 1664 px a side; 8192 px is about 5× that. The cap keeps every
/// size the pipeline derives far inside MLX's `i32` shapes (latent sides ≤ 1024; at most
/// 512² = 262 144 image tokens, so the host RoPE tables of (tokens + text) × head_dim/2 f32
/// stay below 17 M elements) and inside what the reference can run: diffusers'
/// `QwenEmbedRope` precomputes 4096 positions per axis; image positions are centred
/// (|row|, |column| ≤ side/16/2 ≤ 256) and text positions run from max(rows, columns)/2 ≤ 256
/// to below 256 + 1024 (the longest prompt) = 1280 < 4096.
pub const MAX_IMAGE_SIDE: usize = 8192;

/// Largest number of denoising steps accepted: the scheduler's 1000 training timesteps
/// (diffusers' `num_train_timesteps`); more steps do not refine the flow-matching schedule
/// usefully and a huge value would only allocate a huge σ table.
pub const MAX_STEPS: usize = 1000;

/// Largest number of images per request: images are denoised one after another and kept in
/// memory (latents and 8-bit RGB) until the request ends, so this bounds that memory and the
/// run time, and keeps `steps × images` small.
pub const MAX_NUM_IMAGES: usize = 64;

/// Under [`VaeTiling::Auto`], images with more pixels than this (2²¹ ≈ 2.1 MPx, about 1448²)
/// are decoded tile by tile.
///
/// Every size Qwen-Image was trained for (1328², 1664×928, 1472×1140, 1584×1056 and their
/// transposes, at most 1.77 MPx) stays untiled, as in diffusers' default pipeline (which
/// does not tile). Untiled decode memory grows with about the square of the pixel count (the
/// VAE's mid-block attention spans every latent position) while a tiled decode stays bounded
/// by one tile; docs/speed.md has the measured numbers.
pub const AUTO_TILING_MIN_PIXELS: usize = 1 << 21;

/// Tile size in pixels of [`VaeTiling::default`] (stride 3/4 of it: 768 px, so tiles overlap
/// by 256 px, the same 1/4 as diffusers' 256/192 tiles). Larger than diffusers' 256 px
/// because far fewer tiles (9 instead of 121 at 2048²) decode much faster for a memory that
/// still depends on the tile, not the image (measurements in docs/speed.md). Use 256 where
/// memory is tight.
pub const DEFAULT_VAE_TILE_SIZE: usize = 1024;

/// The tiles of a tiled decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tiles {
    /// Square tiles of this many pixels, 3/4 of it apart (rounded down to whole latents of
    /// the checkpoint's VAE), as [`VaeTiling::square_tiles`] makes them.
    Square(usize),
    /// Exactly these tiles.
    Custom(TilingConfig),
}

impl Tiles {
    /// The tiles for a VAE with spatial compression `ratio`.
    pub fn resolve(self, ratio: usize) -> TilingConfig {
        match self {
            Tiles::Square(px) => VaeTiling::square_tiles(px, ratio),
            Tiles::Custom(t) => t,
        }
    }

    fn largest_side(&self) -> usize {
        match self {
            Tiles::Square(px) => *px,
            Tiles::Custom(t) => t
                .tile_sample_min_height
                .max(t.tile_sample_min_width)
                .max(t.tile_sample_stride_height)
                .max(t.tile_sample_stride_width),
        }
    }
}

/// How the VAE decodes the final latents: whole images at once (`QwenImageVae::decode`) or
/// tile by tile with overlapping, blended tiles (`QwenImageVae::decode_tiled`, diffusers'
/// `vae.enable_tiling()`), which bounds memory by one tile's activations.
///
/// Tiled and untiled decodes differ slightly (each tile's mid-block attention sees only the
/// tile; the overlaps are blended linearly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaeTiling {
    /// Tile, with these tiles, only images with more than [`AUTO_TILING_MIN_PIXELS`] pixels.
    Auto(Tiles),
    /// Always tile, with these tiles.
    On(Tiles),
    /// Never tile.
    Off,
}

impl Default for VaeTiling {
    /// `Auto` with [`DEFAULT_VAE_TILE_SIZE`] square tiles (1024 px, stride 768 px).
    fn default() -> Self {
        VaeTiling::Auto(Tiles::Square(DEFAULT_VAE_TILE_SIZE))
    }
}

impl VaeTiling {
    /// Square tiles of `size` pixels whose stride is 3/4 of the size (the overlap diffusers'
    /// 256/192 default has), rounded down to a multiple of the VAE's spatial compression
    /// `ratio` (8 for Qwen-Image), and at least `ratio`. The result is not checked here:
    /// [`validate`] rejects sizes the VAE cannot tile with (not a positive multiple of
    /// `ratio`).
    pub fn square_tiles(size: usize, ratio: usize) -> TilingConfig {
        let ratio = ratio.max(1);
        let stride = (size.saturating_mul(3) / 4 / ratio * ratio).max(ratio);
        TilingConfig {
            tile_sample_min_height: size,
            tile_sample_min_width: size,
            tile_sample_stride_height: stride,
            tile_sample_stride_width: stride,
        }
    }

    /// The tiles (for a VAE of compression `ratio`) an image of `width × height` pixels is
    /// decoded with (`None`: untiled).
    pub fn tiles_for(&self, width: usize, height: usize, ratio: usize) -> Option<TilingConfig> {
        match *self {
            VaeTiling::On(t) => Some(t.resolve(ratio)),
            VaeTiling::Auto(t) if width.saturating_mul(height) > AUTO_TILING_MIN_PIXELS => {
                Some(t.resolve(ratio))
            }
            VaeTiling::Auto(_) | VaeTiling::Off => None,
        }
    }

    /// The tiles of `Auto` / `On` (whether or not a given image uses them).
    pub fn tiles(&self) -> Option<Tiles> {
        match *self {
            VaeTiling::Auto(t) | VaeTiling::On(t) => Some(t),
            VaeTiling::Off => None,
        }
    }
}

/// Where the initial noise comes from.
#[derive(Debug, Clone)]
pub enum Noise {
    /// MLX's normal generator; image `i` uses seed `seed + i` (so image 3 of a run with seed
    /// 42 is image 0 of a run with seed 45).
    Seed(u64),
    /// Given unpacked latents `(num_images, 1, z_dim, H/r, W/r)` in float32 (diffusers'
    /// noise layout), e.g. read with [`crate::latents::read_init_latents`].
    Latents(Array),
}

/// One generation request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// The prompt (must not be empty).
    pub prompt: String,
    /// The negative prompt; true CFG runs only with one and `true_cfg_scale > 1`.
    pub negative_prompt: Option<String>,
    /// True classifier-free guidance scale (diffusers' default 4.0).
    pub true_cfg_scale: f32,
    /// Denoising steps (1..=[`MAX_STEPS`]; diffusers' default 50).
    pub steps: usize,
    /// Image width in pixels, a multiple of [`CheckpointConfigs::size_multiple`] (16).
    pub width: usize,
    /// Image height in pixels, a multiple of [`CheckpointConfigs::size_multiple`] (16).
    pub height: usize,
    /// Number of images (generated one after another with the same prompt).
    pub num_images: usize,
    /// Initial noise.
    pub noise: Noise,
    /// Prompt tokens kept after the template (1..=1024, default 512).
    pub max_sequence_length: usize,
    /// Whole-image or tiled VAE decode (default: [`VaeTiling::Auto`] with 1024 px tiles).
    pub vae_tiling: VaeTiling,
    /// LoRAs merged into the transformer (as diffusers' `load_lora_weights` +
    /// `set_adapters(names, adapter_weights)`). The pipeline keeps the merged transformer
    /// while the same LoRAs at the same scales are asked for.
    pub loras: Vec<Lora>,
    /// Scheduler config keys replacing the checkpoint's (e.g. the Qwen-Image-Lightning
    /// recipe).
    pub scheduler_overrides: Option<SchedulerOverrides>,
    /// A picture to start from (img2img; with a mask, inpainting).
    pub init_image: Option<InitImage>,
    /// The pictures to edit (8-bit RGB, any size), for a checkpoint of an edit pipeline
    /// ([`crate::edit`]); empty for text-to-image. `QwenImageEditPipeline` takes exactly one,
    /// `QwenImageEditPlusPipeline` one or more (the prompt calls them "picture 1", …).
    pub edit_images: Vec<Image>,
}

/// Keys of diffusers' `FlowMatchEulerDiscreteScheduler` config that replace the checkpoint's
/// `scheduler/scheduler_config.json` for a request (applied strictly: an unknown key is an
/// error naming it).
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerOverrides {
    /// Where they came from (a file name), for messages.
    pub origin: String,
    /// The keys and their values.
    pub keys: serde_json::Map<String, serde_json::Value>,
}

impl SchedulerOverrides {
    /// Reads a JSON object of scheduler config keys.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let origin = path.display().to_string();
        let fail = |msg: String| PipelineError::SchedulerOverride {
            origin: origin.clone(),
            source: flow_scheduler::SchedulerError::Json {
                path: path.to_path_buf(),
                msg,
            },
        };
        let text = mlx_weights::read_regular_file(path).map_err(|e| fail(e.to_string()))?;
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(serde_json::Value::Object(keys)) => Ok(Self { origin, keys }),
            Ok(_) => Err(fail(
                "the top level must be a JSON object of scheduler config keys".into(),
            )),
            Err(e) => Err(fail(e.to_string())),
        }
    }
}

impl GenerateRequest {
    /// A request with diffusers' defaults: 1024×1024, 50 steps, true CFG scale 4, no negative
    /// prompt, one image, seed 0, max_sequence_length 512; VAE tiling
    /// [`VaeTiling::default`] (only images above [`AUTO_TILING_MIN_PIXELS`] are tiled).
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            negative_prompt: None,
            true_cfg_scale: 4.0,
            steps: 50,
            width: 1024,
            height: 1024,
            num_images: 1,
            noise: Noise::Seed(0),
            max_sequence_length: qwen_text_encoder::DEFAULT_MAX_SEQUENCE_LENGTH,
            vae_tiling: VaeTiling::default(),
            loras: Vec::new(),
            scheduler_overrides: None,
            init_image: None,
            edit_images: Vec::new(),
        }
    }

    /// Whether this request runs true CFG (scale > 1 and a negative prompt).
    pub fn does_true_cfg(&self) -> bool {
        self.true_cfg_scale > 1.0 && self.negative_prompt.is_some()
    }
}

/// `tiled, 1024 px tiles, 768 px stride` / `untiled`.
pub fn describe_tiles(t: Option<&TilingConfig>) -> String {
    let Some(t) = t else {
        return "untiled".into();
    };
    let dims = |a: usize, b: usize| {
        if a == b {
            format!("{a}")
        } else {
            format!("{a}×{b}")
        }
    };
    format!(
        "tiled, {} px tiles, {} px stride",
        dims(t.tile_sample_min_width, t.tile_sample_min_height),
        dims(t.tile_sample_stride_width, t.tile_sample_stride_height)
    )
}

/// The latent grid `(h, w)` of an image for a VAE of compression `ratio`.
pub fn latent_size(configs: &CheckpointConfigs, width: usize, height: usize) -> (usize, usize) {
    let r = configs.vae_scale_factor();
    (height / r, width / r)
}

/// The part of [`validate`] that needs no checkpoint: the prompt, and every number against
/// its limits (so a program can refuse a request before it looks for a model, and before it
/// allocates anything from these numbers). The error names the field at fault.
pub fn check_limits(req: &GenerateRequest) -> Result<()> {
    if req.prompt.trim().is_empty() {
        return Err(invalid(Field::Prompt, "the prompt is empty"));
    }
    if req.steps == 0 {
        return Err(invalid(Field::Steps, "steps must be at least 1"));
    }
    if req.steps > MAX_STEPS {
        return Err(invalid(
            Field::Steps,
            format!(
                "steps {} is above the maximum {MAX_STEPS} (the scheduler's training timesteps)",
                req.steps
            ),
        ));
    }
    if req.num_images == 0 {
        return Err(invalid(
            Field::NumImages,
            "the number of images must be at least 1",
        ));
    }
    if req.num_images > MAX_NUM_IMAGES {
        return Err(invalid(
            Field::NumImages,
            format!(
                "the number of images {} is above the maximum {MAX_NUM_IMAGES}",
                req.num_images
            ),
        ));
    }
    for (field, v) in [(Field::Width, req.width), (Field::Height, req.height)] {
        if v > MAX_IMAGE_SIDE {
            return Err(invalid(
                field,
                format!(
                    "{} {v} is above the maximum {MAX_IMAGE_SIDE} px (Qwen-Image was trained up \
                     to 1664 px; the cap keeps RoPE positions and MLX's i32 shapes in range)",
                    field.describe()
                ),
            ));
        }
    }
    if req.max_sequence_length == 0 || req.max_sequence_length > MAX_SEQUENCE_LENGTH_LIMIT {
        return Err(invalid(
            Field::MaxSequenceLength,
            format!(
                "max sequence length must be in 1..={MAX_SEQUENCE_LENGTH_LIMIT}, got {}",
                req.max_sequence_length
            ),
        ));
    }
    if !req.true_cfg_scale.is_finite() {
        return Err(invalid(
            Field::TrueCfgScale,
            format!("true CFG scale must be finite, got {}", req.true_cfg_scale),
        ));
    }
    if let Some(init) = &req.init_image {
        let s = init.strength;
        if !(s.is_finite() && s > 0.0 && s <= 1.0) {
            return Err(invalid(
                Field::Strength,
                format!("strength must be in (0, 1], got {s}"),
            ));
        }
        let kept = req.steps - first_step(req.steps, s);
        if kept == 0 {
            return Err(invalid(
                Field::Strength,
                format!(
                    "strength {s} keeps {kept} of {} steps (the last int(steps × strength) run): \
                     raise the strength or the steps",
                    req.steps
                ),
            ));
        }
        check_image(&init.image, Field::Image)?;
        if let Some(m) = &init.mask {
            check_image(m, Field::Mask)?;
        }
    }
    if !req.edit_images.is_empty() {
        if req.init_image.is_some() {
            return Err(invalid(
                Field::Image,
                "an edit does not start from an init image: give the pictures to edit only",
            ));
        }
        for p in &req.edit_images {
            check_image(p, Field::EditImages)?;
        }
    }
    if let Some(t) = req.vae_tiling.tiles()
        && t.largest_side() > MAX_IMAGE_SIDE
    {
        return Err(invalid(
            Field::VaeTiling,
            format!(
                "VAE tiling: tile size {} px is above the maximum {MAX_IMAGE_SIDE} px (a tile \
                 larger than the image is the whole image)",
                t.largest_side()
            ),
        ));
    }
    Ok(())
}

/// Checks a request against a checkpoint's configs without doing any heavy work: the one
/// validation every entry point goes through ([`check_limits`], then the sizes, the initial
/// latents and the tiles against the checkpoint). The error names the field at fault.
pub fn validate(req: &GenerateRequest, configs: &CheckpointConfigs) -> Result<()> {
    check_limits(req)?;
    match (configs.kind.is_edit(), req.edit_images.is_empty()) {
        (true, true) => {
            return Err(PipelineError::WrongPipeline {
                class: configs.kind.class_name().into(),
                msg: "this checkpoint edits pictures and cannot generate from text alone: \
                      use `qwen-image edit --image FILE` (the library: \
                      GenerateRequest::edit_images)"
                    .into(),
            });
        }
        (_, false) => crate::edit::check_pictures(configs.kind, &req.edit_images)?,
        (false, true) => {}
    }
    let m = configs.size_multiple();
    for (field, v) in [(Field::Width, req.width), (Field::Height, req.height)] {
        if v == 0 || v % m != 0 {
            return Err(invalid(
                field,
                format!(
                    "{} {v} is not a positive multiple of {m} (the VAE's {}× compression × the \
                     transformer's {}×{} patches); try {}",
                    field.describe(),
                    configs.vae_scale_factor(),
                    configs.patch_size(),
                    configs.patch_size(),
                    (v.div_ceil(m).max(1)) * m
                ),
            ));
        }
    }
    if let Noise::Latents(a) = &req.noise {
        let (h, w) = latent_size(configs, req.width, req.height);
        let want = [
            req.num_images as i32,
            1,
            configs.latent_channels() as i32,
            h as i32,
            w as i32,
        ];
        if a.dtype() != Dtype::Float32 {
            return Err(PipelineError::InitLatents {
                path: None,
                msg: format!("`latents` must be float32, got {:?}", a.dtype()),
            });
        }
        if a.shape() != want {
            return Err(PipelineError::InitLatents {
                path: None,
                msg: format!(
                    "`latents` has shape {:?}; this request needs {want:?} (images, 1, latent \
                     channels, latent height, latent width)",
                    a.shape()
                ),
            });
        }
        check_finite_input("latents", a, req.num_images)?;
    }
    if let Some(noise) = req.init_image.as_ref().and_then(|i| i.image_noise.as_ref()) {
        let (h, w) = latent_size(configs, req.width, req.height);
        let want = [
            req.num_images as i32,
            configs.latent_channels() as i32,
            1,
            h as i32,
            w as i32,
        ];
        if noise.dtype() != Dtype::Float32 || noise.shape() != want {
            return Err(PipelineError::InitLatents {
                path: None,
                msg: format!(
                    "`image_noise` is {:?} {:?}; this request needs float32 {want:?} (images, \
                     latent channels, 1, latent height, latent width: the VAE's layout)",
                    noise.dtype(),
                    noise.shape()
                ),
            });
        }
        check_finite_input("image_noise", noise, req.num_images)?;
    }
    if let Some(t) = req.vae_tiling.tiles() {
        let ratio = configs.vae.spatial_compression_ratio();
        // The VAE's own check, for sizes it cannot tile with, whatever the image size.
        t.resolve(ratio).validate(ratio).map_err(|e| {
            let msg = match e {
                qwen_vae::VaeError::InvalidTiling(m) => m,
                e => e.to_string(),
            };
            invalid(Field::VaeTiling, format!("VAE tiling: {msg}"))
        })?;
    }
    Ok(())
}

/// NaN or infinity in a given noise tensor would only show after the whole denoising: look
/// now (one small reduction per image).
fn check_finite_input(name: &str, a: &Array, images: usize) -> Result<()> {
    let finite = a
        .reshape(&[images as i32, -1])?
        .is_finite()?
        .all_axis(1, None)?;
    let bad = crate::latents::false_rows(&finite)?;
    if bad.is_empty() {
        Ok(())
    } else {
        Err(PipelineError::InitLatents {
            path: None,
            msg: format!("`{name}` of image(s) {bad:?} hold NaN or infinity"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_tiling_threshold_and_tile_sizes() {
        let auto = VaeTiling::default();
        let tiles = VaeTiling::square_tiles(DEFAULT_VAE_TILE_SIZE, 8);
        assert_eq!(auto, VaeTiling::Auto(Tiles::Square(DEFAULT_VAE_TILE_SIZE)));
        assert_eq!(
            (tiles.tile_sample_min_width, tiles.tile_sample_stride_width),
            (1024, 768)
        );
        // Official sizes stay whole; 1448² (2 096 704 px) is just under the threshold and
        // 2048×1024 is exactly on it (tiling starts above it).
        assert_eq!(2048 * 1024, AUTO_TILING_MIN_PIXELS);
        for (w, h) in [
            (1328, 1328),
            (1664, 928),
            (928, 1664),
            (1472, 1140),
            (1448, 1448),
            (2048, 1024),
        ] {
            assert_eq!(auto.tiles_for(w, h, 8), None, "{w}×{h}");
        }
        for (w, h) in [(2048, 1152), (1152, 2048), (1456, 1456), (2048, 2048)] {
            assert_eq!(auto.tiles_for(w, h, 8), Some(tiles), "{w}×{h}");
        }
        let on = VaeTiling::On(Tiles::Custom(tiles));
        assert_eq!(on.tiles_for(16, 16, 8), Some(tiles));
        assert_eq!(VaeTiling::Off.tiles_for(4096, 4096, 8), None);
        assert_eq!(VaeTiling::Off.tiles(), None);
        // 256 px gives diffusers' enable_tiling() defaults (stride 192).
        assert_eq!(VaeTiling::square_tiles(256, 8), TilingConfig::default());
        // Strides are whole latents, at least one.
        let s = |px, r| VaeTiling::square_tiles(px, r).tile_sample_stride_height;
        assert_eq!((s(16, 8), s(8, 8), s(40, 8), s(40, 4)), (8, 8, 24, 28));
        for px in [8, 16, 40, 256, 1024] {
            assert!(VaeTiling::square_tiles(px, 8).validate(8).is_ok(), "{px}");
        }
        // A size that would overflow 3/4 of it saturates instead of panicking.
        let _ = VaeTiling::square_tiles(usize::MAX, 8);
    }
}
