"""Tests of the Python function server (kubeless.py), run as a real subprocess.

Run from the project root: python3 -m unittest discover -s runtimes/python -v
The fixture functions are in testdata/; each test class starts its own server
on a free port with a copy of them as the code dir.
"""

import concurrent.futures
import errno
import http.client
import io
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, 'kubeless.py')
TESTDATA = os.path.join(HERE, 'testdata')
RFC3339_UTC = re.compile(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$')
UUID = re.compile(r'^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$')


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def make_code_dir():
    """A temp copy of testdata/ with a fake pip --prefix dependency in it."""
    code_dir = tempfile.mkdtemp(prefix='fnbuild-runtime-test-')
    shutil.copytree(TESTDATA, code_dir, dirs_exist_ok=True)
    packages = os.path.join(code_dir, 'lib', 'python%d.%d' % sys.version_info[:2], 'site-packages')
    os.makedirs(packages)
    with open(os.path.join(packages, 'mydep.py'), 'w') as out:
        out.write("VALUE = 'from mydep'\n")
    return code_dir


def server_env(code_dir, module, function, **extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ('PORT', 'FUNC_PORT', 'FUNC_TIMEOUT', 'REQ_MB_LIMIT', 'PYTHONUNBUFFERED')}
    env.update(FNBUILD_CODE_DIR=code_dir, MOD_NAME=module, FUNC_HANDLER=function,
               FUNC_RUNTIME='python3.11', FUNC_MEMORY_LIMIT='128Mi')
    env.update(extra)
    return env


class Output:
    """Lines read from a child's pipe by a background thread."""

    def __init__(self, pipe):
        self.lines = []
        self.changed = threading.Condition()
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe):
        for line in pipe:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()

    def text(self):
        with self.changed:
            return ''.join(self.lines)

    def wait_for(self, needle, timeout=3.0):
        with self.changed:
            return self.changed.wait_for(lambda: needle in ''.join(self.lines), timeout)


class Server:
    """The runtime started as a subprocess (without -u, to check it unbuffers itself)."""

    def __init__(self, env, port):
        self.port = port
        self.proc = subprocess.Popen([sys.executable, SERVER], env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.stdout = Output(self.proc.stdout)
        self.stderr = Output(self.proc.stderr)
        self._wait_ready()

    def _wait_ready(self):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f'server exited {self.proc.returncode}: {self.stderr.text()}')
            try:
                if self.request('GET', '/healthz')[0] == 200:
                    return
            except OSError:
                time.sleep(0.02)
        raise AssertionError('server did not answer /healthz')

    def connect(self, timeout=10):
        return http.client.HTTPConnection('127.0.0.1', self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None):
        """(status, headers dict with lower-case names, body bytes) on a new connection."""
        conn = self.connect()
        try:
            return send(conn, method, path, body, headers)
        finally:
            conn.close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(10)
        finally:
            self.proc.stdout.close()
            self.proc.stderr.close()


def send(conn, method, path, body=None, headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def raw_exchange(port, payload, timeout=5.0):
    """Send raw bytes and read until the server closes the connection or timeout."""
    with socket.create_connection(('127.0.0.1', port), timeout=timeout) as sock:
        sock.sendall(payload)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except socket.timeout:
            pass
        return b''.join(chunks)


def import_server_module():
    """The runtime server as a module, for tests of its parts."""
    sys.path.insert(0, HERE)
    try:
        import kubeless
    finally:
        sys.path.remove(HERE)
    return kubeless


def wait_until(predicate, bound=20.0):
    """Poll predicate until it is true or bound seconds passed; its last value."""
    deadline = time.monotonic() + bound
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def answer_after_dribbling(port, first, dribble, bound=20.0):
    """Send first, then one byte of dribble every 0.1 s until the server answers and closes.

    (response bytes, seconds from connecting to the end of the response).
    """
    started = time.monotonic()
    with socket.create_connection(('127.0.0.1', port), timeout=5) as sock:
        sock.sendall(first)
        sock.settimeout(0.1)
        chunks = []
        sent = 0
        while time.monotonic() - started < bound:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                if dribble and not chunks:
                    try:
                        sock.sendall(dribble[sent % len(dribble):][:1])
                        sent += 1
                    except OSError:
                        pass
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b''.join(chunks), time.monotonic() - started


def metric(text, name, method):
    match = re.search(r'^%s\{method="%s"(?:,le="\+Inf")?\} (\S+)$' % (re.escape(name), method), text, re.M)
    return float(match.group(1)) if match else 0.0


class CodeDirTestCase(unittest.TestCase):
    """Tests that start their own servers, with one code dir for the class."""

    @classmethod
    def setUpClass(cls):
        cls.code_dir = make_code_dir()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.code_dir, ignore_errors=True)


