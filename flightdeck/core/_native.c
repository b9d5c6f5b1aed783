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
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#ifdef __APPLE__
#include <mach/mach_time.h>
#endif

/* ------------------------------------------------------------------------------------ */
/* clock                                                                                 */

#ifdef __APPLE__
static mach_timebase_info_data_t fd_timebase;
#endif

static inline int64_t
fd_clock(void)
{
#ifdef __APPLE__
    /* CPython 3.11-3.13 read perf_counter on macOS as mach_absolute_time() * numer / denom. */
    uint64_t ticks = mach_absolute_time();
    uint64_t q = ticks / fd_timebase.denom, r = ticks % fd_timebase.denom;
    return (int64_t)(q * fd_timebase.numer + r * fd_timebase.numer / fd_timebase.denom);
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
#endif
}

/* ------------------------------------------------------------------------------------ */
/* encoding helpers                                                                      */

static inline uint64_t zz(int64_t v) { return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63); }
static inline int64_t unzz(uint64_t u) { return (int64_t)(u >> 1) ^ -(int64_t)(u & 1); }

/* Value tags of the generic encoding. */
enum {
    V_NONE = 0, V_FALSE, V_TRUE, V_INT, V_STR, V_TUPLE, V_FLOAT, V_BYTES, V_BIGINT, V_LIST,
    V_ASCII, /* a short ASCII str stored inline: most are one-offs (task names, paths) */
    V_REF    /* the same str as the V_ASCII this many bytes back (a task's name at its end) */
};
#define INLINE_MAX 64

#define MAX_DEPTH 8
/* The kinds (K_TASK_CREATE, ...) and their layouts, generated from core/events.py. */
#include "_kinds.h"
#define NKINDS FD_NKINDS
#define K_GENERIC 0

/* Field layouts per event kind (events.native_layout in core/events.py), after the kind:
 *   T  the event's first timestamp: zigzag delta from the previous T in the generation
 *   R  another timestamp: 0 stays 0, else zigzag(v - T) + 1
 *   I  a task id or None: 0 for None, else 1 + the zigzag delta from the previous task id in
 *      the generation (ids are addresses, 16-aligned, close together: 2-3 bytes)
 *   N  an int (zigzag varint); n: an int or None (0 for None, else zigzag + 1)
 *   V  any value, tagged (None, bool, int, str, float, bytes, tuple, list). A str interned
 *      by CPython (identifiers, qualified names, file names: they repeat) or a long one
 *      goes into the generation's string table; a short ASCII one is written inline.
 * An event that does not fit its layout (another length, a bool where an int is due) is
 * stored with the generic layout: K_GENERIC then the whole tuple as a V. */
static const char *SCHEMA[NKINDS] = FD_SCHEMA_INIT;
static Py_ssize_t SCHEMA_LEN[NKINDS];
static PyObject *KIND_OBJ[NKINDS]; /* the kind ints, as decoded */

/* Accounted cost of an interned string and of an interned task id. */
#define STR_COST(s) (48 + PyUnicode_GET_LENGTH(s) * PyUnicode_KIND(s))
#define SLOT_COST 24
#define EST_STATUS_BYTES 120
/* A request in flight on top of its status slot, and its strings (window.py's
 * EST_REQUEST_BYTES and request_status_bytes). */
#define EST_REQUEST_BYTES 480

/* ------------------------------------------------------------------------------------ */
/* small hash tables (open addressing, linear probing, power-of-two capacity)           */

typedef struct { PyObject *key; Py_hash_t hash; uint32_t idx; } StrSlot;
typedef struct { StrSlot *slots; uint32_t cap, n; } StrTab;
typedef struct { uint64_t key; int64_t val; } U64Slot; /* key 0: empty; key 1: deleted */
typedef struct { U64Slot *slots; uint32_t cap, n, used; } U64Tab;

static void strtab_free(StrTab *t) { PyMem_Free(t->slots); t->slots = NULL; t->cap = t->n = 0; }

static StrSlot *
strtab_find(StrTab *t, PyObject *s, Py_hash_t h)
{
    if (!t->cap) return NULL;
    uint32_t mask = t->cap - 1, i = (uint32_t)h & mask;
    for (;;) {
        StrSlot *sl = &t->slots[i];
        if (sl->key == NULL) return sl;
        if (sl->key == s) return sl;
        if (sl->hash == h && PyUnicode_GET_LENGTH(sl->key) == PyUnicode_GET_LENGTH(s)
            && PyUnicode_KIND(sl->key) == PyUnicode_KIND(s)
            && memcmp(PyUnicode_DATA(sl->key), PyUnicode_DATA(s),
                      (size_t)(PyUnicode_GET_LENGTH(s) * PyUnicode_KIND(s))) == 0)
            return sl;
        i = (i + 1) & mask;
    }
}

static int
strtab_grow(StrTab *t)
{
    uint32_t ncap = t->cap ? t->cap * 2 : 64;
    StrSlot *ns = PyMem_Calloc(ncap, sizeof(StrSlot));
    if (!ns) return -1;
    for (uint32_t j = 0; j < t->cap; j++) {
        StrSlot *o = &t->slots[j];
        if (!o->key) continue;
        uint32_t i = (uint32_t)o->hash & (ncap - 1);
        while (ns[i].key) i = (i + 1) & (ncap - 1);
        ns[i] = *o;
    }
    PyMem_Free(t->slots);
    t->slots = ns;
    t->cap = ncap;
    return 0;
}

static void u64tab_free(U64Tab *t) { PyMem_Free(t->slots); t->slots = NULL; t->cap = t->n = t->used = 0; }

static inline uint32_t u64hash(uint64_t k) { k ^= k >> 33; k *= 0xff51afd7ed558ccdULL; k ^= k >> 33; return (uint32_t)k; }

static U64Slot *
u64tab_get(U64Tab *t, uint64_t key)
{
    if (!t->cap) return NULL;
    uint32_t mask = t->cap - 1, i = u64hash(key) & mask;
    for (;;) {
        U64Slot *sl = &t->slots[i];
        if (sl->key == key) return sl;
        if (sl->key == 0) return NULL;
        i = (i + 1) & mask;
    }
}

static int
u64tab_rehash(U64Tab *t, uint32_t ncap)
{
    U64Slot *ns = PyMem_Calloc(ncap, sizeof(U64Slot));
    if (!ns) return -1;
    for (uint32_t j = 0; j < t->cap; j++) {
        U64Slot *o = &t->slots[j];
        if (o->key <= 1) continue;
        uint32_t i = u64hash(o->key) & (ncap - 1);
        while (ns[i].key) i = (i + 1) & (ncap - 1);
        ns[i] = *o;
    }
    PyMem_Free(t->slots);
    t->slots = ns;
    t->cap = ncap;
    t->used = t->n;
    return 0;
}

/* Insert or update; keys 0 and 1 are reserved (never an object's address). */
static int
u64tab_put(U64Tab *t, uint64_t key, int64_t val)
{
    if (key <= 1) return 0;
    if ((t->used + 1) * 2 > t->cap) {
        uint32_t ncap = t->cap ? t->cap : 64;
        while ((t->n + 1) * 2 > ncap) ncap *= 2;
        if (u64tab_rehash(t, ncap < 64 ? 64 : ncap) < 0) return -1;
    }
    uint32_t mask = t->cap - 1, i = u64hash(key) & mask;
    U64Slot *tomb = NULL;
    for (;;) {
        U64Slot *sl = &t->slots[i];
        if (sl->key == key) { sl->val = val; return 0; }
        if (sl->key == 1 && !tomb) tomb = sl;
        if (sl->key == 0) {
            if (tomb) sl = tomb; else t->used++;
            sl->key = key;
            sl->val = val;
            t->n++;
            return 0;
        }
        i = (i + 1) & mask;
    }
}

static void
u64tab_del(U64Tab *t, uint64_t key)
{
    U64Slot *sl = u64tab_get(t, key);
    if (sl) { sl->key = 1; t->n--; }
}

/* ------------------------------------------------------------------------------------ */
/* Segment: one generation                                                               */

typedef struct {
    PyObject_HEAD
    uint8_t *buf;
    Py_ssize_t len, cap;         /* bytes written / allocated */
    Py_ssize_t status_len;       /* the status records at the head */
    PyObject **strs;             /* interned strings, by index (strong refs) */
    Py_ssize_t nstrs, strs_cap;
    Py_ssize_t extra;            /* accounted bytes besides buf: strings, ids, tables */
    Py_ssize_t count;            /* events (status records excluded) */
    int64_t t_base, t_start, t_end;
    int open;                    /* still written to (the tables below exist) */
    StrTab strtab;
    int64_t last_t;
    int64_t last_tid;
    /* Strings seen so far (by hash): one seen twice goes into the table from its third
     * occurrence on; until then it is written inline (task names appear twice, paths and
     * file names over and over). */
    struct { Py_hash_t h; uint32_t n; uint32_t pos; } *seen;
    uint32_t seen_mask;
    /* The strings already in the table, by address (direct-mapped): the same str object
     * again (a code object's name, a route template) skips hashing and probing. An entry
     * is only ever a string the table holds a reference to, so its address is not reused
     * while the entry stands. Allocated with `seen`, dropped at seal. */
    struct { PyObject *key; uint32_t idx; } *byaddr;
} Segment;
#define BYADDR_N 256
static inline uint32_t byaddr_slot(PyObject *s) { return (uint32_t)(((uintptr_t)s >> 4) & (BYADDR_N - 1)); }
static inline void byaddr_put(Segment *g, PyObject *s, uint32_t idx)
{
    if (!g->byaddr) return;
    uint32_t b = byaddr_slot(s);
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
        if (!g->buf) { Py_DECREF(g); PyErr_NoMemory(); return NULL; }
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
static inline Py_ssize_t seg_bytes(Segment *g) { return g->len + g->extra; }

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
        if (nb) { g->buf = nb; g->cap = g->len; }
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
    int64_t t_last;   /* the event's end time, for last_event_time and t_end */
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
    while (v >= 0x80) { *e->p++ = (uint8_t)(v | 0x80); v >>= 7; }
    *e->p++ = (uint8_t)v;
    return 0;
}

