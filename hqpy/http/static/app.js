// The hqpy status page: polls /api/status and draws queues (SVG timelines), jobs, workers and
// events. Plain DOM and SVG, no framework and no build step; every server value goes in through
// textContent or attributes, never as HTML.
"use strict";

const REFRESH_MS = 2000;
const SVG_NS = "http://www.w3.org/2000/svg";
const TIMELINE_MIN_SPAN = 60; // seconds shown at least
const TIMELINE_MAX_SPAN = 6 * 3600; // older parts of bars are clipped
const ROW_H = 18;
const LABEL_W = 230;
const STREAM_LABEL_W = 170;
const STREAM_MIN_SPAN = 20; // short runs stay visible right after they ended
const STREAM_MAX_SPAN = 30 * 60; // the task stream shows at most the last half hour
const AXIS_H = 20;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  node.append(...children.filter((c) => c !== null && c !== undefined).map(asNode));
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  node.append(...children.filter((c) => c !== null && c !== undefined).map(asNode));
  return node;
}

function asNode(child) {
  return child instanceof Node ? child : document.createTextNode(String(child));
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) node.setAttribute(key, String(value));
  }
}

function clock(t) {
  if (t === null || t === undefined) return "";
  return new Date(t * 1000).toLocaleTimeString([], { hour12: false });
}

function duration(seconds) {
  let s = Math.max(0, Math.round(seconds));
  const parts = [];
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]]) {
    if (s >= size) {
      parts.push(Math.floor(s / size) + unit);
      s %= size;
    }
  }
  if (s || !parts.length) parts.push(s + "s");
  return parts.join(" ");
}

// ---------------------------------------------------------------------------------------------
// Queues and their allocations, on one time axis shared by all queues

