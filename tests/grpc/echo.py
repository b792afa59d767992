"""A gRPC echo service and its client, with raw-bytes messages (no generated stubs), for the
gateway's gRPC tests (tests/tests/grpc.rs).

    python echo.py serve PORT          # echo.Echo/Unary, /Collect (client stream),
                                       # /Expand (server stream), /Chat (both ways), /Slow
    python echo.py call TARGET AUTHORITY CALL...
                                       # each CALL: unary:TEXT, collect:A,B,C, expand:N,
                                       # chat:A,B,C, slow:TIMEOUT_S, raw:/pkg.Svc/Method;
                                       # prints one JSON line per call
"""
import json
import sys
import time
from concurrent import futures

import grpc

identity = lambda b: b


def serve(port):
    def unary(request, context):
        return b"echo:" + request

    def collect(requests, context):
        return b"+".join(requests)

    def expand(request, context):
        for i in range(int(request)):
            yield f"part {i}".encode()

    def chat(requests, context):
        for r in requests:
            yield b"re:" + r

    def slow(request, context):
        time.sleep(float(request))
        return b"late"

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, identity, identity),
        "Collect": grpc.stream_unary_rpc_method_handler(collect, identity, identity),
        "Expand": grpc.unary_stream_rpc_method_handler(expand, identity, identity),
        "Chat": grpc.stream_stream_rpc_method_handler(chat, identity, identity),
        "Slow": grpc.unary_unary_rpc_method_handler(slow, identity, identity),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("echo.Echo", handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def call(target, authority, calls):
    channel = grpc.insecure_channel(target, options=[("grpc.default_authority", authority)])
    for spec in calls:
        kind, _, arg = spec.partition(":")
        result = {"call": spec}
        try:
            if kind == "unary":
                result["reply"] = channel.unary_unary("/echo.Echo/Unary", identity, identity)(arg.encode(), timeout=10).decode()
            elif kind == "collect":
                parts = iter([p.encode() for p in arg.split(",")])
                result["reply"] = channel.stream_unary("/echo.Echo/Collect", identity, identity)(parts, timeout=10).decode()
            elif kind == "expand":
                stream = channel.unary_stream("/echo.Echo/Expand", identity, identity)(arg.encode(), timeout=10)
                result["reply"] = [r.decode() for r in stream]
            elif kind == "chat":
                parts = iter([p.encode() for p in arg.split(",")])
                stream = channel.stream_stream("/echo.Echo/Chat", identity, identity)(parts, timeout=10)
                result["reply"] = [r.decode() for r in stream]
            elif kind == "slow":
                result["reply"] = channel.unary_unary("/echo.Echo/Slow", identity, identity)(b"3", timeout=float(arg)).decode()
            elif kind == "raw":
                result["reply"] = channel.unary_unary(arg, identity, identity)(b"x", timeout=10).decode()
            result["code"] = "OK"
        except grpc.RpcError as e:
            result["code"] = e.code().name
            result["details"] = e.details()
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        call(sys.argv[2], sys.argv[3], sys.argv[4:])
