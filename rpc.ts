/**
 * rpc.ts: a JSON-RPC 2.0 server and client over TCP, in one file.
 *
 * The wire format: a connection carries JSON texts (objects or arrays) back
 * to back. A request is `{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1}`
 * and its reply is one line, `{"jsonrpc":"2.0","result":3,"id":1}\n`. A newline
 * after a request is welcome but never needed: the end of a message is where
 * its outermost bracket closes. Requests without `"jsonrpc"` are JSON-RPC 1.0,
 * as the Python lab and Go's standard library send them
 * (`{"method":"add","params":[1,2]}`), and get 1.0 replies
 * (`{"result":3,"error":null,"id":null}`).
 *
 * The same file runs, unchanged, on:
 *
 * - Node 20: `npx tsx demo.ts`
 * - Node 23.6 or later: `node demo.ts` (Node strips the types itself)
 * - Deno 2: `deno run -P demo.ts` (network permission for 127.0.0.1 comes
 *   from `deno.json`)
 * - Bun: `bun demo.ts`
 *
 * @example Serve, call, close
 * ```ts
 * import { rpcCall, startServer } from "./rpc.ts";
 *
 * const server = await startServer({ port: 0 });
 * const reply = await rpcCall("add", [10, 20], { port: server.port });
 * console.log(reply); // { jsonrpc: "2.0", result: 30, id: 1 }
 * await server.close();
 * ```
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { createConnection, createServer, type Socket } from "node:net";
import { setImmediate } from "node:timers";

// ---------------------------------------------------------------------------
// Wire types and error codes
// ---------------------------------------------------------------------------

/** Any value JSON can carry. */
export type JsonValue =
  | null
  | boolean
  | number
  | string
  | JsonValue[]
  | { [key: string]: JsonValue };

/** A request id: the client picks it, the server echoes it in the reply. */
export type RpcId = string | number | null;

/** The `error` member of a failed reply. */
export interface RpcErrorObject {
  /** One of {@linkcode ERROR_CODES}, or a code a handler chose. */
  code: number;
  /** One sentence for a human: what was expected and what came. */
  message: string;
  /** Extra detail, when the handler gave some. */
  data?: JsonValue;
}

/**
 * A reply as this server sends it, in the version of the request. JSON-RPC
 * 2.0: `jsonrpc` and exactly one of `result` and `error` (an object).
 * JSON-RPC 1.0: both `result` and `error`, one of them null, the error a string.
 */
export type RpcResponse =
  | { jsonrpc: "2.0"; result: unknown; id: RpcId }
  | { jsonrpc: "2.0"; error: RpcErrorObject; id: RpcId }
  | { result: unknown; error: string | null; id: RpcId };

/**
 * A reply as {@linkcode rpcCall} resolves it. From a JSON-RPC 2.0 server it
 * has `jsonrpc`, `id` and one of `result`/`error`; a 1.0 server (Go's) sends
 * `result`, `error` and `id`, with `"error": null` on success; the Python
 * lab's server sends only `{"result": ...}` or `{"error": "some text"}`.
 * {@linkcode resultOf} reads them all.
 */
export interface RpcReply {
  /** `"2.0"`, absent from 1.0 replies and the Python lab's. */
  jsonrpc?: "2.0";
  /** The method's return value, when the call succeeded. */
  result?: unknown;
  /** Why the call failed: an object from JSON-RPC 2.0, a string from 1.0; null or absent on success. */
  error?: RpcErrorObject | string | null;
  /** The id of the request this answers. */
  id?: RpcId;
}

/**
 * The error codes of the JSON-RPC 2.0 specification, plus one in the range it
 * leaves to servers (-32000 to -32099).
 *
 * @example
 * ```ts
 * import { ERROR_CODES } from "./rpc.ts";
 * console.log(ERROR_CODES.METHOD_NOT_FOUND); // -32601
 * ```
 */
export const ERROR_CODES = {
  /** The bytes were not JSON (or not UTF-8). */
  PARSE_ERROR: -32700,
  /** JSON, but not a request object; also: message too long, batch empty or too long. */
  INVALID_REQUEST: -32600,
  /** No such method in the registry. */
  METHOD_NOT_FOUND: -32601,
  /** The method exists but cannot take these params. */
  INVALID_PARAMS: -32602,
  /** The method threw, or its result cannot be sent as JSON. */
  INTERNAL_ERROR: -32603,
  /** The server is at its connection limit and turned this one away. */
  SERVER_BUSY: -32000,
} as const;

/**
 * An error with a JSON-RPC code. Throw it from a handler to choose the code
 * the caller sees; any other error becomes Internal error (-32603).
 *
 * @example
 * ```ts
 * import { ERROR_CODES, FUNCTIONS, RpcError } from "./rpc.ts";
 *
 * FUNCTIONS.divide = (a, b) => {
 *   if (b === 0) throw new RpcError(ERROR_CODES.INVALID_PARAMS, "divide by zero");
 *   return Number(a) / Number(b);
 * };
 * ```
 */
export class RpcError extends Error {
  /** The JSON-RPC error code sent to the caller. */
  code: number;
  /** Extra detail sent to the caller as `error.data`. */
  data?: JsonValue;

