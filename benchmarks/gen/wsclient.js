'use strict';
// A minimal RFC 6455 client for the load generator: many connections in one process,
// frames parsed straight from the socket's buffers, no per-message allocation on the
// receive path (the handler gets the buffer and the payload's offsets).
//
// What it implements: the opening handshake (section 4.1, the Sec-WebSocket-Accept
// check included; extra request headers such as Origin, Sec-WebSocket-Protocol or a
// permessage-deflate offer can be added, and the server's choices are recorded),
// unmasked server frames with 7/16/64-bit lengths (5.2), fragmented messages (5.4),
// ping -> pong and the closing handshake (5.5), masked client frames (5.3). What it does
// not: inflate compressed messages (RFC 7692). A scenario that offers permessage-deflate
// receives no message the server would compress (the connection storm: none at all, or
// SockJS's one-byte "o"); a compressed one fails the connection with a clear error.

const net = require('net');
const crypto = require('crypto');
const { performance } = require('perf_hooks');

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const CRLFCRLF = Buffer.from('\r\n\r\n');
const READ_BUFFER = Buffer.allocUnsafe(256 * 1024);

const OP_CONT = 0x0;
const OP_TEXT = 0x1;
const OP_BINARY = 0x2;
const OP_CLOSE = 0x8;
const OP_PING = 0x9;
const OP_PONG = 0xa;

const CONNECTING = 0;
const OPEN = 1;
const CLOSED = 2;

// A cheap source of masking keys (xorshift32). RFC 6455 asks for unpredictable keys to
// protect intermediaries from cache poisoning; on 127.0.0.1 the point is only that the
// server unmasks real, varying keys, as it would in production.
let rngState = (crypto.randomBytes(4).readUInt32LE(0) | 1) >>> 0;
function nextMask() {
  let x = rngState;
  x ^= x << 13;
  x ^= x >>> 17;
  x ^= x << 5;
  rngState = x >>> 0;
  return rngState;
}

// Handshake keys (RFC 6455 section 4.1: a random 16-byte nonce, base64) and the
// Sec-WebSocket-Accept each must bring back (section 4.2.2), made once: 256 of them,
// connection i using key i mod 256. The server computes the accept value whatever the
// key; drawing one and hashing it per connection cost the generator ~30 us of a
// connection storm's ~250 per connect.
const KEYS = Array.from({ length: 256 }, () => {
  const key = crypto.randomBytes(16).toString('base64');
  return { key, accept: crypto.createHash('sha1').update(key + GUID).digest('base64') };
});

/** The value of header ``name`` (lower case) in a lower-cased response head, or null. */
function headerValue(lower, head, name) {
  const at = lower.indexOf(`\r\n${name}:`);
  if (at < 0) return null;
  const start = at + name.length + 3;
  const end = lower.indexOf('\r\n', start);
  return head.slice(start, end < 0 ? head.length : end).trim();
}

/** A masked client frame (RFC 6455 section 5.3) carrying ``payload``. */
function maskedFrame(opcode, payload) {
  const n = payload.length;
  const h = n < 126 ? 6 : n < 65536 ? 8 : 14;
  const out = Buffer.allocUnsafe(h + n);
  out[0] = 0x80 | opcode;
  if (n < 126) {
    out[1] = 0x80 | n;
  } else if (n < 65536) {
    out[1] = 0x80 | 126;
    out.writeUInt16BE(n, 2);
  } else {
    out[1] = 0x80 | 127;
    out.writeUInt32BE(Math.floor(n / 4294967296), 2);
    out.writeUInt32BE(n >>> 0, 6);
  }
  const mask = nextMask();
  out.writeUInt32BE(mask, h - 4);
  const m0 = mask >>> 24;
  const m1 = (mask >>> 16) & 0xff;
  const m2 = (mask >>> 8) & 0xff;
  const m3 = mask & 0xff;
  let i = 0;
  for (; i + 3 < n; i += 4) {
    out[h + i] = payload[i] ^ m0;
    out[h + i + 1] = payload[i + 1] ^ m1;
    out[h + i + 2] = payload[i + 2] ^ m2;
    out[h + i + 3] = payload[i + 3] ^ m3;
  }
  for (; i < n; i++) out[h + i] = payload[i] ^ (i % 4 === 0 ? m0 : i % 4 === 1 ? m1 : i % 4 === 2 ? m2 : m3);
  return out;
}

