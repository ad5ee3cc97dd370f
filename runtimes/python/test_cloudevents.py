"""Tests of the Python function server's CloudEvents: events in (binary and structured mode,
specversion 1.0 and 0.3), events out (published to a sink, and replies).

Run from the project root: python3 -m unittest discover -s runtimes/python -v
"""

import base64
import http.server
import json
import shutil
import subprocess
import sys
import threading
import unittest

from test_kubeless import (RFC3339_UTC, SERVER, UUID, CodeDirTestCase, Server, ServerTestCase,
                           free_port, make_code_dir, server_env)

TRACE_PARENT = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'


class Sink:
    """An HTTP server that records the requests it gets and answers each with `status`."""

    def __init__(self, status=202):
        self.requests = []
        self.status = status
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get('content-length', 0)))
                sink.requests.append({'path': self.path, 'body': body,
                                      'headers': {k.lower(): v for k, v in self.headers.items()}})
                answer = b'sink says no' if sink.status >= 300 else b''
                self.send_response(sink.status)
                self.send_header('Content-Length', str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self.server.server_address[1]}/'
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def ce_keys(event):
    """The keys of what the echo handler saw, without the plain-request ones."""
    return {key: value for key, value in event.items() if key.startswith(('ce-', 'event-'))}


class CloudEventsInTest(ServerTestCase):
    """What a handler sees of an incoming CloudEvent (testdata/app.py's echo)."""

    def test_binary_mode_1_0_every_attribute(self):
        result = self.echo(body=b'{"order": 7}', headers={
            'ce-specversion': '1.0', 'ce-id': 'A234-1234-1234', 'ce-type': 'com.example.order',
            'ce-source': '/mycontext/sub', 'ce-time': '2018-04-05T17:31:00Z',
            'ce-subject': 'caf%C3%A9 %22quoted%22 100%25', 'ce-dataschema': 'https://example.com/s',
            'ce-eventtypeversion': 'v1', 'ce-knativearrivaltime': '2024-01-01T00:00:00Z',
            'Content-Type': 'application/vnd.example+json'})
        self.assertEqual(ce_keys(result['event']), {
            'event-id': 'A234-1234-1234', 'event-type': 'com.example.order',
            'event-namespace': '/mycontext/sub', 'event-time': '2018-04-05T17:31:00Z',
            'ce-specversion': '1.0', 'ce-id': 'A234-1234-1234', 'ce-type': 'com.example.order',
            'ce-source': '/mycontext/sub', 'ce-time': '2018-04-05T17:31:00Z',
            'ce-subject': 'café "quoted" 100%', 'ce-dataschema': 'https://example.com/s',
            'ce-eventtypeversion': 'v1', 'ce-knativearrivaltime': '2024-01-01T00:00:00Z',
            'ce-datacontenttype': 'application/vnd.example+json'})
        self.assertEqual(result['data'], {'order': 7})
        self.assertEqual(result['request']['json'], {'order': 7})

    def test_binary_mode_0_3_without_time_or_content_type(self):
        result = self.echo(body='plain text é'.encode(), headers={
            'ce-specversion': '0.3', 'ce-id': '1', 'ce-type': 't', 'ce-source': 's',
            'ce-schemaurl': 'https://example.com/schema'})
        event = result['event']
        self.assertEqual(event['ce-schemaurl'], 'https://example.com/schema')
        self.assertEqual(event['ce-specversion'], '0.3')
        self.assertNotIn('ce-time', event)
        self.assertNotIn('ce-datacontenttype', event)
        self.assertRegex(event['event-time'], RFC3339_UTC)
        self.assertEqual((result['data'], result['data_type']), ('plain text é', 'str'))

    def test_binary_mode_data_that_is_not_text_is_bytes(self):
        result = self.echo(body=b'\x00\xff', headers={
            'ce-specversion': '1.0', 'ce-id': '1', 'ce-type': 't', 'ce-source': 's',
            'Content-Type': 'application/octet-stream'})
        self.assertEqual((result['data'], result['data_type']), ('00ff', 'bytes'))

    def test_structured_mode_1_0(self):
        envelope = {'specversion': '1.0', 'id': 'x-1', 'type': 'com.example.created',
                    'source': 'urn:example', 'time': '2020-01-01T00:00:00.5Z',
                    'subject': 'sub', 'datacontenttype': 'application/json',
                    'count': 3, 'flag': True, 'ignored': None, 'data': {'a': [1, 2]}}
        result = self.echo(body=json.dumps(envelope).encode(),
                           headers={'Content-Type': 'application/cloudevents+json; charset=utf-8'})
        self.assertEqual(ce_keys(result['event']), {
            'event-id': 'x-1', 'event-type': 'com.example.created', 'event-namespace': 'urn:example',
            'event-time': '2020-01-01T00:00:00.5Z', 'ce-specversion': '1.0', 'ce-id': 'x-1',
            'ce-type': 'com.example.created', 'ce-source': 'urn:example',
            'ce-time': '2020-01-01T00:00:00.5Z', 'ce-subject': 'sub',
            'ce-datacontenttype': 'application/json', 'ce-count': 3, 'ce-flag': True})
        self.assertEqual(result['data'], {'a': [1, 2]})

    def test_structured_mode_binary_data(self):
        envelope = {'specversion': '1.0', 'id': '1', 'type': 't', 'source': 's',
                    'data_base64': base64.b64encode(b'\x00\x01\xff').decode()}
        result = self.echo(body=json.dumps(envelope).encode(),
                           headers={'Content-Type': 'application/cloudevents+json'})
        self.assertEqual((result['data'], result['data_type']), ('0001ff', 'bytes'))
        envelope_0_3 = {'specversion': '0.3', 'id': '1', 'type': 't', 'source': 's',
                        'datacontentencoding': 'base64', 'data': base64.b64encode(b'\xfe').decode()}
        result = self.echo(body=json.dumps(envelope_0_3).encode(),
                           headers={'Content-Type': 'application/cloudevents+json'})
        self.assertEqual((result['data'], result['data_type']), ('fe', 'bytes'))
        self.assertEqual(result['event']['ce-datacontentencoding'], 'base64')

    def test_the_content_type_decides_the_mode(self):
        envelope = {'specversion': '1.0', 'id': 'structured', 'type': 't', 'source': 's'}
        result = self.echo(body=json.dumps(envelope).encode(), headers={
            'Content-Type': 'application/cloudevents+json', 'ce-specversion': '1.0',
            'ce-id': 'binary', 'ce-type': 't', 'ce-source': 's'})
        self.assertEqual(result['event']['event-id'], 'structured')

    def test_structured_mode_without_data(self):
        envelope = {'specversion': '1.0', 'id': '1', 'type': 't', 'source': 's'}
        result = self.echo(body=json.dumps(envelope).encode(),
                           headers={'Content-Type': 'application/cloudevents+json'})
        self.assertEqual((result['data'], result['data_type']), (None, 'NoneType'))

    def test_plain_requests_with_ce_like_headers_are_not_events(self):
        result = self.echo(body=b'hi', headers={'ce-id': '1', 'ce-type': 't'})
        self.assertEqual(result['event']['event-type'], None)
        self.assertNotIn('ce-id', result['event'])
        self.assertEqual(result['data'], 'hi')

    def test_invalid_events_are_refused_with_the_reason(self):
        binary = {'ce-specversion': '1.0', 'ce-id': '1', 'ce-type': 't', 'ce-source': 's'}
        structured = {'Content-Type': 'application/cloudevents+json'}
        cases = [
            ({**binary, 'ce-specversion': '2.0'}, b'', 400,
             "unsupported CloudEvents specversion '2.0': accepted are 1.0 and 0.3"),
            ({k: v for k, v in binary.items() if k != 'ce-source'}, b'', 400,
             "CloudEvent without 'source': id, source, specversion and type are required"),
            ({**binary, 'ce-id': ''}, b'', 400, "CloudEvent without 'id'"),
            ({**binary, 'ce-foo_bar': 'x'}, b'', 400,
             "invalid CloudEvent attribute name 'foo_bar': names are lower-case letters a-z and digits"),
            ({**binary, 'ce-subject': '100%zz'}, b'', 400,
             "CloudEvent attribute 'subject': malformed percent-encoding"),
            ({**binary, 'ce-subject': '%ff'}, b'', 400, "CloudEvent attribute 'subject' is not UTF-8 text"),
            ({**binary, 'Content-Type': 'application/json'}, b'{"a":', 400, 'Invalid JSON body: '),
            (structured, b'[1]', 400, 'structured CloudEvent: the body must be a JSON object'),
            (structured, b'{"id": ', 400, 'structured CloudEvent: the body is not valid JSON: '),
            (structured, b'{"specversion": "1.0", "id": "1", "source": "s"}', 400,
             "CloudEvent without 'type'"),
            (structured, b'{"specversion": "1.0", "id": 7, "source": "s", "type": "t"}', 400,
             "CloudEvent without 'id'"),
            (structured, b'{"specversion": "1.0", "id": "1", "source": "s", "type": "t",'
                         b' "data": 1, "data_base64": "AA=="}', 400,
             "structured CloudEvent with both 'data' and 'data_base64'"),
            (structured, b'{"specversion": "1.0", "id": "1", "source": "s", "type": "t",'
                         b' "data_base64": "!!"}', 400, 'data_base64 is not valid base64'),
            (structured, b'{"specversion": "1.0", "id": "1", "source": "s", "type": "t",'
                         b' "ext": {"a": 1}}', 400,
             "CloudEvent attribute 'ext' must be a string, number or boolean"),
            ({'Content-Type': 'application/cloudevents-batch+json'}, b'[]', 415,
             'CloudEvents batch mode (application/cloudevents-batch+json) is not supported: '
             'send one event per request, in binary or structured mode'),
        ]
        for headers, body, status, reason in cases:
            with self.subTest(reason=reason):
                got, _, text = self.call('POST', '/echo', body, headers)
                self.assertEqual(got, status, text)
                self.assertIn(reason, text.decode())
        self.assertEqual(self.call('GET', '/hello')[2], b'hello world')


