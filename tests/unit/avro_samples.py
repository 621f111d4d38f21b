"""Generate a valid sample datum for any parsed Avro schema (for compatibility tests)."""
from __future__ import annotations

from datetime import datetime, timezone


def sample_for(schema):
    if isinstance(schema, str):
        return {"string": "s", "int": 1, "long": 1, "double": 1.5, "float": 1.5, "boolean": True,
                "bytes": b"b", "null": None}[schema]
    if isinstance(schema, list):
        non_null = [s for s in schema if s != "null"]
        return sample_for(non_null[0]) if non_null else None
    t = schema["type"]
    if t == "record":
        return {f["name"]: sample_for(f["type"]) for f in schema["fields"]}
    if t == "enum":
        return schema["symbols"][0]
    if t == "array":
        return [sample_for(schema["items"])]
    if t == "map":
        return {"k": sample_for(schema["values"])}
    if t == "long" and schema.get("logicalType") == "timestamp-millis":
        return datetime(2026, 1, 1, tzinfo=timezone.utc)
    return sample_for(t)
