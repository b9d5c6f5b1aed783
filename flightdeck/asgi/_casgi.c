/* flightdeck.asgi._casgi: the FlightDeck request path in C.
 *
 * Middleware is the base class of flightdeck.asgi.middleware.FlightDeck. Its __call__ takes
 * the common case natively: an HTTP or WebSocket scope, recording started, not the debug
 * endpoint. It emits REQ_START, wraps send (a native callable returning the server's own
 * awaitable) and receive (a native awaitable proxy), calls the app and returns a native
 * awaitable (Call) around the app's awaitable that emits REQ_END when it finishes and hands
 * the request to the Python capture engine only when an integer pre-check says a trigger
 * may fire. Anything else goes to the pure-Python path (FlightDeck._py_call).
 *
 * Never harm the app: flightdeck's own failures are counted (Middleware.errors) and
 * dropped; the app's and the server's exceptions and results pass through untouched, and a
 * message that is not exactly a dict is forwarded without being looked at.
 *
 * One file because its types share static state (interned strings, the type objects) and the
 * request path calls across them with static inline helpers; split, they would need a private
 * header and exported symbols for nothing. In order: RequestState, Middleware and its setup,
 * trace ids, REQ_START, Send, the awaitable proxy shared by Call and ReceiveAwaitable, Call
 * (REQ_END and the trigger pre-check), Receive, Middleware.__call__, AsyncCall
 * (FlightDeck.__call__), the module.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <time.h>
#include <string.h>
#include <limits.h>

#if PY_VERSION_HEX < 0x030C0000
static inline PyObject *
PyErr_GetRaisedException_compat(void)
{
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    if (t == NULL) return NULL;
    PyErr_NormalizeException(&t, &v, &tb);
    if (tb != NULL && v != NULL) PyException_SetTraceback(v, tb);
    Py_XDECREF(t);
    Py_XDECREF(tb);
    return v;
}
static inline void
PyErr_SetRaisedException_compat(PyObject *e)
{
    if (e == NULL) {
        PyErr_Clear();
        return;
    }
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(e)), e, PyException_GetTraceback(e));
}
#else
#define PyErr_GetRaisedException_compat PyErr_GetRaisedException
#define PyErr_SetRaisedException_compat PyErr_SetRaisedException
#endif
#if PY_VERSION_HEX < 0x030D0000
static inline int
PyObject_GetOptionalAttr(PyObject *o, PyObject *name, PyObject **result)
{
    return _PyObject_LookupAttr(o, name, result);
}
#endif

#define MAX_METHOD 32
#define MAX_PATH 2048
#define MAX_HOST 256

/* Event kinds (K_REQ_START, K_REQ_END, K_REQ_ERROR), generated from flightdeck/core/events.py;
 * their layouts: see there. */
#include "../core/_kinds.h"
#include "../core/native/clock.h"
#include "../core/native/capi.h"

/* A free list of one GC type's objects, each untracked and cleared. A request makes a call,
 * a send and a receive object (and one for each receive()); taken from the list they are not
 * counted as new allocations by the cyclic GC, whose young collections are triggered by that
 * count. Counted, with 32 requests in flight they raised uvicorn's young collections per
 * request by 40 % on uvloop (the count, floored at zero, drifts upward by what the requests
 * in flight hold when a collection resets it; benchmarks/bench_gc.py). The objects are still
 * tracked while alive: a cycle through them is collected as before. */
#define FREE_MAX 128
typedef struct {
    PyObject *items[FREE_MAX];
    int n;
} FreeList;

/* An object of ``tp`` (untracked, fields unset), from the list or new; NULL on error. */
static inline void *
free_pop(FreeList *fl, PyTypeObject *tp)
{
    if (fl->n > 0) {
        PyObject *o = fl->items[--fl->n];
        _Py_NewReference(o);
        return o;
    }
    return _PyObject_GC_New(tp);
}

/* Free ``o`` (untracked, cleared): onto the list, or to the allocator when it is full or the
 * object was finalized (the GC remembers that in the object's header: a reused one would
 * never be finalized again). */
static inline void
free_push(FreeList *fl, PyObject *o)
{
    if (fl->n < FREE_MAX && !PyObject_GC_IsFinalized(o))
        fl->items[fl->n++] = o;
    else
        PyObject_GC_Del(o);
}
static FreeList free_send, free_receive, free_recv_await, free_call;

/* The native core's functions (capi.h), once a setup found the core loaded; NULL before. */
static const FdCAPI *capi;
static void find_capi(void);

static PyObject *s_type, *s_http, *s_websocket, *s_flightdeck, *s_path, *s_root_path, *s_method,
    *s_query_string, *s_client, *s_headers, *s_status, *s_more_body, *s_code, *s_route,
    *s_path_format, *s_empty, *s_WS, *s_throw, *s_close, *s_send, *s_emit, *s_m_resp_start,
    *s_m_resp_body, *s_m_ws_resp_start, *s_m_ws_accept, *s_m_ws_close, *s_m_http_disconnect,
    *s_m_ws_disconnect, *s_C_API, *i_kind_start, *i_kind_end, *i_kind_error;

/* The recorder's clock (time.perf_counter_ns()'s), shared with the native core. */
static inline long long
now_ns(void)
{
    return (long long)fd_clock();
}

/* ---------------------------------------------------------------------------------------
 * RequestState: what is noted while a request runs (same fields as capture.RequestState).
 */
typedef struct {
    PyObject_HEAD
    PyObject *status;     /* as the app sent it */
    long long ttfb;       /* ns; 0 until http.response.start / websocket.accept */
    long long body_end;   /* ns; 0 until the last body byte */
    PyObject *close_code; /* WebSocket: first close code sent or received */
    char disconnected;
    char fired;
} State;

/* Not a GC container: it only ever holds ints and None (the setters see to it). */
static void
State_dealloc(State *s)
{
    Py_CLEAR(s->status);
    Py_CLEAR(s->close_code);
    PyObject_Free(s);
}
static inline PyObject *
int_or_none(PyObject *v)
{
    return v != NULL && PyLong_CheckExact(v) ? v : Py_None;
}
static PyObject *
State_get_status(State *s, void *c)
{
    return Py_NewRef(s->status ? s->status : Py_None);
}
static int
State_set_status(State *s, PyObject *v, void *c)
{
    Py_XSETREF(s->status, Py_NewRef(int_or_none(v)));
    return 0;
}
static PyObject *
State_get_close(State *s, void *c)
{
    return Py_NewRef(s->close_code ? s->close_code : Py_None);
}
static int
State_set_close(State *s, PyObject *v, void *c)
{
    Py_XSETREF(s->close_code, Py_NewRef(int_or_none(v)));
    return 0;
}
static PyMemberDef State_members[] = {
    {"ttfb", T_LONGLONG, offsetof(State, ttfb), 0, NULL},
    {"body_end", T_LONGLONG, offsetof(State, body_end), 0, NULL},
    {"disconnected", T_BOOL, offsetof(State, disconnected), 0, NULL},
    {"fired", T_BOOL, offsetof(State, fired), 0, NULL},
    {NULL},
};
static PyGetSetDef State_getset[] = {
    {"status", (getter)State_get_status, (setter)State_set_status, NULL, NULL},
    {"close_code", (getter)State_get_close, (setter)State_set_close, NULL, NULL},
    {NULL},
};
static PyTypeObject StateType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flightdeck.asgi._casgi.RequestState",
    .tp_basicsize = sizeof(State),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)State_dealloc,
    .tp_members = State_members,
    .tp_getset = State_getset,
    .tp_doc = "Per-request state (status, ttfb, disconnected, body_end, fired, close_code).",
};

static State *
state_new(void)
{
    State *s = PyObject_New(State, &StateType);
    if (s == NULL) return NULL;
    s->status = NULL;
    s->close_code = NULL;
    s->ttfb = s->body_end = 0;
    s->disconnected = s->fired = 0;
    return s;
}

/* ---------------------------------------------------------------------------------------
 * Middleware: the base class of FlightDeck.
 */
typedef struct {
    PyObject_HEAD
    PyObject *dict;
    PyObject *weakreflist;
    PyObject *app;
    PyObject *recorder;      /* its emit(tuple), read per event (recorder_emit): it may change */
    PyObject *rec_dict;      /* the recorder's instance __dict__, where emit is looked up first
                              * (a dict lookup instead of getattr), or NULL: getattr */
    PyObject *emit_fn;       /* what rec_dict held as emit when its version was emit_tag */
    uint64_t emit_tag;       /* dict_version(rec_dict) then (0: emit_fn is not reused) */
    PyObject *report;        /* ErrorLog: report(kind, exc), counted and logged once */
    PyObject *inflight;      /* dict rid -> (start, scope, state) */
    PyObject *done;          /* engine.request_done(...) */
    PyObject *py_call;       /* FlightDeck._py_call bound: the pure path */
    PyObject *start_event;   /* FlightDeck._start_event bound: the unusual REQ_START */
    PyObject *query;         /* redactor.query(bytes) -> str */
    PyObject *query_cache;   /* dict raw query bytes -> recorded str, shared with the Python
                              * path (FlightDeck._redacted_query), or NULL: no cache */
    PyObject *trace_id;      /* tracecontext.trace_id_from_headers (unusual headers) */
    PyObject *current_task;  /* asyncio.current_task (C on 3.12+) */
    PyObject *current_tasks; /* 3.11: asyncio.tasks._current_tasks (loop -> task), or NULL */
    PyObject *running_loop;  /* 3.11: asyncio.get_running_loop (C) */
    PyObject *error_stack;   /* frames.error_stack(exc): where the app's exception was raised */
    PyObject *contextvar;    /* instrument.context.current_request, or NULL: not set (nothing
                              * of this recorder reads it: the loop is not instrumented) */
    PyObject *prefix;        /* endpoint path or NULL */
    PyObject *route_obj;     /* the last request's scope["route"], or NULL */
    PyObject *route_text;    /* what route_of recorded for it (a router's routes are made once:
                              * the next request of that route reuses it, with no getattr) */
    long long slow_floor_ns; /* the pre-check, as the triggers state it (capture.py) */
    long long status_floor;
    long long rid;
    long long errors;
    long long requests;
    Py_ssize_t cache_entries; /* the query cache is emptied when it holds this many */
    Py_ssize_t cache_bytes;   /* it keeps queries of at most this many bytes */
    char fast;                /* take the native path (enabled and started) */
    char triggers;            /* any on_request trigger */
    char precheck;            /* every request trigger states its RequestChecks */
    char error_fires;         /* an exception escaping the app can fire one */
    char headers;             /* capture_headers configured: REQ_START from Python */
} Middleware;

