/* TaskFeed: the snapshot builder's task table and its hot event kinds, in C.
 * Part of the _native translation unit: included once, in order, by core/_native.c
 * (one unit keeps the hot helpers inlined across parts).
 *
 * snapshot/build.py's `_Builder` is the reference: its task table (`TaskTable`) and the
 * branches of `feed` for TASK_CREATE, TASK_STEP, TASK_DONE and TASK_WAIT. A window is
 * mostly those four kinds; decoding them into tuples and feeding the tuples to Python cost
 * a few microseconds an event. Here a generation's records go straight into the
 * document's task records (the very dicts the Python builder makes, in the same key
 * order, steps already as their `[start, duration, waited, ready]` rows), and every other
 * kind is handed back to Python as its tuple, in order, for the reference `feed` (which
 * reaches this table through `task`, `task_at`, `create` and `new_task`). Floats are the
 * reference's own: `(t + offset) / 1e9` is a double division of the int rounded to a
 * double, as Python's int / float is.
 *
 * Records this table does not expect (a task id that is not an int, a site or stack of
 * another shape than the recorder writes) raise ValueError: the Python side then builds the
 * whole document with the reference builder, so odd or corrupt input gives the reference's
 * result or error, never a different document. */
#ifndef FD_NATIVE_BUILDER_H
#define FD_NATIVE_BUILDER_H

typedef struct {
    int64_t created;
    PyObject *rec; /* strong */
} TOlder;

typedef struct {
    int64_t raw;
    PyObject *rec;   /* strong; NULL while the record is being made */
    PyObject *steps; /* borrowed from rec (its "steps" list) */
    int64_t created_ns, last_end;
    uint8_t used, has_created, has_last, known;
    TOlder *older; /* earlier tasks that had this raw id, oldest first */
    Py_ssize_t nolder, older_cap;
} TEntry;

typedef struct {
    PyObject_HEAD
    int64_t offset;
    Py_ssize_t n;       /* tasks made (their uids are t1 .. tn) */
    PyObject *tasks;    /* uid -> record, in the reference's order */
    PyObject *status;   /* raw -> status TASK_CREATE tuple (the reference's status_tasks) */
    PyObject *stack_fn; /* build._stack */
    PyObject *site_fn;  /* build._site */
    TEntry *tab;
    size_t mask, used;
    int64_t t_min;
    int has_t_min;
    Py_ssize_t fed; /* records read, of every kind */
    /* the generation being fed */
    Segment *seg;
    Dec d;
} TaskFeed;

static PyTypeObject TaskFeed_Type;
static PyObject *tf_template;      /* a task record's keys, in the reference's order */
static PyObject *tf_site_template; /* a site's */
static PyObject *s_k_id, *s_k_name, *s_k_coro, *s_k_parent, *s_k_request, *s_k_created, *s_k_site,
    *s_k_done, *s_k_state, *s_k_error, *s_k_steps, *s_k_awaiting, *s_k_waits, *s_k_start,
    *s_k_duration, *s_k_stack, *s_k_function, *s_k_file, *s_k_line, *s_pending;

static inline double
tf_sec(int64_t ns)
{
    return (double)ns / 1e9;
}

static inline size_t
tf_hash(int64_t raw)
{
    uint64_t x = (uint64_t)raw;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (size_t)x;
}

static int
tf_grow(TaskFeed *f)
{
    size_t cap = f->mask ? (f->mask + 1) * 2 : 1024;
    TEntry *tab = PyMem_Calloc(cap, sizeof(TEntry));
    if (!tab) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; f->mask && i <= f->mask; i++) {
        if (!f->tab[i].used) continue;
        size_t j = tf_hash(f->tab[i].raw) & (cap - 1);
        while (tab[j].used) j = (j + 1) & (cap - 1);
        tab[j] = f->tab[i];
    }
    PyMem_Free(f->tab);
    f->tab = tab;
    f->mask = cap - 1;
    return 0;
}

/* The entry of `raw`, or NULL; with `add`, a new empty one (used, no record) if missing. */
static TEntry *
tf_find(TaskFeed *f, int64_t raw, int add)
{
    if (f->mask) {
        size_t i = tf_hash(raw) & f->mask;
        while (f->tab[i].used) {
            if (f->tab[i].raw == raw) return &f->tab[i];
            i = (i + 1) & f->mask;
        }
    }
    if (!add) return NULL;
    if ((f->used + 1) * 4 > (f->mask + 1) * 3 || !f->mask) {
        if (tf_grow(f) < 0) return NULL;
    }
    size_t i = tf_hash(raw) & f->mask;
    while (f->tab[i].used) i = (i + 1) & f->mask;
    f->used++;
    TEntry *e = &f->tab[i];
    memset(e, 0, sizeof(*e));
    e->used = 1;
    e->raw = raw;
    return e;
}

