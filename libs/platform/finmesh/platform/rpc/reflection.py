"""Server reflection on grpc.reflection.v1 and v1alpha, over every type a caller of the server meets.

What reflection can resolve is a descriptor pool. The default pool holds whatever the process happened
to import, so notify (which never imports finmesh.common.v1.errors) could not resolve the ErrorReason its
refusals carry. Each server therefore serves a pool of its own, built from its services' files and the
files of every error detail type (google.rpc.Status, ErrorInfo, BadRequest, RetryInfo, ...; the finmesh
reason codes), each with all it imports: the same detail types on every service, whatever its code imports.

grpcio-reflection implements only v1alpha (grpc/grpc#38576). v1 is the same protocol renamed (the same
messages with the same field numbers), so the one servicer answers both, and the pool carries a v1 file
made from the v1alpha one for clients that describe the reflection service itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import (
    reflection,
    reflection_pb2,
    reflection_pb2_grpc,
)

from finmesh.common.v1 import errors_pb2

# The files of every type a refusal can carry in its google.rpc.Status details.
ERROR_DETAIL_FILES = (status_pb2.DESCRIPTOR, error_details_pb2.DESCRIPTOR, errors_pb2.DESCRIPTOR)
V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
_V1ALPHA_PACKAGE, _V1_PACKAGE = "grpc.reflection.v1alpha", "grpc.reflection.v1"


def enable_reflection(server: grpc.aio.Server, services: Sequence[ServiceDescriptor]) -> None:
    """Serve reflection (v1 and v1alpha) for `services`, health, reflection itself and the error details."""
    pool = reflection_pool(
        [*(s.file for s in services), *ERROR_DETAIL_FILES, health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR]
    )
    pool.Add(_v1_file())
    names = [*(s.full_name for s in services), health.SERVICE_NAME, reflection.SERVICE_NAME, V1_SERVICE_NAME]
    servicer = reflection.aio.ReflectionServicer(names, pool=pool)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                V1_SERVICE_NAME,
                {
                    "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                        servicer.ServerReflectionInfo,
                        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
                    ),
                },
            ),
        )
    )


def reflection_pool(files: Iterable[FileDescriptor]) -> descriptor_pool.DescriptorPool:
    """A pool of `files` and everything they import, dependencies first (as a pool must receive them)."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        pool.AddSerializedFile(file.serialized_pb)
        added.add(file.name)

    for file in files:
        add(file)
    return pool


def _v1_file() -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto, made from the v1alpha file by renaming its package."""
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = "grpc/reflection/v1/reflection.proto"  # its name upstream
    proto.package = _V1_PACKAGE
    proto.ClearField("options")  # v1alpha's: deprecated, and other languages' package names
    old, new = f".{_V1ALPHA_PACKAGE}.", f".{_V1_PACKAGE}."
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # scalars have none, and must not get an empty one
                field.type_name = field.type_name.replace(old, new)
    for method in proto.service[0].method:
        method.input_type = method.input_type.replace(old, new)
        method.output_type = method.output_type.replace(old, new)
    return proto
