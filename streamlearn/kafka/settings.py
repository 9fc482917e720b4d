"""Where the broker is, the topic names, TLS/SASL, and which client talks to it; validated at construction.

One :class:`KafkaSettings` serves both clients: :meth:`KafkaSettings.librdkafka_config` maps it to
confluent-kafka's (librdkafka's) dotted keys, :meth:`KafkaSettings.kafka_python_kwargs` to kafka-python's
keyword arguments. Neither client is imported here, so a config can be built and checked without one.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass, fields
from typing import Any

from streamlearn.codec import Kind
from streamlearn.config.runtime import KAFKA_CLIENTS
from streamlearn.config.runtime import SASL_MECHANISMS as SASL_MECHANISMS
from streamlearn.config.runtime import SECURITY_PROTOCOLS as SECURITY_PROTOCOLS

CLIENTS = KAFKA_CLIENTS
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_MODULES = {"confluent": "confluent_kafka", "kafka-python": "kafka"}


def installed(client: str) -> bool:
    """Whether ``client``'s package can be imported (without importing it)."""
    return importlib.util.find_spec(_MODULES[client]) is not None


def default_client() -> str:
    """confluent-kafka (librdkafka, the fast path) when installed, else kafka-python."""
    return "confluent" if installed("confluent") else "kafka-python"


@dataclass(frozen=True)
class KafkaSettings:
    """Where the broker is and how to talk to it. ``sasl_password`` never appears in a repr."""

    bootstrap_servers: str  # "host:port[,host:port...]"
    predictions_topic: str = "streamlearn.predictions"
    feedback_topic: str = "streamlearn.feedback"  # same partition count as predictions
    dlq_topic: str = "streamlearn.dlq"  # dead letters: original bytes + error headers
    group_id: str = "streamlearn"  # offsets committed here for lag monitoring only
    client_id: str = "streamlearn"
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    ssl_cafile: str | None = None  # CA bundle that signed the broker certificate
    ssl_certfile: str | None = None  # client certificate (mutual TLS)
    ssl_keyfile: str | None = None  # client private key (mutual TLS)
    sasl_mechanism: str | None = None  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: str | None = None
    connect_timeout_ms: int = 30_000  # give up bootstrapping a client (or a metadata request) after this long
    client: str | None = None  # confluent | kafka-python; None: confluent when installed, else kafka-python

    def __post_init__(self) -> None:
        servers = [s.strip() for s in str(self.bootstrap_servers).split(",") if s.strip()]
        if not servers:
            raise ValueError("bootstrap_servers: must name at least one host:port")
        for s in servers:
            host, sep, port = s.rpartition(":")
            if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"bootstrap_servers: {s!r} is not host:port")
        object.__setattr__(self, "bootstrap_servers", ",".join(servers))
        names = {"predictions_topic": self.predictions_topic, "feedback_topic": self.feedback_topic,
                 "dlq_topic": self.dlq_topic}
        for key, name in names.items():
            if not isinstance(name, str) or not _TOPIC_NAME.match(name) or name in (".", ".."):
                raise ValueError(f"{key}: {name!r} is not a valid topic name "
                                 "(1-249 of letters, digits, '.', '_', '-')")
        if len(set(names.values())) != 3:
            raise ValueError("predictions_topic, feedback_topic, dlq_topic: must be three different topics "
                             f"(got {', '.join(names.values())})")
        for key in ("group_id", "client_id"):
            if not getattr(self, key):
                raise ValueError(f"{key}: must not be empty")
        if self.connect_timeout_ms < 1:
            raise ValueError(f"connect_timeout_ms: must be >= 1, got {self.connect_timeout_ms}")
        if self.client is None:
            object.__setattr__(self, "client", default_client())
        if self.client not in CLIENTS:
            raise ValueError(f"client: unknown {self.client!r}, choose one of {', '.join(CLIENTS)}")
        if not installed(self.client):
            raise ValueError(f"client: {self.client} is not installed (pip install "
                             f"{'confluent-kafka' if self.client == 'confluent' else 'kafka-python'})")
        proto = self.security_protocol
        if proto not in SECURITY_PROTOCOLS:
            raise ValueError(f"security_protocol: unknown {proto!r}, "
                             f"choose one of {', '.join(SECURITY_PROTOCOLS)}")
        self._validate_ssl(proto)
        self._validate_sasl(proto)

    def _validate_ssl(self, proto: str) -> None:
        files = {"ssl_cafile": self.ssl_cafile, "ssl_certfile": self.ssl_certfile,
                 "ssl_keyfile": self.ssl_keyfile}
        for key, path in files.items():
            if path is None:
                continue
            if "SSL" not in proto:
                raise ValueError(f"{key}: only used with security_protocol SSL or SASL_SSL (got {proto})")
            if not os.path.isfile(path):
                raise ValueError(f"{key}: no such file: {path}")
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError("ssl_keyfile: needs ssl_certfile too (the client certificate)")

    def _validate_sasl(self, proto: str) -> None:
        sasl = {"sasl_mechanism": self.sasl_mechanism, "sasl_username": self.sasl_username,
                "sasl_password": self.sasl_password}
        if not proto.startswith("SASL"):
            for key, value in sasl.items():
                if value is not None:
                    raise ValueError(f"{key}: only used with security_protocol SASL_PLAINTEXT or SASL_SSL "
                                     f"(got {proto})")
            return
        if self.sasl_mechanism not in SASL_MECHANISMS:
            raise ValueError(f"sasl_mechanism: {proto} needs one of {', '.join(SASL_MECHANISMS)}, "
                             f"got {self.sasl_mechanism!r}")
        for key in ("sasl_username", "sasl_password"):
            if not sasl[key]:
                raise ValueError(f"{key}: required with security_protocol {proto}")

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={'***' if f.name == 'sasl_password' and v is not None else repr(v)}"
            for f in fields(self) for v in [getattr(self, f.name)]
        )
        return f"KafkaSettings({shown})"

    __str__ = __repr__

    @property
    def topics(self) -> dict[Kind, str]:
        return {"prediction": self.predictions_topic, "feedback": self.feedback_topic}

    def kafka_python_kwargs(self) -> dict[str, Any]:
        """Connection and security keyword arguments for any kafka-python client."""
        kw: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "bootstrap_timeout_ms": self.connect_timeout_ms,
        }
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(self, key) is not None:
                kw[key] = getattr(self, key)
        if self.security_protocol.startswith("SASL"):
            kw["sasl_mechanism"] = self.sasl_mechanism
            kw["sasl_plain_username"] = self.sasl_username
            kw["sasl_plain_password"] = self.sasl_password
        return kw

    def librdkafka_config(self) -> dict[str, Any]:
        """Connection and security properties for any confluent-kafka client (librdkafka's names)."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "security.protocol": self.security_protocol.lower(),
            "socket.connection.setup.timeout.ms": max(1000, self.connect_timeout_ms),  # librdkafka's minimum
        }
        tls = {"ssl_cafile": "ssl.ca.location", "ssl_certfile": "ssl.certificate.location",
               "ssl_keyfile": "ssl.key.location"}
        for key, prop in tls.items():
            if getattr(self, key) is not None:
                conf[prop] = getattr(self, key)
        if self.ssl_certfile and not self.ssl_keyfile:  # kafka-python reads the key from the certificate file
            conf["ssl.key.location"] = self.ssl_certfile
        if self.security_protocol.startswith("SASL"):
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"] = self.sasl_username
            conf["sasl.password"] = self.sasl_password
        return conf
