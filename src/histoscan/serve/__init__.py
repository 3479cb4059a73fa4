"""HTTP serving: FastAPI app with micro-batched inference, Grad-CAM, metrics and a web page."""

from histoscan.serve.app import ServeSettings, app_from_env, create_app

__all__ = ["ServeSettings", "app_from_env", "create_app"]
