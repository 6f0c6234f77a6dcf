use std::path::PathBuf;

/// Errors from reading, checking or writing safetensors checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder at fault.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not a valid safetensors file or shard index.
    #[error("{path}: {msg}")]
    Format {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// The checkpoint does not hold exactly the tensors the model expects.
    #[error("{}", mismatch_message(path, missing, unexpected, mismatched))]
    Mismatch {
        /// The checkpoint file or folder.
        path: PathBuf,
        /// Keys the model needs that the checkpoint lacks.
        missing: Vec<String>,
        /// Keys in the checkpoint the model does not use.
        unexpected: Vec<String>,
        /// Keys whose shape differs: (key, expected, found).
        mismatched: Vec<(String, Vec<i32>, Vec<i32>)>,
    },
    /// A dtype or operation this crate cannot handle.
    #[error("{0}")]
    Unsupported(String),
    /// An MLX operation failed.
    #[error("mlx: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
}

fn list(keys: &[String]) -> String {
    const SHOWN: usize = 20;
    let mut s = keys
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if keys.len() > SHOWN {
        s.push_str(&format!(", … ({} more)", keys.len() - SHOWN));
    }
    s
}

fn mismatch_message(
    path: &std::path::Path,
    missing: &[String],
    unexpected: &[String],
    mismatched: &[(String, Vec<i32>, Vec<i32>)],
) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("{} missing: {}", missing.len(), list(missing)));
    }
    if !unexpected.is_empty() {
        parts.push(format!(
            "{} unexpected: {}",
            unexpected.len(),
            list(unexpected)
        ));
    }
    if !mismatched.is_empty() {
        let shown: Vec<String> = mismatched
            .iter()
            .map(|(k, e, g)| format!("{k} (expected {e:?}, found {g:?})"))
            .collect();
        parts.push(format!("{} mis-shaped: {}", mismatched.len(), list(&shown)));
    }
    format!(
        "{}: checkpoint does not match the model: {}",
        path.display(),
        parts.join("; ")
    )
}
