//! The `meridian` binary: parse the command line, set up logging and the runtime, run.

use std::process::ExitCode;

use clap::Parser;
use meridian_node::cli::{Cli, run};

fn main() -> ExitCode {
    // One crypto provider for the whole process (ring); see CRATES.md.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Everything a node writes (data directory, keys, Raft log, quota counters, logs, join
    // tokens) is for its own user only (docs/SECURITY.md).
    // SAFETY: umask only changes the process's file-creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    let cli = Cli::parse();
    if !cli.serves() {
        // A command that prints and exits ends quietly when its reader goes away
        // (`meridian keys list | head`), as Unix tools do, instead of panicking in println!.
        // Serving commands keep SIGPIPE ignored: a client that disconnects is an error on
        // its own socket, never a signal to the process.
        // SAFETY: restoring a signal's default disposition before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    meridian_node::log::init();
    let workers = cli.worker_count();
    let runtime = if workers == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("meridian: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meridian: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[global_allocator]
static ALLOCATOR: meridian_allocator::Mimalloc = meridian_allocator::Mimalloc;
