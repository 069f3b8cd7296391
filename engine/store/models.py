"""Exported students registered for serving, with their evaluation; exactly one may be marked served."""

from __future__ import annotations

import json
from typing import Any

from engine.store.db import Database, utc_now

COLUMNS = ("id", "name", "job_id", "arch", "image_size", "dataset", "classifier_path", "torchscript_path",
           "onnx_path", "evaluation", "check_max_abs_diff", "served", "created_at")


class UnknownModel(LookupError):
    pass


def _model(row: tuple) -> dict[str, Any]:
    out = dict(zip(COLUMNS, row, strict=True))
    out["evaluation"] = json.loads(out["evaluation"]) if out["evaluation"] else None
    return out


class ModelQueries:
    def __init__(self, db: Database):
        self.db = db

    def register(self, entry: dict[str, Any]) -> dict[str, Any]:
        with self.db.transaction() as cur:
            model_id = cur.execute(
                "INSERT INTO models (name, job_id, arch, image_size, dataset, classifier_path, torchscript_path, "
                "onnx_path, evaluation, check_max_abs_diff, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "RETURNING id",
                [entry["name"], entry["job_id"], entry["arch"], entry["image_size"], entry.get("dataset"),
                 entry["classifier_path"], entry["torchscript_path"], entry["onnx_path"],
                 json.dumps(entry["evaluation"]) if entry.get("evaluation") else None, entry["check_max_abs_diff"],
                 utc_now()]).fetchone()[0]
        return self.get(model_id)

    def get(self, model_id: int) -> dict[str, Any]:
        row = self.db.cursor().execute(f"SELECT {', '.join(COLUMNS)} FROM models WHERE id = ?", [model_id]).fetchone()
        if row is None:
            raise UnknownModel(f"no model {model_id}")
        return _model(row)

    def list(self) -> list[dict[str, Any]]:
        rows = self.db.cursor().execute(f"SELECT {', '.join(COLUMNS)} FROM models ORDER BY id DESC").fetchall()
        return [_model(r) for r in rows]

    def serve(self, model_id: int) -> dict[str, Any]:
        """Mark one model as the one the demo serves (and no other)."""
        with self.db.transaction() as cur:
            if cur.execute("SELECT count(*) FROM models WHERE id = ?", [model_id]).fetchone()[0] == 0:
                raise UnknownModel(f"no model {model_id}")
            cur.execute("UPDATE models SET served = (id = ?)", [model_id])
        return self.get(model_id)

    def served(self) -> dict[str, Any] | None:
        row = self.db.cursor().execute(f"SELECT {', '.join(COLUMNS)} FROM models WHERE served").fetchone()
        return _model(row) if row else None
