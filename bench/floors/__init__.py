"""Reference floors for bench.gateway: the least a Python gateway of Interlock's shape can cost.

Throwaway chains, not products: `edge` is uvicorn (httptools, uvloop) with a raw ASGI app
that parses the chat request and either calls the upstream itself (`floor-nohop`) or makes
one `grpc.aio` unary call to `hop` (`floor-hop`), a second process that parses it again and
calls the upstream; both reach the upstream through `upstream`, raw keep-alive HTTP/1.1
on an asyncio Protocol and the httptools parser. Non-stream chat only; the upstream's JSON
is forwarded as it came.
"""
