//! `hallrelay token`: mints a candidate or admin token with an existing key (the platform's, or
//! a box's local one), and optionally writes it to a private file.
//!
//! With `--platform-key-file` the token is the platform's: good at the cloud and on every box of
//! its venue. Without it, a box's local key signs and the token names that box's pin, so it is
//! good on that box alone. Only `serve` and `cloud` create keys. A token minted with a key that
//! a typo or the wrong folder just created would be refused everywhere, so this command reads
//! the key and never makes one: a missing key is an error that names the path it looked for.
//! `--out` writes the token with mode 0600 (durably, through
//! [`hallrelay_protocol::keys::write_secret_file`]), because the commands that read token files
//! refuse ones others may read, and a shell's `> FILE` makes a 0644 file.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::cli::TokenArgs;
use hallrelay_protocol::ids::is_valid_id;
use hallrelay_protocol::keys::{KeyFileError, TokenKey};
use hallrelay_protocol::timefmt::unix_secs;
use hallrelay_protocol::token::{self, Claims};
use hallrelay_server::config::{data_dir_or_default, venue_key_file_or_default};
use hallrelay_server::identity::Identity;

/// The most bytes of an existing `--out` file read to decide whether it holds a token.
const MAX_TOKEN_FILE: u64 = 4096;

/// Why no token was minted or written. Every one is a usage error (exit 64).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    #[error(transparent)]
    Key(#[from] KeyFileError),
    #[error("the {what} id {id:?} must match [A-Za-z0-9._-]{{1,64}}")]
    BadId { what: &'static str, id: String },
    #[error(
        "a local token names its box, and the pin of the box in {dir} cannot be read: name \
         the box with --box PIN, or its data dir with --data-dir ({why})"
    )]
    NoBox { dir: PathBuf, why: String },
    #[error(
        "{path} exists and does not hold a hallrelay token, so it was left alone: name another \
         --out file, or remove this one if it is really meant to be replaced"
    )]
    WouldOverwrite { path: PathBuf },
    #[error("cannot read {path} to check that it holds a token: {source}")]
    ReadOut {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The key file `token` reads: `--platform-key-file`, else `--venue-key-file`, else
/// `<data-dir>/venue.key`.
pub fn key_file(args: &TokenArgs) -> PathBuf {
    args.platform_key_file.clone().unwrap_or_else(|| {
        venue_key_file_or_default(
            args.venue_key_file.clone(),
            &data_dir_or_default(args.data_dir.clone()),
        )
    })
}

/// Mints the token `args` ask for with the existing key; creates nothing.
pub fn mint(args: &TokenArgs) -> Result<String, MintError> {
    let mut claims = claims(args)?;
    let key = TokenKey::load(&key_file(args))?;
    if args.platform_key_file.is_none() && claims.box_pin.is_none() {
        claims = claims.on_box(&local_box_pin(args)?);
    }
    Ok(token::mint(&key, &claims))
}

/// The pin of the box whose data dir holds the local key: a local token is good there alone.
fn local_box_pin(args: &TokenArgs) -> Result<String, MintError> {
    let dir = data_dir_or_default(args.data_dir.clone());
    Identity::existing(&dir)
        .map(|identity| identity.pin().to_owned())
        .map_err(|e| MintError::NoBox {
            dir,
            why: e.to_string(),
        })
}

/// Mints the token and, with `--out`, writes it (mode 0600) and returns `None`; without,
/// returns it for stdout.
pub fn run(args: &TokenArgs) -> Result<Option<String>, MintError> {
    let token = mint(args)?;
    match &args.out {
        None => Ok(Some(token)),
        Some(path) => {
            write_token(path, &token)?;
            Ok(None)
        }
    }
}

fn claims(args: &TokenArgs) -> Result<Claims, MintError> {
    let now = unix_secs(SystemTime::now());
    let ttl = args.ttl.as_secs();
    if !is_valid_id(&args.venue) {
        return Err(MintError::BadId {
            what: "venue",
            id: args.venue.clone(),
        });
    }
    let claims = match (&args.exam, &args.candidate) {
        (Some(exam), Some(candidate)) => {
            for (what, id) in [("exam", exam), ("candidate", candidate)] {
                if !is_valid_id(id) {
                    return Err(MintError::BadId {
                        what,
                        id: id.clone(),
                    });
                }
            }
            Claims::candidate(&args.venue, exam, candidate, now, ttl)
        }
        _ => Claims::admin(&args.venue, &args.subject, now, ttl),
    };
    Ok(match &args.box_pin {
        Some(pin) => claims.on_box(pin),
        None => claims,
    })
}

/// Writes `token` to `path` with mode 0600. An existing file is replaced only when it holds
/// a token already (re-minting an expired one is routine); anything else there (a venue key,
/// a configuration, a credential named by mistake) is left alone.
pub fn write(path: &Path, token: &str) -> Result<(), MintError> {
    write_token(path, token)
}

fn write_token(path: &Path, token: &str) -> Result<(), MintError> {
    if let Some(existing) = existing_text(path)?
        && !holds_a_token(&existing)
    {
        return Err(MintError::WouldOverwrite {
            path: path.to_owned(),
        });
    }
    hallrelay_protocol::keys::write_secret_file(path, format!("{token}\n").as_bytes())?;
    Ok(())
}

/// The start of the file at `path`, or `None` when there is none.
fn existing_text(path: &Path) -> Result<Option<Vec<u8>>, MintError> {
    use std::io::Read as _;
    let read_err = |source| MintError::ReadOut {
        path: path.to_owned(),
        source,
    };
    match std::fs::File::open(path) {
        Ok(file) => {
            let mut bytes = Vec::new();
            file.take(MAX_TOKEN_FILE)
                .read_to_end(&mut bytes)
                .map_err(read_err)?;
            Ok(Some(bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(read_err(e)),
    }
}

/// Whether `bytes` are one hallrelay token (what `token` writes), or nothing at all.
fn holds_a_token(bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    let text = text.trim();
    text.is_empty() || (text.starts_with("hr2.") && !text.contains(char::is_whitespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_token_or_nothing_may_be_replaced() {
        assert!(holds_a_token(b"hr2.eyJ9.abc\n"));
        assert!(holds_a_token(b""));
        assert!(!holds_a_token(format!("{}\n", "ab".repeat(32)).as_bytes()));
        assert!(!holds_a_token(b"cloud = \"http://127.0.0.1:9443\"\n"));
        assert!(!holds_a_token(b"hr2.x.y\nhr2.x.z\n"));
        assert!(!holds_a_token(&[0xff, 0xfe]));
    }
}
