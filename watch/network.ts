/**
 * The network made visible: a TCP relay between clients and a server that
 * frames the messages going each way (with rpc.ts's own MessageReader) and
 * decides, for each one, whether it arrives, when, or whether it is lost.
 * MIT 6.824's labrpc gives its labs such a network, with switches for losing
 * requests, losing replies and long delays; here, as well, a message can be
 * held until a person delivers or drops it (the DSLabs debugger's idea).
 *
 * Nothing is faked: a lost message is really not written to the other side,
 * and a delayed one really waits. Every decision is reported, as an event, to
 * whoever draws the diagram (watch/watch.ts sends them to the page).
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { once } from "node:events";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { MessageReader } from "../rpc.ts";

/** What the network does to each message. */
export interface NetworkSettings {
  /** The probability, from 0 to 1, that a message is lost: requests and replies alike. */
  loss: number;
  /** Each message waits a time drawn from this range, in ms, before it arrives: [min, max]. */
  delayMs: [number, number];
  /** Every message waits until someone calls deliver() or drop() with its id. */
  hold: boolean;
}

/** Which way a message travels. */
export type Direction = "request" | "reply";

/** What happened, as the diagram needs it. Times are ms since the network started. */
export type NetworkEvent =
  | { kind: "open"; connection: number; address: string; at: number }
  | { kind: "close"; connection: number; at: number }
  | {
    kind: "send";
    id: number;
    connection: number;
    direction: Direction;
    /** What the diagram writes on the arrow: `add(10, 20)` for a request, `30` or `error -32601` for a reply. */
    label: string;
    /** The message as it crossed the wire. */
    json: string;
    at: number;
    /** What the network decided: it arrives (after `delayMs`), it is lost, or it waits for a person. */
    fate: "deliver" | "lose" | "hold";
    delayMs?: number;
  }
  | { kind: "deliver"; id: number; at: number }
  | { kind: "lose"; id: number; at: number; why: string }
  | { kind: "settings"; settings: NetworkSettings; at: number };

/** A message waiting in the page for a person to deliver or drop it. */
interface Held {
  /** Writes it to the other side. */
  send(): void;
  /** Tells its direction that it is no longer on its way (so that an ended side can end the other). */
  settled(): void;
}

// Requests and replies are short: a client that sends more than this in one message is not a lab's client.
const MAX_MESSAGE_BYTES = 1024 * 1024;

/** The label for a request: its method and params, as a call reads (`add(10, 20)`), or what it holds for a batch. */
function requestLabel(message: unknown): string {
  if (Array.isArray(message)) return `batch of ${message.length}`;
  const { method, params } = message as { method?: unknown; params?: unknown };
  const args = Array.isArray(params) ? params.map((param) => JSON.stringify(param)).join(", ") : JSON.stringify(params);
  return `${typeof method === "string" ? method : "?"}(${args ?? ""})`;
}

/** The label for a reply: its result, or its error's code (1.0: the error's text). */
function replyLabel(message: unknown): string {
  if (Array.isArray(message)) return `${message.length} replies`;
  const { result, error } = message as { result?: unknown; error?: unknown };
  if (error !== undefined && error !== null) {
    return typeof error === "object" ? `error ${(error as { code?: unknown }).code}` : `error: ${String(error)}`;
  }
  return JSON.stringify(result) ?? "null";
}

