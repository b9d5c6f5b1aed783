/* The loop subclass's call_soon and create_task: Handle layout, CallSoon, CreateTask.
 * Part of the _native translation unit: included once, in order, by core/_native.c
 * (one unit keeps the hot helpers inlined across parts). */
#ifndef FD_NATIVE_SCHEDULE_H
#define FD_NATIVE_SCHEDULE_H

/* ------------------------------------------------------------------------------------ */
/* Handle layout: asyncio.events.Handle's __slots__, filled and run without its Python code */

/* The slots CallSoon fills (what Handle.__init__ sets, outside debug mode) and HandleRun
 * reads; offsets are read from the class's member descriptors, so a layout that differs
 * (another Python, a patched asyncio) is detected and the Python constructor is used. */
enum { HS_CALLBACK, HS_ARGS, HS_CANCELLED, HS_LOOP, HS_SOURCE_TB, HS_REPR, HS_CONTEXT, HS_N };
static const char *HS_NAMES[HS_N] = {"_callback",         "_args", "_cancelled", "_loop",
                                     "_source_traceback", "_repr", "_context"};
typedef struct {
    Py_ssize_t off[HS_N];
} HandleLayout;

#define HSLOT(obj, lay, i) (*(PyObject **)((char *)(obj) + (lay)->off[i]))

/* 0 and the layout filled, or -1 (no exception set) when cls is not such a class. */
static int
handle_layout(PyObject *cls, HandleLayout *lay)
{
    if (!PyType_Check(cls)) return -1;
    for (int i = 0; i < HS_N; i++) {
        PyObject *d = PyObject_GetAttrString(cls, HS_NAMES[i]);
        if (!d) {
            PyErr_Clear();
            return -1;
        }
        int ok = Py_IS_TYPE(d, &PyMemberDescr_Type)
                 && ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX;
        if (ok) lay->off[i] = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_DECREF(d);
        if (!ok || lay->off[i] < (Py_ssize_t)sizeof(PyObject)
            || lay->off[i] + (Py_ssize_t)sizeof(PyObject *) > ((PyTypeObject *)cls)->tp_basicsize)
            return -1;
    }
    return 0;
}

/* HandleRun: ``_run`` of a Handle subclass whose handles CallSoon fills; does what
 * Handle._run does (context.run(callback, *args); an exception other than SystemExit and
 * KeyboardInterrupt goes to on_error(handle, exc), which reports it as asyncio does). */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *on_error;
    PyObject *cls; /* the class laid out as lay: _run checks its instance */
    HandleLayout lay;
} HandleRun;

static PyTypeObject HandleRun_Type;

static PyObject *
HandleRun_vectorcall(HandleRun *hr, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames) {
        PyErr_SetString(PyExc_TypeError, "_run() takes no arguments");
        return NULL;
    }
    PyObject *h = args[0];
    if (!PyObject_TypeCheck(h, (PyTypeObject *)hr->cls)) {
        PyErr_SetString(PyExc_TypeError, "_run() of another type");
        return NULL;
    }
    PyObject *cb = HSLOT(h, &hr->lay, HS_CALLBACK), *cargs = HSLOT(h, &hr->lay, HS_ARGS),
             *ctx = HSLOT(h, &hr->lay, HS_CONTEXT);
    PyObject *res;
    if (!cb || !cargs || !PyTuple_Check(cargs) || !ctx) {
        PyErr_SetString(PyExc_AttributeError, "handle not initialised");
        res = NULL;
    } else {
        Py_INCREF(cb);
        Py_INCREF(cargs);
        Py_INCREF(ctx);
        if (PyContext_Enter(ctx) < 0)
            res = NULL;
        else {
            res =
                PyObject_Vectorcall(cb, &PyTuple_GET_ITEM(cargs, 0), PyTuple_GET_SIZE(cargs), NULL);
            if (PyContext_Exit(ctx) < 0) Py_CLEAR(res);
        }
        Py_DECREF(cb);
        Py_DECREF(cargs);
        Py_DECREF(ctx);
    }
    if (res) {
        Py_DECREF(res);
        Py_RETURN_NONE;
    }
    if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
        return NULL;
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc = PyErr_GetRaisedException();
#else
    PyObject *et, *exc, *etb;
    PyErr_Fetch(&et, &exc, &etb);
    PyErr_NormalizeException(&et, &exc, &etb);
    if (exc && etb) PyException_SetTraceback(exc, etb);
    Py_XDECREF(et);
    Py_XDECREF(etb);
#endif
    PyObject *hargs[2] = {h, exc ? exc : Py_None};
    PyObject *r = PyObject_Vectorcall(hr->on_error, hargs, 2, NULL);
    Py_XDECREF(exc);
    if (!r) return NULL; /* the exception handler's own failure propagates, as in asyncio */
    Py_DECREF(r);
    Py_RETURN_NONE;
}

/* tp_descr_get of the callables that bind like a plain method (HandleRun, CreateTask,
 * CallLater): itself from the class, a method object from an instance. CallSoon binds its
 * own way (one BoundCallSoon per loop), which only a CallSoon's layout can hold. */
static PyObject *
bind_as_method(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None) return Py_NewRef(self);
    return PyMethod_New(self, obj);
}

