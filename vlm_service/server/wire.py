"""Registering the servicer with request bytes that fail to decode answered as INVALID_ARGUMENT.

grpc's generated `add_..._to_server` deserializes with `Message.FromString`; a DecodeError there (undecodable bytes,
invalid UTF-8 in a string field) ends the call with UNKNOWN before our code runs. Here every method of the service
gets a deserializer that turns that error into an `Undecodable` marker, and a behaviour wrapper that answers the
marker with INVALID_ARGUMENT (quoting no bytes). Built from the service descriptor, so new methods are covered.
"""

from __future__ import annotations

import grpc
from google.protobuf.message import DecodeError

from vlm_service._proto.vlm.v1 import vlm_pb2

SERVICE = vlm_pb2.DESCRIPTOR.services_by_name["VisionLanguageService"]


class Undecodable:
    """What the deserializer returns for bytes that are not a valid request message."""

    def __init__(self, type_name: str, error: Exception):
        self.message = f"request: not a valid {type_name} (protobuf decode failed: {str(error)[:80]})"


def _deserializer(cls):
    def deserialize(data: bytes):
        try:
            return cls.FromString(data)
        except (DecodeError, UnicodeDecodeError, ValueError) as exc:
            return Undecodable(cls.DESCRIPTOR.full_name, exc)
    return deserialize


def _guard_unary(behavior):
    async def guarded(request, context):
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await behavior(request, context)
    return guarded


def _guard_stream(behavior):
    async def guarded(request, context):
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        async for response in behavior(request, context):
            yield response
    return guarded


def _handler(method, behavior):
    request_cls = getattr(vlm_pb2, method.input_type.name)
    response_cls = getattr(vlm_pb2, method.output_type.name)
    if method.client_streaming:
        raise NotImplementedError(f"{method.name}: client streaming is not handled here")
    make, guard = ((grpc.unary_stream_rpc_method_handler, _guard_stream) if method.server_streaming
                   else (grpc.unary_unary_rpc_method_handler, _guard_unary))
    return make(guard(behavior), request_deserializer=_deserializer(request_cls),
                response_serializer=response_cls.SerializeToString)


def add_servicer(servicer, server) -> None:
    """The servicer's methods on `server`, as the generated add_VisionLanguageServiceServicer_to_server does."""
    handlers = {m.name: _handler(m, getattr(servicer, m.name)) for m in SERVICE.methods}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)
