//! Where log lines go and in which shape: plain text for a person at a terminal, or one JSON
//! object a line for the systemd journal and a venue's log shipper.
//!
//! Every command logs to stderr, so that stdout stays the command's answer (a token, a table,
//! JSON). The format is chosen once, before the first line: `serve` takes it from its
//! configuration (`log_format`, or `--log-format`), `cloud` from its flag. In JSON each event
//! is one object whose fields sit at the top level next to `timestamp`, `level`, `target` and
//! `message`, so that a shipper indexes `pin`, `addr` or `error` without parsing prose.
//! `RUST_LOG` still overrides the level filter in both formats.
//! A line that cannot be written (stderr's reader is gone) is dropped: logging never stops
//! the box, nor its shutdown.

use std::io::IsTerminal as _;
use std::str::FromStr;

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

/// The shape of each log line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, coloured when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object a line, fields flattened to the top level.
    Json,
}

/// A `--log-format` value that names no format.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a log format; use `text` or `json`")]
pub struct UnknownLogFormat(String);

impl FromStr for LogFormat {
    type Err = UnknownLogFormat;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(UnknownLogFormat(other.to_owned())),
        }
    }
}

/// Installs the process's logger: events at `default_level` and above (unless `RUST_LOG`
/// says otherwise) go to stderr in `format`. Call it once, before anything logs.
pub fn init(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // A line that cannot be written (the log pipe is gone: `hallrelay serve 2>&1 | tee`
    // stopped by the same Ctrl-C) is dropped. With internal errors on, tracing-subscriber
    // reports the failure with `eprintln!`, which panics on the same dead stderr and kills
    // whatever thread logged: the signal task before it cancelled shutdown, or the writer.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_others_are_refused_with_the_choices() {
        assert_eq!("text".parse::<LogFormat>().ok(), Some(LogFormat::Text));
        assert_eq!("json".parse::<LogFormat>().ok(), Some(LogFormat::Json));
        let refused = "JSON ".parse::<LogFormat>().map(|_| ()).unwrap_err();
        assert!(
            refused.to_string().contains("`text` or `json`"),
            "{refused}"
        );
    }
}