static PyObject *
HandleRun_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"handle_type", "on_error", NULL};
    PyObject *cls, *on_error;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO:HandleRun", kwlist, &cls, &on_error))
        return NULL;
    HandleRun *hr = (HandleRun *)type->tp_alloc(type, 0);
    if (!hr) return NULL;
    if (handle_layout(cls, &hr->lay) < 0) {
        Py_DECREF(hr);
        PyErr_SetString(PyExc_TypeError, "handle_type is not laid out as asyncio.events.Handle");
        return NULL;
    }
    hr->vectorcall = (vectorcallfunc)HandleRun_vectorcall;
    hr->on_error = Py_NewRef(on_error);
    hr->cls = Py_NewRef(cls);
    return (PyObject *)hr;
}

static int
HandleRun_traverse(HandleRun *hr, visitproc visit, void *arg)
{
    Py_VISIT(hr->on_error);
    Py_VISIT(hr->cls);
    return 0;
}
static int
HandleRun_clear(HandleRun *hr)
{
    Py_CLEAR(hr->on_error);
    Py_CLEAR(hr->cls);
    return 0;
}
static void
HandleRun_dealloc(HandleRun *hr)
{
    PyObject_GC_UnTrack(hr);
    HandleRun_clear(hr);
    Py_TYPE(hr)->tp_free((PyObject *)hr);
}

static PyMemberDef HandleRun_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(HandleRun, vectorcall), READONLY, NULL}, {NULL}};

static PyTypeObject HandleRun_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flightdeck.core._native.HandleRun",
    .tp_basicsize = sizeof(HandleRun),
    .tp_dealloc = (destructor)HandleRun_dealloc,
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL
                | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_doc = "HandleRun(handle_type, on_error): Handle._run in C, for the handles CallSoon fills.",
    .tp_traverse = (traverseproc)HandleRun_traverse,
    .tp_clear = (inquiry)HandleRun_clear,
    .tp_members = HandleRun_members,
    .tp_descr_get = bind_as_method,
    .tp_vectorcall_offset = offsetof(HandleRun, vectorcall),
    .tp_new = HandleRun_new,
};

/* ------------------------------------------------------------------------------------ */
/* CallSoon: the loop subclass's call_soon                                               */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    Runner *runner;
    PyObject *base;         /* the base class's call_soon (unbound) */
    PyObject *handle_type;  /* asyncio.events.Handle for the one-frame path, or None */
    PyObject *loop;         /* the loop the two below belong to (borrowed; compared only) */
    PyObject *loop_dict;    /* its __dict__: _debug and _closed read without getattr */
    PyObject *ready_append; /* its _ready.append, bound */
    int fill;               /* handle_type is laid out as Handle: fill its slots (no __init__) */
    HandleLayout lay;
    PyObject *bound; /* a BoundCallSoon for the loop it last bound to, or NULL */
} CallSoon;

static PyTypeObject CallSoon_Type;

#define SMALL_ARGS 12

/* BoundCallSoon: ``loop.call_soon`` as the loop subclass hands it out. A Task looks the
 * method up on every step and wakeup it schedules (with a context: an attribute lookup, then
 * a call), so binding allocates a method object each time; this one is made once per loop
 * and handed out again, and prepends the loop without a method object's extra call. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *cs;   /* the CallSoon */
    PyObject *self; /* the loop */
} BoundCallSoon;

static PyTypeObject BoundCallSoon_Type;
static PyObject *CallSoon_vectorcall(PyObject *cs, PyObject *const *args, size_t nargsf,
                                     PyObject *kwnames);
static PyObject *call_base_step(CallSoon *cs, PyObject *loop, PyObject *const *args,
                                Py_ssize_t nargs, PyObject *kwnames, int64_t tq);
static inline int queued_at(Runner *r, PyObject *cb, int64_t *tq);

static PyObject *
BoundCallSoon_vectorcall(BoundCallSoon *b, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t total = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
    CallSoon *cs = (CallSoon *)b->cs;
    int64_t tq;
    /* a loop of its own (uvloop): a step goes to the base's call_soon as a StepCall, anything
     * else to it as it is (CallSoon would only look at it again) */
    int direct = cs->handle_type == Py_None;
    if (direct && nargs >= 1 && queued_at(cs->runner, args[0], &tq))
        return call_base_step(cs, b->self, args, nargs, kwnames, tq);
    if (nargsf & PY_VECTORCALL_ARGUMENTS_OFFSET) {
        /* the caller lets us use the slot before args (the protocol's promise) */
        PyObject **a = (PyObject **)args - 1;
        PyObject *saved = a[0];
        a[0] = b->self;
        PyObject *res = direct ? PyObject_Vectorcall(cs->base, a, (size_t)(nargs + 1), kwnames)
                               : CallSoon_vectorcall(b->cs, a, (size_t)(nargs + 1), kwnames);
        a[0] = saved;
        return res;
    }
    PyObject *small[SMALL_ARGS];
    PyObject **a =
        total + 1 <= SMALL_ARGS ? small : PyMem_Malloc((size_t)(total + 1) * sizeof(PyObject *));
    if (!a) return PyErr_NoMemory();
    a[0] = b->self;
    for (Py_ssize_t i = 0; i < total; i++) a[i + 1] = args[i];
    PyObject *res = direct ? PyObject_Vectorcall(cs->base, a, (size_t)(nargs + 1), kwnames)
                           : CallSoon_vectorcall(b->cs, a, (size_t)(nargs + 1), kwnames);
    if (a != small) PyMem_Free(a);
    return res;
}