/**
 * One client connection. ``handler`` receives:
 *   onOpen(client)                       handshake done
 *   onMessage(client, buf, start, end, opcode)   one complete data message
 *   beforeData(client)                   (optional) a chunk was read, before it is parsed
 *   afterData(client)                    (optional) after each chunk has been parsed
 *   onClose(client)                      the TCP connection is gone
 *   onError(client, message)             a handshake or protocol failure (then onClose)
 */
class WSClient {
  constructor(id, host, port, path, handler, localAddress = undefined, extraHeaders = '') {
    this.id = id;
    this.handler = handler;
    this.state = CONNECTING;
    this.rest = null;
    this.frags = null;
    this.fragOp = 0;
    this.closeCode = 0;
    this.closing = false; // we sent a close frame (close())
    this.error = null;
    this.user = null; // scenario state
    this.counted = false;
    this.sockjsClose = null;
    this.keys = KEYS[id & 255];
    this.path = path;
    this.host = host;
    this.port = port;
    this.startedAt = performance.now(); // the handshake's latency: startedAt -> openedAt
    this.openedAt = 0;
    this.protocol = null; // the server's Sec-WebSocket-Protocol, if any
    this.extensions = null; // the server's Sec-WebSocket-Extensions, if any
    this.status = null; // the status line of a refused handshake
    // `onread`: every socket reads into one shared buffer and calls back directly, with
    // no Buffer allocated and no stream event per read. What must outlive the callback
    // (a partial frame, fragments) is copied.
    const sock = (this.sock = net.connect({
      host,
      port,
      localAddress, // a source address of 127.0.0.0/8, so that clients come from many addresses
      onread: { buffer: READ_BUFFER, callback: (nread, buf) => this.onData(buf.subarray(0, nread)) },
    }));
    sock.setNoDelay(true);
    sock.on('connect', () => {
      sock.write(
        `GET ${path} HTTP/1.1\r\nHost: ${host}:${port}\r\nUpgrade: websocket\r\n` +
          `Connection: Upgrade\r\nSec-WebSocket-Key: ${this.keys.key}\r\nSec-WebSocket-Version: 13\r\n` +
          `${extraHeaders}\r\n`,
      );
    });
    sock.on('error', (err) => this.fail(`${err.code || err.message}`));
    sock.on('close', () => {
      this.state = CLOSED;
      handler.onClose(this);
    });
  }

  fail(message) {
    if (this.error === null) {
      this.error = message;
      if (this.handler.onError) this.handler.onError(this, message);
    }
    this.sock.destroy();
  }

  handshake(buf) {
    const end = buf.indexOf(CRLFCRLF);
    if (end < 0) {
      if (buf.length > 16384) this.fail('handshake response too long');
      else this.rest = Buffer.from(buf);
      return -1;
    }
    const head = buf.toString('latin1', 0, end);
    if (!head.startsWith('HTTP/1.1 101')) {
      const nl = head.indexOf('\r\n');
      this.status = nl < 0 ? head : head.slice(0, nl);
      this.fail(`handshake refused: ${this.status}`);
      return -1;
    }
    const lower = head.toLowerCase();
    const accept = headerValue(lower, head, 'sec-websocket-accept');
    this.protocol = headerValue(lower, head, 'sec-websocket-protocol');
    this.extensions = headerValue(lower, head, 'sec-websocket-extensions');
    if (accept !== this.keys.accept) {
      this.fail(`bad Sec-WebSocket-Accept ${accept}`);
      return -1;
    }
    this.state = OPEN;
    this.openedAt = performance.now();
    this.handler.onOpen(this);
    return end + 4;
  }

