"""fnbuild's Python function server: runs one Kubeless-style function behind HTTP.

fnbuild copies this file into every Python function image and starts it as
``python3 -u /opt/fnbuild/runtime/kubeless.py``.  It imports the user's module
once, then answers HTTP requests on one asyncio event loop:

* ``GET /healthz`` answers ``OK``;
* ``GET /metrics`` answers Prometheus text (calls, failures and a duration
  histogram per HTTP method, the metric names Kubeless used);
* every other path and method calls ``handler(event, context)`` with the
  ``event`` and ``context`` dicts of the Kubeless Python interface.  A
  CloudEvent (binary or structured mode, specversion 1.0 or 0.3, as Knative
  Eventing delivers them) fills the Kubeless keys from its attributes and adds
  every attribute under its ``ce-`` name; ``event.cloud_event(...)`` makes an
  event (returned, it is the reply) and ``event.emit_cloud_event(...)``
  publishes one to K_SINK (see "CloudEvents" below).

Plain ``def`` handlers run in a pool of worker threads, ``async def`` handlers
run on the event loop; both are bounded by ``FUNC_TIMEOUT`` (answer 408).
Only the standard library is used, and Python 3.9 or newer is enough.

A server that stops serving while ``/healthz`` answers OK is never restarted
by Knative or Kubernetes, so:

* Hung calls.  Calls run in threads of this process, not in processes of their
  own, because Kubeless keeps module state between calls (a global counter
  counts across calls).  A thread cannot be stopped: a ``def`` call that
  outlives FUNC_TIMEOUT is answered 408 and left running ("stuck"), and a new
  thread takes its place, so the pool keeps its size and the call costs no
  capacity; the stuck thread ends when the handler returns.  A call that timed
  out before a thread took it never runs.  When FUNC_THREADS calls are stuck
  at once, the server gives up: it logs the stuck calls, answers ``/healthz``
  and new calls 503, lets the calls in flight finish (for up to 10 s), and
  exits with status 3, so that the platform restarts it; that also stops the
  CPU of handlers that loop.  (An ``async def`` call is cancelled at its
  timeout; one that blocks the event loop blocks ``/healthz`` too, which the
  platform's probe notices.)  Handlers that loop take the GIL from the event
  loop, which then answers, counts and stops slowly: a watchdog thread also
  counts the stuck calls and exits the process if it has not stopped 12 s
  after giving up.  ``/metrics`` has the gauge ``function_calls_stuck``.
* Slow clients.  A request head must arrive within FUNC_HEADER_TIMEOUT of its
  first byte (for a new connection: of connecting), a body must not pause for
  FUNC_BODY_TIMEOUT nor come slower than MIN_BODY_RATE on average (a body
  dribbled a byte at a time is cut off as soon as a silent one), and a
  keep-alive connection is closed after
  FUNC_IDLE_TIMEOUT without a request; late heads and bodies get a 408.  At
  most FUNC_MAX_CONNECTIONS connections are open (lowered to fit the
  open-file limit, leaving an eighth of it, at least 64, to the handler): a
  new connection beyond that closes another one, the first of: answered ones
  still lingering, idle keep-alive ones, ones still sending their head, ones
  sending a body, oldest first, never one whose call is running; so a health
  probe gets through however many slow connections are open.  Only when every
  connection has a call running is the new one answered 503 and closed.
* Malformed requests get a 4xx with the reason in the body, a JSON body
  nested too deeply for the parser included; after an error in the HTTP
  framing the connection is closed.

Environment:
  FNBUILD_CODE_DIR   directory of the user's code and pip prefix (default /kubeless)
  MOD_NAME           module to import: <code dir>/<MOD_NAME>.py or a package dir
  FUNC_HANDLER       name of the function in that module
  FUNC_TIMEOUT       seconds a call may take (default 180)
  FUNC_RUNTIME, FUNC_MEMORY_LIMIT   passed to the handler in ``context``
  PORT, else FUNC_PORT             port to listen on (default 8080)
  FUNC_THREADS       worker threads for plain ``def`` handlers (default 32); as
                     many stuck calls make the server exit with status 3
  REQ_MB_LIMIT       largest accepted request body in MB (default 100)
  FUNC_HEADER_TIMEOUT  seconds for a request head to arrive (default 10)
  FUNC_BODY_TIMEOUT    seconds a request body may pause, or fall behind 1 KiB/s (default 60)
  FUNC_IDLE_TIMEOUT    seconds a keep-alive connection may wait for a request
                       (default 120: longer than clients such as Go's 90 s,
                       so that the client closes first)
  FUNC_MAX_CONNECTIONS most connections open at once (default 4096)
  K_SINK             where emit_cloud_event publishes (set by a SinkBinding or a source)
  K_CE_OVERRIDES     JSON {"extensions": {...}} set on every published event
  K_SERVICE          the Knative Service's name: the default source of events made
"""

import asyncio
import base64
import binascii
import collections
import collections.abc
import email.utils
import http
import importlib.machinery
import importlib.util
import inspect
import io
import json
import os
import queue
import random
import re
import signal
import site
import sys
import threading
import time
import traceback
import uuid
from urllib.parse import parse_qs, quote, unquote, unquote_to_bytes, urlsplit

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
MAX_CHUNK_LINE_BYTES = 1024
# While a request is being handled, later (pipelined) bytes are buffered up to
# this size before the connection stops reading.
MAX_BUFFERED_BYTES = 1024 * 1024
SHUTDOWN_GRACE_SECONDS = 10.0
# How often connection deadlines are checked (they are met within this much).
SWEEP_SECONDS = 0.25
# The exit status when the server gave up because handler calls are stuck.
UNHEALTHY_EXIT = 3
# After answering with 'Connection: close', unread input is discarded for up to
# this long before the socket closes, so that the client can read the answer
# (closing with unread input makes the kernel reset the connection).
LINGER_SECONDS = 2.0
# Bytes a second a request body must average (a slow mobile link sends far more); each byte
# moves the body deadline 1/MIN_BODY_RATE s later, never past FUNC_BODY_TIMEOUT from now.
MIN_BODY_RATE = 1024
# sys.setswitchinterval while calls are stuck (the default is 5 ms).  Measured with the
# benchmark's soak (handlers looping after their 408): /healthz's worst answer went from
# 615 to 72 ms and the good calls served doubled.  Not the default: it costs the hello
# throughput a few percent when every thread is busy with real work.
STUCK_SWITCH_INTERVAL = 0.001
# Methods that reach the handler (others get 501: this also keeps the metrics
# method labels few and safe).
METHODS = frozenset(('GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'))
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

TEXT_HTML = 'text/html; charset=UTF-8'
TEXT_PLAIN = 'text/plain; charset=utf-8'
OCTET_STREAM = 'application/octet-stream'
JSON_TYPE = 'application/json'
METRICS_TYPE = 'text/plain; version=0.0.4; charset=utf-8'

REASONS = {status.value: status.phrase for status in http.HTTPStatus}
INTERNAL_ERROR = (500, TEXT_PLAIN, b'Internal Server Error')
BARE_LINE_END = 'malformed request head: lines must end with CRLF (found a bare LF or CR)'
TIMEOUT_ERROR = (408, TEXT_PLAIN, b'Request timeout exceeded')
HEX_DIGITS = b'0123456789abcdefABCDEF'


