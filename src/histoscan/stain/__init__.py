"""stain."""
