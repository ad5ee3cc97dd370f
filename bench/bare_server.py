"""The bare Python baseline of bench/run.py: a hello-world HTTP/1.1 server on one asyncio
event loop with a Protocol, no framework and no handler call. It keeps connections alive and
honours Content-Length, and nothing else: it shows how fast a careful stdlib server can go.

    usage: python3 bare_server.py PORT      (listens on 127.0.0.1)
"""

import asyncio
import signal
import sys

BODY = b'hello world'
RESPONSE = (b'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n'
            b'Connection: keep-alive\r\n\r\n%s' % (len(BODY), BODY))


class Hello(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b''

    def data_received(self, data):
        self.buffer += data
        while True:
            end = self.buffer.find(b'\r\n\r\n')
            if end < 0:
                if len(self.buffer) > 65536:
                    self.transport.close()
                return
            length = 0
            for line in self.buffer[:end].split(b'\r\n')[1:]:
                name, _, value = line.partition(b':')
                if name.strip().lower() == b'content-length':
                    length = int(value.strip() or 0)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            self.transport.write(RESPONSE)


async def main(port):
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set_result, None)
    server = await loop.create_server(Hello, '127.0.0.1', port, backlog=1024)
    async with server:
        await stop


if __name__ == '__main__':
    asyncio.run(main(int(sys.argv[1])))