/** Cuts a label short: the diagram has room for a few words on an arrow. */
function short(text: string, max = 40): string {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/**
 * A relay between clients (who connect to its port) and one server. Each
 * client connection gets a connection of its own to the server; messages are
 * framed both ways and each meets the network's settings.
 */
export class Network {
  settings: NetworkSettings;
  private readonly serverPort: number;
  private readonly report: (event: NetworkEvent) => void;
  private readonly random: () => number;
  private readonly started = performance.now();
  private readonly listener: Server;
  private readonly held = new Map<number, Held>(); // message id -> how to send it, until delivered or dropped
  private readonly sockets = new Set<Socket>(); // both ends of every relayed connection, for close()
  private readonly timers = new Set<ReturnType<typeof setTimeout>>(); // delayed messages on their way
  private nextId = 1;
  private nextConnection = 1;

  /**
   * @param settings Loss, delay and hold, to start with; change them at any time with `settings =`.
   * @param serverPort Where the server listens, on 127.0.0.1.
   * @param report Told every event: connections opening and closing, and each message's fate.
   * @param random Where chance comes from (a test passes its own, to decide which messages are lost).
   */
  constructor(
    settings: NetworkSettings,
    serverPort: number,
    report: (event: NetworkEvent) => void,
    random: () => number = Math.random,
  ) {
    this.settings = settings;
    this.serverPort = serverPort;
    this.report = report;
    this.random = random;
    this.listener = createServer((client) => this.relay(client));
  }

  /** Starts listening for clients on 127.0.0.1; resolves to the port (the one the system picked, for 0). */
  async listen(port: number): Promise<number> {
    this.listener.listen(port, "127.0.0.1");
    await once(this.listener, "listening");
    const address = this.listener.address();
    return typeof address === "object" && address !== null ? address.port : port;
  }

  /** Changes the settings, and says so in the diagram. */
  configure(settings: NetworkSettings): void {
    this.settings = settings;
    this.report({ kind: "settings", settings, at: this.now() });
  }

  /** Sends a held message on. False when no message with that id is held (it was delivered, dropped, or gone). */
  deliver(id: number): boolean {
    const held = this.held.get(id);
    if (held === undefined) return false;
    this.held.delete(id);
    held.send();
    return true;
  }

  /** Drops a held message: it is lost, for real. False when no message with that id is held. */
  drop(id: number): boolean {
    const held = this.held.get(id);
    if (held === undefined) return false;
    this.held.delete(id);
    this.report({ kind: "lose", id, at: this.now(), why: "dropped" });
    held.settled();
    return true;
  }

  /** Ids of the messages held now, oldest first. */
  heldIds(): number[] {
    return [...this.held.keys()];
  }

  /** Stops listening, and closes every relayed connection and every message on its way. */
  async close(): Promise<void> {
    const closed = new Promise((resolve) => this.listener.close(resolve));
    for (const socket of this.sockets) socket.destroy();
    for (const timer of this.timers) clearTimeout(timer);
    this.held.clear();
    await closed;
  }

  /** Milliseconds since the network started: the diagram's clock. */
  now(): number {
    return Math.round(performance.now() - this.started);
  }

  /**
   * One client: a connection of its own to the server, and messages framed
   * both ways. When one side goes, what it sent is still on its way, as on a
   * real network: a request held or delayed still reaches the server after its
   * client gave up, and only then is the server's side ended.
   */
  private relay(client: Socket): void {
    const connection = this.nextConnection++;
    const server = createConnection({ port: this.serverPort, host: "127.0.0.1" });
    this.report({ kind: "open", connection, address: `${client.remoteAddress}:${client.remotePort}`, at: this.now() });
    client.on("data", this.direction(connection, "request", client, server));
    server.on("data", this.direction(connection, "reply", server, client));
    for (const socket of [client, server]) {
      this.sockets.add(socket);
      socket.on("error", () => socket.destroy()); // a reset: that side has gone
      socket.on("close", () => this.sockets.delete(socket));
    }
    client.once("close", () => this.report({ kind: "close", connection, at: this.now() }));
  }

  /**
   * Reads one way of a connection, `from` to `to`, message by message, and
   * sends each on according to the settings. Once `from` has ended or gone,
   * and nothing it sent is still on its way, `to` is ended too.
   */
  private direction(connection: number, direction: Direction, from: Socket, to: Socket): (chunk: Buffer) => void {
    const reader = new MessageReader(MAX_MESSAGE_BYTES);
    let onTheWay = 0;
    const endIfDone = () => {
      if ((from.readableEnded || from.destroyed) && onTheWay === 0) to.end();
    };
    from.on("end", endIfDone);
    from.on("close", endIfDone);
    return (chunk) => {
      reader.push(chunk);
      try {
        for (let framed = reader.next(); framed !== undefined; framed = reader.next()) {
          onTheWay++;
          this.pass(connection, direction, framed.text.toString(), to, () => {
            onTheWay--;
            endIfDone();
          });
        }
      } catch {
        // Bytes that are not JSON messages cannot be drawn, nor sent on one at a time: this side is over.
        from.destroy();
      }
    };
  }

  /** One message: decides its fate, reports it, and sends it, drops it, delays it or holds it. */
  private pass(connection: number, direction: Direction, text: string, to: Socket, settled: () => void): void {
    const id = this.nextId++;
    let label = "(not JSON)";
    try {
      const message: unknown = JSON.parse(text);
      label = short(direction === "request" ? requestLabel(message) : replyLabel(message));
    } catch {
      // Framed but not JSON (the server will say so): it is drawn as it is.
    }
    const { loss, delayMs: [min, max], hold } = this.settings;
    const fate = hold ? "hold" : this.random() < loss ? "lose" : "deliver";
    const delayMs = fate === "deliver" ? Math.round(min + this.random() * (max - min)) : undefined;
    this.report({ kind: "send", id, connection, direction, label, json: text, at: this.now(), fate, delayMs });
    const send = () => {
      if (to.writable) {
        to.write(`${text}\n`);
        this.report({ kind: "deliver", id, at: this.now() });
      } else this.report({ kind: "lose", id, at: this.now(), why: "the other side has gone" });
      settled();
    };
    if (fate === "lose") {
      this.report({ kind: "lose", id, at: this.now(), why: `lost (loss ${loss})` });
      settled();
    } else if (fate === "hold") {
      this.held.set(id, { send, settled });
    } else if (delayMs === 0) send();
    else {
      const timer = setTimeout(() => {
        this.timers.delete(timer);
        send();
      }, delayMs);
      this.timers.add(timer);
    }
  }
}
