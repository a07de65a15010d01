// The StreamQuotes clients of benchmarks/bench_quotes.py, in Node (--client-runtime node):
// the same work as its Python clients (open the streams, read the snapshot, then every
// message, and the lag from the quote's time to its receipt), for a fraction of the CPU, so
// the benchmark's own clients disturb the mesh they measure less. Protocol with the parent:
// print READY once every stream has its snapshot, then, after the window, one JSON line
// {"count": n, "hist": {"<lag ms, 0.1 ms buckets>": n}}.
"use strict";
const path = require("path");
const { performance } = require("perf_hooks");
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

function args() {
  const a = {};
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) a[argv[i].replace(/^--/, "")] = argv[i + 1];
  return {
    endpoint: a.endpoint, token: a.token, streams: Number(a["client-streams"]),
    startAt: Number(a["start-at"]), endAt: Number(a["end-at"]), symbol: a.symbol || "TSLA",
    perChannel: Number(a["streams-per-channel"] || 100),
  };
}

const opts = args();
const protos = path.resolve(__dirname, "..", "..", "protos");
const def = loader.loadSync("stockmesh/quote/v1/quote_service.proto",
  { includeDirs: [protos], longs: Number, enums: String, defaults: true });
const QuoteService = grpc.loadPackageDefinition(def).stockmesh.quote.v1.QuoteService;

const now = () => (performance.timeOrigin + performance.now()) / 1000; // wall clock, seconds
const clients = [];
for (let i = 0; i < Math.ceil(opts.streams / opts.perChannel); i++) {
  // A connection of its own per client (grpc-js shares subchannels between clients otherwise).
  clients.push(new QuoteService(opts.endpoint, grpc.credentials.createInsecure(),
    { "grpc.use_local_subchannel_pool": 1 }));
}
const hist = new Map();
let count = 0, ready = 0, done = false;
const calls = [];

function open(i, attempt) {
  const md = new grpc.Metadata();
  md.set("authorization", `Bearer ${opts.token}`);
  const call = clients[Math.floor(i / opts.perChannel)].StreamQuotes({ symbols: [opts.symbol] }, md);
  calls[i] = call;
  let first = true;
  call.on("data", (q) => {
    if (first) {  // the snapshot
      first = false;
      if (++ready === opts.streams) process.stdout.write("READY\n");
      return;
    }
    const t = now();
    const sent = q.time.seconds + q.time.nanos / 1e9;
    if (sent >= opts.startAt && sent < opts.endAt) {
      count++;
      const k = (Math.round((t - sent) * 10000) / 10).toFixed(1);
      hist.set(k, (hist.get(k) || 0) + 1);
    }
  });
  call.on("error", (err) => {
    if (done || err.code === grpc.status.CANCELLED && !first) return;
    if (first && attempt < 5) {  // a stream that fails to open is opened again, as a real client would
      process.stderr.write(`stream ${i} failed to open (${err.code}: ${err.details}); opening it again\n`);
      setTimeout(() => open(i, attempt + 1), 100 * (attempt + 1));
      return;
    }
    process.stderr.write(`stream ${i} failed: ${err.code} ${err.details}\n`);
    process.exit(1);
  });
}

for (let i = 0; i < opts.streams; i++) open(i, 0);
setTimeout(() => {
  done = true;
  for (const c of calls) c.cancel();
  const out = { count, hist: Object.fromEntries(hist) };
  process.stdout.write(JSON.stringify(out) + "\n", () => process.exit(0));
}, Math.max(0, (opts.endAt + 2 - now()) * 1000));