static PyTypeObject MiddlewareType, CallType, SendType, ReceiveType, RecvAwaitType, AsyncCallType;

static int
Middleware_traverse(Middleware *m, visitproc visit, void *arg)
{
    Py_VISIT(m->dict);
    Py_VISIT(m->app);
    Py_VISIT(m->recorder);
    Py_VISIT(m->rec_dict);
    Py_VISIT(m->emit_fn);
    Py_VISIT(m->report);
    Py_VISIT(m->inflight);
    Py_VISIT(m->done);
    Py_VISIT(m->py_call);
    Py_VISIT(m->start_event);
    Py_VISIT(m->query);
    Py_VISIT(m->query_cache);
    Py_VISIT(m->trace_id);
    Py_VISIT(m->current_task);
    Py_VISIT(m->current_tasks);
    Py_VISIT(m->running_loop);
    Py_VISIT(m->error_stack);
    Py_VISIT(m->contextvar);
    Py_VISIT(m->prefix);
    Py_VISIT(m->route_obj);
    Py_VISIT(m->route_text);
    return 0;
}
static int
Middleware_clear(Middleware *m)
{
    Py_CLEAR(m->dict);
    Py_CLEAR(m->app);
    Py_CLEAR(m->recorder);
    Py_CLEAR(m->rec_dict);
    Py_CLEAR(m->emit_fn);
    Py_CLEAR(m->report);
    Py_CLEAR(m->inflight);
    Py_CLEAR(m->done);
    Py_CLEAR(m->py_call);
    Py_CLEAR(m->start_event);
    Py_CLEAR(m->query);
    Py_CLEAR(m->query_cache);
    Py_CLEAR(m->trace_id);
    Py_CLEAR(m->current_task);
    Py_CLEAR(m->current_tasks);
    Py_CLEAR(m->running_loop);
    Py_CLEAR(m->error_stack);
    Py_CLEAR(m->contextvar);
    Py_CLEAR(m->prefix);
    Py_CLEAR(m->route_obj);
    Py_CLEAR(m->route_text);
    return 0;
}
static void
Middleware_dealloc(Middleware *m)
{
    PyTypeObject *tp = Py_TYPE(m);
    PyObject_GC_UnTrack(m);
    if (m->weakreflist != NULL) PyObject_ClearWeakRefs((PyObject *)m);
    Middleware_clear(m);
    tp->tp_free((PyObject *)m); /* a heap subclass's type is released by subtype_dealloc */
}

static PyObject *
Middleware_setup(Middleware *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {
        "app",         "recorder",    "report",        "inflight",      "done",
        "py_call",     "start_event", "query",         "trace_id",      "current_task",
        "contextvar",  "prefix",      "slow_floor_ns", "status_floor",  "triggers",
        "precheck",    "error_fires", "headers",       "current_tasks", "running_loop",
        "error_stack", "query_cache", "cache_entries", "cache_bytes",   NULL};
    PyObject *app, *recorder, *report, *inflight, *done, *py_call, *start_event, *query, *trace_id,
        *ct, *cv, *prefix, *tasks = Py_None, *running = Py_None, *error_stack = Py_None;
    PyObject *query_cache = NULL;
    Py_ssize_t cache_entries = 0, cache_bytes = 0;
    long long floor, status_floor;
    int triggers, precheck, error_fires, headers;
    if (!PyArg_ParseTupleAndKeywords(
            args, kw, "OOOO!OOOOOOOOLLpppp|OOOO!nn", kwlist, &app, &recorder, &report, &PyDict_Type,
            &inflight, &done, &py_call, &start_event, &query, &trace_id, &ct, &cv, &prefix, &floor,
            &status_floor, &triggers, &precheck, &error_fires, &headers, &tasks, &running,
            &error_stack, &PyDict_Type, &query_cache, &cache_entries, &cache_bytes))
        return NULL;
    if (prefix != Py_None && !PyUnicode_CheckExact(prefix)) {
        PyErr_SetString(PyExc_TypeError, "prefix must be a str or None");
        return NULL;
    }
    if (cv != Py_None && !PyContextVar_CheckExact(cv)) {
        PyErr_SetString(PyExc_TypeError, "contextvar must be a ContextVar or None");
        return NULL;
    }
    Py_XSETREF(m->app, Py_NewRef(app));
    Py_XSETREF(m->recorder, Py_NewRef(recorder));
    Py_CLEAR(m->rec_dict);
    Py_CLEAR(m->emit_fn);
    {
        /* getattr(recorder, "emit") finds the instance's own attribute first unless its class
         * has a data descriptor of that name: then the instance dict can be read directly */
        PyObject *cls_attr = _PyType_Lookup(Py_TYPE(recorder), s_emit); /* borrowed */
        int data_descr = cls_attr != NULL && Py_TYPE(cls_attr)->tp_descr_set != NULL;
        PyObject *d = !data_descr && Py_TYPE(recorder)->tp_dictoffset != 0
                          ? PyObject_GenericGetDict(recorder, NULL)
                          : NULL;
        if (d != NULL && PyDict_CheckExact(d))
            m->rec_dict = d;
        else
            Py_XDECREF(d);
        PyErr_Clear();
    }
    Py_XSETREF(m->report, Py_NewRef(report));
    Py_XSETREF(m->inflight, Py_NewRef(inflight));
    Py_XSETREF(m->done, Py_NewRef(done));
    Py_XSETREF(m->py_call, Py_NewRef(py_call));
    Py_XSETREF(m->start_event, Py_NewRef(start_event));
    Py_XSETREF(m->query, Py_NewRef(query));
    Py_XSETREF(m->trace_id, Py_NewRef(trace_id));
    Py_XSETREF(m->current_task, Py_NewRef(ct));
    if (tasks != Py_None && (!PyDict_CheckExact(tasks) || running == Py_None)) {
        PyErr_SetString(PyExc_TypeError, "current_tasks must be a dict, with running_loop");
        return NULL;
    }
    Py_XSETREF(m->current_tasks, tasks == Py_None ? NULL : Py_NewRef(tasks));
    Py_XSETREF(m->running_loop, tasks == Py_None ? NULL : Py_NewRef(running));
    Py_XSETREF(m->contextvar, cv == Py_None ? NULL : Py_NewRef(cv));
    Py_XSETREF(m->error_stack, error_stack == Py_None ? NULL : Py_NewRef(error_stack));
    Py_XSETREF(m->prefix, prefix == Py_None ? NULL : Py_NewRef(prefix));
    /* No cache unless both bounds are given: it must never grow past them. */
    int cached = query_cache != NULL && cache_entries > 0 && cache_bytes > 0;
    Py_XSETREF(m->query_cache, cached ? Py_NewRef(query_cache) : NULL);
    m->cache_entries = cache_entries;
    m->cache_bytes = cache_bytes;
    m->slow_floor_ns = floor;
    m->status_floor = status_floor;
    m->triggers = (char)triggers;
    m->precheck = (char)precheck;
    m->error_fires = (char)error_fires;
    m->headers = (char)headers;
    find_capi();
    Py_RETURN_NONE;
}

/* A failure of flightdeck's own: counted (native_errors), reported to the ErrorLog under
 * ``kind`` as the Python path reports it, and dropped. Never leaves an exception set. */
static void
dropped_as(Middleware *m, const char *kind)
{
    m->errors++;
    PyObject *exc = PyErr_GetRaisedException_compat();
    if (m->report != NULL && exc != NULL) {
        PyObject *name = PyUnicode_FromString(kind);
        PyObject *r = name ? PyObject_CallFunctionObjArgs(m->report, name, exc, NULL) : NULL;
        Py_XDECREF(r);
        Py_XDECREF(name);
    }
    Py_XDECREF(exc);
    PyErr_Clear();
}
#define dropped(m) dropped_as((m), "native")

/* The native window whose own append ``fn`` is (borrowed), else NULL: then events go to it
 * through capi, with no Python call. Anything else (the pure core's emit, one a test put in
 * its place) is called as it is. */
static inline PyObject *
native_window_of(PyObject *fn)
{
    if (capi != NULL && PyCFunction_Check(fn) && PyCFunction_GET_FUNCTION(fn) == capi->append_meth
        && !(PyCFunction_GET_FLAGS(fn) & METH_STATIC))
        return PyCFunction_GET_SELF(fn);
    return NULL;
}

/* Look for the native core's capsule once it is loaded (never imports it: the pure core may
 * be the one recording). Failures leave capi NULL: every event then goes through emit. */
static PyObject *capi_capsule; /* kept: capi points into the module that made it */

static void
find_capi(void)
{
    if (capi != NULL) return;
    PyObject *name = PyUnicode_FromString("flightdeck.core._native");
    PyObject *mod = name != NULL ? PyImport_GetModule(name) : NULL;
    Py_XDECREF(name);
    PyObject *cap = NULL;
    if (mod != NULL && PyObject_GetOptionalAttr(mod, s_C_API, &cap) < 0) cap = NULL;
    Py_XDECREF(mod);
    const FdCAPI *api = cap != NULL && PyCapsule_IsValid(cap, FD_CAPI_NAME)
                            ? (const FdCAPI *)PyCapsule_GetPointer(cap, FD_CAPI_NAME)
                            : NULL;
    if (api != NULL && api->version == FD_CAPI_VERSION) {
        capi_capsule = cap;
        cap = NULL;
        capi = api;
    }
    Py_XDECREF(cap);
    if (PyErr_Occurred()) PyErr_Clear();
}

