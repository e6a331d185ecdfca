"""The embedded default's scaffolding: the synthetic corpus and its ground truth, the label
judge, and the tiny checkpoints (random-init for tests, trained for the demo).

Application code, not library: the library reaches it only by name (``eval.groups: demo``,
``judge.backend: label``), never by import. Importing this package imports nothing.
"""
