#!/usr/bin/env node
// A Baton agent in Node.js, written from docs/protocol.md alone: it heartbeats, takes
// single and batched assignments (acking each), runs them, returns each outcome as a
// direct report (request/reply) and, unanswered, through the durable inbox, obeys
// cancel and drain, speaks msgpack or JSON, and reads and writes large values by
// reference (blobs). See README.md.
"use strict";

const crypto = require("node:crypto");
const fs = require("node:fs");
const contracts = require("./contract.js");

const ENCODING_HEADER = "Baton-Encoding";
const REPORT_TIMEOUT_MS = 2000; // how long a direct report waits for its answer
const DEFAULT_HEARTBEAT_S = 0.5; // until the orchestrator's answer names another

// -- configuration: flags, else environment ----------------------------------------

function option(name, env, fallback) {
  const at = process.argv.indexOf(`--${name}`);
  if (at !== -1 && at + 1 < process.argv.length) return process.argv[at + 1];
  return process.env[env] || fallback;
}

const role = option("role", "BATON_ROLE", "");
if (!/^[A-Za-z0-9_\-:]+$/.test(role)) {
  console.error("usage: node agent.js --role ROLE [--id ID] [--nats URL] [--contract FILE] " +
    "[--print-digest]  (or $BATON_ROLE)");
  process.exit(2);
}

// Under role contracts: its role's contract (`--contract FILE`, or `$BATON_CONTRACT`), as
// JSON; the digest it advertises is computed here (contract.js), as docs/protocol.md says.
let contractDigest = "";
try {
  const contract = contracts.loadContract(role, option("contract", "BATON_CONTRACT_FILE", ""));
  if (contract) contractDigest = contracts.digest(contract);
} catch (e) {
  console.error(`node agent.js: ${e.message}`);
  process.exit(2);
}
if (process.argv.includes("--print-digest")) { // the digest alone, and no bus
  if (!contractDigest) {
    console.error("node agent.js --print-digest: give the contract (--contract or $BATON_CONTRACT)");
    process.exit(2);
  }
  console.log(contractDigest);
  process.exit(0);
}

const {
  connect,
  headers: natsHeaders,
  credsAuthenticator,
  nkeyAuthenticator,
} = require("nats");
const { encode: packEncode, decode: packDecode } = require("@msgpack/msgpack");
const agentId = option("id", "BATON_AGENT_ID", `${role}-node-${crypto.randomBytes(3).toString("hex")}`);
const natsUrl = option("nats", "BATON_NATS_URL", "");
if (!natsUrl) {
  console.error("node agent.js: --nats or $BATON_NATS_URL is required");
  process.exit(2);
}
const capacity = Number(option("capacity", "BATON_CAPACITY", "4"));
const sendEncoding = option("encoding", "BATON_ENCODING", "msgpack"); // what this agent sends
const instance = crypto.randomBytes(8).toString("hex"); // new at each start

// -- encoding: msgpack by default, JSON when the header says so ----------------------

function encodeAs(message, encoding) {
  if (encoding === "json") return Buffer.from(JSON.stringify(message));
  return packEncode(message);
}

function encodingOf(msg) {
  return (msg.headers && msg.headers.get(ENCODING_HEADER)) || "msgpack";
}

function decodeMsg(msg) {
  if (encodingOf(msg) === "json") return JSON.parse(Buffer.from(msg.data).toString("utf8"));
  return packDecode(msg.data);
}

function headersFor(encoding, extra = {}) {
  const h = natsHeaders();
  if (encoding === "json") h.set(ENCODING_HEADER, "json");
  for (const [k, v] of Object.entries(extra)) h.set(k, v);
  return h;
}

function reply(msg, message) {
  // a reply goes back in the encoding the request came in
  const encoding = encodingOf(msg);
  msg.respond(encodeAs(message, encoding), { headers: headersFor(encoding) });
}

// -- connecting: URL (user and password in it, as `baton admit` writes), creds, nkey --

function connectOptions() {
  const url = new URL(natsUrl);
  const options = {
    servers: `${url.protocol}//${url.host}`,
    name: agentId,
    // replies come only under the agent's own inbox prefix on Baton's embedded server
    inboxPrefix: `_INBOX_${agentId.replace(/[-:]/g, "_")}`,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 500,
  };
  if (url.username) {
    options.user = decodeURIComponent(url.username);
    options.pass = decodeURIComponent(url.password);
  }
  if (process.env.BATON_NATS_CREDS) {
    options.authenticator = credsAuthenticator(fs.readFileSync(process.env.BATON_NATS_CREDS));
  } else if (process.env.BATON_NATS_NKEY) {
    const seed = fs.readFileSync(process.env.BATON_NATS_NKEY, "utf8").trim();
    options.authenticator = nkeyAuthenticator(new TextEncoder().encode(seed));
  }
  return options;
}

