// Load client for the storywatch benchmarks: many WebSocket clients in one Node process.
//
// Driven by bench/*.py over stdin/stdout: one JSON command per line in, one JSON reply per
// line out (progress goes to stderr). Frames are never JSON-parsed on the hot path: the
// event type, `bench_k` (the injected event's number), story id and status are found with
// Buffer.indexOf, so the client stays well below the server's cost per delivery.
//
// Commands (each reply carries {"ok": true, ...} or {"ok": false, "error": "..."}):
//   connect    {url, tokens[], n, concurrency, subscribe, filter, snapshot, track}
//   publisher  {url}                       one extra connection used to send `publish`
//   template   {story}                     the story every injected upsert copies
//   inject     {ids[], statuses[], batch, k0}      publish len(ids) upserts, as fast as possible
//   rate       {ids[], statuses[], rate, k0}       publish one upsert per message at `rate`/s
//   wait       {k_from, k_to, timeout_s}   until every client got every bench_k in [from, to]
//   record     {on}                        keep every (bench_k, receive time) for `dump`
//   dump       {file}                      write {k: [receive times ms]} recorded so far
//   expect     {states: {id: status}}      burst: the final state every client must reach
//   consistent {timeout_s}                 until every tracked client matches `expect`
//   hb         {reset}                     longest gap between heartbeats seen per client
//   now        {}                          wall clock in ms (timeOrigin + now), for offsets
//   close      {}                          close every connection
import { writeFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { performance } from "node:perf_hooks";
import WebSocket from "ws";

const wall = () => performance.timeOrigin + performance.now();
const log = (...a) => process.stderr.write(a.join(" ") + "\n");

const clients = []; // {ws, got: Map? , count, hbLast, hbGap, state, matches}
let publisher = null;
let template = {};
let recording = false;
let records = new Map(); // k -> [recv wall ms]
let sendTimes = new Map(); // k -> send wall ms (for latency computed here)
let expected = null; // Map id -> status
let expectedSize = 0;
let waiters = []; // functions checked after every delivery
let frameBytes = 0;
let frames = 0;

const TYPE_STORY = Buffer.from('{"type":"story.');
const TYPE_HB = Buffer.from('{"type":"heartbeat"');
const TYPE_RESYNC = Buffer.from('{"type":"resync"');
const TYPE_SNAPSHOT = Buffer.from('{"type":"snapshot"');
const KEY_K = Buffer.from('"bench_k":');
const KEY_SID = Buffer.from('"story_id":"');
const KEY_STORY = Buffer.from('"story":{');
const KEY_STATUS = Buffer.from('"status":"');
const DELETED = Buffer.from('{"type":"story.deleted"');
const INVALID = Buffer.from('{"type":"story.invalid"');

function startsWith(buf, prefix) {
  return buf.length >= prefix.length && buf.compare(prefix, 0, prefix.length, 0, prefix.length) === 0;
}

function readInt(buf, at) {
  let n = 0;
  let i = at;
  for (; i < buf.length; i++) {
    const c = buf[i];
    if (c < 48 || c > 57) break;
    n = n * 10 + (c - 48);
  }
  return i === at ? -1 : n;
}

function readString(buf, at) {
  const end = buf.indexOf(34, at); // closing quote; our ids/statuses have no escapes
  return buf.toString("latin1", at, end);
}

let consistentClients = 0; // tracked clients whose state equals `expected`

function setState(c, id, status) {
  const had = c.state.get(id);
  if (had === status) return;
  if (status === undefined) c.state.delete(id);
  else c.state.set(id, status);
  if (!expected) return;
  const want = expected.get(id);
  const before = c.matches === expectedSize && c.state.size === expectedSize;
  if (had !== undefined && had === want) c.matches--;
  if (status !== undefined && status === want) c.matches++;
  const after = c.matches === expectedSize && c.state.size === expectedSize;
  if (before !== after) consistentClients += after ? 1 : -1;
}

function recount(c) {
  c.matches = 0;
  if (!expected) return;
  for (const [id, status] of c.state) if (expected.get(id) === status) c.matches++;
}

function recountAll() {
  consistentClients = 0;
  for (const c of clients) {
    if (!c.track) continue;
    recount(c);
    if (c.matches === expectedSize && c.state.size === expectedSize) consistentClients++;
  }
}

// The current wait: every untracked client must count `need` events with k in [from, to].
let target = null; // {from, to, need}
let doneClients = 0;
let countedClients = 0;

function onMessage(c, data) {
  const now = wall();
  frames++;
  frameBytes += data.length;
  if (startsWith(data, TYPE_STORY)) {
    const ki = data.indexOf(KEY_K);
    if (ki >= 0) {
      const k = readInt(data, ki + KEY_K.length);
      if (target !== null && k >= target.from && k <= target.to) {
        c.count++;
        if (c.count === target.need) doneClients++;
      }
      if (recording) {
        let arr = records.get(k);
        if (arr === undefined) records.set(k, (arr = []));
        arr.push(now);
      }
    }
    if (c.track) {
      const si = data.indexOf(KEY_SID);
      const id = readString(data, si + KEY_SID.length);
      if (startsWith(data, DELETED)) setState(c, id, undefined);
      else if (!startsWith(data, INVALID)) {
        const st = data.indexOf(KEY_STORY);
        const s = data.indexOf(KEY_STATUS, st);
        setState(c, id, s >= 0 ? readString(data, s + KEY_STATUS.length) : null);
      }
      c.lastEvent = now;
    }
    if (waiters.length) checkWaiters();
    return;
  }
  if (startsWith(data, TYPE_HB)) {
    if (c.hbLast > 0) {
      const gap = now - c.hbLast;
      if (gap > c.hbGap) c.hbGap = gap;
    }
    c.hbLast = now;
    c.heartbeats++;
    return;
  }
  // Control messages are rare: parse them.
  const msg = JSON.parse(data.toString());
  if (c.onControl) c.onControl(msg);
  if (msg.type === "snapshot" && c.track) {
    for (const s of msg.stories) setState(c, String(s.id), s.status ?? null);
    if (msg.done) c.lastEvent = now;
    if (waiters.length) checkWaiters();
  } else if (msg.type === "resync") {
    c.resyncs++;
    if (c.track) {
      if (c.matches === expectedSize && c.state.size === expectedSize) consistentClients--;
      c.state.clear();
      c.matches = 0;
    }
    // overflow ends the subscription: subscribe again with a snapshot.
    if (msg.reason === "overflow") {
      c.ws.send(JSON.stringify({ type: "subscribe", sub: msg.sub, filter: c.filter, snapshot: true }));
    }
  } else if (msg.type === "error") {
    c.errors++;
    if (c.errors < 5) log("client error:", JSON.stringify(msg));
  }
}

function openClient(url, token, opts) {
  return new Promise((resolve, reject) => {
    const full = url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
    const ws = new WebSocket(full, opts.protocol ? [opts.protocol] : [], {
      perMessageDeflate: !!opts.deflate,
      skipUTF8Validation: true,
      maxPayload: 64 * 1024 * 1024,
    });
    const c = {
      ws, count: 0, hbLast: 0, hbGap: 0, heartbeats: 0,
      track: !!opts.track, state: new Map(), matches: 0, resyncs: 0, errors: 0,
      filter: opts.filter || {}, lastEvent: 0, onControl: null,
    };
    let phase = "welcome";
    const timer = setTimeout(() => reject(new Error("connect timeout (" + phase + ")")), 60000);
    c.onControl = (msg) => {
      if (phase === "welcome" && msg.type === "welcome") {
        if (!opts.subscribe) { phase = "done"; clearTimeout(timer); resolve(c); return; }
        phase = "subscribed";
        ws.send(JSON.stringify({ type: "subscribe", sub: "s1", filter: c.filter, snapshot: !!opts.snapshot }));
      } else if (phase === "subscribed" && msg.type === "subscribed") {
        if (!opts.snapshot) { phase = "done"; clearTimeout(timer); resolve(c); }
        else phase = "snapshot";
      } else if (phase === "snapshot" && msg.type === "snapshot" && msg.done) {
        phase = "done"; clearTimeout(timer); resolve(c);
      } else if (msg.type === "error" && phase !== "done") {
        clearTimeout(timer); reject(new Error("server error: " + JSON.stringify(msg)));
      }
    };
    ws.on("message", (data) => onMessage(c, data));
    ws.on("error", (e) => { clearTimeout(timer); reject(e); });
    ws.on("close", (code) => { c.closed = code; });
  });
}

async function connect(cmd) {
  const t0 = performance.now();
  const n = cmd.n;
  const tokens = cmd.tokens;
  const conc = cmd.concurrency || 50;
  let next = 0;
  const made = new Array(n);
  async function worker() {
    while (next < n) {
      const i = next++;
      made[i] = await openClient(cmd.url, tokens[i % tokens.length], cmd);
    }
  }
  await Promise.all(Array.from({ length: Math.min(conc, n) }, worker));
  for (const c of made) clients.push(c);
  if (expected) recountAll();
  return { clients: clients.length, ms: performance.now() - t0 };
}

async function openPublisher(cmd) {
  const c = await openClient(cmd.url, cmd.token, { protocol: cmd.protocol, subscribe: false });
  c.published = 0;
  c.pubWaiters = [];
  c.onControl = (msg) => {
    if (msg.type === "published") {
      c.published++;
      const w = c.pubWaiters;
      c.pubWaiters = [];
      for (const f of w) f();
    } else if (msg.type === "error") {
      log("publisher error:", JSON.stringify(msg));
    }
  };
  publisher = c;
  return {};
}

function item(id, status, k) {
  return { op: "upsert", story: { ...template, id, status, bench_k: k } };
}

function setTarget(kFrom, kTo) {
  target = { from: kFrom, to: kTo, need: kTo - kFrom + 1 };
  doneClients = 0;
  countedClients = 0;
  for (const c of clients) {
    if (c.track) continue;
    countedClients++;
    c.count = 0;
  }
}

function allGot() {
  return doneClients >= countedClients;
}

function checkWaiters() {
  const still = [];
  for (const w of waiters) if (!w()) still.push(w);
  waiters = still;
}

function waitFor(pred, timeoutS) {
  return new Promise((resolve) => {
    if (pred()) { resolve(true); return; }
    const timer = setTimeout(() => {
      waiters = waiters.filter((w) => w !== check);
      resolve(false);
    }, timeoutS * 1000);
    const check = () => {
      if (!pred()) return false;
      clearTimeout(timer);
      resolve(true);
      return true;
    };
    waiters.push(check);
  });
}

function resetCounts() {
  for (const c of clients) c.count = 0;
  frames = 0;
  frameBytes = 0;
}

function pct(sorted, p) {
  if (!sorted.length) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

function latencyStats(kFrom, kTo) {
  // Per-delivery latency from the publish send time of each bench_k.
  const lat = [];
  for (const [k, arr] of records) {
    if (k < kFrom || k > kTo) continue;
    const sent = sendTimes.get(k);
    if (sent === undefined) continue;
    for (const t of arr) lat.push(t - sent);
  }
  const f = Float64Array.from(lat).sort();
  return { samples: f.length, p50_ms: pct(f, 50), p99_ms: pct(f, 99), max_ms: f.length ? f[f.length - 1] : null };
}

async function inject(cmd) {
  // Publish len(ids) upserts in messages of `batch` items, without waiting in between.
  resetCounts();
  records = new Map();
  sendTimes = new Map();
  recording = !!cmd.record;
  const ids = cmd.ids;
  const k0 = cmd.k0;
  const batch = cmd.batch;
  setTarget(k0, k0 + ids.length - 1);
  const tStart = wall();
  for (let i = 0; i < ids.length; i += batch) {
    const items = [];
    const now = wall();
    for (let j = i; j < Math.min(ids.length, i + batch); j++) {
      items.push(item(ids[j], cmd.statuses[j % cmd.statuses.length], k0 + j));
      sendTimes.set(k0 + j, now);
    }
    publisher.ws.send(JSON.stringify({ type: "publish", ref: "p" + (k0 + i), items }));
  }
  const kTo = k0 + ids.length - 1;
  const ok = await waitFor(allGot, cmd.timeout_s || 120);
  const tEnd = wall();
  let lastRecv = 0;
  if (recording) for (const [, arr] of records) for (const t of arr) if (t > lastRecv) lastRecv = t;
  const out = {
    complete: ok,
    elapsed_s: ((recording ? lastRecv : tEnd) - tStart) / 1000,
    deliveries: clients.reduce((s, c) => s + (c.track ? 0 : c.count), 0),
    frames, avg_frame_bytes: frames ? frameBytes / frames : 0,
  };
  if (recording) out.latency = latencyStats(k0, kTo);
  recording = false;
  return out;
}

async function rate(cmd) {
  // One upsert per publish message at a fixed rate; per-delivery latency.
  resetCounts();
  records = new Map();
  sendTimes = new Map();
  recording = true;
  const ids = cmd.ids;
  const k0 = cmd.k0;
  const interval = 1000 / cmd.rate;
  setTarget(k0, k0 + ids.length - 1);
  const t0 = performance.now();
  for (let i = 0; i < ids.length; i++) {
    const due = t0 + i * interval;
    let delay = due - performance.now();
    if (delay > 1) await new Promise((r) => setTimeout(r, delay - 0.5));
    while (performance.now() < due) { /* spin the last half millisecond */ }
    const k = k0 + i;
    const msg = JSON.stringify({ type: "publish", ref: "r" + k, items: [item(ids[i], cmd.statuses[i % cmd.statuses.length], k)] });
    sendTimes.set(k, wall());
    publisher.ws.send(msg);
  }
  const kTo = k0 + ids.length - 1;
  const ok = await waitFor(allGot, cmd.timeout_s || 60);
  recording = false;
  return {
    complete: ok,
    deliveries: clients.reduce((s, c) => s + (c.track ? 0 : c.count), 0),
    send_span_s: (performance.now() - t0) / 1000,
    latency: latencyStats(k0, kTo),
    avg_frame_bytes: frames ? frameBytes / frames : 0,
  };
}

async function handle(cmd) {
  switch (cmd.cmd) {
    case "connect": return connect(cmd);
    case "publisher": return openPublisher(cmd);
    case "template": template = cmd.story; return {};
    case "inject": return inject(cmd);
    case "rate": return rate(cmd);
    case "target": setTarget(cmd.k_from, cmd.k_to); return {};
    case "wait": {
      const ok = await waitFor(allGot, cmd.timeout_s || 30);
      return { complete: ok, t: wall(), done: doneClients, of: countedClients };
    }
    case "record":
      recording = !!cmd.on;
      if (cmd.reset !== false) { records = new Map(); resetCounts(); }
      return {};
    case "dump": {
      const obj = {};
      for (const [k, arr] of records) obj[k] = arr;
      writeFileSync(cmd.file, JSON.stringify(obj));
      return { keys: records.size };
    }
    case "expect": {
      expected = new Map(Object.entries(cmd.states));
      expectedSize = expected.size;
      recountAll();
      return { size: expectedSize };
    }
    case "consistent": {
      const t0 = wall();
      const nTracked = clients.filter((c) => c.track).length;
      const ok = await waitFor(() => consistentClients >= nTracked, cmd.timeout_s || 60);
      const tracked = clients.filter((c) => c.track);
      return {
        complete: ok,
        t: wall(),
        waited_s: (wall() - t0) / 1000,
        last_event: Math.max(0, ...tracked.map((c) => c.lastEvent)),
        min_matches: Math.min(...tracked.map((c) => c.matches)),
        resyncs: tracked.reduce((s, c) => s + c.resyncs, 0),
      };
    }
    case "hb": {
      const gaps = clients.map((c) => c.hbGap);
      const beats = clients.map((c) => c.heartbeats);
      const out = {
        max_gap_ms: Math.max(0, ...gaps),
        min_heartbeats: Math.min(...beats),
        now: wall(),
      };
      if (cmd.reset) for (const c of clients) { c.hbGap = 0; c.hbLast = 0; c.heartbeats = 0; }
      return out;
    }
    case "now": return { now: wall() };
    case "close": {
      const all = publisher ? [...clients, publisher] : clients;
      await Promise.all(all.map((c) => new Promise((r) => {
        if (c.ws.readyState === WebSocket.CLOSED) { r(); return; }
        c.ws.once("close", r);
        c.ws.close();
        setTimeout(() => { c.ws.terminate(); r(); }, 5000);
      })));
      clients.length = 0;
      publisher = null;
      return {};
    }
    case "exit": setTimeout(() => process.exit(0), 10); return {};
    default: throw new Error("unknown command " + cmd.cmd);
  }
}

const rl = createInterface({ input: process.stdin });
let chain = Promise.resolve();
rl.on("line", (line) => {
  if (!line.trim()) return;
  chain = chain.then(async () => {
    let reply;
    try {
      const cmd = JSON.parse(line);
      reply = { ok: true, ...(await handle(cmd)) };
    } catch (e) {
      reply = { ok: false, error: String(e && e.stack ? e.stack : e) };
    }
    process.stdout.write(JSON.stringify(reply) + "\n");
  });
});
rl.on("close", () => process.exit(0));
