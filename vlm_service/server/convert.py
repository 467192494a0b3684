"""The only place where proto messages and internal types meet (DESIGN.md: proto <-> types in exactly one module).

Also maps user errors (vlm_service/errors.py) to gRPC status codes with google.rpc rich details.
"""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from vlm_service import errors, types
from vlm_service._proto.vlm.v1 import vlm_pb2
# request-id bounds and quoting are transport-neutral (the pipeline checks ids too); re-exported here
from vlm_service.client_text import (MAX_REQUEST_ID_CHARS, QUOTE_CHARS, REQUEST_ID_RE,  # noqa: F401
                                     check_request_id, quote)

ROLES = ("system", "user", "assistant")
INTERNAL_MESSAGE = errors.INTERNAL_MESSAGE  # what a client sees of an unexpected failure
# Bounds on the strings a client sends (issue 12): each is echoed, logged or kept per request, so each is capped.
MAX_MIME_TYPE_CHARS = 64
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_STOP_TOKEN_IDS = 64
MAX_MESSAGES = 1024
MAX_PARTS = 4096  # content parts over all messages
MAX_TEXT_CHARS = 1 << 20  # text over all parts; a prompt over the context is refused later, this bounds the work

_FINISH = {
    types.FinishReason.STOP: vlm_pb2.STOP,
    types.FinishReason.LENGTH: vlm_pb2.LENGTH,
    types.FinishReason.STOP_SEQUENCE: vlm_pb2.STOP_SEQUENCE,
    types.FinishReason.ABORT: vlm_pb2.ABORT,
}



