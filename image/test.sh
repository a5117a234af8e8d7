#!/usr/bin/env bash
# `just image-test`: boots the SD image's own kernel, initrd and partitions under
# qemu-system-aarch64 -M virt (TCG), twice, with a test hallrelay.toml written onto its BOOT
# partition (a byte-order mark and CRLF, as Notepad saves it). Checks: multi-user.target
# reached, /v1/health answers through a loopback port forward, the hostname comes from the
# file, the root file system is read-only, and the pin and machine id are the same after a
# second boot. SSH: off on the first boot (no keys in the file: nothing answers on port 22);
# on the second, with a key added to the file, `admin` logs in with that key (and sees a
# read-only root) while a password login is refused.
# Enrollment: a reference cloud (`hallrelay cloud --tls`, this machine's target/release
# binary) runs on 127.0.0.1 for both boots; the guest reaches it as https://10.0.2.100:9443
# through a guestfwd. The test file carries `cloud`, the cloud's `cloud_pin` and a one-time
# `enrollment_code` from `hallrelay cloud enroll` (plain text on FAT: the code works once,
# so nothing there needs mode 0600). Boot 1: the box's /v1/status, with a platform admin
# token for venue hall-test, shows "enrolled"; a platform-signed candidate token saves
# (201); the save reaches the cloud; `hallrelay cloud boxes` lists the box's pin. Boot 2
# (the spent code still in the file): still enrolled without enrolling again (the cloud's
# log), and a second save reaches the cloud with the kept credential.
# The guest's network is qemu's user network with restrict=on: nothing leaves this machine
# except the forwarded ports on 127.0.0.1 and the guestfwd to the cloud on 127.0.0.1; mDNS
# is off in the test file. The consoles, health answers and the cloud's log are kept in
# target/image/test/.
# apt-get install mtools fdisk curl python3 openssh-client; qemu-system-aarch64 comes from
# image/qemu.sh (the machine's, $HALLRELAY_QEMU, or Debian's qemu-system-arm unpacked without
# installing it).
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(cargo pkgid | sed 's/.*[#@]//')
xz=${1:-target/image/hallrelay-$version-arm64.img.xz}
[ -e "$xz" ] || { echo "image-test: $xz is missing: run just image first" >&2; exit 1; }
qemu=$(bash image/qemu.sh)
qemu_data=()
[ -d "$(dirname "$qemu")/../share/qemu" ] && qemu_data=(-L "$(dirname "$qemu")/../share/qemu")
t0=$(date +%s)
say() { echo "image-test: [$(( $(date +%s) - t0 )) s] $*"; }
work=$(mktemp -d "${TMPDIR:-/tmp}/hallrelay-image-test.XXXXXX")
rm -rf target/image/test
qemu_pid=
cloud_pid=
logs=target/image/test
cleanup() {
    [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null && wait "$qemu_pid" 2>/dev/null || true
    [ -n "$cloud_pid" ] && kill "$cloud_pid" 2>/dev/null && wait "$cloud_pid" 2>/dev/null || true
    # The guest's console, health answers and the cloud's log outlive the run, passed or failed.
    mkdir -p "$logs" && cp "$work"/console-*.log "$work"/health-*.json "$work"/status-*.json \
        "$work"/cloud.log "$logs"/ 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

img=$work/disk.img
case "$xz" in
    *.xz) xz -dc "$xz" >"$img" ;;
    *) cp --sparse=always "$xz" "$img" ;;   # an uncompressed image, e.g. straight from genimage
esac
truncate -s 3G "$img"   # a bigger card than the image: DATA must grow to fill it
boot_offset=$(( $(sfdisk -d "$img" | awk -F'[=,]' '/^[^ ]*1 :/ {gsub(/ /,"",$2); print $2}') * 512 ))
fat="$img@@$boot_offset"
kernel=$(mdir -b -i "$fat" :: | grep -m1 '/vmlinuz-')
initrd=$(mdir -b -i "$fat" :: | grep -m1 '/initrd.img-')
mcopy -n -i "$fat" "$kernel" "$work/vmlinuz"
mcopy -n -i "$fat" "$initrd" "$work/initrd"
ssh-keygen -q -t ed25519 -N "" -C image-test -f "$work/id"

