/* pldns.dns._mmsg: batched UDP I/O for the listener, recvmmsg(2) and sendmmsg(2).
 *
 * Built only by the compiled build (PLDNS_COMPILE=1, setup.py), next to the mypyc modules.
 * Python's socket module has recvfrom and sendto, one datagram per system call; these move up
 * to BATCH datagrams per call, which is most of what a busy listener spends beside its own
 * work (bench/, the README's "Compiled data plane"). Without this module the listener uses
 * the event loop's datagram transport (pldns/dns/listeners.py), with the same behaviour.
 *
 * Every call is non-blocking (MSG_DONTWAIT) and keeps the GIL: the buffers below are shared
 * by every caller in the process, one call at a time.
 *
 *   recv(fd, count) -> list of (data: bytes, host: str, addr: bytes)
 *       Up to `count` (at most BATCH) datagrams ready on fd, [] when none is. `addr` is the
 *       sender's raw sockaddr, handed back to send/sendto unchanged; `host` its address as
 *       text ("192.0.2.1", "2001:db8::1", "fe80::1%2" with a scope). OSError on an error
 *       other than EAGAIN.
 *   send(fd, datas, addrs) -> int
 *       Sends datas[i] to addrs[i] (two lists of bytes of one length) in batches; returns how
 *       many the kernel did not take (send buffer full, or an error such as EMSGSIZE or an
 *       unreachable address: the datagram is skipped, the rest still go). UDP is lossy: the
 *       caller counts them, as a full socket buffer drops a datagram in the kernel too.
 *   sendto(fd, data, addr) -> bool
 *       One datagram; False if the kernel did not take it.
 *   serve(fd, count, raw, entries, allowed, prefetch, now, tally) -> (read, rest)
 *       recv, answering the repeated cache hits itself (see serve below); `rest` is what
 *       recv would have returned for every datagram it did not answer.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define BATCH 64
#define BUFSIZE 65536 /* the largest UDP payload fits: a datagram is never cut short */

static unsigned char bufs[BATCH][BUFSIZE];
static struct sockaddr_storage names[BATCH];
static struct mmsghdr rmsgs[BATCH];
static struct iovec riov[BATCH];

/* The last sender seen, so a burst from one client (the common case: a node's CoreDNS, a
 * busy pod) shares one host string and one addr object instead of building them per packet. */
static struct sockaddr_storage last_name;
static socklen_t last_len;
static PyObject *last_host;
static PyObject *last_addr;

static PyObject *host_of(const struct sockaddr_storage *sa, socklen_t len) {
    char text[INET6_ADDRSTRLEN + 16];
    if (sa->ss_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)sa;
        if (!inet_ntop(AF_INET, &v4->sin_addr, text, sizeof text)) goto fail;
        return PyUnicode_FromString(text);
    }
    if (sa->ss_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)sa;
        if (!inet_ntop(AF_INET6, &v6->sin6_addr, text, INET6_ADDRSTRLEN)) goto fail;
        if (v6->sin6_scope_id) {
            size_t used = strlen(text);
            snprintf(text + used, sizeof text - used, "%%%u", (unsigned)v6->sin6_scope_id);
        }
        return PyUnicode_FromString(text);
    }
fail:
    return PyUnicode_FromString("");  /* not an IP sender: the ACL refuses "" */
}

static int remember(const struct sockaddr_storage *sa, socklen_t len) {
    if (last_host && len == last_len && memcmp(sa, &last_name, len) == 0) return 0;
    PyObject *host = host_of(sa, len);
    if (!host) return -1;
    PyObject *addr = PyBytes_FromStringAndSize((const char *)sa, len);
    if (!addr) {
        Py_DECREF(host);
        return -1;
    }
    Py_XSETREF(last_host, host);
    Py_XSETREF(last_addr, addr);
    memcpy(&last_name, sa, len);
    last_len = len;
    return 0;
}

/* One datagram's message header: its bytes and its address. */
static void point(struct msghdr *hdr, struct iovec *iov, void *base, size_t len, void *name,
                  socklen_t namelen) {
    iov->iov_base = base;
    iov->iov_len = len;
    memset(hdr, 0, sizeof *hdr);
    hdr->msg_iov = iov;
    hdr->msg_iovlen = 1;
    hdr->msg_name = name;
    hdr->msg_namelen = namelen;
}