def _check(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise errors.InvalidInput(f"{field}: {message}", field=field)


def _check_stops(sp: vlm_pb2.SamplingParams) -> None:
    _check(len(sp.stop) <= MAX_STOP_STRINGS, "sampling.stop", f"at most {MAX_STOP_STRINGS} stop strings")
    for i, s in enumerate(sp.stop):
        _check(len(s) <= MAX_STOP_CHARS, f"sampling.stop[{i}]",
               f"at most {MAX_STOP_CHARS} characters, got {len(s)} ({quote(s)})")
    _check(len(sp.stop_token_ids) <= MAX_STOP_TOKEN_IDS, "sampling.stop_token_ids",
           f"at most {MAX_STOP_TOKEN_IDS} token ids")


def _check_sizes(messages) -> None:
    """Counts and total text, before any per-part work (a cheap pass over the proto)."""
    _check(len(messages) <= MAX_MESSAGES, "messages", f"at most {MAX_MESSAGES} messages, got {len(messages)}")
    parts = sum(len(m.content) for m in messages)
    _check(parts <= MAX_PARTS, "messages", f"at most {MAX_PARTS} content parts in all, got {parts}")
    chars = sum(len(p.text) for m in messages for p in m.content if p.WhichOneof("kind") == "text")
    _check(chars <= MAX_TEXT_CHARS, "messages", f"at most {MAX_TEXT_CHARS} characters of text in all, got {chars}")


def _finite(value: float, field: str) -> float:
    _check(math.isfinite(value), field, "must be a finite number")
    return value


def sampling_from_proto(sp: vlm_pb2.SamplingParams) -> types.SamplingParams:
    """SamplingParams; unset optional fields take the defaults. The values are checked once, by the pipeline
    (engine.validate_sampling), whichever transport they came from."""
    d = types.SamplingParams()
    opt = lambda name, default: getattr(sp, name) if sp.HasField(name) else default  # noqa: E731
    _check_stops(sp)  # string bounds; the values are checked by validate_sampling
    return types.SamplingParams(
        temperature=opt("temperature", d.temperature), top_p=opt("top_p", d.top_p), top_k=opt("top_k", d.top_k),
        min_p=opt("min_p", d.min_p), seed=opt("seed", None), max_tokens=opt("max_tokens", None),
        min_tokens=sp.min_tokens, stop=tuple(sp.stop), stop_token_ids=tuple(sp.stop_token_ids),
        ignore_eos=sp.ignore_eos, repetition_penalty=opt("repetition_penalty", d.repetition_penalty),
        logprobs=sp.logprobs, top_logprobs=sp.top_logprobs)


def _part_from_proto(part: vlm_pb2.ContentPart, field: str) -> types.ContentPart:
    kind = part.WhichOneof("kind")
    _check(kind is not None, field, "a content part needs text, image or video")
    if kind == "text":
        return part.text
    if kind == "video":
        return video_from_proto(part.video, f"{field}.video")
    mime = part.image.mime_type
    _check(len(mime) <= MAX_MIME_TYPE_CHARS, f"{field}.image.mime_type",
           f"at most {MAX_MIME_TYPE_CHARS} characters, got {len(mime)} ({quote(mime)})")
    return types.ImageInput(data=part.image.data, mime_type=part.image.mime_type)


def video_from_proto(v: vlm_pb2.Video, field: str) -> types.VideoInput:
    """A VideoInput with its fields checked (data xor frames, timing, sampling); decodes nothing."""
    has_frames = v.HasField("frames") and len(v.frames.frames) > 0
    _check(bool(v.data) or has_frames, field, "a video needs data (the file) or frames")
    _check(len(v.mime_type) <= MAX_MIME_TYPE_CHARS, f"{field}.mime_type",
           f"at most {MAX_MIME_TYPE_CHARS} characters, got {len(v.mime_type)} ({quote(v.mime_type)})")
    _check(not (v.data and has_frames), field, "give either data or frames, not both")
    fps = _finite(v.fps, f"{field}.fps") if v.HasField("fps") else None
    _check(fps is None or fps > 0, f"{field}.fps", "must be > 0")
    _check(not v.HasField("max_frames") or v.max_frames >= 1, f"{field}.max_frames", "must be >= 1")
    frames, stamps, frames_fps = (), (), 0.0
    if has_frames:
        f = v.frames
        stamps = tuple(_finite(t, f"{field}.frames.timestamps") for t in f.timestamps)
        frames_fps = _finite(f.fps, f"{field}.frames.fps")
        _check(bool(stamps) or frames_fps > 0, f"{field}.frames", "frames need timestamps or an fps > 0")
        _check(not stamps or len(stamps) == len(f.frames), f"{field}.frames.timestamps",
               f"{len(stamps)} timestamps for {len(f.frames)} frames")
        frames = tuple(types.ImageInput(data=img.data, mime_type=img.mime_type) for img in f.frames)
    return types.VideoInput(data=v.data, mime_type=v.mime_type, frames=frames, timestamps=stamps,
                            frames_fps=frames_fps, fps=fps,
                            max_frames=v.max_frames if v.HasField("max_frames") else None)


def messages_from_proto(messages) -> tuple[types.ChatMessage, ...]:
    """Chat messages, roles and parts checked; fields named like messages[1].content[0]."""
    _check(len(messages) > 0, "messages", "at least one message is needed")
    _check_sizes(messages)
    out = []
    for i, msg in enumerate(messages):
        _check(msg.role in ROLES, f"messages[{i}].role", f"must be one of {', '.join(ROLES)}, not {quote(msg.role)}")
        parts = tuple(_part_from_proto(p, f"messages[{i}].content[{j}]") for j, p in enumerate(msg.content))
        out.append(types.ChatMessage(role=msg.role, content=parts))
    return tuple(out)


def count_images(req: vlm_pb2.GenerateRequest) -> int:
    """Images in a request, counted on the proto (cheap: before any decode)."""
    return sum(p.WhichOneof("kind") == "image" for m in req.messages for p in m.content)


def count_videos(req: vlm_pb2.GenerateRequest) -> int:
    """Videos in a request, counted on the proto (before any decode)."""
    return sum(p.WhichOneof("kind") == "video" for m in req.messages for p in m.content)


def request_from_proto(req: vlm_pb2.GenerateRequest, request_id: str, arrival_time: float) -> types.Request:
    """A validated internal Request (raises errors.InvalidInput naming the field); `request_id` is the engine's id
    (the client's own, or namespaced per identity by vlm_service/ownership.py)."""
    check_request_id(req.request_id)
    return types.Request(request_id=request_id, messages=messages_from_proto(req.messages),
                         sampling=sampling_from_proto(req.sampling), arrival_time=arrival_time)


def _logprob_to_proto(lp: types.TokenLogprob) -> vlm_pb2.TokenLogprob:
    top = [vlm_pb2.TopLogprob(token_id=t, logprob=v) for t, v in lp.top]
    return vlm_pb2.TokenLogprob(token_id=lp.token_id, logprob=lp.logprob, top=top)


def _usage_to_proto(u: types.Usage) -> vlm_pb2.Usage:
    return vlm_pb2.Usage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
                         cached_tokens=u.cached_tokens, image_tokens=u.image_tokens)


