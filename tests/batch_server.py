"""A stand-in for OpenAI's batch API on 127.0.0.1: /v1/files and /v1/batches in front of an OpenAI-compatible server.

A batch runs its requests one by one through `upstream` (a FaultServer unless given), as `vllm run-batch` runs them
through its engine, so its answers are the very ones the openai backend gets from that server. It can be told to
keep a batch in progress for a number of status checks (`polls`), to fail chosen requests once (`fail`: custom_id ->
HTTP status, their lines go to the error file), to expire the next batches with only the first half of their
requests answered (`expire`), and to answer a batch's creation late (`slow_create`). It keeps the custom ids of
every batch created (`submitted`) and every status check (`checks`).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.error
import urllib.request
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from fault_server import FaultServer


class BatchServer:
    def __init__(self, upstream: FaultServer | None = None, key: str | None = None):
        self.own = upstream is None
        self.upstream = upstream or FaultServer(key=key)
        self.key = key
        self.slow_create = 0.0  # seconds POST /v1/batches takes to answer once the batch exists (past a timeout: lost)
        self.polls = 0  # status checks a batch answers "in_progress" before it runs
        self.fail: dict[str, int] = {}  # custom_id -> HTTP status of its line in the error file, once
        self.expire = 0  # the next N batches to run expire, their first half answered
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.submitted: list[list[str]] = []  # custom ids of each batch created, in order
        self.checks: list[str] = []  # batch id of each GET /v1/batches/{id}
        self.ids = itertools.count(1)
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        if self.own:
            self.upstream.__enter__()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.own:
            self.upstream.__exit__(*exc)

    @property
    def model(self) -> str:
        return self.upstream.model

    def new_file(self, data: bytes, purpose: str, name: str) -> dict:
        file_id = f"file-{next(self.ids)}"
        self.files[file_id] = data
        return {"id": file_id, "object": "file", "bytes": len(data), "purpose": purpose, "filename": name,
                "created_at": int(time.time())}

    def forward(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        """A request to the upstream server: (status, JSON answer)."""
        headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {self.key}"} if self.key else {})
        request = urllib.request.Request(self.upstream.url.removesuffix("/v1") + path, method=method, headers=headers,
                                         data=json.dumps(body).encode() if body is not None else None)
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def run(self, batch: dict) -> None:
        """Answer the batch's requests (all, or the first half of an expiring one) into its output and error files."""
        lines = [json.loads(line) for line in self.files[batch["input_file_id"]].decode().splitlines() if line.strip()]
        expire = self.expire > 0
        self.expire -= expire
        out, err = [], []
        for line in lines[: len(lines) // 2] if expire else lines:
            status = self.fail.pop(line["custom_id"], None)
            if status is None:
                status, body = self.forward("POST", line["url"], line["body"])
            else:
                body = {"error": {"message": f"injected {status}", "type": "server_error"}}
            (out if status == 200 else err).append(json.dumps({
                "id": f"batch_req_{next(self.ids)}", "custom_id": line["custom_id"], "error": None,
                "response": {"status_code": status, "request_id": f"req_{next(self.ids)}", "body": body}}))
        for name, part in (("output_file_id", out), ("error_file_id", err)):
            if part:
                batch[name] = self.new_file(("\n".join(part) + "\n").encode(), "batch_output", f"{batch['id']}.jsonl")["id"]
        batch.update(status="expired" if expire else "completed",
                     request_counts={"total": len(lines), "completed": len(out), "failed": len(err)})

    def handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def send(self, status: int, body, content_type: str = "application/json"):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def authorized(self) -> bool:
                if server.key and self.headers.get("Authorization") != f"Bearer {server.key}":
                    self.send(401, {"error": {"message": "invalid api key"}})
                    return False
                return True

            def do_GET(self):
                if not self.authorized():
                    return
                path = self.path.split("?")[0].rstrip("/")
                with server.lock:
                    if path == "/v1/models":
                        return self.send(*server.forward("GET", path))
                    if path == "/v1/batches":
                        return self.send(200, {"object": "list", "data": list(server.batches.values())[::-1]})
                    if path.startswith("/v1/batches/") and path.split("/")[-1] in server.batches:
                        batch = server.batches[path.split("/")[-1]]
                        server.checks.append(batch["id"])
                        batch["checks"] += 1
                        if batch["status"] == "in_progress" and batch["checks"] > server.polls:
                            server.run(batch)
                        return self.send(200, batch)
                    if path.startswith("/v1/files/") and path.endswith("/content") and path.split("/")[3] in server.files:
                        return self.send(200, server.files[path.split("/")[3]], "application/jsonl")
                self.send(404, {"error": {"message": f"no {path}"}})

            def do_POST(self):
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if not self.authorized():
                    return
                if self.path == "/v1/files":
                    form = BytesParser(policy=HTTP).parsebytes(
                        f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + data)
                    fields = {part.get_param("name", header="content-disposition"): part for part in form.iter_parts()}
                    if fields["purpose"].get_content().strip() != "batch" or "file" not in fields:
                        return self.send(400, {"error": {"message": "purpose must be batch, with a file"}})
                    with server.lock:
                        return self.send(200, server.new_file(fields["file"].get_payload(decode=True), "batch",
                                                              fields["file"].get_filename()))
                if self.path == "/v1/batches":
                    body = json.loads(data)
                    with server.lock:
                        lines = [json.loads(line) for line in server.files.get(body["input_file_id"], b"").splitlines()]
                        if (not lines or body.get("completion_window") != "24h" or body.get("endpoint") not in
                                ("/v1/chat/completions", "/v1/completions")
                                or any(line["url"] != body["endpoint"] or line["method"] != "POST" for line in lines)):
                            return self.send(400, {"error": {"message": "bad batch"}})
                        batch = {"id": f"batch_{next(server.ids)}", "object": "batch", "endpoint": body["endpoint"],
                                 "input_file_id": body["input_file_id"], "completion_window": "24h",
                                 "status": "in_progress", "output_file_id": None, "error_file_id": None, "checks": 0,
                                 "request_counts": {"total": len(lines), "completed": 0, "failed": 0}}
                        server.batches[batch["id"]] = batch
                        server.submitted.append([line["custom_id"] for line in lines])
                    time.sleep(server.slow_create)
                    return self.send(200, batch)
                self.send(404, {"error": {"message": f"no {self.path}"}})

        return Handler
