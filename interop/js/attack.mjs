#!/usr/bin/env node
// What a hostile client speaking the caresync protocol could try, from JavaScript
// with the real `yjs`. It enrols as its own replica (password login + Enrol),
// pulls the victim record, then tries each attack in its own push on the same
// connection and prints one JSON line per attempt with the server's answer.
//
// Job (JSON, as the first argument or on stdin):
//   url, organisation, username, password   the attacker's own account
//   victim_record_id, victim_revision_id    what to try to damage
//   victim_replica_id                       optional: else read from the victim revision's "r"
//   tries                                   optional: letters to run, default a..j:
//     a  delete the victim revision key            b  overwrite the victim revision key
//     c  a revision at the bare path "allergies"   d  an allergy "status" of the number 5
//     e  a revision dated t = 10**15               f  a value of 12 MiB
//     g  damaged bytes (truncated, flipped)        h  a Y.Text / nested Y.Map value
//     i  log in as the victim laptop without its secret; resume a made-up token;
//        enrol proposing the victim laptop's id
//     j  one honest revision (a new allergy: _created + substance "latex")
//     k  an honest-looking revision written as the victim laptop's Yjs client
//     l  an honest-looking revision whose "r" and "a" name the victim laptop and author
//   timeout_ms                              optional: bound on each answer (default 20000)
//
// Output lines: {"attempt": name, "outcome": "ack" | "error" | "closed" | "exception",
// "code", "message", "fatal", "in_reply_to", "head_before", "head_after", ...}.
// Exit status 0 once every attempt ran (whatever the server answered); 2 on a bad job.

import { randomBytes } from "node:crypto";
import {
  DEFAULT_TIMEOUT_MS,
  Session,
  Y,
  captureUpdate,
  encodeRevision,
  headsOf,
  newEntryId,
  newRevisionId,
  recordDoc,
  revisionsOf,
} from "./client.mjs";

const ALL_TRIES = "abcdefghij";

