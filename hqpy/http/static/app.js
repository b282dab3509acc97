// The hqpy status page: polls /api/status and draws queues (SVG timelines), jobs, workers and
// events. Plain DOM and SVG, no framework and no build step; every server value goes in through
// textContent or attributes, never as HTML.
"use strict";

const REFRESH_MS = 2000;
const SVG_NS = "http://www.w3.org/2000/svg";
const TIMELINE_MIN_SPAN = 60; // seconds shown at least
const TIMELINE_MAX_SPAN = 6 * 3600; // older parts of bars are clipped
const ROW_H = 18;
const LABEL_W = 120;
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
// Queues and their allocations

function drawTimeline(queue, now, width) {
  const allocs = queue.allocations;
  const height = AXIS_H + Math.max(allocs.length, 1) * ROW_H + 4;
  let t0 = now - TIMELINE_MIN_SPAN;
  for (const a of allocs) t0 = Math.min(t0, a.queued_at);
  t0 = Math.max(t0, now - TIMELINE_MAX_SPAN);
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
  for (let i = 0; i <= 4; i++) {
    const t = t0 + (span * i) / 4;
    const gx = x(t);
    root.append(
      svg("line", { class: "grid", x1: gx, x2: gx, y1: AXIS_H - 4, y2: height }),
      svg("text", { x: gx, y: 12, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" },
        i === 4 ? "now" : clock(t)),
    );
  }
  if (!allocs.length) {
    root.append(svg("text", { x: LABEL_W + 4, y: AXIS_H + 12 }, "no allocations yet"));
  }
  allocs.forEach((a, row) => {
    const y = AXIS_H + row * ROW_H;
    const g = svg("g", { class: "alloc", "data-allocation-id": a.id, "data-state": a.state });
    g.append(svg("text", { class: "alloc-label", x: 0, y: y + 12 }, a.id));
    const end = a.ended_at ?? now;
    const started = a.started_at;
    const info =
      `${a.id}: ${a.state}, ${a.workers}/${a.worker_count} worker(s) connected\n` +
      `queued ${clock(a.queued_at)}` +
      (started !== null ? `, started ${clock(started)} (waited ${duration(started - a.queued_at)})` : "") +
      (a.ended_at !== null ? `, ended ${clock(a.ended_at)}` : "");
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

function renderQueues(queues, now) {
  const box = document.getElementById("queues");
  if (!queues.length) {
    box.replaceChildren(el("p", { class: "muted" }, "No allocation queues. Add one with ",
      el("code", {}, "hq alloc add"), "."));
    return;
  }
  const width = Math.max(box.clientWidth - 30, 400);
  box.replaceChildren(...queues.map((q) => {
    const c = q.allocation_counts;
    const title = el("h3", {},
      `Queue ${q.id}${q.name ? " (" + q.name + ")" : ""} · ${q.manager} · `,
      el("span", { class: q.state === "paused" ? "paused" : "" }, q.state),
      el("span", { class: "muted" },
        ` · backlog ${q.backlog}, ${q.workers_per_alloc} worker(s) per allocation` +
        `, time limit ${duration(q.time_limit)}` +
        ` · ${c.queued} queued, ${c.running} running, ${c.finished} finished, ${c.failed} failed`));
    const parts = [title];
    if (q.pause_reason) parts.push(el("p", { class: "error" }, q.pause_reason));
    parts.push(drawTimeline(q, now, width));
    return el("div", { class: "queue", "data-queue-id": q.id, "data-state": q.state }, ...parts);
  }));
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

function renderJobs(jobs) {
  const rows = jobs.map((j) => {
    const c = j.counts;
    const done = c.finished + c.failed + c.canceled + c.aborted;
    const pct = j.task_count ? Math.floor((done / j.task_count) * 100) : 100;
    const progress = bar(240, j.task_count, [
      ["finished", c.finished], ["failed", c.failed], ["canceled", c.canceled + c.aborted],
      ["running", c.running],
    ], `${done} of ${j.task_count} tasks done`);
    progress.classList.add("progress");
    return el("tr", {
      class: "job", "data-job-id": j.id, "data-state": j.state,
      "data-finished": c.finished, "data-total": j.task_count,
    },
    el("td", { class: "num" }, j.id), el("td", {}, j.name), el("td", {}, j.state),
    el("td", {}, progress),
    el("td", { class: "num" },
      `${done}/${j.task_count} (${pct}%)` +
      (c.running ? `, ${c.running} running` : "") + (c.failed ? `, ${c.failed} failed` : "")));
  });
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "No jobs")));
  document.querySelector("#jobs tbody").replaceChildren(...rows);
}

function renderWorkers(workers) {
  const rows = workers.map((w) => el("tr", { class: "worker", "data-worker-id": w.id, "data-state": w.state },
    el("td", { class: "num" }, w.id), el("td", {}, w.hostname), el("td", {}, w.state.replace(/_/g, " ")),
    el("td", {}, w.allocation ?? ""),
    el("td", {},
      bar(120, w.cpus, [["load", w.cpus_assigned]], `${w.cpus_assigned} of ${w.cpus} cpus assigned`),
      el("span", { class: "muted" }, ` ${w.cpus_assigned}/${w.cpus} cpus`)),
    el("td", { class: "num" }, `${w.running_tasks} running, ${w.tasks} assigned`)));
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
    stat("queues", data.queues.length),
  );
}

function render(data) {
  const s = data.server;
  document.getElementById("server-info").textContent =
    `server ${s.uid} · version ${s.version} · up ${duration(s.now - s.started_at)}`;
  document.getElementById("updated").textContent = `updated ${clock(s.now)}`;
  renderSummary(data);
  renderQueues(data.queues, s.now);
  renderJobs(data.jobs);
  renderWorkers(data.workers);
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
