//! A generation as a user describes it, before it becomes requests: [`GenerationSettings`]
//! (with [`LoadSettings`] for how the model is found and loaded), a PNG's stored record merged
//! under them (settings set explicitly win: [`GenerationSettings::apply_record`]), then, step
//! by step, what a run needs: the prompts (one, or a file of them), the input pictures, the
//! output size (an [`ASPECTS`] preset, given sides, or the init image's aspect ratio), the
//! checked requests and their output files, and the records written into the PNGs.
//!
//! The `qwen-image` program fills these settings from its arguments; another program can fill
//! them from a form or a config file. Errors name settings and fields, never a program's
//! options.

use std::path::{Path, PathBuf};

use crate::error::{Field, PipelineError, Result};
use crate::image_input::{fit_to_area, load_image};
use crate::latents::{InitLatents, read_init_latents};
use crate::metadata::{GenerationRecord, read_prompt_file};
use crate::output::{check_output, check_output_name, output_paths_for, write_png_with_text};
use crate::request::check_limits;
use crate::{
    AUTO_TILING_MIN_PIXELS, ActivationBudget, ComputeDtype, DEFAULT_VAE_TILE_SIZE, GenerateRequest,
    Image, InitImage, Lora, Noise, PipelineOptions, QuantizeSpec, Residency, SchedulerOverrides,
    Tiles, VaeTiling,
};

/// The output side when neither a size nor an init image gives one.
pub const DEFAULT_SIDE: usize = 1024;

/// About how many pixels an output whose size comes from the init image has (1024²): the
/// image's aspect ratio at this area ([`fit_to_area`]).
pub const IMAGE_FIT_AREA: usize = 1 << 20;

/// Qwen-Image's recommended sizes by aspect ratio (model card), floored to multiples of 16
/// (the model card's 1472×1140 is not one: diffusers floors it to 1136, as here).
pub const ASPECTS: [(&str, (usize, usize)); 7] = [
    ("1:1", (1328, 1328)),
    ("16:9", (1664, 928)),
    ("9:16", (928, 1664)),
    ("4:3", (1472, 1136)),
    ("3:4", (1136, 1472)),
    ("3:2", (1584, 1056)),
    ("2:3", (1056, 1584)),
];

/// The size of an aspect preset of [`ASPECTS`] (`16:9` → 1664×928; spaces around the name
/// are ignored); [`PipelineError::UnknownAspect`] for another name.
pub fn aspect_size(name: &str) -> Result<(usize, usize)> {
    ASPECTS
        .iter()
        .find(|(k, _)| *k == name.trim())
        .map(|(_, v)| *v)
        .ok_or_else(|| PipelineError::UnknownAspect {
            name: name.to_string(),
        })
}

/// The names of [`ASPECTS`], `, `-separated.
pub fn aspect_names() -> String {
    ASPECTS.map(|(k, _)| k).join(", ")
}

/// When the VAE decodes tile by tile: [`VaeTiling`] without its tiles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TilingMode {
    /// Tile images of more than [`AUTO_TILING_MIN_PIXELS`] pixels.
    #[default]
    Auto,
    /// Always tile.
    On,
    /// Never tile.
    Off,
}

impl TilingMode {
    /// `auto: tiles above 2.1 MPx`, `on` or `off`.
    pub fn describe(self) -> String {
        match self {
            TilingMode::Auto => format!(
                "auto: tiles above {:.1} MPx",
                AUTO_TILING_MIN_PIXELS as f64 / 1e6
            ),
            TilingMode::On => "on".into(),
            TilingMode::Off => "off".into(),
        }
    }
}

/// A setting that a PNG's record can fill ([`GenerationSettings::apply_record`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Setting {
    /// [`GenerationSettings::model`].
    Model,
    /// [`GenerationSettings::prompt`].
    Prompt,
    /// [`GenerationSettings::prompt_file`].
    PromptFile,
    /// [`GenerationSettings::negative_prompt`].
    NegativePrompt,
    /// [`GenerationSettings::seed`].
    Seed,
    /// [`GenerationSettings::init_latents`].
    InitLatents,
    /// [`GenerationSettings::steps`].
    Steps,
    /// [`GenerationSettings::true_cfg_scale`].
    TrueCfgScale,
    /// [`GenerationSettings::aspect`].
    Aspect,
    /// [`GenerationSettings::width`].
    Width,
    /// [`GenerationSettings::height`].
    Height,
    /// [`GenerationSettings::max_sequence_length`].
    MaxSequenceLength,
    /// [`LoadSettings::dtype`].
    Dtype,
    /// [`LoadSettings::quantize`].
    Quantize,
    /// [`LoadSettings::lora`] (with [`LoadSettings::lora_scale`]).
    Lora,
    /// [`GenerationSettings::image`].
    Image,
    /// [`GenerationSettings::mask`].
    Mask,
    /// [`GenerationSettings::strength`].
    Strength,
}

