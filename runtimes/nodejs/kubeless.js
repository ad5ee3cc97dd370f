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
 *   FUNC_HEADER_TIMEOUT   seconds a client has to send a request's head, else 408 (default 10)
 *   FUNC_REQUEST_TIMEOUT  seconds a client has to send a whole request, body included, else 408
 *                         (default 60)
 *   FUNC_MAX_CONNECTIONS  connections open at once (default 3/4 of the open-file limit, at most
 *                         4096); past it the least recently active connection not in a call is
 *                         closed to admit the new one, so /healthz still gets through
 *   FUNC_BLOCKED_TIMEOUT  seconds the event loop may stay blocked (JavaScript that the watchdog
 *                         could not stop at FUNC_TIMEOUT, or FUNC_BLOCKED_TIMEOUT is shorter)
 *                         before the process ends itself so that the platform restarts it
 *                         (default FUNC_TIMEOUT + 2; 0: never)
 *
 * A call that does not settle costs no capacity: after FUNC_TIMEOUT it is answered with 408
 * and forgotten. JavaScript that blocks the event loop for FUNC_TIMEOUT (a handler looping in
 * synchronous code) is stopped, its call answered with 408, and the server goes on, as
 * Kubeless's runtime did. Requests the HTTP parser refuses get a 4xx with the reason as text.
 *
 * Exit status: 0 after SIGTERM/SIGINT, 1 when the handler cannot be loaded or the port
 * cannot be bound, 2 when the configuration is invalid. When the event loop stays blocked past
 * FUNC_BLOCKED_TIMEOUT: killed by SIGKILL (status 137 in a container), or, as process 1 of a
 * PID namespace (a container without an init process), where the kernel ignores the SIGKILL a
 * process sends itself, status 137 as well (see the watchdog).
 *
 * Standard library only (no npm packages); runs on Node.js 18, 20 and 22.
 */

const fs = require('node:fs');
const { Worker } = require('node:worker_threads');
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
const CONNECTION = Symbol('fnbuild.connection'); // links a socket to its Connection
const MAX_CONNECTIONS_CAP = 4096; // a slow client holds about 10 KB (up to 16 KB of head): bounds memory
const DEFAULT_FILE_LIMIT = 1024; // assumed when /proc/self/limits cannot be read
// Node.js 18's HTTP parser (llhttp before 8) takes a header name with a space in it
// ("Bad Header: 1"), which later ones refuse: onRequest refuses it there, with their answer.
const PARSER_TAKES_SPACES_IN_HEADER_NAMES = Number(process.versions.llhttp.split('.')[0]) < 8;

// Set once by configureCalls() before the server starts; read on every call.
let handlerFn;
let handlerOwner;
let handlerLabel;
let functionContext;
let timeoutMs;
let bodyLimitBytes;
let maxConnections;
let requestTimeoutSeconds;
let headerTimeoutSeconds;
let runningCall = null; // the Call whose handler runs synchronously, if any

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
  const cfg = {
    codeDir: path.resolve(env.FNBUILD_CODE_DIR || '/kubeless'),
    moduleName,
    functionName,
    timeoutSeconds: readNumber(env, 'FUNC_TIMEOUT', 180, (n) => n > 0, 'a positive number of seconds'),
    bodyLimitMB: readNumber(env, 'REQ_MB_LIMIT', 100, (n) => n > 0, 'a positive number of megabytes'),
    headerTimeoutSeconds: readNumber(env, 'FUNC_HEADER_TIMEOUT', 10, (n) => n > 0, 'a positive number of seconds'),
    requestTimeoutSeconds: readNumber(env, 'FUNC_REQUEST_TIMEOUT', 60, (n) => n > 0, 'a positive number of seconds'),
    maxConnections: readNumber(env, 'FUNC_MAX_CONNECTIONS', defaultMaxConnections(),
      (n) => Number.isInteger(n) && n > 0, 'a positive whole number'),
    blockedTimeoutSeconds: null, // set below: its default depends on FUNC_TIMEOUT
    port: readPort(env),
    runtime: env.FUNC_RUNTIME,
    memoryLimit: env.FUNC_MEMORY_LIMIT,
  };
  cfg.blockedTimeoutSeconds = readNumber(env, 'FUNC_BLOCKED_TIMEOUT', cfg.timeoutSeconds + 2, (n) => n >= 0,
    'a number of seconds (0: never)');
  return cfg;
}

