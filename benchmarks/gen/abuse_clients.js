'use strict';
// The normal clients of the abuse scenario (benchmarks/abuse.py): what must keep working
// while abusers attack the gateway.
//
//   node abuse_clients.js '<JSON config>'
//
// - N subscribers of one channel on a channels endpoint (raw WebSocket), and one more
//   connection that publishes into it, paced: `publishRate` publications per second;
// - E echo clients on an echo endpoint, each sending `echoRate` messages per second
//   (paced too: a message does not wait for the previous echo);
// - a newcomer every `probeInterval` seconds: a new connection that opens a WebSocket on
//   the echo endpoint, sends one message and waits for its echo (what a user arriving
//   during an attack sees), closed after it, failed after `probeTimeout` seconds.
// Each client connects from a source address of its own range (`sourcePrefix` + 1..250
// for the subscribers and echo clients, `probePrefix` + 1..250 for the newcomers), as
// users do, so that a limit per client address does not see them as one.
//
// Messages carry "<phase> <seq> <t> xxx..." padded to `size` bytes: the phase (0 before,
// 1 during, 2 after the abuse) in which it was sent, its number, and CLOCK_MONOTONIC in
// microseconds when it was sent. Latency = receive time - t; each phase's figures are those
// of the messages sent in it. Every subscriber checks every publication (a bit per
// subscriber and publication: losses, duplicates, order); every echo client its echoes.
//
// Protocol with the runner (stdin lines in, JSON lines out on stdout; progress on stderr):
//   out {"ready": true, ...}        every client connected, every subscription confirmed
//   in  "go"                        publishing, echoing and newcomers start (phase 0)
//   in  "phase 1" / "phase 2"       the runner started / stopped the abusers
//   out {"tick": {...}}             every second: the last second's latency, deliveries,
//                                   what is still missing, newcomers, own CPU
//   in  "stop"                      sending stops; once every message arrived (or
//                                   `drainTimeout` passed) the result line is printed

const { performance, monitorEventLoopDelay } = require('perf_hooks');
const { Histogram, genCpuSeconds, nowUs, round } = require('./measure');
const { WSClient, maskedFrame, openMany, OP_TEXT } = require('./wsclient');

const cfg = JSON.parse(process.argv[2]);
const label = cfg.label || 'abuse';
const PHASES = ['before', 'during', 'after'];