# test_config [KEY]: the test hallrelay.toml, with KEY as its one SSH key if given, written
# onto BOOT with a byte-order mark and CRLF line ends. The cloud's settings and the one-time
# code stay in it for boot 2, as a venue would leave them.
test_config() {
    {
        printf '\xef\xbb\xbfname = "hall-test"\r\nmdns = false\r\n'
        printf 'cloud = "https://%s"\r\ncloud_pin = "%s"\r\nenrollment_code = "%s"\r\n' \
            "$guest_cloud" "$cloud_pin" "$enrollment_code"
        [ -z "${1:-}" ] || printf 'ssh_authorized_keys = ["%s"]\r\n' "$1"
    } >"$work/hallrelay.toml"
    mcopy -o -i "$fat" "$work/hallrelay.toml" ::hallrelay.toml
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
ssh_port=$(free_port)

# The reference cloud on the host, for both boots. The guest reaches it as $guest_cloud:
# qemu's guestfwd runs $work/to-cloud once per guest connection (a `tcp:` chardev instead
# would be one stream opened when qemu starts, which a second TLS connection cannot share).
hallrelay=$PWD/target/release/hallrelay
cargo build --release --quiet --bin hallrelay
cloud_port=$(free_port)
guest_cloud=10.0.2.100:9443
cloud_url=https://127.0.0.1:$cloud_port
"$hallrelay" cloud --tls --listen "127.0.0.1:$cloud_port" --data-dir "$work/cloud" >"$work/cloud.log" 2>&1 &
cloud_pid=$!
cloud_pin=
for _ in $(seq 60); do
    cloud_pin=$(sed -n 's/.* listening .* pin=\(sha256\/\/[^ ]*\).*/\1/p' "$work/cloud.log" | head -1)
    [ -n "$cloud_pin" ] && break
    kill -0 "$cloud_pid" 2>/dev/null || { cat "$work/cloud.log" >&2; echo "image-test: the reference cloud exited" >&2; exit 1; }
    sleep 0.5
done
[ -n "$cloud_pin" ] || { cat "$work/cloud.log" >&2; echo "image-test: the reference cloud did not log its pin" >&2; exit 1; }
cat >"$work/to-cloud" <<EOF
#!/usr/bin/env python3
# One guest connection to $guest_cloud (stdin and stdout) carried to the cloud on the host.
import os, socket, threading
os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # stderr is the guest's connection too
s = socket.create_connection(("127.0.0.1", $cloud_port))
def up():
    while data := os.read(0, 65536):
        s.sendall(data)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
while data := s.recv(65536):
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]
EOF
chmod 0755 "$work/to-cloud"
venue=hall-test
"$hallrelay" token --platform-key-file "$work/cloud/platform.key" --admin --venue "$venue" \
    --subject image-test --out "$work/admin.token" >/dev/null
"$hallrelay" token --platform-key-file "$work/cloud/platform.key" --exam image-test \
    --candidate c1 --venue "$venue" --out "$work/candidate.token" >/dev/null
"$hallrelay" cloud enroll --cloud "$cloud_url" --cloud-pin "$cloud_pin" --token-file "$work/admin.token" \
    --venue "$venue" --ttl 1h --no-qr >"$work/enroll.out"