class StartupError(Exception):
    """A problem that stops the server before it serves; carries the exit status."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class BadRequest(Exception):
    """A request refused with an error status (a protocol error also closes the connection)."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


# --- configuration and loading the user's function --------------------------

class Config:
    """Settings read from the environment."""

    def __init__(self, env):
        self.code_dir = env.get('FNBUILD_CODE_DIR') or '/kubeless'
        self.module = required(env, 'MOD_NAME', "the handler's module, e.g. hello")
        self.function = required(env, 'FUNC_HANDLER', "the handler function's name, e.g. handler")
        self.timeout = number(env, 'FUNC_TIMEOUT', 180.0)
        self.port = int(number(env, 'PORT', None) or number(env, 'FUNC_PORT', 8080))
        self.threads = int(number(env, 'FUNC_THREADS', 32))
        self.body_limit = int(number(env, 'REQ_MB_LIMIT', 100) * 1024 * 1024)
        self.header_timeout = number(env, 'FUNC_HEADER_TIMEOUT', 10.0)
        self.body_timeout = number(env, 'FUNC_BODY_TIMEOUT', 60.0)
        self.idle_timeout = number(env, 'FUNC_IDLE_TIMEOUT', 120.0)
        self.max_connections = connection_cap(int(number(env, 'FUNC_MAX_CONNECTIONS', 4096)))
        self.cloud_events = CloudEventSettings(env, self.label, self.timeout)
        self.context = {
            'function-name': self.function,
            'timeout': self.timeout,
            'runtime': env.get('FUNC_RUNTIME'),
            'memory-limit': env.get('FUNC_MEMORY_LIMIT'),
        }

    @property
    def label(self):
        return f'{self.module}.{self.function}'


