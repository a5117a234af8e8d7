//! Fuzzes configuration parsing and validation (`hallrelay_server::config`).
//!
//! A venue writes the TOML file by hand, and a configuration error must be an error message
//! and exit code 64, never a crash at start. Properties, for any text:
//! - `FileConfig::parse` never panics, and its errors name the file;
//! - a file it accepts still refuses an unknown key added to it (`deny_unknown_fields`: a
//!   typo is an error, not a silently ignored setting);
//! - `check_cloud_url` never panics, on the text itself or on a file's `cloud` value;
//! - a file it accepts goes through `ServeConfig::from_overrides`, the merge with the flags and the
//!   validation of every value, without panicking (files naming a credential or CA file are
//!   left out there, so the fuzzer does not make the loader read arbitrary paths).
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use hallrelay_client::check_cloud_url;
use hallrelay_server::config::{ConfigError, FileConfig, Overrides, ServeConfig};
use libfuzzer_sys::fuzz_target;

/// A scratch file the accepted texts are written to, and `serve --config` naming it.
struct Scratch {
    _dir: tempfile::TempDir,
    file: PathBuf,
    args: Overrides,
}

static SCRATCH: LazyLock<Scratch> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("hallrelay.toml");
    let args = Overrides {
        config: Some(file.clone()),
        ..Overrides::default()
    };
    Scratch {
        _dir: dir,
        file,
        args,
    }
});

fn parse(path: &Path, text: &str) -> Option<FileConfig> {
    match FileConfig::parse(path, text) {
        Ok(file) => Some(file),
        Err(ConfigError::Parse { path: named, .. }) => {
            assert_eq!(named, path, "the error names the file");
            None
        }
        Err(other) => panic!("parsing answered {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = check_cloud_url(text);
    let path = Path::new("/etc/hallrelay/hallrelay.toml");
    let Some(file) = parse(path, text) else {
        return;
    };
    let typo = format!("{text}\nzz_not_a_setting = 1\n");
    assert!(parse(path, &typo).is_none(), "an unknown key was accepted");
    if let Some(cloud) = &file.cloud {
        let _ = check_cloud_url(cloud);
    }
    if file.cloud_token_file.is_none() && file.cloud_ca_file.is_none() {
        let scratch = &*SCRATCH;
        std::fs::write(&scratch.file, text).expect("the scratch file is writable");
        let _ = ServeConfig::from_overrides(&scratch.args);
    }
});