function timeWindow(queues, now) {
  let t0 = now - TIMELINE_MIN_SPAN;
  for (const q of queues) for (const a of q.allocations) t0 = Math.min(t0, a.queued_at);
  return Math.max(t0, now - TIMELINE_MAX_SPAN);
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function allocLabel(a) {
  let label = `${a.id} · ${plural(a.worker_count, "node")}`;
  if (a.walltime_end !== null && a.state === "running") label += ` · ends ${clock(a.walltime_end).slice(0, 5)}`;
  if (a.pending_reason) label += ` · ${a.pending_reason}`;
  return label;
}

function axis(root, x, t0, now, top, height) {
  for (let i = 0; i <= 4; i++) {
    const t = t0 + ((now - t0) * i) / 4;
    const gx = x(t);
    root.append(
      svg("line", { class: "grid", x1: gx, x2: gx, y1: top, y2: height }),
      svg("text", { x: gx, y: 12, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" },
        i === 4 ? "now" : clock(t)),
    );
  }
}

function drawTimeline(queue, t0, now, width) {
  const allocs = queue.allocations;
  const height = AXIS_H + Math.max(allocs.length, 1) * ROW_H + 4;
  const span = Math.max(now - t0, 1);
  const plotW = Math.max(width - LABEL_W - 12, 50);
  const x = (t) => LABEL_W + (Math.min(Math.max(t, t0), now) - t0) / span * plotW;

  const root = svg("svg", {
    class: "timeline",
    width: width,
    height: height,
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": `Allocations of queue ${queue.id} over time`,
  });
  axis(root, x, t0, now, AXIS_H - 4, height);
  if (!allocs.length) {
    root.append(svg("text", { x: LABEL_W + 4, y: AXIS_H + 12 }, "no allocations yet"));
  }
  allocs.forEach((a, row) => {
    const y = AXIS_H + row * ROW_H;
    const g = svg("g", { class: "alloc", "data-allocation-id": a.id, "data-state": a.state });
    g.append(svg("text", { class: "alloc-label", x: 0, y: y + 12 }, allocLabel(a)));
    const end = a.ended_at ?? now;
    const started = a.started_at;
    const info =
      `${a.id}: ${a.state}, ${plural(a.worker_count, "node")}, ${a.workers}/${a.worker_count} worker(s) connected\n` +
      `queued ${clock(a.queued_at)}` +
      (started !== null ? `, started ${clock(started)} (waited ${duration(started - a.queued_at)})` : "") +
      (a.ended_at !== null ? `, ended ${clock(a.ended_at)}` : "") +
      (a.walltime_end !== null && a.ended_at === null ? `\nwalltime ends ${clock(a.walltime_end)}` : "") +
      (a.pending_reason ? `\npending: ${a.pending_reason}` : "");
    const segment = (from, to, kind) => {
      const x1 = x(from);
      const w = Math.max(x(to) - x1, 2);
      return svg("rect", {
        class: `alloc-bar seg-${kind}`,
        "data-segment": kind,
        x: x1, y: y + 3, width: w, height: ROW_H - 6, rx: 2,
      }, svg("title", {}, info));
    };
    if (started === null) {
      // Never started: queued until now, or until it ended (a failure is drawn as such).
      const kind = a.state === "queued" ? "queued" : a.state;
      g.append(segment(a.queued_at, end, kind));
    } else {
      g.append(segment(a.queued_at, started, "queued"), segment(started, end, a.state));
    }
    root.append(g);
  });
  root.append(svg("line", { class: "now", x1: x(now), x2: x(now), y1: AXIS_H - 4, y2: height }));
  return root;
}

function queueErrors(q) {
  if (!q.errors.length) return null;
  return el("ul", { class: "queue-errors" }, ...q.errors.map((e) => el("li", {
    class: "queue-error", "data-event": e.event, "data-count": e.count,
  },
  el("span", { class: "error" }, e.count > 1 ? `${e.event} ×${e.count}` : e.event),
  el("span", { class: "muted" },
    e.count > 1 ? ` ${clock(e.first)} – ${clock(e.last)}` : ` ${clock(e.last)}`,
    e.allocation_id ? ` (${e.allocation_id})` : ""),
  el("pre", {}, e.message))));
}

function renderQueue(q, t0, now, width) {
  const c = q.allocation_counts;
  const title = el("h3", {},
    `Queue ${q.id}${q.name ? " (" + q.name + ")" : ""} · ${q.manager} · `,
    el("span", { class: q.state === "paused" || q.removed ? "paused" : "" },
      q.removed ? "removed" : q.state),
    el("span", { class: "muted" },
      ` · backlog ${q.backlog}, ${plural(q.workers_per_alloc, "worker")} per allocation` +
      `, time limit ${duration(q.time_limit)}` +
      ` · ${c.queued} queued, ${c.running} running, ${c.finished} finished, ${c.failed} failed`));
  const parts = [title];
  if (q.pause_reason) parts.push(el("p", { class: "error" }, q.pause_reason));
  parts.push(queueErrors(q));
  parts.push(drawTimeline(q, t0, now, width));
  return el("div", {
    class: "queue" + (q.removed ? " removed" : ""), "data-queue-id": q.id, "data-state": q.state,
  }, ...parts.filter((p) => p !== null));
}

function renderQueues(queues, now) {
  const box = document.getElementById("queues");
  if (!queues.length) {
    box.replaceChildren(el("p", { class: "muted" }, "No allocation queues. Add one with ",
      el("code", {}, "hq alloc add"), "."));
    return;
  }
  const width = Math.max(box.clientWidth - 30, 400);
  const t0 = timeWindow(queues, now);
  const live = queues.filter((q) => !q.removed);
  const removed = queues.filter((q) => q.removed);
  const nodes = live.map((q) => renderQueue(q, t0, now, width));
  if (removed.length) {
    const details = el("details", { id: "removed-queues", class: "removed-queues" },
      el("summary", {}, `${plural(removed.length, "removed queue")} (their allocations and events are kept)`),
      ...removed.map((q) => renderQueue(q, t0, now, width)));
    details.open = openState.removedQueues;
    details.addEventListener("toggle", () => { openState.removedQueues = details.open; });
    nodes.push(details);
  }
  box.replaceChildren(...nodes);
}

// What the user unfolded survives the refresh.
const openState = { removedQueues: false, endedWorkers: false };

// ---------------------------------------------------------------------------------------------
// Tasks: a stream per worker (which task ran where and when) and tasks ended per minute

function drawTaskStream(tasks, workers, now, width) {
  const runs = tasks.runs;
  const rows = workers.filter((w) => w.state === "running" || runs.some((r) => r.worker === w.id));
  const height = AXIS_H + Math.max(rows.length, 1) * ROW_H + 4;
  let t0 = now - STREAM_MIN_SPAN;
  for (const r of runs) t0 = Math.min(t0, r.started_at ?? r.ended_at);
  t0 = Math.max(t0, now - STREAM_MAX_SPAN);
  const span = Math.max(now - t0, 1);
  const plotW = Math.max(width - STREAM_LABEL_W - 12, 50);
  const x = (t) => STREAM_LABEL_W + (Math.min(Math.max(t, t0), now) - t0) / span * plotW;
  const root = svg("svg", {
    class: "timeline task-stream", width: width, height: height, viewBox: `0 0 ${width} ${height}`,
    role: "img", "aria-label": "Task runs per worker over time",
  });
  axis(root, x, t0, now, AXIS_H - 4, height);
  if (!rows.length) root.append(svg("text", { x: STREAM_LABEL_W + 4, y: AXIS_H + 12 }, "no tasks ended yet"));
  const rowOf = new Map(rows.map((w, i) => [w.id, i]));
  rows.forEach((w, i) => {
    root.append(svg("text", { class: "alloc-label", x: 0, y: AXIS_H + i * ROW_H + 12 },
      `worker ${w.id} · ${w.hostname}`));
  });
  for (const r of runs) {
    const row = rowOf.get(r.worker);
    if (row === undefined || r.ended_at < t0) continue;
    const from = r.started_at ?? r.ended_at;
    const x1 = x(from);
    const rect = svg("rect", {
      class: `task-run run-${r.state}`, "data-job-id": r.job, "data-task-id": r.task,
      "data-worker-id": r.worker, "data-state": r.state,
      x: x1, y: AXIS_H + row * ROW_H + 3, width: Math.max(x(r.ended_at) - x1, 1.5),
      height: ROW_H - 6,
    }, svg("title", {},
      `job ${r.job}, task ${r.task} on worker ${r.worker}: ${r.state}\n` +
      (r.started_at !== null ? `${clock(r.started_at)} – ` : "") + clock(r.ended_at) +
      (r.started_at !== null ? ` (${duration(r.ended_at - r.started_at)})` : "") +
      (r.error ? `\n${r.error}` : "")));
    root.append(rect);
  }
  root.append(svg("line", { class: "now", x1: x(now), x2: x(now), y1: AXIS_H - 4, y2: height }));
  return root;
}

function drawPerMinute(perMinute, width) {
  const height = 90;
  const top = 8;
  const bottom = 18;
  const max = Math.max(1, ...perMinute.map((m) => m.finished + m.failed));
  const plotW = Math.max(width - STREAM_LABEL_W - 12, 50);
  const barW = plotW / Math.max(perMinute.length, 1);
  const scale = (height - top - bottom) / max;
  const root = svg("svg", {
    class: "per-minute", width: width, height: height, viewBox: `0 0 ${width} ${height}`,
    role: "img", "aria-label": "Tasks ended per minute, last hour",
  });
  root.append(svg("text", { class: "alloc-label", x: 0, y: top + 10 }, `max ${max}/min`));
  root.append(svg("line", { class: "grid", x1: STREAM_LABEL_W, x2: width - 12, y1: height - bottom, y2: height - bottom }));
  perMinute.forEach((m, i) => {
    const bx = STREAM_LABEL_W + i * barW;
    const hf = m.finished * scale;
    const hx = m.failed * scale;
    const g = svg("g", { class: "minute", "data-minute": m.minute, "data-finished": m.finished, "data-failed": m.failed },
      svg("title", {}, `${clock(m.minute).slice(0, 5)}: ${m.finished} finished, ${m.failed} failed`));
    if (hf) g.append(svg("rect", { class: "finished", x: bx + 0.5, y: height - bottom - hf, width: Math.max(barW - 1, 1), height: hf }));
    if (hx) g.append(svg("rect", { class: "failed", x: bx + 0.5, y: height - bottom - hf - hx, width: Math.max(barW - 1, 1), height: hx }));
    root.append(g);
    if (i % 15 === 0 || i === perMinute.length - 1) {
      root.append(svg("text", { x: bx, y: height - 4 }, i === perMinute.length - 1 ? "now" : clock(m.minute).slice(0, 5)));
    }
  });
  return root;
}

function renderTasks(data) {
  const box = document.getElementById("tasks");
  if (!data.tasks) {
    box.replaceChildren(el("p", { class: "muted" }, "No task history on this server."));
    return;
  }
  const width = Math.max(box.clientWidth - 10, 400);
  box.replaceChildren(
    el("h3", {}, "Which task ran where"),
    drawTaskStream(data.tasks, data.workers, data.server.now, width),
    el("h3", {}, "Tasks ended per minute"),
    drawPerMinute(data.tasks.per_minute, width),
  );
}

// ---------------------------------------------------------------------------------------------
// Jobs, workers, events

function bar(width, total, parts, label) {
  const root = svg("svg", { class: "bar", width: width, height: 14, role: "img", "aria-label": label });
  root.append(svg("rect", { class: "track", x: 0, y: 0, width: width, height: 14, rx: 3 }));
  let x0 = 0;
  for (const [kind, n] of parts) {
    if (!n || !total) continue;
    const w = (n / total) * width;
    root.append(svg("rect", { class: kind, "data-count": n, x: x0, y: 0, width: w, height: 14 },
      svg("title", {}, `${n} ${kind}`)));
    x0 += w;
  }
  return root;
}

function renderJobs(jobs, failures) {
  const rows = jobs.map((j) => {
    const c = j.counts;
    const done = c.finished + c.failed + c.canceled + c.aborted;
    const pct = j.task_count ? Math.floor((done / j.task_count) * 100) : 100;
    const progress = bar(240, j.task_count, [
      ["finished", c.finished], ["failed", c.failed], ["canceled", c.canceled + c.aborted],
      ["running", c.running],
    ], `${done} of ${j.task_count} tasks done`);
    progress.classList.add("progress");
    const counts = el("td", { class: "num" },
      `${done}/${j.task_count} (${pct}%)` + (c.running ? `, ${c.running} running` : ""));
    if (c.failed) {
      counts.append(", ", el("a", { class: "failed-link", href: `#failures-${j.id}` }, `${c.failed} failed`));
    }
    return el("tr", {
      class: "job", "data-job-id": j.id, "data-state": j.state,
      "data-finished": c.finished, "data-total": j.task_count,
    },
    el("td", { class: "num" }, j.id), el("td", {}, j.name), el("td", {}, j.state),
    el("td", {}, progress), counts);
  });
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "No jobs")));
  document.querySelector("#jobs tbody").replaceChildren(...rows);

  // The failed tasks of each job, newest first, with their errors (the links above lead here).
  const failed = jobs.filter((j) => j.counts.failed);
  const box = document.getElementById("failures");
  box.replaceChildren(...failed.map((j) => {
    const shown = (failures && failures[String(j.id)]) || [];
    const list = shown.map((r) => el("tr", { class: "failure", "data-job-id": j.id, "data-task-id": r.task },
      el("td", { class: "num" }, r.task), el("td", { class: "num" }, r.worker ?? ""),
      el("td", {}, clock(r.ended_at)), el("td", {}, el("pre", {}, r.error ?? ""))));
    const more = j.counts.failed > shown.length
      ? el("p", { class: "muted" }, `${shown.length} of ${j.counts.failed} shown (the newest failures this page saw). All: `,
        el("code", {}, `hq task list ${j.id} --task-status failed -v`))
      : el("p", { class: "muted" }, "Details: ", el("code", {}, `hq task info ${j.id} <task>`));
    return el("div", { id: `failures-${j.id}`, class: "job-failures", "data-job-id": j.id },
      el("h3", {}, `Job ${j.id} (${j.name}): ${plural(j.counts.failed, "failed task")}`),
      shown.length
        ? el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Task"), el("th", {}, "Worker"),
          el("th", {}, "Ended"), el("th", {}, "Error"))), el("tbody", {}, ...list))
        : null,
      more);
  }));
  document.getElementById("failures-section").hidden = !failed.length;
}

