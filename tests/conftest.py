"""Fixtures shared by every test suite.

Integration tests read the broker and Triton addresses from the environment (what `make up`
started, or an external cluster) and get their own uuid-prefixed topics and consumer groups.
"""
from __future__ import annotations

import os
import uuid

import pytest

from services.common.codec import Codec
from services.common.settings import KafkaSettings


@pytest.fixture(scope="session")
def codec() -> Codec:
    return Codec()


@pytest.fixture(scope="session")
def kafka_settings() -> KafkaSettings:
    return KafkaSettings(bootstrap=os.environ.get("GRADUATE_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))


@pytest.fixture
def namespace() -> str:
    """A topic namespace of this test's own: `t<hex>.` before every catalog name."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
async def topics(kafka_settings, namespace):
    """Every catalog topic, created under this test's namespace and deleted afterwards."""
    from services.common.catalog import CATALOG, topic_name
    from services.common.kafka import delete_topics, ensure_topics

    states = await ensure_topics(kafka_settings, namespace)
    yield {s.spec.name: s.name for s in states}
    await delete_topics(kafka_settings, [topic_name(s, namespace) for s in CATALOG])


@pytest.fixture
def group_id() -> str:
    return f"g{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def triton_urls() -> dict:
    return {"http": os.environ.get("GRADUATE_TRITON_HTTP_URL", "127.0.0.1:8000"),
            "grpc": os.environ.get("GRADUATE_TRITON_GRPC_URL", "127.0.0.1:8001")}


@pytest.fixture(scope="session")
def model_repository():
    from pathlib import Path

    from services.common.settings import REPO_ROOT

    return Path(os.environ.get("GRADUATE_MODEL_REPOSITORY", REPO_ROOT / "var" / "model-repository"))


@pytest.fixture
def keyword_model(triton_urls, model_repository):
    """A loaded tiny model (see tests/support_triton.py); yields its name, unloads it after."""
    from tests.support_triton import load_model, unload_and_remove, write_keyword_model

    names = []

    def make(keywords: dict[str, str], default: str) -> str:
        name = write_keyword_model(model_repository, keywords, default)
        names.append(name)
        load_model(triton_urls["http"], name)
        return name

    yield make
    for name in names:
        unload_and_remove(triton_urls["http"], model_repository, name)
