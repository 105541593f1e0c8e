"""The second process of the `floor-hop` chain: one gRPC unary method, bytes in and out.

No proto: a generic handler whose request and response are raw bytes (the request is the
edge's parsed chat request as orjson, the response the upstream's JSON as it came), so the
hop costs what gRPC itself costs plus one parse and one serialisation, nothing generated.
An upstream that fails or answers other than 200 ends the call UNAVAILABLE.

    python -m bench.floors.hop --port 9101 --upstream http://127.0.0.1:9000/v1/chat/completions
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc
import orjson
import uvloop

from bench.floors.upstream import UpstreamError, UpstreamPool

SERVICE = "bench.floor.v1.HopService"
CHAT_METHOD = f"/{SERVICE}/Chat"


def handler(pool: UpstreamPool) -> grpc.GenericRpcHandler[bytes, bytes]:
    async def chat(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        body = orjson.dumps(orjson.loads(request))  # parsed again, as a router would
        try:
            status, answer = await pool.post(body)
        except UpstreamError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        if status != 200:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"upstream answered {status}: {answer[:200]!r}")
        return answer

    # No (de)serializers: gRPC hands the handler the message bytes and sends back what it returns.
    return grpc.method_handlers_generic_handler(SERVICE, {"Chat": grpc.unary_unary_rpc_method_handler(chat)})


async def serve(port: int, upstream: str) -> None:
    pool = UpstreamPool(upstream)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler(pool),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)
    pool.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the upstream's chat completions URL")
    args = parser.parse_args(argv)
    uvloop.run(serve(args.port, args.upstream))


if __name__ == "__main__":
    main()
