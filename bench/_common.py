"""Shared helpers for the bench/ scripts — and the baselines they run as subprocesses.

Every bench script starts the real daemon (``python -m storywatch run REPO --backend memory
--port 0 --config CFG``) as a subprocess, the way users run it, so that its CPU and RSS can
be read from ``/proc/<pid>`` without the load generator or the baseline in the same process.
The baselines run from this file as subprocesses too:

    python bench/_common.py refserver [--compression] [--watch DIR --step MS --debounce MS]
                                          # minimal websockets.broadcast server (+ awatch)
    python bench/_common.py awatch DIR --step MS --debounce MS   # bare watchfiles loop
    python bench/_common.py rawparse DIR                 # read + CSafeLoader parse of *.md
    python bench/_common.py rawhold DIR                  # rawparse, then hold the dicts (RSS)

The load client is ``bench/node/driver.mjs`` (Node + ``ws``), installed on first use with
``npm ci`` into ``bench/node/node_modules`` (ignored by git).

Nothing here is imported by the product or by the tests; no timing is ever asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
FIXTURES = ROOT / "fixtures" / "stories"
NODE_DIR = BENCH / "node"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

PUBLISH_TOKEN = "tok"  # scopes [read, publish]
TOKENS_PER_READER = 200  # the default limits.max_connections_per_token


# -- output ------------------------------------------------------------------------------


def progress(*parts: Any) -> None:
    print("[bench]", *parts, file=sys.stderr, flush=True)


def emit(result: dict[str, Any]) -> None:
    """The one JSON line a bench script prints on stdout."""
    print(json.dumps(result, separators=(",", ":"), default=_jsonable), flush=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def median(values: Iterable[float]) -> float | None:
    data = sorted(v for v in values if v is not None)
    if not data:
        return None
    mid = len(data) // 2
    return data[mid] if len(data) % 2 else (data[mid - 1] + data[mid]) / 2


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return None
    data = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(data)))
    return data[min(rank, len(data)) - 1]


def rnd(value: Any, digits: int = 3) -> Any:
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rnd(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [rnd(v, digits) for v in value]
    return value


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    node = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    import websockets
    import yaml

    return {
        "cpus": os.cpu_count(),
        "cpu": model,
        "python": sys.version.split()[0],
        "websockets": websockets.__version__,
        "pyyaml": yaml.__version__,
        "yaml_c": bool(getattr(yaml, "__with_libyaml__", False)),
        "node": node,
        "loadavg_1m": loadavg(),
        "code": code_state(),
    }


# -- /proc -------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3); utime/stime are fields 14/15 → indexes 11/12 here.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def machine_busy_s() -> float:
    """CPU seconds spent busy by the whole machine (all cores), from /proc/stat."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


class CpuMeter:
    """CPU seconds used by a set of processes between start() and stop().

    ``others_cpu_s`` is what the rest of the machine used meanwhile (this machine is
    shared: other sessions' test suites may run beside the benchmark).
    """

    def __init__(self, **pids: int) -> None:
        self.pids = pids
        self.start_cpu: dict[str, float] = {}
        self.start_wall = 0.0
        self.start_busy = 0.0

    def start(self) -> CpuMeter:
        self.start_wall = time.perf_counter()
        self.start_busy = machine_busy_s()
        self.start_cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        return self

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self.start_wall
        out = {
            f"{name}_cpu_s": cpu_seconds(pid) - self.start_cpu[name]
            for name, pid in self.pids.items()
        }
        busy = machine_busy_s() - self.start_busy
        out["others_cpu_s"] = max(0.0, busy - sum(out.values()))
        out["wall_s"] = wall
        return out


