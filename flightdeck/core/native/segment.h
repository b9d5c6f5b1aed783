/* Segment (one generation) and the encoder that writes events into it.
 * Part of the _native translation unit: included once, in order, by core/_native.c
 * (one unit keeps the hot helpers inlined across parts). */
#ifndef FD_NATIVE_SEGMENT_H
#define FD_NATIVE_SEGMENT_H

/* ------------------------------------------------------------------------------------ */
/* Segment: one generation                                                               */

/* An entry of a generation's strings-by-address cache (Segment.byaddr). */
typedef struct {
    PyObject *key;
    uint32_t idx;
} ByAddr;

typedef struct {
    PyObject_HEAD
    uint8_t *buf;
    Py_ssize_t len, cap;   /* bytes written / allocated */
    Py_ssize_t status_len; /* the status records at the head */
    PyObject **strs;       /* interned strings, by index (strong refs) */
    Py_ssize_t nstrs, strs_cap;
    Py_ssize_t extra; /* accounted bytes besides buf: strings, ids, tables */
    Py_ssize_t count; /* events (status records excluded) */
    int64_t t_base, t_start, t_end;
    int64_t serial; /* its window's count of generations opened, this one included (0: not
                     * a window's): the window file names a generation by it */
    int open;       /* still written to (the tables below exist) */
    StrTab strtab;
    int64_t last_t;
    int64_t last_tid;
    /* Strings seen so far (by hash): one seen twice goes into the table from its third
     * occurrence on; until then it is written inline (task names appear twice, paths and
     * file names over and over). */
    struct {
        Py_hash_t h;
        uint32_t n;
        uint32_t pos;
    } *seen;
    uint32_t seen_mask;
    /* The strings already in the table, by address (BYADDR_N / 2 sets of two): the same
     * str object again (a code object's name, a route template) skips hashing and probing.
     * An entry is only ever a string the table holds a reference to, so its address is not
     * reused while the entry stands. Allocated with `seen`, dropped at seal. */
    ByAddr *byaddr;
} Segment;
#define BYADDR_BITS 7               /* 128 sets */
#define BYADDR_N (2 << BYADDR_BITS) /* entries */

/* A quick hash of a short ASCII string's bytes (the seen table's). */
static inline Py_hash_t
ascii_hash(const void *data, Py_ssize_t n)
{
    const unsigned char *p = (const unsigned char *)data;
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdULL;
        h ^= h >> 32;
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, p, (size_t)n);
    h = (h ^ w) * 0xff51afd7ed558ccdULL;
    h ^= h >> 29;
    return (Py_hash_t)h;
}
/* The first of the two entries of the set of ``s``. The address is hashed (Fibonacci):
 * pymalloc puts objects of one size at the same offsets of every pool, so the low address
 * bits alone would use a fraction of the sets, and whether a request's hot strings collided
 * would depend on where they happened to be allocated. */
static inline uint32_t
byaddr_set(PyObject *s)
{
    return (uint32_t)(((uint64_t)(uintptr_t)s * 0x9e3779b97f4a7c15ULL) >> (64 - BYADDR_BITS)) * 2;
}
/* The entry holding ``s``, or NULL. */
static inline const ByAddr *
byaddr_find(const Segment *g, PyObject *s)
{
    if (!g->byaddr) return NULL;
    const ByAddr *a = &g->byaddr[byaddr_set(s)];
    return a[0].key == s ? &a[0] : a[1].key == s ? &a[1] : NULL;
}
static inline void
byaddr_put(Segment *g, PyObject *s, uint32_t idx)
{
    if (!g->byaddr) return;
    uint32_t b = byaddr_set(s);
    if (g->byaddr[b].key != s) g->byaddr[b + 1] = g->byaddr[b]; /* the newest first */
    g->byaddr[b].key = s;
    g->byaddr[b].idx = idx;
}

static PyTypeObject Segment_Type;

