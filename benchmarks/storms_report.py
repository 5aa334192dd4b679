"""Tables of the steady-rate, connection storm and reconnect storm scenarios (see
storms.py), appended to the report: each server's figures and its ratio to Node ws's in the
same run."""

from __future__ import annotations

from typing import Any

from benchmarks.pubsub_report import _num, _pct, _table

__all__ = ["render_storms"]

Record = dict[str, Any]
Row = tuple[str, ...]

TRANSPORT = {"raw": "raw WS", "sockjs": "SockJS-WS", "socketio": "Socket.IO-WS"}
PEER = {"raw": "ws", "sockjs": "sockjs-node"}
SERVER_ORDER = {("sockway", "raw"): 0, ("ws", "raw"): 1, ("socket.io", "socketio"): 2, ("sockway", "sockjs"): 3,
                ("sockjs-node", "sockjs"): 4, ("blaster", "raw"): 5, ("blaster", "sockjs"): 6}


def _ms(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value:.3g} ms" if value < 100 else f"{value:,.0f} ms"


def _s(value: Any) -> str:
    return f"{value:.2f} s" if isinstance(value, int | float) else "-"


def _ratio(a: Any, b: Any) -> str:
    if isinstance(a, int | float) and isinstance(b, int | float) and b:
        return f"{a / b:.2f}x"
    return "-"


def _disturbed(record: Record) -> str:
    if record.get("disturbed"):
        return f" DISTURBED (others {100 * (record.get('other_cpu_util') or 0):.0f}% CPU)"
    return ""


def _sustained(record: Record | None) -> bool:
    return record is not None and bool(record.get("ok")) and not record.get("saturated")


def _steady(records: list[Record]) -> list[str]:
    steady = [r for r in records if r["scenario"] == "steady" and not r.get("calibration")]
    if not steady:
        return []
    rows: list[Row] = []
    loads = sorted({(r["clients"], r.get("rate") or 0) for r in steady})
    for clients, rate in loads:
        group = sorted((r for r in steady if r["clients"] == clients and r.get("rate") == rate),
                       key=lambda r: SERVER_ORDER.get((r["server"], r["transport"]), 9))
        ws = next((r for r in group if r["server"] == "ws"), None)
        for r in group:
            sustained = _sustained(r)
            if sustained:
                p50, p99, most = _ms(r.get("p50_ms")), _ms(r.get("p99_ms")), _ms(r.get("max_ms"))
            else:
                p50 = p99 = most = "saturated" if r.get("saturated") else "failed"
            if r["server"] == "ws":
                ratio = "1.00x" if sustained else "-"
            elif ws is None:
                ratio = "-"
            elif not _sustained(ws):
                ratio = "ws saturated" if ws.get("saturated") else "ws failed"
            else:
                ratio = _ratio(r.get("p99_ms"), ws.get("p99_ms")) if sustained else "-"
            notes = []
            if not r.get("ok"):
                notes.append("FAILED: " + str(r.get("error"))[:80].replace("\n", " "))
            elif r.get("saturated"):
                notes.append(str(r.get("saturated_reason"))[:80])
            notes.append(f"send lag p99 {_ms(r.get('send_lag_p99_ms'))}")
            rows.append((
                f"{clients:,} x {rate:,}/s", r["server"], TRANSPORT.get(r["transport"], r["transport"]),
                p50, p99, most, ratio, _num(r.get("losses")) if r.get("losses") is not None else "-",
                f"{_num(r.get('deliveries_per_s') if sustained else r.get('achieved_deliveries_per_s'))} / "
                f"{_num(r.get('offered_deliveries_per_s'))}",
                _pct(r.get("server_cpu_util")), _pct(r.get("gen_cpu_util")),
                _pct(r.get("other_cpu_util")) + _disturbed(r), "; ".join(notes)))
    bound = steady[0].get("bound_ms")
    lines = ["", f"Steady rate (a paced fan-out: latency = receive - send time of every delivery of the measured "
                 f"seconds; 'saturated': deliveries fell more than {_num(bound)} ms of the rate behind, or p99 "
                 f"passed {_num(bound)} ms; p99 vs ws = this p99 / ws's at the same load; delivered/s of a "
                 "saturated server: every delivery, warm-up included, from the first send to the last delivery)"]
    lines += _table(("load", "server", "transport", "p50", "p99", "max", "p99 vs ws", "lost",
                     "delivered/s / offered", "server CPU", "generator CPU", "other processes", "notes"), rows)
    calibration = [r for r in records if r["scenario"] == "steady" and r.get("calibration")]
    if calibration:
        crow: list[Row] = []
        for r in calibration:
            crow.append((f"{r['clients']:,} x {r.get('rate'):,}/s", TRANSPORT.get(r["transport"], r["transport"]),
                         "saturated" if r.get("saturated") else _ms(r.get("p99_ms")),
                         f"{_num(r.get('deliveries_per_s'))} / {_num(r.get('offered_deliveries_per_s'))}",
                         _pct(r.get("server_cpu_util")), _pct(r.get("gen_cpu_util")),
                         "ok" if r.get("ok") else "FAILED: " + str(r.get("error"))[:60]))
        lines += ["", "Steady rate against the blaster's relay (a server that does almost nothing, messages of one "
                      "event-loop turn in one write): what the generator and this machine sustain"]
        lines += _table(("load", "transport", "p99", "delivered/s / offered", "blaster CPU", "generator CPU",
                         "checks"), crow)
    return lines


