"""The HTTP API: the application's commands over plain HTTP, key-protected.

Every endpoint takes and returns JSON, but one: ``POST /api/broadcast?endpoint=<prefix>``
takes the message itself as the body, whatever its Content-Type, and broadcasts it byte
for byte (:func:`~sockway.bridge.commands.message_data`), as a one-frame ZeroMQ message
is. Success: ``200 {"result": ...}``. Failure: the
status of the error and ``{"error": {"code": ..., "message": ...}}``. The OpenAPI 3.1
description is served at ``/api/openapi.json`` (no key needed) and checked against the
running server by the test suite.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

from aiohttp import web

from sockway import __version__
from sockway.bridge.commands import MAX_DATA, CommandError, message_data
from sockway.bridge.events import encode_json
from sockway.bridge.schema import openapi_components
from sockway.edge.body import BodyError, read_body
from sockway.jsonutil import loads

if TYPE_CHECKING:
    from sockway.hub.hub import Hub

__all__ = ["add_api_routes", "key_matches", "openapi_document"]

MAX_BODY = 4 << 20
COMMAND_ROUTES = ("publish", "broadcast", "send", "subscribe", "unsubscribe", "close",
                  "presence", "history", "accept", "reply")
"""Commands with their own route (``POST /api/<op>``); every command, these included,
also runs through ``POST /api/commands``."""


def _json(status: int, body: Any) -> web.Response:
    """A JSON response, valid UTF-8 even when it carries strings a SockJS client sent with
    lone surrogates (see bridge.events.encode_json)."""
    return web.Response(status=status, body=encode_json(body), content_type="application/json")


def _error(status: int, code: str, message: str, headers: dict | None = None) -> web.Response:
    response = _json(status, {"error": {"code": code, "message": message}})
    if headers:
        response.headers.update(headers)
    if status == 408:
        response.force_close()  # the rest of a body this slow is not waited for
    return response


def key_matches(request: web.BaseRequest, key: bytes, *, query: bool = False) -> bool:
    """Whether the request carries ``key``: in ``X-API-Key`` (or, when ``query``, as
    ``?key=``), else as ``Authorization: Bearer <key>``; compared in constant time.

    aiohttp decodes header values as UTF-8 with ``surrogateescape``: a value that is not
    UTF-8 comes as a string with lone surrogates, which a plain ``encode()`` refuses. It
    is encoded back the same way, to the bytes the client sent: a wrong key (401), never
    an error."""
    supplied = request.headers.get("X-API-Key")
    if not supplied and query:
        supplied = request.query.get("key")
    if supplied is None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        supplied = value.strip() if scheme.lower() == "bearer" else None
    if supplied is None:
        return False
    return hmac.compare_digest(supplied.encode("utf-8", "surrogateescape"), key)


class Api:
    def __init__(self, hub: Hub, key: str) -> None:
        self.hub = hub
        self.key = key.encode()

    def authorized(self, request: web.Request) -> bool:
        return key_matches(request, self.key)

    async def _body(self, request: web.Request) -> Any:
        """The whole body (at most MAX_BODY bytes, within the server's body_timeout), parsed."""
        try:
            raw = await read_body(request, MAX_BODY, self.hub.config.body_timeout)
        except BodyError as exc:
            raise CommandError("too_large" if exc.status == 413 else "timeout", exc.message, exc.status) from None
        if not raw:
            raise CommandError("bad_request", "the body must be a JSON object")
        try:
            return loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise CommandError("bad_request", "the body is not valid JSON") from None
        except RecursionError:
            raise CommandError("bad_request", "the body is nested too deeply") from None

    async def _raw_body(self, request: web.Request) -> bytes:
        """The whole body as it is (at most MAX_DATA bytes, the data limit of a broadcast)."""
        try:
            return await read_body(request, MAX_DATA, self.hub.config.body_timeout)
        except BodyError as exc:
            raise CommandError("too_large" if exc.status == 413 else "timeout", exc.message, exc.status) from None

    def command_handler(self, op: str):
        async def handle(request: web.Request) -> web.Response:
            if not self.authorized(request):
                return _error(401, "unauthorized", "send the API key as 'Authorization: Bearer <key>'"
                              " or 'X-API-Key: <key>'", {"WWW-Authenticate": "Bearer"})
            try:
                if request.method == "GET":
                    body: Any = dict(request.query)
                    if "limit" in body:
                        try:
                            body["limit"] = int(body["limit"])
                        except ValueError:
                            raise CommandError("bad_request", "'limit' must be an integer") from None
                elif op == "broadcast" and "endpoint" in request.query:
                    # The endpoint in the URL: the body is the message, byte for byte.
                    raw = await self._raw_body(request)
                    body = {"endpoint": request.query["endpoint"], "data": message_data(raw)}
                else:
                    body = await self._body(request)
                if not isinstance(body, dict):
                    raise CommandError("bad_request", "the body must be a JSON object")
                if "op" in body and body["op"] != op:
                    raise CommandError("bad_request", f"'op' is {body['op']!r} but this is /api/{op}")
                result = await self.hub.commands.execute({**body, "op": op})
            except CommandError as exc:
                return _error(exc.status, exc.code, exc.message)
            return _json(200, {"result": result})

        return handle

    async def commands(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return _error(401, "unauthorized", "send the API key as 'Authorization: Bearer <key>'",
                          {"WWW-Authenticate": "Bearer"})
        try:
            body = await self._body(request)
        except CommandError as exc:
            return _error(exc.status, exc.code, exc.message)
        if not isinstance(body, list):
            return _error(400, "bad_request", "the body must be a JSON array of commands")
        if len(body) > 1000:
            return _error(413, "too_large", "at most 1000 commands per request")
        return _json(200, {"results": await self.hub.commands.execute_many(body)})

    async def stats(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return _error(401, "unauthorized", "send the API key as 'Authorization: Bearer <key>'",
                          {"WWW-Authenticate": "Bearer"})
        return _json(200, {"result": self.hub.stats_dict()})

    async def openapi(self, request: web.Request) -> web.Response:
        return _json(200, openapi_document())


def add_api_routes(app: web.Application, hub: Hub, key: str) -> None:
    api = Api(hub, key)
    methods: dict[str, str] = {}
    for op in COMMAND_ROUTES:
        app.router.add_post(f"/api/{op}", api.command_handler(op))
        methods[f"/api/{op}"] = "POST"
    for path, handler in (("/api/presence", api.command_handler("presence")),
                          ("/api/history", api.command_handler("history")),
                          ("/api/stats", api.stats), ("/api/openapi.json", api.openapi)):
        app.router.add_get(path, handler)
        methods[path] = "GET, HEAD"
    app.router.add_post("/api/commands", api.commands)
    methods["/api/commands"] = "POST"

    async def elsewhere(request: web.Request) -> web.Response:
        """Any other method or path under /api/: a JSON error like every other API
        answer (not the web server's plain-text page, nor a static file lookup)."""
        allowed = methods.get(request.path)
        if allowed is not None:
            return _error(405, "method_not_allowed", f"{request.path} takes {allowed.split(',')[0]}, "
                          f"not {request.method}", {"Allow": allowed})
        return _error(404, "not_found", f"no API operation {request.path}: the operations are listed "
                      "in /api/openapi.json")

    # Registered after the operations: aiohttp tries resources in order, and a request whose
    # path matched one with another method goes on to the next one.
    app.router.add_route("*", "/api/{rest:.*}", elsewhere)


# -- the OpenAPI description ----------------------------------------------------------------
# Made from the commands' declarations (bridge.schema), which also validate them.


def _route_body(schema: dict) -> dict:
    """A command's schema as the body of its own route, where ``op`` may be left out."""
    body = dict(schema)
    body["required"] = [name for name in schema["required"] if name != "op"]
    return body


def openapi_document() -> dict:
    error = {"description": "Error", "content": {"application/json": {"schema": {
        "$ref": "#/components/schemas/Error"}}}}
    commands, schemas = openapi_components()
    paths: dict = {}
    for op in COMMAND_ROUTES:
        schema = _route_body(commands[op])
        paths[f"/api/{op}"] = {"post": {
            "summary": commands[op]["description"], "operationId": op,
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
            "responses": {
                "200": {"description": "Done", "content": {"application/json": {"schema": {
                    "$ref": "#/components/schemas/Result"}}}},
                "400": error, "401": error, "404": error, "409": error, "413": error,
            },
        }}
    broadcast = paths["/api/broadcast"]["post"]
    broadcast["description"] = (
        "With the `endpoint` query parameter, the body is not a command but the message "
        "itself, whatever its Content-Type: browsers receive it byte for byte (text when it "
        "is UTF-8, else binary data), at most 1 MiB.")
    broadcast["parameters"] = [{
        "name": "endpoint", "in": "query", "required": False,
        "schema": commands["broadcast"]["properties"]["endpoint"],
        "description": "the broadcast endpoint; the body is then the message itself"}]
    broadcast["requestBody"]["content"]["application/octet-stream"] = {
        "schema": {"type": "string", "format": "binary"}}
    broadcast["requestBody"]["content"]["text/plain"] = {
        "schema": {"type": "string"}}
    for op in ("presence", "history"):
        fields = commands[op]["properties"]
        params = [{"name": "channel", "in": "query", "required": True, "schema": fields["channel"]}]
        if op == "history":
            params.append({"name": "limit", "in": "query", "required": False,
                           "schema": fields["limit"]["anyOf"][0]})
        paths[f"/api/{op}"]["get"] = {
            "summary": commands[op]["description"], "operationId": f"{op}_get", "parameters": params,
            "responses": {"200": {"description": "Done", "content": {"application/json": {"schema": {
                "$ref": "#/components/schemas/Result"}}}}, "400": error, "401": error, "409": error},
        }
    paths["/api/commands"] = {"post": {
        "summary": "Run several commands in order.", "operationId": "commands",
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "array", "maxItems": 1000, "items": {
                "anyOf": [{"$ref": f"#/components/schemas/{commands[op]['title']}"} for op in commands],
                "discriminator": {"propertyName": "op", "mapping": {
                    op: f"#/components/schemas/{commands[op]['title']}" for op in commands}}}}}}},
        "responses": {"200": {"description": "One result or error per command", "content": {
            "application/json": {"schema": {"type": "object", "required": ["results"], "properties": {
                "results": {"type": "array"}}}}}}, "400": error, "401": error, "413": error},
    }}
    paths["/api/stats"] = {"get": {
        "summary": "Counters of this node.", "operationId": "stats",
        "responses": {"200": {"description": "Stats", "content": {"application/json": {"schema": {
            "$ref": "#/components/schemas/Result"}}}}, "401": error},
    }}
    return {
        "openapi": "3.1.0",
        "info": {"title": "sockway HTTP API", "version": __version__,
                 "description": "Commands from the application to the gateway."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"apiKey": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
            "schemas": {
                **schemas,
                "Result": {"type": "object", "required": ["result"],
                           "properties": {"result": {"type": "object"}}},
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
            },
        },
    }
