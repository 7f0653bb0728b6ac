"""Big-input benchmark (not a test): what one huge request costs everyone else on `codeinfer serve`.

1. Stall: a client streams long greedy completions back to back while another process sends
   one prompt of --prompt-mb MB; reports the longest gap between two chunks of the same stream
   while the big request was in flight, next to the longest gap outside it (the machine's noise).
2. Upload: a --upload-mb MB body sent with Transfer-Encoding: chunked (so no Content-Length to
   reject early); reports the server's peak RSS (VmHWM) before and after, the status it answered
   and how many bytes it took before answering.

    python -m benchmarks.big_inputs [--model DIR] [--prompt-mb 15] [--upload-mb 1024]
                                    [--only stall|upload] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from benchmarks.serving import Server

SEND_BIG = """
import json, socket, sys
url, prompt_mb = sys.argv[1], float(sys.argv[2])
text = "def f(x):\\n    return x\\n" * int(prompt_mb * 1e6 / 24)
body = json.dumps({"prompt": text, "max_tokens": 8}).encode()
host, port = url.split("//")[1].split(":")
print("ready", flush=True)
sys.stdin.readline()
with socket.create_connection((host, int(port))) as sock:
    sock.sendall(b"POST /v1/completions HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n"
                 b"Content-Type: application/json\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body))
    sock.sendall(body)
    answer = b"".join(iter(lambda: sock.recv(65536), b""))
head, _, payload = answer.partition(b"\\r\\n\\r\\n")
print(head.split()[1].decode(), payload.decode(errors="replace"))
"""
STREAM = {"prompt": "def f(x):", "max_tokens": 400, "temperature": 0, "ignore_eos": True,
          "stream": True}


def stall(url: str, prompt_mb: float) -> dict:
    """Longest chunk gap of a concurrent stream while a prompt_mb MB prompt is sent."""
    chunk_times: list[list[float]] = []
    window: list[float] = []
    stop = threading.Event()

    def streamer():
        with httpx.Client(base_url=url, timeout=600) as client:
            while not stop.is_set():
                times: list[float] = []
                chunk_times.append(times)
                with client.stream("POST", "/v1/completions", json=STREAM) as response:
                    for line in response.iter_lines():
                        if line.startswith("data: "):
                            times.append(time.perf_counter())

    # From another process, which builds the body before the clock starts: building and
    # sending 15 MB here would hold this process's GIL and delay the streamer's reads.
    sender = subprocess.Popen([sys.executable, "-c", SEND_BIG, url, str(prompt_mb)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert sender.stdout.readline() == "ready\n"
    thread = threading.Thread(target=streamer)
    thread.start()
    time.sleep(2.0)
    window.append(time.perf_counter())
    output, _ = sender.communicate("go\n")
    window.append(time.perf_counter())
    time.sleep(2.0)
    stop.set()
    thread.join()
    inside, outside = [0.0], [0.0]
    for times in chunk_times:
        for a, b in zip(times, times[1:]):
            (inside if b > window[0] and a < window[1] else outside).append(b - a)
    status, answer = output.split(" ", 1)
    return {"status": int(status), "answer": answer[:160],
            "big_request_s": round(window[1] - window[0], 3),
            "max_gap_during_ms": round(1e3 * max(inside), 1),
            "max_gap_outside_ms": round(1e3 * max(outside), 1)}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def upload(url: str, pid: int, upload_mb: int) -> dict:
    """Send upload_mb MiB chunked until the server answers or drops the connection."""
    host, port = url.split("//")[1].split(":")
    before = peak_rss_mb(pid)
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    piece = b'{"prompt": "' + b"a" * (1 << 20)
    chunk = b"%x\r\n%s\r\n" % (len(piece), piece)
    sent, answer = 0, b""
    sock.settimeout(60)
    try:
        for _ in range(upload_mb):
            if select.select([sock], [], [], 0)[0]:
                break
            sock.sendall(chunk)
            sent += len(piece)
        else:
            sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass
    try:
        answer = sock.recv(4096)
    except (ConnectionResetError, TimeoutError):
        pass
    sock.close()
    time.sleep(0.5)
    return {"status_line": answer.split(b"\r\n", 1)[0].decode(errors="replace"),
            "sent_mb": round(sent / (1 << 20), 1), "peak_rss_before_mb": round(before),
            "peak_rss_after_mb": round(peak_rss_mb(pid))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint dir (default: bundled model)")
    parser.add_argument("--prompt-mb", type=float, default=15.0)
    parser.add_argument("--upload-mb", type=int, default=1024)
    parser.add_argument("--only", choices=["stall", "upload"], default=None)
    parser.add_argument("--repeat", type=int, default=1, help="stall runs on the one server")
    args = parser.parse_args()
    # A fresh server for each, so the upload's peak RSS is not the big prompt's.
    for name, measure in (("stall", lambda s: [stall(s.url, args.prompt_mb)
                                               for _ in range(args.repeat)]),
                          ("upload", lambda s: upload(s.url, s.proc.pid, args.upload_mb))):
        if args.only not in (None, name):
            continue
        server = Server(args.model, "--dtype", "float32")
        try:
            print(f"{name}:", json.dumps(measure(server)), flush=True)
        finally:
            server.close()


if __name__ == "__main__":
    main()
