"""Errors the router answers with, in the OpenAI error shape so SDKs show the message."""
from __future__ import annotations

import logging

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from services.common.frontier import FrontierError, retry_after_header

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param, self.headers = status, code, message, param, headers


def error_body(request: Request, status: int, code: str, message: str, param: str | None = None,
               kind: str | None = None) -> dict:
    kind = kind or ("invalid_request_error" if status < 500 else "api_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code},
            "call_id": request.state.call_id if hasattr(request.state, "call_id") else None}


async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(error_body(request, exc.status, exc.code, exc.message, exc.param), status_code=exc.status,
                        headers=exc.headers)


async def on_frontier_error(request: Request, exc: FrontierError) -> JSONResponse:
    """As the provider would have answered: its status and error type, Retry-After where it applies."""
    headers = {"Retry-After": retry_after_header(exc.retry_after)} if exc.retry_after is not None else None
    return JSONResponse(error_body(request, exc.status_code, exc.code, str(exc), kind=exc.error_type),
                        status_code=exc.status_code, headers=headers)


async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [(".".join(str(p) for p in e["loc"][1:]) or str(e["loc"][0]), e["msg"]) for e in exc.errors()]
    message = "; ".join(f"{where}: {msg}" for where, msg in problems)
    return JSONResponse(error_body(request, 422, "invalid_request", message, problems[0][0] if problems else None),
                        status_code=422)


HANDLERS = {ApiError: on_api_error, FrontierError: on_frontier_error, RequestValidationError: on_validation_error}
