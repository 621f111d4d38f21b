"""Avro encoding of the contracts with fastavro.

Default: Avro single-object encoding (``C3 01`` + the writer schema's CRC-64-AVRO fingerprint,
little-endian + the body), so no schema registry is needed. Readers resolve old writer schemas
(kept under ``schemas/released/``) to the current reader schema. When a Confluent schema registry
URL is given, the Confluent wire format (``00`` + 4-byte schema id + body) is used instead.
"""
from __future__ import annotations

import io
import json
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import fastavro
import httpx
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from services.common.contracts import ALL_CONTRACTS, Contract

SINGLE_OBJECT_MARKER = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
T = TypeVar("T", bound=Contract)


class CodecError(ValueError):
    """A message that cannot be encoded or decoded; the text says why."""


def schemas_dir() -> Path:
    env = os.environ.get("GRADUATE_SCHEMAS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "schemas"


@dataclass(frozen=True)
class KnownSchema:
    full_name: str
    version: str  # "current" or the released folder's name
    parsed: Any
    fingerprint: bytes


def _fingerprint(parsed: Any) -> bytes:
    # fastavro returns the CRC-64-AVRO fingerprint as hex in the byte order the spec writes.
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


def _load(path: Path, version: str) -> KnownSchema:
    raw = json.loads(path.read_text())
    parsed = parse_schema(raw, named_schemas={})
    return KnownSchema(parsed["name"], version, parsed, _fingerprint(parsed))


@lru_cache(maxsize=4)
def load_schemas(root: Path | None = None) -> tuple[dict[str, KnownSchema], dict[bytes, KnownSchema]]:
    """Current schemas by full name, and every known schema (current + released) by fingerprint."""
    root = root or schemas_dir()
    current = {s.full_name: s for s in (_load(p, "current") for p in sorted(root.glob("*.avsc")))}
    by_fp = {s.fingerprint: s for s in current.values()}
    for p in sorted(root.glob("released/*/*.avsc")):
        s = _load(p, p.parent.name)
        by_fp.setdefault(s.fingerprint, s)
    missing = [c.avro_name for c in ALL_CONTRACTS if c.avro_name not in current]
    if missing:
        raise CodecError(f"no schema file in {root} for {', '.join(missing)}")
    return current, by_fp


def _to_record(model: Contract) -> dict[str, Any]:
    return model.model_dump(mode="python")


class Codec:
    """Encodes contracts to bytes and back; one instance per process is enough."""

    def __init__(self, registry_url: str | None = None, root: Path | None = None) -> None:
        self.current, self.by_fingerprint = load_schemas(root)
        self.registry = _Registry(registry_url) if registry_url else None

    def schema_for(self, model: type[Contract] | Contract) -> KnownSchema:
        return self.current[model.avro_name]

    def encode(self, model: Contract, *, subject: str | None = None) -> bytes:
        schema = self.schema_for(model)
        buf = io.BytesIO()
        try:
            fastavro.schemaless_writer(buf, schema.parsed, _to_record(model))
        except (ValueError, TypeError) as exc:
            raise CodecError(f"cannot encode {schema.full_name}: {exc}") from exc
        if self.registry is not None:
            schema_id = self.registry.id_for(subject or schema.full_name, schema)
            return CONFLUENT_MAGIC + struct.pack(">I", schema_id) + buf.getvalue()
        return SINGLE_OBJECT_MARKER + schema.fingerprint + buf.getvalue()

    def writer_schema(self, data: bytes) -> tuple[KnownSchema, int]:
        """The schema a message was written with, and where its body starts."""
        if data[:2] == SINGLE_OBJECT_MARKER:
            if len(data) < 10:
                raise CodecError(f"truncated header: {len(data)} bytes, single-object encoding needs 10")
            fp = data[2:10]
            known = self.by_fingerprint.get(fp)
            if known is None:
                raise CodecError(f"unknown schema fingerprint {fp.hex()}: not a schema of this graduate version")
            return known, 10
        if data[:1] == CONFLUENT_MAGIC and self.registry is not None and len(data) >= 5:
            (schema_id,) = struct.unpack(">I", data[1:5])
            return self.registry.schema_by_id(schema_id), 5
        raise CodecError(f"not Avro single-object encoding: starts with {data[:2].hex() or 'nothing'}, expected c301")

    def decode(self, data: bytes, model: type[T]) -> T:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise CodecError(f"expected bytes, got {type(data).__name__}")
        data = bytes(data)
        writer, start = self.writer_schema(data)
        reader = self.schema_for(model)
        if writer.full_name != reader.full_name:
            raise CodecError(f"expected {reader.full_name}, message is {writer.full_name}")
        body = io.BytesIO(data[start:])
        try:
            record = fastavro.schemaless_reader(body, writer.parsed, reader.parsed)
        except (EOFError, StopIteration) as exc:
            raise CodecError(f"truncated body for {reader.full_name} ({len(data) - start} bytes)") from exc
        except Exception as exc:  # fastavro raises many kinds on corrupt bodies
            raise CodecError(f"corrupt body for {reader.full_name}: {type(exc).__name__}: {exc}") from exc
        if body.tell() != len(data) - start:
            raise CodecError(f"trailing bytes after {reader.full_name}: {len(data) - start - body.tell()}")
        try:
            return model.model_validate(record)
        except ValueError as exc:
            raise CodecError(f"{reader.full_name} does not validate: {exc}") from exc


class _Registry:
    """The few Confluent schema registry calls the codec needs, cached."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._ids: dict[tuple[str, bytes], int] = {}
        self._by_id: dict[int, KnownSchema] = {}

    def id_for(self, subject: str, schema: KnownSchema) -> int:
        key = (subject, schema.fingerprint)
        if key not in self._ids:
            body = {"schema": to_parsing_canonical_form(schema.parsed)}
            r = httpx.post(f"{self.url}/subjects/{subject}/versions", json=body, timeout=10)
            r.raise_for_status()
            self._ids[key] = r.json()["id"]
            self._by_id[self._ids[key]] = schema
        return self._ids[key]

    def schema_by_id(self, schema_id: int) -> KnownSchema:
        if schema_id not in self._by_id:
            r = httpx.get(f"{self.url}/schemas/ids/{schema_id}", timeout=10)
            if r.status_code == 404:
                raise CodecError(f"schema id {schema_id} is not in the registry at {self.url}")
            r.raise_for_status()
            parsed = parse_schema(json.loads(r.json()["schema"]), named_schemas={})
            self._by_id[schema_id] = KnownSchema(parsed["name"], f"registry:{schema_id}", parsed, _fingerprint(parsed))
        return self._by_id[schema_id]
