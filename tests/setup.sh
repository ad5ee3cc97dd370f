#!/usr/bin/env bash
# Prepares this machine for the tests; idempotent, used by CI (.ci/run, through tests/run.sh)
# and by developers. Needs root.
#
#   1. installs the Debian packages the tests use, when one of their commands or libraries is
#      missing (apt-get update runs once first, and only then), and moto from PyPI;
#   2. lets this machine run the other architecture's programs (amd64 <-> arm64): mounts
#      binfmt_misc when it is not, and registers qemu-user-static's emulator for it, with the
#      F flag, so that it also runs inside chroots and containers;
#   3. builds the runtime root filesystems (Debian minbase + python3/pip, + nodejs/npm) into
#      $FNBUILD_TEST_CACHE/rootfs/NAME when they are not complete yet, all at the same time:
#      python and nodejs (trixie: Python 3.13, Node.js 20, the default runtimes), python3.11
#      and nodejs18 (bookworm), python3.9 (bullseye): the older versions the runtime-version
#      tests build for (3.9 is what old Kubeless Python names are built as), and python-arm64
#      (trixie for the other architecture, python-amd64 on an arm64 machine; about 8 minutes
#      under emulation) for the multi-platform tests.
#
# Re-running it when everything is there takes well under a second.
#
#   usage: tests/setup.sh               do both steps
#          tests/setup.sh --packages    print the Debian packages the tests need, one a line
#
# Environment: FNBUILD_TEST_CACHE (default /var/cache/fnbuild-test).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${FNBUILD_TEST_CACHE:-/var/cache/fnbuild-test}
marker=.fnbuild-rootfs-complete

# command -> Debian package providing it.
declare -A package_of=(
    [docker-registry]=docker-registry
    [runc]=runc
    [skopeo]=skopeo
    [debootstrap]=debootstrap
    [htpasswd]=apache2-utils
    [openssl]=openssl
    [git]=git
    [curl]=curl
    [python3]=python3
    [node]=nodejs
    [pkg-config]=pkg-config
    [sshd]=openssh-server
    [buildah]=buildah
    # GNU time, for peak RSS (a path: `time` alone is also a shell keyword).
    [/usr/bin/time]=time
    # Running fnbuild as an ordinary user, and in a user namespace that refuses more of them.
    [setpriv]=util-linux
    [unshare]=util-linux
    # Running the other architecture's programs (multi-platform images).
    [qemu-aarch64-static]=qemu-user-static
)
# Stable order for printing and installing.
commands=(docker-registry runc skopeo debootstrap htpasswd openssl git curl python3 node pkg-config sshd buildah /usr/bin/time setpriv unshare qemu-aarch64-static)

# Libraries the Rust build links (git2's OpenSSL), found by their pkg-config name.
declare -A package_of_library=(
    [openssl]=libssl-dev
)

if [[ ${1:-} == --packages ]]; then
    for c in "${commands[@]}"; do
        echo "${package_of[$c]}"
    done
    for l in "${!package_of_library[@]}"; do
        echo "${package_of_library[$l]}"
    done
    exit 0
elif [[ $# -gt 0 ]]; then
    echo "usage: $0 [--packages]" >&2
    exit 2
fi

# --- 1. packages ------------------------------------------------------------------------
missing=()
for c in "${commands[@]}"; do
    if ! command -v "$c" >/dev/null 2>&1; then
        missing+=("${package_of[$c]}")
    fi
done
for l in "${!package_of_library[@]}"; do
    if ! pkg-config --exists "$l" 2>/dev/null; then
        missing+=("${package_of_library[$l]}")
    fi
done
# debootstrap needs the Debian archive keys to check what it downloads.
if [[ ! -e /usr/share/keyrings/debian-archive-keyring.gpg ]]; then
    missing+=(debian-archive-keyring)
fi
if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ $EUID -ne 0 ]]; then
        echo "setup.sh: missing packages (${missing[*]}); run as root to install them" >&2
        exit 1
    fi
    echo "setup.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# From PyPI: the S3-compatible server the source tests run against (moto), what the CRD
