//! Which files hold a component's weights, and what a safetensors header says, without
//! reading any tensor data.
//!
//! [`component_files`] lists a component folder's weight files: the shards named by its
//! `*.safetensors.index.json` when there is one, otherwise every `*.safetensors` file. Paths
//! named by an index are confined to the folder: an absolute path, a `..` component or a
//! link leading outside it is refused.
//!
//! [`read_header`] parses one file's header (bounded in size) and checks each tensor's entry
//! against the file: a dtype it knows, a byte range that matches the shape and lies inside the
//! data section, ranges that do not overlap. A truncated or inconsistent file is therefore
//! reported with the tensor and the file at fault before anything is loaded.
//! [`for_each_tensor`] walks every tensor of a component through those headers.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use mlx_rs::Dtype;

use crate::error::WeightsError;

/// Largest safetensors header accepted (the format's own limit is 100 MB).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The weight files of one component folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentFiles {
    /// The folder.
    pub dir: PathBuf,
    /// The shard index, when the folder has one.
    pub index: Option<PathBuf>,
    /// The index's `weight_map` (tensor name → shard file name), when there is an index.
    pub weight_map: Option<BTreeMap<String, String>>,
    /// The safetensors files to read, sorted: the index's shards, or every
    /// `*.safetensors` file of the folder.
    pub files: Vec<PathBuf>,
}

fn format_err(path: &Path, msg: impl Into<String>) -> WeightsError {
    WeightsError::Format {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WeightsError + '_ {
    move |source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `name` resolved inside `dir`, or an error when it would leave the folder: an absolute
/// path, a `..` component, or (for an existing file) a link whose target lies outside `dir`.
pub fn confined_path(dir: &Path, name: &str, named_in: &Path) -> Result<PathBuf, WeightsError> {
    let rel = Path::new(name);
    let plain = !name.is_empty()
        && rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !plain {
        return Err(format_err(
            named_in,
            format!("`{name}` is not a file name inside {}", dir.display()),
        ));
    }
    let path = dir.join(rel);
    if let (Ok(real_dir), Ok(real)) = (fs::canonicalize(dir), fs::canonicalize(&path))
        && !real.starts_with(&real_dir)
    {
        return Err(format_err(
            named_in,
            format!(
                "`{name}` leads outside {} (to {})",
                dir.display(),
                real.display()
            ),
        ));
    }
    Ok(path)
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// Lists the weight files of a component folder (see the module docs). Fails when the folder
/// cannot be read, holds more than one index, an index is not valid JSON with a
/// `weight_map`, names a shard outside the folder or a missing shard, or when there is
/// neither an index nor a `*.safetensors` file.
pub fn component_files(dir: &Path) -> Result<ComponentFiles, WeightsError> {
    let mut index_files = Vec::new();
    let mut st_files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".safetensors.index.json") {
            index_files.push(path);
        } else if name.ends_with(".safetensors") {
            st_files.push(path);
        }
    }
    index_files.sort();
    st_files.sort();
    if index_files.len() > 1 {
        return Err(format_err(
            dir,
            format!("more than one shard index: {index_files:?}"),
        ));
    }
    let Some(index_path) = index_files.pop() else {
        if st_files.is_empty() {
            return Err(format_err(
                dir,
                "no *.safetensors file and no *.safetensors.index.json",
            ));
        }
        return Ok(ComponentFiles {
            dir: dir.to_path_buf(),
            index: None,
            weight_map: None,
            files: st_files,
        });
    };
    let text = read_regular_file(&index_path)?;
    let index: ShardIndex = serde_json::from_str(&text)
        .map_err(|e| format_err(&index_path, format!("invalid shard index: {e}")))?;
    let mut files = Vec::new();
    for shard in index
        .weight_map
        .values()
        .collect::<std::collections::BTreeSet<_>>()
    {
        let path = confined_path(dir, shard, &index_path)?;
        if !path.is_file() {
            return Err(format_err(
                &index_path,
                format!("shard `{shard}` listed in the index is missing"),
            ));
        }
        files.push(path);
    }
    if files.is_empty() {
        return Err(format_err(&index_path, "`weight_map` lists no shard"));
    }
    Ok(ComponentFiles {
        dir: dir.to_path_buf(),
        index: Some(index_path),
        weight_map: Some(index.weight_map),
        files,
    })
}

/// Largest text file (config, index) [`read_regular_file`] reads.
pub const MAX_TEXT_FILE_BYTES: u64 = 64 << 20;

/// Reads a small text file (a config or an index), saying what is wrong with a path that is
/// not a regular file (missing, a folder, a FIFO, a device — also through a link) or is
/// larger than [`MAX_TEXT_FILE_BYTES`].
pub fn read_regular_file(path: &Path) -> Result<String, WeightsError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(format_err(
            path,
            format!("is {}, not a regular file", describe_file_type(&meta)),
        ));
    }
    if meta.len() > MAX_TEXT_FILE_BYTES {
        return Err(format_err(
            path,
            format!(
                "{} bytes: too large for a config or index file (at most {MAX_TEXT_FILE_BYTES})",
                meta.len()
            ),
        ));
    }
    fs::read_to_string(path).map_err(io_err(path))
}

