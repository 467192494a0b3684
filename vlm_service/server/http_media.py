"""Fetch the images and videos a chat request names by URL, under the operator's rules (off unless asked):

- http(s): only hosts listed in --allowed-media-domains (exact names, case-insensitive); no redirects (a redirect could
  leave the list); a total timeout (--media-fetch-timeout-s) and a size cap (--max-media-bytes) while streaming.
- file://: only regular files under --allowed-local-media-path (symlinks resolved before the check), same size cap.
Every refusal is an InvalidInput (400) or TooLarge (413) naming the field, e.g. messages[0].content[1].image_url (or .video_url).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import unquote, urlparse

from vlm_service import errors, types
from vlm_service.config import HTTPConfig
from vlm_service.server.http_convert import ChatCall, UrlMedia


def _bad(field: str, message: str) -> errors.InvalidInput:
    return errors.InvalidInput(f"{field}: {message}", field=field)


def _too_large(field: str, cap: int) -> errors.TooLarge:
    return errors.TooLarge(f"{field}: the file is over the {cap} byte cap", field=field)


def _mime(content_type: str | None, kind: str) -> str:
    """The declared image / video mime type ("" = let the decoder sniff the bytes)."""
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    return mime if mime.startswith(kind + "/") else ""


def _media(ref: UrlMedia, data: bytes, mime: str) -> types.ImageInput | types.VideoInput:
    if ref.kind == "video":
        return types.VideoInput(data=data, mime_type=mime, fps=ref.fps, max_frames=ref.max_frames)
    return types.ImageInput(data=data, mime_type=mime)


async def _fetch_http(ref: UrlMedia, cfg: HTTPConfig, client) -> types.ImageInput | types.VideoInput:
    import httpx

    host = (urlparse(ref.url).hostname or "").lower()
    if not cfg.allowed_media_domains:
        raise _bad(ref.field, f"http(s) {ref.kind} URLs are off on this server (--allowed-media-domains); send a data: URL")
    if host not in {d.lower() for d in cfg.allowed_media_domains}:
        raise _bad(ref.field, f"host {host[:60]!r} is not in --allowed-media-domains")
    try:
        async with asyncio.timeout(cfg.media_fetch_timeout_s):
            async with client.stream("GET", ref.url) as resp:
                if resp.status_code != 200:
                    raise _bad(ref.field, f"fetching the {ref.kind} gave HTTP {resp.status_code}")
                data = await _read_capped(resp, cfg.max_media_bytes, ref.field)
                return _media(ref, data, _mime(resp.headers.get("content-type"), ref.kind))
    except TimeoutError:
        raise _bad(ref.field, f"fetching the {ref.kind} took over {cfg.media_fetch_timeout_s:g}s") from None
    except httpx.HTTPError as exc:
        raise _bad(ref.field, f"fetching the {ref.kind} failed: {type(exc).__name__}") from None


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


def _read_local(ref: UrlMedia, cfg: HTTPConfig) -> types.ImageInput | types.VideoInput:
    if cfg.allowed_local_media_path is None:
        raise _bad(ref.field, f"file:// {ref.kind} URLs are off on this server (--allowed-local-media-path)")
    root = Path(cfg.allowed_local_media_path).resolve()
    path = Path(unquote(urlparse(ref.url).path)).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise _bad(ref.field, "not a file under --allowed-local-media-path")
    if path.stat().st_size > cfg.max_media_bytes:
        raise _too_large(ref.field, cfg.max_media_bytes)
    return _media(ref, path.read_bytes(), "")


async def resolve(call: ChatCall, cfg: HTTPConfig, client) -> None:
    """Replace every UrlMedia of `call` by the fetched ImageInput / VideoInput, fetching them concurrently."""
    if not call.urls:
        return

    async def one(ref: UrlMedia) -> types.ImageInput | types.VideoInput:
        if ref.url.lower().startswith("file:"):
            return await asyncio.to_thread(_read_local, ref, cfg)
        return await _fetch_http(ref, cfg, client)

    fetched = dict(zip(map(id, call.urls), await asyncio.gather(*(one(r) for r in call.urls))))
    for _, parts in call.messages:
        parts[:] = [fetched.get(id(p), p) if isinstance(p, UrlMedia) else p for p in parts]
    call.urls = []