static int
BoundCallSoon_traverse(BoundCallSoon *b, visitproc visit, void *arg)
{
    Py_VISIT(b->cs);
    Py_VISIT(b->self);
    return 0;
}

static int
BoundCallSoon_clear(BoundCallSoon *b)
{
    Py_CLEAR(b->cs);
    Py_CLEAR(b->self);
    return 0;
}

static void
BoundCallSoon_dealloc(BoundCallSoon *b)
{
    PyObject_GC_UnTrack(b);
    BoundCallSoon_clear(b);
    Py_TYPE(b)->tp_free((PyObject *)b);
}

static PyObject *
BoundCallSoon_get_name(BoundCallSoon *b, void *c)
{
    return PyUnicode_FromString("call_soon");
}

static PyMemberDef BoundCallSoon_members[] = {
    {"__self__", T_OBJECT, offsetof(BoundCallSoon, self), READONLY, NULL},
    {"__func__", T_OBJECT, offsetof(BoundCallSoon, cs), READONLY, NULL},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(BoundCallSoon, vectorcall), READONLY, NULL},
    {NULL}};

static PyGetSetDef BoundCallSoon_getset[] = {
    {"__name__", (getter)BoundCallSoon_get_name, NULL, NULL, NULL}, {NULL}};

static PyTypeObject BoundCallSoon_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flightdeck.core._native.BoundCallSoon",
    .tp_basicsize = sizeof(BoundCallSoon),
    .tp_dealloc = (destructor)BoundCallSoon_dealloc,
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "A loop's call_soon, bound to it (made once per loop).",
    .tp_traverse = (traverseproc)BoundCallSoon_traverse,
    .tp_clear = (inquiry)BoundCallSoon_clear,
    .tp_members = BoundCallSoon_members,
    .tp_getset = BoundCallSoon_getset,
    .tp_vectorcall_offset = offsetof(BoundCallSoon, vectorcall),
};

#define SMALL_ARGS 12

static PyObject *
call_base_wrapped(CallSoon *cs, PyObject *loop, PyObject *const *args, Py_ssize_t nargs,
                  PyObject *kwnames, PyObject *tqobj)
{
    /* base(loop, runner, callback, t_queued, *rest, **kw), from args = (callback, *rest, *kw
     * values): the loop comes apart, so that a bound call needs no copy of its own */
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    Py_ssize_t total = nargs + 3 + nkw;
    PyObject *small[SMALL_ARGS + 1];
    PyObject **buf = total + 1 <= SMALL_ARGS + 1
                         ? small
                         : PyMem_Malloc((size_t)(total + 1) * sizeof(PyObject *));
    if (!buf) return PyErr_NoMemory();
    PyObject **a = buf + 1;
    a[0] = loop;
    a[1] = (PyObject *)cs->runner;
    a[2] = args[0];
    a[3] = tqobj;
    for (Py_ssize_t i = 1; i < nargs + nkw; i++) a[i + 3] = args[i];
    PyObject *res = PyObject_Vectorcall(
        cs->base, a, (size_t)(nargs + 3) | PY_VECTORCALL_ARGUMENTS_OFFSET, kwnames);
    if (buf != small) PyMem_Free(buf);
    return res;
}

/* The base's call_soon for a task's step or wakeup, args = (callback, *rest, *kw values):
 * base(loop, StepCall(callback, rest[0]), **kw) when there is at most one argument (a step
 * has none, a wakeup its future), else base(loop, runner, callback, t_queued, *rest, **kw). */
static PyObject *
call_base_step(CallSoon *cs, PyObject *loop, PyObject *const *args, Py_ssize_t nargs,
               PyObject *kwnames, int64_t tq)
{
    if (nargs <= 2) {
        PyObject *sc = stepcall_new(cs->runner, args[0], nargs == 2 ? args[1] : NULL, tq);
        if (!sc) return NULL;
        Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
        PyObject *small[SMALL_ARGS + 1];
        PyObject **buf = nkw + 3 <= SMALL_ARGS + 1
                             ? small
                             : PyMem_Malloc((size_t)(nkw + 3) * sizeof(PyObject *));
        if (!buf) {
            Py_DECREF(sc);
            return PyErr_NoMemory();
        }
        PyObject **a = buf + 1;
        a[0] = loop;
        a[1] = sc;
        for (Py_ssize_t i = 0; i < nkw; i++) a[2 + i] = args[nargs + i];
        PyObject *res =
            PyObject_Vectorcall(cs->base, a, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, kwnames);
        if (buf != small) PyMem_Free(buf);
        Py_DECREF(sc);
        return res;
    }
    PyObject *tqobj = stamp_new(tq);
    if (!tqobj) return NULL;
    PyObject *res = call_base_wrapped(cs, loop, args, nargs, kwnames, tqobj);
    Py_DECREF(tqobj);
    return res;
}

/* 1 and when the callback was queued when it is a task's step or wakeup, else 0. */
static inline int
queued_at(Runner *r, PyObject *cb, int64_t *tq)
{
    if (Py_TYPE(cb) == (PyTypeObject *)r->step_type) {
        *tq = fd_clock();
        return 1;
    }
    if (Py_IS_TYPE(cb, &PyCFunction_Type) && PyCFunction_GET_SELF(cb)
        && strcmp(((PyCFunctionObject *)cb)->m_ml->ml_name, "task_wakeup") == 0) {
        *tq = runner_woken(r);
        return 1;
    }
    return 0;
}

