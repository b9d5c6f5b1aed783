/* Await chains and StepRunner: the callable that times each task step or wakeup.
 * Part of the _native translation unit: included once, in order, by core/_native.c
 * (one unit keeps the hot helpers inlined across parts). */
#ifndef FD_NATIVE_RUNNER_H
#define FD_NATIVE_RUNNER_H

/* ------------------------------------------------------------------------------------ */
/* await chains                                                                          */

/* (code, instruction offset) -> (function, file, line): computing a frame's line walks its
 * line table, and tasks are created and wait at the same few places. Two ways per set, the
 * newest first, under a multiplicative hash: an await chain of a dozen frames (a streamed
 * response's, walked at each cancellation) used to evict its own entries from a small
 * direct-mapped table and paid for every line again. Holds its code objects and tuples
 * (LINE_SETS * 2 entries at most). */
#define LINE_SETS 256
typedef struct {
    PyObject *code;
    int lasti;
    PyObject *site;
} LineEntry;
static LineEntry line_cache[LINE_SETS][2];

static inline uint32_t
line_set(PyCodeObject *code, int lasti)
{
    uint64_t h = ((uint64_t)(uintptr_t)code >> 4) ^ ((uint64_t)(uint32_t)lasti << 32);
    h *= 0x9E3779B97F4A7C15ull;
    return (uint32_t)(h >> 56) & (LINE_SETS - 1);
}

/* The frame's (co_qualname, co_filename, line or None); new reference, NULL on error. */
static PyObject *
frame_site(PyFrameObject *f, PyCodeObject *code)
{
    int lasti = PyFrame_GetLasti(f);
    LineEntry *set = line_cache[line_set(code, lasti)];
    for (int w = 0; w < 2; w++)
        if (set[w].code == (PyObject *)code && set[w].lasti == lasti) return Py_NewRef(set[w].site);
    int line = PyFrame_GetLineNumber(f);
    PyObject *site = line < 0
                         ? Py_BuildValue("(OOO)", code->co_qualname, code->co_filename, Py_None)
                         : Py_BuildValue("(OOi)", code->co_qualname, code->co_filename, line);
    if (!site) return NULL;
    /* strs and an int: no cycle is possible, keep it out of the collector's work */
    PyObject_GC_UnTrack(site);
    /* the older way goes; the newer moves over */
    PyObject *old_code = set[1].code, *old_site = set[1].site;
    set[1] = set[0];
    set[0].code = Py_NewRef((PyObject *)code);
    set[0].site = Py_NewRef(site);
    set[0].lasti = lasti;
    Py_XDECREF(old_code);
    Py_XDECREF(old_site);
    return site;
}

#if PY_VERSION_HEX < 0x030D0000
#define PyObject_GetOptionalAttr _PyObject_LookupAttr
#endif

static PyObject *s_cr_frame, *s_gi_frame, *s_cr_await, *s_gi_yieldfrom, *s_get_coro;

/* The chain walk reads four attributes of each object: by name, through the generic
 * lookup, a dozen frames cost ~10k instructions a walk. For an immutable type whose
 * attribute lookup is the generic one, what each name resolves to is fixed: a getset
 * descriptor (coroutines', generators', whose getters are data descriptors and so win over
 * an instance dict), nothing at all (no such attribute and no instance dict), or something
 * else (looked up by name, as before). Resolved once per type, in a small direct-mapped
 * table that holds its types. */
enum { A_CR_FRAME, A_GI_FRAME, A_CR_AWAIT, A_GI_YIELDFROM, N_CHAIN_ATTRS };
enum { HOW_NAME, HOW_ABSENT, HOW_GETTER };
#define CHAIN_TYPES 32
typedef struct {
    PyTypeObject *type;
    char how[N_CHAIN_ATTRS];
    getter get[N_CHAIN_ATTRS];
    void *closure[N_CHAIN_ATTRS];
} ChainType;
static ChainType chain_types[CHAIN_TYPES];

/* The names, by A_*: the interned strings themselves (set at module init). */
static PyObject **const chain_name[N_CHAIN_ATTRS] = {&s_cr_frame, &s_gi_frame, &s_cr_await,
                                                     &s_gi_yieldfrom};

