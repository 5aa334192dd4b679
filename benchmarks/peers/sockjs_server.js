'use strict';
// Peer: sockjs-node (the `sockjs` package on npm), the way its README broadcasts and
// echoes.
//
//   node sockjs_server.js --port P
//
// /broadcast  every message goes to every session (sender too)
// /echo       every message goes back to its sender
// Both are full SockJS endpoints: /info, every transport, and
// /<prefix>/<server>/<session>/websocket, which is what the benchmark measures.
// GET /health answers 200 once listening.

const http = require('http');
const sockjs = require('sockjs');

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
const port = Number(args.port);
const quiet = { log: () => {} };

const members = new Set();
const broadcast = sockjs.createServer(quiet);
broadcast.on('connection', (conn) => {
  members.add(conn);
  conn.on('data', (message) => {
    for (const member of members) member.write(message);
  });
  conn.on('close', () => members.delete(conn));
});

const echo = sockjs.createServer(quiet);
echo.on('connection', (conn) => {
  conn.on('data', (message) => conn.write(message));
});

const server = http.createServer((req, res) => {
  res.writeHead(req.url === '/health' ? 200 : 404, { 'Content-Type': 'text/plain' });
  res.end(req.url === '/health' ? 'ok\n' : 'not found\n');
});
broadcast.installHandlers(server, { prefix: '/broadcast' });
echo.installHandlers(server, { prefix: '/echo' });

server.listen(port, '127.0.0.1', 4096);
process.on('SIGTERM', () => process.exit(0));
