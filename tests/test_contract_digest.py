"""The contract digest is RFC 8785 over the contract with its defaults (docs/protocol.md,
"Contract digest"): the document's vectors are recomputed from its own text by the code
and, independently, by Node's `JSON.stringify`; the digest does not depend on how the
contract was written; runs recorded with the digest of before protocol v1 still resume."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus.contract_files import load_contracts
from bus.contracts import (
    SCOPES,
    Budget,
    Contracts,
    MemoryAccess,
    RoleContract,
    canonical,
    digest,
    legacy_digest,
)
from orchestrator.cli import main as cli_main
from orchestrator.core.errors import WorkflowError
from orchestrator.core.workflow import ContractsRef, StepSpec, WorkflowSpec
from tests.cluster import REPO
from tests.programs import need

DOC = (REPO / "docs" / "protocol.md").read_text()
VECTOR = re.compile(
    r"\*\*Vector (\d+)\.\*\* The contract as written:\n\n```json\n(.*?)\n```\n\n"
    r"Canonical form[^\n]*\n\n```text\n(.*?)\n```\n\nsha256: `([0-9a-f]{64})`",
    re.S,
)


def doc_vectors() -> list[tuple[dict[str, Any], str, str]]:
    found = [(json.loads(w), text, hexdigest) for _, w, text, hexdigest in VECTOR.findall(DOC)]
    assert len(found) >= 3, "docs/protocol.md lost its digest test vectors"
    return found


def test_the_documents_vectors_are_what_the_code_computes() -> None:
    for written, text, hexdigest in doc_vectors():
        contract = msgspec.convert(written, RoleContract)
        assert canonical(contract) == text.encode()
        assert hashlib.sha256(text.encode()).hexdigest() == hexdigest
        assert digest(contract) == hexdigest == contract.digest


def test_json_stringify_with_sorted_keys_gives_the_documents_digests() -> None:
    """An outside implementer's way, in another language: fill in the defaults (from the
    document's table), sort the keys, `JSON.stringify`, sha256."""
    defaults = json.loads(DOC.split("fields and defaults (`name` has none):\n\n```json\n")[1]
                          .split("\n```")[0])  # fmt: skip
    script = """
const crypto = require("crypto");
const [defaults, vectors] = JSON.parse(require("fs").readFileSync(0, "utf8"));
const sorted = (v) => Array.isArray(v) ? v.map(sorted)
  : v && typeof v === "object"
    ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, sorted(v[k])])) : v;
const fill = (d, w) => Object.fromEntries(Object.keys(d).map((k) => [k,
  d[k] && typeof d[k] === "object" && !Array.isArray(d[k]) ? fill(d[k], w[k] || {})
  : (k in w ? w[k] : d[k])]));
for (const w of vectors) {
  const text = JSON.stringify(sorted(fill(defaults, w)));
  console.log(crypto.createHash("sha256").update(text, "utf8").digest("hex"));
}
"""
    node = need("node", "the document's digests cannot be computed in JavaScript here")
    vectors = doc_vectors()
    given_in = json.dumps([defaults, [w for w, _, _ in vectors]])
    done = subprocess.run(
        [node, "-e", script], input=given_in, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [hexdigest for _, _, hexdigest in vectors]


NODE_AGENT = REPO / "examples" / "node-agent" / "agent.js"
TRICKY: list[dict[str, Any]] = [
    {"name": "tiny", "budget": {"seconds": 1e-7, "tokens": 10**12}, "concurrency": 10_000},
    {"name": "big", "budget": {"seconds": 604800.0, "tool_calls": 1_000_000}},
    {"name": "third", "budget": {"seconds": 0.1 + 0.2}, "memory": {"read": ["agent"]}},
    {
        "name": "odd",
        "description": '\u0001\u001f\u007f \u2028 \U0001f600 \\ / "',
        "tools": ["b", "a"],
    },
]


def node_digest(written: dict[str, Any], role: str, how: str, tmp_path: Path) -> str:
    """The digest the Node example computes (`agent.js --print-digest`) for the contract
    given as JSON text in `$BATON_CONTRACT`, or in a file (`--contract`)."""
    text = json.dumps(written, indent=2, ensure_ascii=False)
    args, env = ["--role", role, "--print-digest"], {"PATH": os.environ.get("PATH", "")}
    if how == "file":
        (tmp_path / "contract.json").write_text(text)
        args += ["--contract", str(tmp_path / "contract.json")]
    else:
        env["BATON_CONTRACT"] = text
    node = need("node", "the Node.js example agent cannot run here")
    done = subprocess.run([node, str(NODE_AGENT), *args], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("how", ["env", "file"])
def test_the_node_agent_computes_the_documents_digests(tmp_path: Path, how: str) -> None:
    """The Node example's own digest (examples/node-agent/contract.js, no npm packages)
    is the document's for its vectors and the code's for contracts at the edges."""
    for written, _, hexdigest in doc_vectors():
        assert node_digest(written, written["name"], how, tmp_path) == hexdigest
    for written in TRICKY:
        contract = msgspec.convert(written, RoleContract)
        assert node_digest(written, contract.name, how, tmp_path) == contract.digest, written


def test_the_node_agent_refuses_a_contract_baton_would_not_load(tmp_path: Path) -> None:
    node = need("node", "the Node.js example agent cannot run here")
    for written, role, said in [
        ({"name": "w", "budgets": {}}, "w", "budgets: no such field"),
        ({"name": "w", "budget": {"toString": 1}}, "w", "budget.toString: no such field"),
        ({"name": "w", "concurrency": 1.5}, "w", "concurrency: must be an integer"),
        ({"name": "w", "memory": {"read": ["all"]}}, "w", "memory.read: scopes are"),
        ({"name": "w"}, "other", "not role other's"),
    ]:
        done = subprocess.run(
            [node, str(NODE_AGENT), "--role", role, "--print-digest"],
            env={"PATH": os.environ.get("PATH", ""), "BATON_CONTRACT": json.dumps(written)},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 2, done.stdout
        assert said in done.stderr, done.stderr


def test_baton_contracts_show_prints_a_role_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a person hands an agent in another language: the role's table as JSON, the
    defaults left to the agent to fill in."""
    roles = tmp_path / "roles.toml"
    roles.write_text('[[roles]]\nname = "writer"\n\n[[roles]]\nname = "critic"\n'
                     'description = "café"\nbudget = { seconds = 90.0 }\n')  # fmt: skip
    assert cli_main.main(["contracts", "show", str(roles), "--role", "critic"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == {"name": "critic", "description": "café", "budget": {"seconds": 90.0}}
    assert msgspec.convert(shown, RoleContract).digest == load_contracts(roles).get("critic").digest
    assert cli_main.main(["contracts", "show", str(roles)]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)["roles"]] == ["writer", "critic"]
    assert cli_main.main(["contracts", "show", str(roles), "--role", "nobody"]) == 2
    assert "no contract for role 'nobody'" in capsys.readouterr().err


names = st.from_regex(r"[A-Za-z0-9_\-]{1,12}", fullmatch=True)
contracts = st.builds(
    RoleContract,
    name=names,
    description=st.text(max_size=30),
    capabilities=st.lists(names, max_size=3, unique=True),
    tools=st.lists(names, max_size=3, unique=True),
    memory=st.builds(
        MemoryAccess,
        read=st.lists(st.sampled_from(SCOPES), unique=True),
        write=st.lists(st.sampled_from(SCOPES), unique=True),
    ),
    handoff_to=st.lists(names, max_size=2, unique=True),
    budget=st.builds(
        Budget,
        tokens=st.integers(0, 10**12),
        seconds=st.floats(0, 7 * 24 * 3600.0) | st.integers(0, 3600).map(float),
        tool_calls=st.integers(0, 10**6),
    ),
    concurrency=st.integers(1, 10_000),
)


@given(contracts, st.randoms(use_true_random=False), st.integers(0, 3), st.booleans())
def test_how_a_contract_is_written_does_not_change_its_digest(
    contract: RoleContract, rng: Any, indent: int, drop_defaults: bool
) -> None:
    """Key order, whitespace, escapes, defaults left out or written out, `90` or `90.0`:
    the contract decoded from any such JSON has the same digest."""
    full = msgspec.to_builtins(contract)
    plain = msgspec.to_builtins(RoleContract(name=contract.name))

    def rewrite(node: Any, default: Any) -> Any:
        if isinstance(node, dict):
            items = [
                (k, rewrite(v, default.get(k) if isinstance(default, dict) else None))
                for k, v in node.items()
                if not (drop_defaults and k != "name" and default and default.get(k) == v)
            ]
            rng.shuffle(items)
            return dict(items)
        if isinstance(node, float) and node.is_integer() and rng.random() < 0.5:
            return int(node)
        return node

    text = json.dumps(rewrite(full, plain), indent=indent or None, ensure_ascii=rng.random() < 0.5)
    again = msgspec.json.decode(text, type=RoleContract)
    assert again.digest == contract.digest
    assert json.loads(canonical(again)) == json.loads(canonical(contract))


def test_the_digest_before_protocol_v1_is_kept_for_old_runs_only() -> None:
    writer = RoleContract(name="writer")
    # what Baton advertised and recorded before protocol v1, for this contract
    old = "559da6936139defe66a82a7f983e7913c76213cae8d9682b5b46cf93b950d8f6"
    assert legacy_digest(writer) == old
    assert digest(writer) != old
    contracts = Contracts([writer])
    assert "differs" in contracts.verdict("writer", old), "agents advertise the v1 digest"
    assert contracts.legacy_digest != contracts.digest


def test_a_run_recorded_with_the_old_digest_resumes_under_its_contracts(tmp_path: Path) -> None:
    roles = tmp_path / "roles.toml"
    roles.write_text('[[roles]]\nname = "writer"\n')
    known = load_contracts(roles)

    class Recorded:
        run_id = "r1"

        def __init__(self, recorded_digest: str) -> None:
            self.workflow = WorkflowSpec(
                "w",
                [StepSpec("s", "writer")],
                governed_by=ContractsRef(str(roles), recorded_digest),
            )

    args = argparse.Namespace(contracts="")
    for recorded in (known.digest, known.legacy_digest):
        assert cli_main._governing(args, Recorded(recorded)) == str(roles)  # type: ignore[arg-type]
    roles.write_text('[[roles]]\nname = "writer"\nconcurrency = 2\n')  # the file changed since
    with pytest.raises(WorkflowError, match="no longer says what it said"):
        cli_main._governing(args, Recorded(known.legacy_digest))  # type: ignore[arg-type]
