"""Tables of the abuse scenario (see abuse.py), appended to the report."""

from __future__ import annotations

from typing import Any

from benchmarks.abuse import TARGETS
from benchmarks.pubsub_report import _table

__all__ = ["render_abuse"]

Record = dict[str, Any]
PHASES = ("before", "during", "after")
TIMELINE_ROWS = 15


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


def _ms(*values: Any) -> str:
    def one(v: Any) -> str:
        if not isinstance(v, int | float):
            return "-"
        return f"{v:.3g}" if v < 1000 else f"{v:,.0f}"

    return " / ".join(one(v) for v in values) + " ms"


def _mib(kib: Any) -> str:
    return f"{kib / 1024:.1f}" if isinstance(kib, int | float) else "-"


def _pct(value: Any) -> str:
    return f"{100 * value:.0f}%" if isinstance(value, int | float) else "-"


def _bytes(n: Any) -> str:
    if not isinstance(n, int):
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _met(target: dict) -> str:
    return "yes" if target.get("met") else "NO"


def _phases(r: Record) -> list[str]:
    rows = []
    for name in PHASES:
        p = (r.get("phases") or {}).get(name)
        if not p:
            continue
        newcomers = (f"{_n(p.get('newcomers_ok'))} / {_n(p.get('newcomers_failed'))}, "
                     f"p99 {_ms(p.get('newcomer_p99_ms'))}")
        rows.append((
            name, f"{_n(p.get('delivered'))} ({_n(p.get('losses'))})",
            _ms(p.get("p50_ms"), p.get("p99_ms"), p.get("max_ms")),
            f"{_n(p.get('echo_received'))} ({_n(p.get('echo_losses'))})",
            _ms(p.get("echo_p50_ms"), p.get("echo_p99_ms")),
            newcomers, f"{_mib(p.get('rss_settled_kib'))} ({_mib(p.get('rss_max_kib'))})",
            f"{_n(p.get('fds_settled'))} ({_n(p.get('fds_max'))})",
            " / ".join(_pct(p.get(k)) for k in ("gateway_cpu", "generator_cpu", "abusers_cpu", "others_cpu")),
            f"{_n(p.get('log_lines'))} ({_n(p.get('log_tracebacks'))})",
        ))
    return _table(("phase", "deliveries (lost)", "p50 / p99 / max", "echoes (lost)", "echo p50 / p99",
                   "newcomers ok / failed", "RSS MiB end (max)", "fds end (max)",
                   "CPU gateway / generator / abusers / others", "log lines (tracebacks)"), rows)


def _targets(r: Record) -> list[str]:
    t = r.get("targets") or {}
    rows = []
    if "zero_losses" in t:
        z = t["zero_losses"]
        rows.append((TARGETS["zero_losses"], f"{_n(z.get('measured'))} lost, {_n(z.get('connections_closed'))} "
                                             f"closed, {_n(z.get('duplicates_or_reordered'))} duplicated or "
                                             "reordered", _met(z)))
    for key in ("p99", "echo_p99"):
        if key in t:
            x = t[key]
            ratio = f" ({x['ratio']:.2f}x)" if isinstance(x.get("ratio"), int | float) else ""
            rows.append((TARGETS[key], f"{_ms(x.get('before_ms'))} -> {_ms(x.get('during_ms'))}{ratio}; after "
                                       f"{_ms(x.get('after_ms'))}", _met(x)))
    if "rss" in t:
        x = t["rss"]
        ratio = f" ({x['ratio']:.3f}x)" if isinstance(x.get("ratio"), int | float) else ""
        rows.append((TARGETS["rss"], f"{_mib(x.get('before_kib'))} -> {_mib(x.get('after_kib'))} MiB{ratio}; "
                                     f"during up to {_mib(x.get('during_max_kib'))} MiB", _met(x)))
    if "fds" in t:
        x = t["fds"]
        rows.append((TARGETS["fds"], f"{_n(x.get('before'))} -> {_n(x.get('after'))}; during up to "
                                     f"{_n(x.get('during_max'))}", _met(x)))
    if "newcomers" in t:
        x = t["newcomers"]
        text = f"{_n(x.get('ok'))} echoed, {_n(x.get('failed'))} failed; slowest {_ms(x.get('slowest_ms'))}"
        if x.get("first_failure"):
            text += f"; first failure: {str(x['first_failure'])[:60]}"
        rows.append((TARGETS["newcomers"], text, _met(x)))
    return _table(("target", "measured", "met"), rows)


