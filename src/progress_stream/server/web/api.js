// The service's HTTP, Server-Sent Events and WebSocket calls, with the API key kept for this tab only.
const KEY = "progress-stream-api-key";

export const apiKey = {
  get: () => sessionStorage.getItem(KEY),
  set: (value) => sessionStorage.setItem(KEY, value),
};

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message ?? `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code;
  }
}

function headers() {
  return apiKey.get() ? { Authorization: `Bearer ${apiKey.get()}` } : {};
}

export async function getJSON(path) {
  const res = await fetch(path, { headers: headers() });
  const body = await res.json().catch(() => null);
  if (!res.ok) throw new ApiError(res.status, body);
  return body;
}

// Server-Sent Events read over fetch: EventSource cannot send the Authorization header.
export async function readEvents(path, onEvent) {
  const res = await fetch(path, { headers: headers() });
  if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => null));
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) onEvent(event, JSON.parse(data));
    }
  }
}

function base64url(text) {
  const bytes = new TextEncoder().encode(text);
  return btoa(String.fromCharCode(...bytes)).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

// A browser cannot set headers on a WebSocket: the key rides as a subprotocol beside progress.v1.
// `fps`, when given, opens the stream with its frame rate: the answers then carry remaining_s.
export function openSocket(streamId, fps = null) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const protocols = ["progress.v1", ...(apiKey.get() ? [`bearer.${base64url(apiKey.get())}`] : [])];
  const query = fps ? `?fps=${fps}` : "";
  const ws = new WebSocket(`${scheme}://${location.host}/v1/streams/${streamId}/ws${query}`, protocols);
  ws.binaryType = "arraybuffer";
  return ws;
}

// Binary frames message: uint64 seq, uint32 count, uint32 flags (little-endian), then count × D float32.
export function framesMessage(seq, frames, count) {
  const buffer = new ArrayBuffer(16 + frames.byteLength);
  const view = new DataView(buffer);
  view.setBigUint64(0, BigInt(seq), true);
  view.setUint32(8, count, true);
  view.setUint32(12, 0, true);
  new Float32Array(buffer, 16).set(frames);
  return buffer;
}

// Binary reply: uint64 seq, uint64 next_seq, uint32 count, uint32 flags, then count float32 progress.
// The sections that follow a reply's progress values, in order, each present when its flag is set:
// [field, flag, float32 values per frame] (contract/binary.py SECTIONS).
const SECTIONS = [
  ["band", 2, 2],
  ["remaining_frames", 8, 1],
  ["remaining_band", 2, 2],
  ["remaining_s", 4, 1],
];

// Binary reply: uint64 seq, uint64 next_seq, uint32 count, uint32 flags, count float32 progress, then the
// sections its flags name. A section of two values per frame comes back as an array of [a, b] pairs.
export function parseReply(buffer) {
  const view = new DataView(buffer);
  const count = view.getUint32(16, true);
  const flags = view.getUint32(20, true);
  const reply = {
    seq: Number(view.getBigUint64(0, true)),
    nextSeq: Number(view.getBigUint64(8, true)),
    progress: new Float32Array(buffer.slice(24, 24 + 4 * count)),
  };
  let offset = 24 + 4 * count;
  for (const [name, flag, per] of SECTIONS) {
    if (!(flags & flag)) continue;
    const values = Array.from(new Float32Array(buffer.slice(offset, offset + 4 * count * per)));
    reply[name] = per === 1 ? values : Array.from({ length: count }, (_, i) => values.slice(2 * i, 2 * i + 2));
    offset += 4 * count * per;
  }
  return reply;
}

// A .npy file of shape (T, D), float32, C order.
export function parseNpy(buffer) {
  const bytes = new Uint8Array(buffer);
  if (bytes[0] !== 0x93 || new TextDecoder().decode(bytes.slice(1, 6)) !== "NUMPY") {
    throw new Error("not a .npy file");
  }
  const view = new DataView(buffer);
  const start = bytes[6] === 1 ? 10 : 12;
  const length = bytes[6] === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const header = new TextDecoder().decode(bytes.slice(start, start + length));
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const shape = (/'shape':\s*\(([^)]*)\)/.exec(header)?.[1] ?? "").split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  if (descr !== "<f4") throw new Error(`dtype ${descr}: the file must hold float32 ('<f4')`);
  if (/'fortran_order':\s*True/.test(header) || shape.length !== 2) {
    throw new Error(`shape (${shape.join(", ")}): the file must hold (T, D) in C order`);
  }
  const [frames, dim] = shape;
  const data = new Float32Array(buffer.slice(start + length, start + length + 4 * frames * dim));
  if (data.length !== frames * dim) throw new Error("the file is shorter than its shape");
  return { frames, dim, data };
}