static int
intern_str(Enc *e, PyObject *s, uint64_t *idx)
{
    Segment *g = e->g;
    Py_hash_t h = PyObject_Hash(s); /* exact str: cached, never runs Python code */
    if (h == -1) { PyErr_Clear(); return E_BAD; }
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
    if (g->nstrs == g->strs_cap) grow += (g->strs_cap ? g->strs_cap : 64) * (Py_ssize_t)sizeof(PyObject *);
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
    if (n == 0) { *out = 0; return 0; }
    if (n == 1) { *out = sign * (int64_t)d[0]; return 0; }
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
        if (e->g->byaddr) {
            uint32_t b = byaddr_slot(v);
            if (e->g->byaddr[b].key == v) {
                if ((r = put_u8(e, V_STR)) < 0) return r;
                return put_varint(e, e->g->byaddr[b].idx);
            }
        }
        Py_ssize_t n = PyUnicode_GET_LENGTH(v);
        int inline_it = n <= INLINE_MAX && PyUnicode_IS_COMPACT_ASCII(v);
        Segment *g = e->g;
        uint32_t i = 0;
        if (inline_it && g->seen) {
            Py_hash_t h = PyObject_Hash(v); /* exact str: cached, no Python code */
            i = (uint32_t)h & g->seen_mask;
            if (g->seen[i].h == h) {
                uint32_t pos = g->seen[i].pos;
                if (g->seen[i].n >= 2) inline_it = 0;
                else if ((Py_ssize_t)pos + 2 + n <= g->len && g->buf[pos] == V_ASCII
                         && g->buf[pos + 1] == n
                         && memcmp(g->buf + pos + 2, PyUnicode_DATA(v), (size_t)n) == 0) {
                    /* seen once, committed: refer back to it */
                    Py_ssize_t here = e->p - g->buf;
                    if ((r = put_u8(e, V_REF)) < 0) return r;
                    if ((r = put_varint(e, (uint64_t)(here - pos))) < 0) return r;
                    g->seen[i].n++;
                    return 0;
                }
                else g->seen[i].n++;
            }
            else {
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
            if (!s) { PyErr_Clear(); return E_BAD; }
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
        PyObject **items = tp == &PyTuple_Type ? ((PyTupleObject *)v)->ob_item
                                               : ((PyListObject *)v)->ob_item;
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
        if (!s) { PyErr_Clear(); return E_BAD; }
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
    if (overflow || (x == -1 && PyErr_Occurred())) { PyErr_Clear(); return -1; }
    *out = x;
    return 0;
}

static int
enc_T(Enc *e, int64_t t)
{
    int r = put_varint(e, zz(t - e->last_t));
    if (r == 0) { e->last_t = t; e->t_first = t; e->t_last = t; }
    return r;
}

static inline int
enc_R(Enc *e, int64_t t)
{
    return put_varint(e, t == 0 ? 0 : zz(t - e->t_first) + 1);
}

static inline int
enc_I(Enc *e, PyObject *v)
{
    if (v == Py_None) return put_u8(e, 0);
    int64_t tid;
    if (exact_i64(v, &tid) < 0) return E_BAD;
    int r = put_varint(e, tid_code(tid, e->last_tid) + 1);
    if (r == 0) e->last_tid = tid;
    return r;
}

/* Encode one event tuple at the end of g; on failure nothing is written. */
static int
enc_event(Segment *g, PyObject *ev, int64_t *t_end)
{
    Enc e = {g, g->buf + g->len, g->last_t, 0, 0, g->last_tid};
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
            case 'T':
                r = exact_i64(it[i], &t) < 0 ? E_BAD : enc_T(&e, t);
                break;
            case 'R':
                r = exact_i64(it[i], &t) < 0 ? E_BAD : enc_R(&e, t);
                if (r == 0 && t > e.t_last) e.t_last = t;
                break;
            case 'I':
                r = enc_I(&e, it[i]);
                break;
            case 'N':
                r = exact_i64(it[i], &t) < 0 ? E_BAD : put_varint(&e, zz(t));
                break;
            case 'n':
                if (it[i] == Py_None) r = put_u8(&e, 0);
                else r = exact_i64(it[i], &t) < 0 ? E_BAD : put_varint(&e, zz(t) + 1);
                break;
            default:
                r = enc_value(&e, it[i], 1);
            }
        }
        if (r == 0 && kind == K_TASK_STEP) {
            int64_t t1;
            if (exact_i64(it[2], &t1) == 0) e.t_last = t1;
        }
        else if (r == 0 && kind != K_TASK_STEP) {
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
    g->len = e.p - g->buf;
    g->last_t = e.last_t;
    g->last_tid = e.last_tid;
    *t_end = e.t_last;
    return 0;
}

static inline uint8_t *
raw_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) { *p++ = (uint8_t)(v | 0x80); v >>= 7; }
    *p++ = (uint8_t)v;
    return p;
}