static PyObject *
CallSoon_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    CallSoon *cs = (CallSoon *)self;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 2) return PyObject_Vectorcall(cs->base, args, nargsf, kwnames);
    PyObject *cb = args[1];
    Runner *r = cs->runner;
    int64_t tq;
    if (!queued_at(r, cb, &tq)) return PyObject_Vectorcall(cs->base, args, nargsf, kwnames);
    if (cs->handle_type == Py_None)
        return call_base_step(cs, args[0], args + 1, nargs - 1, kwnames, tq);
    PyObject *tqobj = stamp_new(tq);
    if (!tqobj) {
        PyErr_Clear();
        return PyObject_Vectorcall(cs->base, args, nargsf, kwnames);
    }
    PyObject *loop = args[0];
    PyObject *res = NULL;
    if (cs->handle_type != Py_None) {
        /* asyncio's own loop: do what BaseEventLoop.call_soon does, in this one call. Debug
         * mode, a closed loop and unknown keywords take the original path. */
        PyObject *ctx = Py_None;
        Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
        int ok = nkw == 0
                 || (nkw == 1 && PyUnicode_Compare(PyTuple_GET_ITEM(kwnames, 0), s_context) == 0);
        if (nkw == 1 && ok) ctx = args[nargs];
        if (ok && loop != cs->loop) {
            /* first call for this loop: find its __dict__ and _ready.append once */
            PyObject *d = PyObject_GenericGetDict(loop, NULL);
            PyObject *ready = d ? PyObject_GetAttr(loop, s__ready) : NULL;
            PyObject *app = ready ? PyObject_GetAttr(ready, s_append) : NULL;
            Py_XDECREF(ready);
            if (d && app && PyDict_Check(d)) {
                Py_XSETREF(cs->loop_dict, d);
                Py_XSETREF(cs->ready_append, app);
                cs->loop = loop;
            } else {
                Py_XDECREF(d);
                Py_XDECREF(app);
                PyErr_Clear();
                ok = 0;
            }
        }
        if (ok) {
            /* borrowed references; no Python code runs (str keys) */
            PyObject *dbg = PyDict_GetItemWithError(cs->loop_dict, s__debug);
            PyObject *closed = dbg ? PyDict_GetItemWithError(cs->loop_dict, s__closed) : NULL;
            ok = dbg == Py_False && closed == Py_False;
            if (PyErr_Occurred()) PyErr_Clear();
        }
        if (ok) {
            PyObject *cbargs = PyTuple_New(nargs);
            if (!cbargs) {
                Py_DECREF(tqobj);
                return NULL;
            }
            Py_INCREF(cb);
            PyTuple_SET_ITEM(cbargs, 0, cb);
            Py_INCREF(tqobj);
            PyTuple_SET_ITEM(cbargs, 1, tqobj);
            for (Py_ssize_t i = 2; i < nargs; i++) {
                Py_INCREF(args[i]);
                PyTuple_SET_ITEM(cbargs, i, args[i]);
            }
            PyObject *handle;
            if (cs->fill) {
                /* what Handle.__init__ sets outside debug mode, without running it */
                PyObject *c = ctx == Py_None ? PyContext_CopyCurrent() : Py_NewRef(ctx);
                handle = c ? PyType_GenericAlloc((PyTypeObject *)cs->handle_type, 0) : NULL;
                if (handle) {
                    HandleLayout *lay = &cs->lay;
                    HSLOT(handle, lay, HS_CALLBACK) = Py_NewRef((PyObject *)r);
                    HSLOT(handle, lay, HS_ARGS) = Py_NewRef(cbargs);
                    HSLOT(handle, lay, HS_CANCELLED) = Py_NewRef(Py_False);
                    HSLOT(handle, lay, HS_LOOP) = Py_NewRef(loop);
                    HSLOT(handle, lay, HS_SOURCE_TB) = Py_NewRef(Py_None);
                    HSLOT(handle, lay, HS_REPR) = Py_NewRef(Py_None);
                    HSLOT(handle, lay, HS_CONTEXT) = c;
                } else
                    Py_XDECREF(c);
            } else {
                PyObject *hargs[5] = {NULL, (PyObject *)r, cbargs, loop, ctx};
                handle = PyObject_Vectorcall(cs->handle_type, hargs + 1,
                                             4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            }
            Py_DECREF(cbargs);
            if (handle) {
                PyObject *ok2 = PyObject_CallOneArg(cs->ready_append, handle);
                if (!ok2) Py_CLEAR(handle);
                Py_XDECREF(ok2);
            }
            Py_DECREF(tqobj);
            return handle;
        }
    }
    Py_DECREF(tqobj);
    res = call_base_step(cs, loop, args + 1, nargs - 1, kwnames, tq);
    return res;
}