/* The version of a dict: CPython gives it a new one whenever the dict changes (deprecated
 * as an API from 3.12 for the dict watchers, which need a callback; the field is kept and
 * maintained through 3.13). 0 where it is gone: nothing is then reused. */
static inline uint64_t
dict_version(PyObject *d)
{
#if PY_VERSION_HEX < 0x030E0000
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#endif
    return ((PyDictObject *)d)->ma_version_tag;
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
#else
    (void)d;
    return 0;
#endif
}

/* New reference to recorder.emit, or NULL with an exception set. Twice a request: what the
 * recorder's __dict__ held is reused while the dict has not changed since (a replaced emit
 * changes it). */
static inline PyObject *
recorder_emit(Middleware *m)
{
    if (m->rec_dict != NULL) {
        uint64_t tag = dict_version(m->rec_dict);
        if (m->emit_fn != NULL && tag != 0 && tag == m->emit_tag) return Py_NewRef(m->emit_fn);
        PyObject *fn = PyDict_GetItemWithError(m->rec_dict, s_emit); /* borrowed; str key */
        if (fn != NULL) {
            /* the lookup runs no code (a str key): the tag still describes what it found */
            PyObject *old = m->emit_fn;
            m->emit_fn = Py_NewRef(fn);
            m->emit_tag = tag;
            Py_XDECREF(old);
            return Py_NewRef(fn);
        }
        if (PyErr_Occurred()) return NULL;
    }
    return PyObject_GetAttr(m->recorder, s_emit);
}

static int emit(Middleware *m, PyObject *event);

/* REQ_START: to the native window without its tuple read back field by field (capi's
 * req_start) when q->ev is this event and the recorder's emit is that window's own append;
 * else as emit does. 0, or -1 with an exception set. */
static int
emit_start(Middleware *m, PyObject *event, const FdReqStart *q)
{
    if (q->ev != event) return emit(m, event);
    PyObject *fn = recorder_emit(m);
    if (fn == NULL) return -1;
    PyObject *win = native_window_of(fn);
    int done = win != NULL && capi->req_start(win, q) == 0;
    Py_DECREF(fn);
    return done ? 0 : emit(m, event);
}

/* recorder.emit(event); 0, or -1 with an exception set. */
static int
emit(Middleware *m, PyObject *event)
{
    PyObject *fn = recorder_emit(m);
    if (fn == NULL) return -1;
    PyObject *win = native_window_of(fn);
    if (win != NULL) {
        capi->append(win, event);
        Py_DECREF(fn);
        return 0;
    }
    PyObject *r = PyObject_CallOneArg(fn, event);
    Py_DECREF(fn);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

/* --- the trace id of a traceparent header (see tracecontext.py) ----------------------- */
static int
hexlower(const char *p, Py_ssize_t n, int *allzero)
{
    int zero = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = p[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return 0;
        if (c != '0') zero = 0;
    }
    if (allzero) *allzero = zero;
    return 1;
}

/* New reference: a str of 32 hex, or None; NULL (no exception) means "ask Python". */
static PyObject *
trace_id_of(const char *v, Py_ssize_t n)
{
    while (n && (*v == ' ' || *v == '\t')) v++, n--;
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t')) n--;
    int zt, zp;
    if (n < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-') return Py_NewRef(Py_None);
    if (!hexlower(v, 2, NULL) || !hexlower(v + 3, 32, &zt) || !hexlower(v + 36, 16, &zp)
        || !hexlower(v + 53, 2, NULL))
        return Py_NewRef(Py_None);
    if (n > 55) {
        if (v[55] != '-' || (v[0] == '0' && v[1] == '0')) return Py_NewRef(Py_None);
        if (memchr(v + 56, '\n', (size_t)(n - 56)) != NULL) return Py_NewRef(Py_None);
    }
    if ((v[0] == 'f' && v[1] == 'f') || zt || zp) return Py_NewRef(Py_None);
    return PyUnicode_FromStringAndSize(v + 3, 32);
}

/* New reference; NULL with an exception on failure. */
static PyObject *
scan_trace_id(Middleware *m, PyObject *headers)
{
    if (!PyList_CheckExact(headers) && !PyTuple_CheckExact(headers)) return Py_NewRef(Py_None);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(headers);
    PyObject **items = PySequence_Fast_ITEMS(headers);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = items[i], *name, *value;
        if (PyTuple_CheckExact(item) && PyTuple_GET_SIZE(item) == 2) {
            name = PyTuple_GET_ITEM(item, 0);
            value = PyTuple_GET_ITEM(item, 1);
        } else if (PyList_CheckExact(item) && PyList_GET_SIZE(item) == 2) {
            name = PyList_GET_ITEM(item, 0);
            value = PyList_GET_ITEM(item, 1);
        } else {
            return PyObject_CallOneArg(m->trace_id, headers); /* unusual: Python decides */
        }
        if (!PyBytes_CheckExact(name) || PyBytes_GET_SIZE(name) != 11
            || memcmp(PyBytes_AS_STRING(name), "traceparent", 11) != 0)
            continue;
        if (!PyBytes_CheckExact(value)) return PyObject_CallOneArg(m->trace_id, headers);
        return trace_id_of(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value));
    }
    return Py_NewRef(Py_None);
}

/* --- REQ_START ------------------------------------------------------------------------ */
static PyObject *
scope_get(PyObject *scope, PyObject *key)
{
    PyObject *v = PyDict_GetItemWithError(scope, key); /* borrowed */
    return v;
}

/* 1 when the path may hold a credential-shaped segment that FlightDeck._start_event
 * redacts (redact.Redactor.path): a run of 20 or more of [A-Za-z0-9+_%=-] outside a
 * segment that is exactly a UUID, "eyJ" (a JWT) or "-----" (a PEM block). Conservative:
 * every path the Python rule would change is sent there; most others stay native. */
static int
path_suspect(PyObject *path)
{
    int kind = PyUnicode_KIND(path);
    const void *data = PyUnicode_DATA(path);
    Py_ssize_t n = PyUnicode_GET_LENGTH(path), run = 0, seg = 0;
    int long_run = 0;
    for (Py_ssize_t i = 0; i <= n; i++) {
        Py_UCS4 c = i < n ? PyUnicode_READ(kind, data, i) : '/';
        if (c == '/') {
            if (long_run) {
                Py_ssize_t len = i - seg;
                int uuid = len == 36;
                for (Py_ssize_t j = 0; uuid && j < 36; j++) {
                    Py_UCS4 d = PyUnicode_READ(kind, data, seg + j);
                    int dash = j == 8 || j == 13 || j == 18 || j == 23;
                    uuid = dash ? d == '-'
                                : ((d >= '0' && d <= '9') || (d >= 'a' && d <= 'f')
                                   || (d >= 'A' && d <= 'F'));
                }
                if (!uuid) return 1;
            }
            long_run = 0;
            run = 0;
            seg = i + 1;
            continue;
        }
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+'
            || c == '_' || c == '%' || c == '=' || c == '-') {
            if (++run >= 20) long_run = 1;
        } else {
            run = 0;
        }
        if (i + 2 < n && c == 'e' && PyUnicode_READ(kind, data, i + 1) == 'y'
            && PyUnicode_READ(kind, data, i + 2) == 'J')
            return 1;
        if (c == '-' && i + 4 < n && PyUnicode_READ(kind, data, i + 1) == '-'
            && PyUnicode_READ(kind, data, i + 2) == '-' && PyUnicode_READ(kind, data, i + 3) == '-'
            && PyUnicode_READ(kind, data, i + 4) == '-')
            return 1;
    }
    return 0;
}

/* New reference to the REQ_START to keep in the live entry (core.window.live_start): ev
 * itself unless its path and query are longer than LIVE_TEXT_MAX together, then a copy
 * with the path cut to LIVE_TEXT_MAX characters and no query. NULL with an exception. */
#define LIVE_TEXT_MAX 256
static PyObject *
live_start(PyObject *ev)
{
    PyObject *path = PyTuple_GET_ITEM(ev, 5), *query = PyTuple_GET_ITEM(ev, 6);
    if (!PyUnicode_CheckExact(path) || !PyUnicode_CheckExact(query)
        || PyUnicode_GET_LENGTH(path) + PyUnicode_GET_LENGTH(query) <= LIVE_TEXT_MAX)
        return Py_NewRef(ev);
    PyObject *copy = PyTuple_New(PyTuple_GET_SIZE(ev));
    PyObject *cut = PyUnicode_Substring(path, 0, LIVE_TEXT_MAX);
    if (copy == NULL || cut == NULL) {
        Py_XDECREF(copy);
        Py_XDECREF(cut);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(ev); i++)
        PyTuple_SET_ITEM(copy, i,
                         i == 5 ? cut : Py_NewRef(i == 6 ? s_empty : PyTuple_GET_ITEM(ev, i)));
    return copy;
}

/* New reference to the recorded (redacted) form of the non-empty query string ``qs``, or NULL
 * with an exception. Redaction is Python (redact.Redactor.query) and costs tens of thousands of
 * instructions; a pure function of the raw bytes, so the forms of short queries are kept in a
 * bounded dict (emptied when full), as FlightDeck._redacted_query keeps them in the same dict. */
static PyObject *
redacted_query(Middleware *m, PyObject *qs)
{
    PyObject *cache = m->query_cache;
    if (cache == NULL || !PyBytes_CheckExact(qs) || PyBytes_GET_SIZE(qs) > m->cache_bytes)
        return PyObject_CallOneArg(m->query, qs);
    PyObject *text = PyDict_GetItemWithError(cache, qs); /* borrowed */
    if (text != NULL) return Py_NewRef(text);
    if (PyErr_Occurred()) return NULL;
    text = PyObject_CallOneArg(m->query, qs);
    if (text == NULL || !PyUnicode_CheckExact(text)) return text;
    if (PyDict_GET_SIZE(cache) >= m->cache_entries) PyDict_Clear(cache);
    if (PyDict_SetItem(cache, qs, text) < 0) PyErr_Clear(); /* not kept: still recorded */
    return text;
}

