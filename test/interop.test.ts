/**
 * Interop: peers nobody here wrote, or wrote in another's style. The Python
 * lab's (test/python), Go's net/rpc/jsonrpc (test/go), HAProxy in front of
 * the cluster (deploy/), and jayson, a JSON-RPC library from npm. Each suite
 * says SKIPPED in its name when its peer is not installed.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import jayson from "jayson";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { ERROR_CODES, resultOf, rpcCall, RpcError, startServer } from "../rpc.ts";
import { cleanups, client, hasPython, runTypeScript, start, unhandled, waitFor } from "./helpers.ts";

// ---------------------------------------------------------------------------
// Interop: peers nobody here wrote
// ---------------------------------------------------------------------------

/** Runs one of the Python peers in test/python (written in the lab's style: a thread per client, one recv(1024)). */
function python(file: "rpc_client.py" | "rpc_server.py", port: number): ChildProcess {
  const child = spawn("python3", [
    "-u",
    fileURLToPath(new URL(`./python/${file}`, import.meta.url)),
    String(port),
  ]);
  cleanups.push(() => child.kill());
  return child;
}

describe.skipIf(!hasPython)(
  `the Python lab's style, test/python (${hasPython ? "found" : "SKIPPED: needs python3"})`,
  () => {
    test("its client, one request per connection with no newline and no id, gets its three answers", async () => {
      const { port } = await start();
      const child = python("rpc_client.py", port);
      let output = "";
      child.stdout?.on("data", (chunk) => (output += chunk));
      const [code] = await once(child, "exit");
      expect(code).toBe(0);
      expect(output).toBe(
        "add(10, 20) -> {'result': 30, 'error': None, 'id': None}\n" +
          "multiply(5, 6) -> {'result': 30, 'error': None, 'id': None}\n" +
          "divide(10, 5) -> {'result': None, 'error': 'method not found: \"divide\"', 'id': None}\n",
      );
    });

    test("rpcCall() gets its answers from its server, which sends no newline, no jsonrpc and no id", async () => {
      const child = python("rpc_server.py", 0);
      const [line] = await once(createInterface({ input: child.stdout! }), "line");
      const port = Number(String(line).split(" ").at(-1));
      expect(await rpcCall("add", [10, 20], { port })).toEqual({ result: 30 });
      expect(await rpcCall("divide", [10, 5], { port })).toEqual({ error: "Method not found" });
    });
  },
);

const hasGo = spawnSync("go", ["version"]).status === 0;

/** Builds one of the Go programs in test/go into a temporary folder, and returns its path. */
function buildGo(name: "client" | "server", dir: string): string {
  const binary = join(dir, name);
  const source = fileURLToPath(new URL(`./go/${name}/main.go`, import.meta.url));
  const built = spawnSync("go", ["build", "-o", binary, source], { encoding: "utf8" });
  if (built.status !== 0) throw new Error(`go build ${name} failed: ${built.stderr}`);
  return binary;
}

describe.skipIf(!hasGo)(`Go's net/rpc/jsonrpc, a JSON-RPC 1.0 peer (${hasGo ? "found" : "SKIPPED: needs go"})`, () => {
  let dir = "";
  let lines: string[] = [];
  let goServerPort = 0;
  let goServer: ChildProcess | undefined;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "rpc-go-"));
    const [clientBinary, serverBinary] = [buildGo("client", dir), buildGo("server", dir)];
    // Go's client against our server, once; the tests below read what it printed.
    const ours = await startServer({
      port: 0,
      functions: { "Arith.Multiply": (args) => (args as { A: number }).A * (args as { B: number }).B },
    });
    const run = spawn(clientBinary, [String(ours.port)]);
    let output = "";
    run.stdout.on("data", (chunk) => (output += chunk));
    await once(run, "exit");
    await ours.close();
    lines = output.split("\n");
    // Go's server, for our clients to call.
    goServer = spawn(serverBinary);
    const [line] = await once(createInterface({ input: goServer.stdout! }), "line");
    goServerPort = Number(String(line).split(" ")[1]);
  }, 60_000);
  afterAll(() => {
    goServer?.kill();
    rmSync(dir, { recursive: true, force: true });
  });

  test("Go's client gets a result from our server", () => {
    expect(lines).toContain("multiply: 42 <nil>");
  });

  test("Go's client reads an unknown method as an error", () => {
    expect(lines).toContain('unknown method: method not found: "Arith.Nope"');
  });

  test("Go's client calls again on the same connection after that error", () => {
    expect(lines).toContain("after the error: 12 <nil>");
  });

  test("Go's client gets 200 concurrent calls on one connection right", () => {
    expect(lines).toContain("concurrent: 200 of 200 right");
  });

  test("rpcCall() gets a result and an error from Go's server", async () => {
    const port = goServerPort;
    expect(await rpcCall("Arith.Multiply", [{ A: 6, B: 7 }], { port })).toEqual({ id: 1, result: 42, error: null });
    expect(await rpcCall("Arith.Divide", [{ A: 1, B: 0 }], { port })).toEqual({
      id: 1,
      result: null,
      error: "divide by zero",
    });
  });

  test("connect() gets a result and an error from Go's server, and resultOf() reads both", async () => {
    const rpc = await client(goServerPort);
    expect(resultOf(await rpc.call("Arith.Multiply", [{ A: 6, B: 7 }]))).toBe(42);
    const reply = await rpc.call("Arith.Divide", [{ A: 1, B: 0 }]);
    expect(() => resultOf(reply)).toThrow(new RpcError(ERROR_CODES.INTERNAL_ERROR, "divide by zero"));
    expect(resultOf(await rpc.call("Arith.Divide", [{ A: 12, B: 4 }]))).toBe(3);
  });
});

