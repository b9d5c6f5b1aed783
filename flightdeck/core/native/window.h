/* Window: the ring of generations, bounded by bytes and age; freeze, status.
 * Part of the _native translation unit: included once, in order, by core/_native.c
 * (one unit keeps the hot helpers inlined across parts). */
#ifndef FD_NATIVE_WINDOW_H
#define FD_NATIVE_WINDOW_H

/* ------------------------------------------------------------------------------------ */
/* Window                                                                                */

typedef struct {
    PyObject_HEAD
    PyObject *dict; /* instance attributes (live_tasks, live_requests, ...) */
    PyObject *weakreflist;
    int64_t window_ns, max_bytes, gen_ns;
    Py_ssize_t gen_cap;
    Py_ssize_t ngen;  /* generations held at most, the open one included */
    PyObject *clock;  /* a Python callable, or NULL: the native clock */
    Segment *cur;     /* the open generation, or NULL (opened by the next event) */
    PyObject *sealed; /* list of Segment, oldest first */
    Py_ssize_t sealed_bytes;
    Py_ssize_t sealed_events;
    ObjTab st_tasks; /* status: tid + 2 -> TASK_CREATE (the live tasks; no Python dict: one
                       * insert and one removal a task, by address, no int objects) */
    ObjTab st_reqs;  /* status: rid + 2 -> REQ_START (the requests in flight), the same way */
    Py_ssize_t st_limit;
    Py_ssize_t st_req_bytes; /* the requests' entries by req_status_bytes */
    long long recorded, evicted, dropped, overflows, seal_errors, sealed_n, errors;
    long long status_truncated;
    int64_t opened; /* generations opened: the serial of the newest (Segment.serial) */
    int64_t last_time;
    int has_last;
    int busy;
} Window;

static PyTypeObject Window_Type;

static int64_t
win_now(Window *w)
{
    if (!w->clock) return fd_clock();
    PyObject *r = PyObject_CallNoArgs(w->clock);
    if (!r) {
        PyErr_Clear();
        w->errors++;
        return fd_clock();
    }
    long long v = PyLong_AsLongLong(r);
    Py_DECREF(r);
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        w->errors++;
        return fd_clock();
    }
    return v;
}

static int
Window_traverse(Window *w, visitproc visit, void *arg)
{
    Py_VISIT(w->dict);
    Py_VISIT(w->clock);
    Py_VISIT(w->sealed);
    for (uint32_t j = 0; j < w->st_tasks.cap; j++)
        if (w->st_tasks.slots[j].key > 1) Py_VISIT(w->st_tasks.slots[j].obj);
    for (uint32_t j = 0; j < w->st_reqs.cap; j++)
        if (w->st_reqs.slots[j].key > 1) Py_VISIT(w->st_reqs.slots[j].obj);
    return 0;
}

static int
Window_clear_refs(Window *w)
{
    Py_CLEAR(w->dict);
    Py_CLEAR(w->clock);
    Py_CLEAR(w->sealed);
    Py_CLEAR(w->cur);
    objtab_clear(&w->st_tasks);
    objtab_clear(&w->st_reqs);
    return 0;
}

static void
Window_dealloc(Window *w)
{
    PyObject_GC_UnTrack(w);
    if (w->weakreflist) PyObject_ClearWeakRefs((PyObject *)w);
    Window_clear_refs(w);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static PyObject *
Window_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    Window *w = (Window *)type->tp_alloc(type, 0);
    if (!w) return NULL;
    w->sealed = PyList_New(0);
    if (!w->sealed) {
        Py_DECREF(w);
        return NULL;
    }
    return (PyObject *)w;
}

static int
Window_init(Window *w, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"window_ns",   "max_bytes", "segment_events", "segment_ns", "clock",
                             "generations", NULL};
    long long window_ns, max_bytes, segment_events = 0, segment_ns = 1000000000LL;
    PyObject *clock = Py_None;
    Py_ssize_t ngen = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LL|LLOn:Window", kwlist, &window_ns, &max_bytes,
                                     &segment_events, &segment_ns, &clock, &ngen))
        return -1;
    if (window_ns <= 0 || max_bytes <= 0 || segment_ns <= 0) {
        PyErr_SetString(PyExc_ValueError, "window_ns, max_bytes and segment_ns must be positive");
        return -1;
    }
    (void)segment_events; /* the pure window's knob; generations are bounded by bytes here */
    w->window_ns = window_ns;
    w->max_bytes = max_bytes;
    Py_CLEAR(w->clock);
    if (clock != Py_None) {
        /* time.perf_counter_ns is the native clock: call no Python for it */
        PyObject *name = PyObject_GetAttrString(clock, "__name__");
        PyObject *mod = PyObject_GetAttrString(clock, "__module__");
        int same = name && mod && PyUnicode_Check(name) && PyUnicode_Check(mod)
                   && PyUnicode_CompareWithASCIIString(name, "perf_counter_ns") == 0
                   && PyUnicode_CompareWithASCIIString(mod, "time") == 0;
        PyErr_Clear();
        Py_XDECREF(name);
        Py_XDECREF(mod);
        if (!same) {
            Py_INCREF(clock);
            w->clock = clock;
        }
    }
    /* Status tables get an eighth of the budget (as in the pure window). */
    long long limit = max_bytes / (8 * EST_STATUS_BYTES);
    if (limit > 200000) limit = 200000;
    w->st_limit = (Py_ssize_t)limit;
    long long ring = max_bytes - limit * EST_STATUS_BYTES;
    if (ngen <= 0) {
        ngen = (Py_ssize_t)(ring / (64 << 10));
        if (ngen < 4) ngen = 4;
        if (ngen > 16) ngen = 16;
    }
    w->ngen = ngen;
    w->gen_cap = (Py_ssize_t)(ring / ngen);
    /* Rotate by age too, so that ngen - 1 sealed generations span the whole window. */
    int64_t gen_ns = window_ns / (ngen - 1 > 0 ? ngen - 1 : 1);
    w->gen_ns = gen_ns < segment_ns ? gen_ns : segment_ns;
    return 0;
}

