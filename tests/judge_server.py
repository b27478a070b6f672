"""An OpenAI-compatible chat-completions server on 127.0.0.1 for the judge tests, run as its own
process: `python tests/judge_server.py MODEL_DIR PORT_FILE`. The first path segment picks a mode:

  /model/v1/chat/completions   the tiny model answers (mmgrpo.models.textgen, greedy)
  /rule/v1/chat/completions    a rule judge: <score>10</score> when the graded answer equals the
                               reference in the query, else <score>0</score>
  /error/v1/chat/completions   HTTP 500
  /hang/v1/chat/completions    answers after 60 s (longer than any test waits)
  /stats                       JSON: requests per mode, and the Authorization headers seen
"""
from __future__ import annotations

import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

STATS: dict = {"requests": {}, "auth": []}
LOCK = threading.Lock()


def rule_reply(query: str) -> str:
    ref = re.search(r"Reference answer: (.*)", query)
    ans = re.search(r"Answer to grade: (.*)", query)
    same = ref and ans and ref.group(1).strip() == ans.group(1).strip()
    return f"<score>{10 if same else 0}</score>"


def make_handler(model):
    from mmgrpo.models.textgen import generate_replies

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            with LOCK:
                self._send(200, STATS)

        def do_POST(self):
            mode = self.path.strip("/").split("/")[0]
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with LOCK:
                STATS["requests"][mode] = STATS["requests"].get(mode, 0) + 1
                STATS["auth"].append(self.headers.get("Authorization"))
            query = request["messages"][-1]["content"]
            if mode == "error":
                return self._send(500, {"error": {"message": "judge exploded", "type": "server_error"}})
            if mode == "hang":
                time.sleep(60)
            if mode == "model":
                with LOCK:  # one generation at a time
                    reply = generate_replies(model, [query], request.get("max_tokens", 16))[0]
            else:
                reply = rule_reply(query)
            self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": request["model"],
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": reply}}],
                             "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}})

    return Handler


def main() -> None:
    import torch

    from mmgrpo.models.textgen import load_text_model

    torch.set_num_threads(1)
    model = load_text_model(sys.argv[1], "fp32", "cpu")
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(model))
    server.daemon_threads = True
    Path(sys.argv[2]).write_text(str(server.server_address[1]))
    server.serve_forever()


if __name__ == "__main__":
    main()