static PyObject *
tf_unsupported(const char *what)
{
    PyErr_Format(PyExc_ValueError, "task feed: unexpected record (%s)", what);
    return NULL;
}

/* A task id from a record: an int that fits int64, else ValueError (see the top). */
static int
tf_raw(PyObject *o, int64_t *out)
{
    if (!PyLong_CheckExact(o)) {
        tf_unsupported("task id");
        return -1;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow || (v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        tf_unsupported("task id");
        return -1;
    }
    *out = v;
    return 0;
}

static int
tf_int(PyObject *o, int64_t *out)
{
    return tf_raw(o, out);
}

/* The reference's `{"function": f[0], "file": f[1], "line": f[2]} if site else None`:
 * the recorder's 3-tuples here, anything else through build._site. */
static PyObject *
tf_site(TaskFeed *f, PyObject *site)
{
    if (site == Py_None) Py_RETURN_NONE;
    if (PyTuple_CheckExact(site) && PyTuple_GET_SIZE(site) == 3) {
        PyObject *d = PyDict_Copy(tf_site_template);
        if (!d) return NULL;
        if (PyDict_SetItem(d, s_k_function, PyTuple_GET_ITEM(site, 0)) < 0
            || PyDict_SetItem(d, s_k_file, PyTuple_GET_ITEM(site, 1)) < 0
            || PyDict_SetItem(d, s_k_line, PyTuple_GET_ITEM(site, 2)) < 0) {
            Py_DECREF(d);
            return NULL;
        }
        return d;
    }
    return PyObject_CallOneArg(f->site_fn, site);
}

static PyObject *tf_task(TaskFeed *f, int64_t raw);

/* "t<n>", the reference's f"t{n}" */
static PyObject *
tf_uid(Py_ssize_t n)
{
    char digits[24];
    int len = 0;
    size_t v = (size_t)n;
    do {
        digits[len++] = (char)('0' + v % 10);
        v /= 10;
    } while (v && len < 23);
    PyObject *s = PyUnicode_New(len + 1, 127);
    if (!s) return NULL;
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(s);
    out[0] = 't';
    for (int i = 0; i < len; i++) out[1 + i] = (Py_UCS1)digits[len - 1 - i];
    return s;
}

/* The reference's `_new_task(raw, e, status=...)`; `e` NULL: a task known only by
 * reference. Returns the record (borrowed: the tasks dict holds it). */
static PyObject *
tf_new_task(TaskFeed *f, int64_t raw, PyObject *e, int status)
{
    PyObject *t = NULL, *name = Py_None, *coro = Py_None, *parent = Py_None, *rid = Py_None,
             *site = Py_None;
    int64_t t_ns = 0;
    if (e) {
        if (!PyTuple_CheckExact(e) || PyTuple_GET_SIZE(e) != 8)
            return tf_unsupported("task create");
        t = PyTuple_GET_ITEM(e, 1);
        if (tf_int(t, &t_ns) < 0) return NULL;
        name = PyTuple_GET_ITEM(e, 3);
        coro = PyTuple_GET_ITEM(e, 4);
        parent = PyTuple_GET_ITEM(e, 5);
        rid = PyTuple_GET_ITEM(e, 6);
        site = PyTuple_GET_ITEM(e, 7);
    }
    TEntry *en = tf_find(f, raw, 1);
    if (!en) return NULL;
    if (en->rec) {
        /* an address reused: the earlier task stays findable by time (task_at) */
        if (en->nolder == en->older_cap) {
            Py_ssize_t cap = en->older_cap ? en->older_cap * 2 : 2;
            TOlder *o = PyMem_Realloc(en->older, (size_t)cap * sizeof(TOlder));
            if (!o) {
                PyErr_NoMemory();
                return NULL;
            }
            en->older = o;
            en->older_cap = cap;
        }
        en->older[en->nolder].created = en->has_created ? en->created_ns : 0;
        en->older[en->nolder].rec = en->rec; /* the reference moves to the list */
        en->nolder++;
        en->rec = NULL;
        en->steps = NULL;
    }
    en->has_created = en->has_last = en->known = 0;
    f->n++;
    PyObject *uid = tf_uid(f->n);
    if (!uid) return NULL;
    /* a copy of the template: its keys in order, no insertion or resize below */
    PyObject *rec = PyDict_Copy(tf_template);
    PyObject *steps = NULL, *waits = NULL, *created = NULL, *site_d = NULL;
    if (!rec) goto fail;
    PyObject *parent_uid = Py_None;
    if (e) {
        if (parent != Py_None) {
            int64_t praw;
            if (tf_raw(parent, &praw) < 0) goto fail;
            /* may make the parent's record (it takes the next uid, and goes first) */
            PyObject *prec = tf_task(f, praw);
            if (!prec) goto fail;
            parent_uid = PyDict_GetItemWithError(prec, s_k_id);
            if (!parent_uid) {
                if (!PyErr_Occurred()) tf_unsupported("parent");
                goto fail;
            }
            /* tf_task may have grown the table */
            en = tf_find(f, raw, 0);
            if (!en) {
                tf_unsupported("entry");
                goto fail;
            }
        }
        created = PyFloat_FromDouble(tf_sec(t_ns + f->offset));
        if (!created) goto fail;
        site_d = tf_site(f, site);
        if (!site_d) goto fail;
        en->created_ns = t_ns;
        en->has_created = 1;
    }
    steps = PyList_New(0);
    waits = PyList_New(0);
    if (!steps || !waits) goto fail;
    /* the template holds None for the rest, and "pending" for the state */
    if (PyDict_SetItem(rec, s_k_id, uid) < 0 || PyDict_SetItem(rec, s_k_steps, steps) < 0
        || PyDict_SetItem(rec, s_k_waits, waits) < 0)
        goto fail;
    if (e
        && (PyDict_SetItem(rec, s_k_name, name) < 0 || PyDict_SetItem(rec, s_k_coro, coro) < 0
            || PyDict_SetItem(rec, s_k_parent, parent_uid) < 0
            || PyDict_SetItem(rec, s_k_request, rid) < 0
            || PyDict_SetItem(rec, s_k_created, created) < 0
            || PyDict_SetItem(rec, s_k_site, site_d) < 0))
        goto fail;
    if (e && !status) {
        en->last_end = t_ns;
        en->has_last = 1;
        en->known = 1;
    }
    if (PyDict_SetItem(f->tasks, uid, rec) < 0) goto fail;
    en->rec = rec; /* the new reference */
    en->steps = steps;
    Py_DECREF(uid);
    Py_DECREF(steps);
    Py_DECREF(waits);
    Py_XDECREF(created);
    Py_XDECREF(site_d);
    return rec;
fail:
    Py_DECREF(uid);
    Py_XDECREF(rec);
    Py_XDECREF(steps);
    Py_XDECREF(waits);
    Py_XDECREF(created);
    Py_XDECREF(site_d);
    return NULL;
}

/* The reference's `task(raw)`: its record, made if unknown (borrowed). */
static PyObject *
tf_task(TaskFeed *f, int64_t raw)
{
    TEntry *en = tf_find(f, raw, 0);
    if (en && en->rec) return en->rec;
    if (en && !en->rec) return tf_unsupported("a task its own parent");
    return tf_new_task(f, raw, NULL, 0);
}

/* The reference's `task_at(raw, t)` (borrowed). */
static PyObject *
tf_task_at(TaskFeed *f, int64_t raw, int64_t t)
{
    TEntry *en = tf_find(f, raw, 0);
    if (en && en->rec && (en->has_created ? en->created_ns : 0) > t) {
        for (Py_ssize_t i = en->nolder - 1; i >= 0; i--)
            if (en->older[i].created <= t) return en->older[i].rec;
    }
    return tf_task(f, raw);
}

static int
tf_set(PyObject *rec, PyObject *key, PyObject *value)
{
    return PyDict_SetItem(rec, key, value);
}

/* The reference's `_create(raw, e)`. */
static int
tf_create(TaskFeed *f, int64_t raw, PyObject *e)
{
    TEntry *en = tf_find(f, raw, 0);
    if (en && en->rec) {
        PyObject *rec = en->rec;
        PyObject *created = PyDict_GetItemWithError(rec, s_k_created);
        if (!created) {
            if (!PyErr_Occurred()) tf_unsupported("record");
            return -1;
        }
        if (f->status && created != Py_None) {
            PyObject *key = PyLong_FromLongLong(raw);
            if (!key) return -1;
            PyObject *st = PyDict_GetItemWithError(f->status, key);
            Py_DECREF(key);
            if (!st && PyErr_Occurred()) return -1;
            if (st) {
                int same = PyObject_RichCompareBool(st, e, Py_EQ);
                if (same < 0) return -1;
                if (same) return 0; /* the status record already describes this task */
            }
        }
        PyObject *state = PyDict_GetItemWithError(rec, s_k_state);
        if (!state) {
            if (!PyErr_Occurred()) tf_unsupported("record");
            return -1;
        }
        int pending = state == s_pending;
        if (!pending && PyUnicode_Check(state))
            pending = PyUnicode_CompareWithASCIIString(state, "pending") == 0;
        if (created == Py_None && pending) {
            /* referenced before its creation was recorded: the same live task (_fill) */
            if (!PyTuple_CheckExact(e) || PyTuple_GET_SIZE(e) != 8) {
                tf_unsupported("task create");
                return -1;
            }
            int64_t t_ns;
            if (tf_int(PyTuple_GET_ITEM(e, 1), &t_ns) < 0) return -1;
            Py_INCREF(rec);
            PyObject *parent = PyTuple_GET_ITEM(e, 5), *puid = Py_None, *c = NULL, *s = NULL;
            int rc = -1;
            if (tf_set(rec, s_k_name, PyTuple_GET_ITEM(e, 3)) < 0
                || tf_set(rec, s_k_coro, PyTuple_GET_ITEM(e, 4)) < 0)
                goto fill_done;
            if (parent != Py_None) {
                int64_t praw;
                if (tf_raw(parent, &praw) < 0) goto fill_done;
                PyObject *prec = tf_task(f, praw);
                if (!prec) goto fill_done;
                puid = PyDict_GetItemWithError(prec, s_k_id);
                if (!puid) {
                    if (!PyErr_Occurred()) tf_unsupported("parent");
                    goto fill_done;
                }
            }
            if (tf_set(rec, s_k_parent, puid) < 0) goto fill_done;
            PyObject *req = PyDict_GetItemWithError(rec, s_k_request);
            if (!req && PyErr_Occurred()) goto fill_done;
            if ((!req || req == Py_None) && tf_set(rec, s_k_request, PyTuple_GET_ITEM(e, 6)) < 0)
                goto fill_done;
            if (!(c = PyFloat_FromDouble(tf_sec(t_ns + f->offset)))) goto fill_done;
            if (tf_set(rec, s_k_created, c) < 0) goto fill_done;
            if (!(s = tf_site(f, PyTuple_GET_ITEM(e, 7)))) goto fill_done;
            if (tf_set(rec, s_k_site, s) < 0) goto fill_done;
            en = tf_find(f, raw, 0);
            if (!en || en->rec != rec) {
                tf_unsupported("fill");
                goto fill_done;
            }
            en->created_ns = t_ns;
            en->has_created = 1;
            rc = 0;
        fill_done:
            Py_XDECREF(c);
            Py_XDECREF(s);
            Py_DECREF(rec);
            return rc;
        }
    }
    return tf_new_task(f, raw, e, 0) ? 0 : -1;
}

static inline void
tf_seen(TaskFeed *f, int64_t t)
{
    if (!f->has_t_min || t < f->t_min) {
        f->t_min = t;
        f->has_t_min = 1;
    }
}

/* One step: the row the reference's `Steps.rows` gives for it. */
static int
tf_step(TaskFeed *f, int64_t t0, int64_t t1, int64_t raw, int64_t tq)
{
    PyObject *rec = tf_task(f, raw);
    if (!rec) return -1;
    TEntry *en = tf_find(f, raw, 0);
    if (!en || en->rec != rec || !en->steps) {
        tf_unsupported("step");
        return -1;
    }
    int first = PyList_GET_SIZE(en->steps) == 0;
    int64_t prev = t0;
    int known = en->known;
    if (en->has_last)
        prev = en->last_end;
    else
        known = 0; /* its first step, creation not held: the gaps count from this step */
    PyObject *row = PyTuple_New(4);
    if (!row) return -1;
    PyObject *a = PyFloat_FromDouble(tf_sec(t0 + f->offset));
    PyObject *b = PyFloat_FromDouble(tf_sec(t1 - t0));
    PyObject *c = NULL, *d = NULL;
    if (!tq) {
        c = Py_NewRef(Py_None);
        d = Py_NewRef(Py_None);
    } else {
        int64_t rq = t0 - tq;
        if (first && !known)
            c = Py_NewRef(Py_None);
        else
            c = PyFloat_FromDouble(tq > prev ? tf_sec(tq - prev) : 0.0);
        d = PyFloat_FromDouble(rq > 0 ? tf_sec(rq) : 0.0);
    }
    if (!a || !b || !c || !d) {
        Py_XDECREF(a);
        Py_XDECREF(b);
        Py_XDECREF(c);
        Py_XDECREF(d);
        Py_DECREF(row);
        return -1;
    }
    PyTuple_SET_ITEM(row, 0, a);
    PyTuple_SET_ITEM(row, 1, b);
    PyTuple_SET_ITEM(row, 2, c);
    PyTuple_SET_ITEM(row, 3, d);
    int rc = PyList_Append(en->steps, row);
    Py_DECREF(row);
    if (rc < 0) return -1;
    en->last_end = t1;
    en->has_last = 1;
    return 0;
}

/* TASK_DONE (t, tid, state, error, name) from its tuple. */
static int
tf_done(TaskFeed *f, PyObject *e)
{
    int64_t t, raw;
    if (PyTuple_GET_SIZE(e) != 6 || tf_int(PyTuple_GET_ITEM(e, 1), &t) < 0
        || tf_raw(PyTuple_GET_ITEM(e, 2), &raw) < 0) {
        if (!PyErr_Occurred()) tf_unsupported("task done");
        return -1;
    }
    PyObject *rec = tf_task(f, raw);
    if (!rec) return -1;
    PyObject *done = PyFloat_FromDouble(tf_sec(t + f->offset));
    if (!done) return -1;
    int rc = PyDict_SetItem(rec, s_k_done, done);
    Py_DECREF(done);
    if (rc < 0 || PyDict_SetItem(rec, s_k_state, PyTuple_GET_ITEM(e, 3)) < 0
        || PyDict_SetItem(rec, s_k_error, PyTuple_GET_ITEM(e, 4)) < 0)
        return -1;
    PyObject *name = PyTuple_GET_ITEM(e, 5);
    if (name != Py_None && PyDict_SetItem(rec, s_k_name, name) < 0) return -1;
    return 0;
}

/* TASK_WAIT (t0, t1, tid, stack) from its tuple. */
static int
tf_wait(TaskFeed *f, PyObject *e)
{
    int64_t t0, t1, raw;
    if (PyTuple_GET_SIZE(e) != 5 || tf_int(PyTuple_GET_ITEM(e, 1), &t0) < 0
        || tf_int(PyTuple_GET_ITEM(e, 2), &t1) < 0 || tf_raw(PyTuple_GET_ITEM(e, 3), &raw) < 0) {
        if (!PyErr_Occurred()) tf_unsupported("task wait");
        return -1;
    }
    PyObject *rec = tf_task(f, raw);
    if (!rec) return -1;
    PyObject *waits = PyDict_GetItemWithError(rec, s_k_waits);
    if (!waits || !PyList_Check(waits)) {
        if (!PyErr_Occurred()) tf_unsupported("waits");
        return -1;
    }
    Py_INCREF(waits);
    PyObject *w = NULL, *start = NULL, *dur = NULL;
    PyObject *stack = PyObject_CallOneArg(f->stack_fn, PyTuple_GET_ITEM(e, 4));
    int rc = -1;
    if (!stack) goto done;
    if (stack == Py_None) {
        Py_DECREF(stack);
        if (!(stack = PyList_New(0))) goto done;
    }
    if (!(w = PyDict_New())) goto done;
    if (!(start = PyFloat_FromDouble(tf_sec(t0 + f->offset)))) goto done;
    if (!(dur = PyFloat_FromDouble(tf_sec(t1 - t0)))) goto done;
    if (PyDict_SetItem(w, s_k_start, start) < 0 || PyDict_SetItem(w, s_k_duration, dur) < 0
        || PyDict_SetItem(w, s_k_stack, stack) < 0 || PyList_Append(waits, w) < 0)
        goto done;
    rc = 0;
done:
    Py_DECREF(waits);
    Py_XDECREF(stack);
    Py_XDECREF(w);
    Py_XDECREF(start);
    Py_XDECREF(dur);
    return rc;
}

/* A varint field of a native record, as dec_event reads it (T, R and I). */
static inline int
tf_field_T(Dec *d, int64_t *out)
{
    uint64_t u;
    if (get_varint(d, &u) < 0) return -1;
    d->last_t = (int64_t)((uint64_t)d->last_t + (uint64_t)unzz(u));
    d->t_first = d->last_t;
    *out = d->last_t;
    return 0;
}
static inline int
tf_field_R(Dec *d, int64_t *out)
{
    uint64_t u;
    if (get_varint(d, &u) < 0) return -1;
    *out = u == 0 ? 0 : (int64_t)((uint64_t)d->t_first + (uint64_t)unzz(u - 1));
    return 0;
}
/* 1 if None */
static inline int
tf_field_I(Dec *d, int64_t *out)
{
    uint64_t u;
    if (get_varint(d, &u) < 0) return -1;
    if (u == 0) return 1;
    d->last_tid = tid_decode(u - 1, d->last_tid);
    *out = d->last_tid;
    return 0;
}

/* ---- Python API --------------------------------------------------------------------- */

static PyObject *
TaskFeed_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"offset_ns", "stack", "site", NULL};
    long long offset;
    PyObject *stack_fn, *site_fn;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LOO", kwlist, &offset, &stack_fn, &site_fn))
        return NULL;
    if (!PyCallable_Check(stack_fn) || !PyCallable_Check(site_fn)) {
        PyErr_SetString(PyExc_TypeError, "TaskFeed: stack and site must be callables");
        return NULL;
    }
    TaskFeed *f = (TaskFeed *)type->tp_alloc(type, 0);
    if (!f) return NULL;
    f->offset = offset;
    f->tasks = PyDict_New();
    if (!f->tasks) {
        Py_DECREF(f);
        return NULL;
    }
    f->stack_fn = Py_NewRef(stack_fn);
    f->site_fn = Py_NewRef(site_fn);
    return (PyObject *)f;
}

