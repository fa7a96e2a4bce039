//! Tokio runtimes whose threads run at a lower CPU weight than the rest of ferryd, so that
//! under overload the scheduler gives the CPU to the seal workers and uploads first. Without
//! overload nothing changes: idle CPU goes to whoever asks.
//!
//! Two of them:
//! - **ingest** (the data endpoint), nice raised by [`INGEST_NICE_OFFSET`]: receiving more
//!   batches yields to sealing and uploads, which keep close to the rate they reach alone,
//!   while the cache absorbs what arrives meanwhile and agents see slower acknowledgements
//!   (issue 11, part 2);
//! - **consolidation** (retention), at nice `retention.nice` (default 19, never below
//!   ferryd's own): it yields even to ingest, and runs on what the replication path leaves.
//!
//! The management endpoint, the pipeline's coordinator and uploads stay on the main runtime at
//! the process's own priority. Every thread of a runtime is lowered, its blocking pool's too
//! (where consolidation unseals and seals), so work spawned from it inherits the weight.
//!
//! Raising one's own nice needs no privilege; if the kernel refuses anyway, ferryd logs it
//! once per thread and that thread runs at the normal weight.

/// How much the ingest threads' nice is raised (CFS weight 1024 at nice 0, 110 at nice 10:
/// a sealer gets about nine times the CPU of an ingest thread when both want it).
pub const INGEST_NICE_OFFSET: i32 = 10;

/// The highest nice Linux allows (CFS weight 15).
pub const NICE_MAX: i32 = 19;

/// How a runtime's threads are lowered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lowered {
    /// ferryd's own nice plus this much.
    By(i32),
    /// This nice, or ferryd's own when that is higher already.
    AtLeast(i32),
}

impl Lowered {
    fn nice_from(self, own: i32) -> i32 {
        match self {
            Lowered::By(offset) => own + offset,
            Lowered::AtLeast(nice) => own.max(nice),
        }
        .min(NICE_MAX)
    }
}

/// A lowered runtime; shut down without waiting when dropped (it is dropped inside the main
/// runtime, where a blocking shutdown is not allowed).
pub struct NicedRuntime {
    /// Taken only by `drop`.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl NicedRuntime {
    /// `workers` async threads (None: one per core), named `name`, at the weight `lowered`.
    pub fn start(name: &'static str, workers: Option<usize>, lowered: Lowered) -> std::io::Result<Self> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if let Some(workers) = workers {
            builder.worker_threads(workers);
        }
        let runtime = builder
            .enable_all()
            .thread_name(name)
            .on_thread_start(move || lower_this_thread(name, lowered))
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

impl Drop for NicedRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn lower_this_thread(name: &str, lowered: Lowered) {
    // On Linux a thread id names one thread: this changes the calling thread only.
    let thread = rustix::thread::gettid();
    let result = rustix::process::getpriority_process(Some(thread))
        .and_then(|own| rustix::process::setpriority_process(Some(thread), lowered.nice_from(own)));
    if let Err(e) = result {
        tracing::warn!(runtime = name, error = %e, "cannot lower a thread's priority; it keeps the normal weight");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_of_a_lowered_runtime_run_at_its_nice() {
        assert_eq!(Lowered::By(10).nice_from(0), 10);
        assert_eq!(Lowered::By(10).nice_from(15), NICE_MAX);
        assert_eq!(Lowered::AtLeast(19).nice_from(5), 19);
        assert_eq!(Lowered::AtLeast(5).nice_from(8), 8);

        let runtime = NicedRuntime::start("ferry-test-niced", Some(1), Lowered::AtLeast(NICE_MAX)).unwrap();
        let nice_of_this_thread =
            || rustix::process::getpriority_process(Some(rustix::thread::gettid())).expect("getpriority");
        // Spawned, so it runs on a worker (block_on would run it on this thread).
        let on_runtime = runtime.handle().spawn(async move {
            let worker = nice_of_this_thread();
            let blocking = tokio::task::spawn_blocking(nice_of_this_thread)
                .await
                .expect("blocking task");
            (worker, blocking)
        });
        let (worker, blocking) = runtime.handle().block_on(on_runtime).expect("the spawned task");
        assert_eq!((worker, blocking), (NICE_MAX, NICE_MAX));
        // The test's own thread is untouched.
        assert!(nice_of_this_thread() < NICE_MAX);
    }

    #[test]
    fn by_default_consolidation_yields_to_ingest() {
        // Ingest threads run at INGEST_NICE_OFFSET from ferryd's own nice; consolidation's
        // default must be lower in priority still, as the documented template says ("under
        // load ingest and uploads get the CPU first"). Until 2026-12-05 it was 10, an equal
        // share with ingest, while README and BENCHMARKS said 19.
        let default = ferry_config::retention::RetentionConfig::default().nice;
        assert_eq!(default, NICE_MAX as u32);
        assert!(i32::try_from(default).expect("a nice value") > INGEST_NICE_OFFSET);
    }
}
