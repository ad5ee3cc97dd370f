#!/usr/bin/env bash
# fnbuild end to end on this machine, with the embedded defaults and no Docker daemon:
#   1. prepares the machine once (Debian packages; Debian root filesystems with python3 and
#      nodejs, standing in for the upstream language images of Docker Hub);
#   2. starts a local registry on localhost:5000 unless one answers there;
#   3. makes the runtime base images into it once (`fnbuild base`), under the names the
#      embedded runtime catalog uses ({base_registry}/fnbuild/runtime-python:3.13, ...);
#   4. builds examples/python/hellowithdata.py into localhost:5000/functions/hello
#      (`fnbuild build`), runs it under runc (`fnbuild run`) and calls it.
# Needs root (debootstrap, chroot, runc). Re-running it skips what is already there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

registry=localhost:5000
port=${PORT:-8080}
state=${FNBUILD_QUICKSTART_DIR:-/var/tmp/fnbuild-quickstart}
export FNBUILD_BASE_REGISTRY=$registry

step() { printf '\n==> %s\n' "$*"; }

step "preparing the machine (packages, Debian root filesystems; minutes the first time)"
bash tests/setup.sh
rootfs=${FNBUILD_TEST_CACHE:-/var/cache/fnbuild-test}/rootfs

step "building fnbuild"
cargo build --release --quiet
fnbuild=$PWD/target/release/fnbuild

if curl -fsS "http://$registry/v2/" >/dev/null 2>&1; then
    step "using the registry already answering on $registry"
else
    step "starting a registry on $registry (data in $state/registry)"
    mkdir -p "$state/registry"
    cat >"$state/registry.yml" <<YAML
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $state/registry}, delete: {enabled: true}}
http: {addr: "$registry"}
YAML
    nohup docker-registry serve "$state/registry.yml" >"$state/registry.log" 2>&1 &
    echo "registry pid $! (stop it with: kill $!)"
    for _ in $(seq 50); do curl -fsS "http://$registry/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
fi

for runtime in python3.13:python:runtime-python:3.13 nodejs20:nodejs:runtime-nodejs:20; do
    IFS=: read -r name lang repo tag <<<"$runtime"
    if ! curl -fsS -o /dev/null "http://$registry/v2/fnbuild/$repo/manifests/$tag" \
        -H 'Accept: application/vnd.oci.image.manifest.v1+json'; then
        step "making the $name runtime base image from the $lang root filesystem"
        "$fnbuild" base --runtime "$name" --from "rootfs:$rootfs/$lang" --image "$registry/fnbuild/$repo:$tag"
    fi
done

step "building examples/python/hellowithdata.py"
time "$fnbuild" build --from-file examples/python/hellowithdata.py --runtime python3.13 \
    --handler hellowithdata.handler --image "$registry/functions/hello:latest" \
    --image-ref-file "$state/image-ref"
image=$(cat "$state/image-ref")

step "running $image on localhost:$port under runc"
"$fnbuild" run "$image" --port "$port" >"$state/function.log" 2>&1 &
run_pid=$!
trap 'kill -TERM $run_pid 2>/dev/null; wait $run_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -fsS "http://localhost:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

step "calling it as 'kubeless function call hello --data ...' would"
curl -sS "http://localhost:$port/" -H 'content-type: application/json' \
    -H 'event-namespace: cli.kubeless.io' -d '{"hello": "world"}'
echo
step "the function's log"
sleep 0.2
cat "$state/function.log"