impl Setting {
    /// The name of the field it stands for (`true_cfg_scale`, `lora`, …).
    pub fn name(self) -> &'static str {
        match self {
            Setting::Model => "model",
            Setting::Prompt => "prompt",
            Setting::PromptFile => "prompt_file",
            Setting::NegativePrompt => "negative_prompt",
            Setting::Seed => "seed",
            Setting::InitLatents => "init_latents",
            Setting::Steps => "steps",
            Setting::TrueCfgScale => "true_cfg_scale",
            Setting::Aspect => "aspect",
            Setting::Width => "width",
            Setting::Height => "height",
            Setting::MaxSequenceLength => "max_sequence_length",
            Setting::Dtype => "dtype",
            Setting::Quantize => "quantize",
            Setting::Lora => "lora",
            Setting::Image => "image",
            Setting::Mask => "mask",
            Setting::Strength => "strength",
        }
    }
}

/// How a model is found and loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadSettings {
    /// Branch, tag or commit of a hub id.
    pub revision: String,
    /// Never download: a hub id must be in the local cache.
    pub offline: bool,
    /// Compute dtype (default: bf16 on a GPU, f32 on the CPU).
    pub dtype: Option<ComputeDtype>,
    /// Bits to quantize the transformer to when loading (4 or 8).
    pub quantize: Option<i32>,
    /// LoRA files to merge into the transformer.
    pub lora: Vec<PathBuf>,
    /// The scale of the i-th LoRA (1.0 for each LoRA without one).
    pub lora_scale: Vec<f32>,
    /// A JSON file of scheduler config keys replacing the checkpoint's.
    pub scheduler_config: Option<PathBuf>,
}

impl Default for LoadSettings {
    /// Revision `main`, online, default dtype, not quantized, no LoRA, no scheduler override.
    fn default() -> Self {
        Self {
            revision: "main".into(),
            offline: false,
            dtype: None,
            quantize: None,
            lora: Vec::new(),
            lora_scale: Vec::new(),
            scheduler_config: None,
        }
    }
}

impl LoadSettings {
    /// The pipeline options; `gpu` says whether the default device is a GPU (then bf16 is
    /// the default dtype, else f32). Components are staged ([`Residency::Staged`]).
    pub fn options(&self, gpu: bool) -> PipelineOptions {
        PipelineOptions {
            dtype: self.dtype.unwrap_or(if gpu {
                ComputeDtype::Bf16
            } else {
                ComputeDtype::F32
            }),
            quantize: self.quantize.map(QuantizeSpec::new),
            residency: Residency::Staged,
            activation_budget: ActivationBudget::Auto,
        }
    }

    /// The LoRAs with their scales (the i-th scale to the i-th LoRA, 1.0 by default);
    /// [`PipelineError::LoraScales`] when there are more scales than LoRAs.
    pub fn loras(&self) -> Result<Vec<Lora>> {
        if self.lora_scale.len() > self.lora.len() {
            return Err(PipelineError::LoraScales {
                scales: self.lora_scale.len(),
                loras: self.lora.len(),
            });
        }
        Ok(self
            .lora
            .iter()
            .enumerate()
            .map(|(i, p)| Lora::file(p, self.lora_scale.get(i).copied().unwrap_or(1.0)))
            .collect())
    }

    /// The scheduler overrides of [`Self::scheduler_config`], read, when set.
    pub fn scheduler_overrides(&self) -> Result<Option<SchedulerOverrides>> {
        self.scheduler_config
            .as_deref()
            .map(SchedulerOverrides::from_file)
            .transpose()
    }
}

/// A picture loaded as diffusers' `load_image` does, `on_note(file, note)` hearing its
/// conversion remarks.
fn load_noted(path: &Path, on_note: &mut dyn FnMut(&Path, &str)) -> Result<Image> {
    let loaded = load_image(path)?;
    for n in &loaded.notes {
        on_note(path, n);
    }
    Ok(loaded.image)
}

