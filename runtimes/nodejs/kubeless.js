'use strict';

/*
 * fnbuild Node.js runtime: the HTTP server that runs a Kubeless-style function.
 *
 * An fnbuild image starts it as `node /opt/fnbuild/runtime/kubeless.js`. It loads
 * `<FNBUILD_CODE_DIR>/<MOD_NAME>` (a .js, .cjs or .mjs file, or a directory with
 * index.js), takes its exported function FUNC_HANDLER and calls it as
 * `handler(event, context)` for every request except `GET /healthz` (liveness) and
 * `GET /metrics` (Prometheus text format 0.0.4).
 *
 * Environment:
 *   FNBUILD_CODE_DIR   directory with the user's code and its node_modules (default /kubeless)
 *   MOD_NAME           module to load, FUNC_HANDLER: name of the exported function (required)
 *   FUNC_TIMEOUT       seconds a call may take before it is answered with 408 (default 180)
 *   FUNC_RUNTIME, FUNC_MEMORY_LIMIT   passed to the function in its context
 *   PORT, else FUNC_PORT   port to listen on, all interfaces (default 8080)
 *   REQ_MB_LIMIT       largest accepted request body in MB, larger ones get 413 (default 100)
 *
 * Exit status: 0 after SIGTERM/SIGINT, 1 when the handler cannot be loaded or the port
 * cannot be bound, 2 when the configuration is invalid.
 *
 * Standard library only (no npm packages); runs on Node.js 18, 20 and 22.
 */

const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { randomUUID } = require('node:crypto');
const { pathToFileURL } = require('node:url');
const { inspect } = require('node:util');

const LOG_PREFIX = 'fnbuild runtime:';
const KEEP_ALIVE_MS = 65 * 1000; // above the idle timeouts of common proxies and load balancers (60 s)
const SHUTDOWN_GRACE_MS = 5 * 1000;
const MAX_TIMER_MS = 2 ** 31 - 1; // setTimeout's largest delay
const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const EMPTY_BODY = Buffer.alloc(0);
const TYPE_HTML = 'text/html; charset=utf-8';
const TYPE_JSON = 'application/json';
const TYPE_BINARY = 'application/octet-stream';
const TYPE_TEXT = 'text/plain; charset=utf-8';
const TYPE_METRICS = 'text/plain; version=0.0.4; charset=utf-8';
const CALL = Symbol('fnbuild.call'); // links a request to its Call while the body is read

// Set once by configureCalls() before the server starts; read on every call.
let handlerFn;
let handlerOwner;
let handlerLabel;
let functionContext;
let timeoutMs;
let bodyLimitBytes;

// ---------------------------------------------------------------------------
// Configuration

function exitWith(status, message) {
  process.stderr.write(`${message}\n`);
  process.exit(status);
}

function readConfig(env) {
  const moduleName = env.MOD_NAME;
  const functionName = env.FUNC_HANDLER;
  if (!moduleName || !functionName) {
    const missing = [moduleName ? '' : 'MOD_NAME', functionName ? '' : 'FUNC_HANDLER'].filter(Boolean);
    exitWith(2, `${LOG_PREFIX} ${missing.join(' and ')} must be set ` +
      '(the handler is MOD_NAME.FUNC_HANDLER, e.g. MOD_NAME=hello FUNC_HANDLER=handler)');
  }
  return {
    codeDir: path.resolve(env.FNBUILD_CODE_DIR || '/kubeless'),
    moduleName,
    functionName,
    timeoutSeconds: readNumber(env, 'FUNC_TIMEOUT', 180, (n) => n > 0, 'a positive number of seconds'),
    bodyLimitMB: readNumber(env, 'REQ_MB_LIMIT', 100, (n) => n > 0, 'a positive number of megabytes'),
    port: readPort(env),
    runtime: env.FUNC_RUNTIME,
    memoryLimit: env.FUNC_MEMORY_LIMIT,
  };
}

function readNumber(env, name, fallback, isValid, expected) {
  const raw = env[name];
  if (raw === undefined || raw.trim() === '') return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || !isValid(value)) {
    exitWith(2, `${LOG_PREFIX} invalid ${name}=${JSON.stringify(raw)}: expected ${expected}`);
  }
  return value;
}

function readPort(env) {
  const name = env.PORT ? 'PORT' : 'FUNC_PORT';
  const isPort = (n) => Number.isInteger(n) && n >= 0 && n <= 65535;
  return readNumber(env, name, 8080, isPort, 'a port number (0-65535)');
}

// ---------------------------------------------------------------------------
// Loading the user's function

