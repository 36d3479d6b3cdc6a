/**
 * The demo: the Python lab's three calls, made at once, then what an RPC
 * course asks to see: the same call three ways, concurrency, one connection
 * for many calls, failures, and a CPU-heavy procedure.
 *
 *     npx tsx demo.ts                 # server and client in one process
 *     npx tsx demo.ts serve           # terminal 1: only the server, until Ctrl+C
 *     npx tsx demo.ts client          # terminals 2, 3, ...: only the calls
 *     npx tsx demo.ts failures        # a late reply: what does the caller know?
 *     npx tsx demo.ts workers         # a CPU-heavy procedure, on the event loop and in workers
 *
 * Options: `--port N` (default 5000), `--host H` (default 127.0.0.1; `serve
 * --host 0.0.0.0` opens the server to the network), `--trace` (serve: print
 * every message in and out), `--tls` (serve and client: TLS with client
 * certificates, from tls/). The same commands work with `deno run -P
 * demo.ts` (`-P=remote` for another host), `bun demo.ts` and, on Node 23.6
 * or later, `node demo.ts`.
 *
 * @module
 */
import { readFileSync } from "node:fs";
import os from "node:os";
import type { TlsOptions } from "node:tls";
import process from "node:process";
import { setTimeout } from "node:timers";
import { setTimeout as delay } from "node:timers/promises";
import { parseArgs } from "node:util";
import { Worker } from "node:worker_threads";
import {
  connect,
  type ConnectOptions,
  FUNCTIONS,
  resultOf,
  rpcCall,
  type RpcReply,
  type RpcServer,
  startServer,
} from "./rpc.ts";

const SLOW_MS = 1000;
const SLOW_CALLS = 5;
const MANY_CALLS = 500;
const WHO_CALLS = 10;

// A method that takes a second without blocking: it waits on a timer, so the
// event loop serves everyone else meanwhile.
FUNCTIONS.slow = async () => {
  await delay(SLOW_MS);
  return "done";
};

/** Which runtime this is, for the first line of output. */
function runtime(): string {
  const { deno, bun } = process.versions as { deno?: string; bun?: string };
  if (deno !== undefined) return `Deno ${deno}`;
  if (bun !== undefined) return `Bun ${bun}`;
  return `Node ${process.version}`;
}

