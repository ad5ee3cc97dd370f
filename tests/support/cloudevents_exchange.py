#!/usr/bin/env python3
"""Exchanges CloudEvents with a running function, using the CloudEvents Python SDK
(`cloudevents` on PyPI, its `cloudevents.core` API) on both sides.

usage: cloudevents_exchange.py FUNCTION_URL SINK_PORT

Listens on 127.0.0.1:SINK_PORT as the function's sink (its K_SINK) and sends the function:
  - "com.example.echo" events in binary and structured mode, specversion 1.0 and 0.3, with
    every optional attribute and two extensions, JSON data, and binary data in structured mode;
  - a "com.example.publish" event with trace context headers: the function publishes an event;
  - a "com.example.ask" event: the function replies with an event.
Every message the function sends or answers is parsed by the SDK. Prints one JSON object on
stdout: what was sent and what came back or reached the sink, for the caller to check.
"""

import base64
import datetime
import http.server
import json
import sys
import threading
import urllib.request
import uuid

from cloudevents.core.bindings.http import (HTTPMessage, from_http_event, to_binary_event,
                                            to_structured_event)
from cloudevents.core.v03.event import CloudEvent as CloudEvent03
from cloudevents.core.v1.event import CloudEvent as CloudEvent10

SENT_TIME = datetime.datetime(2026, 11, 30, 12, 34, 56, 789000, tzinfo=datetime.timezone.utc)
TRACE_HEADERS = {'traceparent': '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
                 'tracestate': 'vendor=value', 'x-b3-traceid': '80f198ee56343ba864fe8b2a57d3eff7',
                 'x-b3-spanid': 'e457b5a2e4d86bd1', 'x-b3-sampled': '1'}


def plain(value):
    """value as JSON: bytes as {"base64": ...}, datetimes as ISO text."""
    if isinstance(value, (bytes, bytearray)):
        return {'base64': base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if hasattr(value, 'isoformat'):
        return value.isoformat()
    return value


def parsed(headers, body):
    event = from_http_event(HTTPMessage(headers={k.lower(): v for k, v in headers.items()},
                                        body=body))
    return {'attributes': plain(event.get_attributes()), 'data': plain(event.get_data())}


class Sink(http.server.BaseHTTPRequestHandler):
    received = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get('content-length', 0)))
        headers = {k.lower(): v for k, v in self.headers.items()}
        Sink.received.append({'event': parsed(headers, body),
                              'trace': {k: headers.get(k) for k in TRACE_HEADERS}})
        self.send_response(202)
        self.send_header('Content-Length', '0')
        self.end_headers()

    def log_message(self, *args):
        pass


def post(url, message, extra_headers=None):
    request = urllib.request.Request(url, data=message.body, method='POST',
                                     headers={**message.headers, **(extra_headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers.items()), error.read()


def make(specversion, kind, data, **extra):
    attributes = {'specversion': specversion, 'id': str(uuid.uuid4()), 'type': kind,
                  'source': f'/tests/{specversion}', 'time': SENT_TIME,
                  'subject': 'orders/7 "ü"', 'eventtypeversion': 'v1', 'tenant': 'blue',
                  **extra}
    attributes['schemaurl' if specversion == '0.3' else 'dataschema'] = 'https://example.com/s'
    if data is not None and not isinstance(data, bytes):
        attributes['datacontenttype'] = 'application/json'
    event = (CloudEvent03 if specversion == '0.3' else CloudEvent10)(attributes, data)
    return event, {k: plain(v) for k, v in attributes.items()}


def main():
    function_url, sink_port = sys.argv[1], int(sys.argv[2])
    server = http.server.ThreadingHTTPServer(('127.0.0.1', sink_port), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    report = {'echo': [], 'publish': None, 'reply': None}
    cases = [(version, mode, data)
             for version in ('1.0', '0.3')
             for mode, data in (('binary', {'n': 1, 'text': 'é'}),
                                ('structured', {'n': 2}),
                                ('structured', b'\x00\x01binary\xff'))]
    for version, mode, data in cases:
        event, attributes = make(version, 'com.example.echo', data)
        convert = to_binary_event if mode == 'binary' else to_structured_event
        status, _, body = post(function_url, convert(event))
        report['echo'].append({'mode': mode, 'sent': attributes, 'sent_data': plain(data),
                               'status': status, 'seen': json.loads(body) if status == 200
                               else body.decode('utf-8', 'replace')})
    event, attributes = make('1.0', 'com.example.publish', {'order': 7})
    status, _, body = post(function_url, to_binary_event(event), TRACE_HEADERS)
    report['publish'] = {'sent': attributes, 'trace': TRACE_HEADERS, 'status': status,
                         'answer': body.decode('utf-8', 'replace'), 'sink': Sink.received}
    event, attributes = make('1.0', 'com.example.ask', {'question': 6})
    status, headers, body = post(function_url, to_structured_event(event))
    report['reply'] = {'sent': attributes, 'status': status,
                       'event': parsed(headers, body) if status == 200
                       else body.decode('utf-8', 'replace')}
    server.shutdown()
    json.dump(report, sys.stdout, indent=1)


if __name__ == '__main__':
    main()
