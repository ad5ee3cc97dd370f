#!/usr/bin/env python3
"""fnbuild's benchmark: one command, run as root on the machine being measured:

    python3 bench/run.py [--runs N] [--wrk-duration S] [--soak-seconds S] [--quick] [--json FILE]

It installs what it lacks (buildah, wrk, skopeo, docker-registry, runc: Debian packages),
builds fnbuild (`cargo build --release`), starts its own registries on free 127.0.0.1 ports,
makes the runtime base images with `fnbuild base` from the test root filesystems (running
tests/setup.sh when they are missing), then measures, in this one run:

  1. function builds pushed to the registry, fnbuild against `buildah bud` + `buildah push`
     from an equivalent Dockerfile onto the same base image: first build, code-only rebuild,
     deps-changed rebuild, for a Python (six) and a Node.js (left-pad) hello function; and
     two new build pods, each against buildah's first build: one with an empty cache
     directory whose deps layer is in --cache-repo, and a first build (empty caches) in the
     runtime's builder image (`fnbuild builder-image --runtime`, pulled and unpacked once
     beforehand, as a node pulls a pod's image), run with runc as a restricted pod's step;
  2. push throughput of an image with a large random layer: `fnbuild push` against
     `skopeo copy`, each into a fresh registry;
  3. peak memory of every command (max RSS of its largest process, from wait4 through GNU
     time), and of fnbuild building a function with a 1 GB layer;
  4. requests/s and p50 latency (wrk) of the runtime servers (runtimes/python/kubeless.py,
     runtimes/nodejs/kubeless.js) against bare asyncio / node:http servers, and with
     --runtimes-before REV against the same servers as they were at git revision REV; and
     beside a plain JSON POST, the same data as a CloudEvent in binary and structured mode;
  5. a soak: each runtime server for --soak-seconds under mixed traffic (bench/soak.py: good
     calls, hung calls, malformed requests, hundreds of slow clients, a /healthz probe), with
     the answers by kind, the probe's worst latency and the server's RSS over time;
  6. multi-platform builds: a Python function with a native dependency (MarkupSafe) on a
     linux/amd64 + linux/arm64 base image (made with `fnbuild base` from the two test root
     filesystems; arm64 runs under qemu-user), built for both platforms against a build for
     one, first build and code-only rebuild.

It prints a table of ratios against the baselines measured in the same run (and writes JSON
with --json). Everything it starts is stopped and its temporary files removed at the end.
Python standard library only.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
ROOTFS_MARKER = '.fnbuild-rootfs-complete'
GNU_TIME = '/usr/bin/time'

# The requests of the event-throughput rows (wrk Lua scripts): a plain JSON POST, and the same
# JSON as a CloudEvent in binary mode (ce-* headers) and in structured mode (one JSON envelope),
# with the attributes and extensions a Knative Broker's Trigger delivers.
EVENT_DATA = '{"order": 7, "items": ["a", "b"], "total": 12.5}'
EVENT_HEADERS = {'ce-specversion': '1.0', 'ce-id': '5b0a3c3e-6a57-4b43-9d3c-1d5b0e1f2a3b',
                 'ce-type': 'com.example.order.created', 'ce-source': '/orders/eu',
                 'ce-time': '2026-11-30T12:00:00Z', 'ce-subject': 'order/7',
                 'ce-knativearrivaltime': '2026-11-30T12:00:00.1Z',
                 'traceparent': '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'}
EVENT_REQUESTS = {
    'post-json': ({'Content-Type': 'application/json'}, EVENT_DATA),
    'ce-binary': ({'Content-Type': 'application/json', **EVENT_HEADERS}, EVENT_DATA),
    'ce-structured': ({'Content-Type': 'application/cloudevents+json'}, json.dumps({
        **{k[3:]: v for k, v in EVENT_HEADERS.items() if k.startswith('ce-')},
        'datacontenttype': 'application/json', 'data': json.loads(EVENT_DATA)})),
}

# Figures from shared/reference/peers.md: measured on another day, NOT in this run.
KYMA_REFERENCE = {
    'python': {'name': 'Kyma python312 (Bottle on Cheroot)', 'rps': 760.0, 'p50_ms': 0.9,
               'bare_rps': 73000.0},
    'nodejs': {'name': 'Kyma nodejs20 (Express)', 'rps': 7100.0, 'p50_ms': 0.11,
               'bare_rps': 49000.0},
}
# The project's targets (the issue): multiples of the Kyma runtimes' throughput.
RUNTIME_TARGETS = {'python': 5.0, 'nodejs': 2.0}
REBUILD_TARGET_RATIO = 10.0
REBUILD_TARGET_SECONDS = 1.0

MANIFEST_ACCEPT = ', '.join([
    'application/vnd.oci.image.manifest.v1+json',
    'application/vnd.oci.image.index.v1+json',
    'application/vnd.docker.distribution.manifest.v2+json',
    'application/vnd.docker.distribution.manifest.list.v2+json',
])

# The functions built by the build benchmark, per language: (files of version 1, the handler
# change of the code-only rebuild, the deps change of the deps-changed rebuild).
PY_HANDLER = 'import six\n\n\ndef handler(event, context):\n    return "hello " + six.text_type("world") + " %s"\n'
JS_HANDLER = ("const leftPad = require('left-pad');\n\n"
              "module.exports = { handler: (event, context) => leftPad('hello', 10) + ' %s' };\n")
FUNCTIONS = {
    'python': {
        'runtime': 'python3.13',
        'base_repo': 'fnbuild/runtime-python', 'base_tag': '3.13',
        'code_file': 'hello.py', 'code': PY_HANDLER,
        'deps_file': 'requirements.txt',
        'deps_v1': 'six==1.16.0\n', 'deps_v2': 'six==1.17.0\n',
    },
    'nodejs': {
        'runtime': 'nodejs20',
        'base_repo': 'fnbuild/runtime-nodejs', 'base_tag': '20',
        'code_file': 'hello.js', 'code': JS_HANDLER,
        'deps_file': 'package.json',
        'deps_v1': '{"name": "hello", "version": "1.0.0", "dependencies": {"left-pad": "1.3.0"}}\n',
        'deps_v2': '{"name": "hello", "version": "1.0.0", "dependencies": {"left-pad": "1.2.0"}}\n',
    },
}

# The multi-platform section's function: a native dependency, installed per platform.
MULTIARCH_HANDLER = ('from markupsafe import escape\n\n\ndef handler(event, context):\n'
                     '    return str(escape("<hello>")) + " %s"\n')
MULTIARCH_DEPS = 'MarkupSafe==3.0.2\n'
MULTIARCH_BASE = ('fnbuild/runtime-python-multi', '3.13')
PLATFORMS = {'one': 'linux/amd64', 'two': 'linux/amd64,linux/arm64'}
# The soak's function (bench/soak.py sends the traffic): /hello answers at once; the hung
# paths outlive FUNC_TIMEOUT. Python: /hang sleeps 30 s, /spin burns CPU for 10 s (both keep
# their thread after the 408). Node.js: /hang resolves after 30 s, /never never settles.
SOAK_FUNC_TIMEOUT = 2
SOAK_PY_HANDLER = """import time


def handler(event, context):
    path = event['extensions']['request'].path
    if path == '/hang':
        time.sleep(30)
    elif path == '/spin':
        end = time.monotonic() + 10
        while time.monotonic() < end:
            pass
    return 'hello world'
"""
SOAK_JS_HANDLER = """module.exports = {
  handler: (event) => {
    const path = event.extensions.request.url.split('?')[0];
    if (path === '/hang') return new Promise((resolve) => setTimeout(() => resolve('late'), 30000));
    if (path === '/never') return new Promise(() => {});
    return 'hello world';
  },
};
"""

# The Dockerfiles buildah builds: what fnbuild does, as Dockerfile steps. The host's CA bundle
# is bind-mounted for the install only (as fnbuild passes it in), never copied into a layer.
DOCKERFILES = {
    'python': """FROM {base}
USER 0
COPY requirements.txt /kubeless/requirements.txt
RUN --mount=type=bind,source=bench-ca.crt,target=/tmp/bench-ca.crt \\
    v=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])') && \\
    PIP_CERT=/tmp/bench-ca.crt python3 -m pip install --no-cache-dir --no-compile \\
      --disable-pip-version-check --no-warn-script-location --no-input --progress-bar off \\
      --target /kubeless/lib/python$v/site-packages -r /kubeless/requirements.txt
USER 1000:1000
COPY hello.py /kubeless/hello.py
ENV FUNC_HANDLER=handler MOD_NAME=hello FUNC_RUNTIME=python3.13 FUNC_TIMEOUT=180 FUNC_PORT=8080
""",
    'nodejs': """FROM {base}
USER 0
COPY package.json /kubeless/package.json
RUN --mount=type=bind,source=bench-ca.crt,target=/tmp/bench-ca.crt \\
    cd /kubeless && NODE_EXTRA_CA_CERTS=/tmp/bench-ca.crt npm install --omit=dev --no-audit \\
      --no-fund --no-update-notifier --loglevel=warn --cache /tmp/npm-cache && \\
    rm -rf /tmp/npm-cache