/// Where [`GenerationSettings::resolve_size`] took the output size from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeSource {
    /// The aspect preset.
    Aspect,
    /// The width and height set ([`DEFAULT_SIDE`] for a side not set).
    Sides,
    /// Picture `n` (1-based) of an edit ([`crate::edit::default_size`]), for the sides not
    /// set.
    EditPicture(usize),
    /// The init image's aspect ratio at about [`IMAGE_FIT_AREA`] pixels.
    Image {
        /// The init image's width.
        width: usize,
        /// The init image's height.
        height: usize,
    },
}

/// One prompt of a run: its line in the prompt file (`None` for a single prompt) and text.
pub type Prompt = (Option<usize>, String);

/// The settings of a generation run: one prompt or a file of them, each made into
/// `num_images` images written under names derived from `output`.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationSettings {
    /// The model: a folder in the diffusers layout or a Hugging Face id.
    pub model: Option<String>,
    /// The prompt.
    pub prompt: Option<String>,
    /// A file of prompts, one per line (instead of `prompt`).
    pub prompt_file: Option<PathBuf>,
    /// The negative prompt.
    pub negative_prompt: Option<String>,
    /// True classifier-free guidance scale.
    pub true_cfg_scale: f32,
    /// Denoising steps.
    pub steps: usize,
    /// An aspect preset's size ([`aspect_size`]); it wins over `width` and `height`.
    pub aspect: Option<(usize, usize)>,
    /// Image width in pixels.
    pub width: Option<usize>,
    /// Image height in pixels.
    pub height: Option<usize>,
    /// A picture to start from (img2img).
    pub image: Option<PathBuf>,
    /// With `image`: the inpainting mask.
    pub mask: Option<PathBuf>,
    /// The pictures to edit (`qwen-image edit --image`), in order.
    pub edit_images: Vec<PathBuf>,
    /// With `image`: how much to change the picture, in (0, 1].
    pub strength: f64,
    /// Seed of the initial noise (random when not set).
    pub seed: Option<u64>,
    /// A safetensors file of initial noise ([`read_init_latents`]).
    pub init_latents: Option<PathBuf>,
    /// Images per prompt.
    pub num_images: usize,
    /// The output PNG (numbered for several prompts or images: [`output_paths_for`]).
    pub output: PathBuf,
    /// Maximum prompt length in tokens after the template.
    pub max_sequence_length: usize,
    /// When the VAE decodes tile by tile.
    pub vae_tiling: TilingMode,
    /// Square tile size in pixels ([`DEFAULT_VAE_TILE_SIZE`] when not set).
    pub vae_tile_size: Option<usize>,
    /// Whether each PNG gets the record of its generation ([`Self::record`]).
    pub metadata: bool,
    /// How the model is found and loaded.
    pub load: LoadSettings,
}

impl Default for GenerationSettings {
    /// [`GenerateRequest::new`]'s numbers, no model or prompt yet, the strength
    /// [`crate::img2img::DEFAULT_STRENGTH`], output `qwen-image.png` with its record.
    fn default() -> Self {
        let r = GenerateRequest::new("");
        Self {
            model: None,
            prompt: None,
            prompt_file: None,
            negative_prompt: None,
            true_cfg_scale: r.true_cfg_scale,
            steps: r.steps,
            aspect: None,
            width: None,
            height: None,
            image: None,
            mask: None,
            edit_images: Vec::new(),
            strength: crate::img2img::DEFAULT_STRENGTH,
            seed: None,
            init_latents: None,
            num_images: r.num_images,
            output: PathBuf::from("qwen-image.png"),
            max_sequence_length: r.max_sequence_length,
            vae_tiling: TilingMode::Auto,
            vae_tile_size: None,
            metadata: true,
            load: LoadSettings::default(),
        }
    }
}

