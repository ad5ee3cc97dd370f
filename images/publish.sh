#!/usr/bin/env bash
# Makes every image fnbuild needs in a cluster and publishes them to one registry, without a
# Docker daemon, then lists them with their digests:
#   REGISTRY/fnbuild/builder:VERSION          the generic build step image (fnbuild builder-image)
#   REGISTRY/fnbuild/runtime-python:3.13      per runtime version: the language's upstream + the
#   REGISTRY/fnbuild/runtime-nodejs:20        Kubeless-interface server (fnbuild base)
#   REGISTRY/fnbuild/builder:python3.13       per runtime version: its runtime image + fnbuild,
#   REGISTRY/fnbuild/builder:nodejs20         the templates' build step, unprivileged
#                                             (fnbuild builder-image --runtime)
# A runtime version's upstream must hold that version's interpreter. By default it is a Debian
# root filesystem made with debootstrap (as the tests make them), standing in for a language
# image from Docker Hub: trixie's for python3.13 and nodejs20, bookworm's for python3.11 and
# nodejs18, bullseye's for python3.9. FROM_<RUNTIME> (the runtime's name in capitals, '.' as
# '_': FROM_PYTHON3_10, FROM_NODEJS22) names another upstream, an image reference or oci:DIR
# (e.g. FROM_PYTHON3_10=python:3.10-slim); FROM_PYTHON and FROM_NODEJS stand for
# FROM_PYTHON3_13 and FROM_NODEJS20. A version of the catalog with no upstream (python3.10, python3.12, nodejs22
# unless given) is skipped, and said so.
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

# Runtime -> the test root filesystem (tests/setup.sh) holding its interpreter.
declare -A debian_rootfs=([python3.13]=python [nodejs20]=nodejs [python3.11]=python3.11 [nodejs18]=nodejs18
    [python3.9]=python3.9)
FROM_PYTHON3_13=${FROM_PYTHON3_13:-${FROM_PYTHON:-}}
FROM_NODEJS20=${FROM_NODEJS20:-${FROM_NODEJS:-}}

upstream() { # RUNTIME: prints its upstream, or nothing when it has none
    local variable=FROM_${1^^}
    variable=${variable//./_}
    if [[ -n ${!variable:-} ]]; then
        echo "${!variable}"
    elif [[ -n ${debian_rootfs[$1]:-} ]]; then
        bash tests/setup.sh >&2
        echo "rootfs:${FNBUILD_TEST_CACHE:-/var/cache/fnbuild-test}/rootfs/${debian_rootfs[$1]}"
    fi
}

declare -a rows skipped
publish() { # NAME TAG COMMAND...
    local name=$1 tag=$2
    shift 2
    local pinned
    pinned=$("$@" --image "$registry/fnbuild/$name:$tag" "${flags[@]}" | tail -n 1)
    rows+=("$(printf '%-16s %-11s %s' "$name" "$tag" "$pinned")")
}

publish builder "$version" "$fnbuild" builder-image
# Every runtime of the catalog: NAME LANGUAGE VERSION.
while read -r runtime language tag; do
    from=$(upstream "$runtime")
    if [[ -z $from ]]; then
        skipped+=("$runtime")
        continue
    fi
    publish "runtime-$language" "$tag" "$fnbuild" base --runtime "$runtime" --from "$from"
    publish builder "$runtime" "$fnbuild" builder-image --runtime "$runtime" \
        --base-image "$registry/fnbuild/runtime-$language:$tag"
done < <("$fnbuild" runtimes -o json | python3 -c '
import json, sys
for r in json.load(sys.stdin)["runtimes"]:
    print(r["name"], r["language"], r["version"])
')

printf '\n%-16s %-11s %s\n' IMAGE VERSION DIGEST
printf '%s\n' "${rows[@]}"
for runtime in "${skipped[@]}"; do
    variable=FROM_${runtime^^}
    echo "skipped $runtime: no upstream for it; set ${variable//./_} to an image holding its interpreter" >&2
done
