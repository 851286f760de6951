// A caresync sync-protocol client (protocol version 4) in JavaScript, written from
// the protocol, and helpers to write caresync records with the real `yjs`.
//
// Wire format: one websocket binary message is one frame, the msgpack encoding of
// [protocol_version, type_code, body]; body maps every field of the message to its
// value (all present, no other key); bytes are msgpack bin.
//
// Conversation: Hello -> Welcome, ProveServer -> ServerProof (checked here:
// Ed25519 over the proof payload), then Authenticate or ResumeSession ->
// Authenticated, then (a new replica) Enrol -> Enrolled, then requests:
// PullRequest -> PullBatch, PushBatch -> PushAck. An Error with fatal=false
// refuses one request and the connection stays up; a fatal Error ends it.
//
// Refusals are returned as values ({type: "error", ...}), never thrown: a caller
// probing a server wants to see exactly what it answered. Anything that is not
// the protocol (a text frame, an unknown type, a bad signature, a timeout) throws.

import { randomBytes, createPublicKey, verify } from "node:crypto";
import { encode, decode } from "@msgpack/msgpack";
import WebSocket from "ws";
import * as Y from "yjs";

export const PROTOCOL_VERSION = 4;
export const DEFAULT_TIMEOUT_MS = 20_000;
export const MAX_FRAME_BYTES = 16 * 1024 * 1024;

export const TYPE = Object.freeze({
  HELLO: 1,
  WELCOME: 2,
  AUTHENTICATE: 3,
  RESUME_SESSION: 4,
  AUTHENTICATED: 5,
  ENROL: 6,
  ENROLLED: 7,
  PROVE_SERVER: 8,
  SERVER_PROOF: 9,
  COPY_REQUEST: 16,
  COPY_BATCH: 17,
  PULL_REQUEST: 18,
  PULL_BATCH: 19,
  PUSH_BATCH: 20,
  PUSH_ACK: 21,
  SUBSCRIBE: 22,
  LIVE_UPDATE: 23,
  OUTBOX_REPORT: 24,
  LIVE_BATCH: 25,
  ERROR: 126,
  GOODBYE: 127,
});

const NAMES = Object.fromEntries(Object.entries(TYPE).map(([name, code]) => [code, name]));

// The fields of every message a client sends, in wire order (version 4).
const CLIENT_FIELDS = Object.freeze({
  [TYPE.HELLO]: ["protocol_versions", "max_frame_bytes", "replica_id", "server_id_expected", "organisation"],
  [TYPE.AUTHENTICATE]: ["username", "password", "organisation", "replica_secret"],
  [TYPE.RESUME_SESSION]: ["session_token", "replica_secret"],
  [TYPE.ENROL]: ["device_name", "replica_id"],
  [TYPE.PROVE_SERVER]: ["nonce"],
  [TYPE.PULL_REQUEST]: ["after_seq", "limit", "include_own"],
  [TYPE.PUSH_BATCH]: ["items"],
  [TYPE.GOODBYE]: ["reason"],
});

// The fields of the server messages this client reads, to check what arrives.
const SERVER_FIELDS = Object.freeze({
  [TYPE.WELCOME]: ["protocol_version", "server_id", "max_frame_bytes"],
  [TYPE.SERVER_PROOF]: ["server_key", "signature"],
  [TYPE.AUTHENTICATED]: ["session_token", "expires_at_ms", "user", "organisation", "pushed_up_to", "replica_secret"],
  [TYPE.ENROLLED]: ["replica_id", "server_id", "organisation", "replica_secret"],
  [TYPE.PULL_BATCH]: ["items", "checkpoint", "head_seq"],
  [TYPE.PUSH_ACK]: ["up_to_local_seq"],
  [TYPE.ERROR]: ["code", "message", "fatal", "detail", "in_reply_to"],
  [TYPE.GOODBYE]: ["reason"],
});

export class ProtocolViolation extends Error {}

/** One frame: the msgpack of [4, type, body], body holding exactly the message's fields. */
export function encodeFrame(type, body) {
  const names = CLIENT_FIELDS[type];
  if (names === undefined) throw new ProtocolViolation(`this client does not send type ${type}`);
  const extra = Object.keys(body).filter((name) => !names.includes(name));
  if (extra.length > 0) throw new ProtocolViolation(`${NAMES[type]}: unknown fields ${extra}`);
  const ordered = {};
  for (const name of names) {
    if (!(name in body)) throw new ProtocolViolation(`${NAMES[type]}: missing field ${name}`);
    ordered[name] = body[name];
  }
  return encode([PROTOCOL_VERSION, type, ordered]);
}

