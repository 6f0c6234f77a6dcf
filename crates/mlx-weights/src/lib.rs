//! Strict safetensors loading and saving for MLX arrays.
//!
//! Every model crate of qwen-image-rs loads its checkpoint through this crate: a diffusers or
//! transformers component folder (`transformer/`, `vae/`, `text_encoder/`) holds either one
//! `*.safetensors` file or shards listed by a `*.safetensors.index.json`. This crate knows no
//! model: it turns those files into named [`mlx_rs::Array`]s ([`Tensors`]), and
//! [`StrictLoader`] lets a model take the tensors it expects, by name and shape, and then
//! reports every missing, unexpected and mis-shaped key **in one error** — never a silent
//! partial load.
//!
//! ```no_run
//! use mlx_rs::Dtype;
//! use mlx_weights::{load_component, StrictLoader};
//!
//! # fn main() -> Result<(), mlx_weights::WeightsError> {
//! let tensors = load_component(std::path::Path::new("Qwen-Image/vae"))?;
//! let mut loader = StrictLoader::new(tensors, Dtype::Float32);
//! let w = loader.take("decoder.conv_in.weight", &[384, 16, 3, 3, 3]);
//! loader.finish(&[])?; // errors here list every problem at once
//! # let _ = w; Ok(())
//! # }
//! ```
//!
//! Files and headers, without reading data: [`component_files`] (the index's shards, confined
//! to the folder, or every `*.safetensors`), [`read_header`] (each tensor's dtype, shape and
//! byte range checked against the file; errors name the tensor and the file) and
//! [`for_each_tensor`]. [`load_file_lazy`] opens one file without reading its tensors: each is
//! read when first evaluated (MLX's lazy loader, after the same header checks), so a caller
//! that uses one tensor at a time holds one at a time — how LoRA files are merged at load.
//!
//! Tensor sources: a model describes its parameters once, taking each from a [`Vars`] (a key
//! prefix over a [`TensorSource`]) with its [`Role`]; the source is a [`StrictLoader`] (a
//! checkpoint), a [`RandomSource`] (seeded values initialised by role, for benchmarks) or a
//! [`ShapeRecorder`] (the parameter list alone).
//!
//! Saving ([`save_file`], [`write_atomic`], [`persist_atomic`]) writes to a temporary file
//! created exclusively with an unpredictable name in the destination folder and renames it, so
//! a crash never leaves a half-written file and no planted link is followed.

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use mlx_rs::{Array, Dtype};
use safetensors::tensor::{Dtype as StDtype, TensorView};

mod error;
mod files;
mod source;
pub use error::WeightsError;
pub use files::{
    ComponentFiles, Expected, Header, MAX_HEADER_BYTES, MAX_TEXT_FILE_BYTES, TensorInfo,
    check_count, check_inventory, component_files, confined_path, describe_file_type,
    for_each_tensor, inventory, read_header, read_json_object, read_regular_file,
};
pub use source::{ParamSpec, RandomSource, Role, ShapeRecorder, TensorSource, Vars};

/// Named MLX arrays read from one or more safetensors files, in their stored dtype.
#[derive(Debug, Default)]
pub struct Tensors {
    map: BTreeMap<String, Array>,
    source: PathBuf,
}

impl Tensors {
    /// An empty collection that reports `source` in its errors.
    pub fn new(source: impl Into<PathBuf>) -> Self {
        Self {
            map: BTreeMap::new(),
            source: source.into(),
        }
    }

    /// The file or folder these tensors came from (used in error messages).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Names of all tensors, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    /// The tensor called `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Array> {
        self.map.get(key)
    }

    /// Removes and returns the tensor called `key`.
    pub fn remove(&mut self, key: &str) -> Option<Array> {
        self.map.remove(key)
    }

    /// Adds or replaces a tensor.
    pub fn insert(&mut self, key: impl Into<String>, value: Array) {
        self.map.insert(key.into(), value);
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The underlying map.
    pub fn into_map(self) -> BTreeMap<String, Array> {
        self.map
    }

    fn extend_from(&mut self, other: Tensors) -> Result<(), WeightsError> {
        for (k, v) in other.map {
            if self.map.contains_key(&k) {
                return Err(WeightsError::Format {
                    path: other.source.clone(),
                    msg: format!("tensor `{k}` appears in more than one shard"),
                });
            }
            self.map.insert(k, v);
        }
        Ok(())
    }
}

