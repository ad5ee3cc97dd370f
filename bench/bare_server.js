// The bare Node.js baseline of bench/run.py: node:http answering "hello world", no framework
// and no handler call.
//
//   usage: node bare_server.js PORT      (listens on 127.0.0.1)
'use strict';
const http = require('node:http');

const port = Number(process.argv[2]);
const server = http.createServer((req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/plain' });
  res.end('hello world');
});
server.listen(port, '127.0.0.1');
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => server.close(() => process.exit(0)));