  /**
   * Creates an error that the server sends with its own code.
   *
   * @param code The JSON-RPC error code, usually one of {@linkcode ERROR_CODES}.
   * @param message What went wrong, for a human.
   * @param data Extra detail sent to the caller as `error.data`.
   */
  constructor(code: number, message: string, data?: JsonValue) {
    super(message);
    this.name = "RpcError";
    this.code = code;
    this.data = data;
  }
}

// ---------------------------------------------------------------------------
// The registry
// ---------------------------------------------------------------------------

/**
 * A method the server can call. Its arguments come straight off the network,
 * so they are `unknown` until the method has checked them. It may return a
 * value or a Promise of one.
 */
export type RpcFunction = (...params: unknown[]) => unknown;

/** A registry: method name to function. */
export type Functions = Record<string, RpcFunction>;

/** Anything thrown, as an Error: JavaScript lets code throw any value. */
function asError(error: unknown): Error {
  return error instanceof Error ? error : new Error(String(error));
}

/** The message of anything thrown, Error or not. */
function errorMessage(error: unknown): string {
  return asError(error).message;
}

/** Shows a value in an error message, cut short so a huge input stays readable. */
function describe(value: unknown): string {
  const MAX_LENGTH = 100;
  let text: string;
  try {
    text = JSON.stringify(value) ?? String(value);
  } catch (error) {
    // A cycle, a BigInt, or nesting deeper than the stack: say so, never throw.
    text = `(cannot show this ${typeof value}: ${errorMessage(error)})`;
  }
  return text.length > MAX_LENGTH ? `${text.slice(0, MAX_LENGTH)}...` : text;
}

/** Checks that `params` is exactly two finite numbers, or throws Invalid params. */
function twoNumbers(method: string, params: unknown[]): [number, number] {
  const [a, b] = params;
  if (
    params.length !== 2 || typeof a !== "number" || typeof b !== "number" ||
    !Number.isFinite(a) || !Number.isFinite(b)
  ) {
    throw new RpcError(
      ERROR_CODES.INVALID_PARAMS,
      `${method} expects two finite numbers, got ${describe(params)}`,
    );
  }
  return [a, b];
}

/**
 * The methods the server offers unless told otherwise: `add` and `multiply`,
 * each taking exactly two finite numbers. Add to it, or pass your own
 * registry to {@linkcode startServer}.
 *
 * @example
 * ```ts
 * import { FUNCTIONS } from "./rpc.ts";
 *
 * FUNCTIONS.subtract = (a, b) => Number(a) - Number(b);
 * console.log(FUNCTIONS.add(2, 3)); // 5
 * ```
 */
export const FUNCTIONS: Functions = {
  add(...params: unknown[]): number {
    const [a, b] = twoNumbers("add", params);
    return a + b;
  },
  multiply(...params: unknown[]): number {
    const [a, b] = twoNumbers("multiply", params);
    return a * b;
  },
};

// ---------------------------------------------------------------------------
// Framing: where does one JSON message end?
// ---------------------------------------------------------------------------

// The bytes that matter for finding a message's end. All are ASCII, and no
// byte of a multi-byte UTF-8 character is below 0x80, so scanning bytes is safe
// even when a chunk ends in the middle of a character.
const OPEN_BRACE = 0x7b; // {
const CLOSE_BRACE = 0x7d; // }
const OPEN_BRACKET = 0x5b; // [
const CLOSE_BRACKET = 0x5d; // ]
const QUOTE = 0x22; // "
const BACKSLASH = 0x5c; // \
const WHITESPACE = new Set([0x20, 0x09, 0x0a, 0x0d]); // space, tab, \n, \r
// No request needs deeper nesting; deeper input only costs stack, and on some
// runtimes JSON.stringify takes half a second to overflow on 50,000 levels.
const MAX_DEPTH = 1000;

/** A message reader: feed it chunks, it calls back with whole messages. */
interface MessageReader {
  /** Scans one chunk; throws if the stream can no longer be split into messages. */
  push(chunk: Uint8Array): void;
  /** True when part of a message has arrived but not its end. */
  hasPartial(): boolean;
}

/**
 * Splits a byte stream into JSON messages by counting brackets outside
 * strings. Keeps only the bytes of the unfinished message, and at most
 * `maxBytes` of them.
 */
