/**
 * The floor: the least a JSON-RPC add server can do in this runtime. It splits
 * on newlines, parses, adds, replies, and checks nothing at all, so no real
 * server can be faster; the benchmark reports every figure as a ratio to it.
 * It answers all the requests in one chunk with one write. Prints
 * `{"port":N}` once listening, like stress/server.ts.
 */
import { createServer } from "node:net";
import process from "node:process";

const server = createServer((socket) => {
  socket.setEncoding("utf8");
  socket.on("error", () => {});
  let rest = "";
  socket.on("data", (chunk: string) => {
    const lines = (rest + chunk).split("\n");
    rest = lines.pop() ?? "";
    let replies = "";
    for (const line of lines) {
      const { params, id } = JSON.parse(line);
      replies += JSON.stringify({ jsonrpc: "2.0", result: params[0] + params[1], id }) + "\n";
    }
    socket.write(replies); // one write for all the replies to one chunk
  });
});
server.listen(0, "127.0.0.1", () => {
  const address = server.address();
  console.log(JSON.stringify({ port: typeof address === "object" && address !== null ? address.port : 0 }));
});
process.once("SIGTERM", () => process.exit(0));
