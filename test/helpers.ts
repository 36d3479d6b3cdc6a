/**
 * What the test files share: servers and raw peers that are all closed after
 * each test, methods that make the protocol's rules observable, and small
 * tools (free ports, the runtime's TypeScript command, tls/'s certificates).
 * Importing it registers the afterEach that closes them.
 */
import { spawnSync } from "node:child_process";
import { once } from "node:events";
import { readFileSync } from "node:fs";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import process from "node:process";
import { setTimeout as delay } from "node:timers/promises";
import { afterEach, expect } from "vitest";
import {
  connect,
  type ConnectOptions,
  FUNCTIONS,
  type Functions,
  type RpcClient,
  RpcError,
  type RpcServer,
  type ServerOptions,
  startServer,
} from "../rpc.ts";

// ---------------------------------------------------------------------------
// Helpers: servers and raw peers that are all closed after each test
// ---------------------------------------------------------------------------

export const hasPython = spawnSync("python3", ["--version"]).status === 0;

// Any Promise rejected with no one to catch it, anywhere in the suite, fails the last test (vitest reports it too).
export const unhandled: unknown[] = [];
process.on("unhandledRejection", (reason) => unhandled.push(reason));

export const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** A registry with extra methods that make the rules observable. */
export const TEST_FUNCTIONS: Functions = {
  ...FUNCTIONS,
  echo: (...params) => params,
  count: (...params) => params.length,
  nothing: () => undefined,
  fail: () => {
    throw new Error("it broke");
  },
  failLater: async () => {
    await delay(1);
    throw new Error("it broke later");
  },
  coded: () => {
    throw new RpcError(-32001, "custom failure", { detail: 42 });
  },
  bigint: () => 10n,
  cycle: () => {
    const value: Record<string, unknown> = {};
    value.self = value;
    return value;
  },
  infinity: () => Infinity,
  sleep: async (ms) => {
    await delay(Number(ms));
    return `slept ${ms}`;
  },
  forever: () => new Promise(() => {}),
};

export async function start(options: ServerOptions = {}): Promise<RpcServer> {
  const server = await startServer({ port: 0, functions: TEST_FUNCTIONS, closeGraceMs: 250, ...options });
  cleanups.push(() => server.close());
  return server;
}

/** Polls until `check` is true, or fails after `timeoutMs`. */
export async function waitFor(check: () => boolean, what: string, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await delay(5);
  }
}

/** A raw TCP client: sends exact bytes and collects the reply lines. */
export interface Peer {
  socket: Socket;
  /** Every byte received so far, as text. */
  received(): string;
  /** Writes each chunk as its own TCP segment. */
  send(...chunks: Array<string | Uint8Array>): Promise<void>;
  /** Waits for `n` reply lines and parses them. */
  replies(n: number): Promise<unknown[]>;
  /** Resolves when the server has closed the connection. */
  closed(): Promise<void>;
}

export async function openPeer(port: number): Promise<Peer> {
  const socket = createConnection({ port, host: "127.0.0.1", allowHalfOpen: true });
  socket.on("error", () => {}); // a reset is something tests look for, not a crash
  cleanups.push(() => socket.destroy());
  await once(socket, "connect");
  socket.setNoDelay(true);
  let text = "";
  let ended = false;
  socket.setEncoding("utf8");
  socket.on("data", (chunk: string) => (text += chunk));
  socket.on("end", () => (ended = true));
  socket.on("close", () => (ended = true));
  const lines = () => text.split("\n").slice(0, -1);
  return {
    socket,
    received: () => text,
    async send(...chunks) {
      for (const chunk of chunks) {
        socket.write(chunk);
        await delay(1);
      }
    },
    async replies(n) {
      await waitFor(() => lines().length >= n || ended, `${n} replies`);
      expect(lines()).toHaveLength(n);
      return lines().map((line) => JSON.parse(line));
    },
    closed: () => waitFor(() => ended, "the server to close the connection"),
  };
}

/** Sends one message on a new connection and returns its single reply. */
export async function ask(port: number, message: string): Promise<unknown> {
  const peer = await openPeer(port);
  await peer.send(message);
  const [reply] = await peer.replies(1);
  return reply;
}

export const errorReply = (code: number, id: unknown = null) => ({
  jsonrpc: "2.0",
  error: { code, message: expect.any(String) },
  id,
});

/** A TCP server that does whatever `onConnection` says, for testing the client. */
export async function fakeServer(onConnection: (socket: Socket) => void): Promise<number> {
  const server: Server = createServer(onConnection);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  cleanups.push(() => new Promise((resolve) => server.close(resolve)));
  const sockets = new Set<Socket>();
  server.on("connection", (socket) => {
    sockets.add(socket);
    socket.on("error", () => {});
  });
  cleanups.push(() => sockets.forEach((socket) => socket.destroy()));
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("no port");
  return address.port;
}

export async function client(port: number, options: ConnectOptions = {}): Promise<RpcClient> {
  const opened = await connect({ port, ...options });
  cleanups.push(() => opened.close());
  return opened;
}

/** A PEM file from tls/, made by tls/make-certs.sh for tests and the demo. */
export const pem = (name: string) => readFileSync(new URL(`../tls/${name}.pem`, import.meta.url));
export const serverTls = { key: pem("server-key"), cert: pem("server") };
export const mutualTls = { ...serverTls, ca: pem("ca"), requestCert: true, rejectUnauthorized: true };
export const clientTls = { ca: pem("ca"), key: pem("client-key"), cert: pem("client") };

/** The command that runs a TypeScript file on the runtime running these tests. */
export function runTypeScript(file: string): [string, string[]] {
  const versions = process.versions as { deno?: string; bun?: string };
  if (versions.deno !== undefined) return [process.execPath, ["run", "-A", file]];
  if (versions.bun !== undefined) return [process.execPath, [file]];
  return [process.execPath, ["--import", "tsx", file]];
}

export async function freePort(): Promise<number> {
  const server = createServer().listen(0, "127.0.0.1");
  await once(server, "listening");
  const address = server.address();
  await new Promise((resolve) => server.close(resolve));
  if (address === null || typeof address === "string") throw new Error("no port");
  return address.port;
}

/** True when this machine answers on 127.0.0.2 as well as 127.0.0.1 (Linux does; macOS does not unless told). */
export function answersOn127002(): Promise<boolean> {
  const probe = createServer();
  return new Promise((resolve) => {
    probe.once("error", () => resolve(false));
    probe.listen(0, "127.0.0.2", () => probe.close(() => resolve(true)));
  });
}
export const hasSecondLoopback = await answersOn127002();
