"""`histoscan serve` options (stdlib only: the CLI reads the defaults without importing FastAPI)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeSettings:
    """Server options; every default of `histoscan serve` lives here."""

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    device: str = "auto"  # auto: CUDA when available
    max_upload_mb: float = 10.0  # whole request body
    max_pixels: int = 4096 * 4096  # declared width x height of one image (decompression bombs)
    max_files: int = 256  # images in one /v1/predict request
    max_batch: int = 64
    max_wait_ms: float = 10.0
    queue_size: int = 256
    retry_after_s: int = 1
    api_key: str | None = None  # None: taken from $HISTOSCAN_API_KEY when the app is created

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
