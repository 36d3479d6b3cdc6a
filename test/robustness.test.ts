/**
 * No handler, peer or stall takes the server down or holds it: whatever a
 * handler throws, slow senders and non-readers, TLS handshakes that never
 * finish, one address taking every place, and clients that must give up in
 * time. Over real sockets on port 0, like rpc.test.ts.
 */
import { spawn } from "node:child_process";
import { once } from "node:events";
import { createConnection } from "node:net";
import { createInterface } from "node:readline";
import { setTimeout as delay } from "node:timers/promises";
import { Buffer } from "node:buffer";
import { describe, expect, test, vi } from "vitest";
import { connect, ERROR_CODES, type Functions, handleMessage, rpcCall } from "../rpc.ts";
import {
  ask,
  cleanups,
  errorReply,
  fakeServer,
  hasPython,
  hasSecondLoopback,
  openPeer,
  type Peer,
  pem,
  serverTls,
  start,
  TEST_FUNCTIONS,
  unhandled,
  waitFor,
} from "./helpers.ts";

// ---------------------------------------------------------------------------
// No handler, peer or stall takes the server down or holds it
// ---------------------------------------------------------------------------

/** Values a careless or hostile handler might throw: none of them can even be turned into text safely. */
const ODD_THROWS: Array<[string, () => unknown]> = [
  ["an object with no prototype", () => Object.create(null)],
  ["an object whose code getter throws", () => ({
    get code() {
      throw new Error("no code");
    },
    message: "x",
  })],
  ["an object whose message getter throws", () => ({
    code: 1,
    get message() {
      throw Object.create(null);
    },
  })],
  ["an Error whose message getter throws", () =>
    Object.defineProperty(new Error(), "message", {
      get() {
        throw Object.create(null);
      },
    })],
  ["a Proxy whose every trap throws", () =>
    new Proxy({}, {
      get() {
        throw Object.create(null);
      },
      getPrototypeOf() {
        throw Object.create(null);
      },
    })],
  ["undefined", () => undefined],
  ["a Symbol", () => Symbol("odd")],
];

/** For each odd value: a method that throws it, one that rejects with it, and one that returns something made of it. */
const ODD_FUNCTIONS: Functions = Object.fromEntries(
  ODD_THROWS.flatMap(([name, make]) => [
    [`throws ${name}`, () => {
      throw make();
    }],
    [`rejects with ${name}`, () => Promise.reject(make())],
    [`returns an object whose toJSON throws ${name}`, () => ({
      toJSON() {
        throw make();
      },
    })],
  ]),
);
ODD_FUNCTIONS["returns a Proxy whose every trap throws"] = () => ODD_THROWS[4][1]();
ODD_FUNCTIONS["returns a Promise whose then throws"] = () => {
  const promise = Promise.resolve(1);
  promise.then = () => {
    throw Object.create(null);
  };
  return promise;
};

describe("handler faults are replies", () => {
  test.each(Object.keys(ODD_FUNCTIONS))(
    "a method that %s: -32603 with its id, and the request behind it is answered",
    async (method) => {
      const { port } = await start({ functions: { ...TEST_FUNCTIONS, ...ODD_FUNCTIONS } });
      const peer = await openPeer(port);
      await peer.send(
        JSON.stringify({ jsonrpc: "2.0", method, id: 1 }) + JSON.stringify({ method, id: 2 }) + // 2.0, then 1.0
          '{"jsonrpc":"2.0","method":"add","params":[1,2],"id":3}',
      );
      const replies = (await peer.replies(3)) as Array<{ id: number }>;
      const byId = replies.sort((a, b) => a.id - b.id);
      expect(byId[0]).toEqual(errorReply(ERROR_CODES.INTERNAL_ERROR, 1));
      expect(byId[1]).toEqual({ result: null, error: expect.any(String), id: 2 });
      expect(byId[2]).toEqual({ jsonrpc: "2.0", result: 3, id: 3 });
    },
  );

  test("handleMessage() turns every odd throw into a reply, and its Promise never rejects", async () => {
    for (const method of Object.keys(ODD_FUNCTIONS)) {
      const reply = await handleMessage({ jsonrpc: "2.0", method, id: 1 }, { functions: ODD_FUNCTIONS });
      expect(reply, method).toMatchObject({ jsonrpc: "2.0", id: 1 });
    }
  });

  test("a result longer than maxReplyBytes is not sent: -32603 says so, and the connection goes on", async () => {
    const { port } = await start({ maxReplyBytes: 1000 });
    const peer = await openPeer(port);
    await peer.send(`{"jsonrpc":"2.0","method":"echo","params":["${"x".repeat(2000)}"],"id":1}`);
    const [reply] = await peer.replies(1);
    expect(reply).toEqual(errorReply(ERROR_CODES.INTERNAL_ERROR, 1));
    expect(JSON.stringify(reply)).toContain("over the server's limit of 1000");
    await peer.send('{"jsonrpc":"2.0","method":"echo","params":["short"],"id":2}');
    expect((await peer.replies(2))[1]).toEqual({ jsonrpc: "2.0", result: ["short"], id: 2 });
  });

  test("a log or trace that throws does not stop the server", async () => {
    const thrower = () => {
      throw Object.create(null);
    };
    const { port } = await start({ log: thrower, trace: thrower });
    expect(await rpcCall("add", [1, 2], { port })).toMatchObject({ result: 3 });
    expect(await ask(port, "garbage")).toEqual(errorReply(ERROR_CODES.PARSE_ERROR));
  });

  test("idleTimeoutMs: Infinity means no timeout (a timer that long would fire at once)", async () => {
    const { port } = await start({ idleTimeoutMs: Infinity });
    const peer = await openPeer(port);
    await delay(100);
    await peer.send('{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1}');
    expect(await peer.replies(1)).toEqual([{ jsonrpc: "2.0", result: 3, id: 1 }]);
  });
});

