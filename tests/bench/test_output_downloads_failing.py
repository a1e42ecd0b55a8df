"""bench/output_downloads against a queue manager (another version) whose output downloads fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench.test_benches_run import run_bench

FAILING_DOWNLOADS = """
import http.server


class Answers(http.server.BaseHTTPRequestHandler):
    def answer(self, status, body=b"{}"):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.answer(200)

    def do_GET(self):
        if self.path.startswith("/api/workers/next-job"):
            self.answer(200, b'{"job": {"id": "job-1"}}')
        elif self.path == "/health":
            self.answer(200)
        else:  # the output
            self.answer(500)


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answers)
print(f"url=http://127.0.0.1:{server.server_port}", flush=True)
server.serve_forever()
"""


@pytest.mark.timeout(60)
def test_a_failing_download_is_one_error_without_the_samplers_traceback(tmp_path: Path) -> None:
    """Before, the RSS sampler was never told to stop: once the queue manager was ended, it failed reading its
    /proc status, a second traceback ("Exception in thread") after the download's."""
    (tmp_path / "queue_manager").mkdir()
    (tmp_path / "queue_manager" / "__init__.py").write_text("")
    (tmp_path / "queue_manager" / "__main__.py").write_text(FAILING_DOWNLOADS)
    run = run_bench("output_downloads", ["--clients", "2", "--file-mb", "1"], tmp_path, timeout_s=30, cwd=tmp_path)
    assert run.returncode == 1
    assert "HTTPStatusError: Server error '500 Internal Server Error'" in run.stderr, run.stderr[-3000:]
    assert run.stderr.count("Traceback (most recent call last)") == 1, run.stderr[-3000:]
    assert "Exception in thread" not in run.stderr
    assert "received whole" not in run.stdout