/* How ``t`` resolves each name (an entry of chain_types, or NULL: by name, not cached). */
static ChainType *
chain_type(PyTypeObject *t)
{
    uint64_t h = ((uint64_t)(uintptr_t)t >> 4) * 0x9E3779B97F4A7C15ull;
    ChainType *e = &chain_types[(h >> 59) & (CHAIN_TYPES - 1)];
    if (e->type == t) return e;
    if (!PyType_HasFeature(t, Py_TPFLAGS_IMMUTABLETYPE)
        || t->tp_getattro != PyObject_GenericGetAttr)
        return NULL;
    ChainType fresh = {.type = t};
    for (int i = 0; i < N_CHAIN_ATTRS; i++) {
        PyObject *d = NULL;
        fresh.how[i] = HOW_NAME;
        if (PyObject_GetOptionalAttr((PyObject *)t, *chain_name[i], &d) < 0) {
            PyErr_Clear();
            continue;
        }
        if (!d) {
            if (t->tp_dictoffset == 0) fresh.how[i] = HOW_ABSENT;
        } else if (Py_IS_TYPE(d, &PyGetSetDescr_Type)
                   && ((PyGetSetDescrObject *)d)->d_common.d_type == t
                   && ((PyGetSetDescrObject *)d)->d_getset->get) {
            fresh.how[i] = HOW_GETTER;
            fresh.get[i] = ((PyGetSetDescrObject *)d)->d_getset->get;
            fresh.closure[i] = ((PyGetSetDescrObject *)d)->d_getset->closure;
        }
        Py_XDECREF(d);
    }
    Py_INCREF(t);
    PyTypeObject *old = e->type;
    *e = fresh;
    Py_XDECREF(old);
    return e;
}

/* ``getattr(o, a, None) or getattr(o, b, None)``: a new reference, or NULL for none (an
 * error reading either is taken as none: this only describes, it never raises). */
static PyObject *
attr_or(PyObject *o, int a, int b)
{
    ChainType *ct = chain_type(Py_TYPE(o)); /* never leaves an error set */
    for (int i = 0; i < 2; i++) {
        int which = i ? b : a;
        PyObject *v = NULL;
        int how = ct ? ct->how[which] : HOW_NAME;
        if (how == HOW_ABSENT) continue;
        if (how == HOW_GETTER) {
            v = ct->get[which](o, ct->closure[which]);
            if (!v) {
                PyErr_Clear();
                continue;
            }
        } else if (PyObject_GetOptionalAttr(o, *chain_name[which], &v) < 0) {
            PyErr_Clear();
            continue;
        }
        if (!v) continue;
        int truth = PyObject_IsTrue(v);
        if (truth > 0) return v;
        if (truth < 0) PyErr_Clear();
        Py_DECREF(v);
    }
    return NULL;
}

/* Where a suspended coroutine waits: ``(function, file, line)`` per frame of its await chain,
 * innermost last; the native twin of instrument/frames.py ``await_chain`` (same walk, same
 * tuples), with lines from the cache above. New reference, or NULL on memory errors. */
static PyObject *
chain_of(PyObject *coro, Py_ssize_t limit)
{
    /* the sites gathered on the stack (one tuple at the end, no list) unless the limit is
     * beyond what the hook asks for */
    PyObject *small[64];
    if (limit > 1 << 16) limit = 1 << 16; /* deeper than any recursion limit */
    PyObject **items = limit <= 64 ? small : PyMem_Malloc((size_t)limit * sizeof(PyObject *));
    if (!items) return PyErr_NoMemory();
    Py_ssize_t n = 0, hops = 0;
    PyObject *res = NULL;
    Py_XINCREF(coro);
    while (coro && coro != Py_None && n < limit && hops < 4 * limit) {
        hops++;
        PyObject *frame = attr_or(coro, A_CR_FRAME, A_GI_FRAME);
        if (frame && PyFrame_Check(frame)) {
            PyCodeObject *code = PyFrame_GetCode((PyFrameObject *)frame);
            PyObject *item = frame_site((PyFrameObject *)frame, code);
            Py_DECREF(code);
            if (!item) {
                Py_DECREF(frame);
                Py_DECREF(coro);
                goto out;
            }
            items[n++] = item;
        }
        PyObject *following = attr_or(coro, A_CR_AWAIT, A_GI_YIELDFROM);
        Py_DECREF(coro);
        coro = following;
        if (!frame && !following) break;
        Py_XDECREF(frame);
    }
    Py_XDECREF(coro);
    res = PyTuple_New(n);
    if (res) {
        for (Py_ssize_t i = 0; i < n; i++) PyTuple_SET_ITEM(res, i, items[i]);
        n = 0;
    }
out:
    for (Py_ssize_t i = 0; i < n; i++) Py_DECREF(items[i]);
    if (items != small) PyMem_Free(items);
    return res;
}

static PyObject *
mod_await_chain(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t limit = 48;
    if (nargs < 1 || nargs > 2 || (nargs == 2 && (limit = PyLong_AsSsize_t(args[1])) < 0)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "await_chain(coro, limit=48)");
        return NULL;
    }
    return chain_of(args[0], limit);
}

/* ------------------------------------------------------------------------------------ */
/* StepRunner: times task steps and wakeups (one per instrumented loop, reused)          */