  onData(chunk) {
    if (this.handler.beforeData !== undefined) this.handler.beforeData(this);
    let buf = chunk;
    if (this.rest !== null) {
      buf = Buffer.concat([this.rest, chunk]);
      this.rest = null;
    }
    let p = 0;
    if (this.state === CONNECTING) {
      p = this.handshake(buf);
      if (p < 0) return;
    }
    const len = buf.length;
    const handler = this.handler;
    while (p + 2 <= len) {
      const b0 = buf[p];
      const b1 = buf[p + 1];
      let n = b1 & 0x7f;
      let h = 2;
      if (n === 126) {
        if (p + 4 > len) break;
        n = (buf[p + 2] << 8) | buf[p + 3];
        h = 4;
      } else if (n === 127) {
        if (p + 10 > len) break;
        n = buf.readUInt32BE(p + 2) * 4294967296 + buf.readUInt32BE(p + 6);
        h = 10;
      }
      const start = p + h;
      const end = start + n;
      if (end > len) break;
      if ((b0 & 0x40) !== 0 && this.extensions !== null && this.extensions.includes('permessage-deflate')) {
        this.fail('a compressed message (permessage-deflate): this client does not inflate');
        return;
      }
      if ((b1 & 0x80) !== 0 || (b0 & 0x70) !== 0) {
        this.fail('protocol error: masked frame or reserved bits from the server');
        return;
      }
      const op = b0 & 0x0f;
      if (op === OP_TEXT || op === OP_BINARY) {
        if (b0 & 0x80) {
          handler.onMessage(this, buf, start, end, op);
        } else {
          this.frags = [Buffer.from(buf.subarray(start, end))];
          this.fragOp = op;
        }
      } else if (op === OP_CONT) {
        if (this.frags === null) {
          this.fail('protocol error: continuation without a start');
          return;
        }
        this.frags.push(Buffer.from(buf.subarray(start, end)));
        if (b0 & 0x80) {
          const whole = Buffer.concat(this.frags);
          this.frags = null;
          handler.onMessage(this, whole, 0, whole.length, this.fragOp);
        }
      } else if (op === OP_PING) {
        this.sock.write(maskedFrame(OP_PONG, buf.subarray(start, end)));
      } else if (op === OP_CLOSE) {
        this.closeCode = n >= 2 ? buf.readUInt16BE(start) : 1005;
        if (this.closing) this.sock.end(); // the answer to our close (section 5.5.1)
        else this.sock.end(maskedFrame(OP_CLOSE, buf.subarray(start, Math.min(end, start + 2))));
        this.state = CLOSED;
        return;
      } else if (op !== OP_PONG) {
        this.fail(`protocol error: opcode ${op}`);
        return;
      }
      p = end;
    }
    if (p < len) this.rest = Buffer.from(buf.subarray(p));
    if (handler.afterData !== undefined) handler.afterData(this);
  }

  /** Send one text message (a Buffer of UTF-8). */
  sendText(payload) {
    return this.sock.write(maskedFrame(OP_TEXT, payload));
  }

  /** Write bytes already framed with maskedFrame (several frames may be joined). */
  writeFrames(frames) {
    return this.sock.write(frames);
  }

  /** Start the closing handshake (RFC 6455 section 5.5.1): the server answers, then the
   * TCP connection ends. */
  close(code = 1000) {
    if (this.state !== OPEN || this.closing) {
      this.sock.destroy();
      return;
    }
    this.closing = true;
    const payload = Buffer.allocUnsafe(2);
    payload.writeUInt16BE(code, 0);
    this.sock.write(maskedFrame(OP_CLOSE, payload));
  }

  get isOpen() {
    return this.state === OPEN;
  }
}

// -- the application layer: raw WebSocket messages, SockJS frames or Socket.IO packets ---

const CH_A = 0x61; // a[...]
const CH_O = 0x6f; // o
const CH_H = 0x68; // h
const CH_C = 0x63; // c[code,"reason"]
const CH_QUOTE = 0x22;
const CH_COMMA = 0x2c;

