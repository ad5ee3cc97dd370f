'use strict';

// Tests of the CloudEvents support of runtimes/nodejs/kubeless.js (the contract both runtimes
// follow): events in binary and structured mode as the handler sees them, the requests refused,
// plain requests left as they were, a CloudEvent returned as the reply, and
// event.emitCloudEvent() publishing to a sink run by the test.
// Run from the repository root: node --test runtimes/nodejs/test/*.test.js

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const {
  writeFixtures, startServer, stopServer, runToExit, freePort, request, json, scrapeMetrics, waitFor,
} = require('./helpers');

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const RFC3339_UTC = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;
const PLAIN_KEYS = ['data', 'event-id', 'event-type', 'event-time', 'event-namespace', 'extensions'];
const TRACING = {
  traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
  tracestate: 'congo=t61rcWkgMzE',
  b3: '80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1',
  'x-b3-traceid': '80f198ee56343ba864fe8b2a57d3eff7',
  'x-b3-spanid': 'e457b5a2e4d86bd1',
  'x-b3-parentspanid': '05e3ac9a4f6e3b90',
  'x-b3-sampled': '1',
  'x-b3-flags': '0',
};

// The handler: POST /echo (any other path) answers what it got; the other paths take a JSON
// spec of the event to build: { type, source, data, bytes (base64: a Buffer as data),
// attributes, options }.
const FIXTURES = {
  'ce.js': `
    function echo(event) {
      const { extensions, ...rest } = event;
      return {
        keys: Object.keys(event),
        ownNames: Object.getOwnPropertyNames(event),
        event: rest,
        dataKind: Buffer.isBuffer(event.data) ? 'buffer' : typeof event.data,
        methods: [typeof event.cloudEvent, typeof event.emitCloudEvent],
        rawBody: extensions.request.body.toString('latin1'),
      };
    }

    function args(spec) {
      const data = spec.bytes === undefined ? spec.data : Buffer.from(spec.bytes, 'base64');
      return [spec.type, spec.source, data, spec.attributes];
    }

    const routes = {
      '/reply': (event) => event.cloudEvent(...args(event.data)),
      '/reply-async': async (event) => event.cloudEvent(...args(event.data)),
      '/build': (event) => {
        try {
          const built = event.cloudEvent(...args(event.data));
          return { built, frozen: Object.isFrozen(built) };
        } catch (err) {
          return { name: err.name, message: err.message };
        }
      },
      '/emit': async (event) => {
        try {
          return { id: await event.emitCloudEvent(...args(event.data), event.data.options) };
        } catch (err) {
          return { error: err.message };
        }
      },
      '/emit-uncaught': (event) => event.emitCloudEvent(...args(event.data), event.data.options),
    };

    exports.handle = (event) => (routes[event.extensions.request.url] || echo)(event);
  `,
};

function postEcho(port, headers, body) {
  return request(port, { method: 'POST', path: '/echo', headers, body });
}

// Asks the handler at `path` to build (and reply or emit) the event `spec`; `headers` go with it.
function callWith(port, path, spec, headers = {}) {
  return request(port, {
    method: 'POST', path, headers: { 'Content-Type': 'application/json', ...headers }, body: JSON.stringify(spec),
  });
}

// An HTTP server that records the requests it gets and answers `answer(req)`: [status, body].
async function startSink(answer) {
  const sink = { requests: [] };
  sink.server = http.createServer((req, res) => {
    const parts = [];
    req.on('data', (part) => parts.push(part));
    req.on('end', () => {
      const body = Buffer.concat(parts);
      sink.requests.push({ method: req.method, url: req.url, headers: req.headers, body: body.toString('utf8') });
      const [status, text] = answer(req);
      res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8' });
      res.end(text);
    });
  });
  await new Promise((resolve) => sink.server.listen(0, '127.0.0.1', resolve));
  sink.url = `http://127.0.0.1:${sink.server.address().port}`;
  return sink;
}

async function stopSink(sink) {
  sink.server.closeAllConnections();
  await new Promise((resolve) => sink.server.close(resolve));
}

function ceHeaders(headers) {
  return Object.fromEntries(Object.entries(headers).filter(([name]) => name.startsWith('ce-')));
}