static void
seg_free_tables(Segment *g)
{
    strtab_free(&g->strtab);
    PyMem_Free(g->seen);
    g->seen = NULL;
    PyMem_Free(g->byaddr);
    g->byaddr = NULL;
}

static void
Segment_dealloc(Segment *g)
{
    for (Py_ssize_t i = 0; i < g->nstrs; i++) Py_DECREF(g->strs[i]);
    PyMem_Free(g->strs);
    PyMem_Free(g->buf);
    seg_free_tables(g);
    PyObject_Free(g);
}

static Segment *
seg_new(Py_ssize_t cap, int64_t t_base)
{
    Segment *g = PyObject_New(Segment, &Segment_Type);
    if (!g) return NULL;
    memset((char *)g + sizeof(PyObject), 0, sizeof(Segment) - sizeof(PyObject));
    if (cap > 0) {
        g->buf = PyMem_Malloc((size_t)cap);
        if (!g->buf) {
            Py_DECREF(g);
            PyErr_NoMemory();
            return NULL;
        }
    }
    g->cap = cap;
    g->t_base = g->t_start = g->t_end = g->last_t = t_base;
    g->open = 1;
    /* at most 1/16 of the generation: 64 .. 512 entries of 16 bytes */
    uint32_t n = 512;
    while (n > 64 && (Py_ssize_t)n * 16 * 16 > cap) n /= 2;
    if ((Py_ssize_t)n * 16 * 16 <= cap) {
        g->seen = PyMem_Calloc(n, 16);
        if (g->seen) {
            g->seen_mask = n - 1;
            g->extra += (Py_ssize_t)n * 16;
            /* at most 1/16 of the generation too (4 KiB: from 64 KiB generations on) */
            if ((Py_ssize_t)BYADDR_N * (Py_ssize_t)sizeof(*g->byaddr) * 16 <= cap)
                g->byaddr = PyMem_Calloc(BYADDR_N, sizeof(*g->byaddr));
            if (g->byaddr) g->extra += BYADDR_N * (Py_ssize_t)sizeof(*g->byaddr);
        }
    }
    return g;
}

/* Accounted size: what a generation may hold within its budget. */
static inline Py_ssize_t
seg_bytes(Segment *g)
{
    return g->len + g->extra;
}

/* Seal: drop the encoder's tables and give back the unused end of the buffer. */
static void
seg_seal(Segment *g)
{
    if (!g->open) return;
    g->open = 0;
    Py_ssize_t tables = (Py_ssize_t)g->strtab.cap * (Py_ssize_t)sizeof(StrSlot)
                        + (g->seen ? (Py_ssize_t)(g->seen_mask + 1) * 16 : 0)
                        + (g->byaddr ? BYADDR_N * (Py_ssize_t)sizeof(*g->byaddr) : 0);
    seg_free_tables(g);
    g->extra -= tables;
    if (g->extra < 0) g->extra = 0;
    if (g->len < g->cap && g->len > 0) {
        uint8_t *nb = PyMem_Realloc(g->buf, (size_t)g->len);
        if (nb) {
            g->buf = nb;
            g->cap = g->len;
        }
    }
}

/* ---- encoder ------------------------------------------------------------------------ */

#define E_FULL (-1)
#define E_BAD (-2)
#define E_NOMEM (-3)

typedef struct {
    Segment *g;
    uint8_t *p;
    int64_t last_t;
    int64_t t_first;
    int64_t t_last; /* the event's end time, for last_event_time and t_end */
    int64_t last_tid;
} Enc;

static inline int
enc_room(Enc *e, Py_ssize_t n)
{
    return (e->p - e->g->buf) + n + e->g->extra <= e->g->cap;
}

static inline int
put_u8(Enc *e, uint8_t b)
{
    if (!enc_room(e, 1)) return E_FULL;
    *e->p++ = b;
    return 0;
}

