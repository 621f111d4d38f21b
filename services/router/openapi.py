"""The router's OpenAPI document, complete: request bodies (the router reads them itself, so
FastAPI cannot see them), the bearer scheme, the task header, and every status a route answers
with in the OpenAI error shape, so a fuzzer (schemathesis) exercises the bodies and can check
each response against the document."""
from __future__ import annotations

from typing import Any, Optional

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

from services.router.schemas import ChatRequest, PredictRequest

REF = "#/components/schemas/{model}"
BODIES = {("/v1/chat/completions", "post"): ChatRequest, ("/v1/tasks/{task}/predict", "post"): PredictRequest}
STATUS_TEXT = {400: "malformed body: not JSON, not UTF-8, too deep, invalid Unicode, non-finite number",
               401: "missing or invalid API key", 403: "the key's role or tasks do not allow this",
               404: "unknown task or model", 413: "body over the size limit",
               422: "a field or sampling parameter is invalid (named in error.param)",
               429: "the frontier rate-limited the request (rate_limit_error; Retry-After says when to retry)",
               500: "the frontier answered 500 (an upstream 5xx is passed on as that status, type server_error)",
               502: "the frontier failed, dropped the connection, answered garbage, or refused the router's own "
                    "key (frontier_auth_error)",
               503: "not ready, the frontier is overloaded, or the frontier circuit is open (Retry-After)",
               504: "the frontier timed out"}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: str


class ErrorBody(BaseModel):
    """Every refusal, in the OpenAI error shape."""
    error: ErrorDetail
    call_id: Optional[str] = Field(None, description="the call id of the request (X-Graduate-Call-Id)")


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody, "description": STATUS_TEXT[code]} for code in codes}


TASK_CALL = errors(400, 401, 403, 404, 413, 422, 429, 500, 502, 503, 504)
KEYED = errors(401, 403)
COMPLETION = {200: {"description": "a chat.completion (or server-sent events with stream=true)", "content": {
    "application/json": {"schema": {"type": "object", "required": ["choices"], "properties": {
        "id": {"type": "string"}, "object": {"type": "string"}, "model": {"type": "string"},
        "choices": {"type": "array", "items": {"type": "object"}}}}},
    "text/event-stream": {"schema": {  # each event: chunks, the last one with a `graduate` trailer, then [DONE]
        "type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}}}}}


def router_openapi(app: FastAPI) -> dict[str, Any]:
    """The document, built once: FastAPI's, plus the request bodies of the routes that read their own."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        for (path, method), model in BODIES.items():
            body = model.model_json_schema(ref_template=REF)
            schemas.update(body.pop("$defs", {}))
            schemas[model.__name__] = body
            doc["paths"][path][method]["requestBody"] = {
                "required": True, "content": {"application/json": {"schema": {"$ref": REF.format(model=model.__name__)}}}}
        app.openapi_schema = doc
    return app.openapi_schema