USER 1000:1000
COPY hello.js /kubeless/hello.js
ENV FUNC_HANDLER=handler MOD_NAME=hello FUNC_RUNTIME=nodejs20 FUNC_TIMEOUT=180 FUNC_PORT=8080
""",
}

CASES = [('first', 'first build'), ('code', 'code-only rebuild'), ('deps', 'deps-changed rebuild'),
         ('pod', 'new build pod, deps in --cache-repo'),
         ('builder-pod', 'first build, new pod of the builder image')]
# buildah has no cache shared through a registry, nor a runtime's builder image: in a new
# build pod it does a first build.
BUILDAH_CASE = {'pod': 'first', 'builder-pod': 'first'}
BUILDER_POD_TARGET_RATIO = 10.0

# The build step of a pod under the restricted Pod Security Standard, as runc runs it here:
# uid/gid 1000, no capabilities, no new privileges, a read-only root with a tmpfs /tmp, the
# host's network, and a seccomp filter (otherwise allowing all) refusing what would make
# namespaces or mounts, as the runtimes' default profiles do for an unprivileged container.
POD_UID = 1000
POD_REFUSED_SYSCALLS = ['unshare', 'setns', 'mount', 'umount2', 'chroot', 'pivot_root']
POD_CA_BUNDLE = '/etc/bench-ca.crt'  # the host's CA bundle, mounted read-only


def log(msg):
    print(f'[bench {time.strftime("%H:%M:%S")}] {msg}', file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


class Result:
    """One finished command: wall seconds, max RSS (KiB), exit code, its stdout."""

    def __init__(self, seconds, maxrss_kb, rc, stdout, log_path):
        self.seconds = seconds
        self.maxrss_kb = maxrss_kb
        self.rc = rc
        self.stdout = stdout
        self.log_path = log_path

    @property
    def maxrss_mb(self):
        return self.maxrss_kb / 1024.0


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def http_get(url, headers=None, timeout=5.0):
    """(status, headers, body) of a GET; status 0 when the server does not answer."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()
    except (urllib.error.URLError, OSError):
        return 0, {}, b''


def mounts_under(path):
    path = os.path.realpath(path)
    found = []
    with open('/proc/self/mounts') as f:
        for line in f:
            target = line.split()[1].replace('\\040', ' ')
            if target == path or target.startswith(path + '/'):
                found.append(target)
    return found


def safe_rmtree(path):
    """Removes a directory tree, never through a mount point left inside it."""
    if not os.path.lexists(path):
        return
    for target in sorted(mounts_under(path), key=len, reverse=True):
        subprocess.run(['umount', '-l', target], stderr=subprocess.DEVNULL)
    left = mounts_under(path)
    if left:
        log(f'WARNING: not removing {path}: still mounted inside it: {left}')
        return
    shutil.rmtree(path, ignore_errors=True)