/* The records of the hook kept out of line: rare per step, and callgrind then shows each
 * one's cost apart (benchmarks/bench_instr.py's breakdown). */
#if defined(__GNUC__)
#define FD_NOINLINE __attribute__((noinline))
#else
#define FD_NOINLINE
#endif

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    Window *win;
    PyObject *live;      /* a live_tasks dict, popped when a task finishes, or NULL: the
                          * window's own table (it keeps it from the events) */
    PyObject *wait_cb;   /* wait_cb(task, tid, prev_end, t_queued): a long suspension */
    PyObject *step_type; /* TaskStepMethWrapper */
    int64_t wait_ns;
    long long due; /* set while asyncio.sleep's timer runs (see instrument/loop.py) */
    long long errors;
    long long steps;
    int self_offset_ok;  /* -1 unknown, 0 use __self__, 1 read the wrapper's first field */
    U64Tab last_end;     /* tid -> end of its last step */
    PyObject *done_type; /* the task type whose ``done`` is cached below */
    PyObject *done_meth; /* type(task).done, called as done_meth(task): no lookup per step */
    PyObject *slow_cb;   /* slow_cb(task, tid, t0, t1): a step longer than slow_ns */
    int64_t slow_ns;
    PyObject *cancel_begin; /* cancel_begin(task) -> state: a wakeup by a cancelled future */
    PyObject *cancel_end;   /* cancel_end(task, tid, t_queued, state), after its step */
    PyObject *fut_type;     /* the future type whose ``cancelled`` is cached below */
    PyObject *fut_cancelled;
    int native_wait;     /* record TASK_WAIT here (its await chain natively), not wait_cb */
    PyObject *meth_type; /* the task type whose cancelled and get_name are cached below */
    PyObject *meth[3];   /* cancelled, get_name, get_coro */
    PyObject *exc_type, *exc_descr; /* the task type whose _exception getter is kept */
} Runner;

static PyTypeObject Runner_Type;

/* Stamp: when a step or wakeup was queued, as call_soon passes it to the runner among the
 * handle's arguments (every step: an int object each would be allocated and freed through
 * the object allocator; these come from a free list). int(stamp) and repr are the time. */
typedef struct {
    PyObject_HEAD
    int64_t t;
} Stamp;

static PyTypeObject Stamp_Type;
#define STAMP_FREE_MAX 256
static Stamp *stamp_free[STAMP_FREE_MAX];
static int stamp_nfree;

static PyObject *
stamp_new(int64_t t)
{
    Stamp *st;
    if (stamp_nfree > 0) {
        st = stamp_free[--stamp_nfree];
        _Py_NewReference((PyObject *)st);
    } else {
        st = PyObject_New(Stamp, &Stamp_Type);
        if (!st) return NULL;
    }
    st->t = t;
    return (PyObject *)st;
}

static void
Stamp_dealloc(Stamp *st)
{
    if (stamp_nfree < STAMP_FREE_MAX)
        stamp_free[stamp_nfree++] = st;
    else
        PyObject_Free(st);
}

static PyObject *
Stamp_int(Stamp *st)
{
    return PyLong_FromLongLong(st->t);
}

static PyObject *
Stamp_repr(Stamp *st)
{
    return PyUnicode_FromFormat("%lld", (long long)st->t);
}

static PyNumberMethods Stamp_as_number = {.nb_int = (unaryfunc)Stamp_int,
                                          .nb_index = (unaryfunc)Stamp_int};

static PyTypeObject Stamp_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flightdeck.core._native.Stamp",
    .tp_basicsize = sizeof(Stamp),
    .tp_dealloc = (destructor)Stamp_dealloc,
    .tp_repr = (reprfunc)Stamp_repr,
    .tp_as_number = &Stamp_as_number,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "When a task's step or wakeup was queued (perf_counter_ns), for its runner.",
};

/* A time the runner was given: a Stamp, or an int (the Python hook's). */
static inline int
stamp_value(PyObject *v, int64_t *t)
{
    if (Py_IS_TYPE(v, &Stamp_Type)) {
        *t = ((Stamp *)v)->t;
        return 0;
    }
    return exact_i64(v, t);
}

/* meth(self) for a method of self's type without arguments: a C method (METH_NOARGS, a
 * method descriptor of a type self is an instance of) is called directly, without the
 * descriptor's vectorcall and its checks; anything else through vectorcall. */