# schema checks use (jsonschema, PyYAML), the SPDX project's validator (spdx-tools), and the
# CloudEvents SDK the event tests send and parse events with (its 2.x `cloudevents.core` API).
if ! command -v moto_server >/dev/null 2>&1 || ! command -v pyspdxtools >/dev/null 2>&1 \
    || ! python3 -c 'import jsonschema, yaml, cloudevents.core.bindings.http' 2>/dev/null; then
    echo "setup.sh: installing moto[server], jsonschema, PyYAML, spdx-tools and cloudevents from PyPI"
    python3 -m pip install --quiet 'moto[server]' jsonschema pyyaml spdx-tools 'cloudevents==2.2.0'
fi

# --- 2. the other architecture, emulated ------------------------------------------------
case "$(dpkg --print-architecture)" in
    amd64) foreign=arm64 emulated=aarch64 ;;
    arm64) foreign=amd64 emulated=x86_64 ;;
    *) echo "setup.sh: the multi-platform tests need an amd64 or arm64 machine" >&2; exit 1 ;;
esac
binfmt=/proc/sys/fs/binfmt_misc
if [[ ! -e $binfmt/qemu-$emulated ]]; then
    if [[ $EUID -ne 0 ]]; then
        echo "setup.sh: registering the $foreign emulator (binfmt_misc) needs root" >&2
        exit 1
    fi
    if [[ ! -e $binfmt/register ]]; then
        mount -t binfmt_misc binfmt_misc "$binfmt"
    fi
    # qemu-user-static's own registration line: magic, mask, interpreter, flags (F: the
    # emulator is opened now, so chroots and containers need no copy of it).
    cat "/usr/lib/binfmt.d/qemu-$emulated.conf" >"$binfmt/register"
    echo "setup.sh: registered qemu-$emulated in binfmt_misc"
fi

# --- 3. runtime root filesystems -------------------------------------------------------
# rootfs name -> "language Debian-suite [Debian-architecture]".
declare -A rootfs_of=(
    [python]="python trixie"
    [nodejs]="nodejs trixie"
    [python3.11]="python bookworm"
    [nodejs18]="nodejs bookworm"
    [python3.9]="python bullseye"
    [python-$foreign]="python trixie $foreign"
)
# Stable order for building and reporting; the emulated one first, as it takes longest.
names=(python-$foreign python nodejs python3.11 nodejs18 python3.9)

incomplete() { # prints the rootfs names without a completion marker
    local name
    for name in "${names[@]}"; do
        [[ -e $cache/rootfs/$name/$marker ]] || echo "$name"
    done
}
mapfile -t pending < <(incomplete)
if [[ ${#pending[@]} -eq 0 ]]; then
    exit 0
fi
if [[ $EUID -ne 0 ]]; then
    echo "setup.sh: building the test rootfs needs root (debootstrap, chroot)" >&2
    exit 1
fi

mkdir -p "$cache/rootfs" "$cache/logs"
# One builder at a time (two test runs started together must not build into each other).
exec 9>"$cache/.setup.lock"
flock 9
# Another setup.sh may have built them while we waited for the lock.
mapfile -t todo < <(incomplete)
[[ ${#todo[@]} -gt 0 ]] || exit 0

start=$SECONDS
declare -A pid_of log_of
for name in "${todo[@]}"; do
    read -r lang suite arch <<<"${rootfs_of[$name]}"
    log_of[$name]=$cache/logs/rootfs-$name.log
    echo "setup.sh: building the $name rootfs ($lang, Debian $suite${arch:+ for $arch}; log: ${log_of[$name]})"
    bash "$here/support/make-rootfs.sh" "$lang" "$cache/rootfs/$name" "$suite" $arch >"${log_of[$name]}" 2>&1 9>&- &
    pid_of[$name]=$!
done

failed=()
for name in "${todo[@]}"; do
    if wait "${pid_of[$name]}"; then
        tail -n 1 "${log_of[$name]}"
    else
        failed+=("$name")
    fi
done
for name in "${failed[@]}"; do
    echo "setup.sh: building the $name rootfs FAILED; its log (${log_of[$name]}):" >&2
    sed 's/^/    /' "${log_of[$name]}" >&2
done
if [[ ${#failed[@]} -gt 0 ]]; then
    exit 1
fi
echo "setup.sh: rootfs ready in $((SECONDS - start)) s"
