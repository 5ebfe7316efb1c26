"""`baton blobs get`: the value a reference names, as a person reads it (text and bytes as
they are, any other value as JSON), to a private file or standard output; a bad digest or
an unknown blob is a clear error; and `baton run`'s hint names the command for each large
value of a result."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest

from bus import blobs
from bus.protocol import BlobRef
from eventstore import BlobInfo, SqliteEventStore
from orchestrator.cli import render
from orchestrator.cli.main import main

TEXT = "a long transcript\n" * 20_000
BINARY = bytes(range(256)) * 1000


def _stored(path: Path) -> dict[str, BlobInfo]:
    async def put() -> dict[str, BlobInfo]:
        store = await SqliteEventStore.open(path / "events.db")
        try:
            found = {}
            for name, value in (("text", TEXT), ("binary", BINARY)):
                data, media_type = blobs.encode_value(value)
                found[name] = await store.blobs.put(data, media_type)
            inner = found["text"]
            ref = BlobRef(inner.digest, inner.size, inner.media_type)
            nested = {"turns": [1, 2], "log": blobs.ref_value(ref)}
            data, media_type = blobs.encode_value(nested)
            found["map"] = await store.blobs.put(data, media_type)
            return found
        finally:
            await store.close()

    return asyncio.run(put())


def test_blobs_get_writes_the_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stored = _stored(tmp_path)
    where = ["--state-dir", str(tmp_path)]
    out = tmp_path / "out" / "transcript.txt"
    out.parent.mkdir()
    assert main(["blobs", "get", stored["text"].digest, "-o", str(out), *where]) == 0
    assert out.read_text() == TEXT
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert f"wrote {len(TEXT)} bytes of {stored['text'].digest}" in capsys.readouterr().out
    binary = tmp_path / "out" / "data.bin"
    assert main(["blobs", "get", stored["binary"].digest, "--output", str(binary), *where]) == 0
    assert binary.read_bytes() == BINARY
    # a map: JSON, its own large part still a reference (read it the same way)
    capsys.readouterr()
    assert main(["blobs", "get", stored["map"].digest, *where]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["turns"] == [1, 2]
    assert blobs.as_ref(shown["log"]) == BlobRef(
        stored["text"].digest, stored["text"].size, stored["text"].media_type
    )


def test_blobs_get_refuses_what_it_cannot_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _stored(tmp_path)
    where = ["--state-dir", str(tmp_path)]
    assert main(["blobs", "get", "sha256:nothex", *where]) == 2
    assert "is not a digest" in capsys.readouterr().err
    assert main(["blobs", "get", *where]) == 2  # no digest at all
    assert "is not a digest" in capsys.readouterr().err
    unknown = blobs.digest_of(b"never stored")
    assert main(["blobs", "get", unknown, *where]) == 1
    assert f"no blob {unknown}" in capsys.readouterr().err
    assert main(["blobs", "ls", unknown, *where]) == 2  # ls takes no digest
    assert "takes no digest" in capsys.readouterr().err
    assert not (tmp_path / "FILE").exists()


def test_blobs_ls_says_when_there_are_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def empty() -> None:
        await (await SqliteEventStore.open(tmp_path / "events.db")).close()

    asyncio.run(empty())
    assert main(["blobs", "ls", "--state-dir", str(tmp_path)]) == 0
    assert "no blobs" in capsys.readouterr().out


def test_the_run_hint_names_each_large_value_once() -> None:
    ref = blobs.ref_value(BlobRef(blobs.digest_of(b"x"), 1, blobs.TEXT))
    where = " --state-dir '/srv/my state'"
    hint = render.blob_hint({"a": {"report": ref}, "b": {"again": ref, "small": "inline"}}, where)
    assert hint.splitlines() == [
        "the result refers to 1 large value(s) kept beside the log; read one with:",
        f"  baton blobs get {ref['$blob']} -o FILE --state-dir '/srv/my state'",
    ]
    assert render.blob_hint({"a": {"small": "inline"}}, where) == ""


def test_an_input_file_too_large_for_a_command_line_starts_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`baton run --input @FILE`: a 600 KB document (a command line takes 128 KiB) is the
    run's input, stored by reference; the result names the command that reads it back."""
    workflow = tmp_path / "wf.toml"
    workflow.write_text(
        'name = "big-echo"\n[[agents]]\nrole = "echoer"\nhandler = "agents.builtin:echo"\n'
        '[[steps]]\nid = "say"\nrole = "echoer"\n'
    )
    document = "lorem ipsum " * 50_000
    given = tmp_path / "input.json"
    given.write_text(json.dumps({"doc": document}))
    where = ["--state-dir", str(tmp_path / "state")]
    assert main(["run", str(workflow), "--input", f"@{given}", *where]) == 0
    out = capsys.readouterr().out
    [digest] = [line.split()[3] for line in out.splitlines() if "baton blobs get" in line]
    assert main(["blobs", "get", digest, "-o", str(tmp_path / "doc.txt"), *where]) == 0
    assert (tmp_path / "doc.txt").read_text() == document
    capsys.readouterr()
    assert main(["run", str(workflow), "--input", f"@{tmp_path / 'missing.json'}", *where]) == 2
    assert "--input: cannot read" in capsys.readouterr().err
    given.write_text("[1, 2]")
    assert main(["run", str(workflow), "--input", f"@{given}", *where]) == 2
    assert "must be a JSON object" in capsys.readouterr().err
