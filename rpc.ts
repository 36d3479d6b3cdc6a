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
 * - Node 20: `npx tsx main.ts` (with `"type": "module"` in package.json)
 * - Node 23.6 or later: `node main.ts` (Node strips the types itself)
 * - Deno 2: `deno run --allow-net=127.0.0.1 main.ts`
 * - Bun: `bun main.ts`
 *
 * A remote procedure call in five steps, as Birrell and Nelson drew it in
 * 1984: the caller's stub marshals the call into a message, the transport
 * carries it, the server's stub unmarshals it and calls the procedure, and
 * the result travels back the same way. The sections below follow that path;
 * read them in order (each begins with the idea it implements):
 *
 * 1. Marshalling: what crosses the wire. JsonValue, ServerReply, RpcReply, ERROR_CODES, RpcError
 * 2. The procedures: a registry. FUNCTIONS
 * 3. Framing: where one message ends. MessageReader
 * 4. The server stub: a message in, a reply out. handleMessage
 * 5. Sending: one write for many replies. Writer
 * 6. The server: one Connection per client, limits, closing. Connection, startServer
 * 7. Binding: reaching a server, reading its replies. ConnectOptions, resultOf
 * 8. One call, one connection: the lab's client. rpcCall
 * 9. The client stub: one connection, many calls. RpcClient, connect
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

import { Buffer, isAscii } from "node:buffer";
import { once } from "node:events";
import { type AddressInfo, createConnection, createServer, type Socket } from "node:net";
import { connect as tlsConnect, type ConnectionOptions, createServer as tlsServer, type TlsOptions } from "node:tls";

// ---------------------------------------------------------------------------
// 1. Marshalling: what crosses the wire
//
// A procedure's arguments and result must become bytes to travel, and bytes
// again to be used: that is marshalling. Here the format is JSON, so only
// what JSON can carry crosses (null, booleans, numbers, strings, arrays,
// plain objects): arguments are passed by value, a Date arrives as a string,
// and a function or a reference cannot be sent at all. The request names the
// procedure and carries an id; the reply carries the same id and either a
// result or an error with a code.
// ---------------------------------------------------------------------------

/** Any value JSON can carry. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** A request id: the client picks it, the server echoes it in the reply. */
export type RpcId = string | number | null;

/**
 * The `error` member of a failed reply: a `code` (one of
 * {@linkcode ERROR_CODES}, or one a handler chose), a `message` for a human
 * (what was expected and what came), and `data`, extra detail, when the
 * handler gave some.
 */
export type RpcErrorObject = { code: number; message: string; data?: JsonValue };

/**
 * A reply as this server sends it, in the version of the request. JSON-RPC
 * 2.0: `jsonrpc` and exactly one of `result` and `error` (an object).
 * JSON-RPC 1.0: both `result` and `error`, one of them null, the error a string.
 */
export type ServerReply =
  | { jsonrpc: "2.0"; result: unknown; id: RpcId }
  | { jsonrpc: "2.0"; error: RpcErrorObject; id: RpcId }
  | { result: unknown; error: string | null; id: RpcId };

/**
 * A reply as a client reads it, from any server. From a JSON-RPC 2.0 server
 * it has `jsonrpc: "2.0"`, the `id` of the request it answers, and one of
 * `result` (the method's return value) and `error` (an object). A 1.0 server
 * (Go's) sends `result`, `error` and `id`, with `"error": null` on success and
 * a string on failure; the Python lab's server sends only `{"result": ...}`
 * or `{"error": "some text"}`. {@linkcode resultOf} reads them all.
 */
export type RpcReply = { jsonrpc?: "2.0"; result?: unknown; error?: RpcErrorObject | string | null; id?: RpcId };

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
  /** The method threw, or its result cannot be sent (not JSON, or too long). */
  INTERNAL_ERROR: -32603,
  /** The server is at a connection limit and turned this one away. */
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

/** Shows a value in an error message, cut short so a huge input stays readable. Never throws. */
function preview(value: unknown): string {
  try {
    const text = JSON.stringify(value) ?? String(value);
    return text.length > 100 ? `${text.slice(0, 100)}...` : text; // cut short: input can be huge
  } catch {
    return `(a ${typeof value} that JSON cannot show)`; // a cycle, a BigInt, a toJSON that throws
  }
}

/**
 * The message of anything thrown: JavaScript lets code throw any value, and
 * some cannot even become text (an object with no prototype has no
 * `toString`; a getter may throw), so this never throws itself.
 */
function errorMessage(error: unknown): string {
  try {
    return error instanceof Error ? String(error.message) : typeof error === "string" ? error : preview(error);
  } catch {
    return `a ${typeof error} that cannot be shown`; // its getters throw: there is nothing more to say
  }
}

// ---------------------------------------------------------------------------
// 2. The procedures: a registry
//
// The server can only run what it was given: a table from method name to
// function. Every argument comes off the network, so a procedure checks its
// arguments before it trusts them.
// ---------------------------------------------------------------------------

/**
 * A method the server can call. Its arguments come straight off the network,
 * so they are `unknown` until the method has checked them. It may return a
 * value or a Promise of one.
 */
export type RpcFunction = (...params: unknown[]) => unknown;

/** A registry: method name to function. */
export type Functions = Record<string, RpcFunction>;

/** Checks that `params` is exactly two finite numbers, or throws Invalid params. */
function twoNumbers(method: string, params: unknown[]): asserts params is [number, number] {
  // Number.isFinite is false for anything but a number: no "2" or null gets through.
  if (params.length !== 2 || !Number.isFinite(params[0]) || !Number.isFinite(params[1])) {
    throw new RpcError(ERROR_CODES.INVALID_PARAMS, `${method} expects two finite numbers, got ${preview(params)}`);
  }
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
    twoNumbers("add", params);
    return params[0] + params[1];
  },
  multiply(...params: unknown[]): number {
    twoNumbers("multiply", params);
    return params[0] * params[1];
  },
};

// ---------------------------------------------------------------------------
// 3. Framing: where one message ends
//
// TCP carries a stream of bytes, not of messages: one read may hold half a
// request, or three. The reader keeps the bytes of an unfinished message and
// finds each message's end by counting brackets outside strings, so no
// newline is needed (the lab's client sends none); when one ends a message,
// a shortcut takes the whole line instead. Everything it holds is capped:
// one message, its nesting, and all connections' unfinished bytes.
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
const NEWLINE = 0x0a; // \n
const WHITESPACE = new Set([0x20, 0x09, 0x0a, 0x0d]); // space, tab, \n, \r
// No request needs deeper nesting; deeper input only costs stack, and on some
// runtimes JSON.stringify takes half a second to overflow on 50,000 levels.
const MAX_DEPTH = 1000;

/**
 * The bytes of unfinished messages that several readers hold together (all
 * the connections of one server), and the most they may.
 */
export type Budget = { held: number; readonly max: number };

/**
 * A whole message, as the reader gives it: its bytes (or its text, when it
 * came as one line), and its parsed value when the reader has parsed it
 * already (the newline shortcut parses to decide).
 */
