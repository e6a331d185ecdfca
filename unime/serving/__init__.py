"""Retrieve-then-rerank on Ray Serve: request models and validation, deployments, the app."""