// -- large values by reference (docs/protocol.md, "Large values by reference") --------
//
// A map of exactly `$blob`, `size` and `media_type` in an input stands for a value kept
// in the blob store: it is fetched in chunks on `baton.blob.<id>.get`, checked against
// its SHA-256, and decoded by its media type before the handler sees the input. A string
// or bytes of the output over the threshold is uploaded in chunks on
// `baton.blob.<id>.put` and replaced by the reference the last chunk's ack holds. (Baton's
// Python SDK also stores a large map or list made of small parts; this example does not.)
// Blob requests go in msgpack, whatever this agent sends otherwise.

const BLOB_THRESHOLD = Number(option("blob-threshold", "BATON_BLOB_THRESHOLD", String(256 * 1024)));
const BLOB_CHUNK_BYTES = 512 * 1024;
const BLOB_TIMEOUT_MS = 10000;
const sha256 = (data) => `sha256:${crypto.createHash("sha256").update(data).digest("hex")}`;

function isRef(value) {
  if (!value || typeof value !== "object" || Array.isArray(value) || value instanceof Uint8Array) return false;
  const keys = Object.keys(value).sort();
  return keys.length === 3 && keys[0] === "$blob" && keys[1] === "media_type" && keys[2] === "size"
    && /^sha256:[0-9a-f]{64}$/.test(value.$blob) && Number.isInteger(value.size);
}

async function blobRequest(verb, message) {
  const msg = await nc.request(`baton.blob.${agentId}.${verb}`, packEncode(message),
    { timeout: BLOB_TIMEOUT_MS });
  const answer = packDecode(msg.data);
  if (answer.kind === "error") throw new Error(`${answer.error}: ${answer.detail}`);
  return answer;
}

async function getBlob(runId, ref) {
  const parts = [];
  let offset = 0;
  for (;;) {
    const chunk = await blobRequest("get",
      { kind: "blob.get", run_id: runId, digest: ref.$blob, offset, length: 0 });
    parts.push(Buffer.from(chunk.data));
    offset += chunk.data.length;
    if (offset >= chunk.size || chunk.data.length === 0) break;
  }
  const data = Buffer.concat(parts);
  if (sha256(data) !== ref.$blob || data.length !== ref.size) { // never hand it on
    const error = new Error(`BlobForged: blob ${ref.$blob} hashes to ${sha256(data)}`);
    error.retryable = false;
    throw error;
  }
  return data;
}

async function putBlob(runId, data, mediaType) {
  const digest = sha256(data);
  const uploadId = crypto.randomBytes(8).toString("hex");
  let offset = 0;
  for (;;) {
    const ack = await blobRequest("put", {
      kind: "blob.put", run_id: runId, upload_id: uploadId, offset,
      data: data.subarray(offset, offset + BLOB_CHUNK_BYTES), size: data.length, digest,
      media_type: mediaType,
    });
    if (ack.ref) return ack.ref;
    if (!(ack.received > offset)) throw new Error(`blob upload stuck at ${offset}`);
    offset = ack.received;
  }
}

async function inflate(value, runId) {
  if (Array.isArray(value)) {
    const out = [];
    for (const item of value) out.push(await inflate(item, runId));
    return out;
  }
  if (!value || typeof value !== "object" || value instanceof Uint8Array) return value;
  if (isRef(value)) {
    const data = await getBlob(runId, value);
    const kind = value.media_type.split(";")[0].trim().toLowerCase();
    if (kind === "text/plain") return data.toString("utf8");
    if (kind === "application/msgpack") return inflate(packDecode(data), runId);
    return data;
  }
  const out = {};
  for (const [key, item] of Object.entries(value)) out[key] = await inflate(item, runId);
  return out;
}

