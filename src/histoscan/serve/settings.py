"""`histoscan serve` options (stdlib only: the CLI reads the defaults without importing FastAPI)."""

from __future__ import annotations

from dataclasses import dataclass

from histoscan.ranges import check_ranges, ranged


@dataclass
class ServeSettings:
    """Server options; every default and range of `histoscan serve` lives here (checked when built)."""

    host: str = "127.0.0.1"
    port: int = ranged(8000, int, low=0, high=65_535)  # 0: any free port
    workers: int = ranged(1, int, low=1, high=256)  # server processes, each with its own model
    device: str = "auto"  # auto: CUDA when available
    max_upload_mb: float = ranged(10.0, float, low=0, low_open=True, high=10_240)  # whole request body
    # declared width x height of one image (decompression bombs)
    max_pixels: int = ranged(4096 * 4096, int, low=1, high=2**31)
    max_files: int = ranged(256, int, low=1, high=100_000)  # images in one /v1/predict request
    max_batch: int = ranged(64, int, low=1, high=4096)
    max_wait_ms: float = ranged(10.0, float, low=0, high=60_000)
    queue_size: int = ranged(256, int, low=1, high=1_000_000)
    retry_after_s: int = ranged(1, int, low=0, high=3600)
    api_key: str | None = None  # None: taken from $HISTOSCAN_API_KEY when the app is created

    def __post_init__(self) -> None:
        check_ranges(self)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
