'use strict';
// Peer: Node's `ws` (npm), the way its README broadcasts and echoes.
//
//   node ws_server.js --port P
//
// ws://127.0.0.1:P/broadcast/websocket  every message goes to every client (sender too)
// ws://127.0.0.1:P/echo/websocket       every message goes back to its sender
// GET /health                           200 once listening
//
// The checks sockway makes on every opening handshake by default, made here too, so that
// a connection storm costs both the same work: an Origin header other than the server's
// own (http://<Host>) is refused with 403 (none at all is allowed, as for non-browser
// clients); the subprotocol "bench.v1" is chosen when offered (RFC 6455 section 4.2.2);
// permessage-deflate (RFC 7692) is negotiated when offered (ws's `perMessageDeflate`
// option; its default is off). A client that offers none of them, as in the fan-out and
// echo scenarios, gets exactly what it got without them.

const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
const port = Number(args.port);

const PROTOCOL = 'bench.v1';
const options = {
  noServer: true,
  perMessageDeflate: true,
  handleProtocols: (protocols) => (protocols.has(PROTOCOL) ? PROTOCOL : false),
};

const broadcast = new WebSocketServer(options);
broadcast.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    broadcast.clients.forEach((client) => {
      if (client.readyState === WebSocket.OPEN) client.send(data, { binary: isBinary });
    });
  });
});

const echo = new WebSocketServer(options);
echo.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
});

const server = http.createServer((req, res) => {
  res.writeHead(req.url === '/health' ? 200 : 404, { 'Content-Type': 'text/plain' });
  res.end(req.url === '/health' ? 'ok\n' : 'not found\n');
});

server.on('upgrade', (req, socket, head) => {
  const target = { '/broadcast/websocket': broadcast, '/echo/websocket': echo }[req.url];
  if (!target) {
    socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n');
    return;
  }
  const origin = req.headers.origin;
  if (origin !== undefined && origin !== `http://${req.headers.host}`) {
    socket.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n');
    return;
  }
  target.handleUpgrade(req, socket, head, (ws) => target.emit('connection', ws, req));
});

server.listen(port, '127.0.0.1', 4096);
process.on('SIGTERM', () => process.exit(0));
