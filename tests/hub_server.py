"""A local stand-in for the Hugging Face Hub, for push tests (this machine cannot reach the hub).

It answers only the HTTP endpoints that huggingface_hub's and datasets' push calls use: whoami,
repo create, repo info, branch create, YAML validation of cards, preupload (text files "regular", so their
content comes inline in the commit's NDJSON; weights and Parquet "lfs", as the hub's default .gitattributes
says), the legacy LFS batch API with single-part uploads (the client's Xet path is turned off with
HF_HUB_DISABLE_XET=1: Xet storage is a separate service), commit, and the read side datasets uses to
update a dataset card (tree, paths-info, resolve). Repositories live in memory: each commit is a full snapshot of the files, branches point at
commits. `down = True` answers 503 to everything (a hub outage).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml


LFS = (".parquet", ".safetensors", ".bin", ".pt", ".gguf")  # suffixes the hub's default .gitattributes sends to LFS


class Repo:
    def __init__(self, repo_type: str, repo_id: str, private: bool):
        self.type, self.id, self.private = repo_type, repo_id, private
        self.snapshots = {"0" * 40: {}}  # commit sha -> {path: bytes}
        self.branches = {"main": "0" * 40}
        self.commits: list[dict] = []  # what each commit carried: branch, message, added and deleted paths

    def resolve(self, revision: str) -> str | None:
        revision = urllib.parse.unquote(revision)
        return self.branches.get(revision) or (revision if revision in self.snapshots else None)

    def files(self, revision: str = "main") -> dict[str, bytes]:
        return self.snapshots[self.resolve(revision)]


class StandInHub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, token: str):
        super().__init__(("127.0.0.1", 0), Handler)
        self.token, self.repos, self.down = token, {}, False
        self.lfs: dict[str, bytes] = {}  # sha256 -> content of every LFS upload
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.auth_headers: list[str] = []  # every Authorization header seen
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[repo_type, repo_id]

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def entries(files: dict[str, bytes], base: str, recursive: bool) -> list[dict]:
    """Tree entries under `base`: files, and the folders on the way (immediate children unless recursive)."""
    prefix = f"{base.strip('/')}/" if base.strip("/") else ""
    out, folders = [], set()
    for path, content in sorted(files.items()):
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix):].split("/")
        for i in range(1, len(parts)):
            folders.add(prefix + "/".join(parts[:i]))
        if recursive or len(parts) == 1:
            out.append(file_entry(path, content))
    depth = prefix.count("/")
    out += [{"type": "directory", "path": f, "oid": hashlib.sha1(f.encode()).hexdigest()}
            for f in sorted(folders) if recursive or f.count("/") == depth]
    return out


def file_entry(path: str, content: bytes) -> dict:
    return {"type": "file", "path": path, "size": len(content), "oid": hashlib.sha1(content).hexdigest()}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: StandInHub

    def log_message(self, *args):  # quiet
        pass

    def reply(self, status: int, body=b"", headers: dict | None = None, head: bool = False) -> None:
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def error(self, status: int, code: str, message: str) -> None:
        self.reply(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self):
        self.route("GET")

    def do_HEAD(self):
        self.route("HEAD")

    def do_POST(self):
        self.route("POST")

    def do_PUT(self):
        self.route("PUT")

    def route(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        path, query = url.path, urllib.parse.parse_qs(url.query)
        hub = self.server
        with hub.lock:
            hub.requests.append((method, path))
            hub.auth_headers.append(self.headers.get("Authorization", ""))
        data = self.body() if method in ("POST", "PUT") else b""
        if hub.down:
            return self.error(503, "ServiceUnavailable", "the stand-in hub is down")
        authorized = self.headers.get("Authorization") == f"Bearer {hub.token}"
        parts = path.strip("/").split("/")
        with hub.lock:
            if path == "/api/whoami-v2":
                return self.reply(200, {"type": "user", "name": "me", "auth": {"type": "access_token"}}) if authorized \
                    else self.error(401, "Unauthorized", "Invalid credentials")
            if path == "/api/repos/create":
                if not authorized:
                    return self.error(401, "Unauthorized", "Invalid credentials")
                req = json.loads(data)
                repo_type = req.get("type") or "model"
                repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                url_ = f"{hub.url}/{'' if repo_type == 'model' else repo_type + 's/'}{repo_id}"
                if (repo_type, repo_id) in hub.repos:
                    return self.reply(409, {"error": "You already created this repo", "url": url_})
                hub.repos[repo_type, repo_id] = Repo(repo_type, repo_id, req.get("visibility", "private" if req.get("private") else "public") == "private")
                return self.reply(200, {"url": url_, "name": repo_id})
            if path == "/api/validate-yaml":  # the card's metadata must be a YAML mapping
                content = json.loads(data)["content"]
                try:
                    meta = yaml.safe_load(content.split("---")[1]) if content.startswith("---") else {}
                    assert isinstance(meta, dict)
                except Exception:
                    return self.reply(400, {"errors": [{"message": "invalid YAML metadata"}]})
                return self.reply(200, {"errors": [], "warnings": []})
            if method == "PUT" and parts[0] == "lfs-upload":  # the upload href the batch answer gave
                if hashlib.sha256(data).hexdigest() != parts[1]:
                    return self.error(400, "BadRequest", "content does not match its sha256")
                hub.lfs[parts[1]] = data
                return self.reply(200, {})
            if path.endswith(".git/info/lfs/objects/batch"):
                if not authorized:
                    return self.error(401, "Unauthorized", "Invalid credentials")
                objects = json.loads(data)["objects"]
                return self.reply(200, {"transfer": "basic", "objects": [
                    {"oid": o["oid"], "size": o["size"], **({} if o["oid"] in hub.lfs else {
                        "actions": {"upload": {"href": f"{hub.url}/lfs-upload/{o['oid']}"}}})} for o in objects]})
            if parts[0] == "api" and len(parts) >= 4 and parts[1] in ("models", "datasets"):
                return self.api(method, parts[1][:-1], f"{parts[2]}/{parts[3]}", parts[4:], query, data, authorized)
            # file downloads: /{repo_id}/resolve/{rev}/{path} or /datasets/{repo_id}/resolve/{rev}/{path}
            repo_type = "dataset" if parts[0] == "datasets" else "model"
            rest = parts[1:] if repo_type == "dataset" else parts
            if len(rest) >= 5 and rest[2] == "resolve":
                return self.download(method, repo_type, f"{rest[0]}/{rest[1]}", rest[3], "/".join(rest[4:]))
        return self.error(404, "NotFound", f"the stand-in hub has no {method} {path}")

    def api(self, method, repo_type, repo_id, rest, query, data, authorized):
        hub = self.server
        repo = hub.repos.get((repo_type, repo_id))
        if repo is None:
            return self.error(404, "RepoNotFound", f"Repository Not Found for url: {self.path}")
        if not rest or rest[0] == "revision":  # repo info
            sha = repo.resolve(rest[1] if rest else "main")
            if sha is None:
                return self.error(404, "RevisionNotFound", "Invalid rev id")
            return self.reply(200, {"id": repo_id, "sha": sha, "private": repo.private, "disabled": False,
                                    "siblings": [{"rfilename": p} for p in repo.snapshots[sha]]})
        if method == "POST" and not authorized:
            return self.error(401, "Unauthorized", "Invalid credentials")
        kind, revision = rest[0], "/".join(rest[1:2])
        if kind == "branch":
            if revision in repo.branches:
                return self.error(409, "Conflict", "Reference already exists")
            repo.branches[revision] = repo.branches["main"]
            return self.reply(200, {})
        sha = repo.resolve(revision)
        if sha is None:
            return self.error(404, "RevisionNotFound", "Invalid rev id")
        files = repo.snapshots[sha]
        if kind == "preupload":
            paths = [f["path"] for f in json.loads(data)["files"]]
            return self.reply(200, {"files": [{"path": p, "uploadMode": "lfs" if p.endswith(LFS) else "regular",
                                               "shouldIgnore": False} for p in paths]})
        if kind == "commit":
            return self.commit(repo, revision, sha, data)
        if kind == "tree":
            base = "/".join(rest[2:])
            if base and not any(p == base or p.startswith(base + "/") for p in files):
                return self.error(404, "EntryNotFound", f"{base} does not exist")
            return self.reply(200, entries(files, base, query.get("recursive", ["false"])[0].lower() == "true"))
        if kind == "paths-info":
            form = urllib.parse.parse_qs(data.decode())
            wanted = form.get("paths") or json.loads(data or b"{}").get("paths", [])
            found = [file_entry(p, files[p]) for p in wanted if p in files]
            found += [e for e in entries(files, "", True) if e["type"] == "directory" and e["path"] in wanted]
            return self.reply(200, found)
        return self.error(404, "NotFound", f"the stand-in hub has no {method} {self.path}")

    def commit(self, repo: Repo, branch: str, sha: str, data: bytes):
        lines = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
        header = next(x["value"] for x in lines if x["key"] == "header")
        if header.get("parentCommit") and header["parentCommit"] != sha:
            return self.error(412, "PreconditionFailed", "parent commit is not the head of the branch")
        files, added, deleted = dict(repo.snapshots[sha]), [], []
        for item in lines:
            key, value = item["key"], item["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
                added.append(value["path"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
                deleted.append(value["path"])
            elif key == "deletedFolder":
                for p in [p for p in files if p.startswith(value["path"].rstrip("/") + "/")]:
                    files.pop(p)
                    deleted.append(p)
            elif key == "lfsFile":
                if value["oid"] not in self.server.lfs:
                    return self.error(400, "BadRequest", f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = self.server.lfs[value["oid"]]
                added.append(value["path"])
        new = hashlib.sha1(json.dumps([sha, header, sorted(added), sorted(deleted)]).encode()
                           + str(len(repo.commits)).encode()).hexdigest()
        repo.snapshots[new] = files
        repo.branches[urllib.parse.unquote(branch)] = new
        repo.commits.append({"branch": urllib.parse.unquote(branch), "message": header.get("summary"),
                             "added": added, "deleted": deleted})
        prefix = "" if repo.type == "model" else f"{repo.type}s/"
        return self.reply(200, {"success": True, "commitOid": new, "commitUrl": f"{self.server.url}/{prefix}{repo.id}/commit/{new}"})

    def download(self, method, repo_type, repo_id, revision, path):
        repo = self.server.repos.get((repo_type, repo_id))
        if repo is None:
            return self.error(404, "RepoNotFound", "Repository Not Found")
        sha = repo.resolve(revision)
        if sha is None:
            return self.error(404, "RevisionNotFound", "Invalid rev id")
        content = repo.snapshots[sha].get(urllib.parse.unquote(path))
        if content is None:
            return self.error(404, "EntryNotFound", f"{path} does not exist")
        headers = {"ETag": f'"{hashlib.sha1(content).hexdigest()}"', "X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start, _, end = rng[6:].partition("-")
            start, end = int(start or 0), int(end) if end else len(content) - 1
            if start >= len(content):
                return self.reply(416, b"", headers, head=method == "HEAD")
            chunk = content[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{start + len(chunk) - 1}/{len(content)}"
            return self.reply(206, chunk, headers, head=method == "HEAD")
        return self.reply(200, content, headers, head=method == "HEAD")
