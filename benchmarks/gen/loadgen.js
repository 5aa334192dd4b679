'use strict';
// The load generator: one Node process, many connections, one event loop.
//
//   node loadgen.js '<JSON config>'
//
// Prints progress on stderr and one JSON result line on stdout. Scenarios:
//   fanout  N clients on a broadcast endpoint; client 0 also publishes M numbered
//           messages, keeping at most `window` of them unseen by itself; every client
//           checks that it receives every number in order.
//   echo    N clients on an echo endpoint, each with one message in flight, for a
//           fixed time after a warm-up; round trips/s and latency percentiles.
//   idle    N connections held open; the server's VmRSS before and after.
//   steady  N clients on a broadcast endpoint and one more connection that publishes at a
//           fixed rate; every delivery timed from its send time; "saturated" when the
//           server falls behind the rate or p99 passes the bound.
//   storm   N connections opened as fast as the server accepts them (at most
//           `connectConcurrency` handshakes in progress), with the headers a browser sends
//           (Origin, a subprotocol, a permessage-deflate offer): connects/s and the
//           server's CPU per connect.
// Every phase is bounded by a timeout: a server that hangs fails the scenario with a
// message saying where it stopped.

const fs = require('fs');
const { performance, monitorEventLoopDelay } = require('perf_hooks');
const { Histogram, nowUs } = require('./measure');
const { WSClient, adapter, maskedFrame, openMany, outgoingPayload, pathFor, OP_TEXT } = require('./wsclient');

const cfg = JSON.parse(process.argv[2]);
const label = cfg.label || `${cfg.scenario}`;

function log(text) {
  process.stderr.write(`  [gen ${label}] ${text}\n`);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// -- the server process, read from /proc ---------------------------------------------

function serverCpuSeconds() {
  if (!cfg.serverPid) return null;
  try {
    const stat = fs.readFileSync(`/proc/${cfg.serverPid}/stat`, 'latin1');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields[0] is field 3 (state): utime is field 14, stime field 15.
    return (Number(fields[11]) + Number(fields[12])) / (cfg.clkTck || 100);
  } catch (err) {
    return null;
  }
}

function serverRssKiB() {
  const status = fs.readFileSync(`/proc/${cfg.serverPid}/status`, 'latin1');
  const match = /VmRSS:\s+(\d+) kB/.exec(status);
  if (!match) throw new Error(`no VmRSS in /proc/${cfg.serverPid}/status`);
  return Number(match[1]);
}

/** CPU seconds the whole machine has spent busy (all cores), from /proc/stat. */
function machineBusySeconds() {
  try {
    const line = fs.readFileSync('/proc/stat', 'latin1').split('\n', 1)[0];
    const f = line.trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal ...
    return (f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] || 0)) / (cfg.clkTck || 100);
  } catch (err) {
    return null;
  }
}