class ServerTestCase(unittest.TestCase):
    module = 'app'
    function = 'handler'
    extra_env = {}
    port_variable = 'PORT'

    @classmethod
    def setUpClass(cls):
        cls.code_dir = make_code_dir()
        cls.port = free_port()
        env = server_env(cls.code_dir, cls.module, cls.function, **cls.extra_env)
        env[cls.port_variable] = str(cls.port)
        cls.server = Server(env, cls.port)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.code_dir, ignore_errors=True)

    def call(self, method, path, body=None, headers=None):
        return self.server.request(method, path, body, headers)

    def echo(self, method='POST', path='/echo', body=None, headers=None):
        status, response_headers, data = self.call(method, path, body, headers)
        self.assertEqual(status, 200, data)
        self.assertEqual(response_headers['content-type'], 'application/json')
        return json.loads(data)


class SyncHandlerTest(ServerTestCase):
    other_port = free_port()
    extra_env = {'FUNC_TIMEOUT': '1', 'REQ_MB_LIMIT': '0.01', 'FUNC_PORT': str(other_port)}

    def test_hello_returns_string(self):
        status, headers, body = self.call('GET', '/hello')
        self.assertEqual((status, body), (200, b'hello world'))
        self.assertEqual(headers['content-type'], 'text/html; charset=UTF-8')
        self.assertEqual(headers['content-length'], '11')

    def test_event_and_context_from_headers(self):
        result = self.echo(body=b'{"a": [1, 2]}', headers={
            'Content-Type': 'application/json; charset=utf-8', 'event-id': 'id-1',
            'event-time': '2020-01-02T03:04:05Z', 'event-namespace': 'cli.kubeless.io',
            'X-Test': 'yes'})
        self.assertEqual(result['event'], {
            'event-id': 'id-1', 'event-time': '2020-01-02T03:04:05Z',
            'event-namespace': 'cli.kubeless.io',
            'event-type': 'application/json; charset=utf-8'})
        self.assertEqual(result['data'], {'a': [1, 2]})
        self.assertEqual(result['request']['json'], {'a': [1, 2]})
        self.assertEqual(result['context'], {
            'function-name': 'handler', 'timeout': 1.0,
            'runtime': 'python3.11', 'memory-limit': '128Mi'})
        self.assertEqual(result['request']['x_test'], 'yes')
        self.assertEqual(result['request']['x_test_mapping'], 'yes')
        self.assertEqual(result['request']['missing_header'], 'default')

    def test_event_defaults_without_headers(self):
        first = self.echo(method='GET', path='/echo')
        second = self.echo(method='GET', path='/echo')
        event = first['event']
        self.assertRegex(event['event-id'], UUID)
        self.assertNotEqual(event['event-id'], second['event']['event-id'])
        self.assertRegex(event['event-time'], RFC3339_UTC)
        self.assertIsNone(event['event-namespace'])
        self.assertIsNone(event['event-type'])
        self.assertEqual((first['data'], first['data_type']), ('', 'str'))

    def test_event_type_header_wins_over_content_type(self):
        result = self.echo(body=b'x', headers={'Content-Type': 'text/plain', 'event-type': 'my.type'})
        self.assertEqual(result['event']['event-type'], 'my.type')

    def test_raw_body_is_text_or_bytes(self):
        text = self.echo(body='héllo'.encode('utf-8'), headers={'Content-Type': 'text/plain'})
        self.assertEqual((text['data'], text['data_type']), ('héllo', 'str'))
        self.assertEqual(text['event']['event-type'], 'text/plain')
        self.assertIsNone(text['request']['json'])
        binary = self.echo(body=b'\xff\x00', headers={'Content-Type': 'application/octet-stream'})
        self.assertEqual((binary['data'], binary['data_type']), ('ff00', 'bytes'))
        json_text = self.echo(body=b'{"a": 1}', headers={'Content-Type': 'text/plain'})
        self.assertEqual(json_text['data'], '{"a": 1}')

    def test_json_integers_up_to_the_interpreters_limit_are_data(self):
        # 4300 digits, the most Python converts; more are refused (MalformedRequestTest).
        numbers = [int('9' * 4300), -int('8' * 4300)]
        result = self.echo(body=json.dumps(numbers).encode(),
                           headers={'Content-Type': 'application/json'})
        self.assertEqual((result['data'], result['data_type']), (numbers, 'list'))

    def test_invalid_json_is_400(self):
        status, _, body = self.call('POST', '/echo', b'{"a":', {'Content-Type': 'application/json'})
        self.assertEqual(status, 400)
        self.assertIn(b'Invalid JSON', body)

    def test_request_object(self):
        result = self.echo(method='PUT', path='/echo/a%20b?x=1&x=2&y=', body=b'payload',
                           headers={'Content-Type': 'text/plain'})
        request = result['request']
        self.assertEqual(request['method'], 'PUT')
        self.assertEqual(request['path'], '/echo/a b')
        self.assertEqual(request['query_string'], 'x=1&x=2&y=')
        self.assertEqual(request['query'], {'x': '1', 'y': ''})
        self.assertEqual(request['url'], f'http://127.0.0.1:{self.port}/echo/a%20b?x=1&x=2&y=')
        self.assertEqual(request['body'], 'payload')

    def test_return_types(self):
        status, headers, body = self.call('GET', '/bytes')
        self.assertEqual((status, body), (200, b'\x00\x01\xfe\xff'))
        self.assertEqual(headers['content-type'], 'application/octet-stream')
        status, headers, body = self.call('GET', '/none')
        self.assertEqual((status, body), (200, b''))
        status, _, body = self.call('GET', '/unserializable')
        self.assertEqual((status, body), (500, b'Internal Server Error'))

    def test_exception_is_500_with_traceback_on_stderr(self):
        status, _, body = self.call('POST', '/fail')
        self.assertEqual((status, body), (500, b'Internal Server Error'))
        self.assertTrue(self.server.stderr.wait_for('ValueError: fixture failure marker'))
        self.assertIn('Traceback (most recent call last)', self.server.stderr.text())

    def test_timeout_is_408(self):
        started = time.monotonic()
        status, _, body = self.call('GET', '/sleep?s=4')
        elapsed = time.monotonic() - started
        self.assertEqual((status, body), (408, b'Request timeout exceeded'))
        self.assertGreater(elapsed, 0.9)
        self.assertLess(elapsed, 2.5)
        self.assertEqual(self.call('GET', '/hello')[2], b'hello world')

    def test_sync_handlers_run_concurrently(self):
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            results = list(pool.map(lambda _: self.call('GET', '/sleep?s=0.4'), range(5)))
        self.assertEqual([r[2] for r in results], [b'slept'] * 5)
        self.assertLess(time.monotonic() - started, 1.4)  # one after the other: 2 s

    def test_state_kept_between_calls(self):
        first = int(self.call('GET', '/count')[2])
        second = int(self.call('GET', '/count')[2])
        self.assertEqual(second, first + 1)

    def test_keep_alive(self):
        conn = self.server.connect()
        try:
            counts = []
            for _ in range(3):
                status, headers, body = send(conn, 'GET', '/count')
                self.assertEqual(headers['connection'], 'keep-alive')
                counts.append(int(body))
                sock = conn.sock
                self.assertIsNotNone(sock)
            self.assertEqual(counts, [counts[0], counts[0] + 1, counts[0] + 2])
            send(conn, 'GET', '/hello')
            self.assertIs(conn.sock, sock)
        finally:
            conn.close()

    def test_every_method_and_path_reaches_handler(self):
        for method in ('GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'):
            for path in ('/', '/some/deep/path', '/healthz/not'):
                result = self.echo(method=method, path=path)
                self.assertEqual((result['request']['method'], result['request']['path']), (method, path))
        status, headers, body = self.call('HEAD', '/hello')
        self.assertEqual((status, headers['content-length'], body), (200, '11', b''))

    def test_healthz(self):
        self.assertEqual(self.call('GET', '/healthz')[::2], (200, b'OK'))

    def test_metrics_count_calls_and_failures_per_method(self):
        before = self.call('GET', '/metrics')[2].decode()
        self.call('PATCH', '/hello')
        self.call('PATCH', '/hello')
        self.call('PATCH', '/fail')
        self.call('DELETE', '/hello')
        status, headers, body = self.call('GET', '/metrics')
        self.assertEqual(status, 200)
        self.assertTrue(headers['content-type'].startswith('text/plain; version=0.0.4'))
        after = body.decode()
        for name in ('function_calls_total', 'function_failures_total', 'function_duration_seconds'):
            self.assertIn(f'# HELP {name} ', after)
        self.assertIn('# TYPE function_calls_total counter', after)
        self.assertIn('# TYPE function_duration_seconds histogram', after)

        def delta(name, method):
            return metric(after, name, method) - metric(before, name, method)

        self.assertEqual(delta('function_calls_total', 'PATCH'), 3)
        self.assertEqual(delta('function_failures_total', 'PATCH'), 1)
        self.assertEqual(delta('function_duration_seconds_count', 'PATCH'), 3)
        self.assertEqual(delta('function_duration_seconds_bucket', 'PATCH'), 3)  # le="+Inf"
        self.assertGreater(delta('function_duration_seconds_sum', 'PATCH'), 0)
        self.assertEqual(delta('function_calls_total', 'DELETE'), 1)
        self.assertEqual(delta('function_failures_total', 'DELETE'), 0)

    def test_timeout_counts_as_failure(self):
        before = metric(self.call('GET', '/metrics')[2].decode(), 'function_failures_total', 'PUT')
        self.assertEqual(self.call('PUT', '/sleep?s=2')[0], 408)
        after = metric(self.call('GET', '/metrics')[2].decode(), 'function_failures_total', 'PUT')
        self.assertEqual(after - before, 1)

    def test_port_wins_over_func_port(self):
        self.assertTrue(self.server.stdout.wait_for(f'serving app.handler on :{self.port} (timeout 1s)'))
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(('127.0.0.1', self.other_port), timeout=2).close()

    def test_dependencies_on_sys_path(self):
        result = self.echo(method='GET', path='/dep')
        self.assertEqual(result, {'value': 'from mydep', 'path0': self.code_dir})

    def test_print_output_appears_promptly(self):
        self.assertEqual(self.call('GET', '/print?marker=p-4711')[2], b'said')
        self.assertTrue(self.server.stdout.wait_for('printed: p-4711', timeout=2))

    def test_too_large_body_is_413(self):
        self.assertEqual(self.echo(body=b'a' * 10000, headers={'Content-Type': 'text/plain'})['data'],
                         'a' * 10000)
        status, headers, _ = self.call('POST', '/echo', b'a' * 20000)
        self.assertEqual((status, headers['connection']), (413, 'close'))
        chunked = (b'POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n'
                   b'3000\r\n' + b'a' * 0x3000 + b'\r\n0\r\n\r\n')
        self.assertTrue(raw_exchange(self.port, chunked).startswith(b'HTTP/1.1 413 '))

    def test_chunked_body_and_pipelining(self):
        payload = (b'POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n'
                   b'Content-Type: text/plain\r\n\r\n'
                   b'5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nTrailer: x\r\n\r\n'
                   b'GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
        response = raw_exchange(self.port, payload)
        self.assertEqual(response.count(b'HTTP/1.1 200 OK'), 2, response)
        self.assertIn(b'"data": "hello, world"', response)
        self.assertTrue(response.endswith(b'hello world'))

    def test_http10_closes_after_response(self):
        response = raw_exchange(self.port, b'GET /hello HTTP/1.0\r\n\r\n')
        self.assertTrue(response.startswith(b'HTTP/1.1 200 OK\r\n'), response)
        self.assertIn(b'Connection: close\r\n', response)
        self.assertTrue(response.endswith(b'hello world'))

    def test_malformed_requests_are_400_and_close(self):
        for payload in (b'NONSENSE\r\n\r\n', b'GET / HTTP/1.1\r\nBad Header\r\n\r\n',
                        b'POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n',
                        b'POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n'):
            response = raw_exchange(self.port, payload)
            self.assertTrue(response.startswith(b'HTTP/1.1 400 '), (payload, response))
            self.assertIn(b'Connection: close', response)
        response = raw_exchange(self.port, b'BREW /pot HTTP/1.1\r\n\r\n')
        self.assertTrue(response.startswith(b'HTTP/1.1 501 '), response)

    def test_expect_100_continue(self):
        with socket.create_connection(('127.0.0.1', self.port), timeout=5) as sock:
            sock.sendall(b'POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n'
                         b'Expect: 100-continue\r\n\r\n')
            self.assertEqual(sock.recv(100), b'HTTP/1.1 100 Continue\r\n\r\n')
            sock.sendall(b'abc')
            self.assertIn(b'"data": "abc"', sock.recv(65536))


class AsyncHandlerTest(ServerTestCase):
    module = 'aio'
    extra_env = {'FUNC_TIMEOUT': '0.5'}
    port_variable = 'FUNC_PORT'  # PORT is unset: FUNC_PORT is used

    def test_listens_on_func_port(self):
        self.assertTrue(self.server.stdout.wait_for(f'serving aio.handler on :{self.port} (timeout 0.5s)'))

    def test_async_handler(self):
        status, headers, body = self.call('POST', '/', b'{"x": 1}', {'Content-Type': 'application/json'})
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body), {'async': True, 'data': {'x': 1}, 'function': 'handler'})

    def test_async_handlers_run_concurrently(self):
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: self.call('GET', '/?sleep=0.3'), range(4)))
        self.assertEqual([r[2] for r in results], [b'slept'] * 4)
        self.assertLess(time.monotonic() - started, 0.9)  # one after the other: 1.2 s

    def test_async_timeout_is_408(self):
        started = time.monotonic()
        status, _, body = self.call('GET', '/?sleep=5')
        self.assertEqual((status, body), (408, b'Request timeout exceeded'))
        self.assertLess(time.monotonic() - started, 1.5)

    def test_async_exception_is_500(self):
        self.assertEqual(self.call('GET', '/?fail=1')[::2], (500, b'Internal Server Error'))
        self.assertTrue(self.server.stderr.wait_for('RuntimeError: async failure marker'))


