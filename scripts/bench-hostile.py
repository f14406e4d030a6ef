#!/usr/bin/env python3
"""Hostile-load benchmark for a conversa release binary (the "hostile" rows of BENCHMARKS.md).

    python3 scripts/bench-hostile.py --bin target/release/conversa [--scenario flood|idle|labels|all] [--quick]

Python 3 standard library only. Each scenario starts its own engine (the binary given with
--bin) on a free loopback port, with a fresh DATA_DIR (embedded store, no Redis), DEBOUNCE_MS=0,
WEBHOOK_SECRET=s3cret and N8N_WEBHOOK_URL pointing at a fake n8n served by this script, and
stops it at the end. The engine's soft open-file limit is lowered to 1024 (the hard limit is
kept), as on a default deployment. Only 127.0.0.1 is ever contacted; every loop is bounded in
count and in time.

Scenarios (one JSON line each on stdout, then a short table):

flood   One contact floods, the others should not notice. The fake n8n is slow (answers each
        dispatch after 1.5 s). Contact 777 sends 120 webhooks of 200 KiB of text each
        (4 at a time) while 20 other contacts (1000..1019) each send one small message every
        200 ms. Measures: webhook latency (p50/p99/max) for the other contacts and for the
        attacker, non-2xx answers, the bytes n8n received, the size of the attacker's
        conversation (`GET /conversations/777`) and of DATA_DIR on disk. Why: one chatty or
        malicious contact must not slow everyone down, nor make the dispatches, the stored
        snapshot or the conversation view grow without bound.

idle    Connection exhaustion. 2,000 TCP connections that send nothing plus 200 "slowloris"
        connections (a webhook request line and Host header, then one header byte every 2 s)
        are held for ~15 s while `GET /health` is probed every 250 ms on a fresh connection
        (3 s timeout each). Measures: /health latency p50/p99/max and failures while held, how
        many of the idle connections the server had closed by the end, the server's open fds,
        and how long /health takes to recover once they are released. Why: with a 1024 fd limit
        and no header-read timeout, a few thousand silent sockets can make a service deaf.

labels  Metric-cardinality attack. 20 accepted webhooks, each with up to 10,000 distinct
        unknown keys `foo{i}[add][0][id]=1` next to one valid message item. Measures: series
        lines (non-comment lines) and bytes of `GET /metrics` before and after. Why: an
        unknown key that becomes a metric label value grows /metrics (and the Prometheus
        behind it) without bound. The webhook body is limited (MAX_BODY_BYTES, 256 KiB by
        default) and so is the number of pairs per body: a refused body (413/400) makes the
        script retry with fewer keys, and the figures say how many keys were actually sent.

Latencies are measured by this script's asyncio client, one fresh connection per request
(connect included), from the moment the request is started. The fake n8n runs on its own
thread and event loop so that it does not delay the client.

`--quick` shrinks every scenario (smoke test, ~30 s in all); its figures are not the benchmark.
`--self-test` only checks the fake n8n on its own (no binary needed).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import http.client
import json
import os
import random
import resource
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

HOST = "127.0.0.1"
SECRET = "s3cret"
CALLBACK_TOKEN = "cb-token-0123456789"
WEBHOOK_PATH = f"/webhooks/kommo?token={SECRET}"
N8N_PATH = "/webhook/conversa"
ENGINE_FD_SOFT_LIMIT = 1024


def log(msg: str) -> None:
    print(f"[bench-hostile {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def stats_ms(values: list[float]) -> dict:
    """count, p50, p99, max (nearest rank) of latencies in ms."""
    v = sorted(values)
    if not v:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}

    def rank(p: float) -> float:
        return v[min(len(v) - 1, max(0, int(round(p / 100.0 * len(v) + 0.5)) - 1))]

    return {
        "count": len(v),
        "p50_ms": round(rank(50), 2),
        "p99_ms": round(rank(99), 2),
        "max_ms": round(v[-1], 2),
    }


def dir_size(path: str) -> dict:
    """Sum of file sizes (apparent) and of allocated blocks under `path`."""
    size = allocated = files = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            files += 1
            size += st.st_size
            allocated += st.st_blocks * 512
    return {"bytes": size, "allocated_bytes": allocated, "files": files}


# --------------------------------------------------------------------------------------------
# A minimal asyncio HTTP/1.1 client: one fresh connection per request, `Connection: close`.
# --------------------------------------------------------------------------------------------


class Answer:
    def __init__(self, status: int, headers: dict, body: bytes, ms: float):
        self.status, self.headers, self.body, self.ms = status, headers, body, ms

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return status, headers


async def _read_body(reader: asyncio.StreamReader, headers: dict, max_bytes: int) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out = bytearray()
        while len(out) <= max_bytes:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # (no trailers expected)
                break
            out += await reader.readexactly(size)
            await reader.readexactly(2)
        return bytes(out)
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    return await reader.read(max_bytes)  # until EOF (Connection: close)


async def request(port: int, method: str, path: str, body: bytes = b"",
                  content_type: str | None = None, timeout: float = 10.0) -> Answer:
    """One request on a fresh connection; raises on timeout or connection error."""
    start = time.perf_counter()

    async def go() -> Answer:
        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
        try:
            head = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}", "Connection: close"]
            if body or method == "POST":
                head.append(f"Content-Length: {len(body)}")
            if content_type:
                head.append(f"Content-Type: {content_type}")
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
            await writer.drain()
            status, headers = await _read_head(reader)
            data = await _read_body(reader, headers, 64 << 20)
            return Answer(status, headers, data, (time.perf_counter() - start) * 1000.0)
        finally:
            writer.close()

    return await asyncio.wait_for(go(), timeout)


# --------------------------------------------------------------------------------------------
# The fake n8n: its own thread and event loop; answers POST /webhook/conversa after `delay`.
# --------------------------------------------------------------------------------------------


class FakeN8n:
    def __init__(self, delay: float = 1.5, attacker: int | None = None):
        self.delay, self.attacker = delay, attacker
        self.port = 0
        self.requests = 0
        self.body_bytes = 0
        self.attacker_requests = 0
        self.attacker_body_bytes = 0
        self.max_body_bytes = 0
        self.max_messages = 0
        self.other_status = 0  # requests to another path or method (answered 404)
        self.in_flight = 0
        self.last_request_at = 0.0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def start(self) -> "FakeN8n":
        self._thread = threading.Thread(target=self._run, name="fake-n8n", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake n8n did not start")
        return self

    def stop(self) -> None:
        if self._loop and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(10)

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "requests": self.requests,
                "body_bytes": self.body_bytes,
                "attacker_requests": self.attacker_requests,
                "attacker_body_bytes": self.attacker_body_bytes,
                "max_body_bytes": self.max_body_bytes,
                "max_messages_in_one_dispatch": self.max_messages,
                "in_flight": self.in_flight,
                "other_requests": self.other_status,
            }

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._conn, HOST, 0, limit=1 << 20))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(10_000):  # requests per connection (keep-alive), bounded
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target = lines[0].split(" ")[:2]
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await _read_body(reader, headers, 256 << 20) if (
                    "content-length" in headers or "transfer-encoding" in headers) else b""
                if method == "POST" and target.split("?")[0] == N8N_PATH:
                    self._count(body)
                    with self._lock:
                        self.in_flight += 1
                    try:
                        await asyncio.sleep(self.delay)
                    finally:
                        with self._lock:
                            self.in_flight -= 1
                    status, payload = "200 OK", b'{"message":"Workflow was started"}'
                else:
                    with self._lock:
                        self.other_status += 1
                    status, payload = "404 Not Found", b'{"message":"not registered"}'
                close = headers.get("connection", "").lower() == "close"
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\n"
                    f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n".encode() + payload)
                await writer.drain()
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            writer.close()

    def _count(self, body: bytes) -> None:
        contact, messages = None, 0
        try:
            doc = json.loads(body)
            contact = doc.get("contact_id")
            messages = len(doc.get("messages") or [])
        except (ValueError, AttributeError):
            pass
        with self._lock:
            self.requests += 1
            self.body_bytes += len(body)
            self.max_body_bytes = max(self.max_body_bytes, len(body))
            self.max_messages = max(self.max_messages, messages)
            self.last_request_at = time.monotonic()
            if self.attacker is not None and contact == self.attacker:
                self.attacker_requests += 1
                self.attacker_body_bytes += len(body)


def self_test() -> int:
    """The fake n8n on its own: two posts on one keep-alive connection, then the counters."""
    n8n = FakeN8n(delay=0.2, attacker=777).start()
    try:
        conn = http.client.HTTPConnection(HOST, n8n.port, timeout=5)
        sizes = []
        for contact in (777, 1000):
            body = json.dumps({"contact_id": contact, "messages": [{"text": "x" * 1000}]}).encode()
            sizes.append(len(body))
            t0 = time.perf_counter()
            conn.request("POST", N8N_PATH, body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            took = time.perf_counter() - t0
            assert resp.status == 200, resp.status
            assert json.loads(data) == {"message": "Workflow was started"}, data
            assert took >= 0.19, took
        conn.request("GET", "/other")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 404
        conn.close()
        snap = n8n.snapshot()
        assert snap["requests"] == 2 and snap["body_bytes"] == sum(sizes), snap
        assert snap["attacker_requests"] == 1 and snap["attacker_body_bytes"] == sizes[0], snap
        assert snap["max_messages_in_one_dispatch"] == 1 and snap["other_requests"] == 1, snap
        print(json.dumps({"self_test": "ok", "fake_n8n": snap}))
        return 0
    finally:
        n8n.stop()


# --------------------------------------------------------------------------------------------
# The engine under test.
# --------------------------------------------------------------------------------------------


def _lower_nofile() -> None:  # runs in the child, before exec
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = ENGINE_FD_SOFT_LIMIT if hard == resource.RLIM_INFINITY else min(ENGINE_FD_SOFT_LIMIT, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class Engine:
    def __init__(self, binary: str, n8n_port: int, keep: bool):
        self.binary, self.n8n_port, self.keep = binary, n8n_port, keep
        self.work = tempfile.mkdtemp(prefix="bench-hostile-")
        self.data_dir = os.path.join(self.work, "data")
        self.log_path = os.path.join(self.work, "engine.log")
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.exit_code: int | None = None

    def start(self, deadline_s: float = 30.0) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("API_KEY", "REDIS_URL")}
        env.update({
            "HOST": HOST,
            "PORT": str(self.port),
            "DATA_DIR": self.data_dir,
            "LOG_FORMAT": "json",
            "RUST_LOG": "warn",
            "WEBHOOK_SECRET": SECRET,
            "DEBOUNCE_MS": "0",
            "N8N_WEBHOOK_URL": f"http://{HOST}:{self.n8n_port}{N8N_PATH}",
            "PUBLIC_URL": f"http://{HOST}:{self.port}",
            "N8N_CALLBACK_TOKEN": CALLBACK_TOKEN,
        })
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([self.binary], env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     preexec_fn=_lower_nofile, cwd=self.work)
        end = time.monotonic() + deadline_s
        last = "no answer"
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"engine exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=1)
                conn.request("GET", "/health")
                resp = conn.getresponse()
                resp.read()
                conn.close()
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
            except OSError as e:
                last = str(e)
            time.sleep(0.05)
        raise RuntimeError(f"engine not healthy after {deadline_s}s ({last}): {self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def open_fds(self) -> int | None:
        try:
            return len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        except (OSError, AttributeError):
            return None

    def log_tail(self, n: int = 15) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode("utf-8", "replace")
        except OSError:
            return ""

    def log_summary(self) -> dict:
        """Counts of WARN/ERROR lines and of 'too many open files' in the engine's log."""
        warn = error = emfile = lines = 0
        try:
            with open(self.log_path, "rb") as f:
                for raw in f:
                    lines += 1
                    low = raw.lower()
                    if b'"level":"warn"' in low:
                        warn += 1
                    if b'"level":"error"' in low:
                        error += 1
                    if b"too many open files" in low or b"os error 24" in low:
                        emfile += 1
        except OSError:
            pass
        return {"lines": lines, "warn": warn, "error": error, "too_many_open_files": emfile}

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(8)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            self.exit_code = self.proc.returncode
            self._log.close()
        if self.keep:
            log(f"kept {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def message_pairs(contact: int, text: str, msg_id: str | None = None) -> list[tuple[str, str]]:
    p = "message[add][0]"
    return [
        (f"{p}[id]", msg_id or str(uuid.uuid4())),
        (f"{p}[contact_id]", str(contact)),
        (f"{p}[talk_id]", "1"),
        (f"{p}[entity_id]", str(500_000 + contact)),
        (f"{p}[entity_type]", "lead"),
        (f"{p}[text]", text),
        (f"{p}[type]", "incoming"),
        (f"{p}[created_at]", str(int(time.time()))),
    ]


FORM = "application/x-www-form-urlencoded"


class Tally:
    """Latencies of answered requests, plus what did not go well."""

    def __init__(self):
        self.ms: list[float] = []
        self.status: dict[str, int] = {}
        self.non_2xx = 0
        self.not_ok = 0  # 2xx without "ok": true
        self.errors: dict[str, int] = {}

    def add(self, answer: Answer | None, error: str | None = None, check_ok: bool = True):
        if answer is None:
            self.errors[error or "error"] = self.errors.get(error or "error", 0) + 1
            return
        self.ms.append(answer.ms)
        self.status[str(answer.status)] = self.status.get(str(answer.status), 0) + 1
        if not 200 <= answer.status < 300:
            self.non_2xx += 1
        elif check_ok and not (isinstance(answer.json(), dict) and answer.json().get("ok") is True):
            self.not_ok += 1

    def report(self) -> dict:
        return {**stats_ms(self.ms), "status": self.status, "non_2xx": self.non_2xx,
                "2xx_without_ok": self.not_ok, "errors": self.errors,
                "failed": self.non_2xx + sum(self.errors.values())}


async def timed(tally: Tally, coro, check_ok: bool = True) -> Answer | None:
    try:
        answer = await coro
    except asyncio.TimeoutError:
        tally.add(None, "timeout")
        return None
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
        tally.add(None, type(e).__name__)
        return None
    tally.add(answer, check_ok=check_ok)
    return answer


# --------------------------------------------------------------------------------------------
# Scenario 1: one contact floods with 200 KiB messages behind a slow n8n.
# --------------------------------------------------------------------------------------------


async def flood(binary: str, quick: bool, keep: bool) -> dict:
    attacker, others = 777, list(range(1000, 1020))
    n_attack = 30 if quick else 120
    attack_conc = 4
    text_bytes = 200 * 1024
    other_every = 0.2
    attack_deadline = 12.0 if quick else 40.0  # the load phase; then drain, then measure
    drain_max = 4.0 if quick else 8.0
    req_timeout = 15.0  # the engine's own REQUEST_TIMEOUT_MS is 10 s
    warmup = 2.0  # the other contacts alone first: their latency without the flood

    n8n = FakeN8n(delay=1.5, attacker=attacker).start()
    engine = Engine(binary, n8n.port, keep)
    try:
        engine.start()
        # Texts: distinct slices of a random alphanumeric pool (urlencode leaves them as they are).
        rng = random.Random(777)
        pool = "".join(rng.choices(string.ascii_letters + string.digits, k=1 << 20))
        span = len(pool) - text_bytes

        def attack_body(i: int) -> bytes:
            prefix = f"flood-{i:04d}-"
            off = (i * 7919) % span
            text = prefix + pool[off:off + text_bytes - len(prefix)]
            return urllib.parse.urlencode(message_pairs(attacker, text)).encode()

        attack_tally, other_tally, baseline_tally = Tally(), Tally(), Tally()
        attack_started = asyncio.Event()
        attack_done = asyncio.Event()
        t0 = time.monotonic()
        stop_at = t0 + attack_deadline
        next_attack = iter(range(n_attack))
        attack_sent = 0

        async def attack_worker():
            nonlocal attack_sent
            for i in next_attack:
                if time.monotonic() >= stop_at:
                    return
                attack_sent += 1
                await timed(attack_tally, request(engine.port, "POST", WEBHOOK_PATH,
                                                  attack_body(i), FORM, req_timeout))

        async def other_contact(contact: int, start_offset: float):
            k = 0
            tick = t0 + start_offset
            while not attack_done.is_set() and time.monotonic() < stop_at and k < 10_000:
                await asyncio.sleep(max(0.0, tick - time.monotonic()))
                if attack_done.is_set():
                    return
                body = urllib.parse.urlencode(
                    message_pairs(contact, f"oi {contact} #{k}")).encode()
                tally = other_tally if attack_started.is_set() else baseline_tally
                await timed(tally, request(engine.port, "POST", WEBHOOK_PATH, body, FORM,
                                           req_timeout))
                k += 1
                tick = max(tick + other_every, time.monotonic())  # a late request does not pile up

        others_tasks = [asyncio.create_task(other_contact(c, i * other_every / len(others)))
                        for i, c in enumerate(others)]
        # The other contacts alone for `warmup` s (their baseline), then the flood.
        await asyncio.sleep(warmup)
        attack_started.set()
        await asyncio.gather(*(attack_worker() for _ in range(attack_conc)))
        attack_secs = time.monotonic() - t0 - warmup
        # Keep the others running 2 s more (the engine still digests the flood), then stop.
        await asyncio.sleep(min(2.0, max(0.0, stop_at - time.monotonic())))
        attack_done.set()
        await asyncio.gather(*others_tasks)
        load_secs = time.monotonic() - t0

        # Drain: until n8n has had nothing in flight for 2 s, at most drain_max.
        drain_end = time.monotonic() + drain_max
        while time.monotonic() < drain_end:
            s = n8n.snapshot()
            if s["in_flight"] == 0 and time.monotonic() - n8n.last_request_at > 2.0:
                break
            await asyncio.sleep(0.2)

        conv = await request(engine.port, "GET", f"/conversations/{attacker}", timeout=15)
        conv_other = await request(engine.port, "GET", f"/conversations/{others[0]}", timeout=15)
        conv_doc = conv.json() or {}
        result = {
            "scenario": "flood",
            "quick": quick,
            "attacker": {"contact": attacker, "webhooks_planned": n_attack,
                         "webhooks_sent": attack_sent, "text_bytes": text_bytes,
                         "concurrency": attack_conc, "seconds": round(attack_secs, 2),
                         **attack_tally.report()},
            "others": {"contacts": len(others), "every_ms": int(other_every * 1000),
                       **other_tally.report()},
            "others_before_flood": baseline_tally.report(),
            "load_seconds": round(load_secs, 2),
            "n8n": {"delay_s": n8n.delay, **n8n.snapshot()},
            "attacker_conversation": {"status": conv.status, "json_bytes": len(conv.body),
                                      "timeline_entries": len(conv_doc.get("timeline") or [])
                                      if isinstance(conv_doc, dict) else None},
            "other_conversation_json_bytes": len(conv_other.body),
            "data_dir": dir_size(engine.data_dir),
            "engine_alive_at_end": engine.alive(),
            "engine_log": engine.log_summary(),
        }
        return result
    finally:
        engine.stop()
        n8n.stop()


# --------------------------------------------------------------------------------------------
# Scenario 2: 2,000 idle connections + 200 slowloris, /health latency meanwhile.
# --------------------------------------------------------------------------------------------


async def _connect_all(loop, n: int, port: int, timeout: float) -> tuple[list, dict]:
    """n non-blocking connects at once; returns (connected, still trying or failed)."""
    socks, outcome = [], {"connected": 0, "timeout": 0, "error": 0, "errors": {}}

    async def one(s: socket.socket):
        try:
            await asyncio.wait_for(loop.sock_connect(s, (HOST, port)), timeout)
            outcome["connected"] += 1
            return True
        except asyncio.TimeoutError:
            outcome["timeout"] += 1
        except OSError as e:
            outcome["error"] += 1
            name = errno.errorcode.get(e.errno, str(e.errno))
            outcome["errors"][name] = outcome["errors"].get(name, 0) + 1
        return False

    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        socks.append(s)
    ok = await asyncio.gather(*(one(s) for s in socks))
    connected = [s for s, good in zip(socks, ok) if good]
    others = [s for s, good in zip(socks, ok) if not good]
    return connected, others, outcome


def _peer_state(s: socket.socket) -> str:
    """'open' (nothing to read), 'closed' (EOF or error) or 'data' (the server wrote something)."""
    try:
        data = s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return "open"
    except OSError:
        return "closed"
    return "closed" if data == b"" else "data"


async def idle(binary: str, quick: bool, keep: bool) -> dict:
    n_idle = 500 if quick else 2000
    n_slow = 50 if quick else 200
    hold = 6.0 if quick else 15.0
    probe_every, probe_timeout = 0.25, 3.0
    connect_timeout = 8.0

    n8n = FakeN8n(delay=0.0).start()
    engine = Engine(binary, n8n.port, keep)
    loop = asyncio.get_running_loop()
    idle_socks: list[socket.socket] = []
    slow_socks: list[socket.socket] = []
    pending: list[socket.socket] = []  # connects that did not complete: held, closed at the end
    try:
        engine.start()
        baseline = Tally()
        for _ in range(10):
            await timed(baseline, request(engine.port, "GET", "/health", timeout=probe_timeout),
                        check_ok=False)
        fds_before = engine.open_fds()

        t_open = time.monotonic()
        # The slowloris connections first, so they are measured even when the idle ones
        # exhaust what the server can hold.
        slow_socks, slow_pending, slow_connect = \
            await _connect_all(loop, n_slow, engine.port, connect_timeout)
        idle_socks, idle_pending, idle_connect = \
            await _connect_all(loop, n_idle, engine.port, connect_timeout)
        pending = idle_pending + slow_pending
        open_secs = time.monotonic() - t_open
        slow_errors = 0
        for s in slow_socks:
            try:
                s.send(f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: x\r\n".encode())
            except OSError:
                slow_errors += 1
        fds_held = engine.open_fds()

        health = Tally()
        hold_end = time.monotonic() + hold
        trickle = b"X-Slow: " + b"a" * 64

        async def slowloris():
            i = 0
            while time.monotonic() < hold_end and i < len(trickle):
                await asyncio.sleep(min(2.0, max(0.0, hold_end - time.monotonic())))
                if time.monotonic() >= hold_end:
                    break
                nonlocal slow_errors
                for s in slow_socks:
                    try:
                        s.send(trickle[i:i + 1])
                    except BlockingIOError:
                        pass
                    except OSError:
                        slow_errors += 1
                i += 1

        probes = []
        trickler = asyncio.create_task(slowloris())
        n_probes = int(hold / probe_every)
        start = time.monotonic()
        for k in range(n_probes):
            await asyncio.sleep(max(0.0, start + k * probe_every - time.monotonic()))
            probes.append(asyncio.create_task(timed(
                health, request(engine.port, "GET", "/health", timeout=probe_timeout),
                check_ok=False)))
        await asyncio.gather(*probes)
        await trickler
        fds_end = engine.open_fds()

        def states(socks):
            out = {"open": 0, "closed": 0, "data": 0}
            for s in socks:
                out[_peer_state(s)] += 1
            return out

        idle_states, slow_states = states(idle_socks), states(slow_socks)

        # Release everything, then: how long until /health answers again?
        for s in idle_socks + slow_socks + pending:
            s.close()
        idle_socks, slow_socks, pending = [], [], []
        recovered_ms, t_rel = None, time.monotonic()
        for _ in range(40):  # ≤ 40 tries, ≤ ~20 s
            try:
                a = await request(engine.port, "GET", "/health", timeout=1.0)
                if a.status == 200:
                    recovered_ms = round((time.monotonic() - t_rel) * 1000.0, 1)
                    break
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
                pass
            await asyncio.sleep(0.25)

        return {
            "scenario": "idle",
            "quick": quick,
            "engine_fd_soft_limit": ENGINE_FD_SOFT_LIMIT,
            "idle_connections": {"opened": n_idle, **{k: v for k, v in idle_connect.items()},
                                 "at_end": idle_states,
                                 "closed_by_server_at_end": idle_states["closed"]},
            "slowloris": {"opened": n_slow, **slow_connect, "send_errors": slow_errors,
                          "at_end": slow_states},
            "connect_phase_seconds": round(open_secs, 2),
            "hold_seconds": hold,
            "health_baseline": baseline.report(),
            "health_while_held": {"probes": n_probes, "timeout_s": probe_timeout,
                                  **health.report()},
            "health_recovered_after_release_ms": recovered_ms,
            "engine_open_fds": {"before": fds_before, "held": fds_held, "end": fds_end},
            "engine_alive_at_end": engine.alive(),
            "engine_log": engine.log_summary(),
        }
    finally:
        for s in idle_socks + slow_socks + pending:
            s.close()
        engine.stop()
        n8n.stop()


# --------------------------------------------------------------------------------------------
# Scenario 3: unknown keys as metric labels.
# --------------------------------------------------------------------------------------------


def metrics_figures(body: bytes) -> dict:
    lines = body.decode("utf-8", "replace").splitlines()
    series = [l for l in lines if l.strip() and not l.startswith("#")]
    unknown = sum(1 for l in series if 'event="unknown:' in l)
    return {"bytes": len(body), "series_lines": len(series), "unknown_event_series": unknown}


async def labels(binary: str, quick: bool, keep: bool) -> dict:
    n_hooks = 4 if quick else 20
    keys_wanted = 10_000
    n8n = FakeN8n(delay=0.0).start()
    engine = Engine(binary, n8n.port, keep)
    try:
        engine.start()
        before = await request(engine.port, "GET", "/metrics", timeout=15)
        fig_before = metrics_figures(before.body)

        counter = 0  # keys are distinct across all bodies

        def body_with(n_keys: int) -> bytes:
            pairs = [(f"foo{counter + i}[add][0][id]", "1") for i in range(n_keys)]
            pairs += message_pairs(2000, "hello")
            # Brackets left as they are (valid form encoding): ~22 bytes a key instead of ~35.
            return urllib.parse.urlencode(pairs, safe="[]").encode()

        tally = Tally()
        keys_per_body = keys_wanted
        refusals = []
        keys_sent = accepted = 0
        unknown_in_answers = 0
        answer_bytes = []
        for _ in range(n_hooks):
            for _attempt in range(8):  # shrink on refusal, bounded
                body = body_with(keys_per_body)
                a = await timed(tally, request(engine.port, "POST", WEBHOOK_PATH, body, FORM,
                                               timeout=30))
                if a is None:
                    break
                if 200 <= a.status < 300:
                    accepted += 1
                    keys_sent += keys_per_body
                    counter += keys_per_body
                    answer_bytes.append(len(a.body))
                    doc = a.json()
                    if isinstance(doc, dict):
                        unknown_in_answers += len(doc.get("unknown") or [])
                    break
                refusals.append({"status": a.status, "keys": keys_per_body,
                                 "body_bytes": len(body),
                                 "answer": a.body[:200].decode("utf-8", "replace")})
                if a.status not in (400, 413):
                    break
                keys_per_body = int(keys_per_body * 0.9) if a.status == 413 else keys_per_body - 10
                # "too many pairs (more than N)": fit exactly under N pairs.
                msg = a.body.decode("utf-8", "replace")
                if a.status == 400 and "more than " in msg:
                    try:
                        limit = int(msg.split("more than ")[1].split(")")[0])
                        keys_per_body = min(keys_per_body, limit - len(message_pairs(0, "")))
                    except (ValueError, IndexError):
                        pass
                keys_per_body = max(1, keys_per_body)

        t = time.perf_counter()
        after = await request(engine.port, "GET", "/metrics", timeout=30)
        scrape_ms = (time.perf_counter() - t) * 1000.0
        fig_after = metrics_figures(after.body)
        return {
            "scenario": "labels",
            "quick": quick,
            "webhooks_planned": n_hooks,
            "webhooks_accepted": accepted,
            "keys_requested_per_body": keys_wanted,
            "keys_per_body_sent": keys_per_body,
            "unknown_keys_sent": keys_sent,
            "unknown_keys_listed_in_answers": unknown_in_answers,
            "answer_bytes_max": max(answer_bytes) if answer_bytes else None,
            "refusals": refusals,
            "webhooks": tally.report(),
            "metrics_before": fig_before,
            "metrics_after": {**fig_after, "scrape_ms": round(scrape_ms, 1),
                              "status": after.status},
            "engine_alive_at_end": engine.alive(),
            "engine_log": engine.log_summary(),
        }
    finally:
        engine.stop()
        n8n.stop()


# --------------------------------------------------------------------------------------------


def table(results: list[dict]) -> str:
    def ms(d: dict) -> str:
        if not d or d.get("count", 0) == 0:
            return "—"
        return f"{d['p50_ms']:.1f} / {d['p99_ms']:.1f} / {d['max_ms']:.1f}"

    rows = [("scenario", "figure", "value")]
    for r in results:
        name = r["scenario"] + (" (quick)" if r.get("quick") else "")
        if "error" in r:
            rows.append((name, "error", r["error"]))
            continue
        if r["scenario"] == "flood":
            o, a = r["others"], r["attacker"]
            rows += [
                (name, "others alone p50/p99/max ms", ms(r["others_before_flood"])),
                ("", "others in flood p50/p99/max ms", ms(o)),
                ("", "others sent in flood / failed", f"{o['count'] + sum(o['errors'].values())} / {o['failed']}"),
                ("", "attacker p50/p99/max ms", ms(a)),
                ("", "attacker sent / failed", f"{a['webhooks_sent']} / {a['failed']}"),
                ("", "n8n requests / bytes", f"{r['n8n']['requests']} / {r['n8n']['body_bytes']:,}"),
                ("", "GET /conversations/777 bytes", f"{r['attacker_conversation']['json_bytes']:,}"),
                ("", "DATA_DIR bytes", f"{r['data_dir']['bytes']:,}"),
            ]
        elif r["scenario"] == "idle":
            h, i = r["health_while_held"], r["idle_connections"]
            rows += [
                (name, "/health p50/p99/max ms (held)", ms(h)),
                ("", "/health failed / probes", f"{h['failed']} / {h['probes']}"),
                ("", "idle connected / closed by server", f"{i['connected']} / {i['closed_by_server_at_end']}"),
                ("", "engine fds held / end", f"{r['engine_open_fds']['held']} / {r['engine_open_fds']['end']}"),
                ("", "/health back after release ms", str(r["health_recovered_after_release_ms"])),
            ]
        elif r["scenario"] == "labels":
            b, a = r["metrics_before"], r["metrics_after"]
            rows += [
                (name, "unknown keys sent (accepted bodies)", f"{r['unknown_keys_sent']:,} in {r['webhooks_accepted']}"),
                ("", "keys per body (requested → sent)", f"{r['keys_requested_per_body']} → {r['keys_per_body_sent']}"),
                ("", "bodies refused (shrunk and resent)", str(len(r["refusals"]))),
                ("", "/metrics series before → after", f"{b['series_lines']:,} → {a['series_lines']:,}"),
                ("", "/metrics bytes before → after", f"{b['bytes']:,} → {a['bytes']:,}"),
            ]
        rows.append(("", "engine alive at end", str(r.get("engine_alive_at_end"))))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", help="the conversa release binary")
    ap.add_argument("--scenario", choices=["flood", "idle", "labels", "all"], default="all")
    ap.add_argument("--quick", action="store_true", help="small and short (smoke test)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs (engine logs)")
    ap.add_argument("--self-test", action="store_true", help="check the fake n8n alone")
    args = ap.parse_args()
    if args.self_test:
        return self_test()
    if not args.bin:
        ap.error("--bin is required")
    binary = os.path.abspath(args.bin)
    if not os.access(binary, os.X_OK):
        ap.error(f"not an executable: {binary}")

    # Our side needs more than 2,200 sockets: soft limit up to the hard limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    names = ["flood", "idle", "labels"] if args.scenario == "all" else [args.scenario]
    runners = {"flood": flood, "idle": idle, "labels": labels}
    results = []
    for name in names:
        log(f"scenario {name}{' (quick)' if args.quick else ''} …")
        t = time.monotonic()
        try:
            r = asyncio.run(runners[name](binary, args.quick, args.keep))
        except Exception as e:  # report it and go on with the next scenario
            r = {"scenario": name, "quick": args.quick, "error": f"{type(e).__name__}: {e}"}
        r["wall_seconds"] = round(time.monotonic() - t, 1)
        print(json.dumps(r), flush=True)
        results.append(r)
    print()
    print(table(results))
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
