"""Webhooks: application events POSTed in batches to the application's URL.

Each request is ``POST <url>`` with ``{"events": [...]}`` (at most ``batch_size``), and
``X-Sockway-Signature: sha256=<hex HMAC-SHA256 of the body>`` when a secret is set. The
response's body may carry commands, run in order::

    {"commands": [{"op": "send", "conn": "...", "data": "welcome"}, ...]}

so that a plain blocking web application (PHP's built-in server, Flask) is a complete
backend with no queue at all. One batch is in flight at a time, so events keep their
order. A failure (network error, timeout, 5xx, 429) is retried with exponential backoff
(0.2 s doubling, at most 10 s between attempts) up to ``max_retries`` times; then the
batch is dropped and counted. With ``max_retries = -1`` it is retried until the
application takes it: nothing is dropped, and events wait meanwhile in the bounded
queue (``event_queue_size``; past it new events are dropped and counted). Other 4xx
answers are not retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import logging
from typing import TYPE_CHECKING

import aiohttp

from sockway import __version__
from sockway.jsonutil import loads

if TYPE_CHECKING:
    from sockway.config import WebhookConfig
    from sockway.hub.hub import Hub

__all__ = ["WebhookSender", "sign"]

log = logging.getLogger("sockway.webhooks")


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookSender:
    def __init__(self, hub: Hub, config: WebhookConfig) -> None:
        self.hub = hub
        self.config = config
        self.queue = hub.events.add_queue("webhook")
        self.task: asyncio.Task | None = None
        self.session: aiohttp.ClientSession | None = None
        self.delivered = 0
        self.failed_batches = 0
        self.retries = 0
        self.commands_run = 0
        self.last_error = ""
        self.last_attempts = 0

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            headers={"User-Agent": f"sockway/{__version__}"},
        )
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.session is not None:
            await self.session.close()

    async def _run(self) -> None:
        while True:
            await self.queue.wait()
            batch = self.queue.take(self.config.batch_size)
            body = b'{"events":[' + b",".join(data for _, data in batch) + b"]}"
            if await self._deliver(body, len(batch)):
                self.queue.sent += len(batch)
                self.delivered += len(batch)
            else:
                self.failed_batches += 1
                self.queue.failed += len(batch)
                log.error("webhook %s: dropped a batch of %d event(s) after %d attempt(s): %s",
                          self.config.url, len(batch), self.last_attempts, self.last_error)

    async def _deliver(self, body: bytes, count: int) -> bool:
        assert self.session is not None and self.config.url
        headers = {"Content-Type": "application/json", "X-Sockway-Node": self.hub.node_id,
                   "X-Sockway-Events": str(count)}
        if self.config.secret:
            headers["X-Sockway-Signature"] = sign(self.config.secret, body)
        delay = 0.2
        retries = self.config.max_retries
        for attempt in itertools.count() if retries < 0 else range(retries + 1):
            self.last_attempts = attempt + 1
            if attempt:
                self.retries += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            try:
                async with self.session.post(self.config.url, data=body, headers=headers) as response:
                    text = await response.read()
                    if 200 <= response.status < 300:
                        try:
                            await self._run_commands(text)
                        except Exception:  # a broken response must not stop the sender
                            log.exception("webhook %s: running the response's commands failed", self.config.url)
                        return True
                    self.last_error = f"HTTP {response.status}"
                    if response.status != 429 and response.status < 500:
                        log.error("webhook %s answered %d; not retrying", self.config.url, response.status)
                        return False
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("webhook %s: attempt %d failed: %s", self.config.url, attempt + 1, self.last_error)
        return False

    async def _run_commands(self, body: bytes) -> None:
        if not body.strip():
            return
        try:
            value = loads(body)
        except (ValueError, UnicodeDecodeError):
            log.warning("webhook %s: response body is not JSON; ignored", self.config.url)
            return
        commands = value.get("commands") if isinstance(value, dict) else None
        if commands is None:
            return
        if not isinstance(commands, list):
            log.warning("webhook %s: 'commands' must be a list; ignored", self.config.url)
            return
        for result in await self.hub.commands.execute_many(commands):
            self.commands_run += 1
            if "error" in result:
                log.warning("webhook %s: command refused: %s", self.config.url, result["error"]["message"])

    def stats(self) -> dict:
        return {"delivered": self.delivered, "failed_batches": self.failed_batches,
                "retries": self.retries, "commands": self.commands_run, "queued": len(self.queue)}