/* The typed fast path of a task step (no tuple): at most 1 + 4 * 10 bytes. */
static int
enc_step(Segment *g, int64_t t0, int64_t t1, uint64_t tid, int64_t tq)
{
    if (g->len + 41 + g->extra > g->cap) {
        /* near the end of the generation: the checked path */
        Enc e = {g, g->buf + g->len, g->last_t, 0, 0, g->last_tid};
        int r = put_u8(&e, K_TASK_STEP);
        if (r == 0) r = enc_T(&e, t0);
        if (r == 0) r = enc_R(&e, t1);
        if (r == 0) r = put_varint(&e, tid_code((int64_t)tid, e.last_tid) + 1);
        if (r == 0) r = enc_R(&e, tq);
        if (r < 0) return r;
        g->len = e.p - g->buf;
        g->last_t = e.last_t;
        g->last_tid = (int64_t)tid;
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
        if (!(b & 0x80)) { *out = v; return 0; }
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
            if (!x) { Py_DECREF(c); return NULL; }
            if (tag == V_TUPLE) PyTuple_SET_ITEM(c, i, x); else PyList_SET_ITEM(c, i, x);
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
        if (v && !PyTuple_CheckExact(v)) { Py_DECREF(v); return corrupt("generic"); }
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
            x = PyLong_FromLongLong(u == 0 ? 0 : (int64_t)((uint64_t)d->t_first + (uint64_t)unzz(u - 1)));
            break;
        case 'N':
            if (get_varint(d, &u) < 0) goto fail;
            x = PyLong_FromLongLong(unzz(u));
            break;
        case 'n':
            if (get_varint(d, &u) < 0) goto fail;
            if (u == 0) { x = Py_None; Py_INCREF(x); }
            else x = PyLong_FromLongLong(unzz(u - 1));
            break;
        case 'I':
            if (get_varint(d, &u) < 0) goto fail;
            if (u == 0) { x = Py_None; Py_INCREF(x); }
            else {
                d->last_tid = tid_decode(u - 1, d->last_tid);
                x = PyLong_FromLongLong(d->last_tid);
            }
            break;
        default:
            x = dec_value(d, 1);
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
        if (!e || PyList_Append(out, e) < 0) { Py_XDECREF(e); Py_DECREF(out); return NULL; }
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
        if (k == -1 && PyErr_Occurred()) { PyErr_Clear(); continue; }
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
Segment_get_nbytes(Segment *g, void *c) { return PyLong_FromSsize_t(seg_bytes(g)); }

static PyObject *
Segment_get_data(Segment *g, void *c)
{
    return PyBytes_FromStringAndSize((const char *)g->buf, g->len);
}

/* ---- the stored form of a generation (docs/snapshot-format.md, chunk "GENR") ------------
 * varints: zz(t_base) zz(t_start) zz(t_end) count status_len nstrs len, then nstrs strings
 * (varint byte length + UTF-8, lone surrogates kept as surrogatepass writes them), then
 * the len bytes of records. Self-contained: the strings travel inside the bytes. */

typedef struct { uint8_t *b; Py_ssize_t n, cap; } Buf;

static int
buf_room(Buf *o, Py_ssize_t n)
{
    if (o->n + n <= o->cap) return 0;
    Py_ssize_t nc = o->cap ? o->cap : 256;
    while (nc < o->n + n) nc *= 2;
    uint8_t *nb = PyMem_Realloc(o->b, (size_t)nc);
    if (!nb) { PyErr_NoMemory(); return -1; }
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

static PyObject *
Segment_dump(Segment *g, PyObject *Py_UNUSED(ignored))
{
    Buf o = {NULL, 0, 0};
    if (buf_room(&o, 64 + g->len + g->nstrs * 16) < 0) return NULL;
    if (buf_varint(&o, zz(g->t_base)) < 0 || buf_varint(&o, zz(g->t_start)) < 0
        || buf_varint(&o, zz(g->t_end)) < 0 || buf_varint(&o, (uint64_t)g->count) < 0
        || buf_varint(&o, (uint64_t)g->status_len) < 0 || buf_varint(&o, (uint64_t)g->nstrs) < 0)
        goto fail;
    for (Py_ssize_t i = 0; i < g->nstrs; i++) {
        PyObject *s = g->strs[i];
        if (PyUnicode_IS_COMPACT_ASCII(s)) {
            if (buf_put(&o, PyUnicode_DATA(s), PyUnicode_GET_LENGTH(s)) < 0) goto fail;
            continue;
        }
        PyObject *b = PyUnicode_AsEncodedString(s, "utf-8", "surrogatepass");
        if (!b) goto fail;
        int r = buf_put(&o, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b));
        Py_DECREF(b);
        if (r < 0) goto fail;
    }
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
        if (!g->strs) { PyErr_NoMemory(); goto fail; }
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
        if (!g->buf) { PyErr_NoMemory(); goto fail; }
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
    if (d->p >= d->end) { corrupt("end"); return -1; }
    uint8_t tag = *d->p++;
    uint64_t u;
    switch (tag) {
    case V_NONE: case V_FALSE: case V_TRUE: return 0;
    case V_INT: case V_STR: case V_BIGINT: case V_REF: return get_varint(d, &u);
    case V_TUPLE:
    case V_LIST:
        if (depth >= MAX_DEPTH + 1) { corrupt("depth"); return -1; }
        if (get_varint(d, &u) < 0) return -1;
        if (u > (uint64_t)(d->end - d->p)) { corrupt("length"); return -1; }
        for (uint64_t i = 0; i < u; i++) if (skip_value(d, depth + 1) < 0) return -1;
        return 0;
    case V_ASCII:
        if (d->p >= d->end || *d->p > d->end - d->p - 1) { corrupt("ascii"); return -1; }
        d->p += 1 + *d->p;
        return 0;
    case V_FLOAT:
        if (d->end - d->p < 8) { corrupt("float"); return -1; }
        d->p += 8;
        return 0;
    case V_BYTES:
        if (get_varint(d, &u) < 0) return -1;
        if (u > (uint64_t)(d->end - d->p)) { corrupt("bytes"); return -1; }
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
        }
        else {
            d.p++;
            if (kind >= NKINDS || !SCHEMA[kind]) { corrupt("kind"); goto fail; }
            for (const char *s = SCHEMA[kind]; *s; s++) {
                uint64_t u;
                if (*s == 'V' ? skip_value(&d, 1) < 0 : get_varint(&d, &u) < 0) goto fail;
            }
            continue;
        }
        if (PyTuple_GET_SIZE(e) == 11 && PyLong_CheckExact(PyTuple_GET_ITEM(e, 0))
            && PyLong_AsLong(PyTuple_GET_ITEM(e, 0)) == K_REQ_START) {
            PyObject *pair = PyTuple_Pack(2, PyTuple_GET_ITEM(e, 2), PyTuple_GET_ITEM(e, 10));
            if (!pair || PyList_Append(out, pair) < 0) { Py_XDECREF(pair); Py_DECREF(e); goto fail; }
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
    {NULL}
};

static PyMemberDef Segment_members[] = {
    {"count", T_PYSSIZET, offsetof(Segment, count), READONLY, "events held"},
    {"t_start", T_LONGLONG, offsetof(Segment, t_start), READONLY, "when it opened"},
    {"t_end", T_LONGLONG, offsetof(Segment, t_end), READONLY, "when its last event ended"},
    {"strings", T_PYSSIZET, offsetof(Segment, nstrs), READONLY, "interned strings"},
    {"status_bytes", T_PYSSIZET, offsetof(Segment, status_len), READONLY, "status records"},
    {NULL}
};

static PyGetSetDef Segment_getset[] = {
    {"nbytes", (getter)Segment_get_nbytes, NULL, "accounted bytes", NULL},
    {"data", (getter)Segment_get_data, NULL, "the encoded records (a copy)", NULL},
    {NULL}
};

static PyTypeObject Segment_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "flightdeck.core._native.Segment",
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
    g->open = 0;
    if (src->nstrs) {
        g->strs = PyMem_Malloc((size_t)src->nstrs * sizeof(PyObject *));
        if (!g->strs) { Py_DECREF(g); PyErr_NoMemory(); return NULL; }
        for (Py_ssize_t i = 0; i < src->nstrs; i++) { g->strs[i] = src->strs[i]; Py_INCREF(g->strs[i]); }
        g->nstrs = g->strs_cap = src->nstrs;
    }
    g->extra = src->extra;
    return g;
}

/* ------------------------------------------------------------------------------------ */
/* Window                                                                                */

typedef struct {
    PyObject_HEAD
    PyObject *dict;            /* instance attributes (live_tasks, live_requests, ...) */
    PyObject *weakreflist;
    int64_t window_ns, max_bytes, gen_ns;
    Py_ssize_t gen_cap;
    Py_ssize_t ngen;           /* generations held at most, the open one included */
    PyObject *clock;           /* a Python callable, or NULL: the native clock */
    Segment *cur;              /* the open generation, or NULL (opened by the next event) */
    PyObject *sealed;          /* list of Segment, oldest first */
    Py_ssize_t sealed_bytes;
    Py_ssize_t sealed_events;
    PyObject *st_tasks, *st_reqs;  /* status: tid -> TASK_CREATE, rid -> REQ_START */
    Py_ssize_t st_limit;
    Py_ssize_t st_req_bytes;   /* the requests' entries by req_status_bytes */
    long long recorded, evicted, dropped, overflows, seal_errors, sealed_n, errors;
    long long status_truncated;
    int64_t last_time;
    int has_last;
    int busy;
} Window;

static PyTypeObject Window_Type;

static int64_t
win_now(Window *w)
{
    if (!w->clock) return fd_clock();
    PyObject *r = PyObject_CallNoArgs(w->clock);
    if (!r) { PyErr_Clear(); w->errors++; return fd_clock(); }
    long long v = PyLong_AsLongLong(r);
    Py_DECREF(r);
    if (v == -1 && PyErr_Occurred()) { PyErr_Clear(); w->errors++; return fd_clock(); }
    return v;
}

static int
Window_traverse(Window *w, visitproc visit, void *arg)
{
    Py_VISIT(w->dict);
    Py_VISIT(w->clock);
    Py_VISIT(w->sealed);
    Py_VISIT(w->st_tasks);
    Py_VISIT(w->st_reqs);
    return 0;
}

static int
Window_clear_refs(Window *w)
{
    Py_CLEAR(w->dict);
    Py_CLEAR(w->clock);
    Py_CLEAR(w->sealed);
    Py_CLEAR(w->cur);
    Py_CLEAR(w->st_tasks);
    Py_CLEAR(w->st_reqs);
    return 0;
}

static void
Window_dealloc(Window *w)
{
    PyObject_GC_UnTrack(w);
    if (w->weakreflist) PyObject_ClearWeakRefs((PyObject *)w);
    Window_clear_refs(w);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static PyObject *
Window_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    Window *w = (Window *)type->tp_alloc(type, 0);
    if (!w) return NULL;
    w->sealed = PyList_New(0);
    w->st_tasks = PyDict_New();
    w->st_reqs = PyDict_New();
    if (!w->sealed || !w->st_tasks || !w->st_reqs) { Py_DECREF(w); return NULL; }
    return (PyObject *)w;
}

static int
Window_init(Window *w, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"window_ns", "max_bytes", "segment_events", "segment_ns", "clock", "generations", NULL};
    long long window_ns, max_bytes, segment_events = 0, segment_ns = 1000000000LL;
    PyObject *clock = Py_None;
    Py_ssize_t ngen = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LL|LLOn:Window", kwlist, &window_ns, &max_bytes,
                                     &segment_events, &segment_ns, &clock, &ngen))
        return -1;
    if (window_ns <= 0 || max_bytes <= 0 || segment_ns <= 0) {
        PyErr_SetString(PyExc_ValueError, "window_ns, max_bytes and segment_ns must be positive");
        return -1;
    }
    (void)segment_events; /* the pure window's knob; generations are bounded by bytes here */
    w->window_ns = window_ns;
    w->max_bytes = max_bytes;
    Py_CLEAR(w->clock);
    if (clock != Py_None) {
        /* time.perf_counter_ns is the native clock: call no Python for it */
        PyObject *name = PyObject_GetAttrString(clock, "__name__");
        PyObject *mod = PyObject_GetAttrString(clock, "__module__");
        int same = name && mod && PyUnicode_Check(name) && PyUnicode_Check(mod)
                   && PyUnicode_CompareWithASCIIString(name, "perf_counter_ns") == 0
                   && PyUnicode_CompareWithASCIIString(mod, "time") == 0;
        PyErr_Clear();
        Py_XDECREF(name);
        Py_XDECREF(mod);
        if (!same) { Py_INCREF(clock); w->clock = clock; }
    }
    /* Status tables get an eighth of the budget (as in the pure window). */
    long long limit = max_bytes / (8 * EST_STATUS_BYTES);
    if (limit > 200000) limit = 200000;
    w->st_limit = (Py_ssize_t)limit;
    long long ring = max_bytes - limit * EST_STATUS_BYTES;
    if (ngen <= 0) {
        ngen = (Py_ssize_t)(ring / (64 << 10));
        if (ngen < 4) ngen = 4;
        if (ngen > 16) ngen = 16;
    }
    w->ngen = ngen;
    w->gen_cap = (Py_ssize_t)(ring / ngen);
    /* Rotate by age too, so that ngen - 1 sealed generations span the whole window. */
    int64_t gen_ns = window_ns / (ngen - 1 > 0 ? ngen - 1 : 1);
    w->gen_ns = gen_ns < segment_ns ? gen_ns : segment_ns;
    return 0;
}

/* Estimated bytes of a str, or of a tuple and what it holds (two levels); 0 otherwise. */
static Py_ssize_t
value_bytes(PyObject *v, int depth)
{
    if (PyUnicode_CheckExact(v)) return STR_COST(v);
    if (!PyTuple_CheckExact(v) || depth >= 2) return 0;
    Py_ssize_t n = 56 + 8 * PyTuple_GET_SIZE(v);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(v); i++) n += value_bytes(PyTuple_GET_ITEM(v, i), depth + 1);
    return n;
}

/* What a request in flight holds while its REQ_START is in the status table: a fixed part
 * and its strings (path, query, headers, trace id). Once per request start and end. */
static Py_ssize_t
req_status_bytes(PyObject *ev)
{
    Py_ssize_t n = EST_STATUS_BYTES + EST_REQUEST_BYTES;
    for (Py_ssize_t i = 3; i < PyTuple_GET_SIZE(ev); i++) n += value_bytes(PyTuple_GET_ITEM(ev, i), 0);
    return n;
}

/* The status tables follow the events (the GIL orders them). */
static void
win_status(Window *w, int64_t kind, PyObject *ev)
{
    PyObject *d = kind == K_TASK_CREATE || kind == K_TASK_DONE ? w->st_tasks : w->st_reqs;
    if (PyTuple_GET_SIZE(ev) < 3) return;
    PyObject *key = PyTuple_GET_ITEM(ev, 2);
    /* only keys whose hash and equality run no Python code */
    if (!PyLong_CheckExact(key) && !PyUnicode_CheckExact(key)) return;
    PyObject *old = kind == K_REQ_START || kind == K_REQ_END ? PyDict_GetItemWithError(d, key) : NULL;
    if (old == NULL && PyErr_Occurred()) { PyErr_Clear(); w->errors++; return; }
    Py_ssize_t old_cost = old && PyTuple_CheckExact(old) ? req_status_bytes(old) : 0;
    if (kind == K_TASK_CREATE || kind == K_REQ_START) {
        /* One limit for both tables together: the ring was sized around their one share;
         * requests are costed by what they hold against that share in bytes. */
        Py_ssize_t cost = kind == K_REQ_START ? req_status_bytes(ev) : 0;
        if (PyDict_GET_SIZE(w->st_tasks) + PyDict_GET_SIZE(w->st_reqs) >= w->st_limit
            || PyDict_GET_SIZE(w->st_tasks) * EST_STATUS_BYTES + w->st_req_bytes - old_cost + cost
                   > w->st_limit * EST_STATUS_BYTES) {
            if (kind == K_REQ_START ? old == NULL : !PyDict_Contains(d, key)) return;
        }
        if (PyDict_SetItem(d, key, ev) < 0) { PyErr_Clear(); w->errors++; return; }
        w->st_req_bytes += cost - old_cost;
    }
    else {
        if (PyDict_DelItem(d, key) < 0) PyErr_Clear();
        else w->st_req_bytes -= old_cost;
    }
}

static void
win_evict_oldest(Window *w, int64_t horizon)
{
    Segment *old = (Segment *)PyList_GET_ITEM(w->sealed, 0);
    if (old->t_end < horizon) w->evicted += old->count;
    else w->dropped += old->count;
    w->sealed_bytes -= seg_bytes(old);
    w->sealed_events -= old->count;
    if (PyList_SetSlice(w->sealed, 0, 1, NULL) < 0) { PyErr_Clear(); w->errors++; }
}