static inline int
put_varint(Enc *e, uint64_t v)
{
    if (!enc_room(e, 10)) {
        /* close to the end: check the exact length */
        Py_ssize_t n = 1;
        for (uint64_t x = v; x >= 0x80; x >>= 7) n++;
        if (!enc_room(e, n)) return E_FULL;
    }
    while (v >= 0x80) {
        *e->p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *e->p++ = (uint8_t)v;
    return 0;
}

static int
intern_str(Enc *e, PyObject *s, uint64_t *idx)
{
    Segment *g = e->g;
    Py_hash_t h = PyObject_Hash(s); /* exact str: cached, never runs Python code */
    if (h == -1) {
        PyErr_Clear();
        return E_BAD;
    }
    StrSlot *sl = strtab_find(&g->strtab, s, h);
    if (sl && sl->key) {
        *idx = sl->idx;
        if (sl->key == s) byaddr_put(g, s, sl->idx);
        return 0;
    }
    Py_ssize_t cost = STR_COST(s) + SLOT_COST;
    Py_ssize_t grow = 0;
    if ((g->strtab.n + 1) * 2 > g->strtab.cap)
        grow = (Py_ssize_t)(g->strtab.cap ? g->strtab.cap : 64) * (Py_ssize_t)sizeof(StrSlot);
    if (g->nstrs == g->strs_cap)
        grow += (g->strs_cap ? g->strs_cap : 64) * (Py_ssize_t)sizeof(PyObject *);
    if ((e->p - g->buf) + g->extra + cost + grow > g->cap) return E_FULL;
    if (g->nstrs == g->strs_cap) {
        Py_ssize_t nc = g->strs_cap ? g->strs_cap * 2 : 64;
        PyObject **ns = PyMem_Realloc(g->strs, (size_t)nc * sizeof(PyObject *));
        if (!ns) return E_NOMEM;
        g->extra += (nc - g->strs_cap) * (Py_ssize_t)sizeof(PyObject *);
        g->strs = ns;
        g->strs_cap = nc;
    }
    if ((g->strtab.n + 1) * 2 > g->strtab.cap) {
        uint32_t old = g->strtab.cap;
        if (strtab_grow(&g->strtab) < 0) return E_NOMEM;
        g->extra += (Py_ssize_t)(g->strtab.cap - old) * (Py_ssize_t)sizeof(StrSlot);
        sl = strtab_find(&g->strtab, s, h);
    }
    if (sl == NULL) sl = strtab_find(&g->strtab, s, h);
    Py_INCREF(s);
    sl->key = s;
    sl->hash = h;
    sl->idx = (uint32_t)g->nstrs;
    g->strtab.n++;
    g->strs[g->nstrs++] = s;
    g->extra += STR_COST(s);
    *idx = sl->idx;
    byaddr_put(g, s, sl->idx);
    return 0;
}

static inline uint64_t
tid_code(int64_t tid, int64_t prev)
{
    int64_t d = (int64_t)((uint64_t)tid - (uint64_t)prev);
    if (d % 16 == 0) return zz(d / 16) << 1;
    return (zz(d) << 1) | 1;
}

static inline int64_t
tid_decode(uint64_t u, int64_t prev)
{
    int64_t d = unzz(u >> 1);
    if (!(u & 1)) d = (int64_t)((uint64_t)d * 16);
    return (int64_t)((uint64_t)prev + (uint64_t)d);
}

/* An exact int of at most two digits (every timestamp, id and count here), read from its
 * digits without a call; 0, or -1 to take the general path. */
static inline int
small_i64(PyObject *v, int64_t *out)
{
#if PY_VERSION_HEX >= 0x030C0000
    uintptr_t tag = ((PyLongObject *)v)->long_value.lv_tag;
    uintptr_t n = tag >> 3;
    const digit *d = ((PyLongObject *)v)->long_value.ob_digit;
    int64_t sign = 1 - (int64_t)(tag & 3);
#else
    Py_ssize_t size = Py_SIZE(v);
    uintptr_t n = (uintptr_t)(size < 0 ? -size : size);
    const digit *d = ((PyLongObject *)v)->ob_digit;
    int64_t sign = size < 0 ? -1 : 1;
#endif
    if (n == 0) {
        *out = 0;
        return 0;
    }
    if (n == 1) {
        *out = sign * (int64_t)d[0];
        return 0;
    }
    if (n == 2 && 2 * PyLong_SHIFT < 63) {
        *out = sign * (int64_t)((uint64_t)d[0] | ((uint64_t)d[1] << PyLong_SHIFT));
        return 0;
    }
    return -1;
}

static int
enc_value(Enc *e, PyObject *v, int depth)
{
    int r;
    PyTypeObject *tp = Py_TYPE(v);
    if (v == Py_None) return put_u8(e, V_NONE);
    if (tp == &PyUnicode_Type) {
        uint64_t idx;
        const ByAddr *known = byaddr_find(e->g, v);
        if (known != NULL) {
            if ((r = put_u8(e, V_STR)) < 0) return r;
            return put_varint(e, known->idx);
        }
        Py_ssize_t n = PyUnicode_GET_LENGTH(v);
        int inline_it = n <= INLINE_MAX && PyUnicode_IS_COMPACT_ASCII(v);
        Segment *g = e->g;
        uint32_t i = 0;
        if (inline_it && g->seen) {
            /* a hash of its bytes, not str's: most of these are one-offs (task names) whose
             * str hash nobody else needs; a collision only costs a string in the table */
            Py_hash_t h = ascii_hash(PyUnicode_DATA(v), n);
            i = (uint32_t)h & g->seen_mask;
            if (g->seen[i].h == h) {
                uint32_t pos = g->seen[i].pos;
                if (g->seen[i].n >= 2)
                    inline_it = 0;
                else if ((Py_ssize_t)pos + 2 + n <= g->len && g->buf[pos] == V_ASCII
                         && g->buf[pos + 1] == n
                         && memcmp(g->buf + pos + 2, PyUnicode_DATA(v), (size_t)n) == 0) {
                    /* seen once, committed: refer back to it */
                    Py_ssize_t here = e->p - g->buf;
                    if ((r = put_u8(e, V_REF)) < 0) return r;
                    if ((r = put_varint(e, (uint64_t)(here - pos))) < 0) return r;
                    g->seen[i].n++;
                    return 0;
                } else
                    g->seen[i].n++;
            } else {
                g->seen[i].h = h;
                g->seen[i].n = 1;
                g->seen[i].pos = UINT32_MAX;
            }
        }
        if (inline_it) {
            if (!enc_room(e, 2 + n)) return E_FULL;
            if (g->seen && g->seen[i].n == 1) g->seen[i].pos = (uint32_t)(e->p - g->buf);
            *e->p++ = V_ASCII;
            *e->p++ = (uint8_t)n;
            memcpy(e->p, PyUnicode_DATA(v), (size_t)n);
            e->p += n;
            return 0;
        }
        if ((r = put_u8(e, V_STR)) < 0) return r;
        if ((r = intern_str(e, v, &idx)) < 0) return r;
        return put_varint(e, idx);
    }
    if (tp == &PyLong_Type) {
        int overflow = 0;
        int64_t small;
        long long x = small_i64(v, &small) == 0 ? (long long)small
                                                : PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow) {
            PyObject *s = PyObject_Str(v);
            if (!s) {
                PyErr_Clear();
                return E_BAD;
            }
            uint64_t idx;
            r = put_u8(e, V_BIGINT);
            if (r == 0) r = intern_str(e, s, &idx);
            Py_DECREF(s);
            if (r < 0) return r;
            return put_varint(e, idx);
        }
        if ((r = put_u8(e, V_INT)) < 0) return r;
        return put_varint(e, zz(x));
    }
    if (tp == &PyBool_Type) return put_u8(e, v == Py_True ? V_TRUE : V_FALSE);
    if (tp == &PyTuple_Type || tp == &PyList_Type) {
        if (depth >= MAX_DEPTH) return E_BAD;
        Py_ssize_t n = Py_SIZE(v);
        PyObject **items =
            tp == &PyTuple_Type ? ((PyTupleObject *)v)->ob_item : ((PyListObject *)v)->ob_item;
        if ((r = put_u8(e, tp == &PyTuple_Type ? V_TUPLE : V_LIST)) < 0) return r;
        if ((r = put_varint(e, (uint64_t)n)) < 0) return r;
        for (Py_ssize_t i = 0; i < n; i++) {
            /* a list cannot change under us: no Python code runs while encoding */
            if ((r = enc_value(e, items[i], depth + 1)) < 0) return r;
        }
        return 0;
    }
    if (tp == &PyFloat_Type) {
        double d = PyFloat_AS_DOUBLE(v);
        if ((r = put_u8(e, V_FLOAT)) < 0) return r;
        if (!enc_room(e, 8)) return E_FULL;
        memcpy(e->p, &d, 8);
        e->p += 8;
        return 0;
    }
    if (tp == &PyBytes_Type) {
        Py_ssize_t n = PyBytes_GET_SIZE(v);
        if ((r = put_u8(e, V_BYTES)) < 0) return r;
        if ((r = put_varint(e, (uint64_t)n)) < 0) return r;
        if (!enc_room(e, n)) return E_FULL;
        memcpy(e->p, PyBytes_AS_STRING(v), (size_t)n);
        e->p += n;
        return 0;
    }
    if (PyUnicode_Check(v)) {
        /* a str subclass: stored as the str it is (its __hash__ may be Python code) */
        PyObject *s = PyUnicode_Substring(v, 0, PyUnicode_GET_LENGTH(v));
        if (!s) {
            PyErr_Clear();
            return E_BAD;
        }
        r = enc_value(e, s, depth);
        Py_DECREF(s);
        return r;
    }
    return E_BAD;
}

