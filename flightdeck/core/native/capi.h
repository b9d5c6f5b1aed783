/* The native core's C functions for the request path (asgi/_casgi.c), which calls them with
 * no Python call in between: _native exports them as the capsule FD_CAPI_NAME (its attribute
 * _C_API); _casgi finds it once the native core is loaded and uses it only while the
 * recorder's emit is still the native window's own append (so a replaced emit sees every
 * event). Included by core/_native.c and asgi/_casgi.c. */
#ifndef FD_NATIVE_CAPI_H
#define FD_NATIVE_CAPI_H

#include <stdint.h>

#define FD_CAPI_NAME "flightdeck.core._native._C_API"
#define FD_CAPI_VERSION 2

/* REQ_END's fields as C values (layout "TNnRVVVRn" of core/events.py). */
typedef struct {
    int64_t t, rid, status, ttfb, body_end, close_code;
    int has_status, has_close_code;         /* 0: None */
    PyObject *route, *disconnected, *error; /* borrowed: str or None, bool, str or None */
} FdReqEnd;

/* REQ_START (layout "TNVVVVVVIV"): the tuple the middleware built, which stays the status
 * table's entry, with the fields the encoder would otherwise read back from it as C values. */
typedef struct {
    PyObject *ev;   /* borrowed: the event tuple, its other fields as the layout has them */
    int64_t t, rid; /* its time and request id */
    int64_t tid;    /* the task id, when has_tid (0: None) */
    int has_tid;
} FdReqStart;

typedef struct {
    int version;
    /* Window.append's C function: a bound method with it is a native window's append. */
    PyCFunction append_meth;
    /* Window.append(ev) of the window ``win`` (the method's __self__): never raises, counts
     * and drops. */
    void (*append)(PyObject *win, PyObject *ev);
    /* REQ_END recorded from ``q`` without a tuple: 0 done (recorded, or counted as dropped),
     * 1 when a field is not in the layout's types (the caller appends the tuple instead).
     * Never raises. */
    int (*req_end)(PyObject *win, const FdReqEnd *q);
    /* REQ_START recorded from ``q`` (its tuple kept as the request's status), the same
     * contract as req_end. */
    int (*req_start)(PyObject *win, const FdReqStart *q);
} FdCAPI;

#endif /* FD_NATIVE_CAPI_H */
