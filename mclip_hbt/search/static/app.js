/* mclip_hbt search page: plain JavaScript, no libraries, everything from /static/.
 *
 * Elements that bench/search_page.py (and anyone scripting the page) relies on; keep them stable:
 *   #info              model name and image count; data-state = "ready" | "error" once /api/info answered
 *   #query             the first query box (the `q` parameter)
 *   #add-phrasing      "+ another phrasing": appends an input.also and focuses it (disabled at max_phrasings)
 *   input.also         the other phrasings' boxes in order (ids also-1, also-2, …; the `also` parameters)
 *   #k                 results per phrasing (10 / 20 / 50, capped by max_k)
 *   #search            the Search button (submit); Enter in any box does the same
 *   #error             the error message (role=alert), hidden when there is none
 *   #status            one line on what was run ("10 results · 0.12 s")
 *   #results           the results; data-state = "idle" | "loading" | "done" | "error"
 *                        one phrasing: ol.grid of li.hit
 *                        several:      .columns > section.column[data-query=i] > ol.mini of li.hit
 *   .hit               one result: data-id, .hit img (src /thumb/ID, alt = file name), .hit .score;
 *                      .hit.shared when the picture is in every phrasing's top k
 *   #agreement         several phrasings only: table.pairs (overlap@k, rank correlation per pair), .mean
 *   #source            the source picture of a "more like this" search
 *
 * URL state: ?q=TEXT&also=TEXT&also=TEXT&k=N for a search, ?similar=ID&k=N for "more like this"; the page
 * runs what the URL says on load and on back/forward.
 *
 * Everything the server sends is put in the page with textContent / attributes, never as HTML.
 */
"use strict";