/** A frame from the server, checked: {version, type, name, body}. */
export function decodeFrame(data) {
  const envelope = decode(data);
  if (!Array.isArray(envelope) || envelope.length !== 3) {
    throw new ProtocolViolation("not an envelope [protocol_version, type_code, body]");
  }
  const [version, type, body] = envelope;
  if (!Number.isInteger(version) || !Number.isInteger(type) || body === null || typeof body !== "object") {
    throw new ProtocolViolation(`a malformed envelope: ${JSON.stringify(envelope).slice(0, 200)}`);
  }
  const names = SERVER_FIELDS[type];
  if (names !== undefined) {
    const keys = Object.keys(body);
    if (keys.length !== names.length || !names.every((name) => keys.includes(name))) {
      throw new ProtocolViolation(`${NAMES[type]}: fields ${keys}, expected ${names}`);
    }
  }
  return { version, type, name: NAMES[type] ?? `type ${type}`, body };
}

// ------------------------------------------------------------------ server proof

const PROOF_CONTEXT = Buffer.from("caresync server proof v1", "utf8");

function lengthPrefixed(bytes) {
  const prefix = Buffer.alloc(4);
  prefix.writeUInt32BE(bytes.length, 0);
  return Buffer.concat([prefix, Buffer.from(bytes)]);
}

/** What the server signs: context, then nonce, server id, replica id ("" if none) and
 *  the TLS channel binding (empty without TLS), each with a 4-byte big-endian length. */
export function serverProofPayload(nonce, serverId, replicaId, channelBinding = new Uint8Array(0)) {
  return Buffer.concat([
    PROOF_CONTEXT,
    lengthPrefixed(nonce),
    lengthPrefixed(Buffer.from(serverId, "utf8")),
    lengthPrefixed(Buffer.from(replicaId ?? "", "utf8")),
    lengthPrefixed(channelBinding),
  ]);
}

/** True if `signature` is the Ed25519 signature of `payload` by the raw 32-byte `rawKey`. */
export function ed25519Verify(rawKey, payload, signature) {
  if (rawKey.length !== 32 || signature.length !== 64) return false;
  const key = createPublicKey({
    key: { kty: "OKP", crv: "Ed25519", x: Buffer.from(rawKey).toString("base64url") },
    format: "jwk",
  });
  return verify(null, payload, key, Buffer.from(signature));
}

// --------------------------------------------------------------------- connection

/** One websocket connection to a caresync server, frame by frame. */
export class Connection {
  constructor(socket, timeoutMs) {
    this.socket = socket;
    this.timeoutMs = timeoutMs;
    this.inbox = [];
    this.waiters = [];
    this.closed = null; // {code, reason} once the socket closed
    socket.on("message", (data, isBinary) => this.#arrived(data, isBinary));
    socket.on("close", (code, reason) => {
      this.closed = { code, reason: reason.toString("utf8") };
      this.#wake();
    });
    socket.on("error", (error) => {
      this.closed ??= { code: null, reason: String(error.message ?? error) };
      this.#wake();
    });
  }

  static open(url, { timeoutMs = DEFAULT_TIMEOUT_MS } = {}) {
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(url, {
        perMessageDeflate: false,
        maxPayload: MAX_FRAME_BYTES,
        handshakeTimeout: timeoutMs,
      });
      socket.once("open", () => resolve(new Connection(socket, timeoutMs)));
      socket.once("error", reject);
    });
  }

  #arrived(data, isBinary) {
    let frame;
    try {
      frame = isBinary ? decodeFrame(data) : { error: new ProtocolViolation("a text frame") };
    } catch (error) {
      frame = { error };
    }
    this.inbox.push(frame);
    this.#wake();
  }

  #wake() {
    const waiters = this.waiters.splice(0);
    for (const wake of waiters) wake();
  }

  get isOpen() {
    return this.closed === null && this.socket.readyState === WebSocket.OPEN;
  }

  send(type, body) {
    if (!this.isOpen) throw new ProtocolViolation(`cannot send ${NAMES[type]}: the connection is closed`);
    this.socket.send(encodeFrame(type, body), { binary: true });
  }

  /** The next frame, or {type: "closed"} once the server closed; throws on timeout. */
  async recv() {
    const deadline = Date.now() + this.timeoutMs;
    // Each round returns, or waits for an arrival, the close or the deadline.
    for (let round = 0; round < 10_000; round += 1) {
      if (this.inbox.length > 0) {
        const frame = this.inbox.shift();
        if (frame.error) throw frame.error;
        return frame;
      }
      if (this.closed !== null) return { type: "closed", name: "closed", body: this.closed };
      const left = deadline - Date.now();
      if (left <= 0) throw new ProtocolViolation(`no answer within ${this.timeoutMs} ms`);
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    throw new ProtocolViolation("no frame after 10000 wake-ups");
  }

  /** Send a request and wait for its answer: one of `expected`, an Error, or "closed". */
  async request(type, body, expected) {
    this.send(type, body);
    return this.answer(expected);
  }

  async answer(expected) {
    const frame = await this.recv();
    if (frame.type === expected) return { type: "ok", name: frame.name, body: frame.body };
    if (frame.type === TYPE.ERROR) return { type: "error", ...frame.body };
    if (frame.type === TYPE.GOODBYE || frame.type === "closed") {
      return { type: "closed", ...frame.body, closed: this.closed };
    }
    throw new ProtocolViolation(`expected ${NAMES[expected]}, got ${frame.name}`);
  }

  /** Wait until the server closes the socket (bounded by the timeout): true if it did. */
  async waitClosed() {
    for (let i = 0; i < 16; i += 1) {
      const frame = await this.recv().catch(() => null);
      if (frame === null) return false;
      if (frame.type === "closed") return true;
    }
    return false;
  }

  close() {
    if (this.socket.readyState === WebSocket.OPEN) {
      try {
        this.send(TYPE.GOODBYE, { reason: "done" });
      } catch {
        // closing anyway
      }
    }
    this.socket.close();
  }
}