static inline PyObject *
call_noargs(PyObject *meth, PyObject *self)
{
    if (Py_IS_TYPE(meth, &PyMethodDescr_Type)) {
        PyMethodDescrObject *d = (PyMethodDescrObject *)meth;
        if ((d->d_method->ml_flags & ~METH_COEXIST) == METH_NOARGS
            && (Py_TYPE(self) == d->d_common.d_type
                || PyType_IsSubtype(Py_TYPE(self), d->d_common.d_type)))
            return d->d_method->ml_meth(self, NULL);
    }
    return PyObject_Vectorcall(meth, &self, 1, NULL);
}

/* obj.<name> where type(obj) is immutable and the name is one of its getset descriptors
 * (``_exception`` of a C Task, ``__qualname__`` of a coroutine): the getter, called
 * directly; the lookup is kept per type in *type and *descr. Anything else: getattr. */
static PyObject *
getset_attr(PyObject *obj, PyObject *name, PyObject **type, PyObject **descr)
{
    PyTypeObject *tp = Py_TYPE(obj);
    if ((PyObject *)tp != *type) {
        PyObject *d = (tp->tp_flags & Py_TPFLAGS_IMMUTABLETYPE) ? _PyType_Lookup(tp, name) : NULL;
        Py_XSETREF(*descr, d && Py_IS_TYPE(d, &PyGetSetDescr_Type) ? Py_NewRef(d) : NULL);
        Py_XSETREF(*type, Py_NewRef((PyObject *)tp));
    }
    if (*descr) {
        PyGetSetDef *gs = ((PyGetSetDescrObject *)*descr)->d_getset;
        if (gs->get) return gs->get(obj, gs->closure);
    }
    return PyObject_GetAttr(obj, name);
}
static PyObject *s_done, *s_cancelled, *s_get_name, *s__exception, *s___self__, *s__debug,
    *s__closed, *s__ready, *s_append, *s_context, *s_state_done, *s_state_cancelled, *s_state_error,
    *s___qualname__;

static inline int64_t
runner_woken(Runner *r)
{
    int64_t now = fd_clock();
    int64_t due = r->due;
    return (due > 0 && due < now) ? due : now;
}

static PyObject *
step_task(Runner *r, PyObject *cb)
{
    /* TaskStepMethWrapper's first field is its task (3.11-3.13); checked once against
     * __self__, else __self__ is used. */
    if (r->self_offset_ok == 1) {
        PyObject *t = *(PyObject **)((char *)cb + sizeof(PyObject));
        Py_XINCREF(t);
        return t;
    }
    PyObject *t = PyObject_GetAttr(cb, s___self__);
    if (!t) return NULL;
    if (r->self_offset_ok == -1) {
        PyObject *raw = *(PyObject **)((char *)cb + sizeof(PyObject));
        r->self_offset_ok = raw == t ? 1 : 0;
    }
    return t;
}

/* task.done(), with the method looked up once per task type; new reference or NULL. */
static PyObject *
task_done(Runner *r, PyObject *task)
{
    if ((PyObject *)Py_TYPE(task) != r->done_type) {
        PyObject *m = PyObject_GetAttr((PyObject *)Py_TYPE(task), s_done);
        if (!m) return NULL;
        Py_XSETREF(r->done_meth, m);
        Py_INCREF(Py_TYPE(task));
        Py_XSETREF(r->done_type, (PyObject *)Py_TYPE(task));
    }
    return call_noargs(r->done_meth, task);
}

/* fut.cancelled() (looked up once per future type); new reference, NULL if it has none. */
static PyObject *
fut_is_cancelled(Runner *r, PyObject *fut)
{
    if ((PyObject *)Py_TYPE(fut) != r->fut_type) {
        PyObject *m = PyObject_GetAttr((PyObject *)Py_TYPE(fut), s_cancelled);
        if (!m) return NULL;
        Py_XSETREF(r->fut_cancelled, m);
        Py_INCREF(Py_TYPE(fut));
        Py_XSETREF(r->fut_type, (PyObject *)Py_TYPE(fut));
    }
    return PyObject_Vectorcall(r->fut_cancelled, &fut, 1, NULL);
}

/* task.cancelled() (which 0), task.get_name() (1) or task.get_coro() (2), looked up once
 * per task type. */
static PyObject *
task_method(Runner *r, PyObject *task, int which)
{
    if ((PyObject *)Py_TYPE(task) != r->meth_type) {
        PyObject *c = PyObject_GetAttr((PyObject *)Py_TYPE(task), s_cancelled);
        PyObject *n = c ? PyObject_GetAttr((PyObject *)Py_TYPE(task), s_get_name) : NULL;
        PyObject *g = n ? PyObject_GetAttr((PyObject *)Py_TYPE(task), s_get_coro) : NULL;
        if (!g) {
            Py_XDECREF(c);
            Py_XDECREF(n);
            return NULL;
        }
        Py_XSETREF(r->meth[0], c);
        Py_XSETREF(r->meth[1], n);
        Py_XSETREF(r->meth[2], g);
        Py_XSETREF(r->meth_type, Py_NewRef((PyObject *)Py_TYPE(task)));
    }
    return call_noargs(r->meth[which], task);
}

