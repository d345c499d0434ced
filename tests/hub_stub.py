"""A loopback Hugging Face Hub for tests: repos kept in memory, every commit recorded, files served back.

It speaks the part of the Hub's HTTP API that huggingface_hub (1.x) uses to create a repo, commit files (preupload
answers "regular" for every file, so the bytes come base64 in the commit itself: no LFS, no Xet), list a repo and
download its files (`resolve/` with ETag, X-Repo-Commit and Content-Length; no X-Xet-Hash, so plain HTTP GETs).
Point the client at it with the `hub_stub` fixture: HF_ENDPOINT, huggingface_hub's constants, offline mode off and
a fake token, for this process and its children. `fail(route, status, times)` makes a route answer an error.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import pytest

FAKE_TOKEN = "hf_stubtokenstubtokenstubtoken"


@dataclass
class Repo:
    commits: list[tuple[str, dict[str, bytes]]] = field(default_factory=list)  # (sha, files), oldest first

    @property
    def head(self) -> tuple[str, dict[str, bytes]]:
        return self.commits[-1]

    def at(self, revision: str) -> tuple[str, dict[str, bytes]] | None:
        if revision in ("main", "HEAD"):
            return self.head
        return next((c for c in self.commits if c[0] == revision), None)


def blob_id(data: bytes) -> str:
    """git's blob id: what the Hub gives as a file's oid and (for a regular file) its ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubStub:
    """The Hub on 127.0.0.1: `repos`, `uploads` (one record per commit: repo, message, files), `requests`."""

    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.uploads: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        self.failures: dict[str, list] = {}  # route -> [status, times left (None: always)]
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> HubStub:
        self.thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def fail(self, route: str, status: int = 500, times: int | None = None) -> None:
        """Answer `route` (create, preupload, commit, info, tree, resolve) with `status`, `times` times (None: always)."""
        self.failures[route] = [status, times]

    def rewind(self, repo_id: str, keep: int) -> None:
        """Keep only the first `keep` commits of `repo_id`: the repo as it was when a runtime died."""
        with self.lock:
            del self.repos[repo_id].commits[keep:]

    def files(self, repo_id: str) -> dict[str, bytes]:
        return dict(self.repos[repo_id].head[1])

    def committed(self, repo_id: str, prefix: str = "") -> list[dict]:
        """The commits to `repo_id` that wrote a file under `prefix`."""
        return [u for u in self.uploads if u["repo"] == repo_id and any(p.startswith(prefix) for p in u["files"])]

    def _failing(self, route: str) -> int | None:
        with self.lock:
            rule = self.failures.get(route)
            if rule is None or rule[1] == 0:
                return None
            if rule[1] is not None:
                rule[1] -= 1
            return rule[0]

    def _commit(self, repo_id: str, message: str, added: dict[str, bytes], deleted: list[str]) -> str:
        with self.lock:
            repo = self.repos[repo_id]
            files = dict(repo.head[1]) if repo.commits else {}
            for path in deleted:
                for name in [n for n in files if n == path or n.startswith(path.rstrip("/") + "/")]:
                    del files[name]
            files.update(added)
            sha = hashlib.sha1(f"{repo_id}:{len(repo.commits)}:{message}".encode()).hexdigest()
            repo.commits.append((sha, files))
            if added or deleted:
                self.uploads.append({"repo": repo_id, "message": message, "files": added, "deleted": deleted})
            return sha


