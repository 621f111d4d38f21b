"""Contracts shared by every graduate service: topics, Avro schemas, models, codec, settings."""
