//! `qwen-image`: generate images with Qwen-Image on MLX. A thin program over the `qwen_image`
//! library: arguments → the library's settings ([`args`]), the library's checks, run and
//! summary, progress displays ([`progress`]); it maps the library's typed errors onto the
//! flags the user typed.

mod args;
mod generate;
mod progress;
mod serve;
mod warmup;

use clap::{CommandFactory, FromArgMatches};
use qwen_image::settings::GenerationSettings;
use qwen_image::{NonFiniteAdvice, PipelineError};

use crate::args::{Cli, Command};

/// `println!` that never panics: a closed or full stdout only loses the text.
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// `eprintln!` that never panics: a closed or full stderr only loses the text.
#[macro_export]
macro_rules! eout {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

/// The library's error in the words of this program's flags.
pub(crate) fn cli_error(e: PipelineError, s: &GenerationSettings) -> anyhow::Error {
    match &e {
        PipelineError::InvalidRequest { field, .. } => {
            anyhow::anyhow!("{}: {e}", args::flag_for(s, *field))
        }
        PipelineError::InputImage { .. } => match (&s.image, &s.mask) {
            (Some(i), _) if e.to_string().contains(&i.display().to_string()) => {
                anyhow::anyhow!("--image: {e}")
            }
            (_, Some(_)) => anyhow::anyhow!("--mask: {e}"),
            _ => e.into(),
        },
        PipelineError::InitLatents { path: None, .. } => match &s.init_latents {
            Some(p) => anyhow::anyhow!("--init-latents {}: {e}", p.display()),
            None => e.into(),
        },
        PipelineError::NonFiniteLatents { advice, .. } => anyhow::anyhow!(
            "{e}{}",
            match advice {
                NonFiniteAdvice::UseBf16OrF32 =>
                    "; use bf16 (`--dtype bf16`) or f32 (`--dtype f32`)",
                NonFiniteAdvice::TryF32 => "; try `--dtype f32`",
                NonFiniteAdvice::CheckInputs => " (and --init-latents, when given)",
            }
        ),
        PipelineError::TileSizeWithTilingOff { .. } => {
            anyhow::anyhow!("--vae-tile-size has no effect with --vae-tiling off")
        }
        _ => load_error(e),
    }
}

/// An error of finding or loading a model in the words of the flags `generate` and `serve`
/// share.
pub(crate) fn load_error(e: PipelineError) -> anyhow::Error {
    match &e {
        PipelineError::ModelNotFound { spec, msg } => anyhow::anyhow!("--model {spec}: {msg}"),
        PipelineError::NotInCache { repo_id, .. } => anyhow::anyhow!(
            "{e}; offline (--offline or HF_HUB_OFFLINE): run `qwen-image download {repo_id}` \
             while online"
        ),
        PipelineError::Lora { lora, msg } => anyhow::anyhow!("--lora {lora}: {msg}"),
        PipelineError::LoraScales { scales, loras } => anyhow::anyhow!(
            "--lora-scale is given {scales} times for {loras} --lora: the i-th --lora-scale \
             belongs to the i-th --lora"
        ),
        PipelineError::SchedulerOverride { origin, source } => {
            anyhow::anyhow!("--scheduler-config {origin}: {source}")
        }
        PipelineError::MfluxCheckpoint { .. } => {
            anyhow::anyhow!("{e}: use it with --quantize 4|8 to quantize it on load")
        }
        _ => e.into(),
    }
}

/// `qwen-image download MODEL`: fetches without generating.
fn download_only(args: &args::DownloadArgs) -> anyhow::Result<()> {
    let dir = progress::download(&args.model, &args.revision)?;
    out!("{}", dir.display());
    Ok(())
}

fn main() -> std::process::ExitCode {
    // Before anything else runs (no other thread yet): MLX's compiled GPU kernels go to a
    // per-user cache that survives reboots, unless MLX_PTX_CACHE_DIR says otherwise.
    if let Ok(version) = qwen_image::info::mlx_version() {
        // SAFETY: single-threaded here, and MLX has compiled nothing yet.
        unsafe { qwen_image::kernel_cache::use_persistent_cache(&version) };
    }
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Info => qwen_image::info::runtime_info()
            .map(|i| {
                use std::io::Write as _;
                let _ = write!(std::io::stdout(), "{i}");
            })
            .map_err(anyhow::Error::from),
        Command::Generate(args) => {
            generate::generate(*args, matches.subcommand_matches("generate"))
        }
        Command::Edit(args) => generate::edit(&args),
        Command::Download(args) => download_only(&args),
        Command::Serve(args) => serve::serve(*args),
        Command::Warmup(args) => warmup::warmup(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eout!("error: {}", qwen_image::error::display_chain(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}
