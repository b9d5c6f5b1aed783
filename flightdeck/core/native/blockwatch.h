/* BlockWatch: a task step that holds the loop, noticed without the GIL.
 * Part of the _native translation unit: included once, in order, by core/_native.c.
 *
 * The Python watchdog needs the GIL to run: a step that never releases it (a C call such as
 * a regular expression backtracking) keeps it from noticing anything, and keeps the window
 * file's writer from writing. The step runner (runner.h) publishes the step it is running
 * (its start and its task) in two atomics; a thread of this type, which never takes the GIL,
 * checks them every interval and, once a step has run past the threshold, writes a small
 * fixed record (the step's start, when it was last seen running, its task) at a fixed place
 * of the window file with pwrite. A process killed in that step leaves the record for the
 * recovery to read (snapshot/recovery.py). */
#ifndef FD_NATIVE_BLOCKWATCH_H
#define FD_NATIVE_BLOCKWATCH_H

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

/* The task step the loop runs now: its start (0: none) and its task's raw id. One loop per
 * process is watched: steps of loops in other threads overwrite these. */
static _Atomic int64_t fd_step_t0;
static _Atomic uint64_t fd_step_task;

static inline void
fd_step_begin(int64_t t0, uint64_t task)
{
    atomic_store_explicit(&fd_step_task, task, memory_order_relaxed);
    atomic_store_explicit(&fd_step_t0, t0, memory_order_release);
}

static inline void
fd_step_end(void)
{
    atomic_store_explicit(&fd_step_t0, 0, memory_order_release);
}

/* The record: "FDBW", version 1, 3 zero bytes, t_start, t_seen (i64 LE), task (u64 LE),
 * FNV-1a of the 32 bytes before it (u32 LE), zero padding to BW_SLOT bytes. */
#define BW_SLOT 64

typedef struct {
    PyObject_HEAD
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int running; /* the thread was started and is not joined yet */
    int stop;
    int fd; /* -1: nowhere to write */
    int64_t offset;
    int64_t threshold_ns, interval_ns;
    long long writes, errors;
} BlockWatch;

static void
bw_put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t
bw_fnv(const unsigned char *p, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 16777619u;
    }
    return h;
}