async function deflate(value, runId) {
  if (typeof value === "string" && Buffer.byteLength(value) > BLOB_THRESHOLD) {
    return putBlob(runId, Buffer.from(value, "utf8"), "text/plain; charset=utf-8");
  }
  if (value instanceof Uint8Array) {
    return value.length > BLOB_THRESHOLD
      ? putBlob(runId, Buffer.from(value), "application/octet-stream") : value;
  }
  if (Array.isArray(value)) {
    const out = [];
    for (const item of value) out.push(await deflate(item, runId));
    return out;
  }
  if (!value || typeof value !== "object" || isRef(value)) return value;
  const out = {};
  for (const [key, item] of Object.entries(value)) out[key] = await deflate(item, runId);
  return out;
}

// -- the work itself ------------------------------------------------------------------

// The handler: waits `params.seconds` (so cancel and drain can be seen), then greets;
// with `params.echo`, it hands back the run's input of that name, and its length.
async function handle(assignment, signal) {
  const input = assignment.input || {};
  const params = input.params || {};
  const seconds = Number(params.seconds || 0);
  if (seconds > 0) await sleep(seconds * 1000, signal);
  const deps = Object.keys(input.deps || {});
  const said = { said: `hello ${params.name || "world"} from node`, by: agentId, deps };
  if (params.echo) {
    const echoed = (input.input || {})[params.echo];
    return { ...said, echo: echoed, echo_length: echoed ? echoed.length : 0 };
  }
  return said;
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(signal.reason);
    }, { once: true });
  });
}

// -- the agent --------------------------------------------------------------------------

const held = new Map(); // "run|task|attempt" -> {assignment, abort}
const seen = new Set(); // attempts taken, so a re-sent assignment is not run twice
let heartbeatS = DEFAULT_HEARTBEAT_S;
let draining = false;
let online = true; // whether the bus is connected now (see main)
let nc;

const keyOf = (a) => `${a.run_id}|${a.task_id}|${a.attempt}`;

function heartbeat() {
  return {
    kind: "agent.heartbeat",
    agent_id: agentId,
    role,
    capabilities: [role],
    capacity,
    load: held.size,
    held: [...held.values()].map(({ assignment: a }) => ({
      run_id: a.run_id, task_id: a.task_id, attempt: a.attempt,
    })),
    contract_digest: contractDigest,
    instance,
  };
}

async function beat() {
  while (!nc.isClosed()) {
    nc.publish(`baton.registry.heartbeat.${agentId}`, encodeAs(heartbeat(), sendEncoding), {
      headers: headersFor(sendEncoding),
    });
    await new Promise((r) => setTimeout(r, heartbeatS * 1000));
  }
}

function onRegistry(err, msg) {
  if (err) return;
  let ack;
  try { ack = decodeMsg(msg); } catch { return; }
  if (ack.kind !== "agent.heartbeat.ack" || ack.instance !== instance) return;
  if (ack.heartbeat_s > 0 && ack.heartbeat_s <= 3600) heartbeatS = ack.heartbeat_s;
  if (ack.verdict === "refused") {
    console.error(`agent ${agentId}: id refused (${ack.detail}); draining`);
    drain();
  }
}

function accept(a) {
  if (draining) return { kind: "task.assign.ack", accepted: false, reason: "draining" };
  const key = keyOf(a);
  if (seen.has(key)) return { kind: "task.assign.ack", accepted: true, reason: "already taken" };
  seen.add(key);
  const abort = new AbortController();
  held.set(key, { assignment: a, abort });
  work(a, abort).finally(() => held.delete(key));
  return { kind: "task.assign.ack", accepted: true };
}

function onAssign(err, msg) {
  if (err) return;
  let message;
  try {
    message = decodeMsg(msg);
  } catch (e) {
    reply(msg, { kind: "error", error: "MalformedMessage", detail: String(e) });
    return;
  }
  const forInstance = message.kind === "task.assign.batch"
    ? (message.assignments[0] || {}).instance : message.instance;
  if (forInstance && forInstance !== instance) return; // another process's: not ours to answer
  if (message.kind === "task.assign.batch") {
    reply(msg, { kind: "task.assign.acks", acks: message.assignments.map(accept) });
  } else if (message.kind === "task.assign") {
    reply(msg, accept(message));
  } else {
    reply(msg, { kind: "error", error: "MalformedMessage", detail: `unexpected ${message.kind}` });
  }
}

function onControl(err, msg) {
  if (err) return;
  let control;
  try { control = decodeMsg(msg); } catch { return; }
  if (control.kind !== "agent.control") return;
  if (control.instance && control.instance !== instance) return;
  if (control.action === "drain") {
    drain();
  } else if (control.action === "cancel") {
    const entry = held.get(keyOf(control));
    if (entry) entry.abort.abort(new Error("cancelled"));
  }
}

