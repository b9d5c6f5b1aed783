// The offline HTML timeline: reads the snapshot from #flightdeck-data and draws it.
// Shipped as package data; flightdeck/export/html.py inlines it into each page.
(function () {
'use strict';
var T_START = performance.now();
var doc = JSON.parse(document.getElementById('flightdeck-data').textContent);
var diagEl = document.getElementById('flightdeck-diagnosis');
var diag = diagEl ? JSON.parse(diagEl.textContent) : {};
var FOLD = diag.fold || {}, FULL = false;
var ROW_H = 20, AXIS_H = 22, LABEL_W = 260, CHAR_W = 6.6;
var C = {
  step: '#4a7bd0', ready: '#f0a030', suspended: '#c9ced6', block: '#d62828', callback: '#a1887f',
  lag: '#e07b00', executor: '#2a9d8f', queued: '#9fd8d0', region: '#9b5de5', log: '#1d2330',
  ok: '#4c9f70', redirect: '#5b8def', warn: '#d9a13b', err: '#ef476f', pending: '#34495e',
  trigger: '#d62828', mark: '#7a8b00', grid: '#e5e7eb', rowAlt: '#fafbfc', label: '#1d2330',
  group: '#eef1f6', gc: '#b5179e', cancel: '#6a040f'
};
// Every colour drawn has a legend entry: [class, colour, words], in legend order. Only the
// classes a snapshot draws are listed.
var CLASSES = [
  ['step', C.step, 'running'], ['ready', C.ready, 'ready (woken, waiting for the loop)'],
  ['suspended', C.suspended, 'suspended'], ['block', C.block, 'loop blocked'],
  ['gc', C.gc, 'GC'], ['callback', C.callback, 'slow callback (sampled)'],
  ['lag', C.lag, 'loop lag'], ['executor', C.executor, 'thread pool job'],
  ['queued', C.queued, 'queued for a thread'], ['region', C.region, 'region'],
  ['cancel', C.cancel, 'cancelled'], ['log', C.log, 'log'], ['mark', C.mark, 'other trigger'],
  ['ok', C.ok, 'request 2xx'], ['redirect', C.redirect, 'request 3xx'],
  ['warn', C.warn, 'request 4xx'], ['err', C.err, 'request 5xx / error'],
  ['pending', C.pending, 'request in flight']
];
var COLOR_OF = {}; CLASSES.forEach(function (c) { COLOR_OF[c[0]] = c[1]; });
// How this page draws each part of a document (snapshot/build.py PARTS): part -> where, and
// the parts it leaves out with the reason. Written as JSON: tests/export/test_kinds_rendered.py
// reads both, fails on a part in neither, and finds each drawn one in a real page.
var PARTS = {
  "requests": "a bar on a requests row",
  "requests[].end": "the bar's end, colour by status or exception; details",
  "requests[].error_stack": "where it raised, in the request's details",
  "tasks": "a row per task, grouped under its request",
  "tasks[].steps": "running slices on the task's row and the event loop row",
  "tasks[].state": "where the task's row ends; state and exception in its details",
  "tasks[].waits": "the await stack in a suspended slice's details",
  "tasks[].awaiting": "the last suspended slice of a pending task; the stack in its details",
  "loop[block]": "a slice on the blocked row; the stack in its details",
  "loop[callback]": "a slice on the slow callbacks row",
  "loop[lag]": "a tick on the lag row",
  "loop[gc]": "a slice on the GC row",
  "loop[step]": "in the details of the task's step it describes",
  "events[region]": "a slice on a regions row",
  "events[log]": "a tick on the logs row",
  "events[executor]": "a slice on its thread's row, the queued time before it",
  "events[cancel]": "a tick on the cancelled task's row",
  "events[trigger]": "a tick on the lag and other triggers row",
  "trigger": "the marker on the time axis"
};
var NOT_DRAWN = {};

function num(v) { return (typeof v === 'number' && isFinite(v)) ? v : null; }
function str(v) { return v === null || v === undefined ? '' : String(v); }
function arr(v) { return Array.isArray(v) ? v.filter(function (x) { return x && typeof x === 'object'; }) : []; }
function obj(v) { return v && typeof v === 'object' && !Array.isArray(v) ? v : {}; }
function fmtDur(s) {
  if (s === null || s === undefined) return '?';
  var a = Math.abs(s);
  if (a < 0.001) return (s * 1e6).toFixed(0) + ' µs';
  if (a < 0.1) return (s * 1e3).toFixed(1) + ' ms';
  if (a < 1) return (s * 1e3).toFixed(0) + ' ms';
  return s.toFixed(2) + ' s';
}
function frameText(f) {
  if (!f || typeof f !== 'object') return str(f);
  var where = str(f.file) || '?';
  if (typeof f.line === 'number' && f.line > 0) where += ':' + f.line;
  return f['function'] ? where + ' in ' + f['function'] : where;
}
// Library frames (stdlib, site-packages) fold into one line, by the paths the snapshot
// recorded (process.paths), as `flightdeck summary` does; the app's own package never folds.
function normDir(p) { return str(p).replace(/\\/g, '/').replace(/\/+$/, '') + '/'; }
var SITE = (FOLD.site || []).map(normDir), STDLIB = FOLD.stdlib ? normDir(FOLD.stdlib) : null;
function isApp(rest) { if (!FOLD.app) return false; var h = rest.split('/')[0]; return h === FOLD.app || h === FOLD.app + '.py'; }
function isLib(f) {
  var file = str(f && f.file).replace(/\\/g, '/');
  if (!file) return false;
  if (file.charAt(0) === '<') return true;
  if (FOLD.known) {
    for (var i = 0; i < SITE.length; i++) if (file.indexOf(SITE[i]) === 0) return !isApp(file.slice(SITE[i].length));
    return STDLIB !== null && file.indexOf(STDLIB) === 0;
  }
  var m = file.match(/\/(site|dist)-packages\/(.*)$/);
  if (m) return !isApp(m[2]);
  return /\/lib\/python3\.[0-9]+\//.test(file);
}
function stackLines(frames) {
  var out = [], run = 0;
  function flush() { if (run) out.push('... ' + run + ' library frame' + (run === 1 ? '' : 's')); run = 0; }
  frames.forEach(function (f) { if (!FULL && isLib(f)) { run++; return; } flush(); out.push(frameText(f)); });
  flush();
  return out;
}
function reqLabel(r) {
  var st = (typeof r.status === 'number') ? String(r.status) : (r.error ? 'ERR' : (num(r.end) === null ? '…' : '-'));
  return (str(r.method) || '?') + ' ' + (str(r.path) || str(r.route) || '?') + ' ' + st;
}

var win = obj(doc.window), trig = obj(doc.trigger);
var requests = arr(doc.requests), tasks = arr(doc.tasks), loopEv = arr(doc.loop), events = arr(doc.events);
var W0 = num(win.start), W1 = num(win.end);
if (W0 === null) {
  W0 = Infinity;
  requests.concat(loopEv, events).forEach(function (e) { var s = num(e.start); if (s !== null && s < W0) W0 = s; });
  if (W0 === Infinity) W0 = 0;
}
if (W1 === null || W1 < W0) W1 = W0;
var SPAN = Math.max(W1 - W0, 1e-3);
function rel(t) { return t - W0; }

// A host capture holds several processes: each gets its own group of rows (its requests,
// event loop, threads, tasks), in the order of doc.processes, every label prefixed by its
// pid. One process: nothing changes.
var PROCS = arr(doc.processes).filter(function (p) { return typeof p.pid === 'number' && !p.error; });
var MULTI = PROCS.length > 1, PROC_RANK = new Map();
PROCS.forEach(function (p, i) { PROC_RANK.set(p.pid, i); });
function pidOf(x) { return !MULTI ? null : PROC_RANK.has(x.pid) ? x.pid : PROCS[0].pid; }
function inProc(pid, text) { return pid === null ? text : 'pid ' + pid + ' · ' + text; }
function procRow(pid, label, kind, group) { var r = new Row(inProc(pid, label), kind, inProc(pid, group)); r.proc = pid; return r; }
function byProc(items, ref) {
  var m = new Map();
  items.forEach(function (it) { var pid = pidOf(ref(it)); if (!m.has(pid)) m.set(pid, []); m.get(pid).push(it); });
  if (!m.size) m.set(MULTI ? PROCS[0].pid : null, []);
  return m;
}

// ---- rows ---------------------------------------------------------------------------
// A row holds layers; a layer holds items sorted by start with a running max of ends,
// so the first visible item is found by binary search even when items nest or overlap.
var rows = [], byKind = {};
function Row(label, kind, group) {
  this.label = label; this.kind = kind; this.group = group || ''; this.layers = [[], []]; this.idx = [];
}
function add(row, layer, it) {
  it.row = row;
  if (row.folded) it.nolabel = true;
  row.layers[layer].push(it);
  (byKind[it.kind] = byKind[it.kind] || []).push(it);
  return it;
}
function packFast(items) {
  // Same, with a heap of busy lanes, for thousands of requests.
  var order = items.slice().sort(function (a, b) { return a.s - b.s; });
  var busy = [], free = [], n = 0, lanes = new Map();
  function push(h, v, less) { h.push(v); var i = h.length - 1; while (i > 0) { var p = (i - 1) >> 1; if (!less(h[i], h[p])) break; var t = h[i]; h[i] = h[p]; h[p] = t; i = p; } }
  function pop(h, less) { var top = h[0], last = h.pop(); if (h.length) { h[0] = last; var i = 0; for (;;) { var l = 2 * i + 1, r = l + 1, m = i; if (l < h.length && less(h[l], h[m])) m = l; if (r < h.length && less(h[r], h[m])) m = r; if (m === i) break; var t = h[i]; h[i] = h[m]; h[m] = t; i = m; } } return top; }
  var byEnd = function (a, b) { return a[0] < b[0]; }, byNum = function (a, b) { return a < b; };
  order.forEach(function (it) {
    while (busy.length && busy[0][0] <= it.s) push(free, pop(busy, byEnd)[1], byNum);
    var lane = free.length ? pop(free, byNum) : n++;
    lanes.set(it, lane); push(busy, [Math.max(it.e, it.s), lane], byEnd);
  });
  return {lanes: lanes, n: n};
}

// Requests.
var reqItems = [], reqById = new Map();
requests.forEach(function (r, i) {
  var s = num(r.start); if (s === null) return;
  var e = num(r.end); var inflight = e === null; if (e === null || e < s) e = W1;
  var st = r.status, cls = inflight ? 'pending' : (r.error || st >= 500) ? 'err' : st >= 400 ? 'warn' : st >= 300 ? 'redirect' : 'ok';
  var it = {kind: 'request', s: rel(s), e: rel(Math.max(e, s)), label: reqLabel(r), color: COLOR_OF[cls], cls: cls, h: 1, ref: r, index: i};
  reqItems.push(it); if (r.id !== undefined && r.id !== null) reqById.set(r.id, it);
});
byProc(reqItems, function (it) { return it.ref; }).forEach(function (items, pid) {
  var rp = packFast(items), reqRows = [];
  for (var l = 0; l < Math.max(rp.n, 1); l++) reqRows.push(procRow(pid, l === 0 ? 'requests' : 'requests (' + (l + 1) + ')', 'requests', 'requests'));
  items.forEach(function (it) { add(reqRows[rp.lanes.get(it)], 0, it); });
  reqRows.forEach(function (r) { rows.push(r); });
});

// Event loop: task steps, blocks, GC pauses and sampled slow callbacks overlap in time (a
// block is a long step; GC runs inside a step), so each has its own row and none covers
// another's label. Rows are added in this order once filled (see loopRows below).
var LOOPS = new Map();
function loopOf(x) {
  var pid = pidOf(x), rs = LOOPS.get(pid);
  if (!rs) {
    rs = {loop: procRow(pid, 'event loop', 'loop', 'event loop'), block: procRow(pid, 'event loop · blocked', 'loop', 'event loop'),
      gc: procRow(pid, 'event loop · GC', 'loop', 'event loop'), cb: procRow(pid, 'event loop · slow callbacks', 'loop', 'event loop'),
      lag: procRow(pid, 'event loop · lag, other triggers', 'loop', 'event loop')};
    rs.loop.always = true;
    LOOPS.set(pid, rs); rows.push(rs.block, rs.gc, rs.loop, rs.cb, rs.lag);
  }
  return rs;
}
PROCS.forEach(function (p) { loopOf(p); });
var loopRow = loopOf({}).loop;
var STEP_NAMES = obj(diag.step_names), OWNERS = obj(diag.owners);
var stepEntries = new Map();
loopEv.forEach(function (ev, i) {
  var s = num(ev.start); if (s === null) return;
  var d = Math.max(0, num(ev.duration) || 0);
  if (ev.kind === 'step') {
    // A long step: drawn as the task's step already; kept for its details.
    stepEntries.set(str(ev.task) + '@' + s, ev); return;
  }
  var LR = loopOf(ev);
  if (ev.kind === 'gc') {
    add(LR.gc, 0, {kind: 'gc', s: rel(s), e: rel(s + d), label: 'GC gen ' + str(ev.generation) + ' · ' + str(ev.collected) + ' collected', color: C.gc, h: 1, ref: ev, index: i});
    return;
  }
  if (ev.kind === 'block') {
    add(LR.block, 0, {kind: 'block', s: rel(s), e: rel(s + d), label: 'blocked ' + fmtDur(d) + (ev.ongoing === true ? ' (ongoing)' : '') + (ev.callback ? ' ' + ev.callback : ''), color: C.block, h: 1, ref: ev, index: i});
  } else if (ev.kind === 'lag') {
    add(LR.lag, 0, {kind: 'lag', s: rel(s), e: rel(s), label: 'lag ' + fmtDur(d), color: C.lag, h: 0.45, ref: ev, index: i, tick: true});
  } else {
    add(LR.cb, 0, {kind: 'callback', s: rel(s), e: rel(s + d), label: str(ev.callback) || str(ev.kind), color: C.callback, h: 1, ref: ev, index: i});
  }
});

// Executor threads, regions, logs.
var threadRows = new Map(), regionItems = [], logRows = new Map(), queuedItems = [];
events.forEach(function (ev, i) {
  var s = num(ev.start); if (s === null) return;
  if (ev.kind === 'executor') {
    var th = str(ev.thread) || 'executor', tk = pidOf(ev) + '\u0000' + th, row = threadRows.get(tk);
    if (!row) { row = procRow(pidOf(ev), 'thread ' + th, 'thread', 'executor threads'); threadRows.set(tk, row); }
    var st = num(ev.started), en = num(ev.end);
    if (st !== null && st > s) queuedItems.push([row, {kind: 'queued', s: rel(s), e: rel(st), label: 'queued', color: C.queued, h: 0.35, ref: ev, index: i}]);
    if (st !== null) {
      if (en === null || en < st) en = Math.max(st, W1);
      add(row, 0, {kind: 'executor', s: rel(st), e: rel(en), label: str(ev.func) || 'job', color: ev.error ? C.err : C.executor, cls: ev.error ? 'err' : 'executor', h: 1, ref: ev, index: i});
    }
  } else if (ev.kind === 'region') {
    regionItems.push({kind: 'region', s: rel(s), e: rel(s + Math.max(0, num(ev.duration) || 0)), label: str(ev.name) || 'region', color: C.region, h: 1, ref: ev, index: i});
  } else if (ev.kind === 'log') {
    var lk = pidOf(ev), logRow = logRows.get(lk);
    if (!logRow) { logRow = procRow(lk, 'logs', 'logs', 'logs'); logRows.set(lk, logRow); }
    add(logRow, 0, {kind: 'log', s: rel(s), e: rel(s), label: str(ev.category) + ': ' + str(ev.message), color: C.log, h: 0.7, ref: ev, index: i, tick: true});
  } else if (ev.kind === 'trigger') {
    add(loopOf(ev).lag, 0, {kind: 'mark', s: rel(s), e: rel(s), label: 'trigger ' + str(ev.trigger_kind), color: C.mark, h: 0.45, ref: ev, index: i, tick: true});
  }
});
// A job's queued time is drawn on the row of the thread that ran it, only where that thread
// was not running another job (which it would cover, label included); the details pane
// gives the whole wait.
queuedItems.forEach(function (q) {
  var row = q[0], it = q[1];
  row.layers[0].forEach(function (job) {
    if (job.kind === 'executor' && job.s < it.e && job.e > it.s) it.s = Math.max(it.s, job.e);
  });
  if (it.e > it.s) add(row, 0, it);
});
threadRows.forEach(function (r) { rows.push(r); });
if (regionItems.length) byProc(regionItems, function (it) { return it.ref; }).forEach(function (items, pid) {
  var gp = packFast(items), regRows = [];
  for (var k = 0; k < gp.n; k++) regRows.push(procRow(pid, k === 0 ? 'regions' : 'regions (' + (k + 1) + ')', 'regions', 'regions'));
  items.forEach(function (it) { add(regRows[gp.lanes.get(it)], 0, it); });
  regRows.forEach(function (r) { rows.push(r); });
});
logRows.forEach(function (r) { rows.push(r); });

// Tasks, grouped under their request (in request start order), background tasks first.
var reqOrder = new Map();
reqItems.slice().sort(function (a, b) { return a.s - b.s; }).forEach(function (it, i) { reqOrder.set(it.ref.id, i); });
var taskIdx = tasks.map(function (t, i) { return i; });
// The trigger request's tasks come first, so they are on screen when the page opens.
var trigReqId = obj(trig.request).id;
function tkey(i) { var t = tasks[i]; var o = (trigReqId !== undefined && trigReqId !== null && t.request === trigReqId) ? -2 : reqOrder.has(t.request) ? reqOrder.get(t.request) : -1; return [o, num(t.created) || 0]; }
taskIdx.sort(function (a, b) { var x = tkey(a), y = tkey(b); return x[0] - y[0] || x[1] - y[1]; });
var taskRow = new Map();
// flightdeck's own tasks (its endpoint's requests) and the server's share a few packed
// lanes: they are not the app's work, and one row each would bury the app's tasks.
function extent(t) {
  var a = num(t.created), b = num(t.done), st = Array.isArray(t.steps) ? t.steps : [];
  st.forEach(function (x) { if (Array.isArray(x) && num(x[0]) !== null) { var e = num(x[0]) + (num(x[1]) || 0); if (a === null || x[0] < a) a = x[0]; if (b === null || e > b) b = e; } });
  if (a === null) a = W0; if (b === null || t.state === 'pending') b = W1;
  return {s: rel(a), e: rel(Math.max(a, b))};
}
var sharedLanes = {};
['flightdeck', 'server'].forEach(function (who) {
  var all = [];
  taskIdx.forEach(function (ti) { var t = tasks[ti]; if (OWNERS[str(t.id)] === who && !reqById.get(t.request)) { var x = extent(t); x.ti = ti; all.push(x); } });
  if (!all.length) return;
  byProc(all, function (x) { return tasks[x.ti]; }).forEach(function (items, pid) {
    var pk = packFast(items), name = who === 'flightdeck' ? "flightdeck's own work" : "the server's tasks", lanes = [];
    for (var l = 0; l < pk.n; l++) lanes.push(procRow(pid, l === 0 ? name : name + ' (' + (l + 1) + ')', 'owner', name));
    items.forEach(function (x) { sharedLanes[x.ti] = lanes[pk.lanes.get(x)]; });
  });
});
// Many tasks of one coroutine in one request (a gather of hundreds) fold into one row,
// drawn without labels: they overlap, and hundreds of rows would bury everything else.
var FOLD_AT = 20, siblings = {};
function sibKey(t) { return pidOf(t) + '\u0000' + str(t.request) + '\u0000' + (str(t.coro) || str(t.name)); }
taskIdx.forEach(function (ti) { var t = tasks[ti]; if (!sharedLanes[ti] && reqById.get(t.request) && t.parent !== null && t.parent !== undefined) { var k = sibKey(t); siblings[k] = (siblings[k] || 0) + 1; } });
var foldRows = {};
var sharedPushed = new Set();
taskIdx.forEach(function (ti) {
  var t = tasks[ti], req = reqById.get(t.request);
  var owner = OWNERS[str(t.id)];
  var group = inProc(pidOf(t), req ? req.label : owner === 'flightdeck' ? "flightdeck's own (its endpoint)" : owner === 'server' ? "the server's tasks" : 'background tasks');
  var row = sharedLanes[ti], fk = sibKey(t), folded = false;
  if (!row && reqById.get(t.request) && t.parent !== null && t.parent !== undefined && siblings[fk] >= FOLD_AT) {
    row = foldRows[fk] || (foldRows[fk] = new Row(siblings[fk] + ' × ' + (str(t.coro) || str(t.name)) + ' (folded)', 'task', group));
    row.proc = pidOf(t);
    folded = true; row.folded = true;
  }
  if (row) { if (!sharedPushed.has(row)) { sharedPushed.add(row); rows.push(row); } }
  else { row = new Row(str(t.id) + ' ' + (str(t.coro) || str(t.name)), 'task', group); row.task = t; row.proc = pidOf(t); rows.push(row); }
  taskRow.set(t.id, row);
  var what = str(t.coro) || str(t.name) || 'task';
  var waits = arr(t.waits).map(function (w) { var s = num(w.start); return s === null ? null : {s: rel(s), e: rel(s + (num(w.duration) || 0)), w: w}; }).filter(Boolean);
  function susp(a, b, extra) {
    var wait = null;
    for (var j = 0; j < waits.length; j++) if (waits[j].s < b && waits[j].e > a) { wait = waits[j].w; break; }
    add(row, 0, {kind: 'suspended', s: a, e: b, label: 'suspended', color: C.suspended, h: 0.3, ref: t, index: ti, wait: wait, extra: extra});
  }
  var prev = num(t.created) !== null ? rel(Math.max(num(t.created), W0)) : null;
  var steps = Array.isArray(t.steps) ? t.steps : [];
  for (var j = 0; j < steps.length; j++) {
    var st = steps[j]; if (!Array.isArray(st)) continue;
    var s = num(st[0]); if (s === null) continue;
    s = rel(s);
    var d = Math.max(0, num(st[1]) || 0), waited = num(st[2]), ready = num(st[3]);
    if (prev === null && waited !== null) prev = Math.max(0, s - (ready || 0) - waited);
    if (prev !== null && prev < s) {
      var woke = Math.min(s, Math.max(prev, ready !== null ? s - ready : s));
      if (woke > prev) susp(prev, woke, {waited: waited});
      if (s > woke) add(row, 0, {kind: 'ready', s: woke, e: s, label: 'ready', color: C.ready, h: 0.6, ref: t, index: ti, step: st});
    }
    // A long step is named by what it ran (the watchdog's sample), not only by its task.
    var ran = STEP_NAMES[str(t.id) + '@' + j], slabel = ran ? ran + ' · ' + what : what;
    var it = {kind: 'step', s: s, e: s + d, label: slabel, run: row.folded ? null : (ran || what), color: C.step, h: 1, ref: t, index: ti, step: st, stepNo: j};
    add(row, 0, it);
    add(loopOf(t).loop, 0, {kind: 'step', s: s, e: s + d, label: slabel, run: ran || what, color: C.step, h: 1, ref: t, index: ti, step: st, stepNo: j});
    prev = prev === null ? s + d : Math.max(prev, s + d);
  }
  var done = num(t.done);
  if (prev !== null) {
    if (done === null && (t.state === 'pending' || !t.state)) { if (rel(W1) > prev) susp(prev, rel(W1), {awaiting: t.awaiting}); }
    else if (done !== null && rel(done) > prev) susp(prev, rel(Math.min(done, W1)), {});
  }
});

// Cancellations delivered to tasks: a tick on the task's row.
events.forEach(function (ev, i) {
  var s = num(ev.start); if (s === null || ev.kind !== 'cancel') return;
  var row = taskRow.get(ev.task); if (!row) return;
  add(row, 1, {kind: 'cancel', s: rel(s), e: rel(s), label: 'cancelled (' + (str(ev.cause) || 'unknown') + ')', color: C.cancel, h: 1, ref: ev, index: i, tick: true});
});

// Each process's rows together, in the order of doc.processes (a stable sort keeps the
// order of the rows within each).
if (MULTI) {
  var rowAt0 = new Map(); rows.forEach(function (r, i) { rowAt0.set(r, i); });
  var rank = function (r) { return PROC_RANK.has(r.proc) ? PROC_RANK.get(r.proc) : 0; };
  rows.sort(function (a, b) { return rank(a) - rank(b) || rowAt0.get(a) - rowAt0.get(b); });
}
// Index every layer: sorted starts and running max of ends.
var nItems = 0;
rows.forEach(function (row) {
  row.layers = row.layers.map(function (items) {
    items.sort(function (a, b) { return a.s - b.s || (b.e - b.s) - (a.e - a.s); });
    var n = items.length, st = new Float64Array(n), mx = new Float64Array(n), m = -Infinity;
    for (var i = 0; i < n; i++) { st[i] = items[i].s; m = Math.max(m, items[i].e); mx[i] = m; }
    nItems += n;
    return {items: items, starts: st, maxEnds: mx};
  });
});
function firstVisible(layer, t) {
  var lo = 0, hi = layer.maxEnds.length;
  while (lo < hi) { var mid = (lo + hi) >> 1; if (layer.maxEnds[mid] < t) lo = mid + 1; else hi = mid; }
  return lo;
}
// Rows with nothing in the view fold away (a window's hundreds of idle tasks would push
// everything else off the screen); the main event-loop row always stays.
var vis = rows;
function hasIn(row, a, b) {
  for (var L = 0; L < row.layers.length; L++) {
    var layer = row.layers[L], i = firstVisible(layer, a);
    if (i < layer.items.length && layer.items[i].s <= b) return true;
  }
  return false;
}
function layout() { vis = rows.filter(function (r) { return r.always || hasIn(r, view.s, view.e); }); }
// The legend: every class this snapshot draws, with its colour.
var usedClasses = {};
rows.forEach(function (row) { row.layers.forEach(function (layer) { layer.items.forEach(function (it) { usedClasses[it.cls || it.kind] = true; }); }); });
var legendEl = document.getElementById('legend');
if (legendEl) {
  legendEl.textContent = '';
  CLASSES.forEach(function (c) {
    if (!usedClasses[c[0]]) return;
    var entry = document.createElement('span'); entry.className = 'entry'; entry.setAttribute('data-class', c[0]);
    var sw = document.createElement('span'); sw.className = 'swatch'; sw.style.background = c[1];
    entry.appendChild(sw); entry.appendChild(document.createTextNode(c[2])); legendEl.appendChild(entry);
  });
}

// ---- view ---------------------------------------------------------------------------
var canvas = document.getElementById('timeline'), ctx = canvas.getContext('2d');
var details = document.getElementById('details'), status = document.getElementById('status');
var axisBoxes = {trigger: null, ticks: []};
var view = {s: 0, e: SPAN, y: 0}, selected = null, cssW = 0, cssH = 0, lastDrawMs = 0, draws = 0;
var trigT = num(trig.time);
if (trigT === null) { var mk = (byKind.mark || []).filter(function (m) { return m.ref.trigger_kind === trig.kind; }); trigT = mk.length ? mk[mk.length - 1].s + W0 : W1; }
var TRIG = rel(trigT);
function trigView() {
  var r = obj(trig.request), s = num(r.start), e = num(r.end);
  var a, b;
  if (s !== null) { a = rel(s); b = Math.max(e !== null ? rel(e) : TRIG, TRIG); }
  else { a = TRIG - Math.min(1, SPAN / 4); b = TRIG + Math.min(0.25, SPAN / 10); }
  var pad = Math.max((b - a) * 0.15, 0.002);
  setView(a - pad, b + pad);
  var rr = reqById.get(r.id);
  if (rr) scrollToRow(rr.row); else view.y = 0;
}
function clampY() {
  var maxY = Math.max(0, vis.length * ROW_H - (cssH - AXIS_H) + ROW_H);
  view.y = Math.min(Math.max(0, view.y), maxY);
}
function setView(s, e) {
  var span = Math.min(Math.max(e - s, 1e-6), SPAN * 1.5);
  var mid = (s + e) / 2;
  s = mid - span / 2; e = mid + span / 2;
  var lo = -SPAN * 0.25, hi = SPAN * 1.25;
  if (s < lo) { e += lo - s; s = lo; }
  if (e > hi) { s -= e - hi; e = hi; }
  view.s = s; view.e = e;
}
function fit() { setView(-SPAN * 0.01, SPAN * 1.01); }
function zoom(f, atX) {
  var tw = cssW - LABEL_W; if (tw <= 0) return;
  var fx = atX === undefined ? 0.5 : Math.min(1, Math.max(0, (atX - LABEL_W) / tw));
  var t = view.s + fx * (view.e - view.s), span = (view.e - view.s) * f;
  setView(t - fx * span, t - fx * span + span);
}
function pan(fraction) { var d = (view.e - view.s) * fraction; setView(view.s + d, view.e + d); }
function X(t) { return LABEL_W + (t - view.s) / (view.e - view.s) * (cssW - LABEL_W); }
function T(x) { return view.s + (x - LABEL_W) / (cssW - LABEL_W) * (view.e - view.s); }
function rowY(i) { return AXIS_H + i * ROW_H - view.y; }
function scrollToRow(row) {
  layout();
  var i = vis.indexOf(row); if (i < 0) return;
  var y = i * ROW_H, h = cssH - AXIS_H;
  if (y < view.y || y + ROW_H > view.y + h) view.y = y - h / 3;
  clampY();
}

function resize() {
  var r = canvas.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
  cssW = Math.max(r.width, LABEL_W + 50); cssH = Math.max(r.height, 100);
  canvas.width = Math.round(cssW * dpr); canvas.height = Math.round(cssH * dpr);
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  clampY();
}
function niceStep(span, px) {
  var raw = span / Math.max(1, px / 110), p = Math.pow(10, Math.floor(Math.log10(raw))), m = raw / p;
  return p * (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10);
}
function fmtT(t, step) {
  if (step >= 1) return t.toFixed(0) + ' s';
  if (step >= 0.001) return (t * 1e3).toFixed(Math.max(0, -Math.floor(Math.log10(step * 1e3)))) + ' ms';
  return (t * 1e3).toFixed(Math.min(6, Math.max(0, -Math.floor(Math.log10(step * 1e3))))) + ' ms';
}

// What the last draw() painted, for tests: its items (the first 20,000) and, uncapped, how
// many items each row painted (a page of many workers paints more than the cap).
var drawn = [], drawnRows = {};
function drawLayer(layer, y, row) {
  var items = layer.items, n = items.length; if (!n) return;
  var i = firstVisible(layer, view.s), lastPx = -1, lastColor = '', tw = cssW;
  // Steps on the loop's row are labelled by runs: consecutive steps that ran the same
  // thing (a loop of CPU work between awaits) share one label over the run, so the name
  // stays readable where each slice alone is too narrow for it.
  var run = null, runs = [];
  for (; i < n; i++) {
    var it = items[i]; if (it.s > view.e) break;
    if (it.e < view.s) continue;
    var x0 = X(it.s), x1 = X(it.e), h = (ROW_H - 4) * it.h, yy = y + 2 + (ROW_H - 4 - h) / 2;
    if (it.tick) { x0 -= 1; x1 = x0 + 2; }
    if (x0 < LABEL_W) x0 = LABEL_W;
    if (x1 > tw) x1 = tw;
    var w = x1 - x0;
    if (it.run) {
      // Slivers of other work (a few px) between two slices of the run do not end it.
      if (run && run.name === it.run && x0 - run.x1 < 12) { run.x1 = Math.max(run.x1, x0 + Math.max(w, 1)); run.n++; }
      else if (!(run && w < 3 && x0 - run.x1 < 12)) { if (run) runs.push(run); run = {name: it.run, x0: x0, x1: x0 + Math.max(w, 1), n: 1, color: it.color, yy: yy, h: h}; }
    }
    if (w < 1) {
      // Sub-pixel items: one rect per pixel column is all the eye can see.
      var px = x0 | 0;
      if (px === lastPx && it.color === lastColor) continue;
      lastPx = px; w = 1;
    }
    if (ctx.fillStyle !== it.color) ctx.fillStyle = it.color;
    lastColor = it.color;
    ctx.fillRect(x0, yy, w, h);
    var box = null;
    if (w > 30 && it.h >= 0.99 && !it.nolabel && !it.run) {
      var nch = Math.floor((w - 6) / CHAR_W);
      if (nch > 1) {
        var lab = it.label.length > nch ? it.label.slice(0, nch - 1) + '…' : it.label;
        ctx.fillStyle = '#fff'; ctx.fillText(lab, x0 + 3, y + ROW_H / 2 + 1); ctx.fillStyle = it.color;
        box = {text: lab, x0: x0 + 3, x1: x0 + 3 + ctx.measureText(lab).width};
      }
    }
    drawnRows[row.label] = (drawnRows[row.label] || 0) + 1;
    if (drawn.length < 20000) drawn.push({row: row.label, kind: it.kind, cls: it.cls || it.kind, color: it.color, tick: !!it.tick, x0: x0, x1: x0 + w, y0: yy, y1: yy + h, label: box});
    if (it === selected) { ctx.save(); ctx.strokeStyle = '#111'; ctx.lineWidth = 2; ctx.strokeRect(x0 - 1, yy - 1, w + 2, h + 2); ctx.restore(); }
  }
  if (run) runs.push(run);
  runs.forEach(function (r) {
    var rw = r.x1 - r.x0, text = r.name + (r.n > 1 ? ' ×' + r.n : ''), nch = Math.floor((rw - 6) / CHAR_W);
    if (rw <= 30 || nch < 2) return;
    var lab = text.length > nch ? text.slice(0, nch - 1) + '…' : text, lw = ctx.measureText(lab).width;
    ctx.fillStyle = r.color; ctx.fillRect(r.x0, r.yy, Math.min(rw, lw + 6), r.h);
    ctx.fillStyle = '#fff'; ctx.fillText(lab, r.x0 + 3, y + ROW_H / 2 + 1);
    drawnRows[row.label] = (drawnRows[row.label] || 0) + 1;
    if (drawn.length < 20000) drawn.push({row: row.label, kind: 'step', cls: 'step', color: r.color, tick: false, x0: r.x0, x1: r.x0 + Math.min(rw, lw + 6), y0: r.yy, y1: r.yy + r.h, label: {text: lab, x0: r.x0 + 3, x1: r.x0 + 3 + lw}, run: r.n});
  });
}
function draw() {
  var t0 = performance.now();
  ctx.clearRect(0, 0, cssW, cssH);
  ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, cssW, cssH);
  ctx.font = '11px ui-monospace, Menlo, Consolas, "DejaVu Sans Mono", monospace';
  ctx.textBaseline = 'middle';
  layout(); clampY(); drawn = []; drawnRows = {};
  var rows = vis;
  var first = Math.max(0, Math.floor(view.y / ROW_H)), last = Math.min(rows.length, Math.ceil((view.y + cssH - AXIS_H) / ROW_H) + 1);
  // Grid.
  var step = niceStep(view.e - view.s, cssW - LABEL_W), g0 = Math.ceil(view.s / step) * step;
  ctx.fillStyle = C.grid;
  for (var g = g0; g <= view.e; g += step) ctx.fillRect(Math.round(X(g)), AXIS_H, 1, cssH - AXIS_H);
  // Rows.
  for (var i = first; i < last; i++) {
    var row = rows[i], y = rowY(i);
    if (i % 2) { ctx.fillStyle = C.rowAlt; ctx.fillRect(LABEL_W, y, cssW - LABEL_W, ROW_H); }
    if (i > 0 && rows[i - 1].group !== row.group) { ctx.fillStyle = '#b8bfcc'; ctx.fillRect(0, y, cssW, 1); }
    ctx.save(); ctx.beginPath(); ctx.rect(LABEL_W, y, cssW - LABEL_W, ROW_H); ctx.clip();
    drawLayer(row.layers[0], y, row); drawLayer(row.layers[1], y, row);
    ctx.restore();
  }
  // Labels.
  ctx.fillStyle = C.group; ctx.fillRect(0, AXIS_H, LABEL_W, cssH - AXIS_H);
  for (i = first; i < last; i++) {
    row = rows[i]; y = rowY(i);
    if (y + ROW_H < AXIS_H) continue;
    var lab = row.label, showGroup = row.kind === 'task' && (i === 0 || rows[i - 1].group !== row.group || i === first);
    ctx.fillStyle = row.kind === 'loop' ? '#2f5fb3' : C.label;
    if (row.kind === 'task') lab = (showGroup ? row.group + ' › ' : '   ↳ ') + lab;
    var maxc = Math.floor((LABEL_W - 8) / CHAR_W);
    if (lab.length > maxc) lab = lab.slice(0, maxc - 1) + '…';
    ctx.fillText(lab, 4, y + ROW_H / 2 + 1);
    if (i > 0 && rows[i - 1].group !== row.group) { ctx.fillStyle = '#b8bfcc'; ctx.fillRect(0, y, LABEL_W, 1); }
  }
  ctx.fillStyle = '#b8bfcc'; ctx.fillRect(LABEL_W - 1, AXIS_H, 1, cssH - AXIS_H);
  // Axis.
  ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, cssW, AXIS_H);
  ctx.fillStyle = '#b8bfcc'; ctx.fillRect(0, AXIS_H - 1, cssW, 1);
  // The trigger's label is placed first; axis labels it would touch are left out, so the
  // two never overlap at any zoom (the tick marks stay).
  var tx = X(TRIG), trigBox = null, tl = '▼ ' + str(trig.kind || 'trigger'), tlw = 0;
  if (tx >= LABEL_W && tx <= cssW) {
    ctx.font = 'bold 11px ui-monospace, Menlo, Consolas, monospace';
    tlw = ctx.measureText(tl).width + 8;
    var lx = tx + 8 + tlw > cssW ? tx - 8 - tlw : tx + 8;
    if (lx < LABEL_W) lx = Math.min(LABEL_W, cssW - tlw);
    trigBox = [lx, lx + tlw];
    ctx.font = '11px ui-monospace, Menlo, Consolas, "DejaVu Sans Mono", monospace';
  }
  ctx.fillStyle = '#4b5563';
  var tickBoxes = [];
  for (g = g0; g <= view.e; g += step) {
    var gx = X(g), tt = fmtT(g, step), bx = [gx + 3, gx + 3 + ctx.measureText(tt).width];
    ctx.fillRect(Math.round(gx), AXIS_H - 5, 1, 5);
    if (bx[0] < LABEL_W || (trigBox && bx[0] < trigBox[1] + 2 && bx[1] > trigBox[0] - 2)) continue;
    ctx.fillText(tt, bx[0], 9); tickBoxes.push(bx);
  }
  ctx.fillText('t after window start', 4, 9);
  // Trigger.
  if (trigBox) {
    ctx.fillStyle = C.trigger; ctx.fillRect(Math.round(tx) - 1, 0, 2, cssH);
    ctx.beginPath(); ctx.moveTo(tx - 6, 0); ctx.lineTo(tx + 6, 0); ctx.lineTo(tx, 9); ctx.fill();
    ctx.font = 'bold 11px ui-monospace, Menlo, Consolas, monospace';
    ctx.fillStyle = '#fff'; ctx.fillRect(trigBox[0], 1, tlw, AXIS_H - 3);
    ctx.fillStyle = C.trigger; ctx.fillText(tl, trigBox[0] + 4, 10);
  }
  axisBoxes = {trigger: trigBox, ticks: tickBoxes};
  lastDrawMs = performance.now() - t0; draws++;
  if (window.flightdeck) { window.flightdeck.lastDrawMs = lastDrawMs; window.flightdeck.draws = draws; }
}
var pending = false;
function redraw() { if (!pending) { pending = true; requestAnimationFrame(function () { pending = false; draw(); }); } }

