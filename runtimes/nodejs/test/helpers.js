'use strict';

// What the tests of the Node.js runtime share: fixture code directories, and running the real
// server (runtimes/nodejs/kubeless.js) as a child process and talking to it over HTTP.

const assert = require('node:assert/strict');
const { spawn, execFileSync } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const RUNTIME = path.resolve(__dirname, '..', 'kubeless.js');

let codeDir; // the code directory servers run on unless their env says otherwise

// A command running its arguments as process 1 of a new PID namespace (util-linux's unshare;
// --kill-child ends that process with unshare; the runtime needs no /proc of its own, which
// cannot be mounted in the chroot of tests/support/in-rootfs.sh), or why it cannot be run
// here: it needs root.
const PROCESS_ONE = { command: 'unshare', args: ['--pid', '--fork', '--kill-child'] };
PROCESS_ONE.unavailable = (() => {
  if (process.getuid() !== 0) return 'a PID namespace needs root';
  try {
    execFileSync(PROCESS_ONE.command, [...PROCESS_ONE.args, 'true'], { stdio: 'ignore' });
    return false;
  } catch (err) {
    return `cannot run ${PROCESS_ONE.command} ${PROCESS_ONE.args.join(' ')}: ${err.message}`;
  }
})();

// Writes `files` (path -> source) to a new temporary directory, kept out of test/ so that
// `node --test` does not take them for test files: the code directory of the servers started
// from then on. Returns its path.
function writeFixtures(files) {
  codeDir = fs.mkdtempSync(path.join(os.tmpdir(), 'fnbuild-nodejs-test-'));
  for (const [name, source] of Object.entries(files)) {
    const file = path.join(codeDir, name);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, source);
  }
  return codeDir;
}

async function waitFor(check, what, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

// Runs the runtime with only the given environment (plus PATH); `fileLimit` sets its
// open-file limit (ulimit -n) through a shell; `processOne` runs it as process 1 of a PID
// namespace of its own, as in a container (see PROCESS_ONE).
function spawnRuntime(env, { fileLimit, processOne } = {}) {
  const [command, args] = processOne
    ? [PROCESS_ONE.command, [...PROCESS_ONE.args, process.execPath, RUNTIME]]
    : fileLimit === undefined
      ? [process.execPath, [RUNTIME]]
      : ['/bin/sh', ['-c', `ulimit -n ${fileLimit} && exec "$0" "$1"`, process.execPath, RUNTIME]];
  const child = spawn(command, args, {
    env: { PATH: process.env.PATH, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const proc = { child, stdout: '', stderr: '', port: 0 };
  child.stdout.setEncoding('utf8').on('data', (text) => { proc.stdout += text; });
  child.stderr.setEncoding('utf8').on('data', (text) => { proc.stderr += text; });
  proc.exited = new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal })));
  return proc;
}

// Starts a server (on a free port unless the env says otherwise) and waits until /healthz answers.
async function startServer(env, options) {
  const proc = spawnRuntime({ FNBUILD_CODE_DIR: codeDir, PORT: '0', ...env }, options);
  const exitedEarly = proc.exited.then(({ code }) => {
    throw new Error(`runtime exited with ${code}: ${proc.stderr}`);
  });
  const started = waitFor(() => /serving \S+ on :(\d+)/.exec(proc.stdout), 'the startup line');
  const match = await Promise.race([started, exitedEarly]);
  proc.port = Number(match[1]);
  await waitFor(async () => {
    const res = await request(proc.port, { path: '/healthz' }).catch(() => null);
    return res !== null && res.status === 200;
  }, '/healthz');
  return proc;
}

async function stopServer(proc) {
  if (proc && proc.child.exitCode === null && proc.child.signalCode === null) {
    proc.child.kill('SIGKILL');
    await proc.exited;
  }
}

async function runToExit(env) {
  const proc = spawnRuntime({ FNBUILD_CODE_DIR: codeDir, PORT: '0', ...env });
  const { code } = await proc.exited;
  return { code, stderr: proc.stderr };
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

// One HTTP request; `chunks` sends the body in pieces (chunked transfer encoding).
function request(port, { method = 'GET', path: urlPath = '/', headers = {}, body, chunks, agent = false } = {}) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const req = http.request({ host: '127.0.0.1', port, method, path: urlPath, headers, agent }, (res) => {
      const parts = [];
      res.on('data', (part) => parts.push(part));
      res.on('error', reject);
      res.on('end', () => resolve({
        status: res.statusCode,
        headers: res.headers,
        body: Buffer.concat(parts).toString('utf8'),
        elapsedMs: Date.now() - started,
        reusedSocket: req.reusedSocket,
      }));
    });
    req.on('error', reject);
    for (const chunk of chunks || []) req.write(chunk);
    req.end(body);
  });
}

// Sends raw bytes on a new connection; resolves with all the server sent once it closes the
// connection (or `giveUpMs` passes: `closed` says which).
function rawExchange(port, data, giveUpMs = 10000) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () => { if (data) socket.write(data); });
    const parts = [];
    let error = null;
    const timer = setTimeout(() => socket.destroy(), giveUpMs);
    socket.on('data', (part) => parts.push(part));
    socket.on('error', (err) => { error = err; });
    socket.on('close', () => {
      clearTimeout(timer);
      const text = Buffer.concat(parts).toString('latin1');
      if (text === '' && error !== null && error.code !== 'ECONNRESET') reject(error);
      else resolve({ text, closed: Date.now() });
    });
  });
}

// The status code and body of a raw HTTP response.
function parseRaw(text) {
  const match = /^HTTP\/1\.1 (\d{3}) [^\r]*\r\n([\s\S]*?)\r\n\r\n([\s\S]*)$/.exec(text);
  assert.ok(match, `an HTTP response: ${JSON.stringify(text.slice(0, 200))}`);
  return { status: Number(match[1]), head: match[2], body: match[3] };
}

function json(res) {
  assert.match(res.headers['content-type'], /^application\/json/);
  return JSON.parse(res.body);
}

async function scrapeMetrics(port) {
  const res = await request(port, { path: '/metrics' });
  assert.equal(res.status, 200);
  assert.equal(res.headers['content-type'], 'text/plain; version=0.0.4; charset=utf-8');
  return { text: res.body, samples: parseMetrics(res.body) };
}

// Sample name with labels -> value; absent samples count as 0.
function parseMetrics(text) {
  const samples = new Map();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const space = line.lastIndexOf(' ');
    samples.set(line.slice(0, space), Number(line.slice(space + 1)));
  }
  return { get: (name) => samples.get(name) || 0 };
}


module.exports = {
  PROCESS_ONE,
  writeFixtures,
  waitFor,
  startServer,
  stopServer,
  runToExit,
  freePort,
  request,
  rawExchange,
  parseRaw,
  json,
  scrapeMetrics,
};
