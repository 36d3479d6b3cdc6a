/**
 * The demo: the Python lab's three calls, made at once, then proof that the
 * server answers concurrently.
 *
 *     npx tsx demo.ts                # server and client in one process
 *     npx tsx demo.ts serve          # terminal 1: only the server, until Ctrl+C
 *     npx tsx demo.ts client         # terminals 2, 3, ...: only the calls
 *
 * Add `--port N` to use another port than 5000. The same commands work with
 * `deno run -P demo.ts`, `bun demo.ts` and, on Node 23.6 or later,
 * `node demo.ts`.
 *
 * @module
 */
import process from "node:process";
import { setTimeout as delay } from "node:timers/promises";
import { parseArgs } from "node:util";
import { connect, FUNCTIONS, rpcCall, type RpcReply, type RpcServer, startServer } from "./rpc.ts";

const SLOW_MS = 1000;
const SLOW_CALLS = 5;
const MANY_CALLS = 500;
let quiet = false; // true while the server's log would only repeat itself

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

/** The Python lab's three calls, all at once; each reply is printed as it arrives. */
async function labCalls(port: number): Promise<void> {
  const calls: Array<[string, number[]]> = [["add", [10, 20]], ["multiply", [5, 6]], ["divide", [10, 5]]];
  console.log("Calling add(10, 20), multiply(5, 6) and divide(10, 5) at once:");
  await Promise.all(calls.map(async ([method, params]) => {
    const reply: RpcReply = await rpcCall(method, params, { port });
    console.log(`  ${method}(${params.join(", ")}) -> ${JSON.stringify(reply)}`);
  }));
}

/** Five one-second calls at once: together they should take one second, not five. */
async function concurrencyProof(port: number): Promise<void> {
  console.log(`\nCalling slow() ${SLOW_CALLS} times at once; each call takes ${seconds(SLOW_MS)} on the server:`);
  const started = performance.now();
  const durations = await Promise.all(Array.from({ length: SLOW_CALLS }, async () => {
    const callStarted = performance.now();
    await rpcCall("slow", [], { port });
    return performance.now() - callStarted;
  }));
  const total = performance.now() - started;
  const oneAfterAnother = durations.reduce((sum, ms) => sum + ms, 0);
  console.log(`  all ${SLOW_CALLS} answered in ${seconds(total)}`);
  console.log(`  one after another they would take ${seconds(oneAfterAnother)} (the sum of their own times)`);
}

/** The same calls over one connection and over one connection each. */
async function oneConnection(port: number): Promise<void> {
  console.log(`\nCalling add() ${MANY_CALLS} times at once:`);
  const client = await connect({ port });
  let started = performance.now();
  const replies = await Promise.all(Array.from({ length: MANY_CALLS }, (_, i) => client.call("add", [i, i])));
  const shared = performance.now() - started;
  await client.close();
  started = performance.now();
  await Promise.all(Array.from({ length: MANY_CALLS }, (_, i) => rpcCall("add", [i, i], { port })));
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

async function runClient(port: number): Promise<void> {
  await labCalls(port);
  await concurrencyProof(port);
  quiet = true; // hundreds of "Client connected" lines would bury the result
  await oneConnection(port);
  quiet = false;
}

async function serve(port: number): Promise<RpcServer> {
  const log = (line: string) => {
    if (!quiet) console.log(`  [server] ${line}`);
  };
  const server = await startServer({ port, log });
  console.log(`RPC server on 127.0.0.1:${server.port} (${runtime()})`);
  return server;
}

/** The part of Deno's permission API the demo uses; absent on Node and Bun. */
interface DenoPermissions {
  querySync(descriptor: { name: "net"; host: string }): { state: string };
  requestSync(descriptor: { name: "net"; host: string }): { state: string };
}

/**
 * On Deno, asks once for access to 127.0.0.1 (every port) when the command
 * line did not grant it. Deno would otherwise ask per port, or, with no
 * terminal to ask in, stop with an error the demo cannot catch.
 */
function hasNetworkPermission(): boolean {
  const deno = (globalThis as { Deno?: { permissions: DenoPermissions } }).Deno;
  if (deno === undefined) return true;
  const loopback = { name: "net", host: "127.0.0.1" } as const;
  if (deno.permissions.querySync(loopback).state === "granted") return true;
  return deno.permissions.requestSync(loopback).state === "granted";
}

const NO_PERMISSION =
  "Deno needs network access to 127.0.0.1: run `deno run -P demo.ts` (the permission is in deno.json).";

/** True when the error, or an error it wraps, has this `name` or `code`. */
function hasTag(error: unknown, tag: string): boolean {
  if (typeof error !== "object" || error === null) return false;
  if (("name" in error && error.name === tag) || ("code" in error && error.code === tag)) return true;
  return "cause" in error && hasTag(error.cause, tag);
}

/** Turns the errors a new user meets into one line that says what to do. */
function explain(error: unknown, port: number): string {
  if (hasTag(error, "NotCapable")) return NO_PERMISSION;
  if (hasTag(error, "EADDRINUSE")) {
    return `Port ${port} is busy (is \`demo.ts serve\` running?): stop that server, or pass --port N.`;
  }
  if (hasTag(error, "ECONNREFUSED")) {
    return `No server on 127.0.0.1:${port}: start one with \`demo.ts serve\` in another terminal.`;
  }
  return error instanceof Error ? error.message : String(error);
}

async function main(): Promise<void> {
  if (!hasNetworkPermission()) {
    console.error(NO_PERMISSION);
    process.exitCode = 1;
    return;
  }
  let port = 5000;
  try {
    const { values, positionals } = parseArgs({
      args: process.argv.slice(2),
      options: { port: { type: "string", default: String(port) } },
      allowPositionals: true,
    });
    port = Number(values.port);
    if (!Number.isInteger(port) || port < 0 || port > 65535) {
      throw new RangeError(`--port takes a number from 0 to 65535, got ${values.port}`);
    }
    const mode = positionals[0] ?? "all";
    if (mode === "serve") {
      const server = await serve(port);
      console.log("Waiting for clients; Ctrl+C stops.");
      const stop = async (signal: string) => {
        console.log(`\n${signal}: closing; calls in flight may finish first.`);
        await server.close();
        console.log("Server closed.");
      };
      process.once("SIGINT", () => stop("SIGINT"));
      process.once("SIGTERM", () => stop("SIGTERM"));
    } else if (mode === "client") {
      console.log(`Client of 127.0.0.1:${port} (${runtime()})`);
      await runClient(port);
    } else if (mode === "all") {
      const server = await serve(port);
      await runClient(server.port);
      await server.close();
      console.log("\nServer closed.");
    } else {
      throw new Error(`unknown mode ${JSON.stringify(mode)}: use serve, client, or nothing for both`);
    }
  } catch (error) {
    console.error(explain(error, port));
    process.exitCode = 1;
  }
}

await main();
