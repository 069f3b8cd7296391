"""The only package that imports duckdb. `Store` bundles the database and its typed query groups."""

from __future__ import annotations

from pathlib import Path

from engine.store.backup import BackupFailed, DatabaseExport, export_database, export_database_file, import_database
from engine.store.backup import referenced_files as _referenced_files
from engine.store.datasets import DatasetQueries, UnknownDataset
from engine.store.db import Database, StoreLocked
from engine.store.images import ImageQueries
from engine.store.jobs import JobConflict, JobQueries, UnknownJob
from engine.store.migrations import LATEST_VERSION
from engine.store.models import ModelQueries, UnknownModel
from engine.store.reviews import GROUP_COMMIT_MAX, ReviewConflict, ReviewProblem, ReviewQueries
from engine.store.turing import TuringConflict, TuringProblem, TuringQueries, UnknownTuringSession
from engine.store.users import User, UserExists, UserProblem, UserQueries

__all__ = ["LATEST_VERSION", "JobConflict", "ReviewConflict", "ReviewProblem", "Store", "StoreLocked",
           "TuringConflict", "TuringProblem", "UnknownDataset", "UnknownJob", "UnknownModel", "UnknownTuringSession",
           "User", "UserExists", "UserProblem"]
__all__ += ["BackupFailed", "DatabaseExport", "export_database_file", "import_database"]


class Store:
    def __init__(self, path: Path, *, migrate_to: int | None = None, review_group_commit: int = GROUP_COMMIT_MAX):
        self.db = Database(path, migrate_to=migrate_to)
        self.images = ImageQueries(self.db)
        self.jobs = JobQueries(self.db)
        self.datasets = DatasetQueries(self.db, path.parent / "datasets")
        self.models = ModelQueries(self.db)
        self.users = UserQueries(self.db)
        self.reviews = ReviewQueries(self.db, review_group_commit)
        self.turing = TuringQueries(self.db)

    @property
    def schema_version(self) -> int:
        return self.db.schema_version

    def backup(self, dest: Path) -> DatabaseExport:
        """Export the database into the new folder `dest` as one consistent snapshot, while other requests go on."""
        return export_database(self.db, dest)

    def referenced_files(self) -> dict[str, list[tuple[str, str | None]]]:
        """The files the rows point to (images, thumbnails, artifacts, manifests, models): a restore checks them."""
        return _referenced_files(self.db)

    def close(self) -> None:
        self.db.close()
