"""`histoscan serve` options (stdlib only: the CLI reads them without importing FastAPI)."""

from __future__ import annotations

from dataclasses import dataclass

from histoscan.options.model import check_device, device_opt
from histoscan.ranges import Options, opt


@dataclass
class ServeSettings(Options):
    """Server options; every default, range and help text of `histoscan serve` lives here (checked when built)."""

    host: str = opt("127.0.0.1", "address to bind (127.0.0.1: this machine only)")
    port: int = opt(8000, "port (0: any free one)", kind=int, low=0, high=65_535)
    workers: int = opt(1, "server processes, each with its own model", kind=int, low=1, high=256)
    device: str = device_opt()
    max_upload_mb: float = opt(
        10.0, "request body cap in MB (413)", kind=float, low=0, low_open=True, high=10_240
    )
    # declared width x height of one image (decompression bombs)
    max_pixels: int = opt(4096 * 4096, "largest width x height of an image", kind=int, low=1, high=2**31)
    max_files: int = opt(256, "images in one /v1/predict request", kind=int, low=1, high=100_000)
    max_batch: int = opt(64, "largest micro-batch (1: no batching)", kind=int, low=1, high=4096)
    max_wait_ms: float = opt(10.0, "how long a batch waits to fill", kind=float, low=0, high=60_000)
    queue_size: int = opt(256, "images waiting at most, then 503", kind=int, low=1, high=1_000_000)
    retry_after_s: int = opt(1, kind=int, low=0, high=3600, cli=False)
    # None: taken from $HISTOSCAN_API_KEY when the app is created (never an option: it would show in `ps`)
    api_key: str | None = opt(None, cli=False)

    def check(self) -> None:
        check_device(self.device)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
