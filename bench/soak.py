"""The soak traffic of bench/run.py: mixed good and bad clients against one runtime server.

For --seconds it keeps up, at the same time:

- good calls: --good keep-alive connections, each sending GET /hello after the last answer
  (the answer must be 200 "hello world");
- hung calls: every --hung-every seconds a call to a handler that outlives FUNC_TIMEOUT
  (the paths given with --hung-path, taken in turn); the answer must be 408;
- malformed requests: every --malformed-every seconds one of MALFORMED on a new connection;
  the answer must be a 4xx with a reason in its body;
- slow clients: --slow connections that send a request head (or, one in ten, a body) a byte
  every --slow-interval seconds; the server must answer 408 (or close) at its deadline, and
  the client then starts again;
- a probe: GET /healthz every second on a new connection, which must answer within 1 s;

and samples the server's VmRSS, open files and threads every 5 s. It prints one JSON object:
counts per kind of traffic (answers by status and errors by kind), the probe's failures and
worst latency, and the samples.

    usage: python3 soak.py --port PORT --pid PID --seconds N [--hung-path /hang ...]
"""

import argparse
import asyncio
import collections
import itertools
import json
import os
import random
import time

HOST = '127.0.0.1'
GOOD_REQUEST = b'GET /hello HTTP/1.1\r\nHost: soak\r\n\r\n'
MALFORMED = [
    ('bad request line', b'NONSENSE\r\n\r\n'),
    ('bare LF line ends', b'GET / HTTP/1.1\nHost: soak\n\n'),
    ('bad header line', b'GET / HTTP/1.1\r\nHost: soak\r\nBad Header\r\n\r\n'),
    ('bad Content-Length', b'POST / HTTP/1.1\r\nHost: soak\r\nContent-Length: 1x\r\n\r\n'),
    ('Content-Length and chunked',
     b'POST / HTTP/1.1\r\nHost: soak\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'),
    ('bad chunk size', b'POST / HTTP/1.1\r\nHost: soak\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n'),
    ('unclosed JSON nested 100,000 deep',
     b'POST / HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n'
     + b'[' * 100000),
    ('head over 64 KB', b'GET / HTTP/1.1\r\nHost: soak\r\nX-Big: ' + b'a' * 70000 + b'\r\n\r\n'),
]


class Counts:
    """Answers by status and failures by kind, per kind of traffic."""

    def __init__(self):
        self.by_kind = collections.defaultdict(collections.Counter)

    def add(self, kind, outcome):
        self.by_kind[kind][outcome] += 1

    def as_dict(self):
        return {kind: dict(counter) for kind, counter in self.by_kind.items()}


async def read_response(reader):
    """(status, body) of one response; raises on a malformed answer or a closed connection."""
    line = await reader.readline()
    if not line:
        raise ConnectionResetError('closed without an answer')
    status = int(line.split(b' ', 2)[1])
    length = 0
    while True:
        header = await reader.readline()
        if header in (b'\r\n', b''):
            break
        name, _, value = header.partition(b':')
        if name.strip().lower() == b'content-length':
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b''
    return status, body


def failure(exc):
    """A short name for why a call failed."""
    if isinstance(exc, asyncio.TimeoutError):
        return 'timeout'
    if isinstance(exc, ConnectionRefusedError):
        return 'connection refused'
    if isinstance(exc, (ConnectionResetError, asyncio.IncompleteReadError, BrokenPipeError)):
        return 'closed without an answer'
    return type(exc).__name__


async def close(writer):
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass


