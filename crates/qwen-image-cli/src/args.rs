//! Command-line arguments and their one conversion into the library's request and options.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use qwen_image::settings::{GenerationSettings, LoadSettings, TilingMode};
use qwen_image::{ComputeDtype, Field};

/// Qwen-Image text-to-image inference on MLX (Metal, CUDA or CPU).
///
/// `qwen-image generate --model Qwen/Qwen-Image --prompt "..." --output out.png` generates an
/// image; `qwen-image info` shows the MLX runtime. See `qwen-image generate --help`.
#[derive(Debug, Parser)]
#[command(name = "qwen-image", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the MLX version, the backend in use, the default device and its memory.
    Info,
    /// Generate images from a text prompt.
    ///
    /// Example: qwen-image generate --model Qwen/Qwen-Image --prompt "a red fox in the snow,
    /// watercolor" --negative-prompt " " --seed 42 --output fox.png
    Generate(Box<GenerateArgs>),
    /// Edit pictures with a Qwen-Image-Edit checkpoint (QwenImageEditPipeline: Qwen-Image-Edit,
    /// one picture; QwenImageEditPlusPipeline: Edit-2509 and Edit-2511, one or more).
    ///
    /// Example: qwen-image edit --model Qwen/Qwen-Image-Edit-2509 --image cat.png --prompt
    /// "make the cat wear a red scarf" --negative-prompt " " --seed 42 --output scarf.png
    Edit(Box<EditArgs>),
    /// Download a checkpoint from the Hugging Face hub into the local cache (only the files
    /// the engine reads), without generating; prints the snapshot folder.
    Download(DownloadArgs),
    /// Keep the model loaded and generate over HTTP: an OpenAI-style images API, job
    /// progress as server-sent events, and a web page at /.
    ///
    /// Example: qwen-image serve --model Qwen/Qwen-Image --port 8080, then open
    /// http://127.0.0.1:8080/ or POST {"prompt": "a red fox"} to /v1/images/generations.
    Serve(Box<ServeArgs>),
    /// Compile the GPU kernels a model needs ahead of time: one small generation with the same
    /// loading flags, nothing written. On CUDA, MLX compiles its quantized kernels at first
    /// use (about a minute) and keeps them in a per-user cache (MLX_PTX_CACHE_DIR, default
    /// ~/.cache/qwen-image-rs/mlx-kernels).
    Warmup(WarmupArgs),
}

/// `warmup`'s arguments.
#[derive(Debug, clap::Args)]
pub struct WarmupArgs {
    /// Checkpoint: a directory in the diffusers layout or a Hugging Face id (as for
    /// `generate`).
    #[arg(long, value_name = "DIR|HUB_ID")]
    pub model: String,
    /// How the model is found and loaded (the same flags as the runs to come).
    #[command(flatten)]
    pub load: LoadArgs,
}

/// `serve`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Checkpoint: a directory in the diffusers layout or a Hugging Face id (as for
    /// `generate`).
    #[arg(long, value_name = "DIR|HUB_ID")]
    pub model: String,
    /// Address to listen on. Anything but a loopback address needs --api-key.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Jobs that may wait while one runs; one more is answered 429 with Retry-After.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_queue: u32,
    /// The key clients must send as `Authorization: Bearer KEY` (required to listen on a
    /// non-loopback address).
    #[arg(long, env = "QWEN_IMAGE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Largest request body in MiB (pictures travel as base64, a third larger than the file).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_body_mb: u32,
    /// How the model is found and loaded.
    #[command(flatten)]
    pub load: LoadArgs,
}

/// `download`'s arguments.
#[derive(Debug, clap::Args)]
pub struct DownloadArgs {
    /// A Hugging Face id such as Qwen/Qwen-Image.
    pub model: String,
    /// Branch, tag or commit to fetch.
    #[arg(long, default_value = "main")]
    pub revision: String,
}

/// `--vae-tiling`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TilingArg {
    /// Tile images of more than 2²¹ pixels (2.1 MPx, e.g. 2048×1152 and up); every official
    /// Qwen-Image size (up to 1328²) decodes whole.
    Auto,
    /// Always tile.
    On,
    /// Never tile (memory grows with about the square of the pixel count).
    Off,
}