function seconds(ms: number): string {
  return ms < 100 ? `${ms.toFixed(1)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

/** Shows a value as JSON, cut short when long, so that one line stays one line. */
function short(text: string, max = 110): string {
  return text.length > max ? `${text.slice(0, max)}...` : text;
}

// ---------------------------------------------------------------------------
// The client's steps
// ---------------------------------------------------------------------------

/** The Python lab's three calls, all at once; each reply is printed as it arrives. */
async function labCalls(target: ConnectOptions): Promise<void> {
  const calls: Array<[string, number[]]> = [["add", [10, 20]], ["multiply", [5, 6]], ["divide", [10, 5]]];
  console.log("Calling add(10, 20), multiply(5, 6) and divide(10, 5) at once:");
  await Promise.all(calls.map(async ([method, params]) => {
    const reply: RpcReply = await rpcCall(method, params, target);
    console.log(`  ${method}(${params.join(", ")}) -> ${JSON.stringify(reply)}`);
  }));
}

/** The same remote call through each layer: the reply object, then the stub that hides it. */
async function threeWays(target: ConnectOptions): Promise<void> {
  console.log("\nThe same call three ways:");
  const reply = await rpcCall("add", [10, 20], target);
  console.log(`  rpcCall("add", [10, 20])      -> ${JSON.stringify(reply)}   (a connection of its own)`);
  const client = await connect(target);
  const again = await client.call("add", [10, 20]);
  console.log(`  client.call("add", [10, 20])  -> ${JSON.stringify(again)}   (one connection, many calls)`);
  const calc = client.stub<{ add(a: number, b: number): number }>();
  console.log(`  calc.add(10, 20)              -> ${await calc.add(10, 20)}   (the stub: reads like a local call)`);
  await client.close();
}

/** Five one-second calls at once: together they should take one second, not five. */
async function concurrencyProof(target: ConnectOptions): Promise<void> {
  console.log(`\nCalling slow() ${SLOW_CALLS} times at once; each call takes ${seconds(SLOW_MS)} on the server:`);
  const started = performance.now();
  const durations = await Promise.all(Array.from({ length: SLOW_CALLS }, async () => {
    const callStarted = performance.now();
    await rpcCall("slow", [], target);
    return performance.now() - callStarted;
  }));
  const total = performance.now() - started;
  const oneAfterAnother = durations.reduce((sum, ms) => sum + ms, 0);
  console.log(`  all ${SLOW_CALLS} answered in ${seconds(total)}`);
  console.log(`  one after another they would take ${seconds(oneAfterAnother)} (the sum of their own times)`);
}

/** The same calls over one connection and over one connection each. */
async function oneConnection(target: ConnectOptions): Promise<void> {
  console.log(`\nCalling add() ${MANY_CALLS} times at once:`);
  const client = await connect(target);
  let started = performance.now();
  const replies = await Promise.all(Array.from({ length: MANY_CALLS }, (_, i) => client.call("add", [i, i])));
  const shared = performance.now() - started;
  await client.close();
  started = performance.now();
  await Promise.all(Array.from({ length: MANY_CALLS }, (_, i) => rpcCall("add", [i, i], target)));
  const separate = performance.now() - started;
  const right = replies.every((reply, i) => reply.result === 2 * i);
  console.log(
    `  over one connection (connect):  ${seconds(shared)}, ${
      right ? "every reply matched to its call by id" : "SOME REPLIES WRONG"
    }`,
  );
  console.log(
    `  one connection each (rpcCall):  ${seconds(separate)}, ${(separate / shared).toFixed(1)} times as long`,
  );
}

/** Asks `whoami` on new connections: behind a load balancer, the answers spread over the servers. */
async function whoAnswered(target: ConnectOptions): Promise<void> {
  const replies = await Promise.all(Array.from({ length: WHO_CALLS }, () => rpcCall("whoami", [], target)));
  const counts = new Map<string, number>();
  for (const reply of replies) {
    const who = typeof reply.result === "string" ? reply.result : "a server without whoami";
    counts.set(who, (counts.get(who) ?? 0) + 1);
  }
  const spread = [...counts].map(([who, count]) => `${who} x${count}`).join(", ");
  console.log(`\nWho answered ${WHO_CALLS} calls, one connection each: ${spread}`);
}

async function runClient(target: ConnectOptions): Promise<void> {
  await labCalls(target);
  await threeWays(target);
  await concurrencyProof(target);
  await oneConnection(target);
  await whoAnswered(target);
}

// ---------------------------------------------------------------------------
// The server, and what its terminal shows
// ---------------------------------------------------------------------------

/**
 * The server's news, one line each, except that a burst of connections is
 * summed up: after the first few in a second, one line with the count.
 */
function createServerLog(): { log: (line: string) => void; flush: () => void } {
  const SHOWN_PER_SECOND = 10;
  let shown = 0;
  let hidden = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;
  function flush(): void {
    if (hidden > 0) {
      console.log(`  [server] +${hidden} more connections (at most ${SHOWN_PER_SECOND} a second are shown)`);
    }
    shown = 0;
    hidden = 0;
    clearTimeout(timer);
    timer = undefined;
  }
  function log(line: string): void {
    if (!line.startsWith("Client connected")) console.log(`  [server] ${line}`);
    else if (shown < SHOWN_PER_SECOND) {
      shown++;
      console.log(`  [server] ${line}`);
    } else hidden++;
    timer ??= setTimeout(flush, 1000).unref(); // unref: a pending summary must not keep the process alive
  }
  return { log, flush };
}

function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || host.startsWith("127.");
}

/** The addresses other machines can reach this one on: its network interfaces' IPv4 addresses. */
function reachableAddresses(): string[] {
  return Object.values(os.networkInterfaces()).flat()
    .filter((address) => address !== undefined && address.family === "IPv4" && !address.internal)
    .map((address) => address!.address);
}

/** A certificate or key from tls/ (made by tls/make-certs.sh), or an error that says how to make them. */
function pem(name: string): Buffer {
  try {
    return readFileSync(new URL(`./tls/${name}.pem`, import.meta.url));
  } catch (error) {
    throw new Error(`--tls needs tls/${name}.pem: make the certificates with \`sh tls/make-certs.sh\``, {
      cause: error,
    });
  }
}

