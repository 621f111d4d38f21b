"""Settings shared by every service (pydantic-settings, prefix GRADUATE_).

Each service defines its own `Settings` subclass; library code never reads the environment,
it takes these objects (or plain arguments). Bad values fail at start with the variable's name.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]


RECORD_OVERHEAD_BYTES = 1024  # a record batch's header, a record's headers and framing, with room to spare


@dataclass(frozen=True)
class SizeLimits:
    """Sizes that must agree end to end, so a request the router accepts can always be captured and
    forwarded: router body < producer max.request.size < topic max.message.bytes."""

    body_bytes: int  # the router refuses larger request bodies (413)
    request_bytes: int  # every producer's max.request.size
    topic_bytes: int  # every topic's max.message.bytes

    def check(self, body_bytes: int | None = None) -> None:
        """ValueError unless the chain holds (with `body_bytes` in place of the derived body limit)."""
        body = self.body_bytes if body_bytes is None else body_bytes
        if not body < self.request_bytes < self.topic_bytes:
            raise ValueError(f"size limits disagree: router body {body} < producer max.request.size "
                             f"{self.request_bytes} < topic max.message.bytes {self.topic_bytes} must hold "
                             f"(body at most {self.body_bytes} for GRADUATE_KAFKA_MAX_MESSAGE_BYTES="
                             f"{self.topic_bytes})")


def size_limits(max_message_bytes: int) -> SizeLimits:
    """All sizes from the one setting (pure). A captured record carries the request's input once plus
    the answer and its metadata, and the processors forward it (the judge's Disagreement carries the
    input and two answers), so the body gets under half of what a record may hold."""
    request = max_message_bytes - RECORD_OVERHEAD_BYTES
    return SizeLimits(body_bytes=request // 2 - RECORD_OVERHEAD_BYTES, request_bytes=request,
                      topic_bytes=max_message_bytes)


class KafkaSettings(BaseSettings):
    """How to reach Kafka; SASL/SSL are supported for real clusters."""

    model_config = SettingsConfigDict(env_prefix="GRADUATE_KAFKA_", extra="ignore", frozen=True)

    bootstrap: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Optional[Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]] = None
    sasl_username: Optional[str] = None
    sasl_password: Optional[SecretStr] = None
    ssl_cafile: Optional[Path] = None
    ssl_certfile: Optional[Path] = None
    ssl_keyfile: Optional[Path] = None
    client_id: str = "graduate"
    max_message_bytes: int = Field(
        1 << 20, ge=64 * 1024,
        description="the one size limit: topics' max.message.bytes; producers and the router's body limit "
                    "are derived from it (see `limits`)")

    replication_factor: int = Field(1, ge=1, description="replicas of every topic graduate creates (the catalog's "
                                    "and the workers' own); start-up refuses a cluster with fewer brokers")
    min_insync_replicas: Optional[int] = Field(None, ge=1, description="min.insync.replicas of the topics graduate "
                                               "creates (producers use acks=all); default: the broker's")

    @model_validator(mode="after")
    def _insync_within_factor(self) -> "KafkaSettings":
        if self.min_insync_replicas is not None and self.min_insync_replicas > self.replication_factor:
            raise ValueError(f"min_insync_replicas {self.min_insync_replicas} exceeds replication_factor "
                             f"{self.replication_factor}: every acks=all write would fail")
        return self

    @field_validator("bootstrap")
    @classmethod
    def _host_port(cls, v: str) -> str:
        for hp in v.split(","):
            host, _, port = hp.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port…], got {v!r}")
        return v

    @property
    def limits(self) -> "SizeLimits":
        return size_limits(self.max_message_bytes)

    def client_config(self) -> dict:
        """Keyword arguments for aiokafka clients (producer, consumer, admin)."""
        cfg: dict = {"bootstrap_servers": self.bootstrap, "security_protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL"):
            if not (self.sasl_mechanism and self.sasl_username and self.sasl_password):
                raise ValueError(
                    "GRADUATE_KAFKA_SASL_MECHANISM, GRADUATE_KAFKA_SASL_USERNAME and "
                    "GRADUATE_KAFKA_SASL_PASSWORD are required with a SASL security protocol")
            cfg.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                       sasl_plain_password=self.sasl_password.get_secret_value())
        if self.security_protocol.endswith("SSL"):
            from aiokafka.helpers import create_ssl_context

            cfg["ssl_context"] = create_ssl_context(
                cafile=str(self.ssl_cafile) if self.ssl_cafile else None,
                certfile=str(self.ssl_certfile) if self.ssl_certfile else None,
                keyfile=str(self.ssl_keyfile) if self.ssl_keyfile else None)
        return cfg


class CommonSettings(BaseSettings):
    """What every graduate process needs: Kafka, topic namespace, codec, paths."""

    model_config = SettingsConfigDict(env_prefix="GRADUATE_", extra="ignore", frozen=True)

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topic_namespace: str = Field("", description="prefix for every topic name (tests, tenants)")
    schema_registry_url: Optional[str] = Field(None, description="Confluent-API schema registry: the "
                                               "Confluent wire format instead of single-object encoding")
    schema_registry_username: Optional[str] = None
    schema_registry_password: Optional[SecretStr] = None
    schema_registry_token: Optional[SecretStr] = Field(None, description="bearer token instead of basic auth")
    schema_registry_compatibility: Literal["BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE",
                                           "FULL", "FULL_TRANSITIVE", "NONE"] = "BACKWARD_TRANSITIVE"
    var_dir: Path = REPO_ROOT / "var"
    tasks_file: Path = REPO_ROOT / "config" / "tasks.yaml"
    model_repository: Path = REPO_ROOT / "var" / "model-repository"
    triton_http_url: str = "127.0.0.1:8000"
    triton_grpc_url: str = "127.0.0.1:8001"

    @field_validator("topic_namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        if v and not all(c.isalnum() or c in "._-" for c in v):
            raise ValueError("may hold only letters, digits, '.', '_' and '-'")
        return v


def load_settings(cls: type[BaseSettings], **overrides) -> BaseSettings:
    """Build settings or exit with a message that names the bad variable."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        lines = []
        for err in exc.errors():
            var = prefix + "_".join(str(p) for p in err["loc"]).upper() if err["loc"] else cls.__name__
            lines.append(f"  {var}: {err['msg']}")
        raise SystemExit("invalid settings:\n" + "\n".join(lines)) from None
