/* Varint/zigzag helpers, value tags, the event layouts and the small hash tables.
 * Part of the _native translation unit: included once, in order, by core/_native.c
 * (one unit keeps the hot helpers inlined across parts). */
#ifndef FD_NATIVE_CODEC_H
#define FD_NATIVE_CODEC_H

/* ------------------------------------------------------------------------------------ */
/* encoding helpers                                                                      */

static inline uint64_t
zz(int64_t v)
{
    return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
}
static inline int64_t
unzz(uint64_t u)
{
    return (int64_t)(u >> 1) ^ -(int64_t)(u & 1);
}

/* Value tags of the generic encoding. */
enum {
    V_NONE = 0,
    V_FALSE,
    V_TRUE,
    V_INT,
    V_STR,
    V_TUPLE,
    V_FLOAT,
    V_BYTES,
    V_BIGINT,
    V_LIST,
    V_ASCII, /* a short ASCII str stored inline: most are one-offs (task names, paths) */
    V_REF    /* the same str as the V_ASCII this many bytes back (a task's name at its end) */
};
#define INLINE_MAX 64

#define MAX_DEPTH 8
/* The kinds (K_TASK_CREATE, ...) and their layouts, generated from core/events.py. */
#include "../_kinds.h"
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

typedef struct {
    PyObject *key;
    Py_hash_t hash;
    uint32_t idx;
} StrSlot;
typedef struct {
    StrSlot *slots;
    uint32_t cap, n;
} StrTab;
typedef struct {
    uint64_t key;
    union {
        int64_t val;   /* U64Tab: a number */
        PyObject *obj; /* ObjTab: an owned reference */
    };
} U64Slot; /* key 0: empty; key 1: deleted */
typedef struct {
    U64Slot *slots;
    uint32_t cap, n, used;
} U64Tab;

static void
strtab_free(StrTab *t)
{
    PyMem_Free(t->slots);
    t->slots = NULL;
    t->cap = t->n = 0;
}

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
                      (size_t)(PyUnicode_GET_LENGTH(s) * PyUnicode_KIND(s)))
                   == 0)
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

static void
u64tab_free(U64Tab *t)
{
    PyMem_Free(t->slots);
    t->slots = NULL;
    t->cap = t->n = t->used = 0;
}

static inline uint32_t
u64hash(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return (uint32_t)k;
}

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

/* The slot of key, made when absent (*fresh then 1), growing the table first; NULL when the
 * key is reserved (0 and 1: never an object's address, nor an id + 2) or memory runs out. */
static U64Slot *
u64tab_slot(U64Tab *t, uint64_t key, int *fresh)
{
    *fresh = 0;
    if (key <= 1) return NULL;
    if ((t->used + 1) * 2 > t->cap) {
        uint32_t ncap = t->cap ? t->cap : 64;
        while ((t->n + 1) * 2 > ncap) ncap *= 2;
        if (u64tab_rehash(t, ncap < 64 ? 64 : ncap) < 0) return NULL;
    }
    uint32_t mask = t->cap - 1, i = u64hash(key) & mask;
    U64Slot *tomb = NULL;
    for (;;) {
        U64Slot *sl = &t->slots[i];
        if (sl->key == key) return sl;
        if (sl->key == 1 && !tomb) tomb = sl;
        if (sl->key == 0) {
            if (tomb)
                sl = tomb;
            else
                t->used++;
            sl->key = key;
            t->n++;
            *fresh = 1;
            return sl;
        }
        i = (i + 1) & mask;
    }
}

/* Insert or update; -1 on memory errors (no exception set). Reserved keys are ignored. */
static int
u64tab_put(U64Tab *t, uint64_t key, int64_t val)
{
    if (key <= 1) return 0;
    int fresh;
    U64Slot *sl = u64tab_slot(t, key, &fresh);
    if (!sl) return -1;
    sl->val = val;
    return 0;
}

static void
u64tab_del(U64Tab *t, uint64_t key)
{
    U64Slot *sl = u64tab_get(t, key);
    if (sl) {
        sl->key = 1;
        t->n--;
    }
}

/* ObjTab: a U64Tab whose values are owned object references (the status tables of live
 * tasks and requests: id + 2 -> event). */
typedef U64Tab ObjTab;

static inline PyObject *
objtab_get(ObjTab *t, uint64_t key)
{
    U64Slot *sl = u64tab_get(t, key);
    return sl ? sl->obj : NULL;
}

/* Insert or replace, taking a new reference to val; -1 on memory errors (no exception set).
 * The value replaced is returned in *old (the caller releases it once the table is
 * consistent). */
static int
objtab_put(ObjTab *t, uint64_t key, PyObject *val, PyObject **old)
{
    int fresh;
    U64Slot *sl = u64tab_slot(t, key, &fresh);
    *old = NULL;
    if (!sl) return -1;
    if (!fresh) *old = sl->obj;
    sl->obj = Py_NewRef(val);
    return 0;
}

/* Remove key; its value (a reference the caller now owns) or NULL when absent. */
static PyObject *
objtab_take(ObjTab *t, uint64_t key)
{
    U64Slot *sl = u64tab_get(t, key);
    if (!sl) return NULL;
    PyObject *v = sl->obj;
    sl->key = 1;
    sl->obj = NULL;
    t->n--;
    return v;
}

/* Empty it; the values are released after the table is detached (their release may run
 * code that looks at it). */
static void
objtab_clear(ObjTab *t)
{
    U64Slot *slots = t->slots;
    uint32_t cap = t->cap;
    t->slots = NULL;
    t->cap = t->n = t->used = 0;
    for (uint32_t j = 0; j < cap; j++)
        if (slots[j].key > 1) Py_XDECREF(slots[j].obj);
    PyMem_Free(slots);
}

#endif /* FD_NATIVE_CODEC_H */