async function work(a, abort) {
  const started = Date.now();
  const timer = setTimeout(() => abort.abort(new Error(`handler exceeded ${a.timeout_s}s`)),
    a.timeout_s * 1000);
  const base = {
    run_id: a.run_id, task_id: a.task_id, attempt: a.attempt,
    lease_token: a.lease_token, agent_id: agentId,
  };
  let outcome;
  try {
    const given = { ...a, input: await inflate(a.input || {}, a.run_id) };
    const output = await deflate(await handle(given, abort.signal), a.run_id);
    outcome = { kind: "task.result", ...base, output, elapsed_s: (Date.now() - started) / 1000 };
  } catch (e) {
    if (abort.signal.aborted && String(abort.signal.reason.message) === "cancelled") {
      console.error(`attempt ${a.attempt} of ${a.task_id} cancelled`);
      return; // a cancelled attempt reports nothing
    }
    outcome = { kind: "task.failure", ...base, error: String(e.message || e),
      retryable: e.retryable !== false };
  } finally {
    clearTimeout(timer);
  }
  await report(outcome);
}

// Returns once the outcome is durable: the orchestrator answered it, or the inbox has it.
async function report(outcome) {
  const run = outcome.run_id;
  try {
    const answer = decodeMsg(await nc.request(`baton.report.${run}.${agentId}`,
      encodeAs(outcome, sendEncoding), { timeout: REPORT_TIMEOUT_MS, headers: headersFor(sendEncoding) }));
    if (answer.kind === "task.report.ack") {
      if (answer.accepted === false) { // refused: recorded as rejected, never sent again
        console.error(`${outcome.kind} of ${outcome.task_id} refused (${answer.code}): ${answer.reason}`);
      }
      return;
    }
  } catch (e) {
    // no answer in time, or an error reply: the durable inbox keeps it instead
  }
  const kind = outcome.kind === "task.result" ? "result" : "failure";
  const id = `${run}:${outcome.task_id}:${outcome.attempt}:${kind}:${agentId}:${outcome.lease_token}`;
  const js = nc.jetstream();
  const data = encodeAs(outcome, sendEncoding);
  try {
    const ack = await js.publish(`baton.inbox.${run}.${agentId}`, data,
      { msgID: id, headers: headersFor(sendEncoding) });
    if (ack.duplicate) { // someone took the id first: send it again under a fresh one
      await js.publish(`baton.inbox.${run}.${agentId}`, data,
        { msgID: `${id}:${crypto.randomBytes(8).toString("hex")}`, headers: headersFor(sendEncoding) });
    }
  } catch (e) {
    console.error(`could not return attempt ${outcome.attempt} of ${outcome.task_id}: ${e.message}`);
  }
}

const OFFLINE_DRAIN_MS = 1000; // held work is given up once the bus has been gone this long

// Drain: take nothing new, finish what is held (its outcomes returned), then leave. A
// second signal, or a bus that stays away, gives held work up (the orchestrator runs it
// again after the lease passes).
let drained;
function drain() {
  if (draining) {
    process.exit(1);
  }
  draining = true;
  drained = (async () => {
    let offlineSince = 0;
    while (held.size) {
      await new Promise((r) => setTimeout(r, 50));
      if (online) offlineSince = 0;
      else if (!offlineSince) offlineSince = Date.now();
      else if (Date.now() - offlineSince > OFFLINE_DRAIN_MS) break;
    }
    const gone = new Promise((r) => setTimeout(r, OFFLINE_DRAIN_MS));
    await Promise.race([nc.drain().catch(() => {}), gone]);
    process.exit(0);
  })();
  return drained;
}

async function main() {
  nc = await connect(connectOptions());
  nc.subscribe(`baton.agent.${agentId}.registry`, { callback: onRegistry });
  nc.subscribe(`baton.agent.${agentId}.assign`, { callback: onAssign });
  nc.subscribe(`baton.agent.${agentId}.control`, { callback: onControl });
  await nc.flush();
  (async () => {
    for await (const s of nc.status()) {
      if (s.type === "disconnect") online = false;
      else if (s.type === "reconnect") online = true;
    }
  })().catch(() => {});
  for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => drain());
  console.error(`agent ${agentId} serving role ${role}`);
  beat().catch(() => {});
  await nc.closed();
  process.exit(0);
}

main().catch((e) => {
  console.error(`agent ${agentId}: ${e.message || e}`);
  process.exit(2);
});