def connection_cap(wanted):
    """wanted, lowered to fit the open-file limit with room for the handler's own files."""
    try:
        import resource
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return wanted
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(16, min(wanted, soft - max(64, soft // 8)))


def required(env, name, meaning):
    value = env.get(name, '').strip()
    if not value:
        raise StartupError(2, f'{name} is not set (expected {meaning})')
    return value


def number(env, name, default):
    """A positive number from the environment, or default when unset or empty."""
    text = env.get(name, '').strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise StartupError(2, f'{name}={text!r} is not a positive number')
    return value


def prepare_sys_path(code_dir):
    """Put the code dir first, then its pip --prefix site-packages, on sys.path."""
    script_dir = os.path.dirname(os.path.abspath(__file__))
    before = [p for p in sys.path if p not in (code_dir, script_dir)]
    packages = os.path.join(code_dir, 'lib', 'python%d.%d' % sys.version_info[:2], 'site-packages')
    if os.path.isdir(packages):
        site.addsitedir(packages)  # also runs the .pth files pip may have written
    added = [p for p in sys.path if p not in before and p not in (code_dir, script_dir)]
    sys.path[:] = [code_dir] + added + before


def load_handler(config):
    """Import the user's module from the code dir and return the handler function."""
    prepare_sys_path(config.code_dir)
    spec = importlib.machinery.PathFinder.find_spec(config.module, [config.code_dir])
    if spec is None or spec.origin is None:  # not found, or only a namespace directory
        raise cannot_load(config, f'no module {config.module!r} in {config.code_dir} '
                                  f'({describe_dir(config.code_dir)})')
    module = importlib.util.module_from_spec(spec)
    sys.modules[config.module] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        traceback.print_exc()
        raise cannot_load(config, f'importing {spec.origin} failed (traceback above)')
    func = getattr(module, config.function, None)
    if not callable(func):
        found = sorted(name for name, value in vars(module).items()
                       if inspect.isfunction(value) and not name.startswith('_'))
        raise cannot_load(config, f'module {config.module!r} has no function {config.function!r} '
                                  f'(functions found: {", ".join(found) or "none"})')
    return func


def cannot_load(config, reason):
    return StartupError(1, f'cannot load handler {config.label!r}: {reason}')


def describe_dir(path):
    try:
        names = sorted(name for name in os.listdir(path) if not name.startswith('.'))
    except OSError as exc:
        return f'cannot list it: {exc.strerror}'
    shown = ', '.join(names[:20]) + (', ...' if len(names) > 20 else '')
    return f'files: {shown or "none"}'


# --- what handlers receive ---------------------------------------------------

class Headers(collections.abc.Mapping):
    """Request headers, looked up case-insensitively; iterates lower-case names."""

    __slots__ = ('_items',)

    def __init__(self, items):
        self._items = items

    def __getitem__(self, name):
        return self._items[name.lower()]

    def get(self, name, default=None):
        return self._items.get(name.lower(), default)

    def __contains__(self, name):
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self):
        return iter(self._items)

    def __len__(self):
        return len(self._items)

    def __repr__(self):
        return f'Headers({self._items!r})'


class Request:
    """The request in event['extensions']['request']: a small, bottle-compatible subset."""

    __slots__ = ('method', 'raw_path', 'query_string', 'headers', 'body', 'json')

    def __init__(self, method, raw_path, query_string, headers, body, parsed_json):
        self.method = method
        self.raw_path = raw_path
        self.query_string = query_string
        self.headers = headers
        self.body = io.BytesIO(body)
        self.json = parsed_json

    @property
    def path(self):
        return unquote(self.raw_path) if '%' in self.raw_path else self.raw_path

    @property
    def query(self):
        pairs = parse_qs(self.query_string, keep_blank_values=True)
        return {name: values[0] for name, values in pairs.items()}

    @property
    def url(self):
        scheme = self.headers.get('x-forwarded-proto', 'http')
        host = self.headers.get('host', 'localhost')
        query = '?' + self.query_string if self.query_string else ''
        return f'{scheme}://{host}{self.raw_path}{query}'

    def get_header(self, name, default=None):
        return self.headers.get(name, default)


# Python refuses to convert integers of more than 4300 digits (the conversion
# takes time quadratic in their length): since 3.11, 3.10.7 and 3.9.14.  On
# older interpreters (Debian bullseye's 3.9.2) JSON bodies are parsed with the
# same limit and the same error, so that a body of digits cannot hold the event
# loop for minutes there either.
if hasattr(sys, 'get_int_max_str_digits'):
    parse_json = json.loads
else:
    INT_MAX_STR_DIGITS = 4300

    def parse_json_int(text):
        digits = len(text) - text.startswith('-')
        if digits > INT_MAX_STR_DIGITS:
            raise ValueError(
                f'Exceeds the limit ({INT_MAX_STR_DIGITS} digits) for integer string '
                f'conversion: value has {digits} digits; use sys.set_int_max_str_digits() '
                'to increase the limit')
        return int(text)

    def parse_json(body):
        return json.loads(body, parse_int=parse_json_int)


def make_event(method, raw_path, query_string, headers, body, clock):
    """The Kubeless event; raises BadRequest for an invalid JSON body or CloudEvent.

    data is the parsed JSON for an application/json body, else the body as
    str when it is UTF-8, else bytes; an empty body is always ''.  A CloudEvent's
    data is decoded by its datacontenttype (see CloudEvents below).
    """
    content_type = headers.get('content-type')
    mime = media_type(content_type)
    parsed_json = None
    if mime == CE_STRUCTURED:  # the content type decides, as the HTTP binding says
        attributes, data = structured_cloud_event(body)
    else:
        if mime == CE_BATCH:
            raise BadRequest(CE_BATCH_REFUSED, 415)
        attributes = binary_attributes(headers) if 'ce-specversion' in headers else None
        if not body:
            data = ''
        elif (is_json_media(mime) if attributes else mime == JSON_TYPE):  # events: any JSON
            data = parsed_json = decode_json_body(body)
        else:
            data = decode_text(body)
    if attributes is None:
        event_id = headers.get('event-id') or new_event_id()
        event_type = headers.get('event-type') or content_type
        event_time = headers.get('event-time')
        namespace = headers.get('event-namespace')
    else:
        event_id, event_type = attributes['id'], attributes['type']
        event_time, namespace = attributes.get('time'), attributes['source']
    request = Request(method, raw_path, query_string, Headers(headers), body, parsed_json)
    event = Event({
        'data': data,
        'event-id': event_id,
        'event-type': event_type,
        'event-time': event_time or clock.event_time(),
        'event-namespace': namespace,
        'extensions': {'request': request},
    })
    if attributes is not None:
        for name, value in attributes.items():
            event['ce-' + name] = value
    return event


def decode_json_body(body, what='Invalid JSON body'):
    try:
        return parse_json(body)
    except ValueError as exc:  # also UnicodeDecodeError: not UTF-8 (or -16, -32)
        raise BadRequest(f'{what}: {exc}') from None
    except RecursionError:
        raise BadRequest(f'{what}: nested too deeply') from None


def decode_text(body):
    """body as str when it is UTF-8, else as bytes."""
    try:
        return body.decode('utf-8')
    except UnicodeDecodeError:
        return body


def new_event_id():
    # A random (version 4) UUID.  Event ids need to be unique, not secret:
    # the random module avoids uuid4()'s os.urandom system call per request.
    return str(uuid.UUID(int=random.getrandbits(128), version=4))


class Clock:
    """The current time as HTTP Date and as event-time; the per-second text is cached."""

    def __init__(self):
        self._second = 0
        self._http_date = ''
        self._rfc3339_second = ''

    def _fraction(self):
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._http_date = email.utils.formatdate(second, usegmt=True)
            self._rfc3339_second = time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(second))
        return now - second

    def http_date(self):
        self._fraction()
        return self._http_date

    def event_time(self):
        """RFC 3339 in UTC with microseconds, e.g. 2026-11-27T12:00:00.123456Z."""
        micros = int(self._fraction() * 1e6)
        return f'{self._rfc3339_second}.{micros:06d}Z'


# --- CloudEvents ---------------------------------------------------------------
#
# Knative Eventing delivers events as CloudEvents over HTTP (the CloudEvents HTTP
# binding and JSON format, specversion 1.0 and 0.3).  A handler sees such an event
# through the Kubeless keys (event-id, event-type, event-time, event-namespace,
# data) and every attribute under its 'ce-' name, as Kyma's runtimes showed them.
# Through the event's methods it makes CloudEvents, publishes them to K_SINK and
# replies with one (a Knative Trigger sends the reply back to its Broker).

CE_STRUCTURED = 'application/cloudevents+json'
CE_BATCH = 'application/cloudevents-batch+json'
CE_SPEC_VERSIONS = ('1.0', '0.3')
CE_REQUIRED = ('specversion', 'id', 'source', 'type')
CE_BATCH_REFUSED = (
    'CloudEvents batch mode (application/cloudevents-batch+json) is not supported: '
    'send one event per request, in binary or structured mode')
CE_NAME = re.compile(r'[a-z0-9]+\Z')
# A binary-mode header value is percent-encoded where it is not printable ASCII, and
# for '"', '%' and ' ' (the HTTP binding's rule).
CE_HEADER_SAFE = ''.join(chr(c) for c in range(0x21, 0x7f) if chr(c) not in '"%')
# A datacontenttype a handler gives is sent as the Content-Type header as it is.
CE_MEDIA_TYPE = re.compile(r'[!#$%&\'*+.^_`|~0-9A-Za-z-]+/[!#$%&\'*+.^_`|~0-9A-Za-z-]+(;[ -~]*)?\Z')
CE_BAD_ESCAPE = re.compile(r'%(?![0-9A-Fa-f]{2})')
# Trace context of the request a handler runs for, carried onto what it publishes.
TRACING_HEADERS = ('traceparent', 'tracestate', 'b3', 'x-b3-traceid', 'x-b3-spanid',
                   'x-b3-parentspanid', 'x-b3-sampled', 'x-b3-flags')
NO_SINK = ('cannot publish the CloudEvent: no sink: K_SINK is not set (a SinkBinding or '
           "an event source's sink sets it) and no sink was given")


def media_type(content_type):
    """'application/json' from 'Application/JSON; charset=utf-8'; '' for None."""
    return content_type.partition(';')[0].strip().lower() if content_type else ''


def is_json_media(mime):
    return mime == JSON_TYPE or mime == 'text/json' or mime.endswith('+json')


def check_attribute_name(name):
    if not CE_NAME.match(name):
        raise BadRequest(f'invalid CloudEvent attribute name {name!r}: '
                         'names are lower-case letters a-z and digits')


def check_required(attributes):
    """BadRequest unless the context attributes every CloudEvent has are there."""
    version = attributes.get('specversion')
    if version is not None and version not in CE_SPEC_VERSIONS:
        raise BadRequest(f'unsupported CloudEvents specversion {version!r}: '
                         'accepted are 1.0 and 0.3')
    for name in CE_REQUIRED:
        value = attributes.get(name)
        if not isinstance(value, str) or not value:
            raise BadRequest(f'CloudEvent without {name!r}: '
                             'id, source, specversion and type are required')


def percent_decoded(name, value):
    """A binary-mode header value as the attribute's text."""
    if '%' not in value and value.isascii():
        return value
    if CE_BAD_ESCAPE.search(value):
        raise BadRequest(f'CloudEvent attribute {name!r}: malformed percent-encoding in {value!r}')
    try:
        return unquote_to_bytes(value.encode('latin-1')).decode('utf-8')
    except UnicodeDecodeError:
        raise BadRequest(f'CloudEvent attribute {name!r} is not UTF-8 text') from None


def binary_attributes(headers):
    """The attributes of a binary-mode CloudEvent: ce-* headers, and Content-Type."""
    attributes = {}
    for header, value in headers.items():
        if header.startswith('ce-'):
            name = header[3:]
            check_attribute_name(name)
            attributes[name] = percent_decoded(name, value)
    content_type = headers.get('content-type')
    if content_type:
        attributes['datacontenttype'] = content_type
    check_required(attributes)
    return attributes


def structured_cloud_event(body):
    """(attributes, data) of a structured-mode CloudEvent: the whole event is a JSON object."""
    envelope = decode_json_body(body, 'structured CloudEvent: the body is not valid JSON')
    if not isinstance(envelope, dict):
        raise BadRequest('structured CloudEvent: the body must be a JSON object')
    if envelope.get('data') is not None and envelope.get('data_base64') is not None:
        raise BadRequest("structured CloudEvent with both 'data' and 'data_base64': "
                         'binary data goes in data_base64 alone')
    attributes = {}
    for name, value in envelope.items():
        if name == 'data' or name == 'data_base64' or value is None:
            continue
        check_attribute_name(name)
        if isinstance(value, (dict, list)):
            raise BadRequest(f'CloudEvent attribute {name!r} must be a string, number or boolean')
        attributes[name] = value
    check_required(attributes)
    encoded = envelope.get('data_base64')
    if encoded is None and attributes.get('datacontentencoding') == 'base64':  # specversion 0.3
        encoded = envelope.get('data')
    if encoded is None:
        return attributes, envelope.get('data')
    if not isinstance(encoded, str):
        raise BadRequest('structured CloudEvent: base64 data must be a JSON string')
    try:
        return attributes, base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise BadRequest(f'structured CloudEvent: data_base64 is not valid base64 ({exc})') from None


def percent_encoded(value):
    """An attribute value as a header value (booleans as true/false)."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    return quote(str(value), safe=CE_HEADER_SAFE)


def utc_now_rfc3339():
    now = time.time()
    micros = int((now % 1) * 1e6)
    return time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(now)) + f'.{micros:06d}Z'


def redacted_url(url):
    """url with its user info's password shown as ***; a user alone (maybe a token) as ***."""
    scheme, separator, rest = url.partition('://')
    user_info, at, host = rest.partition('@')
    if not separator or not at or any(c in user_info for c in '/?#'):
        return url
    user, colon, _ = user_info.partition(':')
    return f'{scheme}://{user + ":***" if colon else "***"}@{host}'


class CloudEventError(Exception):
    """A CloudEvent could not be published (no sink, a bad sink URL, the sink refused it)."""


class CloudEventSettings:
    """What publishing needs from the environment: K_SINK, K_CE_OVERRIDES, K_SERVICE."""

    def __init__(self, env, fallback_source, timeout):
        self.sink = env.get('K_SINK') or None
        self.default_source = env.get('K_SERVICE') or fallback_source
        self.timeout = timeout
        self.overrides = self._overrides(env.get('K_CE_OVERRIDES'))

    @staticmethod
    def _overrides(text):
        if not text:
            return {}
        expected = 'expected JSON such as {"extensions": {"name": "value"}}'
        try:
            extensions = json.loads(text).get('extensions', {})
        except (ValueError, AttributeError):
            raise StartupError(2, f'K_CE_OVERRIDES is not valid ({expected})') from None
        if not isinstance(extensions, dict):
            raise StartupError(2, f'K_CE_OVERRIDES has an invalid extension ({expected})')
        for name, value in extensions.items():
            try:
                check_attribute(name, value)
            except ValueError as exc:
                raise StartupError(2, f'K_CE_OVERRIDES has an invalid extension: {exc} '
                                      f'({expected})') from None
        return extensions


def check_attribute(name, value):
    """ValueError unless name and value can be an attribute of an event made here."""
    if not isinstance(name, str) or not CE_NAME.match(name) or name == 'data':
        raise ValueError(f'invalid CloudEvent attribute name {name!r}: '
                         'names are lower-case letters a-z and digits')
    if not isinstance(value, (str, int, float, bool)):
        raise ValueError(f'CloudEvent attribute {name!r} must be a string, number or '
                         f'boolean, not {type(value).__name__}')
    if name == 'datacontenttype' and not (isinstance(value, str) and CE_MEDIA_TYPE.match(value)):
        raise ValueError(f'CloudEvent datacontenttype {value!r} is not a media type such as '
                         "'application/json' or 'text/plain; charset=utf-8'")
    if name == 'specversion' and value != '1.0':
        raise ValueError(f'CloudEvents specversion {value!r}: events are made in 1.0')


class CloudEvent:
    """An event a handler made with event.cloud_event(); returned, it is the reply."""

    __slots__ = ('attributes', 'data', 'body')

    def __init__(self, type, source, data, attributes, settings):
        if not isinstance(type, str) or not type:
            raise ValueError("a CloudEvent's 'type' must be a non-empty string, "
                             'e.g. com.example.order.created')
        self.attributes = {'specversion': '1.0', 'id': new_event_id(),
                           'source': source or settings.default_source, 'type': type,
                           'time': utc_now_rfc3339()}
        for name, value in (attributes or {}).items():
            if value is not None:
                check_attribute(name, value)
                self.attributes[name] = value
        self.data = data
        self.body = self._encode(data)

    def _encode(self, data):
        """The data as the HTTP body; infers datacontenttype when it was not given."""
        given = self.attributes.get('datacontenttype')
        if data is None:
            return b''
        if isinstance(data, (bytes, bytearray, memoryview)):
            inferred, body = OCTET_STREAM, bytes(data)
        elif isinstance(data, str):
            inferred, body = 'text/plain; charset=utf-8', data.encode('utf-8')
        else:
            inferred, body = JSON_TYPE, json.dumps(data).encode('utf-8')
        if given is None:
            self.attributes['datacontenttype'] = inferred
        return body

    def __repr__(self):
        return f'CloudEvent({self.attributes!r}, data={self.data!r})'


def ce_headers(attributes):
    """The ce-* headers carrying a CloudEvent's attributes in binary mode (datacontenttype,
    the Content-Type, is the caller's)."""
    return {f'ce-{name}': percent_encoded(value)
            for name, value in attributes.items() if name != 'datacontenttype'}


def reply(cloud_event):
    """The outcome that answers a request with cloud_event in binary mode."""
    headers = ce_headers(cloud_event.attributes)
    fields = ''.join(f'{name}: {value}\r\n' for name, value in headers.items())
    return 200, cloud_event.attributes.get('datacontenttype'), cloud_event.body, fields


def publish(cloud_event, sink, request_headers, settings):
    """POSTs cloud_event in binary mode to sink (else K_SINK); raises CloudEventError."""
    url = sink or settings.sink
    if not url:
        raise CloudEventError(NO_SINK)
    shown = redacted_url(url)
    parts = urlsplit(url)
    if parts.scheme not in ('http', 'https') or not parts.hostname:
        where = 'the sink argument' if sink else 'K_SINK'
        raise CloudEventError(f'cannot publish the CloudEvent: the sink {shown} ({where}) is not '
                              'an http:// or https:// URL')
    attributes = dict(cloud_event.attributes)
    attributes.update(settings.overrides)
    headers = ce_headers(attributes)
    if 'datacontenttype' in attributes:
        headers['Content-Type'] = attributes['datacontenttype']
    for name in TRACING_HEADERS:
        value = request_headers.get(name)
        if value is not None:
            headers[name] = value
    if parts.username is not None:
        credentials = f'{unquote(parts.username)}:{unquote(parts.password or "")}'
        headers['Authorization'] = 'Basic ' + base64.b64encode(credentials.encode()).decode()
    path = (parts.path or '/') + ('?' + parts.query if parts.query else '')
    import http.client  # here, not at the top: most functions never publish, and cold start counts
    import ssl
    if parts.scheme == 'https':
        connection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=settings.timeout,
            context=ssl.create_default_context())
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=settings.timeout)
    try:
        connection.request('POST', path, body=cloud_event.body, headers=headers)
        response = connection.getresponse()
        excerpt = response.read(200).decode('utf-8', 'replace').strip()
    except (OSError, http.client.HTTPException) as exc:
        raise CloudEventError(f'cannot publish the CloudEvent to the sink {shown}: {exc}') from None
    finally:
        connection.close()
    if not 200 <= response.status < 300:
        raise CloudEventError(f'the sink {shown} answered {response.status} {response.reason}: '
                              f'{excerpt}')
    return attributes['id']