export type FramedMessage = { text: string | Buffer; value?: unknown };

/** The reader's errors, already JSON-RPC errors: -32700 for bytes that cannot be JSON, -32600 for too much. */
const notJson = (message: string) => new RpcError(ERROR_CODES.PARSE_ERROR, `parse error: ${message}`);
const tooMuch = (message: string) => new RpcError(ERROR_CODES.INVALID_REQUEST, message);

/**
 * Splits a byte stream into JSON messages: a line that is one, or else by
 * counting brackets outside strings. Give it chunks as they arrive (`push`);
 * take whole messages out when ready for them (`next`), so a busy server can
 * leave messages waiting in their chunk. It keeps only the bytes of the
 * unfinished message, at most `maxBytes` of them, counted against `budget`.
 * A class, because every connection has one: its methods are shared, where
 * closures would be made again for each connection.
 *
 * @example Chunks in, messages out
 * ```ts
 * import { Buffer } from "node:buffer";
 * import { MessageReader } from "./rpc.ts";
 *
 * const reader = new MessageReader(1024);
 * reader.push(Buffer.from('{"a":1}{"b"'));
 * reader.push(Buffer.from(":2}"));
 * console.log(String(reader.next()?.text), String(reader.next()?.text)); // {"a":1} {"b":2}
 * ```
 */
export class MessageReader {
  private readonly maxBytes: number;
  private readonly budget: Budget;
  // Arrived and not yet read through; reading is in chunks[0]. With each
  // chunk, its text when all its bytes are ASCII, for wholeLine(): decoded
  // once, whole, it gives each line in it as a slice, with no decoding per message.
  private chunks: Array<{ bytes: Buffer; text?: string }> = [];
  private at = 0; // the next byte to look at in chunks[0]
  private start = 0; // where the current message begins in chunks[0]
  private parts: Buffer[] = []; // the current message's bytes from earlier chunks
  private held = 0; // their length
  // The closer each open bracket expects, innermost last; empty between
  // messages. A `]` where a `}` belongs can never be mended by later bytes,
  // so it is an error now, not a long wait.
  private closers: number[] = [];
  private inString = false;
  private escaped = false; // the previous byte was a backslash inside a string

  /**
   * Makes a reader for one stream, such as one connection.
   *
   * @param maxBytes The longest message accepted.
   * @param budget Shared with other readers: the most bytes of unfinished messages they may hold together.
   */
  constructor(maxBytes: number, budget: Budget = { held: 0, max: Infinity }) {
    this.maxBytes = maxBytes;
    this.budget = budget;
  }

  /** Adds a chunk that has just arrived. */
  push(bytes: Buffer): void {
    // Only a chunk with a newline can hold a whole line; an ASCII one is its own latin1 text (a byte, a character).
    const text = bytes.includes(NEWLINE) && isAscii(bytes) ? bytes.toString("latin1") : undefined;
    this.chunks.push({ bytes, text });
  }

  /**
   * The next whole message, or undefined until more bytes come.
   *
   * @throws {RpcError} When the stream can no longer be split into messages:
   * -32600 for too long, too deep or over the budget, -32700 for bytes that
   * cannot be JSON.
   */
  next(): FramedMessage | undefined {
    while (this.chunks.length > 0) {
      const { bytes, text } = this.chunks[0];
      const line = text !== undefined && this.closers.length === 0 ? this.wholeLine(text) : undefined;
      if (line !== undefined) return line;
      const end = this.scan(bytes);
      if (end >= 0) {
        if (this.held + end - this.start > this.maxBytes) throw this.tooLong();
        const message = Buffer.concat([...this.parts, bytes.subarray(this.start, end)]);
        this.dropParts();
        return { text: message };
      }
      if (this.closers.length > 0) this.keep(bytes.subarray(this.start)); // the chunk ends inside a message
      this.chunks.shift();
      this.at = 0;
      this.start = 0;
    }
    return undefined;
  }

  /**
   * The shortcut: most clients end each message with a newline. Between
   * messages, if the text up to the next newline parses as one object or
   * array, that line is the next message, and its brackets need no counting.
   * Otherwise (no newline yet, not JSON, two messages on a line) undefined,
   * and scan() decides. Only lines of up to 2 * MAX_DEPTH characters (no
   * shorter line can nest deeper than MAX_DEPTH) and up to maxBytes: scan()
   * gives a longer one the errors it deserves.
   */
  private wholeLine(text: string): FramedMessage | undefined {
    while (WHITESPACE.has(text.charCodeAt(this.at))) this.at++; // what lies between messages
    const newline = text.indexOf("\n", this.at);
    if (newline < 0 || newline - this.at > Math.min(2 * MAX_DEPTH, this.maxBytes)) return undefined;
    const line = text.slice(this.at, newline);
    try {
      const value: unknown = JSON.parse(line);
      if (typeof value !== "object" || value === null) return undefined;
      this.at = newline + 1;
      return { text: line, value };
    } catch {
      return undefined; // not one whole message: scan() will find where it ends, or what is wrong
    }
  }

  /**
   * Reads `chunk` on from `at`, one byte at a time: returns the index just
   * past the end of the message that ends in it, or -1 when the chunk ends first.
   */
  private scan(chunk: Buffer): number {
    const { closers } = this;
    for (; this.at < chunk.length; this.at++) {
      const byte = chunk[this.at];
      if (this.escaped) this.escaped = false; // the byte after a backslash in a string is taken as it is
      else if (this.inString) {
        if (byte === BACKSLASH) this.escaped = true;
        else if (byte === QUOTE) this.inString = false;
      } else if (byte === OPEN_BRACE || byte === OPEN_BRACKET) {
        if (closers.length === 0) this.start = this.at; // a message begins
        closers.push(byte === OPEN_BRACE ? CLOSE_BRACE : CLOSE_BRACKET);
        if (closers.length > MAX_DEPTH) throw tooMuch(`message nested deeper than ${MAX_DEPTH} levels`);
      } else if (closers.length === 0) {
        if (WHITESPACE.has(byte)) continue; // between messages
        throw notJson(`expected a JSON object or array, got ${preview(String.fromCharCode(byte))}`);
      } else if (byte === QUOTE) {
        this.inString = true;
      } else if (byte === CLOSE_BRACE || byte === CLOSE_BRACKET) {
        const expected = closers.pop() ?? byte; // never empty here: we are inside a message
        if (byte !== expected) {
          throw notJson(`expected ${String.fromCharCode(expected)}, got ${String.fromCharCode(byte)}`);
        }
        if (closers.length === 0) {
          this.at++; // past the closing bracket: where the next message may begin
          return this.at;
        }
      }
    }
    return -1;
  }

  /** True when part of a message has arrived but not its end. */
  hasPartial(): boolean {
    return this.closers.length > 0;
  }

  /** Drops everything held, and gives it back to the budget; for when the connection closes. */
  release(): void {
    this.dropParts();
    this.chunks = []; // a chunk may share memory with far more bytes than it shows
  }