/* Estimated bytes of a str, or of a tuple and what it holds (two levels); 0 otherwise. */
static Py_ssize_t
value_bytes(PyObject *v, int depth)
{
    if (PyUnicode_CheckExact(v)) return STR_COST(v);
    if (!PyTuple_CheckExact(v) || depth >= 2) return 0;
    Py_ssize_t n = 56 + 8 * PyTuple_GET_SIZE(v);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(v); i++)
        n += value_bytes(PyTuple_GET_ITEM(v, i), depth + 1);
    return n;
}

/* What a request in flight holds while its REQ_START is in the status table: a fixed part
 * and its strings (path, query, headers, trace id). Once per request start and end. */
static Py_ssize_t
req_status_bytes(PyObject *ev)
{
    Py_ssize_t n = EST_STATUS_BYTES + EST_REQUEST_BYTES;
    for (Py_ssize_t i = 3; i < PyTuple_GET_SIZE(ev); i++)
        n += value_bytes(PyTuple_GET_ITEM(ev, i), 0);
    return n;
}

/* The key of a task id in the status table: 0 and the key set, or -1 (an id that is not a
 * non-negative int below 2**64 - 2 is not kept). */
static inline int
tid_key(PyObject *tid, uint64_t *key)
{
    if (!PyLong_CheckExact(tid)) return -1;
    unsigned long long v = PyLong_AsUnsignedLongLong(tid);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    if (v >= UINT64_MAX - 2) return -1;
    *key = (uint64_t)v + 2;
    return 0;
}

/* TaskRecord: a TASK_CREATE the hook made, as C values (no tuple, no int objects): encoded
 * straight into the generation and kept as the live task's status; a tuple is made of it only
 * when Python asks (live_tasks, a freeze). Layout "TIVVInV" (checked at import against
 * _kinds.h: the record path is off when it differs). */
typedef struct {
    PyObject_HEAD
    int64_t t, tid, parent; /* parent: 0 none (ids are addresses) */
    PyObject *name, *coro;  /* str */
    PyObject *rid;          /* int or None */
    PyObject *site;         /* (function, file, line) or None */
} TaskRecord;

static PyTypeObject TaskRecord_Type;
static int task_record_layout_ok; /* set at import */

static void
TaskRecord_dealloc(TaskRecord *rec)
{
    Py_XDECREF(rec->name);
    Py_XDECREF(rec->coro);
    Py_XDECREF(rec->rid);
    Py_XDECREF(rec->site);
    PyObject_Free(rec);
}

static PyTypeObject TaskRecord_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flightdeck.core._native.TaskRecord",
    .tp_basicsize = sizeof(TaskRecord),
    .tp_dealloc = (destructor)TaskRecord_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A live task's TASK_CREATE, as the native hook recorded it.",
};

/* New reference, or NULL with an exception. rid must be an int or None, which, with strs and
 * a site tuple, keeps it out of any reference cycle (the type is not tracked by the GC). */
static PyObject *
task_record_new(int64_t t, int64_t tid, int64_t parent, PyObject *name, PyObject *coro,
                PyObject *rid, PyObject *site)
{
    TaskRecord *rec = PyObject_New(TaskRecord, &TaskRecord_Type);
    if (!rec) return NULL;
    rec->t = t;
    rec->tid = tid;
    rec->parent = parent;
    rec->name = Py_NewRef(name);
    rec->coro = Py_NewRef(coro);
    rec->rid = Py_NewRef(rid);
    rec->site = Py_NewRef(site);
    return (PyObject *)rec;
}

