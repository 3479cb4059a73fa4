"""HTTP serving: FastAPI app with micro-batched inference, Grad-CAM, metrics and a web page."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from histoscan.serve.settings import ServeSettings

if TYPE_CHECKING:
    from histoscan.serve.app import app_from_env, create_app

__all__ = ["ServeSettings", "app_from_env", "create_app"]


def __getattr__(name: str) -> Any:
    """`create_app` and `app_from_env`, imported (with FastAPI) only when first used."""
    if name in ("app_from_env", "create_app"):
        return getattr(importlib.import_module("histoscan.serve.app"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
