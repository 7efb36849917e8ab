// mmsearch search page: one form -> POST /api/search (multipart) -> a grid of results.
// No build step, no framework; all server text goes in through textContent (never innerHTML).
"use strict";

(function () {
  const config = JSON.parse(document.body.dataset.config || "{}");
  const $ = (id) => document.getElementById(id);
  const form = $("search-form");
  const text = $("q");
  const fileInput = $("image-file");
  const urlInput = $("image-url");
  const dropZone = $("drop-zone");
  const choice = $("image-choice");
  const preview = $("image-preview");
  const previewImg = $("preview-img");
  const previewLabel = $("preview-label");
  const button = $("search-button");
  const statusBox = $("status");
  const errorBox = $("error");
  const section = $("results-section");
  const heading = $("results-heading");
  const grid = $("results");
  const summary = $("summary");
  const rerankInfo = $("rerank-info");
  const keyInput = $("api-key");

  // The query image: {kind: "file", file} | {kind: "id", id, label, thumb} | null (URL: the input).
  let image = null;
  let previewUrl = null;
  let busy = false;

  if (config.keyRequired) {
    document.querySelectorAll(".key-field").forEach((el) => (el.hidden = false));
    keyInput.value = sessionStorage.getItem("mmsearch-key") || "";
    form.querySelector("details.options").open = true;
  }

  function headers() {
    const key = keyInput.value.trim();
    if (key) sessionStorage.setItem("mmsearch-key", key);
    return key ? { "X-API-Key": key } : {};
  }

  // -- the query image ------------------------------------------------------------------
  function showPreview(src, label) {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = src.startsWith("blob:") ? src : null;
    previewImg.src = src;
    previewImg.alt = "Query image: " + label;
    previewLabel.textContent = label;
    preview.hidden = false;
    choice.hidden = true;
  }

  function setFile(file) {
    if (!file) return;
    if (!file.type.startsWith("image/")) {
      showError(file.name + " is not an image");
      return;
    }
    image = { kind: "file", file: file, label: "image " + (file.name || "pasted image") };
    urlInput.value = "";
    showPreview(URL.createObjectURL(file), file.name || "pasted image");
  }

  function setResultImage(row) {
    image = { kind: "id", id: row.id, label: "result #" + row.rank + describe(row) };
    urlInput.value = "";
    fileInput.value = "";
    loadImage(row.thumb_url).then((src) => showPreview(src, image.label));
  }

  function clearImage() {
    image = null;
    fileInput.value = "";
    urlInput.value = "";
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = null;
    previewImg.removeAttribute("src");
    preview.hidden = true;
    choice.hidden = false;
    fileInput.focus();
  }

  function describe(row) {
    return row.title ? " (" + row.title + ")" : "";
  }

  fileInput.addEventListener("change", () => setFile(fileInput.files[0]));
  urlInput.addEventListener("input", () => {
    if (urlInput.value.trim()) image = null;
  });
  $("clear-image").addEventListener("click", clearImage);

  ["dragenter", "dragover"].forEach((name) =>
    document.addEventListener(name, (ev) => {
      ev.preventDefault(); // never navigate away to a dropped file
      dropZone.classList.add("dragging");
    })
  );
  ["dragleave", "drop"].forEach((name) =>
    document.addEventListener(name, (ev) => {
      ev.preventDefault();
      dropZone.classList.remove("dragging");
    })
  );
  document.addEventListener("drop", (ev) => {
    const files = ev.dataTransfer && ev.dataTransfer.files;
    if (files && files.length) setFile(files[0]);
  });
  document.addEventListener("paste", (ev) => {
    const items = (ev.clipboardData && ev.clipboardData.items) || [];
    for (const item of items) {
      if (item.kind === "file" && item.type.startsWith("image/")) {
        ev.preventDefault();
        setFile(item.getAsFile());
        return;
      }
    }
  });

  // -- talking to the API ---------------------------------------------------------------
  // Images need the key too when the server asks for one: then they come through fetch.
  function loadImage(url) {
    if (!config.keyRequired) return Promise.resolve(url);
    return fetch(url, { headers: headers() })
      .then((r) => (r.ok ? r.blob() : Promise.reject(new Error("HTTP " + r.status))))
      .then((blob) => URL.createObjectURL(blob))
      .catch(() => "");
  }

  function requestBody() {
    const body = new FormData();
    if (text.value.trim()) body.append("text", text.value.trim());
    if (image && image.kind === "file") body.append("image", image.file, image.file.name || "pasted.png");
    else if (image && image.kind === "id") body.append("image_id", image.id);
    else if (urlInput.value.trim()) body.append("image_url", urlInput.value.trim());
    const k = $("top-k").value.trim();
    if (k) body.append("top_k", k);
    $("filters").value.split(";").map((f) => f.trim()).filter(Boolean)
      .forEach((f) => body.append("filters", f));
    body.append("rerank", $("rerank").checked ? "true" : "false");
    body.append("mode", $("mode").value);
    return body;
  }

  async function search(focusResults) {
    if (busy) return;
    hideError();
    if (!text.value.trim() && !image && !urlInput.value.trim()) {
      showError("Type what you are looking for, add an image, or both.");
      text.focus();
      return;
    }
    setBusy(true);
    try {
      const response = await fetch("/api/search", { method: "POST", body: requestBody(), headers: headers() });
      let data = null;
      try {
        data = await response.json();
      } catch (e) {
        data = null;
      }
      if (!response.ok) {
        throw new Error((data && data.error) || "the server answered HTTP " + response.status);
      }
      render(data);
      if (focusResults) heading.focus();
    } catch (err) {
      showError(err.message === "Failed to fetch" ? "The server cannot be reached." : err.message);
    } finally {
      setBusy(false);
    }
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    search(false);
  });

  // -- states ---------------------------------------------------------------------------
  function setBusy(on) {
    busy = on;
    button.disabled = on;
    button.textContent = on ? "Searching…" : "Search";
    section.setAttribute("aria-busy", on ? "true" : "false");
    document.body.classList.toggle("busy", on);
    // Visible while searching; afterwards it only announces the result count to screen readers.
    statusBox.classList.toggle("visually-hidden", !on);
    if (on) statusBox.textContent = "Searching…";
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
    statusBox.textContent = "";
  }

  function hideError() {
    errorBox.hidden = true;
    errorBox.textContent = "";
  }

  // -- results --------------------------------------------------------------------------
  function el(tag, className, content) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (content !== undefined && content !== null) node.textContent = content;
    return node;
  }

  function money(value) {
    return typeof value === "number" ? "$" + value.toFixed(2) : null;
  }

  function info(term, value) {
    if (!value) return;
    rerankInfo.append(el("dt", null, term), el("dd", null, value));
  }

  function render(data) {
    const rows = data.results || [];
    const q = data.query || {};
    const seconds = data.timings && data.timings.total_s;
    const parts = [];
    if (q.text) parts.push("“" + q.text + "”");
    if (q.image) parts.push(image && image.kind !== "url" ? image.label : "image " + q.image);
    summary.textContent =
      rows.length + " result" + (rows.length === 1 ? "" : "s") + " for " + parts.join(" + ") +
      (typeof seconds === "number" ? " in " + seconds.toFixed(2) + " s" : "");
    rerankInfo.replaceChildren();
    const rr = data.rerank || {};
    info("Rerank", rr.status + (rr.detail ? ": " + rr.detail : ""));
    info("Query image", data.caption);
    info("Why #1", data.reason);
    grid.replaceChildren(...rows.map(card));
    section.hidden = false;
    statusBox.textContent = rows.length + " result" + (rows.length === 1 ? "" : "s") + ".";
  }

  function card(row) {
    const item = el("li", "card");
    item.dataset.id = row.id;
    const figure = el("figure", "thumb");
    const img = el("img");
    img.alt = row.title || "result " + row.rank;
    img.loading = "lazy";
    img.width = 180;
    img.height = 180;
    loadImage(row.thumb_url).then((src) => (img.src = src));
    figure.append(img, el("span", "rank", "#" + row.rank));
    const meta = el("div", "meta");
    meta.append(el("h3", "title", row.title || row.id));
    const facts = [money(row.price), row.category].filter(Boolean).join(" · ");
    if (facts) meta.append(el("p", "facts", facts));
    let score = "score " + (typeof row.score === "number" ? row.score.toFixed(3) : "–");
    if (row.retrieval_rank && row.retrieval_rank !== row.rank) score += " · was #" + row.retrieval_rank;
    meta.append(el("p", "score", score));
    const more = el("button", "more", "More like this");
    more.type = "button";
    more.setAttribute("aria-label", "More like this: result " + row.rank + describe(row));
    more.addEventListener("click", () => {
      setResultImage(row);
      search(true);
    });
    item.append(figure, meta, more);
    return item;
  }
})();