impl GenerationSettings {
    /// Fills the settings not set explicitly from a PNG's record: `explicit(s)` says whether
    /// `s` was set explicitly (then it wins). A prompt file counts as a prompt, initial
    /// latents as a seed and an aspect preset as both sides; the LoRAs come with their scales.
    pub fn apply_record(&mut self, r: &GenerationRecord, explicit: impl Fn(Setting) -> bool) {
        let free = |s: Setting| !explicit(s);
        if free(Setting::Model) {
            self.model = Some(r.model.clone());
        }
        if free(Setting::PromptFile) && free(Setting::Prompt) {
            self.prompt = Some(r.prompt.clone());
        }
        if free(Setting::NegativePrompt) {
            self.negative_prompt = r.negative_prompt.clone();
        }
        if free(Setting::InitLatents) && free(Setting::Seed) {
            self.seed = r.seed;
        }
        if free(Setting::Steps) {
            self.steps = r.steps;
        }
        if free(Setting::TrueCfgScale) {
            self.true_cfg_scale = r.true_cfg_scale;
        }
        if free(Setting::Aspect) {
            if free(Setting::Width) {
                self.width = Some(r.width);
            }
            if free(Setting::Height) {
                self.height = Some(r.height);
            }
        }
        if free(Setting::MaxSequenceLength) {
            self.max_sequence_length = r.max_sequence_length;
        }
        if free(Setting::Dtype) {
            self.load.dtype = r.dtype.parse::<ComputeDtype>().ok();
        }
        if free(Setting::Quantize) {
            self.load.quantize = r.quantize;
        }
        if free(Setting::Lora) {
            self.load.lora = r.loras.iter().map(|(n, _)| PathBuf::from(n)).collect();
            self.load.lora_scale = r.loras.iter().map(|(_, s)| *s).collect();
        }
        if free(Setting::Image) {
            self.image = r.init_image.as_ref().map(PathBuf::from);
        }
        if free(Setting::Mask) {
            self.mask = r.mask.as_ref().map(PathBuf::from);
        }
        if let Some(st) = r.strength
            && free(Setting::Strength)
        {
            self.strength = st;
        }
    }

    /// The prompts to run: each prompt of the prompt file with its line number
    /// ([`read_prompt_file`]), else the one prompt (empty when not set).
    pub fn prompts(&self) -> Result<Vec<Prompt>> {
        Ok(match &self.prompt_file {
            Some(f) => read_prompt_file(f)?
                .into_iter()
                .map(|(l, p)| (Some(l), p))
                .collect(),
            None => vec![(None, self.prompt.clone().unwrap_or_default())],
        })
    }

    /// The pipeline options ([`LoadSettings::options`]); with several prompts the transformer
    /// stays loaded between them ([`Residency::KeepTransformer`]).
    pub fn options(&self, gpu: bool, prompts: usize) -> PipelineOptions {
        let mut options = self.load.options(gpu);
        if prompts > 1 {
            options.residency = Residency::KeepTransformer;
        }
        options
    }

    /// The init image and its mask, loaded when `image` is set; `on_note(file, note)` hears
    /// each file's conversion remarks as soon as it is loaded.
    pub fn load_inputs(
        &self,
        on_note: &mut dyn FnMut(&Path, &str),
    ) -> Result<Option<(Image, Option<Image>)>> {
        let Some(image) = &self.image else {
            return Ok(None);
        };
        let image = load_noted(image, on_note)?;
        let mask = self
            .mask
            .as_deref()
            .map(|m| load_noted(m, on_note))
            .transpose()?;
        Ok(Some((image, mask)))
    }

    /// The pictures to edit, loaded in order (`on_note(file, note)` hears each file's
    /// conversion remarks).
    pub fn load_edit_images(&self, on_note: &mut dyn FnMut(&Path, &str)) -> Result<Vec<Image>> {
        self.edit_images
            .iter()
            .map(|path| load_noted(path, on_note))
            .collect()
    }

    /// Fixes the output size of an edit on a `kind` checkpoint whose sizes are multiples of
    /// `multiple` and sets `width` and `height` to it: a side set stays, a side not set comes
    /// from the pictures ([`crate::edit::default_size`]: the first picture for Edit, the last
    /// for Edit-Plus, at about 1024² pixels).
    pub fn resolve_edit_size(
        &mut self,
        kind: crate::PipelineKind,
        pictures: &[Image],
        multiple: usize,
    ) -> Result<((usize, usize), SizeSource)> {
        let dims: Vec<(usize, usize)> = pictures.iter().map(|p| (p.width, p.height)).collect();
        let (w, h) = match (self.width, self.height) {
            (Some(w), Some(h)) => (w, h),
            (w, h) => {
                let (cw, ch) = crate::edit::default_size(kind, &dims, multiple)?;
                (w.unwrap_or(cw), h.unwrap_or(ch))
            }
        };
        let source = match (self.width, self.height, kind) {
            (Some(_), Some(_), _) => SizeSource::Sides,
            (.., crate::PipelineKind::EditPlus) => SizeSource::EditPicture(dims.len()),
            _ => SizeSource::EditPicture(1),
        };
        (self.width, self.height) = (Some(w), Some(h));
        Ok(((w, h), source))
    }