def _timings_to_proto(t: types.Timings) -> vlm_pb2.Timings:
    return vlm_pb2.Timings(queue_ms=t.queue_ms, preprocess_ms=t.preprocess_ms, vision_ms=t.vision_ms,
                           prefill_ms=t.prefill_ms, ttft_ms=t.ttft_ms, e2e_ms=t.e2e_ms,
                           decode_ms=getattr(t, "decode_ms", 0.0))


def output_to_proto(out: types.EngineOutput, request_id: str | None = None) -> vlm_pb2.GenerateResponse:
    """A TokenDelta becomes a Chunk, a Finished becomes the Complete; `request_id` (the client's id) replaces the
    engine's, which may be namespaced."""
    rid = out.request_id if request_id is None else request_id
    if isinstance(out, types.TokenDelta):
        chunk = vlm_pb2.Chunk(token_ids=list(out.token_ids), text=out.text,
                              logprobs=[_logprob_to_proto(lp) for lp in out.logprobs])
        return vlm_pb2.GenerateResponse(request_id=rid, chunk=chunk)
    complete = vlm_pb2.Complete(finish_reason=_FINISH[out.finish_reason], matched_stop=out.matched_stop,
                                usage=_usage_to_proto(out.usage), timings=_timings_to_proto(out.timings))
    return vlm_pb2.GenerateResponse(request_id=rid, complete=complete)


def model_info_to_proto(info) -> vlm_pb2.ModelInfo:
    """runtime.ModelInfo -> proto ModelInfo."""
    return vlm_pb2.ModelInfo(
        model_id=info.model_id, architecture=info.architecture, max_context=info.max_context,
        max_images=info.max_images, max_pixels=info.max_pixels, accepted_mime_types=list(info.accepted_mime_types),
        vit_attention_backend=info.vit_attention_backend, device=info.device, dtype=info.dtype,
        vit_backend_choices=dict(info.vit_backend_choices), **_video_info(info))


def _video_info(info) -> dict:
    """The ModelInfo video fields (a runtime.ModelInfo without them reports none)."""
    v = getattr(info, "video", None)
    if v is None:
        return {}
    return dict(max_videos=v.max_videos, max_video_bytes=v.max_bytes, max_video_frames=v.max_frames,
                max_video_duration_s=v.max_duration_s, max_visual_tokens=v.max_visual_tokens,
                accepted_video_mime_types=list(v.mime_types), max_video_fps=v.max_fps,
                max_video_frame_pixels=v.max_frame_pixels)


def status_code(exc: errors.ServiceError) -> grpc.StatusCode:
    """The gRPC status code of a service error (its transport-neutral `code` is the gRPC code's name)."""
    return getattr(grpc.StatusCode, getattr(exc, "code", "INTERNAL"), grpc.StatusCode.INTERNAL)


def error_status(exc: errors.ServiceError) -> status_pb2.Status:
    """A google.rpc.Status for `exc`; INVALID_ARGUMENT with a field carries a BadRequest field violation."""
    code = status_code(exc)
    status = status_pb2.Status(code=code.value[0], message=str(exc))
    if (code == grpc.StatusCode.INVALID_ARGUMENT or isinstance(exc, errors.TooLarge)) and exc.field:
        detail = any_pb2.Any()
        violation = error_details_pb2.BadRequest.FieldViolation(field=exc.field, description=str(exc))
        detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
        status.details.append(detail)
    elif code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.RetryInfo())
        status.details.append(detail)
    return status


def status_metadata(status: status_pb2.Status) -> tuple:
    """Trailing metadata carrying the rich status (what grpc_status.rpc_status.from_call reads)."""
    return rpc_status.to_status(status).trailing_metadata


def field_violations(status: status_pb2.Status | None) -> list[str]:
    """The fields named by BadRequest details of a rich status (client side)."""
    fields = []
    for detail in status.details if status else ():
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields.extend(v.field for v in bad.field_violations)
    return fields


__all__ = ["request_from_proto", "check_request_id", "quote", "sampling_from_proto", "messages_from_proto",
           "count_images", "count_videos", "video_from_proto", "output_to_proto",
           "status_code", "error_status", "status_metadata", "field_violations", "model_info_to_proto"]