FD_NOINLINE static void
runner_done(Runner *r, PyObject *task, uint64_t raw, int64_t t)
{
    u64tab_del(&r->last_end, raw + 2);
    PyObject *key = NULL; /* its id as an int: only for a dict of live tasks or a tuple */
    if (r->live && PyDict_GET_SIZE(r->live)) {
        /* the window's own table (r->live NULL) is kept by win_task_done, below */
        key = PyLong_FromUnsignedLongLong(raw);
        if (!key) {
            PyErr_Clear();
            r->errors++;
            return;
        }
        if (PyDict_DelItem(r->live, key) < 0) PyErr_Clear();
    }
    PyObject *state = NULL, *exc_name = Py_None, *name = NULL, *exc = NULL;
    PyObject *c = task_method(r, task, 0);
    if (!c) goto fail;
    if (c == Py_True)
        state = s_state_cancelled;
    else {
        exc = getset_attr(task, s__exception, &r->exc_type, &r->exc_descr);
        if (!exc) goto fail;
        if (exc == Py_None)
            state = s_state_done;
        else {
            state = s_state_error;
            exc_name = PyObject_GetAttr((PyObject *)Py_TYPE(exc), s___qualname__);
            if (!exc_name) goto fail;
        }
    }
    name = task_method(r, task, 1);
    if (!name) goto fail;
    /* written from these values, no tuple (the tuple only for a name that is not a str) */
    TaskDone d = {t, (int64_t)raw, state, exc_name, name};
    if (win_task_done(r->win, &d) == 0) goto out;
    if (!key && !(key = PyLong_FromUnsignedLongLong(raw))) goto fail;
    PyObject *tv = PyLong_FromLongLong(t);
    PyObject *ev = tv ? PyTuple_New(6) : NULL;
    if (!ev) {
        Py_XDECREF(tv);
        goto fail;
    }
    PyObject *items[6] = {KIND_OBJ[K_TASK_DONE], tv, key, state, exc_name, name};
    for (int i = 0; i < 6; i++) {
        if (i != 1) Py_INCREF(items[i]);
        PyTuple_SET_ITEM(ev, i, items[i]);
    }
    win_append(r->win, ev);
    Py_DECREF(ev);
    goto out;
fail:
    PyErr_Clear();
    r->errors++;
out:
    Py_XDECREF(c);
    Py_XDECREF(exc);
    if (exc_name != Py_None) Py_XDECREF(exc_name);
    Py_XDECREF(name);
    Py_XDECREF(key);
}

/* TASK_WAIT (t_prev_end, t_queued, tid, await chain): a suspension past wait_ns, described
 * where it waited, before the wakeup runs. Counts and drops on error. */
FD_NOINLINE static void
runner_wait(Runner *r, PyObject *task, uint64_t raw, int64_t prev, int64_t tq)
{
    PyObject *coro = task_method(r, task, 2);
    PyObject *chain = coro ? chain_of(coro, 48) : NULL;
    Py_XDECREF(coro);
    PyObject *tp = chain ? PyLong_FromLongLong(prev) : NULL;
    PyObject *tqv = tp ? PyLong_FromLongLong(tq) : NULL;
    PyObject *tid = tqv ? PyLong_FromUnsignedLongLong(raw) : NULL;
    PyObject *ev = tid ? PyTuple_New(5) : NULL;
    if (!ev) {
        Py_XDECREF(chain);
        Py_XDECREF(tp);
        Py_XDECREF(tqv);
        Py_XDECREF(tid);
        PyErr_Clear();
        r->errors++;
        return;
    }
    PyTuple_SET_ITEM(ev, 0, Py_NewRef(KIND_OBJ[K_TASK_WAIT]));
    PyTuple_SET_ITEM(ev, 1, tp);
    PyTuple_SET_ITEM(ev, 2, tqv);
    PyTuple_SET_ITEM(ev, 3, tid);
    PyTuple_SET_ITEM(ev, 4, chain);
    win_append(r->win, ev);
    Py_DECREF(ev);
}

