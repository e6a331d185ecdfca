"""Pipeline plumbing: stage manifests, Ray start-up, and the stages themselves."""