function createMessageReader(
  maxBytes: number,
  onMessage: (bytes: Uint8Array) => void,
): MessageReader {
  let parts: Uint8Array[] = []; // earlier chunks of the unfinished message
  let partsLength = 0;
  let depth = 0; // open brackets not yet closed; 0 means between messages
  // The closer each open bracket expects: a `]` where a `}` belongs can
  // never be mended by later bytes, so it is an error now, not a long wait.
  const closers = new Uint8Array(MAX_DEPTH + 1);
  let inString = false;
  let escaped = false; // the previous byte was a backslash inside a string

  function push(chunk: Uint8Array): void {
    let start = 0; // where the current message begins in this chunk
    for (let i = 0; i < chunk.length; i++) {
      const byte = chunk[i];
      if (depth === 0) {
        if (WHITESPACE.has(byte)) continue;
        if (byte !== OPEN_BRACE && byte !== OPEN_BRACKET) {
          throw new SyntaxError(
            `expected a JSON object or array, got ${describe(String.fromCharCode(byte))}`,
          );
        }
        start = i;
        depth = 1;
        closers[depth] = byte === OPEN_BRACE ? CLOSE_BRACE : CLOSE_BRACKET;
      } else if (inString) {
        if (escaped) escaped = false;
        else if (byte === BACKSLASH) escaped = true;
        else if (byte === QUOTE) inString = false;
      } else if (byte === QUOTE) {
        inString = true;
      } else if (byte === OPEN_BRACE || byte === OPEN_BRACKET) {
        depth++;
        if (depth > MAX_DEPTH) throw new RangeError(`message nested deeper than ${MAX_DEPTH} levels`);
        closers[depth] = byte === OPEN_BRACE ? CLOSE_BRACE : CLOSE_BRACKET;
      } else if (byte === CLOSE_BRACE || byte === CLOSE_BRACKET) {
        if (byte !== closers[depth]) {
          throw new SyntaxError(`expected ${String.fromCharCode(closers[depth])}, got ${String.fromCharCode(byte)}`);
        }
        depth--;
        if (depth === 0) {
          const tail = chunk.subarray(start, i + 1);
          checkLength(partsLength + tail.length);
          const message = parts.length === 0 ? tail : Buffer.concat([...parts, tail]);
          parts = [];
          partsLength = 0;
          onMessage(message);
        }
      }
    }
    if (depth > 0) {
      // Keep the unfinished message's bytes for the next chunk: a copy, so
      // the runtime can free the chunk (Buffer's slice() would not copy).
      const rest = new Uint8Array(chunk.subarray(start));
      checkLength(partsLength + rest.length);
      parts.push(rest);
      partsLength += rest.length;
    }
  }

  function checkLength(length: number): void {
    if (length > maxBytes) {
      throw new RangeError(`message longer than the limit of ${maxBytes} bytes`);
    }
  }

  return { push, hasPartial: () => depth > 0 };
}

// `fatal: true` makes invalid UTF-8 an error instead of silent U+FFFD marks.
const utf8 = new TextDecoder("utf-8", { fatal: true });

/** Decodes and parses one framed message; throws SyntaxError or TypeError. */
function parseMessage(bytes: Uint8Array): unknown {
  return JSON.parse(utf8.decode(bytes));
}

// ---------------------------------------------------------------------------
// Request handling: a parsed message in, a reply (or none) out. No sockets.
// ---------------------------------------------------------------------------

/** Options for {@linkcode handleMessage}. */
export interface HandleOptions {
  /**
   * The methods that can be called.
   * @default {FUNCTIONS}
   */
  functions?: Functions;
  /**
   * The most requests one batch may hold; a longer batch gets one -32600.
   * @default {1000}
   */
  maxBatchLength?: number;
}

/**
 * The two versions of JSON-RPC this server speaks, told apart as the 2.0
 * specification suggests: a 2.0 request always has `"jsonrpc": "2.0"`, and a
 * 1.0 request (the Python lab's, Go's) never has a `jsonrpc` member.
 */
type Version = "1.0" | "2.0";

/** Builds an error object, with `data` only when there is some. */
function errorObject(code: number, message: string, data?: JsonValue): RpcErrorObject {
  return data === undefined ? { code, message } : { code, message, data };
}

/** A reply that carries a result, in the request's version. */
function resultResponse(version: Version, id: RpcId, result: unknown): RpcResponse {
  return version === "2.0" ? { jsonrpc: "2.0", result, id } : { result, error: null, id };
}

/**
 * A reply that carries an error, in the request's version. 1.0 leaves the
 * error's shape open; the Python lab and Go's client expect a string, and Go's
 * client shuts the whole connection on anything else.
 */
function errorResponse(version: Version, id: RpcId, error: RpcErrorObject): RpcResponse {
  return version === "2.0" ? { jsonrpc: "2.0", error, id } : { result: null, error: error.message, id };
}

