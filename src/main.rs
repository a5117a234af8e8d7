//! The binary edge: parse arguments, set up logging, run a command, map errors to exit codes.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use hallrelay::cli::{
    AuditArgs, CandidateArgs, CardArgs, CheckArgs, Cli, CloudAction, CloudArgs, Command, DemoArgs,
    DiscoverArgs, ExportArgs, ImportArgs, LoadtestArgs, ReplayArgs, ReportArgs, RotateKeyArgs,
    StatusArgs, VerifyArgs,
};
use hallrelay::ops::{self, OpsError};
use hallrelay_protocol::keys::Secret;
use hallrelay_server::api::Limits;
use hallrelay_server::cloud::CloudConfig;
use hallrelay_server::config::ServeConfig;
use hallrelay_server::keyring::PLATFORM_KEY_FILE;
use hallrelay_server::logging::{self, LogFormat};
use hallrelay_server::serve::{self, ServeError};

/// EX_USAGE: the configuration or the command line is wrong; restarting will not help.
const EXIT_USAGE: u8 = 64;
/// EX_DATAERR: the data on disk is not something this build may touch.
const EXIT_DATA: u8 = 65;
/// EX_IOERR: the disk failed while opening the store; a restart may succeed.
const EXIT_IO: u8 = 74;
/// EX_NOPERM: the box refused this command's credentials (`loadtest`: the venue key is not
/// the box's).
const EXIT_NOPERM: u8 = 77;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage(&e),
    };
    // Servers log what they do; the interactive commands print to stdout and log only
    // what went wrong. The demo tells its own timeline; the servers inside it log only
    // errors.
    match &cli.command {
        // `serve` learns its log format from its configuration, so it starts logging once
        // that is read; a configuration error is printed, not logged.
        Command::Serve(_) => {}
        Command::Cloud(args) if args.action.is_none() => logging::init(args.log_format, "info"),
        Command::Demo(_) => logging::init(LogFormat::Text, "error"),
        _ => logging::init(LogFormat::Text, "warn"),
    }
    match cli.command {
        Command::Serve(args) => {
            let config = match ServeConfig::from_overrides(&args.overrides()) {
                Ok(c) => c,
                Err(e) => return fail(EXIT_USAGE, &e),
            };
            logging::init(config.log_format, "info");
            run_server(|shutdown| serve::run(config, shutdown, |_| {}))
        }
        Command::Cloud(CloudArgs {
            action: Some(action),
            ..
        }) => cloud_action(&action),
        Command::Cloud(args) => {
            let config = CloudConfig {
                venue_key_file: args
                    .platform_key_file
                    .clone()
                    .unwrap_or_else(|| args.data_dir.join(PLATFORM_KEY_FILE)),
                data_dir: args.data_dir,
                listen: args.listen,
                appliance_token_file: args.appliance_token_file,
                hall_copies: args.hall_copies,
                tls: args.tls,
                fault_rate: args.fault_rate,
                reset_rate: args.reset_rate,
                limits: Limits::cloud(),
            };
            run_server(|shutdown| hallrelay_server::cloud::run(config, shutdown, |_| {}))
        }
        Command::Candidate(args) => candidate(&args),
        Command::Discover(args) => discover(&args),
        Command::Demo(args) => demo(&args),
        Command::Check(args) => check(&args),
        Command::Status(args) => ops_status(&args),
        Command::Replay(args) => ops_replay(&args),
        Command::Audit(args) => ops_audit(&args),
        Command::Export(args) => ops_export(&args),
        Command::Verify(args) => ops_verify(&args),
        Command::Report(args) => ops_report(&args),
        Command::Import(args) => ops_import(&args),
        Command::Loadtest(args) => loadtest(&args),
        Command::Setting(args) => {
            match hallrelay_server::config::setting(&args.config, args.setting) {
                Ok(values) => {
                    for value in values {
                        println!("{value}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(EXIT_USAGE, &e),
            }
        }
        Command::Token(args) => match hallrelay::mint::run(&args) {
            Ok(Some(token)) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Ok(None) => ExitCode::SUCCESS,
            Err(e) => fail(EXIT_USAGE, &e),
        },
    }
}

/// Prints clap's message; `--help` and `--version` exit 0, a bad command line 64 (EX_USAGE,
/// as the README promises) rather than clap's 2.
fn usage(e: &clap::Error) -> ExitCode {
    // Nothing more can be said if the terminal is gone.
    let _ = e.print();
    if e.use_stderr() {
        ExitCode::from(EXIT_USAGE)
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs a server future on a runtime until SIGTERM or SIGINT, and maps its error to an exit
/// code.
fn run_server<F, Fut>(server: F) -> ExitCode
where
    F: FnOnce(tokio_util::sync::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), ServeError>>,
{
    let runtime = match runtime() {
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
            // A secret file others may read is a setup mistake, not data to protect.
            Some(ServeError::Identity(hallrelay_server::identity::IdentityError::KeyFile(_))) => {
                fail(EXIT_USAGE, &e)
            }
            Some(ServeError::Store(store)) if store.is_disk_failure() => fail(EXIT_IO, &e),
            Some(ServeError::Store(_) | ServeError::Identity(_)) => fail(EXIT_DATA, &e),
            Some(ServeError::KeyFile(_)) => fail(EXIT_USAGE, &e),
            Some(ServeError::AnswerKeys(hallrelay_server::platform::AnswerKeysError::Key(_))) => {
                fail(EXIT_USAGE, &e)
            }
            Some(ServeError::AnswerKeys(_)) => fail(EXIT_DATA, &e),
            // An enrollment file or platform registry this build cannot read: not a restart's
            // business.
            Some(ServeError::Enrollment(_) | ServeError::Registry(_)) => fail(EXIT_DATA, &e),
            _ => fail(1, &format!("{e:#}")),
        },
    }
}

/// EX_TEMPFAIL: some saves are held only in the candidate's journal; running again sends them.
const EXIT_ONLY_IN_JOURNAL: u8 = 75;

fn candidate(args: &CandidateArgs) -> ExitCode {
    use hallrelay::candidate::{self, CandidateError};
    if args.restore {
        return restore(args);
    }
    let plan = match candidate::Plan::from_args(args) {
        Ok(plan) => plan,
        Err(e) => return fail(EXIT_USAGE, &e),
    };
    let journal = args.journal.display().to_string();
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let shutdown = serve::shutdown_on_signals()?;
            Ok(candidate::run(plan, shutdown, |line| println!("{line}")).await)
        })
    });
    match result {
        Err(e) => fail(1, &e),
        Ok(Err(e @ CandidateError::Start(_))) => fail(EXIT_USAGE, &e),
        Ok(Err(e)) => fail(1, &e),
        Ok(Ok(summary)) if summary.only_here == 0 => {
            println!(
                "every save is acknowledged ({} held by a box, waiting for its replay)",
                summary.on_box
            );
            ExitCode::SUCCESS
        }
        Ok(Ok(summary)) => {
            println!(
                "{} saves are only in the journal at {journal}: run again to send them",
                summary.only_here
            );
            ExitCode::from(EXIT_ONLY_IN_JOURNAL)
        }
    }
}