async function loadHandler(cfg) {
  const label = `${LOG_PREFIX} cannot load handler '${cfg.moduleName}.${cfg.functionName}':`;
  const file = findModuleFile(cfg.codeDir, cfg.moduleName);
  if (file === null) {
    exitWith(1, `${label} no module '${cfg.moduleName}' in ${cfg.codeDir} (${describeDir(cfg.codeDir)})`);
  }
  let exported;
  try {
    exported = await loadModule(file);
  } catch (err) {
    exitWith(1, `${label} loading module '${cfg.moduleName}' (${file}) failed:\n${formatError(err)}`);
  }
  const target = findFunction(exported, cfg.functionName);
  if (target === null) {
    exitWith(1, `${label} module '${cfg.moduleName}' has no function '${cfg.functionName}' ` +
      `(exports found: ${listExports(exported)})`);
  }
  return target;
}

// `<dir>/<name>.js`, `.cjs`, `.mjs`, else whatever require() resolves `<dir>/<name>` to
// (an exact file name, or a directory with package.json "main" or index.js).
function findModuleFile(dir, name) {
  const base = path.resolve(dir, name);
  for (const extension of ['.js', '.cjs', '.mjs']) {
    const stat = fs.statSync(base + extension, { throwIfNoEntry: false });
    if (stat !== undefined && stat.isFile()) return base + extension;
  }
  try {
    return require.resolve(base);
  } catch {
    return null;
  }
}

function describeDir(dir) {
  let names;
  try {
    names = fs.readdirSync(dir).sort();
  } catch (err) {
    return err.code === 'ENOENT' ? 'the directory does not exist' : `cannot list it: ${err.message}`;
  }
  if (names.length === 0) return 'the directory is empty';
  const shown = names.slice(0, 20).join(', ');
  return `files: ${shown}${names.length > 20 ? `, ... (${names.length} in all)` : ''}`;
}

// CommonJS first; ES modules (.mjs, or .js under "type": "module") through import().
async function loadModule(file) {
  if (file.endsWith('.mjs')) return import(pathToFileURL(file).href);
  try {
    return require(file);
  } catch (err) {
    if (err.code !== 'ERR_REQUIRE_ESM' && err.code !== 'ERR_REQUIRE_ASYNC_MODULE') throw err;
    return import(pathToFileURL(file).href);
  }
}

// The function is a named export; an ES module's default export object is searched too.
function findFunction(exported, name) {
  for (const owner of [exported, exported && exported.default]) {
    if (owner != null && typeof owner[name] === 'function') return { fn: owner[name], owner };
  }
  return null;
}

function listExports(exported) {
  const isObject = exported !== null && (typeof exported === 'object' || typeof exported === 'function');
  const names = isObject ? Object.keys(exported) : [];
  return names.length > 0 ? names.join(', ') : 'none';
}

function formatError(err) {
  return err !== null && typeof err === 'object' && typeof err.stack === 'string' ? err.stack : inspect(err);
}

// ---------------------------------------------------------------------------
// Metrics: calls, failures and durations per HTTP method

class MethodStats {
  constructor() {
    this.calls = 0;
    this.failures = 0;
    this.observed = 0;
    this.durationSum = 0;
    this.bucketCounts = new Array(DURATION_BUCKETS.length).fill(0); // not cumulative
  }

  observe(seconds) {
    this.observed++;
    this.durationSum += seconds;
    for (let i = 0; i < DURATION_BUCKETS.length; i++) {
      if (seconds <= DURATION_BUCKETS[i]) {
        this.bucketCounts[i]++;
        return;
      }
    }
  }
}

const statsByMethod = new Map();

function statsFor(method) {
  let stats = statsByMethod.get(method);
  if (stats === undefined) {
    stats = new MethodStats();
    statsByMethod.set(method, stats);
  }
  return stats;
}

function renderMetrics() {
  const calls = [];
  const failures = [];
  const durations = [];
  for (const [method, stats] of statsByMethod) {
    const label = `method="${method}"`;
    calls.push(`function_calls_total{${label}} ${stats.calls}`);
    failures.push(`function_failures_total{${label}} ${stats.failures}`);
    let cumulative = 0;
    DURATION_BUCKETS.forEach((le, i) => {
      cumulative += stats.bucketCounts[i];
      durations.push(`function_duration_seconds_bucket{${label},le="${le}"} ${cumulative}`);
    });
    durations.push(
      `function_duration_seconds_bucket{${label},le="+Inf"} ${stats.observed}`,
      `function_duration_seconds_sum{${label}} ${stats.durationSum}`,
      `function_duration_seconds_count{${label}} ${stats.observed}`,
    );
  }
  return [
    '# HELP function_calls_total Number of calls to the function.',
    '# TYPE function_calls_total counter',
    ...calls,
    '# HELP function_failures_total Number of calls that failed (error, rejection or timeout).',
    '# TYPE function_failures_total counter',
    ...failures,
    '# HELP function_duration_seconds Duration of the function calls in seconds.',
    '# TYPE function_duration_seconds histogram',
    ...durations,
    '',
  ].join('\n');
}

