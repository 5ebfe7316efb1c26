// A role contract's digest, computed from docs/protocol.md ("Contract digest") alone: the
// contract with every default filled in from the document's table, in RFC 8785 canonical
// JSON (JCS), sha256 in lowercase hex. No npm packages: only node:crypto and node:fs.
"use strict";

const crypto = require("node:crypto");
const fs = require("node:fs");

// The document's table of fields and defaults (`name` has none).
const DEFAULTS = {
  name: undefined,
  description: "",
  capabilities: [],
  tools: [],
  memory: { read: [], write: [] },
  handoff_to: [],
  budget: { tokens: 0, seconds: 0.0, tool_calls: 0 },
  concurrency: 4,
};
const INTEGERS = new Set(["budget.tokens", "budget.tool_calls", "concurrency"]);
const SCOPES = new Set(["run", "agent", "global"]);

class ContractError extends Error {}

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

// `written` with every field present: what is left out takes the document's default.
// Refuses what Baton refuses in the shape (an unknown field, a value of the wrong type),
// since a digest over a contract Baton would not load matches nothing.
function fill(written, defaults = DEFAULTS, at = "") {
  if (!isObject(written)) throw new ContractError(`${at || "contract"}: not a JSON object`);
  for (const key of Object.keys(written)) {
    if (!Object.hasOwn(defaults, key)) throw new ContractError(`${at}${key}: no such field`);
  }
  const full = {};
  for (const [key, fallback] of Object.entries(defaults)) {
    const where = `${at}${key}`;
    const value = Object.hasOwn(written, key) ? written[key] : fallback;
    if (value === undefined) throw new ContractError(`${where}: required`);
    if (isObject(fallback)) {
      full[key] = fill(value, fallback, `${where}.`);
    } else if (Array.isArray(fallback)) {
      if (!Array.isArray(value) || !value.every((v) => typeof v === "string")) {
        throw new ContractError(`${where}: must be a list of strings`);
      }
      if (at === "memory." && !value.every((v) => SCOPES.has(v))) {
        throw new ContractError(`${where}: scopes are run, agent, global`);
      }
      full[key] = [...value]; // lists keep their order
    } else if (typeof fallback === "number") {
      if (typeof value !== "number" || !Number.isFinite(value)) {
        throw new ContractError(`${where}: must be a number`);
      }
      if (INTEGERS.has(where) && !Number.isInteger(value)) {
        throw new ContractError(`${where}: must be an integer`);
      }
      full[key] = value; // 90 and 90.0 are one number, written 90
    } else {
      if (typeof value !== "string") throw new ContractError(`${where}: must be a string`);
      full[key] = value;
    }
  }
  return full;
}

// RFC 8785 for these values (strings, finite numbers, lists, objects with ASCII keys):
// JSON.stringify writes strings and numbers as JCS does; the keys are sorted at every
// level, by UTF-16 code units (what Array.prototype.sort compares).
function sortedKeys(value) {
  if (Array.isArray(value)) return value.map(sortedKeys);
  if (isObject(value)) {
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, sortedKeys(value[k])]));
  }
  return value;
}

function canonical(written) {
  return JSON.stringify(sortedKeys(fill(written)));
}

function digest(written) {
  return crypto.createHash("sha256").update(canonical(written), "utf8").digest("hex");
}

// The contract of `role` from JSON text: one contract (`{"name": ...}`), or a contracts
// file's roles as `baton contracts show FILE` prints them (`{"roles": [...]}`).
function contractOf(text, role, source) {
  let data;
  try {
    data = JSON.parse(text);
  } catch (e) {
    throw new ContractError(`${source}: not JSON (${e.message})`);
  }
  if (isObject(data) && Array.isArray(data.roles)) {
    const found = data.roles.filter((c) => isObject(c) && c.name === role);
    if (found.length !== 1) throw new ContractError(`${source}: no contract for role ${role}`);
    data = found[0];
  }
  if (!isObject(data) || data.name !== role) {
    throw new ContractError(`${source}: the contract is not role ${role}'s`);
  }
  return data;
}

// The agent's contract: the JSON file `file` names, else the JSON text of `$BATON_CONTRACT`,
// else none (open mode).
function loadContract(role, file, env = process.env) {
  if (file) return contractOf(fs.readFileSync(file, "utf8"), role, file);
  if (env.BATON_CONTRACT) return contractOf(env.BATON_CONTRACT, role, "$BATON_CONTRACT");
  return null;
}

module.exports = { DEFAULTS, ContractError, fill, canonical, digest, contractOf, loadContract };
