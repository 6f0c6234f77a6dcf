//! How a part of the model describes its parameters, once.
//!
//! Every module (the top level, a block, its attention and feed-forward networks, the
//! timestep embedder) is declared with [`declare_module!`]: its fields, the checkpoint
//! key below the module's own prefix, and the arguments each field is built with. The macro
//! derives from that one declaration:
//! - `load`: the module takes its parameters from a [`Vars`] (a checkpoint through
//!   `mlx_weights::StrictLoader`, seeded random values through `mlx_weights::RandomSource`,
//!   or a `mlx_weights::ShapeRecorder` that only lists them);
//! - `visit`: every parameter with its full key (export, evaluation);
//! - `visit_linears_mut`: every Linear layer with its module path (quantization, LoRA).
//!
//! Adding a Linear layer to a block is one line in its declaration.

use mlx_rs::Array;
use mlx_weights::{Role, Vars};

use crate::error::Result;
use crate::linear::Linear;

/// A parameter met by [`Module::visit`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Param<'a> {
    /// A Linear layer (its module path is the key prefix of its arrays).
    Linear(&'a Linear),
    /// A normalisation weight (its module path + `.weight` is its key).
    Norm(&'a Array),
}

/// A part of the model that loads itself from a key prefix and lists its parameters.
pub(crate) trait Module: Sized {
    /// What the module is built with (sizes from the config).
    type Args;

    /// Takes every parameter from `vars` (problems are recorded by the source).
    fn load(vars: &mut Vars<'_>, args: Self::Args) -> Self;

    /// Calls `f` with every parameter and its module path below `path`.
    fn visit<'a>(&'a self, path: &str, f: &mut dyn FnMut(&str, Param<'a>));

    /// Calls `f` with every Linear layer and its module path below `path`.
    fn visit_linears_mut(
        &mut self,
        path: &str,
        f: &mut dyn FnMut(&str, &mut Linear) -> Result<()>,
    ) -> Result<()>;
}

/// `path.key`, or `key` at the top.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// A normalisation weight `(n,)`, stored as `<path>.weight`.
#[derive(Debug, Clone)]
pub(crate) struct Norm(pub(crate) Array);

impl Module for Norm {
    type Args = usize;

    fn load(vars: &mut Vars<'_>, n: usize) -> Self {
        Norm(vars.take("weight", &[n as i32], Role::NormWeight))
    }

    fn visit<'a>(&'a self, path: &str, f: &mut dyn FnMut(&str, Param<'a>)) {
        f(path, Param::Norm(&self.0));
    }

    fn visit_linears_mut(
        &mut self,
        _path: &str,
        _f: &mut dyn FnMut(&str, &mut Linear) -> Result<()>,
    ) -> Result<()> {
        Ok(())
    }
}

/// A numbered list of modules (`<path>.0`, `<path>.1`, …), built with `(count, args)`.
impl<T: Module> Module for Vec<T>
where
    T::Args: Copy,
{
    type Args = (usize, T::Args);

    fn load(vars: &mut Vars<'_>, (count, args): Self::Args) -> Self {
        (0..count).map(|i| T::load(&mut vars.pp(i), args)).collect()
    }

    fn visit<'a>(&'a self, path: &str, f: &mut dyn FnMut(&str, Param<'a>)) {
        for (i, m) in self.iter().enumerate() {
            m.visit(&join(path, &i.to_string()), f);
        }
    }

    fn visit_linears_mut(
        &mut self,
        path: &str,
        f: &mut dyn FnMut(&str, &mut Linear) -> Result<()>,
    ) -> Result<()> {
        for (i, m) in self.iter_mut().enumerate() {
            m.visit_linears_mut(&join(path, &i.to_string()), f)?;
        }
        Ok(())
    }
}

/// Declares a module: a struct whose fields are sub-modules, each with its checkpoint key
/// below the module and the arguments it is built with (expressions over the module's own
/// argument), and the [`Module`] implementation that follows from it.
///
/// ```text
/// declare_module! {
///     /// `net.0.proj` → GELU → `net.2`.
///     struct FeedForward(dims: (usize, usize)) {
///         proj_in: Linear = "net.0.proj" (dims.0, dims.1),
///         proj_out: Linear = "net.2" (dims.1, dims.0),
///     }
/// }
/// ```
macro_rules! declare_module {
    (
        $(#[$meta:meta])*
        struct $name:ident($args:ident: $argty:ty) {
            $( $(#[$fmeta:meta])* $field:ident: $fty:ty = $key:literal $fargs:tt ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        pub(crate) struct $name {
            $( $(#[$fmeta])* pub(crate) $field: $fty, )*
        }

        impl $crate::module::Module for $name {
            type Args = $argty;

            // A field built with one argument writes it in parentheses like the others.
            #[allow(unused_parens)]
            fn load(vars: &mut mlx_weights::Vars<'_>, $args: $argty) -> Self {
                Self {
                    $( $field: <$fty as $crate::module::Module>::load(&mut vars.pp($key), $fargs), )*
                }
            }

            fn visit<'a>(
                &'a self,
                path: &str,
                f: &mut dyn FnMut(&str, $crate::module::Param<'a>),
            ) {
                $( $crate::module::Module::visit(&self.$field, &$crate::module::join(path, $key), f); )*
            }

            fn visit_linears_mut(
                &mut self,
                path: &str,
                f: &mut dyn FnMut(&str, &mut $crate::linear::Linear) -> $crate::error::Result<()>,
            ) -> $crate::error::Result<()> {
                $( $crate::module::Module::visit_linears_mut(
                    &mut self.$field, &$crate::module::join(path, $key), f)?; )*
                Ok(())
            }
        }
    };
}

pub(crate) use declare_module;