static void
tf_clear_table(TaskFeed *f)
{
    for (size_t i = 0; f->tab && i <= f->mask; i++) {
        TEntry *en = &f->tab[i];
        if (!en->used) continue;
        Py_XDECREF(en->rec);
        for (Py_ssize_t k = 0; k < en->nolder; k++) Py_DECREF(en->older[k].rec);
        PyMem_Free(en->older);
    }
    PyMem_Free(f->tab);
    f->tab = NULL;
    f->mask = f->used = 0;
}

static int
TaskFeed_traverse(TaskFeed *f, visitproc visit, void *arg)
{
    Py_VISIT(f->tasks);
    Py_VISIT(f->status);
    Py_VISIT(f->stack_fn);
    Py_VISIT(f->site_fn);
    Py_VISIT(f->seg);
    for (size_t i = 0; f->tab && i <= f->mask; i++) {
        TEntry *en = &f->tab[i];
        if (!en->used) continue;
        Py_VISIT(en->rec);
        for (Py_ssize_t k = 0; k < en->nolder; k++) Py_VISIT(en->older[k].rec);
    }
    return 0;
}

static int
TaskFeed_clear(TaskFeed *f)
{
    tf_clear_table(f);
    Py_CLEAR(f->tasks);
    Py_CLEAR(f->status);
    Py_CLEAR(f->stack_fn);
    Py_CLEAR(f->site_fn);
    Py_CLEAR(f->seg);
    return 0;
}

