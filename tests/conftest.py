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
