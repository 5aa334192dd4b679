'use strict';
// The calibration server: the least work a server can do, so that what is measured
// against it is the load generator's own ceiling.
//
//   node blaster.js --port P --messages M --size S
//
// Hand-rolled handshake on plain `net` sockets, any path; a path ending in
// /<server>/<session>/websocket gets the SockJS "o" frame. On /broadcast/...: the first
// data frame any client sends makes the blaster write, to every connection, all M
// numbered messages, pre-framed once (one WebSocket frame per message, or one SockJS
// a["..."] frame per message: the framing that costs the generator the most to parse),
// in a single write per connection; later client frames are ignored. On /echo/...:
// every message goes straight back. On /relay/... (the steady-rate scenario's
// calibration): every message goes to every /relay connection of its kind, the messages
// that arrived in one turn of the event loop in one write per connection (as sockway
// coalesces). A handshake's headers are not checked (no origin check, no subprotocol,
// no permessage-deflate: the least work). GET /health answers 200.

const net = require('net');
const crypto = require('crypto');

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
const port = Number(args.port);
const M = Number(args.messages || 1000);
const S = Number(args.size || 64);

function frame(payload) {
  const n = payload.length;
  const head = n < 126 ? Buffer.from([0x81, n]) : Buffer.from([0x81, 126, n >> 8, n & 0xff]);
  return Buffer.concat([head, payload]);
}

function messageText(seq) {
  const head = `${seq} `;
  return head + 'x'.repeat(Math.max(0, S - head.length));
}

const blast = { raw: [], sockjs: [] };
for (let i = 0; i < M; i++) {
  blast.raw.push(frame(Buffer.from(messageText(i))));
  blast.sockjs.push(frame(Buffer.from(`a${JSON.stringify([messageText(i)])}`)));
}
blast.raw = Buffer.concat(blast.raw);
blast.sockjs = Buffer.concat(blast.sockjs);
const OPEN_FRAME = frame(Buffer.from('o'));

const members = { raw: new Set(), sockjs: new Set() };
const relays = { raw: new Set(), sockjs: new Set() };
const pending = { raw: [], sockjs: [] };
let flushScheduled = false;
let blasted = false;

function flushRelay() {
  flushScheduled = false;
  for (const kind of ['raw', 'sockjs']) {
    if (pending[kind].length === 0) continue;
    const data = pending[kind].length === 1 ? pending[kind][0] : Buffer.concat(pending[kind]);
    pending[kind] = [];
    for (const member of relays[kind]) member.sock.write(data);
  }
}

function onFrames(conn, buf) {
  // Client frames are masked (RFC 6455 section 5.3).
  let p = 0;
  while (p + 6 <= buf.length) {
    let n = buf[p + 1] & 0x7f;
    let h = 2;
    if (n === 126) {
      n = buf.readUInt16BE(p + 2);
      h = 4;
    } else if (n === 127) {
      n = buf.readUInt32BE(p + 6);
      h = 10;
    }
    const start = p + h + 4;
    if (start + n > buf.length) break;
    const opcode = buf[p] & 0x0f;
    if (opcode === 0x8) {
      conn.sock.end(Buffer.from([0x88, 0]));
      return buf.length;
    }
    if (conn.echo || conn.relay) {
      const payload = Buffer.allocUnsafe(n);
      for (let i = 0; i < n; i++) payload[i] = buf[start + i] ^ buf[p + h + (i & 3)];
      // SockJS: ["..."] -> a["..."]
      const out = frame(conn.sockjs ? Buffer.concat([Buffer.from('a'), payload]) : payload);
      if (conn.echo) {
        conn.sock.write(out);
      } else {
        pending[conn.sockjs ? 'sockjs' : 'raw'].push(out);
        if (!flushScheduled) {
          flushScheduled = true;
          setImmediate(flushRelay);
        }
      }
    } else if (!blasted) {
      blasted = true;
      for (const kind of ['raw', 'sockjs']) for (const member of members[kind]) member.sock.write(blast[kind]);
    }
    p = start + n;
  }
  return p;
}

const server = net.createServer((sock) => {
  sock.setNoDelay(true);
  const conn = { sock, upgraded: false, rest: null, echo: false, sockjs: false };
  sock.on('data', (chunk) => {
    let buf = conn.rest ? Buffer.concat([conn.rest, chunk]) : chunk;
    conn.rest = null;
    if (!conn.upgraded) {
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) {
        conn.rest = buf;
        return;
      }
      const head = buf.toString('latin1', 0, end);
      const path = head.split(' ')[1] || '';
      const key = /sec-websocket-key:\s*(\S+)/i.exec(head);
      if (!key) {
        sock.end('HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n');
        return;
      }
      const accept = crypto.createHash('sha1').update(key[1] + GUID).digest('base64');
      sock.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        `Sec-WebSocket-Accept: ${accept}\r\n\r\n`);
      conn.upgraded = true;
      conn.sockjs = /^\/[^/]+\/[^/.]+\/[^/.]+\/websocket$/.test(path);
      conn.echo = path.startsWith('/echo/');
      conn.relay = path.startsWith('/relay/');
      if (conn.sockjs) sock.write(OPEN_FRAME);
      if (conn.relay) relays[conn.sockjs ? 'sockjs' : 'raw'].add(conn);
      else if (!conn.echo) members[conn.sockjs ? 'sockjs' : 'raw'].add(conn);
      buf = buf.subarray(end + 4);
    }
    const used = onFrames(conn, buf);
    if (used < buf.length) conn.rest = buf.subarray(used);
  });
  sock.on('error', () => {});
  sock.on('close', () => {
    members.raw.delete(conn);
    members.sockjs.delete(conn);
    relays.raw.delete(conn);
    relays.sockjs.delete(conn);
  });
});

server.listen(port, '127.0.0.1', 4096);
process.on('SIGTERM', () => process.exit(0));