/* The event tuple of a status value: a TaskRecord's, or the value itself; new reference. */
static PyObject *
status_event(PyObject *v)
{
    if (!Py_IS_TYPE(v, &TaskRecord_Type)) return Py_NewRef(v);
    TaskRecord *rec = (TaskRecord *)v;
    PyObject *t = PyLong_FromLongLong(rec->t);
    PyObject *tid = t ? PyLong_FromLongLong(rec->tid) : NULL;
    PyObject *parent = !tid               ? NULL
                       : rec->parent == 0 ? Py_NewRef(Py_None)
                                          : PyLong_FromLongLong(rec->parent);
    PyObject *ev = parent ? PyTuple_New(8) : NULL;
    if (!ev) {
        Py_XDECREF(t);
        Py_XDECREF(tid);
        Py_XDECREF(parent);
        return NULL;
    }
    PyObject *items[8] = {Py_NewRef(KIND_OBJ[K_TASK_CREATE]),
                          t,
                          tid,
                          Py_NewRef(rec->name),
                          Py_NewRef(rec->coro),
                          parent,
                          Py_NewRef(rec->rid),
                          Py_NewRef(rec->site)};
    for (int i = 0; i < 8; i++) PyTuple_SET_ITEM(ev, i, items[i]);
    PyObject_GC_UnTrack(ev); /* as the hook's tuple: ints, strs, None, the site */
    return ev;
}

/* TASK_CREATE from a TaskRecord: the bytes enc_event writes for its tuple. */
static int
enc_task_create(Segment *g, const void *arg, int64_t *t_end)
{
    const TaskRecord *rec = (const TaskRecord *)arg;
    Enc e = enc_at(g);
    int r = put_u8(&e, K_TASK_CREATE);
    if (r == 0) r = enc_T(&e, rec->t);
    if (r == 0) r = enc_tid(&e, rec->tid);
    if (r == 0) r = enc_value(&e, rec->name, 1);
    if (r == 0) r = enc_value(&e, rec->coro, 1);
    if (r == 0) r = rec->parent == 0 ? put_u8(&e, 0) : enc_tid(&e, rec->parent);
    if (r == 0) {
        int64_t rid;
        if (rec->rid == Py_None)
            r = put_u8(&e, 0);
        else
            r = exact_i64(rec->rid, &rid) < 0 ? E_BAD : put_varint(&e, zz(rid) + 1);
    }
    if (r == 0) r = enc_value(&e, rec->site, 1);
    if (r < 0) return r;
    enc_commit(g, &e);
    *t_end = e.t_first;
    return 0;
}

/* A task made alive (key: its id + 2, val: its TASK_CREATE, a tuple or a TaskRecord), within
 * the status share: one limit for both tables (win_status). */
static void
win_task_live(Window *w, uint64_t key, PyObject *val)
{
    if (((Py_ssize_t)w->st_tasks.n + (Py_ssize_t)w->st_reqs.n >= w->st_limit
         || (Py_ssize_t)w->st_tasks.n * EST_STATUS_BYTES + w->st_req_bytes
                > w->st_limit * EST_STATUS_BYTES)
        && !objtab_get(&w->st_tasks, key))
        return;
    PyObject *old = NULL;
    if (objtab_put(&w->st_tasks, key, val, &old) < 0) w->errors++;
    Py_XDECREF(old);
}

/* The live tasks: TASK_CREATE in, TASK_DONE out (tuples appended). */
static void
win_task_status(Window *w, int64_t kind, PyObject *ev)
{
    uint64_t key;
    if (tid_key(PyTuple_GET_ITEM(ev, 2), &key) < 0) return;
    if (kind == K_TASK_CREATE)
        win_task_live(w, key, ev);
    else
        Py_XDECREF(objtab_take(&w->st_tasks, key));
}

/* A request started: its REQ_START ``ev`` is its entry in the status table under ``key``
 * (its id + 2) while the table has room. */
static void
win_req_live(Window *w, uint64_t key, PyObject *ev)
{
    PyObject *old = objtab_get(&w->st_reqs, key);
    Py_ssize_t old_cost = old && PyTuple_CheckExact(old) ? req_status_bytes(old) : 0;
    /* One limit for both tables together: the ring was sized around their one share;
     * requests are costed by what they hold against that share in bytes. */
    Py_ssize_t cost = req_status_bytes(ev);
    if ((Py_ssize_t)w->st_tasks.n + (Py_ssize_t)w->st_reqs.n >= w->st_limit
        || (Py_ssize_t)w->st_tasks.n * EST_STATUS_BYTES + w->st_req_bytes - old_cost + cost
               > w->st_limit * EST_STATUS_BYTES) {
        if (old == NULL) return;
    }
    PyObject *replaced = NULL;
    if (objtab_put(&w->st_reqs, key, ev, &replaced) < 0) {
        w->errors++;
        return;
    }
    w->st_req_bytes += cost - old_cost;
    Py_XDECREF(replaced);
}

/* A request ended: its REQ_START leaves the status table under ``key`` (its id + 2). */
static void
win_req_forget(Window *w, uint64_t key)
{
    PyObject *old = objtab_take(&w->st_reqs, key);
    if (old == NULL) return;
    w->st_req_bytes -= PyTuple_CheckExact(old) ? req_status_bytes(old) : 0;
    Py_DECREF(old);
}

/* The status tables follow the events (the GIL orders them). */
static void
win_status(Window *w, int64_t kind, PyObject *ev)
{
    if (PyTuple_GET_SIZE(ev) < 3) return;
    if (kind == K_TASK_CREATE || kind == K_TASK_DONE) {
        win_task_status(w, kind, ev);
        return;
    }
    uint64_t key; /* request ids are ints from 1 (the middleware's) */
    if (tid_key(PyTuple_GET_ITEM(ev, 2), &key) < 0) return;
    if (kind == K_REQ_START) {
        win_req_live(w, key, ev);
        return;
    }
    win_req_forget(w, key);
}

