/* The stored form of a generation (chunk GENR), load_segment, and the Segment type.
 * Part of the _native translation unit: included once, in order, by core/_native.c
 * (one unit keeps the hot helpers inlined across parts). */
#ifndef FD_NATIVE_STORED_H
#define FD_NATIVE_STORED_H

/* ---- the stored form of a generation (docs/snapshot-format.md, chunk "GENR") ------------
 * varints: zz(t_base) zz(t_start) zz(t_end) count status_len nstrs len, then nstrs strings
 * (varint byte length + UTF-8, lone surrogates kept as surrogatepass writes them), then
 * the len bytes of records. Self-contained: the strings travel inside the bytes. */

typedef struct {
    uint8_t *b;
    Py_ssize_t n, cap;
} Buf;

static int
buf_room(Buf *o, Py_ssize_t n)
{
    if (o->n + n <= o->cap) return 0;
    Py_ssize_t nc = o->cap ? o->cap : 256;
    while (nc < o->n + n) nc *= 2;
    uint8_t *nb = PyMem_Realloc(o->b, (size_t)nc);
    if (!nb) {
        PyErr_NoMemory();
        return -1;
    }
    o->b = nb;
    o->cap = nc;
    return 0;
}

static int
buf_varint(Buf *o, uint64_t v)
{
    if (buf_room(o, 10) < 0) return -1;
    o->n = raw_varint(o->b + o->n, v) - o->b;
    return 0;
}

static int
buf_put(Buf *o, const void *p, Py_ssize_t n)
{
    if (buf_varint(o, (uint64_t)n) < 0 || buf_room(o, n) < 0) return -1;
    if (n) memcpy(o->b + o->n, p, (size_t)n);
    o->n += n;
    return 0;
}

/* The strings of g from index `from` on, as the stored form holds them. */
static int
seg_put_strings(Buf *o, Segment *g, Py_ssize_t from)
{
    for (Py_ssize_t i = from; i < g->nstrs; i++) {
        PyObject *s = g->strs[i];
        if (PyUnicode_IS_COMPACT_ASCII(s)) {
            if (buf_put(o, PyUnicode_DATA(s), PyUnicode_GET_LENGTH(s)) < 0) return -1;
            continue;
        }
        PyObject *b = PyUnicode_AsEncodedString(s, "utf-8", "surrogatepass");
        if (!b) return -1;
        int r = buf_put(o, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b));
        Py_DECREF(b);
        if (r < 0) return -1;
    }
    return 0;
}

static PyObject *
Segment_dump(Segment *g, PyObject *Py_UNUSED(ignored))
{
    Buf o = {NULL, 0, 0};
    if (buf_room(&o, 64 + g->len + g->nstrs * 16) < 0) return NULL;
    if (buf_varint(&o, zz(g->t_base)) < 0 || buf_varint(&o, zz(g->t_start)) < 0
        || buf_varint(&o, zz(g->t_end)) < 0 || buf_varint(&o, (uint64_t)g->count) < 0
        || buf_varint(&o, (uint64_t)g->status_len) < 0 || buf_varint(&o, (uint64_t)g->nstrs) < 0)
        goto fail;
    if (seg_put_strings(&o, g, 0) < 0) goto fail;
    if (buf_varint(&o, (uint64_t)g->len) < 0 || buf_room(&o, g->len) < 0) goto fail;
    if (g->len) memcpy(o.b + o.n, g->buf, (size_t)g->len);
    o.n += g->len;
    PyObject *out = PyBytes_FromStringAndSize((const char *)o.b, o.n);
    PyMem_Free(o.b);
    return out;
fail:
    PyMem_Free(o.b);
    return NULL;
}

/* The window file's record of a generation's growth (docs/snapshot-format.md, "GDLT"):
 * varints serial, zz(t_base), zz(t_start), zz(t_end), count, status_len, str_from, str_n,
 * str_bytes, rec_from, rec_n; then the strings from index str_from on (as dump() writes
 * them) and the record bytes from rec_from on. A generation's deltas, joined in order from
 * (0, 0), are its stored form: the file holds what was recorded, each byte written once.
 * Only the bytes added since (str_from, rec_from) are copied. */
static PyObject *
seg_delta(Segment *g, Py_ssize_t str_from, Py_ssize_t rec_from)
{
    Buf strs = {NULL, 0, 0}, o = {NULL, 0, 0};
    PyObject *out = NULL;
    Py_ssize_t rec_n = g->len - rec_from;
    if (seg_put_strings(&strs, g, str_from) < 0) goto done;
    if (buf_room(&o, 120 + strs.n + rec_n) < 0) goto done;
    if (buf_varint(&o, (uint64_t)g->serial) < 0 || buf_varint(&o, zz(g->t_base)) < 0
        || buf_varint(&o, zz(g->t_start)) < 0 || buf_varint(&o, zz(g->t_end)) < 0
        || buf_varint(&o, (uint64_t)g->count) < 0 || buf_varint(&o, (uint64_t)g->status_len) < 0
        || buf_varint(&o, (uint64_t)str_from) < 0
        || buf_varint(&o, (uint64_t)(g->nstrs - str_from)) < 0
        || buf_varint(&o, (uint64_t)strs.n) < 0 || buf_varint(&o, (uint64_t)rec_from) < 0
        || buf_varint(&o, (uint64_t)rec_n) < 0 || buf_room(&o, strs.n + rec_n) < 0)
        goto done;
    if (strs.n) memcpy(o.b + o.n, strs.b, (size_t)strs.n);
    o.n += strs.n;
    if (rec_n) memcpy(o.b + o.n, g->buf + rec_from, (size_t)rec_n);
    o.n += rec_n;
    out = PyBytes_FromStringAndSize((const char *)o.b, o.n);
done:
    PyMem_Free(strs.b);
    PyMem_Free(o.b);
    return out;
}