enrollment_code=$(sed -n 's/.*enrollment_code = "\([^"]*\)".*/\1/p' "$work/enroll.out" | head -1)
[ -n "$enrollment_code" ] || { cat "$work/enroll.out" >&2; echo "image-test: cloud enroll printed no code" >&2; exit 1; }
say "reference cloud on 127.0.0.1:$cloud_port (pin $cloud_pin), enrollment code for venue $venue"
test_config
guest_ssh() {
    ssh -p "$ssh_port" -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no \
        -o ConnectTimeout=10 -o LogLevel=ERROR "$@"
}
# check_ssh N: boot 1 has no key, so nothing may let anyone in; boot 2 has one.
check_ssh() {
    local n=$1 out
    if [ "$n" = 1 ]; then
        grep -q "hallrelay-setup: SSH off" "$work/console-1.log" || { echo "image-test: SSH not reported off" >&2; exit 1; }
        if guest_ssh -o BatchMode=yes -i "$work/id" admin@127.0.0.1 true 2>"$work/ssh-1.err"; then
            echo "image-test: SSH let admin in without a key in hallrelay.toml" >&2; exit 1
        fi
        # Refused before any SSH exchange (qemu's forward finds the guest's port closed), not
        # by an sshd that runs after all.
        if grep -q "Permission denied" "$work/ssh-1.err"; then
            cat "$work/ssh-1.err" >&2; echo "image-test: an sshd answers with no key configured" >&2; exit 1
        fi
        say "boot 1: SSH off, nothing answers on port 22 ($(tr -d '\r' <"$work/ssh-1.err" | head -1))"
        return 0
    fi
    grep -q "hallrelay-setup: SSH on, 1 key" "$work/console-$n.log" || { echo "image-test: SSH not reported on with 1 key" >&2; exit 1; }
    # sshd starts after boot-setup, without holding up multi-user: give it a moment.
    for _ in $(seq 30); do
        out=$(guest_ssh -o BatchMode=yes -i "$work/id" admin@127.0.0.1 'id -un; hostname; findmnt -no OPTIONS /' 2>"$work/ssh-$n.err") && break
        sleep 2
    done
    [ -n "${out:-}" ] || { cat "$work/ssh-$n.err" >&2; echo "image-test: admin could not log in with the key" >&2; exit 1; }
    [ "$(sed -n 1p <<<"$out")" = admin ] && [ "$(sed -n 2p <<<"$out")" = hall-test ] \
        && grep -Eq '^ro(,|$)' <<<"$(sed -n 3p <<<"$out")" \
        || { echo "image-test: unexpected answer over SSH: $out" >&2; exit 1; }
    # Without the key: the server must offer nothing but public keys (its refusal lists the
    # methods it allows).
    if guest_ssh -o BatchMode=yes -o PubkeyAuthentication=no admin@127.0.0.1 true 2>"$work/ssh-nokey.err"; then
        echo "image-test: SSH let admin in without a key" >&2; exit 1
    fi
    grep -q "Permission denied (publickey)" "$work/ssh-nokey.err" \
        || { cat "$work/ssh-nokey.err" >&2; echo "image-test: sshd offers more than public keys" >&2; exit 1; }
    say "boot $n: SSH: admin logged in with the key from hallrelay.toml (root $(sed -n 3p <<<"$out")); the server offers public keys only"
}
# enrollment_field N FIELD: one field of the enrollment part of boot N's /v1/status answer.
enrollment_field() {
    python3 -c 'import json,sys; print((json.load(open(sys.argv[1])).get("enrollment") or {}).get(sys.argv[2]) or "")' \
        "$work/status-$1.json" "$2" 2>/dev/null || true
}
# check_cloud N: the box is enrolled with the cloud on the host (boot 1 with the code; boot 2
# with what it kept on DATA, the spent code still in the file), takes a platform-signed
# candidate token, and the save reaches the cloud.
check_cloud() {
    local n=$1 box_pin code digest deadline
    box_pin=$(pin_of "$n")
    # A platform token opens the box only once it has enrolled and holds the platform's keys
    # (before that: 401, the key is not trusted).
    deadline=$(( $(date +%s) + 120 ))
    until curl -sk --max-time 5 --pinnedpubkey "$box_pin" -H "Authorization: Bearer $(cat "$work/admin.token")" \
            "https://127.0.0.1:$port/v1/status" >"$work/status-$n.json" 2>/dev/null \
        && [ "$(enrollment_field "$n" state)" = enrolled ]; do
        [ "$(date +%s)" -lt "$deadline" ] || {
            cat "$work/status-$n.json" >&2; echo >&2; tail -20 "$work/cloud.log" >&2
            echo "image-test: boot $n: the box did not enroll with the cloud at $guest_cloud" >&2; exit 1; }
        sleep 3
    done
    [ "$(enrollment_field "$n" venue)" = "$venue" ] || { cat "$work/status-$n.json" >&2; echo "image-test: boot $n: enrolled in another venue" >&2; exit 1; }
    # Enrolled once, on boot 1: boot 2 uses what the box kept on DATA, not the code still in
    # the file (the cloud would take it again from the same pin, so only its log tells).
    [ "$(grep -c ' box enrolled ' "$work/cloud.log")" = 1 ] \
        || { grep ' box enrolled ' "$work/cloud.log" >&2; echo "image-test: boot $n: the box enrolled again" >&2; exit 1; }
    say "boot $n: enrolled in venue $venue since $(enrollment_field "$n" since)"
    # A save with a platform-signed candidate token (seq N), then the cloud's list shows it.
    code=$(curl -s --max-time 20 -k --pinnedpubkey "$box_pin" -o "$work/save-$n.json" -w '%{http_code}' -X PUT \
        -H "Authorization: Bearer $(cat "$work/candidate.token")" --data-binary "answers from boot $n" \
        "https://127.0.0.1:$port/v1/exams/image-test/candidates/c1/autosaves/$n") || true
    [ "$code" = 201 ] || { cat "$work/save-$n.json" >&2; echo "image-test: boot $n: the save answered $code, not 201" >&2; exit 1; }
    digest=$(sed -n 's/.*"blake3":"\([0-9a-f]*\)".*/\1/p' "$work/save-$n.json")
    deadline=$(( $(date +%s) + 60 ))
    until curl -sk --max-time 5 --pinnedpubkey "$cloud_pin" -H "Authorization: Bearer $(cat "$work/admin.token")" \
            "$cloud_url/v1/exams/image-test/candidates/c1/autosaves" 2>/dev/null \
        | python3 -c 'import json,sys; sys.exit(not any(a.get("seq")==int(sys.argv[1]) and a.get("blake3")==sys.argv[2] for a in json.load(sys.stdin)))' "$n" "$digest" 2>/dev/null; do
        [ "$(date +%s)" -lt "$deadline" ] || { tail -20 "$work/cloud.log" >&2; echo "image-test: boot $n: the save did not reach the cloud" >&2; exit 1; }
        sleep 2
    done
    "$hallrelay" cloud boxes --cloud "$cloud_url" --cloud-pin "$cloud_pin" --token-file "$work/admin.token" >"$work/boxes-$n.out"
    grep -qF "$box_pin" "$work/boxes-$n.out" && [ "$(grep -c '^  pin ' "$work/boxes-$n.out")" = 1 ] \
        || { cat "$work/boxes-$n.out" >&2; echo "image-test: boot $n: cloud boxes does not list this box alone" >&2; exit 1; }
    say "boot $n: a platform-signed save (201) reached the cloud; cloud boxes lists pin $box_pin"
}
boot() {
    local n=$1 log=$work/console-$1.log cmdline
    # The card's own command line (boot-setup adds the machine id to it), with the virt
    # machine's serial console.
    cmdline=$(mtype -i "$fat" ::cmdline.txt | tr -d '\r\n' | sed 's/console=[^ ]*//g')
    cmdline="$cmdline console=ttyAMA0"
    "$qemu" "${qemu_data[@]}" -M virt -cpu cortex-a72 -smp 2 -m 1024 -no-reboot \
        -kernel "$work/vmlinuz" -initrd "$work/initrd" -append "$cmdline" \
        -drive "file=$img,format=raw,if=none,id=card" -device virtio-blk-pci,drive=card \
        -netdev "user,id=net,restrict=on,hostfwd=tcp:127.0.0.1:$port-:8443,hostfwd=tcp:127.0.0.1:$ssh_port-:22,guestfwd=tcp:$guest_cloud-cmd:$work/to-cloud" \
        -device virtio-net-pci,netdev=net,romfile= \
        -monitor "unix:$work/monitor,server,nowait" -serial "file:$log" -display none \
        </dev/null >/dev/null 2>&1 &
    qemu_pid=$!
    say "boot $n: qemu pid $qemu_pid, console in $log"
    local deadline=$(( $(date +%s) + ${HALLRELAY_IMAGE_TEST_BOOT_SECS:-900} ))
    until curl -sk --max-time 5 "https://127.0.0.1:$port/v1/health" >"$work/health-$n.json" 2>/dev/null \
        && grep -q '"status":"ok"' "$work/health-$n.json"; do
        [ "$(date +%s)" -lt "$deadline" ] || { tail -50 "$log"; echo "image-test: boot $n: no /v1/health" >&2; exit 1; }
        kill -0 "$qemu_pid" 2>/dev/null || { tail -50 "$log"; echo "image-test: boot $n: qemu exited" >&2; exit 1; }
        sleep 5
    done
    say "boot $n: /v1/health answers: $(cat "$work/health-$n.json")"
    local until_mu=$(( $(date +%s) + 300 ))
    until grep -q "Reached target.*Multi-User System" "$log"; do
        [ "$(date +%s)" -lt "$until_mu" ] || { echo "image-test: boot $n: multi-user.target not reached" >&2; exit 1; }
        sleep 2
    done
    grep -q "hallrelay-setup: hostname hall-test" "$log" || { echo "image-test: hostname not from hallrelay.toml" >&2; exit 1; }
    grep -Eq "hallrelay-setup: root file system: ro[,$]" "$log" || { echo "image-test: root is not read-only" >&2; exit 1; }
    grep -q '"name":"hall-test"' "$work/health-$n.json" || { echo "image-test: the box's name is not from hallrelay.toml" >&2; exit 1; }
    say "boot $n: multi-user reached, hostname hall-test, root read-only"
    check_ssh "$n"
    check_cloud "$n"
    # A clean power-off through the virt machine's power button (gpio-keys, which logind
    # handles), pressed again every 15 s: a press that comes before logind watches the
    # button is lost (seen once on a first boot).
    local t
    for t in $(seq 0 119); do
        kill -0 "$qemu_pid" 2>/dev/null || break
        if [ $((t % 15)) = 0 ]; then
            python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"system_powerdown\n")' "$work/monitor" 2>/dev/null || true
        fi
        sleep 1
    done
    if kill -0 "$qemu_pid" 2>/dev/null; then
        # Then it is a power cut, which the box must survive too.
        say "boot $n: WARNING: no clean power-off in 120 s; pulling the plug"
        kill "$qemu_pid"
    fi
    wait "$qemu_pid" || true
    qemu_pid=
    grep -q "reboot: Power down" "$log" && say "boot $n: powered off cleanly"
    return 0
}

pin_of() { sed -n 's/.*"pin":"\([^"]*\)".*/\1/p' "$work/health-$1.json"; }
machine_id_of() { sed -n 's/.*hallrelay-setup: machine id \([0-9a-f]*\).*/\1/p' "$work/console-$1.log" | tail -1; }
boot 1
test_config "$(cat "$work/id.pub")"
boot 2
[ -n "$(pin_of 1)" ] && [ "$(pin_of 1)" = "$(pin_of 2)" ] || { echo "image-test: the pin changed: $(pin_of 1) -> $(pin_of 2)" >&2; exit 1; }
[ -n "$(machine_id_of 1)" ] && [ "$(machine_id_of 1)" = "$(machine_id_of 2)" ] || { echo "image-test: the machine id changed" >&2; exit 1; }
grep -q "running with $(machine_id_of 1)" "$work/console-2.log" || { echo "image-test: boot 2 did not run with the kept machine id" >&2; exit 1; }
say "ok: pin $(pin_of 1) and machine id $(machine_id_of 1) unchanged after a second boot"
