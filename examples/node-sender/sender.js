#!/usr/bin/env node
// A sender for an mplog listener, in Node.js, written from docs/wire-format.md alone.
//
// It speaks the multiprocessing transport (`mp://PATH`): a unix stream socket to PATH
// carrying each frame as a 4-byte big-endian signed length, then the frame, a msgpack
// array [version, sender, seq, dropped, flags, records] whose records are arrays of 20
// fields ("The record"). It numbers its records from 0 under a random 32-bit stream,
// counts what it discards as `dropped`, and says goodbye with a FINAL frame.
//
//   npm ci && node sender.js mp:///path/to/listener.sock [COUNT] [PRODUCER]
//
// logs COUNT numbered records ("P<PRODUCER>:<seq, 8 digits>:00000:") on the logger
// "node.app" and prints what it sent as one JSON line. tests/integration/test_foreign_sender.py
// runs it against a real listener and checks every record and field that arrives.
"use strict";

const crypto = require("node:crypto");
const net = require("node:net");
const os = require("node:os");
const path = require("node:path");
const { performance } = require("node:perf_hooks");
const { Encoder } = require("@msgpack/msgpack");

const VERSION = 1;
const FLAG_FINAL = 1;
const FLAG_URGENT = 2;
const LEVELS = { DEBUG: 10, INFO: 20, WARNING: 30, ERROR: 40, CRITICAL: 50 };
const MAX_FRAME_BYTES = 16 * 1024 * 1024; // the listener's default max_frame_bytes

class MplogSender {
  /**
   * @param {string} endpoint mp://PATH of the listener
   * @param {{batchRecords?: number, batchBytes?: number, processName?: string}} options
   */
  constructor(endpoint, { batchRecords = 200, batchBytes = 64 * 1024, processName = "node" } = {}) {
    if (!endpoint.startsWith("mp://")) {
      throw new Error(`only mp://PATH endpoints are spoken here, got ${JSON.stringify(endpoint)}`);
    }
    this.path = endpoint.slice("mp://".length);
    this.batchRecords = batchRecords;
    this.batchBytes = batchBytes;
    this.processName = processName;
    // [host, pid, start_time, stream]: a new random stream for every numbering from 0.
    const startTime = Date.now() / 1000 - process.uptime();
    this.sender = [os.hostname(), process.pid, startTime, crypto.randomBytes(4).readUInt32BE(0)];
    this.seq = 0; // the number of the next record handed to the transport
    this.dropped = 0; // records discarded instead of sent (a running total)
    this.frames = 0;
    this.pending = [];
    this.pendingBytes = 0;
    // Strings as msgpack str, byte arrays as bin, integers as ints, other numbers as float64;
    // no extension types (the Timestamp extension is refused by the listener).
    this.encoder = new Encoder({ forceFloat32: false, ignoreUndefined: false });
    this.socket = null;
  }

  /** Connect to the listener's socket. */
  connect() {
    return new Promise((resolve, reject) => {
      const socket = net.createConnection({ path: this.path }, () => {
        socket.off("error", reject);
        resolve();
      });
      socket.once("error", reject);
      this.socket = socket;
    });
  }

  /**
   * Queue one record; sends a frame when the batch is full or the record is urgent.
   * @param {string} name logger name
   * @param {string} levelname DEBUG, INFO, WARNING, ERROR or CRITICAL
   * @param {string} message the final message (there is no `args` field)
   * @param {{extra?: object, excText?: string|null, stackInfo?: string|null, funcName?: string|null}} options
   */
  async log(name, levelname, message, { extra = {}, excText = null, stackInfo = null, funcName = null } = {}) {
    const levelno = LEVELS[levelname];
    const nowMs = Date.now();
    const created = nowMs / 1000;
    const caller = callSite();
    const record = [
      name, // 0 name
      levelno, // 1 levelno
      levelname, // 2 levelname
      message, // 3 message
      created, // 4 created: seconds since the epoch
      nowMs % 1000, // 5 msecs
      performance.now(), // 6 relativeCreated: ms since this program started
      caller.pathname, // 7 pathname
      path.basename(caller.pathname), // 8 filename
      path.basename(caller.pathname, path.extname(caller.pathname)), // 9 module
      caller.lineno, // 10 lineno
      funcName, // 11 funcName
      null, // 12 thread
      "main", // 13 threadName
      process.pid, // 14 process
      this.processName, // 15 processName
      null, // 16 taskName
      excText, // 17 exc_text
      stackInfo, // 18 stack_info
      extra, // 19 extra: a map with str keys
    ];
    this.pending.push(record);
    this.pendingBytes += message.length + 256;
    const urgent = levelno >= LEVELS.ERROR;
    if (urgent || this.pending.length >= this.batchRecords || this.pendingBytes >= this.batchBytes) {
      await this.flush(urgent ? FLAG_URGENT : 0);
    }
  }

