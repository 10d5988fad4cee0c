// Follow a storywatch server from Node.js: keep every story in memory, print each change,
// reconnect with exponential backoff and resume from the last event seen, losing nothing:
// missed events are replayed, or — after an absence longer than the server's replay buffer —
// a catch-up (the stories that changed and the ids that went away) is applied in place.
//
//   cd examples && npm install
//   STORYWATCH_TOKEN=… node node-client.mjs [EPIC …]
//
// STORYWATCH_URL defaults to ws://127.0.0.1:8765/ws.
import WebSocket from "ws";

const URL = process.env.STORYWATCH_URL ?? "ws://127.0.0.1:8765/ws";
const TOKEN = process.env.STORYWATCH_TOKEN;
const SUB = "example";
const FILTER = process.argv.length > 2 ? { epics: process.argv.slice(2) } : {};
if (!TOKEN) throw new Error("set STORYWATCH_TOKEN");

const stories = new Map(); // story id -> latest state
let cursor = null;         // {epoch, seq} of the last event or snapshot applied
let needSnapshot = true;   // our state is not continuous with the stream
let loading = [];          // snapshot chunks being received
let attempt = 0;           // reconnects since we were last in sync (drives the backoff)

function connect() {
  const ws = new WebSocket(URL, "storywatch.v1", { headers: { Authorization: `Bearer ${TOKEN}` } });
  const send = (msg) => ws.send(JSON.stringify(msg));
  const subscribe = () => {
    loading = [];
    if (needSnapshot || !cursor) send({ type: "subscribe", sub: SUB, filter: FILTER, snapshot: true });
    else send({ type: "subscribe", sub: SUB, filter: FILTER, since: cursor });
  };
  // Heartbeats arrive every heartbeat_s: silence for twice that means a dead link.
  let silence = 30_000, watchdog;
  const alive = () => { clearTimeout(watchdog); watchdog = setTimeout(() => ws.terminate(), silence); };
  alive();

  ws.on("message", (data) => {
    alive();
    const msg = JSON.parse(data.toString());
    switch (msg.type) {
      case "welcome":
        silence = 2000 * msg.heartbeat_s;
        if (cursor && cursor.epoch !== msg.epoch) needSnapshot = true; // history was lost
        return subscribe();
      case "subscribed":
        if (msg.recovered === false) { needSnapshot = true; return send({ type: "unsubscribe", sub: SUB }); }
        if (msg.recovered) {
          attempt = 0;
          console.log(msg.compacted ? "resumed: a catch-up follows" : `resumed: ${msg.replayed} missed events follow`);
        }
        return;
      case "catchup": // the state now of what changed while we were away, and what went away
        if (needSnapshot) return;
        for (const s of msg.stories) stories.set(String(s.id), s);
        for (const id of msg.removed) stories.delete(id);
        if (msg.done) {
          cursor = { epoch: msg.epoch, seq: msg.seq };
          console.log(`caught up: ${stories.size} stories at seq ${msg.seq}`);
        }
        return;
      case "unsubscribed": return subscribe();
      case "resync": // overflow ended the subscription; epoch_changed kept it
        needSnapshot = true;
        return msg.reason === "overflow" ? subscribe() : send({ type: "unsubscribe", sub: SUB });
      case "snapshot":
        if (!needSnapshot) return;
        loading.push(...msg.stories);
        if (msg.done) {
          stories.clear();
          for (const s of loading) stories.set(String(s.id), s);
          cursor = { epoch: msg.epoch, seq: msg.seq };
          needSnapshot = false;
          attempt = 0;
          console.log(`snapshot: ${stories.size} stories at seq ${msg.seq}`);
        }
        return;
      case "error": return console.error("error:", msg.code, msg.message);
    }
    if (msg.type.startsWith("story.") && !needSnapshot) {
      if (msg.type === "story.deleted") stories.delete(msg.story_id);
      else if (msg.type !== "story.invalid") stories.set(msg.story_id, msg.story); // invalid keeps the last good state
      cursor = { epoch: msg.epoch, seq: msg.seq };
      console.log(msg.seq, msg.type, msg.story_id, msg.to ? `${msg.from} -> ${msg.to}` : "");
    }
  });

  ws.on("unexpected-response", (req, res) => {
    if ([400, 401, 403].includes(res.statusCode)) { // retrying will not fix these
      console.error(`refused: HTTP ${res.statusCode}`);
      process.exit(1);
    }
    ws.terminate(); // 429, 503: try again later
  });
  ws.on("error", (err) => console.error("error:", err.message));
  ws.on("close", (code) => {
    clearTimeout(watchdog);
    const delay = Math.min(30_000, 500 * 2 ** attempt++) * (0.5 + Math.random() / 2);
    console.error(`disconnected (${code}); reconnecting in ${(delay / 1000).toFixed(1)}s`);
    setTimeout(connect, delay);
  });
}

connect();