/// `generate`'s arguments.
#[derive(Debug, clap::Args)]
#[command(allow_negative_numbers = true)]
pub struct GenerateArgs {
    /// Checkpoint: a directory in the diffusers layout (model_index.json, transformer/, vae/,
    /// text_encoder/, tokenizer/, scheduler/) or a Hugging Face id such as Qwen/Qwen-Image,
    /// looked up in the local Hugging Face cache ($HF_HUB_CACHE, else $HF_HOME/hub, else
    /// ~/.cache/huggingface/hub) and downloaded into it when missing or incomplete (only the
    /// files the engine reads; HF_TOKEN, HF_ENDPOINT honoured; an interrupted download
    /// resumes).
    #[arg(long, value_name = "DIR|HUB_ID", required_unless_present = "from_png")]
    pub model: Option<String>,
    /// The text prompt.
    #[arg(long, required_unless_present_any = ["prompt_file", "from_png"], conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// A file of prompts, one per line (blank lines and lines starting with # skipped): one
    /// generation per prompt, its images named after the line number (FILE-<line>.png, or
    /// FILE-<line>-<i>.png with --num-images).
    #[arg(long, value_name = "FILE")]
    pub prompt_file: Option<PathBuf>,
    /// Re-run with the parameters stored in a PNG this program wrote (prompt, seed, steps,
    /// size, CFG, LoRAs, …); flags given on the command line win.
    #[arg(long, value_name = "FILE.png")]
    pub from_png: Option<PathBuf>,
    /// One of Qwen-Image's recommended sizes: 1:1 (1328²), 16:9 (1664×928), 9:16 (928×1664),
    /// 4:3 (1472×1136), 3:4 (1136×1472), 3:2 (1584×1056), 2:3 (1056×1584). The model card's
    /// 1472×1140 is not a multiple of 16: diffusers floors it to 1136, as here.
    #[arg(long, value_parser = qwen_image::settings::aspect_size, conflicts_with_all = ["width", "height"])]
    pub aspect: Option<(usize, usize)>,
    /// Do not write the generation parameters into the PNG files.
    #[arg(long)]
    pub no_metadata: bool,
    /// Print a machine-readable JSON summary on stdout (files, seeds, timings, peak memory)
    /// instead of the human one.
    #[arg(long)]
    pub json: bool,
    /// Negative prompt. True CFG (two transformer passes per step) runs only with a negative
    /// prompt and --true-cfg-scale > 1.
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// True classifier-free guidance scale.
    #[arg(long, default_value_t = 4.0)]
    pub true_cfg_scale: f32,
    /// Denoising steps (1..=1000; at least 2 with a scheduler that stretches its schedule to a
    /// terminal sigma, as Qwen-Image's does: one step has the single sigma 1).
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Image width in pixels (a multiple of 16, at most 8192) [default: 1024; with --image,
    /// the image's aspect ratio at about 1024² pixels].
    #[arg(long)]
    pub width: Option<usize>,
    /// Image height in pixels (a multiple of 16, at most 8192) [default: 1024; with --image,
    /// the image's aspect ratio at about 1024² pixels].
    #[arg(long)]
    pub height: Option<usize>,
    /// Start from this picture (img2img): it is resized to the output size (Lanczos, as
    /// diffusers), encoded, noised to the first kept step and denoised over the last
    /// strength × steps steps. PNG, JPEG or WebP; EXIF orientation is applied.
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
    /// With --image: inpaint, repainting where the mask is white (≥ 50 % gray after
    /// resizing) and keeping the picture where it is black.
    #[arg(long, value_name = "FILE", requires = "image")]
    pub mask: Option<PathBuf>,
    /// With --image: how much to change the picture, in (0, 1]; the last int(steps ×
    /// strength) steps run.
    #[arg(long, value_name = "X", requires = "image", default_value_t = qwen_image::img2img::DEFAULT_STRENGTH)]
    pub strength: f64,
    /// Seed of the initial noise (MLX's generator); image i of --num-images uses seed + i.
    /// Random (and printed) when absent.
    #[arg(long, conflicts_with = "init_latents")]
    pub seed: Option<u64>,
    /// Initial noise from a safetensors file: a float32 tensor `latents` of shape
    /// (N, 1, 16, H/8, W/8) (diffusers' unpacked noise layout; N = --num-images) and, with
    /// --image, optionally `image_noise` (N, 16, 1, H/8, W/8): the ε of the picture's posterior
    /// sample (drawn from the seed when absent).
    #[arg(long, value_name = "FILE")]
    pub init_latents: Option<PathBuf>,
    /// Number of images (1..=64). With N > 1 the files are FILE-0.png, FILE-1.png, … next to --output.
    #[arg(long, default_value_t = 1)]
    pub num_images: usize,
    /// Output PNG (written atomically: nothing appears under this name unless the run
    /// succeeds).
    #[arg(long, value_name = "FILE.png", default_value = "qwen-image.png")]
    pub output: PathBuf,
    /// Maximum prompt length in tokens after the template (1..=1024).
    #[arg(long, default_value_t = qwen_text_encoder::DEFAULT_MAX_SEQUENCE_LENGTH)]
    pub max_sequence_length: usize,
    /// When the VAE decodes tile by tile (overlapping tiles, linearly blended, as diffusers'
    /// `vae.enable_tiling()`), which bounds decode memory by one tile whatever the image
    /// size; tiled and whole decodes differ slightly.
    #[arg(long, value_enum, default_value_t = TilingArg::Auto)]
    pub vae_tiling: TilingArg,
    /// Square tile size in pixels for tiled decode: a positive multiple of the VAE's
    /// compression (8); tiles are 3/4 of it apart (1024 → 768 px stride, 256 px overlap).
    /// 256 is diffusers' size: ~8× less memory, ~3× slower than 1024 [default: 1024].
    #[arg(long, value_name = "PX")]
    pub vae_tile_size: Option<usize>,
    /// How the model is found and loaded.
    #[command(flatten)]
    pub load: LoadArgs,
}

/// `edit`'s arguments.
#[derive(Debug, clap::Args)]
#[command(allow_negative_numbers = true)]
pub struct EditArgs {
    /// Checkpoint of an edit pipeline (model_index.json's _class_name QwenImageEditPipeline
    /// or QwenImageEditPlusPipeline, with processor/): a directory in the diffusers layout or
    /// a Hugging Face id such as Qwen/Qwen-Image-Edit-2509 (found and downloaded as for
    /// `generate`).
    #[arg(long, value_name = "DIR|HUB_ID")]
    pub model: String,
    /// A picture to edit (PNG, JPEG or WebP; EXIF orientation applied). Repeatable for
    /// QwenImageEditPlusPipeline checkpoints (at most 8; the prompt can call them "picture
    /// 1", "picture 2", … in this order); QwenImageEditPipeline takes exactly one.
    #[arg(long, value_name = "FILE", required = true)]
    pub image: Vec<PathBuf>,
    /// The edit instruction.
    #[arg(long)]
    pub prompt: String,
    /// Negative prompt. True CFG (two transformer passes per step) runs only with a negative
    /// prompt and --true-cfg-scale > 1; it sees the same pictures.
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// True classifier-free guidance scale.
    #[arg(long, default_value_t = 4.0)]
    pub true_cfg_scale: f32,
    /// Denoising steps (1..=1000).
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Output width in pixels (a multiple of 16, at most 8192) [default: from the first
    /// picture (Edit) or the last (Edit-Plus): its aspect ratio at about 1024² pixels, sides
    /// multiples of 32, as diffusers].
    #[arg(long)]
    pub width: Option<usize>,
    /// Output height in pixels (a multiple of 16, at most 8192) [default: as --width].
    #[arg(long)]
    pub height: Option<usize>,
    /// Seed of the initial noise (MLX's generator); image i of --num-images uses seed + i.
    /// Random (and printed) when absent.
    #[arg(long, conflicts_with = "init_latents")]
    pub seed: Option<u64>,
    /// Initial noise from a safetensors file: a float32 tensor `latents` of shape
    /// (N, 1, 16, H/8, W/8) (diffusers' unpacked noise layout; N = --num-images).
    #[arg(long, value_name = "FILE")]
    pub init_latents: Option<PathBuf>,
    /// Number of images (1..=64). With N > 1 the files are FILE-0.png, FILE-1.png, … next to --output.
    #[arg(long, default_value_t = 1)]
    pub num_images: usize,
    /// Output PNG (written atomically: nothing appears under this name unless the run
    /// succeeds).
    #[arg(long, value_name = "FILE.png", default_value = "qwen-image-edit.png")]
    pub output: PathBuf,
    /// Do not write the edit's parameters into the PNG files.
    #[arg(long)]
    pub no_metadata: bool,
    /// Print a machine-readable JSON summary on stdout instead of the human one.
    #[arg(long)]
    pub json: bool,
    /// When the VAE decodes tile by tile (as for `generate`).
    #[arg(long, value_enum, default_value_t = TilingArg::Auto)]
    pub vae_tiling: TilingArg,
    /// How the model is found and loaded.
    #[command(flatten)]
    pub load: LoadArgs,
}

impl EditArgs {
    /// The library's settings these arguments give.
    pub fn settings(&self) -> GenerationSettings {
        GenerationSettings {
            model: Some(self.model.clone()),
            prompt: Some(self.prompt.clone()),
            negative_prompt: self.negative_prompt.clone(),
            true_cfg_scale: self.true_cfg_scale,
            steps: self.steps,
            width: self.width,
            height: self.height,
            edit_images: self.image.clone(),
            seed: self.seed,
            init_latents: self.init_latents.clone(),
            num_images: self.num_images,
            output: self.output.clone(),
            vae_tiling: self.vae_tiling.mode(),
            metadata: !self.no_metadata,
            load: self.load.settings(),
            ..GenerationSettings::default()
        }
    }
}

impl TilingArg {
    /// The library's tiling mode.
    pub fn mode(self) -> TilingMode {
        match self {
            TilingArg::Auto => TilingMode::Auto,
            TilingArg::On => TilingMode::On,
            TilingArg::Off => TilingMode::Off,
        }
    }
}

/// The flags that find and load a model, shared by `generate` and `serve`.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Branch, tag or commit of a hub id.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Never download: fail when a hub id is not in the local cache (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    /// Compute dtype: f32, bf16 or f16 [default: bf16 on a GPU, f32 on the CPU].
    #[arg(long)]
    pub dtype: Option<ComputeDtype>,
    /// Quantize the transformer's Linear layers to 4 or 8 bits when loading (MLX affine,
    /// group size 64).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["4", "8"]))]
    pub quantize: Option<String>,
    /// A LoRA to merge into the transformer (safetensors; every layout diffusers loads for
    /// Qwen-Image: diffusers/PEFT, kohya `lora_unet_…`, `diffusion_model.…`, bare
    /// lora_down/lora_up with alpha as the Lightning files). Repeatable: several LoRAs add up
    /// as diffusers' `set_adapters(names, adapter_weights)`.
    #[arg(long, value_name = "FILE")]
    pub lora: Vec<PathBuf>,
    /// The weight of the i-th --lora (repeatable, in the order of --lora; default 1.0 for
    /// each LoRA without one).
    #[arg(long, value_name = "X")]
    pub lora_scale: Vec<f32>,
    /// A JSON object of diffusers `FlowMatchEulerDiscreteScheduler` config keys replacing
    /// the checkpoint's scheduler/scheduler_config.json, e.g. the Qwen-Image-Lightning recipe
    /// (`base_shift` = `max_shift` = ln 3, `shift_terminal` null). An unknown key is an error.
    #[arg(long, value_name = "FILE")]
    pub scheduler_config: Option<PathBuf>,
}

impl LoadArgs {
    /// The library's settings these flags give.
    pub fn settings(&self) -> LoadSettings {
        LoadSettings {
            revision: self.revision.clone(),
            offline: self.offline,
            dtype: self.dtype,
            quantize: self.quantize.as_deref().and_then(|b| b.parse().ok()),
            lora: self.lora.clone(),
            lora_scale: self.lora_scale.clone(),
            scheduler_config: self.scheduler_config.clone(),
        }
    }
}

impl GenerateArgs {
    /// The library's settings these arguments give (before a PNG's record fills the rest).
    pub fn settings(&self) -> GenerationSettings {
        GenerationSettings {
            model: self.model.clone(),
            prompt: self.prompt.clone(),
            prompt_file: self.prompt_file.clone(),
            negative_prompt: self.negative_prompt.clone(),
            true_cfg_scale: self.true_cfg_scale,
            steps: self.steps,
            aspect: self.aspect,
            width: self.width,
            height: self.height,
            image: self.image.clone(),
            mask: self.mask.clone(),
            edit_images: Vec::new(),
            strength: self.strength,
            seed: self.seed,
            init_latents: self.init_latents.clone(),
            num_images: self.num_images,
            output: self.output.clone(),
            max_sequence_length: self.max_sequence_length,
            vae_tiling: self.vae_tiling.mode(),
            vae_tile_size: self.vae_tile_size,
            metadata: !self.no_metadata,
            load: self.load.settings(),
        }
    }
}

/// The flag (and the value given) a request field came from, for error messages: the
/// setting it comes from ([`GenerationSettings::origin`]) is the flag's name.
pub fn flag_for(s: &GenerationSettings, field: Field) -> String {
    let (name, value) = s.origin(field);
    let flag = format!("--{}", name.replace('_', "-"));
    match (field, value) {
        (Field::ImageNoise, _) => format!("{flag} (image_noise)"),
        (_, Some(v)) => format!("{flag} {v}"),
        (_, None) => flag,
    }
}