/** The server's TLS options: its certificate, and only clients with a certificate our CA signed get in. */
const serverTls = () => ({ key: pem("server-key"), cert: pem("server"), ca: pem("ca"), requestCert: true });
/** The client's TLS options: trust our CA, and show our client certificate. */
const clientTls = () => ({ ca: pem("ca"), key: pem("client-key"), cert: pem("client") });

/** Prints one message of the wire view: who, which way, and the JSON, cut short when long. */
function printTrace(arrow: string, address: string, text: string): void {
  console.log(`  [server] ${address} ${arrow} ${short(text)}`);
}

async function serve(
  target: { host: string; port: number },
  { trace, tls }: { trace: boolean; tls?: TlsOptions },
): Promise<RpcServer> {
  const { log, flush } = createServerLog();
  const server = await startServer({ ...target, tls, log, trace: trace ? printTrace : undefined });
  FUNCTIONS.whoami = () => `server on port ${server.port}`;
  const how = tls === undefined ? "" : ", TLS with client certificates";
  console.log(`RPC server on ${target.host}:${server.port} (${runtime()}${how})`);
  if (!isLoopback(target.host)) {
    const addresses = target.host === "0.0.0.0" ? reachableAddresses() : [target.host];
    console.log(`Reachable from other machines at ${addresses.map((a) => `${a}:${server.port}`).join(", ")}`);
    console.log("Warning: anyone who can reach this port can call these functions.");
  }
  return {
    port: server.port,
    close: async () => {
      await server.close();
      flush();
    },
  };
}

// ---------------------------------------------------------------------------
// Failure semantics: a reply that comes too late
// ---------------------------------------------------------------------------

/** A server with a bank account: `deposit` is slow and not idempotent; `depositOnce` remembers request ids. */
async function failures(): Promise<void> {
  const DEPOSIT_MS = 600;
  let balance = 100;
  const done = new Map<string, number>(); // request id -> the balance that deposit left
  const say = (line: string) => console.log(`  [server] ${line}`);
  const deposit = async (amount: unknown) => {
    say(`deposit(${amount}) starts, balance ${balance}`);
    await delay(DEPOSIT_MS);
    balance += Number(amount);
    say(`deposit(${amount}) done, balance ${balance}`);
    return balance;
  };
  const server = await startServer({
    port: 0,
    functions: {
      ...FUNCTIONS,
      deposit,
      async depositOnce(request) {
        const { id, amount } = request as { id: string; amount: number };
        if (done.has(id)) {
          say(`depositOnce ${id} seen before: answered from memory, balance still ${balance}`);
          return done.get(id);
        }
        done.set(id, await deposit(amount));
        return done.get(id);
      },
    },
  });
  const target = { port: server.port, timeoutMs: DEPOSIT_MS / 2 };
  const attempt = async (what: string, call: Promise<RpcReply>) => {
    try {
      console.log(`  client: ${what} -> ${JSON.stringify(resultOf(await call))}`);
    } catch (error) {
      console.log(`  client: ${what} -> rejected: ${error instanceof Error ? error.message : error}`);
    }
  };

  console.log(`A deposit takes ${DEPOSIT_MS} ms on the server; the client waits ${target.timeoutMs} ms:`);
  await attempt("deposit(10)", rpcCall("deposit", [10], target));
  console.log("  client: did the deposit happen? It cannot know: the request, or only the reply, may be lost or late.");
  await delay(DEPOSIT_MS);
  console.log("\nRetrying, with a longer wait, as a client that assumes it did not happen would:");
  await attempt("deposit(10)", rpcCall("deposit", [10], { ...target, timeoutMs: 2 * DEPOSIT_MS }));
  console.log(`  balance ${balance}: two deposits for one intent. deposit is not idempotent.`);
  console.log("\nRetrying add(2, 3) is harmless: it changes nothing, so twice gives the same answer (idempotent):");
  await attempt("add(2, 3)", rpcCall("add", [2, 3], target));
  await attempt("add(2, 3)", rpcCall("add", [2, 3], target));

  console.log("\nThe same, cancelled by the caller with an AbortSignal after 100 ms:");
  const controller = new AbortController();
  setTimeout(() => controller.abort(new Error("the user pressed Cancel")), 100);
  await attempt("deposit(5)", rpcCall("deposit", [5], { ...target, signal: controller.signal }));
  await delay(DEPOSIT_MS);

  console.log("\nWith a request id the server remembers, a retry is answered, not run again:");
  const once = { ...target, timeoutMs: 2 * DEPOSIT_MS };
  await attempt('depositOnce({ id: "d-1", amount: 10 })', rpcCall("depositOnce", { id: "d-1", amount: 10 }, once));
  await attempt('depositOnce({ id: "d-1", amount: 10 })', rpcCall("depositOnce", { id: "d-1", amount: 10 }, once));
  await server.close();
}