// ---- hit testing and details --------------------------------------------------------
function rowAt(y) { var i = Math.floor((y - AXIS_H + view.y) / ROW_H); return (y >= AXIS_H && i >= 0 && i < vis.length) ? vis[i] : null; }
function hit(x, y) {
  if (x < LABEL_W) return null;
  var row = rowAt(y); if (!row) return null;
  var t = T(x), tol = 3 * (view.e - view.s) / Math.max(1, cssW - LABEL_W), best = null, bestD = Infinity;
  for (var L = row.layers.length - 1; L >= 0; L--) {
    var layer = row.layers[L], i = firstVisible(layer, t - tol);
    for (; i < layer.items.length; i++) {
      var it = layer.items[i]; if (it.s > t + tol) break;
      if (it.e < t - tol) continue;
      var d = (t >= it.s && t <= it.e) ? 0 : Math.min(Math.abs(t - it.s), Math.abs(t - it.e));
      if (d < bestD || (d === bestD && it.e - it.s < best.e - best.s)) { best = it; bestD = d; }
    }
    if (best) return best;  // the upper layer (blocks, marks) wins
  }
  return best;
}
function el(tag, textContent, cls) { var e = document.createElement(tag); if (textContent !== undefined) e.textContent = textContent; if (cls) e.className = cls; return e; }
// Long names (dotted, paths) may break after '.', '/' or ':' (a <wbr>), never mid-word.
function breakable(td, text) {
  text.split(/(?<=[./:])/).forEach(function (part, i) { if (i) td.appendChild(document.createElement('wbr')); td.appendChild(document.createTextNode(part)); });
  return td;
}
function kv(table, k, v) { if (v === null || v === undefined || v === '') return; var tr = el('tr'); tr.appendChild(el('td', k, 'k')); tr.appendChild(breakable(el('td'), typeof v === 'object' ? JSON.stringify(v) : String(v))); table.appendChild(tr); }
function stackPre(title, frames) {
  var fr = arr(frames); if (!fr.length) return null;
  var div = el('div'); div.appendChild(el('div', title, 'muted'));
  var lines = stackLines(fr);
  div.appendChild(el('pre', lines.join('\n'), 'stack'));
  if (FULL || lines.length !== fr.length) {
    var b = el('button', FULL ? 'fold library frames' : 'show library frames', 'full');
    b.onclick = function () { FULL = !FULL; showDetails(selected); };
    div.appendChild(b);
  }
  return div;
}
function at(t) { return '+' + t.toFixed(6) + ' s'; }
function taskInfo(tb, t) {
  kv(tb, 'task', str(t.id) + ' ' + str(t.name)); kv(tb, 'coro', t.coro); kv(tb, 'state', t.state);
  kv(tb, 'error', t.error); kv(tb, 'parent', t.parent);
  var r = reqById.get(t.request); if (r) kv(tb, 'request', r.label);
  if (num(t.created) !== null) kv(tb, 'created', at(rel(t.created)));
  if (num(t.done) !== null) kv(tb, 'done', at(rel(t.done)));
  if (t.site && typeof t.site === 'object') kv(tb, 'created at', frameText(t.site));
}
function showDetails(it) {
  details.textContent = '';
  if (!it) { details.appendChild(el('p', 'Click a slice for details.', 'muted')); return; }
  var r = it.ref, tb = el('table'), extra = [];
  var titles = {request: it.label, block: 'loop blocked ' + fmtDur(it.e - it.s), step: 'task step: ' + it.label,
    ready: 'ready (scheduling delay)', suspended: 'suspended', callback: 'callback ' + it.label, lag: 'loop lag',
    executor: 'executor: ' + it.label, queued: 'executor queue', region: 'region ' + it.label, log: 'log', mark: it.label,
    gc: 'garbage collection ' + fmtDur(it.e - it.s), cancel: it.label};
  details.appendChild(el('h3', titles[it.kind] || it.kind));
  kv(tb, 'kind', it.kind);
  kv(tb, 'start', at(it.s));
  if (!it.tick) kv(tb, 'duration', fmtDur(it.e - it.s));
  if (it.kind === 'request') {
    kv(tb, 'method', r.method); kv(tb, 'path', r.path); kv(tb, 'query', r.query); kv(tb, 'route', r.route);
    kv(tb, 'status', r.status === null || r.status === undefined ? (num(r.end) === null ? 'in flight' : 'none') : r.status);
    if (num(r.ttfb) !== null) kv(tb, 'ttfb', fmtDur(r.ttfb));
    kv(tb, 'client', r.client); kv(tb, 'disconnected', r.disconnected ? 'yes' : null);
    kv(tb, 'trace id', r.trace_id);
    kv(tb, 'exception', r.error); kv(tb, 'protocol', r.kind); kv(tb, 'id', r.id);
    extra.push(stackPre('raised at (innermost last)', r.error_stack));
    if (r.headers && typeof r.headers === 'object' && Object.keys(r.headers).length) kv(tb, 'headers', r.headers);
    if (Array.isArray(r.tasks)) kv(tb, 'tasks', r.tasks.join(' '));
    var bd = obj(diag.breakdowns)[str(r.id)];
    if (bd) {
      var box = el('div'); box.appendChild(el('div', 'where its time went', 'muted'));
      box.appendChild(el('pre', str(bd.sentence) + '\n\n' + (bd.lines || []).join('\n'), 'breakdown'));
      extra.push(box);
    } else extra.push(el('div', 'time breakdown: only for the trigger request and the slowest ones', 'muted'));
  } else if (it.kind === 'gc') {
    kv(tb, 'generation', r.generation); kv(tb, 'collected', r.collected);
  } else if (it.kind === 'cancel') {
    kv(tb, 'cause', r.cause); kv(tb, 'task', r.task);
    extra.push(stackPre('cancelled at (innermost last)', r.stack));
  } else if (it.kind === 'block' || it.kind === 'callback' || it.kind === 'lag') {
    kv(tb, 'callback', r.callback);
    if (it.kind === 'lag') kv(tb, 'late by', fmtDur(num(r.duration)));
    extra.push(stackPre('stack while blocked (innermost last)', r.stack));
  } else if (it.kind === 'step' || it.kind === 'ready' || it.kind === 'suspended') {
    if (it.step) { kv(tb, 'waited before', fmtDur(num(it.step[2]))); kv(tb, 'ready (sched. delay)', num(it.step[3]) === null ? 'not measured' : fmtDur(num(it.step[3]))); }
    taskInfo(tb, r);
    if (it.wait) extra.push(stackPre('suspended at (innermost last)', it.wait.stack));
    if (it.kind === 'step' && it.step) {
      var se = stepEntries.get(str(r.id) + '@' + num(it.step[0]));
      if (se) extra.push(stackPre('where it stood when this long step ended (innermost last)', se.stack));
    }
    if (it.extra && it.extra.awaiting) extra.push(stackPre('awaiting at snapshot time (innermost last)', it.extra.awaiting));
  } else if (it.kind === 'executor' || it.kind === 'queued') {
    kv(tb, 'func', r.func); kv(tb, 'thread', r.thread);
    if (num(r.started) !== null && num(r.start) !== null) kv(tb, 'queued', fmtDur(r.started - r.start));
    if (num(r.end) === null) kv(tb, 'state', 'still running');
    kv(tb, 'exception', r.error); kv(tb, 'task', r.task);
    var rq = reqById.get(r.request); if (rq) kv(tb, 'request', rq.label);
  } else if (it.kind === 'region' || it.kind === 'log') {
    kv(tb, 'name', r.name); kv(tb, 'category', r.category); kv(tb, 'message', r.message); kv(tb, 'task', r.task);
  } else if (it.kind === 'mark') {
    kv(tb, 'trigger', r.trigger_kind); kv(tb, 'reason', r.reason);
  }
  details.appendChild(tb);
  extra.forEach(function (e) { if (e) details.appendChild(e); });
}
function select(it) { selected = it || null; showDetails(selected); draw(); return selected ? details.textContent : null; }