class LifecycleTest(CodeDirTestCase):
    def start_failing(self, module, function):
        env = server_env(self.code_dir, module, function, PORT=str(free_port()))
        return subprocess.run([sys.executable, SERVER], env=env, capture_output=True, text=True, timeout=10)

    def test_missing_module(self):
        result = self.start_failing('nothere', 'handler')
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"fnbuild runtime: cannot load handler 'nothere.handler': "
                      f"no module 'nothere' in {self.code_dir} (files: ", result.stderr)
        self.assertIn('app.py', result.stderr)

    def test_missing_function(self):
        result = self.start_failing('app', 'nope')
        self.assertEqual(result.returncode, 1)
        self.assertIn("cannot load handler 'app.nope': module 'app' has no function 'nope' "
                      "(functions found: barrier, count, dependency, echo, fail, handler, hang, ", result.stderr)

    def test_import_error(self):
        result = self.start_failing('broken', 'handler')
        self.assertEqual(result.returncode, 1)
        self.assertIn('RuntimeError: broken import marker', result.stderr)
        self.assertIn("cannot load handler 'broken.handler': importing ", result.stderr)

    def test_missing_environment(self):
        result = self.start_failing('', 'handler')
        self.assertEqual(result.returncode, 2)
        self.assertIn('fnbuild runtime: MOD_NAME is not set', result.stderr)

    def test_sigterm_finishes_in_flight_request_and_exits_0(self):
        port = free_port()
        server = Server(server_env(self.code_dir, 'app', 'handler', PORT=str(port)), port)
        try:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                pending = pool.submit(server.request, 'GET', '/sleep?s=0.5')
                time.sleep(0.2)
                server.proc.send_signal(signal.SIGTERM)
                self.assertEqual(pending.result()[::2], (200, b'slept'))
            # It exits by itself: a second SIGTERM (stop's) could land after asyncio.run has
            # put the default handler back, and kill it.
            self.assertEqual(server.proc.wait(10), 0)
        finally:
            server.stop()
        self.assertIn('stopping', server.stdout.text())