/* Run callback(*rest), a task's step or wakeup queued at tq, and record it. */
static PyObject *
runner_run(Runner *r, PyObject *cb, int64_t tq, PyObject *const *rest, Py_ssize_t nrest)
{
    PyObject *task = NULL;
    int wakeup = 0;
    if (Py_TYPE(cb) == (PyTypeObject *)r->step_type)
        task = step_task(r, cb);
    else if (PyCFunction_Check(cb)) {
        task = PyCFunction_GET_SELF(cb);
        Py_XINCREF(task);
        wakeup = 1;
    }
    if (!task) {
        /* not a task's callback after all: run it as it is */
        if (PyErr_Occurred()) {
            PyErr_Clear();
            r->errors++;
        }
        return PyObject_Vectorcall(cb, rest, nrest, NULL);
    }
    uint64_t raw = (uint64_t)(uintptr_t)task;
    if (wakeup && r->wait_cb != Py_None) {
        U64Slot *sl = u64tab_get(&r->last_end, raw + 2);
        if (sl && tq - sl->val > r->wait_ns && r->native_wait)
            runner_wait(r, task, raw, sl->val, tq);
        else if (sl && tq - sl->val > r->wait_ns) {
            PyObject *res = PyObject_CallFunction(r->wait_cb, "OKLL", task, (unsigned long long)raw,
                                                  (long long)sl->val, (long long)tq);
            if (!res) {
                PyErr_Clear();
                r->errors++;
            }
            Py_XDECREF(res);
        }
    }
    PyObject *cstate = NULL;
    if (wakeup && nrest >= 1 && r->cancel_begin != Py_None) {
        /* what it awaited was cancelled: where it was delivered (Python, rare) */
        PyObject *c = fut_is_cancelled(r, rest[0]);
        if (!c)
            PyErr_Clear(); /* a foreign future without cancelled(): an ordinary wakeup */
        else {
            if (c == Py_True) {
                cstate = PyObject_CallOneArg(r->cancel_begin, task);
                if (!cstate) {
                    PyErr_Clear();
                    r->errors++;
                    cstate = Py_None;
                    Py_INCREF(cstate);
                }
            }
            Py_DECREF(c);
        }
    }
    int64_t t0 = fd_clock();
    fd_step_begin(t0, raw); /* for BlockWatch, which cannot take the GIL */
    PyObject *res = PyObject_Vectorcall(cb, rest, nrest, NULL);
    fd_step_end();
    int64_t t1 = fd_clock();
    r->steps++;
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *saved = res ? NULL : PyErr_GetRaisedException();
#else
    PyObject *st, *sv, *stb;
    if (!res) PyErr_Fetch(&st, &sv, &stb);
#endif
    win_step(r->win, t0, t1, raw, tq);
    if (cstate) {
        PyObject *x = cstate == Py_None
                          ? NULL
                          : PyObject_CallFunction(r->cancel_end, "OKLO", task,
                                                  (unsigned long long)raw, (long long)tq, cstate);
        if (!x && cstate != Py_None) {
            PyErr_Clear();
            r->errors++;
        }
        Py_XDECREF(x);
        Py_DECREF(cstate);
    }
    if (t1 - t0 > r->slow_ns && r->slow_cb != Py_None) {
        PyObject *x = PyObject_CallFunction(r->slow_cb, "OKLL", task, (unsigned long long)raw,
                                            (long long)t0, (long long)t1);
        if (!x) {
            PyErr_Clear();
            r->errors++;
        }
        Py_XDECREF(x);
    }
    PyObject *done = task_done(r, task);
    if (!done) {
        PyErr_Clear();
        r->errors++;
    } else if (done == Py_True)
        runner_done(r, task, raw, t1);
    else if (u64tab_put(&r->last_end, raw + 2, t1) < 0) {
        PyErr_Clear();
        r->errors++;
    }
    Py_XDECREF(done);
    Py_DECREF(task);
#if PY_VERSION_HEX >= 0x030C0000
    if (!res) PyErr_SetRaisedException(saved);
#else
    if (!res) PyErr_Restore(st, sv, stb);
#endif
    return res;
}

/* runner(callback, t_queued, *args): run a step or a wakeup and record it. */
static PyObject *
Runner_vectorcall(Runner *r, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 2 || kwnames) {
        PyErr_SetString(PyExc_TypeError, "StepRunner(callback, t_queued, *args)");
        return NULL;
    }
    int64_t tq;
    if (stamp_value(args[1], &tq) < 0) tq = 0;
    return runner_run(r, args[0], tq, args + 2, nargs - 2);
}

/* StepCall: one step or wakeup as the loop's handle runs it, called without arguments: the
 * runner, the task's callback, its argument (a wakeup's future) and when it was queued. For
 * a loop whose call_soon is its own (uvloop): its handle then holds no argument tuple and
 * calls this without one. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    Runner *runner;
    PyObject *cb;
    PyObject *arg; /* or NULL */
    int64_t tq;
} StepCall;

static PyTypeObject StepCall_Type;
static PyObject *StepCall_vectorcall(StepCall *sc, PyObject *const *args, size_t nargsf,
                                     PyObject *kwnames);

