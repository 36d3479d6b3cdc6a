/**
 * The demo: the Python lab's three calls, made at once, then what an RPC
 * course asks to see: the same call three ways, concurrency, one connection
 * for many calls, failures, a CPU-heavy procedure, and the network itself.
 *
 *     npx tsx demo.ts                 # server and client in one process
 *     npx tsx demo.ts serve           # terminal 1: only the server, until Ctrl+C
 *     npx tsx demo.ts client          # terminals 2, 3, ...: only the calls
 *     npx tsx demo.ts failures        # a late reply: what does the caller know?
 *     npx tsx demo.ts workers         # a CPU-heavy procedure, on the event loop and in workers
 *     npx tsx demo.ts watch           # a lossy network and a live diagram of the calls (watch/)
 *     npx tsx demo.ts --help          # every mode and flag
 *
 * The same commands work with `deno run -P demo.ts` (`-P=remote` for another
 * host), `bun demo.ts` and, on Node 23.6 or later, `node demo.ts`.
 *
 * @module
 */
import { readFileSync } from "node:fs";
import os from "node:os";
import type { TlsOptions } from "node:tls";
import process from "node:process";
import { setTimeout } from "node:timers";
import { setTimeout as delay } from "node:timers/promises";
import { fileURLToPath } from "node:url";
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
import { bank, DEPOSIT_MS, type NetworkSettings, watch } from "./watch/watch.ts";

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

/** A view of the wire: told each message that arrives (-->) and each reply sent (<--). */
type Trace = (arrow: "-->" | "<--", address: string, text: string) => void;

/**
 * The server's terminal: its news and, with --trace, every message, one line
 * each, except that bursts are summed up. Connections and traced messages each
 * show at most a few a second; the rest are counted, and the count is printed
 * once the second is over, so that a burst of 500 calls leaves a screenful,
 * not a flood.
 */
