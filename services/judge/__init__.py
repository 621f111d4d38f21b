"""The judge: shadow results against the frontier and reviewed labels."""
