"""Search indexes of a corpus: FAISS index + id -> record table + a manifest tying both to the
embedder checkpoint that made the vectors."""

from unime.index.artifact import (
    IndexArtifact,
    IndexSpec,
    build_faiss_index,
    checkpoint_fingerprint,
    load_index,
    write_index,
)

__all__ = ["IndexArtifact", "IndexSpec", "build_faiss_index", "checkpoint_fingerprint", "load_index", "write_index"]