static PyObject *
CallSoon_descr_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None) {
        Py_INCREF(self);
        return self;
    }
    if (!Py_IS_TYPE(self, &CallSoon_Type)) return PyMethod_New(self, obj); /* not our layout */
    CallSoon *cs = (CallSoon *)self;
    BoundCallSoon *b = (BoundCallSoon *)cs->bound;
    if (b && b->self == obj) return Py_NewRef((PyObject *)b);
    b = PyObject_GC_New(BoundCallSoon, &BoundCallSoon_Type);
    if (!b) return NULL;
    b->vectorcall = (vectorcallfunc)BoundCallSoon_vectorcall;
    b->cs = Py_NewRef(self);
    b->self = Py_NewRef(obj);
    PyObject_GC_Track(b);
    /* kept for the next lookup: a cycle (loop -> its class -> this -> loop) the collector
     * breaks, and that forget() breaks at once when the hook is taken off */
    Py_XSETREF(cs->bound, Py_NewRef((PyObject *)b));
    return (PyObject *)b;
}

static PyObject *
CallSoon_forget(CallSoon *cs, PyObject *Py_UNUSED(ignored))
{
    Py_CLEAR(cs->bound);
    Py_RETURN_NONE;
}

static PyMethodDef CallSoon_methods[] = {
    {"forget", (PyCFunction)CallSoon_forget, METH_NOARGS, "Drop the loop it is bound to."}, {NULL}};

static int
CallSoon_traverse(CallSoon *cs, visitproc visit, void *arg)
{
    Py_VISIT(cs->runner);
    Py_VISIT(cs->base);
    Py_VISIT(cs->handle_type);
    Py_VISIT(cs->loop_dict);
    Py_VISIT(cs->ready_append);
    Py_VISIT(cs->bound);
    return 0;
}

static int
CallSoon_clear(CallSoon *cs)
{
    Py_CLEAR(cs->bound);
    Py_CLEAR(cs->runner);
    Py_CLEAR(cs->base);
    Py_CLEAR(cs->handle_type);
    Py_CLEAR(cs->loop_dict);
    Py_CLEAR(cs->ready_append);
    cs->loop = NULL;
    return 0;
}

static void
CallSoon_dealloc(CallSoon *cs)
{
    PyObject_GC_UnTrack(cs);
    CallSoon_clear(cs);
    Py_TYPE(cs)->tp_free((PyObject *)cs);
}

static PyObject *
CallSoon_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"runner", "base", "handle_type", NULL};
    PyObject *runner, *base, *handle_type = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!O|O:CallSoon", kwlist, &Runner_Type, &runner,
                                     &base, &handle_type))
        return NULL;
    CallSoon *cs = (CallSoon *)type->tp_alloc(type, 0);
    if (!cs) return NULL;
    cs->vectorcall = CallSoon_vectorcall;
    Py_INCREF(runner);
    cs->runner = (Runner *)runner;
    Py_INCREF(base);
    cs->base = base;
    Py_INCREF(handle_type);
    cs->handle_type = handle_type;
    /* Filled without __init__ only for a subclass that runs through HandleRun (it carries
     * the same layout): asyncio's own Handle keeps its constructor. */
    if (handle_type != Py_None && PyType_Check(handle_type)) {
        PyObject *run = PyObject_GetAttrString(handle_type, "_run");
        cs->fill = run && Py_IS_TYPE(run, &HandleRun_Type)
                   && handle_layout(handle_type, &cs->lay) == 0
                   && ((PyTypeObject *)handle_type)->tp_itemsize == 0;
        Py_XDECREF(run);
        PyErr_Clear();
    }
    return (PyObject *)cs;
}

static PyMemberDef CallSoon_members[] = {
    {"runner", T_OBJECT, offsetof(CallSoon, runner), READONLY, NULL},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(CallSoon, vectorcall), READONLY, NULL},
    {NULL}};

static PyTypeObject CallSoon_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flightdeck.core._native.CallSoon",
    .tp_basicsize = sizeof(CallSoon),
    .tp_dealloc = (destructor)CallSoon_dealloc,
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL
                | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_doc = "A loop's call_soon that times task steps and wakeups (binds like a method).",
    .tp_traverse = (traverseproc)CallSoon_traverse,
    .tp_clear = (inquiry)CallSoon_clear,
    .tp_members = CallSoon_members,
    .tp_methods = CallSoon_methods,
    .tp_descr_get = CallSoon_descr_get,
    .tp_vectorcall_offset = offsetof(CallSoon, vectorcall),
    .tp_new = CallSoon_new,
};

/* ------------------------------------------------------------------------------------ */
/* CreateTask: the loop subclass's create_task, recording TASK_CREATE                    */

#define SITE_CACHE 64

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    Runner *runner;
    PyObject *base;          /* the base class's create_task (unbound) */
    PyObject *current_task;  /* asyncio.current_task */
    PyObject *request_var;   /* the ContextVar holding the current request id */
    PyObject *done_cb;       /* added to a task that finished inside create_task (eager) */
    PyObject *skip_prefix;   /* asyncio's directory: frames there are not the creation site */
    PyObject *current_tasks; /* 3.11: asyncio.tasks._current_tasks (loop -> task), or NULL:
                             * current_task() is a Python function there */
    Py_ssize_t max_live;
    /* Whether a code object is asyncio's (its file under skip_prefix), by the code object:
     * the walk to the creation site passes the same few frames each time (create_task,
     * ensure_future, gather). Direct-mapped; each entry holds its code object, so that an
     * address is never taken for another code object's. */
    PyObject *site_code[SITE_CACHE];
    char site_inside[SITE_CACHE];
    PyObject *coro_type, *coro_descr; /* the coroutine type whose __qualname__ getter is kept */
} CreateTask;

static PyTypeObject CreateTask_Type;
static PyObject *s_get, *s_add_done_callback;