/* recvmmsg up to `count` datagrams into bufs/names: how many, or -1 with errno set. */
static int read_batch(int fd, int count) {
    if (count > BATCH) count = BATCH;
    if (count < 1) count = 1;
    for (int i = 0; i < count; i++)
        point(&rmsgs[i].msg_hdr, &riov[i], bufs[i], BUFSIZE, &names[i], sizeof names[i]);
    return recvmmsg(fd, rmsgs, (unsigned)count, MSG_DONTWAIT, NULL);
}

static int again(void) { return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR; }

/* The sender of datagram i, as last_host/last_addr. */
static int sender(int i) {
    socklen_t len = rmsgs[i].msg_hdr.msg_namelen;
    if (len > sizeof names[i]) len = sizeof names[i];
    return remember(&names[i], len);
}

/* (data, host, addr) for datagram i, whose sender() was just called. */
static PyObject *item_of(int i) {
    PyObject *data = PyBytes_FromStringAndSize((const char *)bufs[i], rmsgs[i].msg_len);
    if (!data) return NULL;
    PyObject *item = PyTuple_New(3);
    if (!item) {
        Py_DECREF(data);
        return NULL;
    }
    Py_INCREF(last_host);
    Py_INCREF(last_addr);
    PyTuple_SET_ITEM(item, 0, data);
    PyTuple_SET_ITEM(item, 1, last_host);
    PyTuple_SET_ITEM(item, 2, last_addr);
    return item;
}

static PyObject *mmsg_recv(PyObject *self, PyObject *args) {
    int fd, count;
    if (!PyArg_ParseTuple(args, "ii:recv", &fd, &count)) return NULL;
    int n = read_batch(fd, count);
    if (n < 0) return again() ? PyList_New(0) : PyErr_SetFromErrno(PyExc_OSError);
    PyObject *out = PyList_New(n);
    if (!out) return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *item = sender(i) < 0 ? NULL : item_of(i);
        if (!item) {
            Py_DECREF(out);  /* the slots not yet set are NULL, which list dealloc skips */
            return NULL;
        }
        PyList_SET_ITEM(out, i, item);
    }
    return out;
}

static int fill(struct msghdr *hdr, struct iovec *iov, PyObject *data, PyObject *addr) {
    if (!PyBytes_Check(data) || !PyBytes_Check(addr)) {
        PyErr_SetString(PyExc_TypeError, "send: datas and addrs hold bytes");
        return -1;
    }
    point(hdr, iov, PyBytes_AS_STRING(data), (size_t)PyBytes_GET_SIZE(data),
          PyBytes_AS_STRING(addr), (socklen_t)PyBytes_GET_SIZE(addr));
    return 0;
}

/* sendmmsg the k prepared messages: how many the kernel did not take. A datagram the kernel
 * refuses (EMSGSIZE, EINVAL, ...) is skipped and the rest still go; a full send buffer
 * (EAGAIN) loses the rest, and sets *full. */
static Py_ssize_t push(int fd, struct mmsghdr *msgs, unsigned k, int *full) {
    unsigned done = 0;
    Py_ssize_t dropped = 0;
    while (done < k) {
        int n = sendmmsg(fd, msgs + done, k - done, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                *full = 1;
                return dropped + (Py_ssize_t)(k - done);
            }
            n = 1;  /* the first of the batch failed: skip it */
            dropped += 1;
        }
        done += (unsigned)n;
    }
    return dropped;
}

static PyObject *mmsg_send(PyObject *self, PyObject *args) {
    int fd;
    PyObject *datas, *addrs;
    if (!PyArg_ParseTuple(args, "iO!O!:send", &fd, &PyList_Type, &datas, &PyList_Type, &addrs))
        return NULL;
    Py_ssize_t total = PyList_GET_SIZE(datas);
    if (PyList_GET_SIZE(addrs) != total) {
        PyErr_SetString(PyExc_ValueError, "send: datas and addrs differ in length");
        return NULL;
    }
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    Py_ssize_t done = 0, dropped = 0;
    int full = 0;
    while (done < total) {
        unsigned k = 0;
        for (; k < BATCH && done + k < total; k++) {
            if (fill(&msgs[k].msg_hdr, &iov[k], PyList_GET_ITEM(datas, done + k),
                     PyList_GET_ITEM(addrs, done + k)) < 0)
                return NULL;
        }
        dropped += push(fd, msgs, k, &full);
        done += k;
        if (full) {
            dropped += total - done;  /* the send buffer is full: the rest is lost */
            break;
        }
    }
    return PyLong_FromSsize_t(dropped);
}