function workerRow(w) {
  return el("tr", { class: "worker", "data-worker-id": w.id, "data-state": w.state },
    el("td", { class: "num" }, w.id), el("td", {}, w.hostname), el("td", {}, w.state.replace(/_/g, " ")),
    el("td", {}, w.allocation ?? ""),
    el("td", {},
      bar(120, w.cpus, [["load", w.cpus_assigned]], `${w.cpus_assigned} of ${w.cpus} cpus assigned`),
      el("span", { class: "muted" }, ` ${w.cpus_assigned}/${w.cpus} cpus`)),
    el("td", { class: "num" }, `${w.running_tasks} running, ${w.tasks} assigned`));
}

function renderWorkers(workers) {
  // Connected workers always; ended ones folded into one row that unfolds them.
  const live = workers.filter((w) => w.ended_at === null);
  const ended = workers.filter((w) => w.ended_at !== null);
  const rows = live.map(workerRow);
  if (ended.length) {
    const toggle = el("button", { type: "button", class: "link", "aria-expanded": openState.endedWorkers },
      `${plural(ended.length, "ended worker")} (${openState.endedWorkers ? "hide" : "show"})`);
    toggle.addEventListener("click", () => {
      openState.endedWorkers = !openState.endedWorkers;
      renderWorkers(workers);
    });
    rows.push(el("tr", { class: "ended-workers", "data-count": ended.length },
      el("td", { colspan: 6 }, toggle)));
    if (openState.endedWorkers) rows.push(...ended.map(workerRow));
  }
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No workers")));
  document.querySelector("#workers tbody").replaceChildren(...rows);
}

