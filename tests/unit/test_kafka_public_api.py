"""streamlearn uses the Kafka clients through their public APIs only (scanned from the source, no broker)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "streamlearn"
CLIENT_PACKAGES = ("kafka", "confluent_kafka")
# the clients' public modules; anything else under kafka.* / confluent_kafka.* is an internal
PUBLIC_MODULES = {"kafka", "kafka.errors", "kafka.admin", "confluent_kafka", "confluent_kafka.admin"}
# the only modules that import a client (the rest sees streamlearn.kafka.client's interface)
CLIENT_MODULES = {"kafka/confluent.py", "kafka/kafka_python.py"}


def _modules() -> dict[str, ast.Module]:
    return {str(p.relative_to(PACKAGE)): ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def _client_imports(tree: ast.Module) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return [n for n in names if n.split(".")[0] in CLIENT_PACKAGES]


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_accesses(tree: ast.Module) -> list[str]:
    """``x._y`` (x not self/cls) and ``getattr(x, "_y")``; librdkafka's local error codes
    (``KafkaError._PARTITION_EOF``, ...) are public constants."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue
            if isinstance(base, ast.Name) and base.id == "KafkaError" and node.attr[1:].isupper():
                continue
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "setattr", "hasattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and _private(node.args[1].value)):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_only_the_client_modules_import_a_client_and_only_its_public_modules() -> None:
    importers = {}
    for name, tree in _modules().items():
        imported = _client_imports(tree)
        if imported:
            importers[name] = imported
    assert set(importers) <= CLIENT_MODULES, importers
    for name, imported in importers.items():
        private = [m for m in imported if m not in PUBLIC_MODULES or any(_private(p) for p in m.split("."))]
        assert not private, f"{name} imports internal client modules: {private}"


def test_no_private_attribute_of_a_client_object_is_touched() -> None:
    """In every module of streamlearn/kafka/ (and any that imports a client), no ``obj._attr`` but its own."""
    for name, tree in _modules().items():
        if name.startswith("kafka/") or _client_imports(tree):
            assert not _private_accesses(tree), f"{name}: {_private_accesses(tree)}"


def test_the_scan_catches_what_the_old_kafka_source_did() -> None:
    """The patterns streamlearn once used (the fetcher hook, batch internals, the producer's metadata)."""
    old = ast.parse(
        "from kafka.consumer.fetcher import Fetcher\n"
        "from kafka.record.default_records import DefaultRecordBatch\n"
        "fetcher = getattr(consumer, '_fetcher', None)\n"
        "read(bytes(batch._buffer), batch._pos)\n"
        "config = producer._metadata.config\n"
    )
    assert [m for m in _client_imports(old) if m not in PUBLIC_MODULES] == [
        "kafka.consumer.fetcher", "kafka.record.default_records"]
    assert len(_private_accesses(old)) == 4
    assert _private_accesses(ast.parse("self._consumer.poll()\nKafkaError._PARTITION_EOF\n")) == []
