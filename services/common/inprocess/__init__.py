"""An in-process gRPC channel: the generated async stubs call servicers of this process
directly, with the proto objects (no serialization, no socket), while callers and
servicers see what they see over a connection: metadata and trailers, status codes and
rich errors (grpc.aio.AioRpcError), deadlines and cancellation. grpc-java's in-process
transport is the model; only unary-unary and unary-stream methods are carried.

Messages are passed by reference: a servicer must treat its request as read-only (the
router's does) and a caller must not change a request while its call runs.

Cost, on the co-located mode's hot path: a unary call runs its handler inline, in the task
that awaits it (no task or queue per call), and the client interceptors run there too. A
stream's handler runs in a task of its own, as on a server, so a deadline or cancel stops it
wherever it is, and it can run a few messages ahead of a slow reader (a flow-control window).

The parts: channel (InProcessChannel and the multi-callables it hands the stubs), calls
(the unary and stream call objects), intercepted (the calls made through client
interceptors), context (the servicer's side of a call), handlers (the method handlers of
the registrations, found through the server interceptors), inline (work run in the
awaiting task), base (what they all share).
"""

from services.common.inprocess.calls import STREAM_WINDOW
from services.common.inprocess.channel import InProcessChannel
from services.common.inprocess.handlers import default_server_interceptors

__all__ = ["STREAM_WINDOW", "InProcessChannel", "default_server_interceptors"]
