'use strict';
// The calibration server of the bridge and scale-out scenarios: the channels protocol
// reduced to what gen/subscribers.js needs, doing as little as a server can, so that
// what the generator reaches against it is its own ceiling for channel envelopes.
//
//   node channel_blaster.js --port P --messages M --size S
//
// Hand-rolled handshake on plain `net` sockets, any path. Each connection gets
// {"type":"connected"}; a subscribe gets its reply (offset 0). The first publish any
// client sends makes the blaster write, to every connection, the envelopes of all M
// publications, {"type":"message","channel":"bench","offset":1..M,"epoch":...,"data":...},
// built once, in one write per connection; later frames are ignored. The data carries
// the time of the blast (CLOCK_MONOTONIC microseconds), so the generator's latency
// figures here say how long it took to read the whole blast. GET /health answers 200.

const net = require('net');
const crypto = require('crypto');

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
const port = Number(args.port);
const M = Number(args.messages || 1000);
const S = Number(args.size || 64);
const CHANNEL = args.channel || 'bench';

function frame(payload) {
  const n = payload.length;
  const head = n < 126 ? Buffer.from([0x81, n]) : Buffer.from([0x81, 126, n >> 8, n & 0xff]);
  return Buffer.concat([head, payload]);
}

function text(seq, t) {
  const head = `0 ${seq} ${t} `;
  return head + 'x'.repeat(Math.max(0, S - head.length));
}

function blast() {
  const t = Number(process.hrtime.bigint() / 1000n);
  const frames = [];
  for (let i = 0; i < M; i++) {
    frames.push(frame(Buffer.from(JSON.stringify({ type: 'message', channel: CHANNEL, offset: i + 1,
      epoch: '00000000', data: text(i, t) }))));
  }
  return Buffer.concat(frames);
}

const CONNECTED = frame(Buffer.from('{"type":"connected","conn":"blaster","user":null}'));
const REPLY = frame(Buffer.from(`{"type":"reply","id":1,"result":{"channel":"${CHANNEL}","offset":0,` +
  '"epoch":"00000000","recovered":true,"recoverable":false}}'));
const members = new Set();
let blasted = false;

function onFrames(conn, buf) {
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
    const payload = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) payload[i] = buf[start + i] ^ buf[p + h + (i & 3)];
    const message = payload.toString('utf8');
    if (message.includes('"op":"subscribe"')) {
      conn.sock.write(REPLY);
    } else if (message.includes('"op":"publish"') && !blasted) {
      blasted = true;
      const all = blast();
      for (const member of members) member.sock.write(all);
    }
    p = start + n;
  }
  return p;
}

const server = net.createServer((sock) => {
  sock.setNoDelay(true);
  const conn = { sock, upgraded: false, rest: null };
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
      const key = /sec-websocket-key:\s*(\S+)/i.exec(head);
      if (!key) {
        sock.end('HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n');
        return;
      }
      const accept = crypto.createHash('sha1').update(key[1] + GUID).digest('base64');
      sock.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        `Sec-WebSocket-Accept: ${accept}\r\n\r\n`);
      sock.write(CONNECTED);
      conn.upgraded = true;
      members.add(conn);
      buf = buf.subarray(end + 4);
    }
    const used = onFrames(conn, buf);
    if (used < buf.length) conn.rest = buf.subarray(used);
  });
  sock.on('error', () => {});
  sock.on('close', () => members.delete(conn));
});

server.listen(port, '127.0.0.1', 4096);
process.on('SIGTERM', () => process.exit(0));
