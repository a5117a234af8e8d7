#!/bin/sh
# Copies image/overlay into the root file system $1 (mmdebstrap customize hook, and build.sh
# when it reuses a root file system). Not `cp -a`: the checkout's owners, group-write bits
# and times would come along, and a checkout's times are older than SOURCE_DATE_EPOCH when
# it was made before the last commit, so build.sh's clamp would leave them as they are and
# two builds of one commit would differ. Copied files get the time of the build, which the
# clamp then sets to SOURCE_DATE_EPOCH; they belong to root and nobody else may write them.
set -eu
overlay=$(dirname "$0")/overlay
cp -dR --preserve=mode --no-preserve=ownership,timestamps "$overlay/." "$1/"
(cd "$overlay" && find . -mindepth 1 -printf '%P\n') | while read -r path; do
    chown -h root:root "$1/$path"
    [ -L "$1/$path" ] || chmod go-w "$1/$path"
    touch -h -d "@${SOURCE_DATE_EPOCH:?}" "$1/$path"
done
