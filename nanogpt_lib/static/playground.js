// The playground of chapter 11: the reader's model writes in the page, with ONNX Runtime Web (WebAssembly).
// An anywidget front end (plain ES module, no build step, nothing fetched from elsewhere). The model holds:
//   onnx / onnx_url          the exported decoder graph (bytes, or a URL on the same site)
//   ort_js / ort_url         onnxruntime-web's single-file ES module (text, or a URL), from npm
//   ort_wasm / ort_wasm_url  its WebAssembly binary (bytes, or a URL)
//   tokenizer                the checkpoint's tokenizer: {type: "char", chars} or {type: "bpe", merges, ...}
//   config                   {n_layer, n_head, head_dim, block_size, vocab_size}
//   prompt, about            the starting prompt, and a sentence saying which model this is
// The graph takes input_ids and, per layer, past_key_i / past_value_i, and returns logits and present_*:
// one step feeds one token and the cache, as chapter 06's KV cache does. Past the context the window slides
// and is recomputed in full, as chapter 06's generate does, so greedy decoding gives Python's tokens.

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function bytesOf(value) {  // anywidget hands binary traits over as DataView (or ArrayBuffer / typed arrays)
  if (!value) return null;
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
}

async function fetchBytes(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`could not load ${url}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

let ortPromise = null;  // one runtime per page, however many playgrounds it shows

async function loadOrt(model) {
  if (!ortPromise) {
    ortPromise = (async () => {
      const src = model.get("ort_js");
      const url = src ? URL.createObjectURL(new Blob([src], { type: "text/javascript" })) : model.get("ort_url");
      const ort = await import(url);
      const wasm = bytesOf(model.get("ort_wasm")) || (await fetchBytes(model.get("ort_wasm_url")));
      ort.env.wasm.wasmBinary = wasm;  // given, never fetched: the page needs no network and no CDN
      ort.env.wasm.numThreads = 1;  // threads need a cross-origin-isolated page; one thread works everywhere
      ort.env.wasm.proxy = false;
      return ort;
    })();
  }
  return ortPromise;
}

// ---------------------------------------------------------------- tokenizers

function charTokenizer(spec) {
  const chars = Array.from(spec.chars);
  const index = new Map(chars.map((c, i) => [c, i]));
  return {
    encode(text) {
      const ids = [];
      for (const c of Array.from(text)) {
        if (!index.has(c)) throw new Error(`the character ${JSON.stringify(c)} is not in the model's vocabulary`);
        ids.push(index.get(c));
      }
      return ids;
    },
    decode: (ids) => ids.map((i) => chars[i]).join(""),
  };
}

// Byte-level BPE (chapter 02): cut the text with the split pattern, map each piece's UTF-8 bytes to ids, then
// merge the neighbouring pair of lowest rank until none is left; merge k makes id 256 + k.
function jsPattern(pattern) {  // the `regex` module's possessive quantifiers (`++`, `*+`, `?+`) as greedy ones
  const source = pattern.replace(/([+*?}])\+/g, "$1");
  try {
    return new RegExp(source, "gu");
  } catch (e) {
    throw new Error(`this browser cannot read the tokenizer's split pattern (${e.message})`);
  }
}

function bpeTokenizer(spec) {
  const split = jsPattern(spec.pattern);
  const byteIds = new Array(256);
  spec.byte_order.forEach((b, i) => { byteIds[b] = i; });
  const vocab = spec.byte_order.map((b) => [b]);
  const ranks = new Map();
  spec.merges.forEach(([a, b], k) => {
    ranks.set(a * 1048576 + b, 256 + k);
    vocab.push(vocab[a].concat(vocab[b]));
  });
  const utf8 = new TextEncoder(), text = new TextDecoder("utf-8");
  function merge(ids) {
    for (;;) {
      let best = Infinity, at = -1;
      for (let i = 0; i + 1 < ids.length; i++) {
        const r = ranks.get(ids[i] * 1048576 + ids[i + 1]);
        if (r !== undefined && r < best) { best = r; at = i; }
      }
      if (at < 0) return ids;
      ids.splice(at, 2, best);
    }
  }
  return {
    encode: (s) => (s.match(split) || []).flatMap((piece) => merge(Array.from(utf8.encode(piece), (b) => byteIds[b]))),
    decode: (ids) => text.decode(Uint8Array.from(ids.flatMap((i) => vocab[i]))),
  };
}

function makeTokenizer(spec) {
  if (spec && spec.type === "char") return charTokenizer(spec);
  if (spec && spec.type === "bpe") return bpeTokenizer(spec);
  throw new Error(`this playground reads character and BPE tokenizers; the model's is ${JSON.stringify(spec && spec.type)}`);
}

// ---------------------------------------------------------------- sampling

function mulberry32(seed) {  // a small seeded generator: the same seed writes the same text
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function sampleNext(logits, temperature, topK, random) {
  if (temperature === 0) {  // greedy: the first of the largest, as torch.argmax picks
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
    return best;
  }
  let order = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a]);
  if (topK > 0) order = order.slice(0, topK);
  const top = logits[order[0]];
  const weights = order.map((i) => Math.exp((logits[i] - top) / temperature));
  let r = random() * weights.reduce((s, w) => s + w, 0);
  for (let j = 0; j < order.length; j++) {
    r -= weights[j];
    if (r <= 0) return order[j];
  }
  return order[order.length - 1];
}

// ---------------------------------------------------------------- the model