/// Reads a JSON config file ([`read_regular_file`]) whose top level must be an object (a
/// JSON array would otherwise fill a config struct by position).
pub fn read_json_object(path: &Path) -> Result<serde_json::Value, WeightsError> {
    let text = read_regular_file(path)?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format_err(path, format!("invalid JSON: {e}")))?;
    if !v.is_object() {
        return Err(format_err(
            path,
            "the top level must be a JSON object of config keys",
        ));
    }
    Ok(v)
}

/// "a directory", "a FIFO", "a device"… for error messages.
pub fn describe_file_type(meta: &fs::Metadata) -> &'static str {
    let ft = meta.file_type();
    if ft.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO";
        }
        if ft.is_char_device() || ft.is_block_device() {
            return "a device";
        }
        if ft.is_socket() {
            return "a socket";
        }
    }
    if ft.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// One tensor entry of a safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name.
    pub name: String,
    /// Its dtype as MLX names it.
    pub dtype: Dtype,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Byte range `[start, end)` inside the data section.
    pub data_offsets: (u64, u64),
}

impl TensorInfo {
    /// Number of elements (the product of the shape).
    pub fn elements(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }
}

/// A parsed safetensors header.
#[derive(Debug, Clone)]
pub struct Header {
    /// The file.
    pub path: PathBuf,
    /// Every tensor, in name order.
    pub tensors: Vec<TensorInfo>,
    /// The `__metadata__` strings.
    pub metadata: BTreeMap<String, String>,
    /// Bytes of the data section the file holds.
    pub data_len: u64,
}

/// Bytes per element of a safetensors dtype name and the MLX dtype it loads as.
pub(crate) fn dtype_of(name: &str) -> Option<(Dtype, u64)> {
    Some(match name {
        "BOOL" => (Dtype::Bool, 1),
        "U8" => (Dtype::Uint8, 1),
        "I8" => (Dtype::Int8, 1),
        "U16" => (Dtype::Uint16, 2),
        "I16" => (Dtype::Int16, 2),
        "F16" => (Dtype::Float16, 2),
        "BF16" => (Dtype::Bfloat16, 2),
        "U32" => (Dtype::Uint32, 4),
        "I32" => (Dtype::Int32, 4),
        "F32" => (Dtype::Float32, 4),
        "U64" => (Dtype::Uint64, 8),
        "I64" => (Dtype::Int64, 8),
        "F64" => (Dtype::Float64, 8),
        _ => return None,
    })
}

#[derive(serde::Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

