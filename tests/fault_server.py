"""A small OpenAI-compatible server on 127.0.0.1 that injects the faults a real server won't produce on demand.

It answers /v1/models, /v1/chat/completions and /v1/completions. Answers are deterministic: the sum of
the numbers in the prompt, off by one for odd seeds (so some samples are right, some wrong); a request for `n`
samples gets n choices, the i-th seeded seed + i (as vLLM seeds them). Faults
are consumed in order by completion requests (`faults`), or applied every time to prompts holding a
marker (`always`); prompts holding a marker in `slow` take that long (a long-tailed trace). It counts every
request and every answer (choice) it fully sent, by (prompt, seed), the usage it reported (`billed`), and records
each request's headers, body and span.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FaultServer:
    def __init__(self, model: str = "fake-teacher", key: str | None = None, delay: float = 0.0, hang: float = 3.0):
        self.model, self.key, self.delay, self.hang = model, key, delay, hang
        self.faults: list[str] = []  # 400 | 429 | 500 | 503 | hang | drop | badjson | empty | length | fewer
        self.always: dict[str, str] = {}  # substring of a prompt -> fault on every request for it
        self.reasoning = False  # answer with reasoning_content, as DeepSeek's API
        self.reply = None  # (prompt, seed) -> answer text, instead of the sum
        self.slow: dict[str, float] = {}  # substring of a prompt -> seconds to answer it, instead of `delay`
        self.requests = 0  # completion requests received
        self.answered: Counter = Counter()  # (prompt, seed) -> answers fully sent
        self.billed: Counter = Counter()  # prompt_tokens, completion_tokens of the usage in answers fully sent
        self.arrivals: dict = defaultdict(list)  # (prompt, seed) -> monotonic times of arrival
        self.spans: list[tuple] = []  # (prompt, seed, start, end) of every completion request, monotonic
        self.headers: list[dict] = []  # the headers of every request, GET /models included
        self.bodies: list[dict] = []  # the body of every completion request
        self.inflight = self.max_inflight = 0  # completion requests being answered now / at most at once
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def send(self, status: int, body, headers: dict | None = None):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()

            def authorized(self) -> bool:
                if server.key and self.headers.get("Authorization") != f"Bearer {server.key}":
                    self.send(401, {"error": {"message": "invalid api key"}})
                    return False
                return True

            def do_GET(self):
                with server.lock:
                    server.headers.append(dict(self.headers))
                if not self.authorized():
                    return
                if self.path.rstrip("/") == "/v1/models":
                    self.send(200, {"object": "list", "data": [{"id": server.model, "object": "model", "max_model_len": 4096}]})
                else:
                    self.send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server.lock:
                    server.headers.append(dict(self.headers))
                    server.bodies.append(body)
                    server.inflight += 1
                    server.max_inflight = max(server.max_inflight, server.inflight)
                start = time.monotonic()
                try:
                    self.complete(body)
                finally:
                    with server.lock:
                        server.inflight -= 1
                        if body.get("messages") or body.get("prompt"):
                            prompt = body["messages"][-1]["content"] if body.get("messages") else json.dumps(body["prompt"])
                            server.spans.append((prompt, body.get("seed"), start, time.monotonic()))

            def complete(self, body: dict):
                if not self.authorized():
                    return
                chat = self.path.endswith("/chat/completions")
                if not chat and not self.path.endswith("/completions"):
                    return self.send(404, {"error": {"message": "not found"}})
                if body.get("model") != server.model:
                    return self.send(404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}})
                prompt = body["messages"][-1]["content"] if chat else json.dumps(body["prompt"])
                key = (prompt, body.get("seed"))
                with server.lock:
                    server.requests += 1
                    server.arrivals[key].append(time.monotonic())
                    fault = next((f for marker, f in server.always.items() if marker in prompt), None)
                    if fault is None and server.faults:
                        fault = server.faults.pop(0)
                if fault == "400":
                    return self.send(400, {"error": {"message": "injected: this prompt is refused"}})
                if fault in ("429", "500", "503"):
                    return self.send(int(fault), {"error": {"message": f"injected {fault}"}},
                                     {"Retry-After": "1"} if fault == "429" else None)
                if fault == "hang":
                    time.sleep(server.hang)
                    self.close_connection = True
                    return
                if fault == "drop":
                    self.close_connection = True
                    return  # no status line: the client sees the connection close
                if fault == "badjson":
                    return self.send(200, b'{"choices": [{"message": ')
                if fault == "empty":
                    return self.send(200, {"id": "x", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 0}})
                time.sleep(next((s for marker, s in server.slow.items() if marker in prompt), server.delay))
                numbers = [int(n) for n in re.findall(r"\d+", prompt)]
                n = body.get("n") or 1
                seeds = [(body.get("seed") or 0) + i for i in range(n - 1 if fault == "fewer" else n)]
                choices, completion = [], 0
                for i, seed in enumerate(seeds):
                    answer = sum(numbers) + seed % 2
                    text = server.reply(prompt, seed) if server.reply else f"Adding them up, the answer is {answer}."
                    message = {"role": "assistant", "content": text}
                    if server.reasoning:
                        message = {"role": "assistant", "content": f"The answer is {answer}.",
                                   "reasoning_content": f"I add {' and '.join(map(str, numbers))}."}
                    choice = ({"index": i, "message": message} if chat else {"index": i, "text": text})
                    choice["finish_reason"] = "length" if fault == "length" else "stop"
                    choices.append(choice)
                    completion += len(text.split())
                usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": completion,
                         "total_tokens": len(prompt.split()) + completion}
                self.send(200, {"id": "x", "object": "chat.completion" if chat else "text_completion",
                                "choices": choices, "usage": usage})
                with server.lock:
                    for seed in seeds:
                        server.answered[(prompt, seed)] += 1
                    server.billed.update(prompt_tokens=usage["prompt_tokens"], completion_tokens=completion)

        return Handler