class Event(dict):
    """The Kubeless event: a dict, plus methods that make and publish CloudEvents.

    event.cloud_event(type, source, data, attributes) makes one (returned from the
    handler it is the reply); event.emit_cloud_event(...) publishes one to K_SINK or
    the sink given and returns its id (emitCloudEvent: Kyma's name for it).
    """

    __slots__ = ()
    settings = CloudEventSettings({}, 'function', 30.0)  # the server's, set by Runtime

    def cloud_event(self, type, source=None, data=None, attributes=None):
        return CloudEvent(type, source, data, attributes, self.settings)

    def emit_cloud_event(self, type, source=None, data=None, attributes=None, *, sink=None):
        made = self.cloud_event(type, source, data, attributes)
        request = self.get('extensions', {}).get('request')
        return publish(made, sink, request.headers if request else {}, self.settings)

    emitCloudEvent = emit_cloud_event


def encode_result(result, label):
    """(status, content type, body) for a handler's return value."""
    try:
        if isinstance(result, str):
            return 200, TEXT_HTML, result.encode('utf-8')
        if isinstance(result, (bytes, bytearray, memoryview)):
            return 200, OCTET_STREAM, bytes(result)
        if result is None:
            return 200, TEXT_HTML, b''
        if isinstance(result, CloudEvent):
            return reply(result)
        return 200, JSON_TYPE, json.dumps(result).encode('utf-8')
    except Exception:
        log_failure(f'cannot encode the value returned by {label}')
        return INTERNAL_ERROR