// ---- input --------------------------------------------------------------------------
var drag = null;
canvas.addEventListener('mousedown', function (e) {
  var r = canvas.getBoundingClientRect();
  drag = {x: e.clientX, y: e.clientY, s: view.s, e: view.e, vy: view.y, moved: false, ox: e.clientX - r.left, oy: e.clientY - r.top};
  canvas.focus(); e.preventDefault();
});
window.addEventListener('mousemove', function (e) {
  var r = canvas.getBoundingClientRect();
  if (drag) {
    var dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (!drag.moved && Math.abs(dx) + Math.abs(dy) > 3) { drag.moved = true; canvas.classList.add('dragging'); }
    if (drag.moved) {
      var dt = dx / Math.max(1, cssW - LABEL_W) * (drag.e - drag.s);
      setView(drag.s - dt, drag.e - dt); view.y = drag.vy - dy; clampY(); redraw();
    }
    return;
  }
  var x = e.clientX - r.left, y = e.clientY - r.top;
  if (x < 0 || y < 0 || x > r.width || y > r.height) return;
  var it = hit(x, y), t = T(x);
  status.textContent = (x >= LABEL_W ? at(t) : '') + (it ? '  ' + it.kind + ': ' + it.label + (it.tick ? '' : ' (' + fmtDur(it.e - it.s) + ')') : '');
});
window.addEventListener('mouseup', function (e) {
  if (!drag) return;
  var d = drag; drag = null; canvas.classList.remove('dragging');
  if (!d.moved) select(hit(d.ox, d.oy));
});
canvas.addEventListener('wheel', function (e) {
  e.preventDefault();
  var r = canvas.getBoundingClientRect();
  if (e.shiftKey) { view.y += e.deltaY || e.deltaX; clampY(); }
  else if (Math.abs(e.deltaX) > Math.abs(e.deltaY)) pan(e.deltaX / Math.max(1, cssW - LABEL_W));
  else zoom(Math.exp(e.deltaY * (e.deltaMode === 1 ? 0.05 : 0.0015)), e.clientX - r.left);
  redraw();
}, {passive: false});
window.addEventListener('keydown', function (e) {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  var k = e.key, h = cssH - AXIS_H;
  if (k === '+' || k === '=') zoom(0.6);
  else if (k === '-' || k === '_') zoom(1 / 0.6);
  else if (k === 'ArrowLeft') pan(-0.2);
  else if (k === 'ArrowRight') pan(0.2);
  else if (k === 'ArrowUp') view.y -= ROW_H * 3;
  else if (k === 'ArrowDown') view.y += ROW_H * 3;
  else if (k === 'PageUp') view.y -= h * 0.9;
  else if (k === 'PageDown') view.y += h * 0.9;
  else if (k === '0' || k === 'f' || k === 'F') { fit(); view.y = 0; }
  else if (k === 't' || k === 'T') trigView();
  else if (k === 'Escape') { select(null); return; }
  else return;
  e.preventDefault(); clampY(); redraw();
});
document.getElementById('btn-fit').onclick = function () { fit(); view.y = 0; redraw(); };
document.getElementById('btn-trigger').onclick = function () { trigView(); redraw(); };
document.getElementById('btn-in').onclick = function () { zoom(0.6); redraw(); };
document.getElementById('btn-out').onclick = function () { zoom(1 / 0.6); redraw(); };
window.addEventListener('resize', function () { resize(); redraw(); });

