"""A fake OpenAI-compatible chat server for the explain and AutoInterp tests (the scoring under test is real)."""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar


class FakeLLM(BaseHTTPRequestHandler):
    """Explains a feature as the token it sees marked most often; predicts that texts containing it fire."""

    log: ClassVar[list[dict]] = []
    fail_after: ClassVar[int | None] = None
    useless: ClassVar[bool] = False

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeLLM.log.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if FakeLLM.fail_after is not None and len(FakeLLM.log) > FakeLLM.fail_after:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"overloaded")
            return
        prompt = body["messages"][-1]["content"]
        if FakeLLM.useless:  # the same explanation for every feature; every text predicted to fire
            n = len(re.findall(r"^\d+\. ", prompt, flags=re.MULTILINE))
            reply = "Explanation: text" if "what does the feature detect" in prompt else json.dumps([1] * n)
        elif "what does the feature detect" in prompt:
            marked = Counter(t.strip() for t in re.findall(r"<<(.*?)>>", prompt) if t.strip())
            word = marked.most_common(1)[0][0] if marked else "nothing"
            reply = f"Explanation: the token {word}\n"
        else:
            word = re.search(r'explained as: "the token (.*)"', prompt).group(1)
            texts = re.findall(r"^\d+\. (.*)$", prompt, flags=re.MULTILINE)
            reply = "Sure: " + json.dumps([int(word in t) for t in texts])
        FakeLLM.log[-1]["reply"] = reply
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def fake_llm(*, useless: bool = False) -> Iterator[str]:
    """A running `FakeLLM` on a free local port (its log emptied); yields its base URL (…/v1)."""
    FakeLLM.log, FakeLLM.fail_after, FakeLLM.useless = [], None, useless
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeLLM)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()
