#!/usr/bin/env bash
# `just image`: builds target/image/hallrelay-VERSION-arm64.img.xz, a flashable SD image for
# the Raspberry Pi 3 and 4, from Debian's archive only, through the apt sources configured on
# this machine (image/sources.py; no mirror host is written anywhere here).
#
#   1. cross-compile hallrelay for aarch64 (rustup target + Debian's gcc-aarch64-linux-gnu);
#   2. an arm64 root file system with mmdebstrap: linux-image-arm64, raspi-firmware and
#      firmware-brcm80211 (non-free-firmware), systemd; arm64 maintainer scripts run under
#      qemu-user through binfmt_misc, registered for the build only if it was not already;
#   3. the image with genimage, no loop devices and no mounts (mke2fs -d, mcopy): MBR with
#      BOOT (FAT: firmware, kernel, config.txt, cmdline.txt, hallrelay.toml), ROOT (ext4,
#      mounted read-only) and DATA (ext4, grown to fill the card at first boot);
#   4. xz.
# Reproducibility: SOURCE_DATE_EPOCH (default: the last commit's time) clamps file times and
# file system timestamps; UUIDs, volume ids and the disk signature are fixed.
# Needs root (mmdebstrap's root mode). apt-get install mmdebstrap genimage qemu-user-static
# binfmt-support gcc-aarch64-linux-gnu libc6-dev-arm64-cross mtools dosfstools arch-test.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
version=$(cargo pkgid | sed 's/.*[#@]//')
suite=${HALLRELAY_IMAGE_SUITE:-bookworm}
out=$root/target/image
work=$out/work
image=$out/hallrelay-$version-arm64.img
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
# Fixed identities (see image/overlay/etc/fstab and cmdline.txt below).
disk_signature=0x48414c4c
root_uuid=5a2c0b39-7a1e-4d6c-9f4e-0b7e1d2a3c01
data_uuid=5a2c0b39-7a1e-4d6c-9f4e-0b7e1d2a3c03
boot_volume_id=48414c42   # shows as UUID=4841-4C42 (upper case, as blkid and udev write it)
t0=$(date +%s)
step() { echo "image: [$(( $(date +%s) - t0 )) s] $*"; }