describe('CloudEvents', () => {
  let codeDir;
  let app; // no K_SINK, no K_SERVICE

  before(async () => {
    codeDir = writeFixtures(FIXTURES);
    app = await startServer({ MOD_NAME: 'ce', FUNC_HANDLER: 'handle', FUNC_TIMEOUT: '5' });
  });

  after(async () => {
    await stopServer(app);
    fs.rmSync(codeDir, { recursive: true, force: true });
  });

  describe('in binary mode', () => {
    it('gives the handler every 1.0 attribute and extension, under the Kubeless keys and ce-<name>', async () => {
      const echo = json(await postEcho(app.port, {
        'ce-specversion': '1.0',
        'ce-id': 'A234-1234-1234',
        'ce-source': 'https://github.com/cloudevents/spec/pull',
        'ce-type': 'com.github.pull_request.opened',
        'ce-time': '2018-04-05T17:31:00Z',
        'ce-subject': '123',
        'ce-dataschema': 'https://example.com/schema.json',
        'ce-knativearrivaltime': '2024-01-02T03:04:05.678Z',
        'ce-eventtypeversion': 'v1',
        'ce-traceparent': TRACING.traceparent,
        'Content-Type': 'application/json; charset=utf-8',
      }, '{"pull":42,"labels":["a"]}'));
      assert.deepEqual(echo.keys, [...PLAIN_KEYS, 'ce-specversion', 'ce-id', 'ce-source', 'ce-type', 'ce-time',
        'ce-subject', 'ce-dataschema', 'ce-knativearrivaltime', 'ce-eventtypeversion', 'ce-traceparent',
        'ce-datacontenttype']);
      assert.deepEqual(echo.event, {
        data: { pull: 42, labels: ['a'] },
        'event-id': 'A234-1234-1234',
        'event-type': 'com.github.pull_request.opened',
        'event-time': '2018-04-05T17:31:00Z',
        'event-namespace': 'https://github.com/cloudevents/spec/pull',
        'ce-specversion': '1.0',
        'ce-id': 'A234-1234-1234',
        'ce-source': 'https://github.com/cloudevents/spec/pull',
        'ce-type': 'com.github.pull_request.opened',
        'ce-time': '2018-04-05T17:31:00Z',
        'ce-subject': '123',
        'ce-dataschema': 'https://example.com/schema.json',
        'ce-knativearrivaltime': '2024-01-02T03:04:05.678Z',
        'ce-eventtypeversion': 'v1',
        'ce-traceparent': TRACING.traceparent,
        'ce-datacontenttype': 'application/json; charset=utf-8',
      });
      assert.equal(echo.rawBody, '{"pull":42,"labels":["a"]}');
    });

    it('takes a 0.3 event, generating event-time when it has no time', async () => {
      const sentAt = Date.now();
      const echo = json(await postEcho(app.port, {
        'ce-specversion': '0.3',
        'ce-id': 'id-03',
        'ce-source': '/sensors/7',
        'ce-type': 'com.example.reading',
        'ce-schemaurl': 'https://example.com/reading.json',
        'ce-datacontentencoding': 'identity',
        'Content-Type': 'text/plain',
      }, '21.5 C'));
      assert.deepEqual(echo.event, {
        data: '21.5 C',
        'event-id': 'id-03',
        'event-type': 'com.example.reading',
        'event-time': echo.event['event-time'],
        'event-namespace': '/sensors/7',
        'ce-specversion': '0.3',
        'ce-id': 'id-03',
        'ce-source': '/sensors/7',
        'ce-type': 'com.example.reading',
        'ce-schemaurl': 'https://example.com/reading.json',
        'ce-datacontentencoding': 'identity',
        'ce-datacontenttype': 'text/plain',
      });
      assert.match(echo.event['event-time'], RFC3339_UTC);
      assert.ok(Date.parse(echo.event['event-time']) >= sentAt - 1000);
    });

    const bodies = [
      ['a +json type as JSON', 'application/vnd.api+json', '{"a":1}', 'object', { a: 1 }],
      ['text/json as JSON', 'text/json', '[1,2]', 'object', [1, 2]],
      ['an empty JSON body as undefined', 'application/json', '', 'undefined', undefined],
      ['text as a string', 'text/csv', 'a,b', 'string', 'a,b'],
      ['other types as a Buffer', 'application/octet-stream', Buffer.from([0, 255]), 'buffer', { type: 'Buffer', data: [0, 255] }],
      ['no type as a string, without ce-datacontenttype', undefined, 'plain', 'string', 'plain'],
    ];
    for (const [what, contentType, body, kind, data] of bodies) {
      it(`decodes ${what}`, async () => {
        const headers = { 'ce-specversion': '1.0', 'ce-id': '1', 'ce-source': 's', 'ce-type': 't' };
        if (contentType !== undefined) headers['Content-Type'] = contentType;
        const echo = json(await postEcho(app.port, headers, body));
        assert.equal(echo.dataKind, kind);
        assert.deepEqual(echo.event.data, data);
        assert.equal(echo.event['ce-datacontenttype'], contentType);
      });
    }

    it('percent-decodes header values, as UTF-8', async () => {
      const echo = json(await postEcho(app.port, {
        'ce-specversion': '1.0',
        'ce-id': '100%25',
        'ce-source': '%2Fcaf%C3%A9%20bar',
        'ce-type': 'a%22b%22',
        // Raw UTF-8 bytes. Sent without a body: with one, Node.js's client sends the head as UTF-8.
        'ce-subject': Buffer.from('unescaped é', 'utf8').toString('latin1'),
        'ce-plain': 'no-escapes',
      }));
      assert.equal(echo.event['ce-id'], '100%');
      assert.equal(echo.event['event-id'], '100%');
      assert.equal(echo.event['ce-source'], '/café bar');
      assert.equal(echo.event['event-namespace'], '/café bar');
      assert.equal(echo.event['ce-type'], 'a"b"');
      assert.equal(echo.event['ce-subject'], 'unescaped é');
      assert.equal(echo.event['ce-plain'], 'no-escapes');
    });
  });

  describe('in structured mode', () => {
    const structured = (event, type = 'application/cloudevents+json') =>
      postEcho(app.port, { 'Content-Type': type }, JSON.stringify(event));

    it('gives the handler every 1.0 attribute and extension with its JSON value, and data as it is', async () => {
      const event = {
        specversion: '1.0',
        id: 'C234-1234-1234',
        source: '/mycontext',
        type: 'com.example.someevent',
        time: '2018-04-05T17:31:00Z',
        subject: 'larger-context',
        dataschema: 'https://example.com/schema',
        datacontenttype: 'application/xml',
        comexampleextension1: 'value',
        count: 7,
        urgent: true,
        empty: null,
        data: '<much wow="xml"/>',
      };
      const echo = json(await structured(event, 'Application/CloudEvents+JSON; charset=utf-8'));
      assert.deepEqual(echo.keys, [...PLAIN_KEYS, 'ce-specversion', 'ce-id', 'ce-source', 'ce-type', 'ce-time',
        'ce-subject', 'ce-dataschema', 'ce-datacontenttype', 'ce-comexampleextension1', 'ce-count', 'ce-urgent']);
      assert.deepEqual(echo.event, {
        data: '<much wow="xml"/>',
        'event-id': 'C234-1234-1234',
        'event-type': 'com.example.someevent',
        'event-time': '2018-04-05T17:31:00Z',
        'event-namespace': '/mycontext',
        'ce-specversion': '1.0',
        'ce-id': 'C234-1234-1234',
        'ce-source': '/mycontext',
        'ce-type': 'com.example.someevent',
        'ce-time': '2018-04-05T17:31:00Z',
        'ce-subject': 'larger-context',
        'ce-dataschema': 'https://example.com/schema',
        'ce-datacontenttype': 'application/xml',
        'ce-comexampleextension1': 'value',
        'ce-count': 7,
        'ce-urgent': true,
      });
    });

    it('passes JSON data as its value and no data as undefined', async () => {
      const base = { specversion: '1.0', id: '1', source: 's', type: 't' };
      const withData = json(await structured({ ...base, data: { nested: [1, { deep: null }] } }));
      assert.equal(withData.dataKind, 'object');
      assert.deepEqual(withData.event.data, { nested: [1, { deep: null }] });
      const without = json(await structured(base));
      assert.equal(without.dataKind, 'undefined');
      assert.equal('data' in without.event, false);
      assert.match(without.event['event-time'], RFC3339_UTC);
    });

    it('decodes data_base64 to a Buffer', async () => {
      const echo = json(await structured({
        specversion: '1.0', id: '1', source: 's', type: 't', datacontenttype: 'image/png', data_base64: 'AAEC/w==',
      }));
      assert.equal(echo.dataKind, 'buffer');
      assert.deepEqual(echo.event.data, { type: 'Buffer', data: [0, 1, 2, 255] });
      assert.equal('ce-data_base64' in echo.event, false);
    });

    it('takes a 0.3 event, decoding data with datacontentencoding base64 to a Buffer', async () => {
      const event = {
        specversion: '0.3', id: 'id-03', source: '/s', type: 't', time: '2019-01-01T00:00:00Z',
        schemaurl: 'https://example.com/s.json', datacontentencoding: 'base64', datacontenttype: 'text/plain',
        data: Buffer.from('hello').toString('base64'),
      };
      const echo = json(await structured(event));
      assert.equal(echo.dataKind, 'buffer');
      assert.deepEqual(echo.event, {
        data: { type: 'Buffer', data: [...Buffer.from('hello')] },
        'event-id': 'id-03',
        'event-type': 't',
        'event-time': '2019-01-01T00:00:00Z',
        'event-namespace': '/s',
        'ce-specversion': '0.3',
        'ce-id': 'id-03',
        'ce-source': '/s',
        'ce-type': 't',
        'ce-time': '2019-01-01T00:00:00Z',
        'ce-schemaurl': 'https://example.com/s.json',
        'ce-datacontentencoding': 'base64',
        'ce-datacontenttype': 'text/plain',
      });
      const unencoded = json(await structured({ specversion: '0.3', id: '1', source: 's', type: 't', data: { a: 1 } }));
      assert.deepEqual(unencoded.event.data, { a: 1 });
    });
  });

  describe('refused', () => {
    const binary = { 'ce-specversion': '1.0', 'ce-id': '1', 'ce-source': 's', 'ce-type': 't' };
    const envelope = { specversion: '1.0', id: '1', source: 's', type: 't' };
    const cloudEventsJson = { 'Content-Type': 'application/cloudevents+json' };
    const refusals = [
      ['an unsupported specversion', { ...binary, 'ce-specversion': '2.0' }, 'x', 400,
        "unsupported CloudEvents specversion '2.0': accepted are 1.0 and 0.3"],
      ['a missing source', { ...binary, 'ce-source': undefined }, 'x', 400,
        "CloudEvent without 'source': id, source, specversion and type are required"],
      ['an empty id', { ...binary, 'ce-id': '' }, 'x', 400,
        "CloudEvent without 'id': id, source, specversion and type are required"],
      ['an invalid attribute name', { ...binary, 'ce-foo_bar': 'x' }, 'x', 400,
        "invalid CloudEvent attribute name 'foo_bar': names are lower-case letters a-z and digits"],
      ['a malformed percent-escape', { ...binary, 'ce-subject': 'a%4' }, 'x', 400,
        "invalid CloudEvent attribute 'subject': malformed percent-escape '%4' in its ce-subject header"],
      ['a header that is not UTF-8 once decoded', { ...binary, 'ce-subject': 'caf%E9' }, 'x', 400,
        "invalid CloudEvent attribute 'subject': its ce-subject header is not UTF-8 once percent-decoded"],
      ['JSON data that does not parse', { ...binary, 'Content-Type': 'application/json' }, '{"a":', 400,
        /^Bad Request: the body is not valid JSON \(.+\)$/],
      ['a structured body that is not JSON', cloudEventsJson, '{"id":', 400,
        /^Bad Request: the body is not valid JSON \(.+\)$/],
      ['a structured body that is not an object', cloudEventsJson, '[{"id":"1"}]', 400,
        'structured CloudEvent: the body must be a JSON object'],
      ['a structured event with an unsupported specversion', cloudEventsJson,
        JSON.stringify({ ...envelope, specversion: '0.2' }), 400,
        "unsupported CloudEvents specversion '0.2': accepted are 1.0 and 0.3"],
      ['a structured event without type', cloudEventsJson, JSON.stringify({ ...envelope, type: null }), 400,
        "CloudEvent without 'type': id, source, specversion and type are required"],
      ['a structured event with an invalid member name', cloudEventsJson, JSON.stringify({ ...envelope, fooBar: 1 }), 400,
        "invalid CloudEvent attribute name 'fooBar': names are lower-case letters a-z and digits"],
      ['an attribute value that is an object', cloudEventsJson, JSON.stringify({ ...envelope, ext: { a: 1 } }), 400,
        "invalid value of CloudEvent attribute 'ext': accepted are a string, a number or a boolean"],
      ['an attribute value that is an array', cloudEventsJson, JSON.stringify({ ...envelope, ext: [1] }), 400,
        "invalid value of CloudEvent attribute 'ext': accepted are a string, a number or a boolean"],
      ['both data and data_base64', cloudEventsJson, JSON.stringify({ ...envelope, data: 1, data_base64: 'AA==' }), 400,
        "structured CloudEvent with both 'data' and 'data_base64': an event has one of them"],
      ['data_base64 that is not a string', cloudEventsJson, JSON.stringify({ ...envelope, data_base64: 5 }), 400,
        "structured CloudEvent: 'data_base64' must be a string in base64 (RFC 4648, with its = padding)"],
      ['data_base64 that is not base64', cloudEventsJson, JSON.stringify({ ...envelope, data_base64: 'AAE' }), 400,
        "structured CloudEvent: 'data_base64' must be a string in base64 (RFC 4648, with its = padding)"],
      ['0.3 data in base64 that is not', cloudEventsJson,
        JSON.stringify({ ...envelope, specversion: '0.3', datacontentencoding: 'base64', data: 'no base64!' }), 400,
        "structured CloudEvent: 'data' must be a string in base64 (RFC 4648, with its = padding)"],
      ['batch mode', { 'Content-Type': 'application/cloudevents-batch+json' }, JSON.stringify([envelope]), 415,
        'CloudEvents batch mode (application/cloudevents-batch+json) is not supported: send one event per ' +
        'request, in binary or structured mode'],
    ];
    for (const [what, headers, body, status, message] of refusals) {
      it(`answers ${status} to ${what}, without calling the handler`, async () => {
        const { samples: earlier } = await scrapeMetrics(app.port);
        const sent = Object.fromEntries(Object.entries(headers).filter(([, value]) => value !== undefined));
        const res = await postEcho(app.port, sent, body);
        assert.equal(res.status, status);
        assert.equal(res.headers['content-type'], 'text/plain; charset=utf-8');
        if (typeof message === 'string') assert.equal(res.body, message);
        else assert.match(res.body, message);
        const { samples: later } = await scrapeMetrics(app.port);
        assert.equal(later.get('function_calls_total{method="POST"}'), earlier.get('function_calls_total{method="POST"}'));
      });
    }
  });

  describe('plain requests', () => {
    it('keep the Kubeless event as it was, the methods on its prototype', async () => {
      const echo = json(await postEcho(app.port, {
        'Content-Type': 'application/json', 'event-id': 'k-1', 'event-type': 'kubeless.type', 'ce-id': 'not-an-event',
      }, '{"a":1}'));
      assert.deepEqual(echo.keys, PLAIN_KEYS);
      assert.deepEqual(echo.ownNames, PLAIN_KEYS);
      assert.deepEqual(echo.methods, ['function', 'function']);
      assert.deepEqual(echo.event, {
        data: { a: 1 }, 'event-id': 'k-1', 'event-type': 'kubeless.type', 'event-time': echo.event['event-time'],
      });
    });

    it('keep decoding +json and text/json bodies as they did', async () => {
      const vendor = json(await postEcho(app.port, { 'Content-Type': 'application/vnd.api+json' }, '{"a":1}'));
      assert.equal(vendor.dataKind, 'buffer');
      const textJson = json(await postEcho(app.port, { 'Content-Type': 'text/json' }, '{"a":1}'));
      assert.equal(textJson.event.data, '{"a":1}');
    });
  });

  describe('replies', () => {
    it('sends a returned CloudEvent in binary mode, header by header', async () => {
      const res = await callWith(app.port, '/reply', {
        type: 'com.example.reply',
        source: '/replies',
        data: { answer: 42 },
        attributes: { subject: 'a "quoted" 100% ü', comexampleext: 'v1', count: 3, flag: false, absent: null },
      });
      assert.equal(res.status, 200);
      const ce = ceHeaders(res.headers);
      assert.deepEqual(Object.keys(ce).sort(), ['ce-comexampleext', 'ce-count', 'ce-flag', 'ce-id', 'ce-source',
        'ce-specversion', 'ce-subject', 'ce-time', 'ce-type']);
      assert.equal(ce['ce-specversion'], '1.0');
      assert.match(ce['ce-id'], UUID);
      assert.equal(ce['ce-source'], '/replies');
      assert.equal(ce['ce-type'], 'com.example.reply');
      assert.match(ce['ce-time'], RFC3339_UTC);
      assert.ok(Math.abs(Date.parse(ce['ce-time']) - Date.now()) < 5000);
      assert.equal(ce['ce-subject'], 'a%20%22quoted%22%20100%25%20%C3%BC');
      assert.equal(ce['ce-comexampleext'], 'v1');
      assert.equal(ce['ce-count'], '3');
      assert.equal(ce['ce-flag'], 'false');
      assert.equal(res.headers['content-type'], 'application/json');
      assert.equal(res.headers['content-length'], String(Buffer.byteLength(res.body)));
      assert.deepEqual(JSON.parse(res.body), { answer: 42 });
    });

    it('sends a resolved CloudEvent, with the default source and content types', async () => {
      const cases = [
        [{ data: 'héllo' }, 'text/plain; charset=utf-8', 'héllo'],
        [{ bytes: Buffer.from('raw').toString('base64') }, 'application/octet-stream', 'raw'],
        [{ data: [1, true] }, 'application/json', '[1,true]'],
        [{ data: 0 }, 'application/json', '0'],
        [{}, undefined, ''],
        [{ data: { a: 1 }, attributes: { datacontenttype: 'application/vnd.x+json' } }, 'application/vnd.x+json', '{"a":1}'],
        [{ data: 'a,b', attributes: { datacontenttype: 'text/csv' } }, 'text/csv', 'a,b'],
      ];
      for (const [spec, contentType, body] of cases) {
        const res = await callWith(app.port, '/reply-async', { type: 't', ...spec });
        assert.equal(res.status, 200);
        assert.equal(res.headers['ce-source'], 'ce.handle'); // MOD_NAME.FUNC_HANDLER without K_SERVICE
        assert.equal(res.headers['ce-datacontenttype'], undefined);
        assert.equal(res.headers['content-type'], contentType, JSON.stringify(spec));
        assert.equal(res.body, body);
      }
    });

    it('lets attributes override id, time and source', async () => {
      const res = await callWith(app.port, '/reply', {
        type: 't', source: 'ignored', attributes: { id: 'my-id', time: '2020-01-01T00:00:00Z', source: 'urn:mine' },
      });
      assert.equal(res.headers['ce-id'], 'my-id');
      assert.equal(res.headers['ce-time'], '2020-01-01T00:00:00Z');
      assert.equal(res.headers['ce-source'], 'urn:mine');
    });

    it('leaves the CloudEvent object readable and frozen', async () => {
      const { built, frozen } = json(await callWith(app.port, '/build', { type: 't', source: 's', data: { a: 1 } }));
      assert.deepEqual(Object.keys(built), ['specversion', 'id', 'source', 'type', 'time', 'datacontenttype', 'data']);
      assert.equal(built.datacontenttype, 'application/json');
      assert.deepEqual(built.data, { a: 1 });
      assert.equal(frozen, true);
    });

    const buildErrors = [
      ['no type', { source: 's' }, "the CloudEvent type must be a non-empty string, got undefined"],
      ['an empty source', { type: 't', source: '' }, "the CloudEvent source must be a non-empty string (or left out: ce.handle), got ''"],
      ['attributes that are not an object', { type: 't', attributes: [1] },
        'the CloudEvent attributes must be an object of name -> value, got [ 1 ]'],
      ['an invalid attribute name', { type: 't', attributes: { 'my-ext': 'x' } },
        "invalid CloudEvent attribute name 'my-ext': names are lower-case letters a-z and digits"],
      ['an attribute value that is an object', { type: 't', attributes: { ext: {} } },
        "invalid value of CloudEvent attribute 'ext': accepted are a string, a number or a boolean"],
      ['data among the attributes', { type: 't', attributes: { data: 1 } },
        "'data' is not a CloudEvent attribute: pass the data as the data argument"],
      ['another specversion', { type: 't', attributes: { specversion: '0.3' } },
        "the CloudEvent specversion can only be '1.0' (the version built here), got '0.3'"],
      ['an empty id', { type: 't', attributes: { id: '' } },
        "CloudEvent without 'id': id, source, specversion and type are required"],
    ];
    for (const [what, spec, message] of buildErrors) {
      it(`throws a TypeError for ${what}`, async () => {
        assert.deepEqual(json(await callWith(app.port, '/build', spec)), { name: 'TypeError', message });
      });
    }
  });

  describe('emitCloudEvent', () => {
    let sink;
    let emitter; // K_SINK: the sink's /events, K_CE_OVERRIDES, K_SERVICE

    before(async () => {
      sink = await startSink((req) => {
        if (req.url === '/fail') return [500, 'ü'.repeat(250)];
        return [202, 'accepted'];
      });
      emitter = await startServer({
        MOD_NAME: 'ce', FUNC_HANDLER: 'handle', FUNC_TIMEOUT: '5',
        K_SINK: `${sink.url}/events`,
        K_CE_OVERRIDES: '{"extensions": {"cluster": "east", "tier": 2}}',
        K_SERVICE: 'my-service',
      });
    });

    after(async () => {
      await stopServer(emitter);
      await stopSink(sink);
    });

    it('POSTs the event in binary mode to K_SINK with the overrides and tracing headers, and resolves to its id', async () => {
      sink.requests.length = 0;
      const res = await callWith(emitter.port, '/emit', {
        type: 'com.example.created',
        data: { name: 'fn', n: [1, 2] },
        attributes: { subject: 'naïve "100%"', cluster: 'west', count: 1 },
      }, { ...TRACING, 'x-request-id': 'not-copied' });
      const { id } = json(res);
      assert.match(id, UUID);
      assert.equal(sink.requests.length, 1);
      const [sent] = sink.requests;
      assert.equal(sent.method, 'POST');
      assert.equal(sent.url, '/events');
      assert.deepEqual(Object.keys(ceHeaders(sent.headers)).sort(), ['ce-cluster', 'ce-count', 'ce-id', 'ce-source',
        'ce-specversion', 'ce-subject', 'ce-tier', 'ce-time', 'ce-type']);
      assert.equal(sent.headers['ce-specversion'], '1.0');
      assert.equal(sent.headers['ce-id'], id);
      assert.equal(sent.headers['ce-source'], 'my-service'); // K_SERVICE
      assert.equal(sent.headers['ce-type'], 'com.example.created');
      assert.match(sent.headers['ce-time'], RFC3339_UTC);
      assert.equal(sent.headers['ce-subject'], 'na%C3%AFve%20%22100%25%22');
      assert.equal(sent.headers['ce-count'], '1');
      assert.equal(sent.headers['ce-cluster'], 'east'); // K_CE_OVERRIDES over the handler's attributes
      assert.equal(sent.headers['ce-tier'], '2');
      assert.equal(sent.headers['content-type'], 'application/json');
      assert.equal(sent.headers['content-length'], String(Buffer.byteLength(sent.body)));
      assert.deepEqual(JSON.parse(sent.body), { name: 'fn', n: [1, 2] });
      for (const [name, value] of Object.entries(TRACING)) assert.equal(sent.headers[name], value, name);
      assert.equal(sent.headers['x-request-id'], undefined);
    });

    it('sends text and bytes with their content types, and no body without data', async () => {
      sink.requests.length = 0;
      await callWith(emitter.port, '/emit', { type: 't', data: 'hé' });
      await callWith(emitter.port, '/emit', { type: 't', bytes: Buffer.from([1, 2]).toString('base64') });
      await callWith(emitter.port, '/emit', { type: 't' });
      assert.deepEqual(sink.requests.map((sent) => [sent.headers['content-type'], sent.body, sent.headers['content-length']]), [
        ['text/plain; charset=utf-8', 'hé', '3'],
        ['application/octet-stream', '\u0001\u0002', '2'],
        [undefined, '', '0'],
      ]);
    });

    it('does not put the overrides on replies', async () => {
      const res = await callWith(emitter.port, '/reply', { type: 't' });
      assert.equal(res.headers['ce-source'], 'my-service');
      assert.equal(res.headers['ce-cluster'], undefined);
    });

    it('publishes to the sink option rather than K_SINK', async () => {
      sink.requests.length = 0;
      const res = await callWith(emitter.port, '/emit', { type: 't', options: { sink: `${sink.url}/other` } });
      assert.match(json(res).id, UUID);
      assert.deepEqual(sink.requests.map((sent) => sent.url), ['/other']);
    });

    it('rejects when neither K_SINK nor the sink option is set', async () => {
      assert.deepEqual(json(await callWith(app.port, '/emit', { type: 't' })), {
        error: 'cannot publish the CloudEvent: no sink: K_SINK is not set (a SinkBinding or an event ' +
          "source's sink sets it) and no sink was given",
      });
    });

    it('rejects with the status and the start of the body of a sink answering 500, its password redacted', async () => {
      const port = new URL(sink.url).port;
      const res = await callWith(emitter.port, '/emit', {
        type: 't', options: { sink: `http://alice:s3cret@127.0.0.1:${port}/fail` },
      });
      assert.deepEqual(json(res), {
        error: `the sink http://alice:***@127.0.0.1:${port}/fail answered 500 Internal Server Error: ${'ü'.repeat(200)}`,
      });
      assert.equal(sink.requests.at(-1).headers.authorization, `Basic ${Buffer.from('alice:s3cret').toString('base64')}`);
    });

    it('fails the call with 500 when the handler does not catch the rejection', async () => {
      const res = await callWith(emitter.port, '/emit-uncaught', { type: 't', options: { sink: `${sink.url}/fail` } });
      assert.equal(res.status, 500);
      assert.equal(res.body, 'Internal Server Error');
      await waitFor(() => emitter.stderr.includes(`Error: the sink ${sink.url}/fail answered 500`), 'the error on stderr');
    });

    it('rejects naming the sink and the cause when the sink cannot be reached', async () => {
      const port = await freePort();
      const res = await callWith(emitter.port, '/emit', { type: 't', options: { sink: `http://127.0.0.1:${port}/x` } });
      assert.deepEqual(json(res), {
        error: `cannot publish the CloudEvent to the sink http://127.0.0.1:${port}/x: connect ECONNREFUSED 127.0.0.1:${port}`,
      });
    });

    it('rejects a sink that is not an http(s) URL, its credentials redacted', async () => {
      const cases = [
        ['ftp://bob:hunter2@example.com/x', 'ftp://bob:***@example.com/x'],
        ['http://token@exa mple.com/', 'http://***@exa mple.com/'],
        ['admin:secret@broker', 'admin:***@broker'],
      ];
      for (const [given, shown] of cases) {
        const { error } = json(await callWith(emitter.port, '/emit', { type: 't', options: { sink: given } }));
        assert.equal(error, `cannot publish the CloudEvent: the sink ${shown} (the sink option) is not an http:// or https:// URL`);
      }
      const proc = await startServer({ MOD_NAME: 'ce', FUNC_HANDLER: 'handle', K_SINK: 'broker.default.svc' });
      try {
        const { error } = json(await callWith(proc.port, '/emit', { type: 't' }));
        assert.equal(error, 'cannot publish the CloudEvent: the sink broker.default.svc (K_SINK) is not an http:// or https:// URL');
      } finally {
        await stopServer(proc);
      }
    });

    for (const [what, value] of [['invalid JSON', '{extensions'], ['extensions that are not an object', '{"extensions": []}'],
      ['an extension with an invalid name', '{"extensions": {"Bad": "x"}}']]) {
      it(`exits 2 on K_CE_OVERRIDES with ${what}`, async () => {
        const { code, stderr } = await runToExit({ MOD_NAME: 'ce', FUNC_HANDLER: 'handle', K_CE_OVERRIDES: value });
        assert.equal(code, 2);
        assert.ok(stderr.startsWith(`fnbuild runtime: invalid K_CE_OVERRIDES=${JSON.stringify(value)}: expected JSON ` +
          'of the form {"extensions": {"name": "value"}} ('), stderr);
      });
    }
  });
});