class CloudEventsOutTest(unittest.TestCase):
    """Events a handler makes (testdata/events.py): replies, and events published to a sink."""

    @classmethod
    def setUpClass(cls):
        cls.sink = Sink()
        cls.code_dir = make_code_dir()
        cls.port = free_port()
        env = server_env(cls.code_dir, 'events', 'handler', PORT=str(cls.port),
                         K_SINK=cls.sink.url + 'events', K_SERVICE='orders',
                         K_CE_OVERRIDES='{"extensions": {"cluster": "east"}}')
        cls.server = Server(env, cls.port)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.sink.close()
        shutil.rmtree(cls.code_dir, ignore_errors=True)

    def setUp(self):
        self.sink.requests.clear()
        self.sink.status = 202

    def act(self, action, spec, headers=None):
        status, response_headers, body = self.server.request(
            'POST', '/' + action, json.dumps(spec).encode(),
            {'Content-Type': 'application/json', **(headers or {})})
        return status, response_headers, body

    def emit(self, spec, headers=None, action='emit'):
        status, _, body = self.act(action, spec, headers)
        self.assertEqual(status, 200, body)
        return json.loads(body)

    def test_reply_is_a_binary_mode_event(self):
        status, headers, body = self.act('reply', {
            'type': 'com.example.reply', 'data': {'ok': True},
            'attributes': {'subject': 'über "x"', 'id': 'reply-1', 'priority': 5, 'urgent': False}})
        self.assertEqual((status, json.loads(body)), (200, {'ok': True}))
        self.assertEqual(headers['content-type'], 'application/json')
        self.assertEqual(
            {k: v for k, v in headers.items() if k.startswith('ce-') and k != 'ce-time'},
            {'ce-specversion': '1.0', 'ce-id': 'reply-1', 'ce-type': 'com.example.reply',
             'ce-source': 'orders', 'ce-subject': '%C3%BCber%20%22x%22', 'ce-priority': '5',
             'ce-urgent': 'false'})
        self.assertRegex(headers['ce-time'], RFC3339_UTC)
        self.assertNotIn('ce-cluster', headers, 'K_CE_OVERRIDES is for published events only')

    def test_reply_data_types(self):
        cases = [({'data': 'text é'}, 'text/plain; charset=utf-8', 'text é'.encode()),
                 ({'data_hex': '00ff'}, 'application/octet-stream', b'\x00\xff'),
                 ({'data': '<a/>', 'attributes': {'datacontenttype': 'application/xml'}},
                  'application/xml', b'<a/>'),
                 ({}, None, b'')]
        for spec, content_type, data in cases:
            with self.subTest(spec=spec):
                status, headers, body = self.act('reply', {'type': 't', **spec})
                self.assertEqual((status, headers.get('content-type'), body), (200, content_type, data))
                self.assertRegex(headers['ce-id'], UUID)

    def test_plain_values_stay_plain_responses(self):
        status, headers, body = self.act('plain', {'type': 't'})
        self.assertEqual((status, json.loads(body)), (200, {'type': 't'}))
        self.assertFalse([k for k in headers if k.startswith('ce-')])

    def test_invalid_reply_is_a_500(self):
        status, _, _ = self.act('reply', {'type': ''})
        self.assertEqual(status, 500)
        self.assertTrue(self.server.stderr.wait_for("a CloudEvent's 'type' must be a non-empty string"))

    def test_emit_publishes_to_k_sink_in_binary_mode(self):
        result = self.emit({'type': 'com.example.emitted', 'source': '/orders/7',
                            'data': {'n': 1}, 'attributes': {'subject': 'a b%'}},
                           headers={'traceparent': TRACE_PARENT, 'tracestate': 'k=v',
                                    'X-B3-TraceId': 'abc', 'X-B3-Sampled': '1'})
        [request] = self.sink.requests
        headers = request['headers']
        self.assertEqual(request['path'], '/events')
        self.assertEqual(json.loads(request['body']), {'n': 1})
        self.assertEqual(headers['content-type'], 'application/json')
        self.assertEqual(headers['ce-id'], result['id'])
        self.assertRegex(result['id'], UUID)
        self.assertEqual((headers['ce-specversion'], headers['ce-type'], headers['ce-source'],
                          headers['ce-subject'], headers['ce-cluster']),
                         ('1.0', 'com.example.emitted', '/orders/7', 'a%20b%25', 'east'))
        self.assertRegex(headers['ce-time'], RFC3339_UTC)
        self.assertEqual((headers['traceparent'], headers['tracestate'], headers['x-b3-traceid'],
                          headers['x-b3-sampled']), (TRACE_PARENT, 'k=v', 'abc', '1'))

    def test_emit_kyma_name_and_default_source(self):
        self.emit({'type': 'kyma.type', 'data': 'hi'}, action='emit-kyma')
        [request] = self.sink.requests
        self.assertEqual((request['headers']['ce-source'], request['headers']['content-type'],
                          request['body']), ('orders', 'text/plain; charset=utf-8', b'hi'))
        self.assertNotIn('traceparent', request['headers'])

    def test_sink_argument_wins_over_k_sink(self):
        other = Sink()
        try:
            self.emit({'type': 't', 'sink': other.url + 'other'})
            self.assertEqual([r['path'] for r in other.requests], ['/other'])
            self.assertEqual(self.sink.requests, [])
        finally:
            other.close()

    def test_emit_errors_reach_the_handler(self):
        self.sink.status = 503
        result = self.emit({'type': 't'})
        self.assertEqual(result['error_type'], 'CloudEventError')
        self.assertEqual(result['error'], f'the sink {self.sink.url}events answered 503 '
                                          'Service Unavailable: sink says no')
        closed = f'http://user:secret@127.0.0.1:{free_port()}/'
        result = self.emit({'type': 't', 'sink': closed})
        self.assertIn('cannot publish the CloudEvent to the sink http://user:***@127.0.0.1:', result['error'])
        self.assertNotIn('secret', result['error'])
        result = self.emit({'type': 't', 'sink': 'ftp://token@host/x'})
        self.assertEqual(result['error'], 'cannot publish the CloudEvent: the sink ftp://***@host/x '
                                          '(the sink argument) is not an http:// or https:// URL')
        result = self.emit({'type': 't', 'attributes': {'Bad': 1}})
        self.assertEqual((result['error_type'], result['error']), (
            'ValueError', "invalid CloudEvent attribute name 'Bad': names are lower-case letters "
                          'a-z and digits'))
        result = self.emit({'type': 't', 'attributes': {'datacontenttype': 'a/b\r\nX-Evil: 1'}})
        self.assertIn("CloudEvent datacontenttype 'a/b\\r\\nX-Evil: 1' is not a media type", result['error'])
        result = self.emit({'type': 't', 'attributes': {'ext': [1]}})
        self.assertIn("CloudEvent attribute 'ext' must be a string, number or boolean", result['error'])

    def test_sink_credentials_are_sent_as_basic_auth(self):
        port = self.sink.server.server_address[1]
        self.emit({'type': 't', 'sink': f'http://user:p%40ss@127.0.0.1:{port}/'})
        [request] = self.sink.requests
        self.assertEqual(request['headers']['authorization'],
                         'Basic ' + base64.b64encode(b'user:p@ss').decode())