  /** Send the pending records as one frame. */
  async flush(flags = 0) {
    if (this.pending.length === 0) {
      return;
    }
    const records = this.pending;
    this.pending = [];
    this.pendingBytes = 0;
    const frame = this.encoder.encode([VERSION, this.sender, this.seq, this.dropped, flags, records]);
    if (frame.length > MAX_FRAME_BYTES) {
      this.dropped += records.length; // never numbered; reported in the next frames
      return;
    }
    await this.write(frame);
    this.seq += records.length; // the transport took it
    this.frames += 1;
  }

  /** Write one length-prefixed frame, waiting for the socket to drain when it is full. */
  async write(frame) {
    const header = Buffer.alloc(4);
    header.writeInt32BE(frame.length, 0);
    if (!this.socket.write(Buffer.concat([header, Buffer.from(frame.buffer, frame.byteOffset, frame.length)]))) {
      await new Promise((resolve) => this.socket.once("drain", resolve));
    }
  }

  /** Deliver what is pending, say goodbye (FINAL, no records), close the socket. */
  async close() {
    await this.flush();
    const goodbye = this.encoder.encode([VERSION, this.sender, this.seq, this.dropped, FLAG_FINAL, []]);
    await this.write(goodbye);
    await new Promise((resolve) => this.socket.end(resolve));
  }
}

/** The file and line of the code that called log(), from a stack trace. */
function callSite() {
  const lines = (new Error().stack || "").split("\n");
  const frame = lines.find((line, i) => i > 2 && line.includes(__filename)) || "";
  const match = /:(\d+):\d+\)?$/.exec(frame);
  return { pathname: __filename, lineno: match ? Number(match[1]) : 0 };
}

function numbered(producer, seq) {
  return `P${producer}:${String(seq).padStart(8, "0")}:00000:`;
}

async function main() {
  const [endpoint, countText = "1000", producerText = "0"] = process.argv.slice(2);
  if (!endpoint) {
    console.error("usage: node sender.js mp:///path/to/listener.sock [COUNT] [PRODUCER]");
    process.exit(2);
  }
  const count = Number(countText);
  const producer = Number(producerText);
  const log = new MplogSender(endpoint);
  await log.connect();
  for (let seq = 0; seq < count; seq += 1) {
    const extra = {
      request_id: `r-${seq}`,
      attempt: seq % 3,
      ratio: seq / 4 + 0.125,
      tags: ["node", seq % 2 === 0 ? "even" : "odd"],
      context: { ok: seq % 5 !== 0, missing: null, depth: { level: 2 } },
      digest: new Uint8Array([seq & 0xff, 0x00, 0xff]),
      runtime: `node ${process.version}`,
    };
    if (seq % 250 === 249) {
      const error = new Error(`job ${seq} failed`);
      await log.log("node.app", "ERROR", numbered(producer, seq), {
        extra,
        excText: error.stack,
        funcName: "main",
      });
    } else {
      await log.log("node.app", seq % 100 === 99 ? "WARNING" : "INFO", numbered(producer, seq), {
        extra,
        funcName: "main",
      });
    }
  }
  await log.close();
  const [host, pid, startTime, stream] = log.sender;
  console.log(JSON.stringify({ sent: log.seq, dropped: log.dropped, frames: log.frames, host, pid, startTime, stream }));
}

module.exports = { MplogSender, LEVELS, FLAG_FINAL, FLAG_URGENT };

if (require.main === module) {
  main().catch((error) => {
    console.error(error);
    process.exit(1);
  });
}