// ------------------------------------------------------------------------ session

/**
 * A session with a server: hello, server proof, login, then requests.
 * Every step returns the server's answer: {type: "ok", body} | {type: "error", code,
 * message, fatal, ...} | {type: "closed", ...}.
 */
export class Session {
  constructor(connection) {
    this.connection = connection;
    this.serverId = null;
    this.serverKey = null;
    this.replicaId = null;
    this.replicaSecret = null;
    this.sessionToken = null;
  }

  static async connect(url, options = {}) {
    return new Session(await Connection.open(url, options));
  }

  /** Hello: a new replica names none; an enrolled one names its id, server and organisation. */
  async hello({ replicaId = null, serverIdExpected = null, organisation = null } = {}) {
    this.replicaId = replicaId;
    const reply = await this.connection.request(
      TYPE.HELLO,
      {
        protocol_versions: [PROTOCOL_VERSION],
        max_frame_bytes: MAX_FRAME_BYTES,
        replica_id: replicaId,
        server_id_expected: serverIdExpected,
        organisation,
      },
      TYPE.WELCOME,
    );
    if (reply.type === "ok") {
      if (reply.body.protocol_version !== PROTOCOL_VERSION) {
        throw new ProtocolViolation(`the server chose version ${reply.body.protocol_version}`);
      }
      this.serverId = reply.body.server_id;
    }
    return reply;
  }

  /** ProveServer: check the server's Ed25519 proof; `pinnedKey` (raw bytes) if known. */
  async proveServer(pinnedKey = null) {
    const nonce = randomBytes(32);
    const reply = await this.connection.request(TYPE.PROVE_SERVER, { nonce }, TYPE.SERVER_PROOF);
    if (reply.type !== "ok") return reply;
    const key = Buffer.from(reply.body.server_key);
    const payload = serverProofPayload(nonce, this.serverId, this.replicaId);
    if (!ed25519Verify(key, payload, reply.body.signature)) {
      throw new ProtocolViolation("the server's proof does not verify: not the server it claims");
    }
    if (pinnedKey !== null && !key.equals(Buffer.from(pinnedKey))) {
      throw new ProtocolViolation("the server's key is not the one pinned");
    }
    this.serverKey = key;
    return reply;
  }

  async authenticate({ username, password, organisation, replicaSecret = null }) {
    const reply = await this.connection.request(
      TYPE.AUTHENTICATE,
      { username, password, organisation, replica_secret: replicaSecret },
      TYPE.AUTHENTICATED,
    );
    if (reply.type === "ok") this.sessionToken = reply.body.session_token;
    return reply;
  }

