"""A real Kafka broker for the kafka tier.

STREAMLEARN_KAFKA_BOOTSTRAP=host:port uses that broker (tests that restart
the broker are skipped then). Otherwise one broker is started for the session
with deploy/kafka/local.sh on free ports, with its data under pytest's tmp
dir, and stopped and purged at the end. Each test gets uuid-named topics that
are deleted after it (bytewax style).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from kafka.admin import KafkaAdminClient
from kafka_helpers import LOCAL_SH, Broker, TopicFactory

from streamlearn.kafka import KafkaSettings, create_topics
from tests.ports import free_port


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    external = os.environ.get("STREAMLEARN_KAFKA_BOOTSTRAP")
    if external:
        yield Broker(external, managed=False, env=dict(os.environ))
        return
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("no java for deploy/kafka/local.sh and STREAMLEARN_KAFKA_BOOTSTRAP not set")
    port = free_port()
    env = dict(os.environ)
    env["STREAMLEARN_KAFKA_DATA"] = str(tmp_path_factory.mktemp("kafka") / "data")
    cport = free_port()
    env["STREAMLEARN_KAFKA_CONTROLLER_PORT"] = str(cport)
    broker = Broker(f"127.0.0.1:{port}", managed=True, env=env, port=port)
    try:
        out = subprocess.run([str(LOCAL_SH), "start", "--port", str(port)], env=env, check=True,
                             capture_output=True, text=True, timeout=600)
        broker.bootstrap = out.stdout.strip().splitlines()[-1]
        yield broker
    finally:
        subprocess.run([str(LOCAL_SH), "stop", "--purge", "--port", str(port)], env=env,
                       capture_output=True, timeout=120, check=False)




@pytest.fixture
def kafka_client() -> str | None:
    """The client the settings of ``kafka_topics`` name: None, the default. Contract-test modules
    parametrize it over both clients (``kafka_helpers.EACH_CLIENT``)."""
    return None


@pytest.fixture
def kafka_topics(kafka_broker: Broker, kafka_client: str | None) -> Iterator[TopicFactory]:
    """``kafka_topics(partitions=2)`` -> settings for fresh uuid-named topics, deleted after the test."""
    made: list[str] = []

    def make(partitions: int = 2, create: bool = True) -> KafkaSettings:
        u = uuid.uuid4().hex[:12]
        settings = KafkaSettings(kafka_broker.bootstrap, predictions_topic=f"test-{u}.predictions",
                                 feedback_topic=f"test-{u}.feedback", dlq_topic=f"test-{u}.dlq",
                                 group_id=f"test-{u}", connect_timeout_ms=20_000, client=kafka_client)
        made.extend([settings.predictions_topic, settings.feedback_topic, settings.dlq_topic])
        if create:
            create_topics(settings, partitions)
        return settings

    yield make
    if made:
        admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap, bootstrap_timeout_ms=20_000)
        try:
            existing = set(admin.list_topics())
            gone = [t for t in made if t in existing]
            if gone:
                admin.delete_topics(gone, timeout_ms=20_000, raise_errors=False)
        finally:
            admin.close()
