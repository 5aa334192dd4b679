'use strict';
// Subscribers for the bridge and scale-out scenarios: N raw WebSocket clients of one
// channel, every publication checked by every client, end-to-end latency measured.
//
//   node subscribers.js '<JSON config>'
//
// Protocol with the runner (stdout, one JSON object per line; progress on stderr):
//   1. connect N clients; on a channels endpoint each sends {"op":"subscribe"} and is
//      ready at its reply; on a broadcast endpoint a client is subscribed once open;
//   2. print {"ready": true, ...} and wait for a line "go" on stdin;
//   3. take the CPU snapshot, then (publisher "client") client 0 publishes, or
//      (publisher "external") another process does;
//   4. when every client has every message (or nothing arrives for stallTimeout
//      seconds), print the result line and exit.
//
// Messages. Each publication's data is the text "<stream> <seq> <t> xxx..." padded to
// `size` bytes: `stream` is the publisher connection that sent it (several HTTP
// clients publish concurrently; the order is only defined within one), `seq` its number
// in 0..M+L-1 (unique across streams), `t` the microseconds of CLOCK_MONOTONIC when the
// publisher sent it. Node's performance.now() and Python's time.monotonic() read the same
// clock, so receive time - t is the end-to-end latency, whichever process published.
// On a channels endpoint the data arrives in the envelope
//   {"type":"message","channel":"bench","offset":17,"epoch":"...","data":"0 16 1234 xxx"}
// and the offsets must follow each other without a gap (the gateway's order).
//
// Checks per client: every seq exactly once (a bit per client and message), seqs
// increasing within each stream, offsets consecutive. Phases: seqs below `messages` are
// the throughput phase (published as fast as the path takes them, with at most `window`
// unseen by the publisher); the `pacedMessages` after them are published at `pacedRate`
// per second, the latency of a gateway that is not saturated.

const { performance } = require('perf_hooks');
const { Histogram, genCpuSeconds, machineBusySeconds: machineBusy, nowUs, procCpuSeconds: procCpu, round } =
  require('./measure');
const { maskedFrame, openMany, OP_TEXT } = require('./wsclient');

const cfg = JSON.parse(process.argv[2]);
const label = cfg.label || 'subscribers';