/** An error about a message whose requests could not be read: no id, no version, so 2.0. */
function messageError(code: number, message: string): RpcResponse {
  return errorResponse("2.0", null, errorObject(code, message));
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isRpcId(value: unknown): value is RpcId {
  return value === null || typeof value === "string" || typeof value === "number";
}

/** True for errors that carry a JSON-RPC code, such as {@linkcode RpcError}. */
function hasRpcCode(error: unknown): error is RpcErrorObject {
  return typeof error === "object" && error !== null &&
    "code" in error && Number.isInteger(error.code) &&
    "message" in error && typeof error.message === "string";
}

/**
 * Answers one request object; resolves to undefined for a notification.
 * `inBatch`: batches are a 2.0 feature, so every request in one must be 2.0.
 */
async function handleRequest(
  request: unknown,
  functions: Functions,
  inBatch: boolean,
): Promise<RpcResponse | undefined> {
  if (!isPlainObject(request)) {
    return messageError(ERROR_CODES.INVALID_REQUEST, `expected a request object, got ${describe(request)}`);
  }
  const { jsonrpc, method, params } = request;
  const version: Version = inBatch || Object.hasOwn(request, "jsonrpc") ? "2.0" : "1.0";
  const hasId = Object.hasOwn(request, "id");
  const id = hasId && isRpcId(request.id) ? request.id : null;
  const fail = (code: number, message: string) => errorResponse(version, id, errorObject(code, message));
  if (hasId && !isRpcId(request.id)) {
    return fail(ERROR_CODES.INVALID_REQUEST, `id must be a string, number or null, got ${describe(request.id)}`);
  }
  if (version === "2.0" && jsonrpc !== "2.0") {
    return fail(ERROR_CODES.INVALID_REQUEST, `jsonrpc must be "2.0", got ${describe(jsonrpc)}`);
  }
  if (typeof method !== "string") {
    return fail(ERROR_CODES.INVALID_REQUEST, `method must be a string, got ${describe(method)}`);
  }
  let args: unknown[];
  if (params === undefined) args = [];
  else if (Array.isArray(params)) args = params;
  else if (isPlainObject(params)) args = [params];
  else return fail(ERROR_CODES.INVALID_REQUEST, `params must be an array or an object, got ${describe(params)}`);
  // A notification gets no reply. In 2.0 it is a request without an id; in
  // 1.0 one whose id is null. The lab's requests have no id at all, and are answered.
  const isNotification = version === "2.0" ? !hasId : hasId && id === null;

  // Object.hasOwn, not `method in functions`: "constructor" or "__proto__"
  // must not reach the prototype's functions.
  const fn = Object.hasOwn(functions, method) ? functions[method] : undefined;
  if (typeof fn !== "function") {
    return isNotification ? undefined : fail(ERROR_CODES.METHOD_NOT_FOUND, `method not found: ${describe(method)}`);
  }
  try {
    const result = await fn(...args);
    if (isNotification) return undefined;
    if (typeof result === "number" && !Number.isFinite(result)) {
      // JSON.stringify would quietly send null for these.
      return fail(ERROR_CODES.INTERNAL_ERROR, `${method} returned ${result}, which JSON cannot carry`);
    }
    return resultResponse(version, id, result === undefined ? null : result);
  } catch (error) {
    if (isNotification) return undefined;
    if (hasRpcCode(error)) return errorResponse(version, id, errorObject(error.code, error.message, error.data));
    // The message only: a stack trace would show the caller our insides.
    return fail(ERROR_CODES.INTERNAL_ERROR, errorMessage(error));
  }
}

/**
 * Answers one parsed message: a request object or a batch (an array of them).
 * This is the whole protocol, with no sockets, so it can be tested alone.
 *
 * @param message A parsed JSON value, as it came off the wire.
 * @param options The registry and batch limit.
 * @returns The reply (an array for a batch), or undefined when nothing is to
 * be sent: a notification, or a batch of only notifications.
 *
 * @example
 * ```ts
 * import { handleMessage } from "./rpc.ts";
 *
 * const reply = await handleMessage({ jsonrpc: "2.0", method: "add", params: [1, 2], id: 7 });
 * console.log(reply); // { jsonrpc: "2.0", result: 3, id: 7 }
 * ```
 */
export async function handleMessage(
  message: unknown,
  options: HandleOptions = {},
): Promise<RpcResponse | RpcResponse[] | undefined> {
  const { functions = FUNCTIONS, maxBatchLength = 1000 } = options;
  if (!Array.isArray(message)) return handleRequest(message, functions, false);
  if (message.length === 0) {
    return messageError(ERROR_CODES.INVALID_REQUEST, "a batch must hold at least one request, got []");
  }
  if (message.length > maxBatchLength) {
    const text = `a batch may hold at most ${maxBatchLength} requests, got ${message.length}`;
    return messageError(ERROR_CODES.INVALID_REQUEST, text);
  }
  // Every request in the batch runs at once; the reply waits for all of them.
  const replies = await Promise.all(message.map((request) => handleRequest(request, functions, true)));
  const sent = replies.filter((reply) => reply !== undefined);
  return sent.length > 0 ? sent : undefined;
}

/** Turns a reply into its JSON text; a result JSON cannot carry becomes -32603. */
function encodeResponse(response: RpcResponse): string {
  try {
    return JSON.stringify(response);
  } catch (error) {
    // A BigInt or a cycle in the result: say so, in the reply's own version.
    const version = "jsonrpc" in response ? "2.0" : "1.0";
    const message = `result cannot be sent as JSON: ${errorMessage(error)}`;
    return JSON.stringify(errorResponse(version, response.id, errorObject(ERROR_CODES.INTERNAL_ERROR, message)));
  }
}

/** Turns a reply or a batch of replies into one line of JSON. */
function encodeReply(reply: RpcResponse | RpcResponse[]): string {
  const text = Array.isArray(reply) ? `[${reply.map(encodeResponse).join(",")}]` : encodeResponse(reply);
  return text + "\n";
}

// ---------------------------------------------------------------------------
// Writing: one system call per turn of the event loop, not one per message
// ---------------------------------------------------------------------------

/** Queues text for a socket; see {@linkcode createWriter}. */
interface Writer {
  /** Queues text, to be written at the end of this turn of the event loop. */
  write(text: string): void;
  /** Writes what is queued now (before ending the socket, say). */
  flush(): void;
}

/**
 * Joins everything written to `socket` in one turn of the event loop into one
 * write. A client that sends 50 requests in one packet then gets its 50
 * replies in one packet too, and the server makes one system call, not 50:
 * the biggest cost the profiler found.
 */
function createWriter(socket: Socket, onFull: () => void = () => {}): Writer {
  let queued = "";
  function flush(): void {
    if (queued === "" || !socket.writable) return;
    const text = queued;
    queued = "";
    if (!socket.write(text)) onFull(); // the runtime is holding more than its buffer's worth
  }
  function write(text: string): void {
    if (queued === "") setImmediate(flush); // once the callbacks of this turn have all run
    queued += text;
  }
  return { write, flush };
}

// ---------------------------------------------------------------------------
// The server: sockets in, messages out
// ---------------------------------------------------------------------------

/** Options for {@linkcode startServer}. */
export interface ServerOptions extends HandleOptions {
  /**
   * The TCP port to listen on; 0 picks a free one (read it from `port`).
   * @default {5000}
   */
  port?: number;
  /**
   * The address to listen on. Loopback, so only this machine can connect;
   * `"0.0.0.0"` would open the server to the network.
   * @default {"127.0.0.1"}
   */
  host?: string;
  /**
   * Called with one line of news about a connection, such as
   * `"Client connected: 127.0.0.1:54231"`. Pass `console.log` to print them.
   * @default {undefined} (silent)
   */
  log?: (line: string) => void;
  /**
   * Told every message that arrives (`"-->"`, its text as received) and every
   * reply sent (`"<--"`, its JSON), with the connection's address: a view of
   * the wire, for watching marshalling happen.
   * @default {undefined} (nothing is traced)
   */
  trace?: (arrow: "-->" | "<--", address: string, text: string) => void;
  /**
   * The longest message accepted, in bytes. A longer one gets one -32600
   * reply with id null, and its connection is closed.
   * @default {1048576} (1 MiB)
   */
  maxMessageBytes?: number;
  /**
   * The most connections open at once; one more is sent a -32000 reply and
   * closed.
   * @default {1000}
   */
  maxConnections?: number;
  /**
   * A connection with no traffic and no call in flight for this long is
   * closed.
   * @default {60000}
   */
  idleTimeoutMs?: number;
  /**
   * How long `close()` waits for calls in flight before it destroys their
   * connections.
   * @default {5000}
   */
  closeGraceMs?: number;
}

/** A running server, as {@linkcode startServer} resolves it. */
export interface RpcServer {
  /** The port the server listens on (the one the system picked, for port 0). */
  port: number;
  /**
   * Stops accepting connections, closes idle ones, lets calls in flight
   * answer (up to `closeGraceMs`), and resolves once every socket is closed.
   */
  close(): Promise<void>;
}

/** What close() needs of each open connection. */
interface Connection {
  socket: Socket;
  /** Stops reading requests; closes now if no call is in flight, else after the last reply. */
  stop(): void;
}

/**
 * Starts a JSON-RPC 2.0 server on TCP.
 *
 * @param options Where to listen, what to serve, and the limits.
 * @returns The running server, once it is listening.
 * @throws {Error} When it cannot listen, such as on a port in use; the
 * message names the address and port.
 *
 * @example
 * ```ts
 * import { startServer } from "./rpc.ts";
 *
 * const server = await startServer({ port: 0, log: console.log });
 * console.log(`listening on ${server.port}`);
 * await server.close();
 * ```
 */
export function startServer(options: ServerOptions = {}): Promise<RpcServer> {
  const {
    port = 5000,
    host = "127.0.0.1",
    functions = FUNCTIONS,
    log = () => {},
    trace,
    maxMessageBytes = 1024 * 1024,
    maxBatchLength = 1000,
    maxConnections = 1000,
    idleTimeoutMs = 60_000,
    closeGraceMs = 5000,
  } = options;
  const connections = new Set<Connection>();
  let closing = false;
  let closed: Promise<void> | undefined;

  // allowHalfOpen: a client that sends its request and then shuts its write
  // side (`nc -N`) still gets its reply, because we end our side ourselves.
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    const address = `${socket.remoteAddress}:${socket.remotePort}`;
    if (connections.size >= maxConnections) {
      const message = `server busy: it already has ${maxConnections} connections`;
      log(`Client refused: ${address} (${message})`);
      socket.on("error", (error) => log(`Client ${address} error: ${error.message}`));
      // Destroyed once the reply is out: it is in no list that close() would tidy up.
      socket.end(encodeReply(messageError(ERROR_CODES.SERVER_BUSY, message)), () => socket.destroy());
      return;
    }
    log(`Client connected: ${address}`);
    serve(socket, address);
  });

  /** Reads requests from one socket and writes their replies. */
  function serve(socket: Socket, address: string): void {
    let reading = true; // false once the client has ended, or we stopped listening
    let inFlight = 0; // messages read whose replies have not been sent yet

    // Backpressure: while the client is not reading its replies, stop
    // reading its requests, so unsent replies cannot pile up in memory.
    const writer = createWriter(socket, () => socket.pause());

    function send(reply: RpcResponse | RpcResponse[]): void {
      if (!socket.writable) return; // the client has gone: nobody to tell
      const text = encodeReply(reply);
      trace?.("<--", address, text.slice(0, -1));
      writer.write(text);
    }

    /** Ends our side once no more requests will be read and all are answered. */
    function endIfDone(): void {
      if (reading || inFlight > 0 || socket.writableEnded) return;
      writer.flush();
      // While the server closes, do not wait for the client to hang up too.
      socket.end(() => {
        if (closing) socket.destroy();
      });
    }

    /** Answers once, then stops reading: after this input the stream cannot be trusted. */
    function refuse(code: number, message: string): void {
      log(`Client ${address}: ${message}; closing`);
      send(messageError(code, message));
      reading = false;
      endIfDone();
    }

    const reader = createMessageReader(maxMessageBytes, (bytes) => {
      trace?.("-->", address, Buffer.from(bytes).toString()); // invalid UTF-8 shows as U+FFFD
      let message: unknown;
      try {
        message = parseMessage(bytes);
      } catch (error) {
        send(messageError(ERROR_CODES.PARSE_ERROR, `parse error: ${errorMessage(error)}`));
        return;
      }
      inFlight++;
      handleMessage(message, { functions, maxBatchLength }).then((reply) => {
        if (reply !== undefined) send(reply);
        inFlight--;
        endIfDone();
      });
    });

    socket.on("data", (chunk: Buffer) => {
      if (!reading) return; // discarded, not buffered
      try {
        reader.push(chunk);
      } catch (error) {
        // RangeError: too long; SyntaxError: not an object or array.
        if (error instanceof RangeError) refuse(ERROR_CODES.INVALID_REQUEST, errorMessage(error));
        else refuse(ERROR_CODES.PARSE_ERROR, `parse error: ${errorMessage(error)}`);
      }
    });
    socket.on("drain", () => socket.resume());
    socket.on("end", () => {
      if (reading && reader.hasPartial()) {
        send(messageError(ERROR_CODES.PARSE_ERROR, "parse error: the connection ended inside a message"));
      }
      reading = false;
      endIfDone();
    });
    socket.setTimeout(idleTimeoutMs, () => {
      // A slow call is not idleness: its reply restarts the clock.
      if (inFlight > 0) return;
      log(`Client ${address} idle for ${idleTimeoutMs} ms; closing`);
      socket.destroy();
    });
    // A reset, or a write after the client left: this socket's problem only.
    socket.on("error", (error) => log(`Client ${address} error: ${error.message}`));

    function stop(): void {
      reading = false;
      endIfDone(); // now, if no call is in flight; otherwise after the last reply
    }
    const connection: Connection = { socket, stop };
    connections.add(connection);
    socket.on("close", () => connections.delete(connection));
  }

  function close(): Promise<void> {
    closed ??= new Promise((resolve) => {
      closing = true;
      const timer = setTimeout(() => {
        for (const { socket } of connections) socket.destroy();
      }, closeGraceMs);
      // server.close() stops accepting at once; its callback runs when the
      // last connection has closed.
      server.close(() => {
        clearTimeout(timer);
        resolve();
      });
      for (const connection of connections) connection.stop();
    });
    return closed;
  }

  return new Promise((resolve, reject) => {
    server.once("error", (error: Error & { code?: string }) => {
      const reason = error.code === "EADDRINUSE" ? "the port is already in use" : error.message;
      reject(new Error(`cannot listen on ${host}:${port}: ${reason}`, { cause: error }));
    });
    server.listen(port, host, () => {
      // From now on a server error (say, too many open files) is logged, not fatal.
      server.on("error", (error) => log(`Server error: ${error.message}`));
      const address = server.address();
      const boundPort = typeof address === "object" && address !== null ? address.port : port;
      resolve({ port: boundPort, close });
    });
  });
}