    /// Fixes the output size and sets `width` and `height` to it: the aspect preset, else the
    /// sides set ([`DEFAULT_SIDE`] for a missing one), else, with neither side set and an
    /// init `image`, the image's aspect ratio at about [`IMAGE_FIT_AREA`] pixels (sides
    /// multiples of 16).
    pub fn resolve_size(&mut self, image: Option<&Image>) -> ((usize, usize), SizeSource) {
        let (size, source) = match (self.aspect, self.width, self.height, image) {
            (Some(wh), ..) => (wh, SizeSource::Aspect),
            (None, None, None, Some(img)) => (
                fit_to_area(img.width, img.height, IMAGE_FIT_AREA, 16),
                SizeSource::Image {
                    width: img.width,
                    height: img.height,
                },
            ),
            (None, w, h, _) => (
                (w.unwrap_or(DEFAULT_SIDE), h.unwrap_or(DEFAULT_SIDE)),
                SizeSource::Sides,
            ),
        };
        (self.width, self.height) = (Some(size.0), Some(size.1));
        (size, source)
    }

    /// The VAE tiling: the mode with square tiles of `vae_tile_size` (default
    /// [`DEFAULT_VAE_TILE_SIZE`]).
    pub fn vae_tiling(&self) -> VaeTiling {
        let tiles = Tiles::Square(self.vae_tile_size.unwrap_or(DEFAULT_VAE_TILE_SIZE));
        match self.vae_tiling {
            TilingMode::Auto => VaeTiling::Auto(tiles),
            TilingMode::On => VaeTiling::On(tiles),
            TilingMode::Off => VaeTiling::Off,
        }
    }

    /// The request for `prompt` (size from `width` and `height`, [`DEFAULT_SIDE`] when not
    /// set; call [`Self::resolve_size`] first): `seed` is used when no seed is set, `noise`
    /// is the initial-latents file's content, `init` the loaded image and mask. Without LoRAs
    /// or scheduler overrides ([`Self::base_request`] adds them).
    pub fn request(
        &self,
        prompt: &str,
        seed: u64,
        noise: Option<InitLatents>,
        init: Option<(Image, Option<Image>)>,
    ) -> GenerateRequest {
        let seed = self.seed.unwrap_or(seed);
        let (latents, image_noise) = match noise {
            Some(n) => (Some(n.latents), n.image_noise),
            None => (None, None),
        };
        GenerateRequest {
            prompt: prompt.to_string(),
            negative_prompt: self.negative_prompt.clone(),
            true_cfg_scale: self.true_cfg_scale,
            steps: self.steps,
            width: self.width.unwrap_or(DEFAULT_SIDE),
            height: self.height.unwrap_or(DEFAULT_SIDE),
            num_images: self.num_images,
            noise: match latents {
                Some(a) => Noise::Latents(a),
                None => Noise::Seed(seed),
            },
            max_sequence_length: self.max_sequence_length,
            vae_tiling: self.vae_tiling(),
            loras: Vec::new(),
            scheduler_overrides: None,
            edit_images: Vec::new(),
            init_image: init.map(|(image, mask)| InitImage {
                image,
                mask,
                strength: self.strength,
                image_noise,
                noise_seed: seed,
            }),
        }
    }

    /// The checks that need no model, before any path is looked at or anything is allocated
    /// from the numbers: every prompt's request against the limits ([`check_limits`]), then
    /// the LoRA scales ([`LoadSettings::loras`], returned) and the tiling
    /// ([`PipelineError::TileSizeWithTilingOff`]).
    pub fn check(
        &self,
        prompts: &[Prompt],
        seed: u64,
        init: Option<&(Image, Option<Image>)>,
    ) -> Result<Vec<Lora>> {
        for (_, p) in prompts {
            check_limits(&self.request(p, seed, None, init.cloned()))?;
        }
        let loras = self.load.loras()?;
        if let (TilingMode::Off, Some(tile_size)) = (self.vae_tiling, self.vae_tile_size) {
            return Err(PipelineError::TileSizeWithTilingOff { tile_size });
        }
        Ok(loras)
    }

