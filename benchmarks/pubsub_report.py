"""Tables of the bridge and scale-out scenarios (see pubsub.py), appended to the report."""

from __future__ import annotations

from typing import Any

__all__ = ["render_pubsub"]

Record = dict[str, Any]
Row = tuple[str, ...]

PATH_TITLES = {
    "zmq-push": "ZeroMQ PUSH -> [zeromq] pull",
    "zmq-pub": "ZeroMQ PUB -> [zeromq] sub",
    "http": "HTTP /api/publish",
    "http-batch": "HTTP /api/commands",
    "edge-broadcast": "client -> broadcast endpoint",
    "edge-channel": "client -> channel (op publish)",
}


def _num(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def _pct(value: Any) -> str:
    return f"{100 * value:.0f}%" if isinstance(value, int | float) else "-"


def _ms(a: Any, b: Any) -> str:
    def one(v: Any) -> str:
        if not isinstance(v, int | float):
            return "-"
        return f"{v:.3g}" if v < 100 else f"{v:.0f}"

    return f"{one(a)} / {one(b)} ms" if isinstance(a, int | float) else "-"


def _ratio(a: Any, b: Any) -> str:
    if isinstance(a, int | float) and isinstance(b, int | float) and b:
        return f"{a / b:.2f}x"
    return "-"


def _table(header: Row, rows: list[Row]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "| " + " | ".join(f"{{:{w}}}" for w in widths) + " |"
    return [fmt.format(*header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt.format(*r) for r in rows]


def _checks(record: Record) -> str:
    parts = []
    if record.get("delivered") is not None:
        parts.append(f"losses {record.get('losses')}")
        parts.append("order kept" if record.get("order_ok") and not record.get("offset_gaps") else "ORDER BROKEN")
        if record.get("duplicates"):
            parts.append(f"{record['duplicates']} duplicates")
    if not record.get("ok"):
        parts.append("FAILED: " + str(record.get("error"))[:90].replace("\n", " "))
    if record.get("disturbed"):
        worst = max(record.get("other_cpu_util") or 0, record.get("paced_other_cpu_util") or 0)
        parts.append(f"DISTURBED (others {100 * worst:.0f}% CPU)")
    return ", ".join(parts) or "ok"


def _others(record: Record) -> str:
    """Other processes' CPU in the full-speed window / in the paced phase."""
    text = _pct(record.get("other_cpu_util"))
    if isinstance(record.get("paced_other_cpu_util"), int | float):
        text += " / " + _pct(record["paced_other_cpu_util"])
    return text + (" DISTURBED" if record.get("disturbed") else "")


def _cpu(record: Record, name: str) -> Any:
    return (record.get("cpu") or {}).get(name)


def _paced_title(records: list[Record]) -> str:
    rates = sorted({(r["clients"], r.get("paced_rate")) for r in records if r.get("paced_messages")})
    if not rates:
        return "p50 / p99 paced"
    deliveries = max(c * (rate or 0) for c, rate in rates)
    return (f"p50 / p99 paced ({_num(deliveries)} deliveries/s: "
            + ", ".join(f"{_num(rate)}/s to {c:,}" for c, rate in rates) + ")")


def _bridge(records: list[Record]) -> list[str]:
    measured = [r for r in records if r.get("scenario") == "bridge" and not r.get("calibration")]
    if not measured:
        return []
    lines = ["", "Bridge: publications into one channel, N subscribers on raw WebSocket; the edge paths are the "
                 "comparison, from the same run",
             "(published/s by the publisher: ZeroMQ sends, HTTP answers, client sends; by the gateway: the first "
             "subscriber had it; latency: publish -> receive, every delivery)"]
    rows: list[Row] = []
    cpu_rows: list[Row] = []
    for clients in sorted({r["clients"] for r in measured}):
        group = [r for r in measured if r["clients"] == clients]
        edge = next((r for r in group if r.get("path") == "edge-broadcast"), None)
        base = edge.get("deliveries_per_s") if edge else None
        for r in group:
            publisher = r.get("publisher_acked_per_s") or r.get("sent_per_s")
            rows.append((
                f"{clients:,}", PATH_TITLES.get(r.get("path", ""), r.get("path", "?")), _num(publisher),
                _num(r.get("gateway_published_per_s")), _num(r.get("deliveries_per_s")),
                _ratio(r.get("deliveries_per_s"), base), _ms(r.get("p50_ms"), r.get("p99_ms")),
                _ms(r.get("paced_p50_ms"), r.get("paced_p99_ms")),
                _ms(r.get("paced_ingest_p50_ms"), r.get("paced_ingest_p99_ms")), _num(r.get("deliveries_per_write")),
                _checks(r)))
            cpu_rows.append((
                f"{clients:,}", r.get("path", "?"), _num(r.get("seconds")) + " s",
                _pct(_cpu(r, "sockway")), _pct(_cpu(r, "publisher")), _pct(r.get("gen_cpu_util")),
                _others(r),
                _pct(r.get("machine_cpu_util")), _pct(r.get("publisher_window_wait_share")),
                _num(r.get("deliveries_per_server_cpu_s"))))
    lines += _table(("subscribers", "path", "published/s (publisher)", "published/s (gateway)", "deliveries/s",
                     "vs edge broadcast", "p50 / p99 full speed", _paced_title(measured),
                     "paced: to the first subscriber", "deliveries per write", "checks"), rows)
    lines += ["", "Bridge: CPU in the full-speed window (100% = one core); 'publisher waited' = share of the window "
                  "the publisher was blocked on its window of unseen messages (it could have sent faster)"]
    lines += _table(("subscribers", "path", "window", "gateway", "publisher", "generator", "others (full / paced)",
                     "whole machine", "publisher waited", "deliveries per gateway CPU-s"), cpu_rows)
    return lines


def _scaleout(records: list[Record]) -> list[str]:
    measured = [r for r in records if r.get("scenario") == "scaleout"]
    if not measured:
        return []
    lines = ["", "Scale-out: one channel, N clients spread by SO_REUSEPORT over the nodes (sockway serve --workers), "
                 "client 0 publishing (op publish); broker, nodes and generator share the 2 cores"]
    rows: list[Row] = []
    cpu_rows: list[Row] = []
    for clients in sorted({r["clients"] for r in measured}):
        group = [r for r in measured if r["clients"] == clients]
        memory = next((r for r in group if r.get("broker") == "memory"), None)
        for r in group:
            single = next((x for x in group if x.get("broker") == r.get("broker") and x.get("nodes") == 1), None)
            per_process = r.get("clients_per_process") or {}
            per_node = r.get("clients_per_node") or {}
            if per_process:
                cpu = r.get("cpu") or {}
                spread = " + ".join(f"{n:,} ({_pct(cpu.get(label))})" for label, n in sorted(per_process.items()))
            else:
                spread = " + ".join(f"{n:,}" for n in sorted(per_node.values(), reverse=True)) if per_node else "-"
            rows.append((
                f"{clients:,}", r.get("broker", "?"), str(r.get("nodes")), _num(r.get("deliveries_per_s")),
                _ratio(r.get("deliveries_per_s"), single.get("deliveries_per_s") if single else None)
                if r.get("nodes", 1) > 1 else "-",
                _ratio(r.get("deliveries_per_s"), memory.get("deliveries_per_s") if memory else None),
                _ms(r.get("p50_ms"), r.get("p99_ms")), _ms(r.get("paced_p50_ms"), r.get("paced_p99_ms")),
                spread, _checks(r)))
            cpu = r.get("cpu") or {}
            nodes = [cpu.get(k) for k in sorted(cpu) if k.startswith("sockway") and k != "sockway-parent"]
            broker = next((v for k, v in cpu.items() if k.endswith("-server")), None)
            cpu_rows.append((
                f"{clients:,}", r.get("broker", "?"), str(r.get("nodes")), _num(r.get("seconds")) + " s",
                " + ".join(_pct(v) for v in nodes) or "-", _pct(broker), _pct(r.get("gen_cpu_util")),
                _others(r), _pct(r.get("machine_cpu_util")), _num(r.get("deliveries_per_server_cpu_s")),
                _num(r.get("deliveries_per_write"))))
    lines += _table(("clients", "broker", "nodes", "deliveries/s", "vs 1 node", "vs memory 1 node",
                     "p50 / p99 full speed", _paced_title(measured), "clients (CPU) per node", "checks"), rows)
    lines += ["", "Scale-out: CPU in the full-speed window (100% = one core; 200% = the whole machine)"]
    lines += _table(("clients", "broker", "nodes", "window", "gateway node(s)", "broker", "generator",
                     "others (full / paced)", "whole machine", "deliveries per gateway CPU-s",
                     "deliveries per write (1 node)"), cpu_rows)
    return lines


def _calibrations(records: list[Record]) -> list[str]:
    calibration = [r for r in records if r.get("scenario") == "bridge" and r.get("calibration")]
    measured = [r for r in records if r.get("scenario") in ("bridge", "scaleout") and not r.get("calibration")]
    lines: list[str] = []
    generator = [r for r in calibration if r.get("path") == "generator"]
    if generator:
        lines += ["", "Generator calibration (bridge and scale-out): gen/subscribers.js against "
                      "gen/channel_blaster.js, which writes all the channel envelopes to every client in one write"]
        rows: list[Row] = []
        for r in generator:
            best = max((m.get("deliveries_per_s") or 0 for m in measured), default=0)
            gen_s = (r.get("gen_cpu_util") or 0) * (r.get("window_s") or 0)
            per_cpu = r["delivered"] / gen_s if gen_s and r.get("delivered") else None
            rows.append((f"{r['clients']:,} subscribers, deliveries/s", _num(r.get("deliveries_per_s")),
                         _num(best or None), _ratio(r.get("deliveries_per_s"), best or None),
                         _pct(r.get("gen_cpu_util")), _num(per_cpu), _checks(r)))
        lines += _table(("measurement", "generator ceiling", "best measured", "headroom", "generator CPU",
                         "per generator CPU-s", "checks"), rows)
    publisher = [r for r in calibration if r.get("path") != "generator"]
    if publisher:
        lines += ["", "Bridge publisher calibration: the same publisher with no window against benchmarks/sink.py "
                      "(answers at once, drains ZeroMQ): its ceiling"]
        rows = []
        for r in publisher:
            path = r.get("path", "")
            ceiling = r.get("acked_per_s") if path.startswith("http") else r.get("published_per_s")
            best = max((m.get("gateway_published_per_s") or 0 for m in measured if m.get("path") == path),
                       default=0)
            rows.append((PATH_TITLES.get(path, path), _num(r.get("messages")), _num(ceiling), _num(best or None),
                         _ratio(ceiling, best or None), _pct(_cpu(r, "publisher")), _pct(_cpu(r, "sink")),
                         _checks(r)))
        lines += _table(("path", "messages", "publisher ceiling/s", "best through the gateway/s", "headroom",
                         "publisher CPU", "sink CPU", "checks"), rows)
    return lines


def render_pubsub(records: list[Record]) -> list[str]:
    return _bridge(records) + _scaleout(records) + _calibrations(records)