def _abusers(r: Record) -> list[str]:
    rows = []
    cpu = {}
    for sample in r.get("timeline") or []:
        if sample.get("phase") == "during":
            for kind, value in (sample.get("abuser_cpu") or {}).items():
                if isinstance(value, int | float):
                    cpu.setdefault(kind, []).append(value)
    for kind, report in (r.get("abuse") or {}).items():
        failed = report.get("connect_failed") or {}
        notes = []
        for key in ("sessions", "publications", "messages_sent", "bursts"):
            if report.get(key):
                notes.append(f"{key.replace('_', ' ')} {report[key]:,}")
        if report.get("errors"):
            notes.append("errors " + ", ".join(f"{k} x{v}" for k, v in report["errors"].items()))
        if not report.get("ok"):
            notes.append("FAILED: " + str(report.get("error"))[:80])
        answers = ", ".join(f"{k} x{v}" for k, v in (report.get("answers") or {}).items()) or "-"
        values = cpu.get(kind) or []
        rows.append((kind, _n(report.get("opened")), _n(report.get("closed_by_gateway")),
                     ", ".join(f"{k} x{v}" for k, v in failed.items()) or "0", _bytes(report.get("bytes_sent")),
                     answers[:70], _pct(sum(values) / len(values)) if values else "-", "; ".join(notes) or "-"))
    return _table(("abuser", "connections", "closed by gateway", "connects failed", "sent", "gateway answered",
                   "CPU", "notes"), rows)


def _timeline(r: Record) -> list[str]:
    samples = r.get("timeline") or []
    if not samples:
        return []
    step = max(1, len(samples) // TIMELINE_ROWS)
    chosen = samples[::step]
    if chosen[-1] is not samples[-1]:
        chosen.append(samples[-1])
    rows = [(f"{s.get('t', 0):.0f}", s.get("phase", "?"), _mib(s.get("rss_kib")), _n(s.get("fds")),
             _ms(s.get("p99_ms")), _ms(s.get("echo_p99_ms")), _ms(s.get("newcomer_ms")),
             _n(s.get("behind")), _pct(s.get("gateway_cpu"))) for s in chosen]
    return _table(("t s", "phase", "RSS MiB", "fds", "p99 (that second)", "echo p99", "newcomer", "behind",
                   "gateway CPU"), rows)


def render_abuse(records: list[Record]) -> list[str]:
    lines: list[str] = []
    for r in records:
        if r.get("scenario") != "abuse":
            continue
        secs = r.get("phase_seconds") or {}
        lines += ["", f"Abuse: {_n(r.get('subscribers'))} subscribers of one channel ({r.get('publish_rate'):g} "
                      f"publications/s), {_n(r.get('echo_clients'))} echo clients ({r.get('echo_rate'):g} messages/s "
                      f"each), a newcomer a second; the gateway may open {_n(r.get('gateway_nofile'))} descriptors",
                  "Phases: " + ", ".join(f"{name} {secs.get(name, 0):.0f} s" for name in PHASES)
                  + f"; abusers during: {', '.join(r.get('abusers') or []) or 'none'} (scale {r.get('abuse_scale'):g})"]
        if not r.get("ok"):
            lines.append("FAILED: " + str(r.get("error"))[:300].replace("\n", " "))
        if r.get("disturbed"):
            lines.append(f"DISTURBED: other processes used up to {_pct(r.get('other_cpu_util'))} of a core in a phase")
        lines += ["", "Per phase (latency of the messages sent in it; RSS and fds: median / least over its last 5 s; "
                      "CPU: share of a core)"]
        lines += _phases(r)
        lines += ["", "Targets (measured, not asserted)"]
        lines += _targets(r)
        if r.get("abuse"):
            lines += ["", "Abusers (during; each keeps at it: what the gateway closes is opened again)"]
            lines += _abusers(r)
        if r.get("timeline"):
            lines += ["", "Over time (the full series, a sample a second, is in the JSON line's timeline)"]
            lines += _timeline(r)
    return lines