class StuckCallsTest(CodeDirTestCase):
    """Plain def handlers that outlive FUNC_TIMEOUT keep their thread ("stuck")."""

    def start(self, **env):
        port = free_port()
        server = Server(server_env(self.code_dir, 'app', 'handler', PORT=str(port), **env), port)
        self.addCleanup(lambda: server.proc.poll() is None and server.proc.kill())
        self.addCleanup(server.stop)
        return server

    def concurrently(self, server, paths):
        with concurrent.futures.ThreadPoolExecutor(len(paths)) as pool:
            return list(pool.map(lambda path: server.request('GET', path)[::2], paths))

    def stuck_gauge(self, server):
        text = server.request('GET', '/metrics')[2].decode()
        return int(re.search(r'^function_calls_stuck (\d+)$', text, re.M).group(1))

    def test_stuck_calls_get_replacement_threads(self):
        server = self.start(FUNC_THREADS='4', FUNC_TIMEOUT='2')
        timed_out = self.concurrently(server, ['/sleep?s=4'] * 3)
        self.assertEqual(timed_out, [(408, b'Request timeout exceeded')] * 3)
        self.assertEqual(self.stuck_gauge(server), 3)
        # Four calls that each answer only when all four run at once: the
        # three stuck threads were replaced.
        met = self.concurrently(server, ['/barrier?id=a&n=4&wait=1.5'] * 4)
        self.assertEqual(met, [(200, b'met')] * 4)
        self.assertEqual(server.request('GET', '/healthz')[::2], (200, b'OK'))
        self.assertTrue(wait_until(lambda: self.stuck_gauge(server) == 0))
        self.assertIn('exceeded FUNC_TIMEOUT (2s) and is still running in its thread', server.stderr.text())
        self.assertTrue(server.stderr.wait_for('returned after its timeout (0 calls still running'))
        # The stuck threads ended when their handlers returned: the pool is 4 again.
        self.assertEqual(self.concurrently(server, ['/barrier?id=b&n=4&wait=1.5'] * 4), [(200, b'met')] * 4)
        self.assertIsNone(server.proc.poll())

    def test_twice_the_pool_of_hung_calls_restarts_the_server(self):
        # Sleeping and busy-looping handlers, 2 x FUNC_THREADS calls: the
        # fourth stuck call makes the server report unhealthy and exit 3.
        server = self.start(FUNC_THREADS='4', FUNC_TIMEOUT='1')
        first = self.concurrently(server, ['/spin', '/spin', '/hang'])
        self.assertEqual(first, [(408, b'Request timeout exceeded')] * 3)
        self.assertEqual(server.request('GET', '/healthz')[::2], (200, b'OK'))
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            pending = [pool.submit(server.request, 'GET', path)
                       for path in ('/hang', '/spin', '/hang', '/spin', '/hang')]
            self.assertEqual(server.proc.wait(20), 3)
            for call in pending:
                self.assertEqual(call.result()[::2], (408, b'Request timeout exceeded'))
        with self.assertRaises(OSError):
            server.request('GET', '/healthz')
        log = server.stderr.text()
        self.assertRegex(log, r'unhealthy: 4 calls of app\.handler are still running after '
                              r'FUNC_TIMEOUT \(1s\): GET /(spin|hang) \(running [\d.]+s\), ')
        self.assertIn('GET /spin', log)
        self.assertIn('GET /hang', log)
        self.assertIn('exits with status 3', log)

    def test_unhealthy_server_answers_503(self):
        kubeless = import_server_module()

        class Conn:
            keep_alive = True

            def respond(self, status, content_type, body):
                self.answer = status, body

        runtime = kubeless.Runtime(kubeless.Config({'MOD_NAME': 'm', 'FUNC_HANDLER': 'f'}), lambda e, c: '')
        runtime.unhealthy = 'unhealthy: 4 calls stuck'
        for path in ('/healthz', '/anything'):
            conn = Conn()
            runtime.dispatch(conn, 'GET', path, {}, b'')
            self.assertEqual(conn.answer, (503, b'unhealthy: 4 calls stuck\n'))

    def test_threads_hand_over_the_interpreter_more_often_while_calls_are_stuck(self):
        kubeless = import_server_module()
        default = sys.getswitchinterval()
        self.addCleanup(sys.setswitchinterval, default)
        runtime = kubeless.Runtime(kubeless.Config({'MOD_NAME': 'app', 'FUNC_HANDLER': 'handler'}),
                                   lambda event, context: '')

        class Loop:
            def time(self):
                return 0.0

        class Call:
            started = 0.0

            def describe(self, now):
                return 'GET /spin (running 5.0s)'

        runtime.loop = Loop()
        first, second = Call(), Call()
        with mock.patch('sys.stderr', io.StringIO()):
            runtime.stuck(first)
            self.assertEqual(sys.getswitchinterval(), kubeless.STUCK_SWITCH_INTERVAL)
            runtime.stuck(second)
            runtime.unstuck(first)
            self.assertEqual(sys.getswitchinterval(), kubeless.STUCK_SWITCH_INTERVAL)
            runtime.unstuck(second)
        self.assertEqual(sys.getswitchinterval(), default)

    def test_watchdog_exits_when_stuck_handlers_starve_the_event_loop(self):
        # Handlers that loop in Python can hold the interpreter so that the
        # event loop never gets to stop the server: the watchdog thread then
        # ends the process itself, with the status that gets it restarted.
        kubeless = import_server_module()
        config = kubeless.Config({'MOD_NAME': 'app', 'FUNC_HANDLER': 'handler',
                                  'FUNC_THREADS': '2', 'FUNC_TIMEOUT': '1'})
        runtime = kubeless.Runtime(config, lambda event, context: '')

        class StuckCall:
            def describe(self, now):
                return 'GET /spin (running 5.0s)'

        class FullPool:
            def overdue(self, grace):
                return [StuckCall(), StuckCall()]

        class StarvedLoop:  # takes callbacks and never runs them
            def __init__(self):
                self.scheduled = []

            def call_soon_threadsafe(self, callback, *args):
                self.scheduled.append((callback, args))

        exits = []

        def fake_exit(status):
            exits.append(status)
            raise SystemExit(status)  # ends the watchdog thread

        runtime.pool, runtime.loop = FullPool(), StarvedLoop()
        log = io.StringIO()
        with mock.patch.object(kubeless, 'SHUTDOWN_GRACE_SECONDS', -1.5), \
                mock.patch.object(kubeless.os, '_exit', fake_exit), mock.patch('sys.stderr', log):
            watchdog = threading.Thread(target=runtime.watchdog, daemon=True)
            watchdog.start()
            watchdog.join(30)
        self.assertFalse(watchdog.is_alive())
        self.assertEqual(exits, [kubeless.UNHEALTHY_EXIT])
        [(callback, (reason,))] = runtime.loop.scheduled
        self.assertEqual(callback, runtime.give_up)
        self.assertEqual(reason, '2 calls of app.handler are still running after FUNC_TIMEOUT (1s): '
                                 'GET /spin (running 5.0s), GET /spin (running 5.0s)')
        self.assertIn('the server did not stop within', log.getvalue())
        self.assertIn('exiting with status 3 now', log.getvalue())