/* Freed calls kept for reuse (untracked, cleared): one is made and freed for every step. */
#define STEPCALL_FREE_MAX 256
static StepCall *stepcall_free[STEPCALL_FREE_MAX];
static int stepcall_nfree;

static PyObject *
stepcall_new(Runner *r, PyObject *cb, PyObject *arg, int64_t tq)
{
    StepCall *sc;
    if (stepcall_nfree > 0) {
        sc = stepcall_free[--stepcall_nfree];
        _Py_NewReference((PyObject *)sc);
    } else {
        sc = PyObject_GC_New(StepCall, &StepCall_Type);
        if (!sc) return NULL;
    }
    sc->vectorcall = (vectorcallfunc)StepCall_vectorcall;
    sc->runner = (Runner *)Py_NewRef((PyObject *)r);
    sc->cb = Py_NewRef(cb);
    sc->arg = Py_XNewRef(arg);
    sc->tq = tq;
    PyObject_GC_Track(sc);
    return (PyObject *)sc;
}

static PyObject *
StepCall_vectorcall(StepCall *sc, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 0 || (kwnames && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "a task's step takes no arguments");
        return NULL;
    }
    if (!sc->runner || !sc->cb) {
        PyErr_SetString(PyExc_RuntimeError, "step already cleared");
        return NULL;
    }
    /* held across the step: the handle may be the last owner of this call */
    Py_INCREF(sc);
    PyObject *rest[1] = {sc->arg};
    PyObject *res = runner_run(sc->runner, sc->cb, sc->tq, rest, sc->arg ? 1 : 0);
    Py_DECREF(sc);
    return res;
}

static int
StepCall_traverse(StepCall *sc, visitproc visit, void *arg)
{
    Py_VISIT(sc->runner);
    Py_VISIT(sc->cb);
    Py_VISIT(sc->arg);
    return 0;
}

static int
StepCall_clear(StepCall *sc)
{
    Py_CLEAR(sc->runner);
    Py_CLEAR(sc->cb);
    Py_CLEAR(sc->arg);
    return 0;
}

static void
StepCall_dealloc(StepCall *sc)
{
    PyObject_GC_UnTrack(sc);
    StepCall_clear(sc);
    if (stepcall_nfree < STEPCALL_FREE_MAX)
        stepcall_free[stepcall_nfree++] = sc;
    else
        PyObject_GC_Del(sc);
}

static PyObject *
StepCall_repr(StepCall *sc)
{
    return PyUnicode_FromFormat("<step of %R queued at %lld>", sc->cb ? sc->cb : Py_None,
                                (long long)sc->tq);
}

static PyTypeObject StepCall_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flightdeck.core._native.StepCall",
    .tp_basicsize = sizeof(StepCall),
    .tp_dealloc = (destructor)StepCall_dealloc,
    .tp_repr = (reprfunc)StepCall_repr,
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "A task's step or wakeup, timed and recorded by its runner when called.",
    .tp_traverse = (traverseproc)StepCall_traverse,
    .tp_clear = (inquiry)StepCall_clear,
    .tp_vectorcall_offset = offsetof(StepCall, vectorcall),
};

static int
Runner_traverse(Runner *r, visitproc visit, void *arg)
{
    Py_VISIT(r->win);
    Py_VISIT(r->live);
    Py_VISIT(r->wait_cb);
    Py_VISIT(r->step_type);
    Py_VISIT(r->done_type);
    Py_VISIT(r->done_meth);
    Py_VISIT(r->slow_cb);
    Py_VISIT(r->cancel_begin);
    Py_VISIT(r->cancel_end);
    Py_VISIT(r->fut_type);
    Py_VISIT(r->fut_cancelled);
    Py_VISIT(r->meth_type);
    Py_VISIT(r->meth[0]);
    Py_VISIT(r->meth[1]);
    Py_VISIT(r->meth[2]);
    Py_VISIT(r->exc_type);
    Py_VISIT(r->exc_descr);
    return 0;
}

static int
Runner_clear(Runner *r)
{
    Py_CLEAR(r->win);
    Py_CLEAR(r->live);
    Py_CLEAR(r->wait_cb);
    Py_CLEAR(r->step_type);
    Py_CLEAR(r->done_type);
    Py_CLEAR(r->done_meth);
    Py_CLEAR(r->slow_cb);
    Py_CLEAR(r->cancel_begin);
    Py_CLEAR(r->cancel_end);
    Py_CLEAR(r->fut_type);
    Py_CLEAR(r->fut_cancelled);
    Py_CLEAR(r->meth_type);
    Py_CLEAR(r->meth[0]);
    Py_CLEAR(r->meth[1]);
    Py_CLEAR(r->meth[2]);
    Py_CLEAR(r->exc_type);
    Py_CLEAR(r->exc_descr);
    return 0;
}