static void
win_evict_oldest(Window *w, int64_t horizon)
{
    Segment *old = (Segment *)PyList_GET_ITEM(w->sealed, 0);
    if (old->t_end < horizon)
        w->evicted += old->count;
    else
        w->dropped += old->count;
    w->sealed_bytes -= seg_bytes(old);
    w->sealed_events -= old->count;
    if (PyList_SetSlice(w->sealed, 0, 1, NULL) < 0) {
        PyErr_Clear();
        w->errors++;
    }
}

static void
win_seal(Window *w)
{
    Segment *g = w->cur;
    if (!g) return;
    w->cur = NULL;
    if (g->count == 0) {
        Py_DECREF(g);
        return;
    }
    seg_seal(g);
    if (PyList_Append(w->sealed, (PyObject *)g) < 0) {
        PyErr_Clear();
        w->errors++;
        w->dropped += g->count;
    } else {
        w->sealed_bytes += seg_bytes(g);
        w->sealed_events += g->count;
        w->sealed_n++;
    }
    Py_DECREF(g);
}

/* Open a generation headed by the status tables; makes room in the ring first. */
static int
win_open(Window *w, int64_t now)
{
    if (w->gen_cap <= 0) return -1;
    while (PyList_GET_SIZE(w->sealed) >= w->ngen - 1 && PyList_GET_SIZE(w->sealed) > 0)
        win_evict_oldest(w, now - w->window_ns);
    Segment *g = seg_new(w->gen_cap, now);
    if (!g) {
        PyErr_Clear();
        return -1;
    }
    /* The status gets at most half a generation, so that a generation always has room for
     * events (else each event would open a new generation). What does not fit is counted. */
    Py_ssize_t cap = g->cap;
    g->cap = cap / 2;
    for (uint32_t j = 0; j < w->st_tasks.cap; j++) {
        PyObject *ev = w->st_tasks.slots[j].key > 1 ? w->st_tasks.slots[j].obj : NULL;
        int64_t t_end;
        if (!ev) continue;
        int r = Py_IS_TYPE(ev, &TaskRecord_Type) ? enc_task_create(g, ev, &t_end)
                : PyTuple_CheckExact(ev)         ? enc_event(g, ev, &t_end)
                                                 : E_BAD;
        if (r < 0) {
            w->status_truncated++;
            if (PyErr_Occurred()) PyErr_Clear();
        }
    }
    for (uint32_t j = 0; j < w->st_reqs.cap; j++) {
        PyObject *ev = w->st_reqs.slots[j].key > 1 ? w->st_reqs.slots[j].obj : NULL;
        int64_t t_end;
        if (ev && (!PyTuple_CheckExact(ev) || enc_event(g, ev, &t_end) < 0)) {
            w->status_truncated++;
            if (PyErr_Occurred()) PyErr_Clear();
        }
    }
    g->cap = cap;
    g->status_len = g->len;
    g->last_t = g->t_base; /* events decode from the base again */
    g->last_tid = 0;
    g->serial = ++w->opened;
    w->cur = g;
    return 0;
}

/* Append one event tuple. Never raises: counts and drops. */
static void
win_append(Window *w, PyObject *ev)
{
    if (w->busy) {
        w->dropped++;
        w->overflows++;
        return;
    }
    if (!PyTuple_CheckExact(ev) || PyTuple_GET_SIZE(ev) < 2) {
        w->seal_errors++;
        w->dropped++;
        return;
    }
    w->busy = 1;
    int64_t t_end = 0;
    int r = -1;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (!w->cur && win_open(w, win_now(w)) < 0) {
            r = E_FULL;
            break;
        }
        r = enc_event(w->cur, ev, &t_end);
        if (r != E_FULL) break;
        if (w->cur->count == 0) break; /* does not fit a whole generation */
        win_seal(w);
    }
    if (PyErr_Occurred()) PyErr_Clear();
    if (r == 0) {
        Segment *g = w->cur;
        g->count++;
        if (t_end > g->t_end) g->t_end = t_end;
        w->recorded++;
        w->last_time = t_end;
        w->has_last = 1;
        int64_t kind = PyLong_CheckExact(PyTuple_GET_ITEM(ev, 0))
                           ? PyLong_AsLongLong(PyTuple_GET_ITEM(ev, 0))
                           : -1;
        if (kind == K_TASK_CREATE || kind == K_TASK_DONE || kind == K_REQ_START
            || kind == K_REQ_END)
            win_status(w, kind, ev);
        if (PyErr_Occurred()) PyErr_Clear();
    } else {
        w->dropped++;
        if (r == E_FULL)
            w->overflows++;
        else
            w->seal_errors++;
    }
    w->busy = 0;
}

