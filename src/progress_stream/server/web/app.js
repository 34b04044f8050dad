// The page: ask for the API key when the server wants one, then run the board and the demo.
import { ApiError, apiKey, getJSON, readEvents } from "./api.js";
import { Board } from "./board.js";
import { Demo } from "./demo.js";

const $ = (id) => document.getElementById(id);

const board = new Board({ container: $("rows"), spacer: $("spacer"), count: $("count"), filter: $("filter"), sort: $("sort") });
const demo = new Demo({
  select: $("action"), fps: $("fps"), start: $("start"), drop: $("drop"), file: $("file"), canvas: $("chart"), status: $("demo-status"),
  finish: $("finish"),
});
window.progressBoard = board; // for tests and the console
window.progressDemo = demo;

function status(message, error = false) {
  $("status").textContent = message;
  $("status").classList.toggle("error", error);
}

async function follow() {
  for (;;) {
    try {
      status("live");
      await readEvents("/v1/board/events", (kind, update) => board.apply(kind, update));
      status("the server ended the live feed; reconnecting…");
    } catch (err) {
      status(`live feed lost (${err.message}); reconnecting…`, true);
    }
    await new Promise((r) => setTimeout(r, 2000));
  }
}

async function start() {
  let model;
  try {
    model = await getJSON("/v1/model");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      $("key-form").hidden = false;
      $("key-message").textContent = apiKey.get() ? "The API key was refused (401): check it and try again." : "This server needs an API key.";
      return;
    }
    status(`cannot reach the service: ${err.message}`, true);
    return;
  }
  $("key-form").hidden = true;
  const dim = Number(model.embedding_dim);
  $("model").textContent = `model: D=${dim}, ${model.position_encoding} position, on ${[model.providers].flat().join(", ")}`;
  await demo.load(dim, document.body.dataset.demo !== "absent");
  follow();
}

$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  apiKey.set($("key").value);
  start();
});

start();