// 3/4 of the soft open-file limit (the rest is left to the function's own files and
// outgoing connections), at most MAX_CONNECTIONS_CAP.
function defaultMaxConnections() {
  let limit = DEFAULT_FILE_LIMIT;
  try {
    const match = /^Max open files\s+(\d+|unlimited)/m.exec(fs.readFileSync('/proc/self/limits', 'utf8'));
    if (match !== null) limit = match[1] === 'unlimited' ? Infinity : Number(match[1]);
  } catch {
    // not Linux: keep the assumption
  }
  return Math.max(1, Math.min(MAX_CONNECTIONS_CAP, Math.floor(limit * 0.75)));
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
  maxConnections = cfg.maxConnections;
  requestTimeoutSeconds = cfg.requestTimeoutSeconds;
  headerTimeoutSeconds = Math.min(cfg.headerTimeoutSeconds, cfg.requestTimeoutSeconds);
  functionContext = {
    'function-name': cfg.functionName,
    timeout: cfg.timeoutSeconds,
    runtime: cfg.runtime,
    'memory-limit': cfg.memoryLimit,
  };
}

function onRequest(req, res) {
  // Node's own check (requireHostHeader) would answer 400 without saying why.
  if (req.headers.host === undefined && req.httpVersionMajor === 1 && req.httpVersionMinor === 1) {
    res.setHeader('Connection', 'close');
    sendPlain(res, 400, 'Bad Request: an HTTP/1.1 request must have a Host header');
    return;
  }
  if (PARSER_TAKES_SPACES_IN_HEADER_NAMES && hasSpaceInHeaderName(req.rawHeaders)) {
    closeConnection(req.socket, '400 Bad Request: Invalid header token (HPE_INVALID_HEADER_TOKEN)');
    return;
  }
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
  callStarted(req.socket);
  call.startedAt = performance.now();
  let result;
  if (runningCall !== null) answerUnwoundCall();
  runningCall = call; // until the handler returns: the call a blocked loop is stopped for
  try {
    result = handlerFn.call(handlerOwner, event, functionContext);
  } catch (err) {
    runningCall = null;
    fail(call, err);
    return;
  }
  runningCall = null;
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

// The timer bounds asynchronous work; a call that blocks the event loop past the timeout is
// stopped by the watchdog (see there).
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
  callEnded(call.req.socket);
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
  markRequestDone(res.socket);
  res.writeHead(status, { 'Content-Type': TYPE_TEXT, 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

function sendMetrics(res) {
  const text = renderMetrics();
  markRequestDone(res.socket);
  res.writeHead(200, { 'Content-Type': TYPE_METRICS, 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

// ---------------------------------------------------------------------------
// Connections: at most maxConnections open. Those not in a call are kept in `spare`, least
// recently active first; when a new connection would exceed the cap, the first of them is
// closed (an idle keep-alive connection, or a slow client still sending its request). When
// every connection is in a call, the new one is refused with 503 instead: the calls free
// their connections by FUNC_TIMEOUT at the latest.

class Connection {
  constructor(socket) {
    this.socket = socket;
    this.calls = 0; // calls in progress (more than one only with pipelining)
    this.bytesAnswered = 0; // socket.bytesRead when the last response was sent
  }
}

const spare = new Map(); // socket -> Connection, not in a call, least recently active first
let openConnections = 0;

function onConnection(socket) {
  const connection = new Connection(socket);
  socket[CONNECTION] = connection;
  openConnections++;
  spare.set(socket, connection);
  socket.once('close', onConnectionClose);
  if (openConnections > maxConnections) {
    const oldest = spare.keys().next().value; // the new socket itself when all others are in calls
    const text = `503 Service Unavailable: the server has its maximum of ${maxConnections} connections ` +
      'open (FUNC_MAX_CONNECTIONS)';
    if (oldest === socket) {
      socket.write(rawResponse(`${text}, all in calls`));
      socket.destroy();
    } else {
      closeConnection(oldest, text);
    }
  }
}

function onConnectionClose() { // `this` is the socket
  openConnections--;
  spare.delete(this);
}

function callStarted(socket) {
  const connection = socket == null ? undefined : socket[CONNECTION];
  if (connection !== undefined && connection.calls++ === 0) spare.delete(socket);
}

function callEnded(socket) {
  const connection = socket == null ? undefined : socket[CONNECTION];
  if (connection === undefined) return;
  connection.bytesAnswered = socket.bytesRead;
  if (--connection.calls === 0 && !socket.destroyed) spare.set(socket, connection); // now the most recent
}

function markRequestDone(socket) {
  const connection = socket == null ? undefined : socket[CONNECTION];
  if (connection !== undefined) connection.bytesAnswered = socket.bytesRead;
}

// Whether the client has sent (part of) a request that has not been answered yet.
// Whether a name of `rawHeaders` ([name, value, name, value, ...]) holds a space.
function hasSpaceInHeaderName(rawHeaders) {
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if (rawHeaders[i].includes(' ')) return true;
  }
  return false;
}

function isMidRequest(socket) {
  const connection = socket[CONNECTION];
  const res = socket._httpMessage;
  return (res != null && !res.headersSent) || connection === undefined || socket.bytesRead > connection.bytesAnswered;
}

// Closes a connection, first answering the request under way, if any, with `text`
// ("<status code> <reason phrase>: <why>").
function closeConnection(socket, text) {
  if (socket.writable && isMidRequest(socket)) {
    const res = socket._httpMessage;
    if (res == null || !res.headersSent) socket.write(rawResponse(text));
  }
  spare.delete(socket); // not to be picked again before its 'close' event
  socket.destroy();
}

function rawResponse(text) {
  const status = text.slice(0, 3);
  const reason = text.slice(4, text.indexOf(':'));
  return `HTTP/1.1 ${status} ${reason}\r\nConnection: close\r\nContent-Type: ${TYPE_TEXT}\r\n` +
    `Content-Length: ${Buffer.byteLength(text) - 4}\r\n\r\n${text.slice(4)}`;
}

// Requests the HTTP parser refuses, and requests not received in time. Node would answer
// without saying why; a client that sent nothing is closed without an answer.
function onClientError(err, socket) {
  if (err.code === 'ECONNRESET' || !socket.writable || !isMidRequest(socket)) {
    socket.destroy();
    return;
  }
  let text;
  if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
    text = socket._httpMessage == null
      ? `408 Request Timeout: the request head was not received within ${headerTimeoutSeconds}s (FUNC_HEADER_TIMEOUT)`
      : `408 Request Timeout: the request was not received within ${requestTimeoutSeconds}s (FUNC_REQUEST_TIMEOUT)`;
  } else if (err.code === 'HPE_HEADER_OVERFLOW') {
    text = `431 Request Header Fields Too Large: the request head exceeds ${http.maxHeaderSize} bytes`;
  } else {
    text = `400 Bad Request: ${typeof err.reason === 'string' ? err.reason : 'malformed request'}` +
      `${typeof err.code === 'string' && err.code.startsWith('HPE_') ? ` (${err.code})` : ''}`;
  }
  closeConnection(socket, text);
}

function onConnect(req, socket) {
  closeConnection(socket, '405 Method Not Allowed: CONNECT is not supported');
}

// ---------------------------------------------------------------------------
// Watchdog: a call running synchronous code blocks the event loop, so no timer, no other
// call and no /healthz can run. A worker thread sees the main thread's heartbeat stop.
//
// After FUNC_TIMEOUT it stops the JavaScript that blocks: an inspector session on the main
// thread (connectToMainThread: no --inspect, no port; opened only then, so it costs nothing
// before) sends Runtime.terminateExecution, which V8 takes at the loop's next iteration or
// call and which unwinds the whole stack, try/finally included, back to the event loop. The
// worker then tells the main thread, which answers the stopped call 408 (answerUnwoundCall;
// a call stopped in a promise continuation gets its 408 from its timer) and closes its
// connection: its HTTP parser was stopped in mid-callback. Kubeless's runtime bounded calls
// the same way with a vm timeout, which costs a thread per call (35-70 us each, measured:
// more than a whole hello request); this costs nothing per call. The function's module
// state is left as the stopped code left it, as it was in Kubeless.
//
// If the loop is still blocked at FUNC_BLOCKED_TIMEOUT (the stop did not take: the thread is
// blocked outside JavaScript; or FUNC_BLOCKED_TIMEOUT was set below FUNC_TIMEOUT), the worker
// ends the process, once:
// - As an ordinary process, with SIGKILL: a blocked main thread cannot run a signal handler,
//   and SIGKILL needs none, whatever the main thread is doing.
// - As process 1 of a PID namespace (a container without an init process; process.pid is 1
//   there and only there), the kernel drops the signals the process sends itself that it has
//   no handler for, SIGKILL included. No worker thread can end the whole process on its own
//   (process.exit() there ends only the worker; process.abort() does not exist there), so the
//   main thread is made to exit: an inspector session on it (connectToMainThread: no
//   --inspect, no port) evaluates process.reallyExit(), the native exit that process.exit()
//   ends with, without the 'exit' listeners of the function's code. The inspector dispatches
//   it on a V8 interrupt, which running JavaScript takes at its next loop iteration or call
//   (a backtracking regular expression and Atomics.wait as well), so a loop that never
//   returns ends there. The session is opened only once
//   the loop is blocked, so it costs nothing before; Node prints "Waiting for the debugger to
//   disconnect..." as it exits with it open. A main thread blocked outside JavaScript (a
//   synchronous system call, a child process waited for) takes the interrupt only when that
//   returns: the watchdog says so, and the platform's liveness probe (/healthz) is left to
//   restart the function.

const BLOCKED_EXIT_STATUS = 137; // what a container killed by SIGKILL reports: the same either way
const EXIT_SILENCE_MS = 10 * 1000; // how long the main thread may take to exit before it is said

const WATCHDOG_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const fs = require('node:fs');
const { Session } = require('node:inspector');
const { beat, stopMs, limitMs, tickMs, message, stuckMessage, exitStatus, exitSilenceMs } = workerData;
let last = Atomics.load(beat, 0);
let previousTick = performance.now();
let staleSince = previousTick;
let stopped = false; // this block was stopped already
let exiting = null; // the session the exit was sent on, kept until the process is gone
function onMainThread(method, params, then) {
  const session = new Session();
  session.connectToMainThread();
  session.post(method, params, then ? () => then(session) : undefined);
  return session;
}
const watch = setInterval(() => {
  const now = performance.now();
  const paused = now - previousTick > tickMs + 1000; // this thread did not run either
  previousTick = now;
  const current = Atomics.load(beat, 0);
  if (current !== last || paused) {
    last = current;
    staleSince = now;
    stopped = false;
    return;
  }
  const blocked = now - staleSince;
  if (blocked >= limitMs) {
    clearInterval(watch);
    fs.writeSync(2, message);
    if (process.pid !== 1) {
      process.kill(process.pid, 'SIGKILL');
      return;
    }
    exiting = onMainThread('Runtime.evaluate', { expression: 'process.reallyExit(' + exitStatus + ')' });
    setTimeout(() => fs.writeSync(2, stuckMessage), exitSilenceMs);
  } else if (blocked >= stopMs && !stopped) {
    stopped = true;
    onMainThread('Runtime.terminateExecution', {}, (session) => {
      session.disconnect();
      parentPort.postMessage('stopped');
    });
  }
}, tickMs);
`;

function startWatchdog(cfg) {
  const stopMs = timeoutMs;
  const limitMs = cfg.blockedTimeoutSeconds === 0 ? Infinity : cfg.blockedTimeoutSeconds * 1000;
  const tickMs = Math.max(10, Math.min(250, Math.floor(Math.min(stopMs, limitMs) / 4)));
  const beat = new Int32Array(new SharedArrayBuffer(4));
  setInterval(() => Atomics.add(beat, 0, 1), tickMs).unref();
  const message = `${LOG_PREFIX} the event loop has been blocked for ${cfg.blockedTimeoutSeconds}s ` +
    '(FUNC_BLOCKED_TIMEOUT): a call runs synchronous code that does not return; ' +
    'exiting so that the function is restarted\n';
  const stuckMessage = `${LOG_PREFIX} the main thread has not exited in ${EXIT_SILENCE_MS / 1000}s: it is ` +
    'blocked outside JavaScript (a synchronous system call or child process), and as process 1 of its ' +
    'PID namespace the runtime cannot kill itself; the liveness probe (/healthz) has to restart it, ' +
    'or run the container with an init process\n';
  const worker = new Worker(WATCHDOG_SOURCE, {
    eval: true,
    workerData: {
      beat, stopMs, limitMs, tickMs, message, stuckMessage, exitStatus: BLOCKED_EXIT_STATUS, exitSilenceMs: EXIT_SILENCE_MS,
    },
  });
  worker.unref();
  worker.on('message', () => {
    console.error(`${LOG_PREFIX} stopped JavaScript that blocked the event loop for ${cfg.timeoutSeconds}s ` +
      '(FUNC_TIMEOUT); the server goes on serving');
    answerUnwoundCall();
  });
  worker.on('error', (err) => console.error(`${LOG_PREFIX} watchdog failed: ${formatError(err)}`));
}

// A call whose handler was stopped while it ran (its code never returned to invoke) gets the
// timeout's 408. Checked when the watchdog reports a stop, and before the next call.
// Its connection is closed after the answer: its HTTP parser was stopped in mid-request too.
function answerUnwoundCall() {
  const call = runningCall;
  runningCall = null;
  if (call === null || call.settled) return;
  call.res.shouldKeepAlive = false;
  onTimeout(call);
}

// ---------------------------------------------------------------------------
// Server

function serve(cfg) {
  const server = http.createServer({
    headersTimeout: Math.round(Math.min(headerTimeoutSeconds * 1000, MAX_TIMER_MS)),
    requestTimeout: Math.round(Math.min(requestTimeoutSeconds * 1000, MAX_TIMER_MS)),
    keepAliveTimeout: KEEP_ALIVE_MS, // an idle connection is closed after it; no request is under way
    // How often the request deadlines are checked.
    connectionsCheckingInterval: Math.round(Math.max(50, Math.min(1000, headerTimeoutSeconds * 250))),
    requireHostHeader: false, // checked in onRequest, answered with a reason
  }, onRequest);
  server.on('connection', onConnection);
  server.on('clientError', onClientError);
  server.on('connect', onConnect);
  server.on('error', (err) => {
    if (!server.listening) exitWith(1, `${LOG_PREFIX} cannot listen on port ${cfg.port}: ${err.message}`);
    console.error(`${LOG_PREFIX} server error: ${formatError(err)}`);
  });
  server.listen(cfg.port, () => {
    console.log(`fnbuild nodejs runtime: serving ${handlerLabel} on :${server.address().port} ` +
      `(timeout ${cfg.timeoutSeconds}s)`);
    startWatchdog(cfg);
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
