/* Prototype of an optional compiled accelerator for flightdeck's step hook (issue 7).
 *
 * StepRunner(emit, last_end, finished) is a vectorcall callable doing what
 * flightdeck._loop's run_step does in Python: time one task step, append
 * (TASK_STEP, t0, t1, id(task), t_queued) with emit, then either note the step's end in
 * last_end or, when the task is done, call finished(task, raw, t1).
 * Built and measured by benchmarks/bench_accel.py; not shipped in the package.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <time.h>

typedef struct {
    PyObject_HEAD
    PyObject *emit;
    PyObject *last_end;
    PyObject *finished;
    vectorcallfunc vectorcall;
} StepRunner;

static PyObject *str_self, *str_done, *step_kind;

static inline long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);  /* the clock perf_counter_ns reads on Linux */
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static PyObject *
StepRunner_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    StepRunner *self = (StepRunner *)op;
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    if (n < 2 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "StepRunner(callback, t_queued, *args)");
        return NULL;
    }
    PyObject *cb = args[0], *tq = args[1];
    long long t0 = now_ns();
    PyObject *res = PyObject_Vectorcall(cb, args + 2, n - 2, NULL);
    long long t1 = now_ns();
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyObject *task = PyObject_GetAttr(cb, str_self);
    if (task != NULL) {
        PyObject *raw = PyLong_FromVoidPtr(task);
        PyObject *end = PyLong_FromLongLong(t1);
        PyObject *start = PyLong_FromLongLong(t0);
        if (raw && end && start) {
            PyObject *event = PyTuple_Pack(5, step_kind, start, end, raw, tq);
            if (event) {
                PyObject *r = PyObject_CallOneArg(self->emit, event);
                Py_XDECREF(r);
                Py_DECREF(event);
            }
            PyObject *done = PyObject_CallMethodNoArgs(task, str_done);
            if (done == Py_True) {
                PyObject *r = PyObject_CallFunctionObjArgs(self->finished, task, raw, end, NULL);
                Py_XDECREF(r);
            } else if (done != NULL) {
                PyDict_SetItem(self->last_end, raw, end);
            }
            Py_XDECREF(done);
        }
        Py_XDECREF(raw);
        Py_XDECREF(end);
        Py_XDECREF(start);
        Py_DECREF(task);
    }
    PyErr_Clear();  /* the recorder never raises into the loop */
    PyErr_Restore(et, ev, tb);
    return res;
}

static int StepRunner_init(StepRunner *self, PyObject *args, PyObject *kw) {
    PyObject *emit, *last_end, *finished;
    if (!PyArg_ParseTuple(args, "OO!O", &emit, &PyDict_Type, &last_end, &finished)) return -1;
    Py_INCREF(emit); Py_INCREF(last_end); Py_INCREF(finished);
    self->emit = emit; self->last_end = last_end; self->finished = finished;
    self->vectorcall = StepRunner_vectorcall;
    return 0;
}

static void StepRunner_dealloc(StepRunner *self) {
    Py_XDECREF(self->emit); Py_XDECREF(self->last_end); Py_XDECREF(self->finished);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject StepRunnerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_fdaccel.StepRunner",
    .tp_basicsize = sizeof(StepRunner),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(StepRunner, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)StepRunner_init,
    .tp_dealloc = (destructor)StepRunner_dealloc,
};

static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_fdaccel", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__fdaccel(void) {
    str_self = PyUnicode_InternFromString("__self__");
    str_done = PyUnicode_InternFromString("done");
    step_kind = PyLong_FromLong(2);
    if (PyType_Ready(&StepRunnerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&mod);
    if (!m) return NULL;
    Py_INCREF(&StepRunnerType);
    PyModule_AddObject(m, "StepRunner", (PyObject *)&StepRunnerType);
    return m;
}