/* (function, file, line) of the first frame outside asyncio, or None; new reference. */
static PyObject *
creation_site(CreateTask *ct)
{
    PyFrameObject *f = PyEval_GetFrame();
    Py_XINCREF(f);
    Py_ssize_t plen = PyUnicode_GET_LENGTH(ct->skip_prefix);
    while (f) {
        PyCodeObject *code = PyFrame_GetCode(f);
        size_t slot = ((uintptr_t)code >> 4) % SITE_CACHE;
        int inside;
        if (ct->site_code[slot] == (PyObject *)code)
            inside = ct->site_inside[slot];
        else {
            inside = PyUnicode_Tailmatch(code->co_filename, ct->skip_prefix, 0, plen, -1) == 1;
            Py_XSETREF(ct->site_code[slot], Py_NewRef((PyObject *)code));
            ct->site_inside[slot] = (char)inside;
        }
        if (!inside) {
            PyObject *site = frame_site(f, code);
            Py_DECREF(code);
            Py_DECREF(f);
            return site;
        }
        Py_DECREF(code);
        PyFrameObject *back = PyFrame_GetBack(f);
        Py_DECREF(f);
        f = back;
    }
    Py_RETURN_NONE;
}

FD_NOINLINE static int
create_record(CreateTask *ct, PyObject *loop, PyObject *coro, PyObject *context, PyObject *task)
{
    Runner *r = ct->runner;
    PyObject *parent = NULL, *name = NULL, *coro_name = NULL, *rid = NULL, *site = NULL, *ev = NULL,
             *done = NULL;
    int rc = -1;
    uint64_t raw = (uint64_t)(uintptr_t)task;
    if (ct->current_tasks) {
        parent = PyDict_GetItemWithError(ct->current_tasks, loop);
        if (!parent && PyErr_Occurred()) goto out;
        parent = Py_NewRef(parent ? parent : Py_None);
    } else
        parent = PyObject_CallOneArg(ct->current_task, loop);
    if (!parent) goto out;
    int64_t t = fd_clock();
    name = task_method(r, task, 1);
    if (!name) goto out;
    coro_name = coro ? getset_attr(coro, s___qualname__, &ct->coro_type, &ct->coro_descr) : NULL;
    if (!coro_name || !PyUnicode_Check(coro_name)) {
        PyErr_Clear();
        Py_XDECREF(coro_name);
        coro_name = PyObject_GetAttr((PyObject *)Py_TYPE(coro ? coro : Py_None), s___qualname__);
        if (!coro_name) goto out;
    }
    if (context == NULL || context == Py_None) {
        if (PyContextVar_Get(ct->request_var, Py_None, &rid) < 0) goto out;
    } else {
        /* the task runs in ``context``: its request is that context's */
        rid = PyObject_CallMethodOneArg(context, s_get, ct->request_var);
        if (!rid) goto out;
    }
    site = creation_site(ct);
    if (!site) goto out;
    if (!r->live && task_record_layout_ok && (rid == Py_None || PyLong_CheckExact(rid))
        && PyUnicode_CheckExact(name) && PyUnicode_CheckExact(coro_name)
        && (site == Py_None || PyTuple_CheckExact(site))) {
        /* the common case: recorded from C values, kept as the window's live task */
        int64_t parent_raw = (parent == Py_None || parent == task) ? 0 : (int64_t)(uintptr_t)parent;
        ev = task_record_new(t, (int64_t)raw, parent_raw, name, coro_name, rid, site);
        if (!ev) goto out;
        Window *w = r->win;
        int wr = win_write(w, enc_task_create, ev);
        if (wr == 0 && !w->busy) {
            w->busy = 1;
            win_task_live(w, raw + 2, ev);
            w->busy = 0;
        }
        if (wr != E_BAD) goto recorded;
        Py_CLEAR(ev); /* a value out of its layout: the tuple's generic form, below */
    }
    PyObject *parent_id =
        (parent == Py_None || parent == task) ? Py_None : PyLong_FromVoidPtr(parent);
    if (!parent_id) goto out;
    PyObject *tv = PyLong_FromLongLong(t), *tidv = PyLong_FromVoidPtr(task);
    ev = (tv && tidv) ? PyTuple_New(8) : NULL;
    if (!ev) {
        Py_XDECREF(tv);
        Py_XDECREF(tidv);
        if (parent_id != Py_None) Py_DECREF(parent_id);
        goto out;
    }
    Py_INCREF(KIND_OBJ[K_TASK_CREATE]);
    PyTuple_SET_ITEM(ev, 0, KIND_OBJ[K_TASK_CREATE]);
    PyTuple_SET_ITEM(ev, 1, tv);
    PyTuple_SET_ITEM(ev, 2, tidv);
    Py_INCREF(name);
    PyTuple_SET_ITEM(ev, 3, name);
    Py_INCREF(coro_name);
    PyTuple_SET_ITEM(ev, 4, coro_name);
    if (parent_id == Py_None) Py_INCREF(parent_id);
    PyTuple_SET_ITEM(ev, 5, parent_id);
    Py_INCREF(rid);
    PyTuple_SET_ITEM(ev, 6, rid);
    Py_INCREF(site);
    PyTuple_SET_ITEM(ev, 7, site);
    /* It lives as long as its task (live and status tables) and cannot be part of a cycle
     * (ints, strs, None, a tuple of those; the site is untracked where it is made): keep it
     * out of the cyclic GC's work. */
    if (PyLong_CheckExact(rid) || rid == Py_None) PyObject_GC_UnTrack(ev);
    win_append(r->win, ev);
recorded:
    done = task_done(r, task);
    if (!done) goto out;
    if (done == Py_True) {
        /* eager_start: it ran to completion inside create_task(). Recorded from a done
         * callback (scheduled right away): create_task() on 3.11/3.12 names the task only
         * after this returns. */
        PyObject *res = PyObject_CallMethodOneArg(task, s_add_done_callback, ct->done_cb);
        if (!res) goto out;
        Py_DECREF(res);
    } else {
        /* the window's own table took it in win_append (r->live NULL: the runner was
         * given the window's live_tasks); a separate dict only when one was given */
        if (r->live && PyDict_GET_SIZE(r->live) < ct->max_live) { /* ev: the tuple */
            PyObject *key = PyTuple_GET_ITEM(ev, 2);
            if (PyDict_SetItem(r->live, key, ev) < 0) goto out;
        }
        /* an eager task's next step is a wakeup: its wait counts from here */
        if (u64tab_put(&r->last_end, raw + 2, t) < 0) {
            PyErr_NoMemory();
            goto out;
        }
    }
    rc = 0;
out:
    if (rc < 0) {
        PyErr_Clear();
        r->errors++;
    }
    Py_XDECREF(parent);
    Py_XDECREF(name);
    Py_XDECREF(coro_name);
    Py_XDECREF(rid);
    Py_XDECREF(site);
    Py_XDECREF(ev);
    Py_XDECREF(done);
    return rc;
}

