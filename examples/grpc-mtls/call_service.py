"""Call a platform service over mutual TLS from Python, as an operator.

The platform's gRPC services accept only clients that present a certificate
from the platform CA, and check per RPC what that identity may call. The
development PKI (`platform certs`, or the launcher on first start) writes an
operator certificate to data/certs; this script uses it to ask a service for
its health and its build.

    python3 -m venv /tmp/grpc-venv
    /tmp/grpc-venv/bin/pip install grpcio==1.76.0 grpcio-health-checking==1.76.0
    /tmp/grpc-venv/bin/python examples/grpc-mtls/call_service.py ingest 127.0.0.1:50051

The server's certificate names its identity (`ingest.platform.internal`),
not the address you dial, so the script tells gRPC which name to expect.
"""

import argparse
import pathlib
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def fields(message: bytes) -> dict:
    """The string fields of a protobuf message, by field number (enough for
    GetServiceInfoResponse's name and version without generated code)."""
    found, i = {}, 0
    while i < len(message):
        key, i = varint(message, i)
        number, wire_type = key >> 3, key & 7
        if wire_type == 2:
            length, i = varint(message, i)
            found[number] = message[i : i + length]
            i += length
        elif wire_type == 0:
            _, i = varint(message, i)
        else:
            break
    return found


def varint(data: bytes, i: int) -> tuple:
    value, shift = 0, 0
    while True:
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if byte < 0x80:
            return value, i
        shift += 7


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("service", help="ingest, worker or numerics")
    parser.add_argument("address", help="host:port of its gRPC listener")
    parser.add_argument("--certs", default="data/certs", type=pathlib.Path)
    parser.add_argument("--identity", default="operator")
    args = parser.parse_args()

    credentials = grpc.ssl_channel_credentials(
        root_certificates=(args.certs / "ca.pem").read_bytes(),
        private_key=(args.certs / f"{args.identity}.key").read_bytes(),
        certificate_chain=(args.certs / f"{args.identity}.pem").read_bytes(),
    )
    options = [("grpc.ssl_target_name_override", f"{args.service}.platform.internal")]
    with grpc.secure_channel(args.address, credentials, options) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        print("health:", health_pb2.HealthCheckResponse.ServingStatus.Name(health.status))
        info = channel.unary_unary(
            "/platform.service.v1.ServiceInfoService/GetServiceInfo",
            request_serializer=None,
            response_deserializer=None,
        )(b"", timeout=5)
        build = fields(info)
        print("service:", build.get(1, b"").decode(), "version:", build.get(2, b"").decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