fn st_dtype(key: &str, dt: Dtype) -> Result<StDtype, WeightsError> {
    Ok(match dt {
        Dtype::Bool => StDtype::BOOL,
        Dtype::Uint8 => StDtype::U8,
        Dtype::Int8 => StDtype::I8,
        Dtype::Uint16 => StDtype::U16,
        Dtype::Int16 => StDtype::I16,
        Dtype::Float16 => StDtype::F16,
        Dtype::Bfloat16 => StDtype::BF16,
        Dtype::Uint32 => StDtype::U32,
        Dtype::Int32 => StDtype::I32,
        Dtype::Float32 => StDtype::F32,
        Dtype::Uint64 => StDtype::U64,
        Dtype::Int64 => StDtype::I64,
        Dtype::Float64 => StDtype::F64,
        other => {
            return Err(WeightsError::Unsupported(format!(
                "cannot save tensor `{key}` of dtype {other:?} as safetensors"
            )));
        }
    })
}

fn array_from_view(path: &Path, key: &str, view: &TensorView<'_>) -> Result<Array, WeightsError> {
    let (dtype, elem) =
        files::dtype_of(&format!("{:?}", view.dtype())).ok_or_else(|| WeightsError::Format {
            path: path.to_path_buf(),
            msg: format!("tensor `{key}` has unsupported dtype {:?}", view.dtype()),
        })?;
    let elem = elem as usize;
    let shape = view
        .shape()
        .iter()
        .map(|&d| i32::try_from(d))
        .collect::<Result<Vec<i32>, _>>()
        .map_err(|_| WeightsError::Format {
            path: path.to_path_buf(),
            msg: format!("tensor `{key}` has a dimension too large for MLX"),
        })?;
    let data = view.data();
    let count: usize = view.shape().iter().product();
    if data.len() != count * elem {
        return Err(WeightsError::Format {
            path: path.to_path_buf(),
            msg: format!(
                "tensor `{key}` holds {} bytes, its shape {:?} needs {}",
                data.len(),
                view.shape(),
                count * elem
            ),
        });
    }
    // MLX reads the buffer as typed elements: give it an aligned copy when the file offset is
    // not a multiple of the element size (safetensors does not align its data section).
    let array = if (data.as_ptr() as usize).is_multiple_of(elem) {
        // SAFETY: `data` holds `count` elements of `dtype` (checked above), is aligned for
        // it, and MLX copies the buffer before this call returns.
        unsafe { Array::from_raw_data(data.as_ptr().cast(), &shape, dtype) }
    } else {
        let mut aligned = vec![0u64; data.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut aligned)[..data.len()].copy_from_slice(data);
        // SAFETY: as above, with an 8-byte aligned copy of the same bytes.
        unsafe { Array::from_raw_data(aligned.as_ptr().cast(), &shape, dtype) }
    };
    Ok(array)
}

/// Reads every tensor of one safetensors file, keeping the stored dtypes.
pub fn load_file(path: &Path) -> Result<Tensors, WeightsError> {
    load_file_filtered(path, &|_| true)
}