static inline int
exact_i64(PyObject *v, int64_t *out)
{
    if (Py_TYPE(v) != &PyLong_Type) return -1;
    if (small_i64(v, out) == 0) return 0;
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || (x == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return -1;
    }
    *out = x;
    return 0;
}

static int
enc_T(Enc *e, int64_t t)
{
    int r = put_varint(e, zz(t - e->last_t));
    if (r == 0) {
        e->last_t = t;
        e->t_first = t;
        e->t_last = t;
    }
    return r;
}

static inline int
enc_R(Enc *e, int64_t t)
{
    return put_varint(e, t == 0 ? 0 : zz(t - e->t_first) + 1);
}

/* A task id of layout 'I' that is not None, coded against the previous one. */
static inline int
enc_tid(Enc *e, int64_t tid)
{
    int r = put_varint(e, tid_code(tid, e->last_tid) + 1);
    if (r == 0) e->last_tid = tid;
    return r;
}

static inline int
enc_I(Enc *e, PyObject *v)
{
    if (v == Py_None) return put_u8(e, 0);
    int64_t tid;
    if (exact_i64(v, &tid) < 0) return E_BAD;
    return enc_tid(e, tid);
}

/* An encoder at the end of g, where its next event goes. */
static inline Enc
enc_at(Segment *g)
{
    Enc e = {g, g->buf + g->len, g->last_t, 0, 0, g->last_tid};
    return e;
}

