"""Role contracts: what an agent serving a role may do, fixed before any agent runs.

Both sides need the same contract: the agent enforces it on itself (its tools, budgets,
memory scopes, concurrency) and the orchestrator refuses an agent whose contract it does
not know. So contracts live here, in `bus`, as plain data with a digest: an agent
advertises `role` + `contract_digest` in its heartbeat, and a digest that differs from
the orchestrator's copy means the two disagree about what the agent may do.

Contracts come from a TOML file (`[[roles]]` tables) or are built in Python; either way
`validate_contract` checks them and every error names the location of the bad value.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import msgspec

from bus import jcs
from bus.errors import ContractError

Scope = Literal["run", "agent", "global"]
SCOPES: tuple[Scope, ...] = ("run", "agent", "global")
_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_TOOL = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
MAX_CONCURRENCY = 10_000
MAX_BUDGET = {"tokens": 10**12, "seconds": 7 * 24 * 3600.0, "tool_calls": 1_000_000}
"""The largest per-task budget of each kind a contract may give."""


class Budget(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Per-task limits; 0 means no limit of that kind."""

    tokens: int = 0
    seconds: float = 0.0
    tool_calls: int = 0


class MemoryAccess(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Which shared-memory scopes the role may read and write."""

    read: list[Scope] = []
    write: list[Scope] = []


class RoleContract(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One role: its name and purpose, what it can do, and the limits it runs under."""

    name: str
    description: str = ""
    capabilities: list[str] = []
    tools: list[str] = []
    memory: MemoryAccess = MemoryAccess()
    handoff_to: list[str] = []
    budget: Budget = Budget()
    concurrency: int = 4

    @property
    def digest(self) -> str:
        """sha256 of the contract's RFC 8785 canonical JSON: equal contracts, equal digests."""
        return digest(self)

    def allows_tool(self, tool: str) -> bool:
        return tool in self.tools

    def may_read(self, scope: str) -> bool:
        return scope in self.memory.read

    def may_write(self, scope: str) -> bool:
        return scope in self.memory.write

    def may_hand_off_to(self, role: str) -> bool:
        return role in self.handoff_to


class ContractSet(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The `[[roles]]` of one contracts file."""

    roles: list[RoleContract]


def canonical(contract: RoleContract) -> bytes:
    """The bytes a contract's digest is taken over: its JSON with every field present
    (defaults filled in), canonicalised by RFC 8785 (`bus.jcs`), so any language that
    writes the same JSON and canonicalises it gets the same bytes (docs/protocol.md,
    "Contract digest")."""
    return jcs.canonicalize(msgspec.to_builtins(contract))


def digest(contract: RoleContract) -> str:
    """The lowercase hex sha256 of `canonical(contract)`: what an agent advertises."""
    return hashlib.sha256(canonical(contract)).hexdigest()


def legacy_digest(contract: RoleContract) -> str:
    """The digest Baton took before protocol v1 (msgspec's compact JSON, sorted keys,
    `budget.seconds` as `0.0`), which logs written then still hold (a run's
    `governed_by`): recognised when resuming such a run, never advertised."""
    old = msgspec.json.encode(msgspec.to_builtins(contract, order="sorted"), order="sorted")
    return hashlib.sha256(old).hexdigest()


def _check_names(where: str, names: Iterable[str], pattern: re.Pattern[str], what: str) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if not pattern.match(name):
            raise ContractError(f"{where}[{i}]", f"{name!r} is not a valid {what} name")
        if name in seen:
            raise ContractError(f"{where}[{i}]", f"duplicate {what} {name!r}")
        seen.add(name)


def validate_contract(contract: RoleContract, where: str = "") -> RoleContract:
    """`contract` if it is coherent, else `ContractError` naming the bad value's location."""
    at = f"{where}." if where else ""
    if not _NAME.match(contract.name):
        raise ContractError(f"{at}name", f"{contract.name!r}: 1-64 letters, digits, '-' or '_'")
    _check_names(f"{at}capabilities", contract.capabilities, _NAME, "capability")
    _check_names(f"{at}tools", contract.tools, _TOOL, "tool")
    _check_names(f"{at}handoff_to", contract.handoff_to, _NAME, "role")
    for kind in ("read", "write"):
        scopes: list[str] = list(getattr(contract.memory, kind))
        if len(set(scopes)) != len(scopes):
            raise ContractError(f"{at}memory.{kind}", "a scope is listed twice")
    budget = contract.budget
    for field, most in MAX_BUDGET.items():
        if not 0 <= getattr(budget, field) <= most:  # NaN is neither, so refused too
            raise ContractError(
                f"{at}budget.{field}", f"must be 0 (no limit) or positive, at most {most:g}"
            )
    if not 1 <= contract.concurrency <= MAX_CONCURRENCY:
        raise ContractError(f"{at}concurrency", f"must be between 1 and {MAX_CONCURRENCY}")
    return contract


def _location(error: msgspec.ValidationError) -> tuple[str, str]:
    text = str(error)
    match = re.search(r" - at `\$\.?(.*)`$", text)
    if match:
        return match.group(1) or "(top)", text[: match.start()]
    return "(top)", text


class Contracts:
    """Validated contracts by role name: what the orchestrator governs from."""

    def __init__(self, contracts: Iterable[RoleContract]) -> None:
        self._by_name: dict[str, RoleContract] = {}
        for i, contract in enumerate(contracts):
            validate_contract(contract, f"roles[{i}]")
            if contract.name in self._by_name:
                raise ContractError(f"roles[{i}].name", f"duplicate role {contract.name!r}")
            self._by_name[contract.name] = contract
        for i, contract in enumerate(self._by_name.values()):
            for j, target in enumerate(contract.handoff_to):
                if target not in self._by_name:
                    raise ContractError(
                        f"roles[{i}].handoff_to[{j}]", f"no role {target!r} in these contracts"
                    )

    def __contains__(self, role: object) -> bool:
        return role in self._by_name

    def __iter__(self) -> Any:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    @property
    def digest(self) -> str:
        """sha256 over every role's name and contract digest, in name order: the same
        contracts, from any file, have the same digest."""
        return self._digest_of(digest)

    @property
    def legacy_digest(self) -> str:
        """`digest` as Baton took it before protocol v1 (see `legacy_digest`)."""
        return self._digest_of(legacy_digest)

    def _digest_of(self, role_digest: Callable[[RoleContract], str]) -> str:
        lines = sorted(f"{name} {role_digest(c)}" for name, c in self._by_name.items())
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()

    def get(self, role: str) -> RoleContract:
        """The contract of `role`, or `ContractError`."""
        try:
            return self._by_name[role]
        except KeyError:
            raise ContractError("role", f"no contract for role {role!r}") from None

    def verdict(self, role: str, advertised_digest: str, capacity: int = 1) -> str:
        """'' when an agent advertising (`role`, `advertised_digest`) and running up to
        `capacity` tasks at once may join, else why not."""
        contract = self._by_name.get(role)
        if contract is None:
            return f"no contract for role {role!r}"
        if not advertised_digest:
            return f"agent advertises no contract for role {role!r}"
        if advertised_digest != contract.digest:
            return (
                f"contract digest {advertised_digest[:12]} differs from the known "
                f"{contract.digest[:12]} for role {role!r}"
            )
        if capacity > contract.concurrency:
            return f"capacity {capacity} is over the contract's concurrency {contract.concurrency}"
        return ""

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Contracts:
        """Contracts from already-parsed TOML/JSON data (`{"roles": [...]}`)."""
        try:
            contract_set = msgspec.convert(data, ContractSet)
        except msgspec.ValidationError as exc:
            location, message = _location(exc)
            raise ContractError(location, message) from exc
        return cls(contract_set.roles)
