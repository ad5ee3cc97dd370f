#!/usr/bin/env bash
# Runs a command inside one of the test root filesystems (tests/setup.sh), with this
# repository's runtimes/ directory mounted read-only at /tmp/src, the working directory: how
# the runtime servers' own tests run on the interpreters of other Debian releases. Mounts are
# made in a mount namespace of its own, so nothing stays mounted in the rootfs. Needs root.
#
#   usage: tests/support/in-rootfs.sh ROOTFS_DIR COMMAND...
#   e.g.   tests/support/in-rootfs.sh "$FNBUILD_TEST_CACHE/rootfs/nodejs18" \
#              node --test nodejs/test/kubeless.test.js
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 ROOTFS_DIR COMMAND..." >&2
    exit 2
fi
root=$(realpath "$1")
shift
runtimes=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../runtimes" && pwd)

exec unshare --mount --propagation private bash -euc '
    root=$1 runtimes=$2
    shift 2
    mount -t tmpfs tmpfs "$root/tmp"
    mkdir "$root/tmp/src"
    mount --bind "$runtimes" "$root/tmp/src"
    mount -o remount,bind,ro "$root/tmp/src"
    mount -t proc proc "$root/proc"
    mount --bind /dev "$root/dev"
    exec chroot "$root" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp \
        LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 sh -c "cd /tmp/src && exec \"\$@\"" sh "$@"
' bash "$root" "$runtimes" "$@"
