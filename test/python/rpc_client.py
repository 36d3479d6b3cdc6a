"""A JSON-RPC client written in the Python lab's style, as a peer for rpc.ts's tests.

Like the lab's: a connection per call, the request sent as {"method", "params"} with no newline and no id, and one
recv(1024) taken as the whole reply. Standard library only.

    python3 test/python/rpc_client.py [PORT]    # default 5000
"""
import json
import socket
import sys

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 5000


def rpc_call(method, params):
    with socket.create_connection(("127.0.0.1", PORT)) as connection:
        connection.sendall(json.dumps({"method": method, "params": params}).encode())
        return json.loads(connection.recv(1024).decode())


for method, params in [("add", [10, 20]), ("multiply", [5, 6]), ("divide", [10, 5])]:
    print(f"{method}{tuple(params)} -> {rpc_call(method, params)}")
