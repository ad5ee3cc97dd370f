#!/usr/bin/env bash
# Makes a Debian (--variant=minbase) root filesystem for one of the language runtimes
# used by the integration tests, without Docker: debootstrap, then (nodejs) a second apt step
# inside a chroot.
#
#   usage: make-rootfs.sh python|nodejs OUT_DIR [SUITE [ARCH]]
#
# SUITE is the Debian release (default $FNBUILD_DEBIAN_SUITE, else trixie): trixie has Python
# 3.13 and Node.js 20, bookworm Python 3.11 and Node.js 18, bullseye Python 3.9.
# ARCH is the Debian architecture (default this machine's). Another one (e.g. arm64 on amd64)
# runs its second stage under emulation: qemu-user-static registered in binfmt_misc with the
# F flag (tests/setup.sh does that).
#
# The rootfs is built in a temporary directory next to OUT_DIR and renamed into place at the
# end, with the marker file OUT_DIR/.fnbuild-rootfs-complete already inside it, so a
# half-made rootfs is never seen at OUT_DIR.
#
# Environment:
#   FNBUILD_DEBIAN_MIRROR  Debian mirror (default http://deb.debian.org/debian; keep it plain
#                          http: the rootfs has no CA for an intercepting proxy).
#   FNBUILD_DEBIAN_SUITE   suite when SUITE is not given (default trixie).
set -euo pipefail

usage() {
    echo "usage: $0 python|nodejs OUT_DIR [SUITE [ARCH]]" >&2
    exit 2
}
[[ $# -ge 2 && $# -le 4 ]] || usage
lang=$1
out=$2
mirror=${FNBUILD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=${3:-${FNBUILD_DEBIAN_SUITE:-trixie}}
arch=${4:-$(dpkg --print-architecture)}
marker=.fnbuild-rootfs-complete

case "$lang" in
    python) include=python3,python3-pip,ca-certificates ;;
    nodejs) include=nodejs,ca-certificates ;;
    *) usage ;;
esac

if [[ $EUID -ne 0 ]]; then
    echo "make-rootfs.sh: must run as root (debootstrap, chroot, mount)" >&2
    exit 1
fi

out=$(realpath -m "$out")
parent=$(dirname "$out")
mkdir -p "$parent"
tmp=$(mktemp -d "$out.tmp.XXXXXX")
# mktemp makes it 0700: apt's _apt user must be able to reach /var/cache/apt inside.
chmod 755 "$tmp"
mounts=()

# Unmounts everything this script mounted inside the rootfs (innermost first).
unmount_all() {
    local i
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        umount -l "${mounts[$i]}" 2>/dev/null || true
    done
    mounts=()
}

# True when something is still mounted at or under $1.
has_mounts_under() {
    local dir=$1 target
    while read -r _ target _; do
        # /proc/mounts escapes spaces as \040; our paths have none.
        if [[ $target == "$dir" || $target == "$dir"/* ]]; then
            return 0
        fi
    done </proc/mounts
    return 1
}

# Unmounts whatever is still mounted under $1 (e.g. left by an interrupted debootstrap).
unmount_under() {
    local dir=$1 target
    local -a found=()
    while read -r _ target _; do
        if [[ $target == "$dir"/* ]]; then
            found+=("$target")
        fi
    done </proc/mounts
    # Deepest first.
    printf '%s\n' "${found[@]}" | sort -r | while read -r target; do
        [[ -n $target ]] && umount -l "$target" 2>/dev/null || true
    done
}

cleanup() {
    local rc=$?
    unmount_all
    [[ -d $tmp ]] && unmount_under "$tmp"
    if [[ -d $tmp ]]; then
        if has_mounts_under "$tmp"; then
            echo "make-rootfs.sh: something is still mounted under $tmp; not removing it" >&2
        else
            rm -rf --one-file-system "$tmp"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start=$SECONDS
echo "make-rootfs.sh: building the $lang rootfs ($suite/$arch, minbase, +$include) in $tmp"

debootstrap --variant=minbase --arch="$arch" --include="$include" "$suite" "$tmp" "$mirror"

# Mounts $1 (bind) or a proc filesystem at $2 inside the rootfs and remembers it.
mount_in_rootfs() {
    local what=$1 where=$tmp$2
    mkdir -p "$where"
    if [[ $what == proc ]]; then
        mount -t proc proc "$where"
    else
        mount --bind "$what" "$where"
    fi
    mounts+=("$where")
}

if [[ $lang == nodejs ]]; then
    # npm's dependencies do not configure during debootstrap itself: install it in a second
    # step, inside the new system.
    mount_in_rootfs proc /proc
    mount_in_rootfs /dev /dev
    if [[ -d /dev/pts ]]; then
        mount_in_rootfs /dev/pts /dev/pts
    fi
    cp -L /etc/resolv.conf "$tmp/etc/resolv.conf"
    # No service may start inside the chroot.
    printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
    chmod 755 "$tmp/usr/sbin/policy-rc.d"

    in_chroot() {
        chroot "$tmp" /usr/bin/env -i \
            PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
    }
    in_chroot apt-get update
    in_chroot apt-get install -y --no-install-recommends npm
    in_chroot apt-get clean

    rm -f "$tmp/usr/sbin/policy-rc.d"
    unmount_all
    # resolv.conf is the container's business at run time: leave an empty one.
    : >"$tmp/etc/resolv.conf"
fi

if has_mounts_under "$tmp"; then
    echo "make-rootfs.sh: mounts left under $tmp" >&2
    exit 1
fi

# Apt caches and lists are dead weight in a runtime image.
rm -rf "$tmp"/var/cache/apt/archives/*.deb \
    "$tmp"/var/cache/apt/archives/partial/* \
    "$tmp"/var/cache/apt/*.bin \
    "$tmp"/var/lib/apt/lists/* \
    "$tmp"/var/cache/debconf/*-old \
    "$tmp"/var/log/apt/* \
    "$tmp"/var/log/dpkg.log \
    "$tmp"/var/log/bootstrap.log

date -u +%Y-%m-%dT%H:%M:%SZ >"$tmp/$marker"

# Replace whatever is at OUT_DIR (an older or partial rootfs) with the new one.
if [[ -e $out ]]; then
    if has_mounts_under "$out"; then
        echo "make-rootfs.sh: something is mounted under $out; not replacing it" >&2
        exit 1
    fi
    old=$(mktemp -d "$out.old.XXXXXX")
    mv "$out" "$old/"
    mv "$tmp" "$out"
    rm -rf --one-file-system "$old"
else
    mv "$tmp" "$out"
fi

echo "make-rootfs.sh: $lang rootfs ready at $out in $((SECONDS - start)) s ($(du -sh "$out" | cut -f1))"
