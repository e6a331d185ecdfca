"""Experiments over the library, run from the repository root (``python -m experiments.<name>.run``);
not part of the installed package."""