def log_failure(what):
    sys.stderr.write(f'fnbuild runtime: {what}\n{traceback.format_exc()}')


# --- running the handler ------------------------------------------------------

# Where a plain ``def`` call is, for the worker pool (changed under its lock).
QUEUED, RUNNING, DONE, EXPIRED = range(4)


class WorkerPool:
    """Daemon threads running plain ``def`` handlers off the event loop.

    Cheaper than loop.run_in_executor: a job is one queue put, and results
    go back in batches (the loop is woken once for all results that finish
    before it gets to them), which saves GIL hand-offs under load.

    A Python thread cannot be stopped.  A call that outlives FUNC_TIMEOUT is
    answered 408 and its thread is left running ("stuck"); a new thread takes
    its place, so the pool keeps its size, and the stuck thread ends when the
    handler returns at last.  A call that timed out while still queued is not
    run at all.  The Runtime decides when too many calls are stuck.
    """

    def __init__(self, runtime, size, func, label):
        self._loop = runtime.loop
        self._func = func
        self._label = label
        self._jobs = queue.SimpleQueue()
        self._results = collections.deque()
        self._wakeup_pending = False
        self._lock = threading.Lock()
        self._threads = 0
        self._running = {}  # call -> its deadline (time.monotonic), under the lock
        for _ in range(size):
            self._start_thread()

    def overdue(self, grace):
        """The calls still running more than grace seconds after their deadline (any thread)."""
        limit = time.monotonic() - grace
        with self._lock:
            return sorted((call for call, deadline in self._running.items() if deadline < limit),
                          key=lambda call: call.started)

    def _start_thread(self):
        self._threads += 1
        threading.Thread(target=self._work, name=f'fnbuild-worker-{self._threads}', daemon=True).start()

    def submit(self, call, event, context):
        self._jobs.put((call, event, context))

    def expire(self, call):
        """On the loop, when call timed out: True if its handler is still running.

        Then a replacement thread is started; the stuck one ends after the handler.
        """
        with self._lock:
            state = call.state
            call.state = EXPIRED
        if state != RUNNING:
            return False
        self._start_thread()
        return True

    def _work(self):
        jobs = self._jobs
        lock = self._lock
        while True:
            call, event, context = jobs.get()
            with lock:
                # Timed out while it waited (answered, or about to be): not run.
                if call.state != QUEUED or time.monotonic() >= call.deadline:
                    continue
                call.state = RUNNING
                self._running[call] = call.deadline
            try:
                result = self._func(event, context)
            except BaseException:  # a worker thread must survive anything a handler does
                log_failure(f'handler {self._label} raised an exception')
                outcome = INTERNAL_ERROR
            else:
                outcome = encode_result(result, self._label)
            with lock:
                abandoned = call.state == EXPIRED
                call.state = DONE
                del self._running[call]
            self._results.append((call, outcome))
            if not self._wakeup_pending:
                self._wakeup_pending = True
                try:
                    self._loop.call_soon_threadsafe(self._deliver)
                except RuntimeError:  # the loop is closed: the server is exiting
                    return
            if abandoned:  # a replacement thread took this one's place
                return

    def _deliver(self):
        """On the loop: answer every call whose result is in.

        Workers append their result before they read the flag, so a result
        is either seen here or schedules another delivery.
        """
        self._wakeup_pending = False
        results = self._results
        while results:
            call, outcome = results.popleft()
            call.finish(outcome)


class Call:
    """One handler invocation: the result or the timeout, whichever comes first, answers."""

    __slots__ = ('runtime', 'conn', 'method', 'target', 'started', 'deadline', 'timer', 'task',
                 'answered', 'state')

    def __init__(self, runtime, conn, method, target):
        self.runtime = runtime
        self.conn = conn
        self.method = method
        self.target = target
        self.started = runtime.loop.time()  # time.monotonic(), asyncio's clock
        self.deadline = self.started + runtime.config.timeout
        self.timer = runtime.loop.call_at(self.deadline, self.expire)
        self.task = None
        self.answered = False
        self.state = QUEUED

    def finish(self, outcome):
        if self.answered:  # already timed out: the late result is dropped
            self.runtime.unstuck(self)
            return
        self.answered = True
        self.timer.cancel()
        self._answer(outcome, self.runtime.loop.time() - self.started)

    def task_done(self, task):
        self.finish(INTERNAL_ERROR if task.cancelled() else task.result())

    def expire(self):
        # An async handler is cancelled.  A plain ``def`` handler that is
        # still running keeps its worker thread (see WorkerPool); the Runtime
        # counts it as stuck until it returns.
        self.answered = True
        if self.task is not None:
            self.task.cancel()
        elif self.runtime.pool.expire(self):
            self.runtime.stuck(self)
        self._answer(TIMEOUT_ERROR, self.runtime.config.timeout)

    def describe(self, now):
        return f'{self.method} {self.target} (running {now - self.started:.1f}s)'

    def _answer(self, outcome, seconds):
        self.runtime.metrics.finished(self.method, seconds, failed=outcome[0] != 200)
        self.conn.respond(*outcome)
        self.conn.resume()


