'use strict';

// Tests of runtimes/nodejs/kubeless.js: each test talks over HTTP to the real server,
// started as a child process on fixture functions written to a temporary directory
// (see helpers.js). Run from the repository root: node --test runtimes/nodejs/test/*.test.js

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const path = require('node:path');
const {
  PROCESS_ONE, writeFixtures, waitFor, startServer, stopServer, runToExit, freePort, request, rawExchange, parseRaw,
  json, scrapeMetrics,
} = require('./helpers');

const TIMEOUT_SECONDS = 0.6;
const BODY_LIMIT_MB = 0.01; // 10485 bytes
const BODY_LIMIT_BYTES = Math.floor(BODY_LIMIT_MB * 1024 * 1024);

const FIXTURES = {
  'app.js': `
    const { Readable } = require('node:stream');
    let counter = 0;
    const sleep = (ms, value) => new Promise((resolve) => setTimeout(resolve, ms, value));

    function echo(event, context) {
      const { extensions, ...rest } = event;
      const { request, response } = extensions;
      return {
        keys: Object.keys(event),
        event: rest,
        dataKind: Buffer.isBuffer(event.data) ? 'buffer' : typeof event.data,
        method: request.method,
        url: request.url,
        rawBody: Buffer.isBuffer(request.body) ? request.body.toString('latin1') : null,
        hasResponse: typeof response.setHeader === 'function',
        context,
      };
    }

    const routes = {
      '/hello': () => 'hello world',
      '/object': () => ({ ok: true, items: [1, 2] }),
      '/promise': () => sleep(20, 'resolved later'),
      '/async': async () => { await sleep(5); return { async: true }; },
      '/stream': (event) => new Promise((resolve, reject) => {
        const res = event.extensions.response;
        res.setHeader('Content-Type', 'text/plain');
        Readable.from(['one ', 'two ', 'three']).pipe(res).on('finish', resolve).on('error', reject);
      }),
      '/throw': () => { throw new Error('boom-sync'); },
      '/reject': async () => { await sleep(5); throw new Error('boom-async'); },
      '/slow': () => sleep(${TIMEOUT_SECONDS * 1000 + 300}, 'too late'),
      '/hang': () => new Promise(() => {}),
      '/hang-logged': () => { console.log('call hangs'); return new Promise(() => {}); },
      '/spin': () => { for (;;); },
      '/busy': () => { const end = Date.now() + 300; while (Date.now() < end); return 'done'; },
      '/depth': (event) => { let depth = 0; for (let v = event.data; Array.isArray(v); v = v[0]) depth++; return String(depth); },
      '/sleep': () => sleep(300, 'slept'),
      '/counter': () => String(++counter),
      '/manual': (event) => {
        event.extensions.response.writeHead(201, { 'Content-Type': 'text/plain' });
        event.extensions.response.end('answered by the handler');
        return 'ignored';
      },
      '/dep': () => require('somedep').greet('fn'),
    };

    exports.route = function (event, context) {
      const pathname = event.extensions.request.url.split('?')[0];
      if (pathname === '/this') return { thisIsExports: this === exports };
      return (routes[pathname] || echo)(event, context);
    };
    exports.asyncHello = async function (event, context) {
      await sleep(5);
      return { hello: 'async', name: context['function-name'] };
    };
    exports.notAFunction = 42;
  `,
  'node_modules/somedep/index.js': `
    exports.greet = (name) => 'hello ' + name + ' from somedep';
  `,
  'esm.mjs': `
    export async function handler(event) { return { esm: true, data: event.data }; }
  `,
  'broken.js': `
    throw new Error('broken at load');
  `,
  'typemodule/package.json': '{ "type": "module" }',
  'typemodule/hello.js': `
    export const handler = (event) => 'esm in a .js file: ' + event.data;
  `,
};

let codeDir;

// ---------------------------------------------------------------------------