function log(text) {
  process.stderr.write(`  [gen ${label}] ${text}\n`);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function messageText(phase, seq, t, size) {
  const head = `${phase} ${seq} ${Math.round(t)} `;
  return head + 'x'.repeat(Math.max(0, size - head.length));
}

const CH_SPACE = 0x20;
const DATA_KEY = Buffer.from('"data":"');

/** Parses "<phase> <seq> <t> " at buf[p..end): [phase, seq, t], or null. */
function parseHead(buf, p, end) {
  const out = [0, 0, 0];
  for (let k = 0; k < 3; k++) {
    let c = buf[p];
    const p0 = p;
    let v = 0;
    while (c >= 48 && c <= 57) {
      v = v * 10 + (c - 48);
      c = buf[++p];
    }
    if (c !== CH_SPACE || p === p0 || p >= end) return null;
    out[k] = v;
    p++;
  }
  return out[0] < PHASES.length ? out : null;
}

function phaseStats() {
  return {
    published: 0,
    delivered: 0,
    latency: new Histogram(),
    echoSent: 0,
    echoReceived: 0,
    echo: new Histogram(),
    newcomers: 0,
    newcomersOk: 0,
    newcomersFailed: 0,
    newcomer: new Histogram(),
    newcomerFailure: null,
    closed: 0,
    startT: 0,
    endT: 0,
    cpu0: 0,
    cpu1: 0,
    loopDelayP99: null,
  };
}

async function main() {
  const N = cfg.subscribers;
  const E = cfg.echoClients;
  const R = cfg.publishRate;
  const ER = cfg.echoRate;
  const maxMessages = cfg.maxMessages;
  const channel = cfg.channel || 'bench';
  const sourceAddress = (id) => `${cfg.sourcePrefix}${(id % 250) + 1}`;

  const phases = PHASES.map(phaseStats);
  let phase = 0;
  let running = false;
  let sending = false;

  // -- subscribers -----------------------------------------------------------------------
  const seen = new Uint8Array(Math.ceil((N * maxMessages) / 8));
  const receivedBy = new Int32Array(N);
  const highest = new Int32Array(N).fill(-1);
  let duplicates = 0;
  let orderErrors = 0;
  let badMessages = 0;
  let serverErrors = 0;
  let firstError = null;
  let subscribed = 0;
  let subInFlight = 0;
  const subQueue = [];
  let subHead = 0;
  let allSubscribed = null;
  const subscribedAll = new Promise((resolve) => (allSubscribed = resolve));
  const closes = {}; // close code or error -> count, for connections closed while running
  let now = 0;
  let tickDelivered = 0;
  let tickHist = new Histogram();
  let tickEcho = new Histogram();
  let totalDelivered = 0;

  function bad(why) {
    badMessages++;
    if (firstError === null) firstError = why;
  }

  function noteClose(client) {
    if (!running) return;
    phases[phase].closed++;
    const why = client.closeCode ? `close ${client.closeCode}` : client.error || 'connection lost';
    closes[why] = (closes[why] || 0) + 1;
  }

  const subscribeFrame = maskedFrame(OP_TEXT, Buffer.from(JSON.stringify({ op: 'subscribe', channel, id: 1 })));

  function pumpSubscribes() {
    while (subInFlight < (cfg.subscribeConcurrency || 50) && subHead < subQueue.length) {
      const client = subQueue[subHead++];
      if (!client.isOpen) continue;
      subInFlight++;
      client.writeFrames(subscribeFrame);
    }
  }

  function onEnvelope(client, buf, start, end) {
    const kind = buf[start + 9];
    if (kind === 0x6d) { // {"type":"message"
      const q = buf.indexOf(DATA_KEY, start);
      if (q < 0 || q >= end) return bad(`no data in ${buf.toString('utf8', start, Math.min(end, start + 80))}`);
      const head = parseHead(buf, q + DATA_KEY.length, end);
      if (head === null) return bad(`unexpected data in ${buf.toString('utf8', start, Math.min(end, start + 80))}`);
      const [p, seq, t] = head;
      if (seq >= maxMessages) return bad(`seq ${seq} out of range`);
      const id = client.id;
      const bit = id * maxMessages + seq;
      const mask = 1 << (bit & 7);
      if (seen[bit >>> 3] & mask) {
        duplicates++;
        return undefined;
      }
      seen[bit >>> 3] |= mask;
      if (seq < highest[id]) orderErrors++;
      else highest[id] = seq;
      receivedBy[id]++;
      const stats = phases[p];
      stats.delivered++;
      totalDelivered++;
      stats.latency.add(now - t);
      tickHist.add(now - t);
      tickDelivered++;
      return undefined;
    }
    if (kind === 0x72) { // {"type":"reply": our subscribe
      const text = buf.toString('utf8', start, end);
      subInFlight--;
      pumpSubscribes();
      if (text.includes('"error"')) {
        if (firstError === null) firstError = `subscribe refused: ${text.slice(0, 200)}`;
        allSubscribed('refused');
        return undefined;
      }
      if (++subscribed === N) allSubscribed('ok');
      return undefined;
    }
    if (kind === 0x63) return undefined; // {"type":"connected"
    if (kind === 0x65) { // {"type":"error"
      serverErrors++;
      if (firstError === null) firstError = buf.toString('utf8', start, Math.min(end, start + 200));
      return undefined;
    }
    return bad(`unknown message ${buf.toString('utf8', start, Math.min(end, start + 60))}`);
  }

  const subscriberScenario = {
    onReady(client) {
      subQueue.push(client);
      pumpSubscribes();
    },
    beforeData() {
      now = nowUs();
    },
    onItem: onEnvelope,
    onClose: noteClose,
  };

  // -- echo clients ------------------------------------------------------------------------
  const echoNext = new Int32Array(E); // per echo client: the next seq it sends
  const echoExpected = new Int32Array(E); // and the next it expects back
  let echoOrderErrors = 0;
  let echoSentTotal = 0;
  let echoBackTotal = 0;

  const echoScenario = {
    onReady() {},
    beforeData() {
      now = nowUs();
    },
    onItem(client, buf, start, end) {
      const head = parseHead(buf, start, end);
      if (head === null) return bad(`unexpected echo ${buf.toString('utf8', start, Math.min(end, start + 60))}`);
      const [p, seq, t] = head;
      const i = client.id - N;
      if (seq < echoExpected[i]) {
        echoOrderErrors++;
        return undefined;
      }
      echoExpected[i] = seq + 1;
      echoBackTotal++;
      const stats = phases[p];
      stats.echoReceived++;
      stats.echo.add(now - t);
      tickEcho.add(now - t);
      return undefined;
    },
    onClose: noteClose,
  };

  // -- connect -----------------------------------------------------------------------------
  const connectStart = performance.now();
  const common = { host: cfg.host, port: cfg.port, transport: 'raw', concurrency: cfg.connectConcurrency || 256,
    timeoutMs: (cfg.connectTimeout || 60) * 1000, localAddress: sourceAddress };
  const subscribers = await openMany({ ...common, count: N, endpoint: cfg.channelEndpoint,
    scenario: subscriberScenario,
    onProgress: (ready, total) => log(`subscribers connected ${ready}/${total}, subscribed ${subscribed}`) });
  if (subscribed < N) {
    const limit = (cfg.subscribeTimeout || 60) * 1000;
    const timer = setTimeout(() => allSubscribed('timeout'), limit);
    const outcome = await subscribedAll;
    clearTimeout(timer);
    if (outcome !== 'ok' || subscribed < N) {
      throw new Error(`only ${subscribed} of ${N} subscriptions confirmed` + (firstError ? ` (${firstError})` : ''));
    }
  }
  const echoClients = await openMany({ ...common, count: E, endpoint: cfg.echoEndpoint, scenario: echoScenario,
    firstId: N });
  const [publisher] = await openMany({ ...common, count: 1, endpoint: cfg.channelEndpoint, firstId: N + E,
    scenario: { onReady() {}, onItem: onEnvelope, onClose: noteClose } });
  const connectSeconds = (performance.now() - connectStart) / 1000;
  log(`${N} subscribers, ${E} echo clients and the publisher ready in ${connectSeconds.toFixed(1)}s; waiting for go`);
  process.stdout.write(JSON.stringify({ ready: true, connect_s: round(connectSeconds, 2) }) + '\n');

  // -- newcomers ---------------------------------------------------------------------------
  let probeCount = 0;
  let probesOpen = 0;
  let lastProbeMs = null;
  let tickProbeFailed = 0;

  function startProbe() {
    const k = probeCount++;
    const stats = phases[phase];
    stats.newcomers++;
    probesOpen++;
    const started = performance.now();
    let finished = false;
    let timer = null;
    function finish(ok, why, client) {
      if (finished) return;
      finished = true;
      probesOpen--;
      clearTimeout(timer);
      if (ok) {
        const ms = performance.now() - started;
        stats.newcomersOk++;
        stats.newcomer.add(ms * 1000);
        lastProbeMs = ms;
        client.close();
      } else {
        stats.newcomersFailed++;
        tickProbeFailed++;
        lastProbeMs = null;
        if (stats.newcomerFailure === null) stats.newcomerFailure = why;
        client.sock.destroy();
      }
    }
    const client = new WSClient(-1, cfg.host, cfg.port, `${cfg.echoEndpoint}/websocket`, {
      onOpen(c) {
        c.sendText(Buffer.from(`9 ${k} 0 newcomer`));
      },
      onMessage(c) {
        finish(true, null, c);
      },
      onClose(c) {
        finish(false, c.error || (c.closeCode ? `closed ${c.closeCode} before the echo` : 'closed before the echo'), c);
      },
      onError(c, message) {
        finish(false, message, c);
      },
    }, `${cfg.probePrefix}${(k % 250) + 1}`);
    timer = setTimeout(() => finish(false, `no echo within ${cfg.probeTimeout}s`, client), cfg.probeTimeout * 1000);
  }

  // -- go ----------------------------------------------------------------------------------
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

  const loopDelay = monitorEventLoopDelay({ resolution: 10 });
  loopDelay.enable();
  function endPhase() {
    const s = phases[phase];
    s.endT = performance.now();
    s.cpu1 = genCpuSeconds();
    s.loopDelayP99 = round(loopDelay.percentile(99) / 1e6, 3);
    loopDelay.reset();
  }
  function enterPhase(p) {
    endPhase();
    phase = p;
    phases[p].startT = performance.now();
    phases[p].cpu0 = genCpuSeconds();
  }
  running = true;
  sending = true;
  phases[0].startT = performance.now();
  phases[0].cpu0 = genCpuSeconds();
  process.stdout.write(JSON.stringify({ started: true }) + '\n');

  let sent = 0;
  const t0 = performance.now();
  function publishOne() {
    const t = nowUs();
    const text = messageText(phase, sent, t, cfg.size);
    publisher.writeFrames(maskedFrame(OP_TEXT, Buffer.from(`{"op":"publish","channel":"${channel}","data":"${text}"}`)));
    phases[phase].published++;
    sent++;
  }
  function echoOne() {
    const i = echoSentTotal % E;
    echoSentTotal++;
    const client = echoClients[i];
    if (!client.isOpen) return;
    client.writeFrames(maskedFrame(OP_TEXT, Buffer.from(messageText(phase, echoNext[i]++, nowUs(), cfg.size))));
    phases[phase].echoSent++;
  }
  const pacer = setInterval(() => {
    if (!sending) return;
    const elapsed = (performance.now() - t0) / 1000;
    const due = Math.min(maxMessages, Math.floor(elapsed * R) + 1);
    while (sent < due) publishOne();
    if (E > 0) {
      const echoDue = Math.floor(elapsed * E * ER) + 1;
      while (echoSentTotal < echoDue) echoOne();
    }
  }, 5);
  const prober = setInterval(() => {
    if (sending && probesOpen < 20) startProbe();
  }, cfg.probeInterval * 1000);

  let lastTick = performance.now();
  let lastCpu = genCpuSeconds();
  const ticker = setInterval(() => {
    const t = performance.now();
    const cpu = genCpuSeconds();
    const openSubscribers = subscribers.reduce((n, c) => n + (c.isOpen ? 1 : 0), 0);
    process.stdout.write(JSON.stringify({ tick: {
      phase: PHASES[phase],
      delivered: tickDelivered,
      p50_ms: tickHist.pct(50),
      p99_ms: tickHist.pct(99),
      max_ms: tickHist.n ? round(tickHist.max / 1000, 3) : null,
      echo_p99_ms: tickEcho.pct(99),
      // published x subscribers still open, minus what they have: in flight, or lost
      behind: sent * openSubscribers - totalDelivered + subscribers.reduce((n, c, i) => n + (c.isOpen ? 0 : receivedBy[i]), 0),
      echo_behind: echoSentTotal - echoBackTotal,
      newcomer_ms: lastProbeMs === null ? null : round(lastProbeMs, 2),
      newcomers_failed: tickProbeFailed,
      closed: Object.values(closes).reduce((a, b) => a + b, 0),
      gen_cpu: round((cpu - lastCpu) / ((t - lastTick) / 1000), 3),
    } }) + '\n');
    tickHist = new Histogram();
    tickEcho = new Histogram();
    tickDelivered = 0;
    tickProbeFailed = 0;
    lastTick = t;
    lastCpu = cpu;
  }, 1000);

  for (;;) {
    const line = await nextLine();
    if (line === 'stop') break;
    const m = /^phase (\d)$/.exec(line);
    if (m && Number(m[1]) < PHASES.length) enterPhase(Number(m[1]));
  }

  // -- drain and report ----------------------------------------------------------------------
  sending = false;
  clearInterval(pacer);
  clearInterval(prober);
  const drainStart = performance.now();
  const drainMs = (cfg.drainTimeout || 10) * 1000;
  for (;;) {
    const missing = subscribers.some((c, i) => c.isOpen && receivedBy[i] < sent);
    const echoMissing = echoClients.some((c, i) => c.isOpen && echoExpected[i] < echoNext[i]);
    if ((!missing && !echoMissing && probesOpen === 0) || performance.now() - drainStart > drainMs) break;
    await sleep(20);
  }
  endPhase();
  running = false;
  clearInterval(ticker);

  const out = {};
  PHASES.forEach((name, i) => {
    const s = phases[i];
    if (s.startT === 0) return;
    const expected = s.published * N;
    out[name] = {
      seconds: round((s.endT - s.startT) / 1000, 2),
      published: s.published,
      deliveries_expected: expected,
      delivered: s.delivered,
      losses: expected - s.delivered,
      ...s.latency.summary(''),
      echo_sent: s.echoSent,
      echo_received: s.echoReceived,
      echo_losses: s.echoSent - s.echoReceived,
      ...Object.fromEntries(Object.entries(s.echo.summary('echo_')).filter(([k]) => !k.endsWith('mean_ms'))),
      newcomers: s.newcomers,
      newcomers_ok: s.newcomersOk,
      newcomers_failed: s.newcomersFailed,
      newcomer_p50_ms: s.newcomer.pct(50),
      newcomer_p99_ms: s.newcomer.pct(99),
      newcomer_max_ms: s.newcomer.n ? round(s.newcomer.max / 1000, 3) : null,
      newcomer_first_failure: s.newcomerFailure,
      connections_closed: s.closed,
      gen_cpu_util: s.endT > s.startT ? round((s.cpu1 - s.cpu0) / ((s.endT - s.startT) / 1000), 3) : null,
      gen_loop_delay_p99_ms: s.loopDelayP99,
    };
  });
  for (const c of [...subscribers, ...echoClients, publisher]) c.close();
  return {
    ok: badMessages === 0,
    subscribers: N,
    echo_clients: E,
    publish_rate: R,
    echo_rate: ER,
    connect_s: round(connectSeconds, 2),
    published: sent,
    drain_s: round((performance.now() - drainStart) / 1000, 2),
    duplicates,
    order_errors: orderErrors,
    echo_order_errors: echoOrderErrors,
    bad_messages: badMessages,
    server_errors: serverErrors,
    closed: closes,
    ...(firstError ? { first_error: firstError } : {}),
    ...(badMessages ? { error: `${badMessages} unexpected messages (${firstError})` } : {}),
    phases: out,
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
