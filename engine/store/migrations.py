"""Versioned schema migrations. Append only: a released migration is never edited, a new one is added.

`schema_version` holds one row per applied migration; opening a database applies the missing ones in order,
each in its own transaction.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "images and import batches", """
        CREATE TABLE import_batches (
            id VARCHAR PRIMARY KEY,
            format VARCHAR NOT NULL,
            source VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL,
            n_records INTEGER NOT NULL,
            n_added INTEGER NOT NULL,
            phantom BOOLEAN NOT NULL DEFAULT FALSE
        );
        CREATE TABLE images (
            id VARCHAR PRIMARY KEY,
            content_id VARCHAR NOT NULL,
            path VARCHAR NOT NULL,
            thumb_path VARCHAR NOT NULL,
            label VARCHAR NOT NULL CHECK (label IN ('akiec','bcc','bkl','df','mel','nv','vasc')),
            source VARCHAR NOT NULL CHECK (source IN ('real','synthetic')),
            split VARCHAR CHECK (split IN ('train','val','test')),
            lesion_id VARCHAR,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            format VARCHAR NOT NULL,
            size_bytes BIGINT NOT NULL,
            import_batch VARCHAR,
            original_name VARCHAR,
            metadata JSON,
            duplicate_of VARCHAR,
            created_at TIMESTAMP NOT NULL
        );
    """),
    (2, "synthetic provenance, scores and append-only reviews", """
        ALTER TABLE images ADD COLUMN generation_job VARCHAR;
        ALTER TABLE images ADD COLUMN seed BIGINT;
        ALTER TABLE images ADD COLUMN guidance DOUBLE;
        ALTER TABLE images ADD COLUMN steps INTEGER;
        ALTER TABLE images ADD COLUMN checkpoint VARCHAR;
        CREATE TABLE scores (
            image_id VARCHAR NOT NULL,
            name VARCHAR NOT NULL,
            value DOUBLE,
            ref VARCHAR,
            job_id VARCHAR,
            created_at TIMESTAMP NOT NULL,
            PRIMARY KEY (image_id, name)
        );
        CREATE SEQUENCE review_seq;
        CREATE TABLE reviews (
            seq BIGINT PRIMARY KEY DEFAULT nextval('review_seq'),
            image_id VARCHAR NOT NULL,
            reviewer VARCHAR NOT NULL,
            decision VARCHAR NOT NULL CHECK (decision IN ('accept','reject','unsure','undo')),
            undoes BIGINT,  -- for 'undo': the seq of the event it takes back
            reasons VARCHAR[],
            note VARCHAR,
            created_at TIMESTAMP NOT NULL
        );
    """),
]

LATEST_VERSION = MIGRATIONS[-1][0]
