"""Does the method work? UniME-V2 against InfoNCE on the demo corpus (see README.md here)."""