/// Opens one safetensors file without reading its tensors: each array reads its bytes from
/// the file when it is first evaluated (MLX's lazy loader), so a caller that evaluates one
/// tensor at a time holds one tensor at a time. The header is checked first as
/// [`load_file`] checks it (regular file, well-formed, offsets inside the file, known
/// dtypes), and the lazy arrays are checked against it (names, shapes, dtypes). A file whose
/// name does not end in `.safetensors` (MLX's loader requires it) is read at once, as by
/// [`load_file`].
pub fn load_file_lazy(path: &Path) -> Result<Tensors, WeightsError> {
    let header = read_header(path)?;
    if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        return load_file(path);
    }
    let bad = |msg: String| WeightsError::Format {
        path: path.to_path_buf(),
        msg,
    };
    let arrays = mlx_rs::with_device(mlx_rs::Device::cpu(), || Array::load_safetensors(path))
        .map_err(|e| bad(format!("cannot open for lazy reading: {e}")))?;
    if arrays.len() != header.tensors.len() {
        return Err(bad(format!(
            "MLX reads {} tensors, the header lists {}",
            arrays.len(),
            header.tensors.len()
        )));
    }
    let mut out = Tensors::new(path);
    let mut arrays = arrays;
    for t in &header.tensors {
        let a = arrays
            .remove(&t.name)
            .ok_or_else(|| bad(format!("MLX does not read tensor `{}`", t.name)))?;
        let shape: Vec<i64> = a.shape().iter().map(|&d| i64::from(d)).collect();
        let want: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
        if shape != want || a.dtype() != t.dtype {
            return Err(bad(format!(
                "tensor `{}`: MLX reads {:?} {:?}, the header says {:?} {:?}",
                t.name,
                a.shape(),
                a.dtype(),
                t.shape,
                t.dtype
            )));
        }
        out.map.insert(t.name.clone(), a);
    }
    Ok(out)
}

/// Reads the tensors of one safetensors file whose names pass `keep`; the others are never
/// copied into memory.
pub fn load_file_filtered(
    path: &Path,
    keep: &dyn Fn(&str) -> bool,
) -> Result<Tensors, WeightsError> {
    // The header check names the tensor and the file at fault (safetensors' own errors
    // name neither) and refuses what is not a regular file before it is mapped.
    read_header(path)?;
    let io = |source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(io)?;
    // SAFETY: the mapping is read-only and only lives for this call; every tensor is copied
    // into an MLX buffer before it is dropped.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    let st = safetensors::SafeTensors::deserialize(&mmap).map_err(|e| WeightsError::Format {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    let mut out = Tensors::new(path);
    for (key, view) in st.tensors() {
        if !keep(&key) {
            continue;
        }
        let array = array_from_view(path, &key, &view)?;
        out.map.insert(key, array);
    }
    Ok(out)
}

/// Reads a component folder: the shards named by its `*.safetensors.index.json` when there
/// is one (every shard must exist and every indexed tensor must be found in its shard),
/// otherwise every `*.safetensors` file in the folder.
pub fn load_component(dir: &Path) -> Result<Tensors, WeightsError> {
    load_component_filtered(dir, &|_| true)
}

/// [`load_component`] keeping only the tensors whose names pass `keep` (e.g. to skip a vision
/// tower the model never uses without materialising it). Index consistency is still checked
/// for every key.
pub fn load_component_filtered(
    dir: &Path,
    keep: &dyn Fn(&str) -> bool,
) -> Result<Tensors, WeightsError> {
    let files = component_files(dir)?;
    let mut out = Tensors::new(dir);
    for f in &files.files {
        out.extend_from(load_file_filtered(f, keep)?)?;
    }
    if let (Some(index), Some(map)) = (&files.index, &files.weight_map) {
        let missing: Vec<String> = map
            .keys()
            .filter(|k| keep(k) && !out.map.contains_key(*k))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(WeightsError::Format {
                path: index.clone(),
                msg: format!(
                    "tensors listed in the index but absent from their shards: {missing:?}"
                ),
            });
        }
    }
    Ok(out)
}

fn is_floating(dtype: Dtype) -> bool {
    matches!(
        dtype,
        Dtype::Float16 | Dtype::Bfloat16 | Dtype::Float32 | Dtype::Float64
    )
}