  async resume(sessionToken, replicaSecret = null) {
    const reply = await this.connection.request(
      TYPE.RESUME_SESSION,
      { session_token: sessionToken, replica_secret: replicaSecret },
      TYPE.AUTHENTICATED,
    );
    if (reply.type === "ok") this.sessionToken = reply.body.session_token;
    return reply;
  }

  async enrol(deviceName = "", proposedId = null) {
    const reply = await this.connection.request(
      TYPE.ENROL,
      { device_name: deviceName, replica_id: proposedId },
      TYPE.ENROLLED,
    );
    if (reply.type === "ok") {
      this.replicaId = reply.body.replica_id;
      this.replicaSecret = reply.body.replica_secret;
    }
    return reply;
  }

  async pull(afterSeq, { limit = 1000, includeOwn = false } = {}) {
    return this.connection.request(
      TYPE.PULL_REQUEST,
      { after_seq: afterSeq, limit, include_own: includeOwn },
      TYPE.PULL_BATCH,
    );
  }

  /** Every feed entry after `afterSeq` (bounded: at most `maxBatches` batches). */
  async pullAll(afterSeq = 0, { maxBatches = 1000 } = {}) {
    const items = [];
    let checkpoint = afterSeq;
    for (let i = 0; i < maxBatches; i += 1) {
      const reply = await this.pull(checkpoint);
      if (reply.type !== "ok") return { reply, items, checkpoint };
      for (const [seq, recordId, update] of reply.body.items) items.push({ seq, recordId, update });
      checkpoint = reply.body.checkpoint;
      if (checkpoint >= reply.body.head_seq) return { reply, items, checkpoint, head: reply.body.head_seq };
    }
    throw new ProtocolViolation(`the feed did not end within ${maxBatches} batches`);
  }

  /** PushBatch of [local_seq, record_id, update] items; PushAck or a (non-fatal) Error. */
  async push(items) {
    return this.connection.request(TYPE.PUSH_BATCH, { items }, TYPE.PUSH_ACK);
  }

  close() {
    this.connection.close();
  }
}

// ------------------------------------------------------------------------ records

/** A fresh revision id: 64 random bits as 16 hex digits. */
export function newRevisionId() {
  return randomBytes(8).toString("hex");
}

/** A fresh collection entry id. */
export function newEntryId() {
  return randomBytes(16).toString("hex");
}

/**
 * A revision's stored form: one compact JSON object, keys p (path), v (value),
 * ps (parent revision ids: the heads of the path the writer saw), a (author),
 * r (replica id), t (wall-clock ms), c (clock counter), and s (for a field of a
 * collection entry: the heads of the entry's other fields the writer saw).
 */
export function encodeRevision({ path, value, parents = [], author, replica, wallMs, counter = 0, seen = null }) {
  const revision = { p: path, v: value, ps: parents, a: author, r: replica, t: wallMs, c: counter };
  if (seen !== null && Object.keys(seen).length > 0) revision.s = seen;
  return JSON.stringify(revision);
}

/** A Y.Doc holding a record: every update given, applied in order. */
export function recordDoc(updates) {
  const doc = new Y.Doc();
  for (const update of updates) Y.applyUpdate(doc, update);
  return doc;
}

/** The record's revisions, parsed: Map(id -> revision object); malformed ones skipped. */
export function revisionsOf(doc) {
  const out = new Map();
  for (const [id, stored] of doc.getMap("revisions").entries()) {
    if (typeof stored !== "string") continue;
    try {
      const revision = JSON.parse(stored);
      if (revision && typeof revision.p === "string") out.set(id, revision);
    } catch {
      // a malformed revision is skipped, as every replica skips it
    }
  }
  return out;
}

/** The heads of a path: its revisions that no other revision names as a parent. */
export function headsOf(doc, path) {
  const revisions = [...revisionsOf(doc).entries()].filter(([, r]) => r.p === path);
  const named = new Set(revisions.flatMap(([, r]) => r.ps ?? []));
  return revisions.map(([id]) => id).filter((id) => !named.has(id)).sort();
}

/** The update of one transaction of `doc` running `change` (the bytes a Yjs peer sends). */
export function captureUpdate(doc, change) {
  const updates = [];
  const listen = (update) => updates.push(update);
  doc.on("update", listen);
  try {
    doc.transact(() => change(doc), "caresync-js");
  } finally {
    doc.off("update", listen);
  }
  if (updates.length !== 1) throw new Error(`expected one update, got ${updates.length}`);
  return updates[0];
}

export { Y };