  /** Keeps part of an unfinished message: a copy, so the runtime can free the chunk (subarray() would share it). */
  private keep(part: Buffer): void {
    if (this.held + part.length > this.maxBytes) throw this.tooLong();
    if (this.budget.held + part.length > this.budget.max) {
      throw tooMuch("the server holds too many unfinished messages; send yours later");
    }
    this.parts.push(Buffer.from(part));
    this.held += part.length;
    this.budget.held += part.length;
  }

  /** The error for a message longer than maxBytes. */
  private tooLong(): RpcError {
    return tooMuch(`message longer than the limit of ${this.maxBytes} bytes`);
  }

  /** Forgets the current message's earlier parts, and gives their bytes back to the budget. */
  private dropParts(): void {
    this.budget.held -= this.held;
    this.parts = [];
    this.held = 0;
  }
}

// `fatal: true` makes invalid UTF-8 an error instead of silent U+FFFD marks.
const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * The value of one framed message: parsed already (a line), or parsed now,
 * decoded first from its bytes. Throws SyntaxError or TypeError.
 */
function parseMessage({ text, value }: FramedMessage): unknown {
  return value !== undefined ? value : JSON.parse(typeof text === "string" ? text : utf8.decode(text));
}

// ---------------------------------------------------------------------------
// 4. The server stub: a message in, a reply out
//
// Dispatch: check that the message is a request, find the procedure by name
// (only the registry's own entries), call it with the arguments, and turn
// its result or its error into a reply in the request's version. No sockets
// here, so it can be tested alone. A procedure that returns a plain value is
// answered at once; one that returns a Promise is awaited, with a deadline.
// Whatever a procedure throws or returns becomes a reply: it cannot take
// the server down.
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
  /**
   * How long a method that returns a Promise may take: then the caller gets
   * -32603 and the server stops waiting (the method itself runs on).
   * @default {30000}
   */
  callTimeoutMs?: number;
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
function resultReply(version: Version, id: RpcId, result: unknown): ServerReply {
  return version === "2.0" ? { jsonrpc: "2.0", result, id } : { result, error: null, id };
}

/**
 * A reply that carries an error, in the request's version. 1.0 leaves the
 * error's shape open; the Python lab and Go's client expect a string, and Go's
 * client shuts the whole connection on anything else.
 */
function errorReply(version: Version, id: RpcId, error: RpcErrorObject): ServerReply {
  return version === "2.0" ? { jsonrpc: "2.0", error, id } : { result: null, error: error.message, id };
}

