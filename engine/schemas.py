"""The API's request and response models: the contract shared by the server (engine.api) and engine.client."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field, model_validator

ClassCounts = dict[str, int]


class Health(BaseModel):
    status: str
    version: str
    schema_version: int
    workspace: str


class ImportFormat(StrEnum):
    ham10000 = "ham10000"
    isic = "isic"
    medmnist = "medmnist"
    folder = "folder"
    phantom = "phantom"


class ImportRequest(BaseModel):
    format: ImportFormat
    path: str | None = Field(None, description="Path on the server's machine; not used for `phantom`.")
    split_seed: int = Field(0, description="Seed of the lesion-aware split, for sources without splits.")
    phantom_size: int = Field(1000, ge=70, le=20000, description="Number of phantom images.")

    @model_validator(mode="after")
    def _path_given(self) -> ImportRequest:
        if self.format != ImportFormat.phantom and not self.path:
            raise ValueError(f"format {self.format.value} needs a path")
        return self


class ImportResult(BaseModel):
    batch_id: str
    format: ImportFormat
    source: str
    n_records: int = Field(description="Images in the source.")
    n_added: int = Field(description="Images new to the database (0 when the same data is imported again).")
    phantom: bool
    added: dict[str, ClassCounts] = Field(description="Added images per split and class.")


class ImportBatch(BaseModel):
    id: str
    format: str
    source: str
    created_at: datetime
    n_records: int
    n_added: int
    phantom: bool


class Stats(BaseModel):
    real: dict[str, ClassCounts]
    synthetic: dict[str, ClassCounts]
    phantom: bool = Field(False, description="True when phantom (not clinical) data has been imported.")


class ImageInfo(BaseModel):
    id: str
    content_id: str
    label: str
    source: str
    split: str | None
    lesion_id: str | None
    width: int
    height: int
    format: str
    size_bytes: int
    import_batch: str | None
    original_name: str | None
    metadata: dict[str, Any] = {}
    duplicate_of: str | None
    created_at: datetime


class ImagePage(BaseModel):
    total: int
    offset: int
    items: list[ImageInfo]


class Problem(BaseModel):
    detail: str
    problems: list[str] = []