const hasHaproxy = spawnSync("haproxy", ["-v"]).status === 0;

/** A port P such that P, P+1 and P+2 are free, below the range the system hands out to clients (32768 on Linux). */
async function threeFreePorts(): Promise<number> {
  const isFree = (port: number) =>
    new Promise<boolean>((resolve) => {
      const probe = createServer().once("error", () => resolve(false));
      probe.listen(port, "127.0.0.1", () => probe.close(() => resolve(true)));
    });
  for (;;) {
    const base = 20_000 + Math.floor(Math.random() * 12_000);
    if ((await Promise.all([base, base + 1, base + 2].map(isFree))).every(Boolean)) return base;
  }
}

describe.skipIf(!hasHaproxy)(`behind HAProxy (${hasHaproxy ? "found" : "SKIPPED: needs haproxy"})`, () => {
  test(
    "deploy/cluster.ts serves through HAProxy: new connections spread, a persistent one stays; SIGTERM stops all",
    async () => {
      const port = await threeFreePorts(); // HAProxy's, and the two servers' after it
      const [command, args] = runTypeScript(fileURLToPath(new URL("../deploy/cluster.ts", import.meta.url)));
      const cluster = spawn(command, [...args, "--port", String(port)], { stdio: ["ignore", "pipe", "pipe"] });
      let output = "";
      cluster.stdout?.on("data", (chunk) => (output += chunk));
      cluster.stderr?.on("data", (chunk) => (output += chunk));
      cleanups.push(() => cluster.kill("SIGKILL"));
      await waitFor(() => output.includes("Try:") || cluster.exitCode !== null, "the cluster to start", 10_000);
      expect(output).toContain(`HAProxy on 127.0.0.1:${port}`);
      const spread = new Set(
        await Promise.all(Array.from({ length: 6 }, () => rpcCall("whoami", [], { port }).then(resultOf))),
      );
      expect(spread.size).toBe(2); // round robin: new connections go to both servers
      const calc = (await client(port)).stub<{ whoami(): string }>();
      const stays = new Set(await Promise.all(Array.from({ length: 6 }, () => calc.whoami())));
      expect(stays.size).toBe(1); // one connection, one server: HAProxy balances connections, not calls
      cluster.kill("SIGTERM");
      await once(cluster, "exit"); // (Deno reports a signal here even after a clean exit)
      expect(output).toContain("nothing is left running");
      for (const gone of [port, port + 1, port + 2]) {
        await expect(rpcCall("add", [1, 2], { port: gone })).rejects.toThrow("ECONNREFUSED");
      }
    },
    15_000,
  );
});

describe("jayson, a JSON-RPC 2.0 library from npm", () => {
  test("its TCP client calls our server", async () => {
    const { port } = await start();
    const client = jayson.client.tcp({ port, host: "127.0.0.1" });
    const reply = await new Promise((resolve, reject) =>
      client.request(
        "add",
        [10, 20],
        (error: unknown, response: unknown) => (error ? reject(error) : resolve(response)),
      )
    );
    expect(reply).toMatchObject({ jsonrpc: "2.0", result: 30 });
  });

  test("rpcCall() calls its TCP server", async () => {
    const server = new jayson.Server({
      add: (args: number[], done: (e: null, r: number) => void) => done(null, args[0] + args[1]),
    });
    const tcp = server.tcp();
    tcp.listen(0, "127.0.0.1");
    await once(tcp, "listening");
    cleanups.push(() => new Promise((resolve) => tcp.close(resolve)));
    const { port } = tcp.address() as { port: number };
    expect(await rpcCall("add", [10, 20], { port })).toEqual({ jsonrpc: "2.0", result: 30, id: 1 });
    expect(await rpcCall("divide", [10, 5], { port })).toMatchObject({ error: { code: ERROR_CODES.METHOD_NOT_FOUND } });
  });
});

test("no Promise was left to reject unhandled in this file", () => {
  expect(unhandled).toEqual([]);
});