/// `candidate --restore`.
fn restore(args: &CandidateArgs) -> ExitCode {
    use hallrelay::candidate::{self, CandidateError};
    let result = runtime().and_then(|rt| {
        rt.block_on(async { Ok(candidate::restore_latest(args, |line| eprintln!("{line}")).await) })
    });
    let restored = match result {
        Err(e) => return fail(1, &e),
        Ok(Err(e @ (CandidateError::Start(_) | CandidateError::RestoreCode { .. }))) => {
            return fail(EXIT_USAGE, &e);
        }
        Ok(Err(e)) => return fail(1, &e),
        Ok(Ok(restored)) => restored,
    };
    match ops::write_out(args.restore_out.as_deref(), &restored.payload) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, &CandidateError::RestoreOut(e)),
    }
}

fn discover(args: &DiscoverArgs) -> ExitCode {
    let found = runtime().and_then(|rt| {
        rt.block_on(hallrelay_client::discovery::discover(
            &args.mdns_interfaces,
            args.timeout,
        ))
        .map_err(std::io::Error::other)
    });
    match found {
        Err(e) => fail(1, &e),
        Ok(found) if found.is_empty() => fail(
            1,
            &format!(
                "no box answered within {}",
                humantime::format_duration(args.timeout)
            ),
        ),
        Ok(found) => {
            for b in found {
                let url = b.urls().into_iter().next().unwrap_or_default();
                let pin = b.pin_hint.as_deref().unwrap_or("-");
                println!("{}\t{url}\t{pin}", b.name);
            }
            ExitCode::SUCCESS
        }
    }
}