function createServerLog(): { log: (line: string) => void; trace: Trace; flush: () => void } {
  const SHOWN_PER_SECOND = { connections: 10, messages: 20 };
  const shown = { connections: 0, messages: 0 };
  const hidden = { connections: 0, messages: 0 };
  let timer: ReturnType<typeof setTimeout> | undefined;
  function flush(): void {
    for (const kind of ["connections", "messages"] as const) {
      if (hidden[kind] > 0) {
        console.log(`  [server] +${hidden[kind]} more ${kind} (at most ${SHOWN_PER_SECOND[kind]} a second are shown)`);
      }
      shown[kind] = 0;
      hidden[kind] = 0;
    }
    clearTimeout(timer);
    timer = undefined;
  }
  function show(kind: "connections" | "messages", line: string): void {
    if (shown[kind] < SHOWN_PER_SECOND[kind]) {
      shown[kind]++;
      console.log(`  [server] ${line}`);
    } else hidden[kind]++;
    timer ??= setTimeout(flush, 1000).unref(); // unref: a pending summary must not keep the process alive
  }
  function log(line: string): void {
    if (line.startsWith("Client connected")) show("connections", line);
    else console.log(`  [server] ${line}`);
  }
  const trace: Trace = (arrow, address, text) => show("messages", `${address} ${arrow} ${short(text)}`);
  return { log, trace, flush };
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

async function serve(
  target: { host: string; port: number },
  { trace, tls }: { trace: boolean; tls?: TlsOptions },
): Promise<RpcServer> {
  const { log, trace: traceLine, flush } = createServerLog();
  // Beyond this machine, one address may not take every place (behind HAProxy all would share one: see deploy/).
  const maxConnectionsPerAddress = isLoopback(target.host) ? undefined : 100;
  const server = await startServer({
    ...target,
    tls,
    log,
    trace: trace ? traceLine : undefined,
    maxConnectionsPerAddress,
  });
  FUNCTIONS.whoami = () => `server on port ${server.port}`;
  const how = tls === undefined ? "" : ", TLS with client certificates";
  console.log(`RPC server on ${target.host}:${server.port} (${runtime()}${how})`);
  if (!isLoopback(target.host)) {
    const addresses = target.host === "0.0.0.0" ? reachableAddresses() : [target.host];
    console.log(`Reachable from other machines at ${addresses.map((a) => `${a}:${server.port}`).join(", ")}`);
    console.log("Warning: anyone who can reach this port can call these functions.");
    console.log(
      "At most 100 connections from one address (maxConnectionsPerAddress), so no one client takes them all.",
    );
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

/** A server with a bank account (watch.ts's bank): `deposit` is slow and not idempotent; `depositOnce` remembers ids. */
async function failures(): Promise<void> {
  const { functions, balance } = bank((line) => console.log(`  [server] ${line}`));
  const server = await startServer({ port: 0, functions });
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
  console.log(`  balance ${balance()}: two deposits for one intent. deposit is not idempotent.`);
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
// line that answers each number it is sent with its fib. (Text, not a .ts
// file, because Node 20 with tsx cannot start a worker from a TypeScript file.)
const WORKER_SOURCE = `const { parentPort } = require("node:worker_threads");
${fib}
parentPort.on("message", (n) => parentPort.postMessage(fib(n)));`;

/**
 * A pool of worker threads, one per core, started once, before any call:
 * starting a worker holds the event loop for a while (about 70 ms each on
 * Deno), which would be counted against the calls. Each worker answers its
 * numbers in the order it was sent them, so each keeps a queue of the calls
 * it owes.
 */
function startWorkers(count: number): { fib(n: unknown): Promise<number>; stop(): Promise<unknown> } {
  const owed: Array<Array<{ resolve(result: number): void; reject(error: Error): void }>> = [];
  const workers = Array.from({ length: count }, (_, i) => {
    owed[i] = [];
    const worker = new Worker(WORKER_SOURCE, { eval: true });
    worker.on("message", (result: number) => owed[i].shift()?.resolve(result));
    worker.on("error", (error) => owed[i].splice(0).forEach((call) => call.reject(error)));
    return worker;
  });
  let next = 0;
  return {
    fib: (n) =>
      new Promise((resolve, reject) => {
        const i = next++ % count; // round robin
        owed[i].push({ resolve, reject });
        workers[i].postMessage(Number(n));
      }),
    stop: () => Promise.all(workers.map((worker) => worker.terminate())),
  };
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
  const cores = os.availableParallelism?.() ?? os.cpus().length;
  const started = performance.now();
  fib(FIB_N);
  const oneCall = performance.now() - started;
  const stopWatching = watchEventLoop();
  const pool = startWorkers(cores);
  await Promise.all(Array.from({ length: cores }, () => pool.fib(1))); // one answer from each: all have started
  const startUp = stopWatching();
  const server = await startServer({
    port: 0,
    functions: { ...FUNCTIONS, fibHere: (n) => fib(Number(n)), fibInWorker: pool.fib },
  });
  console.log(
    `fib(${FIB_N}) computes for ${seconds(oneCall)} and never waits; ${HEAVY_CALLS} calls at once, ${cores} cores:`,
  );
  await heavyRound("fibHere", server.port);
  await heavyRound("fibInWorker", server.port);
  console.log("On the event loop the calls take the sum of their times, and while one runs, every other");
  console.log("client waits. In worker threads they overlap, one per core, and the event loop stays free.");
  console.log(
    `(Starting the ${cores} workers, before the calls, held the event loop for up to ${
      seconds(startUp)
    } on ${runtime()}:`,
  );
  console.log(" a server starts its workers once, not once per call.)");
  await server.close();
  await pool.stop();
}

// ---------------------------------------------------------------------------
// The command line, permissions, and the errors a new user meets
// ---------------------------------------------------------------------------

/** How this demo was started, so that help and hints can say exactly what to type. */
function invocation(): string {
  const { deno, bun } = process.versions as { deno?: string; bun?: string };
  if (deno !== undefined) return "deno run -P demo.ts";
  if (bun !== undefined) return "bun demo.ts";
  return process.execArgv.some((arg) => arg.includes("tsx")) ? "npx tsx demo.ts" : "node demo.ts";
}

function usage(): string {
  return `Usage: ${invocation()} [mode] [flags]

Modes:
  (none)     a server and its client in one process: the lab's calls, concurrency, one connection for many calls
  serve      only the server, until Ctrl+C
  client     only the client's calls, to a server started elsewhere (serve)
  failures   a reply that comes too late: what the caller knows, and why a retry can do harm
  workers    a CPU-heavy procedure on the event loop, then in worker threads
  watch      a server, a network in front of it that can lose, delay and hold messages, and a live diagram
             of the calls in your browser
  help       this text

Flags:
  --port N    serve: the port to listen on (0: any free one); client: the server's; watch: where clients
              connect. Default 5000
  --host H    serve: the address to listen on (0.0.0.0: every interface, open to the network); client: the
              server's address. Default 127.0.0.1
  --trace     serve: print every message in and out (at most 20 lines a second; the rest are counted)
  --tls       serve and client: TLS with client certificates, from tls/
  --web N     watch: the port of the page, on 127.0.0.1. Default 8080
  --loss P    watch: lose each message with probability P, from 0 to 1. Default 0
  --delay D   watch: delay each message D ms, or a random MIN-MAX ms. Default 0
  --hold      watch: hold every message until you click deliver or drop in the page
  -h, --help  this text`;
}

/** A port given on the command line: digits only, 1 to 65535 (or 0, where it means any free one). */
function portFlag(name: string, text: string, zeroMeansAny: boolean): number {
  const port = /^\d+$/.test(text) ? Number(text) : NaN;
  const lowest = zeroMeansAny ? 0 : 1;
  if (!(port >= lowest && port <= 65535)) {
    throw new RangeError(`${name} takes a port from ${lowest} to 65535, got ${JSON.stringify(text)}`);
  }
  return port;
}

/** The part of Deno's permission API the demo uses; absent on Node and Bun. */
type PermissionDescriptor = { name: "net"; host: string } | { name: "read"; path: string };
interface DenoPermissions {
  querySync(descriptor: PermissionDescriptor): { state: string };
  requestSync(descriptor: PermissionDescriptor): { state: string };
}

/**
 * On Deno, asks once for a permission the command line did not grant: network
 * access to a host (every port), or reading a folder. Deno would otherwise ask
 * per port or per file (six times for --tls), or, with no terminal to ask in,
 * stop with an error the demo cannot catch.
 */
function hasPermission(descriptor: PermissionDescriptor): boolean {
  const deno = (globalThis as { Deno?: { permissions: DenoPermissions } }).Deno;
  if (deno === undefined) return true;
  if (deno.permissions.querySync(descriptor).state === "granted") return true;
  return deno.permissions.requestSync(descriptor).state === "granted";
}

/** An error for a permission Deno refused, carrying the hint: the student's own command, with -P. */
class NoPermission extends Error {
  constructor(what: string, remote: boolean) {
    const flag = remote ? "-P=remote" : "-P";
    const command = `deno run ${flag} demo.ts ${process.argv.slice(2).join(" ")}`.trim();
    super(`Deno was not allowed ${what}: run \`${command}\` (${flag} grants what deno.json lists for the demo).`);
  }
}

/** True when the error, or an error it wraps, has this `name` or `code`. */
function hasTag(error: unknown, tag: string): boolean {
  if (typeof error !== "object" || error === null) return false;
  if (("name" in error && error.name === tag) || ("code" in error && error.code === tag)) return true;
  return "cause" in error && hasTag(error.cause, tag);
}

/** True when a server answers on 127.0.0.1:port. */
async function answersOnLoopback(port: number): Promise<boolean> {
  return await rpcCall("add", [1, 2], { port, timeoutMs: 1000 }).then(() => true, () => false);
}

/** Turns the errors a new user meets into one line that says what to do. */
async function explain(error: unknown, host: string, port: number): Promise<string> {
  if (error instanceof NoPermission || error instanceof RangeError) return error.message;
  if (hasTag(error, "NotCapable")) return new NoPermission(`to reach ${host}`, !isLoopback(host)).message;
  if (hasTag(error, "EADDRINUSE")) {
    return `Port ${port} is busy (is \`demo.ts serve\` running?): stop that server, or pass --port N.`;
  }
  if (hasTag(error, "ECONNREFUSED")) {
    if (host !== "127.0.0.1" && isLoopback(host) && await answersOnLoopback(port)) {
      return `A server answers on 127.0.0.1:${port}, but it listens on 127.0.0.1 only, so ${host} reaches nothing: ` +
        "start it with `serve --host 0.0.0.0`.";
    }
    return `No server on ${host}:${port}: start one with \`${invocation()} serve\` in another terminal.`;
  }
  const text = String(error);
  // A TLS server answers plain bytes with a TLS alert record, whose first byte is 0x15;
  // a plain server answers a TLS handshake with bytes that are no TLS version.
  if (text.includes('got "\\u0015"')) return `The server on ${host}:${port} speaks TLS: add --tls.`;
  if (/wrong.version.number/i.test(text)) return `The server on ${host}:${port} does not speak TLS: leave out --tls.`;
  return error instanceof Error ? error.message : text;
}

/** Serves until SIGINT or SIGTERM, then closes gracefully; a second signal while closing does not cut it short. */
async function serveUntilStopped(host: string, port: number, options: { trace: boolean; tls?: TlsOptions }) {
  const server = await serve({ host, port }, options);
  console.log(`Waiting for clients; Ctrl+C stops.${options.trace ? "" : " (--trace shows every message.)"}`);
  let closing: Promise<void> | undefined;
  const stop = (signal: string) => {
    if (closing !== undefined) {
      console.log(`${signal} again: still closing; calls in flight get up to 5 s, then the rest are cut off.`);
      return;
    }
    console.log(`\n${signal}: closing; calls in flight may finish first (up to 5 s).`);
    closing = server.close().then(() => console.log("Server closed."));
  };
  // process.on, not once: the terminal signals the whole process group, and tsx passes the signal on too, so the
  // server may get it twice. A second one must not kill it half-way through closing.
  process.on("SIGINT", () => stop("SIGINT"));
  process.on("SIGTERM", () => stop("SIGTERM"));
}

async function main(): Promise<void> {
  let [host, port] = ["127.0.0.1", 5000];
  try {
    const { values, positionals } = parseArgs({
      args: process.argv.slice(2),
      options: {
        port: { type: "string", default: "5000" },
        host: { type: "string", default: host },
        trace: { type: "boolean", default: false },
        tls: { type: "boolean", default: false },
        web: { type: "string", default: "8080" },
        loss: { type: "string", default: "0" },
        delay: { type: "string", default: "0" },
        hold: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
      allowPositionals: true,
    });
    const mode = positionals[0] ?? "all";
    if (values.help || mode === "help") {
      console.log(usage());
      return;
    }
    if (positionals.length > 1) throw new UsageError(`one mode at a time, got ${positionals.join(" ")}`);
    host = values.host;
    port = portFlag("--port", values.port, mode === "serve" || mode === "watch");
    if (!hasPermission({ name: "net", host })) throw new NoPermission(`to reach ${host}`, !isLoopback(host));
    const tlsDir = fileURLToPath(new URL("./tls", import.meta.url));
    if (values.tls && !hasPermission({ name: "read", path: tlsDir })) throw new NoPermission("to read tls/", false);
    const tls = values.tls ? clientTls() : undefined;
    const serverOptions = { trace: values.trace, tls: values.tls ? serverTls() : undefined };
    if (mode === "serve") await serveUntilStopped(host, port, serverOptions);
    else if (mode === "client") {
      console.log(`Client of ${host}:${port} (${runtime()}${tls === undefined ? "" : ", TLS"})`);
      await runClient({ host, port, tls });
    } else if (mode === "all") {
      const server = await serve({ host, port }, serverOptions);
      await runClient({ host, port: server.port, tls });
      await server.close();
      console.log("\nServer closed.");
    } else if (mode === "failures") await failures();
    else if (mode === "workers") await workers();
    else if (mode === "watch") {
      const watchDir = fileURLToPath(new URL("./watch", import.meta.url));
      if (!hasPermission({ name: "read", path: watchDir })) throw new NoPermission("to read watch/", false);
      await watch({ port, web: portFlag("--web", values.web, true), ...networkFlags(values) });
    } else throw new UsageError(`unknown mode ${JSON.stringify(mode)}`);
  } catch (error) {
    const unknownFlag = hasTag(error, "ERR_PARSE_ARGS_UNKNOWN_OPTION") ? /'([^']+)'/.exec(String(error)) : null;
    if (error instanceof UsageError || unknownFlag !== null) {
      console.error(
        `${usage()}\n\n${unknownFlag === null ? (error as Error).message : `unknown flag ${unknownFlag[1]}`}`,
      );
    } else console.error(await explain(error, host, port));
    process.exitCode = 1;
  }
}

/** A mistake on the command line: the usage is printed with it. */
class UsageError extends Error {}

/** The network's settings from --loss, --delay and --hold, checked. */
function networkFlags(values: { loss: string; delay: string; hold: boolean }): NetworkSettings {
  const loss = Number(values.loss);
  if (!(values.loss.trim() !== "" && loss >= 0 && loss <= 1)) {
    throw new RangeError(`--loss takes a probability from 0 to 1, got ${JSON.stringify(values.loss)}`);
  }
  const range = /^(\d+)(?:-(\d+))?$/.exec(values.delay);
  if (range === null || Number(range[2] ?? range[1]) < Number(range[1])) {
    throw new RangeError(`--delay takes milliseconds, or a range MIN-MAX, got ${JSON.stringify(values.delay)}`);
  }
  return { loss, delayMs: [Number(range[1]), Number(range[2] ?? range[1])], hold: values.hold };
}

await main();
