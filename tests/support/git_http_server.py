#!/usr/bin/env python3
"""A Git smart-HTTP server for the tests: `git http-backend` run as CGI behind HTTP basic auth.

    python3 git_http_server.py --root DIR --user USER --password PASSWORD --log FILE

Serves the repositories under DIR (GIT_PROJECT_ROOT, every one exported) on 127.0.0.1 and a
port the system picks, printed alone on the first line of stdout once it listens. Every request
must carry `Authorization: Basic` with USER and PASSWORD; others get 401 with
`WWW-Authenticate: Basic realm="git"` (and the backend is not run).

Request bodies are passed to the backend as they came, de-chunked when sent with
`Transfer-Encoding: chunked`. The backend's CGI headers (`Status:` included) become the HTTP
response, sent with a Content-Length so that connections can be kept alive.

One JSON object a line is appended to FILE for every request: method, path, query, status,
whether Basic credentials came and were right, the size of the body, whether the body asked
for a shallow fetch (`deepen`), and the first bytes of the body. Passwords are never logged.

It exits when its standard input closes. Standard library only.
"""

import argparse
import base64
import gzip
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

LOG_LOCK = threading.Lock()


def read_chunked(rfile):
    """Reads a chunked request body (RFC 9112 section 7.1), trailers included."""
    body = bytearray()
    while True:
        line = rfile.readline()
        if not line:
            raise ValueError("the connection closed inside a chunked body")
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            # Trailer fields, up to an empty line.
            while True:
                trailer = rfile.readline()
                if trailer in (b"\r\n", b"\n", b""):
                    return bytes(body)
        body += rfile.read(size)
        rfile.readline()  # the CRLF after the chunk


def parse_cgi(output):
    """Splits a CGI response into (status, [(name, value)], body)."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        head, sep, body = output.partition(separator)
        if sep:
            break
    else:
        return 502, [("Content-Type", "text/plain")], b"the backend sent no CGI headers\n"
    status = 200
    headers = []
    for line in head.decode("latin-1").splitlines():
        if not line.strip():
            continue
        name, _, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if name.lower() == "status":
            status = int(value.split()[0])
        else:
            headers.append((name, value))
    return status, headers, body


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fnbuild-test-git/1"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass  # requests are logged as JSON lines instead

    def do_GET(self):
        self.handle_git()

    def do_POST(self):
        self.handle_git()

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return read_chunked(self.rfile)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def credentials_ok(self):
        """(came, right) for the Authorization header."""
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False, False
        try:
            user, _, password = base64.b64decode(value.strip()).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return True, False
        return True, (user == self.server.user and password == self.server.password)

    def handle_git(self):
        body = self.read_body()
        url = urlsplit(self.path)
        came, right = self.credentials_ok()
        if not right:
            status = 401
            self.send_response(status)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            message = b"authentication required\n"
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(message)))
            self.end_headers()
            self.wfile.write(message)
        else:
            status = self.run_backend(url, body)
        self.log_request_line(url, status, came, right, body)

    def run_backend(self, url, body):
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": self.server.root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "SERVER_SOFTWARE": self.server_version,
            "REQUEST_METHOD": self.command,
            "PATH_INFO": url.path,
            "QUERY_STRING": url.query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": self.server.user,
            "REMOTE_ADDR": self.client_address[0],
            "HOME": self.server.root,
        }
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        result = subprocess.run(
            ["git", "http-backend"],
            input=body,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            check=False,
        )
        if result.stderr:
            with LOG_LOCK, open(self.server.log_path, "a", encoding="utf-8") as log:
                log.write(json.dumps({"backend_stderr": result.stderr.decode("utf-8", "replace")}) + "\n")
        status, headers, payload = parse_cgi(result.stdout)
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        return status

    def log_request_line(self, url, status, came, right, body):
        plain = body
        if self.headers.get("Content-Encoding", "").lower() in ("gzip", "x-gzip"):
            try:
                plain = gzip.decompress(body)
            except OSError:
                pass
        entry = {
            "method": self.command,
            "path": url.path,
            "query": url.query,
            "status": status,
            "credentials_came": came,
            "credentials_right": right,
            "chunked": self.headers.get("Transfer-Encoding", "").lower() == "chunked",
            "body_bytes": len(body),
            "deepen": b"deepen" in plain,
            "body_start": plain[:200].decode("latin-1"),
        }
        with LOG_LOCK, open(self.server.log_path, "a", encoding="utf-8") as log:
            log.write(json.dumps(entry) + "\n")


def exit_when_stdin_closes():
    while sys.stdin.buffer.read(4096):
        pass
    os._exit(0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.root = os.path.abspath(args.root)
    server.user = args.user
    server.password = args.password
    server.log_path = args.log
    print(server.server_address[1], flush=True)
    # Whoever started the server keeps its stdin open: when that closes (the test is over,
    # or died), the server ends too, even if a wrapper between them took the kill.
    threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
