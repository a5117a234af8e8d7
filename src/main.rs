//! The binary edge: parse arguments, set up logging, run a command, map errors to exit codes.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::Parser;
use hallrelay::api::Limits;
use hallrelay::cli::{Cli, Command, TokenArgs};
use hallrelay::cloud::CloudConfig;
use hallrelay::config::{DEFAULT_DATA_DIR, ServeConfig, VENUE_KEY_FILE};
use hallrelay::keyfile::VenueKey;
use hallrelay::serve::{self, ServeError};
use hallrelay::timefmt::unix_secs;
use hallrelay::token::{self, Claims};

/// EX_USAGE: the configuration or the command line is wrong; restarting will not help.
const EXIT_USAGE: u8 = 64;
/// EX_DATAERR: the data on disk is not something this build may touch.
const EXIT_DATA: u8 = 65;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli.command {
        Command::Serve(args) => {
            let config = match ServeConfig::from_args(&args) {
                Ok(c) => c,
                Err(e) => return fail(EXIT_USAGE, &e),
            };
            run_server(|shutdown| serve::run(config, shutdown, |_| {}))
        }
        Command::Cloud(args) => {
            let config = CloudConfig {
                venue_key_file: args
                    .venue_key_file
                    .clone()
                    .unwrap_or_else(|| args.data_dir.join(VENUE_KEY_FILE)),
                data_dir: args.data_dir,
                listen: args.listen,
                appliance_token_file: args.appliance_token_file,
                tls: args.tls,
                fault_rate: args.fault_rate,
                reset_rate: args.reset_rate,
                limits: Limits::default(),
            };
            run_server(|shutdown| hallrelay::cloud::run(config, shutdown, |_| {}))
        }
        Command::Token(args) => match mint(&args) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(EXIT_USAGE, &*e),
        },
    }
}

/// Runs a server future on a runtime until SIGTERM or SIGINT, and maps its error to an exit
/// code.
fn run_server<F, Fut>(server: F) -> ExitCode
where
    F: FnOnce(tokio_util::sync::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), ServeError>>,
{
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return fail(1, &e),
    };
    let result = runtime.block_on(async {
        match serve::shutdown_on_signals() {
            Ok(shutdown) => server(shutdown).await.map_err(anyhow::Error::from),
            Err(e) => Err(anyhow::Error::from(e).context("installing signal handlers")),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<ServeError>() {
            Some(ServeError::Store(_) | ServeError::Identity(_)) => fail(EXIT_DATA, &e),
            Some(ServeError::KeyFile(_)) => fail(EXIT_USAGE, &e),
            _ => fail(1, &format!("{e:#}")),
        },
    }
}

fn mint(args: &TokenArgs) -> anyhow::Result<String> {
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| DEFAULT_DATA_DIR.into());
    let key_file = args
        .venue_key_file
        .clone()
        .unwrap_or_else(|| data_dir.join(VENUE_KEY_FILE));
    if let Some(parent) = key_file.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let key = VenueKey::load_or_create(&key_file)?;
    let expires = unix_secs(SystemTime::now()) + args.ttl.as_secs();
    let claims = match (&args.exam, &args.candidate) {
        (Some(exam), Some(candidate)) => {
            for (what, id) in [("exam", exam), ("candidate", candidate)] {
                anyhow::ensure!(
                    hallrelay::ids::is_valid_id(id),
                    "the {what} id {id:?} must match [A-Za-z0-9._-]{{1,64}}"
                );
            }
            Claims::Candidate {
                exam: exam.clone(),
                candidate: candidate.clone(),
                expires,
            }
        }
        _ => Claims::Admin {
            subject: args.subject.clone(),
            expires,
        },
    };
    Ok(token::mint(&key, &claims))
}

fn fail(code: u8, error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("hallrelay: {error}");
    ExitCode::from(code)
}
