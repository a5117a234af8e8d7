#!/usr/bin/env bash
# Prints the path of a qemu-system-aarch64 for image/test.sh: $HALLRELAY_QEMU, the machine's
# own, or else Debian's qemu-system-arm unpacked (not installed) into target/qemu-system.
#
# Why unpacked: where qemu-utils comes from backports (as on the machines this project is
# built on), `apt-get install qemu-system-arm` takes the suite's older qemu-system-common,
# which conflicts with it, and apt removes qemu-utils (qemu-img). Unpacking with dpkg-deb -x
# leaves the machine's packages alone; the libraries qemu-system-arm links are ordinary
# Debian packages and are installed (nothing is removed for them). Needs root for those
# and network access to the machine's apt sources; the unpacked tree is kept for next time.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${HALLRELAY_QEMU:-}" ]; then echo "$HALLRELAY_QEMU"; exit 0; fi
if command -v qemu-system-aarch64 >/dev/null; then command -v qemu-system-aarch64; exit 0; fi
dir=$PWD/target/qemu-system
qemu=$dir/root/usr/bin/qemu-system-aarch64
if [ ! -x "$qemu" ]; then
    echo "image-test: no qemu-system-aarch64: unpacking Debian's qemu-system-arm into $dir" >&2
    rm -rf "$dir"
    mkdir -p "$dir/debs" "$dir/root"
    pkgs=(qemu-system-arm qemu-system-common qemu-system-data)
    # apt-get download writes into the current directory.
    if ! (cd "$dir/debs" && apt-get download -q "${pkgs[@]}" >&2); then
        apt-get update -qq >&2
        (cd "$dir/debs" && apt-get download -q "${pkgs[@]}" >&2)
    fi
    for deb in "$dir"/debs/*.deb; do dpkg-deb -x "$deb" "$dir/root"; done
    rm -rf "$dir/debs"
fi
# The shared libraries it links that the machine lacks, from the machine's own suite.
libs=()
for lib in $(apt-cache depends qemu-system-arm | awk '$1 == "Depends:" && $2 !~ /^(<|qemu-)/ {print $2}'); do
    dpkg -s "$lib" >/dev/null 2>&1 || libs+=("$lib")
done
if [ ${#libs[@]} -gt 0 ]; then
    echo "image-test: installing qemu-system-arm's libraries: ${libs[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --no-remove "${libs[@]}" >&2
fi
if ldd "$qemu" | grep -q 'not found'; then
    ldd "$qemu" | grep 'not found' >&2
    echo "image-test: $qemu is missing libraries" >&2
    exit 1
fi
echo "$qemu"
