"""Training: GradCache, the embedder and reranker trainers on Ray Train."""
