"""Running analysis jobs: the DB-backed queue, the shared run path, the local executor."""
