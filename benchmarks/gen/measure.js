'use strict';
// What the generators measure with: CLOCK_MONOTONIC in microseconds (the clock Python's
// time.monotonic() reads too, so a timestamp written by one process can be compared by
// another), a latency histogram with fixed memory, and CPU time from /proc.

const fs = require('fs');
const { performance } = require('perf_hooks');

function round(x, digits) {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

// -- the clock: microseconds of CLOCK_MONOTONIC ----------------------------------------

const CLOCK_OFFSET = (() => {
  // performance.now() is milliseconds since this process started, on the same monotonic
  // clock as process.hrtime; the offset between them is taken from the reading with the
  // narrowest bracket (well under a microsecond).
  let best = Infinity;
  let offset = 0;
  for (let i = 0; i < 200; i++) {
    const a = performance.now();
    const h = Number(process.hrtime.bigint() / 1000n);
    const b = performance.now();
    if (b - a < best) {
      best = b - a;
      offset = h - ((a + b) / 2) * 1000;
    }
  }
  return offset;
})();

function nowUs() {
  return performance.now() * 1000 + CLOCK_OFFSET;
}

// -- latency histogram: 1 us buckets below 2.048 ms, then 1024 per power of two ---------

const LINEAR = 2048;
const BUCKETS = LINEAR + 21 * 1024;

function bucketOf(us) {
  let v = us < 0 ? 0 : us >= 2147483647 ? 2147483647 : Math.floor(us);
  if (v < LINEAR) return v;
  const e = 31 - Math.clz32(v);
  return LINEAR + (e - 11) * 1024 + ((v >>> (e - 10)) - 1024);
}

function bucketValue(b) {
  if (b < LINEAR) return b + 0.5;
  const e = 11 + Math.floor((b - LINEAR) / 1024);
  const sub = (b - LINEAR) % 1024;
  const width = 2 ** (e - 10);
  return (1024 + sub) * width + width / 2;
}

class Histogram {
  constructor() {
    this.counts = new Float64Array(BUCKETS);
    this.n = 0;
    this.max = 0;
    this.sum = 0;
  }

  add(us) {
    this.counts[bucketOf(us)]++;
    this.n++;
    this.sum += us;
    if (us > this.max) this.max = us;
  }

  /** The p-th percentile in milliseconds (null when empty). */
  pct(p) {
    if (this.n === 0) return null;
    const rank = Math.max(1, Math.ceil((p / 100) * this.n));
    let seen = 0;
    for (let b = 0; b < BUCKETS; b++) {
      seen += this.counts[b];
      // a bucket's middle, but never beyond the largest value recorded
      if (seen >= rank) return round(Math.min(bucketValue(b), this.max) / 1000, 3);
    }
    return round(this.max / 1000, 3);
  }

  summary(prefix) {
    return {
      [`${prefix}p50_ms`]: this.pct(50),
      [`${prefix}p90_ms`]: this.pct(90),
      [`${prefix}p99_ms`]: this.pct(99),
      [`${prefix}p999_ms`]: this.pct(99.9),
      [`${prefix}max_ms`]: this.n ? round(this.max / 1000, 3) : null,
      [`${prefix}mean_ms`]: this.n ? round(this.sum / this.n / 1000, 3) : null,
    };
  }
}

// -- CPU of every process of the measurement, from /proc ----------------------------------

function procCpuSeconds(pid, tck = 100) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / tck;
  } catch (err) {
    return null;
  }
}

function machineBusySeconds(tck = 100) {
  try {
    const line = fs.readFileSync('/proc/stat', 'latin1').split('\n', 1)[0];
    const f = line.trim().split(/\s+/).slice(1).map(Number);
    return (f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] || 0)) / tck;
  } catch (err) {
    return null;
  }
}

function genCpuSeconds() {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

module.exports = { Histogram, genCpuSeconds, machineBusySeconds, nowUs, procCpuSeconds, round };
