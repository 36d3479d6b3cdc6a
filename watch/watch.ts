/**
 * `demo.ts watch`: a server, the network in front of it (watch/network.ts),
 * and a web page that draws every message crossing it as an arrow between
 * lifelines, live (watch/page.html). Clients connect to the network's port,
 * as they would to a server; the page also starts the demo's scenarios
 * through it, and changes the network's settings while it runs.
 *
 *     npx tsx demo.ts watch [--port 5000] [--web 8080] [--loss P] [--delay MS|MIN-MAX] [--hold]
 *
 * The page talks to this process over HTTP on 127.0.0.1 only: GET / (the
 * page), GET /events (Server-Sent Events, one per network event), and POSTs
 * to /settings, /deliver, /drop and /scenario.
 *
 * @module
 */
import { readFileSync } from "node:fs";
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from "node:http";
import { once } from "node:events";
import process from "node:process";
import { setTimeout as delay } from "node:timers/promises";
import {
  connect,
  FUNCTIONS,
  type Functions,
  resultOf,
  rpcCall,
  RpcError,
  type RpcServer,
  startServer,
} from "../rpc.ts";
import { Network, type NetworkEvent, type NetworkSettings } from "./network.ts";

export type { NetworkSettings } from "./network.ts";

/** What `watch()` needs: where clients connect, where the page is, and the network's settings to start with. */
export interface WatchOptions extends NetworkSettings {
  /** The network's port, where clients connect (0: any free one). */
  port: number;
  /** The page's port, on 127.0.0.1 (0: any free one). */
  web: number;
}

/** The page keeps this many events when it connects late; older ones have scrolled away anyway. */
const HISTORY = 400;
const SLOW_MS = 1000;
export const DEPOSIT_MS = 600; // how long a deposit takes: the failures demo waits half of it

/**
 * The demo's server: the lab's procedures, a slow one, and a bank account
 * (`demo.ts failures`' and the watch page's): `deposit` takes DEPOSIT_MS and
 * is not idempotent; `depositOnce` remembers request ids and answers a repeat
 * from memory. `say` is told what the bank does.
 */
export function bank(say: (line: string) => void = () => {}): { functions: Functions; balance(): number } {
  let balance = 100;
  const done = new Map<string, number>(); // request id -> the balance that deposit left
  const deposit = async (amount: unknown) => {
    say(`deposit(${amount}) starts, balance ${balance}`);
    await delay(DEPOSIT_MS);
    balance += Number(amount);
    say(`deposit(${amount}) done, balance ${balance}`);
    return balance;
  };
  const functions: Functions = {
    ...FUNCTIONS,
    slow: async () => {
      await delay(SLOW_MS);
      return "done";
    },
    deposit,
    whoami: () => "the watched server",
    async depositOnce(request) {
      const { id, amount } = request as { id: string; amount: number };
      if (done.has(id)) say(`depositOnce ${id} seen before: answered from memory, balance still ${balance}`);
      else done.set(id, await deposit(amount));
      return done.get(id);
    },
  };
  return { functions, balance: () => balance };
}

/** The demo's scenarios, each a few calls made through the network, with a line for the page to show. */
function scenarios(port: number, balance: () => number): Record<string, () => Promise<string>> {
  // What a call came to, in a few words: its result, the error in its reply, or why it was rejected.
  const attempt = (call: Promise<unknown>) =>
    call.then((value) => JSON.stringify(value), (error) => {
      if (error instanceof RpcError) return `error ${error.code} (${error.message})`;
      return `rejected (${error instanceof Error ? error.message : error})`;
    });
  return {
    async lab() {
      const calls: Array<[string, number[]]> = [["add", [10, 20]], ["multiply", [5, 6]], ["divide", [10, 5]]];
      const replies = await Promise.all(
        calls.map(([method, params]) => attempt(rpcCall(method, params, { port }).then(resultOf))),
      );
      return calls.map(([method, params], i) => `${method}(${params.join(", ")}) -> ${replies[i]}`).join("; ");
    },
    async slow() {
      const client = await connect({ port, timeoutMs: 10_000 });
      const started = performance.now();
      const replies = await Promise.all(Array.from({ length: 5 }, () => attempt(client.call("slow").then(resultOf))));
      await client.close();
      const seconds = ((performance.now() - started) / 1000).toFixed(2);
      return `5 calls of slow() (1 s each) on one connection: ${replies.join(", ")} in ${seconds} s`;
    },
    async deposit() {
      const before = balance();
      const first = await attempt(rpcCall("deposit", [10], { port, timeoutMs: DEPOSIT_MS / 2 }).then(resultOf));
      // A long wait for the retry: with --hold, a person delivers its messages.
      const retry = await attempt(rpcCall("deposit", [10], { port, timeoutMs: 30_000 }).then(resultOf));
      await delay(DEPOSIT_MS); // the first deposit finishes too, whatever its caller believed
      return `deposit(10), waiting ${DEPOSIT_MS / 2} ms -> ${first}; retried -> ${retry}; ` +
        `the balance went from ${before} to ${balance()}: ${(balance() - before) / 10} deposits of 10 for one intent`;
    },
  };
}