    /// The files of each prompt's images ([`output_paths_for`]), after checking the output
    /// name and that every file can be written ([`check_output`]).
    pub fn outputs(&self, prompts: &[Prompt]) -> Result<Vec<Vec<PathBuf>>> {
        check_output_name(&self.output)?;
        let outputs: Vec<Vec<PathBuf>> = prompts
            .iter()
            .map(|(line, _)| output_paths_for(&self.output, *line, self.num_images))
            .collect();
        for o in outputs.iter().flatten() {
            check_output(o)?;
        }
        Ok(outputs)
    }

    /// The request every prompt's is made from ([`Self::request`] with the prompt set, or
    /// empty): the initial-latents file read, `loras`, and the scheduler overrides read.
    pub fn base_request(
        &self,
        seed: u64,
        init: Option<(Image, Option<Image>)>,
        loras: Vec<Lora>,
    ) -> Result<GenerateRequest> {
        let noise = self
            .init_latents
            .as_deref()
            .map(read_init_latents)
            .transpose()?;
        let prompt = self.prompt.as_deref().unwrap_or_default();
        let mut base = self.request(prompt, seed, noise, init);
        base.loras = loras;
        base.scheduler_overrides = self.load.scheduler_overrides()?;
        Ok(base)
    }

    /// The record of image `index` of `req` made from these settings in `dtype`.
    pub fn record(
        &self,
        req: &GenerateRequest,
        dtype: ComputeDtype,
        index: usize,
    ) -> GenerationRecord {
        let mut r = GenerationRecord::for_request(
            req,
            self.model.as_deref().unwrap_or_default(),
            dtype,
            self.load.quantize,
            index,
            self.image.as_deref(),
            self.mask.as_deref(),
        );
        r.edit_images = self
            .edit_images
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        r
    }

    /// Writes `images` of `req` to `files` in order, each with its record ([`Self::record`])
    /// when `metadata` is set, calling `on_written` after each file.
    pub fn write_images(
        &self,
        req: &GenerateRequest,
        dtype: ComputeDtype,
        images: &[Image],
        files: &[PathBuf],
        on_written: &mut dyn FnMut(&Path, &Image),
    ) -> Result<()> {
        for (i, (img, path)) in images.iter().zip(files).enumerate() {
            let text = match self.metadata {
                true => self.record(req, dtype, i).chunks(),
                false => Vec::new(),
            };
            write_png_with_text(path, img, &text)?;
            on_written(path, img);
        }
        Ok(())
    }