/**
 * Adapts a scenario to a transport. The scenario implements:
 *   onReady(client)                     the connection can carry messages
 *   onItem(client, buf, start, end)     one application message (SockJS: the JSON
 *                                       string's contents, without its quotes)
 *   beforeData(client)                  (optional) a chunk was read (one clock reading
 *                                       per read serves all its messages)
 *   afterData(client)                   (optional) a received chunk has been parsed
 *   onClose(client)                     the connection is gone
 *   onError(client, message)            (optional)
 * Raw WebSocket: each text message is an item and the client is ready after the
 * handshake. SockJS: ready after the ``o`` frame; each string of an ``a[...]`` frame is
 * an item; ``h`` is skipped; ``c[...]`` is remembered as the close reason. The benchmark
 * messages hold no character that JSON escapes, so an item ends at the next quote.
 * Socket.IO: see socketIoPacket.
 */
function adapter(transport, scenario) {
  const sockjs = transport === 'sockjs';
  const socketio = transport === 'socketio';
  return {
    onOpen(client) {
      if (!sockjs && !socketio) scenario.onReady(client);
    },
    onMessage(client, buf, start, end) {
      if (socketio) {
        socketIoPacket(client, buf, start, end, scenario);
        return;
      }
      if (!sockjs) {
        scenario.onItem(client, buf, start, end);
        return;
      }
      const t = buf[start];
      if (t === CH_A) {
        let p = start + 2;
        while (p < end && buf[p] === CH_QUOTE) {
          const q = buf.indexOf(CH_QUOTE, p + 1);
          if (q < 0 || q >= end) break;
          scenario.onItem(client, buf, p + 1, q);
          p = q + 1;
          if (buf[p] !== CH_COMMA) break;
          p++;
        }
        if (buf[p] !== 0x5d || p !== end - 1) client.fail(`malformed SockJS frame at byte ${p - start}`);
      } else if (t === CH_O) {
        scenario.onReady(client);
      } else if (t === CH_C) {
        client.sockjsClose = buf.toString('utf8', start, end);
      } else if (t !== CH_H) {
        client.fail(`unknown SockJS frame ${buf.toString('utf8', start, Math.min(end, start + 20))}`);
      }
    },
    beforeData: scenario.beforeData,
    afterData: scenario.afterData,
    onClose(client) {
      scenario.onClose(client);
    },
    onError(client, message) {
      if (scenario.onError) scenario.onError(client, message);
    },
  };
}

// Socket.IO v4 over its WebSocket transport: Engine.IO protocol 4 packets, one per
// WebSocket text message, the first character the packet type: 0 open (with a JSON
// handshake), 1 close, 2 ping, 3 pong, 4 message; an Engine.IO message carries a
// Socket.IO protocol 5 packet, its first character the type: 0 CONNECT, 1 DISCONNECT,
// 2 EVENT (`["name",args...]`), 4 CONNECT_ERROR. The client answers open with `40` (connect
// to the main namespace), is ready at the server's `40{"sid":...}`, answers each ping with
// a pong (or the server closes it after pingTimeout), and an event `42["msg","..."]` is
// an item: the string's contents (benchmark messages hold no character JSON escapes).
// Written by hand, like the rest of this client, so that a message is read in place from
// the shared buffer (socket.io-client allocates and parses per message: its cost would be
// the generator's ceiling, not the server's).
const SIO_CONNECT = maskedFrame(OP_TEXT, Buffer.from('40'));
const SIO_PONG = maskedFrame(OP_TEXT, Buffer.from('3'));
const SIO_EVENT_PREFIX = Buffer.from('42["msg","');

function socketIoPacket(client, buf, start, end, scenario) {
  const type = buf[start];
  if (type === 0x34 && buf[start + 1] === 0x32) { // 42: an event
    const p = start + SIO_EVENT_PREFIX.length;
    if (end - p < 2 || buf[end - 2] !== CH_QUOTE || buf[end - 1] !== 0x5d ||
        buf.compare(SIO_EVENT_PREFIX, 0, SIO_EVENT_PREFIX.length, start, p) !== 0) {
      client.fail(`unexpected Socket.IO event ${buf.toString('utf8', start, Math.min(end, start + 40))}`);
      return;
    }
    scenario.onItem(client, buf, p, end - 2);
  } else if (type === 0x32) { // 2: ping
    client.pings = (client.pings || 0) + 1;
    client.writeFrames(SIO_PONG);
  } else if (type === 0x30) { // 0: Engine.IO open
    client.writeFrames(SIO_CONNECT);
  } else if (type === 0x34 && buf[start + 1] === 0x30) { // 40: connected to the namespace
    scenario.onReady(client);
  } else if (type === 0x34 && buf[start + 1] === 0x34) { // 44: CONNECT_ERROR
    client.fail(`Socket.IO connect error ${buf.toString('utf8', start, Math.min(end, start + 100))}`);
  } else if (type === 0x31 || (type === 0x34 && buf[start + 1] === 0x31)) { // close, disconnect
    client.sockjsClose = `Socket.IO ${buf.toString('utf8', start, Math.min(end, start + 40))}`;
  } else if (type !== 0x36) { // 6: noop
    client.fail(`unknown Socket.IO packet ${buf.toString('utf8', start, Math.min(end, start + 40))}`);
  }
}

