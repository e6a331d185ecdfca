"""unime: UniME-V2 universal multimodal embeddings, mined, trained and served on Ray.

Importing the package has no side effects: no Ray start, no I/O, no model loads.
"""

__version__ = "0.1.0"