static void
Runner_dealloc(Runner *r)
{
    PyObject_GC_UnTrack(r);
    Runner_clear(r);
    u64tab_free(&r->last_end);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static PyObject *
Runner_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"window",     "live_tasks",  "wait_cb", "wait_ns",
                             "step_type",  "slow_cb",     "slow_ns", "cancel_begin",
                             "cancel_end", "native_wait", NULL};
    PyObject *win, *live, *wait_cb, *step_type;
    PyObject *slow_cb = Py_None, *cancel_begin = Py_None, *cancel_end = Py_None;
    long long wait_ns, slow_ns = 0;
    int native_wait = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!OOLO!|$OLOOp:StepRunner", kwlist, &Window_Type,
                                     &win, &live, &wait_cb, &wait_ns, &PyType_Type, &step_type,
                                     &slow_cb, &slow_ns, &cancel_begin, &cancel_end, &native_wait))
        return NULL;
    /* the window's own live tasks: it keeps them from the events (no table here) */
    int shared = Py_IS_TYPE(live, &LiveTasks_Type) && ((LiveTasks *)live)->win == (Window *)win;
    if (!shared && !PyDict_Check(live)) {
        PyErr_SetString(PyExc_TypeError, "live_tasks must be a dict or the window's live_tasks");
        return NULL;
    }
    Runner *r = (Runner *)type->tp_alloc(type, 0);
    if (!r) return NULL;
    r->vectorcall = (vectorcallfunc)Runner_vectorcall;
    Py_INCREF(win);
    r->win = (Window *)win;
    r->live = shared ? NULL : Py_NewRef(live);
    Py_INCREF(wait_cb);
    r->wait_cb = wait_cb;
    Py_INCREF(step_type);
    r->step_type = step_type;
    r->wait_ns = wait_ns;
    r->self_offset_ok = -1;
    Py_INCREF(slow_cb);
    r->slow_cb = slow_cb;
    Py_INCREF(cancel_begin);
    r->cancel_begin = cancel_begin;
    Py_INCREF(cancel_end);
    r->cancel_end = cancel_end;
    r->slow_ns = slow_ns;
    r->native_wait = native_wait;
    return (PyObject *)r;
}

static PyObject *
Runner_forget(Runner *r, PyObject *Py_UNUSED(ignored))
{
    u64tab_free(&r->last_end);
    Py_RETURN_NONE;
}

static PyObject *
Runner_track(Runner *r, PyObject *const *args, Py_ssize_t nargs)
{
    /* track(tid, t): a task whose next step is a wakeup (an eager task after its first step) */
    int64_t tid, t;
    if (nargs != 2 || exact_i64(args[0], &tid) < 0 || exact_i64(args[1], &t) < 0) {
        PyErr_SetString(PyExc_TypeError, "track(tid: int, t: int)");
        return NULL;
    }
    if (u64tab_put(&r->last_end, (uint64_t)tid + 2, t) < 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *
Runner_get_tracked(Runner *r, void *c)
{
    return PyLong_FromLong((long)r->last_end.n);
}

static PyMethodDef Runner_methods[] = {
    {"forget", (PyCFunction)Runner_forget, METH_NOARGS, "Drop the per-task table."},
    {"track", (PyCFunction)(void (*)(void))Runner_track, METH_FASTCALL,
     "track(tid, t): the end of a task's last step, kept for its next wakeup."},
    {NULL}};

static PyMemberDef Runner_members[] = {
    {"due", T_LONGLONG, offsetof(Runner, due), 0, "the due time of the sleep timer running, or 0"},
    {"errors", T_LONGLONG, offsetof(Runner, errors), READONLY, NULL},
    {"steps", T_LONGLONG, offsetof(Runner, steps), READONLY, NULL},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(Runner, vectorcall), READONLY, NULL},
    {NULL}};

static PyGetSetDef Runner_getset[] = {
    {"tracked", (getter)Runner_get_tracked, NULL, "tasks whose last step end is kept", NULL},
    {NULL}};

static PyTypeObject Runner_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flightdeck.core._native.StepRunner",
    .tp_basicsize = sizeof(Runner),
    .tp_dealloc = (destructor)Runner_dealloc,
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Runs a task step or wakeup and records it; one per instrumented loop.",
    .tp_traverse = (traverseproc)Runner_traverse,
    .tp_clear = (inquiry)Runner_clear,
    .tp_methods = Runner_methods,
    .tp_members = Runner_members,
    .tp_getset = Runner_getset,
    .tp_vectorcall_offset = offsetof(Runner, vectorcall),
    .tp_new = Runner_new,
};

#endif /* FD_NATIVE_RUNNER_H */
