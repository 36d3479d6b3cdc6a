/**
 * The server the stress and benchmark scripts drive, in a process of its own
 * so that its memory can be read apart from theirs. Prints one line,
 * `{"port":N}`, once listening; closes gracefully on SIGTERM.
 *
 *     npx tsx stress/server.ts [--max-connections N]   # rpc.ts, with FUNCTIONS, wait(ms) and big(bytes)
 *         [--idle-timeout-ms N] [--max-per-address N] [--tls]   # its limits, and TLS with tls/'s certificates
 *     npx tsx stress/server.ts --endless               # a broken server: every reply is a string that never ends
 *     npx tsx stress/server.ts --discard               # a bare server that reads every byte and keeps none
 */
import { readFileSync } from "node:fs";
import { createServer } from "node:net";
import process from "node:process";
import { setTimeout as delay } from "node:timers/promises";
import { parseArgs } from "node:util";
import { FUNCTIONS, startServer } from "../rpc.ts";

const { values } = parseArgs({
  args: process.argv.slice(2),
  options: {
    "max-connections": { type: "string", default: "1000" },
    "idle-timeout-ms": { type: "string", default: "60000" },
    "max-per-address": { type: "string" },
    tls: { type: "boolean", default: false },
    endless: { type: "boolean", default: false },
    discard: { type: "boolean", default: false },
  },
});

if (values.endless || values.discard) {
  const chunk = "x".repeat(64 * 1024);
  const server = createServer((socket) => {
    socket.on("error", () => {}); // the client hangs up on us: that is the point
    const more = () => {
      while (socket.writable && socket.write(chunk));
    };
    socket.once("data", () => {
      if (values.discard) return;
      socket.write('{"jsonrpc":"2.0","result":"');
      socket.on("drain", more);
      more();
    });
    socket.on("data", () => {}); // read, and keep nothing
  });
  server.listen(0, "127.0.0.1", () => {
    const address = server.address();
    console.log(JSON.stringify({ port: typeof address === "object" && address !== null ? address.port : 0 }));
  });
  process.once("SIGTERM", () => process.exit(0));
} else {
  const pem = (name: string) => readFileSync(new URL(`../tls/${name}.pem`, import.meta.url));
  const server = await startServer({
    port: 0,
    maxConnections: Number(values["max-connections"]),
    idleTimeoutMs: Number(values["idle-timeout-ms"]),
    maxConnectionsPerAddress: values["max-per-address"] === undefined ? undefined : Number(values["max-per-address"]),
    tls: values.tls ? { key: pem("server-key"), cert: pem("server") } : undefined,
    maxReplyBytes: 64 * 1024 * 1024,
    functions: {
      ...FUNCTIONS,
      wait: async (ms) => {
        await delay(Number(ms));
        return "waited";
      },
      big: (bytes) => "x".repeat(Number(bytes)),
    },
  });
  console.log(JSON.stringify({ port: server.port }));
  process.once("SIGTERM", async () => {
    await server.close();
    process.exit(0);
  });
}