fn demo(args: &DemoArgs) -> ExitCode {
    let plan = hallrelay::demo::DemoPlan {
        candidates: args.candidates,
        outage: args.outage,
        dir: args.dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("hallrelay-demo-{}", std::process::id()))
        }),
        keep: args.keep || args.dir.is_some(),
        plaintext: args.plaintext,
    };
    let report = runtime().and_then(|rt| {
        rt.block_on(hallrelay::demo::run(plan, |line| println!("{line}")))
            .map_err(std::io::Error::other)
    });
    match report {
        Err(e) => fail(1, &e),
        Ok(report) => {
            print!("{}", hallrelay::demo::summary_table(&report));
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                for problem in &report.problems {
                    eprintln!("hallrelay demo: {problem}");
                }
                ExitCode::FAILURE
            }
        }
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new()
}

fn check(args: &CheckArgs) -> ExitCode {
    let report = match hallrelay_server::readiness::check_plan(
        args.plan(),
        args.config.as_deref(),
        args.data_dir.as_deref(),
    ) {
        Ok(r) => r,
        Err(e) => return fail(EXIT_USAGE, &e),
    };
    println!("{report}");
    if report.ready() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs an operator command's future; a refused bundle exits 65, anything else 1.
fn run_ops<T>(
    future: impl std::future::Future<Output = Result<T, OpsError>>,
    done: impl FnOnce(T) -> ExitCode,
) -> ExitCode {
    let result = match runtime() {
        Ok(r) => r.block_on(future),
        Err(e) => return fail(1, &e),
    };
    match result {
        Ok(v) => done(v),
        Err(e @ OpsError::Bundle(_)) => fail(EXIT_DATA, &e),
        Err(e) => fail(1, &e),
    }
}

fn secret(path: &std::path::Path) -> Result<Secret, ExitCode> {
    Secret::from_file(path).map_err(|e| fail(EXIT_USAGE, &e))
}

/// `cloud rotate-key`: one step of the platform's key rotation, on the cloud's own files.
fn rotate_key(args: &RotateKeyArgs) -> ExitCode {
    use hallrelay_server::keyring::{KeyRing, Rotated};
    let file = args
        .platform_key_file
        .clone()
        .unwrap_or_else(|| args.data_dir.join(PLATFORM_KEY_FILE));
    let done = KeyRing::existing(&file).and_then(|ring| ring.rotate(args.promote));
    match done {
        Ok(Rotated::Published(kid)) => {
            println!(
                "published the next key {kid}: it signs nothing yet. Once every box has fetched \
                 it (on its next contact with the cloud), run `hallrelay cloud rotate-key \
                 --promote`"
            );
            ExitCode::SUCCESS
        }
        Ok(Rotated::Promoted { signer, retired }) => {
            println!(
                "key {signer} signs tokens now; {retired} stays published for the tokens it \
                 signed"
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(EXIT_USAGE, &e),
    }
}

/// `cloud enroll|boxes|revoke|confirm|answer|card|rotate-key`.
fn cloud_action(action: &CloudAction) -> ExitCode {
    use hallrelay::platform;
    let access = match action {
        CloudAction::RotateKey(a) => return rotate_key(a),
        CloudAction::Card(a) => return card(a),
        CloudAction::Answer(a) => &a.access,
        CloudAction::Enroll(a) => &a.access,
        CloudAction::Boxes(a) => a,
        CloudAction::Revoke(a) | CloudAction::Confirm(a) => &a.access,
    };
    let token = match secret(&access.token_file) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let cloud = match platform::connect(access, token) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_USAGE, &e),
    };
    let print = |text: String| {
        println!("{text}");
        ExitCode::SUCCESS
    };
    match action {
        CloudAction::Enroll(a) => run_ops(
            platform::enroll(&cloud, &a.venue, a.ttl, a.require_confirmation),
            |issued| print(platform::show_code(&issued, !a.no_qr)),
        ),
        CloudAction::Boxes(_) => run_ops(platform::boxes(&cloud), |rows| {
            print(platform::show_boxes(&rows))
        }),
        CloudAction::Revoke(a) => run_ops(platform::change(&cloud, &a.pin, false), |row| {
            print(format!(
                "revoked {} ({}): its credential no longer works and it is listed to no candidate",
                row.name, row.pin
            ))
        }),
        CloudAction::Confirm(a) => run_ops(platform::change(&cloud, &a.pin, true), |row| {
            print(format!(
                "confirmed {} ({}): it is listed to the venue's candidates",
                row.name, row.pin
            ))
        }),
        CloudAction::Answer(a) => run_ops(
            hallrelay::answers::answer(&cloud, &a.exam, &a.candidate, a.seq),
            |answer| {
                use std::io::Write as _;
                let said = hallrelay::answers::describe(&answer, &a.exam, &a.candidate, a.seq);
                let _ = writeln!(std::io::stderr(), "{said}");
                match ops::write_out(a.out.as_deref(), &answer.plaintext) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(1, &e),
                }
            },
        ),
        // Answered above, on the cloud's own files: they need no connection.
        CloudAction::RotateKey(a) => rotate_key(a),
        CloudAction::Card(a) => card(a),
    }
}