static PyObject *
CreateTask_vectorcall(CreateTask *ct, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    PyObject *task = PyObject_Vectorcall(ct->base, args, nargsf, kwnames);
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (!task || nargs < 1) return task;
    PyObject *context = NULL;
    if (kwnames) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
            PyObject *k = PyTuple_GET_ITEM(kwnames, i);
            if (k == s_context || PyUnicode_Compare(k, s_context) == 0) context = args[nargs + i];
        }
        PyErr_Clear();
    }
    create_record(ct, args[0], nargs >= 2 ? args[1] : NULL, context, task);
    return task;
}

static int
CreateTask_traverse(CreateTask *ct, visitproc visit, void *arg)
{
    Py_VISIT(ct->runner);
    Py_VISIT(ct->base);
    Py_VISIT(ct->current_task);
    Py_VISIT(ct->request_var);
    Py_VISIT(ct->done_cb);
    Py_VISIT(ct->skip_prefix);
    Py_VISIT(ct->current_tasks);
    for (int i = 0; i < SITE_CACHE; i++) Py_VISIT(ct->site_code[i]);
    Py_VISIT(ct->coro_type);
    Py_VISIT(ct->coro_descr);
    return 0;
}

static int
CreateTask_clear(CreateTask *ct)
{
    Py_CLEAR(ct->runner);
    Py_CLEAR(ct->base);
    Py_CLEAR(ct->current_task);
    Py_CLEAR(ct->request_var);
    Py_CLEAR(ct->done_cb);
    Py_CLEAR(ct->skip_prefix);
    Py_CLEAR(ct->current_tasks);
    for (int i = 0; i < SITE_CACHE; i++) Py_CLEAR(ct->site_code[i]);
    Py_CLEAR(ct->coro_type);
    Py_CLEAR(ct->coro_descr);
    return 0;
}

static void
CreateTask_dealloc(CreateTask *ct)
{
    PyObject_GC_UnTrack(ct);
    CreateTask_clear(ct);
    Py_TYPE(ct)->tp_free((PyObject *)ct);
}

static PyObject *
CreateTask_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"runner",      "base",          "current_task",
                             "request_var", "done_callback", "skip_prefix",
                             "max_live",    "current_tasks", NULL};
    PyObject *runner, *base, *current_task, *request_var, *done_cb, *skip_prefix;
    PyObject *current_tasks = Py_None;
    Py_ssize_t max_live;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!OOO!OUn|$O:CreateTask", kwlist, &Runner_Type,
                                     &runner, &base, &current_task, &PyContextVar_Type,
                                     &request_var, &done_cb, &skip_prefix, &max_live,
                                     &current_tasks))
        return NULL;
    if (current_tasks != Py_None && !PyDict_CheckExact(current_tasks)) {
        PyErr_SetString(PyExc_TypeError, "current_tasks must be a dict or None");
        return NULL;
    }
    CreateTask *ct = (CreateTask *)type->tp_alloc(type, 0);
    if (!ct) return NULL;
    ct->vectorcall = (vectorcallfunc)CreateTask_vectorcall;
    Py_INCREF(runner);
    ct->runner = (Runner *)runner;
    Py_INCREF(base);
    ct->base = base;
    Py_INCREF(current_task);
    ct->current_task = current_task;
    Py_INCREF(request_var);
    ct->request_var = request_var;
    Py_INCREF(done_cb);
    ct->done_cb = done_cb;
    Py_INCREF(skip_prefix);
    ct->skip_prefix = skip_prefix;
    ct->max_live = max_live;
    ct->current_tasks = current_tasks == Py_None ? NULL : Py_NewRef(current_tasks);
    return (PyObject *)ct;
}

static PyMemberDef CreateTask_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(CreateTask, vectorcall), READONLY, NULL}, {NULL}};