class SlowClientTest(ServerTestCase):
    extra_env = {'FUNC_HEADER_TIMEOUT': '1', 'FUNC_BODY_TIMEOUT': '1', 'FUNC_IDLE_TIMEOUT': '1'}

    def test_slow_head_is_408_and_closed(self):
        response, seconds = answer_after_dribbling(self.port, b'GET /hello HTTP/1.1\r\nX-Slow: ', b'a')
        self.assertTrue(response.startswith(b'HTTP/1.1 408 '), response)
        self.assertIn(b'Connection: close', response)
        self.assertTrue(response.endswith(b'request head not received within 1s\n'), response)
        self.assertGreater(seconds, 0.9)

    def test_silent_connection_is_closed(self):
        response, seconds = answer_after_dribbling(self.port, b'', b'')
        self.assertEqual(response, b'')
        self.assertGreater(seconds, 0.9)

    def test_slow_body_is_408_and_closed(self):
        head = b'POST /echo HTTP/1.1\r\nContent-Length: 100\r\n\r\n' + b'x' * 10
        response, seconds = answer_after_dribbling(self.port, head, b'')
        self.assertTrue(response.startswith(b'HTTP/1.1 408 '), response)
        self.assertTrue(response.endswith(b'request body too slow: no data for 1s, '
                                          b'or under 1024 bytes/s on average\n'), response)
        self.assertGreater(seconds, 0.9)

    def test_dribbled_body_is_408_and_closed(self):
        # A byte every 0.1 s never pauses for 1 s, but falls far behind 1 KiB/s.
        head = b'POST /echo HTTP/1.1\r\nContent-Length: 100000\r\n\r\n'
        response, seconds = answer_after_dribbling(self.port, head, b'x')
        self.assertTrue(response.startswith(b'HTTP/1.1 408 '), response)
        self.assertIn(b'request body too slow', response)
        self.assertGreater(seconds, 0.9)

    def test_body_at_a_steady_pace_is_served(self):
        # A body that takes 3 s at about 10 KiB/s, three times FUNC_BODY_TIMEOUT: it keeps
        # coming fast enough, so it is served.
        with socket.create_connection(('127.0.0.1', self.port), timeout=10) as sock:
            sock.sendall(b'POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n'
                         b'Content-Length: 30000\r\n\r\n')
            for _ in range(30):
                time.sleep(0.1)
                sock.sendall(b'x' * 1000)
            response = b''
            while chunk := sock.recv(65536):
                response += chunk
        self.assertTrue(response.startswith(b'HTTP/1.1 200 '), response[:200])

    def test_idle_keep_alive_connection_is_closed(self):
        with socket.create_connection(('127.0.0.1', self.port), timeout=20) as sock:
            sock.sendall(b'GET /hello HTTP/1.1\r\nHost: x\r\n\r\n')
            response = b''
            while not response.endswith(b'hello world'):
                response += sock.recv(65536)
            self.assertIn(b'Connection: keep-alive', response)
            self.assertEqual(sock.recv(65536), b'')  # closed by the server

    def test_fast_requests_are_unaffected(self):
        conn = self.server.connect()
        try:
            for _ in range(3):
                self.assertEqual(send(conn, 'POST', '/echo', b'{"a": 1}',
                                      {'Content-Type': 'application/json'})[0], 200)
        finally:
            conn.close()


