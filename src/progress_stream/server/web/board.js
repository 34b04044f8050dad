// The live board: every stream as a row, fed by /v1/board/events; only the visible rows are in the DOM.
const ROW_HEIGHT = 28;

export class Board {
  constructor({ container, spacer, count, filter, sort }) {
    Object.assign(this, { container, spacer, count, filter, sort });
    this.rows = new Map();
    this.pool = [];
    this.scheduled = false;
    for (const el of [filter, sort]) el.addEventListener("input", () => this.schedule());
    container.addEventListener("scroll", () => this.schedule());
  }

  apply(kind, update) {
    if (kind === "snapshot") this.rows.clear();
    for (const id of update.removed ?? []) this.rows.delete(id);
    for (const row of update.rows ?? []) this.rows.set(row.stream_id, row);
    this.schedule();
  }

  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => {
      this.scheduled = false;
      this.render();
    });
  }

  visible() {
    const prefix = this.filter.value.trim();
    const key = this.sort.value;
    const list = [...this.rows.values()].filter((r) => r.stream_id.startsWith(prefix));
    const value = (r) => r[key] ?? -1;
    return list.sort((a, b) => (key === "stream_id" ? a.stream_id.localeCompare(b.stream_id) : value(b) - value(a)));
  }

  render() {
    const list = this.visible();
    this.count.textContent = String(list.length);
    this.spacer.style.height = `${list.length * ROW_HEIGHT}px`;
    const first = Math.floor(this.container.scrollTop / ROW_HEIGHT);
    const shown = list.slice(first, first + Math.ceil(this.container.clientHeight / ROW_HEIGHT) + 2);
    while (this.pool.length < shown.length) this.pool.push(this.newRow());
    this.pool.forEach((el, i) => {
      const row = shown[i];
      el.hidden = !row;
      if (row) this.fill(el, row, first + i);
    });
  }

  newRow() {
    const el = document.createElement("div");
    el.className = "row";
    el.innerHTML = '<span class="id"></span><span class="bar"><i></i><b></b></span><span></span><span></span><span></span>';
    this.container.append(el);
    return el;
  }

  fill(el, row, index) {
    const [id, bar, step, fps, idle] = el.children;
    el.style.top = `${index * ROW_HEIGHT}px`;
    el.dataset.id = row.stream_id;
    id.textContent = row.stream_id;
    id.title = row.stream_id;
    const progress = row.progress ?? 0;
    bar.firstChild.style.width = `${Math.round(progress * 100)}%`;
    bar.lastChild.textContent = row.progress === null ? "–" : progress.toFixed(3);
    step.textContent = String(row.step);
    fps.textContent = (row.fps ?? 0).toFixed(1);
    idle.textContent = `${row.idle_s.toFixed(1)} s`;
  }
}