static int
load_varint(const uint8_t **p, const uint8_t *end, uint64_t *out, const char *what)
{
    Dec d = {NULL, *p, end, 0, 0, 0};
    if (get_varint(&d, out) < 0) {
        PyErr_Format(PyExc_ValueError, "corrupt flightdeck generation (%s)", what);
        return -1;
    }
    *p = d.p;
    return 0;
}

/* load_segment(data): a read-only Segment from what Segment.dump() wrote; checks every
 * length against the bytes given (untrusted: they come back from files and Redis). */
static PyObject *
mod_load_segment(PyObject *m, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    const uint8_t *p = view.buf, *end = p + view.len;
    uint64_t tb, ts, te, count, status_len, nstrs, len;
    Segment *g = NULL;
    if (load_varint(&p, end, &tb, "t_base") < 0 || load_varint(&p, end, &ts, "t_start") < 0
        || load_varint(&p, end, &te, "t_end") < 0 || load_varint(&p, end, &count, "count") < 0
        || load_varint(&p, end, &status_len, "status length") < 0
        || load_varint(&p, end, &nstrs, "strings") < 0)
        goto fail;
    /* every string takes at least its length byte */
    if (nstrs > (uint64_t)(end - p) || count > (uint64_t)view.len) {
        PyErr_SetString(PyExc_ValueError, "corrupt flightdeck generation (counts)");
        goto fail;
    }
    g = seg_new(0, unzz(tb));
    if (!g) goto fail;
    g->open = 0;
    g->t_start = unzz(ts);
    g->t_end = unzz(te);
    g->count = (Py_ssize_t)count;
    if (nstrs) {
        g->strs = PyMem_Malloc((size_t)nstrs * sizeof(PyObject *));
        if (!g->strs) {
            PyErr_NoMemory();
            goto fail;
        }
        g->strs_cap = (Py_ssize_t)nstrs;
    }
    for (uint64_t i = 0; i < nstrs; i++) {
        uint64_t n;
        if (load_varint(&p, end, &n, "string length") < 0) goto fail;
        if (n > (uint64_t)(end - p)) {
            PyErr_SetString(PyExc_ValueError, "corrupt flightdeck generation (string)");
            goto fail;
        }
        PyObject *s = PyUnicode_DecodeUTF8((const char *)p, (Py_ssize_t)n, "surrogatepass");
        if (!s) goto fail;
        g->strs[g->nstrs++] = s;
        p += n;
    }
    if (load_varint(&p, end, &len, "length") < 0) goto fail;
    if (len != (uint64_t)(end - p) || status_len > len) {
        PyErr_SetString(PyExc_ValueError, "corrupt flightdeck generation (record length)");
        goto fail;
    }
    if (len) {
        g->buf = PyMem_Malloc((size_t)len);
        if (!g->buf) {
            PyErr_NoMemory();
            goto fail;
        }
        memcpy(g->buf, p, (size_t)len);
    }
    g->len = g->cap = (Py_ssize_t)len;
    g->status_len = (Py_ssize_t)status_len;
    seg_free_tables(g);
    g->extra = 0;
    PyBuffer_Release(&view);
    return (PyObject *)g;
fail:
    Py_XDECREF(g);
    PyBuffer_Release(&view);
    return NULL;
}

/* Skip one tagged value without making it (the trace-id scan). */
static int
skip_value(Dec *d, int depth)
{
    if (d->p >= d->end) {
        corrupt("end");
        return -1;
    }
    uint8_t tag = *d->p++;
    uint64_t u;
    switch (tag) {
    case V_NONE:
    case V_FALSE:
    case V_TRUE: return 0;
    case V_INT:
    case V_STR:
    case V_BIGINT:
    case V_REF: return get_varint(d, &u);
    case V_TUPLE:
    case V_LIST:
        if (depth >= MAX_DEPTH + 1) {
            corrupt("depth");
            return -1;
        }
        if (get_varint(d, &u) < 0) return -1;
        if (u > (uint64_t)(d->end - d->p)) {
            corrupt("length");
            return -1;
        }
        for (uint64_t i = 0; i < u; i++)
            if (skip_value(d, depth + 1) < 0) return -1;
        return 0;
    case V_ASCII:
        if (d->p >= d->end || *d->p > d->end - d->p - 1) {
            corrupt("ascii");
            return -1;
        }
        d->p += 1 + *d->p;
        return 0;
    case V_FLOAT:
        if (d->end - d->p < 8) {
            corrupt("float");
            return -1;
        }
        d->p += 8;
        return 0;
    case V_BYTES:
        if (get_varint(d, &u) < 0) return -1;
        if (u > (uint64_t)(d->end - d->p)) {
            corrupt("bytes");
            return -1;
        }
        d->p += u;
        return 0;
    }
    corrupt("tag");
    return -1;
}