class SweepTest(unittest.TestCase):
    """The sweep that enforces the deadlines, driven by hand."""

    def test_a_client_gone_before_its_408_does_not_end_the_deadlines(self):
        # A client that resets its connection just before its head deadline
        # made writing the 408 fail; the failure ended the sweeps, and with
        # them every deadline, while /healthz went on answering OK.
        kubeless = import_server_module()
        runtime = kubeless.Runtime(kubeless.Config({'MOD_NAME': 'app', 'FUNC_HANDLER': 'handler',
                                                    'FUNC_HEADER_TIMEOUT': '1'}), lambda e, c: '')

        class Loop:
            def __init__(self):
                self.now, self.timers = 0.0, []

            def time(self):
                return self.now

            def call_later(self, delay, callback, *args):
                self.timers.append(callback)

        class Transport:
            def __init__(self, gone):
                self.gone, self.written, self.aborted = gone, b'', False

            def write(self, data):
                self.written += data

            def can_write_eof(self):
                return True

            def write_eof(self):
                if self.gone:
                    raise OSError(errno.ENOTCONN, 'Transport endpoint is not connected')

            def abort(self):
                self.aborted = True

            close = abort

        runtime.loop = Loop()
        transports = [Transport(gone=True), Transport(gone=False), Transport(gone=True)]
        for transport in transports:
            conn = kubeless.HttpConnection(runtime)
            conn.connection_made(transport)
            conn.data_received(b'GET / HTTP/1.1\r\nHost: x\r\n')  # a head that never ends
        runtime.loop.now = 5.0
        log = io.StringIO()
        with mock.patch('sys.stderr', log):
            runtime.sweep()
        self.assertEqual(runtime.loop.timers.count(runtime.sweep), 1, 'the next sweep is planned')
        for transport in transports:
            self.assertIn(b'HTTP/1.1 408 ', transport.written)
            self.assertEqual(transport.aborted, transport.gone)
        self.assertEqual(log.getvalue(), '')