// ---------------------------------------------------------------------------
// Binding and the client's side of the wire
// ---------------------------------------------------------------------------

/** Where the server is, for {@linkcode rpcCall} and {@linkcode connect}. */
export interface ConnectOptions {
  /**
   * The server's port.
   * @default {5000}
   */
  port?: number;
  /**
   * The server's address: a name or an IP address.
   * @default {"127.0.0.1"}
   */
  host?: string;
  /**
   * How long a call may wait for its reply; for {@linkcode rpcCall}, for the
   * connection and the reply together.
   * @default {5000}
   */
  timeoutMs?: number;
}

/** Options for {@linkcode rpcCall}: where, how long, and a way to give up. */
export interface CallOptions extends ConnectOptions {
  /**
   * Aborting it rejects the call at once with the signal's reason, as
   * `fetch` does. The server may still run the procedure.
   */
  signal?: AbortSignal;
}

/** True for an object with a `result` or an `error`: the least a reply must have. */
function isRpcReply(value: unknown): value is RpcReply {
  return isPlainObject(value) && (Object.hasOwn(value, "result") || Object.hasOwn(value, "error"));
}

/**
 * Reads replies from a client's socket: calls `onReply` with each whole one,
 * or `onError` when the bytes are not a JSON-RPC reply. Both clients use it;
 * a reply needs no newline, as the Python lab's server sends none.
 */