/* requests(): (rid, trace_id) of every REQ_START record (status records included), decoding
 * those alone and skipping the rest: the index a capture puts in its header. */
static PyObject *
Segment_requests(Segment *g, PyObject *Py_UNUSED(ignored))
{
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    Dec d = {g, g->buf, g->buf + g->len, g->t_base, 0, 0};
    while (d.p < d.end) {
        uint8_t kind = *d.p;
        PyObject *e = NULL;
        if (kind == K_REQ_START || kind == K_GENERIC) {
            e = dec_event(&d);
            if (!e) goto fail;
        } else {
            d.p++;
            if (kind >= NKINDS || !SCHEMA[kind]) {
                corrupt("kind");
                goto fail;
            }
            for (const char *s = SCHEMA[kind]; *s; s++) {
                uint64_t u;
                if (*s == 'V' ? skip_value(&d, 1) < 0 : get_varint(&d, &u) < 0) goto fail;
            }
            continue;
        }
        if (PyTuple_GET_SIZE(e) == 11 && PyLong_CheckExact(PyTuple_GET_ITEM(e, 0))
            && PyLong_AsLong(PyTuple_GET_ITEM(e, 0)) == K_REQ_START) {
            PyObject *pair = PyTuple_Pack(2, PyTuple_GET_ITEM(e, 2), PyTuple_GET_ITEM(e, 10));
            if (!pair || PyList_Append(out, pair) < 0) {
                Py_XDECREF(pair);
                Py_DECREF(e);
                goto fail;
            }
            Py_DECREF(pair);
        }
        PyErr_Clear();
        Py_DECREF(e);
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

static PyMethodDef Segment_methods[] = {
    {"events", (PyCFunction)Segment_events, METH_NOARGS, "The events, decoded into tuples."},
    {"status", (PyCFunction)Segment_status, METH_NOARGS,
     "(tasks, requests) alive when the generation opened: id -> creation tuple."},
    {"dump", (PyCFunction)Segment_dump, METH_NOARGS,
     "The stored form: times, counts, the string table and the records, in one bytes."},
    {"requests", (PyCFunction)Segment_requests, METH_NOARGS,
     "(rid, trace_id) of each REQ_START record, the others skipped undecoded."},
    {NULL}};

static PyMemberDef Segment_members[] = {
    {"count", T_PYSSIZET, offsetof(Segment, count), READONLY, "events held"},
    {"t_start", T_LONGLONG, offsetof(Segment, t_start), READONLY, "when it opened"},
    {"t_end", T_LONGLONG, offsetof(Segment, t_end), READONLY, "when its last event ended"},
    {"strings", T_PYSSIZET, offsetof(Segment, nstrs), READONLY, "interned strings"},
    {"status_bytes", T_PYSSIZET, offsetof(Segment, status_len), READONLY, "status records"},
    {"serial", T_LONGLONG, offsetof(Segment, serial), READONLY,
     "its window's count of generations opened, this one included (0: loaded)"},
    {NULL}};

static PyGetSetDef Segment_getset[] = {
    {"nbytes", (getter)Segment_get_nbytes, NULL, "accounted bytes", NULL},
    {"data", (getter)Segment_get_data, NULL, "the encoded records (a copy)", NULL},
    {NULL}};

static PyTypeObject Segment_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flightdeck.core._native.Segment",
    .tp_basicsize = sizeof(Segment),
    .tp_dealloc = (destructor)Segment_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One generation of the native window: encoded events and their tables.",
    .tp_methods = Segment_methods,
    .tp_members = Segment_members,
    .tp_getset = Segment_getset,
};

/* A read-only copy of an open generation, for freeze(). */
static Segment *
seg_copy(Segment *src)
{
    Segment *g = seg_new(src->len, src->t_base);
    if (!g) return NULL;
    if (src->len) memcpy(g->buf, src->buf, (size_t)src->len);
    g->len = src->len;
    g->status_len = src->status_len;
    g->count = src->count;
    g->t_start = src->t_start;
    g->t_end = src->t_end;
    g->serial = src->serial;
    g->open = 0;
    if (src->nstrs) {
        g->strs = PyMem_Malloc((size_t)src->nstrs * sizeof(PyObject *));
        if (!g->strs) {
            Py_DECREF(g);
            PyErr_NoMemory();
            return NULL;
        }
        for (Py_ssize_t i = 0; i < src->nstrs; i++) {
            g->strs[i] = src->strs[i];
            Py_INCREF(g->strs[i]);
        }
        g->nstrs = g->strs_cap = src->nstrs;
    }
    g->extra = src->extra;
    return g;
}

#endif /* FD_NATIVE_STORED_H */
