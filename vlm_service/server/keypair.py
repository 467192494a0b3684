"""Key files on disk: a certificate + key pair, and the private (0700) folders they live in. Below both tls.py
(serving them) and pki.py (making them), so neither imports the other for these.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its private key on disk."""

    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes]:
        """(key PEM, cert PEM) in the order grpc wants them."""
        return self.key.read_bytes(), self.cert.read_bytes()


def ensure_private_dir(path: Path) -> Path:
    """`path` as a folder; the folders this creates (it and missing parents) are 0700 whatever the umask. An
    existing folder keeps its mode (the operator chose it)."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:  # made meanwhile by another process
            continue
        os.chmod(folder, 0o700)  # mkdir's mode is masked by the umask
    return path
