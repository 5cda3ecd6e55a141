"""The HTTP front door: the webhook receiver and a small run API, as one ASGI application.

Install ``flowcraft-core[http]`` (Starlette and uvicorn: a small, well-kept ASGI toolkit and
server; no web framework on top, since six JSON routes need none). :func:`create_app` builds
the app on any distributed client (``open_adapter(url)``); ``flowcraft serve --backend URL``
runs it with uvicorn, and the same app mounts in a user's own ASGI application
(``Mount("/flowcraft", app=create_app(client, token=...))``).

Routes (JSON in and out; errors are ``{"error": "..."}``):

* ``POST <webhook path>/<endpoint id>``: a webhook delivery (:mod:`flowcraft.webhooks`),
  authenticated by its signature; 202 resumed, 200 duplicate, 401, 404, 410, 413.
* ``POST /runs`` ``{"blueprintId", "context"?, "runId"?}`` -> 201 ``{"runId"}``
* ``GET /runs?cursor=&limit=`` -> ``{"runs": [...], "cursor"}`` (runs that are not final)
* ``GET /runs/{id}`` -> the run's status; ``GET /runs/{id}/result?wait=S`` -> 200 with the
  final result, or 202 with the status when it is not final after ``S`` seconds (long poll)
* ``POST /runs/{id}/resume`` ``{"nodeId"?, "output"?, "action"?}`` -> 202; 409 when not awaiting
* ``POST /runs/{id}/cancel`` -> ``{"cancelled": bool}``
* ``GET /openapi.json``, ``GET /healthz``

The run API needs ``Authorization: Bearer <token>``; without a ``token`` it is not served at
all (only webhooks and health are).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .errors import FlowcraftError, ResumeError
from .state import FINAL_STATUSES
from .webhooks import DEFAULT_MAX_BODY, DEFAULT_TOLERANCE, WebhookReceiver

if TYPE_CHECKING:
    from .distributed.adapter import BaseDistributedAdapter

Handler = Callable[[Request], Awaitable[Response]]

MAX_WAIT = 60.0
"""Longest long poll of ``GET /runs/{id}/result?wait=`` (seconds)."""


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise _BadRequest(f"request body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _BadRequest("request body must be a JSON object")
    return doc


class _BadRequest(Exception):
    pass


def openapi(prefix: str = "") -> dict[str, Any]:
    """The OpenAPI 3.1 description of the run API and the webhook route."""
    schema = {"$ref": "#/components/schemas/Error"}
    err = {"description": "error", "content": {"application/json": {"schema": schema}}}
    run_id = {"name": "runId", "in": "path", "required": True, "schema": {"type": "string"}}
    sec: list[dict[str, list[str]]] = [{"bearer": []}]

    def op(summary: str, ok: str, *, body: str | None = None, **extra: Any) -> dict[str, Any]:
        o: dict[str, Any] = {
            "summary": summary,
            "security": sec,
            "responses": {ok: {"description": "ok"}, "401": err, "404": err},
        }
        if body:
            ref = {"$ref": f"#/components/schemas/{body}"}
            o["requestBody"] = {"content": {"application/json": {"schema": ref}}}
        o.update(extra)
        return o

    return {
        "openapi": "3.1.0",
        "info": {"title": "Flowcraft run API", "version": "1"},
        "paths": {
            f"{prefix}/runs": {
                "post": op("Start a run", "201", body="StartRun"),
                "get": op(
                    "List runs that are not final",
                    "200",
                    parameters=[
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                    ],
                ),
            },
            f"{prefix}/runs/{{runId}}": {"get": op("Run status", "200", parameters=[run_id])},
            f"{prefix}/runs/{{runId}}/result": {
                "get": op(
                    "Final result (long poll: 202 with the status when not final in time)",
                    "200",
                    parameters=[
                        run_id,
                        {"name": "wait", "in": "query", "schema": {"type": "number"}},
                    ],
                )
            },
            f"{prefix}/runs/{{runId}}/resume": {
                "post": op("Resume an awaiting node", "202", body="Resume", parameters=[run_id])
            },
            f"{prefix}/runs/{{runId}}/cancel": {
                "post": op("Cancel a run", "200", parameters=[run_id])
            },
            f"{prefix}/{{webhookPath}}/{{endpointId}}": {
                "post": {
                    "summary": "Deliver to a webhook node (signed: Flowcraft-Signature)",
                    "responses": {
                        "202": {"description": "resumed"},
                        "200": {"description": "duplicate delivery"},
                        "401": err,
                        "404": err,
                        "410": err,
                        "413": err,
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}},
                "StartRun": {
                    "type": "object",
                    "required": ["blueprintId"],
                    "properties": {
                        "blueprintId": {"type": "string"},
                        "context": {"type": "object"},
                        "runId": {"type": "string"},
                    },
                },
                "Resume": {
                    "type": "object",
                    "properties": {
                        "nodeId": {"type": "string"},
                        "output": {},
                        "action": {"type": "string"},
                    },
                },
            },
        },
    }


def create_app(
    client: BaseDistributedAdapter,
    *,
    token: str | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    tolerance: float = DEFAULT_TOLERANCE,
    env: Mapping[str, str] | None = None,
) -> Starlette:
    """The front door on ``client``: webhooks (always) and the run API (when ``token`` is
    set; requests must carry ``Authorization: Bearer <token>``). ``max_body``, ``tolerance``
    and ``env`` go to :class:`~flowcraft.webhooks.WebhookReceiver`."""
    receiver = WebhookReceiver(client, max_body=max_body, tolerance=tolerance, env=env)
    expected = f"Bearer {token}".encode() if token else None

    def api(fn: Callable[[Request], Awaitable[Response]]) -> Handler:
        async def wrapped(request: Request) -> Response:
            got = request.headers.get("authorization", "").encode()
            if expected is None or not hmac.compare_digest(got, expected):
                return _error(401, "missing or wrong bearer token")
            try:
                return await fn(request)
            except _BadRequest as exc:
                return _error(400, str(exc))
            except KeyError as exc:
                return _error(404, str(exc.args[0]) if exc.args else "not found")
            except ResumeError as exc:
                return _error(409, exc.message)
            except (FlowcraftError, ValueError) as exc:
                return _error(422, str(exc))

        return wrapped

    async def start(request: Request) -> Response:
        doc = await _json_body(request)
        bp = doc.get("blueprintId")
        if not isinstance(bp, str):
            raise _BadRequest("blueprintId (a string) is required")
        ctx = doc.get("context") or {}
        if not isinstance(ctx, dict):
            raise _BadRequest("context must be a JSON object")
        if bp not in client.runtime.blueprints:
            return _error(404, f"unknown blueprint {bp!r}")
        rid = await client.start_run(bp, ctx, run_id=doc.get("runId"))
        return JSONResponse({"runId": rid}, status_code=201)

    async def list_runs(request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit", "100"))
        except ValueError:
            raise _BadRequest("limit must be an integer") from None
        ids, cursor = await client.list_active_runs(request.query_params.get("cursor"), limit)
        return JSONResponse({"runs": ids, "cursor": cursor})

    async def status(request: Request) -> Response:
        st = await client.status(request.path_params["run_id"])
        return JSONResponse(asdict(st))

    async def result(request: Request) -> Response:
        rid = request.path_params["run_id"]
        try:
            wait = min(float(request.query_params.get("wait", "0")), MAX_WAIT)
        except ValueError:
            raise _BadRequest("wait must be a number of seconds") from None
        st = await client.status(rid)
        if st.status not in FINAL_STATUSES and wait > 0:
            try:
                await client.wait_for_final(rid, wait)
            except TimeoutError:
                pass
            st = await client.status(rid)
        if st.status not in FINAL_STATUSES:
            return JSONResponse(asdict(st), status_code=202)
        return JSONResponse((await client.get_result(rid)).to_dict())

    async def resume(request: Request) -> Response:
        doc = await _json_body(request)
        await client.resume(
            request.path_params["run_id"], doc.get("nodeId"), doc.get("output"), doc.get("action")
        )
        return JSONResponse({"status": "resumed"}, status_code=202)

    async def cancel(request: Request) -> Response:
        return JSONResponse({"cancelled": await client.cancel(request.path_params["run_id"])})

    async def hook(request: Request) -> Response:
        path = request.url.path
        prefix, _, eid = path.rstrip("/").rpartition("/")
        root = request.scope.get("root_path", "")
        if root and prefix.startswith(root):
            prefix = prefix[len(root) :]
        body = await request.body()
        r = await receiver.deliver(
            eid, body, dict(request.headers), dict(request.query_params), path=prefix or "/"
        )
        return JSONResponse(r.body, status_code=r.status)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def spec(request: Request) -> Response:
        return JSONResponse(openapi(request.scope.get("root_path", "")))

    routes = [
        Route("/healthz", health, methods=["GET"]),
        Route("/openapi.json", spec, methods=["GET"]),
        Route("/runs", api(start), methods=["POST"]),
        Route("/runs", api(list_runs), methods=["GET"]),
        Route("/runs/{run_id:path}/result", api(result), methods=["GET"]),
        Route("/runs/{run_id:path}/resume", api(resume), methods=["POST"]),
        Route("/runs/{run_id:path}/cancel", api(cancel), methods=["POST"]),
        Route("/runs/{run_id:path}", api(status), methods=["GET"]),
        Route("/{path:path}", hook, methods=["POST"]),
    ]
    return Starlette(routes=routes)


__all__ = ["MAX_WAIT", "create_app", "openapi"]
