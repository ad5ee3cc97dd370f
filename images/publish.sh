#!/usr/bin/env bash
# Makes every image fnbuild needs in a cluster and publishes them to one registry, without a
# Docker daemon, then lists them with their digests:
#   REGISTRY/fnbuild/builder:VERSION          the generic build step image (fnbuild builder-image)
#   REGISTRY/fnbuild/runtime-python:3.13      Debian's python3 + the Kubeless-interface server
#   REGISTRY/fnbuild/runtime-nodejs:20        Debian's nodejs + the Kubeless-interface server
#   REGISTRY/fnbuild/builder:python3.13       the runtime's image + fnbuild: the templates' build
#   REGISTRY/fnbuild/builder:nodejs20         step, unprivileged (fnbuild builder-image --runtime)
# The runtime images' upstream is a Debian root filesystem made with debootstrap (as the
# tests make them), standing in for a language image from Docker Hub; with FROM_PYTHON /
# FROM_NODEJS set to an image reference (or oci:DIR), that image is the upstream instead.
#
#   usage: images/publish.sh REGISTRY [VERSION]     (as root; REGISTRY e.g. registry.local:5000)
# Registry credentials: $DOCKER_CONFIG or ~/.docker/config.json; plain-HTTP registries: set
# INSECURE_REGISTRY=HOST:PORT.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

registry=${1:?usage: images/publish.sh REGISTRY [VERSION]}
version=${2:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)}
flags=()
[[ -n ${INSECURE_REGISTRY:-} ]] && flags+=(--insecure-registry "$INSECURE_REGISTRY")

cargo build --release --quiet
fnbuild=$PWD/target/release/fnbuild

upstream() { # LANG ENV_VALUE
    if [[ -n $2 ]]; then
        echo "$2"
    else
        bash tests/setup.sh >&2
        echo "rootfs:${FNBUILD_TEST_CACHE:-/var/cache/fnbuild-test}/rootfs/$1"
    fi
}

declare -a rows
publish() { # NAME VERSION COMMAND...
    local name=$1 tag=$2
    shift 2
    local pinned
    pinned=$("$@" --image "$registry/fnbuild/$name:$tag" "${flags[@]}" | tail -n 1)
    rows+=("$(printf '%-16s %-8s %s' "$name" "$tag" "$pinned")")
}

publish builder "$version" "$fnbuild" builder-image
publish runtime-python 3.13 "$fnbuild" base --runtime python3.13 --from "$(upstream python "${FROM_PYTHON:-}")"
publish runtime-nodejs 20 "$fnbuild" base --runtime nodejs20 --from "$(upstream nodejs "${FROM_NODEJS:-}")"
publish builder python3.13 "$fnbuild" builder-image --runtime python3.13 --base-image "$registry/fnbuild/runtime-python:3.13"
publish builder nodejs20 "$fnbuild" builder-image --runtime nodejs20 --base-image "$registry/fnbuild/runtime-nodejs:20"

printf '\n%-16s %-8s %s\n' IMAGE VERSION DIGEST
printf '%s\n' "${rows[@]}"
