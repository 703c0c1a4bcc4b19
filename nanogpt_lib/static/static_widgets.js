// A small offline renderer for anywidget widgets saved in a notebook exported to HTML.
// nbconvert writes the saved widget state (application/vnd.jupyter.widget-state+json) and one
// application/vnd.jupyter.widget-view+json script per widget output. For each view this renders
// the anywidget models it contains (boxes are followed to their children) with the ES module and CSS
// stored in the state itself, through a minimal model object: nothing is fetched from the network.
(function () {
  "use strict";

  function makeModel(state) {
    const values = Object.assign({}, state);
    const handlers = {};
    return {
      get: (name) => values[name],
      set: (name, value) => {
        const old = values[name];
        values[name] = value;
        if (old !== value) (handlers["change:" + name] || []).forEach((cb) => cb());
      },
      save_changes: () => {},
      on: (event, cb) => { (handlers[event] = handlers[event] || []).push(cb); },
      off: (event, cb) => {
        if (!event) { Object.keys(handlers).forEach((k) => delete handlers[k]); return; }
        handlers[event] = (handlers[event] || []).filter((f) => cb && f !== cb);
      },
      send: () => {},
      widget_manager: null,
    };
  }

  async function renderModel(id, models, host) {
    const entry = models[id];
    if (!entry) return;
    const state = entry.state || {};
    if (typeof state._esm === "string") {
      if (state._css) {
        const style = document.createElement("style");
        style.textContent = state._css;
        document.head.appendChild(style);
      }
      const url = URL.createObjectURL(new Blob([state._esm], { type: "text/javascript" }));
      const mod = await import(url);
      const widget = mod.default || mod;
      const div = document.createElement("div");
      div.className = "static-anywidget";
      host.appendChild(div);
      const model = makeModel(state);
      if (widget.initialize) await widget.initialize({ model });
      await widget.render({ model, el: div });
    } else if (Array.isArray(state.children)) {
      for (const child of state.children) await renderModel(String(child).replace("IPY_MODEL_", ""), models, host);
    } else if (entry.model_name === "TextModel") {
      const note = document.createElement("div");
      note.className = "static-widget-note";
      note.textContent = `prompt: ${state.value || ""} (a live kernel recomputes for a new prompt)`;
      host.appendChild(note);
    }
  }

  async function main() {
    const stateScript = document.querySelector('script[type="application/vnd.jupyter.widget-state+json"]');
    if (!stateScript) return;
    const models = JSON.parse(stateScript.textContent).state || {};
    const views = document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]');
    for (const view of views) {
      const id = JSON.parse(view.textContent).model_id;
      const host = document.createElement("div");
      view.parentNode.insertBefore(host, view);
      await renderModel(id, models, host);
    }
    document.body.dataset.widgetsRendered = String(views.length);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", main);
  else main();
})();
