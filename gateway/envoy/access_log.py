"""Envoy's access log: one JSON object a line, fields picked one by one."""

from __future__ import annotations

from typing import Any

# The transcoder rewrites :method to POST; a filter keeps the client's here for the log.
CLIENT_METHOD_HEADER = "x-interlock-client-method"


def access_log(path: str) -> list[dict[str, Any]]:
    """One JSON object a line. Request headers are picked one by one: never Authorization."""
    fields = {
        "time": "%START_TIME%",
        "request_id": "%REQ(X-REQUEST-ID)%",
        "client_ip": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
        "method": f"%REQ({CLIENT_METHOD_HEADER}?:METHOD)%",
        # The path as the client sent it (before transcoding), without the query string.
        "path": "%PATH(NQ)%",
        "protocol": "%PROTOCOL%",
        "status": "%RESPONSE_CODE%",
        "grpc_status": "%GRPC_STATUS%",
        "response_flags": "%RESPONSE_FLAGS%",
        "details": "%RESPONSE_CODE_DETAILS%",
        "bytes_received": "%BYTES_RECEIVED%",
        "bytes_sent": "%BYTES_SENT%",
        "duration_ms": "%DURATION%",
        "upstream_ms": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
        "upstream_cluster": "%UPSTREAM_CLUSTER%",
        "upstream_host": "%UPSTREAM_HOST%",
        "user_agent": "%REQ(USER-AGENT)%",
    }
    return [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": path,
                "log_format": {"json_format": fields},
            },
        }
    ]
