#!/usr/bin/env bash
# Checks a built hallrelay .deb: what it installs, its control data, and that it carries and
# creates no secret. `just deb` runs it; so does CI.
set -euo pipefail
deb=${1:?usage: packaging/check-deb.sh hallrelay_VERSION_ARCH.deb}
fail() { echo "check-deb: $*" >&2; exit 1; }

contents=$(dpkg-deb -c "$deb")
info=$(dpkg-deb -I "$deb")
for path in ./usr/bin/hallrelay ./etc/hallrelay/hallrelay.toml ./usr/lib/sysusers.d/hallrelay.conf; do
    grep -q " $path\$" <<<"$contents" || fail "$path is missing"
done
grep -Eq " \./(usr/)?lib/systemd/system/hallrelay\.service\$" <<<"$contents" \
    || fail "the systemd unit is missing"
grep -q "Package: hallrelay" <<<"$info" || fail "not the hallrelay package"
# No secret ships in the package: nothing under the state dir, no key or certificate files.
if grep -Eq "var/lib/hallrelay/.|\.key\$|\.pem\$|\.token\$" <<<"$contents"; then
    fail "the package carries state or a secret"
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb -e "$deb" "$work/control"
grep -qx "/etc/hallrelay/hallrelay.toml" "$work/control/conffiles" \
    || fail "hallrelay.toml is not a conffile (an upgrade would overwrite a venue's edits)"
# Installing creates the service's user and enables the unit (cargo-deb writes neither
# without maintainer-scripts set; an earlier package did neither).
grep -q "systemd-sysusers.* hallrelay.conf" "$work/control/postinst" 2>/dev/null \
    || fail "the postinst does not create the hallrelay user"
grep -q "deb-systemd-helper enable hallrelay.service" "$work/control/postinst" \
    || fail "the postinst does not enable hallrelay.service"
# The maintainer scripts create the user, nothing else of ours: no key, token or identity.
if grep -Eq "hallrelay (serve|token)|venue\.key|openssl|head -c|urandom" "$work"/control/*inst "$work"/control/*rm 2>/dev/null; then
    fail "a maintainer script creates a secret"
fi
# Every setting in the default configuration is commented out.
dpkg-deb --fsys-tarfile "$deb" | tar -xO ./etc/hallrelay/hallrelay.toml >"$work/hallrelay.toml"
if grep -Ev '^\s*(#|$)' "$work/hallrelay.toml" | grep -q .; then
    fail "the default configuration sets something"
fi
# The store's fault injector (the `faults` feature, for the torture suites) never ships: the
# binary must come from `cargo build --release`, not from a test build.
dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/bin/hallrelay >"$work/hallrelay"
if grep -aq "injected an I/O error" "$work/hallrelay"; then
    fail "the binary carries the store's fault injector: build it with cargo build --release, not cargo test"
fi
size=$(stat -c %s "$deb")
echo "check-deb: $deb ok ($size bytes)"
dpkg-deb -c "$deb" | awk '{print "  " $6}'
