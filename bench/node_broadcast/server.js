// The peer baseline of bench/fanout.py: what many teams would write instead of
// Pylight, Node.js with the `ws` library. It serves just what the benchmark calls,
// with Pylight's message shape (so the bytes on the wire are comparable):
//
//   GET  /ws/<table>    WebSocket: {"type":"hello",...}, then every change
//   POST /api/<table>   201 with the record; the change is encoded once, into one
//                       Buffer, and that buffer is sent to every connected client
//
// No database, no filters, no queue, no heartbeats.
//
//   node bench/node_broadcast/server.js --port 8003   (ws installed by bench/fanout.py)
"use strict";

const http = require("http");
const { WebSocketServer, WebSocket } = require("ws");

const port = Number(process.argv[process.argv.indexOf("--port") + 1] || 8003);
let seq = 0;

const server = http.createServer((req, res) => {
  const match = /^\/api\/([^/?]+)/.exec(req.url || "");
  if (req.method !== "POST" || !match) {
    res.writeHead(404, { "Content-Type": "application/json" });
    res.end('{"error":{"status":404}}');
    return;
  }
  const chunks = [];
  req.on("data", (chunk) => chunks.push(chunk));
  req.on("end", () => {
    const body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    seq += 1;
    const record = { id: seq, ...body };
    const message = Buffer.from(JSON.stringify({
      type: "change", event: "created", table: match[1], seq, pk: seq, record, old: null,
      at: new Date().toISOString(),
    }));
    for (const client of wss.clients) {
      if (client.readyState === WebSocket.OPEN) client.send(message, { binary: false });
    }
    const out = JSON.stringify(record);
    res.writeHead(201, { "Content-Type": "application/json",
                         "Content-Length": Buffer.byteLength(out) });
    res.end(out);
  });
});

const wss = new WebSocketServer({ server, perMessageDeflate: false });
wss.on("connection", (socket, req) => {
  const table = ((req.url || "").split("/")[2] || "").split("?")[0];
  socket.send(JSON.stringify({ type: "hello", table, seq, heartbeat: 20 }));
  socket.on("message", () => {});
  socket.on("error", () => {});
});

server.listen(port, "127.0.0.1");
process.on("SIGTERM", () => process.exit(0));