function genCpuSeconds() {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

/** CPU seconds used by this process and by the server between two snapshots. */
function cpuSnapshot() {
  return { t: performance.now(), gen: genCpuSeconds(), server: serverCpuSeconds(), machine: machineBusySeconds() };
}

function cpuReport(a, b) {
  const wall = (b.t - a.t) / 1000;
  const gen = b.gen - a.gen;
  const server = a.server === null || b.server === null ? null : b.server - a.server;
  const machine = a.machine === null || b.machine === null ? null : b.machine - a.machine;
  // What other processes used meanwhile (clock-tick resolution: 10 ms per core).
  const other = machine === null || server === null ? null : Math.max(0, machine - gen - server);
  return {
    gen_cpu_s: round(gen, 3),
    server_cpu_s: server === null ? null : round(server, 3),
    gen_cpu_util: wall > 0 ? round(gen / wall, 3) : null,
    server_cpu_util: server === null || wall <= 0 ? null : round(server / wall, 3),
    other_cpu_util: other === null || wall <= 0 ? null : round(other / wall, 3),
  };
}

/** Work done per CPU-second the server used: less sensitive than a rate per wall-clock
 * second to CPU taken by other processes (but measured in 10 ms clock ticks). */
function perCpu(count, cpuSeconds) {
  return cpuSeconds ? Math.round(count / cpuSeconds) : null;
}

function round(x, digits) {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

// -- messages --------------------------------------------------------------------------

/** Message number ``seq``: the decimal number, a space, padding to ``size`` bytes. */
function messageText(seq, size) {
  const head = `${seq} `;
  return head + 'x'.repeat(Math.max(0, size - head.length));
}

/** The sequence number at the start of an item, or -1 if it is not one of ours. */
function parseSeq(buf, start, end, size) {
  if (end - start !== size) return -1;
  let seq = 0;
  let i = start;
  let c = buf[i];
  if (c < 48 || c > 57) return -1;
  while (c >= 48 && c <= 57) {
    seq = seq * 10 + (c - 48);
    c = buf[++i];
  }
  return c === 32 ? seq : -1;
}

/** Connection ``id``'s source address: `sourcePrefix` + 1..250 (so that a limit per client
 * address sees many addresses with a few connections each, as from the internet), or the
 * system's choice (127.0.0.1) without a prefix. */
function sourceAddress(id) {
  return cfg.sourcePrefix ? `${cfg.sourcePrefix}${(id % 250) + 1}` : undefined;
}

function openClients(count, endpoint, scenario, firstId = 0, what = 'connected', headers = undefined) {
  const started = performance.now();
  return openMany({
    localAddress: cfg.sourcePrefix ? sourceAddress : undefined,
    headers,
    count,
    host: cfg.host,
    port: cfg.port,
    endpoint,
    transport: cfg.transport,
    scenario,
    concurrency: cfg.connectConcurrency || 256,
    timeoutMs: (cfg.connectTimeout || 60) * 1000,
    firstId,
    onProgress: (ready, total) =>
      log(`${what} ${ready}/${total}, ${((performance.now() - started) / 1000).toFixed(1)}s`),
  });
}

// -- fan-out ----------------------------------------------------------------------------

async function fanout() {
  const N = cfg.clients;
  const M = cfg.messages;
  const S = cfg.size;
  const W = Math.max(1, cfg.window);
  const expectedTotal = N * M;
  const next = new Int32Array(N); // the number each client expects next
  let delivered = 0;
  let orderErrors = 0;
  let duplicates = 0;
  let badItems = 0;
  let complete = 0;
  let closedEarly = 0;
  let sent = 0;
  let publisherSeen = 0;
  let publisher = null;
  let running = false;
  let firstSend = 0;
  let lastDelivery = 0;
  let writeBlocked = false;
  let finish = null;
  const done = new Promise((resolve) => (finish = resolve));
  const frames = new Array(M);
  for (let i = 0; i < M; i++) frames[i] = maskedFrame(OP_TEXT, outgoingPayload(cfg.transport, messageText(i, S)));

  function pump() {
    if (!running || writeBlocked || sent >= M) return;
    const room = Math.min(W - (sent - publisherSeen), M - sent);
    if (room <= 0) return;
    const batch = room === 1 ? frames[sent] : Buffer.concat(frames.slice(sent, sent + room));
    sent += room;
    if (!publisher.writeFrames(batch)) {
      writeBlocked = true;
      publisher.sock.once('drain', () => {
        writeBlocked = false;
        pump();
      });
    }
  }

  const scenario = {
    onReady() {},
    onItem(client, buf, start, end) {
      const seq = parseSeq(buf, start, end, S);
      if (seq < 0 || seq >= M) {
        badItems++;
        return;
      }
      const id = client.id;
      const expected = next[id];
      if (seq === expected) {
        next[id] = seq + 1;
      } else if (seq > expected) {
        orderErrors++; // a gap: the missing numbers count as losses
        next[id] = seq + 1;
      } else {
        orderErrors++;
        duplicates++;
        return;
      }
      delivered++;
      if (id === 0) publisherSeen++;
      if (seq === M - 1) {
        complete++;
        if (complete === N) {
          lastDelivery = performance.now();
          finish('complete');
        }
      }
    },
    afterData(client) {
      if (client.id === 0) pump();
    },
    onClose(client) {
      if (running && next[client.id] < M) {
        closedEarly++;
        if (closedEarly === 1) {
          log(`connection ${client.id} closed after ${next[client.id]} messages` +
            (client.closeCode ? ` (close code ${client.closeCode})` : '') +
            (client.sockjsClose ? ` (${client.sockjsClose})` : '') +
            (client.error ? ` (${client.error})` : ''));
        }
        if (closedEarly + complete === N) finish('closed');
      }
    },
  };

  const connectStart = performance.now();
  const clients = await openClients(N, cfg.endpoint, scenario);
  const connectSeconds = (performance.now() - connectStart) / 1000;
  log(`${N} clients ready in ${connectSeconds.toFixed(1)}s; publishing ${M} messages (window ${W})`);
  publisher = clients[0];
  await sleep(cfg.settleMs ?? 300);

  const before = cpuSnapshot();
  firstSend = before.t;
  running = true;
  pump();
  let lastDelivered = -1;
  let lastChange = performance.now();
  const stallMs = (cfg.stallTimeout || 20) * 1000;
  const hardMs = (cfg.timeout || 600) * 1000;
  const ticker = setInterval(() => {
    const now = performance.now();
    if (delivered !== lastDelivered) {
      lastDelivered = delivered;
      lastChange = now;
    }
    log(`delivered ${delivered}/${expectedTotal} (${((100 * delivered) / expectedTotal).toFixed(1)}%), ` +
      `sent ${sent}/${M}, ${((now - firstSend) / 1000).toFixed(1)}s`);
    if (now - lastChange > stallMs) finish('stalled');
    else if (now - firstSend > hardMs) finish('timeout');
  }, 1000);
  const outcome = await done;
  clearInterval(ticker);
  const after = cpuSnapshot();
  if (outcome !== 'complete') lastDelivery = after.t;
  const seconds = (lastDelivery - firstSend) / 1000;
  const losses = expectedTotal - delivered;
  const result = {
    ok: outcome === 'complete' && losses === 0 && orderErrors === 0 && badItems === 0,
    outcome,
    deliveries_per_s: Math.round(delivered / seconds),
    seconds: round(seconds, 3),
    connect_s: round(connectSeconds, 2),
    delivered,
    expected: expectedTotal,
    losses,
    order_ok: orderErrors === 0,
    order_errors: orderErrors,
    duplicates,
    bad_messages: badItems,
    closed_early: closedEarly,
    published: sent,
    ...cpuReport(before, after),
  };
  result.deliveries_per_server_cpu_s = perCpu(delivered, result.server_cpu_s);
  if (outcome === 'stalled') {
    result.error = `no delivery for ${cfg.stallTimeout || 20}s: ${delivered} of ${expectedTotal} delivered, ` +
      `${sent} of ${M} published, ${complete} clients complete`;
  } else if (outcome === 'timeout') {
    result.error = `not finished within ${cfg.timeout || 600}s`;
  } else if (outcome === 'closed') {
    result.error = `${closedEarly} connections closed before receiving every message`;
  }
  return result;
}

// -- echo round trips ---------------------------------------------------------------------

async function echo() {
  const N = cfg.clients;
  const S = cfg.size;
  let measuring = false;
  let stopping = false;
  let roundTrips = 0;
  let mismatches = 0;
  let closed = 0;
  const latencies = []; // microseconds, measured window only
  const state = new Array(N);

  function send(client) {
    const st = state[client.id];
    st.seq++;
    st.t0 = performance.now();
    client.writeFrames(maskedFrame(OP_TEXT, outgoingPayload(cfg.transport, messageText(st.seq, S))));
  }

  const scenario = {
    onReady(client) {
      state[client.id] = { seq: -1, t0: 0 };
    },
    onItem(client, buf, start, end) {
      const now = performance.now();
      const st = state[client.id];
      if (parseSeq(buf, start, end, S) !== st.seq) mismatches++;
      if (measuring) {
        roundTrips++;
        latencies.push((now - st.t0) * 1000);
      }
      if (!stopping) send(client);
    },
    onClose() {
      if (!stopping) closed++;
    },
  };
  const clients = await openClients(N, cfg.endpoint, scenario);
  log(`${N} clients ready; warming up ${cfg.warmup}s, then measuring ${cfg.duration}s`);
  for (const client of clients) send(client);
  const warmStart = performance.now();
  await sleep(cfg.warmup * 1000);
  const before = cpuSnapshot();
  measuring = true;
  const ticker = setInterval(() => {
    log(`${roundTrips} round trips, ${((performance.now() - before.t) / 1000).toFixed(1)}s` +
      `/${cfg.duration}s`);
  }, 1000);
  await sleep(cfg.duration * 1000);
  measuring = false;
  stopping = true;
  const after = cpuSnapshot();
  clearInterval(ticker);
  const seconds = (after.t - before.t) / 1000;
  if (roundTrips === 0) {
    return {
      ok: false,
      error: `no round trip completed in ${cfg.duration}s (after ${((before.t - warmStart) / 1000).toFixed(1)}s ` +
        'of warm-up): the server does not echo',
    };
  }
  const sorted = Float64Array.from(latencies).sort();
  const pct = (p) => round(sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] / 1000, 3);
  const result = {
    ok: mismatches === 0 && closed === 0,
    round_trips_per_s: Math.round(roundTrips / seconds),
    round_trips: roundTrips,
    seconds: round(seconds, 3),
    p50_ms: pct(50),
    p90_ms: pct(90),
    p99_ms: pct(99),
    p999_ms: pct(99.9),
    max_ms: round(sorted[sorted.length - 1] / 1000, 3),
    mismatches,
    closed_early: closed,
    ...cpuReport(before, after),
    ...(mismatches || closed ? { error: `${mismatches} wrong echoes, ${closed} connections closed` } : {}),
  };
  result.round_trips_per_server_cpu_s = perCpu(roundTrips, result.server_cpu_s);
  return result;
}

// -- idle connections ----------------------------------------------------------------------

async function idle() {
  const N = cfg.clients;
  const warm = cfg.warmConnections ?? 100;
  let closed = 0;
  let holding = false;
  const scenario = {
    onReady() {},
    onItem() {},
    onClose() {
      if (holding) closed++;
    },
  };
  // A first batch pays for what a server allocates once (code paths, caches, pools); the
  // figure per connection is the growth from there to `warm + N` connections.
  await openClients(warm, cfg.endpoint, scenario, 0, 'warm-up connections');
  await sleep(1000);
  const rssBefore = serverRssKiB();
  const started = performance.now();
  await openClients(N, cfg.endpoint, scenario, warm, 'connected');
  const connectSeconds = (performance.now() - started) / 1000;
  holding = true;
  log(`${N} connections open in ${connectSeconds.toFixed(1)}s; holding them ${cfg.idleWait}s`);
  await sleep(cfg.idleWait * 1000);
  const rssAfter = serverRssKiB();
  const perConn = (rssAfter - rssBefore) / N;
  return {
    ok: closed === 0,
    kib_per_connection: round(perConn, 2),
    rss_before_kib: rssBefore,
    rss_after_kib: rssAfter,
    connections: N,
    warm_connections: warm,
    connect_s: round(connectSeconds, 2),
    connections_per_s: Math.round(N / connectSeconds),
    closed_early: closed,
    ...(closed ? { error: `${closed} connections closed while idle` } : {}),
  };
}

// -- steady rate -------------------------------------------------------------------------------

/** "<seq> <t> xxx..." padded to ``size`` bytes: t = CLOCK_MONOTONIC microseconds at sending. */
function stampedText(seq, t, size) {
  const head = `${seq} ${Math.round(t)} `;
  return head + 'x'.repeat(Math.max(0, size - head.length));
}

async function steady() {
  const N = cfg.clients;
  const R = cfg.rate;
  const S = cfg.size;
  const warmupMessages = Math.round(R * cfg.warmup);
  const total = warmupMessages + Math.max(1, Math.round(R * cfg.duration));
  const boundMs = cfg.boundMs || 1000;
  // Backlog that means "not keeping up": more deliveries outstanding than the rate
  // produces in the bound (then the newest message cannot arrive within it), plus one
  // message per client in flight.
  const behindLimit = N * Math.max(1, (R * boundMs) / 1000) + N;
  const next = new Int32Array(N); // per client: the seq it expects next
  const latency = new Histogram(); // measured messages only
  const sendLag = new Histogram(); // how late the pacer sent each measured message
  let second = new Histogram(); // the last second's deliveries, for the progress line
  let now = 0;
  let delivered = 0; // every delivery to the N clients
  let deliveredMeasured = 0;
  let losses = 0;
  let duplicates = 0;
  let orderErrors = 0;
  let badItems = 0;
  let firstBad = null;
  let closedEarly = 0;
  let firstClose = null;
  let publisherSeen = 0;
  let sent = 0;
  let running = false;
  let lastDelivery = 0;
  let lastAny = 0; // the last delivery of any message, warm-up included
  const publisherId = N;

  const scenario = {
    onReady() {},
    beforeData() {
      now = nowUs();
    },
    onItem(client, buf, start, end) {
      let i = start;
      let c = buf[i];
      let seq = 0;
      while (c >= 48 && c <= 57) {
        seq = seq * 10 + (c - 48);
        c = buf[++i];
      }
      if (c !== 32 || i === start) {
        badItems++;
        if (firstBad === null) firstBad = buf.toString('utf8', start, Math.min(end, start + 60));
        return;
      }
      let t = 0;
      const t0 = ++i;
      c = buf[i];
      while (c >= 48 && c <= 57) {
        t = t * 10 + (c - 48);
        c = buf[++i];
      }
      if (c !== 32 || i === t0 || end - start !== S || seq >= total) {
        badItems++;
        if (firstBad === null) firstBad = buf.toString('utf8', start, Math.min(end, start + 60));
        return;
      }
      const id = client.id;
      if (id === publisherId) {
        publisherSeen++;
        return;
      }
      const expected = next[id];
      if (seq < expected) {
        duplicates++;
        orderErrors++;
        return;
      }
      if (seq > expected) {
        losses += seq - expected; // a gap: the numbers skipped never come (order is kept)
        orderErrors++;
      }
      next[id] = seq + 1;
      delivered++;
      lastAny = now;
      if (seq >= warmupMessages) {
        deliveredMeasured++;
        latency.add(now - t);
        lastDelivery = now;
      }
      second.add(now - t);
    },
    onClose(client) {
      if (!running) return;
      closedEarly++;
      if (firstClose === null) {
        firstClose = `connection ${client.id}` + (client.closeCode ? ` closed with ${client.closeCode}` : ' closed') +
          (client.sockjsClose ? ` (${client.sockjsClose})` : '') + (client.error ? ` (${client.error})` : '');
      }
    },
  };

  const connectStart = performance.now();
  const clients = await openClients(N + 1, cfg.endpoint, scenario);
  const connectSeconds = (performance.now() - connectStart) / 1000;
  const publisher = clients[publisherId];
  log(`${N} clients and the publisher ready in ${connectSeconds.toFixed(1)}s; publishing ${R}/s: ` +
    `${cfg.warmup}s of warm-up, then ${cfg.duration}s measured`);
  running = true;
  await sleep(cfg.settleMs ?? 300);

  const loopDelay = monitorEventLoopDelay({ resolution: 10 });
  const first = cpuSnapshot(); // a saturated run's CPU is reported from the first send
  let before = null;
  let measureStartUs = 0;
  let saturatedBy = null;
  const t0 = nowUs();
  const periodUs = 1e6 / R;
  let resolveSent = null;
  const allSent = new Promise((resolve) => (resolveSent = resolve));

  function publishDue() {
    const t = nowUs();
    const due = Math.min(total, Math.floor((t - t0) / periodUs) + 1);
    while (sent < due && saturatedBy === null) {
      if (sent === warmupMessages) {
        before = cpuSnapshot();
        measureStartUs = t;
        loopDelay.enable();
      }
      if (sent >= warmupMessages) sendLag.add(t - (t0 + sent * periodUs));
      const frame = maskedFrame(OP_TEXT, outgoingPayload(cfg.transport, stampedText(sent, t, S)));
      sent++;
      publisher.writeFrames(frame);
    }
    if (sent >= total || saturatedBy !== null) resolveSent();
  }

  // The pacer: every millisecond, whatever is due by now (a late timer sends the
  // messages it owes at once; each is stamped with its actual sending time, and the
  // lateness is reported as the send lag).
  const pacer = setInterval(publishDue, 1);
  const watch = setInterval(() => {
    const behind = sent * N - delivered;
    if (behind > behindLimit && saturatedBy === null && sent < total) {
      saturatedBy = `${behind} deliveries outstanding after ${sent} messages, over ${boundMs} ms of the rate: ` +
        'publishing stopped';
      log(`saturated: ${saturatedBy}`);
    }
  }, 100);
  let lastTick = performance.now();
  let lastDelivered = 0;
  const ticker = setInterval(() => {
    const t = performance.now();
    const rate = ((delivered - lastDelivered) * 1000) / (t - lastTick);
    log(`${((nowUs() - t0) / 1e6).toFixed(1)}s: sent ${sent}/${total}, delivered ${delivered}/${sent * N} ` +
      `(${Math.round(rate)}/s of ${Math.round(R * N)}/s offered), behind ${sent * N - delivered}, ` +
      `last second p99 ${second.pct(99) ?? '-'} ms`);
    second = new Histogram();
    lastTick = t;
    lastDelivered = delivered;
  }, 1000);
  await allSent;
  clearInterval(pacer);
  const sendEndUs = nowUs();
  const after = before === null ? null : cpuSnapshot();
  loopDelay.disable();
  // Drain: every message sent should reach every client still connected.
  const drainMs = (saturatedBy === null ? cfg.drainTimeout || 5 : 1) * 1000;
  const drainStart = performance.now();
  while (performance.now() - drainStart < drainMs) {
    let missing = false;
    for (let i = 0; i < N; i++) {
      if (clients[i].isOpen && next[i] < sent) {
        missing = true;
        break;
      }
    }
    if (!missing) break;
    await sleep(10);
  }
  clearInterval(watch);
  clearInterval(ticker);
  running = false;
  const measuredSent = Math.max(0, sent - warmupMessages);
  let undelivered = 0;
  for (let i = 0; i < N; i++) if (clients[i].isOpen) undelivered += sent - next[i];
  const windowS = (sendEndUs - measureStartUs) / 1e6;
  const deliverySpanS = lastDelivery > measureStartUs ? (lastDelivery - measureStartUs) / 1e6 : null;
  const p99 = latency.pct(99);
  if (saturatedBy === null && undelivered > 0) {
    saturatedBy = `${undelivered} deliveries still missing ${cfg.drainTimeout || 5}s after the last send`;
  } else if (saturatedBy === null && p99 !== null && p99 > boundMs) {
    saturatedBy = `p99 ${p99} ms is beyond the bound of ${boundMs} ms`;
  }
  const pings = clients.reduce((n, c) => n + (c.pings || 0), 0); // Socket.IO pings answered
  for (const c of clients) c.sock.destroy();
  const result = {
    ok: badItems === 0 && losses === 0 && duplicates === 0 && closedEarly === 0 && before !== null,
    rate: R,
    saturated: saturatedBy !== null,
    saturated_reason: saturatedBy,
    bound_ms: boundMs,
    warmup_messages: warmupMessages,
    sent: measuredSent,
    sent_per_s: windowS > 0 ? round(measuredSent / windowS, 1) : null,
    expected: measuredSent * N,
    delivered: deliveredMeasured,
    deliveries_per_s: deliverySpanS ? Math.round(deliveredMeasured / deliverySpanS) : null,
    // every delivery, warm-up included, over the time from the first send to the last
    // delivery: what a saturated server managed
    achieved_deliveries_per_s: lastAny > t0 ? Math.round(delivered / ((lastAny - t0) / 1e6)) : 0,
    offered_deliveries_per_s: Math.round(R * N),
    ...latency.summary(''),
    send_lag_p99_ms: sendLag.pct(99),
    send_lag_max_ms: sendLag.n ? round(sendLag.max / 1000, 3) : null,
    gen_loop_delay_p99_ms: round(loopDelay.percentile(99) / 1e6, 3),
    losses,
    undelivered,
    duplicates,
    order_errors: orderErrors,
    bad_messages: badItems,
    closed_early: closedEarly,
    publisher_received: publisherSeen,
    ...(cfg.transport === 'socketio' ? { pings_answered: pings } : {}),
    connect_s: round(connectSeconds, 2),
    seconds: round(windowS, 3),
    ...(saturatedBy !== null || after === null ? cpuReport(first, cpuSnapshot()) : cpuReport(before, after)),
  };
  const problems = [];
  if (before === null) problems.push('the measured window was never reached');
  if (badItems) problems.push(`${badItems} unexpected messages (${firstBad})`);
  if (losses) problems.push(`${losses} deliveries lost (gaps in the sequence)`);
  if (duplicates) problems.push(`${duplicates} duplicates`);
  if (closedEarly) problems.push(`${closedEarly} connections closed (${firstClose})`);
  if (problems.length) result.error = problems.join('; ');
  return result;
}

// -- connection storm ------------------------------------------------------------------------

/** The header lines a browser page on the server's own origin sends with its handshake. */
function browserHeaders() {
  let lines = `Origin: http://${cfg.host}:${cfg.port}\r\n` +
    'Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n';
  if (cfg.transport === 'raw') lines += `Sec-WebSocket-Protocol: ${cfg.subprotocol || 'bench.v1'}\r\n`;
  return lines;
}

/** One handshake from a foreign origin: is it refused? (The origin check is on.) */
function foreignOriginRefused() {
  return new Promise((resolve) => {
    let settled = false;
    const done = (value, client) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      client.sock.destroy();
      resolve(value);
    };
    const handler = adapter(cfg.transport, {
      onReady: (c) => done({ refused: false, status: 'opened' }, c),
      onItem() {},
      onClose: (c) => done({ refused: c.status !== null, status: c.status || c.error || 'closed' }, c),
      onError() {},
    });
    const client = new WSClient(-1, cfg.host, cfg.port, pathFor(cfg.transport, cfg.endpoint, 0), handler,
      sourceAddress(0), browserHeaders().replace(/^Origin: [^\r]*/, 'Origin: https://elsewhere.example'));
    const timer = setTimeout(() => done({ refused: false, status: 'no answer within 10 s' }, client), 10000);
  });
}

