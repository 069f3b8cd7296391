"""DerMAE Studio engine: the server that owns the database, the importers, jobs and recipes."""

__version__ = "0.1.0"
