"""FastAPI dependencies: the router's state, the caller's API key, the task it names.

Dependencies are `async def` on purpose: FastAPI runs a plain `def` dependency in a worker thread,
a thread hop per dependency per request on the small path."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Callable

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.common.tasks import TaskRegistry, TaskSpec
from services.router.errors import ApiError
from services.router.keys import ApiKey, KeyStore
from services.router.logic import Ports
from services.router.routing import RoutingTable
from services.router.settings import RouterSettings

ANONYMOUS = ApiKey(name="anonymous", sha256="", role="service")


@dataclass
class RouterState:
    settings: RouterSettings
    tasks: TaskRegistry
    table: RoutingTable
    ports: Ports
    keys: KeyStore | None  # None: auth disabled
    is_ready: Callable[[], bool]
    not_ready_reason: Callable[[], str]


async def get_state(request: Request) -> RouterState:
    return request.app.state.router


StateDep = Annotated[RouterState, Depends(get_state)]


BEARER = HTTPBearer(auto_error=False, scheme_name="apiKey",
                    description="a key from `graduate keys create NAME`: `Authorization: Bearer <key>`")


async def get_caller(state: StateDep,
                     credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)] = None) -> ApiKey:
    """The caller's key from `Authorization: Bearer <key>`; 401 without a valid one."""
    return authenticate(state, credentials.credentials if credentials is not None else "")


def bearer_token(authorization: str | None) -> str:
    """The key in an `Authorization: Bearer <key>` header ("" for none or another scheme), as HTTPBearer reads it."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def authenticate(state: RouterState, presented: str) -> ApiKey:
    """The key `presented`: 401 when it is missing or unknown (ANONYMOUS with auth disabled)."""
    if state.keys is None:
        return ANONYMOUS
    if not presented.strip():
        raise ApiError(401, "missing_api_key", "missing API key: send the header `Authorization: Bearer <key>`",
                       headers={"WWW-Authenticate": "Bearer"})
    key = state.keys.authenticate(presented.strip())
    if key is None:
        hint = "" if len(state.keys) else " (no keys are configured: create one with `graduate keys create NAME`)"
        raise ApiError(401, "invalid_api_key", "invalid API key" + hint, headers={"WWW-Authenticate": "Bearer"})
    return key


CallerDep = Annotated[ApiKey, Depends(get_caller)]


async def get_service_caller(caller: CallerDep, request: Request) -> ApiKey:
    return service_caller(caller, request)


def service_caller(caller: ApiKey, request: Request) -> ApiKey:
    """403 unless the key is a service key (only those call tasks)."""
    if caller.role != "service":
        raise ApiError(403, "forbidden_role",
                       f"key {caller.name!r} has role {caller.role}; only service keys call tasks")
    request.state.caller = caller.name
    return caller


ServiceCallerDep = Annotated[ApiKey, Depends(get_service_caller)]


def resolve_task(state: RouterState, request: Request, caller: ApiKey, name: str) -> TaskSpec:
    """The named task: 404 unknown, 403 not for this key, 503 before the routing topic is replayed."""
    task = state.tasks.tasks.get(name)
    if task is None:
        raise ApiError(404, "unknown_task", f"unknown task {name!r}; known: {', '.join(sorted(state.tasks.tasks))}",
                       param="task")
    request.state.task_label = name
    if not caller.may_use(name):
        raise ApiError(403, "forbidden_task", f"key {caller.name!r} may not use task {name!r}", param="task")
    if not state.is_ready():
        raise ApiError(503, "not_ready", f"router not ready: {state.not_ready_reason()}", headers={"Retry-After": "1"})
    return task