static void
win_step(Window *w, int64_t t0, int64_t t1, uint64_t tid, int64_t tq)
{
    if (w->busy) {
        w->dropped++;
        w->overflows++;
        return;
    }
    w->busy = 1;
    int r = -1;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (!w->cur && win_open(w, w->clock ? win_now(w) : t0) < 0) {
            r = E_FULL;
            break;
        }
        r = enc_step(w->cur, t0, t1, tid, tq);
        if (r != E_FULL) break;
        if (w->cur->count == 0) break;
        win_seal(w);
    }
    if (PyErr_Occurred()) PyErr_Clear();
    if (r == 0) {
        Segment *g = w->cur;
        g->count++;
        if (t1 > g->t_end) g->t_end = t1;
        w->recorded++;
        w->last_time = t1;
        w->has_last = 1;
    } else {
        w->dropped++;
        if (r == E_FULL)
            w->overflows++;
        else
            w->seal_errors++;
    }
    w->busy = 0;
}

static PyObject *
Window_append(Window *w, PyObject *ev)
{
    win_append(w, ev);
    Py_RETURN_NONE;
}

/* REQ_END from C values: the record enc_event writes for the tuple of the same fields. */
static int
enc_req_end(Segment *g, const void *arg, int64_t *t_end)
{
    const FdReqEnd *q = (const FdReqEnd *)arg;
    Enc e = enc_at(g);
    int r = put_u8(&e, K_REQ_END);
    if (r == 0) r = enc_T(&e, q->t);
    if (r == 0) r = put_varint(&e, zz(q->rid));
    if (r == 0) r = q->has_status ? put_varint(&e, zz(q->status) + 1) : put_u8(&e, 0);
    if (r == 0) r = enc_R(&e, q->ttfb);
    if (r == 0) r = enc_value(&e, q->route, 1);
    if (r == 0) r = enc_value(&e, q->disconnected, 1);
    if (r == 0) r = enc_value(&e, q->error, 1);
    if (r == 0) r = enc_R(&e, q->body_end);
    if (r == 0) r = q->has_close_code ? put_varint(&e, zz(q->close_code) + 1) : put_u8(&e, 0);
    if (r < 0) return r;
    enc_commit(g, &e);
    *t_end = e.t_first;
    return 0;
}

/* win_append's steps for an event its encoder ``enc`` writes from C values (no tuple): the
 * generation opened or sealed as needed, the counters. Returns 0 (recorded), E_BAD (the
 * encoder declined a value: nothing was written or counted, the caller appends the tuple)
 * or another E_ code (counted as dropped). Never raises. */
typedef int (*enc_fn)(Segment *g, const void *arg, int64_t *t_end);

static int
win_write(Window *w, enc_fn enc, const void *arg)
{
    if (w->busy) {
        w->dropped++;
        w->overflows++;
        return E_FULL;
    }
    w->busy = 1;
    int64_t t_end = 0;
    int r = -1;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (!w->cur && win_open(w, win_now(w)) < 0) {
            r = E_FULL;
            break;
        }
        r = enc(w->cur, arg, &t_end);
        if (r != E_FULL) break;
        if (w->cur->count == 0) break; /* does not fit a whole generation */
        win_seal(w);
    }
    if (PyErr_Occurred()) PyErr_Clear();
    if (r == 0) {
        Segment *g = w->cur;
        g->count++;
        if (t_end > g->t_end) g->t_end = t_end;
        w->recorded++;
        w->last_time = t_end;
        w->has_last = 1;
    } else if (r != E_BAD) {
        w->dropped++;
        if (r == E_FULL)
            w->overflows++;
        else
            w->seal_errors++;
    }
    w->busy = 0;
    return r;
}

/* REQ_START from its tuple, the fields the layout reads as ints taken from ``q``: the record
 * enc_event writes for the tuple. The others are the tuple's own (scope type, method, path,
 * query, client, headers, trace id), each in its value form. */
static int
enc_req_start(Segment *g, const void *arg, int64_t *t_end)
{
    const FdReqStart *q = (const FdReqStart *)arg;
    PyObject *const *it = ((PyTupleObject *)q->ev)->ob_item;
    Enc e = enc_at(g);
    int r = put_u8(&e, K_REQ_START);
    if (r == 0) r = enc_T(&e, q->t);
    if (r == 0) r = put_varint(&e, zz(q->rid));
    for (int i = 3; i <= 8 && r == 0; i++) r = enc_value(&e, it[i], 1);
    if (r == 0) r = q->has_tid ? enc_tid(&e, q->tid) : put_u8(&e, 0);
    if (r == 0) r = enc_value(&e, it[10], 1);
    if (r < 0) return r;
    enc_commit(g, &e);
    *t_end = e.t_first;
    return 0;
}

/* After a request event written from C values: the request's entry in the status table set
 * to ``start`` (its REQ_START), or removed (NULL), as win_status does for the tuple. Nothing
 * may re-enter meanwhile: a release can run a finalizer that emits. */