/** An error about a message whose requests could not be read: no id, no version, so 2.0. */
function messageError(code: number, message: string): ServerReply {
  return errorReply("2.0", null, errorObject(code, message));
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isRpcId(value: unknown): value is RpcId {
  return value === null || typeof value === "string" || typeof value === "number";
}

/**
 * What was thrown, as an error object: its own code when it carries one (an
 * RpcError, or a reply's error), otherwise -32603 with its message. Never
 * throws, even for a value whose getters do.
 */
function thrownError(error: unknown): RpcErrorObject {
  try {
    const { code, message, data } = error as RpcErrorObject; // each getter runs once, here
    if (Number.isInteger(code) && typeof message === "string") return errorObject(code, message, data);
  } catch {
    // null, undefined or a getter that throws: it carries no code we can read, so it is an internal error.
  }
  // The message only: a stack trace would show the caller our insides.
  return errorObject(ERROR_CODES.INTERNAL_ERROR, errorMessage(error));
}

// setTimeout's longest wait (24.8 days): a longer one, or Infinity, would fire at once, so times are capped at it.
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Rejects with -32603 if `promise` has not settled within `ms`; the method itself runs on, unwatched. */
function withDeadline(promise: Promise<unknown>, ms: number, method: string): Promise<unknown> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const message = `${method} did not finish within ${ms} ms`;
  const deadline = new Promise((_, reject) => {
    // An error object, not an Error: making an Error records a stack, which would cost more than the call.
    timer = setTimeout(() => reject(errorObject(ERROR_CODES.INTERNAL_ERROR, message)), Math.min(ms, MAX_TIMER_MS));
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

/** Why `request` is not a valid request of `version`, or undefined when it is one. */
function problemWith(request: Record<string, unknown>, version: Version): string | undefined {
  const { jsonrpc, method, params, id } = request;
  if (id !== undefined && !isRpcId(id)) return `id must be a string, number or null, got ${preview(id)}`;
  if (version === "2.0" && jsonrpc !== "2.0") return `jsonrpc must be "2.0", got ${preview(jsonrpc)}`;
  if (typeof method !== "string") return `method must be a string, got ${preview(method)}`;
  const paramsOk = params === undefined || Array.isArray(params) || isPlainObject(params);
  if (!paramsOk) return `params must be an array or an object, got ${preview(params)}`;
}

/** A request that passed its checks: what its reply must know (the version, the id, whether to answer at all). */
type CheckedRequest = { version: Version; id: RpcId; method: string; isNotification: boolean };

/** The reply to a request whose method returned `result`; none for a notification. */
function succeeded(request: CheckedRequest, result: unknown): ServerReply | undefined {
  if (request.isNotification) return undefined;
  if (typeof result === "number" && !Number.isFinite(result)) {
    // JSON.stringify would quietly send null for these.
    const message = `${request.method} returned ${result}, which JSON cannot carry`;
    return errorReply(request.version, request.id, errorObject(ERROR_CODES.INTERNAL_ERROR, message));
  }
  return resultReply(request.version, request.id, result === undefined ? null : result);
}

/** The reply to a request whose method threw `error`; none for a notification. */
function failed(request: CheckedRequest, error: unknown): ServerReply | undefined {
  return request.isNotification ? undefined : errorReply(request.version, request.id, thrownError(error));
}

/**
 * Answers one request object: a reply at once when its method returns a plain
 * value, a Promise of one when it returns a Promise, and undefined for a
 * notification.
 * `inBatch`: batches are a 2.0 feature, so every request in one must be 2.0.
 */
function handleRequest(request: unknown, options: HandleOptions, inBatch: boolean) {
  const { functions = FUNCTIONS, callTimeoutMs = 30_000 } = options;
  if (!isPlainObject(request)) {
    return messageError(ERROR_CODES.INVALID_REQUEST, `expected a request object, got ${preview(request)}`);
  }
  // Parsed JSON has no undefined values: undefined here means the member is absent.
  const version: Version = inBatch || request.jsonrpc !== undefined ? "2.0" : "1.0";
  const hasId = request.id !== undefined;
  const id = hasId && isRpcId(request.id) ? request.id : null;
  const problem = problemWith(request, version);
  if (problem !== undefined) return errorReply(version, id, errorObject(ERROR_CODES.INVALID_REQUEST, problem));
  const { method, params } = request as { method: string; params?: unknown[] | object }; // as problemWith checked
  // An array is spread as arguments, an object is passed as one, none means none.
  const args: unknown[] = params === undefined ? [] : Array.isArray(params) ? params : [params];
  // A notification gets no reply. In 2.0 it is a request without an id; in
  // 1.0 one whose id is null. The lab's requests have no id at all, and are answered.
  const isNotification = version === "2.0" ? !hasId : hasId && id === null;
  const checked: CheckedRequest = { version, id, method, isNotification };
  let result: unknown;
  try {
    // Object.hasOwn, not `method in functions`: "constructor" or "__proto__"
    // must not reach the prototype's functions.
    const fn = Object.hasOwn(functions, method) ? functions[method] : undefined;
    if (typeof fn !== "function") {
      return failed(checked, errorObject(ERROR_CODES.METHOD_NOT_FOUND, `method not found: ${preview(method)}`));
    }
    result = fn(...args);
    // Most methods return a plain value: answer it now. Only a Promise is waited for, and not for ever.
    if (!(result instanceof Promise)) return succeeded(checked, result);
  } catch (error) {
    return failed(checked, error); // whatever it threw, or whatever threw while looking at what it returned
  }
  const settled = withDeadline(result, callTimeoutMs, method);
  return settled.then((value) => succeeded(checked, value), (error) => failed(checked, error));
}

/**
 * Answers one parsed message: a request object or a batch (an array of them).
 * This is the whole protocol, with no sockets, so it can be tested alone.
 *
 * @param message A parsed JSON value, as it came off the wire.
 * @param options The registry, the batch limit and the deadline for async methods.
 * @returns The reply (an array for a batch), or undefined when nothing is to
 * be sent: a notification, or a batch of only notifications. A Promise of it
 * for a batch, or when a method returned a Promise; `await` works either way.
 * The Promise never rejects: whatever a method throws is a reply.
 *
 * @example
 * ```ts
 * import { handleMessage } from "./rpc.ts";
 *
 * const reply = await handleMessage({ jsonrpc: "2.0", method: "add", params: [1, 2], id: 7 });
 * console.log(reply); // { jsonrpc: "2.0", result: 3, id: 7 }
 * ```
 */
export function handleMessage(
  message: unknown,
  options: HandleOptions = {},
): ServerReply | ServerReply[] | undefined | Promise<ServerReply | ServerReply[] | undefined> {
  if (!Array.isArray(message)) return handleRequest(message, options, false);
  const { maxBatchLength = 1000 } = options;
  if (message.length === 0 || message.length > maxBatchLength) {
    const text = `a batch must hold 1 to ${maxBatchLength} requests, got ${message.length}`;
    return messageError(ERROR_CODES.INVALID_REQUEST, text);
  }
  // Every request in the batch runs at once; the reply waits for the slowest, and leaves out notifications.
  return Promise.all(message.map((request) => handleRequest(request, options, true))).then((replies) => {
    const sent = replies.filter((reply) => reply !== undefined);
    return sent.length > 0 ? sent : undefined;
  });
}

/**
 * Turns one reply into its JSON text. A reply JSON cannot carry (a BigInt, a
 * cycle, a `toJSON` that throws), or one longer than `maxBytes`, becomes
 * -32603 in the reply's own version, so the caller learns why.
 */
function encodeOne(reply: ServerReply, maxBytes: number): string {
  let problem: string;
  try {
    const text = JSON.stringify(reply);
    // A UTF-16 unit is at most 3 bytes in UTF-8: only a text longer than a third of the limit needs counting.
    const bytes = text.length <= maxBytes / 3 ? 0 : Buffer.byteLength(text);
    if (bytes <= maxBytes) return text;
    problem = `the reply would be ${bytes} bytes, over the server's limit of ${maxBytes}`;
  } catch (error) {
    problem = `the reply cannot be sent as JSON: ${errorMessage(error)}`;
  }
  const version = "jsonrpc" in reply ? "2.0" : "1.0";
  return JSON.stringify(errorReply(version, reply.id, errorObject(ERROR_CODES.INTERNAL_ERROR, problem)));
}

/** Turns a reply or a batch of replies into one line of JSON. */
function encodeReply(reply: ServerReply | ServerReply[], maxBytes: number): string {
  if (!Array.isArray(reply)) return encodeOne(reply, maxBytes) + "\n";
  return `[${reply.map((one) => encodeOne(one, maxBytes)).join(",")}]\n`;
}

// ---------------------------------------------------------------------------
// 5. Sending: one write for many replies
//
// Every socket write is a system call, and a client that sends 50 requests
// in one packet should not cost 50 of them. Replies are queued, and leave
// together once the code that made them has run.
// ---------------------------------------------------------------------------

/**
 * Joins everything written to `socket` while one callback runs (and the
 * promise callbacks it sets off) into one write. A client that sends 50
 * requests in one packet then gets its 50 replies in one packet too, and the
 * server makes one system call, not 50. (A class for the reason
 * MessageReader is one.)
 */
class Writer {
  private readonly socket: Socket;
  private queued = "";

  constructor(socket: Socket) {
    this.socket = socket;
  }

  /** Queues text, to be written once the current callback is done (or at once, past a buffer's worth). */
  write(text: string): void {
    // A microtask runs once the current callback, and the promise callbacks it set off, are done.
    if (this.queued === "") queueMicrotask(() => this.flush());
    this.queued += text;
    if (this.queued.length >= this.socket.writableHighWaterMark) this.flush(); // a buffer's worth: no use waiting
  }

  /** Writes what is queued now (before ending the socket, say). */
  flush(): void {
    if (this.queued === "" || !this.socket.writable) return;
    this.socket.write(this.queued); // past a buffer's worth unsent, it says so in writableNeedDrain, until "drain"
    this.queued = "";
  }
}

// ---------------------------------------------------------------------------
// 6. The server: one Connection per client, limits, closing
//
// One thread serves every connection: the event loop calls back when a
// connection opens, when bytes arrive, when a write has drained. Nothing
// blocks, so a procedure waiting on a timer or on I/O holds no one up; a
// procedure that computes for a long time does (move it to a worker thread).
// Each connection reads only as fast as it is answered: at its cap of calls
// in progress, or while its replies do not drain, its requests wait unread.
// Every client can misbehave, so everything it can make the server hold
// has a bound: bytes, calls, connections, and time without progress.
// ---------------------------------------------------------------------------

const DEFAULT_PORT = 5000;
const DEFAULT_HOST = "127.0.0.1"; // loopback: only this machine can connect
const MIB = 1024 * 1024;

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
   * Serve TLS instead of plain TCP: options for `node:tls`'s `createServer`,
   * such as `key` and `cert`; with `ca` and `requestCert: true`, only
   * clients with a certificate that `ca` signed get past the handshake. A
   * handshake not finished within `idleTimeoutMs` is closed (set
   * `handshakeTimeout` here to choose another time).
   * @default {undefined} (plain TCP)
   */
  tls?: TlsOptions;
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
   * The longest reply sent, in bytes. A result whose reply would be longer
   * is not sent: the caller gets -32603 saying so.
   * @default {16777216} (16 MiB, as the clients' maxReplyBytes)
   */
  maxReplyBytes?: number;
  /**
   * The most bytes of unfinished messages the server holds, all connections
   * together. A connection that would take it past this gets one -32600
   * reply and is closed; the others go on.
   * @default {16777216} (16 MiB: 16 connections each most of the way through a 1 MiB message)
   */
  maxUnfinishedBytes?: number;
  /**
   * The most calls and notifications one connection may have running at
   * once (a batch counts each request). At the cap the server stops reading
   * that connection until one finishes: a pause, never an error.
   * @default {250}
   */
  maxCallsPerConnection?: number;
  /**
   * The most connections open at once, TLS handshakes included; one more is
   * sent a -32000 reply and closed (during a TLS handshake, closed at once).
   * @default {1000}
   */
  maxConnections?: number;
  /**
   * The most connections open at once from one client address; one more is
   * sent a -32000 reply and closed. Behind a load balancer every connection
   * comes from the balancer's address, so limit there instead.
   * @default {Infinity} (no limit)
   */
  maxConnectionsPerAddress?: number;
  /**
   * A connection that makes no progress for this long is closed: no message
   * completed, no call running, no reply read by the client. It is checked
   * by one sweep over all connections, every `idleTimeoutMs`, so an idle
   * connection closes between one and two times this after its last progress.
   * @default {60000}
   */
  idleTimeoutMs?: number;
  /**
   * How long `close()` waits for calls in flight, and for requests still to
   * come on connections it had accepted, before it destroys what is left.
   * @default {5000}
   */
  closeGraceMs?: number;
}

/**
 * A running server, as {@linkcode startServer} resolves it: the `port` it
 * listens on (the one the system picked, for port 0), and `close()`, which
 * stops accepting connections and closes the idle ones (answered, and
 * holding nothing). Calls running, and requests still to come on a
 * connection already accepted, get up to `closeGraceMs` to be answered; then
 * the rest are destroyed. It resolves once every socket is closed.
 */
export type RpcServer = { port: number; close(): Promise<void> };

/** Calls a user's callback (log, trace) so that whatever it throws cannot stop the server. */
function callSafely<A extends unknown[]>(callback: ((...args: A) => void) | undefined, ...args: A): void {
  try {
    callback?.(...args);
  } catch {
    // Nowhere to report it: the log is what failed. Serving matters more than one lost line.
  }
}

/**
 * What all the connections of one server share: its settings, with the
 * defaults filled in, and its state. Its type, ServerState, is what this returns.
 */
function serverState(options: ServerOptions) {
  const { tls, log, trace, maxMessageBytes = MIB, maxReplyBytes = 16 * MIB, maxUnfinishedBytes = 16 * MIB } = options;
  const { maxCallsPerConnection = 250, maxConnections = 1000, maxConnectionsPerAddress = Infinity } = options;
  const { idleTimeoutMs = 60_000, closeGraceMs = 5000 } = options;
  return {
    limits: { maxMessageBytes, maxReplyBytes, maxCallsPerConnection, maxConnections, maxConnectionsPerAddress },
    idleTimeoutMs: Math.min(idleTimeoutMs, MAX_TIMER_MS),
    closeGraceMs: Math.min(closeGraceMs, MAX_TIMER_MS),
    tls,
    /** The registry, the batch limit and the deadline, for handleMessage (which fills in their defaults). */
    handling: options,
    /** The bytes of unfinished messages that all connections hold, and the most they may. */
    budget: { held: 0, max: maxUnfinishedBytes },
    /** Every connection being served: close() ends them, the sweep looks at each. */
    connections: new Set<Connection>(),
    /** Every TCP connection open: served, in its TLS handshake, or being turned away. */
    sockets: new Set<Socket>(),
    /** How many of those each client address has. */
    perAddress: new Map<string, number>(),
    /** Whether the log or the trace will show clients' addresses. */
    wantsAddress: log !== undefined || trace !== undefined,
    /** Set by close(): from then on, a connection ends as soon as it owes nothing. */
    closing: false,
    /** The user's log and trace, wrapped so that whatever they throw cannot stop the server. */
    log: (line: string) => callSafely(log, line),
    trace, // called through callSafely too, and only when set: making its text costs time
  };
}

type ServerState = ReturnType<typeof serverState>;

/**
 * One client's connection, from its first request to its close: it reads
 * the requests, has them answered, writes the replies, and decides when to
 * end. Everything the server keeps for a client is in these fields.
 */
class Connection {
  private readonly socket: Socket;
  private readonly server: ServerState;
  private readonly address: string; // "127.0.0.1:54231", for the log and the trace ("" when neither wants it)
  private readonly reader: MessageReader; // the bytes of a message still arriving
  private readonly writer: Writer; // replies waiting to leave together
  private running = 0; // calls and notifications started and not yet finished: replies may still be owed
  private heardFrom = false; // a whole message has come: close() waits only for a first one
  private refused = false; // we stopped reading: after bad input the stream cannot be trusted
  private progressed = true; // since the last sweep: a message completed, a call finished, or a reply was read

  constructor(socket: Socket, address: string, server: ServerState) {
    this.socket = socket;
    this.server = server;
    this.address = address;
    this.reader = new MessageReader(server.limits.maxMessageBytes, server.budget);
    this.writer = new Writer(socket);
    server.log(`Client connected: ${address}`);
    socket.on("data", (chunk: Buffer) => {
      if (this.refused) return; // read and thrown away, never stored
      this.reader.push(chunk);
      this.readOn();
    });
    socket.on("drain", () => {
      this.progressed = true; // the client has read what was waiting to leave
      this.readOn();
    });
    socket.on("end", () => this.readOn()); // the client has ended its side (socket.readableEnded): no more will come
    socket.on("close", () => {
      server.connections.delete(this);
      this.reader.release();
    });
  }

  /**
   * Handles the whole messages that have arrived, while the limits allow;
   * then reads on, or pauses. Pausing is the backpressure: while calls are
   * at their cap, or replies are not draining, the requests wait unread.
   */
  private readOn(): void {
    const { socket } = this;
    const { maxCallsPerConnection } = this.server.limits;
    while (!this.refused && this.running < maxCallsPerConnection && !socket.writableNeedDrain) {
      let message: FramedMessage | undefined;
      try {
        message = this.reader.next();
      } catch (error) {
        this.refuse(error as RpcError); // bytes that cannot be split into messages: the reader throws nothing else
        break;
      }
      if (message === undefined) break;
      this.handle(message);
    }
    if (this.running >= maxCallsPerConnection || socket.writableNeedDrain) socket.pause();
    else socket.resume();
    this.endIfDone();
  }

  /** Parses and answers one message; counts its calls while they run. */
  private handle(framed: FramedMessage): void {
    this.heardFrom = true;
    this.progressed = true;
    const { trace } = this.server;
    if (trace) callSafely(trace, "-->", this.address, framed.text.toString().trim()); // invalid UTF-8 shows as U+FFFD
    let message: unknown;
    try {
      message = parseMessage(framed);
    } catch (error) {
      return this.send(messageError(ERROR_CODES.PARSE_ERROR, `parse error: ${errorMessage(error)}`));
    }
    const reply = handleMessage(message, this.server.handling);
    if (!(reply instanceof Promise)) return this.send(reply);
    const calls = Array.isArray(message) ? message.length : 1;
    this.running += calls;
    // handleMessage's Promise never rejects; the second path is there in case that ever changes.
    const internal = (error: unknown) => messageError(ERROR_CODES.INTERNAL_ERROR, errorMessage(error));
    reply.then((done) => this.finish(calls, done), (error) => this.finish(calls, internal(error)));
  }

  /** Calls have finished: send their reply; read on, since a place is free. */
  private finish(calls: number, reply: ServerReply | ServerReply[] | undefined): void {
    this.running -= calls;
    this.progressed = true;
    this.send(reply);
    this.readOn();
  }

  private send(reply: ServerReply | ServerReply[] | undefined): void {
    if (reply === undefined || !this.socket.writable) return; // nothing to say, or the client has gone
    const text = encodeReply(reply, this.server.limits.maxReplyBytes);
    if (this.server.trace) callSafely(this.server.trace, "<--", this.address, text.slice(0, -1));
    this.writer.write(text);
  }

  /** Answers once, then stops reading: after this input the stream cannot be trusted. */
  private refuse({ code, message }: RpcError): void {
    this.server.log(`Client ${this.address}: ${message}; closing`);
    this.send(messageError(code, message));
    this.refused = true;
    this.reader.release();
  }

  /**
   * More requests may come: the client has not ended its side, we have not
   * refused it, and either the server is not closing, or this connection has
   * not sent its first message yet, or is in the middle of one.
   */
  private expectsMore(): boolean {
    if (this.socket.readableEnded || this.refused) return false;
    return !this.server.closing || !this.heardFrom || this.reader.hasPartial();
  }

  /** Ends our side once every reply is out and no request is to come. Called after every change. */
  endIfDone(): void {
    // Replies are still owed while a call runs, or while those written wait for the client to read them.
    if (this.socket.writableEnded || this.running > 0 || this.socket.writableNeedDrain) return;
    if (this.socket.readableEnded && !this.refused && this.reader.hasPartial()) {
      this.refuse(notJson("the connection ended inside a message"));
    }
    if (this.expectsMore()) return;
    this.writer.flush();
    // While the server closes, do not wait for the client to hang up too.
    this.socket.end(() => {
      if (this.server.closing) this.socket.destroy();
    });
  }

  /**
   * The server's sweep calls this every idleTimeoutMs. A connection that made
   * no progress since the last sweep, and has no call running, is closed.
   * Bytes that complete nothing (whitespace, a message that never ends) are
   * not progress, and neither are replies the client does not read.
   */
  sweep(): void {
    if (!this.progressed && this.running === 0) {
      this.server.log(`Client ${this.address} made no progress for ${this.server.idleTimeoutMs} ms; closing`);
      this.socket.destroy();
    }
    this.progressed = false;
  }
}

/** Every TCP connection starts here, TLS or not: it is counted, and turned away when over a limit. */
function accept(socket: Socket, state: ServerState): void {
  const { sockets, perAddress, limits: { maxConnections, maxConnectionsPerAddress } } = state;
  // Addresses cost system calls (getpeername): asked for only when someone will read them.
  const ip = maxConnectionsPerAddress < Infinity ? String(socket.remoteAddress) : "";
  const address = state.wantsAddress ? `${socket.remoteAddress}:${socket.remotePort}` : "";
  const fromIp = perAddress.get(ip) ?? 0;
  socket.on("error", (error) => state.log(`Client ${address} error: ${error.message}`)); // a reset: its problem only
  sockets.add(socket);
  perAddress.set(ip, fromIp + 1);
  socket.on("close", () => {
    sockets.delete(socket);
    if (perAddress.get(ip) === 1) perAddress.delete(ip);
    else perAddress.set(ip, (perAddress.get(ip) ?? 1) - 1);
  });
  let busy = sockets.size > maxConnections ? `server busy: it already has ${maxConnections} connections` : "";
  if (fromIp >= maxConnectionsPerAddress) busy = `server busy: ${ip} already has ${fromIp} connections`;
  // Served now; a TLS connection once its handshake is done (see startServer).
  if (busy === "" && state.tls === undefined) state.connections.add(new Connection(socket, address, state));
  if (busy === "") return;
  state.log(`Client refused: ${address} (${busy})`);
  if (state.tls !== undefined) socket.destroy(); // a TLS client cannot read a reply before its handshake
  else socket.end(encodeReply(messageError(ERROR_CODES.SERVER_BUSY, busy), MIB), () => socket.destroy()); // told why
}

/**
 * Starts a JSON-RPC server on TCP, or on TLS with `tls`.
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
export async function startServer(options: ServerOptions = {}): Promise<RpcServer> {
  const { port = DEFAULT_PORT, host = DEFAULT_HOST } = options;
  const state = serverState(options);
  const { tls, log, idleTimeoutMs } = state;
  // allowHalfOpen: a client that sends its request and then shuts its write
  // side (`nc -N`) still gets its reply, because we end our side ourselves.
  // Not for TLS, where a client that gives up must not leave us a half-open socket.
  const handshakeMs = tls?.handshakeTimeout ?? idleTimeoutMs; // node:tls's own timer for unfinished handshakes
  const server = tls ? tlsServer({ ...tls, handshakeTimeout: handshakeMs }) : createServer({ allowHalfOpen: true });
  server.on("connection", (socket: Socket) => accept(socket, state));
  server.on("secureConnection", (socket: Socket) => {
    const address = state.wantsAddress ? `${socket.remoteAddress}:${socket.remotePort}` : "";
    socket.on("error", (error) => log(`Client ${address} error: ${error.message}`));
    state.connections.add(new Connection(socket, address, state));
  });
  server.on("tlsClientError", (error: Error, socket: Socket) => {
    const timedOut = error.message === "TLS handshake timeout"; // node:tls's words on every runtime (Deno sets no code)
    const what = timedOut ? `not finished in ${handshakeMs / 1000} s` : `failed (${error.message})`;
    log(`Client ${socket.remoteAddress}:${socket.remotePort}: TLS handshake ${what}; closed`);
    socket.destroy(); // node:tls only reports a failed handshake: the socket stays open unless destroyed
  });

  server.listen(port, host);
  try {
    await once(server, "listening"); // rejects if the server emits "error" first
  } catch (error) {
    const inUse = (error as { code?: string }).code === "EADDRINUSE";
    const reason = inUse ? "the port is already in use" : errorMessage(error);
    throw new Error(`cannot listen on ${host}:${port}: ${reason}`, { cause: error });
  }
  server.on("error", (error) => log(`Server error: ${error.message}`)); // say, too many open files: not fatal
  // One timer for all connections: each sweep closes those that made no progress since the one before.
  const sweeper = setInterval(() => state.connections.forEach((connection) => connection.sweep()), idleTimeoutMs);
  let closed: Promise<void> | undefined;

  function close(): Promise<void> {
    closed ??= new Promise((resolve) => {
      state.closing = true;
      clearInterval(sweeper);
      // When the grace runs out, whatever is still open goes (a TLS connection with the TCP one beneath it).
      const timer = setTimeout(() => state.sockets.forEach((socket) => socket.destroy()), state.closeGraceMs);
      // server.close() stops accepting at once; its callback runs when the last connection has closed.
      server.close(() => {
        clearTimeout(timer);
        resolve();
      });
      state.connections.forEach((connection) => connection.endIfDone());
    });
    return closed;
  }

  return { port: (server.address() as AddressInfo).port, close }; // a TCP server's address is an object
}

// ---------------------------------------------------------------------------
// 7. Binding: reaching a server, reading its replies
//
// Binding is how a client finds its server: here, by address and port given
// by the caller (a name service or a load balancer would hand them out in a
// larger system). The client reads replies with the same framing as the
// server, and trusts them no more: a reply too long fails the connection.
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
   * How long to wait: for {@linkcode connect}, for the connection (and the
   * TLS handshake), then for each call's reply; for {@linkcode rpcCall}, for
   * the connection and the reply together.
   * @default {5000}
   */
  timeoutMs?: number;
  /**
   * Connect with TLS: options for `node:tls`'s `connect`, such as `ca` (the
   * authority that signed the server's certificate), and `key` and `cert`
   * for a server that asks for a client certificate.
   * @default {undefined} (plain TCP)
   */
  tls?: ConnectionOptions;
  /**
   * The longest reply accepted, in bytes. A longer one fails the call (for
   * {@linkcode connect}, every pending call) and closes the connection, so a
   * broken or hostile server cannot fill the client's memory.
   * @default {16777216} (16 MiB: a reply may be much longer than its request)
   */
  maxReplyBytes?: number;
}

/** Options for {@linkcode rpcCall}: where, how long, and a way to give up. */
export interface CallOptions extends ConnectOptions {
  /**
   * Aborting it rejects the call at once with the signal's reason, as
   * `fetch` does. The server may still run the procedure.
   */
  signal?: AbortSignal;
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
  if (reply.error === undefined || reply.error === null) return reply.result;
  const { code, message, data } = thrownError(reply.error);
  throw new RpcError(code, message, data);
}

// ---------------------------------------------------------------------------
// 8. One call, one connection: the lab's client
//
// Connect, send one request, read the reply, close: a client (section 9)
// used for one call. Simple, and the reply needs no id (the Python lab's has
// none); but every call pays for a new connection.
// ---------------------------------------------------------------------------

/**
 * Calls one method on a server, over a connection of its own.
 *
 * @param method The method's name, such as `"add"`.
 * @param params Its arguments: an array, or one object; omitted when undefined.
 * @param options Where the server is, how long to wait, and a signal to give up.
 * @returns The reply, parsed. A JSON-RPC error (say, method not found) is a
 * reply with `error`, not a rejection: see {@linkcode resultOf}.
 * @throws {Error} When the connection is refused or not made within
 * `timeoutMs`, when no reply comes within `timeoutMs` more, when the server
 * closes before replying, or the reply is not JSON-RPC; the message names the
 * method (or the connecting), the address and the cause. When the signal
 * aborts: its reason. A RangeError for a `timeoutMs` or `maxReplyBytes` that
 * is not a whole number of at least 1.
 *
 * @example
 * ```ts
 * import { rpcCall } from "./rpc.ts";
 *
 * const reply = await rpcCall("multiply", [5, 6]);
 * console.log(reply.result); // 30
 * ```
 */
export async function rpcCall(method: string, params?: RpcParams, options: CallOptions = {}): Promise<RpcReply> {
  options.signal?.throwIfAborted(); // before any connection is made
  const client = await connect(options);
  try {
    return await client.call(method, params, options);
  } finally {
    client.close(); // not awaited: the answer is in, and close() never rejects
  }
}

// ---------------------------------------------------------------------------
// 9. The client stub: one connection, many calls
//
// Many calls share one connection and are in flight at once; replies come in
// the order calls finish, so each call gets a new id and a Map from id to
// its waiting promise gives each reply to its call. The stub on top makes a
// remote call read like a local one; what it cannot hide is the network:
// the call takes longer, and it can fail in ways a local call cannot (a
// timeout says nothing about whether the procedure ran).
// ---------------------------------------------------------------------------

/**
 * A client stub's type: each method of `T` takes the same parameters and
 * resolves to the same result, because it now runs on the server.
 */
export type Stub<T> = {
  [K in keyof T]: T[K] extends (...args: infer A) => infer R ? (...args: A) => Promise<Awaited<R>> : never;
};

// Names a stub must not treat as methods: `await stub` reads `then`, and
// JSON.stringify reads `toJSON`; a remote call for either would be a surprise.
const NOT_METHODS = new Set(["then", "toJSON"]);

/** A call that has been sent and not yet settled. */
interface PendingCall {
  method: string;
  /** When it times out, by Date.now(). */
  deadline: number;
  resolve(reply: RpcReply): void;
  reject(error: unknown): void;
  /** Takes the call's listener off its AbortSignal, if it has one. */
  unwatch?(): void;
}

/**
 * A client on one connection, as {@linkcode connect} resolves it: many calls
 * in flight at once, each matched to its reply by id.
 */
export class RpcClient {
  private readonly socket: Socket;
  private readonly reader: MessageReader; // the bytes of a reply still arriving
  private readonly writer: Writer; // requests made in one callback leave in one write
  private readonly where: string; // "127.0.0.1:5000", for error messages
  private readonly timeoutMs: number; // how long each call waits for its reply
  private readonly calls = new Map<number, PendingCall>(); // id -> the call waiting for that reply; oldest first
  private nextId = 1;
  private closedBecause: Error | undefined; // set once the connection is closing or gone: later calls fail at once
  private timer: ReturnType<typeof setTimeout> | undefined; // one for all the calls: see expire()

  /**
   * Opens the connection. Use {@linkcode connect}, which passes its
   * Promise's `resolve` and `reject`: the first is called once the connection
   * is open (for TLS, once the handshake is done), the second when it fails
   * or takes longer than `timeoutMs`. Calls made before then wait to be sent.
   */
  constructor(options: ConnectOptions, resolve: (client: RpcClient) => void, reject: (error: Error) => void) {
    const { port = DEFAULT_PORT, host = DEFAULT_HOST, tls, timeoutMs = 5000, maxReplyBytes = 16 * MIB } = options;
    this.where = `${host}:${port}`;
    this.timeoutMs = Math.min(timeoutMs, MAX_TIMER_MS);
    this.reader = new MessageReader(maxReplyBytes);
    this.socket = tls === undefined ? createConnection({ port, host }) : tlsConnect({ port, host, ...tls });
    this.writer = new Writer(this.socket);
    this.socket.on("data", (chunk: Buffer) => this.read(chunk));
    this.socket.on("end", () => this.drop(new Error("the server closed the connection before replying")));
    this.socket.on("error", (error) => this.drop(error));
    // Connecting gets timeoutMs too: a server that accepts but never finishes a TLS handshake must not hold us.
    const timer = setTimeout(() => this.drop(new Error(`not connected within ${timeoutMs} ms`)), this.timeoutMs);
    this.socket.once(tls === undefined ? "connect" : "secureConnect", () => {
      clearTimeout(timer);
      resolve(this);
    });
    this.socket.once("close", () => {
      clearTimeout(timer);
      reject(callError("connect", this.where, this.closedBecause ?? new Error("closed"))); // no effect once resolved
    });
  }

  /** How many calls have been sent and not yet answered, timed out, aborted or dropped. */
  get pending(): number {
    return this.calls.size;
  }

  /**
   * Calls a method and resolves to its reply, exactly as {@linkcode rpcCall}
   * does; many calls may be in flight at once.
   *
   * @param method The method's name.
   * @param params Its arguments: an array, or one object.
   * @param options `signal`: aborting it rejects the call at once with the signal's reason.
   * @returns The reply; an error reply resolves too (see {@linkcode resultOf}).
   * @throws {Error} When no reply comes within `timeoutMs`, or the connection is closed or drops.
   */
  call(method: string, params?: RpcParams, { signal }: Pick<CallOptions, "signal"> = {}): Promise<RpcReply> {
    return new Promise((resolve, reject) => {
      // Thrown here, either rejects the promise before anything is sent.
      signal?.throwIfAborted();
      if (this.closedBecause !== undefined) throw callError(`call ${method}`, this.where, this.closedBecause);
      const id = this.nextId++;
      const call: PendingCall = { method, resolve, reject, deadline: Date.now() + this.timeoutMs };
      if (signal !== undefined) {
        const onAbort = () => this.settle(id, signal.reason);
        signal.addEventListener("abort", onAbort);
        call.unwatch = () => signal.removeEventListener("abort", onAbort);
      }
      this.calls.set(id, call);
      this.timer ??= setTimeout(() => this.expire(), this.timeoutMs);
      this.writer.write(JSON.stringify({ jsonrpc: "2.0", method, params, id }) + "\n"); // sent once connected
    });
  }

  /**
   * Sends a notification: the server runs it and sends nothing back.
   *
   * @throws {Error} When the connection is closed or gone.
   */
  notify(method: string, params?: RpcParams): void {
    if (this.closedBecause !== undefined) throw callError(`notify ${method}`, this.where, this.closedBecause);
    this.writer.write(JSON.stringify({ jsonrpc: "2.0", method, params }) + "\n");
  }

  /**
   * A client stub: an object whose methods call the server's, so that
   * `await calc.add(1, 2)` resolves to `3`, and an error reply rejects with
   * an {@linkcode RpcError}. `T` names the methods and their types.
   */
  stub<T>(): Stub<T> {
    const get = (_: object, name: string | symbol) =>
      typeof name === "symbol" || NOT_METHODS.has(name)
        ? undefined
        : (...params: unknown[]) => this.call(name, params).then(resultOf);
    return new Proxy({}, { get }) as Stub<T>;
  }

  /** Ends the connection once the calls pending are answered (or time out, or are aborted). */
  close(): Promise<void> {
    if (this.socket.destroyed) return Promise.resolve();
    this.closedBecause ??= new Error("the connection was closed by close()");
    // Pending calls still get their replies (or time out); nothing else is worth waiting for,
    // once our last bytes are out: settle() destroys the socket when the last call settles.
    this.writer.flush();
    this.socket.end(() => {
      if (this.calls.size === 0) this.socket.destroy();
    });
    return new Promise((resolve) => this.socket.once("close", () => resolve()));
  }

  /**
   * Reads replies as they arrive (with the server's framing: no newline
   * needed) and settles the call each one answers. A reply that is not
   * JSON-RPC, or is longer than `maxReplyBytes`, fails the connection.
   */
  private read(chunk: Buffer): void {
    this.reader.push(chunk);
    try {
      for (let framed = this.reader.next(); framed !== undefined; framed = this.reader.next()) {
        const reply = parseMessage(framed) as RpcReply;
        const isReply = isPlainObject(reply) && ("result" in reply || "error" in reply); // the least a reply has
        if (!isReply) throw new TypeError(`not JSON-RPC: ${preview(reply)}`);
        // Matched by id. One with no id (the Python lab's server sends none), or id null (the server could not
        // read the request: too long, or the server is busy) answers the oldest call; one whose id matches no call
        // (it timed out) has no one to go to.
        const id = reply.id ?? this.calls.keys().next().value;
        if (typeof id === "number") this.settle(id, undefined, reply);
      }
    } catch (error) {
      this.drop(new Error(`the reply cannot be read (${errorMessage(error)})`));
    }
  }

  /**
   * Settles a call, whichever came first (its reply, its timeout, its
   * signal, the connection dropping), and leaves nothing of it behind: no
   * entry, no listener, and no timer once no call is pending.
   */
  private settle(id: number, error: unknown, reply?: RpcReply): void {
    const call = this.calls.get(id);
    if (call === undefined) return;
    this.calls.delete(id);
    call.unwatch?.();
    if (this.calls.size === 0) {
      clearTimeout(this.timer);
      this.timer = undefined;
      if (this.closedBecause !== undefined) this.socket.destroy(); // close() waits for no one else
    }
    if (reply === undefined) call.reject(error);
    else call.resolve(reply);
  }

  /**
   * Times out the calls whose deadline has passed. Every call waits the same
   * timeoutMs, so the oldest pending call (the first in the Map, which keeps
   * the order calls were made in) is always the next to expire: one timer,
   * set for it, serves all of them.
   */
  private expire(): void {
    this.timer = undefined;
    for (const [id, call] of this.calls) {
      if (call.deadline > Date.now()) break;
      this.settle(id, callError(`call ${call.method}`, this.where, new Error(`no reply within ${this.timeoutMs} ms`)));
    }
    const [oldest] = this.calls.values();
    if (oldest !== undefined) this.timer = setTimeout(() => this.expire(), oldest.deadline - Date.now());
  }

  /** Rejects every call still waiting: after this, nothing is left pending. */
  private drop(cause: Error): void {
    this.closedBecause ??= cause;
    this.socket.destroy();
    for (const [id, call] of this.calls) this.settle(id, callError(`call ${call.method}`, this.where, cause));
  }
}

/**
 * Opens one connection for many calls. Each call gets a new id, and a `Map`
 * from id to the call's promise matches each reply to its call, whatever
 * order the replies come in.
 *
 * @param options Where the server is, and how long to wait (`timeoutMs`:
 * for the connection, then for each call).
 * @returns The client, once connected.
 * @throws {Error} When the connection cannot be made in `timeoutMs`. Calls
 * reject when they time out, or at once, all of them, when the connection drops.
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
  return new Promise((resolve, reject) => {
    new RpcClient(options, resolve, reject); // it settles the promise itself, once connected or failed
  });
}
