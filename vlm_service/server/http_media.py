"""Fetch the images a chat request names by URL, under the operator's rules (off unless asked):

- http(s): only hosts listed in --allowed-media-domains (exact names, case-insensitive); no redirects (a redirect could
  leave the list); a total timeout (--media-fetch-timeout-s) and a size cap (--max-media-bytes) while streaming.
- file://: only regular files under --allowed-local-media-path (symlinks resolved before the check), same size cap.
Every refusal is an InvalidInput (400) or TooLarge (413) naming the field, e.g. messages[0].content[1].image_url.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import unquote, urlparse

from vlm_service import errors, types
from vlm_service.config import HTTPConfig
from vlm_service.server.http_convert import ChatCall, UrlImage


def _bad(field: str, message: str) -> errors.InvalidInput:
    return errors.InvalidInput(f"{field}: {message}", field=field)


def _too_large(field: str, cap: int) -> errors.TooLarge:
    return errors.TooLarge(f"{field}: the image is over the {cap} byte cap", field=field)


def _mime(content_type: str | None) -> str:
    """The declared image mime type ("" = let the decoder sniff the bytes)."""
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    return mime if mime.startswith("image/") else ""


async def _fetch_http(ref: UrlImage, cfg: HTTPConfig, client) -> types.ImageInput:
    import httpx

    host = (urlparse(ref.url).hostname or "").lower()
    if not cfg.allowed_media_domains:
        raise _bad(ref.field, "http(s) image URLs are off on this server (--allowed-media-domains); send a data: URL")
    if host not in {d.lower() for d in cfg.allowed_media_domains}:
        raise _bad(ref.field, f"host {host[:60]!r} is not in --allowed-media-domains")
    try:
        async with asyncio.timeout(cfg.media_fetch_timeout_s):
            async with client.stream("GET", ref.url) as resp:
                if resp.status_code != 200:
                    raise _bad(ref.field, f"fetching the image gave HTTP {resp.status_code}")
                data = await _read_capped(resp, cfg.max_media_bytes, ref.field)
                return types.ImageInput(data=data, mime_type=_mime(resp.headers.get("content-type")))
    except TimeoutError:
        raise _bad(ref.field, f"fetching the image took over {cfg.media_fetch_timeout_s:g}s") from None
    except httpx.HTTPError as exc:
        raise _bad(ref.field, f"fetching the image failed: {type(exc).__name__}") from None


async def _read_capped(resp, cap: int, field: str) -> bytes:
    declared = resp.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise _too_large(field, cap)
    buf = bytearray()
    async for piece in resp.aiter_bytes():
        buf += piece
        if len(buf) > cap:
            raise _too_large(field, cap)
    return bytes(buf)


def _read_local(ref: UrlImage, cfg: HTTPConfig) -> types.ImageInput:
    if cfg.allowed_local_media_path is None:
        raise _bad(ref.field, "file:// image URLs are off on this server (--allowed-local-media-path)")
    root = Path(cfg.allowed_local_media_path).resolve()
    path = Path(unquote(urlparse(ref.url).path)).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise _bad(ref.field, "not a file under --allowed-local-media-path")
    if path.stat().st_size > cfg.max_media_bytes:
        raise _too_large(ref.field, cfg.max_media_bytes)
    return types.ImageInput(data=path.read_bytes(), mime_type="")


async def resolve(call: ChatCall, cfg: HTTPConfig, client) -> None:
    """Replace every UrlImage of `call` by the fetched ImageInput, fetching them concurrently."""
    if not call.urls:
        return

    async def one(ref: UrlImage) -> types.ImageInput:
        if ref.url.lower().startswith("file:"):
            return await asyncio.to_thread(_read_local, ref, cfg)
        return await _fetch_http(ref, cfg, client)

    fetched = dict(zip(map(id, call.urls), await asyncio.gather(*(one(r) for r in call.urls))))
    for _, parts in call.messages:
        parts[:] = [fetched.get(id(p), p) if isinstance(p, UrlImage) else p for p in parts]
    call.urls = []