class Metrics:
    """Prometheus counters and a duration histogram, per HTTP method (event loop only)."""

    def __init__(self):
        self.calls = {}
        self.failures = {}
        self.buckets = {}  # method -> [count per bucket..., count above the last]
        self.sums = {}

    def started(self, method):
        if method not in self.calls:
            self.calls[method] = self.failures[method] = self.sums[method] = 0
            self.buckets[method] = [0] * (len(DURATION_BUCKETS) + 1)
        self.calls[method] += 1

    def finished(self, method, seconds, failed):
        if failed:
            self.failures[method] += 1
        self.sums[method] += seconds
        counts = self.buckets[method]
        for index, bound in enumerate(DURATION_BUCKETS):
            if seconds <= bound:
                counts[index] += 1
                return
        counts[-1] += 1

    def render(self, stuck):
        lines = [
            '# HELP function_calls_stuck Calls still running after their timeout (408)',
            '# TYPE function_calls_stuck gauge',
            f'function_calls_stuck {stuck}',
            '# HELP function_calls_total Number of calls to the function',
            '# TYPE function_calls_total counter',
        ]
        lines += [f'function_calls_total{{method="{m}"}} {n}' for m, n in self.calls.items()]
        lines += [
            '# HELP function_failures_total Number of failed calls (errors and timeouts)',
            '# TYPE function_failures_total counter',
        ]
        lines += [f'function_failures_total{{method="{m}"}} {n}' for m, n in self.failures.items()]
        lines += [
            '# HELP function_duration_seconds Duration of calls to the function',
            '# TYPE function_duration_seconds histogram',
        ]
        for method, counts in self.buckets.items():
            lines += self._histogram(method, counts)
        return ('\n'.join(lines) + '\n').encode('utf-8')

    def _histogram(self, method, counts):
        total = 0
        lines = []
        for bound, count in zip(DURATION_BUCKETS + ('+Inf',), counts):
            total += count
            lines.append(f'function_duration_seconds_bucket{{method="{method}",le="{bound}"}} {total}')
        lines.append(f'function_duration_seconds_sum{{method="{method}"}} {self.sums[method]}')
        lines.append(f'function_duration_seconds_count{{method="{method}"}} {total}')
        return lines


# --- HTTP/1.1 ------------------------------------------------------------------

def parse_head(head):
    """(method, target, version, headers) from the bytes before the blank line.

    Header names are lower-cased; repeated headers are joined with ', '.
    """
    text = head.decode('latin-1')
    lines = text.split('\r\n')
    breaks = len(lines) - 1
    if text.count('\n') != breaks or text.count('\r') != breaks:  # a bare LF or CR
        raise BadRequest(BARE_LINE_END)
    if len(lines) > MAX_HEADERS + 1:
        raise BadRequest(f'more than {MAX_HEADERS} header fields', 431)
    parts = lines[0].split(' ')
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise BadRequest('malformed request line')
    method, target, version = parts
    if version != 'HTTP/1.1' and version != 'HTTP/1.0':
        raise BadRequest(f'unsupported protocol {version!r}', 505 if version.startswith('HTTP/') else 400)
    if method not in METHODS:
        raise BadRequest(f'method {method!r} not implemented', 501)
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(':')
        if not colon or not name or name[0] in ' \t' or name[-1] in ' \t':
            raise BadRequest('malformed header line')
        name = name.lower()
        value = value.strip(' \t')
        if name in headers:
            headers[name] += ', ' + value
        else:
            headers[name] = value
    return method, origin_form(target), version, headers


def origin_form(target):
    """The request target as '/path?query' (absolute-form URLs are reduced to it)."""
    if target[0] == '/':
        return target
    try:
        parts = urlsplit(target)
    except ValueError:  # e.g. http://[::1 (an unclosed IPv6 address)
        raise BadRequest('malformed request target') from None
    if not parts.scheme or not parts.netloc:
        raise BadRequest('malformed request target')
    return (parts.path or '/') + ('?' + parts.query if parts.query else '')


def body_framing(headers, limit):
    """Content length of the body (an int), or a ChunkedBody decoder."""
    coding = headers.get('transfer-encoding')
    length = headers.get('content-length')
    if coding is not None:
        if length is not None:
            raise BadRequest('both Transfer-Encoding and Content-Length')
        if coding.strip().lower() != 'chunked':
            raise BadRequest(f'unsupported Transfer-Encoding {coding!r}')
        return ChunkedBody(limit)
    if length is None:
        return 0
    if not (length.isascii() and length.isdigit()):
        raise BadRequest('invalid Content-Length')
    digits = length.lstrip('0')
    if len(digits) > 18:  # also keeps int() below its limit on digits
        raise BadRequest(f'request body larger than {limit} bytes', 413)
    size = int(digits or '0')
    if size > limit:
        raise BadRequest(f'request body larger than {limit} bytes', 413)
    return size


class ChunkedBody:
    """Incremental decoder of a chunked request body."""

    __slots__ = ('limit', 'parts', 'size', 'remaining', 'in_trailer')

    def __init__(self, limit):
        self.limit = limit
        self.parts = []
        self.size = 0
        self.remaining = 0  # bytes of chunk data still expected
        self.in_trailer = False

    def feed(self, buf):
        """Consume decoded input from buf; the whole body once complete, else None."""
        while True:
            if self.remaining:
                if not self._take_data(buf):
                    return None
                continue
            end = buf.find(b'\r\n')
            if end < 0:
                if len(buf) > (MAX_HEAD_BYTES if self.in_trailer else MAX_CHUNK_LINE_BYTES):
                    raise BadRequest('malformed chunked body')
                return None
            line = bytes(buf[:end])
            del buf[:end + 2]
            if self.in_trailer:
                if not line:
                    return b''.join(self.parts)
            else:
                self._start_chunk(line)

    def _start_chunk(self, line):
        digits = line.split(b';', 1)[0].strip()
        if not digits or digits.strip(HEX_DIGITS):
            raise BadRequest('malformed chunk size')
        size = int(digits, 16)
        self.size += size
        if self.size > self.limit:
            raise BadRequest(f'request body larger than {self.limit} bytes', 413)
        self.remaining = size
        self.in_trailer = size == 0

    def _take_data(self, buf):
        end = self.remaining
        if len(buf) < end + 2:
            return False
        if buf[end:end + 2] != b'\r\n':
            raise BadRequest('malformed chunked body')
        self.parts.append(bytes(buf[:end]))
        del buf[:end + 2]
        self.remaining = 0
        return True


def wants_keep_alive(version, headers):
    connection = headers.get('connection', '').lower()
    if version == 'HTTP/1.1':
        return 'close' not in connection
    return 'keep-alive' in connection


