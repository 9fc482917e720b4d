"""``streamlearn predict``: score feature JSON lines with the model of the newest checkpoint."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from streamlearn import checkpoint
from streamlearn.codec import DecodeError, features_from
from streamlearn.events import Schema
from streamlearn.learner import Learner, OptimConfig
from streamlearn.model import ModelConfig
from streamlearn.objective import Objective
from streamlearn.paramserver import merge


def load_model(directory: str | Path) -> tuple[Learner, Schema, dict[str, Any]]:
    found = checkpoint.latest(directory)
    if found is None:
        raise ValueError(f"--checkpoint-dir: no valid checkpoint in {directory}")
    path, state = found
    model: ModelConfig = state["model"]
    learner = Learner(model, Objective(), OptimConfig())
    weights = merge([s["params"] for s in state["shards"]])
    with torch.no_grad():
        for p, w in zip(learner.model.parameters(), weights, strict=True):
            p.copy_(w)
    schema = Schema(tuple(state["classes"]), model.n_features, named_features=model.kind == "hashed")
    return learner, schema, {"checkpoint": str(path), "version": state["version"]}


def predict_lines(learner: Learner, schema: Schema, lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """One output object per input line: the class and probabilities, or the reason it was rejected."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise DecodeError("not_object", "each line must be a JSON object")
            features = features_from(obj.get("features"), schema, required=True)
        except (ValueError, DecodeError) as exc:
            yield {"line": n, "error": str(exc)}
            continue
        probs = learner.predict_proba([features])[0]
        best = int(probs.argmax())
        yield {"line": n, "prediction": best, "class": schema.classes[best],
               "probs": [round(float(p), 6) for p in probs]}
