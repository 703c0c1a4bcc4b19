// The attention explorer: an anywidget front end (plain ES module, no build step, no network).
// The model holds `data` (tokens and one or more runs of attention weights, see nanogpt_lib/viz.py),
// and the view state `view`, `layer`, `head`. Weights arrive as base64 little-endian uint16 in
// thousandths, lower triangle only (a causal model attends to nothing later): one string, or a list of
// short strings to join (a static page's data, kept in short lines for the site's Markdown parser).

const HEAD_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
  "#7f7f7f", "#bcbd22", "#393b79", "#637939"];
const VIEWS = [["pattern", "Pattern"], ["head", "Head"], ["model", "Model"], ["compare", "Compare"]];

const LABEL_PX = 11;  // token labels never shrink below this; a dense matrix labels every k-th token instead

function decodeRun(b64) {
  const bin = atob(Array.isArray(b64) ? b64.join("") : b64);
  const view = new DataView(new ArrayBuffer(bin.length));
  for (let i = 0; i < bin.length; i++) view.setUint8(i, bin.charCodeAt(i));
  const out = new Float32Array(bin.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = view.getUint16(2 * i, true) / 1000;
  return out;
}

function blues(v) {  // 0 -> near white, 1 -> dark blue
  const t = Math.max(0, Math.min(1, v));
  return `rgb(${Math.round(247 - 239 * t)},${Math.round(251 - 203 * t)},${Math.round(255 - 148 * t)})`;
}

function diverging(v) {  // -1 -> blue, 0 -> white, +1 -> red
  const t = Math.max(-1, Math.min(1, v));
  const a = Math.round(255 * (1 - Math.abs(t)));
  return t >= 0 ? `rgb(255,${a},${a})` : `rgb(${a},${a},255)`;
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function render({ model, el: host }) {
  const root = el("div", "nge-root");
  root.tabIndex = 0;
  root.setAttribute("data-lm-suppress-shortcuts", "true");
  host.appendChild(root);
  let data, runs, T, L, H, tri;
  let hoverQuery = null;
  const headOn = new Map();

  function load() {
    data = model.get("data") || {};
    T = data.tokens ? data.tokens.length : 0;
    L = data.n_layer || 0;
    H = data.n_head || 0;
    tri = (T * (T + 1)) / 2;
    runs = (data.runs || []).map((r) => ({ name: r.name, w: decodeRun(r.weights) }));
    hoverQuery = null;
  }
  const w = (run, l, h, i, j) => (j > i ? 0 : run.w[(l * H + h) * tri + (i * (i + 1)) / 2 + j]);
  const tok = (i) => data.tokens[i];
  const layer = () => Math.min(model.get("layer") || 0, L - 1);
  const head = () => Math.min(model.get("head") || 0, H - 1);

  // A kernel keeps the view in sync with Python; a static page (MyST's {anywidget}) has no kernel, and its
  // model may throw from save_changes: the view then lives in the page alone.
  let canSave = typeof model.save_changes === "function";
  function setState(changes) {
    for (const [k, v] of Object.entries(changes)) model.set(k, v);
    if (canSave) {
      try { model.save_changes(); } catch (e) { canSave = false; }
    }
    draw();
  }

  // toolbar: views, layer, head
  const bar = el("div", "nge-bar");
  const viewButtons = VIEWS.map(([key, label]) => {
    const b = el("button", "nge-view", label);
    b.dataset.view = key;
    b.addEventListener("click", () => setState({ view: key }));
    bar.appendChild(b);
    return b;
  });
  const stepper = (name, key, count) => {
    const box = el("span", "nge-stepper");
    const minus = el("button", "nge-step", "−");
    const label = el("span", "nge-" + key);
    const plus = el("button", "nge-step", "+");
    minus.title = `previous ${name}`;
    plus.title = `next ${name}`;
    const move = (d) => setState({ [key]: (model.get(key) + d + count()) % count() });
    minus.addEventListener("click", () => move(-1));
    plus.addEventListener("click", () => move(1));
    box.append(el("span", "nge-label", name + " "), minus, label, plus);
    bar.appendChild(box);
    return label;
  };
  const layerLabel = stepper("layer", "layer", () => L);
  const headLabel = stepper("head", "head", () => H);
  bar.appendChild(el("span", "nge-hint", "keys: ← → head, ↑ ↓ layer"));
  const body = el("div", "nge-body");
  const tooltip = el("div", "nge-tooltip");
  tooltip.style.display = "none";
  root.append(bar, body, tooltip);

  function showTip(evt, text) {
    const box = root.getBoundingClientRect();
    tooltip.textContent = text;
    tooltip.style.display = "block";
    const x = evt.clientX - box.left;
    const flip = x + 14 + tooltip.offsetWidth > box.width;  // keep it inside the widget near the right edge
    tooltip.style.left = `${flip ? Math.max(0, x - 14 - tooltip.offsetWidth) : x + 14}px`;
    tooltip.style.top = `${evt.clientY - box.top + 14}px`;
  }
  const hideTip = () => { tooltip.style.display = "none"; };

  // a frame that scrolls sideways when a canvas is wider than a narrow screen, so labels keep their size
  const framed = (canvas) => { const f = el("div", "nge-frame"); f.appendChild(canvas); return f; };

  // the widest token label at LABEL_PX, in pixels: the matrix's margin for its labels
  function labelWidth() {
    const ctx = document.createElement("canvas").getContext("2d");
    ctx.font = `${LABEL_PX}px monospace`;
    let widest = 0;
    for (let i = 0; i < T; i++) widest = Math.max(widest, ctx.measureText(tok(i)).width);
    return Math.min(90, Math.ceil(widest) + 8);
  }

  // a tokens x tokens heatmap with token labels; value(i, j) in [0, 1] or [-1, 1] with colour()
  function heatmap(title, value, colour, describe) {
    const cell = Math.max(6, Math.min(22, Math.floor(420 / T)));
    const every = Math.ceil(LABEL_PX / cell);  // label every k-th token when rows are thinner than a label
    const margin = labelWidth();
    const size = margin + cell * T;
    const wrap = el("div", "nge-panel");
    wrap.appendChild(el("div", "nge-title", title));
    const canvas = el("canvas", "nge-matrix");
    canvas.width = size;
    canvas.height = size;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, size, size);
    for (let i = 0; i < T; i++) {
      for (let j = 0; j <= i; j++) {
        ctx.fillStyle = colour(value(i, j));
        ctx.fillRect(margin + j * cell, margin + i * cell, cell, cell);
      }
    }
    ctx.fillStyle = "#222";
    ctx.font = `${LABEL_PX}px monospace`;
    canvas.dataset.labelPx = LABEL_PX;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i < T; i += every) ctx.fillText(tok(i), margin - 3, margin + (i + 0.5) * cell);
    ctx.save();
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "left";
    for (let j = 0; j < T; j += every) ctx.fillText(tok(j), -margin + 3, margin + (j + 0.5) * cell);
    ctx.restore();
    canvas.addEventListener("mousemove", (evt) => {
      const r = canvas.getBoundingClientRect();
      const x = ((evt.clientX - r.left) * size) / r.width - margin;
      const y = ((evt.clientY - r.top) * size) / r.height - margin;
      const i = Math.floor(y / cell);
      const j = Math.floor(x / cell);
      if (x < 0 || y < 0 || i >= T || j >= T) return hideTip();
      showTip(evt, `query ${i} '${tok(i)}' → key ${j} '${tok(j)}': ${describe(i, j)}`);
    });
    canvas.addEventListener("mouseleave", hideTip);
    wrap.appendChild(framed(canvas));
    return wrap;
  }

  function patternView() {
    const l = layer(), h = head();
    body.appendChild(heatmap(`${runs[0].name} · layer ${l}, head ${h}`, (i, j) => w(runs[0], l, h, i, j), blues,
      (i, j) => (j > i ? "0 (future, masked)" : w(runs[0], l, h, i, j).toFixed(3))));
  }

  function headView() {
    const l = layer();
    const toggles = el("div", "nge-heads");
    for (let h = 0; h < H; h++) {
      if (!headOn.has(h)) headOn.set(h, true);
      const label = el("label", "nge-head-toggle");
      const box = el("input");
      box.type = "checkbox";
      box.checked = headOn.get(h);
      box.dataset.head = h;
      box.addEventListener("change", () => { headOn.set(h, box.checked); draw(); });
      label.style.color = HEAD_COLOURS[h % HEAD_COLOURS.length];
      label.append(box, document.createTextNode(` head ${h}`));
      toggles.appendChild(label);
    }
    body.appendChild(toggles);
    const row = Math.max(LABEL_PX + 1, Math.min(18, Math.floor(640 / T)));
    const width = 420, col = 70, height = row * T + 10;
    const canvas = el("canvas", "nge-lines");
    canvas.width = width;
    canvas.height = height;
    const title = el("div", "nge-title");
    const ctx = canvas.getContext("2d");
    const y = (i) => 5 + (i + 0.5) * row;
    function paint() {  // repaint in place: replacing the canvas under the mouse would lose the hover
      const q = hoverQuery === null ? T - 1 : hoverQuery;
      title.textContent = `${runs[0].name} · layer ${l}: query '${tok(q)}' (left) → keys (right)`;
      ctx.globalAlpha = 1;
      ctx.fillStyle = "#fff";
      ctx.fillRect(0, 0, width, height);
      ctx.lineWidth = 2;
      for (let h = 0; h < H; h++) {
        if (!headOn.get(h)) continue;
        ctx.strokeStyle = HEAD_COLOURS[h % HEAD_COLOURS.length];
        for (let j = 0; j <= q; j++) {
          ctx.globalAlpha = w(runs[0], l, h, q, j);
          ctx.beginPath();
          ctx.moveTo(col + 4, y(q));
          ctx.lineTo(width - col - 4, y(j));
          ctx.stroke();
        }
      }
      ctx.globalAlpha = 1;
      ctx.font = `${Math.min(row - 1, 13)}px monospace`;
      canvas.dataset.labelPx = Math.min(row - 1, 13);
      ctx.textBaseline = "middle";
      for (let i = 0; i < T; i++) {
        ctx.fillStyle = i === q ? "#c00" : "#222";
        ctx.textAlign = "right";
        ctx.fillText(tok(i), col, y(i));
        ctx.fillStyle = "#222";
        ctx.textAlign = "left";
        ctx.fillText(tok(i), width - col, y(i));
      }
    }
    canvas.addEventListener("mousemove", (evt) => {
      const r = canvas.getBoundingClientRect();
      const x = ((evt.clientX - r.left) * width) / r.width;
      const i = Math.floor((((evt.clientY - r.top) * height) / r.height - 5) / row);
      if (x > width / 2 || i < 0 || i >= T) return hideTip();
      if (i !== hoverQuery) { hoverQuery = i; paint(); }
      const top = [...Array(H).keys()].filter((h) => headOn.get(h)).map((h) => {
        let best = 0;
        for (let j = 1; j <= i; j++) if (w(runs[0], l, h, i, j) > w(runs[0], l, h, i, best)) best = j;
        return `head ${h}: '${tok(best)}' ${w(runs[0], l, h, i, best).toFixed(3)}`;
      });
      showTip(evt, `query ${i} '${tok(i)}' looks most at · ${top.join(" · ")}`);
    });
    canvas.addEventListener("mouseleave", hideTip);
    paint();
    body.append(title, framed(canvas));
  }

  function modelView() {
    const scale = Math.max(1, Math.floor(96 / T));
    const grid = el("div", "nge-grid");
    grid.style.gridTemplateColumns = `repeat(${H}, minmax(0, max-content))`;  // shrinks to a narrow frame
    for (let l = 0; l < L; l++) {
      for (let h = 0; h < H; h++) {
        const cell = el("div", "nge-thumb" + (l === layer() && h === head() ? " nge-current" : ""));
        cell.dataset.layer = l;
        cell.dataset.head = h;
        cell.title = `layer ${l}, head ${h}: click to open`;
        const c = el("canvas");
        c.width = c.height = T * scale;
        const ctx = c.getContext("2d");
        for (let i = 0; i < T; i++) {
          for (let j = 0; j < T; j++) {
            ctx.fillStyle = blues(w(runs[0], l, h, i, j));
            ctx.fillRect(j * scale, i * scale, scale, scale);
          }
        }
        cell.append(c, el("div", "nge-caption", `L${l} H${h}`));
        cell.addEventListener("click", () => setState({ layer: l, head: h, view: "pattern" }));
        grid.appendChild(cell);
      }
    }
    body.appendChild(grid);
  }

  function compareView() {
    if (runs.length < 2) {
      body.appendChild(el("div", "nge-note", "Only one model: pass compare_with= to compare two checkpoints."));
      return;
    }
    const l = layer(), h = head();
    const [a, b] = runs;
    const both = (i, j) => (j > i ? "0 (future, masked)"
      : `${a.name} ${w(a, l, h, i, j).toFixed(3)}, ${b.name} ${w(b, l, h, i, j).toFixed(3)}`);
    const row = el("div", "nge-row");
    row.append(
      heatmap(`${a.name} · layer ${l}, head ${h}`, (i, j) => w(a, l, h, i, j), blues, both),
      heatmap(`${b.name}`, (i, j) => w(b, l, h, i, j), blues, both),
      heatmap(`difference: ${a.name} − ${b.name} (red: more in ${a.name})`,
        (i, j) => w(a, l, h, i, j) - w(b, l, h, i, j), diverging, both),
    );
    body.appendChild(row);
  }

  function draw() {
    if (!T || !runs.length) {
      body.replaceChildren(el("div", "nge-note", "no attention data"));
      return;
    }
    const view = model.get("view") || "pattern";
    body.replaceChildren();
    viewButtons.forEach((b) => b.classList.toggle("nge-active", b.dataset.view === view));
    layerLabel.textContent = String(layer());
    headLabel.textContent = String(head());
    root.dataset.view = view;
    root.dataset.layer = layer();
    root.dataset.head = head();
    root.dataset.tokens = T;
    ({ pattern: patternView, head: headView, model: modelView, compare: compareView })[view]();
  }

  function onKey(evt) {
    evt.stopPropagation();  // keystrokes inside the widget never reach the notebook's shortcuts
    const moves = { ArrowLeft: ["head", -1, H], ArrowRight: ["head", 1, H], ArrowUp: ["layer", -1, L],
      ArrowDown: ["layer", 1, L] };
    const m = moves[evt.key];
    if (!m || !T) return;
    evt.preventDefault();
    const [key, d, n] = m;
    setState({ [key]: ((model.get(key) || 0) + d + n) % n });
  }
  root.addEventListener("keydown", onKey);
  root.addEventListener("keyup", (evt) => evt.stopPropagation());
  root.addEventListener("keypress", (evt) => evt.stopPropagation());

  const reload = () => { load(); draw(); };
  model.on("change:data", reload);
  model.on("change:view", draw);
  model.on("change:layer", draw);
  model.on("change:head", draw);
  reload();
  return () => {
    model.off("change:data", reload);
    model.off("change:view", draw);
    model.off("change:layer", draw);
    model.off("change:head", draw);
  };
}

export default { render };