const RUN = crypto.randomBytes(4).toString('hex'); // SockJS session ids differ between runs

/** The URL path of connection ``id`` on ``endpoint`` ("/broadcast"). */
function pathFor(transport, endpoint, id) {
  if (transport === 'socketio') return '/socket.io/?EIO=4&transport=websocket';
  if (transport === 'sockjs') {
    const session = `${id.toString(36)}${RUN}`;
    return `${endpoint}/${String(id % 1000).padStart(3, '0')}/${session}/websocket`;
  }
  return `${endpoint}/websocket`;
}

/** The bytes a client sends to deliver ``message`` (a string): raw text, ``["..."]``
 * (SockJS), or the Socket.IO event ``42["msg","..."]``. */
function outgoingPayload(transport, message) {
  if (transport === 'socketio') return Buffer.from(`42${JSON.stringify(['msg', message])}`);
  return Buffer.from(transport === 'sockjs' ? JSON.stringify([message]) : message);
}

/**
 * Open ``count`` clients, at most ``concurrency`` handshakes at a time (so that the
 * server's accept backlog never overflows and no SYN waits a second for its
 * retransmission), and resolve with them once all are ready. Rejects with the first
 * failure, or when ``timeoutMs`` passes. ``headers(id)``, if given, returns extra request
 * header lines ("Name: value\r\n" each).
 */
function openMany({ count, host, port, endpoint, transport, scenario, concurrency, timeoutMs,
  onProgress, firstId = 0, localAddress = undefined, headers = undefined }) {
  return new Promise((resolve, reject) => {
    const clients = [];
    let started = 0;
    let ready = 0;
    let inFlight = 0;
    let finished = false;
    const deadline = setTimeout(() => {
      finish(new Error(`only ${ready} of ${count} connections were ready within ${timeoutMs / 1000}s`));
    }, timeoutMs);
    const progress = onProgress ? setInterval(() => onProgress(ready, count), 1000) : null;
    function finish(err) {
      if (finished) return;
      finished = true;
      clearTimeout(deadline);
      if (progress) clearInterval(progress);
      if (err) reject(err);
      else resolve(clients);
    }
    const wrapped = {
      onReady(client) {
        if (client.counted) return;
        client.counted = true;
        ready++;
        inFlight--;
        scenario.onReady(client);
        if (ready === count) finish(null);
        else launch();
      },
      onItem: scenario.onItem,
      beforeData: scenario.beforeData,
      afterData: scenario.afterData,
      onClose(client) {
        if (!client.counted) {
          finish(new Error(`connection ${client.id} closed before it was ready` +
            (client.error ? ` (${client.error})` : '')));
        }
        scenario.onClose(client);
      },
      onError(client, message) {
        if (!client.counted) finish(new Error(`connection ${client.id}: ${message}`));
        if (scenario.onError) scenario.onError(client, message);
      },
    };
    const handler = adapter(transport, wrapped);
    function launch() {
      while (!finished && started < count && inFlight < concurrency) {
        const id = firstId + started;
        clients.push(new WSClient(id, host, port, pathFor(transport, endpoint, id), handler,
          localAddress ? localAddress(id) : undefined, headers ? headers(id) : ''));
        started++;
        inFlight++;
      }
    }
    if (count === 0) finish(null);
    else launch();
  });
}

module.exports = { WSClient, adapter, maskedFrame, openMany, outgoingPayload, pathFor, OP_TEXT, OP_BINARY };