static void
win_seal(Window *w)
{
    Segment *g = w->cur;
    if (!g) return;
    w->cur = NULL;
    if (g->count == 0) { Py_DECREF(g); return; }
    seg_seal(g);
    if (PyList_Append(w->sealed, (PyObject *)g) < 0) {
        PyErr_Clear();
        w->errors++;
        w->dropped += g->count;
    }
    else {
        w->sealed_bytes += seg_bytes(g);
        w->sealed_events += g->count;
        w->sealed_n++;
    }
    Py_DECREF(g);
}

/* Open a generation headed by the status tables; makes room in the ring first. */
static int
win_open(Window *w, int64_t now)
{
    if (w->gen_cap <= 0) return -1;
    while (PyList_GET_SIZE(w->sealed) >= w->ngen - 1 && PyList_GET_SIZE(w->sealed) > 0)
        win_evict_oldest(w, now - w->window_ns);
    Segment *g = seg_new(w->gen_cap, now);
    if (!g) { PyErr_Clear(); return -1; }
    /* The status gets at most half a generation, so that a generation always has room for
     * events (else each event would open a new generation). What does not fit is counted. */
    Py_ssize_t cap = g->cap;
    g->cap = cap / 2;
    PyObject *tables[2] = {w->st_tasks, w->st_reqs};
    for (int k = 0; k < 2; k++) {
        Py_ssize_t pos = 0;
        PyObject *key, *ev;
        while (PyDict_Next(tables[k], &pos, &key, &ev)) {
            int64_t t_end;
            if (!PyTuple_CheckExact(ev) || enc_event(g, ev, &t_end) < 0) {
                w->status_truncated++;
                if (PyErr_Occurred()) PyErr_Clear();
            }
        }
    }
    g->cap = cap;
    g->status_len = g->len;
    g->last_t = g->t_base; /* events decode from the base again */
    g->last_tid = 0;
    w->cur = g;
    return 0;
}

/* Append one event tuple. Never raises: counts and drops. */
static void
win_append(Window *w, PyObject *ev)
{
    if (w->busy) { w->dropped++; w->overflows++; return; }
    if (!PyTuple_CheckExact(ev) || PyTuple_GET_SIZE(ev) < 2) {
        w->seal_errors++;
        w->dropped++;
        return;
    }
    w->busy = 1;
    int64_t t_end = 0;
    int r = -1;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (!w->cur && win_open(w, win_now(w)) < 0) { r = E_FULL; break; }
        r = enc_event(w->cur, ev, &t_end);
        if (r != E_FULL) break;
        if (w->cur->count == 0) break; /* does not fit a whole generation */
        win_seal(w);
    }
    if (PyErr_Occurred()) PyErr_Clear();
    if (r == 0) {
        Segment *g = w->cur;
        g->count++;
        if (t_end > g->t_end) g->t_end = t_end;
        w->recorded++;
        w->last_time = t_end;
        w->has_last = 1;
        int64_t kind = PyLong_CheckExact(PyTuple_GET_ITEM(ev, 0))
                           ? PyLong_AsLongLong(PyTuple_GET_ITEM(ev, 0)) : -1;
        if (kind == K_TASK_CREATE || kind == K_TASK_DONE || kind == K_REQ_START || kind == K_REQ_END)
            win_status(w, kind, ev);
        if (PyErr_Occurred()) PyErr_Clear();
    }
    else {
        w->dropped++;
        if (r == E_FULL) w->overflows++;
        else w->seal_errors++;
    }
    w->busy = 0;
}

static void
win_step(Window *w, int64_t t0, int64_t t1, uint64_t tid, int64_t tq)
{
    if (w->busy) { w->dropped++; w->overflows++; return; }
    w->busy = 1;
    int r = -1;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (!w->cur && win_open(w, w->clock ? win_now(w) : t0) < 0) { r = E_FULL; break; }
        r = enc_step(w->cur, t0, t1, tid, tq);
        if (r != E_FULL) break;
        if (w->cur->count == 0) break;
        win_seal(w);
    }
    if (PyErr_Occurred()) PyErr_Clear();
    if (r == 0) {
        Segment *g = w->cur;
        g->count++;
        if (t1 > g->t_end) g->t_end = t1;
        w->recorded++;
        w->last_time = t1;
        w->has_last = 1;
    }
    else {
        w->dropped++;
        if (r == E_FULL) w->overflows++;
        else w->seal_errors++;
    }
    w->busy = 0;
}

static PyObject *
Window_append(Window *w, PyObject *ev)
{
    win_append(w, ev);
    Py_RETURN_NONE;
}

static PyObject *
Window_emit_step(Window *w, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t v[4];
    if (nargs != 4) { w->seal_errors++; w->dropped++; Py_RETURN_NONE; }
    for (int i = 0; i < 4; i++) {
        if (exact_i64(args[i], &v[i]) < 0) { w->seal_errors++; w->dropped++; Py_RETURN_NONE; }
    }
    win_step(w, v[0], v[1], (uint64_t)v[2], v[3]);
    Py_RETURN_NONE;
}

static PyObject *
Window_maintain(Window *w, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"force_seal", NULL};
    int force = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|p:maintain", kwlist, &force)) return NULL;
    if (w->busy) Py_RETURN_NONE;
    int64_t now = win_now(w);
    w->busy = 1;
    Segment *g = w->cur;
    if (g && g->count && (force || now - g->t_start >= w->gen_ns)) win_seal(w);
    int64_t horizon = now - w->window_ns;
    while (PyList_GET_SIZE(w->sealed) > 0
           && ((Segment *)PyList_GET_ITEM(w->sealed, 0))->t_end < horizon)
        win_evict_oldest(w, horizon);
    w->busy = 0;
    Py_RETURN_NONE;
}

/* (segments, tasks, requests, dropped, t_now): the sealed generations (immutable, shared)
 * and a copy of the open one; the status of the oldest one held. */
static PyObject *
Window_freeze_parts(Window *w, PyObject *Py_UNUSED(ignored))
{
    int64_t now = win_now(w);
    PyObject *segs = PyList_GetSlice(w->sealed, 0, PyList_GET_SIZE(w->sealed));
    if (!segs) return NULL;
    if (w->cur && w->cur->count) {
        Segment *c = seg_copy(w->cur);
        if (!c || PyList_Append(segs, (PyObject *)c) < 0) { Py_XDECREF(c); Py_DECREF(segs); return NULL; }
        Py_DECREF(c);
    }
    PyObject *status;
    if (PyList_GET_SIZE(segs)) {
        status = Segment_status((Segment *)PyList_GET_ITEM(segs, 0), NULL);
    }
    else {
        status = Py_BuildValue("(NN)", PyDict_Copy(w->st_tasks), PyDict_Copy(w->st_reqs));
    }
    if (!status) { Py_DECREF(segs); return NULL; }
    PyObject *out = Py_BuildValue("(NOOLL)", segs, PyTuple_GET_ITEM(status, 0),
                                  PyTuple_GET_ITEM(status, 1), w->dropped, (long long)now);
    Py_DECREF(status);
    return out;
}

static void
win_clear(Window *w)
{
    Py_CLEAR(w->cur);
    if (PyList_SetSlice(w->sealed, 0, PyList_GET_SIZE(w->sealed), NULL) < 0) PyErr_Clear();
    w->sealed_bytes = 0;
    w->sealed_events = 0;
    PyDict_Clear(w->st_tasks);
    PyDict_Clear(w->st_reqs);
    w->st_req_bytes = 0;
    w->has_last = 0;
}

static PyObject *
Window_clear(Window *w, PyObject *Py_UNUSED(ignored))
{
    win_clear(w);
    if (w->dict) {
        const char *names[] = {"live_tasks", "live_requests"};
        for (int i = 0; i < 2; i++) {
            PyObject *d = PyDict_GetItemString(w->dict, names[i]);
            if (d && PyDict_Check(d)) PyDict_Clear(d);
        }
    }
    Py_RETURN_NONE;
}

static PyObject *
Window_after_fork(Window *w, PyObject *Py_UNUSED(ignored))
{
    /* In a forked child: nothing the parent recorded, counters from zero, not busy. */
    w->busy = 0;
    PyObject *r = Window_clear(w, NULL);
    w->recorded = w->evicted = w->dropped = w->overflows = 0;
    w->seal_errors = w->sealed_n = w->errors = w->status_truncated = 0;
    return r;
}

static PyObject *
Window_last_event_time(Window *w, PyObject *Py_UNUSED(ignored))
{
    if (!w->has_last) Py_RETURN_NONE;
    return PyLong_FromLongLong(w->last_time);
}

static PyObject *
Window_get_nbytes(Window *w, void *c)
{
    Py_ssize_t n = w->sealed_bytes + (w->cur ? seg_bytes(w->cur) : 0)
                   + PyDict_GET_SIZE(w->st_tasks) * EST_STATUS_BYTES + w->st_req_bytes;
    return PyLong_FromSsize_t(n);
}

static PyObject *
Window_get_events(Window *w, void *c)
{
    return PyLong_FromSsize_t(w->sealed_events + (w->cur ? w->cur->count : 0));
}

static PyObject *
Window_get_segments(Window *w, void *c) { return PyLong_FromSsize_t(PyList_GET_SIZE(w->sealed)); }

static PyObject *
Window_get_open_bytes(Window *w, void *c)
{
    return PyLong_FromSsize_t(w->cur ? w->cur->len - w->cur->status_len : 0);
}

static PyMethodDef Window_methods[] = {
    {"append", (PyCFunction)Window_append, METH_O,
     "Record one event tuple (see core/events.py). Never raises: drops and counts instead."},
    {"emit_step", (PyCFunction)(void (*)(void))Window_emit_step, METH_FASTCALL,
     "emit_step(t0, t1, tid, t_queued): a TASK_STEP without building its tuple."},
    {"maintain", (PyCFunction)(void (*)(void))Window_maintain, METH_VARARGS | METH_KEYWORDS,
     "Seal the open generation when due and evict the ones older than the window."},
    {"_freeze_parts", (PyCFunction)Window_freeze_parts, METH_NOARGS,
     "(segments, tasks, requests, dropped, t_now) for Frozen."},
    {"clear", (PyCFunction)Window_clear, METH_NOARGS, "Forget every event."},
    {"after_fork", (PyCFunction)Window_after_fork, METH_NOARGS, "Reset in a forked child."},
    {"last_event_time", (PyCFunction)Window_last_event_time, METH_NOARGS,
     "When the most recent event ended, or None."},
    {NULL}
};

