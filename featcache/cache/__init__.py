"""Phase 2, the feature cache: its key and provenance, shards, the writer (extraction on any number of
processes), the reader, and streaming for caches larger than memory."""
