/**
 * The benchmark's loads, one function each: given a port and a number of
 * seconds, each calls add(1, 2) as fast as it can and returns what it
 * measured. bench/bench.ts runs them against each server; deploy/check.ts
 * runs them through HAProxy.
 */
import { once } from "node:events";
import { createConnection } from "node:net";
import { connect, rpcCall } from "../rpc.ts";

export const PER_CALL_CONCURRENCY = 50;
export const PIPELINE_CONNECTIONS = 4;
export const PIPELINE_WINDOW = 64; // calls in flight per connection
const CALL_TIMEOUT_MS = 3000;

/** What one run of one load against one server measured. */
export interface Sample {
  calls: number;
  seconds: number;
  latencies: number[];
  /** Calls that failed or took over CALL_TIMEOUT_MS (the Python lab drops connections under load). */
  failed?: number;
  /** CPU seconds the server process used meanwhile. */
  serverCpu?: number;
}

// ---------------------------------------------------------------------------
// The loads
// ---------------------------------------------------------------------------

const REQUEST = '{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1}\n';
const NEWLINE = 0x0a;

/**
 * The bare client: on each connection, keeps PIPELINE_WINDOW requests in
 * flight, sends as many new ones as replies arrived in one write, and matches
 * replies to send times in order (every reply is to an add, which answers at once).
 */
export async function bareClient(port: number, seconds: number): Promise<Sample> {
  const end = performance.now() + seconds * 1000;
  const requests = Buffer.from(REQUEST.repeat(PIPELINE_WINDOW));
  const latencies: number[] = [];
  await Promise.all(Array.from({ length: PIPELINE_CONNECTIONS }, async () => {
    const socket = createConnection(port, "127.0.0.1");
    await once(socket, "connect");
    const sentAt: number[] = [];
    let answered = 0;
    const send = (count: number) => {
      const now = performance.now();
      for (let i = 0; i < count; i++) sentAt.push(now);
      socket.write(requests.subarray(0, count * REQUEST.length));
    };
    const done = new Promise<void>((resolve) => {
      socket.on("data", (chunk: Buffer) => {
        const now = performance.now();
        let replies = 0;
        for (let i = 0; i < chunk.length; i++) if (chunk[i] === NEWLINE) replies++;
        for (let i = 0; i < replies; i++) latencies.push(now - sentAt[answered + i]);
        answered += replies;
        if (now < end) send(replies);
        else if (answered === sentAt.length) resolve();
      });
    });
    send(PIPELINE_WINDOW);
    await done;
    socket.destroy();
  }));
  return { calls: latencies.length, seconds, latencies };
}

/** connect(): PIPELINE_WINDOW callers per connection, each awaiting its call, then the next. */
export async function connectClient(port: number, seconds: number): Promise<Sample> {
  const end = performance.now() + seconds * 1000;
  const latencies: number[] = [];
  await Promise.all(Array.from({ length: PIPELINE_CONNECTIONS }, async () => {
    const client = await connect({ port });
    await Promise.all(Array.from({ length: PIPELINE_WINDOW }, async () => {
      while (performance.now() < end) {
        const started = performance.now();
        const reply = await client.call("add", [1, 2]);
        if (reply.result !== 3) throw new Error(`wrong reply ${JSON.stringify(reply)}`);
        latencies.push(performance.now() - started);
      }
    }));
    await client.close();
  }));
  return { calls: latencies.length, seconds, latencies };
}

/**
 * The bare per-call client: PER_CALL_CONCURRENCY callers, each opening a
 * connection, writing one request and closing at the first bytes of reply
 * (the Python lab's server sends no newline).
 */
export async function barePerCallClient(port: number, seconds: number): Promise<Sample> {
  const end = performance.now() + seconds * 1000;
  const latencies: number[] = [];
  let failed = 0;
  const callOnce = () =>
    new Promise<void>((resolve, reject) => {
      const socket = createConnection(port, "127.0.0.1");
      socket.setTimeout(CALL_TIMEOUT_MS, () => socket.destroy(new Error("timed out")));
      socket.on("connect", () => socket.write(REQUEST));
      socket.on("data", () => {
        socket.destroy();
        resolve();
      });
      socket.on("error", reject);
      socket.on("close", () => reject(new Error("closed before a reply"))); // no effect once resolved
    });
  await Promise.all(Array.from({ length: PER_CALL_CONCURRENCY }, async () => {
    while (performance.now() < end) {
      const started = performance.now();
      try {
        await callOnce();
        latencies.push(performance.now() - started);
      } catch {
        failed++; // counted, and shown in the table
      }
    }
  }));
  return { calls: latencies.length, seconds, latencies, failed };
}

/** rpcCall(): PER_CALL_CONCURRENCY callers, each opening a connection per call. */
export async function perCallClient(port: number, seconds: number): Promise<Sample> {
  const end = performance.now() + seconds * 1000;
  const latencies: number[] = [];
  await Promise.all(Array.from({ length: PER_CALL_CONCURRENCY }, async () => {
    while (performance.now() < end) {
      const started = performance.now();
      const reply = await rpcCall("add", [1, 2], { port, timeoutMs: CALL_TIMEOUT_MS });
      if (reply.result !== 3) throw new Error(`wrong reply ${JSON.stringify(reply)}`);
      latencies.push(performance.now() - started);
    }
  }));
  return { calls: latencies.length, seconds, latencies };
}