describe('nodejs runtime', () => {
  let app;

  before(async () => {
    codeDir = writeFixtures(FIXTURES);
    app = await startServer({
      MOD_NAME: 'app',
      FUNC_HANDLER: 'route',
      FUNC_TIMEOUT: String(TIMEOUT_SECONDS),
      FUNC_RUNTIME: 'nodejs20',
      FUNC_MEMORY_LIMIT: '128Mi',
      REQ_MB_LIMIT: String(BODY_LIMIT_MB),
    });
  });

  after(async () => {
    await stopServer(app);
    fs.rmSync(codeDir, { recursive: true, force: true });
  });

  describe('results', () => {
    it('prints one startup line', () => {
      assert.equal(app.stdout, `fnbuild nodejs runtime: serving app.route on :${app.port} (timeout ${TIMEOUT_SECONDS}s)\n`);
    });

    it('sends a string as HTML', async () => {
      const res = await request(app.port, { path: '/hello' });
      assert.equal(res.status, 200);
      assert.equal(res.body, 'hello world');
      assert.equal(res.headers['content-type'], 'text/html; charset=utf-8');
      assert.equal(res.headers['content-length'], '11');
    });

    it('sends an object as JSON', async () => {
      const res = await request(app.port, { path: '/object' });
      assert.equal(res.status, 200);
      assert.equal(res.headers['content-type'], 'application/json');
      assert.deepEqual(JSON.parse(res.body), { ok: true, items: [1, 2] });
    });

    it('waits for a returned promise', async () => {
      const res = await request(app.port, { path: '/promise' });
      assert.equal(res.status, 200);
      assert.equal(res.body, 'resolved later');
    });

    it('waits for an async function', async () => {
      const res = await request(app.port, { path: '/async' });
      assert.deepEqual(json(res), { async: true });
    });

    it('lets the handler stream through event.extensions.response', async () => {
      const res = await request(app.port, { path: '/stream' });
      assert.equal(res.status, 200);
      assert.equal(res.headers['content-type'], 'text/plain');
      assert.equal(res.body, 'one two three');
    });

    it('sends nothing more when the handler answered by itself', async () => {
      const stderrBefore = app.stderr;
      const res = await request(app.port, { path: '/manual' });
      assert.equal(res.status, 201);
      assert.equal(res.body, 'answered by the handler');
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.equal(app.child.exitCode, null);
      assert.equal(app.stderr, stderrBefore, 'no error logged');
      assert.equal((await request(app.port, { path: '/hello' })).body, 'hello world');
    });

    it('calls the handler with this = its module', async () => {
      assert.deepEqual(json(await request(app.port, { path: '/this' })), { thisIsExports: true });
    });

    it('keeps module state between calls', async () => {
      const first = Number((await request(app.port, { path: '/counter' })).body);
      const second = Number((await request(app.port, { path: '/counter' })).body);
      assert.ok(first >= 1);
      assert.equal(second, first + 1);
    });

    it('finds dependencies in <code dir>/node_modules', async () => {
      const res = await request(app.port, { path: '/dep' });
      assert.equal(res.status, 200);
      assert.equal(res.body, 'hello fn from somedep');
    });
  });

  describe('event and context', () => {
    it('takes event fields from the headers and parses JSON', async () => {
      const res = await request(app.port, {
        method: 'POST',
        path: '/echo',
        headers: {
          'Content-Type': 'application/json; charset=utf-8',
          'event-id': 'id-123',
          'event-time': '2024-01-02T03:04:05Z',
          'event-namespace': 'cli.kubeless.io',
        },
        body: '{"name":"fn","n":[1,2]}',
      });
      assert.equal(res.status, 200);
      const echo = json(res);
      assert.deepEqual(echo.keys, ['data', 'event-id', 'event-type', 'event-time', 'event-namespace', 'extensions']);
      assert.deepEqual(echo.event, {
        data: { name: 'fn', n: [1, 2] },
        'event-id': 'id-123',
        'event-type': 'application/json; charset=utf-8',
        'event-time': '2024-01-02T03:04:05Z',
        'event-namespace': 'cli.kubeless.io',
      });
      assert.equal(echo.rawBody, '{"name":"fn","n":[1,2]}');
      assert.equal(echo.hasResponse, true);
      assert.deepEqual(echo.context, {
        'function-name': 'route',
        timeout: TIMEOUT_SECONDS,
        runtime: 'nodejs20',
        'memory-limit': '128Mi',
      });
    });

    it('generates id and time, passes text as a string', async () => {
      const sentAt = Date.now();
      const res = await request(app.port, {
        method: 'POST', path: '/echo', headers: { 'Content-Type': 'text/plain' }, body: 'hi there',
      });
      const echo = json(res);
      assert.equal(echo.event.data, 'hi there');
      assert.equal(echo.dataKind, 'string');
      assert.equal(echo.event['event-type'], 'text/plain');
      assert.match(echo.event['event-id'], /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
      assert.match(echo.event['event-time'], /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/);
      const time = Date.parse(echo.event['event-time']);
      assert.ok(time >= sentAt - 1000 && time <= Date.now() + 1000, `event-time ${echo.event['event-time']}`);
      assert.equal('event-namespace' in echo.event, false);
      const other = json(await request(app.port, { method: 'POST', path: '/echo', body: 'x' }));
      assert.notEqual(other.event['event-id'], echo.event['event-id']);
    });

    it('passes form data and bodies without a content type as strings', async () => {
      const form = json(await request(app.port, {
        method: 'POST', path: '/echo', headers: { 'Content-Type': 'application/x-www-form-urlencoded' }, body: 'a=1&b=2',
      }));
      assert.equal(form.event.data, 'a=1&b=2');
      const untyped = json(await request(app.port, { method: 'POST', path: '/echo', body: 'plain' }));
      assert.equal(untyped.event.data, 'plain');
      assert.equal('event-type' in untyped.event, false);
    });

    it('passes other content types as a Buffer', async () => {
      const echo = json(await request(app.port, {
        method: 'POST', path: '/echo', headers: { 'Content-Type': 'application/octet-stream' }, body: Buffer.from([0, 1, 255]),
      }));
      assert.equal(echo.dataKind, 'buffer');
      assert.deepEqual(echo.event.data, { type: 'Buffer', data: [0, 1, 255] });
    });

    it('prefers the event-type header over the content type', async () => {
      const echo = json(await request(app.port, {
        method: 'POST', path: '/echo', headers: { 'Content-Type': 'text/plain', 'event-type': 'com.example.ping' }, body: 'x',
      }));
      assert.equal(echo.event['event-type'], 'com.example.ping');
    });

    it('answers 400 to invalid JSON', async () => {
      const res = await request(app.port, {
        method: 'POST', path: '/echo', headers: { 'Content-Type': 'application/json' }, body: '{"broken"',
      });
      assert.equal(res.status, 400);
      assert.match(res.body, /not valid JSON/);
    });
  });

  describe('routing', () => {
    it('answers GET /healthz with OK', async () => {
      const res = await request(app.port, { path: '/healthz' });
      assert.equal(res.status, 200);
      assert.equal(res.body, 'OK');
    });

    for (const method of ['GET', 'POST', 'PUT', 'PATCH', 'DELETE']) {
      it(`sends ${method} on any path to the handler`, async () => {
        const res = await request(app.port, { method, path: '/some/deep/path?x=1', body: method === 'GET' ? undefined : 'b' });
        const echo = json(res);
        assert.equal(echo.method, method);
        assert.equal(echo.url, '/some/deep/path?x=1');
      });
    }

    it('sends other methods on /healthz to the handler', async () => {
      const echo = json(await request(app.port, { method: 'POST', path: '/healthz', body: 'x' }));
      assert.equal(echo.method, 'POST');
    });
  });

  describe('failures', () => {
    async function expectFailure(urlPath, message) {
      const res = await request(app.port, { path: urlPath });
      assert.equal(res.status, 500);
      assert.equal(res.body, 'Internal Server Error');
      await waitFor(() => app.stderr.includes(`Error: ${message}\n    at `), `the stack of ${message} on stderr`);
      assert.match(app.stderr, new RegExp(`app\\.route failed on GET ${urlPath}:\\nError: ${message}\\n\\s+at `));
    }

    it('answers 500 to a thrown error and logs the stack', () => expectFailure('/throw', 'boom-sync'));

    it('answers 500 to a rejected promise and logs the stack', () => expectFailure('/reject', 'boom-async'));

    it('answers 408 when the timeout passes and ignores the late result', async () => {
      const { samples: earlier } = await scrapeMetrics(app.port);
      const res = await request(app.port, { path: '/slow' });
      assert.equal(res.status, 408);
      assert.equal(res.body, 'Request timeout exceeded');
      const timeoutMs = TIMEOUT_SECONDS * 1000;
      assert.ok(res.elapsedMs >= timeoutMs - 50 && res.elapsedMs < timeoutMs + 500, `answered after ${res.elapsedMs} ms`);
      assert.match(app.stderr, /app\.route exceeded its timeout of 0\.6s on GET \/slow/);
      const stderrBefore = app.stderr;
      await new Promise((resolve) => setTimeout(resolve, 400)); // the handler resolves meanwhile
      assert.equal(app.child.exitCode, null);
      assert.equal(app.stderr, stderrBefore);
      const { samples: later } = await scrapeMetrics(app.port);
      for (const name of ['calls_total', 'failures_total', 'duration_seconds_count']) {
        const sample = `function_${name}{method="GET"}`;
        assert.equal(later.get(sample) - earlier.get(sample), 1, sample);
      }
      assert.equal((await request(app.port, { path: '/hello' })).body, 'hello world');
    });

    it('answers 413 to a body over REQ_MB_LIMIT', async () => {
      const fits = await request(app.port, { method: 'POST', path: '/echo', body: 'a'.repeat(BODY_LIMIT_BYTES) });
      assert.equal(json(fits).event.data.length, BODY_LIMIT_BYTES);
      const declared = await request(app.port, { method: 'POST', path: '/echo', body: 'a'.repeat(BODY_LIMIT_BYTES + 1) });
      assert.equal(declared.status, 413);
      const chunk = 'b'.repeat(4000);
      const chunked = await request(app.port, { method: 'POST', path: '/echo', chunks: [chunk, chunk, chunk] });
      assert.equal(chunked.status, 413);
    });
  });

  describe('metrics', () => {
    it('counts calls and failures per method', async () => {
      const { samples: earlier } = await scrapeMetrics(app.port);
      await request(app.port, { path: '/hello' });
      await request(app.port, { path: '/hello' });
      await request(app.port, { method: 'DELETE', path: '/throw' });
      await request(app.port, { method: 'PUT', path: '/hello', body: 'x' });
      const { text, samples: later } = await scrapeMetrics(app.port);
      const delta = (name) => later.get(name) - earlier.get(name);

      for (const line of [
        '# TYPE function_calls_total counter',
        '# TYPE function_failures_total counter',
        '# TYPE function_duration_seconds histogram',
      ]) assert.ok(text.includes(line), line);
      assert.equal(delta('function_calls_total{method="GET"}'), 2);
      assert.equal(delta('function_failures_total{method="GET"}'), 0);
      assert.equal(delta('function_calls_total{method="DELETE"}'), 1);
      assert.equal(delta('function_failures_total{method="DELETE"}'), 1);
      assert.equal(delta('function_calls_total{method="PUT"}'), 1);
      assert.equal(delta('function_failures_total{method="PUT"}'), 0);
      assert.equal(delta('function_duration_seconds_count{method="GET"}'), 2);
      assert.equal(delta('function_duration_seconds_bucket{method="GET",le="+Inf"}'), 2);
      const buckets = ['0.005', '0.01', '0.025', '0.05', '0.1', '0.25', '0.5', '1', '2.5', '5', '10', '+Inf']
        .map((le) => later.get(`function_duration_seconds_bucket{method="GET",le="${le}"}`));
      assert.deepEqual(buckets, [...buckets].sort((x, y) => x - y), 'cumulative buckets');
      assert.equal(buckets.at(-1), later.get('function_duration_seconds_count{method="GET"}'));
      assert.ok(buckets[0] >= 2, 'fast calls land in the first bucket');
      assert.ok(delta('function_duration_seconds_sum{method="GET"}') > 0);
      // Earlier tests failed on GET /throw, /reject and /slow.
      assert.ok(later.get('function_failures_total{method="GET"}') >= 3);
    });
  });

  describe('connections', () => {
    it('keeps connections alive', async () => {
      const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
      try {
        const first = await request(app.port, { path: '/hello', agent });
        const second = await request(app.port, { path: '/hello', agent });
        const third = await request(app.port, { method: 'POST', path: '/echo', body: 'x', agent });
        assert.equal(first.headers.connection, 'keep-alive');
        assert.equal(first.headers['keep-alive'], 'timeout=65');
        assert.equal(first.reusedSocket, false);
        assert.equal(second.reusedSocket, true);
        assert.equal(third.reusedSocket, true);
        assert.equal(third.status, 200);
      } finally {
        agent.destroy();
      }
    });

    it('finishes calls in flight on SIGTERM and exits 0', async () => {
      const proc = await startServer({ MOD_NAME: 'app', FUNC_HANDLER: 'route' });
      const agent = new http.Agent({ keepAlive: true });
      try {
        const inFlight = request(proc.port, { path: '/sleep', agent });
        await new Promise((resolve) => setTimeout(resolve, 100));
        const signalled = Date.now();
        proc.child.kill('SIGTERM');
        const res = await inFlight;
        assert.equal(res.status, 200);
        assert.equal(res.body, 'slept');
        assert.deepEqual(await proc.exited, { code: 0, signal: null });
        assert.ok(Date.now() - signalled < 2000, 'exits once the calls are done');
        await assert.rejects(request(proc.port, { path: '/hello' }), { code: 'ECONNREFUSED' });
      } finally {
        agent.destroy();
        await stopServer(proc);
      }
    });
  });

  describe('hostile and careless clients', () => {
    let guarded; // short deadlines, the default body limit

    before(async () => {
      guarded = await startServer({
        MOD_NAME: 'app', FUNC_HANDLER: 'route', FUNC_TIMEOUT: '1',
        FUNC_HEADER_TIMEOUT: '0.5', FUNC_REQUEST_TIMEOUT: '1',
      });
    });

    after(() => stopServer(guarded));

    it('answers 2 x 64 never-settling calls with 408 and keeps serving meanwhile', async () => {
      const { samples: earlier } = await scrapeMetrics(guarded.port);
      const hung = Array.from({ length: 128 }, () => request(guarded.port, { path: '/hang' }));
      await waitFor(async () => {
        const { samples } = await scrapeMetrics(guarded.port);
        return samples.get('function_calls_total{method="GET"}') - earlier.get('function_calls_total{method="GET"}') >= 128;
      }, 'the 128 hung calls to start', 30000);
      const health = await request(guarded.port, { path: '/healthz' });
      assert.equal(health.status, 200);
      const hello = await request(guarded.port, { path: '/hello' });
      assert.equal(hello.status, 200);
      assert.equal(hello.body, 'hello world');
      const answers = await Promise.all(hung);
      assert.deepEqual(new Set(answers.map((res) => `${res.status} ${res.body}`)), new Set(['408 Request timeout exceeded']));
      assert.equal((await request(guarded.port, { path: '/hello' })).status, 200);
      assert.equal(guarded.child.exitCode, null);
    });

    const malformed = [
      ['an unknown method', 'BREW / HTTP/1.1\r\nHost: x\r\n\r\n', 400, /Bad Request: Invalid method/],
      ['an invalid URL', 'GET /a b HTTP/1.1\r\nHost: x\r\n\r\n', 400, /Bad Request: /],
      ['a URL without a slash', 'GET foo HTTP/1.1\r\nHost: x\r\n\r\n', 400, /Bad Request: Invalid characters in url/],
      ['an invalid HTTP version', 'GET / HTTP/7.1\r\nHost: x\r\n\r\n', 400, /Bad Request: Invalid HTTP version/],
      ['an invalid Content-Length', 'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 12x\r\n\r\n', 400, /Bad Request: Invalid character in Content-Length/],
      ['a negative Content-Length', 'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n', 400, /Bad Request: /],
      ['two Content-Lengths', 'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab', 400, /Bad Request: Duplicate Content-Length/],
      // Node.js 18's parser names the two headers the other way round.
      ['Content-Length with chunked', 'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 400,
        /Bad Request: (Transfer-Encoding can't be present with Content-Length|Content-Length can't be present with Transfer-Encoding)/],
      ['a bad chunk size', 'POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n', 400, /Bad Request: Invalid character in chunk size/],
      ['a transfer coding other than chunked', 'POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nab', 400, /Bad Request: Request has invalid `Transfer-Encoding`/],
      ['an invalid header name', 'GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n', 400, /Bad Request: Invalid header token/],
      ['a head over 16 KB', `GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20000)}\r\n\r\n`, 431, /Request Header Fields Too Large: the request head exceeds 16384 bytes/],
      ['no Host header in HTTP/1.1', 'GET /hello HTTP/1.1\r\n\r\n', 400, /Bad Request: an HTTP\/1\.1 request must have a Host header/],
      ['CONNECT', 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n', 405, /Method Not Allowed: CONNECT is not supported/],
      ['a TLS handshake', Buffer.from('16030100a5010000a10303', 'hex'), 400, /Bad Request: /],
      ['a head ended by bare LFs', 'GET / HTTP/1.1\nHost: x\n\n', 400, /Bad Request: (Expected CRLF after version|Invalid header value char)/], // Node 20+ | 18
      ['a header line ended by a bare LF', 'GET / HTTP/1.1\r\nHost: x\nX-Y: z\r\n\r\n', 400, /Bad Request: (Missing expected CR after header value|Invalid header value char)/],
      ['an HTTP/2 preface', 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 400, /Bad Request: /],
    ];
    for (const [what, data, status, reason] of malformed) {
      it(`answers ${status} with a reason to ${what}`, async () => {
        const { text } = await rawExchange(guarded.port, data);
        const res = parseRaw(text);
        assert.equal(res.status, status, text);
        assert.match(res.body, reason);
        assert.doesNotMatch(res.body, /\n\s+at /, 'no stack trace');
        assert.match(res.head, /^Connection: close$/im);
      });
    }

    it('passes JSON nested 100,000 levels deep and answers 500 without a stack when the result cannot be encoded', async () => {
      const depth = 100000;
      const body = '['.repeat(depth) + ']'.repeat(depth);
      const headers = { 'Content-Type': 'application/json' };
      const parsed = await request(guarded.port, { method: 'POST', path: '/depth', headers, body });
      assert.equal(parsed.status, 200);
      assert.equal(parsed.body, String(depth));
      const echoed = await request(guarded.port, { method: 'POST', path: '/echo', headers, body });
      assert.equal(echoed.status, 500); // JSON.stringify of the event overflows the stack
      assert.equal(echoed.body, 'Internal Server Error');
      assert.equal((await request(guarded.port, { path: '/healthz' })).status, 200);
    });

    it('answers 408 to a request head not sent within FUNC_HEADER_TIMEOUT', async () => {
      const { text } = await rawExchange(guarded.port, 'GET /hello HTTP/1.1\r\nHost: x\r\n');
      const res = parseRaw(text);
      assert.equal(res.status, 408);
      assert.equal(res.body, 'Request Timeout: the request head was not received within 0.5s (FUNC_HEADER_TIMEOUT)');
    });

    it('answers 408 to a body not sent within FUNC_REQUEST_TIMEOUT', async () => {
      const { text } = await rawExchange(guarded.port, 'POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npart of it');
      const res = parseRaw(text);
      assert.equal(res.status, 408);
      assert.equal(res.body, 'Request Timeout: the request was not received within 1s (FUNC_REQUEST_TIMEOUT)');
    });

    it('closes a connection that sends nothing, without an answer', async () => {
      const { text } = await rawExchange(guarded.port, null);
      assert.equal(text, '');
    });

    it('exits 2 on an invalid FUNC_MAX_CONNECTIONS', async () => {
      const { code, stderr } = await runToExit({ MOD_NAME: 'app', FUNC_HANDLER: 'route', FUNC_MAX_CONNECTIONS: '1.5' });
      assert.equal(code, 2);
      assert.match(stderr, /invalid FUNC_MAX_CONNECTIONS="1\.5": expected a positive whole number/);
    });
  });

  describe('connection cap', () => {
    it('keeps /healthz answering while 3000 slow clients connect to a server with ulimit -n 1024', async () => {
      const proc = await startServer({ MOD_NAME: 'app', FUNC_HANDLER: 'route', FUNC_HEADER_TIMEOUT: '120' }, { fileLimit: 1024 });
      const cap = Math.floor(1024 * 0.75); // the default: 3/4 of the open-file limit
      const sockets = [];
      const answers = [];
      let closed = 0;
      try {
        for (let i = 0; i < 3000; i++) {
          const socket = net.connect(proc.port, '127.0.0.1');
          socket.on('connect', () => socket.write('GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: '));
          socket.on('data', (part) => answers.push(part.toString('latin1')));
          socket.on('error', () => {});
          socket.on('close', () => { closed++; });
          sockets.push(socket);
          if (i % 200 === 199) await new Promise((resolve) => setImmediate(resolve));
        }
        await waitFor(() => closed >= 3000 - cap, `${3000 - cap} slow connections closed (${closed} so far)`, 60000);
        for (let probe = 0; probe < 5; probe++) {
          const res = await Promise.race([
            request(proc.port, { path: '/healthz' }),
            new Promise((resolve, reject) => setTimeout(reject, 5000, new Error('/healthz did not answer in 5 s'))),
          ]);
          assert.equal(res.status, 200);
          assert.equal(res.body, 'OK');
        }
        assert.ok(3000 - closed <= cap, `${3000 - closed} slow connections open, more than ${cap}`);
        assert.ok(answers.some((text) => text.includes(`Service Unavailable: the server has its maximum of ${cap} connections open`)));
        assert.equal(proc.child.exitCode, null);
      } finally {
        for (const socket of sockets) socket.destroy();
        await stopServer(proc);
      }
    });

    it('refuses a new connection with 503 while every connection is in a call, and recovers', async () => {
      const proc = await startServer({ MOD_NAME: 'app', FUNC_HANDLER: 'route', FUNC_TIMEOUT: '1', FUNC_MAX_CONNECTIONS: '4' });
      try {
        // The calls say when they start: any other probe would take a connection.
        const hung = Array.from({ length: 4 }, () => request(proc.port, { path: '/hang-logged' }).catch((err) => err));
        await waitFor(() => proc.stdout.split('call hangs\n').length - 1 === 4, 'the 4 hung calls to start');
        const { text } = await rawExchange(proc.port, 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
        const refused = parseRaw(text);
        assert.equal(refused.status, 503);
        assert.match(refused.body, /maximum of 4 connections open \(FUNC_MAX_CONNECTIONS\), all in calls/);
        assert.deepEqual((await Promise.all(hung)).map((res) => res.status), [408, 408, 408, 408]);
        assert.equal((await request(proc.port, { path: '/healthz' })).status, 200);
        assert.equal((await request(proc.port, { path: '/hello' })).status, 200);
      } finally {
        await stopServer(proc);
      }
    });
  });

  describe('blocked event loop', () => {
    it('stops answering /healthz and kills itself after FUNC_BLOCKED_TIMEOUT', async () => {
      // FUNC_TIMEOUT above FUNC_BLOCKED_TIMEOUT: the call is not stopped first.
      const proc = await startServer({ MOD_NAME: 'app', FUNC_HANDLER: 'route', FUNC_TIMEOUT: '60', FUNC_BLOCKED_TIMEOUT: '1.5' });
      try {
        const spinning = request(proc.port, { path: '/spin' }).then(() => 'answered', (err) => err.code);
        const health = await new Promise((resolve) => {
          const req = http.get({ host: '127.0.0.1', port: proc.port, path: '/healthz', agent: false }, () => resolve('answered'));
          req.setTimeout(500, () => { req.destroy(); resolve('no answer'); });
          req.on('error', (err) => resolve(err.code));
        });
        assert.notEqual(health, 'answered');
        assert.deepEqual(await proc.exited, { code: null, signal: 'SIGKILL' });
        assert.equal(await spinning, 'ECONNRESET');
        assert.match(proc.stderr, /the event loop has been blocked for 1\.5s \(FUNC_BLOCKED_TIMEOUT\): a call runs synchronous code that does not return; exiting/);
      } finally {
        await stopServer(proc);
      }
    });

    // In a container the runtime is process 1 of its PID namespace, and the kernel drops the
    // SIGKILL it sends itself: the process must end all the same, and only once.
    it('as process 1 of a PID namespace exits with status 137 after FUNC_BLOCKED_TIMEOUT',
      { skip: PROCESS_ONE.unavailable }, async () => {
        const proc = await startServer({ MOD_NAME: 'app', FUNC_HANDLER: 'route', FUNC_TIMEOUT: '60', FUNC_BLOCKED_TIMEOUT: '1' },
          { processOne: true });
        try {
          const spinning = request(proc.port, { path: '/spin' }).then(() => 'answered', (err) => err.code);
          const blocked = 'the event loop has been blocked for 1s (FUNC_BLOCKED_TIMEOUT): a call runs ' +
            'synchronous code that does not return; exiting so that the function is restarted\n';
          await waitFor(() => proc.stderr.includes(blocked), 'the watchdog message', 60 * 1000);
          // Gone soon after the message (a process that stays repeats it every 250 ms).
          const exited = await Promise.race([
            proc.exited,
            new Promise((resolve) => setTimeout(resolve, 30 * 1000, 'still running').unref()),
          ]);
          const said = proc.stderr.split(blocked).length - 1;
          assert.deepEqual(exited, { code: 137, signal: null }, `said ${said} times that it exits`);
          assert.equal(said, 1);
          assert.equal(await spinning, 'ECONNRESET');
        } finally {
          await stopServer(proc);
        }
      });

    // As Kubeless did: FUNC_TIMEOUT bounds synchronous code too. The watchdog stops the
    // JavaScript that blocks the loop, the call gets its 408 and the server goes on.
    it('stops a call that runs synchronous code past FUNC_TIMEOUT, answers 408 and goes on serving', async () => {
      const proc = await startServer({ MOD_NAME: 'app', FUNC_HANDLER: 'route', FUNC_TIMEOUT: '0.5' });
      try {
        const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
        for (let round = 0; round < 3; round++) {
          const spun = await request(proc.port, { path: '/spin', agent });
          assert.equal(spun.status, 408);
          assert.equal(spun.body, 'Request timeout exceeded');
          assert.equal(spun.headers.connection, 'close'); // its connection's parser was stopped too
          const hello = await request(proc.port, { path: '/hello', agent });
          assert.equal(hello.body, 'hello world');
        }
        agent.destroy();
        assert.equal((await request(proc.port, { path: '/healthz' })).status, 200);
        assert.equal(proc.child.exitCode, null);
        assert.equal(proc.stderr.match(/stopped JavaScript that blocked the event loop for 0\.5s \(FUNC_TIMEOUT\)/g).length, 3);
        const metrics = (await request(proc.port, { path: '/metrics' })).body;
        assert.match(metrics, /^function_failures_total\{method="GET"\} 3$/m);
      } finally {
        await stopServer(proc);
      }
    });

    it('lets a synchronous call shorter than FUNC_TIMEOUT finish', async () => {
      const proc = await startServer({ MOD_NAME: 'app', FUNC_HANDLER: 'route', FUNC_TIMEOUT: '2' });
      try {
        const res = await request(proc.port, { path: '/busy' });
        assert.equal(res.body, 'done');
        await new Promise((resolve) => setTimeout(resolve, 300));
        assert.equal((await request(proc.port, { path: '/healthz' })).status, 200);
        assert.equal(proc.child.exitCode, null);
      } finally {
        await stopServer(proc);
      }
    });

    it('with FUNC_BLOCKED_TIMEOUT=0 stays blocked: /healthz does not answer', async () => {
      const proc = await startServer({ MOD_NAME: 'app', FUNC_HANDLER: 'route', FUNC_TIMEOUT: '60', FUNC_BLOCKED_TIMEOUT: '0' });
      try {
        request(proc.port, { path: '/spin' }).catch(() => {});
        for (let probe = 0; probe < 3; probe++) {
          const health = await new Promise((resolve) => {
            const req = http.get({ host: '127.0.0.1', port: proc.port, path: '/healthz', agent: false }, () => resolve('answered'));
            req.setTimeout(700, () => { req.destroy(); resolve('no answer'); });
            req.on('error', (err) => resolve(err.code));
          });
          assert.equal(health, 'no answer');
        }
        assert.equal(proc.child.exitCode, null);
      } finally {
        await stopServer(proc);
      }
    });
  });

  describe('handler modules', () => {
    it('calls an async function handler', async () => {
      const proc = await startServer({ MOD_NAME: 'app', FUNC_HANDLER: 'asyncHello' });
      try {
        const res = await request(proc.port, { method: 'POST', path: '/', body: 'x' });
        assert.deepEqual(json(res), { hello: 'async', name: 'asyncHello' });
      } finally {
        await stopServer(proc);
      }
    });

    it('loads an .mjs module and a .js module under "type": "module"', async () => {
      const mjs = await startServer({ MOD_NAME: 'esm', FUNC_HANDLER: 'handler' });
      const typeModule = await startServer({
        FNBUILD_CODE_DIR: path.join(codeDir, 'typemodule'), MOD_NAME: 'hello', FUNC_HANDLER: 'handler',
      });
      try {
        const res = await request(mjs.port, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '[1]' });
        assert.deepEqual(json(res), { esm: true, data: [1] });
        const text = await request(typeModule.port, { method: 'POST', body: 'hi' });
        assert.equal(text.body, 'esm in a .js file: hi');
      } finally {
        await Promise.all([stopServer(mjs), stopServer(typeModule)]);
      }
    });

    it('prefers PORT over FUNC_PORT and falls back to FUNC_PORT', async () => {
      const [port, funcPort] = [await freePort(), await freePort()];
      const both = await startServer({ MOD_NAME: 'app', FUNC_HANDLER: 'route', PORT: String(port), FUNC_PORT: String(funcPort) });
      try {
        assert.equal(both.port, port);
        assert.equal((await request(port, { path: '/hello' })).body, 'hello world');
        await assert.rejects(request(funcPort, { path: '/hello' }), { code: 'ECONNREFUSED' });
      } finally {
        await stopServer(both);
      }
      const onlyFuncPort = await startServer({ MOD_NAME: 'app', FUNC_HANDLER: 'route', PORT: '', FUNC_PORT: String(funcPort) });
      try {
        assert.equal(onlyFuncPort.port, funcPort);
      } finally {
        await stopServer(onlyFuncPort);
      }
    });
  });

  describe('start-up errors', () => {
    it('exits 1 when the module is missing', async () => {
      const { code, stderr } = await runToExit({ MOD_NAME: 'nope', FUNC_HANDLER: 'handler' });
      assert.equal(code, 1);
      assert.match(stderr, new RegExp(
        `^fnbuild runtime: cannot load handler 'nope\\.handler': no module 'nope' in ${codeDir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} ` +
        '\\(files: app\\.js, broken\\.js, esm\\.mjs, node_modules, typemodule\\)\\n$'));
    });

    it('exits 1 when the function is missing', async () => {
      const { code, stderr } = await runToExit({ MOD_NAME: 'app', FUNC_HANDLER: 'nope' });
      assert.equal(code, 1);
      assert.equal(stderr, "fnbuild runtime: cannot load handler 'app.nope': module 'app' has no function 'nope' " +
        '(exports found: route, asyncHello, notAFunction)\n');
    });

    it('exits 1 when an export is not a function', async () => {
      const { code, stderr } = await runToExit({ MOD_NAME: 'app', FUNC_HANDLER: 'notAFunction' });
      assert.equal(code, 1);
      assert.match(stderr, /module 'app' has no function 'notAFunction'/);
    });

    it('exits 1 with the stack when loading the module throws', async () => {
      const { code, stderr } = await runToExit({ MOD_NAME: 'broken', FUNC_HANDLER: 'handler' });
      assert.equal(code, 1);
      assert.match(stderr, /^fnbuild runtime: cannot load handler 'broken\.handler': loading module 'broken' \(.*broken\.js\) failed:\n/);
      assert.match(stderr, /Error: broken at load\n\s+at .*broken\.js/);
    });

    it('exits 2 when MOD_NAME or FUNC_HANDLER is not set', async () => {
      const { code, stderr } = await runToExit({ MOD_NAME: 'app' });
      assert.equal(code, 2);
      assert.match(stderr, /FUNC_HANDLER must be set/);
    });

    it('exits 2 on an invalid FUNC_TIMEOUT', async () => {
      const { code, stderr } = await runToExit({ MOD_NAME: 'app', FUNC_HANDLER: 'route', FUNC_TIMEOUT: 'soon' });
      assert.equal(code, 2);
      assert.match(stderr, /invalid FUNC_TIMEOUT="soon"/);
    });
  });
});