# One collation for every sort and glob (genimage's `mcopy … dir/*` puts BOOT's files in the
# order of the glob).
export LC_ALL=C
for tool in mmdebstrap genimage mcopy mkfs.vfat mke2fs debugfs e2fsck sfdisk xz aarch64-linux-gnu-gcc \
            qemu-aarch64-static update-binfmts python3; do
    command -v "$tool" >/dev/null || { echo "image: $tool is missing (see the comment at the top of $0)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "image: run as root (mmdebstrap root mode)" >&2; exit 1; }

mounted_binfmt=
registered_binfmt=
built=
cleanup() {
    [ -n "$registered_binfmt" ] && update-binfmts --disable qemu-aarch64 >/dev/null 2>&1 || true
    [ -n "$mounted_binfmt" ] && umount /proc/sys/fs/binfmt_misc || true
    # A failed build keeps its work dir (target/image/work) to look into, and so does any
    # build with HALLRELAY_IMAGE_KEEP_WORK=1; the next full build starts by removing it.
    if [ -n "$built" ] && [ -z "$keep_work" ]; then rm -rf "$work"; else echo "image: kept $work" >&2; fi
}
trap cleanup EXIT
# HALLRELAY_IMAGE_REUSE_ROOTFS=1: skip steps 1 and 2 and make the partitions and the image
# again from the root file system a kept work dir holds (minutes instead of most of an hour,
# for iterating on genimage.cfg or on the files under image/overlay; customize.sh and the
# packages are not applied again).
keep_work=${HALLRELAY_IMAGE_KEEP_WORK:-}
reuse=${HALLRELAY_IMAGE_REUSE_ROOTFS:-}
if [ -n "$reuse" ]; then
    [ -d "$work/rootfs" ] || { echo "image: no $work/rootfs to reuse" >&2; exit 1; }
    keep_work=1
    rm -rf "$work/genimage-tmp"
else
    rm -rf "$work"
fi
mkdir -p "$work"

rootfs=$work/rootfs
if [ -z "$reuse" ]; then
step "1/4 cross-compiling hallrelay $version for aarch64"
rustup target add aarch64-unknown-linux-gnu >/dev/null
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="--remap-path-prefix=$root=/build --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo"
cargo build --release --locked --target aarch64-unknown-linux-gnu
bin=$root/target/aarch64-unknown-linux-gnu/release/hallrelay

step "2/4 arm64 root file system ($suite) with mmdebstrap"
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    if ! mountpoint -q /proc/sys/fs/binfmt_misc; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
        mounted_binfmt=1
    fi
    update-binfmts --enable qemu-aarch64
    registered_binfmt=1
fi
python3 image/sources.py >"$work/debian.sources"
packages=systemd-sysv,udev,kmod,iproute2,netbase,ca-certificates,systemd-resolved,systemd-timesyncd
packages+=,linux-image-arm64,raspi-firmware,firmware-brcm80211,initramfs-tools
packages+=,openssh-server,e2fsprogs,fdisk,util-linux,dosfstools
mmdebstrap --architectures=arm64 --variant=minbase --mode=root \
    --include="$packages" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt=force-confold \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --essential-hook='mkdir -p "$1/etc/default" && printf "ROOTPART=PARTUUID=48414c4c-02\nCONSOLES=\"ttyS1,115200 tty0\"\n" >"$1/etc/default/raspi-firmware"' \
    --essential-hook='mkdir -p "$1/etc/initramfs-tools" && echo update_initramfs=no >"$1/etc/initramfs-tools/update-initramfs.conf"' \
    --customize-hook="sh '$root/image/overlay.sh' \"\$1\"" \
    --customize-hook="install -m 0755 '$bin' \"\$1/usr/bin/hallrelay\"" \
    --customize-hook="install -m 0644 '$root/systemd/hallrelay.service' \"\$1/etc/systemd/system/hallrelay.service\"" \
    --customize-hook="install -m 0644 '$root/packaging/hallrelay.sysusers' \"\$1/usr/lib/sysusers.d/hallrelay.conf\"" \
    --customize-hook="sh '$root/image/customize.sh' \"\$1\" '$root'" \
    "$suite" "$rootfs" "$work/debian.sources"
else
    step "1-2/4 reusing $rootfs (HALLRELAY_IMAGE_REUSE_ROOTFS)"
    sh image/overlay.sh "$rootfs"
fi

step "3/4 partitions with genimage"
# Every time stamp in the tree at SOURCE_DATE_EPOCH at most, for FAT and ext4 alike.
find "$rootfs" -newermt "@$SOURCE_DATE_EPOCH" -print0 | xargs -0r touch -h -d "@$SOURCE_DATE_EPOCH"
sed -e "s/@ROOT_UUID@/$root_uuid/g; s/@DATA_UUID@/$data_uuid/g; s/@BOOT_VOLUME_ID@/$boot_volume_id/g" \
    -e "s/@DISK_SIGNATURE@/$disk_signature/g; s/@EPOCH@/$SOURCE_DATE_EPOCH/g" \
    -e "s|@IMAGE@|$(basename "$image")|g" image/genimage.cfg >"$work/genimage.cfg"
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH E2FSCK_TIME=$SOURCE_DATE_EPOCH genimage --config "$work/genimage.cfg" \
    --rootpath "$rootfs" --tmppath "$work/genimage-tmp" --inputpath "$work" --outputpath "$out"
# mke2fs -d (1.47.0) copies each file's ctime and atime from the build tree, that is the time
# of this build, whatever SOURCE_DATE_EPOCH says: set both to SOURCE_DATE_EPOCH on every
# inode of ROOT (partition 2) and DATA (partition 3), in place in the image, with debugfs.
ext4_times() {
    local number=$1 tree=$2 start
    start=$(sfdisk -d "$image" | awk -v p="$(basename "$image")$number" '$1 ~ p"$" {sub(/,.*/, ""); sub(/.*start= */, ""); print}')
    {
        echo "set_current_time @$SOURCE_DATE_EPOCH"
        (cd "$tree" && find . -printf '/%P\n') | LC_ALL=C sort |
            awk -v t="$SOURCE_DATE_EPOCH" '{ printf "sif \"%s\" ctime @%s\nsif \"%s\" atime @%s\n", $0, t, $0, t }'
    } >"$work/ext4-times-$number"
    E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH debugfs -w -f "$work/ext4-times-$number" "$image?offset=$((start * 512))" >"$work/ext4-times-$number.log" 2>&1
    e2fsck -fn "$image?offset=$((start * 512))" >/dev/null
}
ext4_times 2 "$work/genimage-tmp/root"
ext4_times 3 "$work/genimage-tmp/mp-data"

rm -f "$out"/boot.vfat "$out"/root.ext4 "$out"/data.ext4
rm -f "$image.xz"
# HALLRELAY_IMAGE_XZ=0 stops at the .img, which image/test.sh takes as well (xz takes ~10 min).
if [ "${HALLRELAY_IMAGE_XZ:-1}" = 0 ]; then
    built=1
    step "done: $image ($(stat -c %s "$image") bytes), sha256 $(sha256sum "$image" | cut -d' ' -f1); not compressed"
    exit 0
fi
step "4/4 compressing"
xz -6 -T2 --keep --force "$image"
touch -d "@$SOURCE_DATE_EPOCH" "$image.xz"
built=1
step "done: $image.xz ($(stat -c %s "$image.xz") bytes), sha256 $(sha256sum "$image.xz" | cut -d' ' -f1); $image: sha256 $(sha256sum "$image" | cut -d' ' -f1)"
