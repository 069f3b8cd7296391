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
        ALTER TABLE images ADD COLUMN generation_job BIGINT;
        ALTER TABLE images ADD COLUMN seed BIGINT;
        ALTER TABLE images ADD COLUMN guidance DOUBLE;
        ALTER TABLE images ADD COLUMN steps INTEGER;
        ALTER TABLE images ADD COLUMN checkpoint VARCHAR;
        CREATE TABLE scores (
            image_id VARCHAR NOT NULL,
            name VARCHAR NOT NULL,
            value DOUBLE,
            ref VARCHAR,
            job_id BIGINT,
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
    (3, "jobs, their events, metrics and artifacts", """
        CREATE SEQUENCE job_seq START 1;
        CREATE TABLE jobs (
            id BIGINT PRIMARY KEY DEFAULT nextval('job_seq'),
            kind VARCHAR NOT NULL,
            params JSON NOT NULL,
            state VARCHAR NOT NULL
                CHECK (state IN ('queued','running','cancelling','succeeded','failed','cancelled')),
            after BIGINT[] NOT NULL DEFAULT [],
            pipeline_id VARCHAR,
            pipeline_key VARCHAR,
            attempt INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL DEFAULT 2,
            num_processes INTEGER NOT NULL DEFAULT 1,
            heartbeat_timeout DOUBLE NOT NULL DEFAULT 300,
            pid INTEGER,
            progress_done DOUBLE,
            progress_total DOUBLE,
            progress_message VARCHAR,
            result JSON,
            error VARCHAR,
            created_at TIMESTAMP NOT NULL,
            started_at TIMESTAMP,
            finished_at TIMESTAMP,
            heartbeat_at TIMESTAMP
        );
        CREATE SEQUENCE job_event_seq START 1;
        CREATE TABLE job_events (
            seq BIGINT PRIMARY KEY DEFAULT nextval('job_event_seq'),
            job_id BIGINT NOT NULL,
            attempt INTEGER NOT NULL,
            event VARCHAR NOT NULL,
            message VARCHAR,
            created_at TIMESTAMP NOT NULL
        );
        CREATE TABLE metrics (
            job_id BIGINT NOT NULL,
            attempt INTEGER NOT NULL,
            name VARCHAR NOT NULL,
            step BIGINT NOT NULL,
            value DOUBLE,
            created_at TIMESTAMP NOT NULL
        );
        CREATE SEQUENCE artifact_seq START 1;
        CREATE TABLE artifacts (
            id BIGINT PRIMARY KEY DEFAULT nextval('artifact_seq'),
            job_id BIGINT NOT NULL,
            kind VARCHAR NOT NULL,
            path VARCHAR NOT NULL,
            sha256 VARCHAR NOT NULL,
            size_bytes BIGINT NOT NULL,
            created_at TIMESTAMP NOT NULL
        );
    """),
    (4, "frozen dataset versions", """
        CREATE TABLE datasets (
            id VARCHAR PRIMARY KEY,
            name VARCHAR NOT NULL,
            note VARCHAR,
            created_at TIMESTAMP NOT NULL,
            policy JSON NOT NULL,
            counts JSON NOT NULL,
            lineage JSON NOT NULL,
            manifest_path VARCHAR NOT NULL,
            manifest_sha256 VARCHAR NOT NULL,
            n_images INTEGER NOT NULL
        );
    """),
    (5, "exported models registered for serving", """
        CREATE SEQUENCE model_seq START 1;
        CREATE TABLE models (
            id BIGINT PRIMARY KEY DEFAULT nextval('model_seq'),
            name VARCHAR NOT NULL,
            job_id BIGINT NOT NULL,
            arch VARCHAR NOT NULL,
            image_size INTEGER NOT NULL,
            dataset VARCHAR,
            classifier_path VARCHAR NOT NULL,
            torchscript_path VARCHAR NOT NULL,
            onnx_path VARCHAR NOT NULL,
            evaluation JSON,
            check_max_abs_diff DOUBLE NOT NULL,
            served BOOLEAN NOT NULL DEFAULT FALSE,
            created_at TIMESTAMP NOT NULL
        );
    """),
    (6, "reviewer accounts, sessions and the review policy", """
        CREATE TABLE users (
            name VARCHAR PRIMARY KEY,
            role VARCHAR NOT NULL CHECK (role IN ('admin','reviewer','viewer')),
            salt BLOB NOT NULL,
            password_hash BLOB NOT NULL,
            created_at TIMESTAMP NOT NULL
        );
        CREATE TABLE sessions (
            token_sha256 VARCHAR PRIMARY KEY,  -- the token itself is never stored
            user_name VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL,
            expires_at TIMESTAMP NOT NULL,
            revoked BOOLEAN NOT NULL DEFAULT FALSE
        );
        -- append-only too: the policy in force is the latest row, and who changed it when stays visible
        CREATE SEQUENCE policy_seq START 1;
        CREATE TABLE review_policy (
            seq BIGINT PRIMARY KEY DEFAULT nextval('policy_seq'),
            accepts_needed INTEGER NOT NULL CHECK (accepts_needed >= 1),
            changed_by VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL
        );
    """),
    (7, "the blinded visual Turing test: sessions, their items and the readers' answers", """
        CREATE SEQUENCE turing_session_seq START 1;
        CREATE TABLE turing_sessions (
            id BIGINT PRIMARY KEY DEFAULT nextval('turing_session_seq'),
            name VARCHAR NOT NULL,
            created_by VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL,
            classes JSON NOT NULL,
            n_images INTEGER NOT NULL CHECK (n_images >= 1),
            real_fraction DOUBLE NOT NULL CHECK (real_fraction BETWEEN 0 AND 1),
            ask_class BOOLEAN NOT NULL,
            ask_realism BOOLEAN NOT NULL,
            seed BIGINT NOT NULL,  -- of the sampling, so a session can be drawn again from the same images
            image_side INTEGER NOT NULL,  -- every item is served square at this side, real and synthetic alike
            closed BOOLEAN NOT NULL DEFAULT FALSE,
            closed_by VARCHAR,
            closed_at TIMESTAMP
        );
        CREATE TABLE turing_items (
            session_id BIGINT NOT NULL,
            position INTEGER NOT NULL,  -- a shuffled order: sources are never grouped
            item_key VARCHAR NOT NULL,  -- a random token, what readers see instead of the image id
            image_id VARCHAR NOT NULL,
            source VARCHAR NOT NULL CHECK (source IN ('real','synthetic')),
            label VARCHAR NOT NULL CHECK (label IN ('akiec','bcc','bkl','df','mel','nv','vasc')),
            PRIMARY KEY (session_id, item_key),
            UNIQUE (session_id, position)
        );
        -- append-only: an answer is final, and one reader answers an item once
        CREATE TABLE turing_answers (
            session_id BIGINT NOT NULL,
            item_key VARCHAR NOT NULL,
            reviewer VARCHAR NOT NULL,
            says VARCHAR NOT NULL CHECK (says IN ('real','synthetic')),
            class_guess VARCHAR CHECK (class_guess IN ('akiec','bcc','bkl','df','mel','nv','vasc')),
            realism INTEGER CHECK (realism BETWEEN 1 AND 5),
            created_at TIMESTAMP NOT NULL,
            PRIMARY KEY (session_id, item_key, reviewer)
        );
    """),
    (8, "review requests: a retried POST /reviews records its decisions once", """
        -- a client's request id per bulk decision, and the events it made: the same id again returns them
        CREATE TABLE review_requests (
            request_id VARCHAR NOT NULL,
            reviewer VARCHAR NOT NULL,
            seqs BIGINT[] NOT NULL,
            created_at TIMESTAMP NOT NULL,
            PRIMARY KEY (reviewer, request_id)
        );
    """),
    (9, "import batches say how their images were split and which rows they skipped", """
        -- lesion-aware / per-image / given: how far the figures on this data's test split can be trusted
        ALTER TABLE import_batches ADD COLUMN split_kind VARCHAR;
        -- rows left out because their image file was missing (--skip-missing), each named: JSON list
        ALTER TABLE import_batches ADD COLUMN skipped JSON;
    """),
    (10, "blind reading is part of the review policy", """
        -- whether a reviewer sees others' decisions on an image before deciding it; NULL (rows from before this
        -- column) reads as the default, blind
        ALTER TABLE review_policy ADD COLUMN blind BOOLEAN;
    """),
    (11, "jobs say what they ask of a machine, and which Slurm job runs them", """
        -- JobResources as JSON (nodes, GPUs, CPUs, memory, time limit, partition); NULL reads as the defaults
        ALTER TABLE jobs ADD COLUMN resources JSON;
        -- the running attempt's Slurm job id under the Slurm executor: the key that re-attaches a restarted
        -- engine to it instead of submitting it again
        ALTER TABLE jobs ADD COLUMN slurm_job_id VARCHAR;
    """),
]

LATEST_VERSION = MIGRATIONS[-1][0]