class HttpConnection(asyncio.Protocol):
    """One client connection; requests on it are answered one at a time, in order.

    Deadlines (checked by Runtime.sweep, from ``since``, on the clock
    Runtime.now that the sweep advances, so they cost no clock reads per
    request and are met within 2 * SWEEP_SECONDS): a request head must
    arrive within FUNC_HEADER_TIMEOUT of its first byte (of the connection,
    for the first request), body bytes must keep coming at least every
    FUNC_BODY_TIMEOUT and at MIN_BODY_RATE on average, and a keep-alive
    connection may wait FUNC_IDLE_TIMEOUT
    for its next request.  No deadline runs while a handler has the request.
    """

    def __init__(self, runtime):
        self.runtime = runtime
        self.transport = None
        self.buf = bytearray()
        self.head = None      # (method, target, version, headers) while its body is read
        self.framing = None   # int length or ChunkedBody of that body
        self.busy = False     # a handler is running for this connection
        self.paused = False
        self.closed = False
        self.keep_alive = True
        self.head_only = False
        self.waiting = False  # idle between keep-alive requests
        self.since = runtime.now

    def connection_made(self, transport):
        self.transport = transport
        self.runtime.admit(self)

    def connection_lost(self, exc):
        self.closed = True
        self.runtime.connections.discard(self)

    def data_received(self, data):
        if self.closed:  # lingering after the last answer: input is discarded
            return
        if self.waiting:  # the first bytes of the next request: its head deadline starts
            self.waiting = False
            self.since = self.runtime.now
        elif self.head is not None:  # body progress: time credit at MIN_BODY_RATE, up to now
            self.since = min(self.runtime.now, self.since + len(data) / MIN_BODY_RATE)
        self.buf += data
        if not self.busy:
            self.process()
        elif len(self.buf) > MAX_BUFFERED_BYTES and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def process(self):
        """Handle every complete request in the buffer until one goes to a handler."""
        try:
            while not self.busy and not self.closed:
                request = self.next_request()
                if request is None:
                    return
                self.runtime.dispatch(self, *request)
        except BadRequest as exc:
            self.refuse(exc.status, str(exc))
        except Exception:  # a bug here must still answer, not drop the connection
            log_failure('cannot handle a request')
            self.refuse(*INTERNAL_ERROR[::2])

    def refuse(self, status, reason):
        """Answer an error and close (the rest of the input cannot be trusted)."""
        self.keep_alive = False
        self.head_only = False
        body = reason if isinstance(reason, bytes) else f'{reason}\n'.encode('utf-8')
        self.respond(status, TEXT_PLAIN, body)

    def next_request(self):
        """(method, target, headers, body) of the next complete request, else None."""
        if self.head is None and not self.read_head():
            return None
        framing = self.framing
        if framing.__class__ is int:
            if len(self.buf) < framing:
                return None
            body = bytes(self.buf[:framing])
            del self.buf[:framing]
        else:
            body = framing.feed(self.buf)
            if body is None:
                return None
        method, target, _, headers = self.head
        self.head = None
        return method, target, headers, body

    def read_head(self):
        buf = self.buf
        while buf[:2] == b'\r\n':  # empty lines before a request are allowed
            del buf[:2]
        end = buf.find(b'\r\n\r\n', 0, MAX_HEAD_BYTES + 4)
        if end < 0:
            if len(buf) >= MAX_HEAD_BYTES + 4:
                raise BadRequest('request head too large', 431)
            if b'\n\n' in buf or b'\n\r\n' in buf:  # a head ended by a bare LF
                raise BadRequest(BARE_LINE_END)
            return False
        self.head = method, _, version, headers = parse_head(bytes(buf[:end]))
        del buf[:end + 4]
        self.keep_alive = wants_keep_alive(version, headers) and not self.runtime.stopping
        self.head_only = method == 'HEAD'
        self.framing = framing = body_framing(headers, self.runtime.config.body_limit)
        if framing:  # the body deadline starts
            self.since = self.runtime.now
        if version == 'HTTP/1.1' and headers.get('expect', '').lower() == '100-continue':
            self.transport.write(b'HTTP/1.1 100 Continue\r\n\r\n')
        return True

    def respond(self, status, content_type, body, fields=''):
        """Answers; fields: more header lines, each ending in CRLF; no Content-Type when None."""
        if self.closed:
            return
        connection = 'keep-alive' if self.keep_alive else 'close'
        if content_type is not None:
            fields += f'Content-Type: {content_type}\r\n'
        head = (f'HTTP/1.1 {status} {REASONS[status]}\r\n{fields}'
                f'Content-Length: {len(body)}\r\n'
                f'Date: {self.runtime.clock.http_date()}\r\n'
                f'Connection: {connection}\r\n\r\n').encode('latin-1')
        if self.head_only or not body:
            self.transport.write(head)
        elif len(body) < 65536:
            self.transport.write(head + body)
        else:
            self.transport.writelines((head, body))
        if self.keep_alive:
            self.waiting = True
            self.since = self.runtime.now
        else:
            self.close()

    def close(self):
        """Send FIN after the answer; close fully when the client does, or after a delay."""
        self.closed = True
        self.buf.clear()
        transport = self.transport
        if transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError:  # the client is gone already (reset): nothing to linger for
                transport.abort()
                return
        self.runtime.loop.call_later(LINGER_SECONDS, transport.close)

    def resume(self):
        """Continue with buffered requests after a handler answered."""
        self.busy = False
        if self.closed:
            return
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        if self.buf:
            self.process()

    def overdue(self, now, config):
        """Close the connection if it missed a deadline; True if it did."""
        if self.head is not None:
            if now - self.since > config.body_timeout:
                self.refuse(408, f'request body too slow: no data for {config.body_timeout:g}s, '
                                 f'or under {MIN_BODY_RATE} bytes/s on average')
                return True
        elif self.waiting and not self.buf:
            if now - self.since > config.idle_timeout:
                self.drop()
                return True
        elif now - self.since > config.header_timeout:
            if self.buf:
                self.refuse(408, f'request head not received within {config.header_timeout:g}s')
            else:
                self.drop()
            return True
        return False

    def drop(self):
        """Close at once, without an answer."""
        self.closed = True
        self.runtime.connections.discard(self)
        self.transport.abort()

    def eviction_rank(self):
        """Which connections to close first to make room for a new one; None: keep it.

        Lingering ones, then idle keep-alive ones, then those still sending a
        head, then those sending a body; oldest first.  Never one whose
        request is with a handler.
        """
        if self.closed:
            return (0, self.since)
        if self.busy:
            return None
        if self.head is None:
            return (1 if self.waiting and not self.buf else 2, self.since)
        return (3, self.since)


# --- the server ------------------------------------------------------------------

