#!/usr/bin/env bash
# `just deb-install-test`: installs the built .deb on a Debian system that boots with systemd
# and checks what a venue that runs Debian gets. The system is a root file system from
# mmdebstrap (the suite and the mirror of this machine's apt sources; no host is named
# here), booted by systemd-nspawn with a private network: the box's mDNS stays inside the
# container. Checks:
#   - installing creates the `hallrelay` user, enables the unit and creates no secret;
#   - at boot the unit starts, and "active" means the box told systemd READY=1 (Type=notify);
#   - /v1/health answers; the secrets the box created are 0600 and owned by `hallrelay`;
#   - the status line (STATUS=) says what the box is doing; the watchdog is armed;
#   - after a SIGKILL systemd restarts it, with the same identity;
#   - `systemctl stop` stops it cleanly.
# apt-get install mmdebstrap systemd-container; root.
set -euo pipefail
cd "$(dirname "$0")/.."
deb=${1:?usage: packaging/install-test.sh hallrelay_VERSION_ARCH.deb}
t0=$(date +%s)
say() { echo "deb-install-test: [$(( $(date +%s) - t0 )) s] $*"; }
fail() { echo "deb-install-test: $*" >&2; [ -s "${work:-}/console.log" ] && tail -30 "$work/console.log" >&2; exit 1; }
suite=$(. /etc/os-release && echo "$VERSION_CODENAME")
work=$(mktemp -d "${TMPDIR:-/var/tmp}/hallrelay-deb-test.XXXXXX")
root=$work/root
nspawn=
cleanup() {
    [ -n "$nspawn" ] && kill "$nspawn" 2>/dev/null && wait "$nspawn" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

mmdebstrap --quiet --variant=minbase --include=systemd,systemd-sysv,dbus,curl,ca-certificates \
    "$suite" "$root"
say "a $suite root with systemd"
cp "$deb" "$root/tmp/hallrelay.deb"
chroot "$root" dpkg -i /tmp/hallrelay.deb >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "dpkg -i failed"; }
grep -qi "not found\|error" "$work/dpkg.log" && { cat "$work/dpkg.log" >&2; fail "dpkg -i printed an error"; }
chroot "$root" getent passwd hallrelay >/dev/null || fail "no hallrelay user after installing"
[ -L "$root/etc/systemd/system/multi-user.target.wants/hallrelay.service" ] || fail "the unit is not enabled"
[ -z "$(ls -A "$root/var/lib/hallrelay" 2>/dev/null)" ] || fail "installing created state: $(ls "$root/var/lib/hallrelay")"
say "installed: user hallrelay, unit enabled, no state or secret yet"

systemd-nspawn -D "$root" --register=no --private-network --keep-unit --boot >"$work/console.log" 2>&1 &
nspawn=$!
leader=
for _ in $(seq 100); do
    leader=$(pgrep -P "$nspawn" | head -1 || true)
    [ -n "$leader" ] && [ "$(cat "/proc/$leader/comm" 2>/dev/null)" = systemd ] && break
    sleep 0.2
done
[ -n "$leader" ] || fail "the container did not boot"
inside() { nsenter -t "$leader" -m -u -i -n -p "$@"; }
show() { inside systemctl show hallrelay -p "$1" --value; }
deadline=$(( $(date +%s) + 120 ))
until [ "$(show ActiveState 2>/dev/null)" = active ]; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "hallrelay.service did not become active: $(show ActiveState) $(show Result)"
    sleep 1
done
health=$(inside curl -sk --max-time 5 https://127.0.0.1:8443/v1/health) || fail "no /v1/health"
grep -q '"status":"ok"' <<<"$health" || fail "health: $health"
appliance=$(sed -n 's/.*"appliance":"\([^"]*\)".*/\1/p' <<<"$health")
say "booted: hallrelay.service active (READY=1), health $health"

for f in identity.key venue.key hallrelay.redb; do
    [ "$(inside stat -c '%U %a' "/var/lib/hallrelay/$f")" = "hallrelay 600" ] \
        || fail "/var/lib/hallrelay/$f: $(inside stat -c '%U %a' "/var/lib/hallrelay/$f")"
done
status=$(show StatusText)
grep -q "pending" <<<"$status" || fail "no status line: '$status'"
[ "$(show WatchdogUSec)" != 0 ] || fail "the watchdog is not armed"
say "secrets 0600 hallrelay; status '$status'; watchdog $(show WatchdogUSec)"

inside systemctl kill -s KILL hallrelay
deadline=$(( $(date +%s) + 60 ))
until [ "$(show NRestarts)" = 1 ] && [ "$(show ActiveState)" = active ]; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "not restarted after SIGKILL: $(show ActiveState), $(show NRestarts) restarts"
    sleep 1
done
health=$(inside curl -sk --max-time 5 https://127.0.0.1:8443/v1/health) || fail "no /v1/health after the restart"
grep -q "\"appliance\":\"$appliance\"" <<<"$health" || fail "a new identity after the restart: $health"
say "SIGKILL: restarted by systemd with the same identity ($appliance)"

inside systemctl stop hallrelay
[ "$(show ActiveState)" = inactive ] || fail "still $(show ActiveState) after systemctl stop"
[ "$(show Result)" = success ] || fail "stopped with result $(show Result)"
inside systemctl poweroff || true
wait "$nspawn" 2>/dev/null || true
nspawn=
say "ok: stopped cleanly (result success); the container powered off"
