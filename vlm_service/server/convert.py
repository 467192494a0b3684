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

ROLES = ("system", "user", "assistant")
MAX_TOP_LOGPROBS = 20

_FINISH = {
    types.FinishReason.STOP: vlm_pb2.STOP,
    types.FinishReason.LENGTH: vlm_pb2.LENGTH,
    types.FinishReason.STOP_SEQUENCE: vlm_pb2.STOP_SEQUENCE,
    types.FinishReason.ABORT: vlm_pb2.ABORT,
}

_CODES = [  # most specific first
    (errors.DuplicateRequest, grpc.StatusCode.ALREADY_EXISTS),
    (errors.Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.ShuttingDown, grpc.StatusCode.UNAVAILABLE),
    (errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
]


def _check(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise errors.InvalidInput(f"{field}: {message}", field=field)


def _finite(value: float, field: str) -> float:
    _check(math.isfinite(value), field, "must be a finite number")
    return value


def sampling_from_proto(sp: vlm_pb2.SamplingParams) -> types.SamplingParams:
    """Validated SamplingParams; unset optional fields take the defaults. Errors name the field (sampling.top_p)."""
    d = types.SamplingParams()
    temperature = _finite(sp.temperature, "sampling.temperature") if sp.HasField("temperature") else d.temperature
    top_p = _finite(sp.top_p, "sampling.top_p") if sp.HasField("top_p") else d.top_p
    top_k = sp.top_k if sp.HasField("top_k") else d.top_k
    min_p = _finite(sp.min_p, "sampling.min_p") if sp.HasField("min_p") else d.min_p
    rep = _finite(sp.repetition_penalty, "sampling.repetition_penalty") if sp.HasField("repetition_penalty") \
        else d.repetition_penalty
    max_tokens = sp.max_tokens if sp.HasField("max_tokens") else None
    _check(temperature >= 0, "sampling.temperature", "must be >= 0")
    _check(0 < top_p <= 1, "sampling.top_p", "must be in (0, 1]")
    _check(top_k >= 0, "sampling.top_k", "must be >= 0 (0 = off)")
    _check(0 <= min_p <= 1, "sampling.min_p", "must be in [0, 1]")
    _check(max_tokens is None or max_tokens >= 1, "sampling.max_tokens", "must be >= 1 when set")
    _check(sp.min_tokens >= 0, "sampling.min_tokens", "must be >= 0")
    _check(max_tokens is None or sp.min_tokens <= max_tokens, "sampling.min_tokens", "must be <= max_tokens")
    _check(rep > 0, "sampling.repetition_penalty", "must be > 0")
    _check(sp.top_logprobs == 0 or sp.logprobs, "sampling.top_logprobs", "needs sampling.logprobs = true")
    _check(0 <= sp.top_logprobs <= MAX_TOP_LOGPROBS, "sampling.top_logprobs", f"must be in [0, {MAX_TOP_LOGPROBS}]")
    _check(all(s for s in sp.stop), "sampling.stop", "stop strings must not be empty")
    _check(all(t >= 0 for t in sp.stop_token_ids), "sampling.stop_token_ids", "token ids must be >= 0")
    return types.SamplingParams(
        temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
        seed=sp.seed if sp.HasField("seed") else None, max_tokens=max_tokens, min_tokens=sp.min_tokens,
        stop=tuple(sp.stop), stop_token_ids=tuple(sp.stop_token_ids), ignore_eos=sp.ignore_eos,
        repetition_penalty=rep, logprobs=sp.logprobs, top_logprobs=sp.top_logprobs)


def _part_from_proto(part: vlm_pb2.ContentPart, field: str) -> types.ContentPart:
    kind = part.WhichOneof("kind")
    _check(kind is not None, field, "a content part needs text or image")
    if kind == "text":
        return part.text
    return types.ImageInput(data=part.image.data, mime_type=part.image.mime_type)


def messages_from_proto(messages) -> tuple[types.ChatMessage, ...]:
    """Chat messages, roles and parts checked; fields named like messages[1].content[0]."""
    _check(len(messages) > 0, "messages", "at least one message is needed")
    out = []
    for i, msg in enumerate(messages):
        _check(msg.role in ROLES, f"messages[{i}].role", f"must be one of {', '.join(ROLES)}, not {msg.role!r}")
        parts = tuple(_part_from_proto(p, f"messages[{i}].content[{j}]") for j, p in enumerate(msg.content))
        out.append(types.ChatMessage(role=msg.role, content=parts))
    return tuple(out)


def count_images(req: vlm_pb2.GenerateRequest) -> int:
    """Images in a request, counted on the proto (cheap: before any decode)."""
    return sum(p.WhichOneof("kind") == "image" for m in req.messages for p in m.content)


def request_from_proto(req: vlm_pb2.GenerateRequest, request_id: str, arrival_time: float) -> types.Request:
    """A validated internal Request (raises errors.InvalidInput naming the field)."""
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
                           prefill_ms=t.prefill_ms, ttft_ms=t.ttft_ms, e2e_ms=t.e2e_ms)


def output_to_proto(out: types.EngineOutput) -> vlm_pb2.GenerateResponse:
    """A TokenDelta becomes a Chunk, a Finished becomes the Complete."""
    if isinstance(out, types.TokenDelta):
        chunk = vlm_pb2.Chunk(token_ids=list(out.token_ids), text=out.text,
                              logprobs=[_logprob_to_proto(lp) for lp in out.logprobs])
        return vlm_pb2.GenerateResponse(request_id=out.request_id, chunk=chunk)
    complete = vlm_pb2.Complete(finish_reason=_FINISH[out.finish_reason], matched_stop=out.matched_stop,
                                usage=_usage_to_proto(out.usage), timings=_timings_to_proto(out.timings))
    return vlm_pb2.GenerateResponse(request_id=out.request_id, complete=complete)


def model_info_to_proto(info) -> vlm_pb2.ModelInfo:
    """runtime.ModelInfo -> proto ModelInfo."""
    return vlm_pb2.ModelInfo(
        model_id=info.model_id, architecture=info.architecture, max_context=info.max_context,
        max_images=info.max_images, max_pixels=info.max_pixels, accepted_mime_types=list(info.accepted_mime_types),
        vit_attention_backend=info.vit_attention_backend, device=info.device, dtype=info.dtype,
        vit_backend_choices=dict(info.vit_backend_choices))


def status_code(exc: errors.ServiceError) -> grpc.StatusCode:
    """The gRPC status code of a user error."""
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def error_status(exc: errors.ServiceError) -> status_pb2.Status:
    """A google.rpc.Status for `exc`; INVALID_ARGUMENT with a field carries a BadRequest field violation."""
    code = status_code(exc)
    status = status_pb2.Status(code=code.value[0], message=str(exc))
    if code == grpc.StatusCode.INVALID_ARGUMENT and exc.field:
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


__all__ = ["request_from_proto", "sampling_from_proto", "messages_from_proto", "count_images", "output_to_proto",
           "status_code", "error_status", "status_metadata", "field_violations", "model_info_to_proto"]