    /// The setting a request field comes from (a field name of these settings) and, for a
    /// number, the value it has, for messages that point at what to change: `("steps",
    /// Some("0"))`, `("vae_tile_size", Some("20"))`, `("init_latents", None)` for the noise.
    pub fn origin(&self, field: Field) -> (&'static str, Option<String>) {
        let side = |v: Option<usize>| Some(v.unwrap_or(DEFAULT_SIDE).to_string());
        match field {
            Field::Prompt => ("prompt", None),
            Field::NegativePrompt => ("negative_prompt", None),
            Field::TrueCfgScale => ("true_cfg_scale", Some(self.true_cfg_scale.to_string())),
            Field::Steps => ("steps", Some(self.steps.to_string())),
            Field::Width => ("width", side(self.width)),
            Field::Height => ("height", side(self.height)),
            Field::NumImages => ("num_images", Some(self.num_images.to_string())),
            Field::Noise | Field::ImageNoise => ("init_latents", None),
            Field::MaxSequenceLength => (
                "max_sequence_length",
                Some(self.max_sequence_length.to_string()),
            ),
            Field::VaeTiling => match self.vae_tile_size {
                Some(px) => ("vae_tile_size", Some(px.to_string())),
                None => ("vae_tiling", None),
            },
            Field::Quantize => ("quantize", None),
            Field::Image | Field::EditImages => ("image", None),
            Field::Mask => ("mask", None),
            Field::Strength => ("strength", Some(self.strength.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The model card's recommended sizes, each a multiple of 16 (4:3 / 3:4 floored as
    /// diffusers floors 1140).
    #[test]
    fn aspect_presets() {
        assert_eq!(aspect_size("16:9").ok(), Some((1664, 928)));
        assert_eq!(aspect_size(" 4:3 ").ok(), Some((1472, 1136)));
        for (k, (w, h)) in ASPECTS {
            assert_eq!(aspect_size(k).ok(), Some((w, h)));
            assert!(w % 16 == 0 && h % 16 == 0, "{k}");
        }
        let e = aspect_size("5:4").err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("`5:4` is not one of 1:1, 16:9, 9:16, 4:3, 3:4, 3:2, 2:3")
        );
    }

    fn record() -> GenerationRecord {
        let mut req = GenerateRequest::new("a fox");
        req.negative_prompt = Some("blur".into());
        (req.steps, req.width, req.height, req.true_cfg_scale) = (8, 512, 768, 2.5);
        req.noise = Noise::Seed(7);
        req.loras = vec![Lora::file("l.safetensors", 0.5)];
        GenerationRecord::for_request(
            &req,
            "Qwen/Qwen-Image",
            ComputeDtype::Bf16,
            Some(8),
            0,
            Some(Path::new("in.png")),
            None,
        )
    }

    #[test]
    fn a_record_fills_what_was_not_set_explicitly() {
        let mut s = GenerationSettings {
            steps: 20,
            seed: Some(1),
            width: Some(1024),
            ..Default::default()
        };
        s.apply_record(&record(), |x| matches!(x, Setting::Steps | Setting::Width));
        assert_eq!(s.steps, 20);
        assert_eq!((s.width, s.height), (Some(1024), Some(768)));
        assert_eq!(s.model.as_deref(), Some("Qwen/Qwen-Image"));
        assert_eq!(s.prompt.as_deref(), Some("a fox"));
        assert_eq!(s.negative_prompt.as_deref(), Some("blur"));
        assert_eq!((s.seed, s.true_cfg_scale), (Some(7), 2.5));
        assert_eq!(s.load.dtype, Some(ComputeDtype::Bf16));
        assert_eq!(s.load.quantize, Some(8));
        assert_eq!(s.load.lora, vec![PathBuf::from("l.safetensors")]);
        assert_eq!(s.load.lora_scale, vec![0.5]);
        assert_eq!(s.image, Some(PathBuf::from("in.png")));
        assert_eq!(s.mask, None);
    }

    #[test]
    fn explicit_settings_that_stand_for_others_win() {
        let mut s = GenerationSettings {
            aspect: Some((1664, 928)),
            prompt_file: Some("p.txt".into()),
            init_latents: Some("n.safetensors".into()),
            ..Default::default()
        };
        let explicit = [Setting::Aspect, Setting::PromptFile, Setting::InitLatents];
        s.apply_record(&record(), |x| explicit.contains(&x));
        assert_eq!(
            (s.width, s.height, s.prompt.as_deref(), s.seed),
            (None, None, None, None)
        );
        assert_eq!(s.resolve_size(None), ((1664, 928), SizeSource::Aspect));
        assert_eq!((s.width, s.height), (Some(1664), Some(928)));
    }

    #[test]
    fn size_from_sides_or_from_the_init_image() {
        let img = Image {
            width: 300,
            height: 200,
            data: vec![0; 300 * 200 * 3],
        };
        let mut s = GenerationSettings::default();
        assert_eq!(
            s.clone().resolve_size(None),
            ((1024, 1024), SizeSource::Sides)
        );
        let (size, source) = s.clone().resolve_size(Some(&img));
        assert_eq!(
            source,
            SizeSource::Image {
                width: 300,
                height: 200
            }
        );
        assert_eq!(size, fit_to_area(300, 200, 1 << 20, 16));
        s.height = Some(512);
        assert_eq!(s.resolve_size(Some(&img)), ((1024, 512), SizeSource::Sides));
        let req = s.request("p", 3, None, None);
        assert_eq!(
            (req.width, req.height, req.prompt.as_str()),
            (1024, 512, "p")
        );
        assert!(matches!(req.noise, Noise::Seed(3)));
        s.seed = Some(9);
        assert!(matches!(
            s.request("p", 3, None, None).noise,
            Noise::Seed(9)
        ));
    }

    #[test]
    fn loras_scales_and_tiling_are_checked() {
        let mut s = GenerationSettings::default();
        s.load.lora = vec!["a".into(), "b".into()];
        s.load.lora_scale = vec![0.5];
        let prompts = vec![(None, "p".to_string())];
        let loras = s.check(&prompts, 0, None).unwrap_or_default();
        assert_eq!(
            loras.iter().map(|l| l.scale).collect::<Vec<_>>(),
            [0.5, 1.0]
        );
        s.load.lora_scale = vec![0.5, 1.0, 2.0];
        assert!(matches!(
            s.check(&prompts, 0, None),
            Err(PipelineError::LoraScales {
                scales: 3,
                loras: 2
            })
        ));
        s.load.lora_scale.clear();
        (s.vae_tiling, s.vae_tile_size) = (TilingMode::Off, Some(256));
        assert!(matches!(
            s.check(&prompts, 0, None),
            Err(PipelineError::TileSizeWithTilingOff { tile_size: 256 })
        ));
        s.vae_tiling = TilingMode::On;
        assert_eq!(s.vae_tiling(), VaeTiling::On(Tiles::Square(256)));
        s.steps = 0;
        assert!(matches!(
            s.check(&prompts, 0, None),
            Err(PipelineError::InvalidRequest {
                field: crate::Field::Steps,
                ..
            })
        ));
    }

    #[test]
    fn request_fields_point_at_their_settings() {
        let mut s = GenerationSettings {
            steps: 0,
            width: Some(40),
            ..Default::default()
        };
        assert_eq!(s.origin(Field::Steps), ("steps", Some("0".into())));
        assert_eq!(s.origin(Field::Width), ("width", Some("40".into())));
        assert_eq!(s.origin(Field::Height), ("height", Some("1024".into())));
        assert_eq!(
            s.origin(Field::TrueCfgScale),
            ("true_cfg_scale", Some("4".into()))
        );
        assert_eq!(s.origin(Field::Strength), ("strength", Some("0.6".into())));
        assert_eq!(s.origin(Field::ImageNoise), ("init_latents", None));
        assert_eq!(s.origin(Field::VaeTiling), ("vae_tiling", None));
        s.vae_tile_size = Some(20);
        assert_eq!(
            s.origin(Field::VaeTiling),
            ("vae_tile_size", Some("20".into()))
        );
    }

    #[test]
    fn images_are_written_with_or_without_their_record() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let files = [tmp.path().join("a.png"), tmp.path().join("b.png")];
        let img = Image {
            width: 2,
            height: 1,
            data: vec![9; 6],
        };
        let mut s = GenerationSettings {
            model: Some("m".into()),
            ..Default::default()
        };
        let mut req = GenerateRequest::new("a fox");
        req.noise = Noise::Seed(5);
        let mut written = Vec::new();
        let images = [img.clone(), img];
        s.write_images(&req, ComputeDtype::F32, &images, &files, &mut |p, _| {
            written.push(p.to_path_buf())
        })?;
        assert_eq!(written, files);
        let r = crate::metadata::read_png_record(&files[1])?;
        assert_eq!((r.model.as_str(), r.seed), ("m", Some(6)));
        s.metadata = false;
        s.write_images(
            &req,
            ComputeDtype::F32,
            &images[..1],
            &files,
            &mut |_, _| {},
        )?;
        assert!(crate::metadata::read_png_record(&files[0]).is_err());
        Ok(())
    }

    #[test]
    fn prompts_and_their_output_files() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let file = tmp.path().join("prompts.txt");
        std::fs::write(&file, "# c\na fox\n\nan owl\n")?;
        let mut s = GenerationSettings {
            prompt_file: Some(file),
            num_images: 2,
            output: tmp.path().join("out.png"),
            ..Default::default()
        };
        let prompts = s.prompts()?;
        assert_eq!(
            prompts,
            vec![(Some(2), "a fox".into()), (Some(4), "an owl".into())]
        );
        assert_eq!(
            s.options(false, prompts.len()).residency,
            Residency::KeepTransformer
        );
        assert_eq!(s.options(true, 1).dtype, ComputeDtype::Bf16);
        let names = s.outputs(&prompts)?;
        assert_eq!(names[1][1], tmp.path().join("out-4-1.png"));
        s.output = tmp.path().join("out.jpg");
        assert!(s.outputs(&prompts).is_err());
        s.prompt_file = None;
        assert_eq!(s.prompts()?, vec![(None, String::new())]);
        Ok(())
    }
}