static PyMemberDef Window_members[] = {
    {"window_ns", T_LONGLONG, offsetof(Window, window_ns), READONLY, NULL},
    {"max_bytes", T_LONGLONG, offsetof(Window, max_bytes), READONLY, NULL},
    {"generation_bytes", T_PYSSIZET, offsetof(Window, gen_cap), READONLY, NULL},
    {"generations", T_PYSSIZET, offsetof(Window, ngen), READONLY, NULL},
    {"generation_ns", T_LONGLONG, offsetof(Window, gen_ns), READONLY, NULL},
    {"recorded", T_LONGLONG, offsetof(Window, recorded), READONLY, NULL},
    {"evicted", T_LONGLONG, offsetof(Window, evicted), READONLY, NULL},
    {"dropped", T_LONGLONG, offsetof(Window, dropped), READONLY, NULL},
    {"overflows", T_LONGLONG, offsetof(Window, overflows), READONLY, NULL},
    {"seal_errors", T_LONGLONG, offsetof(Window, seal_errors), READONLY, NULL},
    {"sealed", T_LONGLONG, offsetof(Window, sealed_n), READONLY, NULL},
    {"errors", T_LONGLONG, offsetof(Window, errors), READONLY, NULL},
    {"status_truncated", T_LONGLONG, offsetof(Window, status_truncated), READONLY, NULL},
    {"__dictoffset__", T_PYSSIZET, offsetof(Window, dict), READONLY, NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(Window, weakreflist), READONLY, NULL},
    {NULL}
};

static PyGetSetDef Window_getset[] = {
    {"nbytes", (getter)Window_get_nbytes, NULL, "accounted bytes held", NULL},
    {"events", (getter)Window_get_events, NULL, "events held", NULL},
    {"segments", (getter)Window_get_segments, NULL, "sealed generations held", NULL},
    {"open_bytes", (getter)Window_get_open_bytes, NULL, "record bytes in the open generation", NULL},
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL}
};

static PyTypeObject Window_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "flightdeck.core._native.Window",
    .tp_basicsize = sizeof(Window),
    .tp_dealloc = (destructor)Window_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The native rolling window: encoded generations bounded by bytes and by age.",
    .tp_traverse = (traverseproc)Window_traverse,
    .tp_clear = (inquiry)Window_clear_refs,
    .tp_methods = Window_methods,
    .tp_members = Window_members,
    .tp_getset = Window_getset,
    .tp_dictoffset = offsetof(Window, dict),
    .tp_weaklistoffset = offsetof(Window, weakreflist),
    .tp_init = (initproc)Window_init,
    .tp_new = Window_new,
};

/* ------------------------------------------------------------------------------------ */
/* await chains                                                                          */

/* (code, instruction offset) -> (function, file, line): computing a frame's line walks its
 * line table, and tasks are created and wait at the same few places. Holds its code
 * objects and tuples (64 entries at most). */
#define LINE_CACHE 64
static struct { PyObject *code; int lasti; PyObject *site; } line_cache[LINE_CACHE];

/* The frame's (co_qualname, co_filename, line or None); new reference, NULL on error. */
static PyObject *
frame_site(PyFrameObject *f, PyCodeObject *code)
{
    int lasti = PyFrame_GetLasti(f);
    uint32_t i = (uint32_t)(((uintptr_t)code >> 4) ^ (uint32_t)lasti) & (LINE_CACHE - 1);
    if (line_cache[i].code == (PyObject *)code && line_cache[i].lasti == lasti)
        return Py_NewRef(line_cache[i].site);
    int line = PyFrame_GetLineNumber(f);
    PyObject *site = line < 0 ? Py_BuildValue("(OOO)", code->co_qualname, code->co_filename, Py_None)
                              : Py_BuildValue("(OOi)", code->co_qualname, code->co_filename, line);
    if (!site) return NULL;
    /* strs and an int: no cycle is possible, keep it out of the collector's work */
    PyObject_GC_UnTrack(site);
    Py_XSETREF(line_cache[i].code, Py_NewRef((PyObject *)code));
    Py_XSETREF(line_cache[i].site, Py_NewRef(site));
    line_cache[i].lasti = lasti;
    return site;
}

#if PY_VERSION_HEX < 0x030D0000
#define PyObject_GetOptionalAttr _PyObject_LookupAttr
#endif

static PyObject *s_cr_frame, *s_gi_frame, *s_cr_await, *s_gi_yieldfrom, *s_get_coro;

/* ``getattr(o, a, None) or getattr(o, b, None)``: a new reference, or NULL for none (an
 * error reading either is taken as none: this only describes, it never raises). */
static PyObject *
attr_or(PyObject *o, PyObject *a, PyObject *b)
{
    for (int i = 0; i < 2; i++) {
        PyObject *v = NULL;
        if (PyObject_GetOptionalAttr(o, i ? b : a, &v) < 0) { PyErr_Clear(); continue; }
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
        PyObject *frame = attr_or(coro, s_cr_frame, s_gi_frame);
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
        PyObject *following = attr_or(coro, s_cr_await, s_gi_yieldfrom);
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
    PyObject *live;        /* live_tasks dict: popped when a task finishes */
    PyObject *wait_cb;     /* wait_cb(task, tid, prev_end, t_queued): a long suspension */
    PyObject *step_type;   /* TaskStepMethWrapper */
    int64_t wait_ns;
    long long due;         /* set while asyncio.sleep's timer runs (see instrument/loop.py) */
    long long errors;
    long long steps;
    int self_offset_ok;    /* -1 unknown, 0 use __self__, 1 read the wrapper's first field */
    U64Tab last_end;       /* tid -> end of its last step */
    PyObject *done_type;   /* the task type whose ``done`` is cached below */
    PyObject *done_meth;   /* type(task).done, called as done_meth(task): no lookup per step */
    PyObject *slow_cb;     /* slow_cb(task, tid, t0, t1): a step longer than slow_ns */
    int64_t slow_ns;
    PyObject *cancel_begin;/* cancel_begin(task) -> state: a wakeup by a cancelled future */
    PyObject *cancel_end;  /* cancel_end(task, tid, t_queued, state), after its step */
    PyObject *fut_type;    /* the future type whose ``cancelled`` is cached below */
    PyObject *fut_cancelled;
    int native_wait;       /* record TASK_WAIT here (its await chain natively), not wait_cb */
    PyObject *meth_type;   /* the task type whose cancelled and get_name are cached below */
    PyObject *meth[3];     /* cancelled, get_name, get_coro */
} Runner;

static PyTypeObject Runner_Type;
static PyObject *s_done, *s_cancelled, *s_get_name, *s__exception, *s___self__, *s__debug,
    *s__closed, *s__ready, *s_append, *s_context, *s_state_done, *s_state_cancelled,
    *s_state_error, *s___qualname__;

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
    return PyObject_Vectorcall(r->done_meth, &task, 1, NULL);
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
        if (!g) { Py_XDECREF(c); Py_XDECREF(n); return NULL; }
        Py_XSETREF(r->meth[0], c);
        Py_XSETREF(r->meth[1], n);
        Py_XSETREF(r->meth[2], g);
        Py_XSETREF(r->meth_type, Py_NewRef((PyObject *)Py_TYPE(task)));
    }
    return PyObject_Vectorcall(r->meth[which], &task, 1, NULL);
}

FD_NOINLINE static void
runner_done(Runner *r, PyObject *task, uint64_t raw, int64_t t)
{
    u64tab_del(&r->last_end, raw + 2);
    PyObject *key = PyLong_FromUnsignedLongLong(raw);
    if (!key) { PyErr_Clear(); r->errors++; return; }
    if (PyDict_GET_SIZE(r->live) && PyDict_DelItem(r->live, key) < 0) PyErr_Clear();
    PyObject *state = NULL, *exc_name = Py_None, *name = NULL, *exc = NULL;
    PyObject *c = task_method(r, task, 0);
    if (!c) goto fail;
    if (c == Py_True) state = s_state_cancelled;
    else {
        exc = PyObject_GetAttr(task, s__exception);
        if (!exc) goto fail;
        if (exc == Py_None) state = s_state_done;
        else {
            state = s_state_error;
            exc_name = PyObject_GetAttr((PyObject *)Py_TYPE(exc), s___qualname__);
            if (!exc_name) goto fail;
        }
    }
    name = task_method(r, task, 1);
    if (!name) goto fail;
    PyObject *tv = PyLong_FromLongLong(t);
    PyObject *ev = tv ? PyTuple_New(6) : NULL;
    if (!ev) { Py_XDECREF(tv); goto fail; }
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
    Py_DECREF(key);
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

/* runner(callback, t_queued, *args): run a step or a wakeup and record it. */
static PyObject *
Runner_vectorcall(Runner *r, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 2 || kwnames) {
        PyErr_SetString(PyExc_TypeError, "StepRunner(callback, t_queued, *args)");
        return NULL;
    }
    PyObject *cb = args[0];
    int64_t tq;
    if (exact_i64(args[1], &tq) < 0) tq = 0;
    PyObject *task = NULL;
    int wakeup = 0;
    if (Py_TYPE(cb) == (PyTypeObject *)r->step_type) task = step_task(r, cb);
    else if (PyCFunction_Check(cb)) {
        task = PyCFunction_GET_SELF(cb);
        Py_XINCREF(task);
        wakeup = 1;
    }
    if (!task) {
        /* not a task's callback after all: run it as it is */
        if (PyErr_Occurred()) { PyErr_Clear(); r->errors++; }
        return PyObject_Vectorcall(cb, args + 2, nargs - 2, NULL);
    }
    uint64_t raw = (uint64_t)(uintptr_t)task;
    if (wakeup && r->wait_cb != Py_None) {
        U64Slot *sl = u64tab_get(&r->last_end, raw + 2);
        if (sl && tq - sl->val > r->wait_ns && r->native_wait) runner_wait(r, task, raw, sl->val, tq);
        else if (sl && tq - sl->val > r->wait_ns) {
            PyObject *res = PyObject_CallFunction(r->wait_cb, "OKLL", task, (unsigned long long)raw,
                                                  (long long)sl->val, (long long)tq);
            if (!res) { PyErr_Clear(); r->errors++; }
            Py_XDECREF(res);
        }
    }
    PyObject *cstate = NULL;
    if (wakeup && nargs >= 3 && r->cancel_begin != Py_None) {
        /* what it awaited was cancelled: where it was delivered (Python, rare) */
        PyObject *c = fut_is_cancelled(r, args[2]);
        if (!c) PyErr_Clear(); /* a foreign future without cancelled(): an ordinary wakeup */
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
    PyObject *res = PyObject_Vectorcall(cb, args + 2, nargs - 2, NULL);
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
        PyObject *x = cstate == Py_None ? NULL
                      : PyObject_CallFunction(r->cancel_end, "OKLO", task, (unsigned long long)raw,
                                              (long long)tq, cstate);
        if (!x && cstate != Py_None) { PyErr_Clear(); r->errors++; }
        Py_XDECREF(x);
        Py_DECREF(cstate);
    }
    if (t1 - t0 > r->slow_ns && r->slow_cb != Py_None) {
        PyObject *x = PyObject_CallFunction(r->slow_cb, "OKLL", task, (unsigned long long)raw,
                                            (long long)t0, (long long)t1);
        if (!x) { PyErr_Clear(); r->errors++; }
        Py_XDECREF(x);
    }
    PyObject *done = task_done(r, task);
    if (!done) { PyErr_Clear(); r->errors++; }
    else if (done == Py_True) runner_done(r, task, raw, t1);
    else if (u64tab_put(&r->last_end, raw + 2, t1) < 0) { PyErr_Clear(); r->errors++; }
    Py_XDECREF(done);
    Py_DECREF(task);
#if PY_VERSION_HEX >= 0x030C0000
    if (!res) PyErr_SetRaisedException(saved);
#else
    if (!res) PyErr_Restore(st, sv, stb);
#endif
    return res;
}

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
    static char *kwlist[] = {"window", "live_tasks", "wait_cb", "wait_ns", "step_type",
                             "slow_cb", "slow_ns", "cancel_begin", "cancel_end", "native_wait",
                             NULL};
    PyObject *win, *live, *wait_cb, *step_type;
    PyObject *slow_cb = Py_None, *cancel_begin = Py_None, *cancel_end = Py_None;
    long long wait_ns, slow_ns = 0;
    int native_wait = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!O!OLO!|$OLOOp:StepRunner", kwlist, &Window_Type,
                                     &win, &PyDict_Type, &live, &wait_cb, &wait_ns, &PyType_Type,
                                     &step_type, &slow_cb, &slow_ns, &cancel_begin, &cancel_end,
                                     &native_wait))
        return NULL;
    Runner *r = (Runner *)type->tp_alloc(type, 0);
    if (!r) return NULL;
    r->vectorcall = (vectorcallfunc)Runner_vectorcall;
    Py_INCREF(win); r->win = (Window *)win;
    Py_INCREF(live); r->live = live;
    Py_INCREF(wait_cb); r->wait_cb = wait_cb;
    Py_INCREF(step_type); r->step_type = step_type;
    r->wait_ns = wait_ns;
    r->self_offset_ok = -1;
    Py_INCREF(slow_cb); r->slow_cb = slow_cb;
    Py_INCREF(cancel_begin); r->cancel_begin = cancel_begin;
    Py_INCREF(cancel_end); r->cancel_end = cancel_end;
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
Runner_get_tracked(Runner *r, void *c) { return PyLong_FromLong((long)r->last_end.n); }

