/* LiveTasks: the native window's status table of live tasks (tid -> TASK_CREATE), as a
 * mapping for Python: what ``Window.live_tasks`` hands out. The hook shares the table (the
 * window keeps it from the TASK_CREATE and TASK_DONE it records); Python reads it (the
 * watchdog's labels, the recorder's status) and the pure-Python hook may write it as it writes
 * a dict. Part of the _native translation unit: included by window.h. */
#ifndef FD_NATIVE_LIVETASKS_H
#define FD_NATIVE_LIVETASKS_H

typedef struct {
    PyObject_HEAD
    Window *win;
} LiveTasks;

static PyTypeObject LiveTasks_Type;

static PyObject *
live_tasks_new(Window *w)
{
    LiveTasks *v = PyObject_GC_New(LiveTasks, &LiveTasks_Type);
    if (!v) return NULL;
    v->win = (Window *)Py_NewRef((PyObject *)w);
    PyObject_GC_Track(v);
    return (PyObject *)v;
}

static int
LiveTasks_traverse(LiveTasks *v, visitproc visit, void *arg)
{
    Py_VISIT(v->win);
    return 0;
}

static int
LiveTasks_clear(LiveTasks *v)
{
    Py_CLEAR(v->win);
    return 0;
}

static void
LiveTasks_dealloc(LiveTasks *v)
{
    PyObject_GC_UnTrack(v);
    LiveTasks_clear(v);
    Py_TYPE(v)->tp_free((PyObject *)v);
}

/* 0 and the key, 1 when the key cannot be in the table (not an int id), -1 after a cleared
 * view (exception set). */
static int
live_key(LiveTasks *v, PyObject *k, uint64_t *key)
{
    if (!v->win) {
        PyErr_SetString(PyExc_RuntimeError, "the window is gone");
        return -1;
    }
    return tid_key(k, key) < 0 ? 1 : 0;
}

/* A dict of the table (win_table_dict). */
static PyObject *
live_dict(LiveTasks *v)
{
    if (!v->win) {
        PyErr_SetString(PyExc_RuntimeError, "the window is gone");
        return NULL;
    }
    return win_table_dict(v->win, &v->win->st_tasks);
}

/* status_event of a value borrowed from the table, held meanwhile: making the tuple allocates,
 * an allocation may run a finalizer, and one that records this task's end (from any thread)
 * would free the value under us. */
static PyObject *
held_status_event(PyObject *val)
{
    Py_INCREF(val);
    PyObject *ev = status_event(val);
    Py_DECREF(val);
    return ev;
}

static Py_ssize_t
LiveTasks_len(LiveTasks *v)
{
    return v->win ? (Py_ssize_t)v->win->st_tasks.n : 0;
}

static PyObject *
LiveTasks_subscript(LiveTasks *v, PyObject *k)
{
    uint64_t key;
    int r = live_key(v, k, &key);
    if (r < 0) return NULL;
    PyObject *val = r == 0 ? objtab_get(&v->win->st_tasks, key) : NULL;
    if (!val) {
        PyErr_SetObject(PyExc_KeyError, k);
        return NULL;
    }
    return held_status_event(val);
}

static int
LiveTasks_ass_subscript(LiveTasks *v, PyObject *k, PyObject *val)
{
    uint64_t key;
    int r = live_key(v, k, &key);
    if (r < 0) return -1;
    Window *w = v->win;
    if (r == 1 || w->busy) {
        if (val == NULL) {
            PyErr_SetObject(PyExc_KeyError, k);
            return -1;
        }
        if (r == 1) {
            PyErr_SetString(PyExc_TypeError, "a task id is an int in [0, 2**64 - 2)");
            return -1;
        }
        return 0; /* inside the window's own work (a finalizer): dropped, as events are */
    }
    PyObject *old = NULL;
    if (val == NULL) {
        old = objtab_take(&w->st_tasks, key);
        if (!old) {
            PyErr_SetObject(PyExc_KeyError, k);
            return -1;
        }
    } else if (objtab_put(&w->st_tasks, key, val, &old) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    Py_XDECREF(old);
    return 0;
}

static int
LiveTasks_contains(LiveTasks *v, PyObject *k)
{
    uint64_t key;
    int r = live_key(v, k, &key);
    if (r != 0) return r < 0 ? -1 : 0;
    return objtab_get(&v->win->st_tasks, key) != NULL;
}

static PyObject *
LiveTasks_get(LiveTasks *v, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "get(tid, default=None)");
        return NULL;
    }
    uint64_t key;
    int r = live_key(v, args[0], &key);
    if (r < 0) return NULL;
    PyObject *val = r == 0 ? objtab_get(&v->win->st_tasks, key) : NULL;
    if (val) return held_status_event(val);
    return Py_NewRef(nargs == 2 ? args[1] : Py_None);
}