function emit(line) {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

function hex(bytes) {
  return Buffer.from(bytes).toString("hex");
}

function answerFields(reply) {
  if (reply.type === "ok") {
    const fields = { outcome: "ack" };
    if (reply.body.up_to_local_seq !== undefined) fields.up_to_local_seq = reply.body.up_to_local_seq;
    return fields;
  }
  if (reply.type === "error") {
    return {
      outcome: "error",
      code: reply.code,
      message: reply.message,
      fatal: reply.fatal,
      in_reply_to: reply.in_reply_to,
    };
  }
  return { outcome: "closed", close_code: reply.closed?.code ?? null, message: reply.closed?.reason ?? reply.reason ?? "" };
}

async function readJob() {
  if (process.argv[2]) return JSON.parse(process.argv[2]);
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

class Attacker {
  constructor(job) {
    this.job = job;
    this.timeoutMs = job.timeout_ms ?? DEFAULT_TIMEOUT_MS;
    this.session = null;
    this.replicaId = null;
    this.replicaSecret = null;
    this.sessionToken = null;
    this.serverId = null;
    this.serverKey = null;
    this.localSeq = 0;
    this.checkpoint = 0;
    this.head = 0;
    this.victimUpdates = [];
  }

  // ------------------------------------------------------------------ sessions

  async enrol() {
    const { url, organisation, username, password } = this.job;
    const session = await Session.connect(url, { timeoutMs: this.timeoutMs });
    const steps = [
      ["hello", () => session.hello()],
      ["prove", () => session.proveServer()],
      ["login", () => session.authenticate({ username, password, organisation })],
      ["enrol", () => session.enrol("caresync-js attacker")],
    ];
    for (const [step, run] of steps) {
      const reply = await run();
      if (reply.type !== "ok") {
        emit({ attempt: "enrol", step, ...answerFields(reply) });
        return false;
      }
    }
    this.session = session;
    this.serverId = session.serverId;
    this.serverKey = session.serverKey;
    this.replicaId = session.replicaId;
    this.replicaSecret = session.replicaSecret;
    this.sessionToken = session.sessionToken;
    emit({ attempt: "enrol", outcome: "ack", replica_id: this.replicaId, server_id: this.serverId });
    return true;
  }

  /** The attacker's own session again (token + its secret) if the last one was closed. */
  async ensureSession() {
    if (this.session?.connection.isOpen) return;
    const session = await Session.connect(this.job.url, { timeoutMs: this.timeoutMs });
    await session.hello({
      replicaId: this.replicaId,
      serverIdExpected: this.serverId,
      organisation: this.job.organisation,
    });
    await session.proveServer(this.serverKey);
    const reply = await session.resume(this.sessionToken, this.replicaSecret);
    if (reply.type !== "ok") throw new Error(`could not log in again: ${JSON.stringify(answerFields(reply))}`);
    this.session = session;
  }

  /** Pull the feed: the victim record's updates, and the feed head. */
  async pullVictim() {
    const { items, head, reply } = await this.session.pullAll(0);
    if (reply.type !== "ok") throw new Error(`pull refused: ${JSON.stringify(answerFields(reply))}`);
    this.victimUpdates = items.filter((item) => item.recordId === this.job.victim_record_id).map((i) => i.update);
    this.checkpoint = head;
    this.head = head;
  }

  /** The feed head now (a pull after the last checkpoint; our own entries are not sent). */
  async feedHead() {
    const reply = await this.session.pull(this.checkpoint);
    if (reply.type !== "ok") return null;
    this.checkpoint = reply.body.checkpoint;
    return reply.body.head_seq;
  }

  // ------------------------------------------------------------------ records

  /** A new Y.Doc (a new Yjs client) holding the victim record as the server has it. */
  victimDoc() {
    return recordDoc(this.victimUpdates);
  }

  revision(fields) {
    return encodeRevision({
      parents: [],
      author: this.job.username,
      replica: this.replicaId,
      wallMs: Date.now(),
      counter: 0,
      ...fields,
    });
  }

  /** One hostile (or honest) push on the attacker's session; prints the server's answer. */
  async push(attempt, what, update, extra = {}) {
    const line = { attempt, what, record_id: this.job.victim_record_id, update_bytes: update.length, ...extra };
    try {
      await this.ensureSession();
      const headBefore = await this.feedHead();
      this.localSeq += 1;
      const reply = await this.session.push([[this.localSeq, this.job.victim_record_id, update]]);
      Object.assign(line, { local_seq: this.localSeq, head_before: headBefore }, answerFields(reply));
      line.connection_open = this.session.connection.isOpen;
      line.head_after = line.connection_open ? await this.feedHead() : null;
      line.connection_open = this.session.connection.isOpen;
    } catch (error) {
      Object.assign(line, { outcome: "exception", message: String(error?.stack ?? error) });
    }
    emit(line);
    return line;
  }

  // ------------------------------------------------------------------ attacks

  async run(tries) {
    const doc = this.victimDoc();
    const victimId = this.job.victim_revision_id;
    const victim = revisionsOf(doc).get(victimId);
    if (victim === undefined) {
      emit({ attempt: "setup", outcome: "exception", message: `revision ${victimId} is not in the record pulled` });
      return;
    }
    const [collection, entryId] = victim.p.split("/");
    this.victim = victim;
    this.victimEntry = `${collection}/${entryId}`;
    this.victimReplica = this.job.victim_replica_id ?? victim.r;
    emit({ attempt: "setup", outcome: "ack", victim_path: victim.p, victim_entry: this.victimEntry, head: this.head });
    for (const letter of tries) {
      const method = this[`try_${letter}`];
      if (method === undefined) throw new Error(`unknown try ${letter}`);
      await method.call(this);
    }
  }

  async try_a() {
    const doc = this.victimDoc();
    const update = captureUpdate(doc, () => doc.getMap("revisions").delete(this.job.victim_revision_id));
    await this.push("a_delete_victim_revision", "revisions.delete(victim key)", update);
  }

  async try_b() {
    const doc = this.victimDoc();
    const forged = JSON.stringify({ ...this.victim, v: "nothing known" });
    const update = captureUpdate(doc, () => doc.getMap("revisions").set(this.job.victim_revision_id, forged));
    await this.push("b_overwrite_victim_revision", "revisions.set(victim key, another value)", update);
  }

  async try_c() {
    const doc = this.victimDoc();
    const id = newRevisionId();
    const stored = this.revision({ path: "allergies", value: "latex" });
    const update = captureUpdate(doc, () => doc.getMap("revisions").set(id, stored));
    await this.push("c_bare_collection_path", 'a revision at path "allergies"', update, { revision_id: id });
  }

  async try_d() {
    const doc = this.victimDoc();
    const path = `${this.victimEntry}/status`;
    const id = newRevisionId();
    const stored = this.revision({ path, value: 5, parents: headsOf(doc, path) });
    const update = captureUpdate(doc, () => doc.getMap("revisions").set(id, stored));
    await this.push("d_status_not_a_string", `${path} = 5`, update, { revision_id: id });
  }

  async try_e() {
    const doc = this.victimDoc();
    const path = `${this.victimEntry}/reaction`;
    const id = newRevisionId();
    const stored = this.revision({ path, value: "hives", parents: headsOf(doc, path), wallMs: 10 ** 15 });
    const update = captureUpdate(doc, () => doc.getMap("revisions").set(id, stored));
    await this.push("e_far_future_time", "a revision dated t = 10**15", update, { revision_id: id });
  }

  async try_f() {
    const doc = this.victimDoc();
    const path = `${this.victimEntry}/reaction`;
    const id = newRevisionId();
    const stored = this.revision({ path, value: "x".repeat(12 * 1024 * 1024), parents: headsOf(doc, path) });
    const update = captureUpdate(doc, () => doc.getMap("revisions").set(id, stored));
    await this.push("f_value_of_12_mib", "a string value of 12 MiB", update, { revision_id: id });
  }

  /** An honest update of a new revision, then damaged three ways. */
  async try_g() {
    const doc = this.victimDoc();
    const path = `${this.victimEntry}/reaction`;
    const id = newRevisionId();
    const stored = this.revision({ path, value: "hives", parents: headsOf(doc, path) });
    const good = captureUpdate(doc, () => doc.getMap("revisions").set(id, stored));
    const truncated = good.slice(0, Math.floor((good.length * 2) / 3));
    // The item's info byte (0x28: content Any, a map key, no origins) sits just before
    // its parent, the root type named "revisions": flip its high bit (an origin follows).
    const marker = Buffer.concat([Buffer.from([0x01, 0x09]), Buffer.from("revisions")]);
    const at = Buffer.from(good).indexOf(marker) - 1;
    const flippedInfo = Uint8Array.from(good);
    if (at >= 0) flippedInfo[at] ^= 0x80;
    // The last byte is the delete set's count (0): a count of 255 with nothing after it.
    const flippedTail = Uint8Array.from(good);
    flippedTail[flippedTail.length - 1] ^= 0xff;
    await this.push("g_truncated", `the first ${truncated.length} of ${good.length} bytes`, truncated);
    await this.push("g_flipped_info_byte", `byte ${at} xor 0x80`, flippedInfo, { flipped_at: at });
    await this.push("g_flipped_delete_set", "the last byte xor 0xff", flippedTail);
  }

  async try_h() {
    let doc = this.victimDoc();
    const textId = newRevisionId();
    const text = captureUpdate(doc, () => {
      doc.getMap("revisions").set(textId, new Y.Text(this.revision({ path: `${this.victimEntry}/reaction`, value: "hives" })));
    });
    await this.push("h_y_text_value", "a Y.Text under a fresh revision key", text, { revision_id: textId });
    doc = this.victimDoc();
    const mapId = newRevisionId();
    const nested = captureUpdate(doc, () => {
      const map = new Y.Map();
      doc.getMap("revisions").set(mapId, map);
      for (const [key, value] of Object.entries(JSON.parse(this.revision({ path: `${this.victimEntry}/reaction`, value: "hives" })))) {
        map.set(key, value);
      }
    });
    await this.push("h_nested_y_map_value", "a nested Y.Map under a fresh revision key", nested, { revision_id: mapId });
  }

  /** A second connection whose Hello names `replicaId`, then `login(session)`. */
  async asReplica(attempt, what, replicaId, login) {
    const line = { attempt, what, replica_id: replicaId };
    let session = null;
    try {
      session = await Session.connect(this.job.url, { timeoutMs: this.timeoutMs });
      const steps = [
        ["hello", () => session.hello({ replicaId, serverIdExpected: this.serverId, organisation: this.job.organisation })],
        ["prove", () => session.proveServer(this.serverKey)],
        ["login", () => login(session)],
      ];
      for (const [step, run] of steps) {
        const reply = await run();
        Object.assign(line, { step }, answerFields(reply));
        if (reply.type !== "ok") break;
      }
      if (line.outcome === "ack") {
        // Logged in as the victim laptop: what would a push do?
        const stored = this.revision({ path: `${this.victimEntry}/reaction`, value: "pushed as the victim" });
        const doc = this.victimDoc();
        const update = captureUpdate(doc, () => doc.getMap("revisions").set(newRevisionId(), stored));
        const reply = await session.push([[1, this.job.victim_record_id, update]]);
        line.push_as_victim = answerFields(reply);
      } else {
        line.closed_after = await session.connection.waitClosed();
      }
    } catch (error) {
      Object.assign(line, { outcome: "exception", message: String(error?.stack ?? error) });
    } finally {
      session?.close();
    }
    emit(line);
  }

  async try_i() {
    const { username, password, organisation } = this.job;
    const victim = this.victimReplica;
    await this.asReplica("i_victim_replica_no_secret", "password login as the victim laptop, no secret", victim, (s) =>
      s.authenticate({ username, password, organisation, replicaSecret: null }),
    );
    await this.asReplica("i_victim_replica_random_secret", "password login as the victim laptop, a random secret", victim, (s) =>
      s.authenticate({ username, password, organisation, replicaSecret: randomBytes(32) }),
    );
    await this.asReplica("i_victim_replica_own_secret", "password login as the victim laptop, the attacker's own secret", victim, (s) =>
      s.authenticate({ username, password, organisation, replicaSecret: this.replicaSecret }),
    );
    const madeUp = randomBytes(32).toString("base64url");
    await this.asReplica("i_resume_made_up_token", "ResumeSession as the victim laptop with a made-up token", victim, (s) =>
      s.resume(madeUp, randomBytes(32)),
    );
    await this.asReplica("i_resume_made_up_token_own_replica", "ResumeSession as itself with a made-up token", this.replicaId, (s) =>
      s.resume(madeUp, this.replicaSecret),
    );
    // Enrol proposing the victim laptop's id: the server must assign another.
    const line = { attempt: "i_enrol_proposing_victim_id", what: "Enrol with replica_id = the victim laptop's id" };
    let session = null;
    try {
      session = await Session.connect(this.job.url, { timeoutMs: this.timeoutMs });
      await session.hello();
      await session.proveServer(this.serverKey);
      await session.authenticate({ username, password, organisation });
      const reply = await session.enrol("caresync-js attacker 2", victim);
      Object.assign(line, answerFields(reply), { replica_id: reply.body?.replica_id ?? null, victim_replica_id: victim });
    } catch (error) {
      Object.assign(line, { outcome: "exception", message: String(error?.stack ?? error) });
    } finally {
      session?.close();
    }
    emit(line);
  }

  /** An honest new allergy entry: `_created` true, then `substance` "latex", as documented. */
  async try_j() {
    const doc = this.victimDoc();
    const entry = `allergies/${newEntryId()}`;
    const createdId = newRevisionId();
    const substanceId = newRevisionId();
    const now = Date.now();
    const created = this.revision({ path: `${entry}/_created`, value: true, wallMs: now, counter: 0 });
    const substance = this.revision({
      path: `${entry}/substance`,
      value: "latex",
      wallMs: now,
      counter: 1,
      seen: { [`${entry}/_created`]: [createdId] },
    });
    const update = captureUpdate(doc, () => {
      const revisions = doc.getMap("revisions");
      revisions.set(createdId, created);
      revisions.set(substanceId, substance);
    });
    await this.push("j_honest_revision", `${entry}: _created true, substance "latex"`, update, {
      entry,
      revision_ids: [createdId, substanceId],
      wall_ms: now,
      update_hex: hex(update),
    });
  }

  /** An honest-looking revision, written as the Yjs client of the victim laptop. */
  async try_k() {
    const doc = this.victimDoc();
    const item = doc.getMap("revisions")._map.get(this.job.victim_revision_id);
    const client = item.id.client;
    doc.clientID = client;
    const clock = Y.getState(doc.store, client);
    const path = `${this.victimEntry}/reaction`;
    const id = newRevisionId();
    const stored = this.revision({ path, value: "written as your Yjs client", parents: headsOf(doc, path) });
    const update = captureUpdate(doc, () => doc.getMap("revisions").set(id, stored));
    await this.push("k_victim_yjs_client", `a revision as Yjs client ${client} from clock ${clock}`, update, {
      revision_id: id,
      yjs_client: client,
      yjs_clock: clock,
    });
  }

  /** An honest-looking revision whose replica and author name the victim laptop's. */
  async try_l() {
    const doc = this.victimDoc();
    const path = `${this.victimEntry}/reaction`;
    const id = newRevisionId();
    const stored = this.revision({
      path,
      value: "signed with your name",
      parents: headsOf(doc, path),
      replica: this.victimReplica,
      author: this.victim.a,
    });
    const update = captureUpdate(doc, () => doc.getMap("revisions").set(id, stored));
    await this.push("l_names_victim_replica", `a revision with r = ${this.victimReplica}, a = ${this.victim.a}`, update, {
      revision_id: id,
    });
  }
}

async function main() {
  let job;
  try {
    job = await readJob();
    for (const name of ["url", "organisation", "username", "password", "victim_record_id", "victim_revision_id"]) {
      if (typeof job[name] !== "string" || job[name] === "") throw new Error(`the job needs ${name}`);
    }
  } catch (error) {
    process.stderr.write(`attack.mjs: bad job: ${error.message}\n`);
    process.exitCode = 2;
    return;
  }
  const attacker = new Attacker(job);
  if (!(await attacker.enrol())) {
    process.exitCode = 1;
    return;
  }
  try {
    await attacker.pullVictim();
    await attacker.run(job.tries ?? ALL_TRIES);
  } finally {
    attacker.session?.close();
  }
}

await main();
