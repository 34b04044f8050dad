// The demo: stream a held-out action (or a dropped .npy) frame by frame over the real WebSocket, in
// binary messages, and plot the predicted progress and its band against the truth as the answers come
// back, with the time to finish.
import { ApiError, framesMessage, getJSON, openSocket, parseNpy, parseReply } from "./api.js";

export class Demo {
  constructor({ select, fps, start, drop, file, canvas, status, finish }) {
    Object.assign(this, { select, fps, start, drop, file, canvas, status, finish });
    this.pack = null;
    this.dim = null;
    // what the tests (and a curious user, from the console) read: the answers exactly as received
    this.state = this.fresh(null, null, []);
    start.addEventListener("click", () => this.runPacked());
    file.addEventListener("change", () => file.files[0] && this.runFile(file.files[0]));
    drop.addEventListener("dragover", (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      if (e.dataTransfer.files[0]) this.runFile(e.dataTransfer.files[0]);
    });
  }

  // band: [lo, hi] per frame (none from a model without a band); remaining: seconds left per frame
  fresh(name, streamId, truth) {
    return { name, streamId, truth, predicted: [], band: [], remaining: [], remainingBand: [], done: false, error: null };
  }

  // `available` is false when the page was served without a demo pack: it then never asks for one.
  async load(dim, available = true) {
    this.dim = dim;
    const absent = "The demo is not available for this model: this server has no demo pack (progress demo-pack writes one). You can still drop a .npy file.";
    if (!available) {
      this.say(absent);
      this.start.disabled = true;
      return;
    }
    try {
      this.pack = await getJSON("/demo/index.json");
    } catch (err) {
      this.say(err instanceof ApiError && err.status === 404 ? absent : `Could not load the demo pack: ${err.message}`, true);
      this.start.disabled = true;
      return;
    }
    this.select.replaceChildren(...this.pack.actions.map((a, i) => new Option(`${a.name} (${a.frames} frames)`, i)));
  }

  async runPacked() {
    const action = this.pack.actions[Number(this.select.value)];
    const res = await fetch(`/demo/${action.file}`);
    await this.run(parseNpy(await res.arrayBuffer()), action.truth, action.name);
  }

  async runFile(file) {
    try {
      const x = parseNpy(await file.arrayBuffer());
      // a client's own action: its truth is the linear ramp of one action over the file's frames
      const truth = Array.from({ length: x.frames }, (_, i) => (i + 1) / x.frames);
      await this.run(x, truth, file.name);
    } catch (err) {
      this.say(`${file.name}: ${err.message}`, true);
    }
  }

  async run({ frames, dim, data }, truth, name) {
    if (dim !== this.dim) {
      this.say(`${name}: ${dim} numbers per frame, but the model takes ${this.dim}`, true);
      return;
    }
    const streamId = `demo-${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
    this.state = this.fresh(name, streamId, truth);
    this.finish.textContent = "";
    this.draw();
    const fps = Math.max(1, Number(this.fps.value) || 30);
    const ws = openSocket(streamId, fps);
    const replies = [];
    let wake = null;
    ws.onmessage = (e) => {
      replies.push(e.data);
      wake?.();
    };
    const closed = new Promise((resolve) => (ws.onclose = (e) => { resolve(e); wake?.(); }));
    const opened = await Promise.race([new Promise((r) => (ws.onopen = () => r(true))), closed.then(() => false)]);
    if (!opened) return this.fail("the server refused the WebSocket (a missing or wrong API key, or a full server)");
    const period = 1000 / fps;
    this.say(`Streaming ${name}: ${frames} frames at ${Math.round(1000 / period)} frames/s on stream ${streamId}`);
    for (let t = 0; t < frames; t++) {
      const sent = performance.now();
      ws.send(framesMessage(t, data.subarray(t * dim, (t + 1) * dim), 1));
      while (!replies.length && ws.readyState === WebSocket.OPEN) await new Promise((r) => (wake = r));
      const reply = replies.shift();
      if (reply === undefined) return this.fail("the connection closed");
      if (typeof reply === "string") return this.fail(JSON.parse(reply).error?.message ?? reply);
      this.record(parseReply(reply), fps);
      this.draw();
      await new Promise((r) => setTimeout(r, Math.max(0, period - (performance.now() - sent))));
    }
    ws.close();
    this.state.done = true;
    this.say(`Done: ${frames} frames of ${name}; last prediction ${this.state.predicted.at(-1).toFixed(3)}`);
  }

  // what one answer adds: its progress, its band, and the time to finish (seconds: the stream was opened
  // with its frame rate, so the server answers remaining_s; its band is remaining_band at that rate)
  record(answer, fps) {
    this.state.predicted.push(answer.progress[0]);
    if (answer.band) this.state.band.push(answer.band[0]);
    if (!answer.remaining_s) return;
    const left = answer.remaining_s[0];
    const band = answer.remaining_band?.[0].map((frames) => frames / fps) ?? null;
    this.state.remaining.push(left);
    this.state.remainingBand.push(band);
    const range = band ? ` (${seconds(band[0])} to ${seconds(band[1])})` : "";
    this.finish.textContent = `Time to finish: ${seconds(left)}${range}`;
  }

  fail(message) {
    this.state.error = message;
    this.say(message, true);
  }

  say(message, error = false) {
    this.status.textContent = message;
    this.status.classList.toggle("error", error);
  }

  draw() {
    const ctx = this.canvas.getContext("2d");
    const { width, height } = this.canvas;
    const pad = 28;
    ctx.clearRect(0, 0, width, height);
    ctx.strokeStyle = "#e5e7eb";
    ctx.fillStyle = "#6b7280";
    ctx.font = "11px system-ui";
    for (const v of [0, 0.5, 1]) {
      const y = height - pad - v * (height - 2 * pad);
      ctx.beginPath();
      ctx.moveTo(pad, y);
      ctx.lineTo(width - 8, y);
      ctx.stroke();
      ctx.fillText(String(v), 4, y + 4);
    }
    const n = this.state.truth.length;
    const line = (values, color) => {
      ctx.strokeStyle = color;
      ctx.lineWidth = 2;
      ctx.beginPath();
      values.forEach((v, i) => {
        const x = pad + (n > 1 ? i / (n - 1) : 0) * (width - pad - 8);
        const y = height - pad - v * (height - 2 * pad);
        if (i) ctx.lineTo(x, y);
        else ctx.moveTo(x, y);
      });
      ctx.stroke();
    };
    const band = this.state.band;
    if (band.length) {
      // the band under the curve: along its upper edge, back along its lower edge
      const x = (i) => pad + (n > 1 ? i / (n - 1) : 0) * (width - pad - 8);
      const y = (v) => height - pad - v * (height - 2 * pad);
      ctx.fillStyle = "rgba(47, 125, 225, 0.18)";
      ctx.beginPath();
      band.forEach(([, hi], i) => (i ? ctx.lineTo(x(i), y(hi)) : ctx.moveTo(x(i), y(hi))));
      for (let i = band.length - 1; i >= 0; i--) ctx.lineTo(x(i), y(band[i][0]));
      ctx.closePath();
      ctx.fill();
    }
    line(this.state.truth, "#9ca3af");
    line(this.state.predicted, "#2f7de1");
  }
}

function seconds(s) {
  return s >= 60 ? `${Math.floor(s / 60)} min ${Math.round(s % 60)} s` : `${s.toFixed(1)} s`;
}
