//! Where a model's parameters come from, behind one interface, so that a module describes its
//! parameters once — in its `load` — whatever fills them.
//!
//! A module takes each parameter from a [`Vars`] (a [`TensorSource`] plus a key prefix, the
//! idea of candle's `VarBuilder`): `vars.pp("attn").take("to_q.weight", &[d, d],
//! Role::Weight { fan_in: d })`. The sources are:
//! - [`StrictLoader`]: a checkpoint's tensors, strictly (every missing, unexpected and
//!   mis-shaped key reported at the end);
//! - [`RandomSource`]: seeded random values of the right shape and dtype, initialised
//!   according to each parameter's [`Role`] (benchmarks at full size, tests);
//! - [`ShapeRecorder`]: nothing at all — it records what a module asks for (key, shape,
//!   role), which gives a model's parameter list from its declaration alone (parameter
//!   counts, memory estimates, which keys are Linear weights).

use mlx_rs::{Array, Dtype, random};

use crate::StrictLoader;
use crate::error::WeightsError;

/// What a parameter is: a random source initialises it from this, a recorder reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Role {
    /// A Linear (or convolution) weight with `fan_in` inputs: N(0, 1/fan_in).
    Weight {
        /// Inputs per output.
        fan_in: usize,
    },
    /// A bias: N(0, 0.02²).
    Bias,
    /// A normalisation weight (scale): 1 + N(0, 0.1²).
    NormWeight,
    /// Anything else: N(0, 1).
    Other,
}

impl Role {
    /// (mean, standard deviation) a random source draws this parameter from.
    pub fn distribution(self) -> (f32, f32) {
        match self {
            Role::Weight { fan_in } => (0.0, 1.0 / (fan_in.max(1) as f32).sqrt()),
            Role::Bias => (0.0, 0.02),
            Role::NormWeight => (1.0, 0.1),
            Role::Other => (0.0, 1.0),
        }
    }
}

/// A source of named parameters. Problems (missing or mis-shaped keys) are recorded, not
/// returned, so that a whole model can be built and every problem reported at once by
/// the source's own `finish`.
pub trait TensorSource {
    /// The dtype floating parameters are returned in.
    fn dtype(&self) -> Dtype;
    /// The parameter `key` with exactly `shape`, in [`TensorSource::dtype`] when floating.
    fn take(&mut self, key: &str, shape: &[i32], role: Role) -> Array;
    /// The parameter `key` with exactly `shape`, in its stored dtype (packed integer
    /// weights of quantized layers).
    fn take_raw(&mut self, key: &str, shape: &[i32], role: Role) -> Array;
    /// Whether the source holds `key`. By default nothing is held (a random or recording
    /// source), so optional and alternative layouts — quantized layers — are never chosen.
    fn has(&self, _key: &str) -> bool {
        false
    }
    /// The stored shape of `key`, if held.
    fn shape_of(&self, _key: &str) -> Option<Vec<i32>> {
        None
    }
    /// Records a problem the caller found (e.g. an inconsistent pair of shapes).
    fn record_mismatch(&mut self, _key: &str, _expected: &[i32], _got: &[i32]) {}
    /// Drops `key` without using it (its problem, if any, was recorded by the caller).
    fn discard(&mut self, _key: &str) {}
}

impl TensorSource for StrictLoader {
    fn dtype(&self) -> Dtype {
        StrictLoader::dtype(self)
    }
    fn take(&mut self, key: &str, shape: &[i32], _role: Role) -> Array {
        StrictLoader::take(self, key, shape)
    }
    fn take_raw(&mut self, key: &str, shape: &[i32], _role: Role) -> Array {
        StrictLoader::take_raw(self, key, shape)
    }
    fn has(&self, key: &str) -> bool {
        StrictLoader::has(self, key)
    }
    fn shape_of(&self, key: &str) -> Option<Vec<i32>> {
        StrictLoader::shape_of(self, key)
    }
    fn record_mismatch(&mut self, key: &str, expected: &[i32], got: &[i32]) {
        StrictLoader::record_mismatch(self, key, expected, got)
    }
    fn discard(&mut self, key: &str) {
        let _ = self.take_any(key);
    }
}

/// Seeded random parameters: each is drawn in f32 from its [`Role::distribution`], cast to
/// the source's dtype and evaluated at once (so a full-size model never holds more than one
/// parameter's f32 temporary). Deterministic for a given seed and request order.
#[derive(Debug)]
pub struct RandomSource {
    key: Array,
    dtype: Dtype,
    error: Option<WeightsError>,
}

impl RandomSource {
    /// A source drawing from MLX's generator seeded with `seed`, returning `dtype`.
    pub fn new(seed: u64, dtype: Dtype) -> Result<Self, WeightsError> {
        Ok(Self {
            key: random::key(seed)?,
            dtype,
            error: None,
        })
    }