async function storm() {
  const N = cfg.clients;
  const warm = cfg.warmConnections ?? 100;
  let closed = 0;
  let holding = false;
  const handshake = new Histogram();
  let protocolChosen = 0;
  let deflateNegotiated = 0;
  const scenario = {
    onReady(client) {
      if (client.id < warm) return;
      handshake.add((client.openedAt - client.startedAt) * 1000);
      if (client.protocol === (cfg.subprotocol || 'bench.v1')) protocolChosen++;
      if (client.extensions !== null && client.extensions.includes('permessage-deflate')) deflateNegotiated++;
    },
    onItem() {},
    onClose() {
      if (holding) closed++;
    },
  };
  const origin = await foreignOriginRefused();
  log(`a handshake from a foreign origin: ${origin.refused ? 'refused' : 'NOT refused'} (${origin.status})`);
  // As for idle: what a server allocates once is paid before the window.
  await openClients(warm, cfg.endpoint, scenario, 0, 'warm-up connections', browserHeaders);
  await sleep(200);
  const before = cpuSnapshot();
  await openClients(N, cfg.endpoint, scenario, warm, 'connected', browserHeaders);
  const after = cpuSnapshot();
  holding = true;
  const seconds = (after.t - before.t) / 1000;
  log(`${N} connections open in ${seconds.toFixed(2)}s (${Math.round(N / seconds)}/s)`);
  await sleep(200); // none of them is closed right after its handshake
  const cpu = cpuReport(before, after);
  return {
    ok: closed === 0,
    connections: N,
    warm_connections: warm,
    seconds: round(seconds, 3),
    connects_per_s: Math.round(N / seconds),
    server_us_per_connect: cpu.server_cpu_s === null ? null : round((cpu.server_cpu_s * 1e6) / N, 1),
    gen_us_per_connect: round((cpu.gen_cpu_s * 1e6) / N, 1),
    connects_per_server_cpu_s: perCpu(N, cpu.server_cpu_s),
    handshake_p50_ms: handshake.pct(50),
    handshake_p99_ms: handshake.pct(99),
    handshake_max_ms: handshake.n ? round(handshake.max / 1000, 3) : null,
    origin_checked: origin.refused,
    foreign_origin_answer: origin.status,
    subprotocol_chosen: cfg.transport === 'raw' ? protocolChosen : null,
    deflate_negotiated: deflateNegotiated,
    closed_early: closed,
    ...cpu,
    ...(closed ? { error: `${closed} connections closed right after opening` } : {}),
  };
}

const SCENARIOS = { fanout, echo, idle, steady, storm };

async function main() {
  const run = SCENARIOS[cfg.scenario];
  if (!run) throw new Error(`unknown scenario ${cfg.scenario}`);
  return run();
}

main().then(
  (result) => {
    process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(0));
  },
  (err) => {
    process.stdout.write(JSON.stringify({ ok: false, error: err.message }) + '\n', () => process.exit(1));
  },
);