// ---------------------------------------------------------------------------
// Calls: one per request that reaches the handler

class Call {
  constructor(req, res) {
    this.req = req;
    this.res = res;
    this.chunks = null;
    this.bodySize = 0;
    this.rejected = false; // body over the limit, 413 sent
    this.stats = null;
    this.startedAt = 0;
    this.timer = null;
    this.settled = false; // answered (result, error or timeout); later outcomes are ignored
  }
}

function configureCalls(cfg, target) {
  handlerFn = target.fn;
  handlerOwner = target.owner;
  handlerLabel = `${cfg.moduleName}.${cfg.functionName}`;
  timeoutMs = Math.min(cfg.timeoutSeconds * 1000, MAX_TIMER_MS);
  bodyLimitBytes = Math.floor(cfg.bodyLimitMB * 1024 * 1024);
  functionContext = {
    'function-name': cfg.functionName,
    timeout: cfg.timeoutSeconds,
    runtime: cfg.runtime,
    'memory-limit': cfg.memoryLimit,
  };
}

function onRequest(req, res) {
  if (req.method === 'GET') {
    if (isPath(req.url, '/healthz')) {
      sendPlain(res, 200, 'OK');
      return;
    }
    if (isPath(req.url, '/metrics')) {
      sendMetrics(res);
      return;
    }
  }
  const call = new Call(req, res);
  const headers = req.headers;
  const length = headers['content-length'];
  if (length === undefined && headers['transfer-encoding'] === undefined) {
    invoke(call, EMPTY_BODY); // no body: do not wait for the request stream
  } else if (Number(length) > bodyLimitBytes) {
    rejectTooLarge(call);
  } else {
    call.chunks = [];
    req[CALL] = call;
    req.on('data', onBodyChunk);
    req.on('end', onBodyEnd);
  }
}

// `url` is the path, optionally followed by a query string.
function isPath(url, wanted) {
  return url === wanted || (url.startsWith(wanted) && url.charCodeAt(wanted.length) === 63 /* ? */);
}

// Listeners of the request stream (`this` is the request).
function onBodyChunk(chunk) {
  const call = this[CALL];
  if (call.rejected) return;
  call.bodySize += chunk.length;
  if (call.bodySize > bodyLimitBytes) {
    rejectTooLarge(call);
  } else {
    call.chunks.push(chunk);
  }
}

function onBodyEnd() {
  const call = this[CALL];
  if (call.rejected) return;
  const chunks = call.chunks;
  invoke(call, chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, call.bodySize));
}

function rejectTooLarge(call) {
  call.rejected = true;
  call.chunks = null;
  // The rest of the body is not read, so the connection cannot be reused.
  call.res.setHeader('Connection', 'close');
  sendPlain(call.res, 413, `Payload Too Large: the request body exceeds ${bodyLimitBytes} bytes (REQ_MB_LIMIT)`);
}

function invoke(call, body) {
  const { req, res } = call;
  const headers = req.headers;
  const contentType = headers['content-type'];
  let data;
  try {
    data = decodeBody(contentType, body);
  } catch (err) { // the function is not called, so this is not counted in the metrics
    sendPlain(res, 400, `Bad Request: the body is not valid JSON (${err.message})`);
    return;
  }
  req.body = body;
  const event = {
    data,
    'event-id': headers['event-id'] || randomUUID(),
    'event-type': headers['event-type'] || contentType,
    'event-time': headers['event-time'] || new Date().toISOString(),
    'event-namespace': headers['event-namespace'],
    extensions: { request: req, response: res },
  };
  call.stats = statsFor(req.method);
  call.stats.calls++;
  call.startedAt = performance.now();
  let result;
  try {
    result = handlerFn.call(handlerOwner, event, functionContext);
  } catch (err) {
    fail(call, err);
    return;
  }
  if (result !== null && typeof result === 'object' && typeof result.then === 'function') {
    awaitResult(call, result);
  } else {
    complete(call, result);
  }
}

// `data` is parsed JSON for application/json, a string for textual types (or no type),
// a Buffer otherwise. An empty JSON body gives undefined. Charset parameters are ignored:
// text is decoded as UTF-8.
function decodeBody(contentType, body) {
  const mime = contentType === undefined ? '' : mimeType(contentType);
  if (mime === 'application/json') return body.length === 0 ? undefined : JSON.parse(body.toString('utf8'));
  if (isTextual(mime)) return body.toString('utf8');
  return body;
}

function mimeType(contentType) {
  const semicolon = contentType.indexOf(';');
  return (semicolon === -1 ? contentType : contentType.slice(0, semicolon)).trim().toLowerCase();
}

