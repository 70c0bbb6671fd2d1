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
    if (b.status === "rolled_back") return null;
    if (b.status !== "running" && b.started_at && b.completed_at) {
      const s = (Date.parse(b.completed_at) - Date.parse(b.started_at)) / 1000;
      if (s > 0) {
        return { files: b.uploaded_files / s, bytes: b.uploaded_bytes / s, average: true };
      }
    }
    if (b.status !== "running") return null;
    return { files: p.files_per_s, bytes: p.bytes_per_s, average: false };
  }

  function throughputCell(b) {
    const rate = throughput(b);
    if (!rate) return el("td", "-", "num muted");
    const cell = el("td", rate.files.toFixed(1) + " files/s", "num");
    cell.append(el("br"), el("span", bytes(rate.bytes) + "/s", "muted"));
    cell.title = rate.average ? "average over the run" : "over the last minute";
    return cell;
  }

  const STATUS_WORDS = {
    planned: "planned",
    running: "running",
    partial: "partly done",
    completed: "completed",
    failed: "failed",
    rolled_back: "rolled back",
  };

  // A planned or partly done batch with a job in the worker queue shows as queued.
  function statusOf(b) {
    if (b.queued && b.status !== "running" && b.status !== "completed" &&
        b.status !== "rolled_back") {
      return "queued";
    }
    return b.status;
  }

  // "verified 50/50", "2 differ, 1 missing", or "not verified yet".
  function verification(b) {
    if (b.status === "rolled_back") return { text: "-", className: "muted" };
    const problems = Object.entries(b.verify_problems || {})
      .filter(([, n]) => n > 0)
      .map(([outcome, n]) => n + " " + outcome.replace(/_/g, " "));
    if (problems.length) return { text: problems.join(", "), className: "bad-text" };
    if (b.verified_files > 0) {
      const all = b.verified_files === b.total_files;
      return {
        text: "verified " + b.verified_files + "/" + b.total_files,
        className: all ? "good" : "",
      };
    }
    return { text: "not verified yet", className: "muted" };
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

  // Roll back in two steps: a dry run shows what would be deleted, then a button confirms.
  let pending = null;
  function closeRollback(text) {
    pending = null;
    $("rollback-confirm").hidden = true;
    $("rollback-text").textContent = text || "";
    $("rollback").hidden = !text;
  }

  async function previewRollback(b) {
    const path = "/batches/" + encodeURIComponent(b.batch_id) + "/rollback";
    try {
      const dry = await api("POST", path, { dry_run: true });
      const n = dry.would_delete.length;
      const kept = dry.problems.length;
      $("rollback-text").textContent = "Rolling back " + b.batch_id + " would delete " + n +
        " object(s), " + bytes(dry.bytes_deleted) + ", from bucket " + b.bucket_name + "." +
        (kept ? " " + kept + " object(s) are not ours or have changed and would be kept." : "") +
        " Source files are never touched.";
      $("rollback-confirm").textContent = "Delete " + n + " object(s)";
      $("rollback-confirm").hidden = n === 0;
      $("rollback").hidden = false;
      pending = n ? path : null;
      showError(null);
    } catch (e) {
      showError(e);
    }
  }

  $("rollback-confirm").addEventListener("click", async () => {
    if (!pending) return;
    const path = pending;
    $("rollback-confirm").disabled = true;
    try {
      const done = await api("POST", path, { dry_run: false });
      closeRollback("Deleted " + done.deleted.length + " object(s), " +
        bytes(done.bytes_deleted) + "; the batch is now " +
        (STATUS_WORDS[done.batch_status] || done.batch_status) + ".");
    } catch (e) {
      showError(e);
    } finally {
      $("rollback-confirm").disabled = false;
      refresh();
    }
  });
  $("rollback-cancel").addEventListener("click", () => closeRollback(null));

  function batchRow(b) {
    const p = b.progress;
    const tr = el("tr", undefined, b.status === "rolled_back" ? "rolled-back" : "");
    tr.dataset.batchId = b.batch_id;
    tr.append(el("td", b.batch_id, "key"));
    const target = el("td", b.bucket_name + (b.location ? " / " + b.location : ""), "target");
    target.title = "bucket " + b.bucket_name + (b.location ? ", location " + b.location : "") +
      (b.endpoint_url ? " at " + b.endpoint_url : "");
    tr.append(target);
    const status = el("td");
    const shown = statusOf(b);
    status.append(el("span", STATUS_WORDS[shown] || shown, "status " + shown));
    const job = b.job;
    if (job && (job.state !== "completed" || job.error)) {
      // this server's runner, when it has something to say: stopping, interrupted, failed
      const said = "runner " + job.state + (job.error ? ": " + job.error.message : "");
      status.append(el("div", said, "muted runner"));
    }
    tr.append(status);
    const bar = el("td");
    bar.append(progressBar(p));
    tr.append(bar);
    tr.append(el("td", p.files_done + " / " + p.files_total +
      (p.files_failed ? " (" + p.files_failed + " failed)" : ""), "num"));
    tr.append(el("td", bytes(p.bytes_done) + " / " + bytes(p.bytes_total), "num"));
    const checked = verification(b);
    tr.append(el("td", checked.text, "verification " + checked.className));
    tr.append(throughputCell(b));
    tr.append(el("td", b.status === "running" ? duration(p.eta_s) : "-", "num"));
    const actions = el("td", undefined, "actions");
    if (job && job.state === "running") {
      actions.append(action("stop", b.batch_id, "/stop"));
    } else if (b.status !== "completed" && b.status !== "rolled_back" && !b.queued) {
      actions.append(action("process", b.batch_id, "/process"));
    }
    if (!(job && job.state === "running") && b.status !== "rolled_back") {
      actions.append(action("verify", b.batch_id, "/verify", { deep: false }));
    }
    if (!(job && job.state === "running") && b.status !== "rolled_back" &&
        b.uploaded_files > 0) {
      const undo = el("button", "roll back…");
      undo.type = "button";
      undo.addEventListener("click", () => previewRollback(b));
      actions.append(undo);
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

  // Throughput over time, from the files done at each poll (kept for this tab's session).
  const SAMPLES_KEY = "r2migrate.samples";
  const MAX_SAMPLES = 600;
  const SVG = "http://www.w3.org/2000/svg";
  let samples = [];
  try {
    samples = JSON.parse(sessionStorage.getItem(SAMPLES_KEY) || "[]");
  } catch (e) {
    samples = [];
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function drawChart(filesDone) {
    const now = Date.now();
    const last = samples[samples.length - 1];
    if (last && filesDone < last[1]) samples = []; // a rollback or a new ledger: start over
    samples.push([now, filesDone]);
    samples = samples.slice(-MAX_SAMPLES);
    sessionStorage.setItem(SAMPLES_KEY, JSON.stringify(samples));
    const rates = [];
    for (let i = 1; i < samples.length; i++) {
      const s = (samples[i][0] - samples[i - 1][0]) / 1000;
      if (s > 0) rates.push([samples[i][0], (samples[i][1] - samples[i - 1][1]) / s]);
    }
    const W = 1000, H = 120, top = Math.max(1, ...rates.map((r) => r[1]));
    const chart = svg("svg", { viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none",
      role: "img", "aria-label": "files per second over time" });
    if (rates.length > 1) {
      const t0 = rates[0][0], span = Math.max(1, rates[rates.length - 1][0] - t0);
      const points = rates.map((r) => ((r[0] - t0) / span * (W - 10) + 5).toFixed(1) + "," +
        (H - 18 - r[1] / top * (H - 30)).toFixed(1));
      chart.append(svg("polyline", { points: points.join(" "), class: "line" }));
      const minutes = span / 60000;
      const ago = minutes < 1 ? Math.round(span / 1000) + " s ago" : minutes.toFixed(1) + " min ago";
      chart.append(svg("text", { x: 5, y: H - 4, class: "axis" }, ago));
      chart.append(svg("text", { x: W - 40, y: H - 4, class: "axis" }, "now"));
    }
    chart.append(svg("text", { x: 5, y: 12, class: "axis" }, "peak " + top.toFixed(1) +
      " files/s"));
    $("chart").replaceChildren(chart);
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
    // Rolled-back batches were undone: their files are not part of what is being migrated.
    const live = batches.filter((b) => b.status !== "rolled_back");
    const sum = (key) => live.reduce((n, b) => n + b.progress[key], 0);
    const running = live.filter((b) => b.status === "running").length;
    const queued = live.filter((b) => statusOf(b) === "queued").length;
    const undone = batches.length - live.length;
    $("summary").textContent = live.length + " batch(es), " + sum("files_done") + " / " +
      sum("files_total") + " files done, " + running + " running" +
      (queued ? ", " + queued + " queued for workers" : "") +
      (undone ? " (" + undone + " rolled back, not counted)" : "");
    const total = {
      files_total: sum("files_total"),
      files_done: sum("files_done"),
      files_failed: sum("files_failed"),
    };
    $("total-bar").replaceChildren(progressBar(total));
    $("total-text").textContent = "whole migration: " + bytes(sum("bytes_done")) + " of " +
      bytes(sum("bytes_total")) + " sent, " +
      live.reduce((n, b) => n + b.verified_files, 0) + " file(s) proven identical";
    $("total").hidden = live.length === 0;
    drawChart(sum("files_done"));
    $("updated").textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC";
  }

  function showError(error) {
    const box = $("error");
    if (!error) {
      box.hidden = true;
      return;
    }
    const hint = error.hint ? " " + error.hint.replace(/`/g, "") : "";
    box.textContent = error.message + hint;
    box.hidden = false;
  }

  let timer = null;
  async function refresh() {
    clearTimeout(timer);
    try {
      render(await api("GET", "/batches"));
      $("login").hidden = true;
      $("welcome").hidden = true;
      document.querySelector("main").hidden = false;
      showError(null);
    } catch (e) {
      if (e.status === 401) {
        // No token, or a wrong one: a welcome, not an error about HTTP headers.
        const given = token() !== "";
        $("login").hidden = false;
        $("welcome").hidden = false;
        document.querySelector("main").hidden = true;
        $("total").hidden = true;
        $("summary").textContent = "an API token is needed";
        showError(given ? { message: "That token was not accepted; check it and try again." }
          : null);
      } else {
        showError(e);
      }
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