class Runtime:
    """Routes requests to /healthz, /metrics or the handler, and runs the server."""

    def __init__(self, config, func):
        self.config = config
        self.func = func
        Event.settings = config.cloud_events
        self.is_async = inspect.iscoroutinefunction(func)
        self.metrics = Metrics()
        self.clock = Clock()
        self.connections = set()
        self.stopping = False
        self.unhealthy = None  # why the server stopped serving, once it did
        self.stuck_calls = set()
        self.switch_interval = sys.getswitchinterval()  # while no call is stuck
        self.evictable = []   # eviction candidates found by the last scan, best last
        self.now = 0.0        # loop.time() as of the last sweep: the clock of the deadlines
        self.loop = None
        self.pool = None
        self.stop = None

    def dispatch(self, conn, method, target, headers, body):
        path, _, query_string = target.partition('?')
        if path == '/healthz' and method in ('GET', 'HEAD'):
            if self.unhealthy is None:
                conn.respond(200, TEXT_PLAIN, b'OK')
            else:
                conn.respond(503, TEXT_PLAIN, f'{self.unhealthy}\n'.encode('utf-8'))
        elif path == '/metrics' and method in ('GET', 'HEAD'):
            conn.respond(200, METRICS_TYPE, self.metrics.render(len(self.stuck_calls)))
        elif self.unhealthy is not None:
            conn.keep_alive = False
            conn.respond(503, TEXT_PLAIN, f'{self.unhealthy}\n'.encode('utf-8'))
        else:
            self.invoke(conn, method, target, path, query_string, headers, body)

    def invoke(self, conn, method, target, path, query_string, headers, body):
        try:
            event = make_event(method, path, query_string, headers, body, self.clock)
        except BadRequest as exc:
            conn.respond(exc.status, TEXT_PLAIN, f'{exc}\n'.encode('utf-8'))
            return
        context = dict(self.config.context)
        self.metrics.started(method)
        conn.busy = True
        call = Call(self, conn, method, target)
        if self.is_async:
            call.task = self.loop.create_task(self.run_async(event, context))
            call.task.add_done_callback(call.task_done)
        else:
            self.pool.submit(call, event, context)

    async def run_async(self, event, context):
        try:
            result = await self.func(event, context)
        except Exception:
            log_failure(f'handler {self.config.label} raised an exception')
            return INTERNAL_ERROR
        return encode_result(result, self.config.label)

    # --- calls that outlive FUNC_TIMEOUT

    def stuck(self, call):
        """call was answered 408 but its handler still runs in a worker thread.

        While calls are stuck, threads hand the interpreter over more often: a
        stuck handler that loops takes it from the event loop far less.
        """
        if not self.stuck_calls:
            sys.setswitchinterval(STUCK_SWITCH_INTERVAL)
        self.stuck_calls.add(call)
        limit = self.config.threads
        log(f'call {call.describe(self.loop.time())} of {self.config.label} exceeded FUNC_TIMEOUT '
            f'({self.config.timeout:g}s) and is still running in its thread '
            f'({len(self.stuck_calls)} such calls, the server restarts at {limit})')
        if len(self.stuck_calls) >= limit:
            now = self.loop.time()
            calls = ', '.join(c.describe(now) for c in sorted(self.stuck_calls, key=lambda c: c.started))
            self.give_up(f'{len(self.stuck_calls)} calls of {self.config.label} are still running after '
                         f'FUNC_TIMEOUT ({self.config.timeout:g}s): {calls}')

    def unstuck(self, call):
        if call in self.stuck_calls:
            self.stuck_calls.discard(call)
            if not self.stuck_calls:
                sys.setswitchinterval(self.switch_interval)
            log(f'call {call.describe(self.loop.time())} of {self.config.label} returned after its timeout '
                f'({len(self.stuck_calls)} calls still running after their timeout)')

    def give_up(self, reason):
        """Stop serving, report unhealthy and exit non-zero, so that the platform restarts us."""
        if self.unhealthy is not None:
            return
        self.unhealthy = f'unhealthy: {reason}'
        log(f'{self.unhealthy}; the server stops and exits with status {UNHEALTHY_EXIT} '
            f'so that it is restarted')
        self.stop.set()

    def watchdog(self):
        """A thread that exits the process when stuck calls fill the pool and the loop cannot.

        Handlers that loop in Python take the GIL from the event loop: with
        many of them it answers, counts and shuts down far too slowly.  This
        thread needs the GIL only briefly once a second.
        """
        limit = self.config.threads
        gave_up = None
        while True:
            time.sleep(1.0)
            if gave_up is None:
                stuck = self.pool.overdue(1.0)
                if len(stuck) >= limit:
                    gave_up = now = time.monotonic()
                    reason = (f'{len(stuck)} calls of {self.config.label} are still running after '
                              f'FUNC_TIMEOUT ({self.config.timeout:g}s): '
                              + ', '.join(call.describe(now) for call in stuck))
                    try:
                        self.loop.call_soon_threadsafe(self.give_up, reason)
                    except RuntimeError:  # the loop is closed: exiting already
                        return
            elif time.monotonic() - gave_up > SHUTDOWN_GRACE_SECONDS + 2:
                log(f'the server did not stop within {SHUTDOWN_GRACE_SECONDS:g}s '
                    f'(stuck handlers hold the interpreter); exiting with status {UNHEALTHY_EXIT} now')
                sys.stderr.flush()
                os._exit(UNHEALTHY_EXIT)

    # --- connections: the cap and the deadlines

    def admit(self, conn):
        """Count a new connection in; at the cap, close another to make room, or this one."""
        connections = self.connections
        if len(connections) >= self.config.max_connections and not self.evict():
            conn.closed = True
            conn.transport.write(b'HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n'
                                 b'Content-Length: 21\r\nConnection: close\r\n\r\n'
                                 b'too many connections\n')
            conn.transport.close()
            return
        connections.add(conn)

    def evict(self):
        """Close the connection that matters least (see eviction_rank); False if none may go."""
        for _ in range(2):
            candidates = self.evictable
            while candidates:
                rank, conn = candidates.pop()
                if conn in self.connections and conn.eviction_rank() is not None:
                    conn.drop()
                    return True
            ranked = []
            for conn in self.connections:
                key = conn.eviction_rank()
                if key is not None:
                    ranked.append((key, conn))
            if not ranked:
                return False
            ranked.sort(key=lambda item: item[0], reverse=True)
            self.evictable = ranked
        return False

    def sweep(self):
        """Every SWEEP_SECONDS: close connections that missed a deadline.

        Nothing a connection does may end the sweeps: without them no
        deadline fires again while /healthz still answers.
        """
        self.loop.call_later(SWEEP_SECONDS, self.sweep)
        self.now = now = self.loop.time()
        config = self.config
        # ``since`` is up to SWEEP_SECONDS older than the event it marks: no deadline comes early.
        now -= SWEEP_SECONDS
        for conn in list(self.connections):
            if not (conn.busy or conn.closed):
                try:
                    conn.overdue(now, config)
                except Exception:
                    log_failure('cannot close a connection that missed its deadline')
                    conn.transport.abort()
        self.evictable = []

    # --- running

    async def serve(self):
        """Serve until SIGTERM or SIGINT, or too many stuck calls; the exit status."""
        self.loop = asyncio.get_running_loop()
        if not self.is_async:
            self.pool = WorkerPool(self, self.config.threads, self.func, self.config.label)
            threading.Thread(target=self.watchdog, name='fnbuild-watchdog', daemon=True).start()
        self.stop = asyncio.Event()
        self.now = self.loop.time()
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self.stop.set)
        try:
            server = await self.loop.create_server(
                lambda: HttpConnection(self), '0.0.0.0', self.config.port, backlog=1024)
        except OSError as exc:
            raise StartupError(1, f'cannot listen on port {self.config.port}: {exc.strerror}') from None
        self.loop.call_later(SWEEP_SECONDS, self.sweep)
        print(f'fnbuild python runtime: serving {self.config.label} on :{self.config.port} '
              f'(timeout {self.config.timeout:g}s)')
        await self.stop.wait()
        print('fnbuild python runtime: stopping')
        server.close()
        await self.drain()
        return 0 if self.unhealthy is None else UNHEALTHY_EXIT

    async def drain(self):
        self.stopping = True
        for conn in list(self.connections):
            if conn.busy:
                conn.keep_alive = False  # closes after its answer
            else:
                conn.closed = True
                conn.transport.close()
        deadline = self.loop.time() + SHUTDOWN_GRACE_SECONDS
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)


def log(message):
    sys.stderr.write(f'fnbuild runtime: {message}\n')


def configure_stdio():
    """Make handlers' print output reach the logs at once, even without -u."""
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True, write_through=True)


def main():
    configure_stdio()
    try:
        config = Config(os.environ)
        runtime = Runtime(config, load_handler(config))
        status = asyncio.run(runtime.serve())
    except StartupError as exc:
        print(f'fnbuild runtime: {exc}', file=sys.stderr)
        return exc.status
    if status:  # stuck handler threads may not let the interpreter finish
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return 0


if __name__ == '__main__':
    sys.exit(main())