static void *
bw_main(void *arg)
{
    BlockWatch *w = (BlockWatch *)arg;
    pthread_mutex_lock(&w->mu);
    while (!w->stop) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        int64_t ns = until.tv_nsec + w->interval_ns;
        until.tv_sec += (time_t)(ns / 1000000000);
        until.tv_nsec = (long)(ns % 1000000000);
        pthread_cond_timedwait(&w->cv, &w->mu, &until);
        if (w->stop) break;
        int64_t t0 = atomic_load_explicit(&fd_step_t0, memory_order_acquire);
        uint64_t task = atomic_load_explicit(&fd_step_task, memory_order_relaxed);
        if (t0 != atomic_load_explicit(&fd_step_t0, memory_order_acquire)) continue;
        int64_t now = fd_clock();
        if (w->fd < 0 || t0 <= 0 || now - t0 < w->threshold_ns) continue;
        unsigned char rec[BW_SLOT];
        memset(rec, 0, sizeof rec);
        memcpy(rec, "FDBW", 4);
        rec[4] = 1;
        bw_put64(rec + 8, (uint64_t)t0);
        bw_put64(rec + 16, (uint64_t)now);
        bw_put64(rec + 24, task);
        uint32_t sum = bw_fnv(rec, 32);
        for (int i = 0; i < 4; i++) rec[32 + i] = (unsigned char)(sum >> (8 * i));
        if (pwrite(w->fd, rec, BW_SLOT, (off_t)w->offset) == BW_SLOT)
            w->writes++;
        else
            w->errors++;
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static int
BlockWatch_init(BlockWatch *w, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"threshold_ns", "interval_ns", NULL};
    long long threshold, interval;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LL:BlockWatch", kwlist, &threshold, &interval))
        return -1;
    if (threshold <= 0 || interval <= 0 || interval > 60LL * 1000000000) {
        PyErr_SetString(PyExc_ValueError, "threshold_ns and interval_ns must be positive");
        return -1;
    }
    if (w->running) {
        PyErr_SetString(PyExc_RuntimeError, "BlockWatch is already running");
        return -1;
    }
    w->threshold_ns = threshold;
    w->interval_ns = interval;
    w->fd = -1;
    w->offset = 0;
    w->stop = 0;
    if (pthread_mutex_init(&w->mu, NULL) != 0 || pthread_cond_init(&w->cv, NULL) != 0) {
        PyErr_SetString(PyExc_OSError, "cannot make the watch's lock");
        return -1;
    }
    int rc = pthread_create(&w->thread, NULL, bw_main, w);
    if (rc != 0) {
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    w->running = 1;
    return 0;
}

static void
bw_join(BlockWatch *w)
{
    if (!w->running) return;
    Py_BEGIN_ALLOW_THREADS pthread_mutex_lock(&w->mu);
    w->stop = 1;
    w->fd = -1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    Py_END_ALLOW_THREADS w->running = 0;
}

/* set_fd(fd, offset): where to write from now on (fd -1: nowhere). Returns once the thread
 * is no longer writing to the previous one, so the caller may close it. */
static PyObject *
BlockWatch_set_fd(BlockWatch *w, PyObject *args)
{
    int fd;
    long long offset;
    if (!PyArg_ParseTuple(args, "iL:set_fd", &fd, &offset)) return NULL;
    if (offset < 0) {
        PyErr_SetString(PyExc_ValueError, "offset must not be negative");
        return NULL;
    }
    if (!w->running) Py_RETURN_NONE;
    Py_BEGIN_ALLOW_THREADS pthread_mutex_lock(&w->mu);
    w->fd = fd;
    w->offset = offset;
    pthread_mutex_unlock(&w->mu);
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

static PyObject *
BlockWatch_close(BlockWatch *w, PyObject *Py_UNUSED(ignored))
{
    bw_join(w);
    Py_RETURN_NONE;
}

static PyObject *
BlockWatch_after_fork(BlockWatch *w, PyObject *Py_UNUSED(ignored))
{
    /* In a forked child the thread does not exist, and its lock may have been held at the
     * fork: forget both (never joined, never destroyed). */
    w->running = 0;
    w->fd = -1;
    Py_RETURN_NONE;
}

static void
BlockWatch_dealloc(BlockWatch *w)
{
    bw_join(w);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static PyObject *
BlockWatch_get_writes(BlockWatch *w, void *c)
{
    return PyLong_FromLongLong(w->writes);
}

static PyObject *
BlockWatch_get_errors(BlockWatch *w, void *c)
{
    return PyLong_FromLongLong(w->errors);
}

static PyObject *
BlockWatch_get_running(BlockWatch *w, void *c)
{
    return PyBool_FromLong(w->running);
}

static PyMethodDef BlockWatch_methods[] = {
    {"set_fd", (PyCFunction)BlockWatch_set_fd, METH_VARARGS,
     "set_fd(fd, offset): where the record goes from now on (-1: nowhere)."},
    {"close", (PyCFunction)BlockWatch_close, METH_NOARGS, "Stop and join the thread."},
    {"after_fork", (PyCFunction)BlockWatch_after_fork, METH_NOARGS,
     "In a forked child: forget the parent's thread."},
    {NULL},
};

static PyGetSetDef BlockWatch_getset[] = {
    {"writes", (getter)BlockWatch_get_writes, NULL, "records written", NULL},
    {"errors", (getter)BlockWatch_get_errors, NULL, "writes that failed", NULL},
    {"running", (getter)BlockWatch_get_running, NULL, "the thread runs", NULL},
    {NULL},
};

static PyTypeObject BlockWatch_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flightdeck.core._native.BlockWatch",
    .tp_basicsize = sizeof(BlockWatch),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "BlockWatch(threshold_ns, interval_ns): a thread that notices, without the GIL, "
              "a task step running past threshold_ns, and records it in the window file.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)BlockWatch_init,
    .tp_dealloc = (destructor)BlockWatch_dealloc,
    .tp_methods = BlockWatch_methods,
    .tp_getset = BlockWatch_getset,
};

#endif /* FD_NATIVE_BLOCKWATCH_H */