static PyMethodDef Runner_methods[] = {
    {"forget", (PyCFunction)Runner_forget, METH_NOARGS, "Drop the per-task table."},
    {"track", (PyCFunction)(void (*)(void))Runner_track, METH_FASTCALL,
     "track(tid, t): the end of a task's last step, kept for its next wakeup."},
    {NULL}
};

static PyMemberDef Runner_members[] = {
    {"due", T_LONGLONG, offsetof(Runner, due), 0, "the due time of the sleep timer running, or 0"},
    {"errors", T_LONGLONG, offsetof(Runner, errors), READONLY, NULL},
    {"steps", T_LONGLONG, offsetof(Runner, steps), READONLY, NULL},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(Runner, vectorcall), READONLY, NULL},
    {NULL}
};

static PyGetSetDef Runner_getset[] = {
    {"tracked", (getter)Runner_get_tracked, NULL, "tasks whose last step end is kept", NULL},
    {NULL}
};

static PyTypeObject Runner_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "flightdeck.core._native.StepRunner",
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

/* ------------------------------------------------------------------------------------ */
/* Handle layout: asyncio.events.Handle's __slots__, filled and run without its Python code */

/* The slots CallSoon fills (what Handle.__init__ sets, outside debug mode) and HandleRun
 * reads; offsets are read from the class's member descriptors, so a layout that differs
 * (another Python, a patched asyncio) is detected and the Python constructor is used. */
enum { HS_CALLBACK, HS_ARGS, HS_CANCELLED, HS_LOOP, HS_SOURCE_TB, HS_REPR, HS_CONTEXT, HS_N };
static const char *HS_NAMES[HS_N] = {"_callback", "_args", "_cancelled", "_loop",
                                     "_source_traceback", "_repr", "_context"};
typedef struct { Py_ssize_t off[HS_N]; } HandleLayout;

#define HSLOT(obj, lay, i) (*(PyObject **)((char *)(obj) + (lay)->off[i]))

/* 0 and the layout filled, or -1 (no exception set) when cls is not such a class. */
static int
handle_layout(PyObject *cls, HandleLayout *lay)
{
    if (!PyType_Check(cls)) return -1;
    for (int i = 0; i < HS_N; i++) {
        PyObject *d = PyObject_GetAttrString(cls, HS_NAMES[i]);
        if (!d) { PyErr_Clear(); return -1; }
        int ok = Py_IS_TYPE(d, &PyMemberDescr_Type)
                 && ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX;
        if (ok) lay->off[i] = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_DECREF(d);
        if (!ok || lay->off[i] < (Py_ssize_t)sizeof(PyObject)
            || lay->off[i] + (Py_ssize_t)sizeof(PyObject *) > ((PyTypeObject *)cls)->tp_basicsize)
            return -1;
    }
    return 0;
}

/* HandleRun: ``_run`` of a Handle subclass whose handles CallSoon fills; does what
 * Handle._run does (context.run(callback, *args); an exception other than SystemExit and
 * KeyboardInterrupt goes to on_error(handle, exc), which reports it as asyncio does). */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *on_error;
    PyObject *cls;         /* the class laid out as lay: _run checks its instance */
    HandleLayout lay;
} HandleRun;

static PyTypeObject HandleRun_Type;

static PyObject *
HandleRun_vectorcall(HandleRun *hr, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames) {
        PyErr_SetString(PyExc_TypeError, "_run() takes no arguments");
        return NULL;
    }
    PyObject *h = args[0];
    if (!PyObject_TypeCheck(h, (PyTypeObject *)hr->cls)) {
        PyErr_SetString(PyExc_TypeError, "_run() of another type");
        return NULL;
    }
    PyObject *cb = HSLOT(h, &hr->lay, HS_CALLBACK), *cargs = HSLOT(h, &hr->lay, HS_ARGS),
             *ctx = HSLOT(h, &hr->lay, HS_CONTEXT);
    PyObject *res;
    if (!cb || !cargs || !PyTuple_Check(cargs) || !ctx) {
        PyErr_SetString(PyExc_AttributeError, "handle not initialised");
        res = NULL;
    }
    else {
        Py_INCREF(cb); Py_INCREF(cargs); Py_INCREF(ctx);
        if (PyContext_Enter(ctx) < 0) res = NULL;
        else {
            res = PyObject_Vectorcall(cb, &PyTuple_GET_ITEM(cargs, 0), PyTuple_GET_SIZE(cargs), NULL);
            if (PyContext_Exit(ctx) < 0) Py_CLEAR(res);
        }
        Py_DECREF(cb); Py_DECREF(cargs); Py_DECREF(ctx);
    }
    if (res) { Py_DECREF(res); Py_RETURN_NONE; }
    if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
        return NULL;
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc = PyErr_GetRaisedException();
#else
    PyObject *et, *exc, *etb;
    PyErr_Fetch(&et, &exc, &etb);
    PyErr_NormalizeException(&et, &exc, &etb);
    if (exc && etb) PyException_SetTraceback(exc, etb);
    Py_XDECREF(et);
    Py_XDECREF(etb);
#endif
    PyObject *hargs[2] = {h, exc ? exc : Py_None};
    PyObject *r = PyObject_Vectorcall(hr->on_error, hargs, 2, NULL);
    Py_XDECREF(exc);
    if (!r) return NULL; /* the exception handler's own failure propagates, as in asyncio */
    Py_DECREF(r);
    Py_RETURN_NONE;
}

static PyObject *
HandleRun_descr_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None) { Py_INCREF(self); return self; }
    return PyMethod_New(self, obj);
}

static PyObject *
HandleRun_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"handle_type", "on_error", NULL};
    PyObject *cls, *on_error;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO:HandleRun", kwlist, &cls, &on_error)) return NULL;
    HandleRun *hr = (HandleRun *)type->tp_alloc(type, 0);
    if (!hr) return NULL;
    if (handle_layout(cls, &hr->lay) < 0) {
        Py_DECREF(hr);
        PyErr_SetString(PyExc_TypeError, "handle_type is not laid out as asyncio.events.Handle");
        return NULL;
    }
    hr->vectorcall = (vectorcallfunc)HandleRun_vectorcall;
    hr->on_error = Py_NewRef(on_error);
    hr->cls = Py_NewRef(cls);
    return (PyObject *)hr;
}

static int HandleRun_traverse(HandleRun *hr, visitproc visit, void *arg)
{
    Py_VISIT(hr->on_error);
    Py_VISIT(hr->cls);
    return 0;
}
static int HandleRun_clear(HandleRun *hr)
{
    Py_CLEAR(hr->on_error);
    Py_CLEAR(hr->cls);
    return 0;
}
static void
HandleRun_dealloc(HandleRun *hr)
{
    PyObject_GC_UnTrack(hr);
    HandleRun_clear(hr);
    Py_TYPE(hr)->tp_free((PyObject *)hr);
}

static PyMemberDef HandleRun_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(HandleRun, vectorcall), READONLY, NULL},
    {NULL}
};

static PyTypeObject HandleRun_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "flightdeck.core._native.HandleRun",
    .tp_basicsize = sizeof(HandleRun),
    .tp_dealloc = (destructor)HandleRun_dealloc,
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL
                | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_doc = "HandleRun(handle_type, on_error): Handle._run in C, for the handles CallSoon fills.",
    .tp_traverse = (traverseproc)HandleRun_traverse,
    .tp_clear = (inquiry)HandleRun_clear,
    .tp_members = HandleRun_members,
    .tp_descr_get = HandleRun_descr_get,
    .tp_vectorcall_offset = offsetof(HandleRun, vectorcall),
    .tp_new = HandleRun_new,
};

/* ------------------------------------------------------------------------------------ */
/* CallSoon: the loop subclass's call_soon                                               */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    Runner *runner;
    PyObject *base;        /* the base class's call_soon (unbound) */
    PyObject *handle_type; /* asyncio.events.Handle for the one-frame path, or None */
    PyObject *loop;        /* the loop the two below belong to (borrowed; compared only) */
    PyObject *loop_dict;   /* its __dict__: _debug and _closed read without getattr */
    PyObject *ready_append;/* its _ready.append, bound */
    int fill;              /* handle_type is laid out as Handle: fill its slots (no __init__) */
    HandleLayout lay;
} CallSoon;

static PyTypeObject CallSoon_Type;

