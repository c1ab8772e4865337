"""Free ports, so a test run never meets another run, nor a user's server on the default ports.

Every server a test starts (TorchServe, `serve run`, the MLflow server) gets ports the kernel just
handed out, through the same TS_* variables users have: `places.address` reads them, and
TorchServe reads any TS_<KEY> variable as its config key <key> (enable_envvars_config=true).
"""

from __future__ import annotations

import contextlib
import socket

from catsdogs_pl import places

# TorchServe 0.12's own names (ConfigManager's TS_* fields) of the gRPC ports, 7070 and 7071 by
# default: TorchServe starts both gRPC servers whatever config.properties says.
GRPC_PORTS = ("TS_GRPC_INFERENCE_PORT", "TS_GRPC_MANAGEMENT_PORT")


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that nothing listened on at 127.0.0.1 a moment ago. They are held
    open together until all are chosen (so no two are equal), then released for the server."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def torchserve_ports() -> dict[str, str]:
    """TS_INFERENCE_ADDRESS, TS_MANAGEMENT_ADDRESS, TS_METRICS_ADDRESS, TS_WORKER_METRICS_ADDRESS
    and the two gRPC ports, each on its own free port of 127.0.0.1."""
    ports = free_ports(len(places.ADDRESS_KINDS) + len(GRPC_PORTS))
    env = {
        f"TS_{kind.upper()}_ADDRESS": f"http://127.0.0.1:{port}"
        for kind, port in zip(places.ADDRESS_KINDS, ports, strict=False)
    }
    env.update(zip(GRPC_PORTS, map(str, ports[len(places.ADDRESS_KINDS) :]), strict=True))
    return env
