//! The `sandbox` command line: dispatches to the daemon, the client commands and the sandbox init.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use sandbox::config::DEFAULT_SOCKET;
use sandbox::control::client;
use sandbox::sandbox::init;
use sandbox::{daemon, doctor};

/// glibc's malloc took 8% of the daemon's CPU on small proxied requests, much of it merging freed chunks;
/// with mimalloc the daemon's CPU per kept-alive HTTP/1.1 request (16 connections) went from 19 to 15.5 us
/// (means of 4 alternating runs of scripts/bench).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc 3's numbers for the options set below (`mi_option_e` in its mimalloc.h; libmimalloc-sys
/// names only mimalloc 2's, which differ). A test checks them against the options' defaults.
const MI_OPTION_ARENA_EAGER_COMMIT: i32 = 4;
const MI_OPTION_PURGE_DELAY: i32 = 15;

/// With mimalloc's defaults, memory freed while connections were set up stayed resident (it is returned
/// a second later, and only by a thread that allocates again: an idle daemon never does), and eagerly
/// committed arenas were returned lazily: an idle intercepted connection held 48 to 73 KiB and the idle
/// daemon 24 MiB. Purging at once and committing on demand: 41 and 28 KiB (HTTP/1.1, HTTP/2), and
/// 9 MiB, about glibc's figures, for the same CPU per request.
extern "C" fn tune_allocator() {
    for option in [MI_OPTION_ARENA_EAGER_COMMIT, MI_OPTION_PURGE_DELAY] {
        // SAFETY: sets one of mimalloc's options, which it allows at any time.
        unsafe { libmimalloc_sys::mi_option_set(option, 0) };
    }
}

/// Run by the loader before `main`, so before anything allocates: the arena options apply only to
/// arenas made after them. Not in the unit tests, which read the defaults.
#[cfg(not(test))]
#[used]
#[link_section = ".init_array"]
static TUNE_ALLOCATOR: extern "C" fn() = tune_allocator;

/// Run programs in a network sandbox; a privileged daemon adds secret headers to their HTTPS requests.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run CMD in a new sandbox as you, with your stdin/stdout/stderr, environment and working directory.
    ///
    /// Exit status: CMD's own; 128+N if CMD died of signal N; 125 if no sandbox could be made (daemon
    /// unreachable, profile not allowed, ...) with the reason on stderr; 126 if CMD is not executable;
    /// 127 if it is not found. SIGINT, SIGTERM and SIGHUP are passed on to CMD. When CMD exits,
    /// everything it started inside the sandbox ends too.
    #[command(trailing_var_arg = true)]
    Exec {
        /// Profile to use (default: "default" if it allows you, else the first profile that does).
        #[arg(long, short)]
        profile: Option<String>,
        /// The daemon's control socket.
        #[arg(long, env = "SANDBOX_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// The command and its arguments.
        #[arg(required = true, value_name = "CMD", allow_hyphen_values = true)]
        command: Vec<OsString>,
    },
    /// List the live sandboxes (root sees all, other users their own).
    Ls {
        /// The daemon's control socket.
        #[arg(long, env = "SANDBOX_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show every secret the daemon holds and its state; never a value. Root only.
    ///
    /// One line per secret of the config in force:
    ///
    ///   NAME          the secret's name in [secrets]
    ///   SOURCE        env, file or credential (static: read at start and on every reload), or
    ///                 github_app, oauth2, google_service_account (minted: the daemon makes short-lived
    ///                 tokens from a root credential and refreshes them itself)
    ///   STATE         ok: a valid token (static secrets: loaded); refreshing: a fetch is running;
    ///                 expired: the token is no longer used and the fetches since failed (retrying);
    ///                 error: no valid token and the last fetch was refused (retried at most every 5
    ///                 minutes, and at once after a reload), or no fetch has succeeded yet
    ///   EXPIRES-IN    until the current token expires (it is no longer used in its last tenth, at most
    ///                 its last minute; a new one is fetched once half its lifetime has passed)
    ///   LAST-REFRESH  when the token was last minted, or the static value last read
    ///   FROM          the variable, file or credential a static secret is read from; a minted secret's
    ///                 token endpoint
    ///   LAST-ERROR    why the last fetch failed: the endpoint's status and its error, never a token
    ///
    /// A request for a minted secret without a valid token gets 503 from the daemon, naming the secret
    /// and LAST-ERROR; nothing is sent upstream. Every fetch is also a line of kind "token" in the audit
    /// log. Anyone but root is refused (exit 1).
    Secrets {
        /// The daemon's control socket.
        #[arg(long, env = "SANDBOX_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Print JSON instead of a table (times as RFC 3339 and in seconds).
        #[arg(long)]
        json: bool,
    },
    /// Check that this host has what the daemon needs (run as root) and say how to fix what is missing.
    Doctor,
    /// Run the privileged daemon in the foreground (logs on stderr; RUST_LOG sets the level).
    ///
    /// SIGHUP reloads the config (a bad one is reported and the old one kept); SIGTERM ends the
    /// sandboxes and removes everything the daemon made. Exits 2 on a bad config.
    Daemon {
        /// The config file.
        #[arg(long, default_value = "/etc/sandbox/sandbox.toml")]
        config: PathBuf,
        /// Only validate the config (and that its secrets can be read), then exit.
        #[arg(long)]
        check: bool,
    },
}

fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == init::INIT_ARG)
    {
        init::main();
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Exec {
            profile,
            socket,
            command,
        } => match client::exec(&socket, profile, &command) {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(error) => {
                eprintln!("sandbox: {error}");
                ExitCode::from(error.exit_code() as u8)
            }
        },
        Command::Ls { socket, json } => match client::list(&socket) {
            Ok(sandboxes) => {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&sandboxes).unwrap_or_default()
                    );
                } else {
                    client::print_list(&sandboxes);
                }
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("sandbox: {error}");
                ExitCode::from(1)
            }
        },
        Command::Secrets { socket, json } => match client::secrets(&socket) {
            Ok(secrets) => {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&secrets).unwrap_or_default()
                    );
                } else {
                    client::print_secrets(&secrets);
                }
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("sandbox: {error}");
                ExitCode::from(1)
            }
        },
        Command::Doctor => {
            if doctor::run() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Command::Daemon { config, check } => {
            init_logging();
            let loaded = match daemon::load(&config) {
                Ok(loaded) => loaded,
                Err(error) => {
                    eprintln!("sandbox: {error}");
                    return ExitCode::from(2);
                }
            };
            if check {
                println!("{}: ok", loaded.config.path.display());
                return ExitCode::SUCCESS;
            }
            match daemon::run(loaded) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // Under systemd the journal stamps every line itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers this binary sets options by are those of the options it means: each reads as that
    /// option's documented default (purge delay 1000 ms, eager commit 2, options.c), until set.
    #[test]
    fn the_allocator_options_are_mimalloc_3s() {
        // SAFETY: reads one of mimalloc's options, which it allows at any time.
        let get = |option| unsafe { libmimalloc_sys::mi_option_get(option) };
        assert_eq!(get(MI_OPTION_ARENA_EAGER_COMMIT), 2);
        assert_eq!(get(MI_OPTION_PURGE_DELAY), 1000);
        tune_allocator();
        assert_eq!(get(MI_OPTION_ARENA_EAGER_COMMIT), 0);
        assert_eq!(get(MI_OPTION_PURGE_DELAY), 0);
    }
}
