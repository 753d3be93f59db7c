//! The `comfyui-gateway` binary: load `.env`, parse the command line, set up logging,
//! run the command, and map failures to exit codes (2: configuration, 1: runtime).

use clap::Parser;
use comfyui_gateway::cli::{self, Cli, Command};

/// mimalloc: with glibc's allocator a quarter of the submit path's CPU went to arena locks
/// and consolidation (memory allocated on one thread is freed on another all the time).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` (mimalloc.h's `mi_option_e`, position 4).
#[cfg(target_os = "linux")]
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// `mi_option_abandoned_page_purge` (position 12): purge the free pages of a thread's heap
/// when the thread ends instead of leaving them to a later purge.
#[cfg(target_os = "linux")]
const MI_OPTION_ABANDONED_PAGE_PURGE: libmimalloc_sys::mi_option_t = 12;

/// Commit mimalloc's arenas on demand, so that freed pages go back to the system (with
/// its default, eager on Linux, an idle gateway held ~11 MB more), and purge a thread's
/// free pages when it ends. Set from the ELF constructors, before Rust's runtime makes
/// the first allocation, which creates the arena.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static MIMALLOC_OPTIONS: extern "C" fn() = {
    extern "C" fn set() {
        // SAFETY: sets process-wide options before any thread or allocation exists.
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
            libmimalloc_sys::mi_option_set(MI_OPTION_ABANDONED_PAGE_PURGE, 1);
        }
    }
    set
};

/// How long an idle thread of the blocking pool lives (tokio's default: 10 s). Blocking
/// work that may allocate much (blob hashing, plugin compiles) runs there, and mimalloc
/// purges a thread's free pages only while the thread allocates or when it ends: an idle
/// thread held what it freed (tens of MB) until it ended, so it ends sooner.
const BLOCKING_THREAD_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(1);

fn main() {
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("error: invalid .env file: {e}");
        std::process::exit(2);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                std::process::exit(0);
            }
            // One clear line naming the flag / variable.
            let text = e.to_string();
            let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("invalid arguments");
            eprintln!("{line}");
            std::process::exit(2);
        }
    };
    init_tracing(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_keep_alive(BLOCKING_THREAD_KEEP_ALIVE)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(cli::run(cli)) {
        eprintln!("error: {}", e.message);
        std::process::exit(e.exit_code);
    }
}

fn init_tracing(cli: &Cli) {
    let (level, json) = match &cli.command {
        Command::Serve(a) => (a.log_level.as_str(), a.log_format == "json"),
        _ => ("info", false),
    };
    let filter =
        tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
