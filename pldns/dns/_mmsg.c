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
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

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

static PyObject *mmsg_recv(PyObject *self, PyObject *args) {
    int fd, count;
    if (!PyArg_ParseTuple(args, "ii:recv", &fd, &count)) return NULL;
    if (count > BATCH) count = BATCH;
    if (count < 1) count = 1;
    for (int i = 0; i < count; i++) {
        riov[i].iov_base = bufs[i];
        riov[i].iov_len = BUFSIZE;
        memset(&rmsgs[i].msg_hdr, 0, sizeof rmsgs[i].msg_hdr);
        rmsgs[i].msg_hdr.msg_iov = &riov[i];
        rmsgs[i].msg_hdr.msg_iovlen = 1;
        rmsgs[i].msg_hdr.msg_name = &names[i];
        rmsgs[i].msg_hdr.msg_namelen = sizeof names[i];
    }
    int n = recvmmsg(fd, rmsgs, (unsigned)count, MSG_DONTWAIT, NULL);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return PyList_New(0);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *out = PyList_New(n);
    if (!out) return NULL;
    for (int i = 0; i < n; i++) {
        socklen_t len = rmsgs[i].msg_hdr.msg_namelen;
        if (len > sizeof names[i]) len = sizeof names[i];
        if (remember(&names[i], len) < 0) goto error;
        PyObject *data = PyBytes_FromStringAndSize((const char *)bufs[i], rmsgs[i].msg_len);
        if (!data) goto error;
        PyObject *item = PyTuple_New(3);
        if (!item) {
            Py_DECREF(data);
            goto error;
        }
        Py_INCREF(last_host);
        Py_INCREF(last_addr);
        PyTuple_SET_ITEM(item, 0, data);
        PyTuple_SET_ITEM(item, 1, last_host);
        PyTuple_SET_ITEM(item, 2, last_addr);
        PyList_SET_ITEM(out, i, item);
    }
    return out;
error:
    Py_DECREF(out);  /* the slots not yet set are NULL, which list dealloc skips */
    return NULL;
}

static int fill(struct msghdr *hdr, struct iovec *iov, PyObject *data, PyObject *addr) {
    if (!PyBytes_Check(data) || !PyBytes_Check(addr)) {
        PyErr_SetString(PyExc_TypeError, "send: datas and addrs hold bytes");
        return -1;
    }
    iov->iov_base = PyBytes_AS_STRING(data);
    iov->iov_len = (size_t)PyBytes_GET_SIZE(data);
    memset(hdr, 0, sizeof *hdr);
    hdr->msg_iov = iov;
    hdr->msg_iovlen = 1;
    hdr->msg_name = PyBytes_AS_STRING(addr);
    hdr->msg_namelen = (socklen_t)PyBytes_GET_SIZE(addr);
    return 0;
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
    while (done < total) {
        unsigned k = 0;
        for (; k < BATCH && done + k < total; k++) {
            if (fill(&msgs[k].msg_hdr, &iov[k], PyList_GET_ITEM(datas, done + k),
                     PyList_GET_ITEM(addrs, done + k)) < 0)
                return NULL;
        }
        int n = sendmmsg(fd, msgs, k, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                dropped += total - done;  /* the send buffer is full: the rest is lost */
                break;
            }
            n = 0;  /* the first of the batch failed (EMSGSIZE, EINVAL, ...): skip it */
            dropped += 1;
            done += 1;
        }
        done += n;
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

static PyMethodDef methods[] = {
    {"recv", mmsg_recv, METH_VARARGS, "recv(fd, count) -> [(data, host, addr), ...]"},
    {"send", mmsg_send, METH_VARARGS, "send(fd, datas, addrs) -> datagrams not sent"},
    {"sendto", mmsg_sendto, METH_VARARGS, "sendto(fd, data, addr) -> sent"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "pldns.dns._mmsg", "Batched UDP I/O (recvmmsg, sendmmsg).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__mmsg(void) {
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddIntConstant(m, "BATCH", BATCH) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