/* What e wrote becomes g's: its length, last time and last task id. */
static inline void
enc_commit(Segment *g, const Enc *e)
{
    g->len = e->p - g->buf;
    g->last_t = e->last_t;
    g->last_tid = e->last_tid;
}

/* Encode one event tuple at the end of g; on failure nothing is written. */
static int
enc_event(Segment *g, PyObject *ev, int64_t *t_end)
{
    Enc e = enc_at(g);
    Py_ssize_t n = PyTuple_GET_SIZE(ev);
    PyObject **it = ((PyTupleObject *)ev)->ob_item;
    int r = E_BAD;
    int64_t kind = -1;
    if (n >= 2 && exact_i64(it[0], &kind) == 0 && kind > 0 && kind < NKINDS
        && SCHEMA_LEN[kind] == n - 1) {
        const char *s = SCHEMA[kind];
        r = put_u8(&e, (uint8_t)kind);
        for (Py_ssize_t i = 1; i < n && r == 0; i++) {
            int64_t t;
            switch (s[i - 1]) {
            case 'T': r = exact_i64(it[i], &t) < 0 ? E_BAD : enc_T(&e, t); break;
            case 'R':
                r = exact_i64(it[i], &t) < 0 ? E_BAD : enc_R(&e, t);
                if (r == 0 && t > e.t_last) e.t_last = t;
                break;
            case 'I': r = enc_I(&e, it[i]); break;
            case 'N': r = exact_i64(it[i], &t) < 0 ? E_BAD : put_varint(&e, zz(t)); break;
            case 'n':
                if (it[i] == Py_None)
                    r = put_u8(&e, 0);
                else
                    r = exact_i64(it[i], &t) < 0 ? E_BAD : put_varint(&e, zz(t) + 1);
                break;
            default: r = enc_value(&e, it[i], 1);
            }
        }
        if (r == 0 && kind == K_TASK_STEP) {
            int64_t t1;
            if (exact_i64(it[2], &t1) == 0) e.t_last = t1;
        } else if (r == 0 && kind != K_TASK_STEP) {
            e.t_last = e.t_first;
        }
    }
    if (r == E_BAD) {
        /* not in its kind's layout: the generic form */
        e.p = g->buf + g->len;
        e.last_t = g->last_t;
        e.last_tid = g->last_tid;
        r = put_u8(&e, K_GENERIC);
        if (r == 0) r = enc_value(&e, ev, 0);
        if (r == 0) {
            int64_t t = 0;
            e.t_last = (n >= 2 && exact_i64(it[1], &t) == 0) ? t : g->t_end;
            if (n >= 3 && kind == K_TASK_STEP && exact_i64(it[2], &t) == 0) e.t_last = t;
        }
    }
    if (r < 0) return r;
    enc_commit(g, &e);
    *t_end = e.t_last;
    return 0;
}

