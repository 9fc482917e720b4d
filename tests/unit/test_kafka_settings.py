"""KafkaSettings validation and the CLI's Kafka flags (no broker)."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import pytest

from streamlearn.cli import CliError, build_parser, kafka_settings
from streamlearn.kafka import CLIENTS, KafkaSettings, SourceConfig, default_client, partition_for
from streamlearn.kafka.produce import murmur2


def _files(tmp_path: Path) -> dict[str, str]:
    out = {}
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = tmp_path / f"{key}.pem"
        path.write_text("-----BEGIN CERTIFICATE-----\n")
        out[key] = str(path)
    return out


def test_defaults_are_valid_and_plaintext() -> None:
    s = KafkaSettings("127.0.0.1:9092")
    assert s.topics == {"prediction": "streamlearn.predictions", "feedback": "streamlearn.feedback"}
    assert s.dlq_topic == "streamlearn.dlq" and s.group_id == "streamlearn"
    kw = s.kafka_python_kwargs()
    assert kw["bootstrap_servers"] == ["127.0.0.1:9092"]
    assert kw["security_protocol"] == "PLAINTEXT"
    assert not any(k.startswith(("ssl_", "sasl_")) for k in kw)


def test_bootstrap_list_is_normalised() -> None:
    s = KafkaSettings(" a:1 , b.example.com:9093,")
    assert s.bootstrap_servers == "a:1,b.example.com:9093"
    assert s.kafka_python_kwargs()["bootstrap_servers"] == ["a:1", "b.example.com:9093"]


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"bootstrap_servers": ""}, "bootstrap_servers"),
    ({"bootstrap_servers": "localhost"}, "bootstrap_servers"),
    ({"bootstrap_servers": "localhost:0"}, "bootstrap_servers"),
    ({"bootstrap_servers": "localhost:99999"}, "bootstrap_servers"),
    ({"predictions_topic": "has space"}, "predictions_topic"),
    ({"feedback_topic": ".."}, "feedback_topic"),
    ({"dlq_topic": "x" * 250}, "dlq_topic"),
    ({"feedback_topic": "streamlearn.predictions"}, "feedback_topic"),
    ({"group_id": ""}, "group_id"),
    ({"connect_timeout_ms": 0}, "connect_timeout_ms"),
    ({"security_protocol": "TLS"}, "security_protocol"),
    ({"ssl_cafile": "/ca.pem"}, "ssl_cafile"),  # PLAINTEXT does not use TLS files
    ({"security_protocol": "SSL", "ssl_cafile": "/no/such/ca.pem"}, "ssl_cafile"),
    ({"sasl_username": "u"}, "sasl_username"),  # PLAINTEXT does not use SASL
    ({"sasl_password": "p"}, "sasl_password"),
    ({"security_protocol": "SASL_SSL"}, "sasl_mechanism"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI", "sasl_username": "u",
      "sasl_password": "p"}, "sasl_mechanism"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_password": "p"},
     "sasl_username"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "u"},
     "sasl_password"),
])
def test_bad_values_fail_at_construction_naming_the_key(kwargs: dict, key: str) -> None:
    kwargs = {"bootstrap_servers": "127.0.0.1:9092", **kwargs}
    with pytest.raises(ValueError, match=key):
        KafkaSettings(**kwargs)


def test_keyfile_needs_certfile(tmp_path: Path) -> None:
    files = _files(tmp_path)
    with pytest.raises(ValueError, match="ssl_keyfile"):
        KafkaSettings("h:1", security_protocol="SSL", ssl_keyfile=files["ssl_keyfile"])


def test_mutual_tls_kwargs(tmp_path: Path) -> None:
    files = _files(tmp_path)
    kw = KafkaSettings("h:1", security_protocol="SSL", ssl_cafile=files["ssl_cafile"],
                       ssl_certfile=files["ssl_certfile"], ssl_keyfile=files["ssl_keyfile"]).kafka_python_kwargs()
    assert kw["security_protocol"] == "SSL"
    assert {k: kw[k] for k in files} == files
    assert "sasl_mechanism" not in kw


def test_sasl_ssl_kwargs_and_the_password_never_shows(tmp_path: Path) -> None:
    s = KafkaSettings("h:1", security_protocol="SASL_SSL", ssl_cafile=_files(tmp_path)["ssl_cafile"],
                      sasl_mechanism="SCRAM-SHA-512", sasl_username="svc", sasl_password="hunter2")
    kw = s.kafka_python_kwargs()
    assert (kw["sasl_mechanism"], kw["sasl_plain_username"], kw["sasl_plain_password"]) == (
        "SCRAM-SHA-512", "svc", "hunter2")
    for text in (repr(s), str(s), f"{s}", repr([s])):
        assert "hunter2" not in text
        assert "sasl_password='***'" in text or "sasl_password=***" in text
    assert "svc" in repr(s)
    assert pickle.loads(pickle.dumps(s)) == s  # travels to Ray workers


def test_settings_are_frozen() -> None:
    s = KafkaSettings("h:1")
    with pytest.raises(AttributeError):
        s.group_id = "other"  # type: ignore[misc]


def test_source_config_validation() -> None:
    with pytest.raises(ValueError, match="poll_timeout_ms"):
        SourceConfig(poll_timeout_ms=0)
    with pytest.raises(ValueError, match="max_backoff_s"):
        SourceConfig(backoff_s=2.0, max_backoff_s=1.0)


# -- the CLI's flags ---------------------------------------------------------


def _args(*argv: str):
    return build_parser().parse_args(["topics", "describe", *argv])


def test_cli_flags_become_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("STREAMLEARN_KAFKA_SASL_PASSWORD", raising=False)
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    s = kafka_settings(_args("--bootstrap-servers", "b1:9093,b2:9093", "--predictions-topic", "p",
                             "--feedback-topic", "f", "--dlq-topic", "d", "--group-id", "g",
                             "--security-protocol", "SASL_PLAINTEXT", "--sasl-mechanism", "SCRAM-SHA-256",
                             "--sasl-username", "svc", "--sasl-password-file", str(secret)))
    assert (s.bootstrap_servers, s.predictions_topic, s.feedback_topic, s.dlq_topic, s.group_id) == (
        "b1:9093,b2:9093", "p", "f", "d", "g")
    assert s.sasl_password == "s3cret"  # trailing newline of the file dropped


def test_cli_password_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMLEARN_KAFKA_SASL_PASSWORD", "from-env")
    s = kafka_settings(_args("--security-protocol", "SASL_PLAINTEXT", "--sasl-mechanism", "PLAIN",
                             "--sasl-username", "svc"))
    assert s.sasl_password == "from-env"
    assert kafka_settings(_args()).sasl_password is None  # PLAINTEXT ignores the env password


def test_cli_has_no_password_flag() -> None:
    from streamlearn.cli import main

    assert main(["topics", "describe", "--sasl-password", "hunter2"]) == 2
    assert main(["produce", "--sasl-password", "hunter2"]) == 2


@pytest.mark.parametrize(("argv", "flag"), [
    (("--bootstrap-servers", "nohost"), "--bootstrap-servers"),
    (("--feedback-topic", "bad topic"), "--feedback-topic"),
    (("--security-protocol", "SASL_SSL", "--sasl-mechanism", "PLAIN"), "--sasl-username"),
    (("--security-protocol", "SSL", "--ssl-cafile", "/no/such/file"), "--ssl-cafile"),
])
def test_cli_errors_name_the_flag(argv: tuple[str, ...], flag: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAMLEARN_KAFKA_SASL_PASSWORD", raising=False)
    with pytest.raises(CliError, match=f"^{flag}"):
        kafka_settings(_args(*argv))


def test_cli_unreadable_password_file(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="--sasl-password-file"):
        kafka_settings(_args("--security-protocol", "SASL_SSL", "--sasl-mechanism", "PLAIN",
                             "--sasl-username", "u", "--sasl-password-file", str(tmp_path / "missing")))


# -- the two clients ---------------------------------------------------------


def test_client_defaults_to_confluent_when_installed() -> None:
    assert CLIENTS == ("confluent", "kafka-python")
    assert default_client() == "confluent"  # confluent-kafka is a dependency
    assert KafkaSettings("h:1").client == "confluent"
    assert KafkaSettings("h:1", client="kafka-python").client == "kafka-python"
    with pytest.raises(ValueError, match=r"^client: unknown 'java'"):
        KafkaSettings("h:1", client="java")


def test_librdkafka_config_plaintext() -> None:
    conf = KafkaSettings("a:1, b:2", client_id="me", connect_timeout_ms=5000).librdkafka_config()
    assert conf == {"bootstrap.servers": "a:1,b:2", "client.id": "me", "security.protocol": "plaintext",
                    "socket.connection.setup.timeout.ms": 5000}


def test_librdkafka_config_maps_tls_and_sasl(tmp_path: Path) -> None:
    files = _files(tmp_path)
    conf = KafkaSettings("h:1", security_protocol="SASL_SSL", ssl_cafile=files["ssl_cafile"],
                         ssl_certfile=files["ssl_certfile"], ssl_keyfile=files["ssl_keyfile"],
                         sasl_mechanism="SCRAM-SHA-256", sasl_username="svc",
                         sasl_password="hunter2").librdkafka_config()
    assert conf["security.protocol"] == "sasl_ssl"
    assert (conf["ssl.ca.location"], conf["ssl.certificate.location"], conf["ssl.key.location"]) == (
        files["ssl_cafile"], files["ssl_certfile"], files["ssl_keyfile"])
    assert (conf["sasl.mechanism"], conf["sasl.username"], conf["sasl.password"]) == (
        "SCRAM-SHA-256", "svc", "hunter2")
    # a certificate file that holds the key too (kafka-python reads it from there)
    both = KafkaSettings("h:1", security_protocol="SSL", ssl_certfile=files["ssl_certfile"]).librdkafka_config()
    assert both["ssl.key.location"] == files["ssl_certfile"]
    assert not any(k.startswith("sasl.") for k in both)


def test_librdkafka_accepts_every_key_streamlearn_sets() -> None:
    """confluent-kafka builds its clients without connecting, checking each key and range (kafka-python
    connects on construction: tests/kafka checks its keyword arguments)."""
    from streamlearn.kafka.client import ReaderConfig, WriterConfig, reader, writer

    settings = KafkaSettings("127.0.0.1:1", client="confluent", connect_timeout_ms=100)
    r = reader(settings, ReaderConfig())
    w = writer(settings, WriterConfig())
    r.close()
    w.close(0.1)


def test_cli_kafka_client_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAMLEARN_KAFKA_CLIENT", raising=False)
    assert kafka_settings(_args()).client == "confluent"
    assert kafka_settings(_args("--kafka-client", "kafka-python")).client == "kafka-python"
    monkeypatch.setenv("STREAMLEARN_KAFKA_CLIENT", "kafka-python")
    assert kafka_settings(_args()).client == "kafka-python"
    assert kafka_settings(_args("--kafka-client", "confluent")).client == "confluent"


def test_murmur2_partition_is_the_java_clients() -> None:
    """Kafka's own test vectors (Utils.murmur2 in the Java client) and kafka-python/librdkafka agreeing."""
    import confluent_kafka
    from kafka.partitioner import murmur2 as kafka_python_murmur2

    assert murmur2(b"21") == -973932308
    assert murmur2(b"foobar") == -790332482
    assert murmur2(b"a-little-bit-long-string") == -985981536
    assert murmur2(b"a-little-bit-longer-string") == -1486304829
    assert murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") == -58897971
    assert murmur2(b"abc") == 479470107
    rng = random.Random(0)
    for _ in range(500):
        key = rng.randbytes(rng.randrange(0, 40))
        n = rng.randrange(1, 64)
        want = partition_for(key, n)
        assert want == confluent_kafka.murmur2(key, n) == (kafka_python_murmur2(key) & 0x7FFFFFFF) % n
