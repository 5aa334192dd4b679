'use strict';
// Peer: Socket.IO (the `socket.io` package on npm, v4: Engine.IO protocol 4, Socket.IO
// protocol 5), the way its documentation broadcasts, on its WebSocket transport only.
//
//   node socketio_server.js --port P [--ping-interval MS]
//
// ws://127.0.0.1:P/socket.io/?EIO=4&transport=websocket
//   every "msg" event a client emits is emitted to every client (sender too):
//   socket.on("msg", (data) => io.emit("msg", data))
// GET /health  200 once listening
//
// transports: ["websocket"] means no HTTP long-polling handshake first: a client opens
// the WebSocket directly, as socket.io-client does with the same option. Everything else
// is Socket.IO's default (no permessage-deflate, ping every 25 s, 20 s to answer).

const http = require('http');
const { Server } = require('socket.io');

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
const port = Number(args.port);

const server = http.createServer((req, res) => {
  res.writeHead(req.url === '/health' ? 200 : 404, { 'Content-Type': 'text/plain' });
  res.end(req.url === '/health' ? 'ok\n' : 'not found\n');
});

const io = new Server(server, {
  transports: ['websocket'],
  ...(args['ping-interval'] ? { pingInterval: Number(args['ping-interval']) } : {}),
});
io.on('connection', (socket) => {
  socket.on('msg', (data) => io.emit('msg', data));
});

server.listen(port, '127.0.0.1', 4096);
process.on('SIGTERM', () => process.exit(0));