/// Reads and checks the header of one safetensors file (see the module docs); no tensor data
/// is read. Errors name the file and, where one is at fault, the tensor.
pub fn read_header(path: &Path) -> Result<Header, WeightsError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(format_err(
            path,
            format!("is {}, not a safetensors file", describe_file_type(&meta)),
        ));
    }
    let size = meta.len();
    let bad = |msg: String| format_err(path, format!("corrupt safetensors file: {msg}"));
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| bad(format!("{size} bytes, too short for a header")))?;
    let n = u64::from_le_bytes(len);
    if n == 0 || n > MAX_HEADER_BYTES || n > size - 8 {
        return Err(bad(format!(
            "header length {n} does not fit the file's {size} bytes"
        )));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(io_err(path))?;
    let raw: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("header is not a JSON object: {e}")))?;
    let data_len = size - 8 - n;
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(raw.len());
    for (name, v) in raw {
        if name == "__metadata__" {
            if let serde_json::Value::Object(m) = v {
                for (k, v) in m {
                    if let serde_json::Value::String(s) = v {
                        metadata.insert(k, s);
                    }
                }
            }
            continue;
        }
        let e: RawEntry = serde_json::from_value(v)
            .map_err(|e| bad(format!("tensor `{name}`: invalid entry: {e}")))?;
        let (dtype, elem) = dtype_of(&e.dtype)
            .ok_or_else(|| bad(format!("tensor `{name}` has unsupported dtype {}", e.dtype)))?;
        let count = e
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .and_then(|c| c.checked_mul(elem))
            .ok_or_else(|| bad(format!("tensor `{name}`: shape {:?} overflows", e.shape)))?;
        let (start, end) = e.data_offsets;
        if end < start || end - start != count {
            return Err(bad(format!(
                "tensor `{name}` ({} {:?}) needs {count} bytes but its data_offsets [{start}, \
                 {end}) hold {}",
                e.dtype,
                e.shape,
                end.saturating_sub(start)
            )));
        }
        if end > data_len {
            return Err(bad(format!(
                "truncated: tensor `{name}` ends at byte {end} of the data section, the file \
                 holds {data_len}"
            )));
        }
        let shape = e
            .shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| bad(format!("tensor `{name}`: shape {:?} too large", e.shape)))?;
        tensors.push(TensorInfo {
            name,
            dtype,
            shape,
            data_offsets: (start, end),
        });
    }
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
    by_offset.sort_by_key(|t| t.data_offsets);
    for w in by_offset.windows(2) {
        if w[1].data_offsets.0 < w[0].data_offsets.1 {
            return Err(bad(format!(
                "tensors `{}` and `{}` overlap in the data section",
                w[0].name, w[1].name
            )));
        }
    }
    // safetensors stores tensors back to back: a gap means a header entry is missing.
    let mut pos = 0u64;
    let mut before: Option<&str> = None;
    for t in &by_offset {
        if t.data_offsets.0 > pos {
            let place = match before {
                Some(b) => format!("between `{b}` and `{}`", t.name),
                None => format!("before `{}`", t.name),
            };
            return Err(bad(format!(
                "bytes [{pos}, {}) of the data section belong to no tensor ({place}): a header \
                 entry is missing",
                t.data_offsets.0
            )));
        }
        pos = t.data_offsets.1;
        before = Some(&t.name);
    }
    if pos < data_len {
        return Err(bad(format!(
            "the data section holds {data_len} bytes but its tensors end at {pos}{}: a header \
             entry is missing or the file has trailing bytes",
            before
                .map(|b| format!(" (after `{b}`)"))
                .unwrap_or_default()
        )));
    }
    Ok(Header {
        path: path.to_path_buf(),
        tensors,
        metadata,
        data_len,
    })
}

/// Calls `f` with every tensor of a component folder (through [`component_files`] and
/// [`read_header`]; no data is read). With a shard index, every indexed tensor must be in
/// the shard the index names.
pub fn for_each_tensor(
    dir: &Path,
    f: &mut dyn FnMut(&Header, &TensorInfo) -> Result<(), WeightsError>,
) -> Result<(), WeightsError> {
    let files = component_files(dir)?;
    let mut seen = std::collections::BTreeSet::new();
    for file in &files.files {
        let header = read_header(file)?;
        for t in &header.tensors {
            if !seen.insert(t.name.clone()) {
                return Err(format_err(
                    file,
                    format!("tensor `{}` appears in more than one shard", t.name),
                ));
            }
            f(&header, t)?;
        }
    }
    if let (Some(index), Some(map)) = (&files.index, &files.weight_map) {
        let missing: Vec<&String> = map.keys().filter(|k| !seen.contains(*k)).collect();
        if !missing.is_empty() {
            return Err(format_err(
                index,
                format!("tensors listed in the index but absent from their shards: {missing:?}"),
            ));
        }
    }
    Ok(())
}