static inline uint8_t *
raw_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* The typed fast path of a task step (no tuple): at most 1 + 4 * 10 bytes. */
static int
enc_step(Segment *g, int64_t t0, int64_t t1, uint64_t tid, int64_t tq)
{
    if (g->len + 41 + g->extra > g->cap) {
        /* near the end of the generation: the checked path */
        Enc e = enc_at(g);
        int r = put_u8(&e, K_TASK_STEP);
        if (r == 0) r = enc_T(&e, t0);
        if (r == 0) r = enc_R(&e, t1);
        if (r == 0) r = enc_tid(&e, (int64_t)tid);
        if (r == 0) r = enc_R(&e, tq);
        if (r < 0) return r;
        enc_commit(g, &e);
        return 0;
    }
    uint8_t *p = g->buf + g->len;
    *p++ = K_TASK_STEP;
    p = raw_varint(p, zz(t0 - g->last_t));
    p = raw_varint(p, t1 == 0 ? 0 : zz(t1 - t0) + 1);
    p = raw_varint(p, tid_code((int64_t)tid, g->last_tid) + 1);
    p = raw_varint(p, tq == 0 ? 0 : zz(tq - t0) + 1);
    g->len = p - g->buf;
    g->last_t = t0;
    g->last_tid = (int64_t)tid;
    return 0;
}

#endif /* FD_NATIVE_SEGMENT_H */
