//! The `comfyui-gateway` binary: load `.env`, parse the command line, set up logging,
//! run the command, and exit with the code of its outcome (`cli::Failure::exit_code`:
//! 0 success, 2 usage or configuration, 1 runtime).

use std::io::IsTerminal;

use clap::Parser;
use comfyui_gateway::cli::{self, Cli, CliError, Command};

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

/// The one place the process exits: `run`'s outcome mapped by [`cli::Failure::exit_code`].
fn main() {
    let code = match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}

fn run() -> Result<(), CliError> {
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        return Err(CliError::config(format!("invalid .env file: {e}")));
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return Ok(());
            }
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                let _ = e.print();
                return Err(CliError::usage("no command given"));
            }
            // clap's whole message (what is wrong, a "did you mean" tip or the accepted
            // values, the usage line), without colours; `main` prints it with "error: ".
            let text = e.to_string();
            let text = text.trim_end();
            return Err(CliError::usage(text.strip_prefix("error: ").unwrap_or(text)));
        }
    };
    init_tracing(&cli);
    cli::warn_unknown_settings();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_keep_alive(BLOCKING_THREAD_KEEP_ALIVE)
        .build()
        .map_err(|e| CliError::runtime(format!("cannot start the async runtime: {e}")))?;
    let outcome = runtime.block_on(cli::run(cli));
    if outcome.is_err() {
        // A failed command exits at once, without waiting for blocking tasks still running.
        runtime.shutdown_background();
    }
    outcome
}

fn init_tracing(cli: &Cli) {
    let (level, json) = match &cli.command {
        Command::Serve(a) => (a.log_level.as_str(), a.log_format == "json"),
        _ => ("info", false),
    };
    // rmcp logs three lines at INFO for every streamed MCP request: its warnings only,
    // unless LOG_LEVEL names rmcp itself.
    let directives = if level.contains("rmcp") { level.to_string() } else { format!("{level},rmcp=warn") };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rmcp=warn"));
    // Logs go to stderr: colours only when that is a terminal (not a file, pipe or journal).
    let colours = comfyui_gateway::config::log_colours(std::io::stderr().is_terminal());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colours);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