/// Every tensor of a component folder by name, from the headers ([`for_each_tensor`]).
pub fn inventory(dir: &Path) -> Result<BTreeMap<String, TensorInfo>, WeightsError> {
    let mut out = BTreeMap::new();
    for_each_tensor(dir, &mut |_, t| {
        out.insert(t.name.clone(), t.clone());
        Ok(())
    })?;
    Ok(out)
}

/// A parameter a model expects, for [`check_inventory`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Its key.
    pub key: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Whether it must be a floating tensor (a packed quantized weight is not).
    pub floating: bool,
}

/// Compares what a model expects with a checkpoint's tensors (headers only), before anything
/// is loaded: one error lists every missing, unexpected (not under `ignored_prefixes`),
/// mis-shaped and non-floating-where-floating-is-expected tensor, naming `source`.
pub fn check_inventory(
    source: &Path,
    expected: &[Expected],
    found: &BTreeMap<String, TensorInfo>,
    ignored_prefixes: &[&str],
) -> Result<(), WeightsError> {
    let to_i32 = |s: &[usize]| -> Vec<i32> {
        s.iter()
            .map(|&d| i32::try_from(d).unwrap_or(i32::MAX))
            .collect()
    };
    let mut missing = Vec::new();
    let mut mismatched = Vec::new();
    let mut wrong_dtype = Vec::new();
    let mut used = std::collections::BTreeSet::new();
    for e in expected {
        match found.get(&e.key) {
            None => missing.push(e.key.clone()),
            Some(t) => {
                used.insert(e.key.as_str());
                if t.shape != e.shape {
                    mismatched.push((e.key.clone(), to_i32(&e.shape), to_i32(&t.shape)));
                }
                let is_float = matches!(
                    t.dtype,
                    Dtype::Float16 | Dtype::Bfloat16 | Dtype::Float32 | Dtype::Float64
                );
                if e.floating && !is_float {
                    wrong_dtype.push(format!("{} is {:?}", e.key, t.dtype));
                }
            }
        }
    }
    let unexpected: Vec<String> = found
        .keys()
        .filter(|k| !used.contains(k.as_str()))
        .filter(|k| !ignored_prefixes.iter().any(|p| k.starts_with(p)))
        .cloned()
        .collect();
    if !wrong_dtype.is_empty() && missing.is_empty() && unexpected.is_empty() {
        return Err(format_err(
            source,
            format!(
                "tensors that must be floating point are not: {}",
                wrong_dtype.join(", ")
            ),
        ));
    }
    if missing.is_empty() && unexpected.is_empty() && mismatched.is_empty() {
        return Ok(());
    }
    Err(WeightsError::Mismatch {
        path: source.to_path_buf(),
        missing,
        unexpected,
        mismatched,
    })
}

/// Refuses a config whose loop count (`what`, e.g. `num_layers`) asks for at least
/// `count · per_item + fixed` tensors when the checkpoint holds only `held`, before anything
/// is built from the count (an absurd config would otherwise allocate for it). Overflow-safe.
pub fn check_count(
    source: &Path,
    what: &str,
    count: usize,
    per_item: usize,
    fixed: usize,
    held: usize,
) -> Result<(), WeightsError> {
    let needed = count
        .checked_mul(per_item)
        .and_then(|n| n.checked_add(fixed));
    match needed {
        Some(n) if n <= held => Ok(()),
        _ => Err(format_err(
            source,
            format!(
                "the config's {what} = {count} needs at least {} tensors, the checkpoint holds \
                 {held}",
                needed.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string())
            ),
        )),
    }
}