// ---- test and automation hooks ------------------------------------------------------
function locate(kind, index) {
  // Bring an item into view (zooming so it is at least a few pixels wide) and return
  // the canvas coordinates of its middle.
  var it = (byKind[kind] || [])[index || 0]; if (!it) return null;
  var d = Math.max(it.e - it.s, 1e-6), span = view.e - view.s;
  if (it.s < view.s || it.e > view.e || d / span * (cssW - LABEL_W) < 8) setView(it.s - d, it.e + d);
  scrollToRow(it.row); draw();
  var i = vis.indexOf(it.row);
  var xs = Math.max(X(it.s), LABEL_W), xe = Math.min(X(it.e), cssW);
  return {x: (xs + xe) / 2, y: rowY(i) + ROW_H / 2};
}
window.flightdeck = {
  doc: doc,
  rows: rows.map(function (r) { return r.label; }),
  rowKinds: rows.map(function (r) { return r.kind; }),
  processes: PROCS.map(function (p) { return p.pid; }),
  rowProcesses: rows.map(function (r) { return r.proc === undefined ? null : r.proc; }),
  itemCount: nItems,
  trigger: TRIG,
  kinds: function () { var o = {}; Object.keys(byKind).forEach(function (k) { o[k] = byKind[k].length; }); return o; },
  view: function () { return {start: view.s, end: view.e, y: view.y, span: SPAN}; },
  setView: function (s, e) { setView(s, e); draw(); },
  fit: function () { fit(); view.y = 0; draw(); },
  zoom: function (f) { zoom(f); draw(); },
  locate: locate,
  selectAt: function (x, y) { return select(hit(x, y)); },
  select: function (kind, index) { var it = (byKind[kind] || [])[index || 0]; return it ? select(it) : null; },
  selected: function () { return selected ? {kind: selected.kind, label: selected.label, start: selected.s, end: selected.e} : null; },
  draw: draw,
  axisBoxes: function () { return axisBoxes; },
  visibleRows: function () { return vis.map(function (r) { return r.label; }); },
  drawn: function () { return drawn; },
  drawnRows: function () { return drawnRows; },
  legend: function () { var o = {}; CLASSES.forEach(function (c) { if (usedClasses[c[0]]) o[c[0]] = c[1]; }); return o; },
  full: function (on) { FULL = !!on; showDetails(selected); return FULL; },
  parts: PARTS,
  notDrawn: NOT_DRAWN,
  ready: false
};
resize();
trigView();
draw();
window.flightdeck.firstDrawMs = performance.now() - T_START;
window.flightdeck.ready = true;
})();