/* New reference to the REQ_START tuple, or NULL with an exception. ``path``: the scope's
 * path when the caller has it (a reference it holds), else NULL. ``q``: its task id filled in
 * when the tuple is built here (the caller has filled in the rest), for capi's req_start;
 * q->ev stays NULL when it came from Python. */
static PyObject *
start_event(Middleware *m, PyObject *scope, PyObject *kind, PyObject *rid, PyObject *t0,
            PyObject *path, FdReqStart *q)
{
    if (m->headers) goto python;
    PyObject *method = scope_get(scope, s_method);
    if (path == NULL) path = scope_get(scope, s_path);
    PyObject *client = scope_get(scope, s_client);
    PyObject *qs = scope_get(scope, s_query_string);
    PyObject *headers = scope_get(scope, s_headers);
    if (PyErr_Occurred()) return NULL;
    if (method == NULL || method == Py_None) {
        if (kind != s_websocket) goto python;
        method = s_WS;
    }
    if (!PyUnicode_CheckExact(method) || PyUnicode_GET_LENGTH(method) > MAX_METHOD) goto python;
    if (path == NULL || !PyUnicode_CheckExact(path) || PyUnicode_GET_LENGTH(path) > MAX_PATH)
        goto python;
    if (path_suspect(path)) goto python; /* redacted there */
    if (client == NULL) client = Py_None;
    if (client != Py_None) {
        if (!PyTuple_CheckExact(client) || PyTuple_GET_SIZE(client) != 2) goto python;
        PyObject *host = PyTuple_GET_ITEM(client, 0);
        if (!PyUnicode_CheckExact(host) || PyUnicode_GET_LENGTH(host) > MAX_HOST
            || !PyLong_CheckExact(PyTuple_GET_ITEM(client, 1)))
            goto python;
    }
    PyObject *query;
    if (qs == NULL || qs == Py_None || (PyBytes_CheckExact(qs) && PyBytes_GET_SIZE(qs) == 0)) {
        query = Py_NewRef(s_empty);
    } else {
        int truth = PyObject_IsTrue(qs);
        if (truth < 0) return NULL;
        query = truth ? redacted_query(m, qs) : Py_NewRef(s_empty);
        if (query == NULL) return NULL;
    }
    PyObject *trace = headers ? scan_trace_id(m, headers) : Py_NewRef(Py_None);
    if (trace == NULL) {
        Py_DECREF(query);
        return NULL;
    }
    PyObject *task;
    if (m->current_tasks != NULL) {
        /* 3.11's current_task() is Python: the same lookup, without its frame. */
        PyObject *loop = PyObject_CallNoArgs(m->running_loop);
        task = loop ? PyDict_GetItemWithError(m->current_tasks, loop) : NULL;
        Py_XDECREF(loop);
        if (task != NULL)
            Py_INCREF(task);
        else if (!PyErr_Occurred())
            task = Py_NewRef(Py_None);
    } else {
        task = PyObject_CallNoArgs(m->current_task);
    }
    if (task == NULL) {
        PyErr_Clear(); /* no running loop (a test driving the app by hand): no task */
        task = Py_NewRef(Py_None);
    }
    PyObject *tid = task == Py_None ? Py_NewRef(Py_None) : PyLong_FromVoidPtr(task);
    q->has_tid = task != Py_None;
    q->tid = (int64_t)(uintptr_t)task;
    int tid_fits = task == Py_None || (uintptr_t)task <= (uintptr_t)INT64_MAX;
    Py_DECREF(task);
    if (tid == NULL) {
        Py_DECREF(query);
        Py_DECREF(trace);
        return NULL;
    }
    PyObject *ev = PyTuple_New(11);
    if (ev == NULL) {
        Py_DECREF(query);
        Py_DECREF(trace);
        Py_DECREF(tid);
        return NULL;
    }
    PyTuple_SET_ITEM(ev, 0, Py_NewRef(i_kind_start));
    PyTuple_SET_ITEM(ev, 1, Py_NewRef(t0));
    PyTuple_SET_ITEM(ev, 2, Py_NewRef(rid));
    PyTuple_SET_ITEM(ev, 3, Py_NewRef(kind));
    PyTuple_SET_ITEM(ev, 4, Py_NewRef(method));
    PyTuple_SET_ITEM(ev, 5, Py_NewRef(path));
    PyTuple_SET_ITEM(ev, 6, query);
    PyTuple_SET_ITEM(ev, 7, Py_NewRef(client));
    PyTuple_SET_ITEM(ev, 8, Py_NewRef(Py_None));
    PyTuple_SET_ITEM(ev, 9, tid);
    PyTuple_SET_ITEM(ev, 10, trace);
    /* strs, ints, None and the (host, port) pair checked above: never part of a cycle, and it
     * lives as long as its request (the live tables): kept out of the collector's work (the
     * query and the trace id come from Python: only when they are a str or None) */
    if (PyUnicode_CheckExact(query) && (trace == Py_None || PyUnicode_CheckExact(trace)))
        PyObject_GC_UnTrack(ev);
    if (tid_fits) q->ev = ev; /* borrowed: the caller holds it */
    return ev;
python:
    {
        PyObject *args[4] = {scope, kind, rid, t0};
        return PyObject_Vectorcall(m->start_event, args, 4, NULL);
    }
}

/* --- Send: a plain callable returning the server's awaitable -------------------------- */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *send;
    State *state;
} Send;

static int
Send_traverse(Send *s, visitproc visit, void *arg)
{
    Py_VISIT(s->send);
    Py_VISIT(s->state);
    return 0;
}
static int
Send_clear(Send *s)
{
    Py_CLEAR(s->send);
    Py_CLEAR(s->state);
    return 0;
}
static void
Send_dealloc(Send *s)
{
    PyObject_GC_UnTrack(s);
    Send_clear(s);
    free_push(&free_send, (PyObject *)s);
}

/* ``a`` (any object) equals ``b`` (an ASCII str of ours). Message types such as
 * "http.response.start" are not identifiers, so an app's literal is rarely our object: an
 * ASCII one is compared byte for byte, without PyUnicode_Compare's dispatch. */
static inline int
same(PyObject *a, PyObject *b)
{
    if (a == b) return 1;
    if (!PyUnicode_CheckExact(a)) return 0;
    Py_ssize_t n = PyUnicode_GET_LENGTH(a);
    if (n != PyUnicode_GET_LENGTH(b)) return 0;
    if (PyUnicode_IS_COMPACT_ASCII(a) && PyUnicode_IS_COMPACT_ASCII(b))
        return memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)n) == 0;
    return PyUnicode_Compare(a, b) == 0;
}

/* Note what a sent message says; never fails (a lookup error is dropped). */
static void
note_sent(State *st, PyObject *msg)
{
    PyObject *t = PyDict_GetItemWithError(msg, s_type);
    if (t == NULL || !PyUnicode_CheckExact(t)) goto out;
    if (same(t, s_m_resp_body)) {
        PyObject *more = PyDict_GetItemWithError(msg, s_more_body);
        if (more == NULL && PyErr_Occurred()) goto out;
        int truth = more == NULL ? 0 : PyObject_IsTrue(more);
        if (truth < 0) goto out;
        if (!truth) st->body_end = now_ns();
    } else if (same(t, s_m_resp_start) || same(t, s_m_ws_resp_start)) {
        PyObject *status = PyDict_GetItemWithError(msg, s_status);
        if (status == NULL && PyErr_Occurred()) goto out;
        Py_XSETREF(st->status, Py_NewRef(int_or_none(status)));
        st->ttfb = now_ns();
    } else if (same(t, s_m_ws_accept)) {
        st->ttfb = now_ns();
    } else if (same(t, s_m_ws_close) && st->close_code == NULL) {
        PyObject *code = PyDict_GetItemWithError(msg, s_code);
        if (code == NULL && PyErr_Occurred()) goto out;
        st->close_code = code ? Py_NewRef(int_or_none(code)) : PyLong_FromLong(1000);
    }
out:
    PyErr_Clear();
}

static PyObject *
Send_vectorcall(Send *s, PyObject *const *args, size_t nargsf, PyObject *kw)
{
    if (PyVectorcall_NARGS(nargsf) == 1 && kw == NULL && PyDict_CheckExact(args[0]))
        note_sent(s->state, args[0]);
    return PyObject_Vectorcall(s->send, args, nargsf, kw); /* the server's own answer */
}

static PyTypeObject SendType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flightdeck.asgi._casgi.Send",
    .tp_basicsize = sizeof(Send),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(Send, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_traverse = (traverseproc)Send_traverse,
    .tp_clear = (inquiry)Send_clear,
    .tp_dealloc = (destructor)Send_dealloc,
    .tp_doc = "send, noting the status, the first byte, the body end and close codes.",
};

/* --- awaitable proxies ---------------------------------------------------------------- */
/* The iterator of ``await obj`` (new reference), or NULL with the error ``await`` raises. */
static PyObject *
await_iter(PyObject *obj)
{
    if (PyCoro_CheckExact(obj)) return Py_NewRef(obj);
    PyTypeObject *tp = Py_TYPE(obj);
    if (tp->tp_as_async == NULL || tp->tp_as_async->am_await == NULL) {
        PyErr_Format(PyExc_TypeError, "object %.100s can't be used in 'await' expression",
                     tp->tp_name);
        return NULL;
    }
    PyObject *it = tp->tp_as_async->am_await(obj);
    if (it != NULL && (PyCoro_CheckExact(it) || !PyIter_Check(it))) {
        PyErr_Format(PyExc_TypeError, "__await__() returned %s",
                     PyCoro_CheckExact(it) ? "a coroutine" : "non-iterator");
        Py_CLEAR(it);
    }
    return it;
}