class ConnectionCapTest(ServerTestCase):
    extra_env = {'FUNC_MAX_CONNECTIONS': '1000'}
    slow = 3000

    @classmethod
    def setUpClass(cls):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = cls.slow + 500
        if soft < wanted:
            if hard != resource.RLIM_INFINITY and hard < wanted:
                raise unittest.SkipTest(f'needs {wanted} open files, the limit is {hard}')
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        super().setUpClass()

    def test_healthz_answers_while_thousands_of_slow_connections_are_open(self):
        sockets = []
        try:
            for _ in range(self.slow):
                sock = socket.create_connection(('127.0.0.1', self.port), timeout=10)
                sock.sendall(b'GET /hello HTTP/1.1\r\nX-Slow: ')
                sockets.append(sock)
            for _ in range(3):
                self.assertEqual(self.call('GET', '/healthz')[::2], (200, b'OK'))
                self.assertEqual(self.call('GET', '/hello')[::2], (200, b'hello world'))

            def still_open():
                count = 0
                for sock in sockets:
                    sock.setblocking(False)
                    try:
                        if sock.recv(1):
                            count += 1
                    except BlockingIOError:
                        count += 1
                    except OSError:
                        pass
                return count

            # The cap holds: the oldest slow connections were closed to make room.
            self.assertLessEqual(wait_until(lambda: still_open() <= 1000), 1000)
        finally:
            for sock in sockets:
                sock.close()


