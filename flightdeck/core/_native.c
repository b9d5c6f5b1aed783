/*
 * flightdeck.core._native: the native recording core.
 *
 * Why C against the CPython API (not Cython): no build dependency beyond a C compiler, and
 * the hot path needs direct control of allocation (no object per event) and of vectorcall
 * (the loop's call_soon and the step runner are called once per task step).
 *
 * What is here:
 *   - clock(): the clock time.perf_counter_ns() reads (CLOCK_MONOTONIC on Linux, the
 *     mach absolute time on macOS), so native and Python emitters never come out of order;
 *   - Window: the rolling window. Every event is encoded when emitted into a fixed-layout
 *     binary record (kind byte, zigzag varints, timestamps as deltas, strings and task ids
 *     interned into tables owned by the generation) in a buffer preallocated per
 *     generation. The window is a ring of at most `ngen` generations of `gen_cap` bytes
 *     each (strings and tables included), so the byte bound holds by construction; what
 *     does not fit is counted as dropped. Each generation starts with the status of the
 *     tasks and requests alive when it opened (re-encoded from the TASK_CREATE and
 *     REQ_START tuples of the live ones: one object per live task, none per event);
 *   - Segment: one generation; events() decodes it back into the event tuples, exactly;
 *   - StepRunner and CallSoon: the loop subclass's call_soon (a method descriptor with
 *     vectorcall) and the reused callable that times each task step or wakeup.
 *
 * Threads: the loop, the recorder thread and executor threads all emit. Everything here
 * runs with the GIL held and never releases it, which serializes them. A re-entrant call
 * (a finalizer run by an allocation in the middle of an emit) is dropped and counted.
 *
 * The parts, under core/native/, in the order they are included (one translation unit, so
 * the hot helpers stay inlined across parts):
 *   clock.h     the clock (shared with asgi/_casgi.c)
 *   codec.h     varints, value tags, the layouts of _kinds.h, small hash tables
 *   segment.h   Segment (one generation) and the encoder
 *   capi.h      the C functions the request path (asgi/_casgi.c) calls through a capsule
 *   decoder.h   records back into event tuples, every length checked
 *   stored.h    the stored form of a generation (GENR), load_segment, the Segment type
 *   builder.h   TaskFeed: the snapshot builder's task table and task kinds (conversion)
 *   window.h    Window: the ring of generations, freeze, status; REQ_END from C values
 *   livetasks.h   LiveTasks: the window's table of live tasks as a mapping (window.h has it)
 *   blockwatch.h  BlockWatch: a step holding the loop (and the GIL) noticed without the GIL
 *   runner.h    await chains and StepRunner (task steps and wakeups)
 *   schedule.h  CallSoon, CreateTask and CallLater (the loop subclass's scheduling methods)
 *   gcwatch.h   GcWatch: the gc.callbacks entry that records long collections
 * and, below, the module.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "native/clock.h"
#include "native/codec.h"
#include "native/segment.h"
#include "native/capi.h"
#include "native/decoder.h"
#include "native/stored.h"
#include "native/builder.h"
#include "native/window.h"
#include "native/blockwatch.h"
#include "native/runner.h"
#include "native/schedule.h"
#include "native/gcwatch.h"

/* ------------------------------------------------------------------------------------ */
/* module                                                                                */

static PyObject *
mod_clock(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLongLong(fd_clock());
}

#ifdef FLIGHTDECK_BENCH_HOOKS
/* bench_step(window, n, clocks=True): n TASK_STEP records through the native path; returns ns spent.
 * Measured from C, so no Python call is in the figure. */
static PyObject *
mod_bench_step(PyObject *m, PyObject *args)
{
    PyObject *w;
    Py_ssize_t n;
    int clocks = 1;
    if (!PyArg_ParseTuple(args, "O!n|p", &Window_Type, &w, &n, &clocks)) return NULL;
    int64_t start = fd_clock(), base = start;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t t0 = clocks ? fd_clock() : base + i * 3000;
        int64_t t1 = clocks ? fd_clock() : t0 + 1500;
        win_step((Window *)w, t0, t1, 0x7f0000001000ULL + (uint64_t)(i & 31) * 64, t0 - 2000);
    }
    return PyLong_FromLongLong(fd_clock() - start);
}
#endif