static PyObject *mmsg_sendto(PyObject *self, PyObject *args) {
    int fd;
    PyObject *data, *addr;
    if (!PyArg_ParseTuple(args, "iSS:sendto", &fd, &data, &addr)) return NULL;
    struct msghdr hdr;
    struct iovec iov;
    if (fill(&hdr, &iov, data, addr) < 0) return NULL;
    ssize_t n;
    do {
        n = sendmsg(fd, &hdr, MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    return PyBool_FromLong(n >= 0);
}

/* -- serve: the repeated cache hit, answered here ------------------------------------------
 *
 * The same answer, byte for byte, as CacheFlow.answer_udp (pldns/dns/cacheflow.py) gives a
 * query whose bytes after the ID are in `raw`; anything else is handed back untouched, and so
 * is every case where that method would do more than copy: the client not known allowed, the
 * entry gone, replaced, expired or due for a prefetch, a reply that needs truncating, or a
 * stored entry that does not look right. The cache's rules (what is stored, for how long,
 * stale answers, prefetch, eviction) stay in Python; this reads what Python keeps:
 *
 *   raw      query bytes after the ID -> (key, query, label, qend, limit, label index)
 *   entries  PacketCache.entries: key -> Entry (.blob, .hits), the layout of pldns/dns/cache.py
 *   allowed  the ACL's verdicts by client host text (Acl.verdicts): only True is served
 *   prefetch cache.prefetch (0: off); now: the cache clock
 *   tally    a writable buffer of TALLY_SIZE unsigned 64-bit counters, folded into the
 *            metrics by pldns/dns/hitpath.py (T_* below)
 *
 * An answered query counts as Python's would: Entry.hits + 1 (the CLOCK reference bit and the
 * prefetch count), and in the tally its (label, kind, rcode) slot and its duration. Its reply
 * leaves with the batch's others in one sendmmsg; one the kernel does not take is T_LOST.
 */
#define HEADER 12
#define TRAILER 17 /* struct "!dIIB": expires, lifetime, age written, kind */
#define META 6     /* struct "!HI": TTL offset, TTL at age 0 */
#define KINDS 3
#define RCODES 16
#define LABELS 16
#define SLOTS (LABELS * KINDS * RCODES)
#define NBOUNDS 16
#define T_TOUCHED_N SLOTS               /* slots counted since the last fold ... */
#define T_TOUCHED (SLOTS + 1)           /* ... and which */
#define T_BOUNDS (T_TOUCHED + SLOTS)    /* the duration buckets' upper bounds, ns (the caller's) */
#define T_BUCKETS (T_BOUNDS + NBOUNDS)  /* NBOUNDS + 1 duration counts */
#define T_NANOS (T_BUCKETS + NBOUNDS + 1)
#define T_SERVED (T_NANOS + 1)
#define T_LOST (T_SERVED + 1)
#define TALLY_SIZE (T_LOST + 1)

static unsigned char outs[BATCH][BUFSIZE];
static PyObject *s_blob, *s_hits;

static uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static double be_double(const unsigned char *p) {
    uint64_t bits = ((uint64_t)be32(p) << 32) | be32(p + 4);
    double value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

static long item_long(PyObject *tuple, Py_ssize_t i) {
    PyObject *v = PyTuple_GET_ITEM(tuple, i);
    return PyLong_Check(v) ? PyLong_AsLong(v) : -1;
}

/* Datagram i (len bytes) answered into outs[k]: 1 (*size, *slot set), 0 not answered here,
 * -1 a Python error. */
static int answer(int i, size_t len, PyObject *raw, PyObject *entries, PyObject *allowed,
                  long prefetch, double now, int k, size_t *size, int *slot) {
    const unsigned char *q = bufs[i];
    if (len < HEADER + 5) return 0;
    PyObject *question = PyBytes_FromStringAndSize((const char *)q + 2, (Py_ssize_t)len - 2);
    if (!question) return -1;
    PyObject *hit = PyDict_GetItemWithError(raw, question);  /* borrowed, held by raw */
    Py_DECREF(question);
    if (!hit) return PyErr_Occurred() ? -1 : 0;
    if (!PyTuple_Check(hit) || PyTuple_GET_SIZE(hit) != 6) return 0;
    PyObject *verdict = PyDict_GetItemWithError(allowed, last_host);
    if (verdict != Py_True) return PyErr_Occurred() ? -1 : 0;
    long qend = item_long(hit, 3), limit = item_long(hit, 4), label = item_long(hit, 5);
    if (PyErr_Occurred()) return -1;
    if (qend < HEADER + 5 || (size_t)qend > len || label < 0 || label >= LABELS) return 0;
    PyObject *entry = PyDict_GetItemWithError(entries, PyTuple_GET_ITEM(hit, 0));
    if (!entry) return PyErr_Occurred() ? -1 : 0;
    Py_INCREF(entry);
    int done = -1;
    PyObject *blob = PyObject_GetAttr(entry, s_blob), *count = NULL;
    if (!blob) goto out;
    done = 0;
    if (!PyBytes_Check(blob)) goto out;
    const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(blob);
    size_t total = (size_t)PyBytes_GET_SIZE(blob), n = ((size_t)b[0] << 8) | b[1];
    if (total < HEADER + TRAILER) goto out;
    size_t tail = total - TRAILER;
    double expires = be_double(b + tail);
    long lifetime = (long)be32(b + tail + 8);
    int kind = b[tail + 16];
    if (n < HEADER || n > tail || (tail - n) % META || kind >= KINDS) goto out;
    if (!(now < expires)) goto out;  /* expired (or a NaN): Python decides */
    long age = (long)(now - expires + (double)lifetime);  /* int(): toward zero, as Python */
    if (age < 0) goto out;
    for (const unsigned char *m = b + n; m < b + tail; m += META) {
        size_t offset = ((size_t)m[0] << 8) | m[1];
        if (offset < HEADER || offset + 4 > n) goto out;
    }
    size_t reply = (size_t)qend + n - HEADER;
    if (reply > BUFSIZE || (reply > 512 && (long)reply > limit)) goto out;  /* to truncate */
    count = PyObject_GetAttr(entry, s_hits);
    if (!count) {
        done = -1;
        goto out;
    }
    long hits = PyLong_Check(count) ? PyLong_AsLong(count) : -2;
    if (hits == -1 && PyErr_Occurred()) {
        done = -1;
        goto out;
    }
    if (hits < -1) goto out;
    long after = hits >= 0 ? hits + 1 : hits;
    if (prefetch > 0 && prefetch <= after && kind != 2 &&
        now >= expires - (double)lifetime * 0.1)
        goto out;  /* due for a prefetch: Python starts it */
    if (hits >= 0) {
        PyObject *bumped = PyLong_FromLong(after);
        if (!bumped || PyObject_SetAttr(entry, s_hits, bumped) < 0) {
            Py_XDECREF(bumped);
            done = -1;
            goto out;
        }
        Py_DECREF(bumped);
    }
    unsigned char *o = outs[k];
    memcpy(o, q, 2);                                /* the client's ID */
    memcpy(o + 2, b + 2, HEADER - 2);               /* the stored flags and counts */
    memcpy(o + HEADER, q + HEADER, (size_t)qend - HEADER);  /* the client's question */
    memcpy(o + qend, b + HEADER, n - HEADER);       /* the stored records */
    unsigned char *body = o + qend - HEADER;        /* stored offsets count from the header */
    for (const unsigned char *m = b + n; m < b + tail; m += META) {
        size_t offset = ((size_t)m[0] << 8) | m[1];
        uint32_t ttl = be32(m + 2), left = (long)ttl > age ? (uint32_t)(ttl - age) : 0;
        unsigned char *t = body + offset;
        t[0] = left >> 24, t[1] = left >> 16, t[2] = left >> 8, t[3] = left;
    }
    *size = reply;
    *slot = (int)((label * KINDS + kind) * RCODES + (b[3] & 0x0F));
    done = 1;
out:
    Py_XDECREF(count);
    Py_XDECREF(blob);
    Py_DECREF(entry);
    return done;
}

static uint64_t nanos(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void tally_one(uint64_t *tally, int slot, uint64_t took) {
    if (tally[slot]++ == 0 && tally[T_TOUCHED_N] < SLOTS)
        tally[T_TOUCHED + tally[T_TOUCHED_N]++] = (uint64_t)slot;
    int bucket = 0;  /* bisect_left: the first bound not below the duration */
    while (bucket < NBOUNDS && tally[T_BOUNDS + bucket] < took) bucket++;
    tally[T_BUCKETS + bucket] += 1;
    tally[T_NANOS] += took;
    tally[T_SERVED] += 1;
}

static PyObject *mmsg_serve(PyObject *self, PyObject *args) {
    int fd, count;
    long prefetch;
    double now;
    PyObject *raw, *entries, *allowed, *tallied;
    if (!PyArg_ParseTuple(args, "iiO!O!O!ldO:serve", &fd, &count, &PyDict_Type, &raw,
                          &PyDict_Type, &entries, &PyDict_Type, &allowed, &prefetch, &now,
                          &tallied))
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(tallied, &view, PyBUF_WRITABLE) < 0) return NULL;
    if (view.len < (Py_ssize_t)(TALLY_SIZE * sizeof(uint64_t))) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "serve: the tally is shorter than TALLY_SIZE");
        return NULL;
    }
    uint64_t *tally = (uint64_t *)view.buf;
    PyObject *rest = NULL, *result = NULL;
    int n = read_batch(fd, count);
    if (n < 0) {
        if (again())
            result = Py_BuildValue("(iN)", 0, PyList_New(0));
        else
            PyErr_SetFromErrno(PyExc_OSError);
        PyBuffer_Release(&view);
        return result;
    }
    rest = PyList_New(0);
    if (!rest) goto error;
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    unsigned k = 0;
    for (int i = 0; i < n; i++) {
        if (sender(i) < 0) goto error;
        uint64_t start = nanos();
        size_t size = 0;
        int slot = 0;
        int got = answer(i, rmsgs[i].msg_len, raw, entries, allowed, prefetch, now, (int)k,
                         &size, &slot);
        if (got < 0) goto error;
        if (got) {
            tally_one(tally, slot, nanos() - start);
            point(&msgs[k].msg_hdr, &iov[k], outs[k], size, &names[i],
                  rmsgs[i].msg_hdr.msg_namelen);
            k++;
            continue;
        }
        PyObject *item = item_of(i);
        if (!item) goto error;
        int appended = PyList_Append(rest, item);
        Py_DECREF(item);
        if (appended < 0) goto error;
    }
    if (k) {
        int full = 0;
        tally[T_LOST] += (uint64_t)push(fd, msgs, k, &full);
    }
    result = Py_BuildValue("(iO)", n, rest);
error:
    Py_XDECREF(rest);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"recv", mmsg_recv, METH_VARARGS, "recv(fd, count) -> [(data, host, addr), ...]"},
    {"send", mmsg_send, METH_VARARGS, "send(fd, datas, addrs) -> datagrams not sent"},
    {"sendto", mmsg_sendto, METH_VARARGS, "sendto(fd, data, addr) -> sent"},
    {"serve", mmsg_serve, METH_VARARGS,
     "serve(fd, count, raw, entries, allowed, prefetch, now, tally) -> (read, rest)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "pldns.dns._mmsg", "Batched UDP I/O (recvmmsg, sendmmsg).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__mmsg(void) {
    s_blob = PyUnicode_InternFromString("blob");
    s_hits = PyUnicode_InternFromString("hits");
    if (!s_blob || !s_hits) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    static const struct {
        const char *name;
        long value;
    } constants[] = {
        {"BATCH", BATCH},         {"LABELS", LABELS},     {"KINDS", KINDS},
        {"RCODES", RCODES},       {"SLOTS", SLOTS},       {"NBOUNDS", NBOUNDS},
        {"T_TOUCHED_N", T_TOUCHED_N}, {"T_TOUCHED", T_TOUCHED}, {"T_BOUNDS", T_BOUNDS},
        {"T_BUCKETS", T_BUCKETS}, {"T_NANOS", T_NANOS},   {"T_SERVED", T_SERVED},
        {"T_LOST", T_LOST},       {"TALLY_SIZE", TALLY_SIZE},
    };
    for (size_t i = 0; i < sizeof constants / sizeof constants[0]; i++) {
        if (PyModule_AddIntConstant(m, constants[i].name, constants[i].value) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    }
    return m;
}