function readReplies(socket: Socket, onReply: (reply: RpcReply) => void, onError: (error: Error) => void): void {
  const reader = createMessageReader(Number.POSITIVE_INFINITY, (bytes) => {
    let reply: unknown;
    try {
      reply = parseMessage(bytes);
    } catch (error) {
      onError(new Error(`the reply is not JSON (${errorMessage(error)})`));
      return;
    }
    if (isRpcReply(reply)) onReply(reply);
    else onError(new Error(`the reply is not a JSON-RPC response: ${describe(reply)}`));
  });
  socket.on("data", (chunk: Buffer) => {
    try {
      reader.push(chunk);
    } catch (error) {
      onError(new Error(`the reply is not JSON (${errorMessage(error)})`));
    }
  });
}

/**
 * Gives up on a call when its time is up or its signal aborts, whichever
 * comes first. Returns a function that cancels both, for when the call
 * settles another way: after it, no timer or listener is left behind.
 */
function watchCall(
  { timeoutMs, signal }: { timeoutMs: number; signal?: AbortSignal },
  onTimeout: (cause: Error) => void,
  onAbort: (reason: unknown) => void,
): () => void {
  const timer = setTimeout(() => onTimeout(new Error(`no reply within ${timeoutMs} ms`)), timeoutMs);
  const abort = () => onAbort(signal?.reason);
  signal?.addEventListener("abort", abort);
  return () => {
    clearTimeout(timer);
    signal?.removeEventListener("abort", abort);
  };
}

