//! Stopping a generation from another thread ([`CancelToken`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{PipelineError, Result};

/// A flag shared between a running generation and whoever may stop it (a server whose client
/// went away, a Ctrl-C handler). [`crate::QwenImagePipeline::run_cancellable`] looks at it
/// before each phase and after each denoising step: once set, the run returns
/// [`PipelineError::Cancelled`] at the next of those points, dropping its arrays and MLX's
/// buffer cache, so its memory is free when the error arrives. Clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the generation(s) holding this token to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`Self::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// `Err(Cancelled)` once cancelled.
    pub(crate) fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(PipelineError::Cancelled)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_flag() {
        let a = CancelToken::new();
        let b = a.clone();
        assert!(a.check().is_ok());
        b.cancel();
        assert!(a.is_cancelled());
        assert!(matches!(a.check(), Err(PipelineError::Cancelled)));
    }
}