#define SMALL_ARGS 12

static PyObject *
call_base_wrapped(CallSoon *cs, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                  PyObject *tqobj)
{
    /* base(loop, runner, callback, t_queued, *rest, **kw) */
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    Py_ssize_t total = nargs + 2 + nkw;
    PyObject *small[SMALL_ARGS + 1];
    PyObject **buf = total + 1 <= SMALL_ARGS + 1 ? small : PyMem_Malloc((size_t)(total + 1) * sizeof(PyObject *));
    if (!buf) return PyErr_NoMemory();
    PyObject **a = buf + 1;
    a[0] = args[0];
    a[1] = (PyObject *)cs->runner;
    a[2] = args[1];
    a[3] = tqobj;
    for (Py_ssize_t i = 2; i < nargs + nkw; i++) a[i + 2] = args[i];
    PyObject *res = PyObject_Vectorcall(cs->base, a, (size_t)(nargs + 2) | PY_VECTORCALL_ARGUMENTS_OFFSET, kwnames);
    if (buf != small) PyMem_Free(buf);
    return res;
}

static PyObject *
CallSoon_vectorcall(CallSoon *cs, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 2) return PyObject_Vectorcall(cs->base, args, nargsf, kwnames);
    PyObject *cb = args[1];
    Runner *r = cs->runner;
    int64_t tq;
    if (Py_TYPE(cb) == (PyTypeObject *)r->step_type) tq = fd_clock();
    else if (Py_IS_TYPE(cb, &PyCFunction_Type) && PyCFunction_GET_SELF(cb)
             && strcmp(((PyCFunctionObject *)cb)->m_ml->ml_name, "task_wakeup") == 0)
        tq = runner_woken(r);
    else
        return PyObject_Vectorcall(cs->base, args, nargsf, kwnames);
    PyObject *tqobj = PyLong_FromLongLong(tq);
    if (!tqobj) { PyErr_Clear(); return PyObject_Vectorcall(cs->base, args, nargsf, kwnames); }
    PyObject *loop = args[0];
    PyObject *res = NULL;
    if (cs->handle_type != Py_None) {
        /* asyncio's own loop: do what BaseEventLoop.call_soon does, in this one call. Debug
         * mode, a closed loop and unknown keywords take the original path. */
        PyObject *ctx = Py_None;
        Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
        int ok = nkw == 0 || (nkw == 1 && PyUnicode_Compare(PyTuple_GET_ITEM(kwnames, 0), s_context) == 0);
        if (nkw == 1 && ok) ctx = args[nargs];
        if (ok && loop != cs->loop) {
            /* first call for this loop: find its __dict__ and _ready.append once */
            PyObject *d = PyObject_GenericGetDict(loop, NULL);
            PyObject *ready = d ? PyObject_GetAttr(loop, s__ready) : NULL;
            PyObject *app = ready ? PyObject_GetAttr(ready, s_append) : NULL;
            Py_XDECREF(ready);
            if (d && app && PyDict_Check(d)) {
                Py_XSETREF(cs->loop_dict, d);
                Py_XSETREF(cs->ready_append, app);
                cs->loop = loop;
            }
            else {
                Py_XDECREF(d);
                Py_XDECREF(app);
                PyErr_Clear();
                ok = 0;
            }
        }
        if (ok) {
            /* borrowed references; no Python code runs (str keys) */
            PyObject *dbg = PyDict_GetItemWithError(cs->loop_dict, s__debug);
            PyObject *closed = dbg ? PyDict_GetItemWithError(cs->loop_dict, s__closed) : NULL;
            ok = dbg == Py_False && closed == Py_False;
            if (PyErr_Occurred()) PyErr_Clear();
        }
        if (ok) {
            PyObject *cbargs = PyTuple_New(nargs);
            if (!cbargs) { Py_DECREF(tqobj); return NULL; }
            Py_INCREF(cb); PyTuple_SET_ITEM(cbargs, 0, cb);
            Py_INCREF(tqobj); PyTuple_SET_ITEM(cbargs, 1, tqobj);
            for (Py_ssize_t i = 2; i < nargs; i++) { Py_INCREF(args[i]); PyTuple_SET_ITEM(cbargs, i, args[i]); }
            PyObject *handle;
            if (cs->fill) {
                /* what Handle.__init__ sets outside debug mode, without running it */
                PyObject *c = ctx == Py_None ? PyContext_CopyCurrent() : Py_NewRef(ctx);
                handle = c ? PyType_GenericAlloc((PyTypeObject *)cs->handle_type, 0) : NULL;
                if (handle) {
                    HandleLayout *lay = &cs->lay;
                    HSLOT(handle, lay, HS_CALLBACK) = Py_NewRef((PyObject *)r);
                    HSLOT(handle, lay, HS_ARGS) = Py_NewRef(cbargs);
                    HSLOT(handle, lay, HS_CANCELLED) = Py_NewRef(Py_False);
                    HSLOT(handle, lay, HS_LOOP) = Py_NewRef(loop);
                    HSLOT(handle, lay, HS_SOURCE_TB) = Py_NewRef(Py_None);
                    HSLOT(handle, lay, HS_REPR) = Py_NewRef(Py_None);
                    HSLOT(handle, lay, HS_CONTEXT) = c;
                }
                else Py_XDECREF(c);
            }
            else {
                PyObject *hargs[5] = {NULL, (PyObject *)r, cbargs, loop, ctx};
                handle = PyObject_Vectorcall(cs->handle_type, hargs + 1, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            }
            Py_DECREF(cbargs);
            if (handle) {
                PyObject *ok2 = PyObject_CallOneArg(cs->ready_append, handle);
                if (!ok2) Py_CLEAR(handle);
                Py_XDECREF(ok2);
            }
            Py_DECREF(tqobj);
            return handle;
        }
    }
    res = call_base_wrapped(cs, args, nargs, kwnames, tqobj);
    Py_DECREF(tqobj);
    return res;
}

static PyObject *
CallSoon_descr_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None) { Py_INCREF(self); return self; }
    return PyMethod_New(self, obj);
}

static int
CallSoon_traverse(CallSoon *cs, visitproc visit, void *arg)
{
    Py_VISIT(cs->runner);
    Py_VISIT(cs->base);
    Py_VISIT(cs->handle_type);
    Py_VISIT(cs->loop_dict);
    Py_VISIT(cs->ready_append);
    return 0;
}

static int
CallSoon_clear(CallSoon *cs)
{
    Py_CLEAR(cs->runner);
    Py_CLEAR(cs->base);
    Py_CLEAR(cs->handle_type);
    Py_CLEAR(cs->loop_dict);
    Py_CLEAR(cs->ready_append);
    cs->loop = NULL;
    return 0;
}

static void
CallSoon_dealloc(CallSoon *cs)
{
    PyObject_GC_UnTrack(cs);
    CallSoon_clear(cs);
    Py_TYPE(cs)->tp_free((PyObject *)cs);
}

static PyObject *
CallSoon_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"runner", "base", "handle_type", NULL};
    PyObject *runner, *base, *handle_type = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!O|O:CallSoon", kwlist, &Runner_Type, &runner,
                                     &base, &handle_type))
        return NULL;
    CallSoon *cs = (CallSoon *)type->tp_alloc(type, 0);
    if (!cs) return NULL;
    cs->vectorcall = (vectorcallfunc)CallSoon_vectorcall;
    Py_INCREF(runner); cs->runner = (Runner *)runner;
    Py_INCREF(base); cs->base = base;
    Py_INCREF(handle_type); cs->handle_type = handle_type;
    /* Filled without __init__ only for a subclass that runs through HandleRun (it carries
     * the same layout): asyncio's own Handle keeps its constructor. */
    if (handle_type != Py_None && PyType_Check(handle_type)) {
        PyObject *run = PyObject_GetAttrString(handle_type, "_run");
        cs->fill = run && Py_IS_TYPE(run, &HandleRun_Type) && handle_layout(handle_type, &cs->lay) == 0
                   && ((PyTypeObject *)handle_type)->tp_itemsize == 0;
        Py_XDECREF(run);
        PyErr_Clear();
    }
    return (PyObject *)cs;
}

static PyMemberDef CallSoon_members[] = {
    {"runner", T_OBJECT, offsetof(CallSoon, runner), READONLY, NULL},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(CallSoon, vectorcall), READONLY, NULL},
    {NULL}
};

static PyTypeObject CallSoon_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "flightdeck.core._native.CallSoon",
    .tp_basicsize = sizeof(CallSoon),
    .tp_dealloc = (destructor)CallSoon_dealloc,
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL
                | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_doc = "A loop's call_soon that times task steps and wakeups (binds like a method).",
    .tp_traverse = (traverseproc)CallSoon_traverse,
    .tp_clear = (inquiry)CallSoon_clear,
    .tp_members = CallSoon_members,
    .tp_descr_get = CallSoon_descr_get,
    .tp_vectorcall_offset = offsetof(CallSoon, vectorcall),
    .tp_new = CallSoon_new,
};

/* ------------------------------------------------------------------------------------ */
/* CreateTask: the loop subclass's create_task, recording TASK_CREATE                    */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    Runner *runner;
    PyObject *base;         /* the base class's create_task (unbound) */
    PyObject *current_task; /* asyncio.current_task */
    PyObject *request_var;  /* the ContextVar holding the current request id */
    PyObject *done_cb;      /* added to a task that finished inside create_task (eager) */
    PyObject *skip_prefix;  /* asyncio's directory: frames there are not the creation site */
    PyObject *current_tasks;/* 3.11: asyncio.tasks._current_tasks (loop -> task), or NULL:
                             * current_task() is a Python function there */
    Py_ssize_t max_live;
} CreateTask;

static PyTypeObject CreateTask_Type;
static PyObject *s_get, *s_add_done_callback;

/* (function, file, line) of the first frame outside asyncio, or None; new reference. */
static PyObject *
creation_site(CreateTask *ct)
{
    PyFrameObject *f = PyEval_GetFrame();
    Py_XINCREF(f);
    Py_ssize_t plen = PyUnicode_GET_LENGTH(ct->skip_prefix);
    while (f) {
        PyCodeObject *code = PyFrame_GetCode(f);
        int inside = PyUnicode_Tailmatch(code->co_filename, ct->skip_prefix, 0, plen, -1) == 1;
        if (!inside) {
            PyObject *site = frame_site(f, code);
            Py_DECREF(code);
            Py_DECREF(f);
            return site;
        }
        Py_DECREF(code);
        PyFrameObject *back = PyFrame_GetBack(f);
        Py_DECREF(f);
        f = back;
    }
    Py_RETURN_NONE;
}