class Soak:
    def __init__(self, args):
        self.args = args
        self.counts = Counts()
        self.deadline = time.monotonic() + args.seconds
        self.probe_ms = []
        self.samples = []

    def running(self):
        return time.monotonic() < self.deadline

    async def one_call(self, kind, payload, expect, timeout):
        """A request on a new connection; counts its answer (expected or not) or failure."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, self.args.port), 5)
        except (OSError, asyncio.TimeoutError) as exc:
            self.counts.add(kind, failure(exc))
            return
        try:
            writer.write(payload)
            status, body = await asyncio.wait_for(read_response(reader), timeout)
            self.counts.add(kind, 'expected' if expect(status, body) else f'status {status}')
        except (OSError, ValueError, IndexError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
            self.counts.add(kind, failure(exc))
        finally:
            await close(writer)

    async def good_client(self):
        while self.running():
            try:
                reader, writer = await asyncio.open_connection(HOST, self.args.port)
            except OSError as exc:
                self.counts.add('good', failure(exc))
                await asyncio.sleep(0.1)
                continue
            try:
                while self.running():
                    writer.write(GOOD_REQUEST)
                    status, body = await asyncio.wait_for(read_response(reader), 10)
                    ok = status == 200 and body == b'hello world'
                    self.counts.add('good', 'expected' if ok else f'status {status}')
            except (OSError, ValueError, IndexError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
                self.counts.add('good', failure(exc))
            finally:
                await close(writer)

    async def every(self, seconds, make_call):
        """Starts make_call() every `seconds` without waiting for the earlier ones."""
        tasks = set()
        while self.running():
            task = asyncio.ensure_future(make_call())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(seconds)
        if tasks:
            await asyncio.wait(tasks)

    async def hung_calls(self):
        paths = itertools.cycle(self.args.hung_path)
        await self.every(self.args.hung_every, lambda: self.one_call(
            'hung', b'GET %s HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n' % next(paths).encode(),
            lambda status, _: status == 408, self.args.timeout + 30))

    async def malformed_requests(self):
        def call():
            what, payload = random.choice(MALFORMED)
            return self.one_call('malformed', payload,
                                 lambda status, body: 400 <= status < 500 and body.strip() != b'', 10)
        await self.every(self.args.malformed_every, call)

    async def slow_client(self, number):
        """Dribbles a head (or a body) until the server answers or closes; then again."""
        interval = self.args.slow_interval
        await asyncio.sleep(interval * number / self.args.slow)  # spread the starts
        while self.running():
            if number % 10 == 0:
                kind = 'slow body'
                head = b'POST /hello HTTP/1.1\r\nHost: soak\r\nContent-Length: 100000\r\n\r\n'
            else:
                kind, head = 'slow head', b'GET /hello HTTP/1.1\r\nHost: soak\r\nX-Slow: '
            try:
                reader, writer = await asyncio.open_connection(HOST, self.args.port)
            except OSError as exc:
                self.counts.add(kind, failure(exc))
                await asyncio.sleep(interval)
                continue
            answer = asyncio.ensure_future(read_response(reader))
            try:
                writer.write(head)
                while self.running() and not answer.done():
                    await asyncio.wait([answer], timeout=interval)
                    if not answer.done():
                        writer.write(b'a')
                if answer.done():
                    status, _ = answer.result()
                    self.counts.add(kind, 'expected' if status == 408 else f'status {status}')
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
                outcome = failure(exc)
                # Closing a silent-looking connection without an answer is allowed too.
                self.counts.add(kind, 'expected' if outcome == 'closed without an answer' else outcome)
            finally:
                answer.cancel()
                await close(writer)

    async def probe(self):
        while self.running():
            started = time.monotonic()
            await self.one_call('healthz', b'GET /healthz HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n',
                                lambda status, body: status == 200, 1.0)
            self.probe_ms.append((time.monotonic() - started) * 1000)
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))

    async def sample(self):
        started = time.monotonic()
        while True:
            self.samples.append({'t': round(time.monotonic() - started, 1), **process_status(self.args.pid)})
            if not self.running():
                return
            await asyncio.sleep(min(5.0, max(0.0, self.deadline - time.monotonic())))

    async def run(self):
        jobs = [self.good_client() for _ in range(self.args.good)]
        jobs += [self.slow_client(n) for n in range(self.args.slow)]
        jobs += [self.hung_calls(), self.malformed_requests(), self.probe(), self.sample()]
        await asyncio.gather(*jobs)
        return {'counts': self.counts.as_dict(),
                'healthz_worst_ms': round(max(self.probe_ms, default=0.0), 1),
                'samples': self.samples}


def process_status(pid):
    """VmRSS (KB), threads and open files of a process; {'gone': True} once it has exited."""
    try:
        with open(f'/proc/{pid}/status') as f:
            fields = dict(line.split(':', 1) for line in f if ':' in line)
        files = len(os.listdir(f'/proc/{pid}/fd'))
    except OSError:
        return {'gone': True}
    return {'rss_kb': int(fields['VmRSS'].split()[0]), 'threads': int(fields['Threads']), 'files': files}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--port', type=int, required=True)
    parser.add_argument('--pid', type=int, required=True, help='the server process, for its RSS')
    parser.add_argument('--seconds', type=float, required=True)
    parser.add_argument('--timeout', type=float, default=2.0, help="the server's FUNC_TIMEOUT")
    parser.add_argument('--good', type=int, default=4)
    parser.add_argument('--slow', type=int, default=500)
    parser.add_argument('--slow-interval', type=float, default=2.0)
    parser.add_argument('--hung-every', type=float, default=2.0)
    parser.add_argument('--hung-path', action='append', default=[])
    parser.add_argument('--malformed-every', type=float, default=0.1)
    args = parser.parse_args()
    args.hung_path = args.hung_path or ['/hang']
    print(json.dumps(asyncio.run(Soak(args).run())))


if __name__ == '__main__':
    main()