/* Set StopIteration(value) as a finished iterator reports its result. */
static void
set_stop(PyObject *value)
{
    if (value == Py_None) {
        PyErr_SetNone(PyExc_StopIteration);
        return;
    }
    PyObject *e = PyObject_CallOneArg(PyExc_StopIteration, value);
    if (e != NULL) {
        PyErr_SetObject(PyExc_StopIteration, e);
        Py_DECREF(e);
    }
}

/* The value of a StopIteration being raised (new reference, clearing it), else NULL with
 * the error still set. */
static PyObject *
take_stop(void)
{
    if (!PyErr_ExceptionMatches(PyExc_StopIteration)) return NULL;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    PyObject *result = value ? PyObject_GetAttrString(value, "value") : Py_NewRef(Py_None);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return result;
}

/* Shared by Call and RecvAwait: the proxy's iterator state. */
#define PROXY_HEAD       \
    PyObject_HEAD        \
    PyObject *awaitable; \
    PyObject *iter;      \
    char finished;

typedef struct {
    PROXY_HEAD
} Proxy;

typedef PySendResult (*on_result_fn)(Proxy *, PySendResult, PyObject **);

/* One step of the inner iterator: PYGEN_NEXT (yielded), PYGEN_RETURN (result) or
 * PYGEN_ERROR (exception set). ``mode`` 0: send(arg); 1: throw(args); 2: close(). */
static PySendResult
proxy_step(Proxy *p, int mode, PyObject *arg, PyObject *const *args, Py_ssize_t nargs,
           PyObject **result)
{
    *result = NULL;
    if (p->finished) {
        if (mode == 2) {
            *result = Py_NewRef(Py_None);
            return PYGEN_RETURN;
        }
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited coroutine");
        return PYGEN_ERROR;
    }
    if (p->iter == NULL) {
        p->iter = await_iter(p->awaitable);
        if (p->iter == NULL) return PYGEN_ERROR;
    }
    if (mode == 0) {
        if (arg == Py_None && !PyCoro_CheckExact(p->iter) && Py_TYPE(p->iter)->tp_iternext) {
            *result = Py_TYPE(p->iter)->tp_iternext(p->iter);
            if (*result != NULL) return PYGEN_NEXT;
            if (!PyErr_Occurred()) {
                *result = Py_NewRef(Py_None);
                return PYGEN_RETURN;
            }
            *result = take_stop();
            return *result ? PYGEN_RETURN : PYGEN_ERROR;
        }
        return PyIter_Send(p->iter, arg, result);
    }
    PyObject *meth = NULL;
    if (PyObject_GetOptionalAttr(p->iter, mode == 1 ? s_throw : s_close, &meth) < 0)
        return PYGEN_ERROR;
    if (meth == NULL) {
        if (mode == 2) {
            *result = Py_NewRef(Py_None);
            return PYGEN_RETURN;
        }
        /* No throw(): raise the exception here, as ``await`` would at this point. */
        PyObject *exc = nargs ? args[0] : Py_None;
        if (PyExceptionInstance_Check(exc))
            PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        else
            PyErr_SetObject(exc, nargs > 1 ? args[1] : NULL);
        return PYGEN_ERROR;
    }
    *result = PyObject_Vectorcall(meth, args, nargs, NULL);
    Py_DECREF(meth);
    if (*result != NULL) return mode == 2 ? PYGEN_RETURN : PYGEN_NEXT;
    *result = take_stop();
    return *result ? PYGEN_RETURN : PYGEN_ERROR;
}

/* Report a step's outcome the way tp_iternext / send() / throw() must. */
static PyObject *
report(PySendResult r, PyObject *result)
{
    if (r == PYGEN_NEXT) return result;
    if (r == PYGEN_RETURN) {
        set_stop(result);
        Py_DECREF(result);
    }
    return NULL;
}

/* --- Call: the request, awaitable ----------------------------------------------------- */
typedef struct {
    PROXY_HEAD
    Middleware *mw;
    PyObject *scope;
    PyObject *kind;
    PyObject *rid;
    State *state;
    PyObject *token; /* contextvar token, from the first step on */
    long long t0;
    char started; /* stepped at least once: the request id is set in its context */
} Call;

static int
Call_traverse(Call *c, visitproc visit, void *arg)
{
    Py_VISIT(c->awaitable);
    Py_VISIT(c->iter);
    Py_VISIT(c->mw);
    Py_VISIT(c->scope);
    Py_VISIT(c->kind);
    Py_VISIT(c->rid);
    Py_VISIT(c->state);
    Py_VISIT(c->token);
    return 0;
}
static int
Call_clear(Call *c)
{
    Py_CLEAR(c->awaitable);
    Py_CLEAR(c->iter);
    Py_CLEAR(c->mw);
    Py_CLEAR(c->scope);
    Py_CLEAR(c->kind);
    Py_CLEAR(c->rid);
    Py_CLEAR(c->state);
    Py_CLEAR(c->token);
    return 0;
}

/* New reference to the route template of the request (the router's scope["route"]: its
 * path_format, else its path), None without one, or NULL with an exception. */
static PyObject *
route_of(Middleware *m, PyObject *scope)
{
    PyObject *route = PyDict_GetItemWithError(scope, s_route);
    if (route == NULL || route == Py_None) return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    if (route == m->route_obj) return Py_NewRef(m->route_text);
    PyObject *p = NULL;
    if (PyObject_GetOptionalAttr(route, s_path_format, &p) < 0) return NULL;
    int truth = p == NULL ? 0 : PyObject_IsTrue(p);
    if (truth < 0) PyErr_Clear(); /* a template that cannot say if it is empty: the path */
    if (truth <= 0) {
        Py_XDECREF(p);
        if (PyObject_GetOptionalAttr(route, s_path, &p) < 0) return NULL;
    }
    if (p == NULL || !PyUnicode_Check(p)) {
        Py_XDECREF(p);
        p = Py_NewRef(Py_None);
    }
    /* a reference each (the getattrs above may have run code that called us) */
    PyObject *old_obj = m->route_obj, *old_text = m->route_text;
    m->route_obj = Py_NewRef(route);
    m->route_text = Py_NewRef(p);
    Py_XDECREF(old_obj);
    Py_XDECREF(old_text);
    return p;
}

/* An int the snapshot formats can hold (new reference, NULL on error): one past
 * +-(2**63 - 1) (a broken app's status or close code) becomes the nearest bound, counted as
 * ``status_clamped`` as the Python path counts it (capture.clamp64). ``*value`` gets it. */
static PyObject *
clamp64(Middleware *m, PyObject *v, long long *value)
{
    int overflow = 0;
    *value = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (*value == -1 && PyErr_Occurred()) return NULL;
    if (overflow == 0 && *value != LLONG_MIN) return Py_NewRef(v);
    *value = overflow > 0 ? LLONG_MAX : -LLONG_MAX; /* the core keeps LLONG_MIN for None */
    PyObject *r = PyObject_CallMethod(m->report, "once", "ss", "status_clamped",
                                      "flightdeck: the app sent a status or close code past "
                                      "64 bits; recorded clamped");
    if (r == NULL) dropped(m);
    Py_XDECREF(r);
    return PyLong_FromLongLong(*value);
}

/* REQ_ERROR: where ``exc``, the app's exception, was raised (``error_stack`` makes the frames,
 * as the Python path does); nothing when it gives none. Never raises: a failure is dropped. */
static void
emit_error(Middleware *m, PyObject *rid, PyObject *t1o, PyObject *exc)
{
    PyObject *stack = PyObject_CallOneArg(m->error_stack, exc);
    if (stack == NULL) {
        dropped_as(m, "request_error");
        return;
    }
    if (PyTuple_CheckExact(stack) && PyTuple_GET_SIZE(stack) > 0) {
        PyObject *ev = PyTuple_Pack(4, i_kind_error, t1o, rid, stack);
        if (ev == NULL || emit(m, ev) < 0) dropped_as(m, "request_error");
        Py_XDECREF(ev);
    }
    Py_DECREF(stack);
}

/* The request ended (``error``: the exception's qualname, or NULL). Never raises: the
 * current exception (the app's) is kept as it is. */
