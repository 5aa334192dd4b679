"""Prometheus metrics (``/metrics``), read from the hub's own counters at scrape time.

Nothing is added to the hot paths for this: connections and endpoints keep plain
integer counters (which the stats API and the dashboard read too), and a custom
collector turns them into metric families when Prometheus scrapes. The one histogram,
command latency, is observed once per application command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from sockway.hub.message import ENCODINGS

if TYPE_CHECKING:
    from sockway.hub.hub import Hub

__all__ = ["Metrics"]


class _HubCollector:
    def __init__(self, hub: Hub, extra) -> None:
        self.hub = hub
        self.extra = extra
        self.seen: dict[str, set[str]] = {}
        """Transports seen per endpoint: their gauge stays, at 0, once the last one closes
        (a series that vanishes would read as "no data" rather than "no connections")."""

    def collect(self):
        hub = self.hub
        connections = GaugeMetricFamily("sockway_connections", "Open connections.",
                                        labels=["endpoint", "transport"])
        received = CounterMetricFamily("sockway_messages_received", "Messages received from clients.",
                                       labels=["endpoint"])
        bytes_in = CounterMetricFamily("sockway_bytes_received", "Bytes read from clients.", labels=["endpoint"])
        bytes_out = CounterMetricFamily("sockway_bytes_sent", "Bytes written to clients.", labels=["endpoint"])
        opened = CounterMetricFamily("sockway_connections_opened", "Connections opened.", labels=["endpoint"])
        closed = CounterMetricFamily("sockway_connections_closed", "Connections closed.", labels=["endpoint"])
        for prefix, endpoint in hub.endpoints.items():
            seen = self.seen.setdefault(prefix, set())
            counts = dict.fromkeys(seen, 0)
            for conn in endpoint.clients:
                counts[conn.transport_name] = counts.get(conn.transport_name, 0) + 1
            seen.update(counts)
            for transport, count in sorted(counts.items()):
                connections.add_metric([prefix, transport], count)
            received.add_metric([prefix], endpoint.messages_in)
            bytes_in.add_metric([prefix], endpoint.bytes_in)
            bytes_out.add_metric([prefix], endpoint.bytes_out)
            opened.add_metric([prefix], endpoint.opened_total)
            closed.add_metric([prefix], endpoint.closed_total)
        yield from (connections, received, bytes_in, bytes_out, opened, closed)

        channels = hub.channels
        yield GaugeMetricFamily("sockway_channels", "Channels with subscribers on this node.",
                                value=len(channels.channels))
        yield CounterMetricFamily("sockway_publications", "Channel publications delivered to this node.",
                                  value=channels.publications)
        yield CounterMetricFamily("sockway_deliveries", "Messages queued for clients by channel fan-out.",
                                  value=channels.deliveries)
        yield CounterMetricFamily("sockway_writes", "Coalesced writes to clients.", value=hub.coalescer.writes)
        encodings = CounterMetricFamily("sockway_encodings", "Message encodings made (once per message, "
                                        "not per recipient).", labels=["encoding"])
        for kind, count in ENCODINGS.items():
            encodings.add_metric([kind], count)
        yield encodings
        stats = hub.stats
        yield CounterMetricFamily("sockway_slow_consumer_closes", "Clients closed for not reading (4008/4009).",
                                  value=stats.slow_consumers)
        yield CounterMetricFamily("sockway_rate_limited_closes", "Clients closed by the rate limit (4029).",
                                  value=stats.rate_limited)
        yield CounterMetricFamily("sockway_auth_failures", "Connections refused for authentication.",
                                  value=stats.auth_failures)
        yield CounterMetricFamily("sockway_rejected_connections", "Connections refused by limits (503).",
                                  value=stats.rejected_connections)

        events = hub.events
        yield CounterMetricFamily("sockway_events_emitted", "Application events emitted.", value=events.emitted)
        queued = GaugeMetricFamily("sockway_event_queue_length", "Events waiting per output.", labels=["output"])
        dropped = CounterMetricFamily("sockway_events_dropped", "Events dropped, queue full.", labels=["output"])
        sent = CounterMetricFamily("sockway_events_sent", "Events handed to the output.", labels=["output"])
        failed = CounterMetricFamily("sockway_events_failed", "Events the output gave up on (webhook batches "
                                     "past max_retries or refused with a 4xx).", labels=["output"])
        for queue in events.queues:
            queued.add_metric([queue.name], len(queue))
            dropped.add_metric([queue.name], queue.dropped)
            sent.add_metric([queue.name], queue.sent)
            failed.add_metric([queue.name], queue.failed)
        yield from (queued, dropped, sent, failed)

        commands = CounterMetricFamily("sockway_commands", "Application commands.", labels=["result"])
        commands.add_metric(["ok"], hub.commands.executed)
        commands.add_metric(["error"], hub.commands.failed)
        yield commands

        broker = hub.broker
        up = GaugeMetricFamily("sockway_broker_up", "1 when the broker is reachable.", labels=["engine"])
        up.add_metric([broker.name], 1 if broker.ready else 0)
        yield up
        yield from self.extra()


class Metrics:
    """A registry of its own (not the process-wide default), so that several gateways
    in one process (tests) do not collide."""

    def __init__(self, hub: Hub, extra=lambda: ()) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_HubCollector(hub, extra))
        self.command_latency = Histogram(
            "sockway_command_duration_seconds", "Time to execute an application command.",
            registry=self.registry,
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