def _handler(hub: HubStub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # the test's output stays the test's
            pass

        def do_GET(self):
            self.route("GET")

        def do_HEAD(self):
            self.route("HEAD")

        def do_POST(self):
            self.route("POST")

        def body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def reply(self, status: int, payload=None, headers: dict | None = None, raw: bytes | None = None):
            data = raw if raw is not None else json.dumps(payload if payload is not None else {}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def error(self, status: int, code: str | None, message: str):
            headers = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {})}
            self.reply(status, {"error": message}, headers)

        def route(self, method: str):
            path = urlsplit(self.path).path
            hub.requests.append((method, path))
            body = self.body() if method == "POST" else b""
            parts = [unquote(p) for p in path.strip("/").split("/")]
            name = self.route_name(method, parts)
            status = hub._failing(name) if name else None
            if status is not None:
                return self.error(status, None, f"stub: {name} answers {status}")
            handler = getattr(self, f"on_{name}", None) if name else None
            if handler is None:
                return self.error(404, None, f"stub: no route {method} {path}")
            handler(parts, body)

        @staticmethod
        def route_name(method: str, parts: list[str]) -> str | None:
            if parts[:3] == ["api", "repos", "create"]:
                return "create"
            if parts[:2] == ["api", "validate-yaml"]:
                return "validate"
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                if len(parts) == 4 or parts[4] == "revision":
                    return "info"
                return {"preupload": "preupload", "commit": "commit", "tree": "tree"}.get(parts[4])
            if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
                return "resolve"
            return None

        def repo(self, repo_id: str) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self.error(404, "RepoNotFound", f"Repository Not Found for url: {self.path}")
            return repo

        def revision(self, repo_id: str, revision: str):
            repo = self.repo(repo_id)
            if repo is None:
                return None
            found = repo.at(revision)
            if found is None:
                self.error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return found

        def on_create(self, parts, body):
            info = json.loads(body or b"{}")
            repo_id = f"{info.get('organization') or 'user'}/{info['name']}"
            url = f"{hub.url}/{repo_id}"
            if repo_id in hub.repos:
                return self.reply(409, {"error": "You already created this model repo", "url": url})
            hub.repos[repo_id] = Repo()
            hub._commit(repo_id, "initial commit", {}, [])
            self.reply(200, {"url": url, "name": repo_id, "id": repo_id})

        def on_validate(self, parts, body):
            self.reply(200, {"errors": [], "warnings": []})

        def on_preupload(self, parts, body):
            if self.repo("/".join(parts[2:4])) is None:
                return
            files = json.loads(body)["files"]
            modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
            self.reply(200, {"files": modes, "commitOid": None})

        def on_commit(self, parts, body):
            repo_id = "/".join(parts[2:4])
            if self.repo(repo_id) is None:
                return
            message, added, deleted = "", {}, []
            for line in body.splitlines():
                item = json.loads(line)
                value = item["value"]
                if item["key"] == "header":
                    message = value["summary"]
                elif item["key"] == "file":
                    added[value["path"]] = base64.b64decode(value["content"])
                elif item["key"] in ("deletedFile", "deletedFolder"):
                    deleted.append(value["path"])
                else:  # lfsFile: preupload never asked for LFS
                    return self.error(400, None, f"stub: {item['key']} is not supported")
            sha = hub._commit(repo_id, message, added, deleted)
            self.reply(200, {"success": True, "commitOid": sha, "commitUrl": f"{hub.url}/{repo_id}/commit/{sha}"})

        def on_info(self, parts, body):
            repo_id = "/".join(parts[2:4])
            found = self.revision(repo_id, parts[5] if len(parts) > 5 else "main")
            if found is None:
                return
            sha, files = found
            siblings = [{"rfilename": p} for p in sorted(files)]
            self.reply(200, {"id": repo_id, "modelId": repo_id, "sha": sha, "private": True, "siblings": siblings})

        def on_tree(self, parts, body):
            repo_id = "/".join(parts[2:4])
            found = self.revision(repo_id, parts[5])
            if found is None:
                return
            prefix = "/".join(parts[6:]).strip("/")
            under = {p: d for p, d in found[1].items() if not prefix or p.startswith(prefix + "/")}
            folders = sorted({"/".join(p.split("/")[:i]) for p in under for i in range(1, p.count("/") + 1)})
            entries = [{"type": "directory", "path": f, "oid": blob_id(f.encode()), "size": 0} for f in folders]
            entries += [
                {"type": "file", "path": p, "oid": blob_id(d), "size": len(d)} for p, d in sorted(under.items())
            ]
            self.reply(200, entries)

        def on_resolve(self, parts, body):
            repo_id, filename = "/".join(parts[:2]), "/".join(parts[4:])
            found = self.revision(repo_id, parts[3])
            if found is None:
                return
            sha, files = found
            if filename not in files:
                return self.error(404, "EntryNotFound", f"{filename} does not exist at {sha}")
            data = files[filename]
            self.reply(200, raw=data, headers={"ETag": f'"{blob_id(data)}"', "X-Repo-Commit": sha})

    return Handler


@pytest.fixture
def hub_stub(monkeypatch, tmp_path_factory):
    """A running HubStub that this process's huggingface_hub (and transformers' shared HfApi) and its child processes
    talk to, with a fake token in HF_TOKEN and a Hub cache of its own; the real Hub stays unreachable."""
    from huggingface_hub import constants
    from transformers.utils import hub as transformers_hub

    hub = HubStub().start()
    home = tmp_path_factory.mktemp("hf-home")  # downloads cached here, never in ~/.cache/huggingface
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": FAKE_TOKEN, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(home)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_XET_CACHE", str(home / "xet"))
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(key, "0")
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(transformers_hub, "_hf_api", None)  # transformers' shared HfApi, made again for this endpoint
    try:
        yield hub
    finally:
        hub.close()