static void
win_req_change(Window *w, int64_t rid, PyObject *start)
{
    if (rid < 0 || (uint64_t)rid >= UINT64_MAX - 2) return; /* not kept (tid_key) */
    w->busy = 1;
    if (start != NULL)
        win_req_live(w, (uint64_t)rid + 2, start);
    else
        win_req_forget(w, (uint64_t)rid + 2);
    if (PyErr_Occurred()) PyErr_Clear();
    w->busy = 0;
}

/* The capsule's req_start (capi.h). */
static int
capi_req_start(PyObject *win, const FdReqStart *q)
{
    Window *w = (Window *)win;
    if (!PyTuple_CheckExact(q->ev) || PyTuple_GET_SIZE(q->ev) != 11) return 1;
    int r = win_write(w, enc_req_start, q);
    if (r == E_BAD) return 1; /* a field of an unusual type: the tuple's generic form */
    if (r == 0) win_req_change(w, q->rid, q->ev);
    return 0;
}

/* The capsule's req_end (capi.h). */
static int
capi_req_end(PyObject *win, const FdReqEnd *q)
{
    Window *w = (Window *)win;
    int r = win_write(w, enc_req_end, q);
    if (r == E_BAD) return 1; /* a field of an unusual type: the tuple's generic form */
    if (r == 0) win_req_change(w, q->rid, NULL);
    return 0;
}

/* TASK_DONE's fields as C values (layout "TIVVV"). */
typedef struct {
    int64_t t, tid;
    PyObject *state, *error, *name; /* borrowed: str, str or None, str */
} TaskDone;

static int
enc_task_done(Segment *g, const void *arg, int64_t *t_end)
{
    const TaskDone *d = (const TaskDone *)arg;
    Enc e = enc_at(g);
    int r = put_u8(&e, K_TASK_DONE);
    if (r == 0) r = enc_T(&e, d->t);
    if (r == 0) r = enc_tid(&e, d->tid);
    if (r == 0) r = enc_value(&e, d->state, 1);
    if (r == 0) r = enc_value(&e, d->error, 1);
    if (r == 0) r = enc_value(&e, d->name, 1);
    if (r < 0) return r;
    enc_commit(g, &e);
    *t_end = e.t_first;
    return 0;
}

/* TASK_DONE recorded without a tuple, its task leaving the status table. Returns 1 when a
 * value is not in the layout's types (the caller appends the tuple instead), else 0. Never
 * raises. */
static int
win_task_done(Window *w, const TaskDone *d)
{
    int r = win_write(w, enc_task_done, d);
    if (r == E_BAD) return 1;
    /* the task is over whether or not its event found room: it leaves the table */
    if (!w->busy && d->tid >= 0 && (uint64_t)d->tid < UINT64_MAX - 2) {
        PyObject *old = objtab_take(&w->st_tasks, (uint64_t)d->tid + 2);
        if (old) {
            w->busy = 1; /* its release runs no code of ours, but nothing may re-enter */
            Py_DECREF(old);
            w->busy = 0;
        }
    }
    return 0;
}

static void
capi_append(PyObject *win, PyObject *ev)
{
    win_append((Window *)win, ev);
}

static FdCAPI fd_capi = {
    .version = FD_CAPI_VERSION,
    .append_meth = (PyCFunction)Window_append,
    .append = capi_append,
    .req_end = capi_req_end,
    .req_start = capi_req_start,
};

static PyObject *
Window_emit_step(Window *w, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t v[4];
    if (nargs != 4) {
        w->seal_errors++;
        w->dropped++;
        Py_RETURN_NONE;
    }
    for (int i = 0; i < 4; i++) {
        if (exact_i64(args[i], &v[i]) < 0) {
            w->seal_errors++;
            w->dropped++;
            Py_RETURN_NONE;
        }
    }
    win_step(w, v[0], v[1], (uint64_t)v[2], v[3]);
    Py_RETURN_NONE;
}

static PyObject *
Window_maintain(Window *w, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"force_seal", NULL};
    int force = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|p:maintain", kwlist, &force)) return NULL;
    if (w->busy) Py_RETURN_NONE;
    int64_t now = win_now(w);
    w->busy = 1;
    Segment *g = w->cur;
    if (g && g->count && (force || now - g->t_start >= w->gen_ns)) win_seal(w);
    int64_t horizon = now - w->window_ns;
    while (PyList_GET_SIZE(w->sealed) > 0
           && ((Segment *)PyList_GET_ITEM(w->sealed, 0))->t_end < horizon)
        win_evict_oldest(w, horizon);
    w->busy = 0;
    Py_RETURN_NONE;
}

/* (segments, tasks, requests, dropped, t_now): the sealed generations (immutable, shared)
 * and a copy of the open one; the status of the oldest one held. */
/* A new dict of a status table (id -> event), or NULL with an exception. The window is
 * marked busy meanwhile: an allocation may run a finalizer, and what it records is then
 * dropped and counted rather than changing the table under the loop. */
