"""Where each deep backbone's ImageNet weights are found (``blastscan weights``), downloading the missing
ones on request."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from blastscan.features.deep import BACKBONES, download_weights, file_sha256, find_weights

__all__ = ["WeightsStatus", "weights_status"]


@dataclass
class WeightsStatus:
    """One backbone's weights: the file and its hash, or why none was found."""

    backbone: str
    path: Path | None
    sha256: str | None = None
    missing: str = ""

    def line(self) -> str:
        if self.path is None:
            return f"{self.backbone:<13} missing: {self.missing}"
        size = self.path.stat().st_size
        return f"{self.backbone:<13} found: {self.path} ({size:,} bytes) sha256 {self.sha256}"


def weights_status(weights_dir: str | os.PathLike | None = None, *, download: bool = False) -> list[WeightsStatus]:
    """Per backbone, the weight file ``extract`` would use (looked up in ``weights_dir``, else the Keras
    cache); with ``download``, Keras' files are fetched first for the missing ones (needs internet)."""
    out = []
    for name, backbone in BACKBONES.items():
        found = find_weights(backbone, weights_dir)
        if found.path is None and download:
            download_weights(backbone, weights_dir)
            found = find_weights(backbone, weights_dir)
        if found.path is None:
            out.append(WeightsStatus(name, None, missing=found.missing_error().why))
        else:
            out.append(WeightsStatus(name, found.path, sha256=file_sha256(found.path)))
    return out