/// Takes tensors out of a [`Tensors`] by name and expected shape, recording every problem,
/// and reports them all at [`StrictLoader::finish`].
///
/// A missing or mis-shaped key yields a zero array of the expected shape so that model
/// construction can continue and the final error lists *all* problems, not just the first.
#[derive(Debug)]
pub struct StrictLoader {
    tensors: Tensors,
    dtype: Dtype,
    missing: Vec<String>,
    mismatched: Vec<(String, Vec<i32>, Vec<i32>)>,
}

impl StrictLoader {
    /// Wraps `tensors`; floating tensors taken with [`StrictLoader::take`] are cast to `dtype`.
    pub fn new(tensors: Tensors, dtype: Dtype) -> Self {
        Self {
            tensors,
            dtype,
            missing: Vec::new(),
            mismatched: Vec::new(),
        }
    }

    /// The compute dtype floating tensors are cast to.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Whether a tensor called `key` is still available.
    pub fn has(&self, key: &str) -> bool {
        self.tensors.get(key).is_some()
    }

    /// The shape of the tensor called `key`, if still available.
    pub fn shape_of(&self, key: &str) -> Option<Vec<i32>> {
        self.tensors.get(key).map(|a| a.shape().to_vec())
    }

    /// Takes `key` with exactly `shape`, cast to the loader's dtype when floating.
    pub fn take(&mut self, key: &str, shape: &[i32]) -> Array {
        let a = self.take_raw(key, shape);
        if is_floating(a.dtype()) && a.dtype() != self.dtype {
            // Casting cannot fail for floating dtypes; fall back to the stored array if it
            // somehow does, and the dtype mismatch will surface in the model's tests.
            a.as_dtype(self.dtype).unwrap_or(a)
        } else {
            a
        }
    }

    /// Takes `key` with exactly `shape`, in its stored dtype (e.g. packed `u32` weights).
    pub fn take_raw(&mut self, key: &str, shape: &[i32]) -> Array {
        match self.tensors.remove(key) {
            Some(a) if a.shape() == shape => a,
            Some(a) => {
                self.mismatched
                    .push((key.to_string(), shape.to_vec(), a.shape().to_vec()));
                zeros(shape, a.dtype())
            }
            None => {
                self.missing.push(key.to_string());
                zeros(shape, self.dtype)
            }
        }
    }

    /// Takes `key` if present (checking its shape), `None` if absent. Absence is not an error.
    pub fn take_opt(&mut self, key: &str, shape: &[i32]) -> Option<Array> {
        if self.has(key) {
            Some(self.take(key, shape))
        } else {
            None
        }
    }

    /// Takes `key` whatever its shape (the caller validates it), in its stored dtype.
    pub fn take_any(&mut self, key: &str) -> Option<Array> {
        let a = self.tensors.remove(key);
        if a.is_none() {
            self.missing.push(key.to_string());
        }
        a
    }

    /// Records a problem found by the caller (e.g. an inconsistent pair of shapes).
    pub fn record_mismatch(&mut self, key: &str, expected: &[i32], got: &[i32]) {
        self.mismatched
            .push((key.to_string(), expected.to_vec(), got.to_vec()));
    }

    /// Ends loading: an error listing every missing, unexpected (left over and not under one of
    /// `ignored_prefixes`) and mis-shaped key, or `Ok` when everything matched.
    pub fn finish(self, ignored_prefixes: &[&str]) -> Result<(), WeightsError> {
        let unexpected: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| !ignored_prefixes.iter().any(|p| k.starts_with(p)))
            .map(str::to_string)
            .collect();
        if self.missing.is_empty() && unexpected.is_empty() && self.mismatched.is_empty() {
            return Ok(());
        }
        Err(WeightsError::Mismatch {
            path: self.tensors.source().to_path_buf(),
            missing: self.missing,
            unexpected,
            mismatched: self.mismatched,
        })
    }
}

