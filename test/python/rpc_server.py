"""A JSON-RPC server written in the Python lab's style, as a peer for rpc.ts's tests and benchmark.

Like the lab's: a thread per client, one recv(1024) taken as the whole request, {"method", "params"} in,
{"result": ...} or {"error": "some text"} out, one call per connection. Standard library only.

    python3 test/python/rpc_server.py [PORT]    # default 5000; 0 picks a free port; prints "listening on PORT"
"""
import json
import socket
import sys
import threading

FUNCTIONS = {
    "add": lambda a, b: a + b,
    "multiply": lambda a, b: a * b,
}


def answer(data):
    """The reply's text for one request's text: a result, or what went wrong."""
    try:
        request = json.loads(data)
        method = request["method"]
        if method not in FUNCTIONS:
            return json.dumps({"error": "Method not found"})
        return json.dumps({"result": FUNCTIONS[method](*request.get("params", []))})
    except Exception as error:  # the lab's way: any failure is sent as its text
        return json.dumps({"error": str(error)})


def serve(client):
    """One connection: one read (a longer or split request is cut short, as in the lab), one reply, closed."""
    with client:
        data = client.recv(1024).decode()
        client.sendall(answer(data).encode())


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(128)
    print(f"listening on {server.getsockname()[1]}", flush=True)
    while True:
        client, _ = server.accept()
        threading.Thread(target=serve, args=(client,), daemon=True).start()


if __name__ == "__main__":
    main()