static PyMethodDef mod_methods[] = {
    {"clock", (PyCFunction)mod_clock, METH_NOARGS,
     "The recorder's clock in ns: the same clock as time.perf_counter_ns()."},
    {"await_chain", (PyCFunction)(void (*)(void))mod_await_chain, METH_FASTCALL,
     "await_chain(coro, limit=48): (function, file, line) of each frame it awaits, innermost "
     "last."},
    {"load_segment", (PyCFunction)mod_load_segment, METH_O,
     "load_segment(data): a read-only Segment from Segment.dump()'s bytes (checked)."},
#ifdef FLIGHTDECK_BENCH_HOOKS
    {"bench_step", (PyCFunction)mod_bench_step, METH_VARARGS,
     "bench_step(window, n, clocks=True): record n task steps from C; ns spent."},
#endif
    {NULL}};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    "flightdeck.core._native",
    "The native recording core of flightdeck (see core/window.py for the pure twin).",
    -1,
    mod_methods,
};

#define INTERN(var, text) \
    if (!(var = PyUnicode_InternFromString(text))) return NULL

PyMODINIT_FUNC
PyInit__native(void)
{
    fd_clock_init();
    for (int k = 1; k < NKINDS; k++) {
        SCHEMA_LEN[k] = (Py_ssize_t)strlen(SCHEMA[k]);
        if (!(KIND_OBJ[k] = PyLong_FromLong(k))) return NULL;
    }
    /* enc_task_create writes this layout by hand: off (tuples) if events.py changes it */
    task_record_layout_ok = strcmp(SCHEMA[K_TASK_CREATE], "TIVVInV") == 0;
    INTERN(s_done, "done");
    INTERN(s_cancelled, "cancelled");
    INTERN(s_get_name, "get_name");
    INTERN(s__exception, "_exception");
    INTERN(s___self__, "__self__");
    INTERN(s__debug, "_debug");
    INTERN(s__closed, "_closed");
    INTERN(s__ready, "_ready");
    INTERN(s_append, "append");
    INTERN(s_context, "context");
    INTERN(s_state_done, "done");
    INTERN(s_state_cancelled, "cancelled");
    INTERN(s_state_error, "error");
    INTERN(s___qualname__, "__qualname__");
    INTERN(s_get, "get");
    INTERN(s_add_done_callback, "add_done_callback");
    INTERN(s_cr_frame, "cr_frame");
    INTERN(s_gi_frame, "gi_frame");
    INTERN(s_cr_await, "cr_await");
    INTERN(s_gi_yieldfrom, "gi_yieldfrom");
    INTERN(s_get_coro, "get_coro");
    if (PyType_Ready(&Segment_Type) < 0 || PyType_Ready(&Window_Type) < 0
        || PyType_Ready(&Runner_Type) < 0 || PyType_Ready(&CallSoon_Type) < 0
        || PyType_Ready(&BoundCallSoon_Type) < 0 || PyType_Ready(&LiveTasks_Type) < 0
        || PyType_Ready(&Stamp_Type) < 0 || PyType_Ready(&StepCall_Type) < 0
        || PyType_Ready(&TaskRecord_Type) < 0 || PyType_Ready(&CreateTask_Type) < 0
        || PyType_Ready(&CallLater_Type) < 0 || PyType_Ready(&HandleRun_Type) < 0
        || PyType_Ready(&BlockWatch_Type) < 0 || PyType_Ready(&TaskFeed_Type) < 0
        || PyType_Ready(&GcWatch_Type) < 0 || builder_init_strings() < 0)
        return NULL;
    PyObject *m = PyModule_Create(&native_module);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "Segment", (PyObject *)&Segment_Type) < 0
        || PyModule_AddObjectRef(m, "Window", (PyObject *)&Window_Type) < 0
        || PyModule_AddObjectRef(m, "StepRunner", (PyObject *)&Runner_Type) < 0
        || PyModule_AddObjectRef(m, "CallSoon", (PyObject *)&CallSoon_Type) < 0
        || PyModule_AddObjectRef(m, "CreateTask", (PyObject *)&CreateTask_Type) < 0
        || PyModule_AddObjectRef(m, "CallLater", (PyObject *)&CallLater_Type) < 0
        || PyModule_AddObjectRef(m, "HandleRun", (PyObject *)&HandleRun_Type) < 0
        || PyModule_AddObjectRef(m, "BlockWatch", (PyObject *)&BlockWatch_Type) < 0
        || PyModule_AddObjectRef(m, "TaskFeed", (PyObject *)&TaskFeed_Type) < 0
        || PyModule_AddObjectRef(m, "GcWatch", (PyObject *)&GcWatch_Type) < 0
        || PyModule_AddStringConstant(m, "SCHEMA", FD_SCHEMA_STRING) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    /* The capsule is kept for the life of the process (its reference here): capi.h's
     * functions are static, and _casgi keeps the pointer it found. */
    static PyObject *capi;
    if (!capi) capi = PyCapsule_New(&fd_capi, FD_CAPI_NAME, NULL);
    if (!capi || PyModule_AddObjectRef(m, "_C_API", capi) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
