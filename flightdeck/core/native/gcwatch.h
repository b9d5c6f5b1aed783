/* GcWatch: the gc.callbacks entry that records long collections (instrument/gc.py's on_gc).
 * Part of the _native translation unit: included once, in order, by core/_native.c.
 *
 * The collector calls every callback twice a collection, with a dict it builds; a Python
 * callback adds a frame to each call, on whichever thread collects (young collections come
 * every few hundred allocations). This one reads the clock at the start and, at the stop,
 * emits the GC event only when the collection lasted at least the threshold. */
#ifndef FD_NATIVE_GCWATCH_H
#define FD_NATIVE_GCWATCH_H

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *sink; /* its ``errors`` counts what could not be recorded */
    PyObject *emit; /* sink.emit, bound once (as the Python callback does) */
    PyObject *kind; /* the GC event's kind (events.GC) */
    int64_t threshold_ns;
    int64_t t0; /* the running collection's start, or 0 */
    Py_ssize_t pauses;
} GcWatch;

static PyTypeObject GcWatch_Type;

/* sink.errors += 1; never raises (a sink without the counter is left alone). */
static void
gcwatch_error(GcWatch *g)
{
    PyErr_Clear();
    PyObject *n = PyObject_GetAttrString(g->sink, "errors");
    PyObject *one = n ? PyLong_FromLong(1) : NULL;
    PyObject *n1 = one ? PyNumber_Add(n, one) : NULL;
    if (!n1 || PyObject_SetAttrString(g->sink, "errors", n1) < 0) PyErr_Clear();
    Py_XDECREF(n);
    Py_XDECREF(one);
    Py_XDECREF(n1);
}

/* An int of the info dict (``default`` when missing), or -1 with an exception. */
static int
gcwatch_info(PyObject *info, const char *key, long long dflt, long long *out)
{
    PyObject *v = PyDict_Check(info) ? PyDict_GetItemString(info, key) : NULL; /* borrowed */
    if (!v) {
        *out = dflt;
        return 0;
    }
    *out = PyLong_AsLongLong(v);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

/* (phase, info): "start" notes the time; "stop" emits (GC, t0, t1, generation, collected)
 * when the collection took at least the threshold. Never raises. */
static PyObject *
GcWatch_vectorcall(GcWatch *g, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 2 || kwnames || !PyUnicode_Check(args[0])) Py_RETURN_NONE;
    PyObject *phase = args[0];
    /* "start" and "stop": told apart by length, as the collector passes nothing else */
    if (PyUnicode_GET_LENGTH(phase) == 5) {
        g->t0 = fd_clock();
        Py_RETURN_NONE;
    }
    int64_t t0 = g->t0;
    g->t0 = 0;
    if (!t0) Py_RETURN_NONE;
    int64_t t1 = fd_clock();
    if (t1 - t0 < g->threshold_ns) Py_RETURN_NONE;
    g->pauses++;
    long long gen, collected;
    if (gcwatch_info(args[1], "generation", -1, &gen) < 0
        || gcwatch_info(args[1], "collected", 0, &collected) < 0) {
        gcwatch_error(g);
        Py_RETURN_NONE;
    }
    PyObject *ev = Py_BuildValue("(OLLLL)", g->kind, (long long)t0, (long long)t1, gen, collected);
    PyObject *r = ev ? PyObject_CallOneArg(g->emit, ev) : NULL;
    Py_XDECREF(ev);
    if (!r)
        gcwatch_error(g);
    else
        Py_DECREF(r);
    Py_RETURN_NONE;
}

static PyObject *
GcWatch_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"sink", "kind", "threshold_ns", NULL};
    PyObject *sink, *kind;
    long long threshold;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOL:GcWatch", kwlist, &sink, &kind, &threshold))
        return NULL;
    PyObject *emit = PyObject_GetAttrString(sink, "emit");
    if (!emit) return NULL;
    GcWatch *g = (GcWatch *)type->tp_alloc(type, 0);
    if (!g) {
        Py_DECREF(emit);
        return NULL;
    }
    g->vectorcall = (vectorcallfunc)GcWatch_vectorcall;
    g->sink = Py_NewRef(sink);
    g->emit = emit;
    g->kind = Py_NewRef(kind);
    g->threshold_ns = threshold;
    return (PyObject *)g;
}

static int
GcWatch_traverse(GcWatch *g, visitproc visit, void *arg)
{
    Py_VISIT(g->sink);
    Py_VISIT(g->emit);
    Py_VISIT(g->kind);
    return 0;
}

static int
GcWatch_clear(GcWatch *g)
{
    Py_CLEAR(g->sink);
    Py_CLEAR(g->emit);
    Py_CLEAR(g->kind);
    return 0;
}

static void
GcWatch_dealloc(GcWatch *g)
{
    PyObject_GC_UnTrack(g);
    GcWatch_clear(g);
    Py_TYPE(g)->tp_free((PyObject *)g);
}

static PyMemberDef GcWatch_members[] = {
    {"pauses", T_PYSSIZET, offsetof(GcWatch, pauses), READONLY,
     "collections recorded (those of at least the threshold)"},
    {"threshold_ns", T_LONGLONG, offsetof(GcWatch, threshold_ns), READONLY, NULL},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(GcWatch, vectorcall), READONLY, NULL},
    {NULL}};

static PyTypeObject GcWatch_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flightdeck.core._native.GcWatch",
    .tp_basicsize = sizeof(GcWatch),
    .tp_dealloc = (destructor)GcWatch_dealloc,
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "GcWatch(sink, kind, threshold_ns): a gc.callbacks entry that emits "
              "(kind, t0, t1, generation, collected) for collections of at least the threshold.",
    .tp_traverse = (traverseproc)GcWatch_traverse,
    .tp_clear = (inquiry)GcWatch_clear,
    .tp_members = GcWatch_members,
    .tp_vectorcall_offset = offsetof(GcWatch, vectorcall),
    .tp_new = GcWatch_new,
};

#endif /* FD_NATIVE_GCWATCH_H */
