//! The data endpoint's own tokio runtime, whose threads run at a lower CPU weight than the
//! rest of ferryd (nice raised by [`INGEST_NICE_OFFSET`]). Under overload, receiving more
//! batches then yields the CPU to the seal workers and uploads, which keep close to the rate
//! they reach alone, while the cache absorbs what arrives meanwhile and agents see slower
//! acknowledgements (issue 11, part 2). Without overload nothing changes: idle CPU goes to
//! whoever asks. The management endpoint, the pipeline's coordinator and uploads stay on the
//! main runtime at the process's own priority.
//!
//! Raising one's own nice needs no privilege; if the kernel refuses anyway, ferryd logs it
//! once per thread and runs at the normal weight.

/// How much the ingest threads' nice is raised (CFS weight 1024 at nice 0, 110 at nice 10:
/// a sealer gets about nine times the CPU of an ingest thread when both want it).
pub const INGEST_NICE_OFFSET: i32 = 10;

/// The highest nice Linux allows.
const NICE_MAX: i32 = 19;

/// The runtime; shut down without waiting when dropped (it is dropped inside the main
/// runtime, where a blocking shutdown is not allowed).
pub struct IngestRuntime {
    /// Taken only by `drop`.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl IngestRuntime {
    pub fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("ferry-ingest")
            .on_thread_start(lower_this_threads_priority)
            .build()?;
        Ok(Self {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for IngestRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn lower_this_threads_priority() {
    // On Linux a thread id names one thread: this changes the calling thread only.
    let thread = rustix::thread::gettid();
    let lowered = rustix::process::getpriority_process(Some(thread))
        .and_then(|now| rustix::process::setpriority_process(Some(thread), (now + INGEST_NICE_OFFSET).min(NICE_MAX)));
    if let Err(e) = lowered {
        tracing::warn!(error = %e, "cannot lower an ingest thread's priority; it keeps the normal weight");
    }
}
