//! `ferryd --config <appliance dir>`: the process server.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc, with freed 4-64 KiB blocks kept warm for the receive path (a bounded 16 MiB;
/// see warm_blocks.rs): with the purge delay at 0 below they would otherwise come back as
/// fresh pages, a page fault and a page clear each.
#[global_allocator]
static GLOBAL: ferryd::warm_blocks::WarmBlocks<mimalloc::MiMalloc> =
    ferryd::warm_blocks::WarmBlocks::new(mimalloc::MiMalloc);

/// mimalloc's `purge_delay` option (the index of `mi_option_purge_delay` in mimalloc.h's
/// `mi_option_e`, checked by a test): how long freed memory stays committed before it goes
/// back to the OS.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

#[derive(Parser)]
#[command(
    name = "ferryd",
    version,
    about = "Ferry process server: receives disk changes on 9443, caches them durably"
)]
struct Args {
    /// The appliance directory made by `ferryctl init`.
    #[arg(long, value_name = "DIR")]
    config: PathBuf,
}

fn main() -> ExitCode {
    // Freed memory goes back to the OS at once, not after mimalloc v3's default second: in
    // steady, peak RSS 715 -> 616-622 MiB at the same CPU per byte (docs/BENCHMARKS.md; the
    // batch-sized buffers are pooled, so little is faulted in again).
    // SAFETY: sets one process-wide integer option; no pointers; valid at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    // No transparent huge pages: mimalloc asks for them on its arenas, and a partly used 2 MiB
    // page stays resident whole, which put peak RSS 90-180 MiB over the memory budget (steady
    // 626-635 -> 528-535 MiB; 64 disks ingesting behind a capped uplink 817 -> 629-643 MiB) at
    // the same CPU per byte (docs/BENCHMARKS.md). mimalloc's own option is read when its first
    // arena is made, before main; the process-wide prctl applies to memory mapped already too.
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("ferryd: cannot turn off transparent huge pages ({e}); memory may exceed its budget");
    }
    let args = Args::parse();
    ferry_client::logging::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(main_runtime_workers())
        .enable_all()
        .thread_name("ferryd")
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ferryd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(ferryd::daemon::run(&args.config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ferryd: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Async threads of the main runtime (management endpoint, the pipeline's coordinator,
/// uploads): one per 8 cores. Its tasks are many small wakeups and little CPU (an upload's TLS
/// is on compressed bytes); with a second worker on 2 cores each wakeup from another thread
/// also woke the idle worker to look for work to steal: asr-sizing's main runtime CPU per
/// byte 0.73x with one (docs/BENCHMARKS.md).
fn main_runtime_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| cores.get().div_ceil(8))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        // mimalloc v3's default purge delay is 1000 ms; no other option defaults to that.
        // SAFETY: reads one process-wide integer option.
        let value = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(value, 1000, "mi_option_purge_delay moved in mimalloc.h");
    }
}