/** Sends `text` on the peer every `ms` until it is closed; resolves how long it lasted. */
async function dribble(peer: Peer, text: () => string, ms: number): Promise<number> {
  const started = Date.now();
  const timer = setInterval(() => peer.socket.writable && peer.socket.write(text()), ms);
  cleanups.push(() => clearInterval(timer));
  await peer.closed();
  clearInterval(timer);
  return Date.now() - started;
}

describe("idle means no progress", () => {
  test("a client that sends a space every 50 ms is closed (idleTimeoutMs 200)", async () => {
    const { port } = await start({ idleTimeoutMs: 200 });
    const lasted = await dribble(await openPeer(port), () => " ", 50);
    expect(lasted).toBeGreaterThanOrEqual(150);
    expect(lasted).toBeLessThan(1000);
  });

  test("a message that grows by two bytes every 50 ms, never ending, is closed", async () => {
    const { port } = await start({ idleTimeoutMs: 200 });
    const peer = await openPeer(port);
    await peer.send('{"jsonrpc":"2.0","method":"echo","params":["');
    expect(await dribble(peer, () => "xx", 50)).toBeLessThan(1000);
  });

  test("a client that completes a request every 50 ms is not idle", async () => {
    const { port } = await start({ idleTimeoutMs: 200 });
    const peer = await openPeer(port);
    for (let id = 0; id < 16; id++) {
      await peer.send(`{"jsonrpc":"2.0","method":"add","params":[${id},1],"id":${id}}`);
      await delay(50);
    }
    expect(await peer.replies(16)).toHaveLength(16); // 800 ms, four times the timeout, and still open
  });

  test("a client that never reads its replies is closed, though its writes are stuck", async () => {
    const lines: string[] = [];
    const big = () => "x".repeat(200_000);
    const { port } = await start({ idleTimeoutMs: 200, functions: { big }, log: (line) => lines.push(line) });
    const socket = createConnection({ port, host: "127.0.0.1" });
    socket.on("error", () => {});
    cleanups.push(() => socket.destroy());
    await once(socket, "connect");
    socket.pause(); // read nothing
    socket.write('{"jsonrpc":"2.0","method":"big","id":1}'.repeat(100));
    const started = Date.now();
    await waitFor(() => lines.some((line) => line.includes("made no progress")), "the server to give up", 2000);
    expect(Date.now() - started).toBeLessThan(1000);
  });
});

describe("idle means no progress: a reply the client reads is progress", () => {
  test("the sweep after a stuck reply drains keeps the connection; the one after that closes it", async () => {
    vi.useFakeTimers({ toFake: ["setInterval", "clearInterval"] }); // the sweeps, one at a time, on demand
    try {
      const lines: string[] = [];
      const huge = () => "x".repeat(40_000_000); // more than the kernel's buffers hold: the write is stuck
      const functions = { huge };
      const { port } = await start({
        idleTimeoutMs: 1000,
        maxReplyBytes: 50_000_000,
        functions,
        log: (l) => lines.push(l),
      });
      const socket = createConnection({ port, host: "127.0.0.1" });
      cleanups.push(() => socket.destroy());
      await once(socket, "connect");
      socket.pause();
      socket.write('{"jsonrpc":"2.0","method":"huge","id":1}\n');
      await delay(200);
      vi.advanceTimersByTime(1000); // sweep 1: the request was progress; that is now forgotten
      let received = 0;
      socket.on("data", (chunk: Buffer) => (received += chunk.length));
      socket.resume();
      await waitFor(() => received > 40_000_000, "the whole reply", 10_000);
      vi.advanceTimersByTime(1000); // sweep 2: the reply drained since sweep 1
      await delay(50);
      expect(lines.filter((line) => line.includes("made no progress"))).toEqual([]);
      vi.advanceTimersByTime(1000); // sweep 3: nothing since sweep 2
      await waitFor(() => lines.some((line) => line.includes("made no progress")), "the server to give up");
    } finally {
      vi.useRealTimers();
    }
  }, 15_000);
});