static PyObject *
LiveTasks_pop(LiveTasks *v, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "pop(tid[, default])");
        return NULL;
    }
    uint64_t key;
    int r = live_key(v, args[0], &key);
    if (r < 0) return NULL;
    PyObject *val = r == 0 && !v->win->busy ? objtab_take(&v->win->st_tasks, key) : NULL;
    if (val) {
        PyObject *ev = status_event(val);
        Py_DECREF(val);
        return ev;
    }
    if (nargs == 2) return Py_NewRef(args[1]);
    PyErr_SetObject(PyExc_KeyError, args[0]);
    return NULL;
}

static PyObject *
LiveTasks_copy(LiveTasks *v, PyObject *Py_UNUSED(ignored))
{
    return live_dict(v);
}

/* keys(), values(), items(): lists, like a dict's views read at once */
static PyObject *
live_list(LiveTasks *v, PyObject *(*of)(PyObject *))
{
    PyObject *d = live_dict(v);
    if (!d) return NULL;
    PyObject *out = of(d);
    Py_DECREF(d);
    return out;
}

static PyObject *
LiveTasks_keys(LiveTasks *v, PyObject *Py_UNUSED(ignored))
{
    return live_list(v, PyDict_Keys);
}

static PyObject *
LiveTasks_values(LiveTasks *v, PyObject *Py_UNUSED(ignored))
{
    return live_list(v, PyDict_Values);
}

static PyObject *
LiveTasks_items(LiveTasks *v, PyObject *Py_UNUSED(ignored))
{
    return live_list(v, PyDict_Items);
}

static PyObject *
LiveTasks_iter(LiveTasks *v)
{
    PyObject *keys = live_list(v, PyDict_Keys);
    if (!keys) return NULL;
    PyObject *it = PyObject_GetIter(keys);
    Py_DECREF(keys);
    return it;
}

static PyObject *
LiveTasks_richcompare(LiveTasks *v, PyObject *other, int op)
{
    if (op != Py_EQ && op != Py_NE) Py_RETURN_NOTIMPLEMENTED;
    PyObject *d = live_dict(v);
    if (!d) return NULL;
    PyObject *o =
        Py_IS_TYPE(other, &LiveTasks_Type) ? live_dict((LiveTasks *)other) : Py_NewRef(other);
    PyObject *res = o ? PyObject_RichCompare(d, o, op) : NULL;
    Py_XDECREF(o);
    Py_DECREF(d);
    return res;
}

static PyObject *
LiveTasks_repr(LiveTasks *v)
{
    PyObject *d = live_dict(v);
    if (!d) return NULL;
    PyObject *r = PyUnicode_FromFormat("LiveTasks(%R)", d);
    Py_DECREF(d);
    return r;
}

static PyMappingMethods LiveTasks_as_mapping = {
    (lenfunc)LiveTasks_len,
    (binaryfunc)LiveTasks_subscript,
    (objobjargproc)LiveTasks_ass_subscript,
};

static PySequenceMethods LiveTasks_as_sequence = {
    .sq_contains = (objobjproc)LiveTasks_contains,
};

static PyMethodDef LiveTasks_methods[] = {
    {"get", (PyCFunction)(void (*)(void))LiveTasks_get, METH_FASTCALL,
     "get(tid, default=None): its TASK_CREATE"},
    {"pop", (PyCFunction)(void (*)(void))LiveTasks_pop, METH_FASTCALL,
     "pop(tid[, default]): take it out"},
    {"copy", (PyCFunction)LiveTasks_copy, METH_NOARGS, "a dict of the live tasks now"},
    {"keys", (PyCFunction)LiveTasks_keys, METH_NOARGS, "the task ids (a list)"},
    {"values", (PyCFunction)LiveTasks_values, METH_NOARGS, "their TASK_CREATE (a list)"},
    {"items", (PyCFunction)LiveTasks_items, METH_NOARGS, "(tid, TASK_CREATE) pairs (a list)"},
    {NULL}};

static PyTypeObject LiveTasks_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flightdeck.core._native.LiveTasks",
    .tp_basicsize = sizeof(LiveTasks),
    .tp_dealloc = (destructor)LiveTasks_dealloc,
    .tp_repr = (reprfunc)LiveTasks_repr,
    .tp_as_sequence = &LiveTasks_as_sequence,
    .tp_as_mapping = &LiveTasks_as_mapping,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The window's live tasks, tid -> TASK_CREATE (its status table, as a mapping).",
    .tp_traverse = (traverseproc)LiveTasks_traverse,
    .tp_clear = (inquiry)LiveTasks_clear,
    .tp_richcompare = (richcmpfunc)LiveTasks_richcompare,
    .tp_iter = (getiterfunc)LiveTasks_iter,
    .tp_methods = LiveTasks_methods,
};

#endif /* FD_NATIVE_LIVETASKS_H */
