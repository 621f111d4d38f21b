"""The router's two hot endpoints as plain ASGI: POST /v1/chat/completions and
POST /v1/tasks/{task}/predict are answered here, in front of FastAPI: no FastAPI/Starlette
middleware stack, routing or dependency solving on the small path.

The same code serves them as the FastAPI routes do (`routes.serve_chat`, `routes.serve_predict`,
`deps.authenticate`, `deps.service_caller`) and errors get the same handlers, so a caller cannot
tell the two apart, except by the CPU it saves (bench/bench_router.py). The FastAPI routes stay
registered: they document both endpoints in the OpenAPI document, and the app answers any other
method or path as before (405, 404)."""
from __future__ import annotations

from typing import Any, Callable

from starlette.requests import Request

from services.common.frontier import FrontierError
from services.router.deps import authenticate, bearer_token, service_caller
from services.router.errors import ApiError, on_api_error, on_frontier_error
from services.router.routes import serve_chat, serve_predict

CHAT = "/v1/chat/completions"
TASKS, PREDICT = "/v1/tasks/", "/predict"


def predict_task(path: str) -> str | None:
    """The task of /v1/tasks/{task}/predict (one non-empty path segment, as FastAPI matches it), else None."""
    if path.startswith(TASKS) and path.endswith(PREDICT):
        task = path[len(TASKS):-len(PREDICT)]
        if task and "/" not in task:
            return task
    return None


def is_hot(scope) -> bool:
    """POST /v1/chat/completions or POST /v1/tasks/{task}/predict."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return False
    path = scope["path"]
    return path == CHAT or predict_task(path) is not None


class FastPath:
    """ASGI app for the hot endpoints (`is_hot`) once the router is up; `state_of` gives the
    RouterState, set by the app's lifespan."""

    def __init__(self, state_of: Callable[[], Any]) -> None:
        self.state_of = state_of

    async def __call__(self, scope, receive, send) -> None:
        state = self.state_of()
        path = scope["path"]
        task = None if path == CHAT else predict_task(path)
        request = Request(scope, receive)
        headers = request.headers
        try:
            caller = service_caller(authenticate(state, bearer_token(headers.get("authorization"))), request)
            if task is None:
                response = await serve_chat(request, state, caller, headers.get("x-graduate-task"))
            else:
                response = await serve_predict(request, state, caller, task)
        except ApiError as exc:
            response = await on_api_error(request, exc)
        except FrontierError as exc:
            response = await on_frontier_error(request, exc)
        await response(scope, receive, send)
