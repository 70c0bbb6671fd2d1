// The r2migrate dashboard: polls GET /batches and renders it. No framework, no build step.
// The API token is typed into the page (or given as #token=... in the URL, removed at once) and
// kept in sessionStorage: it is never part of the served HTML. Data is only ever inserted with
// textContent, never as HTML, so a file name cannot inject markup.
"use strict";
(function () {
  const TOKEN_KEY = "r2migrate.api_token";
  const POLL_MS = 2000;
  const $ = (id) => document.getElementById(id);

  const fromFragment = /(?:^#|&)token=([^&]*)/.exec(window.location.hash);
  if (fromFragment) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(fromFragment[1]));
    history.replaceState(null, "", window.location.pathname + window.location.search);
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (token()) headers.Authorization = "Bearer " + token();
    const init = { method: method, headers: headers, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    let data = null;
    try {
      data = await response.json();
    } catch (e) {
      data = null;
    }
    if (!response.ok) {
      const error = new Error((data && data.message) || response.statusText);
      error.status = response.status;
      error.hint = data && data.hint;
      throw error;
    }
    return data;
  }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function bytes(n) {
    if (n === null || n === undefined) return "-";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return i === 0 ? Math.round(n) + " B" : n.toFixed(1) + " " + units[i];
  }

  function duration(s) {
    if (s === null || s === undefined) return "-";
    if (s < 1) return "0 s";
    if (s < 90) return Math.round(s) + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  // Live rate over the last minute while running; the average over the run once it ended.
  function throughput(b) {
    const p = b.progress;
    if (b.status !== "running" && b.started_at && b.completed_at) {
      const s = (Date.parse(b.completed_at) - Date.parse(b.started_at)) / 1000;
      if (s > 0) {
        return (b.uploaded_files / s).toFixed(1) + " files/s, " +
          bytes(b.uploaded_bytes / s) + "/s (average)";
      }
    }
    return p.files_per_s.toFixed(1) + " files/s, " + bytes(p.bytes_per_s) + "/s";
  }

  function progressBar(p) {
    const bar = el("div", undefined, "bar");
    const total = p.files_total || 0;
    const done = total ? p.files_done / total : 1;
    const bad = total ? p.files_failed / total : 0;
    const fill = el("div", undefined, "fill");
    fill.style.width = (100 * done).toFixed(1) + "%";
    const failed = el("div", undefined, "bad");
    failed.style.left = (100 * done).toFixed(1) + "%";
    failed.style.width = (100 * bad).toFixed(1) + "%";
    const label = el("div", (100 * done).toFixed(0) + "%", "label");
    bar.append(fill, failed, label);
    bar.title = p.files_done + " done, " + p.files_failed + " failed of " + total;
    return bar;
  }

  function action(label, batchId, path, body) {
    const button = el("button", label);
    button.type = "button";
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        await api("POST", "/batches/" + encodeURIComponent(batchId) + path, body);
        showError(null);
      } catch (e) {
        showError(e);
      } finally {
        button.disabled = false;
        refresh();
      }
    });
    return button;
  }

  function batchRow(b) {
    const p = b.progress;
    const tr = el("tr");
    tr.dataset.batchId = b.batch_id;
    tr.append(el("td", b.batch_id, "key"));
    tr.append(el("td", b.location ? b.bucket_name + "/" + b.location : b.bucket_name, "key"));
    const status = el("td");
    status.append(el("span", b.status, "status " + b.status));
    tr.append(status);
    const bar = el("td");
    bar.append(progressBar(p));
    tr.append(bar);
    tr.append(el("td", p.files_done + " / " + p.files_total +
      (p.files_failed ? " (" + p.files_failed + " failed)" : ""), "num"));
    tr.append(el("td", bytes(p.bytes_done) + " / " + bytes(p.bytes_total), "num"));
    tr.append(el("td", throughput(b), "num"));
    tr.append(el("td", b.status === "running" ? duration(p.eta_s) : "-", "num"));
    const job = b.job;
    tr.append(el("td", job ? job.state + (job.error ? ": " + job.error.message : "") : "-"));
    const actions = el("td");
    if (job && job.state === "running") {
      actions.append(action("stop", b.batch_id, "/stop"));
    } else if (b.status !== "completed" && b.status !== "rolled_back") {
      actions.append(action("process", b.batch_id, "/process"));
    }
    if (!(job && job.state === "running")) {
      actions.append(action("verify", b.batch_id, "/verify", { deep: false }));
    }
    tr.append(actions);
    return tr;
  }

  function failureRow(f) {
    const tr = el("tr");
    tr.append(el("td", f.at ? f.at.replace("T", " ").slice(0, 19) : "-", "num"));
    tr.append(el("td", f.batch_id, "key"));
    tr.append(el("td", f.object_key || "-", "key"));
    tr.append(el("td", f.code + (f.final ? "" : " (retried)")));
    tr.append(el("td", f.message));
    return tr;
  }

  function render(data) {
    const batches = data.batches;
    const rows = batches.map(batchRow);
    $("batches").tBodies[0].replaceChildren(...rows);
    $("empty").hidden = batches.length > 0;
    const failures = batches
      .flatMap((b) => b.progress.recent_failures)
      .sort((a, b) => String(b.at).localeCompare(String(a.at)))
      .slice(0, 20);
    $("failures").tBodies[0].replaceChildren(...failures.map(failureRow));
    $("no-failures").hidden = failures.length > 0;
    $("failures").hidden = failures.length === 0;
    const done = batches.reduce((n, b) => n + b.progress.files_done, 0);
    const total = batches.reduce((n, b) => n + b.progress.files_total, 0);
    const running = batches.filter((b) => b.status === "running").length;
    $("summary").textContent = batches.length + " batch(es), " + done + " / " + total +
      " files done, " + running + " running";
    $("updated").textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC";
  }

  function showError(error) {
    const box = $("error");
    if (!error) {
      box.hidden = true;
      return;
    }
    box.textContent = error.message + (error.hint ? " (" + error.hint + ")" : "");
    box.hidden = false;
  }

  let timer = null;
  async function refresh() {
    clearTimeout(timer);
    try {
      render(await api("GET", "/batches"));
      $("login").hidden = true;
      showError(null);
    } catch (e) {
      if (e.status === 401) {
        $("login").hidden = false;
        $("summary").textContent = "an API token is needed";
      }
      showError(e);
    }
    timer = setTimeout(refresh, POLL_MS);
  }

  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    refresh();
  });

  refresh();
})();
