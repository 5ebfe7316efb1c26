"""Logging in to a console a `baton` process serves, as a person does: read what the
process prints until its login link, and follow the link once for a session cookie."""

from __future__ import annotations

import http.client
import queue
import re
import subprocess
import threading
import time

LINK = re.compile(r"open (http://127\.0\.0\.1:(\d+)/login\?token=\S+)")


def console_login(process: subprocess.Popen[str], timeout: float = 60) -> tuple[str, int, str]:
    """(what `process` printed up to its login link, the console's port, a session
    cookie `name=value`); the process's output goes on being read in the background."""
    assert process.stdout is not None
    heard: queue.Queue[str] = queue.Queue()
    out = process.stdout

    def read() -> None:
        for line in out:
            heard.put(line)

    threading.Thread(target=read, daemon=True).start()
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while not any(line.startswith("open http") for line in lines):
        assert process.poll() is None, f"{process.args!r} exited: {lines}"
        lines.append(heard.get(timeout=max(0.0, deadline - time.monotonic())))
    said = "".join(lines)
    url = LINK.search(said)
    assert url, said
    port = int(url.group(2))
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", url.group(1).partition(f":{port}")[2])
        login = connection.getresponse()
        login.read()
    finally:
        connection.close()
    assert login.status == 303
    return said, port, (login.getheader("set-cookie") or "").partition(";")[0]