// ---------------------------------------------------------------------------
// A CPU-heavy procedure: on the event loop, then in worker threads
// ---------------------------------------------------------------------------

const FIB_N = 38; // about a quarter of a second of computing on this class of machine
const HEAVY_CALLS = 4;

/** Deliberately slow: it computes for a while and never waits, so its thread is busy throughout. */
function fib(n: number): number {
  return n < 2 ? n : fib(n - 1) + fib(n - 2);
}

// A worker thread runs JavaScript given as text: fib's own source code, then a
// line that computes and posts the result. (Text, not a .ts file, because
// Node 20 with tsx cannot start a worker from a TypeScript file.)
const WORKER_SOURCE = `const { parentPort, workerData } = require("node:worker_threads");
${fib}
parentPort.postMessage(fib(workerData));`;

/** Computes fib(n) in a worker thread of its own, leaving the event loop free. */
function fibInWorker(n: unknown): Promise<number> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: Number(n) });
    worker.once("message", resolve);
    worker.once("error", reject);
  });
}

/**
 * Measures how long the event loop goes without running a 1 ms timer: while
 * it runs something else, no other client's request is even read.
 */
function watchEventLoop(): () => number {
  let longest = 0;
  let last = performance.now();
  let timer = setTimeout(tick, 1);
  function tick(): void {
    const now = performance.now();
    longest = Math.max(longest, now - last);
    last = now;
    timer = setTimeout(tick, 1);
  }
  return () => {
    clearTimeout(timer);
    return longest;
  };
}

/** Calls `method` HEAVY_CALLS times at once, and says how long it took and how long the loop was blocked. */
async function heavyRound(method: string, port: number): Promise<void> {
  const stopWatching = watchEventLoop();
  const started = performance.now();
  const call = () => rpcCall(method, [FIB_N], { port, timeoutMs: 30_000 }).then(resultOf);
  await Promise.all(Array.from({ length: HEAVY_CALLS }, call));
  const total = performance.now() - started;
  console.log(
    `  ${method.padEnd(12)} ${HEAVY_CALLS} calls answered in ${seconds(total)}; ` +
      `the event loop was busy for up to ${seconds(stopWatching())} at a time`,
  );
}

async function workers(): Promise<void> {
  const started = performance.now();
  fib(FIB_N);
  const oneCall = performance.now() - started;
  const server = await startServer({
    port: 0,
    functions: { ...FUNCTIONS, fibHere: (n) => fib(Number(n)), fibInWorker },
  });
  console.log(
    `fib(${FIB_N}) computes for ${seconds(oneCall)} and never waits; ${HEAVY_CALLS} calls at once, ` +
      `${os.availableParallelism?.() ?? os.cpus().length} cores:`,
  );
  await heavyRound("fibHere", server.port);
  try {
    await heavyRound("fibInWorker", server.port);
  } catch (error) {
    console.log(`  fibInWorker: worker threads do not run here (${error instanceof Error ? error.message : error})`);
  }
  console.log("On the event loop the calls take the sum of their times, and while one runs, every other");
  console.log("client waits. In worker threads they overlap, one per core, and the event loop stays free.");
  await server.close();
}

// ---------------------------------------------------------------------------
// Permissions, errors a new user meets, and the command line
// ---------------------------------------------------------------------------

/** The part of Deno's permission API the demo uses; absent on Node and Bun. */
interface DenoPermissions {
  querySync(descriptor: { name: "net"; host: string }): { state: string };
  requestSync(descriptor: { name: "net"; host: string }): { state: string };
}

/**
 * On Deno, asks once for access to `host` (every port) when the command line
 * did not grant it. Deno would otherwise ask per port, or, with no terminal to
 * ask in, stop with an error the demo cannot catch.
 */