static void
Call_finish(Call *c, PyObject *error)
{
    if (c->finished) return;
    c->finished = 1;
    Middleware *m = c->mw;
    State *st = c->state;
    PyObject *exc = PyErr_GetRaisedException_compat();
    long long t1 = now_ns();
    if (c->token != NULL && m->contextvar != NULL) {
        if (PyContextVar_Reset(m->contextvar, c->token) < 0) dropped(m);
        Py_CLEAR(c->token);
    }
    PyObject *status = st->status ? st->status : Py_None;
    long long code = 0;
    PyObject *status_obj = NULL;
    int is_http = c->kind == s_http;
    if (status != Py_None && PyLong_CheckExact(status)) {
        status_obj = clamp64(m, status, &code);
    } else if (error != NULL && is_http) {
        status_obj = PyLong_FromLong(500); /* none sent (or not an int the server takes) */
        code = 500;
    } else {
        status_obj = Py_NewRef(Py_None); /* not an HTTP status: the server refuses it */
    }
    PyObject *route = route_of(m, c->scope);
    if (route == NULL) {
        dropped(m);
        route = Py_NewRef(Py_None);
    }
    long long unused;
    PyObject *close = st->close_code && PyLong_CheckExact(st->close_code)
                          ? clamp64(m, st->close_code, &unused)
                          : Py_NewRef(Py_None);
    PyObject *t1o = NULL;
    if (error != NULL && error != Py_None && exc != NULL && m->error_stack != NULL) {
        t1o = PyLong_FromLongLong(t1);
        if (t1o != NULL) emit_error(m, c->rid, t1o, exc);
    }
    if (status_obj == NULL || close == NULL) {
        dropped(m);
        Py_XDECREF(status_obj);
        Py_XDECREF(close);
        Py_XDECREF(t1o);
        Py_DECREF(route);
        goto after_emit;
    }
    PyObject *rec = recorder_emit(m);
    PyObject *win = rec != NULL ? native_window_of(rec) : NULL;
    int sent = 0;
    if (win != NULL) {
        /* to the native window with no tuple (the common case) */
        int64_t rid;
        FdReqEnd q = {.t = t1,
                      .ttfb = st->ttfb,
                      .body_end = st->body_end,
                      .route = route,
                      .disconnected = st->disconnected ? Py_True : Py_False,
                      .error = error ? error : Py_None};
        rid = PyLong_AsLongLong(c->rid);
        q.rid = rid;
        q.has_status = status_obj != Py_None;
        q.status = q.has_status ? code : 0;
        q.has_close_code = close != Py_None;
        q.close_code = q.has_close_code ? PyLong_AsLongLong(close) : 0;
        if (PyErr_Occurred())
            PyErr_Clear(); /* not an int64 after all: the tuple's path */
        else
            sent = capi->req_end(win, &q) == 0;
    }
    if (rec == NULL) {
        dropped_as(m, "request_end");
    } else if (!sent) {
        PyObject *ev = PyTuple_New(10);
        if (t1o == NULL) t1o = PyLong_FromLongLong(t1);
        PyObject *ttfb = PyLong_FromLongLong(st->ttfb);
        PyObject *body_end = PyLong_FromLongLong(st->body_end);
        if (ev == NULL || t1o == NULL || ttfb == NULL || body_end == NULL) {
            Py_XDECREF(ev);
            Py_XDECREF(ttfb);
            Py_XDECREF(body_end);
            dropped_as(m, "request_end");
        } else {
            PyTuple_SET_ITEM(ev, 0, Py_NewRef(i_kind_end));
            PyTuple_SET_ITEM(ev, 1, Py_NewRef(t1o));
            PyTuple_SET_ITEM(ev, 2, Py_NewRef(c->rid));
            PyTuple_SET_ITEM(ev, 3, Py_NewRef(status_obj));
            PyTuple_SET_ITEM(ev, 4, ttfb);
            PyTuple_SET_ITEM(ev, 5, Py_NewRef(route));
            PyTuple_SET_ITEM(ev, 6, PyBool_FromLong(st->disconnected));
            PyTuple_SET_ITEM(ev, 7, Py_NewRef(error ? error : Py_None));
            PyTuple_SET_ITEM(ev, 8, body_end);
            PyTuple_SET_ITEM(ev, 9, Py_NewRef(close));
            if (win != NULL) {
                capi->append(win, ev);
            } else {
                PyObject *x = PyObject_CallOneArg(rec, ev);
                if (x == NULL) dropped_as(m, "request_end");
                Py_XDECREF(x);
            }
            Py_DECREF(ev);
        }
    }
    Py_XDECREF(rec);
    Py_DECREF(close);
    if (PyDict_DelItem(m->inflight, c->rid) < 0) PyErr_Clear();
    /* The integer pre-check: nothing can fire in the common case. */
    if (m->triggers
        && !(m->precheck && (error == NULL || !m->error_fires) && code < m->status_floor
             && (st->fired || !is_http || t1 - c->t0 <= m->slow_floor_ns))) {
        PyObject *t0o = PyLong_FromLongLong(c->t0);
        if (t0o != NULL && t1o == NULL) t1o = PyLong_FromLongLong(t1);
        if (t0o == NULL || t1o == NULL) {
            dropped(m);
        } else {
            PyObject *args[9] = {c->rid,     c->scope, (PyObject *)st,         t0o, t1o, c->kind,
                                 status_obj, route,    error ? error : Py_None};
            PyObject *r = PyObject_Vectorcall(m->done, args, 9, NULL);
            if (r == NULL) dropped_as(m, "request_end");
            Py_XDECREF(r);
        }
        Py_XDECREF(t0o);
    }
    Py_XDECREF(t1o);
    Py_DECREF(status_obj);
    Py_DECREF(route);
after_emit:
    PyErr_SetRaisedException_compat(exc);
}

static PyObject *
error_name(void)
{
    PyObject *exc = PyErr_GetRaisedException_compat();
    PyObject *name = exc ? PyType_GetQualName(Py_TYPE(exc)) : NULL;
    if (name == NULL) PyErr_Clear();
    PyErr_SetRaisedException_compat(exc);
    return name;
}

/* Finish on a return or an error; the outcome passes through unchanged. */
static void
Call_outcome(Call *c, PySendResult r)
{
    if (r == PYGEN_NEXT) return;
    if (r == PYGEN_RETURN) {
        Call_finish(c, NULL);
        return;
    }
    PyObject *name = error_name();
    if (name == NULL) c->mw->errors++;
    Call_finish(c, name ? name : Py_None);
    Py_XDECREF(name);
}

/* The first step: the request id is set in the context running the request (a task's,
 * when a server or app hands it to gather, shield, ensure_future or wait_for), as the
 * Python path's coroutine sets it; Call_finish resets it there. */
static inline void
Call_begin(Call *c)
{
    if (c->started || c->finished) return;
    c->started = 1;
    if (c->mw->contextvar == NULL) return;
    c->token = PyContextVar_Set(c->mw->contextvar, c->rid);
    if (c->token == NULL) dropped(c->mw);
}

static PySendResult
Call_am_send(Call *c, PyObject *arg, PyObject **result)
{
    Call_begin(c);
    PySendResult r = proxy_step((Proxy *)c, 0, arg, NULL, 0, result);
    Call_outcome(c, r);
    return r;
}
static PyObject *
Call_iternext(Call *c)
{
    PyObject *result;
    PySendResult r = Call_am_send(c, Py_None, &result);
    if (r == PYGEN_RETURN && result == Py_None) {
        Py_DECREF(result);
        return NULL; /* StopIteration(None), without building it */
    }
    return report(r, result);
}
static PyObject *
Call_send(Call *c, PyObject *arg)
{
    PyObject *result;
    PySendResult r = Call_am_send(c, arg, &result);
    return report(r, result);
}
static PyObject *
Call_throw(Call *c, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *result;
    Call_begin(c);
    PySendResult r = proxy_step((Proxy *)c, 1, NULL, args, nargs, &result);
    Call_outcome(c, r);
    return report(r, result);
}
static PyObject *
Call_close(Call *c, PyObject *unused)
{
    PyObject *result;
    int was = c->finished;
    PySendResult r = proxy_step((Proxy *)c, 2, NULL, NULL, 0, &result);
    if (!was) {
        PyObject *name = PyUnicode_FromString("GeneratorExit");
        if (name == NULL) PyErr_Clear();
        if (r == PYGEN_ERROR)
            Call_outcome(c, r);
        else
            Call_finish(c, name);
        Py_XDECREF(name);
    }
    if (r == PYGEN_ERROR) return NULL;
    Py_XDECREF(result);
    Py_RETURN_NONE;
}
static PyObject *
Call_await(PyObject *self)
{
    return Py_NewRef(self);
}
static PyObject *
Call_get_cr_await(Call *c, void *x)
{
    return Py_NewRef(c->iter ? c->iter : (c->awaitable ? c->awaitable : Py_None));
}

/* Never awaited to the end (dropped, or found in a reference cycle): the request is over
 * all the same. A finalizer, so that the cycle collector runs it before any tp_clear, with
 * everything the finish needs still in place (as it closes a dropped coroutine). The token
 * belongs to another context now, so it is only forgotten. */
static void
Call_finalize(Call *c)
{
    /* A FlightDeck cleared as garbage (its recorder gone) has nothing left to record into. */
    if (c->finished || c->mw == NULL || c->mw->recorder == NULL) return;
    PyObject *exc = PyErr_GetRaisedException_compat();
    Py_CLEAR(c->token);
    PyObject *name = PyUnicode_FromString("GeneratorExit");
    if (name == NULL) PyErr_Clear();
    Call_finish(c, name ? name : Py_None);
    Py_XDECREF(name);
    PyErr_SetRaisedException_compat(exc);
}

static void
Call_dealloc(Call *c)
{
    /* A finished call has nothing to finalize: skipped, it stays reusable (free_push). */
    if (!c->finished && PyObject_CallFinalizerFromDealloc((PyObject *)c) < 0)
        return; /* resurrected */
    PyObject_GC_UnTrack(c);
    Call_clear(c);
    free_push(&free_call, (PyObject *)c);
}

static PyMethodDef Call_methods[] = {
    {"send", (PyCFunction)Call_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))Call_throw, METH_FASTCALL, NULL},
    {"close", (PyCFunction)Call_close, METH_NOARGS, NULL},
    {NULL},
};
static PyGetSetDef Call_getset[] = {
    {"cr_await", (getter)Call_get_cr_await, NULL, "what the request awaits", NULL},
    {NULL},
};
static PyAsyncMethods Call_async = {
    .am_await = Call_await,
    .am_send = (sendfunc)Call_am_send,
};
static PyTypeObject CallType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flightdeck.asgi._casgi.Call",
    .tp_basicsize = sizeof(Call),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_as_async = &Call_async,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)Call_iternext,
    .tp_methods = Call_methods,
    .tp_getset = Call_getset,
    .tp_traverse = (traverseproc)Call_traverse,
    .tp_clear = (inquiry)Call_clear,
    .tp_dealloc = (destructor)Call_dealloc,
    .tp_finalize = (destructor)Call_finalize,
    .tp_doc = "One request through FlightDeck: awaits the app, records its end.",
};

/* --- Receive: returns a proxy that notes disconnects ---------------------------------- */
typedef struct {
    PROXY_HEAD
    State *state;
} RecvAwait;

static int
RecvAwait_traverse(RecvAwait *r, visitproc visit, void *arg)
{
    Py_VISIT(r->awaitable);
    Py_VISIT(r->iter);
    Py_VISIT(r->state);
    return 0;
}
static int
RecvAwait_clear(RecvAwait *r)
{
    Py_CLEAR(r->awaitable);
    Py_CLEAR(r->iter);
    Py_CLEAR(r->state);
    return 0;
}
static void
RecvAwait_dealloc(RecvAwait *r)
{
    PyObject_GC_UnTrack(r);
    RecvAwait_clear(r);
    free_push(&free_recv_await, (PyObject *)r);
}