fn zeros(shape: &[i32], dtype: Dtype) -> Array {
    // Zeros of a valid shape cannot fail to build; an empty array stands in if MLX refuses.
    mlx_rs::ops::zeros_dtype(shape, dtype).unwrap_or_else(|_| Array::from_slice::<f32>(&[], &[0]))
}

fn array_bytes(key: &str, a: &Array) -> Result<Vec<u8>, WeightsError> {
    let a = if a.dtype() == Dtype::Bool {
        a.as_dtype(Dtype::Uint8)?
    } else {
        a.clone()
    };
    let a = a.contiguous()?;
    a.eval()?;
    macro_rules! bytes {
        ($t:ty) => {
            bytemuck::cast_slice::<$t, u8>(a.try_as_slice::<$t>().map_err(|e| {
                WeightsError::Unsupported(format!("cannot read tensor `{key}`: {e:?}"))
            })?)
            .to_vec()
        };
    }
    Ok(match a.dtype() {
        Dtype::Uint8 => bytes!(u8),
        Dtype::Int8 => bytes!(i8),
        Dtype::Uint16 => bytes!(u16),
        Dtype::Int16 => bytes!(i16),
        Dtype::Float16 => bytes!(half::f16),
        Dtype::Bfloat16 => bytes!(half::bf16),
        Dtype::Uint32 => bytes!(u32),
        Dtype::Int32 => bytes!(i32),
        Dtype::Float32 => bytes!(f32),
        Dtype::Uint64 => bytes!(u64),
        Dtype::Int64 => bytes!(i64),
        Dtype::Float64 => bytes!(f64),
        other => {
            return Err(WeightsError::Unsupported(format!(
                "cannot save tensor `{key}` of dtype {other:?}"
            )));
        }
    })
}

/// Writes `tensors` as one safetensors file, atomically (temporary file + rename), with
/// optional string metadata.
pub fn save_file_with_metadata(
    path: &Path,
    tensors: &BTreeMap<String, Array>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<(), WeightsError> {
    let mut owned = Vec::with_capacity(tensors.len());
    for (k, a) in tensors {
        let dt = if a.dtype() == Dtype::Bool {
            StDtype::BOOL
        } else {
            st_dtype(k, a.dtype())?
        };
        let shape: Vec<usize> = a.shape().iter().map(|&d| d as usize).collect();
        owned.push((k.clone(), dt, shape, array_bytes(k, a)?));
    }
    let views = owned
        .iter()
        .map(|(k, dt, shape, bytes)| {
            TensorView::new(*dt, shape.clone(), bytes)
                .map(|v| (k.clone(), v))
                .map_err(|e| WeightsError::Unsupported(format!("tensor `{k}`: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = safetensors::serialize(views, metadata).map_err(|e| {
        WeightsError::Unsupported(format!("cannot serialise {}: {e}", path.display()))
    })?;
    write_atomic(path, &bytes)
}

/// Writes `tensors` as one safetensors file, atomically (temporary file + rename).
pub fn save_file(path: &Path, tensors: &BTreeMap<String, Array>) -> Result<(), WeightsError> {
    save_file_with_metadata(path, tensors, None)
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so
/// readers see either the old file or the complete new one. The temporary file has an
/// unpredictable name and is created exclusively (never through a planted link), and is
/// removed when anything fails.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WeightsError> {
    persist_atomic(path, |f| f.write_all(bytes))
}

/// Runs `write` on a new temporary file in `path`'s folder (exclusive, unpredictable name),
/// syncs it and renames it to `path`; on any failure the temporary file is removed and
/// `path` is left as it was.
pub fn persist_atomic(
    path: &Path,
    write: impl FnOnce(&mut fs::File) -> std::io::Result<()>,
) -> Result<(), WeightsError> {
    let io = |source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".qwen-tmp-")
        .tempfile_in(&dir)
        .map_err(io)?;
    // The temporary file is private (0600); the result gets the permissions of the file it
    // replaces, or the usual 0644 for a new one.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0o644);
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io)?;
    }
    write(tmp.as_file_mut()).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests;
