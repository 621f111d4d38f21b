"""A Confluent Schema Registry client (httpx, async) for the codec's registry mode.

Only the calls graduate needs: register a schema's full text under a subject, set a subject's
compatibility level, check a candidate schema, fetch a schema by id. Works with any server of
that API (Confluent, Apicurio's ``/apis/ccompat/v7``, Karapace). Auth is HTTP basic (a
username and password, or ``user:pass@`` in the URL) or a bearer token. Registered ids and
fetched schemas are cached; the cache never goes stale because ids are immutable.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx

from services.common.catalog import CATALOG, TopicSpec, topic_name

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
COMPATIBILITY_LEVELS = ("BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE",
                        "FULL", "FULL_TRANSITIVE", "NONE")


class RegistryError(RuntimeError):
    """The registry answered with an error (or not at all); the text has its code and message."""


class SchemaRefused(RegistryError):
    """The registry refused a schema: incompatible with the subject's earlier versions, or invalid."""


@dataclass(frozen=True)
class RegistryConfig:
    """Where the registry is and how to authenticate; library code gets this, never the environment."""

    url: str = field(repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    bearer_token: str | None = field(default=None, repr=False)
    timeout_s: float = 10.0

    @property
    def safe_url(self) -> str:
        """The URL without credentials, for messages and logs."""
        return str(httpx.URL(self.url).copy_with(username=None, password=None))

    def client_args(self) -> dict[str, Any]:
        url = httpx.URL(self.url)
        auth: httpx.Auth | None = None
        headers = {"Accept": CONTENT_TYPE}
        if self.username is not None:
            auth = httpx.BasicAuth(self.username, self.password or "")
        elif url.userinfo:
            auth = httpx.BasicAuth(url.username, url.password)
        if self.bearer_token:
            headers["Authorization"] = f"Bearer {self.bearer_token}"
        base = str(url.copy_with(username=None, password=None)).rstrip("/")
        return {"base_url": base, "auth": auth, "headers": headers, "timeout": self.timeout_s}


def value_subject(spec: TopicSpec, namespace: str = "") -> str:
    """Confluent's TopicNameStrategy: the value schema of topic T lives under subject ``T-value``."""
    return f"{topic_name(spec, namespace)}-value"


def subjects_for(avro_name: str, namespace: str = "") -> list[str]:
    """Every subject whose topic carries the contract with this full Avro name."""
    return [value_subject(s, namespace) for s in CATALOG if s.value.avro_name == avro_name]


def _raise_for(r: httpx.Response, what: str) -> None:
    if r.is_success:
        return
    try:
        body = r.json()
        detail = f"{body.get('error_code', r.status_code)}: {body.get('message', r.text)}"
    except (ValueError, AttributeError):
        detail = f"{r.status_code}: {r.text[:300]}"
    cls = SchemaRefused if r.status_code in (409, 422) else RegistryError
    raise cls(f"{what} refused by the registry at {r.request.url.host}: {detail}")


class RegistryClient:
    """Async client; use ``async with RegistryClient(config) as registry``."""

    def __init__(self, config: RegistryConfig, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self._http = httpx.AsyncClient(transport=transport, **config.client_args())
        self._ids: dict[tuple[str, str], int] = {}
        self._schemas: dict[int, str] = {}

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        try:
            r = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise RegistryError(f"{what}: registry at {self.config.safe_url} unreachable: {exc!r}") from exc
        _raise_for(r, what)
        return r.json()

    async def register(self, subject: str, schema_text: str) -> int:
        """Register the schema's full text under the subject (idempotent); its id."""
        key = (subject, schema_text)
        if key not in self._ids:
            body = await self._call("POST", f"/subjects/{subject}/versions", f"registering {subject}",
                                    json={"schema": schema_text, "schemaType": "AVRO"},
                                    headers={"Content-Type": CONTENT_TYPE})
            self._ids[key] = int(body["id"])
            self._schemas[self._ids[key]] = schema_text
        return self._ids[key]

    async def set_compatibility(self, subject: str, level: str) -> None:
        if level not in COMPATIBILITY_LEVELS:
            raise ValueError(f"compatibility {level!r} is not one of {', '.join(COMPATIBILITY_LEVELS)}")
        await self._call("PUT", f"/config/{subject}", f"setting {subject} to {level}",
                         json={"compatibility": level}, headers={"Content-Type": CONTENT_TYPE})

    async def compatibility(self, subject: str) -> str:
        body = await self._call("GET", f"/config/{subject}", f"reading {subject}'s compatibility")
        return body.get("compatibilityLevel") or body.get("compatibility")

    async def is_compatible(self, subject: str, schema_text: str) -> bool:
        body = await self._call("POST", f"/compatibility/subjects/{subject}/versions/latest",
                                f"checking a schema against {subject}",
                                json={"schema": schema_text, "schemaType": "AVRO"},
                                headers={"Content-Type": CONTENT_TYPE})
        return bool(body["is_compatible"])

    async def schema_text(self, schema_id: int) -> str:
        if schema_id not in self._schemas:
            body = await self._call("GET", f"/schemas/ids/{schema_id}", f"fetching schema id {schema_id}")
            self._schemas[schema_id] = body["schema"]
        return self._schemas[schema_id]

    async def subjects(self) -> list[str]:
        return list(await self._call("GET", "/subjects", "listing subjects"))


def schema_text(raw: Any) -> str:
    """The full schema as registered: every attribute kept (defaults, docs, logical types).

    Compact JSON with ``{`` and ``}`` inside strings written as ``\\u007b``/``\\u007d`` (the same
    JSON to any parser): Apicurio Registry 2.1 cannot tell the type of a schema holding the
    string ``"{}"`` (ModelRegistered.metrics_json's default) and refuses it otherwise.
    """
    if isinstance(raw, str):
        return json.dumps(raw).replace("{", "\\u007b").replace("}", "\\u007d")
    if isinstance(raw, dict):
        return "{" + ",".join(f"{schema_text(k)}:{schema_text(v)}" for k, v in raw.items()) + "}"
    if isinstance(raw, list):
        return "[" + ",".join(schema_text(v) for v in raw) + "]"
    return json.dumps(raw)


def blocking_register(config: RegistryConfig, subject: str, text: str) -> int:
    """One registration from sync code (the codec's cache miss); async code uses RegistryClient."""
    with httpx.Client(**config.client_args()) as http:
        try:
            r = http.post(f"/subjects/{subject}/versions", json={"schema": text, "schemaType": "AVRO"},
                          headers={"Content-Type": CONTENT_TYPE})
        except httpx.HTTPError as exc:
            raise RegistryError(f"registering {subject}: registry at {config.safe_url} unreachable: {exc!r}") from exc
        _raise_for(r, f"registering {subject}")
        return int(r.json()["id"])


def blocking_schema_text(config: RegistryConfig, schema_id: int) -> str | None:
    """The schema text of an id from sync code (the codec's cache miss); None when unknown."""
    with httpx.Client(**config.client_args()) as http:
        try:
            r = http.get(f"/schemas/ids/{schema_id}")
        except httpx.HTTPError as exc:
            raise RegistryError(f"fetching schema id {schema_id}: registry at {config.safe_url} unreachable: {exc!r}") from exc
        if r.status_code == 404:
            return None
        _raise_for(r, f"fetching schema id {schema_id}")
        return r.json()["schema"]
