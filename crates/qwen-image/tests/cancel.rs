//! Stopping a run with a `CancelToken`: it stops at the next step, frees what it allocated
//! (MLX's active memory back to the idle level: alone in its test binary, since that counter
//! is process-wide), and leaves the pipeline able to run the same request to the same image.

mod common;
mod logged;

use logged::{logged, request};
use qwen_image::{CancelToken, Event, PipelineError, Residency};

#[test]
fn a_cancelled_run_stops_at_the_next_step_frees_its_memory_and_leaves_the_pipeline_usable()
-> anyhow::Result<()> {
    let req = request();
    let (mut pipe, log) = logged(Residency::KeepAll)?;
    pipe.preload(&[])?;
    let want = pipe.generate(&req)?;
    mlx_rs::memory::clear_cache()?;
    let idle = mlx_rs::memory::active_memory()?;

    // Cancelled while step 0 is reported: step 1 never completes.
    let job = pipe.prepare(req.clone())?;
    let cancel = CancelToken::new();
    let mut steps_seen = 0;
    let err = pipe
        .run_cancellable(
            &job,
            &mut |e| {
                if let Event::Step { .. } = e {
                    steps_seen += 1;
                    cancel.cancel();
                }
            },
            &cancel,
        )
        .expect_err("cancelled");
    assert!(matches!(err, PipelineError::Cancelled), "{err}");
    assert_eq!(steps_seen, 1);
    // The run's arrays are gone: active memory is back to the idle level (the kept weights).
    assert_eq!(mlx_rs::memory::active_memory()?, idle);

    // A token cancelled before the run stops it before any work.
    let mut events = 0;
    let err = pipe
        .run_cancellable(&job, &mut |_| events += 1, &cancel)
        .expect_err("cancelled up front");
    assert!(matches!(err, PipelineError::Cancelled));
    assert_eq!(events, 0);

    // Same request, fresh token: the same image, and nothing was built again.
    let again = pipe.run_cancellable(&job, &mut |_| {}, &CancelToken::new())?;
    assert!(again.images[0].data == want[0].data);
    assert_eq!(log.borrow().len(), 3);
    Ok(())
}