def code_state() -> dict[str, Any]:
    """Which code was measured: HEAD and the src/ files changed in the work tree."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout

    dirty = [line[3:] for line in git("status", "--short", "--", "src").splitlines()]
    return {"head": git("rev-parse", "--short", "HEAD").strip(), "src_changed": dirty}


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


# -- tokens and config -------------------------------------------------------------------


def reader_tokens(clients: int) -> list[str]:
    """Enough read tokens for ``clients`` connections under the per-token limit."""
    return [f"reader-{i}" for i in range(max(1, math.ceil(clients / TOKENS_PER_READER)))]


def token_entries(readers: Sequence[str]) -> list[dict[str, Any]]:
    entries = [
        {"name": PUBLISH_TOKEN, "sha256": _sha(PUBLISH_TOKEN), "scopes": ["read", "publish"]}
    ]
    entries += [{"name": r, "sha256": _sha(r), "scopes": ["read"]} for r in readers]
    return entries


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def write_config(path: Path, readers: Sequence[str], **sections: dict[str, Any]) -> Path:
    import yaml

    config: dict[str, Any] = {"auth": {"tokens": token_entries(readers)}}
    for key, value in sections.items():
        if value:
            config[key] = value
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# Limits for measuring raw fan-out: the per-connection outbound budget (200/s, burst 1000)
# would otherwise cap 1 000 clients at 200 000 deliveries/s and coalesce the backlog, and
# the inbound budget (20/s) would refuse a 50/s publisher.
UNCAPPED_LIMITS: dict[str, Any] = {
    "rate_per_s": 1_000_000,
    "burst": 1_000_000,
    "max_pending": 1_000_000,
    "inbound_per_s": 1000,
    "inbound_burst": 1000,
}


# -- processes ---------------------------------------------------------------------------

_LISTEN = re.compile(r"https?://[^:/]+:(\d+)")


class Server:
    """A server subprocess (the daemon or a baseline) whose port is read from stdout."""

    def __init__(self, name: str, args: list[str], logdir: Path, env: dict[str, str] | None = None):
        self.name = name
        self.args = args
        self.log_path = logdir / f"{name}.log"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.started_at = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 120) -> Server:
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=self.env,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            match = _LISTEN.search(line)
            if match:
                self.port = int(match.group(1))
                # Nothing else is printed on stdout; keep draining it anyway.
                threading.Thread(target=_drain, args=(self.proc.stdout,), daemon=True).start()
                return self
        self.stop()
        tail = self.log_path.read_text()[-3000:]
        raise RuntimeError(f"{self.name} did not start:\n{tail}")

    def url(self, path: str = "/ws") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def get(self, path: str, timeout: float = 5) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def wait_healthy(self, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                status, body = self.get("/healthz")
                if status == 200:
                    return json.loads(body)
            time.sleep(0.02)
        raise TimeoutError(f"{self.name} not healthy")

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss_kb(self) -> int:
        return rss_kb(self.pid)

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM by PID, then SIGKILL if it does not exit."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(Exception):
            self._log.close()
        return self.proc.returncode


def _drain(stream: Any) -> None:
    with contextlib.suppress(Exception):
        for _ in stream:
            pass


def daemon(
    repo: Path,
    config: Path,
    logdir: Path,
    *,
    backend: str = "memory",
    port: int = 0,
    name: str = "storywatch",
    env: dict[str, str] | None = None,
) -> Server:
    args = [
        sys.executable,
        "-m",
        "storywatch",
        "run",
        str(repo),
        "--backend",
        backend,
        "--port",
        str(port),
        "--config",
        str(config),
    ]
    return Server(name, args, logdir, env=env)


def refserver(
    logdir: Path,
    *,
    compression: bool = False,
    name: str = "reference",
    watch: Path | None = None,
    step: int = 50,
    debounce: int = 500,
) -> Server:
    args = [sys.executable, str(BENCH / "_common.py"), "refserver"]
    if compression:
        args.append("--compression")
    if watch is not None:
        args += ["--watch", str(watch), "--step", str(step), "--debounce", str(debounce)]
    return Server(name, args, logdir)


def finish(result: dict[str, Any], tmp: Path, *, keep: bool) -> None:
    """Print the result line and remove the temp folder, unless it is to be kept (``--keep``,
    or a profile's collapsed stacks live there)."""
    result["tmp"] = str(tmp)
    if not keep:
        shutil.rmtree(tmp, ignore_errors=True)
    emit(rnd(result))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stopper:
    """Stops every process registered with it, by PID, in reverse order (also on errors)."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def add(self, item: Any) -> Any:
        self.items.append(item)
        return item

    def __enter__(self) -> Stopper:
        return self

    def __exit__(self, *exc: Any) -> None:
        for item in reversed(self.items):
            with contextlib.suppress(Exception):
                item.stop()
        self.items.clear()


# -- the Node load client ----------------------------------------------------------------


def ensure_node_client() -> None:
    if (NODE_DIR / "node_modules" / "ws" / "package.json").exists():
        return
    if shutil.which("npm") is None:
        raise SystemExit("bench needs Node.js and npm for its load client (bench/node)")
    progress("installing the Node load client (npm ci in bench/node)")
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=NODE_DIR, check=True)


class Driver:
    """One Node process holding many WebSocket clients; JSON commands over stdin/stdout."""

    def __init__(self, name: str, logdir: Path) -> None:
        ensure_node_client()
        self.name = name
        self._log = open(logdir / f"driver-{name}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["node", "--max-old-space-size=8192", str(NODE_DIR / "driver.mjs")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            cwd=NODE_DIR,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"driver {self.name} exited (see driver-{self.name}.log)")
        reply: dict[str, Any] = json.loads(line)
        if not reply.pop("ok"):
            raise RuntimeError(f"driver {self.name}: {cmd}: {reply.get('error')}")
        return reply

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def subscribe_clients(
        self, url: str, tokens: Sequence[str], n: int, *, concurrency: int = 50, **extra: Any
    ) -> dict[str, Any]:
        """Open ``n`` clients on ``url`` (tokens in turn), each subscribed with ``{}``."""
        return self.call(
            "connect",
            url=url,
            tokens=list(tokens),
            n=n,
            concurrency=concurrency,
            subscribe=True,
            filter={},
            protocol="storywatch.v1",
            **extra,
        )

    def clock_offset_ms(self, samples: int = 21) -> float:
        """Driver wall clock minus this process's time.time(), in ms (median)."""
        offsets = []
        for _ in range(samples):
            t0 = time.time() * 1000
            now = self.call("now")["now"]
            t1 = time.time() * 1000
            offsets.append((now - (t0 + t1) / 2, t1 - t0))
        offsets.sort(key=lambda o: o[1])  # trust the quickest round trips
        return float(median(o for o, _ in offsets[: max(3, samples // 3)]) or 0.0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.call("close")
            with contextlib.suppress(Exception):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(Exception):
            self._log.close()


# -- profiles ----------------------------------------------------------------------------


class Profiler:
    """``py-spy record`` attached to a PID (non-blocking sampling), collapsed stacks."""

    def __init__(self, pid: int, out: Path, *, rate: int = 250, idle: bool = False) -> None:
        self.out = out
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        args = [
            exe,
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "-o",
            str(out),
            "--rate",
            str(rate),
            "--nonblocking",
        ]
        if idle:
            args.append("--idle")
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        time.sleep(0.5)  # let it attach

    def stop(self) -> dict[str, Any]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return summarize_collapsed(self.out)


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _frame_name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", "src/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match.group('func')} ({path})"


_LOOP_FRAMES = (
    "runpy",
    "run_until_complete",
    "run_forever",
    "_run_once",
    "Runner.run",
    "run (asyncio/runners.py)",
    "<module>",
    "main (storywatch/cli.py)",
    "Handle._run",
    "_bootstrap",
    "Thread.run",
    "_worker (concurrent",
)


def _boring(name: str) -> bool:
    return any(marker in name for marker in _LOOP_FRAMES)


def summarize_collapsed(path: Path, top: int = 15) -> dict[str, Any]:
    """Top functions by self and by inclusive samples from py-spy's raw (collapsed) output."""
    if not path.exists():
        return {"error": "no profile written"}
    self_counts: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [
            _frame_name(f)
            for f in stack.split(";")
            if f and not f.startswith("process ") and not f.startswith("thread ")
        ]
        if not frames:
            continue
        total += count
        self_counts[frames[-1]] += count
        for name in set(frames):
            incl_counts[name] += count

    def share(counter: collections.Counter[str]) -> list[list[Any]]:
        rows = [(name, n) for name, n in counter.most_common() if not _boring(name)]
        return [[name, round(100 * n / max(1, total), 1)] for name, n in rows[:top]]

    return {
        "samples": total,
        "file": str(path),
        "self_pct": share(self_counts),
        "inclusive_pct": share(incl_counts),
    }


# -- corpora -----------------------------------------------------------------------------


def fixture_stories() -> list[tuple[str, str]]:
    """(relative path, text) of every fixture file that is a story."""
    from storywatch.story import Story, parse_story

    out = []
    for path in sorted(FIXTURES.rglob("*.md")):
        raw = path.read_bytes()
        if isinstance(parse_story(path.name, raw), Story):
            out.append((path.relative_to(FIXTURES).as_posix(), raw.decode()))
    return out


_ID_LINE = re.compile(r"^id:[ \t]*(.*?)[ \t\r]*$", re.MULTILINE)
_STATUS_LINE = re.compile(r"^status:[ \t]*(.*?)[ \t\r]*$", re.MULTILINE)


def generate_corpus(dest: Path, count: int, *, per_folder: int = 250) -> dict[str, str]:
    """``count`` story files made from the fixtures by varying their ids; id → status."""
    stories = fixture_stories()
    dest.mkdir(parents=True, exist_ok=True)
    states: dict[str, str] = {}
    for i in range(count):
        rel, text = stories[i % len(stories)]
        match = _ID_LINE.search(text)
        assert match is not None, rel
        base = match.group(1).strip("'\"")
        new_id = f"{base}-g{i:05d}"
        text = text[: match.start()] + f'id: "{new_id}"' + text[match.end() :]
        status = _STATUS_LINE.search(text)
        states[new_id] = status.group(1).strip("'\"") if status else ""
        folder = dest / f"part{i // per_folder:03d}" / Path(rel).parent
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{Path(rel).stem}-g{i:05d}.md").write_text(text)
    return states


def set_front_matter(text: str, **fields: Any) -> str:
    """Replace (or add) top-level scalar keys in a story's front-matter."""
    head, sep, rest = text.partition("\n---")
    for key, value in fields.items():
        line = f"{key}: {json.dumps(value)}"
        pattern = re.compile(rf"^{re.escape(key)}:[^\n]*$", re.MULTILINE)
        head, n = pattern.subn(line, head, count=1)
        if not n:
            head += "\n" + line
    return head + sep + rest


def story_template() -> dict[str, Any]:
    """A realistic story (front-matter as JSON) for ``publish``: the fixture UI-005."""
    from storywatch.story import Story, parse_story

    path = FIXTURES / "ui" / "UI-005-dark-mode.md"
    story = parse_story("ui/UI-005-dark-mode.md", path.read_bytes())
    assert isinstance(story, Story)
    fields = dict(story.fields)
    fields.pop("id")
    fields.pop("path")
    return fields


def temp_root(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"storywatch-{prefix}-"))


def copy_fixtures(dest: Path) -> Path:
    shutil.copytree(FIXTURES, dest)
    return dest


# == baselines (run as subprocesses) =====================================================


def _refserver_main(args: argparse.Namespace) -> None:
    """A minimal fan-out server: no auth, no filters, no log, no limits.

    It speaks just enough of the protocol for the load client (welcome, subscribed,
    published) and turns each ``publish`` item into an event frame encoded once and
    pushed to every subscriber with ``websockets.broadcast``.

    With ``--watch DIR`` it is also the least a watching server could be: a bare
    ``awatch`` loop (``--step``/``--debounce``) whose every changed ``.md`` file is read,
    its front-matter parsed (CSafeLoader) and broadcast the same way — the floor of
    "file saved → event at N clients" on this machine, for ``latency.py``.
    """
    from websockets.asyncio.server import broadcast, serve
    from websockets.typing import Subprotocol

    subscribers: set[Any] = set()
    last: dict[str, dict[str, Any]] = {}
    seq = 0
    epoch = "ref00000"

    def event_for(story: dict[str, Any]) -> dict[str, Any]:
        nonlocal seq
        seq += 1
        sid = str(story["id"])
        story = {**story, "id": sid, "path": story.get("path") or sid}
        old = last.get(sid)
        last[sid] = story
        keys = dict.fromkeys([*(old or {}), *story])
        changes = {
            k: {"old": (old or {}).get(k), "new": story.get(k)}
            for k in keys
            if k != "path" and (old or {}).get(k) != story.get(k)
        }
        data: dict[str, Any] = {
            "type": "story.created" if old is None else "story.transitioned",
            "seq": seq,
            "epoch": epoch,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "story_id": sid,
            "path": story["path"],
            "story": story,
            "changes": changes,
        }
        if old is not None:
            data["from"], data["to"] = old.get("status"), story.get("status")
        data["body_changed"] = False
        data["source"] = {"kind": "publish"}
        data["subs"] = ["s1"]
        return data

    async def handler(ws: Any) -> None:
        await ws.send(
            json.dumps(
                {"type": "welcome", "session": "r", "epoch": epoch, "seq": seq, "heartbeat_s": 15}
            )
        )
        try:
            async for message in ws:
                msg = json.loads(message)
                kind = msg.get("type")
                if kind == "subscribe":
                    subscribers.add(ws)
                    await ws.send(
                        json.dumps(
                            {
                                "type": "subscribed",
                                "sub": msg.get("sub"),
                                "epoch": epoch,
                                "seq": seq,
                            }
                        )
                    )
                elif kind == "publish":
                    for item in msg.get("items", []):
                        frame = json.dumps(
                            event_for(item["story"]), ensure_ascii=False, separators=(",", ":")
                        )
                        broadcast(subscribers, frame)
                    await ws.send(
                        json.dumps(
                            {
                                "type": "published",
                                "ref": msg.get("ref"),
                                "count": len(msg.get("items", [])),
                                "seq": seq,
                            }
                        )
                    )
                elif kind == "ping":
                    await ws.send(json.dumps({"type": "pong", "nonce": msg.get("nonce")}))
        finally:
            subscribers.discard(ws)

    async def watch(stop: asyncio.Event) -> None:
        import yaml
        from watchfiles import awatch

        async for changes in awatch(
            args.watch, step=args.step, debounce=args.debounce, stop_event=stop
        ):
            for _change, path in changes:
                if not path.endswith(".md") or not os.path.isfile(path):
                    continue
                with open(path, encoding="utf-8") as handle:
                    front = _split_front(handle.read())
                story = yaml.load(front or "", Loader=yaml.CSafeLoader)
                if isinstance(story, dict) and "id" in story:
                    event = event_for(story)
                    frame = json.dumps(
                        event, ensure_ascii=False, separators=(",", ":"), default=str
                    )
                    broadcast(subscribers, frame)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        watching = asyncio.ensure_future(watch(stop)) if args.watch else None
        await asyncio.sleep(0.2 if watching else 0)  # the watches are in place
        async with serve(
            handler,
            "127.0.0.1",
            args.port,
            max_size=2**20,
            subprotocols=[Subprotocol("storywatch.v1")],
            compression="deflate" if args.compression else None,
        ) as server:
            port = server.sockets[0].getsockname()[1]
            print(f"reference: listening on http://127.0.0.1:{port}", flush=True)
            await stop.wait()
        if watching is not None:
            await watching

    asyncio.run(main())


def _awatch_main(args: argparse.Namespace) -> None:
    """A bare ``watchfiles.awatch`` loop: one line with time.time() per yielded batch."""
    from watchfiles import awatch

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        watcher = awatch(
            args.dir,
            step=args.step,
            debounce=args.debounce,
            stop_event=stop,
            rust_timeout=1000,
            yield_on_timeout=True,
        )
        first = asyncio.ensure_future(watcher.__anext__())
        await asyncio.sleep(0.2)
        print("ready", flush=True)
        try:
            changes = await first
            while True:
                if changes:
                    print(f"{time.time():.6f} {len(changes)}", flush=True)
                changes = await watcher.__anext__()
        except StopAsyncIteration:
            pass

    asyncio.run(main())


def _split_front(text: str) -> str | None:
    if not text.startswith("---"):
        return None
    end = text.find("\n---", 3)
    return None if end < 0 else text[3:end]


def raw_parse(folder: Path) -> tuple[list[Any], int]:
    """Read every *.md below ``folder`` and parse its front-matter with CSafeLoader."""
    import yaml

    loader = yaml.CSafeLoader
    out = []
    files = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.endswith(".md"):
                continue
            files += 1
            with open(os.path.join(dirpath, name), "rb") as handle:
                text = handle.read().decode("utf-8")
            front = _split_front(text)
            if front is not None:
                out.append(yaml.load(front, Loader=loader))
    return out, files


def _rawparse_main(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    parsed, files = raw_parse(Path(args.dir))
    print(
        json.dumps(
            {
                "files": files,
                "parsed": len(parsed),
                "parse_s": time.perf_counter() - t0,
                "parse_cpu_s": time.process_time() - cpu0,
            }
        ),
        flush=True,
    )
    if args.hold:
        print("holding", flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    ref = sub.add_parser("refserver")
    ref.add_argument("--port", type=int, default=0)
    ref.add_argument("--compression", action="store_true")
    ref.add_argument("--watch", help="also broadcast every .md file saved below this folder")
    ref.add_argument("--step", type=int, default=50)
    ref.add_argument("--debounce", type=int, default=500)
    aw = sub.add_parser("awatch")
    aw.add_argument("dir")
    aw.add_argument("--step", type=int, default=50)
    aw.add_argument("--debounce", type=int, default=500)
    rp = sub.add_parser("rawparse")
    rp.add_argument("dir")
    rh = sub.add_parser("rawhold")
    rh.add_argument("dir")
    args = parser.parse_args(argv)
    if args.mode == "refserver":
        _refserver_main(args)
    elif args.mode == "awatch":
        _awatch_main(args)
    else:
        if args.mode == "rawhold":
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        args.hold = args.mode == "rawhold"
        _rawparse_main(args)


if __name__ == "__main__":
    main()