function log(text) {
  process.stderr.write(`  [gen ${label}] ${text}\n`);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// -- CPU of every process of the measurement, from /proc ----------------------------------

const TCK = cfg.clkTck || 100;
const procCpuSeconds = (pid) => procCpu(pid, TCK);
const machineBusySeconds = () => machineBusy(TCK);

const PIDS = cfg.pids || {}; // label -> pid (gateway nodes, broker, publisher)

function cpuSnapshot() {
  const procs = {};
  for (const [name, pid] of Object.entries(PIDS)) procs[name] = procCpuSeconds(pid);
  return { t: performance.now(), gen: genCpuSeconds(), machine: machineBusySeconds(), procs };
}

/** CPU used in the window, as a share of one core: per process, the generator, the
 * gateway's processes together (labels starting with "sockway"), and what the rest of
 * the machine used meanwhile. */
function cpuReport(a, b) {
  const wall = (b.t - a.t) / 1000;
  const gen = b.gen - a.gen;
  const cpu = { generator: round(gen / wall, 3) };
  let known = gen;
  let server = 0;
  let serverKnown = false;
  for (const name of Object.keys(PIDS)) {
    const x = a.procs[name];
    const y = b.procs[name];
    if (x === null || y === null || x === undefined || y === undefined) {
      cpu[name] = null;
      continue;
    }
    cpu[name] = round((y - x) / wall, 3);
    known += y - x;
    if (name.startsWith('sockway')) {
      server += y - x;
      serverKnown = true;
    }
  }
  const machine = a.machine === null || b.machine === null ? null : b.machine - a.machine;
  const other = machine === null ? null : Math.max(0, machine - known);
  return {
    window_s: round(wall, 3),
    cpu,
    gen_cpu_util: round(gen / wall, 3),
    server_cpu_s: serverKnown ? round(server, 3) : null,
    server_cpu_util: serverKnown ? round(server / wall, 3) : null,
    other_cpu_util: other === null ? null : round(other / wall, 3),
    machine_cpu_util: machine === null ? null : round(machine / wall, 3),
  };
}

// -- messages -----------------------------------------------------------------------------

function messageText(stream, seq, t, size) {
  const head = `${stream} ${seq} ${Math.round(t)} `;
  return head + 'x'.repeat(Math.max(0, size - head.length));
}

const CH_SPACE = 0x20;
const CH_QUOTE = 0x22;
const CH_COLON = 0x3a;

// -- the scenario ----------------------------------------------------------------------------

async function main() {
  const N = cfg.clients;
  const M = cfg.messages;
  const L = cfg.pacedMessages || 0;
  const T = M + L;
  const K = Math.max(1, cfg.streams || 1);
  const W = cfg.window > 0 ? cfg.window : Infinity;
  const channelMode = cfg.mode === 'channel';
  const clientPublisher = cfg.publisher === 'client';
  const channel = cfg.channel || 'bench';
  const P = Buffer.byteLength(`{"type":"message","channel":"${channel}","offset":`);
  let dataSkip = 0;

  // Per client: messages received (bit per seq), next offset, last seq per stream.
  const seen = new Uint8Array(Math.ceil((N * T) / 8));
  const received = new Int32Array(N);
  const received1 = new Int32Array(N); // of the full-speed phase
  let complete1 = 0;
  let mid = null; // the CPU snapshot when every client had every full-speed message
  const nextOffset = new Float64Array(N); // 0: not known yet
  const lastSeq = new Int32Array(N * K).fill(-1);
  // Per publication: when it was sent and when the first client had it.
  const sentAt = new Float64Array(T);
  const firstAt = new Float64Array(T);
  const lastAt = [0, 0]; // per phase: the last delivery
  const latency = [new Histogram(), new Histogram()];
  const ingest = [new Histogram(), new Histogram()]; // publish -> first client

  let now = 0;
  let delivered = 0;
  let duplicates = 0;
  let orderErrors = 0;
  let offsetGaps = 0;
  let offsetBacks = 0;
  let badItems = 0;
  let serverErrors = 0;
  let firstError = null;
  let complete = 0;
  let closedEarly = 0;
  let subscribed = 0;
  let subscribeErrors = 0;
  let subscribeRetries = 0;
  // Subscribes in flight at once. A browser population subscribes whenever it connects,
  // but a Redis-backed node refuses a burst of more than ~100 concurrent subscribes with
  // "unavailable: Too many connections" (redis-py's asyncio pool; see the README), so
  // they are bounded here, and one refused as unavailable is retried (and counted).
  const subLimit = cfg.subscribeConcurrency || 50;
  const subQueue = [];
  let subHead = 0;
  let subInFlight = 0;
  let running = false;
  let finish = null;
  const done = new Promise((resolve) => (finish = resolve));
  let allSubscribed = null;
  const subscribedAll = new Promise((resolve) => (allSubscribed = resolve));

  // The in-band publisher (client 0).
  let publisher = null;
  let sent = 0;
  let publisherSeen = 0;
  let writeBlocked = false;
  let firstSendUs = 0;
  let lastSendUs = 0;
  let pacedStarted = false;
  let phaseOneSentAt = 0;

  function phaseOneDone() {
    // The full-speed phase ends here: CPU and the gateway's counters (read by the runner
    // when it sees this line) cover it alone, not the paced phase.
    mid = cpuSnapshot();
    process.stdout.write(JSON.stringify({ phase1: true }) + '\n');
  }

  function bad(client, why) {
    badItems++;
    if (firstError === null) firstError = `client ${client.id}: ${why}`;
  }

  function onPublication(client, buf, q, end) {
    // q: the start of the data text "<stream> <seq> <t> ..."
    let i = q;
    let c = buf[i];
    let stream = 0;
    while (c >= 48 && c <= 57) {
      stream = stream * 10 + (c - 48);
      c = buf[++i];
    }
    if (c !== CH_SPACE || i === q) return bad(client, 'no stream number');
    let seq = 0;
    const s0 = ++i;
    c = buf[i];
    while (c >= 48 && c <= 57) {
      seq = seq * 10 + (c - 48);
      c = buf[++i];
    }
    if (c !== CH_SPACE || i === s0) return bad(client, 'no sequence number');
    let t = 0;
    const t0 = ++i;
    c = buf[i];
    while (c >= 48 && c <= 57) {
      t = t * 10 + (c - 48);
      c = buf[++i];
    }
    if (c !== CH_SPACE || i === t0 || i > end) return bad(client, 'no timestamp');
    if (seq >= T || stream >= K) return bad(client, `seq ${seq} / stream ${stream} out of range`);
    const id = client.id;
    const bit = id * T + seq;
    const mask = 1 << (bit & 7);
    if (seen[bit >>> 3] & mask) {
      duplicates++;
      return;
    }
    seen[bit >>> 3] |= mask;
    const slot = id * K + stream;
    if (seq <= lastSeq[slot]) orderErrors++;
    else lastSeq[slot] = seq;
    delivered++;
    const phase = seq < M ? 0 : 1;
    if (phase === 0 && ++received1[id] === M && ++complete1 === N) phaseOneDone();
    latency[phase].add(now - t);
    if (now > lastAt[phase]) lastAt[phase] = now;
    if (firstAt[seq] === 0) {
      firstAt[seq] = now;
      sentAt[seq] = t;
      ingest[phase].add(now - t);
    }
    if (id === 0) publisherSeen++;
    if (++received[id] === T) {
      complete++;
      if (complete === N) finish('complete');
    }
  }

  function onChannelItem(client, buf, start, end) {
    // {"type":"message"|"reply"|"connected"|"error" ...
    const kind = buf[start + 9];
    if (kind === 0x6d) { // m: a publication
      // The channel is known, so the prefix's length is: a few bytes confirm it (a full
      // comparison per delivery would cost the generator more than the rest).
      if (buf[start + P - 1] !== CH_COLON || buf[start + P - 2] !== CH_QUOTE || buf[start + P - 8] !== 0x6f) {
        return bad(client, `unexpected message ${buf.toString('utf8', start, Math.min(end, start + 60))}`);
      }
      let i = start + P;
      let c = buf[i];
      let offset = 0;
      while (c >= 48 && c <= 57) {
        offset = offset * 10 + (c - 48);
        c = buf[++i];
      }
      const id = client.id;
      const expected = nextOffset[id];
      if (expected !== 0 && offset !== expected) {
        if (offset > expected) offsetGaps += offset - expected;
        else offsetBacks++;
      }
      nextOffset[id] = offset + 1;
      // The data string starts after "epoch":"...","data":" (the epoch's length is the
      // channel's, so the distance is remembered; checked each time by its last bytes).
      const q = i + dataSkip;
      if (buf[q - 4] === 0x61 && buf[q - 3] === CH_QUOTE && buf[q - 2] === CH_COLON && buf[q - 1] === CH_QUOTE) {
        return onPublication(client, buf, q, end);
      }
      // Find "data":" (the first a":" after the offset: the epoch's quote is h":").
      for (let j = i; j + 3 < end; j++) {
        if (buf[j] === 0x61 && buf[j + 1] === CH_QUOTE && buf[j + 2] === CH_COLON && buf[j + 3] === CH_QUOTE) {
          dataSkip = j + 4 - i;
          return onPublication(client, buf, j + 4, end);
        }
      }
      return bad(client, 'no "data" string in a publication');
    }
    if (kind === 0x72) { // r: the reply to our subscribe (id 1) or publish
      const text = buf.toString('utf8', start, end);
      let reply;
      try {
        reply = JSON.parse(text);
      } catch (err) {
        return bad(client, `bad reply ${text.slice(0, 80)}`);
      }
      if (reply.id !== 1) return undefined;
      subInFlight--;
      if (reply.error && reply.error.code === 'unavailable' && subscribeRetries < 100 * N) {
        subscribeRetries++;
        if (subscribeRetries === 1) log(`a subscribe was refused (${reply.error.message}); retrying`);
        setTimeout(() => {
          subQueue.push(client);
          pumpSubscribes();
        }, 100);
        return undefined;
      }
      pumpSubscribes();
      if (reply.error) {
        subscribeErrors++;
        if (firstError === null) firstError = `subscribe refused: ${JSON.stringify(reply.error)}`;
        client.fail('subscribe refused');
        return undefined;
      }
      nextOffset[client.id] = reply.result.offset + 1;
      subscribed++;
      if (subscribed === N) allSubscribed();
      return undefined;
    }
    if (kind === 0x63) return undefined; // connected
    if (kind === 0x65) { // error (a command without id failed: a publish of client 0)
      serverErrors++;
      if (firstError === null) firstError = buf.toString('utf8', start, Math.min(end, start + 200));
      return undefined;
    }
    return bad(client, `unknown message ${buf.toString('utf8', start, Math.min(end, start + 60))}`);
  }

  const subscribeFrame = maskedFrame(OP_TEXT, Buffer.from(JSON.stringify({ op: 'subscribe', channel, id: 1 })));

  function pumpSubscribes() {
    while (subInFlight < subLimit && subHead < subQueue.length) {
      const client = subQueue[subHead++];
      if (!client.isOpen) continue;
      subInFlight++;
      client.writeFrames(subscribeFrame);
    }
  }

  // -- the in-band publisher -------------------------------------------------------------

  function publishFrame(seq) {
    const t = nowUs();
    const text = messageText(0, seq, t, cfg.size);
    const payload = channelMode ? `{"op":"publish","channel":"${channel}","data":"${text}"}` : text;
    if (firstSendUs === 0) firstSendUs = t;
    lastSendUs = t;
    return maskedFrame(OP_TEXT, Buffer.from(payload));
  }

  function pump() {
    if (!running || !clientPublisher || writeBlocked || sent >= M) return;
    const room = Math.min(W - (sent - publisherSeen), M - sent);
    if (room <= 0) return;
    const frames = [];
    for (let k = 0; k < room; k++) frames.push(publishFrame(sent + k));
    sent += room;
    if (!publisher.writeFrames(frames.length === 1 ? frames[0] : Buffer.concat(frames))) {
      writeBlocked = true;
      publisher.sock.once('drain', () => {
        writeBlocked = false;
        pump();
      });
    }
    if (sent >= M) phaseOneSentAt = nowUs();
  }

  async function paced() {
    // Phase 2: after every phase-1 message came back to the publisher, and a pause.
    // However long that takes: a stall (nothing delivered for stallTimeout) ends the
    // whole measurement, and `running` with it.
    while (publisherSeen < M && running) await sleep(5);
    if (!running) return;
    await sleep((cfg.gap || 0.3) * 1000);
    const interval = 1000 / cfg.pacedRate;
    const t0 = performance.now();
    for (let k = 0; k < L && running; k++) {
      const due = t0 + k * interval;
      const wait = due - performance.now();
      if (wait > 0) await sleep(wait);
      publisher.writeFrames(publishFrame(M + k));
      sent++;
    }
  }

  const scenario = {
    onReady(client) {
      if (channelMode) {
        subQueue.push(client);
        pumpSubscribes();
      }
    },
    beforeData() {
      now = nowUs();
    },
    onItem(client, buf, start, end) {
      if (channelMode) onChannelItem(client, buf, start, end);
      else onPublication(client, buf, start, end);
    },
    afterData(client) {
      if (client.id === 0 && clientPublisher) {
        pump();
        if (running && !pacedStarted && sent >= M && L > 0) {
          pacedStarted = true;
          paced();
        }
      }
    },
    onClose(client) {
      if (running && received[client.id] < T) {
        closedEarly++;
        if (closedEarly === 1) {
          log(`connection ${client.id} closed after ${received[client.id]} messages` +
            (client.closeCode ? ` (close code ${client.closeCode})` : '') +
            (client.error ? ` (${client.error})` : ''));
        }
        if (closedEarly + complete === N) finish('closed');
      }
    },
  };

  // -- connect and subscribe ------------------------------------------------------------------

  const connectStart = performance.now();
  let clients;
  clients = await openMany({
    count: N,
    host: cfg.host,
    port: cfg.port,
    // from `sourcePrefix` 1..250, a few connections per address, as from the internet (a
    // gateway limits the connections of one client address)
    localAddress: cfg.sourcePrefix ? (id) => `${cfg.sourcePrefix}${(id % 250) + 1}` : undefined,
    endpoint: cfg.endpoint,
    transport: 'raw',
    scenario,
    concurrency: cfg.connectConcurrency || 256,
    timeoutMs: (cfg.connectTimeout || 60) * 1000,
    onProgress: (ready, total) =>
      log(`connected ${ready}/${total}, subscribed ${subscribed}, ` +
        `${((performance.now() - connectStart) / 1000).toFixed(1)}s`),
  });
  const connectSeconds = (performance.now() - connectStart) / 1000;
  if (channelMode && subscribed < N) {
    const limit = (cfg.subscribeTimeout || 30) * 1000;
    const timer = setTimeout(() => allSubscribed('timeout'), limit);
    const outcome = await subscribedAll;
    clearTimeout(timer);
    if (outcome === 'timeout' || subscribed < N) {
      throw new Error(`only ${subscribed} of ${N} subscriptions confirmed within ${limit / 1000}s` +
        (firstError ? ` (${firstError})` : ''));
    }
  }
  const subscribeSeconds = (performance.now() - connectStart) / 1000;
  publisher = clients[0];
  await sleep(cfg.settleMs ?? 300);
  log(`${N} clients ${channelMode ? 'subscribed' : 'connected'} in ${subscribeSeconds.toFixed(1)}s; ` +
    `waiting for go`);
  process.stdout.write(JSON.stringify({ ready: true, connect_s: round(connectSeconds, 2),
    subscribe_s: round(subscribeSeconds, 2) }) + '\n');

  await new Promise((resolve, reject) => {
    let text = '';
    process.stdin.setEncoding('utf8');
    process.stdin.on('data', (chunk) => {
      text += chunk;
      if (text.includes('go\n')) resolve();
    });
    process.stdin.on('end', () => reject(new Error('stdin closed before "go"')));
  });
  const before = cpuSnapshot();
  const goUs = nowUs();
  process.stdout.write(JSON.stringify({ started: true }) + '\n');
  running = true;
  if (clientPublisher) pump();
  let lastDelivered = -1;
  let lastChange = performance.now();
  const stallMs = (cfg.stallTimeout || 20) * 1000;
  const hardMs = (cfg.timeout || 600) * 1000;
  const expectedTotal = N * T;
  const ticker = setInterval(() => {
    const t = performance.now();
    if (delivered !== lastDelivered) {
      lastDelivered = delivered;
      lastChange = t;
    }
    log(`delivered ${delivered}/${expectedTotal} (${((100 * delivered) / expectedTotal).toFixed(1)}%), ` +
      `${((t - before.t) / 1000).toFixed(1)}s`);
    if (t - lastChange > stallMs) finish('stalled');
    else if (t - before.t > hardMs) finish('timeout');
  }, 1000);
  const outcome = await done;
  running = false;
  clearInterval(ticker);
  const after = cpuSnapshot();

  // -- the result ------------------------------------------------------------------------

  let firstSend1 = Infinity;
  let lastFirst1 = 0;
  let lastSent1 = 0;
  let missing1 = 0;
  for (let s = 0; s < M; s++) {
    if (firstAt[s] === 0) {
      missing1++;
      continue;
    }
    if (sentAt[s] < firstSend1) firstSend1 = sentAt[s];
    if (sentAt[s] > lastSent1) lastSent1 = sentAt[s];
    if (firstAt[s] > lastFirst1) lastFirst1 = firstAt[s];
  }
  let firstSend2 = Infinity;
  for (let s = M; s < T; s++) if (firstAt[s] !== 0 && sentAt[s] < firstSend2) firstSend2 = sentAt[s];
  const seconds = (lastAt[0] - firstSend1) / 1e6;
  const delivered1 = latency[0].n;
  const losses = expectedTotal - delivered;
  const result = {
    ok: outcome === 'complete' && losses === 0 && orderErrors === 0 && badItems === 0 && offsetGaps === 0 &&
      offsetBacks === 0 && duplicates === 0 && serverErrors === 0,
    outcome,
    deliveries_per_s: seconds > 0 ? Math.round(delivered1 / seconds) : null,
    seconds: round(seconds, 3),
    // Publications per second as the gateway handled them: from the first send to the
    // moment the first client had the last one.
    gateway_published_per_s: lastFirst1 > firstSend1 ? Math.round((M - missing1) / ((lastFirst1 - firstSend1) / 1e6)) : null,
    // The publisher's own sending rate, as the timestamps in the messages say.
    sent_per_s: lastSent1 > firstSend1 ? Math.round((M - missing1) / ((lastSent1 - firstSend1) / 1e6)) : null,
    start_delay_ms: Number.isFinite(firstSend1) ? round((firstSend1 - goUs) / 1000, 1) : null,
    connect_s: round(connectSeconds, 2),
    subscribe_s: round(subscribeSeconds, 2),
    subscribe_retries: subscribeRetries,
    delivered,
    expected: expectedTotal,
    losses,
    order_ok: orderErrors === 0 && offsetBacks === 0,
    order_errors: orderErrors,
    offset_gaps: offsetGaps,
    offset_backwards: offsetBacks,
    duplicates,
    bad_messages: badItems,
    server_errors: serverErrors,
    closed_early: closedEarly,
    ...latency[0].summary(''),
    ingest_p50_ms: ingest[0].pct(50),
    ingest_p99_ms: ingest[0].pct(99),
    paced_messages: L,
    paced_deliveries: latency[1].n,
    ...(L > 0 ? latency[1].summary('paced_') : {}),
    ...(L > 0 ? { paced_ingest_p50_ms: ingest[1].pct(50), paced_ingest_p99_ms: ingest[1].pct(99) } : {}),
    paced_seconds: L > 0 && Number.isFinite(firstSend2) ? round((lastAt[1] - firstSend2) / 1e6, 3) : null,
    ...cpuReport(before, mid || after),
  };
  if (mid !== null && L > 0) {
    const paced = cpuReport(mid, after);
    result.paced_cpu = paced.cpu;
    result.paced_server_cpu_util = paced.server_cpu_util;
    result.paced_other_cpu_util = paced.other_cpu_util;
  }
  if (clientPublisher) {
    result.publisher_sent = sent;
    result.publisher_send_s = phaseOneSentAt ? round((phaseOneSentAt - firstSendUs) / 1e6, 3) : null;
  }
  result.deliveries_per_server_cpu_s = result.server_cpu_s ? Math.round(delivered1 / result.server_cpu_s) : null;
  if (firstError) result.first_error = firstError;
  if (outcome === 'stalled') {
    result.error = `no delivery for ${cfg.stallTimeout || 20}s: ${delivered} of ${expectedTotal} delivered, ` +
      `${complete} clients complete`;
  } else if (outcome === 'timeout') {
    result.error = `not finished within ${cfg.timeout || 600}s`;
  } else if (outcome === 'closed') {
    result.error = `${closedEarly} connections closed before receiving every message`;
  } else if (!result.ok) {
    result.error = `checks failed: losses ${losses}, order errors ${orderErrors}, offset gaps ${offsetGaps}, ` +
      `duplicates ${duplicates}, bad messages ${badItems}, server errors ${serverErrors}` +
      (firstError ? ` (${firstError})` : '');
  }
  return result;
}

main().then(
  (result) => {
    process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(0));
  },
  (err) => {
    process.stdout.write(JSON.stringify({ ok: false, error: err.message }) + '\n', () => process.exit(1));
  },
);
