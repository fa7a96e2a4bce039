//! Standard output of ferry-agent and ferryctl (which depends on this crate): `out!` and
//! `outln!`, used instead of `print!` and `println!`.
//!
//! A reader that goes away (`ferryctl points ... | head -1`, `| grep -q`) ends the program the
//! way it ends `ls`: killed by SIGPIPE, quietly (status 141 in the shell). std's `println!` would
//! panic with a backtrace instead, because Rust starts with SIGPIPE ignored. Restoring SIGPIPE's
//! default for the whole process is not an option: hyper writes to sockets with `writev`,
//! which raises SIGPIPE on a connection the peer reset, and that must stay an error the
//! program retries or reports, not a silent death in the middle of a restore or a pass. So
//! only a write to standard output that finds its reader gone restores the default and raises
//! the signal. Any other failure to write (a full disk under `> file`) is reported on stderr,
//! exit 1.

use std::io::Write;

/// Writes `args` to standard output; see the module header for what a failure does.
pub fn write_stdout(args: std::fmt::Arguments) {
    let written = std::io::stdout().lock().write_fmt(args);
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            die_of_sigpipe();
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// Ends the process as SIGPIPE's default action does (the shell and `pipefail` see what they
/// see for any other tool whose reader left).
fn die_of_sigpipe() -> ! {
    // SAFETY: restoring a signal's default disposition and raising it on the way out; no
    // handler runs, nothing else is touched.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    // Not reached: SIGPIPE's default action ends the process. The status a shell would show.
    std::process::exit(128 + libc::SIGPIPE)
}

/// `print!` to standard output, ending quietly when the reader has gone (see `output`).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*))
    };
}

/// `println!` to standard output, ending quietly when the reader has gone (see `output`).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::output::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}