function hasNetworkPermission(host: string): boolean {
  const deno = (globalThis as { Deno?: { permissions: DenoPermissions } }).Deno;
  if (deno === undefined) return true;
  const descriptor = { name: "net", host } as const;
  if (deno.permissions.querySync(descriptor).state === "granted") return true;
  return deno.permissions.requestSync(descriptor).state === "granted";
}

function noPermission(host: string): string {
  return host === "127.0.0.1"
    ? "Deno needs network access to 127.0.0.1: run `deno run -P demo.ts` (the permission is in deno.json)."
    : `Deno needs network access to ${host}: run \`deno run -P=remote demo.ts\` (the permission set is in deno.json).`;
}

/** True when the error, or an error it wraps, has this `name` or `code`. */
function hasTag(error: unknown, tag: string): boolean {
  if (typeof error !== "object" || error === null) return false;
  if (("name" in error && error.name === tag) || ("code" in error && error.code === tag)) return true;
  return "cause" in error && hasTag(error.cause, tag);
}

/** Turns the errors a new user meets into one line that says what to do. */
function explain(error: unknown, host: string, port: number): string {
  if (hasTag(error, "NotCapable")) return noPermission(host);
  if (hasTag(error, "EADDRINUSE")) {
    return `Port ${port} is busy (is \`demo.ts serve\` running?): stop that server, or pass --port N.`;
  }
  if (hasTag(error, "ECONNREFUSED")) {
    return `No server on ${host}:${port}: start one with \`demo.ts serve\` in another terminal.`;
  }
  const text = String(error);
  // A TLS server answers plain bytes with a TLS alert record, whose first byte is 0x15;
  // a plain server answers a TLS handshake with bytes that are no TLS version.
  if (text.includes('got "\\u0015"')) return `The server on ${host}:${port} speaks TLS: add --tls.`;
  if (/wrong.version.number/i.test(text)) return `The server on ${host}:${port} does not speak TLS: leave out --tls.`;
  if (text.includes("before replying")) {
    return `${error instanceof Error ? error.message : text} (a TLS server? add --tls)`;
  }
  return error instanceof Error ? error.message : String(error);
}

async function main(): Promise<void> {
  let [host, port] = ["127.0.0.1", 5000];
  try {
    const { values, positionals } = parseArgs({
      args: process.argv.slice(2),
      options: {
        port: { type: "string", default: String(port) },
        host: { type: "string", default: host },
        trace: { type: "boolean", default: false },
        tls: { type: "boolean", default: false },
      },
      allowPositionals: true,
    });
    [host, port] = [values.host, Number(values.port)];
    if (!Number.isInteger(port) || port < 0 || port > 65535) {
      throw new RangeError(`--port takes a number from 0 to 65535, got ${values.port}`);
    }
    if (!hasNetworkPermission(host)) throw Object.assign(new Error("no permission"), { name: "NotCapable" });
    const mode = positionals[0] ?? "all";
    const serverOptions = { trace: values.trace, tls: values.tls ? serverTls() : undefined };
    const tls = values.tls ? clientTls() : undefined;
    if (mode === "serve") {
      const server = await serve({ host, port }, serverOptions);
      console.log(`Waiting for clients; Ctrl+C stops.${values.trace ? "" : " (--trace shows every message.)"}`);
      const stop = async (signal: string) => {
        console.log(`\n${signal}: closing; calls in flight may finish first.`);
        await server.close();
        console.log("Server closed.");
      };
      process.once("SIGINT", () => stop("SIGINT"));
      process.once("SIGTERM", () => stop("SIGTERM"));
    } else if (mode === "client") {
      console.log(`Client of ${host}:${port} (${runtime()}${tls === undefined ? "" : ", TLS"})`);
      await runClient({ host, port, tls });
    } else if (mode === "all") {
      const server = await serve({ host, port }, serverOptions);
      await runClient({ host, port: server.port, tls });
      await server.close();
      console.log("\nServer closed.");
    } else if (mode === "failures") {
      await failures();
    } else if (mode === "workers") {
      await workers();
    } else {
      throw new Error(`unknown mode ${JSON.stringify(mode)}: use serve, client, failures, workers, or nothing`);
    }
  } catch (error) {
    console.error(explain(error, host, port));
    process.exitCode = 1;
  }
}

await main();