function emptyPast(ort, config) {
  const feeds = {};
  for (let i = 0; i < config.n_layer; i++) {
    for (const kind of ["key", "value"]) {
      feeds[`past_${kind}_${i}`] = new ort.Tensor("float32", new Float32Array(0), [1, config.n_head, 0, config.head_dim]);
    }
  }
  return feeds;
}

async function step(ort, session, config, ids, past) {
  const feeds = { ...past, input_ids: new ort.Tensor("int64", BigInt64Array.from(ids.map(BigInt)), [1, ids.length]) };
  const out = await session.run(feeds);
  const logits = out.logits.data.subarray((ids.length - 1) * config.vocab_size, ids.length * config.vocab_size);
  const present = {};
  for (let i = 0; i < config.n_layer; i++) {
    present[`past_key_${i}`] = out[`present_key_${i}`];
    present[`past_value_${i}`] = out[`present_value_${i}`];
  }
  return { logits: Float32Array.from(logits), present };
}

// Yields each new token: the prompt first in one pass, then one token a step with the cache; once the text is
// longer than the context, the last block_size tokens from scratch (chapter 06's next_token_logits).
async function* generate(ort, session, config, prompt, count, temperature, topK, seed) {
  const random = mulberry32(seed);
  const ids = [...prompt];
  let past = emptyPast(ort, config), cached = 0;
  for (let n = 0; n < count; n++) {
    let result;
    if (ids.length > config.block_size) {
      result = await step(ort, session, config, ids.slice(-config.block_size), emptyPast(ort, config));
      cached = 0;
    } else {
      result = await step(ort, session, config, ids.slice(cached), past);
      past = result.present;
      cached = ids.length;
    }
    const token = sampleNext(result.logits, temperature, topK, random);
    ids.push(token);
    yield token;
  }
}

// ---------------------------------------------------------------- the view

function render({ model, el: host }) {
  const root = el("div", "ngp-root");
  root.dataset.status = "loading";
  const about = el("div", "ngp-about", model.get("about") || "");
  const prompt = el("textarea", "ngp-prompt");
  prompt.value = model.get("prompt") || "";
  prompt.rows = 3;
  const controls = el("div", "ngp-controls");
  const field = (label, input) => {
    const box = el("label", "ngp-field", label + " ");
    box.appendChild(input);
    controls.appendChild(box);
    return input;
  };
  const number = (value, min, max, stepSize, cls) => {
    const input = el("input", cls);
    Object.assign(input, { type: "number", value, min, max, step: stepSize });
    return input;
  };
  const temperature = field("temperature", number(0.8, 0, 2, 0.1, "ngp-temperature"));
  const topK = field("top-k", number(0, 0, 1000, 1, "ngp-top-k"));
  const count = field("tokens", number(200, 1, 2000, 1, "ngp-count"));
  const seed = field("seed", number(1337, 0, 2 ** 31 - 1, 1, "ngp-seed"));
  const write = el("button", "ngp-write", "Write");
  controls.appendChild(write);
  const output = el("pre", "ngp-output");
  const status = el("div", "ngp-status", "loading the model...");
  root.append(about, prompt, controls, output, status);
  host.appendChild(root);

  let session = null, ort = null, running = false;
  const config = model.get("config") || {};
  const ready = (async () => {
    try {
      ort = await loadOrt(model);
      const bytes = bytesOf(model.get("onnx")) || (await fetchBytes(model.get("onnx_url")));
      session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
      root.dataset.status = "ready";
      status.textContent = `ready: ${config.n_layer} layers, ${config.vocab_size} tokens, a context of ${config.block_size}`;
    } catch (e) {
      root.dataset.status = "error";
      status.textContent = `the model could not be loaded: ${e.message}`;
    }
  })();

  async function run() {
    await ready;
    if (!session || running) return;
    running = true;
    write.disabled = true;
    root.dataset.status = "running";
    let tokenizer, ids;
    try {
      tokenizer = makeTokenizer(model.get("tokenizer"));
      ids = tokenizer.encode(prompt.value);
      if (!ids.length) throw new Error("type a prompt first");
    } catch (e) {
      status.textContent = e.message;
      root.dataset.status = "ready";
      running = write.disabled = false;
      return;
    }
    output.textContent = prompt.value;
    root.dataset.promptTokens = ids.join(",");
    const made = [];  // the text is decoded whole each time: a BPE token may hold part of a character
    const t0 = performance.now();
    const args = [Number(count.value), Number(temperature.value), Number(topK.value), Number(seed.value)];
    for await (const token of generate(ort, session, config, ids, ...args)) {
      made.push(token);
      output.textContent = prompt.value + tokenizer.decode(made);
      status.textContent = `${made.length} tokens`;
      await new Promise((r) => setTimeout(r, 0));  // let the page draw each token
    }
    const perSecond = made.length / ((performance.now() - t0) / 1000);
    root.dataset.tokens = made.join(",");
    root.dataset.tokensPerS = perSecond.toFixed(1);
    status.textContent = `${made.length} tokens, ${perSecond.toFixed(1)} tokens/s, in this page (ONNX Runtime Web)`;
    root.dataset.status = "done";
    running = write.disabled = false;
  }
  write.addEventListener("click", run);
  root.addEventListener("keydown", (evt) => evt.stopPropagation());  // typing never reaches notebook shortcuts
  return () => write.removeEventListener("click", run);
}

export default { render };
