"""The governed-mode sections of `docs/protocol.md` (rendered by `bus.protocol_doc`): how
an outside agent gets and uses credentials, and how a role contract's digest is computed,
with test vectors computed here by the code that computes every digest."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import msgspec

from bus.contracts import RoleContract, canonical, digest

DIGEST_VECTORS: list[dict[str, Any]] = [
    {"name": "writer"},
    {
        "name": "researcher",
        "tools": ["web_search"],
        "capabilities": ["search", "summarise"],
        "budget": {"tool_calls": 12, "seconds": 90.0, "tokens": 20000},
        "memory": {"write": ["run"], "read": ["run", "global"]},
        "handoff_to": ["writer"],
        "description": "Finds sources and cites them.",
        "concurrency": 2,
    },
    {
        "name": "critic",
        "description": 'Reviews "drafts" \u2014 caf\u00e9 style,\ttabbed\n',
        "budget": {"seconds": 2.5},
        "concurrency": 1,
    },
]
"""Contracts as a person might write them (any key order, defaults left out)."""

LOGGING_IN = """
## Logging in

Baton's embedded server lets no one in without a login, with role contracts (governed
mode) or without (open mode). An agent that `baton run` starts gets its own login in its
environment. An agent started by hand, in any language, gets one from the person running
Baton. Step by step, for an outside agent:

1. **The person issues it.** On the machine and state directory of `baton run` or `baton
   serve` (which must be running): `baton creds issue <agent_id> --role <role> --out
   agent.nk`. This makes a new NATS user nkey (an Ed25519 key pair) there and writes its
   seed, the private half (one line, `SU...`), to `agent.nk`, created with mode 0600 (the
   file must not exist). Only the public key (`U...`) goes to the orchestrator: it records
   a `credentials.issued` event in its log (actor: that person), then lists the key as a
   user of the server with that agent's permissions and has the server reload its
   configuration. Under role contracts the role must have one. The command prints the
   server's address, `nats://127.0.0.1:<port>` (the port stays the same across restarts
   of the state directory's server).
2. **Hand over** `agent.nk` (whoever holds it is that agent: keep it private) and the
   address.
3. **Connect with the seed file**, setting your client's reply-inbox prefix to
   `_INBOX_<agent_id>` with every `-` and `:` of the id written as `_` (`polyglot-1` →
   `_INBOX_polyglot_1`): the server lets this login subscribe to reply inboxes under that
   prefix only, so a request with the default `_INBOX.` prefix never gets its reply.
   - nats-py: `await nats.connect(url, nkeys_seed="agent.nk", inbox_prefix="_INBOX_<id>")`
   - Node (`nats`): `connect({servers: url, authenticator: nkeyAuthenticator(new
     TextEncoder().encode(seedText.trim())), inboxPrefix: "_INBOX_<id>"})`
   - the `nats` CLI: `nats --server url --nkey agent.nk ...`
   - Baton's own agent: `baton agent --id <agent_id> --role <role> --nats url
     --nats-file agent.nk` (or `$BATON_NATS_NKEY=agent.nk` for anything built on
     `bus.connection`)
4. **Serve as exactly `<agent_id>`.** The server lets this login publish only on its own
   subjects (inbox, report, bids, heartbeat, memory search, tool approval: each with its
   `<agent_id>`) and its tool calls, and subscribe only to `baton.agent.<agent_id>.>`,
   calls for proposals, the decisions on its own tool calls and its reply inboxes.
   Anything else is refused by the server (a permissions violation, and the message is
   dropped). With role contracts it may call only the tools its contract lists, hears
   only its role's calls for proposals, and must advertise its role and the contract's
   digest (below) in every heartbeat, or the orchestrator never routes to it.
5. **Revoking.** `baton creds revoke <agent_id>` records a `credentials.revoked` event,
   removes the user and has the server reload: the server closes that login's open
   connections at once (the client sees its connection end) and refuses each reconnect
   and every new login with the seed (`Authorization Violation`). `baton creds list`
   names the agents let in by hand and how; `baton audit --type 'credentials.*'` shows who
   issued and revoked what, when.

`baton admit <agent_id> --role <role> -o FILE` is the other way in: FILE holds a
`nats://<user>:<password>@host:port` URL for the same permissions (connect with the user
and password from it), recorded and revoked the same way. Logins given by hand are saved
beside the server (`.baton/nats/users.json`), so they outlive a restart of `baton serve`
until revoked. On a bus you run yourself (`--nats URL`), its own accounts apply.
"""


def _vector(number: int, written: dict[str, Any]) -> str:
    contract = msgspec.convert(written, RoleContract)
    text = canonical(contract).decode()
    hexdigest = hashlib.sha256(text.encode()).hexdigest()
    assert hexdigest == digest(contract)
    shown = json.dumps(written, indent=2, ensure_ascii=False)
    return (
        f"\n**Vector {number}.** The contract as written:\n\n```json\n{shown}\n```\n\n"
        f"Canonical form (the exact UTF-8 bytes, no newline at the end):\n\n"
        f"```text\n{text}\n```\n\nsha256: `{hexdigest}`\n"
    )


def contract_digest() -> str:
    """The "Contract digest" section, with its vectors computed now."""
    defaults = json.dumps(msgspec.to_builtins(RoleContract(name="<name>")), indent=2)
    vectors = "".join(_vector(i, v) for i, v in enumerate(DIGEST_VECTORS, 1))
    return f"""
## Contract digest

With role contracts, an agent's heartbeat carries `contract_digest`: the lowercase hex
SHA-256 of its role contract in RFC 8785 canonical JSON (the JSON Canonicalization
Scheme, JCS). The orchestrator computes the same over its own copy and never routes to an
agent whose digest differs. To compute it:

1. Take the role's contract (a `[[roles]]` table of the contracts file, which is TOML) as
   a JSON object with **every** field present: a field left out takes its default. `baton
   contracts show <file> --role <role>` prints the table as JSON as written (defaults
   left out), for the person running Baton to hand over with the agent's login. These
   are the fields and defaults (`name` has none):

```json
{defaults}
```

2. Keep the types: `budget.tokens`, `budget.tool_calls` and `concurrency` are integers,
   `budget.seconds` a number (`90` and `90.0` are the same number, and write the same);
   lists keep their order; `memory.read` and `memory.write` hold `run`, `agent`, `global`.
3. Serialise it by RFC 8785: no whitespace; the members of every object sorted by their
   keys' UTF-16 code units; strings as ECMAScript's `JSON.stringify` writes them (only
   `"`, `\\` and characters below U+0020 escaped: `\\b \\f \\n \\r \\t`, else
   `\\u00xx` in lowercase hex; everything else, non-ASCII included, as itself);
   numbers as ECMAScript's Number-to-String (shortest round trip, `1.0` is `1`, `2.5` is
   `2.5`, an exponent only from `1e+21` and below `1e-6`).
4. Encode the result as UTF-8 and take its SHA-256, in lowercase hex.

In JavaScript, `JSON.stringify` of the object with its keys sorted at every level is the
canonical form (contract keys are ASCII): `examples/node-agent/contract.js` does all four
steps with no package but `node:crypto`. Python's `json.dumps(..., sort_keys=True,
separators=(",", ":"), ensure_ascii=False)` is not (it writes `90.0` and sorts by code
point): use an RFC 8785 library, or Baton's `bus.jcs`. Baton before protocol v1 took the
digest over another form (`budget.seconds` written `0.0`); runs recorded then keep
resuming under their contracts, but an agent advertising an old digest is refused.
{vectors}"""
