/* The decoder: a generation's records back into the event tuples, checked.
 * Part of the _native translation unit: included once, in order, by core/_native.c
 * (one unit keeps the hot helpers inlined across parts). */
#ifndef FD_NATIVE_DECODER_H
#define FD_NATIVE_DECODER_H

/* ---- decoder ------------------------------------------------------------------------ */

typedef struct {
    Segment *g;
    const uint8_t *p, *end;
    int64_t last_t, t_first, last_tid;
} Dec;

static int
get_varint(Dec *d, uint64_t *out)
{
    uint64_t v = 0;
    int shift = 0;
    while (d->p < d->end) {
        uint8_t b = *d->p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
        shift += 7;
        if (shift > 63) break;
    }
    PyErr_SetString(PyExc_ValueError, "corrupt flightdeck segment (varint)");
    return -1;
}

static PyObject *
corrupt(const char *what)
{
    PyErr_Format(PyExc_ValueError, "corrupt flightdeck segment (%s)", what);
    return NULL;
}

static PyObject *
dec_value(Dec *d, int depth)
{
    if (d->p >= d->end) return corrupt("end");
    uint8_t tag = *d->p++;
    uint64_t u;
    switch (tag) {
    case V_NONE: Py_RETURN_NONE;
    case V_FALSE: Py_RETURN_FALSE;
    case V_TRUE: Py_RETURN_TRUE;
    case V_INT:
        if (get_varint(d, &u) < 0) return NULL;
        return PyLong_FromLongLong(unzz(u));
    case V_STR:
    case V_BIGINT: {
        if (get_varint(d, &u) < 0) return NULL;
        if (u >= (uint64_t)d->g->nstrs) return corrupt("string index");
        PyObject *s = d->g->strs[u];
        if (tag == V_BIGINT) return PyLong_FromUnicodeObject(s, 10);
        Py_INCREF(s);
        return s;
    }
    case V_TUPLE:
    case V_LIST: {
        if (depth >= MAX_DEPTH + 1) return corrupt("depth");
        if (get_varint(d, &u) < 0) return NULL;
        if (u > (uint64_t)(d->end - d->p)) return corrupt("length");
        Py_ssize_t n = (Py_ssize_t)u;
        PyObject *c = tag == V_TUPLE ? PyTuple_New(n) : PyList_New(n);
        if (!c) return NULL;
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *x = dec_value(d, depth + 1);
            if (!x) {
                Py_DECREF(c);
                return NULL;
            }
            if (tag == V_TUPLE)
                PyTuple_SET_ITEM(c, i, x);
            else
                PyList_SET_ITEM(c, i, x);
        }
        return c;
    }
    case V_REF: {
        const uint8_t *tag = d->p - 1;
        if (get_varint(d, &u) < 0) return NULL;
        if (u > (uint64_t)(tag - d->g->buf) || u == 0) return corrupt("ref");
        const uint8_t *at = tag - u;
        if (at[0] != V_ASCII || at + 2 + at[1] > tag) return corrupt("ref target");
        return PyUnicode_DecodeASCII((const char *)at + 2, at[1], NULL);
    }
    case V_ASCII: {
        if (d->p >= d->end) return corrupt("end");
        Py_ssize_t n = *d->p++;
        if (n > d->end - d->p) return corrupt("ascii");
        d->p += n;
        return PyUnicode_DecodeASCII((const char *)d->p - n, n, NULL);
    }
    case V_FLOAT: {
        double x;
        if (d->end - d->p < 8) return corrupt("float");
        memcpy(&x, d->p, 8);
        d->p += 8;
        return PyFloat_FromDouble(x);
    }
    case V_BYTES:
        if (get_varint(d, &u) < 0) return NULL;
        if (u > (uint64_t)(d->end - d->p)) return corrupt("bytes");
        d->p += u;
        return PyBytes_FromStringAndSize((const char *)d->p - u, (Py_ssize_t)u);
    }
    return corrupt("tag");
}