/** The error a client call rejects with: what, where, and why. */
function callError(what: string, where: string, cause: Error): Error {
  return new Error(`${what} to ${where} failed: ${cause.message}`, { cause });
}

/** The params a call may carry: positional (an array) or named (an object). */
export type RpcParams = unknown[] | Record<string, unknown>;

/**
 * Turns a reply into what a local call would give: its result, or a thrown
 * {@linkcode RpcError}. This is the client stub's last step (unmarshalling
 * the reply). It reads both versions: `"error": null` (JSON-RPC 1.0, as Go's
 * server sends it) means success, and a string error (1.0, the Python lab's)
 * becomes an RpcError with code -32603, `INTERNAL_ERROR`, because 1.0 errors
 * carry no code.
 *
 * @param reply A reply, as {@linkcode rpcCall} or a client's `call()` resolve it.
 * @returns The reply's `result`.
 * @throws {RpcError} When the reply carries an error; with its code, message and data.
 *
 * @example
 * ```ts
 * import { resultOf, rpcCall } from "./rpc.ts";
 *
 * console.log(resultOf(await rpcCall("add", [1, 2]))); // 3
 * ```
 */
export function resultOf(reply: RpcReply): unknown {
  const { error } = reply;
  if (error === undefined || error === null) return reply.result;
  if (hasRpcCode(error)) throw new RpcError(error.code, error.message, error.data);
  throw new RpcError(ERROR_CODES.INTERNAL_ERROR, typeof error === "string" ? error : describe(error));
}

// ---------------------------------------------------------------------------
// The client: one connection per call, like the Python lab's
// ---------------------------------------------------------------------------

/**
 * Calls one method on a server, over a connection of its own.
 *
 * @param method The method's name, such as `"add"`.
 * @param params Its arguments: an array, or one object; omitted when undefined.
 * @param options Where the server is, how long to wait, and a signal to give up.
 * @returns The reply, parsed. A JSON-RPC error (say, method not found) is a
 * reply with `error`, not a rejection: see {@linkcode resultOf}.
 * @throws {Error} When the connection is refused, times out or closes before a
 * reply, or the reply is not JSON; the message names the method, the address
 * and the cause. When the signal aborts: its reason.
 *
 * @example
 * ```ts
 * import { rpcCall } from "./rpc.ts";
 *
 * const reply = await rpcCall("multiply", [5, 6]);
 * console.log(reply.result); // 30
 * ```
 */
export function rpcCall(method: string, params?: RpcParams, options: CallOptions = {}): Promise<RpcReply> {
  const { port = 5000, host = "127.0.0.1", timeoutMs = 5000, signal } = options;
  const request = JSON.stringify({ jsonrpc: "2.0", method, params, id: 1 });

  return new Promise((resolve, reject) => {
    signal?.throwIfAborted(); // thrown here, it rejects the promise before any socket exists
    const socket = createConnection({ port, host });
    const unwatch = watchCall({ timeoutMs, signal }, fail, settle);

    // A promise settles once, so whichever of these runs first decides.
    function settle(error: unknown, reply?: RpcReply): void {
      unwatch();
      socket.destroy();
      if (reply === undefined) reject(error);
      else resolve(reply);
    }
    function fail(cause: Error): void {
      settle(callError(`rpcCall ${method}`, `${host}:${port}`, cause));
    }

    // The reply is the first whole JSON text; then the socket is destroyed.
    readReplies(socket, (reply) => settle(undefined, reply), fail);
    socket.on("end", () => fail(new Error("the server closed the connection before replying")));
    socket.on("error", fail);
    socket.write(request + "\n"); // queued until the connection is made
  });
}

// ---------------------------------------------------------------------------
// The persistent client and the client stub: one connection, many calls
// ---------------------------------------------------------------------------

/**
 * A client stub's type: each method of `T` takes the same parameters and
 * resolves to the same result, because it now runs on the server.
 */
export type Stub<T> = {
  [K in keyof T]: T[K] extends (...params: infer P) => infer R ? (...params: P) => Promise<Awaited<R>> : never;
};

