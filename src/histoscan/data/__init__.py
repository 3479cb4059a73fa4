"""Data: sources and decoding, the packed patch store, splits and loaders."""