static PyObject *
dec_event(Dec *d)
{
    if (d->p >= d->end) return corrupt("end");
    uint8_t kind = *d->p++;
    if (kind == K_GENERIC) {
        PyObject *v = dec_value(d, 0);
        if (v && !PyTuple_CheckExact(v)) {
            Py_DECREF(v);
            return corrupt("generic");
        }
        if (v && PyTuple_GET_SIZE(v) >= 2 && PyLong_CheckExact(PyTuple_GET_ITEM(v, 1))) {
            /* keep the delta chain: a generic event does not move last_t */
        }
        return v;
    }
    if (kind >= NKINDS || !SCHEMA[kind]) return corrupt("kind");
    const char *s = SCHEMA[kind];
    Py_ssize_t n = SCHEMA_LEN[kind];
    PyObject *t = PyTuple_New(n + 1);
    if (!t) return NULL;
    Py_INCREF(KIND_OBJ[kind]);
    PyTuple_SET_ITEM(t, 0, KIND_OBJ[kind]);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *x = NULL;
        uint64_t u;
        switch (s[i]) {
        case 'T':
            if (get_varint(d, &u) < 0) goto fail;
            d->last_t = (int64_t)((uint64_t)d->last_t + (uint64_t)unzz(u)); /* wraps, never UB */
            d->t_first = d->last_t;
            x = PyLong_FromLongLong(d->last_t);
            break;
        case 'R':
            if (get_varint(d, &u) < 0) goto fail;
            x = PyLong_FromLongLong(
                u == 0 ? 0 : (int64_t)((uint64_t)d->t_first + (uint64_t)unzz(u - 1)));
            break;
        case 'N':
            if (get_varint(d, &u) < 0) goto fail;
            x = PyLong_FromLongLong(unzz(u));
            break;
        case 'n':
            if (get_varint(d, &u) < 0) goto fail;
            if (u == 0) {
                x = Py_None;
                Py_INCREF(x);
            } else
                x = PyLong_FromLongLong(unzz(u - 1));
            break;
        case 'I':
            if (get_varint(d, &u) < 0) goto fail;
            if (u == 0) {
                x = Py_None;
                Py_INCREF(x);
            } else {
                d->last_tid = tid_decode(u - 1, d->last_tid);
                x = PyLong_FromLongLong(d->last_tid);
            }
            break;
        default: x = dec_value(d, 1);
        }
        if (!x) goto fail;
        PyTuple_SET_ITEM(t, i + 1, x);
    }
    return t;
fail:
    Py_DECREF(t);
    return NULL;
}

static PyObject *
seg_decode_range(Segment *g, Py_ssize_t from, Py_ssize_t to, Py_ssize_t hint)
{
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    (void)hint;
    Dec d = {g, g->buf + from, g->buf + to, g->t_base, 0, 0};
    while (d.p < d.end) {
        PyObject *e = dec_event(&d);
        if (!e || PyList_Append(out, e) < 0) {
            Py_XDECREF(e);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(e);
    }
    return out;
}

static PyObject *
Segment_events(Segment *g, PyObject *Py_UNUSED(ignored))
{
    return seg_decode_range(g, g->status_len, g->len, g->count);
}

static PyObject *
Segment_status(Segment *g, PyObject *Py_UNUSED(ignored))
{
    PyObject *evs = seg_decode_range(g, 0, g->status_len, 0);
    if (!evs) return NULL;
    PyObject *tasks = PyDict_New(), *reqs = PyDict_New();
    if (!tasks || !reqs) goto fail;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(evs); i++) {
        PyObject *e = PyList_GET_ITEM(evs, i);
        if (PyTuple_GET_SIZE(e) < 3 || !PyLong_CheckExact(PyTuple_GET_ITEM(e, 0))) continue;
        long k = PyLong_AsLong(PyTuple_GET_ITEM(e, 0));
        if (k == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            continue;
        }
        PyObject *d = k == K_TASK_CREATE ? tasks : k == K_REQ_START ? reqs : NULL;
        if (d && PyDict_SetItem(d, PyTuple_GET_ITEM(e, 2), e) < 0) goto fail;
    }
    Py_DECREF(evs);
    return Py_BuildValue("(NN)", tasks, reqs);
fail:
    Py_DECREF(evs);
    Py_XDECREF(tasks);
    Py_XDECREF(reqs);
    return NULL;
}

static PyObject *
Segment_get_nbytes(Segment *g, void *c)
{
    return PyLong_FromSsize_t(seg_bytes(g));
}

static PyObject *
Segment_get_data(Segment *g, void *c)
{
    return PyBytes_FromStringAndSize((const char *)g->buf, g->len);
}

#endif /* FD_NATIVE_DECODER_H */
