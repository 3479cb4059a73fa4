"""histoscan: tumour detection in H&E histopathology."""

__version__ = "0.1.0"