function isTextual(mime) {
  return mime === '' || mime.startsWith('text/') ||
    mime === 'application/x-www-form-urlencoded' || mime === 'application/xml';
}

// The timeout only bounds asynchronous work: a handler stuck in a synchronous loop blocks
// the event loop, so no timer (and no other request) can run until it returns. Only a
// restart helps then (the liveness probe on /healthz stops answering).
function awaitResult(call, promise) {
  call.timer = setTimeout(onTimeout, timeoutMs, call);
  promise.then((value) => complete(call, value), (err) => fail(call, err));
}

function complete(call, value) {
  if (call.settled) return;
  try {
    sendResult(call.res, value);
  } catch (err) { // a value JSON cannot encode, an invalid status code set by the handler, ...
    fail(call, err);
    return;
  }
  settle(call);
}

function fail(call, err) {
  if (call.settled) return;
  call.stats.failures++;
  console.error(`${LOG_PREFIX} ${handlerLabel} failed on ${call.req.method} ${call.req.url}:\n${formatError(err)}`);
  sendFailure(call.res, 500, 'Internal Server Error');
  settle(call);
}

function onTimeout(call) {
  call.stats.failures++;
  console.error(`${LOG_PREFIX} ${handlerLabel} exceeded its timeout of ${functionContext.timeout}s ` +
    `on ${call.req.method} ${call.req.url}`);
  sendFailure(call.res, 408, 'Request timeout exceeded');
  settle(call);
}

function settle(call) {
  call.settled = true;
  if (call.timer !== null) clearTimeout(call.timer);
  call.stats.observe((performance.now() - call.startedAt) / 1000);
}

// ---------------------------------------------------------------------------
// Responses

// Strings are sent as HTML, bytes as they are, other values as JSON, unless the handler
// chose a content type. Nothing is sent when the handler answered by itself.
function sendResult(res, value) {
  if (res.headersSent || res.writableEnded) return;
  if (typeof value === 'string') {
    sendBody(res, TYPE_HTML, value);
  } else if (value === undefined || value === null) {
    res.end();
  } else if (value instanceof Uint8Array) {
    sendBody(res, TYPE_BINARY, value);
  } else {
    sendBody(res, TYPE_JSON, JSON.stringify(value));
  }
}

function sendBody(res, defaultType, body) {
  if (!res.hasHeader('content-type')) res.setHeader('Content-Type', defaultType);
  res.end(body);
}

// Replaces whatever the handler prepared; a response already under way is cut off so that
// the client sees it is incomplete.
function sendFailure(res, status, message) {
  if (!res.headersSent) {
    for (const name of res.getHeaderNames()) res.removeHeader(name);
    sendPlain(res, status, message);
  } else if (!res.writableEnded) {
    res.destroy();
  }
}

function sendPlain(res, status, text) {
  res.writeHead(status, { 'Content-Type': TYPE_TEXT, 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

function sendMetrics(res) {
  const text = renderMetrics();
  res.writeHead(200, { 'Content-Type': TYPE_METRICS, 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

// ---------------------------------------------------------------------------
// Server

function serve(cfg) {
  const server = http.createServer(onRequest);
  server.keepAliveTimeout = KEEP_ALIVE_MS;
  server.headersTimeout = KEEP_ALIVE_MS + 1000;
  server.on('error', (err) => {
    if (!server.listening) exitWith(1, `${LOG_PREFIX} cannot listen on port ${cfg.port}: ${err.message}`);
    console.error(`${LOG_PREFIX} server error: ${formatError(err)}`);
  });
  server.listen(cfg.port, () => {
    console.log(`fnbuild nodejs runtime: serving ${handlerLabel} on :${server.address().port} ` +
      `(timeout ${cfg.timeoutSeconds}s)`);
  });
  const shutdown = (signal) => stop(server, signal);
  process.once('SIGTERM', shutdown);
  process.once('SIGINT', shutdown);
}

// Stop accepting, let calls in flight finish for a while, then exit. A second signal
// kills the process at once (the handlers are registered with `once`).
function stop(server, signal) {
  console.log(`fnbuild nodejs runtime: ${signal} received, stopping`);
  server.close(() => process.exit(0));
  server.closeIdleConnections();
  // Keep-alive connections become idle as their calls finish.
  setInterval(() => server.closeIdleConnections(), 50);
  setTimeout(() => process.exit(0), SHUTDOWN_GRACE_MS);
}

async function main() {
  const cfg = readConfig(process.env);
  const target = await loadHandler(cfg);
  configureCalls(cfg, target);
  serve(cfg);
}

main().catch((err) => exitWith(1, `${LOG_PREFIX} ${formatError(err)}`));