/** Reads a small JSON body from a POST. */
async function body(request: IncomingMessage): Promise<Record<string, unknown>> {
  let text = "";
  for await (const chunk of request) {
    text += chunk;
    if (text.length > 10_000) throw new Error("body too long");
  }
  return text === "" ? {} : JSON.parse(text);
}

/** The settings a page sent, checked the way the command line checks them. */
function settingsFrom(value: Record<string, unknown>, current: NetworkSettings): NetworkSettings {
  const loss = Number(value.loss ?? current.loss);
  const [min, max] = Array.isArray(value.delayMs) ? value.delayMs.map(Number) : current.delayMs;
  if (!(loss >= 0 && loss <= 1) || !(min >= 0 && max >= min && max <= 60_000)) {
    throw new RangeError("loss must be from 0 to 1, and delay 0 <= min <= max <= 60000 ms");
  }
  return { loss, delayMs: [min, max], hold: Boolean(value.hold ?? current.hold) };
}

/** What the page is told: the network's events, and a line when a scenario ends. */
export type PageEvent = NetworkEvent | { kind: "note"; text: string; at: number };

/** A running watch: where each part listens, and how to stop them all. */
export interface Watch {
  /** The network's port: where clients connect. */
  port: number;
  /** The page's port, on 127.0.0.1. */
  webPort: number;
  /** The server's own port, behind the network. */
  serverPort: number;
  /** Closes the page's connections, the network (and everything on its way) and the server. */
  close(): Promise<void>;
}

/** Starts the server, the network in front of it, and the page's HTTP server. */
export async function startWatch(options: WatchOptions): Promise<Watch> {
  const { functions, balance } = bank();
  const server: RpcServer = await startServer({ port: 0, functions });
  const history: PageEvent[] = [];
  const pages = new Set<ServerResponse>();
  const report = (event: PageEvent) => {
    history.push(event);
    if (history.length > HISTORY) history.shift();
    for (const page of pages) page.write(`data: ${JSON.stringify(event)}\n\n`);
  };
  const network = new Network(options, server.port, report);
  const port = await network.listen(options.port);
  const runs = scenarios(port, balance);
  const page = readFileSync(new URL("./page.html", import.meta.url), "utf8");

  /** Answers one request from the page. */
  async function answer(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const url = new URL(request.url ?? "/", "http://127.0.0.1");
    const route = `${request.method} ${url.pathname}`;
    if (route === "GET /") response.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(page);
    else if (route === "GET /events") {
      response.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-store" });
      const hello = { kind: "hello", port, serverPort: server.port, settings: network.settings, at: network.now() };
      for (const event of [hello, ...history]) response.write(`data: ${JSON.stringify(event)}\n\n`);
      pages.add(response);
      request.on("close", () => pages.delete(response));
    } else if (route === "POST /settings") {
      network.configure(settingsFrom(await body(request), network.settings));
      response.writeHead(204).end();
    } else if (route === "POST /deliver" || route === "POST /drop") {
      const id = Number((await body(request)).id);
      const done = route === "POST /deliver" ? network.deliver(id) : network.drop(id);
      response.writeHead(done ? 204 : 404).end();
    } else if (route === "POST /scenario") {
      const name = String((await body(request)).name);
      const run = Object.hasOwn(runs, name) ? runs[name] : undefined;
      response.writeHead(run === undefined ? 404 : 202).end();
      const outcome = await run?.().catch((error) => `failed: ${error instanceof Error ? error.message : error}`);
      if (outcome !== undefined) report({ kind: "note", text: `${name}: ${outcome}`, at: network.now() });
    } else response.writeHead(404).end();
  }

  const web = createHttpServer((request, response) => {
    answer(request, response).catch((error) => {
      if (!response.headersSent) response.writeHead(400, { "content-type": "text/plain" });
      response.end(error instanceof Error ? error.message : String(error));
    });
  });
  web.listen(options.web, "127.0.0.1");
  await once(web, "listening");
  return {
    port,
    webPort: (web.address() as { port: number }).port,
    serverPort: server.port,
    async close() {
      for (const response of pages) response.end();
      await Promise.all([new Promise((done) => web.close(done)), network.close()]);
      await server.close();
    },
  };
}

/**
 * `demo.ts watch`: starts it all, prints where each part is and what to do,
 * and runs until Ctrl+C.
 */
export async function watch(options: WatchOptions): Promise<void> {
  const running = await startWatch(options);
  const { loss, delayMs, hold } = options;
  console.log(`RPC server on 127.0.0.1:${running.serverPort}, behind the network`);
  console.log(
    `The network on 127.0.0.1:${running.port}: loss ${loss}, delay ${delayMs.join("-")} ms${hold ? ", hold" : ""}`,
  );
  console.log(`The page: http://127.0.0.1:${running.webPort}/  (open it in a browser)`);
  console.log(`Call through the network from another terminal: demo.ts client --port ${running.port}`);
  console.log(`  or python3 test/python/rpc_client.py ${running.port}; the page's buttons start the demo's scenarios.`);
  console.log("Ctrl+C stops.");
  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = async () => {
      if (stopping) return; // a second Ctrl+C while closing
      stopping = true;
      console.log("\nClosing the page, the network and the server.");
      await running.close();
      console.log("Closed.");
      resolve();
    };
    process.on("SIGINT", stop);
    process.on("SIGTERM", stop);
  });
}