class CloudEventsSettingsTest(CodeDirTestCase):
    """Publishing without a sink, an async handler's reply, and invalid K_CE_OVERRIDES."""

    def serve(self, function, **env):
        port = free_port()
        env = server_env(self.code_dir, 'events', function, PORT=str(port), **env)
        env.pop('K_SINK', None)
        env.pop('K_SERVICE', None)
        server = Server(env, port)
        self.addCleanup(server.stop)
        return server

    def test_no_sink_is_a_clear_error(self):
        server = self.serve('handler')
        status, _, body = server.request('POST', '/emit', b'{"type": "t"}',
                                         {'Content-Type': 'application/json'})
        self.assertEqual(json.loads(body)['error'], (
            'cannot publish the CloudEvent: no sink: K_SINK is not set (a SinkBinding or an '
            "event source's sink sets it) and no sink was given"))

    def test_async_handler_replies_and_default_source_is_the_handler(self):
        server = self.serve('async_reply')
        status, headers, body = server.request('GET', '/')
        self.assertEqual((status, headers['ce-type'], headers['ce-source'], json.loads(body)),
                         (200, 'com.example.async', 'events.async_reply', {'async': True}))

    def test_invalid_overrides_stop_the_start(self):
        for value in ('{not json', '{"extensions": {"Bad": "x"}}', '{"extensions": [1]}'):
            with self.subTest(value=value):
                env = server_env(self.code_dir, 'events', 'handler', PORT=str(free_port()),
                                 K_CE_OVERRIDES=value)
                result = subprocess.run([sys.executable, SERVER], env=env, capture_output=True,
                                        text=True, timeout=10)
                self.assertEqual(result.returncode, 2, result.stderr)
                self.assertIn('fnbuild runtime: K_CE_OVERRIDES ', result.stderr)
                self.assertIn('{"extensions": {"name": "value"}}', result.stderr)


if __name__ == '__main__':
    unittest.main()
