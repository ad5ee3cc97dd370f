#!/usr/bin/env bash
# THE test command of fnbuild:  bash tests/run.sh
#
# Prepares the machine (tests/setup.sh: Debian packages, runtime root filesystems), then runs
# the suites, all of them even when one fails, and fails if any failed:
#   1. cargo test --all-targets --no-fail-fast         (the Rust unit and integration tests)
#   2. python3 -m unittest discover -s runtimes/python (the Python runtime server)
#   3. node --test runtimes/nodejs/test/*.test.js      (the Node.js runtime server)
#   4. the same two on the older interpreters the tests have, Debian bookworm's Python 3.11
#      and Node.js 18 and bullseye's Python 3.9 (the oldest version the catalog has), inside
#      their root filesystems (tests/support/in-rootfs.sh; ~65 s)
# Extra arguments are passed to cargo test (e.g. `bash tests/run.sh registry`).
#
# Environment: FNBUILD_TEST_CACHE (default /var/cache/fnbuild-test): where the integration
# tests find the runtime root filesystems.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
export FNBUILD_TEST_CACHE=${FNBUILD_TEST_CACHE:-/var/cache/fnbuild-test}

if ! bash tests/setup.sh; then
    echo "run.sh: tests/setup.sh failed; no test was run" >&2
    exit 1
fi

names=()
results=()
# Runs one suite: run_suite NAME COMMAND...
run_suite() {
    local name=$1
    shift
    echo
    echo "==== run.sh: $name: $*"
    "$@"
    local rc=$?
    names+=("$name")
    if [[ $rc -eq 0 ]]; then
        results+=("ok")
    else
        results+=("FAILED (exit $rc)")
    fi
}

run_suite rust cargo test --all-targets --no-fail-fast "$@"
run_suite python python3 -m unittest discover -s runtimes/python -v
run_suite nodejs node --test runtimes/nodejs/test/*.test.js
run_suite python3.11 bash tests/support/in-rootfs.sh "$FNBUILD_TEST_CACHE/rootfs/python3.11" \
    python3 -m unittest discover -s python -v
run_suite python3.9 bash tests/support/in-rootfs.sh "$FNBUILD_TEST_CACHE/rootfs/python3.9" \
    python3 -m unittest discover -s python -v
run_suite nodejs18 bash tests/support/in-rootfs.sh "$FNBUILD_TEST_CACHE/rootfs/nodejs18" \
    sh -c 'node --test nodejs/test/*.test.js'

echo
echo "==== run.sh: summary"
status=0
for i in "${!names[@]}"; do
    printf '  %-10s %s\n' "${names[$i]}" "${results[$i]}"
    [[ ${results[$i]} == ok ]] || status=1
done
exit "$status"