static PyTypeObject CreateTask_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flightdeck.core._native.CreateTask",
    .tp_basicsize = sizeof(CreateTask),
    .tp_dealloc = (destructor)CreateTask_dealloc,
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL
                | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_doc = "A loop's create_task that records TASK_CREATE (binds like a method).",
    .tp_traverse = (traverseproc)CreateTask_traverse,
    .tp_clear = (inquiry)CreateTask_clear,
    .tp_members = CreateTask_members,
    .tp_descr_get = bind_as_method,
    .tp_vectorcall_offset = offsetof(CreateTask, vectorcall),
    .tp_new = CreateTask_new,
};

/* ------------------------------------------------------------------------------------ */
/* CallLater: the loop subclass's call_later                                             */

/* asyncio.sleep()'s timer (``call_later(delay, sleep_done, future, result)``) is scheduled as
 * ``timer_fired(t_due, future, result)``, so that the task it wakes counts as woken when the
 * timer fell due, not when an overdue timer finally ran. Every other timer (a server's
 * keep-alive timeout on each response, say) goes to the base's call_later unchanged, without
 * a Python frame. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *base;        /* the base class's call_later (unbound) */
    PyObject *sleep_done;  /* the callback asyncio.sleep() schedules, or None */
    PyObject *timer_fired; /* timer_fired(t_due, *args) */
} CallLater;

static PyObject *
CallLater_vectorcall(CallLater *cl, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    /* (loop, delay, callback, *args) */
    if (nargs < 3 || args[2] != cl->sleep_done || cl->sleep_done == Py_None)
        return PyObject_Vectorcall(cl->base, args, nargsf, kwnames);
    double delay = PyFloat_AsDouble(args[1]);
    if (delay == -1.0 && PyErr_Occurred()) {
        /* not a number: let the base refuse it as it would have */
        PyErr_Clear();
        return PyObject_Vectorcall(cl->base, args, nargsf, kwnames);
    }
    if (!(delay > 0)) delay = 0;  /* negative and NaN: due now */
    if (delay > 1e9) delay = 1e9; /* about 31 years: no overflow */
    PyObject *due = PyLong_FromLongLong(fd_clock() + (int64_t)(delay * 1e9));
    if (!due) return NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    Py_ssize_t total = nargs + 1 + nkw;
    PyObject *small[SMALL_ARGS];
    PyObject **a = total <= SMALL_ARGS ? small : PyMem_Malloc((size_t)total * sizeof(PyObject *));
    if (!a) {
        Py_DECREF(due);
        return PyErr_NoMemory();
    }
    a[0] = args[0];
    a[1] = args[1];
    a[2] = cl->timer_fired;
    a[3] = due;
    for (Py_ssize_t i = 3; i < nargs + nkw; i++) a[i + 1] = args[i];
    PyObject *res = PyObject_Vectorcall(cl->base, a, (size_t)(nargs + 1), kwnames);
    if (a != small) PyMem_Free(a);
    Py_DECREF(due);
    return res;
}

static int
CallLater_traverse(CallLater *cl, visitproc visit, void *arg)
{
    Py_VISIT(cl->base);
    Py_VISIT(cl->sleep_done);
    Py_VISIT(cl->timer_fired);
    return 0;
}

static int
CallLater_clear(CallLater *cl)
{
    Py_CLEAR(cl->base);
    Py_CLEAR(cl->sleep_done);
    Py_CLEAR(cl->timer_fired);
    return 0;
}

static void
CallLater_dealloc(CallLater *cl)
{
    PyObject_GC_UnTrack(cl);
    CallLater_clear(cl);
    Py_TYPE(cl)->tp_free((PyObject *)cl);
}

static PyObject *
CallLater_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"base", "sleep_done", "timer_fired", NULL};
    PyObject *base, *sleep_done, *timer_fired;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO:CallLater", kwlist, &base, &sleep_done,
                                     &timer_fired))
        return NULL;
    if (!PyCallable_Check(base) || !PyCallable_Check(timer_fired)) {
        PyErr_SetString(PyExc_TypeError, "CallLater: base and timer_fired must be callable");
        return NULL;
    }
    CallLater *cl = (CallLater *)type->tp_alloc(type, 0);
    if (!cl) return NULL;
    cl->vectorcall = (vectorcallfunc)CallLater_vectorcall;
    cl->base = Py_NewRef(base);
    cl->sleep_done = Py_NewRef(sleep_done);
    cl->timer_fired = Py_NewRef(timer_fired);
    return (PyObject *)cl;
}

static PyMemberDef CallLater_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(CallLater, vectorcall), READONLY, NULL}, {NULL}};

static PyTypeObject CallLater_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flightdeck.core._native.CallLater",
    .tp_basicsize = sizeof(CallLater),
    .tp_dealloc = (destructor)CallLater_dealloc,
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL
                | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_doc = "A loop's call_later that stamps asyncio.sleep()'s timer with its due time "
              "(binds like a method).",
    .tp_traverse = (traverseproc)CallLater_traverse,
    .tp_clear = (inquiry)CallLater_clear,
    .tp_members = CallLater_members,
    .tp_descr_get = bind_as_method,
    .tp_vectorcall_offset = offsetof(CallLater, vectorcall),
    .tp_new = CallLater_new,
};

#endif /* FD_NATIVE_SCHEDULE_H */
