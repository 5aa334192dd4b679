'use strict';
// The reconnect storm's clients (benchmarks/storms.py): N connections to a server that
// the runner restarts (SIGTERM, then the same command on the same port); every client
// comes back as soon as the new process accepts connections.
//
//   node reconnect.js '<JSON config>'
//
// mode "channels" (sockway): N subscribers of one channel on a channels endpoint (raw
// WebSocket), and a publisher on another gateway node (the same broker, another port)
// that publishes into the channel at `rate` per second the whole time, the restart
// included. On reconnecting, each subscriber subscribes again from the last offset it
// received ({"op":"subscribe","since":{"offset","epoch"}}): the reply must say
// recovered: true and carry the publications it missed; live ones follow. Every
// publication's data is "<seq> <t> xxx...": every subscriber must have every seq exactly
// once in the end (a bit per subscriber and seq), and the offsets it saw must follow each
// other without a gap. As the browser helper (sockway.js) does, a live publication whose
// offset is at or below the highest one already delivered is skipped: the gateway may
// send one that the recovery's history read already had (it arrived from the broker after
// the read); those are counted (`repeated_offsets`), not delivered twice.
// mode "plain" (Node ws): N raw WebSocket connections, back when open again.
//
// Reconnecting. A client whose connection closes waits until the runner says the new
// process was started ("spawned"); then one probe handshake every 20 ms finds when it
// accepts connections; then every waiting client reconnects, at most
// `connectConcurrency` handshakes in progress (as when they first connected). The
// clients do not back off or add jitter, as real ones would: what is measured is how
// fast the server takes them back, not a client's retry policy. A handshake refused or
// failed during the storm is retried after 100 ms (counted).
//
// Protocol with the runner (stdin lines in, JSON lines out; progress on stderr):
//   out {"ready": true}       connected (and subscribed); waiting for go
//   in  "go"                  the publisher starts (channels)
//   in  "term <us>"           the runner is about to send SIGTERM (CLOCK_MONOTONIC us)
//   in  "spawned <us>"        the new process was started: probing begins
//   out {"back": {...}}       every client is back (and recovered)
//   in  "stop"                publishing stops; once every subscriber has every
//                             publication (or `drainTimeout` passed), the result line

const { performance } = require('perf_hooks');
const { Histogram, genCpuSeconds, nowUs, procCpuSeconds, round } = require('./measure');
const { WSClient, adapter, maskedFrame, OP_TEXT } = require('./wsclient');

const cfg = JSON.parse(process.argv[2]);
const label = cfg.label || 'reconnect';
const channels = cfg.mode === 'channels';

