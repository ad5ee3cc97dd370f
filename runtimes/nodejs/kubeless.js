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
 *   K_SINK             URL event.emitCloudEvent() publishes to (a Knative SinkBinding or an event
 *                      source's sink sets it)
 *   K_CE_OVERRIDES     JSON {"extensions": {"name": "value"}}: extensions set on every emitted
 *                      CloudEvent (set by a SinkBinding)
 *   K_SERVICE          default source of the CloudEvents the function builds (Knative Serving
 *                      sets it to the Service name; else MOD_NAME.FUNC_HANDLER)
 *
 * The event: `data` (parsed JSON for application/json, a string for text, else a Buffer),
 * `event-id`, `event-type`, `event-time`, `event-namespace` (from the event-* headers, else a
 * random id, the Content-Type and now), and `extensions.request` / `extensions.response`.
 * A CloudEvent (binary mode: ce-* headers; structured mode: Content-Type
 * application/cloudevents+json; spec 1.0 or 0.3) gives those keys its id, type, time and
 * source, every attribute and extension under `ce-<name>` as well, and its data (data_base64
 * as a Buffer); an invalid one is answered 400 without calling the handler, batch mode 415.
 * Two methods, on the prototype (Object.keys and JSON.stringify of the event show the keys only):
 *   event.cloudEvent(type, source, data, attributes)   a CloudEvent 1.0; returned (or resolved)
 *       by the handler, it is the reply: 200 in binary mode (ce-* headers, the data as body)
 *   event.emitCloudEvent(type, source, data, attributes, { sink })   POSTs one in binary mode
 *       to `sink` or K_SINK, with the request's tracing headers; a Promise of its id, rejected
 *       when there is no sink, it cannot be reached or it does not answer 2xx
 * `source` defaults to K_SERVICE; `attributes` (name -> string, number or boolean) may set id,
 * source, time, subject, dataschema, datacontenttype and extensions.
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
const https = require('node:https');
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
let eventSource; // default source of the CloudEvents built
let defaultSink; // K_SINK
let sinkExtensions; // K_CE_OVERRIDES's extensions
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
    sink: env.K_SINK, // checked when an event is emitted: a function that emits none needs none
    sinkExtensions: readCloudEventOverrides(env),
    eventSource: env.K_SERVICE || `${moduleName}.${functionName}`,
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

// K_CE_OVERRIDES, as a SinkBinding sets it: {"extensions": {"name": "value", ...}}.
function readCloudEventOverrides(env) {
  const raw = env.K_CE_OVERRIDES;
  const extensions = {};
  if (raw === undefined || raw.trim() === '') return extensions;
  try {
    const overrides = JSON.parse(raw);
    if (overrides === null || typeof overrides !== 'object' || Array.isArray(overrides)) {
      throw new TypeError('not a JSON object');
    }
    addAttributes(extensions, overrides.extensions);
  } catch (err) {
    exitWith(2, `${LOG_PREFIX} invalid K_CE_OVERRIDES=${JSON.stringify(raw)}: expected JSON of the form ` +
      `{"extensions": {"name": "value"}} (${err.message})`);
  }
  return extensions;
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
  eventSource = cfg.eventSource;
  defaultSink = cfg.sink;
  sinkExtensions = cfg.sinkExtensions;
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
  let event;
  try {
    event = makeEvent(req, res, body);
  } catch (err) { // a RequestError; the function is not called, so this is not counted in the metrics
    sendPlain(res, err.status, err.message);
    return;
  }
  req.body = body;
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

// A request the function is not called for: answered `status` with `message` as text.
class RequestError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// The event a handler gets (see the top of this file). Its methods are on the prototype, so
// that Object.keys(event) and JSON.stringify(event) show the Kubeless keys only.
class FunctionEvent {
  constructor(data, id, type, time, namespace, req, res) {
    this.data = data;
    this['event-id'] = id;
    this['event-type'] = type;
    this['event-time'] = time;
    this['event-namespace'] = namespace;
    this.extensions = { request: req, response: res };
  }

  cloudEvent(type, source, data, attributes) {
    return buildCloudEvent(type, source, data, attributes);
  }

  emitCloudEvent(type, source, data, attributes, options) {
    return publishCloudEvent(this.extensions.request, type, source, data, attributes, options);
  }
}

// The event of a request: a CloudEvent's (see CloudEvents), else Kubeless's from the event-*
// headers. Throws a RequestError for a body or an event that cannot be taken.
function makeEvent(req, res, body) {
  const headers = req.headers;
  const contentType = headers['content-type'];
  const mime = contentType === undefined ? '' : mimeType(contentType);
  if (mime === TYPE_CLOUDEVENT) return structuredCloudEvent(req, res, body);
  if (mime === TYPE_CLOUDEVENT_BATCH) throw new RequestError(415, CLOUDEVENT_BATCH_REFUSAL);
  if (headers['ce-specversion'] !== undefined) return binaryCloudEvent(req, res, mime, body);
  return new FunctionEvent(
    decodeBody(mime, body),
    headers['event-id'] || randomUUID(),
    headers['event-type'] || contentType,
    headers['event-time'] || new Date().toISOString(),
    headers['event-namespace'],
    req,
    res,
  );
}

// `data` is parsed JSON for application/json, a string for textual types (or no type),
// a Buffer otherwise. Charset parameters are ignored: text is decoded as UTF-8.
function decodeBody(mime, body) {
  if (mime === TYPE_JSON) return parseJson(body);
  if (isTextual(mime)) return body.toString('utf8');
  return body;
}

// An empty body gives undefined.
function parseJson(body) {
  if (body.length === 0) return undefined;
  try {
    return JSON.parse(body.toString('utf8'));
  } catch (err) {
    throw new RequestError(400, `Bad Request: the body is not valid JSON (${err.message})`);
  }
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
// CloudEvents (https://github.com/cloudevents/spec, its HTTP protocol binding), in and out,
// for functions that Knative Eventing calls or that publish to it.
//
// In: a request in binary mode (a ce-specversion header: attributes in ce-* headers, the data
// as the body) or structured mode (Content-Type application/cloudevents+json: the whole event
// as JSON), spec 1.0 or 0.3, becomes the event the handler gets: the Kubeless keys from its id,
// type, time and source, each attribute and extension under `ce-<name>` too. An event that
// does not validate is answered 400, batch mode 415, and the handler is not called. Other
// requests pay one header lookup and a media-type comparison (makeEvent).
// Out: event.cloudEvent() builds a CloudEvent 1.0; returned from the handler it is the reply
// (sendCloudEvent); event.emitCloudEvent() POSTs one to the sink. Both in binary mode.

const TYPE_CLOUDEVENT = 'application/cloudevents+json';
const TYPE_CLOUDEVENT_BATCH = 'application/cloudevents-batch+json';
const CLOUDEVENT_BATCH_REFUSAL = `CloudEvents batch mode (${TYPE_CLOUDEVENT_BATCH}) is not supported: ` +
  'send one event per request, in binary or structured mode';
const CLOUDEVENT_VERSIONS = ['1.0', '0.3'];
const CLOUDEVENT_REQUIRED = ['id', 'source', 'specversion', 'type'];
const ATTRIBUTE_NAME = /^[a-z0-9]+$/;
const HEADER_SAFE = /^[!#$&-~]*$/; // U+0021..U+007E but '"' and '%': sent as they are
const ENCODED_HEADER = /[%\u0080-\u00ff]/; // a percent-escape, or raw bytes beyond ASCII
const PERCENT_ESCAPE = /^%[0-9A-Fa-f]{2}/;
const BASE64_CHARACTERS = /^[A-Za-z0-9+/]*={0,2}$/; // and a length that is a multiple of 4
const STRICT_UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const TRACING_HEADERS = ['traceparent', 'tracestate', 'b3', 'x-b3-traceid', 'x-b3-spanid', 'x-b3-parentspanid',
  'x-b3-sampled', 'x-b3-flags'];
const SINK_EXCERPT_CHARS = 200; // of a sink's answer body, in an error
const NO_SINK = 'cannot publish the CloudEvent: no sink: K_SINK is not set (a SinkBinding or an event ' +
  "source's sink sets it) and no sink was given";
const ENCODED_DATA = Symbol('fnbuild.encodedData'); // a CloudEvent's body: its data, encoded

function invalidNameMessage(name) {
  return `invalid CloudEvent attribute name '${name}': names are lower-case letters a-z and digits`;
}

function invalidValueMessage(name) {
  return `invalid value of CloudEvent attribute '${name}': accepted are a string, a number or a boolean`;
}

function missingMessage(name) {
  return `CloudEvent without '${name}': id, source, specversion and type are required`;
}

// The first required attribute missing or empty, if any.
function missingAttribute(attributes) {
  return CLOUDEVENT_REQUIRED.find((name) => attributes[name] === undefined || attributes[name] === '');
}

// ----- In

function binaryCloudEvent(req, res, mime, body) {
  const attributes = binaryAttributes(req.headers);
  checkEnvelope(attributes);
  return kubelessEvent(attributes, isJsonType(mime) ? parseJson(body) : decodeBody(mime, body), req, res);
}

// ce-<name> headers, percent-decoded; datacontenttype is the Content-Type.
function binaryAttributes(headers) {
  const attributes = {};
  for (const header of Object.keys(headers)) {
    if (!header.startsWith('ce-')) continue;
    const name = header.slice(3);
    if (!ATTRIBUTE_NAME.test(name)) throw new RequestError(400, invalidNameMessage(name));
    attributes[name] = percentDecode(name, headers[header]);
  }
  if (headers['content-type'] !== undefined) attributes.datacontenttype = headers['content-type'];
  return attributes;
}

// %XX escapes to bytes, then UTF-8. Node.js gives header values byte for byte (latin1), so
// unescaped UTF-8 is decoded too.
function percentDecode(name, value) {
  if (!ENCODED_HEADER.test(value)) return value;
  const bytes = Buffer.from(value, 'latin1');
  let length = 0;
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i] !== 0x25 /* % */) {
      bytes[length++] = bytes[i];
    } else if (PERCENT_ESCAPE.test(value.slice(i, i + 3))) {
      bytes[length++] = parseInt(value.slice(i + 1, i + 3), 16);
      i += 2;
    } else {
      throw new RequestError(400, `invalid CloudEvent attribute '${name}': malformed percent-escape ` +
        `'${value.slice(i, i + 3)}' in its ce-${name} header`);
    }
  }
  try {
    return STRICT_UTF8.decode(bytes.subarray(0, length));
  } catch {
    throw new RequestError(400, `invalid CloudEvent attribute '${name}': its ce-${name} header is not UTF-8 ` +
      'once percent-decoded');
  }
}

function structuredCloudEvent(req, res, body) {
  const envelope = parseJson(body);
  if (envelope === null || typeof envelope !== 'object' || Array.isArray(envelope)) {
    throw new RequestError(400, 'structured CloudEvent: the body must be a JSON object');
  }
  const attributes = structuredAttributes(envelope);
  checkEnvelope(attributes);
  return kubelessEvent(attributes, structuredData(envelope, attributes), req, res);
}

// The members but data and data_base64; null ones are absent.
function structuredAttributes(envelope) {
  const attributes = {};
  for (const [name, value] of Object.entries(envelope)) {
    if (name === 'data' || name === 'data_base64') continue;
    if (!ATTRIBUTE_NAME.test(name)) throw new RequestError(400, invalidNameMessage(name));
    if (value === null) continue;
    if (!isAttributeValue(value)) throw new RequestError(400, invalidValueMessage(name));
    attributes[name] = value;
  }
  return attributes;
}

// `data` as it is, or bytes: data_base64, or 0.3's data with datacontentencoding base64.
function structuredData(envelope, attributes) {
  const data = envelope.data ?? undefined;
  const base64 = envelope.data_base64 ?? undefined;
  if (data !== undefined && base64 !== undefined) {
    throw new RequestError(400, "structured CloudEvent with both 'data' and 'data_base64': an event has one of them");
  }
  if (base64 !== undefined) return decodeBase64('data_base64', base64);
  const encoding = attributes.datacontentencoding;
  if (data !== undefined && attributes.specversion === '0.3' && String(encoding).toLowerCase() === 'base64') {
    return decodeBase64('data', data);
  }
  return data;
}

function decodeBase64(member, value) {
  if (typeof value !== 'string' || value.length % 4 !== 0 || !BASE64_CHARACTERS.test(value)) {
    throw new RequestError(400, `structured CloudEvent: '${member}' must be a string in base64 ` +
      '(RFC 4648, with its = padding)');
  }
  return Buffer.from(value, 'base64');
}

// The specversion first: the attributes required are those of 1.0 and 0.3.
function checkEnvelope(attributes) {
  const version = attributes.specversion;
  if (version !== undefined && version !== '' && !CLOUDEVENT_VERSIONS.includes(version)) {
    throw new RequestError(400, `unsupported CloudEvents specversion '${version}': accepted are 1.0 and 0.3`);
  }
  const missing = missingAttribute(attributes);
  if (missing !== undefined) throw new RequestError(400, missingMessage(missing));
}

function kubelessEvent(attributes, data, req, res) {
  const time = attributes.time || new Date().toISOString();
  const event = new FunctionEvent(data, attributes.id, attributes.type, time, attributes.source, req, res);
  for (const name of Object.keys(attributes)) event[`ce-${name}`] = attributes[name];
  return event;
}

// application/json, text/json, and any +json suffix (application/cloudevents+json, ...).
function isJsonType(mime) {
  return mime === TYPE_JSON || mime === 'text/json' || mime.endsWith('+json');
}

// ----- Out

// What event.cloudEvent() returns: the attributes and `data` as properties, frozen.
class CloudEvent {
  constructor(attributes, data, encodedData) {
    Object.assign(this, attributes);
    this.data = data;
    Object.defineProperty(this, ENCODED_DATA, { value: encodedData });
    Object.freeze(this);
  }
}

// A CloudEvent 1.0 with a new id, the time now and `extensions` (K_CE_OVERRIDES) over the
// handler's `attributes`. Throws a TypeError for what cannot be sent.
function buildCloudEvent(type, source, data, attributes, extensions) {
  if (typeof type !== 'string' || type === '') {
    throw new TypeError(`the CloudEvent type must be a non-empty string, got ${inspect(type)}`);
  }
  if (source !== undefined && source !== null && (typeof source !== 'string' || source === '')) {
    throw new TypeError(`the CloudEvent source must be a non-empty string (or left out: ${eventSource}), ` +
      `got ${inspect(source)}`);
  }
  const { body, type: contentType } = encodeData(data);
  const fields = {
    specversion: '1.0', id: randomUUID(), source: source ?? eventSource, type, time: new Date().toISOString(),
  };
  if (contentType !== undefined) fields.datacontenttype = contentType;
  addAttributes(fields, attributes);
  Object.assign(fields, extensions);
  const missing = missingAttribute(fields);
  if (missing !== undefined) throw new TypeError(missingMessage(missing));
  return new CloudEvent(fields, data, body);
}

// The body of `data`, and the datacontenttype it has unless the attributes say otherwise.
function encodeData(data) {
  if (data === undefined || data === null) return { body: undefined, type: undefined };
  if (typeof data === 'string') return { body: Buffer.from(data, 'utf8'), type: TYPE_TEXT };
  if (data instanceof Uint8Array) return { body: data, type: TYPE_BINARY };
  return { body: Buffer.from(JSON.stringify(data), 'utf8'), type: TYPE_JSON };
}

// Copies `attributes` (name -> string, number or boolean; null and undefined are left out)
// into `fields`, throwing a TypeError for a name or value a CloudEvent 1.0 cannot have.
function addAttributes(fields, attributes) {
  if (attributes === undefined || attributes === null) return;
  if (typeof attributes !== 'object' || Array.isArray(attributes)) {
    throw new TypeError(`the CloudEvent attributes must be an object of name -> value, got ${inspect(attributes)}`);
  }
  for (const [name, value] of Object.entries(attributes)) {
    if (!ATTRIBUTE_NAME.test(name)) throw new TypeError(invalidNameMessage(name));
    if (value === undefined || value === null) continue;
    if (name === 'data') {
      throw new TypeError("'data' is not a CloudEvent attribute: pass the data as the data argument");
    }
    if (name === 'specversion' && value !== '1.0') {
      throw new TypeError(`the CloudEvent specversion can only be '1.0' (the version built here), ` +
        `got ${inspect(value)}`);
    }
    if (!isAttributeValue(value)) throw new TypeError(invalidValueMessage(name));
    fields[name] = value;
  }
}

// A string, a boolean or a finite number (the CloudEvents String, Boolean, Integer types and
// what a URI, URI-reference or Timestamp is written as).
function isAttributeValue(value) {
  const type = typeof value;
  return type === 'string' || type === 'boolean' || (type === 'number' && Number.isFinite(value));
}

// The HTTP message of `event` in binary mode: every attribute but datacontenttype as a
// percent-encoded ce-* header, datacontenttype as the Content-Type, the data as the body.
function binaryMode(event) {
  const body = event[ENCODED_DATA];
  const headers = {};
  for (const name of Object.keys(event)) {
    if (name !== 'data' && name !== 'datacontenttype') headers[`ce-${name}`] = percentEncode(String(event[name]));
  }
  if (event.datacontenttype !== undefined) headers['content-type'] = String(event.datacontenttype);
  headers['content-length'] = body === undefined ? 0 : body.byteLength;
  return { headers, body };
}

// Space, '"', '%' and what is not printable ASCII, as %XX of its UTF-8 bytes.
function percentEncode(text) {
  if (HEADER_SAFE.test(text)) return text;
  let encoded = '';
  for (const byte of Buffer.from(text, 'utf8')) {
    encoded += byte > 0x20 && byte < 0x7f && byte !== 0x22 && byte !== 0x25
      ? String.fromCharCode(byte)
      : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return encoded;
}

function sendCloudEvent(res, event) {
  const { headers, body } = binaryMode(event);
  res.writeHead(200, headers);
  res.end(body);
}

// event.emitCloudEvent(): POSTs the event to the sink with the tracing headers of `request`.
async function publishCloudEvent(request, type, source, data, attributes, options) {
  const event = buildCloudEvent(type, source, data, attributes, sinkExtensions);
  const sink = resolveSink(options === undefined || options === null ? undefined : options.sink);
  const { headers, body } = binaryMode(event);
  for (const name of TRACING_HEADERS) {
    if (request.headers[name] !== undefined) headers[name] = request.headers[name];
  }
  const answer = await post(sink, headers, body);
  if (answer.status < 200 || answer.status > 299) {
    throw new Error(`the sink ${sink.shown} answered ${answer.status} ${answer.reason}: ${answer.excerpt}`);
  }
  return event.id;
}

// The sink option, else K_SINK, as a URL, and as shown in messages (without its password).
function resolveSink(option) {
  const given = option !== undefined && option !== null && option !== '';
  const text = given ? String(option) : defaultSink;
  if (text === undefined || text === '') throw new Error(NO_SINK);
  const shown = redactCredentials(text);
  let url = null;
  try {
    url = new URL(text);
  } catch {
    // refused below
  }
  if (url === null || (url.protocol !== 'http:' && url.protocol !== 'https:')) {
    throw new Error(`cannot publish the CloudEvent: the sink ${shown} (${given ? 'the sink option' : 'K_SINK'}) ` +
      'is not an http:// or https:// URL');
  }
  return { url, shown };
}

// `user:password@` in a URL (or what was meant as one) as `user:***@`; a user alone, which
// may be a token, as `***@`.
function redactCredentials(text) {
  return text.replace(/^([a-zA-Z][a-zA-Z0-9+.-]*:\/\/)?([^/?#]*)@/, (_, scheme = '', userinfo) => {
    const colon = userinfo.indexOf(':');
    return `${scheme}${colon === -1 ? '***' : `${userinfo.slice(0, colon)}:***`}@`;
  });
}

// The answer's status, reason and the start of its body. A connection error, or no answer
// within FUNC_TIMEOUT, is an Error naming the sink and the cause.
async function post(sink, headers, body) {
  const transport = sink.url.protocol === 'https:' ? https : http;
  const req = transport.request(sink.url, { method: 'POST', headers });
  let timedOut = null;
  const timer = setTimeout(() => {
    timedOut = new Error(`no answer within ${functionContext.timeout}s (FUNC_TIMEOUT)`);
    req.destroy(timedOut);
  }, timeoutMs);
  try {
    const res = await new Promise((resolve, reject) => {
      req.on('response', resolve).on('error', reject).end(body);
    });
    const excerpt = await readExcerpt(res);
    return { status: res.statusCode, reason: res.statusMessage || http.STATUS_CODES[res.statusCode] || '', excerpt };
  } catch (err) {
    const cause = timedOut ?? err;
    throw new Error(`cannot publish the CloudEvent to the sink ${sink.shown}: ${cause.message}`, { cause });
  } finally {
    clearTimeout(timer);
  }
}

// The first SINK_EXCERPT_CHARS characters of a body, which is read to its end.
async function readExcerpt(res) {
  const maxBytes = SINK_EXCERPT_CHARS * 4; // the longest a character is in UTF-8
  const parts = [];
  let size = 0;
  for await (const part of res) {
    if (size < maxBytes) parts.push(part);
    size += part.length;
  }
  return [...Buffer.concat(parts).subarray(0, maxBytes).toString('utf8')].slice(0, SINK_EXCERPT_CHARS).join('');
}

// ---------------------------------------------------------------------------
// Responses

// Strings are sent as HTML, bytes as they are, a CloudEvent in binary mode, other values as
// JSON, unless the handler chose a content type. Nothing is sent when the handler answered by
// itself.
function sendResult(res, value) {
  if (res.headersSent || res.writableEnded) return;
  if (typeof value === 'string') {
    sendBody(res, TYPE_HTML, value);
  } else if (value === undefined || value === null) {
    res.end();
  } else if (value instanceof Uint8Array) {
    sendBody(res, TYPE_BINARY, value);
  } else if (value instanceof CloudEvent) {
    sendCloudEvent(res, value);
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