FD_NOINLINE static int
create_record(CreateTask *ct, PyObject *loop, PyObject *coro, PyObject *context, PyObject *task)
{
    Runner *r = ct->runner;
    PyObject *parent = NULL, *name = NULL, *coro_name = NULL, *rid = NULL, *site = NULL,
             *ev = NULL, *done = NULL;
    int rc = -1;
    uint64_t raw = (uint64_t)(uintptr_t)task;
    if (ct->current_tasks) {
        parent = PyDict_GetItemWithError(ct->current_tasks, loop);
        if (!parent && PyErr_Occurred()) goto out;
        parent = Py_NewRef(parent ? parent : Py_None);
    }
    else parent = PyObject_CallOneArg(ct->current_task, loop);
    if (!parent) goto out;
    int64_t t = fd_clock();
    name = task_method(r, task, 1);
    if (!name) goto out;
    coro_name = coro ? PyObject_GetAttr(coro, s___qualname__) : NULL;
    if (!coro_name || !PyUnicode_Check(coro_name)) {
        PyErr_Clear();
        Py_XDECREF(coro_name);
        coro_name = PyObject_GetAttr((PyObject *)Py_TYPE(coro ? coro : Py_None), s___qualname__);
        if (!coro_name) goto out;
    }
    if (context == NULL || context == Py_None) {
        if (PyContextVar_Get(ct->request_var, Py_None, &rid) < 0) goto out;
    }
    else {
        /* the task runs in ``context``: its request is that context's */
        rid = PyObject_CallMethodOneArg(context, s_get, ct->request_var);
        if (!rid) goto out;
    }
    site = creation_site(ct);
    if (!site) goto out;
    PyObject *parent_id = (parent == Py_None || parent == task) ? Py_None
                                                                : PyLong_FromVoidPtr(parent);
    if (!parent_id) goto out;
    PyObject *tv = PyLong_FromLongLong(t), *tidv = PyLong_FromVoidPtr(task);
    ev = (tv && tidv) ? PyTuple_New(8) : NULL;
    if (!ev) {
        Py_XDECREF(tv);
        Py_XDECREF(tidv);
        if (parent_id != Py_None) Py_DECREF(parent_id);
        goto out;
    }
    Py_INCREF(KIND_OBJ[K_TASK_CREATE]);
    PyTuple_SET_ITEM(ev, 0, KIND_OBJ[K_TASK_CREATE]);
    PyTuple_SET_ITEM(ev, 1, tv);
    PyTuple_SET_ITEM(ev, 2, tidv);
    Py_INCREF(name); PyTuple_SET_ITEM(ev, 3, name);
    Py_INCREF(coro_name); PyTuple_SET_ITEM(ev, 4, coro_name);
    if (parent_id == Py_None) Py_INCREF(parent_id);
    PyTuple_SET_ITEM(ev, 5, parent_id);
    Py_INCREF(rid); PyTuple_SET_ITEM(ev, 6, rid);
    Py_INCREF(site); PyTuple_SET_ITEM(ev, 7, site);
    /* It lives as long as its task (live and status tables) and cannot be part of a cycle
     * (ints, strs, None, a tuple of those; the site is untracked where it is made): keep it
     * out of the cyclic GC's work. */
    if (PyLong_CheckExact(rid) || rid == Py_None) PyObject_GC_UnTrack(ev);
    win_append(r->win, ev);
    done = task_done(r, task);
    if (!done) goto out;
    if (done == Py_True) {
        /* eager_start: it ran to completion inside create_task(). Recorded from a done
         * callback (scheduled right away): create_task() on 3.11/3.12 names the task only
         * after this returns. */
        PyObject *res = PyObject_CallMethodOneArg(task, s_add_done_callback, ct->done_cb);
        if (!res) goto out;
        Py_DECREF(res);
    }
    else {
        if (PyDict_GET_SIZE(r->live) < ct->max_live) {
            PyObject *key = PyTuple_GET_ITEM(ev, 2);
            if (PyDict_SetItem(r->live, key, ev) < 0) goto out;
        }
        /* an eager task's next step is a wakeup: its wait counts from here */
        if (u64tab_put(&r->last_end, raw + 2, t) < 0) { PyErr_NoMemory(); goto out; }
    }
    rc = 0;
out:
    if (rc < 0) { PyErr_Clear(); r->errors++; }
    Py_XDECREF(parent);
    Py_XDECREF(name);
    Py_XDECREF(coro_name);
    Py_XDECREF(rid);
    Py_XDECREF(site);
    Py_XDECREF(ev);
    Py_XDECREF(done);
    return rc;
}

static PyObject *
CreateTask_vectorcall(CreateTask *ct, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    PyObject *task = PyObject_Vectorcall(ct->base, args, nargsf, kwnames);
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (!task || nargs < 1) return task;
    PyObject *context = NULL;
    if (kwnames) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
            PyObject *k = PyTuple_GET_ITEM(kwnames, i);
            if (k == s_context || PyUnicode_Compare(k, s_context) == 0) context = args[nargs + i];
        }
        PyErr_Clear();
    }
    create_record(ct, args[0], nargs >= 2 ? args[1] : NULL, context, task);
    return task;
}

static int
CreateTask_traverse(CreateTask *ct, visitproc visit, void *arg)
{
    Py_VISIT(ct->runner);
    Py_VISIT(ct->base);
    Py_VISIT(ct->current_task);
    Py_VISIT(ct->request_var);
    Py_VISIT(ct->done_cb);
    Py_VISIT(ct->skip_prefix);
    Py_VISIT(ct->current_tasks);
    return 0;
}

static int
CreateTask_clear(CreateTask *ct)
{
    Py_CLEAR(ct->runner);
    Py_CLEAR(ct->base);
    Py_CLEAR(ct->current_task);
    Py_CLEAR(ct->request_var);
    Py_CLEAR(ct->done_cb);
    Py_CLEAR(ct->skip_prefix);
    Py_CLEAR(ct->current_tasks);
    return 0;
}

static void
CreateTask_dealloc(CreateTask *ct)
{
    PyObject_GC_UnTrack(ct);
    CreateTask_clear(ct);
    Py_TYPE(ct)->tp_free((PyObject *)ct);
}

static PyObject *
CreateTask_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"runner", "base", "current_task", "request_var", "done_callback",
                             "skip_prefix", "max_live", "current_tasks", NULL};
    PyObject *runner, *base, *current_task, *request_var, *done_cb, *skip_prefix;
    PyObject *current_tasks = Py_None;
    Py_ssize_t max_live;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!OOO!OUn|$O:CreateTask", kwlist, &Runner_Type,
                                     &runner, &base, &current_task, &PyContextVar_Type,
                                     &request_var, &done_cb, &skip_prefix, &max_live,
                                     &current_tasks))
        return NULL;
    if (current_tasks != Py_None && !PyDict_CheckExact(current_tasks)) {
        PyErr_SetString(PyExc_TypeError, "current_tasks must be a dict or None");
        return NULL;
    }
    CreateTask *ct = (CreateTask *)type->tp_alloc(type, 0);
    if (!ct) return NULL;
    ct->vectorcall = (vectorcallfunc)CreateTask_vectorcall;
    Py_INCREF(runner); ct->runner = (Runner *)runner;
    Py_INCREF(base); ct->base = base;
    Py_INCREF(current_task); ct->current_task = current_task;
    Py_INCREF(request_var); ct->request_var = request_var;
    Py_INCREF(done_cb); ct->done_cb = done_cb;
    Py_INCREF(skip_prefix); ct->skip_prefix = skip_prefix;
    ct->max_live = max_live;
    ct->current_tasks = current_tasks == Py_None ? NULL : Py_NewRef(current_tasks);
    return (PyObject *)ct;
}

static PyMemberDef CreateTask_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(CreateTask, vectorcall), READONLY, NULL},
    {NULL}
};

static PyTypeObject CreateTask_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "flightdeck.core._native.CreateTask",
    .tp_basicsize = sizeof(CreateTask),
    .tp_dealloc = (destructor)CreateTask_dealloc,
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL
                | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_doc = "A loop's create_task that records TASK_CREATE (binds like a method).",
    .tp_traverse = (traverseproc)CreateTask_traverse,
    .tp_clear = (inquiry)CreateTask_clear,
    .tp_members = CreateTask_members,
    .tp_descr_get = CallSoon_descr_get,
    .tp_vectorcall_offset = offsetof(CreateTask, vectorcall),
    .tp_new = CreateTask_new,
};

/* ------------------------------------------------------------------------------------ */
/* module                                                                                */

static PyObject *
mod_clock(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLongLong(fd_clock());
}

/* bench_emit(window, n): n TASK_STEP records through the native path; returns ns spent.
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

static PyMethodDef mod_methods[] = {
    {"clock", (PyCFunction)mod_clock, METH_NOARGS,
     "The recorder's clock in ns: the same clock as time.perf_counter_ns()."},
    {"await_chain", (PyCFunction)(void (*)(void))mod_await_chain, METH_FASTCALL,
     "await_chain(coro, limit=48): (function, file, line) of each frame it awaits, innermost last."},
    {"load_segment", (PyCFunction)mod_load_segment, METH_O,
     "load_segment(data): a read-only Segment from Segment.dump()'s bytes (checked)."},
    {"bench_step", (PyCFunction)mod_bench_step, METH_VARARGS,
     "bench_step(window, n, clocks=True): record n task steps from C; ns spent."},
    {NULL}
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "flightdeck.core._native",
    "The native recording core of flightdeck (see core/window.py for the pure twin).", -1,
    mod_methods,
};

#define INTERN(var, text) if (!(var = PyUnicode_InternFromString(text))) return NULL

PyMODINIT_FUNC
PyInit__native(void)
{
#ifdef __APPLE__
    mach_timebase_info(&fd_timebase);
#endif
    for (int k = 1; k < NKINDS; k++) {
        SCHEMA_LEN[k] = (Py_ssize_t)strlen(SCHEMA[k]);
        if (!(KIND_OBJ[k] = PyLong_FromLong(k))) return NULL;
    }
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
        || PyType_Ready(&CreateTask_Type) < 0 || PyType_Ready(&HandleRun_Type) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&native_module);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "Segment", (PyObject *)&Segment_Type) < 0
        || PyModule_AddObjectRef(m, "Window", (PyObject *)&Window_Type) < 0
        || PyModule_AddObjectRef(m, "StepRunner", (PyObject *)&Runner_Type) < 0
        || PyModule_AddObjectRef(m, "CallSoon", (PyObject *)&CallSoon_Type) < 0
        || PyModule_AddObjectRef(m, "CreateTask", (PyObject *)&CreateTask_Type) < 0
        || PyModule_AddObjectRef(m, "HandleRun", (PyObject *)&HandleRun_Type) < 0
        || PyModule_AddStringConstant(m, "SCHEMA", FD_SCHEMA_STRING) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