describe("TLS handshakes are connections", () => {
  test.each([
    ["sends nothing", ""],
    ["sends half a ClientHello", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"],
  ])("a client that %s is closed after idleTimeoutMs, and the log says so in words", async (_, bytes) => {
    const lines: string[] = [];
    const { port } = await start({ tls: serverTls, idleTimeoutMs: 200, log: (line) => lines.push(line) });
    const peer = await openPeer(port);
    await peer.send(Buffer.from(bytes, "latin1"));
    const started = Date.now();
    await peer.closed();
    expect(Date.now() - started).toBeLessThan(1000);
    expect(lines).toEqual([
      expect.stringMatching(/^Client 127\.0\.0\.1:\d+: TLS handshake not finished in 0\.2 s; closed$/),
    ]);
  });

  test("a connection in its handshake counts toward maxConnections", async () => {
    const lines: string[] = [];
    const { port } = await start({ tls: serverTls, maxConnections: 2, log: (line) => lines.push(line) });
    await openPeer(port);
    await openPeer(port); // two handshakes that never start
    await delay(20);
    await expect(rpcCall("add", [1, 2], { port, tls: { ca: pem("ca") }, timeoutMs: 1000 })).rejects.toThrow();
    expect(lines).toContainEqual(expect.stringContaining("server busy: it already has 2 connections"));
  });
});

describe("maxConnectionsPerAddress", () => {
  test("one connection more from the same address gets -32000 naming the limit", async () => {
    const { port } = await start({ maxConnectionsPerAddress: 2 });
    const first = await openPeer(port);
    await openPeer(port);
    const third = await openPeer(port);
    const [reply] = await third.replies(1);
    expect(reply).toEqual(errorReply(ERROR_CODES.SERVER_BUSY));
    expect(JSON.stringify(reply)).toContain("127.0.0.1 already has 2 connections");
    await first.send('{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1}');
    expect(await first.replies(1)).toEqual([{ jsonrpc: "2.0", result: 3, id: 1 }]);
  });

  test.skipIf(!hasSecondLoopback)("another address still gets in (127.0.0.2 standing in for it)", async () => {
    const { port } = await start({ maxConnectionsPerAddress: 3 });
    const crowd = await Promise.all(Array.from({ length: 10 }, () => openPeer(port)));
    await Promise.all(crowd.slice(3).map((peer) => peer.closed())); // turned away
    const other = createConnection({ port, host: "127.0.0.1", localAddress: "127.0.0.2" });
    cleanups.push(() => other.destroy());
    await once(other, "connect");
    other.write('{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1}\n');
    const [chunk] = await once(other, "data");
    expect(JSON.parse(String(chunk))).toEqual({ jsonrpc: "2.0", result: 3, id: 1 });
  });
});

/** A port where the kernel takes no more connections: a Python listener with a full backlog that never accepts. */
async function unansweredPort(): Promise<number> {
  const python = spawn("python3", ["-c", UNANSWERED_PY]);
  cleanups.push(() => python.kill());
  const [line] = await once(createInterface({ input: python.stdout! }), "line");
  const port = Number(line);
  const filler = createConnection({ port, host: "127.0.0.1" }); // takes the backlog's only place
  cleanups.push(() => filler.destroy());
  await once(filler, "connect");
  return port;
}
const UNANSWERED_PY = `import socket, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(0)
print(s.getsockname()[1], flush=True)
time.sleep(60)`;

describe("clients give up in time", () => {
  test("connect({ tls }) to a server that accepts and says nothing rejects within timeoutMs", async () => {
    const port = await fakeServer(() => {});
    const started = Date.now();
    await expect(connect({ port, tls: { ca: pem("ca") }, timeoutMs: 300 })).rejects.toThrow(
      `connect to 127.0.0.1:${port} failed: not connected within 300 ms`,
    );
    expect(Date.now() - started).toBeLessThan(1000);
  });

  test("rpcCall() with tls to such a server rejects too", async () => {
    const port = await fakeServer(() => {});
    await expect(rpcCall("add", [1, 2], { port, tls: { ca: pem("ca") }, timeoutMs: 300 })).rejects.toThrow(
      "not connected within 300 ms",
    );
  });

  test.skipIf(!hasPython)(
    "connect() to a port whose TCP handshake never completes rejects within timeoutMs",
    async () => {
      const port = await unansweredPort();
      const started = Date.now();
      await expect(connect({ port, timeoutMs: 300 })).rejects.toThrow("not connected within 300 ms");
      expect(Date.now() - started).toBeLessThan(1000);
    },
  );
});

test("no Promise was left to reject unhandled in this file", () => {
  expect(unhandled).toEqual([]);
});