(() => {
  const $ = (selector) => document.querySelector(selector);
  const EXAMPLES = ["ein rotes Herz", "cœur rouge", "赤いハート", "czerwone serce", "قلب أحمر", "红心"];
  const K_CHOICES = [10, 20, 50];
  const DEFAULT_MAX_PHRASINGS = 5;

  const state = {
    info: null,       // /api/info
    controller: null, // AbortController of the request in flight
    last: null,       // what is on screen: {q, also, k} or {similar, k}
  };

  // ------------------------------------------------------------------ small helpers

  /** Create an element; `text` sets textContent, `on*` adds listeners, everything else is an attribute. */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = String(value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child); // strings become text nodes
    }
    return node;
  }

  const baseName = (path) => String(path ?? "").split(/[\\/]/).filter(Boolean).pop() || String(path ?? "");
  const fmtScore = (x) => (typeof x === "number" && Number.isFinite(x) ? x.toFixed(3) : "—");
  const fmtCorr = (x) => (typeof x === "number" && Number.isFinite(x) ? x.toFixed(2) : "—");
  const fmtPct = (x) => (typeof x === "number" && Number.isFinite(x) ? `${Math.round(x * 100)} %` : "—");
  const fmtInt = (n) => (Number.isFinite(Number(n)) ? new Intl.NumberFormat("en").format(Number(n)) : "?");
  const idPart = (id) => encodeURIComponent(String(id));

  function showError(message) {
    const box = $("#error");
    box.textContent = message;
    box.hidden = !message;
  }

  function setStatus(message) {
    $("#status").textContent = message;
  }

  function setResultsState(value) {
    const results = $("#results");
    results.dataset.state = value;
    results.setAttribute("aria-busy", value === "loading" ? "true" : "false");
  }

  // ------------------------------------------------------------------ the API

  class ApiError extends Error {}

  /** FastAPI errors: {"detail": "message"} or, for validation errors, {"detail": [{loc, msg}, …]}. */
  function errorMessage(response, body, text) {
    const detail = body && typeof body === "object" ? body.detail : undefined;
    if (typeof detail === "string" && detail) return detail;
    if (Array.isArray(detail) && detail.length) {
      return detail.map((item) => {
        if (!item || typeof item !== "object") return String(item);
        const where = Array.isArray(item.loc) ? item.loc.filter((p) => p !== "query" && p !== "path").join(".") : "";
        return (where ? `${where}: ` : "") + (item.msg ?? JSON.stringify(item));
      }).join("; ");
    }
    if (detail !== undefined && detail !== null) return JSON.stringify(detail);
    const plain = text && text.length < 300 && !text.trimStart().startsWith("<") ? `: ${text.trim()}` : "";
    return `The server answered ${response.status} ${response.statusText || ""}`.trim() + plain;
  }

  async function api(path, signal) {
    let response;
    try {
      response = await fetch(path, { signal, headers: { Accept: "application/json" } });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(`Could not reach the server (${err.message}).`);
    }
    const text = await response.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = null;
    }
    if (!response.ok) throw new ApiError(errorMessage(response, body, text));
    if (body === null || typeof body !== "object") throw new ApiError(`The server sent an unreadable answer to ${path}.`);
    return body;
  }

  // ------------------------------------------------------------------ the form

  const maxPhrasings = () => {
    const n = state.info && Number(state.info.max_phrasings);
    return Number.isInteger(n) && n > 0 ? n : DEFAULT_MAX_PHRASINGS;
  };

  const phrasingInputs = () => [$("#query"), ...document.querySelectorAll("#phrasings input.also")];

  function renumberPhrasings() {
    document.querySelectorAll("#phrasings .also-row").forEach((row, i) => {
      const input = row.querySelector("input");
      const label = row.querySelector("label");
      const remove = row.querySelector("button.remove");
      input.id = `also-${i + 1}`;
      label.htmlFor = input.id;
      label.textContent = `Phrasing ${i + 2}`;
      remove.setAttribute("aria-label", `Remove phrasing ${i + 2}`);
      remove.title = `Remove phrasing ${i + 2}`;
    });
    const add = $("#add-phrasing");
    const full = phrasingInputs().length >= maxPhrasings();
    add.disabled = full;
    add.title = full
      ? `At most ${maxPhrasings()} phrasings`
      : "Compare how phrasings in several languages rank the pictures";
  }

  function addPhrasing(value = "", focus = true) {
    const count = phrasingInputs().length;
    if (count >= maxPhrasings()) return null;
    const input = el("input", {
      type: "text", class: "also", name: "also", autocomplete: "off", spellcheck: "false",
      placeholder: `the same query in another language, e.g. ${EXAMPLES[(count - 1) % EXAMPLES.length]}`,
    });
    const maxChars = state.info && Number(state.info.max_query_chars);
    if (Number.isInteger(maxChars) && maxChars > 0) input.maxLength = maxChars;
    input.value = value;
    const row = el("div", { class: "phrasing also-row" });
    const remove = el("button", {
      type: "button", class: "remove", text: "×",
      onclick: () => {
        const inputs = phrasingInputs();
        const before = inputs[inputs.indexOf(input) - 1] || $("#query");
        row.remove();
        renumberPhrasings();
        before.focus();
      },
    });
    row.append(el("label"), input, remove);
    $("#phrasings").append(row);
    renumberPhrasings();
    if (focus) input.focus();
    return input;
  }

  function setPhrasings(texts) {
    document.querySelectorAll("#phrasings .also-row").forEach((row) => row.remove());
    $("#query").value = texts[0] || "";
    for (const text of texts.slice(1)) addPhrasing(text, false);
    renumberPhrasings();
  }

  /** Select `k` in #k, adding it as an option when the URL asked for an unlisted value within max_k. */
  function setK(k) {
    const select = $("#k");
    const maxK = state.info && Number(state.info.max_k);
    if (Number.isInteger(maxK) && maxK > 0) k = Math.min(k, maxK);
    if (![...select.options].some((o) => Number(o.value) === k)) {
      select.append(el("option", { value: k, text: k }));
      [...select.options].sort((a, b) => Number(a.value) - Number(b.value)).forEach((o) => select.append(o));
    }
    select.value = String(k);
  }

  /** Apply /api/info's limits: k choices within max_k, maxlength on the boxes, the phrasing cap. */
  function applyLimits(info) {
    const select = $("#k");
    const current = Number(select.value) || K_CHOICES[0];
    const maxK = Number(info.max_k);
    let choices = K_CHOICES;
    if (Number.isInteger(maxK) && maxK > 0) {
      choices = K_CHOICES.filter((k) => k <= maxK);
      if (!choices.length) choices = [maxK];
    }
    select.replaceChildren(...choices.map((k) => el("option", { value: k, text: k })));
    select.value = String(choices.includes(current) ? current : choices[0]);
    const maxChars = Number(info.max_query_chars);
    if (Number.isInteger(maxChars) && maxChars > 0) phrasingInputs().forEach((input) => { input.maxLength = maxChars; });
    renumberPhrasings();
  }

  function formParams() {
    const texts = phrasingInputs().map((input) => input.value.trim()).filter(Boolean);
    return { q: texts[0] || "", also: texts.slice(1), k: Number($("#k").value) || K_CHOICES[0] };
  }

  // ------------------------------------------------------------------ the URL

  function urlFor(params) {
    const query = new URLSearchParams();
    if (params.similar !== undefined && params.similar !== null) {
      query.set("similar", String(params.similar));
    } else {
      query.set("q", params.q);
      for (const text of params.also) query.append("also", text);
    }
    query.set("k", String(params.k));
    return `${location.pathname}?${query}`;
  }

  function readUrl() {
    const query = new URLSearchParams(location.search);
    const k = parseInt(query.get("k") || "", 10);
    const similar = query.get("similar");
    return {
      q: (query.get("q") || "").trim(),
      also: query.getAll("also").map((s) => s.trim()).filter(Boolean),
      k: Number.isInteger(k) && k > 0 ? k : null,
      similar: similar !== null && /^\d+$/.test(similar) ? Number(similar) : null,
    };
  }

  function updateUrl(params, how) {
    const url = urlFor(params);
    if (how === "push" && url !== `${location.pathname}${location.search}`) history.pushState(null, "", url);
    else if (how) history.replaceState(null, "", url);
  }

  // ------------------------------------------------------------------ running a request

  function clearResults() {
    $("#results").replaceChildren();
    $("#agreement").replaceChildren();
    $("#agreement").hidden = true;
    $("#source").replaceChildren();
    $("#source").hidden = true;
  }

  /** Fetch `path` (aborting any request in flight), then `render` its answer; errors go to #error. */
  async function run(path, params, how, render) {
    if (state.controller) state.controller.abort();
    const controller = new AbortController();
    state.controller = controller;
    updateUrl(params, how);
    showError("");
    setStatus("Searching…");
    setResultsState("loading");
    const started = performance.now();
    try {
      const data = await api(path, controller.signal);
      if (state.controller !== controller) return;
      clearResults();
      const summary = render(data);
      const seconds = ((performance.now() - started) / 1000).toFixed(2);
      setStatus(`${summary} · ${seconds} s`);
      state.last = params;
      setResultsState("done");
    } catch (err) {
      if (err.name === "AbortError" || state.controller !== controller) return;
      clearResults();
      showError(err instanceof ApiError ? err.message : `Could not show the results: ${err.message}`);
      setStatus("");
      state.last = null;
      setResultsState("error");
    } finally {
      if (state.controller === controller) state.controller = null;
    }
  }

  function search(params, how) {
    if (!params.q) {
      showError("Type a query first.");
      $("#query").focus();
      return;
    }
    const query = new URLSearchParams({ q: params.q, k: String(params.k) });
    for (const text of params.also) query.append("also", text);
    run(`/api/search?${query}`, params, how, (data) => {
      const queries = Array.isArray(data.queries) ? data.queries : [];
      const k = data.k ?? params.k;
      if (queries.length > 1) {
        renderAgreement(data.agreement, queries, k);
        renderColumns(queries, data.agreement, k);
        return `${queries.length} phrasings × top ${k}`;
      }
      const hits = queries.length ? queries[0].hits || [] : [];
      renderGrid(hits);
      return `${hits.length} result${hits.length === 1 ? "" : "s"} for “${queries.length ? queries[0].query : params.q}”`;
    });
  }

  function similar(id, k, how) {
    const params = { similar: id, k };
    run(`/api/similar/${idPart(id)}?k=${encodeURIComponent(String(k))}`, params, how, (data) => {
      renderSource(data.source || { id, path: String(id) });
      const hits = data.hits || [];
      renderGrid(hits);
      return `${hits.length} pictures like ${baseName((data.source || {}).path ?? id)}`;
    });
  }

  const moreLikeThis = (id) => similar(id, Number($("#k").value) || K_CHOICES[0], "push");

  // ------------------------------------------------------------------ rendering

  /** One result: the thumbnail as a button ("more like this"), and under it the score (and in the grid the name). */
  function hitItem(hit, { rank, compact, shared }) {
    const name = baseName(hit.path);
    const score = fmtScore(hit.score);
    const item = el("li", { class: `hit${shared ? " shared" : ""}`, "data-id": hit.id });
    const img = el("img", {
      src: `/thumb/${idPart(hit.id)}`, alt: name, loading: "lazy", decoding: "async", width: 256, height: 256,
    });
    img.addEventListener("error", () => item.classList.add("broken"), { once: true });
    const button = el("button", {
      type: "button", class: "thumb", title: `${hit.path}\nscore ${score}${shared ? "\nin every phrasing's top k" : ""}`,
      "aria-label": `More like this: ${name} (rank ${rank}, score ${score})`,
      onclick: () => moreLikeThis(hit.id),
    }, img);
    const caption = el("div", { class: "caption" },
      el("span", { class: "rank", text: `${rank}.` }),
      el("span", { class: "score", text: score }));
    if (!compact) {
      caption.append(el("a", {
        class: "name", href: `/image/${idPart(hit.id)}`, target: "_blank", rel: "noopener", title: hit.path, text: name,
      }));
    }
    item.append(button, caption);
    return item;
  }

  function renderGrid(hits) {
    const results = $("#results");
    if (!hits.length) {
      results.append(el("p", { class: "empty", text: "No pictures found." }));
      return;
    }
    results.append(el("ol", { class: "grid" },
      ...hits.map((hit, i) => hitItem(hit, { rank: i + 1, compact: false, shared: false }))));
  }

  function renderSource(source) {
    const box = $("#source");
    const name = baseName(source.path);
    box.append(
      el("a", { class: "source-thumb", href: `/image/${idPart(source.id)}`, target: "_blank", rel: "noopener", title: source.path },
        el("img", { src: `/thumb/${idPart(source.id)}`, alt: name, width: 256, height: 256 })),
      el("div", { class: "source-text" },
        el("h2", { text: "More like this" }),
        el("p", {},
          el("a", { href: `/image/${idPart(source.id)}`, target: "_blank", rel: "noopener", title: source.path, text: name })),
        el("p", { class: "hint", text: "Pictures whose image embedding is closest to this one. Click any picture to go on; Back returns." })),
    );
    box.hidden = false;
  }

  const queryLabel = (queries, i) => `${i + 1} “${queries[i] ? queries[i].query : "?"}”`;

  function renderAgreement(agreement, queries, k) {
    const box = $("#agreement");
    if (!agreement || typeof agreement !== "object") return;
    const pairs = Array.isArray(agreement.pairs) ? agreement.pairs : [];
    const table = el("table", { class: "pairs" },
      el("caption", { text: `Agreement of the top ${k} between each pair of phrasings` }),
      el("thead", {}, el("tr", {},
        el("th", { scope: "col", text: "Phrasings" }),
        el("th", { scope: "col", class: "num", text: `Overlap@${k}` }),
        el("th", { scope: "col", class: "num", text: "Rank correlation" }))),
      el("tbody", {}, ...pairs.map((pair) => el("tr", {},
        el("th", { scope: "row", text: `${queryLabel(queries, pair.a)} ↔ ${queryLabel(queries, pair.b)}` }),
        el("td", { class: "num", text: fmtPct(pair.overlap) }),
        el("td", { class: "num", text: fmtCorr(pair.rank_correlation) })))),
    );
    const shared = Array.isArray(agreement.shared) ? agreement.shared.length : 0;
    box.append(
      el("h2", { text: "Do the phrasings agree?" }),
      el("p", { class: "mean" },
        el("strong", { text: `Mean overlap@${k}: ${fmtPct(agreement.mean_overlap)}` }),
        ` — how much the phrasings agree: 100 % means every language finds the same pictures.`),
      table,
      el("p", { class: "legend" },
        el("span", { class: "swatch", "aria-hidden": "true" }),
        `${shared} picture${shared === 1 ? " is" : "s are"} in every phrasing's top ${k} (outlined). `,
        "Rank correlation: Spearman correlation of two phrasings' scores over the pictures either puts in its top k "
        + "(1 = same order, — = not enough pictures)."),
    );
    box.hidden = false;
  }

  function renderColumns(queries, agreement, k) {
    const shared = new Set((agreement && Array.isArray(agreement.shared) ? agreement.shared : []).map(String));
    const columns = el("div", { class: "columns" });
    columns.style.setProperty("--n", String(queries.length));
    queries.forEach((query, i) => {
      const hits = Array.isArray(query.hits) ? query.hits : [];
      const headingId = `column-${i + 1}`;
      const column = el("section", { class: "column", "data-query": i, "aria-labelledby": headingId },
        el("h2", { id: headingId },
          el("span", { class: "qnum", text: String(i + 1) }),
          el("span", { class: "qtext", text: query.query, title: query.query }),
          el("span", { class: "count", text: `top ${hits.length}` })));
      column.append(hits.length
        ? el("ol", { class: "mini" }, ...hits.map((hit, r) => hitItem(hit, { rank: r + 1, compact: true, shared: shared.has(String(hit.id)) })))
        : el("p", { class: "empty", text: "No pictures found." }));
      columns.append(column);
    });
    // Pointing at (or focusing) a picture marks the same picture in the other columns.
    const link = (event, on) => {
      const item = event.target.closest && event.target.closest(".hit");
      if (!item) return;
      for (const other of columns.querySelectorAll(".hit")) {
        if (other.dataset.id === item.dataset.id) other.classList.toggle("linked", on);
      }
    };
    columns.addEventListener("mouseover", (e) => link(e, true));
    columns.addEventListener("mouseout", (e) => link(e, false));
    columns.addEventListener("focusin", (e) => link(e, true));
    columns.addEventListener("focusout", (e) => link(e, false));
    $("#results").append(columns);
  }

  // ------------------------------------------------------------------ start

  async function loadInfo() {
    const info = $("#info");
    try {
      state.info = await api("/api/info");
      info.textContent = `${state.info.model} · ${fmtInt(state.info.images)} images`;
      info.dataset.state = "ready";
      applyLimits(state.info);
    } catch (err) {
      info.textContent = `Index information unavailable: ${err.message}`;
      info.dataset.state = "error";
      showError(err.message);
    }
  }

  /** Run what the URL says (on load: replace the history entry; on back/forward: leave history alone). */
  function runFromUrl(how) {
    const url = readUrl();
    if (url.k) setK(url.k);
    const k = Number($("#k").value) || K_CHOICES[0];
    if (url.similar !== null) {
      similar(url.similar, k, how);
    } else if (url.q || url.also.length) {
      setPhrasings([url.q, ...url.also].filter(Boolean));
      search(formParams(), how);
    } else {
      if (state.controller) state.controller.abort();
      clearResults();
      showError("");
      setStatus("");
      setResultsState("idle");
      state.last = null;
    }
  }

  async function init() {
    $("#search-form").addEventListener("submit", (event) => {
      event.preventDefault();
      search(formParams(), "push");
    });
    $("#add-phrasing").addEventListener("click", () => addPhrasing());
    $("#k").addEventListener("change", () => {
      const k = Number($("#k").value);
      if (!state.last) return;
      if (state.last.similar !== undefined) similar(state.last.similar, k, "push");
      else search({ ...state.last, k }, "push");
    });
    window.addEventListener("popstate", () => runFromUrl(null));
    renumberPhrasings();
    await loadInfo();
    runFromUrl("replace");
  }

  init();
})();
