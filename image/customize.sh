#!/bin/sh
# mmdebstrap customize hook for the hallrelay SD image: $1 is the arm64 root file system,
# $2 the repository. Commands inside the tree run under qemu-user (binfmt).
set -eu
rootfs=$1
repo=$2

# The initramfs once: build.sh turned off its regeneration after each firmware package
# (each run takes minutes under qemu-user); the kernel's own postinst made it, and none of
# the later packages is needed to mount the root. raspi-firmware's hook copies it to BOOT.
echo "update_initramfs=yes" >"$rootfs/etc/initramfs-tools/update-initramfs.conf"
if ! ls "$rootfs"/boot/initrd.img-* >/dev/null 2>&1; then
    chroot "$rootfs" update-initramfs -c -k all
fi
ls -l "$rootfs/boot" "$rootfs/boot/firmware/"

# The service's user, and an admin account for SSH that has no password (keys only, and
# only when hallrelay.toml lists some; boot-setup turns SSH on).
chroot "$rootfs" systemd-sysusers
chroot "$rootfs" useradd --create-home --shell /bin/bash --user-group admin
chroot "$rootfs" passwd --lock admin >/dev/null
chroot "$rootfs" passwd --lock root >/dev/null

systemctl --root="$rootfs" enable hallrelay.service hallrelay-setup.service \
    systemd-networkd.service systemd-resolved.service systemd-timesyncd.service
systemctl --root="$rootfs" disable ssh.service ssh.socket 2>/dev/null || true
# No SSH host key in the image: boot-setup makes one on DATA, only when SSH is enabled.
rm -f "$rootfs"/etc/ssh/ssh_host_*

# First boot: an empty machine-id (systemd makes a transient one on the read-only root until
# boot-setup's, kept on DATA, comes in through the kernel command line).
: >"$rootfs/etc/machine-id"
rm -f "$rootfs/var/lib/dbus/machine-id"
echo hallrelay >"$rootfs/etc/hostname"
chmod 0644 "$rootfs/etc/hostname"   # mmdebstrap copied the build machine's, with its mode

# The venue edits hallrelay.toml on the BOOT partition; the service reads it through /etc.
install -m 0644 "$repo/image/hallrelay.toml" "$rootfs/boot/firmware/hallrelay.toml"
mkdir -p "$rootfs/etc/hallrelay"
ln -sf /boot/firmware/hallrelay.toml "$rootfs/etc/hallrelay/hallrelay.toml"
# Read-only root: the kernel mounts it ro from the start (fstab keeps it so).
echo "console=tty0 console=ttyS1,115200 root=PARTUUID=48414c4c-02 ro rootfstype=ext4 fsck.repair=yes net.ifnames=0 rootwait" \
    >"$rootfs/boot/firmware/cmdline.txt"

# DATA's contents, mounted at /data, and the mount points.
mkdir -p "$rootfs/data/hallrelay" "$rootfs/data/system" "$rootfs/var/lib/hallrelay"
chmod 0700 "$rootfs/data/system"
# systemd-timesyncd's state (the last synchronised time, which a Pi without a real-time clock
# starts from) on DATA too: on the read-only root its StateDirectory cannot be handed to its
# user and the service fails to start.
mkdir -p "$rootfs/var/lib/systemd/timesync" "$rootfs/data/timesync"
chroot "$rootfs" chown systemd-timesync:systemd-timesync /data/timesync
# The other state directories of systemd's own services, made now because the read-only root
# cannot take them at boot (without linger/, systemd-logind fails to start, and with it the
# power button). They belong to root, as those services run as root.
mkdir -p "$rootfs/var/lib/systemd/linger" "$rootfs/var/lib/systemd/backlight" \
    "$rootfs/var/lib/systemd/rfkill" "$rootfs/var/lib/systemd/pstore"
# Nothing updates the read-only root from the box itself: no apt timers, no dpkg backups.
systemctl --root="$rootfs" disable apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer

# Nothing that differs from build to build, or belongs to one box.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/ldconfig/aux-cache
find "$rootfs/var/log" -type f -delete
