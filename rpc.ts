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
 * A remote procedure call in five steps, as Birrell and Nelson drew it in
 * 1984: the caller's stub marshals the call into a message, the transport
 * carries it, the server's stub unmarshals it and calls the procedure, and
 * the result travels back the same way. The sections below follow that path;
 * read them in order (each begins with the idea it implements):
 *
 * 1. Marshalling: what crosses the wire. JsonValue, RpcResponse, ERROR_CODES, RpcError
 * 2. The procedures: a registry. FUNCTIONS
 * 3. Framing: where one message ends. MessageReader
 * 4. The server stub: a message in, a reply out. handleMessage
 * 5. Sending: one write for many replies. Writer
 * 6. The server: connections, limits, closing. startServer
 * 7. Binding: reaching a server, reading its replies. ConnectOptions, resultOf
 * 8. One call, one connection: the lab's client. rpcCall
 * 9. The client stub: one connection, many calls. connect, stub
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

/** The message of anything thrown: JavaScript lets code throw any value, Error or not. */
function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Shows a value in an error message, cut short so a huge input stays readable. */
function describe(value: unknown): string {
  let text: string;
  try {
    text = JSON.stringify(value) ?? String(value);
  } catch (error) {
    // A cycle, a BigInt, or nesting deeper than the stack: say so, never throw.
    text = `(cannot show this ${typeof value}: ${errorMessage(error)})`;
  }
  return text.length > 100 ? `${text.slice(0, 100)}...` : text; // cut short: input can be huge
}

