"""The summary table: sockway against its peer in the same run, the ratio, and the
project's target for it (reported, not asserted); then the generator's calibration and
the CPU each side used."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from benchmarks.abuse_report import render_abuse
from benchmarks.pubsub_report import render_pubsub
from benchmarks.storms_report import render_storms

__all__ = ["collapse", "render"]

Record = dict[str, Any]

PEER_FOR = {"raw": "ws", "sockjs": "sockjs-node"}
TRANSPORT = {"raw": "raw WS", "sockjs": "SockJS-WS"}
MEDIAN_KEYS = (
    "round_trips_per_s", "round_trips_per_server_cpu_s", "p50_ms", "p90_ms", "p99_ms", "p999_ms",
    "max_ms", "seconds", "server_cpu_util", "gen_cpu_util", "other_cpu_util",
    # connection storm rounds
    "connects_per_s", "server_us_per_connect", "gen_us_per_connect", "connects_per_server_cpu_s",
    "handshake_p50_ms", "handshake_p99_ms", "handshake_max_ms",
)


def collapse(records: list[Record]) -> list[Record]:
    """One record per measurement: rounds of the same measurement become their median,
    over the undisturbed rounds when there is at least one, else over all of them."""
    groups: dict[tuple, list[Record]] = {}
    for record in records:
        key = (record["scenario"], record["clients"], record["server"], record["transport"],
               bool(record.get("calibration")), record.get("path"), record.get("broker"), record.get("nodes"),
               record.get("rate") if record["scenario"] == "steady" else None)
        groups.setdefault(key, []).append(record)
    out = []
    for group in groups.values():
        if len(group) == 1:
            out.append(group[0])
            continue
        ok = [r for r in group if r.get("ok")]
        calm = [r for r in ok if not r.get("disturbed")]
        chosen = calm or ok
        merged = dict(group[0])
        merged["ok"] = len(ok) == len(group)
        merged["rounds_used"] = len(chosen)
        merged["rounds"] = len(group)
        merged["disturbed"] = not calm
        if not merged["ok"]:
            merged["error"] = next(str(r.get("error")) for r in group if not r.get("ok"))
        for name in MEDIAN_KEYS:
            values = [r[name] for r in chosen if isinstance(r.get(name), int | float)]
            merged[name] = statistics.median(values) if values else None
        out.append(merged)
    return out


def _find(records: list[Record], **match: Any) -> Record | None:
    for record in records:
        if all(record.get(k) == v for k, v in match.items()):
            return record
    return None


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}{unit}"
    if abs(value) >= 100:
        return f"{value:.0f}{unit}"
    return f"{value:.3g}{unit}" if abs(value) < 10 else f"{value:.1f}{unit}"


def _headroom(record: Record) -> str:
    """How much more of this traffic the generator could take before using a whole core."""
    util = record.get("gen_cpu_util")
    return f"{1 / util:.1f}x" if isinstance(util, int | float) and util > 0 else "-"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _value(record: Record | None, key: str) -> float | None:
    if record is None:
        return None
    value = record.get(key)
    return float(value) if isinstance(value, int | float) else None


def _checks(record: Record | None) -> str:
    if record is None:
        return "not run"
    parts = []
    if record.get("scenario") == "fanout" and record.get("delivered") is not None:
        parts += [f"losses {record.get('losses')}", "order kept" if record.get("order_ok") else "ORDER BROKEN"]
    if not record.get("ok"):
        parts.append("FAILED: " + str(record.get("error"))[:70].replace("\n", " "))
    elif not parts:
        parts.append("ok")
    if record.get("rounds", 1) > 1:
        parts.append(f"median of {record.get('rounds_used')}/{record['rounds']} rounds")
    if record.get("disturbed"):
        parts.append(f"DISTURBED (others {100 * (record.get('other_cpu_util') or 0):.0f}% CPU)")
    return ", ".join(parts)


Row = tuple[str, ...]
Target = tuple[str, Callable[[float, float | None], bool]]


def _comparison(records: list[Record], scenario: str, clients: int, transport: str, key: str,
                title: str, unit: str, target: Target | None) -> Row:
    sockway = _find(records, scenario=scenario, clients=clients, transport=transport, server="sockway",
                    calibration=False)
    peer_name = PEER_FOR[transport]
    peer = _find(records, scenario=scenario, clients=clients, transport=transport, server=peer_name,
                 calibration=False)
    a, b = _value(sockway, key), _value(peer, key)
    ratio = a / b if a is not None and b else None
    met = "-"
    target_text = "-"
    if target is not None:
        target_text, predicate = target
        if a is not None and sockway is not None and sockway.get("ok"):
            met = "yes" if predicate(a, ratio) else "NO"
            if any(r is not None and r.get("disturbed") for r in (sockway, peer)):
                met += " (disturbed)"
        elif sockway is not None:
            met = "NO (failed)"
    checks = _checks(sockway)
    if peer is not None and not peer.get("ok"):
        checks += f"; {peer_name} FAILED: " + str(peer.get("error"))[:70].replace("\n", " ")
    elif peer is not None and scenario == "fanout" and (peer.get("losses") or not peer.get("order_ok")):
        checks += f"; {peer_name}: losses {peer.get('losses')}, order {'kept' if peer.get('order_ok') else 'BROKEN'}"
    if peer is not None and peer.get("disturbed"):
        checks += f"; {peer_name} DISTURBED (others {100 * (peer.get('other_cpu_util') or 0):.0f}% CPU)"
    return (title, TRANSPORT[transport], _num(a, unit), f"{peer_name} {_num(b, unit)}",
            "-" if ratio is None else f"{ratio:.2f}x", target_text, met, checks)


def _table(header: Row, rows: list[Row]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "| " + " | ".join(f"{{:{w}}}" for w in widths) + " |"
    out = [fmt.format(*header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [fmt.format(*row) for row in rows]
    return out


def _header(records: list[Record]) -> list[str]:
    first = records[0]
    machine = first.get("machine") or {}
    versions = first.get("versions") or {}
    return [
        f"Run {first.get('run_id')} ({first.get('date')}): sockway {first.get('sockway')}, Python "
        f"{first.get('python')} (uvloop {versions.get('uvloop')}), Node {first.get('node')} (ws "
        f"{versions.get('ws')}, sockjs {versions.get('sockjs')}, socket.io {versions.get('socket.io')})",
        f"Machine: {machine.get('cpus')} x {machine.get('cpu')}, {machine.get('mem_gib')} GiB, Linux "
        f"{machine.get('kernel')}; server and load generator share it",
        "",
    ]


def _ratio_target(minimum: float) -> Target:
    return (f">= {minimum:g}x peer", lambda _a, r: r is not None and r >= minimum)


def _results(measured: list[Record]) -> list[Row]:
    rows: list[Row] = []

    def present(scenario: str, clients: int, transport: str) -> bool:
        return _find(measured, scenario=scenario, clients=clients, transport=transport) is not None

    def sizes(scenario: str) -> list[int]:
        return sorted({r["clients"] for r in measured if r["scenario"] == scenario})

    for clients in sizes("fanout"):
        for transport in ("raw", "sockjs"):
            if present("fanout", clients, transport):
                rows.append(_comparison(measured, "fanout", clients, transport, "deliveries_per_s",
                                        f"fan-out {clients:,} clients, deliveries/s", "", _ratio_target(5)))
    for clients in sizes("echo"):
        for transport in ("raw", "sockjs"):
            if not present("echo", clients, transport):
                continue
            raw = transport == "raw"
            rows.append(_comparison(measured, "echo", clients, transport, "round_trips_per_s",
                                    f"echo {clients} clients, round trips/s", "",
                                    _ratio_target(0.9) if raw else None))
            rows.append(_comparison(measured, "echo", clients, transport, "p50_ms",
                                    f"echo {clients} clients, p50 latency", " ms", None))
            rows.append(_comparison(measured, "echo", clients, transport, "p99_ms",
                                    f"echo {clients} clients, p99 latency", " ms",
                                    ("<= 1.5x peer", lambda _a, r: r is not None and r <= 1.5)
                                    if raw else None))
    for clients in sizes("idle"):
        for transport in ("raw", "sockjs"):
            if present("idle", clients, transport):
                rows.append(_comparison(measured, "idle", clients, transport, "kib_per_connection",
                                        f"idle {clients:,} connections, RSS per connection", " KiB",
                                        ("<= 12 KiB", lambda a, _r: a <= 12) if transport == "raw" else None))
    return rows


def _calibration(records: list[Record], measured: list[Record]) -> list[Row]:
    rows: list[Row] = []
    for record in records:
        if not record.get("calibration") or record["scenario"] not in ("fanout", "echo"):
            continue
        transport = record["transport"]
        key = "deliveries_per_s" if record["scenario"] == "fanout" else "round_trips_per_s"
        best = max((r.get(key) or 0 for r in measured
                    if r["scenario"] == record["scenario"] and r["transport"] == transport), default=0)
        ceiling = record.get(key)
        what = "deliveries/s" if record["scenario"] == "fanout" else "round trips/s"
        rows.append((f"{record['scenario']} {record['clients']:,} clients, {what}", TRANSPORT[transport],
                     _num(ceiling), _num(best or None),
                     f"{ceiling / best:.1f}x" if ceiling and best else "-", _checks(record)))
    return rows


def _cpu(records: list[Record]) -> list[Row]:
    rows: list[Row] = []
    for record in records:
        if record["scenario"] not in ("fanout", "echo"):
            continue
        value = record.get("deliveries_per_s") or record.get("round_trips_per_s")
        per_cpu = record.get("deliveries_per_server_cpu_s") or record.get("round_trips_per_server_cpu_s")
        rows.append((
            f"{record['scenario']} {record['clients']:,}", record["server"], TRANSPORT[record["transport"]],
            _num(value), _num(per_cpu), _num(record.get("seconds"), " s"),
            _pct(record.get("server_cpu_util")), _pct(record.get("gen_cpu_util")), _headroom(record),
            _pct(record.get("other_cpu_util")) + (" DISTURBED" if record.get("disturbed") else "")))
    return rows


def render(records: list[Record]) -> str:
    if not records:
        return "no measurements"
    collapsed = collapse(records)
    measured = [r for r in collapsed if not r.get("calibration")]
    lines: list[str] = _header(records)
    rows = _results(measured)
    if rows:
        lines.append("Results (ratio = sockway / peer; targets reported, not asserted)")
        lines += _table(("measurement", "transport", "sockway", "peer", "ratio", "target", "met",
                         "checks"), rows)
    calibration = _calibration(collapsed, measured)
    if calibration:
        lines += ["", "Load generator calibration (the same scenario against the blaster, a server "
                      "that does almost nothing)"]
        lines += _table(("measurement", "transport", "generator ceiling", "best server", "headroom",
                         "checks"), calibration)
    cpu = _cpu(collapsed)
    if cpu:
        lines += ["", "CPU in each measured window (100% = one core; echo rounds: medians). Rate per "
                      "server CPU-second is less sensitive to other processes; generator headroom = "
                      "1 / generator CPU."]
        lines += _table(("scenario", "server", "transport", "rate/s", "per server CPU-s", "window",
                         "server CPU", "generator CPU", "generator headroom", "other processes"), cpu)
    lines += render_storms(collapsed)
    lines += render_pubsub(collapsed)
    lines += render_abuse(collapsed)
    return "\n".join(lines)