static void
note_received(State *st, PyObject *msg)
{
    if (!PyDict_CheckExact(msg)) return;
    PyObject *t = PyDict_GetItemWithError(msg, s_type);
    if (t == NULL || !PyUnicode_CheckExact(t)) goto out;
    /* A disconnect after the last body byte is just the end of the exchange; a WebSocket
     * disconnect after the app closed is the close completing. */
    if (same(t, s_m_http_disconnect)) {
        if (!st->body_end) st->disconnected = 1;
    } else if (same(t, s_m_ws_disconnect) && st->close_code == NULL) {
        PyObject *code = PyDict_GetItemWithError(msg, s_code);
        if (code == NULL && PyErr_Occurred()) goto out;
        st->disconnected = 1;
        st->close_code = code ? Py_NewRef(int_or_none(code)) : PyLong_FromLong(1005);
    }
out:
    PyErr_Clear();
}

static PySendResult
RecvAwait_am_send(RecvAwait *r, PyObject *arg, PyObject **result)
{
    PySendResult s = proxy_step((Proxy *)r, 0, arg, NULL, 0, result);
    if (s != PYGEN_NEXT) {
        r->finished = 1;
        if (s == PYGEN_RETURN) {
            PyObject *exc = PyErr_GetRaisedException_compat();
            note_received(r->state, *result);
            PyErr_SetRaisedException_compat(exc);
        }
    }
    return s;
}
static PyObject *
RecvAwait_iternext(RecvAwait *r)
{
    PyObject *result;
    PySendResult s = RecvAwait_am_send(r, Py_None, &result);
    return report(s, result);
}
static PyObject *
RecvAwait_send(RecvAwait *r, PyObject *arg)
{
    PyObject *result;
    PySendResult s = RecvAwait_am_send(r, arg, &result);
    return report(s, result);
}
static PyObject *
RecvAwait_throw(RecvAwait *r, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *result;
    PySendResult s = proxy_step((Proxy *)r, 1, NULL, args, nargs, &result);
    if (s != PYGEN_NEXT) r->finished = 1;
    if (s == PYGEN_RETURN) note_received(r->state, result);
    return report(s, result);
}
static PyObject *
RecvAwait_close(RecvAwait *r, PyObject *unused)
{
    PyObject *result;
    PySendResult s = proxy_step((Proxy *)r, 2, NULL, NULL, 0, &result);
    r->finished = 1;
    if (s == PYGEN_ERROR) return NULL;
    Py_XDECREF(result);
    Py_RETURN_NONE;
}
static PyObject *
RecvAwait_get_cr_await(RecvAwait *r, void *x)
{
    return Py_NewRef(r->iter ? r->iter : (r->awaitable ? r->awaitable : Py_None));
}
static PyMethodDef RecvAwait_methods[] = {
    {"send", (PyCFunction)RecvAwait_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))RecvAwait_throw, METH_FASTCALL, NULL},
    {"close", (PyCFunction)RecvAwait_close, METH_NOARGS, NULL},
    {NULL},
};
static PyGetSetDef RecvAwait_getset[] = {
    {"cr_await", (getter)RecvAwait_get_cr_await, NULL, "what receive awaits", NULL},
    {NULL},
};
static PyAsyncMethods RecvAwait_async = {
    .am_await = Call_await,
    .am_send = (sendfunc)RecvAwait_am_send,
};
static PyTypeObject RecvAwaitType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flightdeck.asgi._casgi.ReceiveAwaitable",
    .tp_basicsize = sizeof(RecvAwait),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_as_async = &RecvAwait_async,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)RecvAwait_iternext,
    .tp_methods = RecvAwait_methods,
    .tp_getset = RecvAwait_getset,
    .tp_traverse = (traverseproc)RecvAwait_traverse,
    .tp_clear = (inquiry)RecvAwait_clear,
    .tp_dealloc = (destructor)RecvAwait_dealloc,
};

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *receive;
    State *state;
} Receive;

static int
Receive_traverse(Receive *s, visitproc visit, void *arg)
{
    Py_VISIT(s->receive);
    Py_VISIT(s->state);
    return 0;
}
static int
Receive_clear(Receive *s)
{
    Py_CLEAR(s->receive);
    Py_CLEAR(s->state);
    return 0;
}
static void
Receive_dealloc(Receive *s)
{
    PyObject_GC_UnTrack(s);
    Receive_clear(s);
    free_push(&free_receive, (PyObject *)s);
}
static PyObject *
Receive_vectorcall(Receive *s, PyObject *const *args, size_t nargsf, PyObject *kw)
{
    PyObject *aw = PyObject_Vectorcall(s->receive, args, nargsf, kw);
    if (aw == NULL) return NULL; /* the server's own error */
    RecvAwait *r = free_pop(&free_recv_await, &RecvAwaitType);
    if (r == NULL) {
        PyErr_Clear();
        return aw; /* could not watch it: hand over the server's awaitable as is */
    }
    r->awaitable = aw;
    r->iter = NULL;
    r->finished = 0;
    r->state = (State *)Py_NewRef(s->state);
    PyObject_GC_Track(r);
    return (PyObject *)r;
}
static PyTypeObject ReceiveType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flightdeck.asgi._casgi.Receive",
    .tp_basicsize = sizeof(Receive),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(Receive, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_traverse = (traverseproc)Receive_traverse,
    .tp_clear = (inquiry)Receive_clear,
    .tp_dealloc = (destructor)Receive_dealloc,
    .tp_doc = "receive, noting disconnects and close codes.",
};

/* --- Middleware.__call__ -------------------------------------------------------------- */
static int
is_endpoint(Middleware *m, PyObject *scope, PyObject **found)
{
    PyObject *path = PyDict_GetItemWithError(scope, s_path);
    if (path == NULL || !PyUnicode_CheckExact(path)) return PyErr_Occurred() ? -1 : 0;
    *found = path; /* borrowed: the caller takes a reference (start_event reads it again) */
    Py_ssize_t start = 0, n = PyUnicode_GET_LENGTH(path);
    PyObject *root = PyDict_GetItemWithError(scope, s_root_path);
    if (root == NULL && PyErr_Occurred()) return -1;
    if (root != NULL && PyUnicode_CheckExact(root) && PyUnicode_GET_LENGTH(root) > 0) {
        /* As Starlette's routing: match below root_path (see FlightDeck._for_endpoint). */
        Py_ssize_t r = PyUnicode_GET_LENGTH(root);
        int tail = (int)PyUnicode_Tailmatch(path, root, 0, r, -1);
        if (tail < 0) return -1;
        if (tail && (r == n || PyUnicode_READ_CHAR(path, r) == '/')) start = r;
    }
    Py_ssize_t p = PyUnicode_GET_LENGTH(m->prefix);
    if (n - start < p) return 0;
    int match = (int)PyUnicode_Tailmatch(path, m->prefix, start, start + p, -1);
    if (match <= 0) return match;
    return n - start == p || PyUnicode_READ_CHAR(path, start + p) == '/';
}

/* __call__(scope, receive, send), arguments as vectorcall passes them. */
static PyObject *
asgi_call(Middleware *m, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0) goto python;
    if (nargs != 3 || !m->fast || m->app == NULL) goto python;
    PyObject *scope = args[0];
    PyObject *receive = args[1];
    PyObject *send = args[2];
    if (!PyDict_CheckExact(scope)) goto python;
    PyObject *kind = PyDict_GetItemWithError(scope, s_type);
    if (kind == NULL || !PyUnicode_CheckExact(kind)) goto python_clear;
    if (same(kind, s_http))
        kind = s_http;
    else if (same(kind, s_websocket))
        kind = s_websocket;
    else
        goto python;
    PyObject *path = NULL; /* the scope's path, when the endpoint check read it */
    if (m->prefix != NULL && kind == s_http) {
        int ep = is_endpoint(m, scope, &path);
        if (ep != 0) goto python_clear;
    }
    /* Mark the scope as ours, in one lookup: a scope already marked (a second FlightDeck on
     * the same app, or a scope passed on again) leaves it to the Python path, which passes
     * it through. */
    Py_ssize_t keys = PyDict_GET_SIZE(scope);
    PyObject *mark = PyDict_SetDefault(scope, s_flightdeck, (PyObject *)m); /* borrowed */
    if (mark == NULL || PyDict_GET_SIZE(scope) == keys) goto python_clear;
    Py_XINCREF(path);

    long long t0 = now_ns();
    m->requests++;
    PyObject *rid = PyLong_FromLongLong(++m->rid);
    State *st = state_new();
    Send *sw = free_pop(&free_send, &SendType);
    Receive *rw = free_pop(&free_receive, &ReceiveType);
    Call *c = free_pop(&free_call, &CallType);
    if (rid == NULL || st == NULL || sw == NULL || rw == NULL || c == NULL) {
        Py_XDECREF(path);
        Py_XDECREF(rid);
        Py_XDECREF(st);
        if (sw) {
            sw->send = NULL;
            sw->state = NULL;
            Py_DECREF(sw);
        }
        if (rw) {
            rw->receive = NULL;
            rw->state = NULL;
            Py_DECREF(rw);
        }
        if (c) {
            c->mw = NULL;
            c->awaitable = c->iter = c->scope = c->kind = c->rid = c->token = NULL;
            c->state = NULL;
            c->finished = 1;
            c->started = 0;
            Py_DECREF(c);
        }
        goto python_drop;
    }
    sw->vectorcall = (vectorcallfunc)Send_vectorcall;
    sw->send = Py_NewRef(send);
    sw->state = (State *)Py_NewRef(st);
    PyObject_GC_Track(sw);
    rw->vectorcall = (vectorcallfunc)Receive_vectorcall;
    rw->receive = Py_NewRef(receive);
    rw->state = (State *)Py_NewRef(st);
    PyObject_GC_Track(rw);
    c->awaitable = c->iter = c->token = NULL;
    c->finished = c->started = 0;
    c->mw = (Middleware *)Py_NewRef(m);
    c->scope = Py_NewRef(scope);
    c->kind = Py_NewRef(kind);
    c->rid = rid;
    c->state = st; /* the reference from state_new */
    c->t0 = t0;
    PyObject_GC_Track(c);

    PyObject *t0o = PyLong_FromLongLong(t0);
    FdReqStart q = {.ev = NULL, .t = t0, .rid = m->rid};
    PyObject *ev = t0o ? start_event(m, scope, kind, rid, t0o, path, &q) : NULL;
    Py_XDECREF(t0o);
    Py_XDECREF(path);
    if (ev == NULL) {
        dropped_as(m, "request_start");
    } else {
        PyObject *live =
            PyTuple_CheckExact(ev) && PyTuple_GET_SIZE(ev) > 6 ? live_start(ev) : Py_NewRef(ev);
        PyObject *entry = live ? PyTuple_Pack(3, live, scope, (PyObject *)st) : NULL;
        Py_XDECREF(live);
        if (entry == NULL || PyDict_SetItem(m->inflight, rid, entry) < 0
            || emit_start(m, ev, &q) < 0)
            dropped_as(m, "request_start");
        Py_XDECREF(entry);
        Py_DECREF(ev);
    }

    PyObject *cargs[3] = {scope, (PyObject *)rw, (PyObject *)sw};
    c->awaitable = PyObject_Vectorcall(m->app, cargs, 3, NULL);
    Py_DECREF(rw);
    Py_DECREF(sw);
    if (c->awaitable == NULL) {
        /* The app raised before returning an awaitable: its error, as it is. */
        Call_outcome(c, PYGEN_ERROR);
        Py_DECREF(c);
        return NULL;
    }
    return (PyObject *)c;

