"""5. Decompression bomb: a small PNG declaring 30k x 30k is refused from its header; peak RSS stays bounded."""

from __future__ import annotations

import functools
import resource
import struct
import zlib

import grpc
import pytest
from grpc_status import rpc_status

from reliability_helpers import collect, png
from vlm_service.client import build_request
from vlm_service.server import convert

SIDE = 30_000


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@functools.lru_cache(maxsize=1)
def bomb_png() -> bytes:
    """A complete, valid 30000x30000 1-bit grayscale PNG of zeros (~100 KB; 2.7 GB as decoded RGB)."""
    row = b"\0" * (1 + SIDE // 8 + 1)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row * 1000) for _ in range(SIDE // 1000)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", SIDE, SIDE, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def test_bomb_refused_from_header_with_bounded_rss(server, stub):
    bomb = bomb_png()
    assert len(bomb) < 1 << 20
    before = _peak_rss_mb()
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as err:
            collect(stub.Generate(build_request("what is it", [bomb], max_tokens=2)))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert convert.field_violations(rpc_status.from_call(err.value)) == ["messages[0].content[0].image"]
    assert _peak_rss_mb() - before < 200, "decoding even a part of 900 M pixels would show in the peak RSS"
    tokens, _ = collect(stub.Generate(build_request("and this", [png(seed=50)], max_tokens=2)))
    assert tokens
