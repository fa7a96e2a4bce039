//! `ferryd --config <appliance dir>`: the process server.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    let args = Args::parse();
    ferry_client::logging::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
    match runtime.block_on(ferryd::server::run(&args.config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ferryd: {error:#}");
            ExitCode::FAILURE
        }
    }
}