python_drop:
    dropped(m);
    goto python;
python_clear:
    if (PyErr_Occurred()) dropped(m);
python:
    if (m->py_call == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "FlightDeck is not set up");
        return NULL;
    }
    return PyObject_Vectorcall(m->py_call, args, nargs, kwnames);
}

static PyObject *
Middleware_call(Middleware *m, PyObject *args, PyObject *kw)
{
    if (kw != NULL && PyDict_GET_SIZE(kw) != 0) {
        if (m->py_call == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "FlightDeck is not set up");
            return NULL;
        }
        return PyObject_Call(m->py_call, args, kw);
    }
    return asgi_call(m, &PyTuple_GET_ITEM(args, 0), PyTuple_GET_SIZE(args), NULL);
}

/* --- AsyncCall: FlightDeck.__call__, a method that inspection sees as async ----------
 * ASGI servers tell ASGI 3 from ASGI 2 by asyncio.iscoroutinefunction(app.__call__)
 * (uvicorn's Config.load). A slot wrapper is not one; this descriptor binds to a plain
 * method whose function carries asyncio's and inspect's coroutine markers (set from
 * Python in its __dict__), and is called without binding (a method descriptor). */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *dict;
} AsyncCall;

static PyObject *
AsyncCall_vectorcall(AsyncCall *a, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 1 || !PyObject_TypeCheck(args[0], &MiddlewareType)) {
        PyErr_SetString(PyExc_TypeError, "__call__ needs a FlightDeck");
        return NULL;
    }
    return asgi_call((Middleware *)args[0], args + 1, nargs - 1, kwnames);
}
static PyObject *
AsyncCall_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None) return Py_NewRef(self);
    return PyMethod_New(self, obj);
}
static int
AsyncCall_traverse(AsyncCall *a, visitproc visit, void *arg)
{
    Py_VISIT(a->dict);
    return 0;
}
static int
AsyncCall_clear(AsyncCall *a)
{
    Py_CLEAR(a->dict);
    return 0;
}
static void
AsyncCall_dealloc(AsyncCall *a)
{
    PyObject_GC_UnTrack(a);
    AsyncCall_clear(a);
    Py_TYPE(a)->tp_free((PyObject *)a);
}
static PyObject *
AsyncCall_new(PyTypeObject *t, PyObject *args, PyObject *kw)
{
    AsyncCall *a = (AsyncCall *)t->tp_alloc(t, 0);
    if (a != NULL) a->vectorcall = (vectorcallfunc)AsyncCall_vectorcall;
    return (PyObject *)a;
}
static PyGetSetDef AsyncCall_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL},
};
static PyTypeObject AsyncCallType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flightdeck.asgi._casgi.AsyncCall",
    .tp_basicsize = sizeof(AsyncCall),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL
                | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_vectorcall_offset = offsetof(AsyncCall, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_descr_get = AsyncCall_get,
    .tp_dictoffset = offsetof(AsyncCall, dict),
    .tp_getset = AsyncCall_getset,
    .tp_new = AsyncCall_new,
    .tp_traverse = (traverseproc)AsyncCall_traverse,
    .tp_clear = (inquiry)AsyncCall_clear,
    .tp_dealloc = (destructor)AsyncCall_dealloc,
    .tp_doc = "FlightDeck.__call__(scope, receive, send): awaitable.",
};

static PyMethodDef Middleware_methods[] = {
    {"_native_setup", (PyCFunction)(void (*)(void))Middleware_setup, METH_VARARGS | METH_KEYWORDS,
     "Hand the native path what it records into and calls."},
    {NULL},
};
static PyMemberDef Middleware_members[] = {
    {"_native_fast", T_BOOL, offsetof(Middleware, fast), 0, "take the native path"},
    {"native_errors", T_LONGLONG, offsetof(Middleware, errors), READONLY,
     "flightdeck's own failures on the native path, counted and dropped"},
    {"native_requests", T_LONGLONG, offsetof(Middleware, requests), READONLY,
     "requests recorded by the native path"},
    {"_native_rid", T_LONGLONG, offsetof(Middleware, rid), 0,
     "the last request id given, by either path"},
    {"__dictoffset__", T_PYSSIZET, offsetof(Middleware, dict), READONLY, NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(Middleware, weakreflist), READONLY, NULL},
    {NULL},
};
static PyGetSetDef Middleware_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL},
};

static PyObject *
Middleware_new(PyTypeObject *t, PyObject *a, PyObject *k)
{
    Middleware *m = (Middleware *)t->tp_alloc(t, 0); /* zeroed */
    return (PyObject *)m;
}

static PyTypeObject MiddlewareType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flightdeck.asgi._casgi.Middleware",
    .tp_basicsize = sizeof(Middleware),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_dictoffset = offsetof(Middleware, dict),
    .tp_weaklistoffset = offsetof(Middleware, weakreflist),
    .tp_new = Middleware_new,
    .tp_call = (ternaryfunc)Middleware_call,
    .tp_methods = Middleware_methods,
    .tp_members = Middleware_members,
    .tp_getset = Middleware_getset,
    .tp_traverse = (traverseproc)Middleware_traverse,
    .tp_clear = (inquiry)Middleware_clear,
    .tp_dealloc = (destructor)Middleware_dealloc,
    .tp_doc = "The native request path of FlightDeck (its base class).",
};

/* --- module --------------------------------------------------------------------------- */
static PyObject *
mod_trace_id(PyObject *mod, PyObject *value)
{
    if (!PyBytes_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "a bytes header value is required");
        return NULL;
    }
    return trace_id_of(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value));
}
static PyObject *
mod_clock(PyObject *mod, PyObject *unused)
{
    return PyLong_FromLongLong(now_ns());
}

static PyMethodDef mod_methods[] = {
    {"trace_id_of", mod_trace_id, METH_O, "The trace id of a traceparent value, else None."},
    {"clock", mod_clock, METH_NOARGS, "The clock the native path reads (perf_counter_ns's)."},
    {NULL},
};

static struct PyModuleDef casgi_module = {
    PyModuleDef_HEAD_INIT, "flightdeck.asgi._casgi", "FlightDeck's native request path.", -1,
    mod_methods,
};

#define INTERN(var, text)                                                  \
    do {                                                                   \
        if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL; \
    } while (0)

PyMODINIT_FUNC
PyInit__casgi(void)
{
    fd_clock_init();
    INTERN(s_type, "type");
    INTERN(s_http, "http");
    INTERN(s_websocket, "websocket");
    INTERN(s_flightdeck, "flightdeck");
    INTERN(s_path, "path");
    INTERN(s_root_path, "root_path");
    INTERN(s_method, "method");
    INTERN(s_query_string, "query_string");
    INTERN(s_client, "client");
    INTERN(s_headers, "headers");
    INTERN(s_status, "status");
    INTERN(s_more_body, "more_body");
    INTERN(s_code, "code");
    INTERN(s_route, "route");
    INTERN(s_path_format, "path_format");
    INTERN(s_empty, "");
    INTERN(s_WS, "WS");
    INTERN(s_throw, "throw");
    INTERN(s_close, "close");
    INTERN(s_send, "send");
    INTERN(s_emit, "emit");
    INTERN(s_C_API, "_C_API");
    INTERN(s_m_resp_start, "http.response.start");
    INTERN(s_m_resp_body, "http.response.body");
    INTERN(s_m_ws_resp_start, "websocket.http.response.start");
    INTERN(s_m_ws_accept, "websocket.accept");
    INTERN(s_m_ws_close, "websocket.close");
    INTERN(s_m_http_disconnect, "http.disconnect");
    INTERN(s_m_ws_disconnect, "websocket.disconnect");
    if ((i_kind_start = PyLong_FromLong(K_REQ_START)) == NULL) return NULL;
    if ((i_kind_end = PyLong_FromLong(K_REQ_END)) == NULL) return NULL;
    if ((i_kind_error = PyLong_FromLong(K_REQ_ERROR)) == NULL) return NULL;
    PyTypeObject *types[] = {&StateType,   &MiddlewareType, &CallType,     &SendType,
                             &ReceiveType, &RecvAwaitType,  &AsyncCallType};
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        if (PyType_Ready(types[i]) < 0) return NULL;
    PyObject *m = PyModule_Create(&casgi_module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Middleware", (PyObject *)&MiddlewareType) < 0
        || PyModule_AddObjectRef(m, "RequestState", (PyObject *)&StateType) < 0
        || PyModule_AddObjectRef(m, "AsyncCall", (PyObject *)&AsyncCallType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