def _storm(records: list[Record]) -> list[str]:
    storm = [r for r in records if r["scenario"] == "storm"]
    if not storm:
        return []
    rows: list[Row] = []
    for r in sorted(storm, key=lambda r: (r["clients"], SERVER_ORDER.get((r["server"], r["transport"]), 9))):
        peer = None if r["server"] in PEER.values() or r["server"] == "blaster" else next(
            (p for p in storm if p["server"] == PEER.get(r["transport"]) and p["clients"] == r["clients"]), None)
        n = r.get("connections") or r["clients"]
        checks = [f"origin {'checked' if r.get('origin_checked') else 'NOT checked'}"]
        if r.get("subprotocol_chosen") is not None:
            checks.append(f"subprotocol {_num(r.get('subprotocol_chosen'))}/{_num(n)}")
        checks.append(f"deflate {_num(r.get('deflate_negotiated'))}/{_num(n)}")
        if not r.get("ok"):
            checks.append("FAILED: " + str(r.get("error"))[:70].replace("\n", " "))
        if (r.get("rounds") or 1) > 1:
            checks.append(f"median of {r.get('rounds_used')}/{r['rounds']} rounds")
        rows.append((
            f"{r['clients']:,}" + (" (calibration)" if r.get("calibration") else ""), r["server"],
            TRANSPORT.get(r["transport"], r["transport"]), _num(r.get("connects_per_s")),
            _ratio(r.get("connects_per_s"), peer.get("connects_per_s")) + f" {peer['server']}" if peer else "-",
            _num(r.get("server_us_per_connect")),
            _ratio(r.get("server_us_per_connect"), peer.get("server_us_per_connect")) if peer else "-",
            _num(r.get("gen_us_per_connect")), f"{_ms(r.get('handshake_p50_ms'))} / {_ms(r.get('handshake_p99_ms'))}",
            _pct(r.get("server_cpu_util")), _pct(r.get("other_cpu_util")) + _disturbed(r), ", ".join(checks)))
    lines = ["", "Connection storm (connections opened as fast as the server accepts them, at most 256 handshakes in "
                 "progress, with Origin, a subprotocol and a permessage-deflate offer; CPU from /proc over the window)"]
    lines += _table(("connections", "server", "transport", "connects/s", "vs peer", "server us/connect",
                     "us vs peer", "generator us/connect", "handshake p50 / p99", "server CPU", "other processes",
                     "checks"), rows)
    return lines


def _reconnect(records: list[Record]) -> list[str]:
    found = [r for r in records if r["scenario"] == "reconnect"]
    if not found:
        return []
    ws = next((r for r in found if r["server"] == "ws"), None)
    rows: list[Row] = []
    for r in found:
        lost = "-"
        if r["server"] == "sockway":
            lost = (f"{_num(r.get('losses'))} of {_num(r.get('published'))} x {r['clients']:,}, "
                    f"{_num(r.get('unrecovered'))} not recovered, {_num(r.get('repeated_offsets'))} repeated "
                    "offsets skipped")
        checks = "ok" if r.get("ok") else "FAILED: " + str(r.get("error"))[:90].replace("\n", " ")
        rows.append((
            r["server"], f"{r['clients']:,}", _s(r.get("shutdown_s")), _s(r.get("accept_s")),
            _s(r.get("reconnect_s")), _s(r.get("back_s")),
            _ratio(r.get("back_s"), ws.get("back_s")) if ws and r is not ws else "-", _s(r.get("total_s")),
            _ratio(r.get("total_s"), ws.get("total_s")) if ws and r is not ws else "-",
            _num(r.get("server_us_per_reconnect")), _num(r.get("retries")), lost, checks))
    lines = ["", "Reconnect storm (SIGTERM, the same command on the same port; clients come back as soon as it "
                 "accepts; sockway: subscribers resubscribe from their last offset while a publisher on a second "
                 "node keeps publishing; back = connected, and for sockway recovered)"]
    lines += _table(("server", "clients", "SIGTERM -> exited", "started -> accepting", "accepting -> all connected",
                     "accepting -> all back", "back vs ws", "SIGTERM -> all back", "total vs ws",
                     "server us/reconnect", "retries", "lost", "checks"), rows)
    return lines


def render_storms(records: list[Record]) -> list[str]:
    return _steady(records) + _storm(records) + _reconnect(records)