/** Checks that `params` is exactly two finite numbers, or throws Invalid params. */
function twoNumbers(method: string, params: unknown[]): asserts params is [number, number] {
  // Number.isFinite is false for anything but a number: no "2" or null gets through.
  if (params.length !== 2 || !Number.isFinite(params[0]) || !Number.isFinite(params[1])) {
    throw new RpcError(ERROR_CODES.INVALID_PARAMS, `${method} expects two finite numbers, got ${describe(params)}`);
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
 * The bytes of unfinished messages that all the connections of one server
 * hold together, and the most they may: one budget, shared by their readers.
 */
type Budget = { held: number; readonly max: number };

/** The reader's errors, already JSON-RPC errors: -32700 for bytes that cannot be JSON, -32600 for too much. */
const notJson = (message: string) => new RpcError(ERROR_CODES.PARSE_ERROR, `parse error: ${message}`);
const tooMuch = (message: string) => new RpcError(ERROR_CODES.INVALID_REQUEST, message);

/** A whole message, as the reader gives it: a line and its parsed value (the shortcut), or the bytes scan() found. */
type Framed = { text: string | Buffer; value?: unknown };

/**
 * Splits a byte stream into JSON messages: a line that is one, or else by
 * counting brackets outside strings. Give it chunks as they arrive (`push`);
 * take whole messages out when ready for them (`next`), so a busy server can
 * leave messages waiting in their chunk. It keeps only the bytes of the unfinished message, at most
 * `maxBytes` of them, and counts them against `budget`. A class, because
 * every connection has one: its methods are shared, where closures would be
 * made again for each connection.
 */
class MessageReader {
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
   * The next whole message, or undefined until more bytes come. Throws an
   * RpcError when the stream can no longer be split into messages: -32600
   * for too long, too deep or over the budget, -32700 for bytes that cannot
   * be JSON.
   */
  next(): Framed | undefined {
    while (this.chunks.length > 0) {
      const { bytes, text } = this.chunks[0];
      const line = text !== undefined && this.closers.length === 0 ? this.wholeLine(text) : undefined;
      if (line !== undefined) return line;
      const end = this.scan(bytes);
      if (end >= 0) {
        this.checkLength(this.held + end - this.start);
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
  private wholeLine(text: string): Framed | undefined {
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
      } else if (closers.length === 0) {
        if (WHITESPACE.has(byte)) continue;
        if (byte !== OPEN_BRACE && byte !== OPEN_BRACKET) {
          throw notJson(`expected a JSON object or array, got ${describe(String.fromCharCode(byte))}`);
        }
        this.start = this.at;
        closers.push(byte === OPEN_BRACE ? CLOSE_BRACE : CLOSE_BRACKET);
      } else if (byte === QUOTE) {
        this.inString = true;
      } else if (byte === OPEN_BRACE || byte === OPEN_BRACKET) {
        closers.push(byte === OPEN_BRACE ? CLOSE_BRACE : CLOSE_BRACKET);
        if (closers.length > MAX_DEPTH) throw tooMuch(`message nested deeper than ${MAX_DEPTH} levels`);
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
    this.checkLength(this.held + part.length);
    if (this.budget.held + part.length > this.budget.max) {
      throw tooMuch("the server holds too many unfinished messages; send yours later");
    }
    this.parts.push(Buffer.from(part));
    this.held += part.length;
    this.budget.held += part.length;
  }

  private checkLength(length: number): void {
    if (length > this.maxBytes) throw tooMuch(`message longer than the limit of ${this.maxBytes} bytes`);
  }

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
function parseMessage({ text, value }: Framed): unknown {
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

/** What {@linkcode handleMessage} gives: a reply, a batch of replies, or nothing to send. */
export type Reply = RpcResponse | RpcResponse[] | undefined;

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
  return isPlainObject(error) && Number.isInteger(error.code) && typeof error.message === "string";
}

/** Rejects with -32603 if `promise` has not settled within `ms`; the method itself runs on, unwatched. */
function withDeadline(promise: Promise<unknown>, ms: number, method: string): Promise<unknown> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const message = `${method} did not finish within ${ms} ms`;
  const deadline = new Promise((_, reject) => {
    // An error object, not an Error: making an Error records a stack, which would cost more than the call.
    timer = setTimeout(() => reject(errorObject(ERROR_CODES.INTERNAL_ERROR, message)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

/** Why `request` is not a valid request of `version`, or undefined when it is one. */
function problemWith(request: Record<string, unknown>, version: Version): string | undefined {
  const { jsonrpc, method, params, id } = request;
  if (id !== undefined && !isRpcId(id)) return `id must be a string, number or null, got ${describe(id)}`;
  if (version === "2.0" && jsonrpc !== "2.0") return `jsonrpc must be "2.0", got ${describe(jsonrpc)}`;
  if (typeof method !== "string") return `method must be a string, got ${describe(method)}`;
  const paramsOk = params === undefined || Array.isArray(params) || isPlainObject(params);
  if (!paramsOk) return `params must be an array or an object, got ${describe(params)}`;
}

/** What a reply must know of its request: the version to answer in, the id, and whether to answer at all. */
type Call = { version: Version; id: RpcId; method: string; isNotification: boolean };

/** What one request gets: a reply, or nothing (a notification). */
type Answer = RpcResponse | undefined;

/** The reply to a call whose method returned `result`; none for a notification. */
function succeeded(call: Call, result: unknown): Answer {
  if (call.isNotification) return undefined;
  if (typeof result === "number" && !Number.isFinite(result)) {
    // JSON.stringify would quietly send null for these.
    const message = `${call.method} returned ${result}, which JSON cannot carry`;
    return errorResponse(call.version, call.id, errorObject(ERROR_CODES.INTERNAL_ERROR, message));
  }
  return resultResponse(call.version, call.id, result === undefined ? null : result);
}

/** The reply to a call whose method threw `error`; none for a notification. */
function failed(call: Call, error: unknown): Answer {
  if (call.isNotification) return undefined;
  if (hasRpcCode(error)) {
    return errorResponse(call.version, call.id, errorObject(error.code, error.message, error.data));
  }
  // The message only: a stack trace would show the caller our insides.
  return errorResponse(call.version, call.id, errorObject(ERROR_CODES.INTERNAL_ERROR, errorMessage(error)));
}

/**
 * Answers one request object: at once when its method returns a plain value,
 * as a Promise when it returns one. Undefined for a notification.
 * `inBatch`: batches are a 2.0 feature, so every request in one must be 2.0.
 */
function handleRequest(request: unknown, options: HandleOptions, inBatch: boolean): Answer | Promise<Answer> {
  const { functions = FUNCTIONS, callTimeoutMs = 30_000 } = options;
  if (!isPlainObject(request)) {
    return messageError(ERROR_CODES.INVALID_REQUEST, `expected a request object, got ${describe(request)}`);
  }
  // Parsed JSON has no undefined values: undefined here means the member is absent.
  const version: Version = inBatch || request.jsonrpc !== undefined ? "2.0" : "1.0";
  const hasId = request.id !== undefined;
  const id = hasId && isRpcId(request.id) ? request.id : null;
  const problem = problemWith(request, version);
  if (problem !== undefined) return errorResponse(version, id, errorObject(ERROR_CODES.INVALID_REQUEST, problem));
  const { method, params } = request as { method: string; params?: unknown[] | object }; // as problemWith checked
  // An array is spread as arguments, an object is passed as one, none means none.
  const args: unknown[] = params === undefined ? [] : Array.isArray(params) ? params : [params];
  // A notification gets no reply. In 2.0 it is a request without an id; in
  // 1.0 one whose id is null. The lab's requests have no id at all, and are answered.
  const call: Call = { version, id, method, isNotification: version === "2.0" ? !hasId : hasId && id === null };

  // Object.hasOwn, not `method in functions`: "constructor" or "__proto__"
  // must not reach the prototype's functions.
  const fn = Object.hasOwn(functions, method) ? functions[method] : undefined;
  if (typeof fn !== "function") {
    return failed(call, errorObject(ERROR_CODES.METHOD_NOT_FOUND, `method not found: ${describe(method)}`));
  }
  let result: unknown;
  try {
    result = fn(...args);
  } catch (error) {
    return failed(call, error);
  }
  // Most methods return a plain value: answer it now. Only a Promise is waited for, and not for ever.
  if (!(result instanceof Promise)) return succeeded(call, result);
  return withDeadline(result, callTimeoutMs, method).then((value) => succeeded(call, value), (e) => failed(call, e));
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
 *
 * @example
 * ```ts
 * import { handleMessage } from "./rpc.ts";
 *
 * const reply = await handleMessage({ jsonrpc: "2.0", method: "add", params: [1, 2], id: 7 });
 * console.log(reply); // { jsonrpc: "2.0", result: 3, id: 7 }
 * ```
 */
export function handleMessage(message: unknown, options: HandleOptions = {}): Reply | Promise<Reply> {
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
 * server makes one system call, not 50: once the biggest cost the profiler
 * found. (A class for the reason MessageReader is one.)
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
// 6. The server: connections, limits, closing
//
// One thread serves every connection: the event loop calls back when a
// connection opens, when bytes arrive, when a write has drained. Nothing
// blocks, so a procedure waiting on a timer or on I/O holds no one up; a
// procedure that computes for a long time does (move it to a worker thread).
// Each connection reads only as fast as it is answered: at its cap of calls
// in progress, or while its replies do not drain, its requests wait unread.
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
   * Serve TLS instead of plain TCP: options for `node:tls`'s `createServer`,
   * such as `key` and `cert`; with `ca` and `requestCert: true`, only
   * clients with a certificate that `ca` signed get past the handshake.
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
   * How long `close()` waits for calls in flight, and for requests still to
   * come on connections it had accepted, before it destroys what is left.
   * @default {5000}
   */
  closeGraceMs?: number;
}

/** A running server, as {@linkcode startServer} resolves it. */
export interface RpcServer {
  /** The port the server listens on (the one the system picked, for port 0). */
  port: number;
  /**
   * Stops accepting connections and closes the idle ones (answered, and
   * holding nothing). Calls running, and requests still to come on a
   * connection already accepted, get up to `closeGraceMs` to be answered;
   * then the rest are destroyed. Resolves once every socket is closed.
   */
  close(): Promise<void>;
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
export function startServer(options: ServerOptions = {}): Promise<RpcServer> {
  const {
    port = 5000,
    host = "127.0.0.1",
    tls,
    log,
    trace,
    maxMessageBytes = 1024 * 1024,
    maxUnfinishedBytes = 16 * 1024 * 1024,
    maxCallsPerConnection = 250,
    maxConnections = 1000,
    idleTimeoutMs = 60_000,
    closeGraceMs = 5000,
  } = options;
  const connections = new Map<Socket, () => void>(); // each served connection, and its endIfDone() for close()
  const handshaking = new Set<Socket>(); // TLS only: connections not yet served, still in their handshake
  const budget: Budget = { held: 0, max: maxUnfinishedBytes };
  let closing = false;
  let closed: Promise<void> | undefined;

  // allowHalfOpen: a client that sends its request and then shuts its write
  // side (`nc -N`) still gets its reply, because we end our side ourselves.
  // Not for TLS: there a client that gives up in the handshake would leave
  // its half of the connection open, unseen by us, and close() would wait.
  const server = tls === undefined ? createServer({ allowHalfOpen: true }, serve) : tlsServer(tls, serve);
  server.on("tlsClientError", (error: Error) => log?.(`TLS handshake failed: ${error.message}`));
  server.on("connection", (socket: Socket) => {
    if (tls === undefined) return;
    handshaking.add(socket);
    socket.on("close", () => handshaking.delete(socket));
  });

  /** Reads requests from one socket and writes their replies. */
  function serve(socket: Socket): void {
    // The address costs a system call (getpeername): made only for someone who will read it.
    const address = log === undefined && trace === undefined ? "" : `${socket.remoteAddress}:${socket.remotePort}`;
    socket.on("error", (error) => log?.(`Client ${address} error: ${error.message}`)); // a reset: this socket's problem only
    if (connections.size >= maxConnections) {
      const message = `server busy: it already has ${maxConnections} connections`;
      log?.(`Client refused: ${address} (${message})`);
      // Destroyed once the reply is out: it is in no list that close() would tidy up.
      socket.end(encodeReply(messageError(ERROR_CODES.SERVER_BUSY, message)), () => socket.destroy());
      return;
    }
    log?.(`Client connected: ${address}`);
    const reader = new MessageReader(maxMessageBytes, budget);
    const writer = new Writer(socket);
    let running = 0; // calls and notifications started and not yet finished
    let received = 0; // messages read, over the connection's life
    let ended = false; // the client has ended its side: no more bytes will come
    let refused = false; // we stopped reading: after bad input the stream cannot be trusted

    function send(reply: Reply): void {
      if (reply === undefined || !socket.writable) return; // nothing to say, or the client has gone
      const text = encodeReply(reply);
      trace?.("<--", address, text.slice(0, -1));
      writer.write(text);
    }

    /**
     * Handles the whole messages that have arrived, while the limits allow;
     * then reads on, or pauses. Pausing is the backpressure: while calls are
     * at their cap, or replies are not draining, the requests wait unread.
     */
    function pump(): void {
      try {
        while (!refused && running < maxCallsPerConnection && !socket.writableNeedDrain) {
          const framed = reader.next(); // throws on bytes that cannot be split into messages
          if (framed === undefined) break;
          received++;
          handle(framed);
        }
      } catch (error) {
        refuse(error as RpcError); // the reader throws nothing else
      }
      if (running >= maxCallsPerConnection || socket.writableNeedDrain) socket.pause();
      else socket.resume();
      endIfDone();
    }

    /** Decodes, parses and answers one message; counts its calls while they run. */
    function handle(framed: Framed): void {
      trace?.("-->", address, framed.text.toString().trim()); // invalid UTF-8 shows as U+FFFD
      let message: unknown;
      try {
        message = parseMessage(framed);
      } catch (error) {
        return send(messageError(ERROR_CODES.PARSE_ERROR, `parse error: ${errorMessage(error)}`));
      }
      const reply = handleMessage(message, options);
      if (!(reply instanceof Promise)) return send(reply);
      const calls = Array.isArray(message) ? message.length : 1;
      running += calls;
      reply.then((answer) => {
        running -= calls;
        send(answer);
        pump(); // a place is free: read on, or end
      });
    }

    /** Answers once, then stops reading: after this input the stream cannot be trusted. */
    function refuse({ code, message }: RpcError): void {
      log?.(`Client ${address}: ${message}; closing`);
      send(messageError(code, message));
      refused = true;
      reader.release();
    }

    /**
     * Ends our side once every call is answered and no request is to come: the
     * client has ended, we refused it, or the server is closing and this
     * connection, having sent at least one message, holds no part of another.
     */
    function endIfDone(): void {
      if (running > 0 || socket.writableNeedDrain || socket.writableEnded) return;
      if (ended && !refused && reader.hasPartial()) refuse(notJson("the connection ended inside a message"));
      if (!ended && !refused && !(closing && received > 0 && !reader.hasPartial())) return;
      writer.flush();
      // While the server closes, do not wait for the client to hang up too.
      socket.end(() => {
        if (closing) socket.destroy();
      });
    }

    socket.on("data", (chunk: Buffer) => {
      if (refused) return; // read and thrown away, never stored
      reader.push(chunk);
      pump();
    });
    socket.on("drain", pump);
    socket.on("end", () => {
      ended = true;
      pump();
    });
    socket.setTimeout(idleTimeoutMs, () => {
      // A slow call is not idleness: its reply restarts the clock.
      if (running > 0) return;
      log?.(`Client ${address} idle for ${idleTimeoutMs} ms; closing`);
      socket.destroy();
    });

    connections.set(socket, endIfDone);
    socket.on("close", () => {
      connections.delete(socket);
      reader.release();
    });
  }

  function close(): Promise<void> {
    closed ??= new Promise((resolve) => {
      closing = true;
      // When the grace runs out, whatever is still open goes: served connections, and TLS handshakes.
      const timer = setTimeout(() => [...connections.keys(), ...handshaking].forEach((s) => s.destroy()), closeGraceMs);
      // server.close() stops accepting at once; its callback runs when the
      // last connection has closed.
      server.close(() => {
        clearTimeout(timer);
        resolve();
      });
      for (const endIfDone of connections.values()) endIfDone();
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
      server.on("error", (error) => log?.(`Server error: ${error.message}`));
      resolve({ port: (server.address() as AddressInfo).port, close }); // a TCP server's address is an object
    });
  });
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
   * How long a call may wait for its reply; for {@linkcode rpcCall}, for the
   * connection and the reply together.
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

/** True for an object with a `result` or an `error`: the least a reply must have. */
function isRpcReply(value: unknown): value is RpcReply {
  return isPlainObject(value) && (Object.hasOwn(value, "result") || Object.hasOwn(value, "error"));
}

/**
 * Opens a connection to the server (TCP, or TLS with `tls`) and reads its
 * replies: `onReply` gets each whole one; it needs no newline, as the Python
 * lab's server sends none. A reply that is not JSON-RPC, or is longer than
 * `maxReplyBytes`, fails the connection with an "error" event.
 */
function openConnection(options: ConnectOptions, onReply: (reply: RpcReply) => void): Socket {
  const { port = 5000, host = "127.0.0.1", tls, maxReplyBytes = 16 * 1024 * 1024 } = options;
  const socket = tls === undefined ? createConnection({ port, host }) : tlsConnect({ port, host, ...tls });
  const reader = new MessageReader(maxReplyBytes);
  socket.on("data", (chunk: Buffer) => {
    reader.push(chunk);
    try {
      for (let framed = reader.next(); framed !== undefined; framed = reader.next()) {
        const reply = parseMessage(framed);
        if (!isRpcReply(reply)) throw new TypeError(`not a JSON-RPC response: ${describe(reply)}`);
        onReply(reply);
      }
    } catch (error) {
      const tooLong = error instanceof RpcError && error.code === ERROR_CODES.INVALID_REQUEST;
      socket.destroy(new Error(`the reply is ${tooLong ? "too long" : "not JSON-RPC"} (${errorMessage(error)})`));
    }
  });
  return socket;
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
// 8. One call, one connection: the lab's client
//
// Connect, send one request, read the first reply, close. Simple, and the
// reply needs no id; but every call pays for a new connection.
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

  return new Promise((resolve, reject) => {
    signal?.throwIfAborted(); // thrown here, it rejects the promise before any socket exists
    const fail = (cause: Error) => settle(callError(`rpcCall ${method}`, `${host}:${port}`, cause));
    const socket = openConnection(options, (reply) => settle(undefined, reply));
    const timer = setTimeout(() => fail(new Error(`no reply within ${timeoutMs} ms`)), timeoutMs);
    const onAbort = () => settle(signal?.reason);
    signal?.addEventListener("abort", onAbort);

    // A promise settles once, so whichever of these runs first decides; each
    // leaves nothing behind: no timer, no listener on the signal, no socket.
    function settle(error: unknown, reply?: RpcReply): void {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      socket.destroy();
      if (reply === undefined) reject(error);
      else resolve(reply);
    }

    // The reply is the first whole JSON text; then the socket is destroyed.
    socket.on("end", () => fail(new Error("the server closed the connection before replying")));
    socket.on("error", fail);
    socket.write(JSON.stringify({ jsonrpc: "2.0", method, params, id: 1 }) + "\n"); // queued until connected
  });
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

/** A call that has been sent and not yet settled. */
interface PendingCall {
  method: string;
  resolve(reply: RpcReply): void;
  reject(error: unknown): void;
  /** When it times out, by Date.now(). */
  deadline: number;
  /** Takes the call's listener off its AbortSignal, if it has one. */
  unwatch?: () => void;
}

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
  const pending = new Map<number, PendingCall>(); // id -> the call waiting for that reply; oldest first
  let nextId = 1;
  let closedBecause: Error | undefined; // set once the connection is closing or gone
  let timer: ReturnType<typeof setTimeout> | undefined; // one for all the calls: see expire()

  const socket = openConnection(options, (reply) => {
    // A reply whose id matches no call (it timed out, or the server could
    // not read the id) has no one to go to.
    if (typeof reply.id === "number") settle(reply.id, undefined, reply);
  });
  const writer = new Writer(socket);

  /**
   * Settles a call, whichever came first (its reply, its timeout, its
   * signal, the connection dropping), and leaves nothing of it behind: no
   * entry, no listener, and no timer once no call is pending.
   */
  function settle(id: number, error: unknown, reply?: RpcReply): void {
    const call = pending.get(id);
    if (call === undefined) return;
    pending.delete(id);
    call.unwatch?.();
    if (pending.size === 0) {
      clearTimeout(timer);
      timer = undefined;
      if (closedBecause !== undefined) socket.destroy(); // close() waits for no one else
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
  function expire(): void {
    timer = undefined;
    for (const [id, call] of pending) {
      if (call.deadline > Date.now()) break;
      settle(id, callError(`call ${call.method}`, where, new Error(`no reply within ${timeoutMs} ms`)));
    }
    const [oldest] = pending.values();
    if (oldest !== undefined) timer = setTimeout(expire, oldest.deadline - Date.now());
  }

  /** Rejects every call still waiting: after this, nothing is left in `pending`. */
  function dropConnection(cause: Error): void {
    closedBecause ??= cause;
    socket.destroy();
    for (const [id, call] of pending) settle(id, callError(`call ${call.method}`, where, closedBecause));
  }
  socket.on("end", () => dropConnection(new Error("the server closed the connection")));

  function call(method: string, params?: RpcParams, { signal }: Pick<CallOptions, "signal"> = {}): Promise<RpcReply> {
    return new Promise((resolve, reject) => {
      // Thrown here, either rejects the promise before anything is sent.
      signal?.throwIfAborted();
      if (closedBecause !== undefined) throw callError(`call ${method}`, where, closedBecause);
      const id = nextId++;
      const call: PendingCall = { method, resolve, reject, deadline: Date.now() + timeoutMs };
      if (signal !== undefined) {
        const onAbort = () => settle(id, signal.reason);
        signal.addEventListener("abort", onAbort);
        call.unwatch = () => signal.removeEventListener("abort", onAbort);
      }
      pending.set(id, call);
      timer ??= setTimeout(expire, timeoutMs);
      writer.write(JSON.stringify({ jsonrpc: "2.0", method, params, id }) + "\n");
    });
  }

  const client: RpcClient = {
    call,
    notify(method, params) {
      if (closedBecause !== undefined) throw callError(`notify ${method}`, where, closedBecause);
      writer.write(JSON.stringify({ jsonrpc: "2.0", method, params }) + "\n");
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
      // Pending calls still get their replies (or time out); nothing else is worth waiting for,
      // once our last bytes are out: settle() destroys the socket when the last call settles.
      writer.flush();
      socket.end(() => {
        if (pending.size === 0) socket.destroy();
      });
      return new Promise((resolve) => socket.once("close", () => resolve()));
    },
  };

  return new Promise((resolve, reject) => {
    socket.once(options.tls === undefined ? "connect" : "secureConnect", () => resolve(client));
    socket.on("error", (error) => {
      reject(callError("connect", where, error)); // ignored once connected
      dropConnection(error);
    });
  });
}