static void
TaskFeed_dealloc(TaskFeed *f)
{
    PyObject_GC_UnTrack(f);
    TaskFeed_clear(f);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

static PyObject *
TaskFeed_begin(TaskFeed *f, PyObject *seg)
{
    if (!PyObject_TypeCheck(seg, &Segment_Type)) {
        PyErr_SetString(PyExc_TypeError, "TaskFeed.begin: a Segment expected");
        return NULL;
    }
    Segment *g = (Segment *)seg;
    if (g->status_len < 0 || g->status_len > g->len) return corrupt("status length");
    Py_INCREF(seg);
    Py_XSETREF(f->seg, g);
    Dec d = {g, g->buf + g->status_len, g->buf + g->len, g->t_base, 0, 0};
    f->d = d;
    Py_RETURN_NONE;
}

/* Feed the generation's records until one of a kind this table does not take: that
 * record's tuple (for the reference feed); None at the generation's end. */
static PyObject *
TaskFeed_next(TaskFeed *f, PyObject *Py_UNUSED(ignored))
{
    if (!f->seg) Py_RETURN_NONE;
    Dec *d = &f->d;
    while (d->p < d->end) {
        uint8_t kind = *d->p;
        f->fed++;
        if (kind == K_TASK_STEP) {
            d->p++;
            int64_t t0, t1, raw = 0, tq;
            int none;
            if (tf_field_T(d, &t0) < 0 || tf_field_R(d, &t1) < 0 || (none = tf_field_I(d, &raw)) < 0
                || tf_field_R(d, &tq) < 0)
                return NULL;
            if (none) return tf_unsupported("a step of no task");
            tf_seen(f, t0);
            if (tf_step(f, t0, t1, raw, tq) < 0) return NULL;
            continue;
        }
        if (kind == K_TASK_CREATE || kind == K_TASK_DONE || kind == K_TASK_WAIT) {
            PyObject *e = dec_event(d);
            if (!e) return NULL;
            int64_t raw, t;
            int rc = -1;
            if (PyTuple_GET_SIZE(e) < 2 || tf_int(PyTuple_GET_ITEM(e, 1), &t) < 0) {
                if (!PyErr_Occurred()) tf_unsupported("time");
                Py_DECREF(e);
                return NULL;
            }
            tf_seen(f, t);
            if (kind == K_TASK_CREATE) {
                if (PyTuple_GET_SIZE(e) == 8 && tf_raw(PyTuple_GET_ITEM(e, 2), &raw) == 0)
                    rc = tf_create(f, raw, e);
                else if (!PyErr_Occurred())
                    tf_unsupported("task create");
            } else if (kind == K_TASK_DONE)
                rc = tf_done(f, e);
            else
                rc = tf_wait(f, e);
            Py_DECREF(e);
            if (rc < 0) return NULL;
            continue;
        }
        return dec_event(d);
    }
    Py_CLEAR(f->seg);
    Py_RETURN_NONE;
}

static int
tf_arg_raw(PyObject *o, int64_t *raw)
{
    return tf_raw(o, raw);
}

static PyObject *
TaskFeed_task(TaskFeed *f, PyObject *raw_o)
{
    int64_t raw;
    if (tf_arg_raw(raw_o, &raw) < 0) return NULL;
    return Py_XNewRef(tf_task(f, raw));
}

static PyObject *
TaskFeed_task_at(TaskFeed *f, PyObject *args)
{
    PyObject *raw_o, *t_o;
    int64_t raw, t;
    if (!PyArg_ParseTuple(args, "OO", &raw_o, &t_o)) return NULL;
    if (tf_arg_raw(raw_o, &raw) < 0 || tf_int(t_o, &t) < 0) return NULL;
    return Py_XNewRef(tf_task_at(f, raw, t));
}

static PyObject *
TaskFeed_create(TaskFeed *f, PyObject *args)
{
    PyObject *raw_o, *e;
    int64_t raw;
    if (!PyArg_ParseTuple(args, "OO", &raw_o, &e)) return NULL;
    if (tf_arg_raw(raw_o, &raw) < 0) return NULL;
    if (tf_create(f, raw, e) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *
TaskFeed_new_task(TaskFeed *f, PyObject *args)
{
    PyObject *raw_o, *e;
    int status;
    int64_t raw;
    if (!PyArg_ParseTuple(args, "OOp", &raw_o, &e, &status)) return NULL;
    if (tf_arg_raw(raw_o, &raw) < 0) return NULL;
    return Py_XNewRef(tf_new_task(f, raw, e == Py_None ? NULL : e, status));
}

/* raw id -> uid of each id's latest task (the reference's `uid`). */
static PyObject *
TaskFeed_uids(TaskFeed *f, PyObject *Py_UNUSED(ignored))
{
    PyObject *out = PyDict_New();
    if (!out) return NULL;
    for (size_t i = 0; f->tab && i <= f->mask; i++) {
        TEntry *en = &f->tab[i];
        if (!en->used || !en->rec) continue;
        PyObject *uid = PyDict_GetItemWithError(en->rec, s_k_id);
        PyObject *key = uid ? PyLong_FromLongLong(en->raw) : NULL;
        if (!key || PyDict_SetItem(out, key, uid) < 0) {
            Py_XDECREF(key);
            Py_DECREF(out);
            if (!PyErr_Occurred()) tf_unsupported("record");
            return NULL;
        }
        Py_DECREF(key);
    }
    return out;
}

/* Let go of the table (the records stay in `tasks`). */
static PyObject *
TaskFeed_release(TaskFeed *f, PyObject *Py_UNUSED(ignored))
{
    tf_clear_table(f);
    Py_CLEAR(f->seg);
    Py_RETURN_NONE;
}

static PyObject *
TaskFeed_get_tasks(TaskFeed *f, void *c)
{
    return Py_NewRef(f->tasks);
}

static PyObject *
TaskFeed_get_t_min(TaskFeed *f, void *c)
{
    if (!f->has_t_min) Py_RETURN_NONE;
    return PyLong_FromLongLong(f->t_min);
}

static PyObject *
TaskFeed_get_fed(TaskFeed *f, void *c)
{
    return PyLong_FromSsize_t(f->fed);
}

static PyObject *
TaskFeed_get_n(TaskFeed *f, void *c)
{
    return PyLong_FromSsize_t(f->n);
}

static PyObject *
TaskFeed_get_status(TaskFeed *f, void *c)
{
    return Py_NewRef(f->status ? f->status : Py_None);
}

static int
TaskFeed_set_status(TaskFeed *f, PyObject *v, void *c)
{
    if (v && v != Py_None && !PyDict_Check(v)) {
        PyErr_SetString(PyExc_TypeError, "status_tasks must be a dict");
        return -1;
    }
    Py_XSETREF(f->status, v && v != Py_None ? Py_NewRef(v) : NULL);
    return 0;
}

static PyMethodDef TaskFeed_methods[] = {
    {"begin", (PyCFunction)TaskFeed_begin, METH_O, "begin(segment): feed this generation next."},
    {"next", (PyCFunction)TaskFeed_next, METH_NOARGS,
     "next(): feed the task records; the next record of another kind, or None at the end."},
    {"task", (PyCFunction)TaskFeed_task, METH_O, "task(raw): the record (made if unknown)."},
    {"task_at", (PyCFunction)TaskFeed_task_at, METH_VARARGS,
     "task_at(raw, t): the task that had this id at time t."},
    {"create", (PyCFunction)TaskFeed_create, METH_VARARGS, "create(raw, e): a TASK_CREATE."},
    {"new_task", (PyCFunction)TaskFeed_new_task, METH_VARARGS,
     "new_task(raw, e, status): a new record for raw (e None: known by reference only)."},
    {"uids", (PyCFunction)TaskFeed_uids, METH_NOARGS, "uids(): raw id -> latest uid."},
    {"release", (PyCFunction)TaskFeed_release, METH_NOARGS, "release(): drop the table."},
    {NULL}};

static PyGetSetDef TaskFeed_getset[] = {
    {"tasks", (getter)TaskFeed_get_tasks, NULL, "uid -> task record, in order", NULL},
    {"t_min", (getter)TaskFeed_get_t_min, NULL, "the earliest time fed, or None", NULL},
    {"n", (getter)TaskFeed_get_n, NULL, "tasks made", NULL},
    {"fed", (getter)TaskFeed_get_fed, NULL, "records read, of every kind", NULL},
    {"status_tasks", (getter)TaskFeed_get_status, (setter)TaskFeed_set_status,
     "raw -> status TASK_CREATE record", NULL},
    {NULL}};

static PyTypeObject TaskFeed_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flightdeck.core._native.TaskFeed",
    .tp_basicsize = sizeof(TaskFeed),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "TaskFeed(offset_ns, stack, site): the snapshot builder's task table in C",
    .tp_new = TaskFeed_new,
    .tp_dealloc = (destructor)TaskFeed_dealloc,
    .tp_traverse = (traverseproc)TaskFeed_traverse,
    .tp_clear = (inquiry)TaskFeed_clear,
    .tp_methods = TaskFeed_methods,
    .tp_getset = TaskFeed_getset,
};

static int
builder_init_strings(void)
{
#define BSTR(var, text) \
    if (!(var = PyUnicode_InternFromString(text))) return -1
    BSTR(s_k_id, "id");
    BSTR(s_k_name, "name");
    BSTR(s_k_coro, "coro");
    BSTR(s_k_parent, "parent");
    BSTR(s_k_request, "request");
    BSTR(s_k_created, "created");
    BSTR(s_k_site, "site");
    BSTR(s_k_done, "done");
    BSTR(s_k_state, "state");
    BSTR(s_k_error, "error");
    BSTR(s_k_steps, "steps");
    BSTR(s_k_awaiting, "awaiting");
    BSTR(s_k_waits, "waits");
    BSTR(s_k_start, "start");
    BSTR(s_k_duration, "duration");
    BSTR(s_k_stack, "stack");
    BSTR(s_k_function, "function");
    BSTR(s_k_file, "file");
    BSTR(s_k_line, "line");
    BSTR(s_pending, "pending");
#undef BSTR
    PyObject *keys[] = {s_k_id,      s_k_name,     s_k_coro, s_k_parent, s_k_request,
                        s_k_created, s_k_site,     s_k_done, s_k_state,  s_k_error,
                        s_k_steps,   s_k_awaiting, s_k_waits};
    if (!(tf_template = PyDict_New())) return -1;
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (PyDict_SetItem(tf_template, keys[i], keys[i] == s_k_state ? s_pending : Py_None) < 0)
            return -1;
    if (!(tf_site_template = PyDict_New())) return -1;
    if (PyDict_SetItem(tf_site_template, s_k_function, Py_None) < 0
        || PyDict_SetItem(tf_site_template, s_k_file, Py_None) < 0
        || PyDict_SetItem(tf_site_template, s_k_line, Py_None) < 0)
        return -1;
    return 0;
}

#endif /* FD_NATIVE_BUILDER_H */
