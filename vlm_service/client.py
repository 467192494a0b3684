"""A small client library: sync `Client` and asyncio `AsyncClient` (streaming generate, info, abort).

TLS by default, trusting the server's dev CA in the state dir (state_dir/tls/ca.crt) unless `ca` is given; `cert` and
`key` add a client certificate (mTLS); `insecure=True` for plaintext; `unix:/path` targets for a UDS (plaintext by
default there, like the server).
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import AsyncIterator, Iterator, Sequence

import grpc

from vlm_service._proto.vlm.v1 import vlm_pb2, vlm_pb2_grpc
from vlm_service.config import DEFAULT_DEADLINE_S, DEFAULT_MAX_TOKENS, default_state_dir
from vlm_service.server.tls import channel_credentials

DEFAULT_TARGET = "127.0.0.1:50051"
_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


ImageArg = bytes | str | Path | tuple[bytes, str]


def _add_image(content, image: ImageArg) -> None:
    """Append an image part to a repeated ContentPart field: bytes (type sniffed by the server), a file path (type
    from its name) or (bytes, mime type)."""
    target = content.add().image
    if isinstance(image, tuple):
        target.data, target.mime_type = image
    elif isinstance(image, (str, Path)):
        target.data = Path(image).read_bytes()
        target.mime_type = mimetypes.guess_type(str(image))[0] or ""
    else:
        target.data = image


def build_request(prompt: str, images: Sequence[ImageArg] = (), system: str | None = None,
                  request_id: str = "", videos: Sequence = (), **sampling) -> vlm_pb2.GenerateRequest:
    """One user turn (images first, then the text), optional system prompt; `sampling` are SamplingParams fields.
    max_tokens defaults to DEFAULT_MAX_TOKENS (256, the server's default too); max_tokens=None leaves it unset, so
    the server's --default-max-tokens applies.

    Built in place (messages.add(), content.add()): handing a finished sub-message to a constructor copies it,
    and with protobuf's upb backend building GenerateRequest(messages=[Message(content=[ContentPart(image=...)])])
    around one 3.1 MB PNG took 6-11 ms on this project's CPU machine against 0.07 ms in place."""
    sampling.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
    if sampling["max_tokens"] is None:
        del sampling["max_tokens"]
    request = vlm_pb2.GenerateRequest(request_id=request_id, sampling=vlm_pb2.SamplingParams(**sampling))
    if system:
        request.messages.add(role="system").content.add(text=system)
    user = request.messages.add(role="user")
    for image in images:
        _add_image(user.content, image)
    for video in videos:
        _add_video(user.content, video)
    user.content.add(text=prompt)
    return request


def _add_video(content, video) -> None:
    """Append a video part: a file path, bytes, or (bytes, mime type[, sampling fps])."""
    target = content.add().video
    if isinstance(video, (str, Path)):
        target.data = Path(video).read_bytes()
        target.mime_type = mimetypes.guess_type(str(video))[0] or ""
    elif isinstance(video, tuple):
        target.data, target.mime_type = video[0], video[1]
        if len(video) > 2 and video[2]:
            target.fps = video[2]
    else:
        target.data = video


def credentials(target: str, ca: str | Path | None = None, cert: str | Path | None = None,
                key: str | Path | None = None, insecure: bool = False,
                state_dir: str | Path | None = None) -> grpc.ChannelCredentials | None:
    """Channel credentials under the service's policy; None means plaintext."""
    if insecure or (target.startswith("unix:") and ca is None and cert is None):
        return None
    if ca is None:
        dev_ca = Path(state_dir or default_state_dir()) / "tls" / "ca.crt"
        ca = dev_ca if dev_ca.exists() else None  # fall back to the system roots
    return channel_credentials(ca, cert, key)


def _channel(module, target: str, creds: grpc.ChannelCredentials | None, server_name: str | None):
    if server_name is None and creds is not None and target.startswith("unix:"):
        server_name = "localhost"  # TLS over a socket: the authority would be the path; certificates name localhost
    options = list(_OPTIONS) + ([("grpc.ssl_target_name_override", server_name)] if server_name else [])
    if creds is None:
        return module.insecure_channel(target, options=options)
    return module.secure_channel(target, creds, options=options)


class Client:
    """Blocking client. Use as a context manager or call close()."""

    def __init__(self, target: str = DEFAULT_TARGET, *, server_name: str | None = None,
                 channel_credentials: grpc.ChannelCredentials | None = None, **tls):
        creds = channel_credentials if channel_credentials is not None else credentials(target, **tls)
        self.channel = _channel(grpc, target, creds, server_name)
        self.stub = vlm_pb2_grpc.VisionLanguageServiceStub(self.channel)

    def generate(self, request: vlm_pb2.GenerateRequest,
                 timeout: float | None = DEFAULT_DEADLINE_S) -> Iterator[vlm_pb2.GenerateResponse]:
        """Stream responses: Chunks, then one Complete. Raises grpc.RpcError on errors. timeout: the deadline in
        seconds (default 300, the server's default too; None = none)."""
        return self.stub.Generate(request, timeout=timeout)

    def generate_text(self, prompt: str, images=(), timeout: float | None = DEFAULT_DEADLINE_S,
                      **sampling) -> tuple[str, vlm_pb2.Complete]:
        """Convenience: the whole text and the Complete of one request (max_tokens 256 unless given)."""
        text, complete = [], None
        for resp in self.generate(build_request(prompt, images, **sampling), timeout=timeout):
            if resp.HasField("chunk"):
                text.append(resp.chunk.text)
            else:
                complete = resp.complete
        return "".join(text), complete

    def info(self, timeout: float | None = 10.0) -> vlm_pb2.ModelInfo:
        return self.stub.GetModelInfo(vlm_pb2.GetModelInfoRequest(), timeout=timeout)

    def abort(self, request_id: str, timeout: float | None = 10.0) -> bool:
        return self.stub.Abort(vlm_pb2.AbortRequest(request_id=request_id), timeout=timeout).found

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncClient:
    """asyncio client (grpc.aio). Use as an async context manager or await close()."""

    def __init__(self, target: str = DEFAULT_TARGET, *, server_name: str | None = None,
                 channel_credentials: grpc.ChannelCredentials | None = None, **tls):
        creds = channel_credentials if channel_credentials is not None else credentials(target, **tls)
        self.channel = _channel(grpc.aio, target, creds, server_name)
        self.stub = vlm_pb2_grpc.VisionLanguageServiceStub(self.channel)

    def generate(self, request: vlm_pb2.GenerateRequest,
                 timeout: float | None = DEFAULT_DEADLINE_S) -> AsyncIterator[vlm_pb2.GenerateResponse]:
        """The streaming call (iterate with `async for`; .cancel() cancels it); timeout as in Client.generate."""
        return self.stub.Generate(request, timeout=timeout)

    async def generate_text(self, prompt: str, images=(), timeout: float | None = DEFAULT_DEADLINE_S,
                            **sampling) -> tuple[str, vlm_pb2.Complete]:
        """Convenience: the whole text and the Complete of one request (max_tokens 256 unless given)."""
        text, complete = [], None
        async for resp in self.generate(build_request(prompt, images, **sampling), timeout=timeout):
            if resp.HasField("chunk"):
                text.append(resp.chunk.text)
            else:
                complete = resp.complete
        return "".join(text), complete

    async def info(self, timeout: float | None = 10.0) -> vlm_pb2.ModelInfo:
        return await self.stub.GetModelInfo(vlm_pb2.GetModelInfoRequest(), timeout=timeout)

    async def abort(self, request_id: str, timeout: float | None = 10.0) -> bool:
        return (await self.stub.Abort(vlm_pb2.AbortRequest(request_id=request_id), timeout=timeout)).found

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()


# substrings of gRPC's connection errors -> what the user can do about them (client.error_hint)
_HINTS = (
    ("Socket closed", "the server may speak TLS here: drop --insecure (plaintext against a TLS port)"),
    ("WRONG_VERSION_NUMBER", "the server may be plaintext here: add --insecure"),
    ("CERTIFICATE_VERIFY_FAILED", "the server's certificate is not signed by a CA this client trusts: --ca FILE, "
                                  "or the same --state-dir as the server (its dev CA is STATE_DIR/tls/ca.crt)"),
    ("Hostname Verification", "the certificate does not name the host dialled: --server-name NAME "
                              "(the dev certificate names localhost)"),
    ("not in peer certificate", "the certificate does not name the host dialled: --server-name NAME "
                                "(the dev certificate names localhost)"),
    ("Connection refused", "nothing listens there: is `vlm-service serve` running, on this --target?"),
    ("No such file or directory", "no socket at that path: is the server running with this --uds?"),
)


def error_hint(exc: grpc.RpcError) -> str:
    """A hint for a failed call's connection error ("" when there is none to give)."""
    details = exc.details() or ""
    for needle, hint in _HINTS:
        if needle in details:
            return hint
    return ""


def error_line(exc: grpc.RpcError) -> str:
    """`CODE: details (hint)` on one line."""
    details = " ".join((exc.details() or "").split())
    hint = error_hint(exc)
    return f"{exc.code().name}: {details}" + (f" (hint: {hint})" if hint else "")
