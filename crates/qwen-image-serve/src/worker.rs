//! The one thread that owns the pipeline: it loads the model once, then runs the queued jobs
//! one after another, reporting progress to the job store and stopping a job at the next
//! step once it is cancelled.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender};
use std::thread::JoinHandle;

use qwen_image::metadata::GenerationRecord;
use qwen_image::{
    CancelToken, CheckpointConfigs, Event, GenerateRequest, Noise, PipelineError, PipelineOptions,
    QwenImagePipeline, Residency,
};

use crate::api::ApiError;
use crate::jobs::{JobImage, Jobs, Status};

/// A job handed to the worker.
pub struct WorkItem {
    /// The job's id in the store.
    pub id: String,
    /// What to run.
    pub request: GenerateRequest,
    /// Set when the job is to stop.
    pub cancel: CancelToken,
}

/// What the worker needs to load the model.
pub struct WorkerSetup {
    /// The checkpoint folder.
    pub model_dir: PathBuf,
    /// The model as the user named it (recorded in the PNGs).
    pub model_name: String,
    /// dtype and quantization; residency is forced to keep everything.
    pub options: PipelineOptions,
    /// LoRAs merged into the transformer once.
    pub loras: Vec<qwen_image::Lora>,
}

/// Starts the worker; it answers on `ready` once the model is loaded (with the checkpoint's
/// configs) or could not be, then serves `queue` until every sender is gone.
pub fn spawn(
    setup: WorkerSetup,
    jobs: Arc<Jobs>,
    queue: Receiver<WorkItem>,
    ready: SyncSender<Result<CheckpointConfigs, String>>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("qwen-image-worker".into())
        .spawn(move || {
            let mut options = setup.options.clone();
            options.residency = Residency::KeepAll;
            let dtype = options.dtype;
            let quantize = options.quantize.as_ref().map(|q| q.bits);
            let loaded = QwenImagePipeline::load(&setup.model_dir, options).and_then(|mut p| {
                let kind = p.configs().kind;
                if kind.is_edit() {
                    return Err(qwen_image::PipelineError::WrongPipeline {
                        class: kind.class_name().into(),
                        msg: "the server generates from text; edit pictures with \
                              `qwen-image edit`"
                            .into(),
                    });
                }
                p.preload(&setup.loras)?;
                Ok(p)
            });
            let mut pipe = match loaded {
                Ok(p) => {
                    if ready.send(Ok(p.configs().clone())).is_err() {
                        return;
                    }
                    p
                }
                Err(e) => {
                    let _ = ready.send(Err(e.to_string()));
                    return;
                }
            };
            drop(ready);
            let record = |req: &GenerateRequest, i: usize| {
                let uploaded = std::path::Path::new("(uploaded)");
                let init = req.init_image.as_ref();
                GenerationRecord::for_request(
                    req,
                    &setup.model_name,
                    dtype,
                    quantize,
                    i,
                    init.map(|_| uploaded),
                    init.and_then(|i| i.mask.as_ref()).map(|_| uploaded),
                )
                .chunks()
            };
            while let Ok(mut item) = queue.recv() {
                item.request.loras = setup.loras.clone();
                run_one(&mut pipe, &jobs, item, &record);
            }
        })
}

/// The PNG text chunks of image `i` of a request.
type Record<'a> = &'a dyn Fn(&GenerateRequest, usize) -> Vec<(String, String)>;

fn run_one(pipe: &mut QwenImagePipeline, jobs: &Jobs, item: WorkItem, record: Record<'_>) {
    let WorkItem {
        id,
        request,
        cancel,
    } = item;
    if cancel.is_cancelled() || jobs.status(&id) != Some(Status::Queued) {
        // Cancelled while it waited (already marked), or forgotten.
        return;
    }
    jobs.start(&id);
    let result = pipe.prepare(request).and_then(|job| {
        let mut on_event = |e: Event| match e {
            Event::PhaseStart(p) => jobs.progress(&id, |pr| pr.phase = Some(p.to_string())),
            Event::Step {
                image,
                num_images,
                step,
                steps,
                ..
            } => jobs.progress(&id, |pr| {
                pr.image = image;
                pr.images = num_images;
                pr.step = step + 1;
                pr.steps = steps;
                pr.fraction =
                    (image * steps + step + 1) as f64 / (num_images * steps).max(1) as f64;
            }),
            _ => {}
        };
        let generation = pipe.run_cancellable(&job, &mut on_event, &cancel)?;
        let req = job.request();
        let base = match req.noise {
            Noise::Seed(s) => s,
            Noise::Latents(_) => 0,
        };
        generation
            .images
            .iter()
            .enumerate()
            .map(|(i, img)| {
                let png = qwen_image::output::encode_png(img, &record(req, i))
                    .map_err(PipelineError::Runtime)?;
                Ok(JobImage {
                    png,
                    width: img.width,
                    height: img.height,
                    seed: base.wrapping_add(i as u64),
                })
            })
            .collect::<Result<Vec<_>, PipelineError>>()
    });
    match result {
        Ok(images) => jobs.finish(&id, Status::Succeeded, images, None),
        Err(PipelineError::Cancelled) => jobs.finish(&id, Status::Cancelled, Vec::new(), None),
        Err(e) => jobs.finish(
            &id,
            Status::Failed,
            Vec::new(),
            Some(ApiError::from_pipeline(&e)),
        ),
    }
}