static PyObject *
win_table_dict(Window *w, ObjTab *t)
{
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    int busy = w->busy;
    w->busy = 1;
    for (uint32_t j = 0; j < t->cap; j++) {
        U64Slot *sl = &t->slots[j];
        if (sl->key <= 1) continue;
        PyObject *k = PyLong_FromUnsignedLongLong(sl->key - 2);
        PyObject *v = k ? status_event(sl->obj) : NULL;
        if (!v || PyDict_SetItem(d, k, v) < 0) {
            Py_XDECREF(k);
            Py_XDECREF(v);
            Py_CLEAR(d);
            break;
        }
        Py_DECREF(k);
        Py_DECREF(v);
    }
    w->busy = busy;
    return d;
}

#include "livetasks.h"

static PyObject *
Window_freeze_parts(Window *w, PyObject *Py_UNUSED(ignored))
{
    int64_t now = win_now(w);
    PyObject *segs = PyList_GetSlice(w->sealed, 0, PyList_GET_SIZE(w->sealed));
    if (!segs) return NULL;
    if (w->cur && w->cur->count) {
        Segment *c = seg_copy(w->cur);
        if (!c || PyList_Append(segs, (PyObject *)c) < 0) {
            Py_XDECREF(c);
            Py_DECREF(segs);
            return NULL;
        }
        Py_DECREF(c);
    }
    PyObject *status;
    if (PyList_GET_SIZE(segs)) {
        status = Segment_status((Segment *)PyList_GET_ITEM(segs, 0), NULL);
    } else {
        status =
            Py_BuildValue("(NN)", win_table_dict(w, &w->st_tasks), win_table_dict(w, &w->st_reqs));
    }
    if (!status) {
        Py_DECREF(segs);
        return NULL;
    }
    PyObject *out = Py_BuildValue("(NOOLL)", segs, PyTuple_GET_ITEM(status, 0),
                                  PyTuple_GET_ITEM(status, 1), w->dropped, (long long)now);
    Py_DECREF(status);
    return out;
}

/* _file_delta(serial, rec_len, nstrs): what the window file lacks, given that it holds
 * generation `serial` up to rec_len record bytes and nstrs strings, and every older one
 * whole: (the oldest generation's serial, [seg_delta payloads], (serial, rec_len, nstrs) of
 * the file once they are written). None while the window is being written to (a finalizer
 * run mid-append let this thread in): the next call catches up. */