function renderEvents(events) {
  const rows = events.map((e) => el("tr", { class: "event", "data-event": e.event },
    el("td", {}, clock(e.time)), el("td", { class: "num" }, e.queue_id), el("td", {}, e.event),
    el("td", {}, e.allocation_id ?? ""), el("td", {}, e.message)));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "No events")));
  document.querySelector("#events tbody").replaceChildren(...rows);
}

function renderSummary(data) {
  const t = data.totals.tasks;
  const stat = (label, value) => el("div", { class: "stat" },
    el("div", { class: "value" }, value), el("div", { class: "label" }, label));
  document.getElementById("summary").replaceChildren(
    stat("jobs", data.totals.jobs),
    stat("tasks waiting", t.waiting),
    stat("tasks running", t.running),
    stat("tasks finished", t.finished),
    stat("tasks failed", t.failed),
    stat("workers", data.totals.workers),
    stat("queues", data.queues.filter((q) => !q.removed).length),
  );
}

function render(data) {
  const s = data.server;
  document.getElementById("server-info").textContent =
    `server ${s.uid} · version ${s.version} · up ${duration(s.now - s.started_at)}`;
  document.getElementById("updated").textContent = `updated ${clock(s.now)}`;
  renderSummary(data);
  renderQueues(data.queues, s.now);
  renderJobs(data.jobs, data.tasks && data.tasks.failures);
  renderWorkers(data.workers);
  renderTasks(data);
  renderEvents(data.events);
  document.body.dataset.loaded = "true";
}

async function refresh() {
  const error = document.getElementById("error");
  try {
    const response = await fetch("/api/status", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    render(await response.json());
    error.hidden = true;
  } catch (e) {
    error.textContent = `Cannot reach the server (${e.message}); retrying`;
    error.hidden = false;
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