class MalformedRequestTest(ServerTestCase):
    """Every malformed request gets a 4xx with its reason (never an empty reply)."""

    CASES = [
        (b'NONSENSE\r\n\r\n', 400, b'malformed request line'),
        (b'GET  / HTTP/1.1\r\n\r\n', 400, b'malformed request line'),
        (b'GET / HTTP/1.1\r\nBad Header\r\n\r\n', 400, b'malformed header line'),
        (b'GET / HTTP/1.1\r\n folded: x\r\n\r\n', 400, b'malformed header line'),
        (b'GET / HTTP/1.1\nHost: x\n\n', 400, b'lines must end with CRLF'),
        (b'GET / HTTP/1.1\r\nHost: x\r\n\n', 400, b'lines must end with CRLF'),
        (b'GET / HTTP/1.1\r\nHost: x\nX-Y: z\r\n\r\n', 400, b'lines must end with CRLF'),
        (b'GET / HTTP/1.1\r\nHost: x\rX-Y: z\r\n\r\n', 400, b'lines must end with CRLF'),
        (b'GET http://[::1/x HTTP/1.1\r\n\r\n', 400, b'malformed request target'),
        (b'GET example.com HTTP/1.1\r\n\r\n', 400, b'malformed request target'),
        (b'GET / HTTP/2.0\r\n\r\n', 505, b"unsupported protocol 'HTTP/2.0'"),
        (b'GET / FOO/1.1\r\n\r\n', 400, b"unsupported protocol 'FOO/1.1'"),
        (b'BREW /pot HTTP/1.1\r\n\r\n', 501, b"method 'BREW' not implemented"),
        (b'GET /' + b'a' * 70000 + b' HTTP/1.1\r\n\r\n', 431, b'request head too large'),
        (b'GET / HTTP/1.1\r\nX: ' + b'a' * 70000 + b'\r\n\r\n', 431, b'request head too large'),
        (b'GET / HTTP/1.1\r\n' + b'X: a\r\n' * 101 + b'\r\n', 431, b'more than 100 header fields'),
        (b'POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n', 400, b'invalid Content-Length'),
        (b'POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n', 400, b'invalid Content-Length'),
        (b'POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n', 400, b'invalid Content-Length'),
        (b'POST / HTTP/1.1\r\nContent-Length: ' + b'9' * 5000 + b'\r\n\r\n', 413, b'request body larger than'),
        (b'POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n', 400,
         b'both Transfer-Encoding and Content-Length'),
        (b'POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n', 400, b"unsupported Transfer-Encoding 'gzip'"),
        (b'POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n', 400, b'malformed chunk size'),
        (b'POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY', 400, b'malformed chunked body'),
        (b'POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1' + b' ' * 2000, 400, b'malformed chunked body'),
        (b'POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n' + b'f' * 40 + b'\r\n', 413,
         b'request body larger than'),
    ]

    def json_request(self, body):
        return (b'POST /echo HTTP/1.1\r\nContent-Type: application/json\r\nConnection: close\r\n'
                b'Content-Length: %d\r\n\r\n' % len(body)) + body

    def check(self, payload, status, reason):
        response = raw_exchange(self.port, payload, timeout=10)
        self.assertTrue(response.startswith(b'HTTP/1.1 %d ' % status), (payload[:80], response))
        self.assertIn(b'Connection: close', response)
        self.assertIn(reason, response.partition(b'\r\n\r\n')[2])

    def test_malformed_requests(self):
        for payload, status, reason in self.CASES:
            with self.subTest(payload=payload[:60]):
                self.check(payload, status, reason)

    def test_malformed_json_bodies(self):
        for body, reason in ((b'[' * 100000, b'Invalid JSON body: nested too deeply'),
                             (b'{"a": ' * 100000, b'Invalid JSON body: nested too deeply'),
                             (b'{"a": "\xff"}', b'Invalid JSON body: '),
                             (b'[1, -' + b'2' * 5000 + b']',
                              b'Invalid JSON body: Exceeds the limit (4300 digits) for integer '
                              b'string conversion: value has 5000 digits'),
                             (b'{"a":', b'Invalid JSON body: ')):
            with self.subTest(body=body[:20]):
                self.check(self.json_request(body), 400, reason)
        self.assertNotIn('Traceback', self.server.stderr.text())

    def test_server_serves_after_malformed_requests(self):
        self.check(self.json_request(b'[' * 100000), 400, b'nested too deeply')
        self.assertEqual(self.call('GET', '/hello')[::2], (200, b'hello world'))
        self.assertEqual(self.call('GET', '/healthz')[::2], (200, b'OK'))


if __name__ == '__main__':
    unittest.main()