function log(text) {
  process.stderr.write(`  [gen ${label}] ${text}\n`);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

const CH_SPACE = 0x20;

/** A FIFO of numbers or objects with O(1) take (Array.shift is linear on long arrays). */
class Queue {
  constructor() {
    this.items = [];
    this.head = 0;
  }

  push(x) {
    this.items.push(x);
  }

  take() {
    const x = this.items[this.head++];
    if (this.head > 4096 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return x;
  }

  get length() {
    return this.items.length - this.head;
  }
}

async function main() {
  const N = cfg.clients;
  const maxMessages = cfg.maxMessages || 100000;
  const channel = cfg.channel || 'storm';
  const path = `${cfg.endpoint}/websocket`;
  const sourceAddress = (id) => (cfg.sourcePrefix ? `${cfg.sourcePrefix}${(id % 250) + 1}` : undefined);
  const prefix = Buffer.from(`{"type":"message","channel":"${channel}","offset":`);

  // Per subscriber.
  const clients = new Array(N).fill(null);
  const seen = channels ? new Uint8Array(Math.ceil((N * maxMessages) / 8)) : null;
  const count = new Int32Array(N);
  const nextOffset = new Float64Array(N).fill(-1); // -1: not known yet
  const lastOffset = new Float64Array(N).fill(-1);
  const back = new Uint8Array(N); // 1: back (connected; channels: and recovered) since the restart
  let epoch = null;
  let duplicates = 0;
  let offsetGaps = 0;
  let offsetBacks = 0;
  let repeatedOffsets = 0;
  let badMessages = 0;
  let serverErrors = 0;
  let firstError = null;
  let unrecovered = 0;
  let recoveredPublications = 0;
  let subscribed = 0;
  let subInFlight = 0;
  const subQueue = new Queue();
  let now = 0;
  let delivered = 0;
  const latency = new Histogram(); // live deliveries, send -> receive
  const recoveryLag = new Histogram(); // recovered publications: send -> the reply's arrival

  // The restart.
  let restarting = false; // after "term": a close is the restart, not a failure
  let tTerm = 0;
  let tSpawn = 0;
  let tAccept = 0;
  let tConnected = 0;
  let tBack = 0;
  let waiting = []; // ids whose connection is gone, until the probe succeeds
  let released = false;
  let connectedAgain = 0;
  let backCount = 0;
  let inFlight = 0;
  let retries = 0;
  let closedBeforeRestart = 0;
  let closes = {};
  const handshake = new Histogram();
  let newPid = 0; // the restarted server's
  let serverCpuAccept = null; // its CPU seconds when it accepted the first connection
  let serverCpuBack = null; // and when every client was back
  let initialDone = null;
  const initial = new Promise((resolve) => (initialDone = resolve));
  let initialError = null;
  let phase = 'connect'; // connect | running | restart

  function bad(why) {
    badMessages++;
    if (firstError === null) firstError = why;
  }

  function markSeq(id, seq, t, recovered) {
    if (seq >= maxMessages) return bad(`seq ${seq} out of range`);
    const bit = id * maxMessages + seq;
    const mask = 1 << (bit & 7);
    if (seen[bit >>> 3] & mask) {
      duplicates++;
      return undefined;
    }
    seen[bit >>> 3] |= mask;
    count[id]++;
    delivered++;
    if (recovered) recoveryLag.add(now - t);
    else latency.add(now - t);
    return undefined;
  }

  function parseData(buf, p, end) {
    // "<seq> <t> " -> [seq, t] or null
    let seq = 0;
    let c = buf[p];
    const p0 = p;
    while (c >= 48 && c <= 57) {
      seq = seq * 10 + (c - 48);
      c = buf[++p];
    }
    if (c !== CH_SPACE || p === p0) return null;
    let t = 0;
    const t0 = ++p;
    c = buf[p];
    while (c >= 48 && c <= 57) {
      t = t * 10 + (c - 48);
      c = buf[++p];
    }
    if (c !== CH_SPACE || p === t0 || p > end) return null;
    return [seq, t];
  }

  function noteOffset(id, offset) {
    const expected = nextOffset[id];
    if (expected >= 0 && offset !== expected) {
      if (offset > expected) offsetGaps += offset - expected;
      else offsetBacks++;
    }
    nextOffset[id] = offset + 1;
    lastOffset[id] = offset;
  }

  function onReply(client, text) {
    let reply;
    try {
      reply = JSON.parse(text);
    } catch (err) {
      return bad(`bad reply ${text.slice(0, 80)}`);
    }
    if (reply.id !== 1) return undefined;
    subInFlight--;
    pumpSubscribes();
    const id = client.id;
    if (reply.error) {
      if (reply.error.code === 'unavailable') {
        retries++;
        setTimeout(() => {
          if (client.isOpen) {
            subQueue.push(client);
            pumpSubscribes();
          }
        }, 100);
        return undefined;
      }
      if (firstError === null) firstError = `subscribe refused: ${JSON.stringify(reply.error)}`;
      if (phase === 'connect') initialError = firstError;
      return undefined;
    }
    const result = reply.result;
    if (phase === 'connect') {
      epoch = epoch || result.epoch;
      nextOffset[id] = result.offset + 1;
      lastOffset[id] = result.offset;
      if (++subscribed === N) initialDone();
      return undefined;
    }
    // A resubscription after the restart, from the last offset received.
    if (!result.recovered) {
      unrecovered++;
      if (firstError === null) firstError = `not recovered: ${text.slice(0, 200)}`;
    }
    for (const pub of result.publications || []) {
      noteOffset(id, pub.offset);
      const data = Buffer.from(String(pub.data));
      const head = parseData(data, 0, data.length);
      if (head === null) bad(`unexpected recovered data ${String(pub.data).slice(0, 40)}`);
      else markSeq(id, head[0], head[1], true);
      recoveredPublications++;
    }
    if (result.offset + 1 > nextOffset[id]) nextOffset[id] = result.offset + 1;
    if (result.epoch !== epoch) {
      if (firstError === null) firstError = `epoch changed from ${epoch} to ${result.epoch}`;
    }
    markBack(id);
    return undefined;
  }

  function onEnvelope(client, buf, start, end) {
    const kind = buf[start + 9];
    if (kind === 0x6d) { // {"type":"message"
      if (buf.compare(prefix, 0, prefix.length, start, start + prefix.length) !== 0) {
        return bad(`unexpected message ${buf.toString('utf8', start, Math.min(end, start + 80))}`);
      }
      let i = start + prefix.length;
      let c = buf[i];
      let offset = 0;
      while (c >= 48 && c <= 57) {
        offset = offset * 10 + (c - 48);
        c = buf[++i];
      }
      if (nextOffset[client.id] >= 0 && offset < nextOffset[client.id]) {
        repeatedOffsets++; // already delivered (by the recovery): skipped, as sockway.js does
        return undefined;
      }
      noteOffset(client.id, offset);
      const q = buf.indexOf('"data":"', i);
      if (q < 0 || q >= end) return bad('no data in a publication');
      const head = parseData(buf, q + 8, end);
      if (head === null) return bad(`unexpected data ${buf.toString('utf8', q, Math.min(end, q + 40))}`);
      return markSeq(client.id, head[0], head[1], false);
    }
    if (kind === 0x72) return onReply(client, buf.toString('utf8', start, end)); // reply
    if (kind === 0x63) return undefined; // connected
    if (kind === 0x65) { // error
      serverErrors++;
      if (firstError === null) firstError = buf.toString('utf8', start, Math.min(end, start + 200));
      return undefined;
    }
    return bad(`unknown message ${buf.toString('utf8', start, Math.min(end, start + 60))}`);
  }

  function subscribeFrame(id) {
    const command = { op: 'subscribe', channel, id: 1 };
    if (phase !== 'connect') command.since = { offset: lastOffset[id], epoch };
    return maskedFrame(OP_TEXT, Buffer.from(JSON.stringify(command)));
  }

  function pumpSubscribes() {
    while (subInFlight < (cfg.subscribeConcurrency || 50) && subQueue.length > 0) {
      const client = subQueue.take();
      if (!client.isOpen) continue;
      subInFlight++;
      client.writeFrames(subscribeFrame(client.id));
    }
  }

  function markBack(id) {
    if (phase !== 'restart' || back[id]) return;
    back[id] = 1;
    if (++backCount === N) {
      tBack = nowUs();
      serverCpuBack = newPid ? procCpuSeconds(newPid, cfg.clkTck || 100) : null;
      const result = {
        accept_s: round((tAccept - tSpawn) / 1e6, 3),
        reconnect_s: round((tConnected - tAccept) / 1e6, 3),
        back_s: round((tBack - tAccept) / 1e6, 3),
        total_s: round((tBack - tTerm) / 1e6, 3),
      };
      log(`all ${N} back ${result.back_s}s after the new process accepted the first (${result.total_s}s after ` +
        'SIGTERM)');
      out({ back: result });
    }
  }

  const handler = adapter('raw', {
    onReady(client) {
      const id = client.id;
      inFlight--;
      if (phase === 'restart') {
        handshake.add((client.openedAt - client.startedAt) * 1000);
        if (++connectedAgain === N) tConnected = nowUs();
      }
      if (channels) {
        subQueue.push(client);
        pumpSubscribes();
      } else if (phase === 'connect') {
        if (++subscribed === N) initialDone();
      } else {
        markBack(id);
      }
      launch();
    },
    beforeData() {
      now = nowUs();
    },
    onItem: channels ? onEnvelope : () => {},
    onClose(client) {
      const id = client.id;
      if (clients[id] !== client) return;
      if (!client.isOpen && client.openedAt === 0) {
        // the handshake failed (refused, reset): again, after a pause
        inFlight--;
        if (phase === 'connect') {
          initialError = `connection ${id}: ${client.error || 'closed before it was open'}`;
          initialDone();
          return;
        }
        retries++;
        setTimeout(() => queue(id), 100);
        launch();
        return;
      }
      const why = client.closeCode ? `close ${client.closeCode}` : client.error || 'connection lost';
      closes[why] = (closes[why] || 0) + 1;
      if (!restarting) closedBeforeRestart++;
      if (phase === 'restart' && back[id]) {
        back[id] = 0;
        backCount--;
      }
      queue(id);
    },
    onError() {},
  });

  const pendingIds = new Queue();
  function queue(id) {
    if (released) {
      pendingIds.push(id);
      launch();
    } else {
      waiting.push(id);
    }
  }

  function launch() {
    while (inFlight < (cfg.connectConcurrency || 256) && pendingIds.length > 0) {
      const id = pendingIds.take();
      inFlight++;
      clients[id] = new WSClient(id, cfg.host, cfg.port, path, handler, sourceAddress(id));
    }
  }

  // -- connect ---------------------------------------------------------------------------
  const connectStart = performance.now();
  released = true;
  for (let id = 0; id < N; id++) pendingIds.push(id);
  launch();
  const progress = setInterval(() => log(`connected ${N - pendingIds.length - inFlight}/${N}` +
    (channels ? `, subscribed ${subscribed}` : '')), 1000);
  const timer = setTimeout(() => {
    initialError = initialError || `only ${subscribed} of ${N} ready within ${cfg.connectTimeout || 120}s`;
    initialDone();
  }, (cfg.connectTimeout || 120) * 1000);
  await initial;
  clearTimeout(timer);
  clearInterval(progress);
  if (initialError) throw new Error(initialError);
  const connectSeconds = (performance.now() - connectStart) / 1000;

  // -- the publisher (on another node) ---------------------------------------------------------
  let publisher = null;
  let sent = 0;
  let publishErrors = 0;
  if (channels) {
    publisher = await new Promise((resolve, reject) => {
      const c = new WSClient(N, cfg.host, cfg.publisherPort, path, adapter('raw', {
        onReady: (x) => resolve(x),
        onItem(x, buf, start, end) {
          if (buf[start + 9] === 0x65) { // {"type":"error"
            publishErrors++;
            if (firstError === null) firstError = `publish: ${buf.toString('utf8', start, Math.min(end, start + 200))}`;
          }
        },
        onClose: (x) => reject(new Error(`the publisher's connection closed (${x.error || x.closeCode})`)),
        onError() {},
      }), sourceAddress(N));
      setTimeout(() => reject(new Error('the publisher did not connect within 30 s')), 30000).unref();
      return c;
    });
  }
  log(`${N} ${channels ? 'subscribers' : 'connections'} ready in ${connectSeconds.toFixed(1)}s`);
  released = false;
  out({ ready: true, connect_s: round(connectSeconds, 2) });

  // -- runner's lines ------------------------------------------------------------------------
  const lines = [];
  let wake = null;
  let input = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (chunk) => {
    input += chunk;
    let nl;
    while ((nl = input.indexOf('\n')) >= 0) {
      lines.push(input.slice(0, nl).trim());
      input = input.slice(nl + 1);
    }
    if (wake) wake();
  });
  process.stdin.on('end', () => {
    lines.push('stop');
    if (wake) wake();
  });
  async function nextLine() {
    while (lines.length === 0) await new Promise((resolve) => (wake = resolve));
    wake = null;
    return lines.shift();
  }
  while ((await nextLine()) !== 'go');
  phase = 'running';

  let pacer = null;
  const rate = cfg.rate || 0;
  if (channels && rate > 0) {
    const t0 = performance.now();
    pacer = setInterval(() => {
      const due = Math.min(maxMessages, Math.floor(((performance.now() - t0) / 1000) * rate) + 1);
      while (sent < due) {
        const t = nowUs();
        const head = `${sent} ${Math.round(t)} `;
        const data = head + 'x'.repeat(Math.max(0, (cfg.size || 64) - head.length));
        publisher.writeFrames(maskedFrame(OP_TEXT,
          Buffer.from(`{"op":"publish","channel":"${channel}","data":"${data}"}`)));
        sent++;
      }
    }, 5);
  }
  const ticker = setInterval(() => {
    const missing = channels ? sent * N - delivered : 0;
    log(`${phase}: ${channels ? `published ${sent}, delivered ${delivered}, behind ${missing}, ` : ''}` +
      `waiting ${waiting.length}, reconnecting ${pendingIds.length + inFlight}, back ${backCount}/${N}`);
  }, 1000);

  const cpu0 = genCpuSeconds();
  let probeTimer = null;
  for (;;) {
    const line = await nextLine();
    if (line === 'stop') break;
    const [word, value] = line.split(' ');
    if (word === 'term') {
      tTerm = Number(value);
      restarting = true;
      phase = 'restart';
    } else if (word === 'spawned') {
      tSpawn = Number(value);
      newPid = Number(line.split(' ')[2]);
      const probe = () => {
        const c = new WSClient(-1, cfg.host, cfg.port, path, {
          onOpen(x) {
            if (tAccept !== 0) return;
            tAccept = nowUs();
            x.sock.destroy();
            serverCpuAccept = procCpuSeconds(newPid, cfg.clkTck || 100);
            log(`the new process accepted a connection ${((tAccept - tSpawn) / 1e6).toFixed(3)}s after it was ` +
              `started; ${waiting.length} clients reconnect`);
            released = true;
            for (const id of waiting) pendingIds.push(id);
            waiting = [];
            launch();
          },
          onMessage() {},
          onClose() {
            if (tAccept === 0) probeTimer = setTimeout(probe, 20);
          },
          onError() {},
        }, sourceAddress(0));
        return c;
      };
      probe();
    }
  }

  // -- drain and report ------------------------------------------------------------------------
  if (pacer) clearInterval(pacer);
  if (probeTimer) clearTimeout(probeTimer);
  const serverCpu = serverCpuAccept === null || serverCpuBack === null ? null : serverCpuBack - serverCpuAccept;
  const drainStart = performance.now();
  while (channels && performance.now() - drainStart < (cfg.drainTimeout || 10) * 1000) {
    let missing = false;
    for (let i = 0; i < N; i++) {
      if (count[i] < sent) {
        missing = true;
        break;
      }
    }
    if (!missing) break;
    await sleep(20);
  }
  clearInterval(ticker);
  let losses = 0;
  let behindClients = 0;
  if (channels) {
    for (let i = 0; i < N; i++) {
      if (count[i] < sent) {
        losses += sent - count[i];
        behindClients++;
      }
    }
  }
  const notBack = N - backCount;
  for (const c of clients) if (c) c.sock.destroy();
  if (publisher) publisher.sock.destroy();
  const problems = [];
  if (tAccept === 0) problems.push('the restarted server never accepted a connection');
  if (notBack) problems.push(`${notBack} clients not back`);
  if (losses) problems.push(`${losses} publications missing for ${behindClients} subscribers`);
  if (unrecovered) problems.push(`${unrecovered} resubscriptions not recovered`);
  if (duplicates) problems.push(`${duplicates} duplicates`);
  if (offsetGaps || offsetBacks) problems.push(`offsets: ${offsetGaps} skipped, ${offsetBacks} backwards`);
  if (badMessages) problems.push(`${badMessages} unexpected messages`);
  if (publishErrors) problems.push(`${publishErrors} publications refused`);
  if (firstError) problems.push(`first: ${firstError}`);
  return {
    ok: problems.length === 0,
    clients: N,
    connect_s: round(connectSeconds, 2),
    accept_s: tAccept ? round((tAccept - tSpawn) / 1e6, 3) : null,
    reconnect_s: tConnected ? round((tConnected - tAccept) / 1e6, 3) : null,
    back_s: tBack ? round((tBack - tAccept) / 1e6, 3) : null,
    total_s: tBack ? round((tBack - tTerm) / 1e6, 3) : null,
    t_term_us: tTerm,
    t_spawn_us: tSpawn,
    t_accept_us: tAccept,
    t_back_us: tBack,
    reconnects_per_s: tBack && tAccept ? Math.round(N / ((tBack - tAccept) / 1e6)) : null,
    server_cpu_s: serverCpu === null ? null : round(serverCpu, 3),
    server_us_per_reconnect: serverCpu === null ? null : round((serverCpu * 1e6) / N, 1),
    handshake_p50_ms: handshake.pct(50),
    handshake_p99_ms: handshake.pct(99),
    retries,
    closed_before_restart: closedBeforeRestart,
    closes,
    published: sent,
    delivered,
    losses,
    unrecovered,
    recovered_publications: recoveredPublications,
    duplicates,
    offset_gaps: offsetGaps,
    offset_backwards: offsetBacks,
    repeated_offsets: repeatedOffsets,
    bad_messages: badMessages,
    server_errors: serverErrors,
    publish_errors: publishErrors,
    ...latency.summary('live_'),
    ...recoveryLag.summary('recovery_'),
    gen_cpu_s: round(genCpuSeconds() - cpu0, 3),
    ...(problems.length ? { error: problems.join('; ') } : {}),
  };
}

main().then(
  (result) => {
    process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(0));
  },
  (err) => {
    process.stdout.write(JSON.stringify({ ok: false, error: err.message }) + '\n', () => process.exit(1));
  },
);