/// `cloud card`: exam-card restore codes, from the cloud's answer keys.
fn card(args: &CardArgs) -> ExitCode {
    use hallrelay_server::platform::AnswerKeysError;
    match hallrelay::answers::cards(&args.data_dir, &args.exam, &args.candidates, !args.no_qr) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e @ (AnswerKeysError::BadLength { .. } | AnswerKeysError::Random)) => {
            fail(EXIT_DATA, &e)
        }
        Err(e) => fail(EXIT_USAGE, &e),
    }
}

fn ops_status(args: &StatusArgs) -> ExitCode {
    let access = &args.access;
    let token = match secret(&access.token_file) {
        Ok(t) => t,
        Err(code) => return code,
    };
    run_ops(ops::status(&access.box_url, token, &access.pin), |text| {
        println!("{text}");
        ExitCode::SUCCESS
    })
}

fn ops_replay(args: &ReplayArgs) -> ExitCode {
    let access = &args.access;
    let token = match secret(&access.token_file) {
        Ok(t) => t,
        Err(code) => return code,
    };
    run_ops(
        ops::retry_parked(&access.box_url, token, &access.pin),
        |retried| {
            match retried {
                0 => println!("nothing was parked: every autosave is delivered or queued"),
                n => println!(
                    "{n} parked autosaves are back in the replay queue; the box sends them \
                     now (hallrelay status shows whether the cloud takes them)"
                ),
            }
            ExitCode::SUCCESS
        },
    )
}

fn ops_audit(args: &AuditArgs) -> ExitCode {
    let access = &args.access;
    let token = match secret(&access.token_file) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let fetch = ops::audit(&access.box_url, token, &access.pin, args.since, args.limit);
    run_ops(fetch, |(entries, more)| {
        for entry in &entries {
            if args.json {
                println!("{entry}");
            } else {
                println!("{}", ops::audit_line(entry));
            }
        }
        if more {
            eprintln!("more entries follow: raise --limit, or narrow with --since");
        }
        ExitCode::SUCCESS
    })
}

fn ops_export(args: &ExportArgs) -> ExitCode {
    let access = &args.access;
    let token = match secret(&access.token_file) {
        Ok(t) => t,
        Err(code) => return code,
    };
    run_ops(
        ops::export(&access.box_url, token, &access.pin, &args.out),
        |summary| {
            println!(
                "exported {} autosaves ({} bytes) of {} to {}; verified, pin {}",
                summary.manifest.count,
                summary.manifest.bytes,
                summary.manifest.name,
                args.out.display(),
                summary.pin
            );
            ExitCode::SUCCESS
        },
    )
}