class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix='fnbuild-bench-'))
        self.logs = self.tmp / 'logs'
        self.logs.mkdir()
        self.seq = 0
        self.procs = []          # long-running children we started (Popen), stopped at the end
        self.results = {'machine': machine_info(), 'settings': {}, 'builds': {},
                        'push': {}, 'bigmem': None, 'runtimes': {}, 'soak': {}, 'setup': {},
                        'multiarch': {}}
        self.fnbuild = None
        self.registry = None     # (port, Popen, dir)
        self.ca_bundle = None
        self.fnbuild_env = None

    # --- processes -------------------------------------------------------------------------

    def run(self, name, argv, env=None, cwd=None, timeout=None, check=True, passthrough=False,
            settle=False):
        """Runs a command to completion; its wall time and max RSS, output to a log. With
        `settle`, dirty pages (the gigabytes buildah's vfs driver writes, say) are flushed
        first, so that one measurement does not pay for the writeback of the one before."""
        if settle:
            os.sync()
        self.seq += 1
        safe = re.sub(r'[^A-Za-z0-9_.-]+', '-', name)[:60]
        out_path = self.logs / f'{self.seq:03d}-{safe}.out'
        err_path = self.logs / f'{self.seq:03d}-{safe}.log'
        timeout = timeout or self.args.command_timeout
        # GNU time reports the max RSS of the command from its own wait4. The rusage of our own
        # wait4 cannot be used as it is: Linux folds the RSS of the process that forked the
        # child (this Python, ~15-30 MB) into the child's ru_maxrss when it execs.
        rss_path = self.logs / f'{self.seq:03d}-{safe}.rss'
        if os.access(GNU_TIME, os.X_OK):
            argv = [GNU_TIME, '-f', '%M', '-o', str(rss_path), *argv]
        with open(out_path, 'wb') as out, open(err_path, 'wb') as err:
            start = time.monotonic()
            proc = subprocess.Popen(
                argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                stdout=sys.stderr if passthrough else out,
                stderr=sys.stderr if passthrough else err,
                start_new_session=True)
            timed_out = []

            def kill():
                timed_out.append(True)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

            timer = threading.Timer(timeout, kill)
            timer.start()
            try:
                while True:
                    try:
                        _, status, usage = os.wait4(proc.pid, 0)
                        break
                    except InterruptedError:
                        continue
            except BaseException:
                timer.cancel()
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                    os.waitpid(proc.pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
                raise
            seconds = time.monotonic() - start
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        maxrss = None
        try:
            maxrss = int(rss_path.read_text().split()[-1])
        except (OSError, ValueError, IndexError):
            pass
        if maxrss is None:
            maxrss = usage.ru_maxrss  # an upper bound (see above)
        result = Result(seconds, maxrss, proc.returncode,
                        out_path.read_text(errors='replace'), err_path)
        if timed_out:
            raise BenchError(f'{name}: timed out after {timeout} s ({" ".join(map(str, argv))}); '
                             f'log: {err_path}\n{tail(err_path)}')
        if check and result.rc != 0:
            raise BenchError(f'{name}: exit code {result.rc} ({" ".join(map(str, argv))})\n'
                             f'{tail(err_path)}{tail(out_path)}')
        return result

    def spawn(self, name, argv, env=None, cwd=None):
        """Starts a long-running child (its own process group); stopped by stop()."""
        self.seq += 1
        path = self.logs / f'{self.seq:03d}-{name}.log'
        f = open(path, 'wb')
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
        f.close()
        proc.bench_log = path
        self.procs.append(proc)
        return proc

    def stop(self, proc, grace=5.0):
        """SIGTERM, then SIGKILL after `grace` seconds; returns the child's peak RSS (KiB,
        VmHWM read just before stopping it)."""
        if proc not in self.procs:
            return None
        self.procs.remove(proc)
        if proc.returncode is not None:
            return None
        hwm = vm_hwm_kb(proc.pid)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            pid, status = os.waitpid(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                return hwm
            time.sleep(0.05)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _, status = os.waitpid(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        return hwm

    def cleanup(self):
        for proc in list(self.procs):
            try:
                self.stop(proc)
            except (ChildProcessError, OSError):
                pass
        if self.args.keep_temp:
            log(f'keeping {self.tmp} (--keep-temp)')
        else:
            safe_rmtree(self.tmp)

    # --- registries ------------------------------------------------------------------------

    def start_registry(self, name):
        port = free_port()
        root = self.tmp / f'registry-{name}-{port}'
        root.mkdir()
        config = root / 'config.yml'
        config.write_text(
            'version: 0.1\nlog: {level: warn}\n'
            f'storage: {{filesystem: {{rootdirectory: {root / "data"}}}, delete: {{enabled: true}}}}\n'
            f'http: {{addr: "127.0.0.1:{port}"}}\n')
        proc = self.spawn(f'registry-{name}', ['docker-registry', 'serve', str(config)])
        for _ in range(200):
            if http_get(f'http://127.0.0.1:{port}/v2/')[0] == 200:
                return port, proc, root
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise BenchError(f'the registry did not start; its log:\n{tail(proc.bench_log)}')

    def stop_registry(self, registry):
        port, proc, root = registry
        self.stop(proc)
        safe_rmtree(root)

    def manifest_digest(self, port, repo, tag):
        """The registry's digest of REPO:TAG, or None when it has no such manifest."""
        status, headers, body = http_get(f'http://127.0.0.1:{port}/v2/{repo}/manifests/{tag}',
                                         {'Accept': MANIFEST_ACCEPT})
        if status != 200:
            return None
        return headers.get('Docker-Content-Digest') or headers.get('docker-content-digest')

    def check_pushed(self, port, repo, tag, expect_digest=None):
        digest = self.manifest_digest(port, repo, tag)
        if digest is None:
            raise BenchError(f'127.0.0.1:{port}/{repo}:{tag} is not in the registry after the push')
        if expect_digest and digest != expect_digest:
            raise BenchError(f'127.0.0.1:{port}/{repo}:{tag} has digest {digest}, '
                             f'the tool printed {expect_digest}')
        return digest

    # --- setup -----------------------------------------------------------------------------

    def setup(self):
        a = self.args
        if os.geteuid() != 0:
            raise BenchError('run as root (buildah, chroot installs, network namespaces)')
        needed = {'buildah': 'buildah', 'wrk': 'wrk', 'skopeo': 'skopeo',
                  'docker-registry': 'docker-registry', 'runc': 'runc', 'node': 'nodejs',
                  'unshare': 'util-linux', 'nsenter': 'util-linux', 'ip': 'iproute2'}
        missing = sorted({pkg for cmd, pkg in needed.items() if not shutil.which(cmd)})
        if not os.access(GNU_TIME, os.X_OK):
            missing.append('time')
        if missing:
            log(f'installing {" ".join(missing)} (apt-get)')
            env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
            self.run('apt-get-update', ['apt-get', 'update', '-q'], env=env, passthrough=True)
            self.run('apt-get-install', ['apt-get', 'install', '-y', '-q', *missing], env=env,
                     passthrough=True)
        if not shutil.which('cargo'):
            raise BenchError('cargo is not installed: install a Rust toolchain (rustup) first')

        cache = Path(os.environ.get('FNBUILD_TEST_CACHE', '/var/cache/fnbuild-test'))
        self.rootfs = {name: cache / 'rootfs' / name
                       for name in ('python', 'nodejs', 'python-arm64')}
        if not all((d / ROOTFS_MARKER).exists() for d in self.rootfs.values()):
            log('the runtime root filesystems are missing: running tests/setup.sh (minutes)')
            self.run('setup.sh', ['bash', str(REPO / 'tests/setup.sh')], passthrough=True,
                     timeout=3600)

        log('building fnbuild (cargo build --release)')
        r = self.run('cargo-build', ['cargo', 'build', '--release'], cwd=REPO, passthrough=True,
                     timeout=3600)
        self.results['setup']['cargo_build_s'] = r.seconds
        # A private copy: others may rebuild target/ while this runs.
        self.fnbuild = str(self.tmp / 'fnbuild')
        shutil.copy2(REPO / 'target/release/fnbuild', self.fnbuild)
        version = self.run('fnbuild-version', [self.fnbuild, '--version']).stdout.strip()
        self.results['machine']['fnbuild'] = version

        # The CA bundle the package managers must trust (a proxy's CA, on some machines).
        for var in ('PIP_CERT', 'SSL_CERT_FILE', 'REQUESTS_CA_BUNDLE', 'NODE_EXTRA_CA_CERTS',
                    'NPM_CONFIG_CAFILE'):
            if os.environ.get(var) and os.path.isfile(os.environ[var]):
                self.ca_bundle = os.environ[var]
                break
        env = dict(os.environ)
        env.pop('FNBUILD_CACHE_DIR', None)
        if self.ca_bundle is None and os.path.isfile('/etc/ssl/certs/ca-certificates.crt'):
            self.ca_bundle = '/etc/ssl/certs/ca-certificates.crt'
            env['SSL_CERT_FILE'] = self.ca_bundle
        env['FNBUILD_LOG'] = 'info'
        self.fnbuild_env = env

        self.registry = self.start_registry('main')
        port = self.registry[0]
        self.fnbuild_env['FNBUILD_BASE_REGISTRY'] = f'127.0.0.1:{port}'
        log(f'registry on 127.0.0.1:{port}')
        for lang, runtime in (('python', 'python3.13'), ('nodejs', 'nodejs20')):
            fn = FUNCTIONS[lang]
            ref = f'127.0.0.1:{port}/{fn["base_repo"]}:{fn["base_tag"]}'
            log(f'making the {runtime} base image {ref} from {self.rootfs[lang]}')
            r = self.run(f'base-{lang}', [self.fnbuild, 'base', '--runtime', runtime, '--from',
                                          f'rootfs:{self.rootfs[lang]}', '--image', ref,
                                          '--cache-dir', str(self.tmp / f'base-cache-{lang}')],
                         env=self.fnbuild_env)
            self.check_pushed(port, fn['base_repo'], fn['base_tag'])
            self.results['setup'][f'base_{lang}'] = {'seconds': r.seconds,
                                                     'maxrss_mb': r.maxrss_mb}
            safe_rmtree(self.tmp / f'base-cache-{lang}')

    # --- 1. builds -------------------------------------------------------------------------

    def write_function(self, directory, lang, code_version, deps_version):
        fn = FUNCTIONS[lang]
        directory.mkdir(parents=True, exist_ok=True)
        (directory / fn['code_file']).write_text(fn['code'] % code_version)
        (directory / fn['deps_file']).write_text(fn[f'deps_{deps_version}'])

    def check_built(self, port, repo, tag, result):
        """Checks that a `fnbuild build` pushed REPO:TAG with the digest it printed."""
        printed = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ''
        self.check_pushed(port, repo, tag, printed.split('@', 1)[1] if '@' in printed else None)

    def make_builder_pod_image(self, lang, work):
        """Makes the runtime's builder image in the registry with this fnbuild, then pulls it
        and unpacks it into WORK/rootfs, as a node does before a pod's step starts (not timed);
        returns the image's config (Env, Entrypoint, WorkingDir)."""
        runtime = FUNCTIONS[lang]['runtime']
        port = self.registry[0]
        image = f'127.0.0.1:{port}/fnbuild/builder:{runtime}'
        log(f'making the {runtime} builder image {image} and unpacking it')
        cache = ['--cache-dir', str(work / 'cache')]
        r = self.run(f'builder-image-{lang}', [self.fnbuild, 'builder-image', '--runtime', runtime,
                                               '--image', image, *cache], env=self.fnbuild_env)
        self.check_pushed(port, 'fnbuild/builder', runtime)
        self.run(f'builder-image-pull-{lang}', [self.fnbuild, 'push', image,
                                                f'oci:{work / "layout"}', *cache],
                 env=self.fnbuild_env)
        config = unpack_layout(work / 'layout', work / 'rootfs')
        safe_rmtree(work / 'layout')
        safe_rmtree(work / 'cache')
        self.results['setup'][f'builder_image_{lang}'] = {'seconds': r.seconds,
                                                          'maxrss_mb': r.maxrss_mb}
        return config

    def run_builder_pod(self, name, lang, pod, config, src, image):
        """`fnbuild build` of SRC to IMAGE as the step of a new restricted pod of the builder
        image unpacked in POD (a fresh bundle, an empty cache directory, no --cache-repo), timed
        as the whole `runc run`, container start included."""
        bundle = pod / 'bundle'
        cache = bundle / 'cache'
        cache.mkdir(parents=True)
        for path in (src, cache):
            os.chown(path, POD_UID, POD_UID)
        env = dict(e.split('=', 1) for e in config.get('Env') or [])
        env.update({'HOME': '/tmp', 'FNBUILD_LOG': 'info',
                    'FNBUILD_BASE_REGISTRY': self.fnbuild_env['FNBUILD_BASE_REGISTRY'],
                    'PIP_CERT': POD_CA_BUNDLE, 'NPM_CONFIG_CAFILE': POD_CA_BUNDLE})
        argv = config['Entrypoint'] + build_args(lang, '/workspace/source', image,
                                                 '/workspace/cache')
        binds = [(src, '/workspace/source', False), (cache, '/workspace/cache', False),
                 ('/etc/resolv.conf', '/etc/resolv.conf', True),
                 (self.ca_bundle, POD_CA_BUNDLE, True)]
        spec = restricted_pod_spec(pod / 'rootfs', argv, env, config.get('WorkingDir') or '/',
                                   binds)
        (bundle / 'config.json').write_text(json.dumps(spec, indent=1))
        container = f'fnbuild-bench-{os.getpid()}-{name}'
        try:
            return self.run(name, ['runc', 'run', '--bundle', str(bundle), container],
                            settle=True)
        finally:
            subprocess.run(['runc', 'delete', '--force', container], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            safe_rmtree(bundle)

    def bench_builds(self, lang):
        fn = FUNCTIONS[lang]
        port = self.registry[0]
        host = f'127.0.0.1:{port}'
        base = f'{host}/{fn["base_repo"]}:{fn["base_tag"]}'
        samples = {tool: {case: [] for case, _ in CASES} for tool in ('fnbuild', 'buildah')}
        steps = [('first', 'v1', 'v1'), ('code', 'v2', 'v1'), ('deps', 'v2', 'v2')]
        pod = self.tmp / f'builder-pod-{lang}'
        pod_config = self.make_builder_pod_image(lang, pod)
        for i in range(self.args.runs):
            # fnbuild: a fresh cache directory and cache repository per round, kept across its
            # first three builds; the fourth is a new build pod: an empty cache directory, the
            # code changed again, the deps layer found in the cache repository; the fifth, a
            # first build in a new pod of the builder image, into a repository of its own.
            work = self.tmp / f'build-{lang}-{i}'
            src = work / 'src'
            repo = f'bench/fnbuild-{lang}-{i}'
            cache_repo = f'{host}/bench/cache-{lang}-{i}'
            fnbuild_steps = [(case, code_v, deps_v, work / 'cache') for case, code_v, deps_v in steps]
            fnbuild_steps.append(('pod', 'v3', 'v2', work / 'cache-new-pod'))
            for (case, code_v, deps_v, cache), tag in zip(fnbuild_steps, ('v1', 'v2', 'v3', 'v4')):
                self.write_function(src, lang, code_v, deps_v)
                log(f'{lang} round {i + 1}/{self.args.runs}: fnbuild {case}')
                r = self.run(f'fnbuild-{lang}-{case}-{i}', [
                    self.fnbuild, *build_args(lang, src, f'{host}/{repo}:{tag}', cache),
                    '--cache-repo', cache_repo], env=self.fnbuild_env, settle=True)
                self.check_built(port, repo, tag, r)
                samples['fnbuild'][case].append({'seconds': r.seconds, 'maxrss_mb': r.maxrss_mb})
            self.write_function(src, lang, 'v1', 'v1')
            log(f'{lang} round {i + 1}/{self.args.runs}: fnbuild builder-pod (runc)')
            repo = f'bench/builder-pod-{lang}-{i}'
            r = self.run_builder_pod(f'fnbuild-{lang}-builder-pod-{i}', lang, pod, pod_config,
                                     src, f'{host}/{repo}:v1')
            self.check_built(port, repo, 'v1', r)
            samples['fnbuild']['builder-pod'].append({'seconds': r.seconds,
                                                      'maxrss_mb': r.maxrss_mb})
            safe_rmtree(work)

            if self.args.skip_buildah:
                continue
            # buildah: a fresh storage root per round, kept across its three builds.
            work = self.tmp / f'buildah-{lang}-{i}'
            ctx = work / 'context'
            root, runroot = work / 'root', work / 'runroot'
            ctx.mkdir(parents=True)
            shutil.copyfile(self.ca_bundle, ctx / 'bench-ca.crt')
            (ctx / 'Dockerfile').write_text(DOCKERFILES[lang].format(base=base))
            repo = f'bench/buildah-{lang}-{i}'
            buildah = ['buildah', '--root', str(root), '--runroot', str(runroot),
                       '--storage-driver', 'vfs']
            for (case, code_v, deps_v), tag in zip(steps, ('v1', 'v2', 'v3')):
                self.write_function(ctx, lang, code_v, deps_v)
                ref = f'{host}/{repo}:{tag}'
                log(f'{lang} round {i + 1}/{self.args.runs}: buildah {case}')
                bud = self.run(f'buildah-bud-{lang}-{case}-{i}', buildah + [
                    'bud', '--isolation', 'chroot', '--layers', '--tls-verify=false',
                    '-t', ref, str(ctx)], settle=True)
                push = self.run(f'buildah-push-{lang}-{case}-{i}', buildah + [
                    'push', '--tls-verify=false', ref, f'docker://{ref}'], settle=True)
                self.check_pushed(port, repo, tag)
                samples['buildah'][case].append({
                    'seconds': bud.seconds + push.seconds, 'bud_seconds': bud.seconds,
                    'push_seconds': push.seconds,
                    'maxrss_mb': max(bud.maxrss_mb, push.maxrss_mb)})
            safe_rmtree(work)
        safe_rmtree(pod)
        self.results['builds'][lang] = samples

    # --- 6. multi-platform builds ----------------------------------------------------------

    def bench_multiarch(self):
        """Per round, with a fresh cache directory each: a first build and a code-only rebuild
        for linux/amd64 only, then the same for linux/amd64 + linux/arm64, each pushed."""
        port = self.registry[0]
        host = f'127.0.0.1:{port}'
        base = f'{host}/{MULTIARCH_BASE[0]}:{MULTIARCH_BASE[1]}'
        log(f'making the two-platform base image {base}')
        r = self.run('base-multiarch', [
            self.fnbuild, 'base', '--runtime', 'python3.13',
            '--from', f'rootfs:{self.rootfs["python"]}',
            '--from', f'rootfs:{self.rootfs["python-arm64"]}',
            '--image', base, '--cache-dir', str(self.tmp / 'base-cache-multiarch')],
            env=self.fnbuild_env)
        self.check_pushed(port, *MULTIARCH_BASE)
        self.results['setup']['base_multiarch'] = {'seconds': r.seconds, 'maxrss_mb': r.maxrss_mb}
        safe_rmtree(self.tmp / 'base-cache-multiarch')
        samples = {f'{n}/{case}': [] for n in PLATFORMS for case in ('first', 'code')}
        for i in range(self.args.runs):
            for n, platforms in PLATFORMS.items():
                work = self.tmp / f'multiarch-{n}-{i}'
                src = work / 'src'
                src.mkdir(parents=True)
                (src / 'requirements.txt').write_text(MULTIARCH_DEPS)
                repo = f'bench/multiarch-{n}-{i}'
                for case, tag in (('first', 'v1'), ('code', 'v2')):
                    (src / 'hello.py').write_text(MULTIARCH_HANDLER % tag)
                    log(f'multi-platform round {i + 1}/{self.args.runs}: {platforms} {case}')
                    r = self.run(f'multiarch-{n}-{case}-{i}', [
                        self.fnbuild, 'build', '--source', str(src), '--runtime', 'python3.13',
                        '--handler', 'hello.handler', '--base-image', base,
                        '--platform', platforms, '--image', f'{host}/{repo}:{tag}',
                        '--cache-dir', str(work / 'cache')], env=self.fnbuild_env, settle=True)
                    self.check_built(port, repo, tag, r)
                    samples[f'{n}/{case}'].append({'seconds': r.seconds,
                                                   'maxrss_mb': r.maxrss_mb})
                safe_rmtree(work)
        self.results['multiarch'] = samples

    # --- 2. push throughput ----------------------------------------------------------------

    def bench_push(self):
        mb = self.args.push_mb
        work = self.tmp / 'push'
        src, layout = work / 'src', work / 'layout'
        src.mkdir(parents=True)
        (src / 'hello.py').write_text('def handler(event, context):\n    return "hello"\n')
        log(f'making the push test image: the python base + a {mb} MB random layer')
        write_random(src / 'data.bin', mb)
        self.run('fnbuild-build-push-image', [
            self.fnbuild, 'build', '--source', str(src), '--runtime', 'python3.13',
            '--handler', 'hello.handler', '--output', f'oci:{layout}',
            '--cache-dir', str(work / 'cache')], env=self.fnbuild_env)
        safe_rmtree(src)
        safe_rmtree(work / 'cache')
        digest, size = layout_image(layout)
        samples = {'fnbuild': [], 'skopeo': []}
        for i in range(self.args.runs):
            for tool in ('fnbuild', 'skopeo'):
                # A fresh registry each time: nothing to skip or mount, every byte is sent.
                registry = self.start_registry(f'push-{tool}-{i}')
                dest = f'127.0.0.1:{registry[0]}/push/{tool}:{i}'
                log(f'push round {i + 1}/{self.args.runs}: {tool} -> {dest}')
                if tool == 'fnbuild':
                    argv = [self.fnbuild, 'push', f'oci:{layout}', dest,
                            '--cache-dir', str(work / f'cache-{i}')]
                else:
                    argv = ['skopeo', 'copy', '--dest-tls-verify=false', f'oci:{layout}',
                            f'docker://{dest}']
                r = self.run(f'push-{tool}-{i}', argv, env=self.fnbuild_env, settle=True)
                got = self.check_pushed(registry[0], f'push/{tool}', str(i))
                self.stop_registry(registry)
                safe_rmtree(work / f'cache-{i}')
                samples[tool].append({'seconds': r.seconds, 'mb_per_s': size / 1e6 / r.seconds,
                                      'maxrss_mb': r.maxrss_mb,
                                      'digest_kept': got == digest})
        safe_rmtree(work)
        self.results['push'] = {'image_bytes': size, 'random_layer_mb': mb, 'samples': samples}

    # --- 3. a 1 GB layer -------------------------------------------------------------------

    def bench_bigmem(self):
        mb = self.args.big_mb
        work = self.tmp / 'bigmem'
        src = work / 'src'
        src.mkdir(parents=True)
        (src / 'hello.py').write_text('def handler(event, context):\n    return "hello"\n')
        log(f'fnbuild build of a function with a {mb} MB random file, to an OCI layout')
        write_random(src / 'data.bin', mb)
        r = self.run('fnbuild-bigmem', [
            self.fnbuild, 'build', '--source', str(src), '--runtime', 'python3.13',
            '--handler', 'hello.handler', '--output', f'oci:{work / "layout"}',
            '--cache-dir', str(work / 'cache')], env=self.fnbuild_env, settle=True)
        _, size = layout_image(work / 'layout')
        safe_rmtree(work)
        self.results['bigmem'] = {'layer_mb': mb, 'seconds': r.seconds, 'maxrss_mb': r.maxrss_mb,
                                  'image_bytes': size}

    # --- 4. runtime servers ----------------------------------------------------------------

    def loopback_namespace(self):
        """A network namespace with only a loopback interface, for the servers and their clients
        (the runtimes listen on all interfaces, as they must in a container): (the command
        prefix that enters it, the process holding it). Without one: ([], None) and a warning."""
        holder = self.spawn('netns-holder', ['unshare', '--net', 'sh', '-c',
                                             'ip link set lo up && exec sleep 7200'])
        time.sleep(0.3)
        if holder.poll() is None:
            return ['nsenter', '-t', str(holder.pid), '-n', '--'], holder
        log('WARNING: no network namespace (unshare failed): servers run on the host')
        self.stop(holder)
        return [], None

    def start_runtime(self, key, netns, port, script, code_dir, module, extra_env=None):
        """Starts a runtime server (kubeless.py or kubeless.js) serving MODULE.handler."""
        lang = 'python' if script.suffix == '.py' else 'nodejs'
        interpreter = sys.executable if lang == 'python' else shutil.which('node')
        env = {'PATH': os.environ.get('PATH', '/usr/bin:/bin'), 'LANG': 'C.UTF-8',
               'FNBUILD_CODE_DIR': str(code_dir), 'PORT': str(port), 'MOD_NAME': module,
               'FUNC_HANDLER': 'handler', 'FUNC_RUNTIME': 'python3.13' if lang == 'python' else 'nodejs20',
               **(extra_env or {})}
        return self.spawn(key, netns + [interpreter, str(script)], env=env, cwd=code_dir)

    def runtimes_before(self):
        """The runtime servers as they were at --runtimes-before REV, extracted from git."""
        rev = self.args.runtimes_before
        scripts = {}
        for lang, name in (('python', 'kubeless.py'), ('nodejs', 'kubeless.js')):
            out = self.tmp / 'before' / lang / name
            out.parent.mkdir(parents=True)
            text = self.run(f'git-show-{lang}', ['git', '-C', str(REPO), 'show',
                                                 f'{rev}:runtimes/{lang}/{name}']).stdout
            out.write_text(text)
            scripts[lang] = out
        return scripts

    def bench_runtimes(self):
        os.sync()
        work = self.tmp / 'runtimes'
        work.mkdir()
        (work / 'hello.py').write_text('def handler(event, context):\n    return "hello world"\n')
        (work / 'hello.js').write_text(
            "module.exports = { handler: (event, context) => 'hello world' };\n")
        netns, holder = self.loopback_namespace()
        python, node = sys.executable, shutil.which('node')
        runtimes = {'python': REPO / 'runtimes/python/kubeless.py',
                    'nodejs': REPO / 'runtimes/nodejs/kubeless.js'}
        servers = {}
        port = 18080
        plan = []
        for lang in ('python', 'nodejs'):
            plan.append((f'{lang}-bare', lang, None))
            plan.append((f'{lang}-runtime', lang, runtimes[lang]))
        if self.args.runtimes_before:
            plan += [(f'{lang}-before', lang, script) for lang, script in self.runtimes_before().items()]
        for key, lang, script in plan:
            port = port + 1 if holder else free_port()
            if script is None:
                bare = [python, str(BENCH / 'bare_server.py')] if lang == 'python' else \
                    [node, str(BENCH / 'bare_server.js')]
                proc = self.spawn(key, netns + bare + [str(port)], cwd=work)
            else:
                proc = self.start_runtime(key, netns, port, script, work, 'hello')
            servers[key] = {'lang': lang, 'port': port, 'proc': proc}
        for key, s in servers.items():
            self.wait_server(netns, s['port'], s['proc'], key)
        samples = {key: {'rps': [], 'p50_ms': [], 'errors': []} for key in servers}
        d = self.args.wrk_duration
        for key, s in servers.items():  # warm-up, not recorded
            self.wrk(netns, s['port'], 2, 10, 1)
        for i in range(self.args.runs):
            for key, s in servers.items():
                log(f'runtimes round {i + 1}/{self.args.runs}: {key} (wrk {d}s + {d}s)')
                rps, _, errors = self.wrk(netns, s['port'], 2, 10, d)
                _, p50, errors2 = self.wrk(netns, s['port'], 1, 1, d, latency=True)
                samples[key]['rps'].append(rps)
                samples[key]['p50_ms'].append(p50)
                samples[key]['errors'].append(errors + errors2)
        scripts = self.event_scripts(work)
        for i in range(self.args.runs):
            for lang in ('python', 'nodejs'):
                key = f'{lang}-runtime'
                log(f'event rounds {i + 1}/{self.args.runs}: {key} ({len(scripts)} kinds, wrk {d}s)')
                for kind, script in scripts.items():
                    rps, _, errors = self.wrk(netns, servers[key]['port'], 2, 10, d, script=script)
                    samples[key].setdefault('events', {}).setdefault(kind, []).append(rps)
                    samples[key]['errors'].append(errors)
        for key, s in servers.items():
            rss = self.stop(s['proc'])
            samples[key]['maxrss_mb'] = rss / 1024.0 if rss else None
        if holder is not None:
            self.stop(holder)
        safe_rmtree(work)
        self.results['runtimes'] = {
            'samples': samples, 'network_namespace': holder is not None,
            'before': self.args.runtimes_before,
            'python': self.run('python-version', [python, '--version']).stdout.strip(),
            'node': self.run('node-version', [node, '--version']).stdout.strip(),
            'wrk_duration_s': d}

    @staticmethod
    def event_scripts(work):
        """A wrk Lua script per EVENT_REQUESTS kind, written into work."""
        scripts = {}
        for kind, (headers, body) in EVENT_REQUESTS.items():
            lines = ['wrk.method = "POST"', f'wrk.body = {json.dumps(body)}']
            lines += [f'wrk.headers[{json.dumps(k)}] = {json.dumps(v)}' for k, v in headers.items()]
            scripts[kind] = work / f'{kind}.lua'
            scripts[kind].write_text('\n'.join(lines) + '\n')
        return scripts

    def bench_soak(self):
        """Each runtime server under mixed good and bad traffic (bench/soak.py) for
        --soak-seconds: what it served, how each kind of client was answered, its RSS."""
        work = self.tmp / 'soak'
        work.mkdir()
        (work / 'soak.py').write_text(SOAK_PY_HANDLER)
        (work / 'soak.js').write_text(SOAK_JS_HANDLER)
        netns, holder = self.loopback_namespace()
        seconds = self.args.soak_seconds
        self.results['soak'] = {'seconds': seconds, 'func_timeout_s': SOAK_FUNC_TIMEOUT}
        for lang, script, hung in (('python', 'runtimes/python/kubeless.py', ['/hang', '/spin']),
                                   ('nodejs', 'runtimes/nodejs/kubeless.js', ['/hang', '/never'])):
            port = 18200 if holder else free_port()
            proc = self.start_runtime(f'soak-{lang}', netns, port, REPO / script, work, 'soak',
                                      {'FUNC_TIMEOUT': str(SOAK_FUNC_TIMEOUT)})
            self.wait_server(netns, port, proc, f'soak-{lang}')
            log(f'soak: {lang} runtime under mixed traffic for {seconds}s')
            argv = netns + [sys.executable, str(BENCH / 'soak.py'), '--port', str(port),
                            '--pid', str(proc.pid), '--seconds', str(seconds),
                            '--timeout', str(SOAK_FUNC_TIMEOUT)]
            for path in hung:
                argv += ['--hung-path', path]
            out = self.run(f'soak-client-{lang}', argv, timeout=seconds + 120).stdout
            result = json.loads(out)
            result['hung_paths'] = hung
            result['server_exit'] = proc.poll()
            self.stop(proc)
            self.results['soak'][lang] = result
        if holder is not None:
            self.stop(holder)
        safe_rmtree(work)

    def wait_server(self, netns, port, proc, name):
        probe = ('import sys, urllib.request\n'
                 'try:\n'
                 '    urllib.request.urlopen(sys.argv[1], timeout=2).read()\n'
                 'except Exception:\n'
                 '    sys.exit(1)\n')
        for _ in range(100):
            if proc.poll() is not None:
                raise BenchError(f'{name} exited; its log:\n{tail(proc.bench_log)}')
            r = subprocess.run(netns + [sys.executable, '-c', probe, f'http://127.0.0.1:{port}/'],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise BenchError(f'{name} did not answer on port {port}; its log:\n{tail(proc.bench_log)}')

    def wrk(self, netns, port, threads, connections, seconds, latency=False, script=None):
        argv = netns + ['wrk', f'-t{threads}', f'-c{connections}', f'-d{seconds}s']
        if latency:
            argv.append('--latency')
        if script:
            argv += ['-s', str(script)]
        argv.append(f'http://127.0.0.1:{port}/')
        r = self.run(f'wrk-{port}', argv, timeout=seconds + 60)
        out = r.stdout
        m = re.search(r'Requests/sec:\s+([\d.]+)', out)
        if not m:
            raise BenchError(f'cannot read wrk output:\n{out}')
        rps = float(m.group(1))
        p50 = None
        m = re.search(r'^\s*50%\s+([\d.]+)(us|ms|s)\b', out, re.M)
        if m:
            p50 = float(m.group(1)) * {'us': 1e-3, 'ms': 1.0, 's': 1e3}[m.group(2)]
        errors = 0
        m = re.search(r'Non-2xx or 3xx responses:\s+(\d+)', out)
        if m:
            errors += int(m.group(1))
        m = re.search(r'Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)', out)
        if m:
            errors += sum(int(x) for x in m.groups())
        return rps, p50, errors


# --- helpers -------------------------------------------------------------------------------

def tail(path, lines=25):
    try:
        text = Path(path).read_text(errors='replace').splitlines()
    except OSError:
        return ''
    return ''.join(f'    {line}\n' for line in text[-lines:])


def vm_hwm_kb(pid):
    """The peak resident set size (KiB) of a running process, from /proc."""
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def write_random(path, mb):
    with open(path, 'wb') as f:
        for _ in range(mb):
            f.write(os.urandom(1 << 20))


def build_args(lang, source, image, cache_dir):
    """The arguments of a `fnbuild build` of the bench function of LANG."""
    return ['build', '--source', str(source), '--runtime', FUNCTIONS[lang]['runtime'],
            '--handler', 'hello.handler', '--image', image, '--cache-dir', str(cache_dir)]


def layout_blob(layout, digest):
    algo, hexdigest = digest.split(':', 1)
    return layout / 'blobs' / algo / hexdigest


def layout_manifest(layout):
    """(descriptor, manifest) of the image of a one-image OCI layout."""
    desc = json.loads((layout / 'index.json').read_text())['manifests'][0]
    manifest = json.loads(layout_blob(layout, desc['digest']).read_text())
    if 'layers' not in manifest:
        raise BenchError(f'{layout}: {desc["digest"]} is not an image manifest')
    return desc, manifest


def layout_image(layout):
    """(manifest digest, bytes of the manifest, config and layers) of a one-image OCI layout."""
    desc, manifest = layout_manifest(layout)
    size = desc['size'] + manifest['config']['size'] + sum(l['size'] for l in manifest['layers'])
    return desc['digest'], size


def remove_path(path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.is_symlink() or path.exists():
        path.unlink()


def unpack_layout(layout, dest):
    """Unpacks the image of a one-image OCI layout into DEST as a container runtime does:
    its layers in order, whiteouts (.wh.NAME, .wh..wh..opq) removing what the layers below
    put there, owners kept; returns the image's config (its `config` object)."""
    _, manifest = layout_manifest(layout)
    dest.mkdir(parents=True)
    for layer in manifest['layers']:
        with tarfile.open(layout_blob(layout, layer['digest'])) as tar:
            tar.extraction_filter = getattr(tarfile, 'fully_trusted_filter', None)
            for member in tar:
                parent, name = os.path.split(os.path.normpath(member.name).lstrip('/'))
                if name == '.wh..wh..opq':
                    for child in (dest / parent).iterdir():
                        remove_path(child)
                elif name.startswith('.wh.'):
                    remove_path(dest / parent / name[len('.wh.'):])
                else:
                    if not member.isdir():
                        remove_path(dest / parent / name)
                    tar.extract(member, dest, numeric_owner=True)
    return json.loads(layout_blob(layout, manifest['config']['digest']).read_text())['config']


def restricted_pod_spec(root, argv, env, cwd, binds):
    """The OCI runtime spec (runc's config.json) of a build step in a pod under the
    restricted Pod Security Standard (see POD_UID): ROOT read-only, the usual /proc, /dev and
    /sys, a tmpfs /tmp, and BINDS, (host path, path in the container, read-only)."""
    mounts = [
        {'destination': '/proc', 'type': 'proc', 'source': 'proc'},
        {'destination': '/dev', 'type': 'tmpfs', 'source': 'tmpfs',
         'options': ['nosuid', 'strictatime', 'mode=755', 'size=65536k']},
        {'destination': '/dev/pts', 'type': 'devpts', 'source': 'devpts',
         'options': ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620']},
        {'destination': '/dev/shm', 'type': 'tmpfs', 'source': 'shm',
         'options': ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k']},
        {'destination': '/sys', 'type': 'sysfs', 'source': 'sysfs',
         'options': ['nosuid', 'noexec', 'nodev', 'ro']},
        {'destination': '/tmp', 'type': 'tmpfs', 'source': 'tmpfs',
         'options': ['nosuid', 'nodev', 'mode=1777']},
    ] + [{'destination': dest, 'type': 'bind', 'source': str(src),
          'options': ['rbind', 'nosuid', 'nodev', *(['ro'] if ro else [])]}
         for src, dest, ro in binds]
    no_caps = {kind: [] for kind in ('bounding', 'effective', 'inheritable', 'permitted',
                                     'ambient')}
    return {
        'ociVersion': '1.0.2',
        'root': {'path': str(root), 'readonly': True},
        'hostname': 'build-pod',
        'process': {
            'terminal': False, 'user': {'uid': POD_UID, 'gid': POD_UID}, 'args': argv,
            'env': [f'{k}={v}' for k, v in env.items()], 'cwd': cwd,
            'capabilities': no_caps, 'noNewPrivileges': True},
        'mounts': mounts,
        'linux': {
            # No network namespace: the host's network, as the local registry is on loopback.
            'namespaces': [{'type': t} for t in ('pid', 'ipc', 'uts', 'mount')],
            'seccomp': {'defaultAction': 'SCMP_ACT_ALLOW',
                        'syscalls': [{'names': POD_REFUSED_SYSCALLS, 'action': 'SCMP_ACT_ERRNO',
                                      'errnoRet': 1}]}},
    }


def machine_info():
    info = {'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
            'loadavg_start': os.getloadavg(),
            'host': platform.node(), 'kernel': platform.release(), 'cpus': os.cpu_count()}
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    info['cpu'] = line.split(':', 1)[1].strip()
                    break
        with open('/proc/meminfo') as f:
            info['mem_gb'] = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return info


def spread(values):
    """'min-max' of a few timings, '' for fewer than two."""
    if len(values) < 2:
        return ''
    lo, hi = min(values), max(values)
    digits = 3 if hi < 1 else 2 if hi < 10 else 1
    return f'{lo:.{digits}f}-{hi:.{digits}f}'


def fmt(value, digits=2, unit=''):
    if value is None:
        return '-'
    if isinstance(value, float) and abs(value) >= 1000:
        return f'{value:,.0f}{unit}'
    return f'{value:.{digits}f}{unit}'


def table(headers, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = '  '.join(f'{h:<{w}}' if i == 0 else f'{h:>{w}}' for i, (h, w) in enumerate(zip(headers, widths)))
    out = [line, '  '.join('-' * w for w in widths)]
    for r in rows:
        out.append('  '.join(f'{str(c):<{w}}' if i == 0 else f'{str(c):>{w}}'
                             for i, (c, w) in enumerate(zip(r, widths))))
    return '\n'.join(out)


def summarize(results, args):
    """Medians, ratios and targets from the raw samples (also stored in the JSON)."""
    s = {'builds': {}, 'push': None, 'runtimes': {}, 'soak': {}, 'multiarch': None,
         'targets': []}
    for lang, samples in results['builds'].items():
        for case, _ in CASES:
            f = samples['fnbuild'][case]
            b = samples['buildah'][BUILDAH_CASE.get(case, case)]
            fs = median([x['seconds'] for x in f])
            bs = median([x['seconds'] for x in b])
            s['builds'][f'{lang}/{case}'] = {
                'fnbuild_s': fs, 'buildah_s': bs,
                'buildah_bud_s': median([x['bud_seconds'] for x in b]),
                'buildah_push_s': median([x['push_seconds'] for x in b]),
                'ratio': bs / fs if fs and bs else None,
                'fnbuild_range': spread([x['seconds'] for x in f]),
                'buildah_range': spread([x['seconds'] for x in b]),
                'fnbuild_rss_mb': max((x['maxrss_mb'] for x in f), default=None),
                'buildah_rss_mb': max((x['maxrss_mb'] for x in b), default=None)}
    if results['push']:
        p = results['push']['samples']
        fm, sm = median([x['mb_per_s'] for x in p['fnbuild']]), median([x['mb_per_s'] for x in p['skopeo']])
        s['push'] = {
            'fnbuild_s': median([x['seconds'] for x in p['fnbuild']]),
            'skopeo_s': median([x['seconds'] for x in p['skopeo']]),
            'fnbuild_mb_s': fm, 'skopeo_mb_s': sm, 'ratio': fm / sm if fm and sm else None,
            'fnbuild_rss_mb': max(x['maxrss_mb'] for x in p['fnbuild']),
            'skopeo_rss_mb': max(x['maxrss_mb'] for x in p['skopeo']),
            'digest_kept': {t: all(x['digest_kept'] for x in p[t]) for t in p}}
    if results['runtimes']:
        rs = results['runtimes']['samples']
        for lang in ('python', 'nodejs'):
            bare, rt = rs[f'{lang}-bare'], rs[f'{lang}-runtime']
            ref = KYMA_REFERENCE[lang]
            b_rps, r_rps = median(bare['rps']), median(rt['rps'])
            frac = r_rps / b_rps
            ref_frac = ref['rps'] / ref['bare_rps']
            s['runtimes'][lang] = {
                'bare_rps': b_rps, 'runtime_rps': r_rps, 'runtime_over_bare': frac,
                'bare_p50_ms': median(bare['p50_ms']), 'runtime_p50_ms': median(rt['p50_ms']),
                'p50_ratio': (median(rt['p50_ms']) / median(bare['p50_ms'])
                              if median(bare['p50_ms']) else None),
                'bare_rss_mb': bare.get('maxrss_mb'), 'runtime_rss_mb': rt.get('maxrss_mb'),
                'errors': sum(rt['errors']) + sum(bare['errors']),
                'kyma_over_bare_ref': ref_frac,
                'x_kyma_normalized': frac / ref_frac,
                'x_kyma_absolute': r_rps / ref['rps']}
            events = {kind: median(values) for kind, values in rt.get('events', {}).items()}
            if events:
                s['runtimes'][lang]['events_rps'] = events
            before = rs.get(f'{lang}-before')
            if before:
                s['runtimes'][lang].update({
                    'before_rps': median(before['rps']), 'before_p50_ms': median(before['p50_ms']),
                    'before_rss_mb': before.get('maxrss_mb'),
                    'runtime_over_before': r_rps / median(before['rps'])})
                s['runtimes'][lang]['errors'] += sum(before['errors'])
    for lang in ('python', 'nodejs'):
        soak = results['soak'].get(lang)
        if soak:
            s['soak'][lang] = summarize_soak(soak, results['soak']['seconds'])
    m = results.get('multiarch') or {}
    if m:
        sec = {key: median([x['seconds'] for x in values]) for key, values in m.items()}
        s['multiarch'] = {
            'seconds': sec,
            'ranges': {key: spread([x['seconds'] for x in values]) for key, values in m.items()},
            'rss_mb': {key: max(x['maxrss_mb'] for x in values) for key, values in m.items()},
            'first_two_over_one': sec['two/first'] / sec['one/first'],
            'code_two_over_one': sec['two/code'] / sec['one/code']}

    t = s['targets']
    b = s['builds'].get('python/code')
    if b and b['ratio'] is not None:
        ok = b['ratio'] >= REBUILD_TARGET_RATIO and b['fnbuild_s'] <= REBUILD_TARGET_SECONDS
        t.append(('Python code-only rebuild+push: >= 10x faster than buildah and <= ~1 s',
                  f'{b["ratio"]:.1f}x, {b["fnbuild_s"]:.3f} s', ok))
    for lang in ('python', 'nodejs'):
        b = s['builds'].get(f'{lang}/builder-pod')
        if b and b['ratio'] is not None:
            t.append((f'{lang} first build in a new pod of the builder image: >= '
                      f'{BUILDER_POD_TARGET_RATIO:.0f}x faster than buildah\'s first build',
                      f'{b["ratio"]:.1f}x, {b["fnbuild_s"]:.2f} s',
                      b['ratio'] >= BUILDER_POD_TARGET_RATIO))
    if s['multiarch']:
        code = s['multiarch']['seconds']['two/code']
        t.append(('two-platform code-only rebuild+push: well under a second', f'{code:.3f} s',
                  code < REBUILD_TARGET_SECONDS))
    if s['push']:
        t.append(('push throughput >= skopeo\'s',
                  f'{s["push"]["fnbuild_mb_s"]:.0f} vs {s["push"]["skopeo_mb_s"]:.0f} MB/s '
                  f'({s["push"]["ratio"]:.2f}x)', s['push']['ratio'] >= 1.0))
    for lang in ('python', 'nodejs'):
        r = s['runtimes'].get(lang)
        if r:
            goal = RUNTIME_TARGETS[lang]
            t.append((f'{lang} runtime >= {goal:.0f}x Kyma {"python312" if lang == "python" else "nodejs20"}'
                      ' (normalized to the bare server)',
                      f'{r["x_kyma_normalized"]:.1f}x normalized, {r["x_kyma_absolute"]:.1f}x absolute',
                      r['x_kyma_normalized'] >= goal))
    return s


def summarize_soak(soak, seconds):
    """Per kind of traffic: calls and the share answered as expected; the unexpected outcomes;
    the server's RSS (MB), threads and open files at the start, at half time and at the end."""
    kinds = {}
    for kind, outcomes in soak['counts'].items():
        total = sum(outcomes.values())
        kinds[kind] = {'calls': total, 'expected': outcomes.get('expected', 0),
                       'unexpected': {k: v for k, v in outcomes.items() if k != 'expected'}}
    samples = [x for x in soak['samples'] if not x.get('gone')]
    # RSS is compared from half time to the end: long after the stuck 30 s calls reached their
    # steady number and the allocators their working size.
    warm = next((x for x in samples if x['t'] >= seconds / 2), samples[-1] if samples else None)

    def at(sample):
        return None if sample is None else {
            't': sample['t'], 'rss_mb': sample['rss_kb'] / 1024.0,
            'threads': sample['threads'], 'files': sample['files']}
    return {'kinds': kinds, 'good_per_s': kinds.get('good', {}).get('expected', 0) / seconds,
            'healthz_worst_ms': soak['healthz_worst_ms'],
            'start': at(samples[0] if samples else None), 'warm': at(warm),
            'end': at(samples[-1] if samples else None),
            'max_rss_mb': max((x['rss_kb'] for x in samples), default=0) / 1024.0,
            'server_exit': soak['server_exit'], 'gone': len(samples) < len(soak['samples'])}


def report(results, summary, args):
    m = results['machine']
    out = []
    out.append(f'fnbuild benchmark  {m["date"]}  {m.get("cpu", "?")}  {m["cpus"]} CPUs  '
               f'{m.get("mem_gb", "?")} GB  kernel {m["kernel"]}')
    out.append('load average (1/5/15 min) at start {:.2f}/{:.2f}/{:.2f}, at end {:.2f}/{:.2f}/{:.2f} '
               '(other work on the host makes timings noisy: compare ratios)'.format(
                   *m['loadavg_start'], *m.get('loadavg_end', (0, 0, 0))))
    out.append(f'{m.get("fnbuild", "")}; median of {args.runs} run(s); wall time; '
               'MB = max RSS of the largest process of the command (GNU time\'s wait4)')
    out.append('')
    if summary['builds']:
        rows = []
        for key, b in summary['builds'].items():
            lang, case = key.split('/')
            rows.append([f'{lang} {dict(CASES)[case]}', fmt(b['fnbuild_s'], 3),
                         b['fnbuild_range'], fmt(b['buildah_s'], 2), b['buildah_range'],
                         f'{fmt(b["buildah_bud_s"], 2)} + {fmt(b["buildah_push_s"], 2)}',
                         fmt(b['ratio'], 1, 'x'),
                         fmt(b['fnbuild_rss_mb'], 0), fmt(b['buildah_rss_mb'], 0)])
        out.append('1. Function builds pushed to a local registry (buildah: bud + push, vfs, chroot)')
        out.append(table(['build', 'fnbuild s', '(min-max)', 'buildah s', '(min-max)',
                          'bud + push s', 'buildah/fnbuild',
                          'fnbuild MB', 'buildah MB'], rows))
        out.append('   new build pod: an empty --cache-dir, code changed, the deps layer found in '
                   '--cache-repo; buildah shares no cache through a registry, so its figure is '
                   'its first build')
        out.append('   new pod of the builder image: a first build (empty caches, no --cache-repo) '
                   'run by runc as a restricted pod\'s step in the runtime\'s builder image '
                   '(unpacked beforehand), the whole `runc run` timed; against buildah\'s first '
                   'build')
        out.append('')
    p = summary['push']
    if p:
        size = results['push']['image_bytes'] / 1e6
        out.append(f'2. Push of a {size:.0f} MB image (python base + {results["push"]["random_layer_mb"]} MB '
                   'random layer) from an OCI layout into a fresh registry')
        out.append(table(['tool', 'seconds', 'MB/s', 'max RSS MB', 'digest kept'], [
            ['fnbuild push', fmt(p['fnbuild_s'], 2), fmt(p['fnbuild_mb_s'], 0),
             fmt(p['fnbuild_rss_mb'], 0), 'yes' if p['digest_kept']['fnbuild'] else 'NO'],
            ['skopeo copy', fmt(p['skopeo_s'], 2), fmt(p['skopeo_mb_s'], 0),
             fmt(p['skopeo_rss_mb'], 0), 'yes' if p['digest_kept']['skopeo'] else 'NO'],
            ['fnbuild/skopeo', '', fmt(p['ratio'], 2, 'x'), '', '']]))
        out.append('')
    bm = results['bigmem']
    if bm:
        out.append(f'3. fnbuild build of a function with a {bm["layer_mb"]} MB random file '
                   f'(--output oci:DIR): {bm["seconds"]:.1f} s, max RSS {bm["maxrss_mb"]:.0f} MB')
        out.append('')
    if summary['runtimes']:
        rt = results['runtimes']
        out.append(f'4. Runtime servers on this host ({rt["python"]}, node {rt["node"]}; '
                   f'wrk -t2 -c10 -d{rt["wrk_duration_s"]}s for req/s, '
                   f'-t1 -c1 --latency for p50; '
                   f'{"own network namespace" if rt["network_namespace"] else "host network"})')
        rows = []
        for lang in ('python', 'nodejs'):
            r = summary['runtimes'][lang]
            rows.append([f'{lang} bare', fmt(r['bare_rps'], 0), fmt(r['bare_p50_ms'], 3), '1.00',
                         fmt(r['bare_rss_mb'], 0)])
            rows.append([f'{lang} fnbuild runtime', fmt(r['runtime_rps'], 0),
                         fmt(r['runtime_p50_ms'], 3), fmt(r['runtime_over_bare'], 2),
                         fmt(r['runtime_rss_mb'], 0)])
            if 'before_rps' in r:
                rows.append([f'{lang} runtime at {rt["before"]}', fmt(r['before_rps'], 0),
                             fmt(r['before_p50_ms'], 3), fmt(r['before_rps'] / r['bare_rps'], 2),
                             fmt(r['before_rss_mb'], 0)])
        out.append(table(['server', 'req/s', 'p50 ms', 'req/s vs bare', 'max RSS MB'], rows))
        for lang in ('python', 'nodejs'):
            r = summary['runtimes'][lang]
            if 'runtime_over_before' in r:
                out.append(f'   {lang}: the runtime now serves {r["runtime_over_before"]:.2f}x the req/s '
                           f'it served at {rt["before"]}')
        rows = [[f'{lang} fnbuild runtime', *(fmt(r['events_rps'][kind], 0) for kind in EVENT_REQUESTS),
                 fmt(r['events_rps']['ce-binary'] / r['events_rps']['post-json'], 2),
                 fmt(r['events_rps']['ce-structured'] / r['events_rps']['post-json'], 2)]
                for lang, r in ((l, summary['runtimes'][l]) for l in ('python', 'nodejs'))
                if 'events_rps' in r]
        if rows:
            out.append('   CloudEvents beside plain HTTP: req/s of the same JSON data POSTed plain, as a '
                       'binary-mode and as a structured-mode CloudEvent (wrk -t2 -c10)')
            out.append(table(['server', *EVENT_REQUESTS, 'binary/plain', 'structured/plain'], rows))
        errors = sum(summary['runtimes'][l]['errors'] for l in ('python', 'nodejs'))
        if errors:
            out.append(f'   WARNING: wrk saw {errors} non-2xx responses or socket errors')
        out.append('')
        out.append('   Kyma reference figures, NOT measured in this run (peers.md, another day, same kind of machine):')
        rows = []
        for lang in ('python', 'nodejs'):
            ref, r = KYMA_REFERENCE[lang], summary['runtimes'][lang]
            rows.append([ref['name'], fmt(ref['rps'], 0), fmt(ref['p50_ms'], 2),
                         f'{r["kyma_over_bare_ref"]:.3f} of bare {ref["bare_rps"]:,.0f}',
                         f'{r["x_kyma_normalized"]:.1f}x', f'{r["x_kyma_absolute"]:.1f}x'])
        out.append(table(['reference', 'req/s', 'p50 ms', 'vs its bare server',
                          'fnbuild/Kyma normalized', 'fnbuild/Kyma absolute'], rows))
        out.append('   normalized = (fnbuild runtime / bare, here) / (Kyma / bare, in peers.md)')
        out.append('')
    if summary['soak']:
        out.extend(report_soak(results['soak'], summary['soak']))
    if summary['multiarch']:
        m = summary['multiarch']
        rows = [[f'{PLATFORMS[n]} {"first build" if case == "first" else "code-only rebuild"}',
                 fmt(m['seconds'][f'{n}/{case}'], 3), m['ranges'][f'{n}/{case}'],
                 fmt(m['rss_mb'][f'{n}/{case}'], 0)]
                for case in ('first', 'code') for n in PLATFORMS]
        out.append('6. Multi-platform builds (Python + MarkupSafe, pushed; arm64 under qemu-user)')
        out.append(table(['build', 'fnbuild s', '(min-max)', 'MB'], rows))
        out.append(f'   two platforms / one: first build {m["first_two_over_one"]:.2f}x, '
                   f'code-only rebuild {m["code_two_over_one"]:.2f}x')
        out.append('')
    if summary['targets']:
        out.append('Targets')
        out.append(table(['target', 'measured', 'met'],
                         [[name, value, 'YES' if ok else 'NO'] for name, value, ok in summary['targets']]))
    return '\n'.join(out)


def report_soak(soak, summary):
    out = [f'5. Soak: each runtime server for {soak["seconds"]} s under mixed traffic (bench/soak.py; '
           f'FUNC_TIMEOUT={soak["func_timeout_s"]}): 4 keep-alive good clients, a hung call every 2 s, '
           'a malformed request every 0.1 s, 500 slow clients (heads, 1 in 10 bodies, a byte every 2 s), '
           '/healthz every second with a 1 s limit']
    rows = []
    for lang, r in summary.items():
        for kind in ('good', 'hung', 'malformed', 'slow head', 'slow body', 'healthz'):
            k = r['kinds'].get(kind)
            if not k:
                continue
            unexpected = ', '.join(f'{what}: {n}' for what, n in sorted(k['unexpected'].items())) or '-'
            rows.append([lang, kind, str(k['calls']), str(k['expected']), unexpected])
    out.append(table(['runtime', 'traffic', 'calls', 'answered as expected', 'other outcomes'], rows))
    out.append('   expected: good 200 "hello world"; hung 408; malformed a 4xx with a reason; slow clients '
               '408 or closed at their deadline; /healthz 200 within 1 s')
    rows = []
    for lang, r in summary.items():
        def point(p):
            return '-' if p is None else f'{p["rss_mb"]:.1f} MB, {p["threads"]} thr, {p["files"]} fds'
        rows.append([lang, fmt(r['good_per_s'], 0), fmt(r['healthz_worst_ms'], 0), point(r['start']),
                     point(r['warm']), point(r['end']), fmt(r['max_rss_mb'], 1),
                     'running' if r['server_exit'] is None and not r['gone'] else f'EXITED ({r["server_exit"]})'])
    out.append(table(['runtime', 'good req/s', 'worst /healthz ms', 'at start',
                      f'after {soak["seconds"] // 2} s', 'at end', 'max RSS MB', 'server'], rows))
    out.append('')
    return out


def main():
    parser = argparse.ArgumentParser(
        description='Measures fnbuild against buildah, skopeo and bare HTTP servers in one run '
                    'and prints ratios (run as root; see BENCHMARKS.md).')
    parser.add_argument('--runs', type=int, default=3, help='runs per measurement (median); default 3')
    parser.add_argument('--wrk-duration', type=int, default=5, help='seconds per wrk run; default 5')
    parser.add_argument('--push-mb', type=int, default=200, help='random layer of the push test, MB; default 200')
    parser.add_argument('--big-mb', type=int, default=1024,
                        help='file of the memory test, MB; default 1024, 0 skips it')
    parser.add_argument('--quick', action='store_true',
                        help='a fast smoke run: --runs 1 --wrk-duration 2 --push-mb 50 --big-mb 0')
    parser.add_argument('--soak-seconds', type=int, default=240,
                        help='seconds of mixed traffic per runtime server in the soak; default 240')
    parser.add_argument('--runtimes-before', metavar='REV',
                        help='also measure the runtime servers as they were at git revision REV')
    parser.add_argument('--skip', action='append', default=[],
                        choices=['builds', 'push', 'bigmem', 'runtimes', 'soak', 'multiarch'],
                        help='skip a section (repeatable)')
    parser.add_argument('--skip-buildah', action='store_true', help='builds: fnbuild only')
    parser.add_argument('--command-timeout', type=int, default=1200,
                        help='seconds any one command may take; default 1200')
    parser.add_argument('--json', metavar='FILE', help='also write the raw samples and summary as JSON')
    parser.add_argument('--keep-temp', action='store_true', help='keep the temporary directory (logs)')
    args = parser.parse_args()
    if args.quick:
        args.runs, args.wrk_duration, args.push_mb, args.big_mb, args.soak_seconds = 1, 2, 50, 0, 30
    if args.runs < 1 or args.runs > 50 or args.wrk_duration < 1 or args.wrk_duration > 120:
        parser.error('--runs must be 1..50 and --wrk-duration 1..120')
    if not 1 <= args.push_mb <= 4096 or not 0 <= args.big_mb <= 8192:
        parser.error('--push-mb must be 1..4096 and --big-mb 0..8192')
    if not 10 <= args.soak_seconds <= 7200:
        parser.error('--soak-seconds must be 10..7200')

    def on_term(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    bench = Bench(args)
    started = time.monotonic()
    try:
        bench.results['settings'] = {k: v for k, v in vars(args).items() if k != 'json'}
        bench.setup()
        if 'builds' not in args.skip:
            for lang in ('python', 'nodejs'):
                bench.bench_builds(lang)
        if 'push' not in args.skip:
            bench.bench_push()
        if 'bigmem' not in args.skip and args.big_mb > 0:
            bench.bench_bigmem()
        if 'runtimes' not in args.skip:
            bench.bench_runtimes()
        if 'soak' not in args.skip:
            bench.bench_soak()
        if 'multiarch' not in args.skip:
            bench.bench_multiarch()
    except BenchError as e:
        log(f'FAILED: {e}')
        bench.cleanup()
        return 1
    except KeyboardInterrupt:
        log('interrupted')
        bench.cleanup()
        return 130
    except BaseException:
        bench.cleanup()
        raise
    bench.cleanup()
    bench.results['machine']['loadavg_end'] = os.getloadavg()
    if args.skip_buildah:
        for samples in bench.results['builds'].values():
            for case, _ in CASES:
                samples['buildah'][case] = []
    summary = summarize(bench.results, args)
    bench.results['total_seconds'] = time.monotonic() - started
    print(report(bench.results, summary, args))
    print(f'\n(total {bench.results["total_seconds"] / 60:.1f} min)')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'results': bench.results, 'summary': summary}, f, indent=2, default=str)
    return 0


if __name__ == '__main__':
    sys.exit(main())
