/**
 * The peer: jayson's TCP server (a JSON-RPC 2.0 library from npm) answering
 * add, measured by bench/bench.ts under the same loads as rpc.ts. Prints
 * `{"port":N}` once listening, like stress/server.ts.
 */
import process from "node:process";
import jayson from "jayson";

const server = new jayson.Server({
  add: (params: number[], done: (error: null, result: number) => void) => done(null, params[0] + params[1]),
});
const tcp = server.tcp();
tcp.listen(0, "127.0.0.1", () => {
  const address = tcp.address();
  console.log(JSON.stringify({ port: typeof address === "object" && address !== null ? address.port : 0 }));
});
process.once("SIGTERM", () => process.exit(0));