fn ops_report(args: &ReportArgs) -> ExitCode {
    let access = &args.access;
    let token = match secret(&access.token_file) {
        Ok(t) => t,
        Err(code) => return code,
    };
    run_ops(ops::report(&access.box_url, token, &access.pin), |csv| {
        if let Err(e) = ops::write_out(args.out.as_deref(), &csv) {
            return fail(1, &e);
        }
        if let Some(path) = &args.out {
            let rows = csv.split(|b| *b == b'\n').count().saturating_sub(2);
            eprintln!(
                "wrote the offline-time record of {rows} candidates to {}",
                path.display()
            );
        }
        ExitCode::SUCCESS
    })
}

fn ops_verify(args: &VerifyArgs) -> ExitCode {
    match ops::verify(&args.file) {
        Ok(summary) => {
            if let Some(path) = &args.record_out {
                let Some(record) = &summary.record else {
                    return fail(
                        EXIT_DATA,
                        &"the bundle is intact but carries no offline-time record (it was \
                          exported by an older hallrelay); ask the box itself with \
                          `hallrelay report`",
                    );
                };
                if let Err(e) = ops::write_file(path, record) {
                    return fail(1, &e);
                }
            }
            println!(
                "intact: {} autosaves ({} bytes) from {} ({}), exported {}, signed by pin {}",
                summary.manifest.count,
                summary.manifest.bytes,
                summary.manifest.name,
                summary.manifest.appliance,
                summary.manifest.exported_at,
                summary.pin
            );
            if let Some(record) = &summary.record {
                let rows = record.split(|b| *b == b'\n').count().saturating_sub(2);
                let written = args
                    .record_out
                    .as_ref()
                    .map(|p| format!(", written to {}", p.display()))
                    .unwrap_or_default();
                println!("offline-time record: {rows} candidates, signed with the bundle{written}");
            }
            ExitCode::SUCCESS
        }
        Err(e @ OpsError::Bundle(_)) => fail(EXIT_DATA, &e),
        Err(e) => fail(1, &e),
    }
}

fn ops_import(args: &ImportArgs) -> ExitCode {
    let credential = match secret(&args.cloud_token_file) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let cloud = match &args.cloud_pin {
        Some(pin) => {
            hallrelay_client::Connection::pinned(&args.cloud, vec![pin.clone()], Some(credential))
        }
        None => hallrelay_client::Connection::with_roots(
            &args.cloud,
            args.cloud_ca_file.as_deref(),
            Some(credential),
        ),
    };
    let cloud = match cloud {
        Ok(c) => c,
        Err(e) => return fail(EXIT_USAGE, &e),
    };
    run_ops(ops::import(cloud, &args.file), |done| {
        println!(
            "imported: {} new, {} already in the cloud, {} conflicts",
            done.new, done.already, done.conflicts
        );
        if done.conflicts > 0 {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    })
}

fn loadtest(args: &LoadtestArgs) -> ExitCode {
    let runtime = match runtime() {
        Ok(r) => r,
        Err(e) => return fail(1, &e),
    };
    // Progress goes to stderr, so that stdout holds only the report (or --json's object).
    let outcome = runtime.block_on(hallrelay::loadtest::run(args, |line| eprintln!("{line}")));
    match outcome {
        Err(e) if e.is_usage() => fail(EXIT_USAGE, &e),
        Err(e @ hallrelay::loadtest::LoadtestError::TokensRefused { .. }) => fail(EXIT_NOPERM, &e),
        Err(e) => fail(1, &e),
        Ok(outcome) => {
            if args.json {
                println!("{}", outcome.json());
            } else {
                println!("{}", outcome.text());
            }
            if outcome.held {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn fail(code: u8, error: &dyn std::fmt::Display) -> ExitCode {
    use std::io::Write as _;
    // Not `eprintln!`: on a dead stderr it panics, and the exit code would be 101.
    let _ = writeln!(std::io::stderr(), "hallrelay: {error}");
    ExitCode::from(code)
}