    fn draw(&mut self, shape: &[i32], role: Role) -> Result<Array, WeightsError> {
        let (a, b) = random::split(&self.key, 2)?;
        self.key = a;
        let (mean, std) = role.distribution();
        let x = random::normal::<f32>(shape, mean, std, &b)?;
        let x = if self.dtype == Dtype::Float32 {
            x
        } else {
            x.as_dtype(self.dtype)?
        };
        x.eval()?;
        Ok(x)
    }

    /// Ends drawing: the first MLX error met, if any.
    pub fn finish(self) -> Result<(), WeightsError> {
        self.error.map_or(Ok(()), Err)
    }
}

impl TensorSource for RandomSource {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn take(&mut self, _key: &str, shape: &[i32], role: Role) -> Array {
        match self.draw(shape, role) {
            Ok(a) => a,
            Err(e) => {
                self.error.get_or_insert(e);
                Array::from_f32(0.0)
            }
        }
    }
    fn take_raw(&mut self, key: &str, shape: &[i32], role: Role) -> Array {
        self.take(key, shape, role)
    }
}

/// One parameter a module asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// Its full key.
    pub key: String,
    /// Its shape.
    pub shape: Vec<i32>,
    /// What it is.
    pub role: Role,
}

impl ParamSpec {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.shape.iter().map(|&d| d.max(0) as u64).product()
    }
}

/// Records what a module asks for and returns placeholders (one shared scalar, never
/// evaluated as a parameter): a model's parameter list from its declaration.
#[derive(Debug)]
pub struct ShapeRecorder {
    dtype: Dtype,
    placeholder: Array,
    /// Every parameter asked for, in order.
    pub params: Vec<ParamSpec>,
}

impl ShapeRecorder {
    /// An empty recorder reporting `dtype` as its dtype.
    pub fn new(dtype: Dtype) -> Self {
        Self {
            dtype,
            placeholder: Array::from_f32(0.0),
            params: Vec::new(),
        }
    }

    /// What was asked for, as [`crate::check_inventory`] expects it: every parameter a
    /// floating tensor of its shape.
    pub fn into_expected(self) -> Vec<crate::Expected> {
        self.params
            .into_iter()
            .map(|s| crate::Expected {
                key: s.key,
                shape: s.shape.iter().map(|&d| d.max(0) as usize).collect(),
                floating: true,
            })
            .collect()
    }
}

impl TensorSource for ShapeRecorder {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn take(&mut self, key: &str, shape: &[i32], role: Role) -> Array {
        self.params.push(ParamSpec {
            key: key.to_string(),
            shape: shape.to_vec(),
            role,
        });
        self.placeholder.clone()
    }
    fn take_raw(&mut self, key: &str, shape: &[i32], role: Role) -> Array {
        self.take(key, shape, role)
    }
}

/// A [`TensorSource`] seen below a key prefix: `vars.pp("blocks").pp("3").take("w", …)`
/// takes `blocks.3.w`.
pub struct Vars<'a> {
    src: &'a mut dyn TensorSource,
    prefix: String,
}

impl std::fmt::Debug for Vars<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vars")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl<'a> Vars<'a> {
    /// The whole source, no prefix.
    pub fn new(src: &'a mut dyn TensorSource) -> Self {
        Self {
            src,
            prefix: String::new(),
        }
    }

    /// The same source below `name` (`prefix.name`).
    pub fn pp(&mut self, name: impl std::fmt::Display) -> Vars<'_> {
        let prefix = self.key(&name.to_string());
        Vars {
            src: &mut *self.src,
            prefix,
        }
    }

    /// The full key of `name` below this prefix.
    pub fn key(&self, name: &str) -> String {
        match (self.prefix.is_empty(), name.is_empty()) {
            (true, _) => name.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}.{name}", self.prefix),
        }
    }

    /// This prefix (empty at the top).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The dtype floating parameters come in.
    pub fn dtype(&self) -> Dtype {
        self.src.dtype()
    }

    /// `name` with exactly `shape`, in the source's dtype when floating.
    pub fn take(&mut self, name: &str, shape: &[i32], role: Role) -> Array {
        let key = self.key(name);
        self.src.take(&key, shape, role)
    }

    /// `name` with exactly `shape`, in its stored dtype.
    pub fn take_raw(&mut self, name: &str, shape: &[i32], role: Role) -> Array {
        let key = self.key(name);
        self.src.take_raw(&key, shape, role)
    }

    /// Whether the source holds `name`.
    pub fn has(&self, name: &str) -> bool {
        self.src.has(&self.key(name))
    }

    /// The stored shape of `name`, if held.
    pub fn shape_of(&self, name: &str) -> Option<Vec<i32>> {
        self.src.shape_of(&self.key(name))
    }

    /// Records a problem with `name` found by the caller.
    pub fn record_mismatch(&mut self, name: &str, expected: &[i32], got: &[i32]) {
        let key = self.key(name);
        self.src.record_mismatch(&key, expected, got)
    }

    /// Drops `name` unused.
    pub fn discard(&mut self, name: &str) {
        let key = self.key(name);
        self.src.discard(&key)
    }
}