/** A client on one connection, as {@linkcode connect} resolves it. */
export interface RpcClient {
  /**
   * Calls a method and resolves to its reply, exactly as {@linkcode rpcCall}
   * does; many calls may be in flight at once. Aborting `signal` rejects the
   * call at once with the signal's reason.
   */
  call(method: string, params?: RpcParams, options?: Pick<CallOptions, "signal">): Promise<RpcReply>;
  /** Sends a notification: the server runs it and sends nothing back. */
  notify(method: string, params?: RpcParams): void;
  /**
   * A client stub: an object whose methods call the server's, so that
   * `await calc.add(1, 2)` resolves to `3`, and an error reply rejects with
   * an {@linkcode RpcError}. `T` names the methods and their types.
   */
  stub<T>(): Stub<T>;
  /** Ends the connection once the calls pending are answered (or time out, or are aborted). */
  close(): Promise<void>;
  /** How many calls have been sent and not yet answered, timed out, aborted or dropped. */
  readonly pending: number;
}

// Names a stub must not treat as methods: `await stub` reads `then`, and
// JSON.stringify reads `toJSON`; a remote call for either would be a surprise.
const NOT_METHODS = new Set(["then", "toJSON"]);

/**
 * Opens one connection for many calls. Each call gets a new id, and a `Map`
 * from id to the call's promise matches each reply to its call, whatever
 * order the replies come in.
 *
 * @param options Where the server is, and how long each call may take
 * (`timeoutMs`, counted per call).
 * @returns The client, once connected.
 * @throws {Error} When the connection cannot be made. Calls reject when they
 * time out, or at once, all of them, when the connection drops.
 *
 * @example
 * ```ts
 * import { connect } from "./rpc.ts";
 *
 * const client = await connect({ port: 5000 });
 * const calc = client.stub<{ add(a: number, b: number): number }>();
 * console.log(await calc.add(1, 2)); // 3
 * const reply = await client.call("multiply", [3, 4]);
 * console.log(reply.result); // 12
 * await client.close();
 * ```
 */
export function connect(options: ConnectOptions = {}): Promise<RpcClient> {
  const { port = 5000, host = "127.0.0.1", timeoutMs = 5000 } = options;
  const where = `${host}:${port}`;
  // The calls waiting for a reply: id -> how to settle that call's promise.
  const pending = new Map<number, { method: string; settle(error: unknown, reply?: RpcReply): void }>();
  let nextId = 1;
  let closedBecause: Error | undefined; // set once the connection is gone

  const socket = createConnection({ port, host });

  /** Rejects every call still waiting: after this, nothing is left in `pending`. */
  function dropConnection(cause: Error): void {
    closedBecause ??= cause;
    socket.destroy();
    for (const call of pending.values()) call.settle(callError(`call ${call.method}`, where, closedBecause));
  }

  readReplies(socket, (reply) => {
    // A reply whose id matches no call (it timed out, or the server could
    // not read the id) has no one to go to.
    if (typeof reply.id === "number") pending.get(reply.id)?.settle(undefined, reply);
  }, dropConnection);
  socket.on("end", () => dropConnection(new Error("the server closed the connection")));

  const writer = createWriter(socket);

  function send(request: { jsonrpc: "2.0"; method: string; params?: RpcParams; id?: number }): void {
    if (closedBecause !== undefined) throw closedBecause;
    writer.write(JSON.stringify(request) + "\n");
  }

  function call(method: string, params?: RpcParams, { signal }: Pick<CallOptions, "signal"> = {}): Promise<RpcReply> {
    return new Promise((resolve, reject) => {
      signal?.throwIfAborted(); // thrown here, it rejects the promise before anything is sent
      const id = nextId++;
      const fail = (cause: Error) => settle(callError(`call ${method}`, where, cause));
      const unwatch = watchCall({ timeoutMs, signal }, fail, settle);
      // Whichever comes first (reply, timeout, abort, dropped connection)
      // settles the call, and leaves nothing of it behind.
      function settle(error: unknown, reply?: RpcReply): void {
        pending.delete(id);
        unwatch();
        if (closedBecause !== undefined && pending.size === 0) socket.destroy(); // close() waits for no one else
        if (reply === undefined) reject(error);
        else resolve(reply);
      }
      pending.set(id, { method, settle });
      try {
        send({ jsonrpc: "2.0", method, params, id });
      } catch (error) {
        fail(asError(error));
      }
    });
  }

  const client: RpcClient = {
    call,
    notify(method, params) {
      try {
        send({ jsonrpc: "2.0", method, params });
      } catch (error) {
        throw callError(`notify ${method}`, where, asError(error));
      }
    },
    stub<T>() {
      const get = (_: object, name: string | symbol) =>
        typeof name === "symbol" || NOT_METHODS.has(name)
          ? undefined
          : (...params: unknown[]) => call(name, params).then(resultOf);
      return new Proxy({}, { get }) as Stub<T>;
    },
    get pending() {
      return pending.size;
    },
    close() {
      if (socket.destroyed) return Promise.resolve();
      closedBecause ??= new Error("the connection was closed by close()");
      // Pending calls still get their replies (or time out); nothing else is worth waiting for.
      writer.flush();
      socket.end();
      if (pending.size === 0) socket.destroy();
      return new Promise((resolve) => socket.once("close", () => resolve()));
    },
  };

  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(client));
    socket.on("error", (error) => {
      reject(callError("connect", where, error)); // ignored once connected
      dropConnection(error);
    });
  });
}
