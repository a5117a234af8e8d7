//! What the suites that drive a real browser share: Debian's Chromium (or `CHROMIUM`), the
//! node side in `tests/browser` (playwright-core, installed there by `npm ci`), the folder for
//! their screenshots and logs, and the loud skip when any of these is missing. One place, so
//! that the console test and the web client test look for the same things the same way.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::skip;

/// The repository's root (the test kit lives in `crates/testkit`).
pub fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/testkit lives two folders below the repository's root")
        .to_owned()
}

/// `tests/browser`: the node scripts that drive the browser, and their `node_modules`.
pub fn node_dir() -> PathBuf {
    repo_dir().join("tests/browser")
}

/// `target/test-artifacts` (or under `CARGO_TARGET_DIR`): screenshots and logs a browser test
/// leaves for a person to look at; created if missing.
pub fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_dir().join("target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/test-artifacts");
    dir
}

/// The browser binary: `CHROMIUM`, or Debian's `/usr/bin/chromium`.
pub fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// `clients/web`: the browser client package.
pub fn package_dir() -> PathBuf {
    repo_dir().join("clients/web")
}

/// Whether the package's build and test tools are installed (`npm ci` in clients/web), as a
/// condition for [`node_or_skip`] or [`browser_or_skip`].
pub fn package_installed() -> (bool, &'static str) {
    (
        package_dir()
            .join("node_modules/typescript/package.json")
            .exists(),
        "the package's node_modules (cd clients/web && npm ci)",
    )
}

/// Whether node and npm are here, and every one of `also` (a condition and, when it fails,
/// what is missing and how to get it). Skips `what` loudly when not, and fails instead when
/// `HALLRELAY_REQUIRE_PRIVILEGED=1` (CI installs them).
pub fn node_or_skip(what: &str, also: &[(bool, &str)]) -> bool {
    let mut missing = node_missing();
    missing.extend(unmet(also));
    here_or_skip(what, missing)
}

/// Whether Chromium, node, npm and playwright-core are here, and every one of `also`, as
/// [`node_or_skip`].
pub fn browser_or_skip(what: &str, also: &[(bool, &str)]) -> bool {
    let mut missing = Vec::new();
    if !Path::new(&chromium()).exists() {
        missing.push("chromium (apt-get install chromium)");
    }
    missing.extend(node_missing());
    if !node_dir()
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        missing.push("playwright-core (npm ci in tests/browser)");
    }
    missing.extend(unmet(also));
    here_or_skip(what, missing)
}

fn node_missing() -> Vec<&'static str> {
    [
        ("node", "node (apt-get install nodejs)"),
        ("npm", "npm (apt-get install npm)"),
    ]
    .into_iter()
    .filter(|(tool, _)| Command::new(tool).arg("--version").output().is_err())
    .map(|(_, hint)| hint)
    .collect()
}

fn unmet<'a>(also: &'a [(bool, &'a str)]) -> impl Iterator<Item = &'a str> {
    also.iter().filter(|(ok, _)| !ok).map(|(_, hint)| *hint)
}

/// True when nothing is missing; otherwise the loud skip (or failure, in CI).
fn here_or_skip(what: &str, missing: Vec<&str>) -> bool {
    if missing.is_empty() {
        return true;
    }
    skip(
        what,
        &format!("missing {}", missing.join(", ")),
        "HALLRELAY_REQUIRE_PRIVILEGED",
    );
    false
}