static PyObject *
Window_file_delta(Window *w, PyObject *args)
{
    long long serial;
    Py_ssize_t rec_len, nstrs;
    if (!PyArg_ParseTuple(args, "Lnn:_file_delta", &serial, &rec_len, &nstrs)) return NULL;
    if (w->busy) Py_RETURN_NONE;
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    Py_ssize_t nsealed = PyList_GET_SIZE(w->sealed);
    int64_t oldest = w->opened + 1;
    for (Py_ssize_t i = 0; i <= nsealed; i++) {
        Segment *g = i < nsealed ? (Segment *)PyList_GET_ITEM(w->sealed, i) : w->cur;
        if (!g || g->count == 0) continue;
        if (g->serial < oldest) oldest = g->serial;
        if (g->serial < serial) continue;
        Py_ssize_t str_from = 0, rec_from = 0;
        if (g->serial == serial && nstrs <= g->nstrs && rec_len <= g->len) {
            if (nstrs == g->nstrs && rec_len == g->len) continue;
            str_from = nstrs;
            rec_from = rec_len;
        }
        PyObject *d = seg_delta(g, str_from, rec_from);
        if (!d || PyList_Append(out, d) < 0) {
            Py_XDECREF(d);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(d);
        serial = g->serial;
        rec_len = g->len;
        nstrs = g->nstrs;
    }
    return Py_BuildValue("(LN(Lnn))", (long long)oldest, out, serial, rec_len, nstrs);
}

static void
win_clear(Window *w)
{
    Py_CLEAR(w->cur);
    if (PyList_SetSlice(w->sealed, 0, PyList_GET_SIZE(w->sealed), NULL) < 0) PyErr_Clear();
    w->sealed_bytes = 0;
    w->sealed_events = 0;
    objtab_clear(&w->st_tasks);
    objtab_clear(&w->st_reqs);
    w->st_req_bytes = 0;
    w->has_last = 0;
}

static PyObject *
Window_clear(Window *w, PyObject *Py_UNUSED(ignored))
{
    win_clear(w);
    if (w->dict) {
        const char *names[] = {"live_tasks", "live_requests"};
        for (int i = 0; i < 2; i++) {
            PyObject *d = PyDict_GetItemString(w->dict, names[i]);
            if (d && PyDict_Check(d)) PyDict_Clear(d);
        }
    }
    Py_RETURN_NONE;
}

static PyObject *
Window_after_fork(Window *w, PyObject *Py_UNUSED(ignored))
{
    /* In a forked child: nothing the parent recorded, counters from zero, not busy. */
    w->busy = 0;
    PyObject *r = Window_clear(w, NULL);
    w->recorded = w->evicted = w->dropped = w->overflows = 0;
    w->seal_errors = w->sealed_n = w->errors = w->status_truncated = 0;
    return r;
}

static PyObject *
Window_last_event_time(Window *w, PyObject *Py_UNUSED(ignored))
{
    if (!w->has_last) Py_RETURN_NONE;
    return PyLong_FromLongLong(w->last_time);
}

static PyObject *
Window_get_nbytes(Window *w, void *c)
{
    Py_ssize_t n = w->sealed_bytes + (w->cur ? seg_bytes(w->cur) : 0)
                   + (Py_ssize_t)w->st_tasks.n * EST_STATUS_BYTES + w->st_req_bytes;
    return PyLong_FromSsize_t(n);
}

static PyObject *
Window_get_live_tasks(Window *w, void *c)
{
    return live_tasks_new(w);
}

static PyObject *
Window_get_events(Window *w, void *c)
{
    return PyLong_FromSsize_t(w->sealed_events + (w->cur ? w->cur->count : 0));
}

static PyObject *
Window_get_segments(Window *w, void *c)
{
    return PyLong_FromSsize_t(PyList_GET_SIZE(w->sealed));
}

static PyObject *
Window_get_open_bytes(Window *w, void *c)
{
    return PyLong_FromSsize_t(w->cur ? w->cur->len - w->cur->status_len : 0);
}

static PyMethodDef Window_methods[] = {
    {"append", (PyCFunction)Window_append, METH_O,
     "Record one event tuple (see core/events.py). Never raises: drops and counts instead."},
    {"emit_step", (PyCFunction)(void (*)(void))Window_emit_step, METH_FASTCALL,
     "emit_step(t0, t1, tid, t_queued): a TASK_STEP without building its tuple."},
    {"maintain", (PyCFunction)(void (*)(void))Window_maintain, METH_VARARGS | METH_KEYWORDS,
     "Seal the open generation when due and evict the ones older than the window."},
    {"_freeze_parts", (PyCFunction)Window_freeze_parts, METH_NOARGS,
     "(segments, tasks, requests, dropped, t_now) for Frozen."},
    {"_file_delta", (PyCFunction)Window_file_delta, METH_VARARGS,
     "(oldest serial, [delta], progress): the generations' growth since progress"
     " (serial, record bytes, strings), for the window file."},
    {"clear", (PyCFunction)Window_clear, METH_NOARGS, "Forget every event."},
    {"after_fork", (PyCFunction)Window_after_fork, METH_NOARGS, "Reset in a forked child."},
    {"last_event_time", (PyCFunction)Window_last_event_time, METH_NOARGS,
     "When the most recent event ended, or None."},
    {NULL}};

static PyMemberDef Window_members[] = {
    {"window_ns", T_LONGLONG, offsetof(Window, window_ns), READONLY, NULL},
    {"max_bytes", T_LONGLONG, offsetof(Window, max_bytes), READONLY, NULL},
    {"generation_bytes", T_PYSSIZET, offsetof(Window, gen_cap), READONLY, NULL},
    {"generations", T_PYSSIZET, offsetof(Window, ngen), READONLY, NULL},
    {"generation_ns", T_LONGLONG, offsetof(Window, gen_ns), READONLY, NULL},
    {"recorded", T_LONGLONG, offsetof(Window, recorded), READONLY, NULL},
    {"evicted", T_LONGLONG, offsetof(Window, evicted), READONLY, NULL},
    {"dropped", T_LONGLONG, offsetof(Window, dropped), READONLY, NULL},
    {"overflows", T_LONGLONG, offsetof(Window, overflows), READONLY, NULL},
    {"seal_errors", T_LONGLONG, offsetof(Window, seal_errors), READONLY, NULL},
    {"sealed", T_LONGLONG, offsetof(Window, sealed_n), READONLY, NULL},
    {"errors", T_LONGLONG, offsetof(Window, errors), READONLY, NULL},
    {"status_truncated", T_LONGLONG, offsetof(Window, status_truncated), READONLY, NULL},
    {"__dictoffset__", T_PYSSIZET, offsetof(Window, dict), READONLY, NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(Window, weakreflist), READONLY, NULL},
    {NULL}};

static PyGetSetDef Window_getset[] = {
    {"nbytes", (getter)Window_get_nbytes, NULL, "accounted bytes held", NULL},
    {"events", (getter)Window_get_events, NULL, "events held", NULL},
    {"live_tasks", (getter)Window_get_live_tasks, NULL,
     "tasks alive now, tid -> TASK_CREATE (the status table; shared with the hook)", NULL},
    {"segments", (getter)Window_get_segments, NULL, "sealed generations held", NULL},
    {"open_bytes", (getter)Window_get_open_bytes, NULL, "record bytes in the open generation",
     NULL},
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL}};

static PyTypeObject Window_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flightdeck.core._native.Window",
    .tp_basicsize = sizeof(Window),
    .tp_dealloc = (destructor)Window_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The native rolling window: encoded generations bounded by bytes and by age.",
    .tp_traverse = (traverseproc)Window_traverse,
    .tp_clear = (inquiry)Window_clear_refs,
    .tp_methods = Window_methods,
    .tp_members = Window_members,
    .tp_getset = Window_getset,
    .tp_dictoffset = offsetof(Window, dict),
    .tp_weaklistoffset = offsetof(Window, weakreflist),
    .tp_init = (initproc)Window_init,
    .tp_new = Window_new,
};

#endif /* FD_NATIVE_WINDOW_H */
