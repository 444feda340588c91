/* The gRPC C-core side of fedmm.Federation: the server's serving loop, which drives many calls at once on one
 * thread (a state per call, advanced by its completions; a call that makes no progress for call_timeout_s is
 * cancelled), and the site's calls, each of which waits on its own completion queue with exactly one operation
 * pending, so a completion is always the one awaited. */
#include "net/net.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedmm/log.h"

#define METHOD_JOIN "/fedmm.Federation/Join"
#define METHOD_HEARTBEAT "/fedmm.Federation/Heartbeat"
#define METHOD_PULL "/fedmm.Federation/Pull"
#define METHOD_PUSH "/fedmm.Federation/Push"

/* ---- shared helpers ------------------------------------------------------------------------------- */

static gpr_timespec after(double seconds)
{
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis((int64_t)(seconds * 1000.0), GPR_TIMESPAN));
}

/* Waits for `tag`, the only operation pending on cq. Returns its success flag; on timeout cancels `call`,
 * still drains the completion, and returns 0. */
static int wait_tag(grpc_completion_queue *cq, void *tag, grpc_call *call, double timeout_s)
{
    gpr_timespec deadline = after(timeout_s);
    int cancelled = 0;
    for (;;) {
        grpc_event ev =
            grpc_completion_queue_next(cq, cancelled ? gpr_inf_future(GPR_CLOCK_MONOTONIC) : deadline, NULL);
        if (ev.type == GRPC_OP_COMPLETE && ev.tag == tag)
            return cancelled ? 0 : ev.success;
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            return 0;
        if (ev.type == GRPC_QUEUE_TIMEOUT) {
            if (!call)
                return 0;
            grpc_call_cancel(call, NULL);
            cancelled = 1;
        }
    }
}

static int run_batch(grpc_call *call, grpc_completion_queue *cq, const grpc_op *ops, size_t n, double timeout_s)
{
    static const int tag_storage = 0; /* any unique address; read only */
    void *tag = (void *)&tag_storage;
    if (grpc_call_start_batch(call, ops, n, tag, NULL) != GRPC_CALL_OK)
        return 0;
    return wait_tag(cq, tag, call, timeout_s);
}

/* Copies a received message into one buffer (messages span several slices). */
static fm_status read_bb(grpc_byte_buffer *bb, fm_wire_buf *out)
{
    out->data = NULL;
    out->len = 0;
    size_t len = grpc_byte_buffer_length(bb);
    if (len > FM_WIRE_MAX_MESSAGE)
        return fm_error(FM_ERR_RANGE, "a %zu-byte message exceeds the %zu-byte limit", len,
                        (size_t)FM_WIRE_MAX_MESSAGE);
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, bb))
        return fm_error(FM_ERR_PARSE, "an unreadable (compressed?) message");
    out->data = malloc(len ? len : 1);
    if (!out->data) {
        grpc_byte_buffer_reader_destroy(&r);
        return fm_error(FM_ERR_NO_MEMORY, "out of memory (%zu bytes)", len);
    }
    size_t off = 0;
    grpc_slice s;
    while (grpc_byte_buffer_reader_next(&r, &s)) {
        size_t n = GRPC_SLICE_LENGTH(s);
        if (n > len - off)
            n = len - off;
        memcpy(out->data + off, GRPC_SLICE_START_PTR(s), n);
        off += n;
        grpc_slice_unref(s);
    }
    grpc_byte_buffer_reader_destroy(&r);
    out->len = off;
    return FM_OK;
}

/* A byte buffer that takes ownership of buf's memory. */
static grpc_byte_buffer *make_bb(fm_wire_buf *buf)
{
    grpc_slice s = grpc_slice_new(buf->data, buf->len, free);
    buf->data = NULL;
    buf->len = 0;
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

static int send_buf(grpc_call *call, grpc_completion_queue *cq, fm_wire_buf *buf, double timeout_s)
{
    grpc_byte_buffer *bb = make_bb(buf);
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_MESSAGE;
    op.data.send_message.send_message = bb;
    int ok = run_batch(call, cq, &op, 1, timeout_s);
    grpc_byte_buffer_destroy(bb);
    return ok;
}

/* Only the receive side is limited: an oversized message is the receiver's to refuse (and a test's to send). */
static grpc_channel_args *limit_args(grpc_arg args[1], grpc_channel_args *ca)
{
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[0].value.integer = FM_NET_MAX_RECEIVE;
    ca->num_args = 1;
    ca->args = args;
    return ca;
}

/* ---- TLS ------------------------------------------------------------------------------------------ */

#define PEM_MAX (1024 * 1024) /* a certificate chain or key is a few KiB; anything this large is not one */

int fm_net_tls_enabled(const fm_net_tls *t, int server)
{
    if (!t)
        return 0;
    return server ? (t->cert_path || t->key_path || t->mtls) : (t->ca_path || t->cert_path || t->key_path);
}

/* Reads the PEM file `path` (config key `key`) into a NUL-terminated buffer the caller frees. */
static fm_status read_pem(const char *key, const char *path, char **out)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return fm_error(FM_ERR_IO, "%s: cannot read '%s': %s", key, path, strerror(errno));
    char *buf = malloc(PEM_MAX + 1);
    if (!buf) {
        fclose(f);
        return fm_error(FM_ERR_NO_MEMORY, "%s: out of memory", key);
    }
    size_t n = fread(buf, 1, PEM_MAX + 1, f);
    int err = ferror(f);
    fclose(f);
    fm_status st = FM_OK;
    if (err)
        st = fm_error(FM_ERR_IO, "%s: cannot read '%s'", key, path);
    else if (n > PEM_MAX)
        st = fm_error(FM_ERR_IO, "%s: '%s' is larger than %d bytes: not a PEM file", key, path, PEM_MAX);
    if (st == FM_OK) {
        buf[n] = '\0';
        if (!strstr(buf, "-----BEGIN "))
            st = fm_error(FM_ERR_IO, "%s: '%s' is not a PEM file (no -----BEGIN line)", key, path);
    }
    if (st != FM_OK) {
        free(buf);
        return st;
    }
    *out = buf;
    return FM_OK;
}

/* The PEM texts of `t`, each NULL when not given. */
typedef struct pems {
    char *ca, *cert, *key;
} pems;

static void pems_free(pems *p)
{
    free(p->ca);
    free(p->cert);
    free(p->key);
    memset(p, 0, sizeof *p);
}

static fm_status pems_load(const fm_net_tls *t, int server, pems *p)
{
    memset(p, 0, sizeof *p);
    if ((t->cert_path != NULL) != (t->key_path != NULL))
        return fm_error(FM_ERR_CONFIG, "net.tls_cert and net.tls_key go together: %s is missing",
                        t->cert_path ? "net.tls_key" : "net.tls_cert");
    if (server && !t->cert_path)
        return fm_error(FM_ERR_CONFIG, "the server's TLS needs net.tls_cert and net.tls_key");
    if (server && t->mtls && !t->ca_path)
        return fm_error(FM_ERR_CONFIG, "net.mtls needs net.tls_ca, the CA the client certificates must chain to");
    fm_status st = FM_OK;
    if (t->ca_path)
        st = read_pem("net.tls_ca", t->ca_path, &p->ca);
    if (st == FM_OK && t->cert_path)
        st = read_pem("net.tls_cert", t->cert_path, &p->cert);
    if (st == FM_OK && t->key_path)
        st = read_pem("net.tls_key", t->key_path, &p->key);
    if (st != FM_OK)
        pems_free(p);
    return st;
}

fm_status fm_net_tls_check(const fm_net_tls *t, int server)
{
    if (!fm_net_tls_enabled(t, server))
        return FM_OK;
    pems p;
    FM_TRY(pems_load(t, server, &p));
    pems_free(&p);
    return FM_OK;
}

/* ---- server --------------------------------------------------------------------------------------- */

/* Many calls are in flight at once, all driven by this one thread: each call has its own state and at most one
 * batch pending, tagged with the call itself, and every completion moves that call one step on. fedsrv is only
 * entered from here, so it needs no locks, and a slow or stalled stream holds nothing but its own call. */
typedef enum call_state {
    CALL_REQUESTED,  /* waiting for a client (grpc_server_request_call) */
    CALL_QUEUED,     /* Push: admitted, waiting for one of max_pushes receiving slots; nothing pending */
    CALL_RECV_FIRST, /* initial metadata out, the request (Push: its first message) coming in */
    CALL_PUSH_RECV,  /* Push: the next message coming in */
    CALL_PULL_SEND,  /* Pull: a chunk going out */
    CALL_REPLY_SEND, /* the one reply of Join, Heartbeat or Push going out */
    CALL_STATUS      /* the status going out; the call ends when it completes */
} call_state;

typedef enum call_method { M_UNKNOWN, M_JOIN, M_HEARTBEAT, M_PULL, M_PUSH } call_method;

typedef struct srv_call {
    struct srv_call *prev, *next; /* the server's calls */
    struct srv_call *qnext;       /* the Pushes waiting for a slot */
    call_state state;
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array md;
    char method_name[64];
    call_method method;
    char who[32]; /* " (site k)" once a message named the site, for the log */
    char token[FM_WIRE_TOKEN_MAX + 1];
    const char *bearer; /* token, or NULL when the call carried none */
    int admitted;       /* counted against max_calls */
    int push_slot;      /* holds one of max_pushes */
    int timed_out;      /* cancelled for making no progress */
    double progress_at; /* when a batch of it last completed (fm_now_seconds) */
    grpc_byte_buffer *recv_bb;
    grpc_byte_buffer *send_bb;
    fm_fedsrv_push *push; /* Push: after an accepted header; nothing of it is in the round before push_end */
    double push_bytes;    /* Push: payload bytes received */
    fm_tensor_tx tx;      /* Pull: the global vector going out, then (SCAFFOLD) the control variate c */
    int tx_open;
    const float *pull_control;             /* Pull: SCAFFOLD's c, sent once the global vector is out; NULL otherwise */
    char pull_run[FM_WIRE_RUN_ID_MAX + 1]; /* tx stamps every chunk with it */
    int64_t pull_round;
    double chunk_bytes; /* Pull: payload bytes of the chunk in flight */
    char detail[512];   /* the reason of a refusal */
    grpc_slice detail_slice;
    grpc_metadata trailer; /* "fedmm-busy" on a refusal for load */
    size_t n_trailers;
    int cancelled; /* RECV_CLOSE_ON_SERVER's answer */
} srv_call;

typedef struct server {
    fm_fedsrv *srv;
    grpc_server *gs;
    grpc_completion_queue *cq;
    double timeout_s;
    int max_calls;
    const fm_wire_codec *codec; /* Pull's encoding (NULL: float32) */
    fm_net_traffic *traffic;    /* NULL: not counted */
    srv_call *calls;            /* every call, the requested one included */
    srv_call *requested;        /* the one waiting for a client, or NULL */
    int n_admitted;
    int max_pushes, n_pushing; /* Pushes receiving at once: each holds a staging vector of P floats */
    srv_call *queue, *queue_tail;
    long busy_refused;     /* calls refused for load, in all */
    double busy_logged_at; /* the log says so at most once a second */
    int stopping;          /* shutting down: only the replies on their way go on */
} server;

static int slice_is(grpc_slice s, const char *str)
{
    size_t n = strlen(str);
    return GRPC_SLICE_LENGTH(s) == n && memcmp(GRPC_SLICE_START_PTR(s), str, n) == 0;
}

/* The token of "authorization: Bearer <token>", copied into out (NULL when absent or malformed). */
static const char *bearer_of(const grpc_metadata_array *md, char *out, size_t cap)
{
    for (size_t i = 0; i < md->count; i++) {
        if (!slice_is(md->metadata[i].key, "authorization"))
            continue;
        grpc_slice v = md->metadata[i].value;
        size_t n = GRPC_SLICE_LENGTH(v);
        const char *p = (const char *)GRPC_SLICE_START_PTR(v);
        if (n < 7 || memcmp(p, "Bearer ", 7) != 0 || n - 7 >= cap)
            return NULL;
        memcpy(out, p + 7, n - 7);
        out[n - 7] = '\0';
        return out;
    }
    return NULL;
}

static int decode_code(fm_status st) { return st == FM_ERR_RANGE ? 8 /* RESOURCE_EXHAUSTED */ : 3; }

static srv_call *call_new(server *S)
{
    srv_call *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    grpc_call_details_init(&c->details);
    grpc_metadata_array_init(&c->md);
    c->detail_slice = grpc_empty_slice();
    c->next = S->calls;
    if (S->calls)
        S->calls->prev = c;
    S->calls = c;
    return c;
}

static void admit_queued(server *S);

/* Only once no batch of the call is pending. */
static void call_free(server *S, srv_call *c)
{
    if (c->state == CALL_QUEUED) {
        srv_call **q = &S->queue, *before = NULL;
        while (*q && *q != c) {
            before = *q;
            q = &(*q)->qnext;
        }
        if (*q)
            *q = c->qnext;
        if (S->queue_tail == c)
            S->queue_tail = before;
    }
    const int had_slot = c->push_slot;
    if (had_slot)
        S->n_pushing--;
    if (c->prev)
        c->prev->next = c->next;
    else
        S->calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (S->requested == c)
        S->requested = NULL;
    if (c->admitted)
        S->n_admitted--;
    fm_fedsrv_push_free(c->push);
    if (c->tx_open)
        fm_tensor_tx_free(&c->tx);
    if (c->recv_bb)
        grpc_byte_buffer_destroy(c->recv_bb);
    if (c->send_bb)
        grpc_byte_buffer_destroy(c->send_bb);
    if (c->call)
        grpc_call_unref(c->call);
    grpc_call_details_destroy(&c->details);
    grpc_metadata_array_destroy(&c->md);
    grpc_slice_unref(c->detail_slice);
    free(c);
    if (had_slot)
        admit_queued(S);
}

/* Starts the call's next batch; a call gRPC will not take a batch from is dropped. */
static void start(server *S, srv_call *c, const grpc_op *ops, size_t n, call_state next)
{
    c->state = next;
    if (grpc_call_start_batch(c->call, ops, n, c, NULL) != GRPC_CALL_OK) {
        FM_WARN("server: %s%s: gRPC refused a batch; the call is dropped", c->method_name, c->who);
        grpc_call_cancel(c->call, NULL);
        call_free(S, c);
    }
}

/* Ends the call with `code` (its reason in c->detail). A push it carried is dropped unseen by the round. */
static void finish(server *S, srv_call *c, int code)
{
    fm_fedsrv_push_free(c->push);
    c->push = NULL;
    grpc_slice_unref(c->detail_slice);
    c->detail_slice = grpc_slice_from_copied_string(code ? c->detail : "");
    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (c->state == CALL_REQUESTED) /* refused on arrival: nothing sent yet */
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = (grpc_status_code)code;
    ops[n].data.send_status_from_server.status_details = &c->detail_slice;
    ops[n].data.send_status_from_server.trailing_metadata_count = c->n_trailers;
    ops[n].data.send_status_from_server.trailing_metadata = c->n_trailers ? &c->trailer : NULL;
    n++;
    ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[n].data.recv_close_on_server.cancelled = &c->cancelled;
    n++;
    start(S, c, ops, n, CALL_STATUS);
}

/* Ends the call with `code`, the reason being fm_last_error(); logged unless the call already was (timed out). */
static void refuse(server *S, srv_call *c, int code)
{
    snprintf(c->detail, sizeof c->detail, "%s", fm_last_error());
    if (!c->timed_out && !S->stopping)
        FM_WARN("server: %s%s refused with status %d: %s", c->method_name, c->who, code, c->detail);
    finish(S, c, code);
}

static void send_msg(server *S, srv_call *c, fm_wire_buf *out, call_state next)
{
    c->send_bb = make_bb(out);
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_MESSAGE;
    op.data.send_message.send_message = c->send_bb;
    start(S, c, &op, 1, next);
}

static void recv_msg(server *S, srv_call *c, call_state next)
{
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &c->recv_bb;
    start(S, c, &op, 1, next);
}

/* The message the last RECV_MESSAGE delivered, copied into buf (buf->data NULL: the client half-closed). */
static fm_status take_msg(srv_call *c, fm_wire_buf *buf)
{
    buf->data = NULL;
    buf->len = 0;
    if (!c->recv_bb)
        return FM_OK;
    fm_status st = read_bb(c->recv_bb, buf);
    grpc_byte_buffer_destroy(c->recv_bb);
    c->recv_bb = NULL;
    return st;
}

static void name_site(srv_call *c, int site) { snprintf(c->who, sizeof c->who, " (site %d)", site); }

/* Join, Heartbeat: one request, one Task. */
static void serve_task(server *S, srv_call *c, const fm_wire_buf *in)
{
    fm_wire_task task;
    int code;
    if (c->method == M_JOIN) {
        fm_wire_join j;
        fm_status st = fm_wire_decode_join(in->data, in->len, &j);
        if (st == FM_OK)
            name_site(c, j.site);
        code = st != FM_OK ? decode_code(st) : fm_fedsrv_join(S->srv, c->bearer, &j, &task);
    } else {
        fm_wire_ref h;
        fm_status st = fm_wire_decode_ref(in->data, in->len, &h);
        if (st == FM_OK)
            name_site(c, h.site);
        code = st != FM_OK ? decode_code(st) : fm_fedsrv_heartbeat(S->srv, c->bearer, &h, &task);
    }
    fm_wire_buf out;
    if (code == 0 && fm_wire_encode_task(&task, &out) != FM_OK)
        code = FM_NET_INTERNAL;
    if (code)
        refuse(S, c, code);
    else
        send_msg(S, c, &out, CALL_REPLY_SEND);
}

/* Pull: the next chunk of the global vector (then, with SCAFFOLD, of the control variate c), or the end. Both
 * change only when their round closes, and every chunk is encoded (copied) just before it goes out, so a Pull
 * whose round closed midway is refused rather than finished from another round's vectors. */
static void pull_next(server *S, srv_call *c)
{
    if (fm_fedsrv_done(S->srv) || fm_fedsrv_round(S->srv) != c->pull_round) {
        fm_error(FM_ERR_STATE, "stale round %lld: it closed while its global vector was being sent",
                 (long long)c->pull_round);
        refuse(S, c, FM_NET_FAILED_PRECONDITION);
        return;
    }
    fm_wire_chunk ch;
    fm_wire_buf out;
    int more = fm_tensor_tx_next(&c->tx, &ch);
    if (more == 0 && c->pull_control) { /* the global vector is out: c follows, block by block, in the same codec */
        const int32_t site = c->tx.site;
        fm_tensor_tx_free(&c->tx);
        fm_tensor_tx_init(&c->tx, c->pull_control, fm_fedsrv_blocks(S->srv), fm_fedsrv_num_blocks(S->srv), NULL, 0,
                          c->pull_run, c->pull_round, site);
        fm_tensor_tx_set_codec(&c->tx, S->codec);
        c->tx.kind = FM_PAYLOAD_CONTROL_VARIATE;
        c->pull_control = NULL;
        more = fm_tensor_tx_next(&c->tx, &ch);
    }
    if (more == 0) {
        finish(S, c, 0);
        return;
    }
    if (more < 0 || fm_wire_encode_chunk(&ch, &out) != FM_OK) {
        refuse(S, c, FM_NET_INTERNAL);
        return;
    }
    c->chunk_bytes = (double)ch.payload_len;
    send_msg(S, c, &out, CALL_PULL_SEND);
}

static void serve_pull(server *S, srv_call *c, const fm_wire_buf *in)
{
    fm_wire_ref r;
    const float *global = NULL;
    fm_status st = fm_wire_decode_ref(in->data, in->len, &r);
    if (st == FM_OK)
        name_site(c, r.site);
    const int code = st != FM_OK ? decode_code(st) : fm_fedsrv_pull(S->srv, c->bearer, &r, &global);
    if (code) {
        refuse(S, c, code);
        return;
    }
    snprintf(c->pull_run, sizeof c->pull_run, "%s", r.run_id);
    fm_tensor_tx_init(&c->tx, global, fm_fedsrv_blocks(S->srv), fm_fedsrv_num_blocks(S->srv), NULL, 0, c->pull_run,
                      r.round, r.site);
    fm_tensor_tx_set_codec(&c->tx, S->codec);
    c->tx.block_kinds = fm_fedsrv_block_kinds(S->srv); /* representation FL: images, texts */
    c->tx_open = 1;
    c->pull_round = r.round;
    c->pull_control = fm_fedsrv_control(S->srv);
    pull_next(S, c);
}

/* Push: one message of the stream (header first, then chunks); then the next is asked for. */
static void push_msg(server *S, srv_call *c, const fm_wire_buf *msg)
{
    fm_wire_push_msg m;
    fm_status st = fm_wire_decode_push(msg->data, msg->len, &m);
    if (st != FM_OK) {
        refuse(S, c, decode_code(st));
        return;
    }
    int code;
    if (m.is_header && !c->push) {
        name_site(c, m.header->site);
        code = fm_fedsrv_push_begin(S->srv, c->bearer, m.header, &c->push);
    } else if (!m.is_header && c->push) {
        c->push_bytes += (double)m.chunk.payload_len;
        code = fm_fedsrv_push_chunk(S->srv, c->push, &m.chunk);
    } else {
        code = (fm_error(FM_ERR_PARSE, c->push ? "Push: a second header" : "Push: a chunk before the header"),
                FM_NET_INVALID_ARGUMENT);
    }
    fm_wire_push_msg_free(&m);
    if (code)
        refuse(S, c, code);
    else
        recv_msg(S, c, CALL_PUSH_RECV);
}

/* Push: the client half-closed. Only here does the update reach the round. */
static void push_end(server *S, srv_call *c)
{
    fm_wire_reply reply;
    /* counted before push_end, which may finish the round and report its traffic; taken back if refused */
    if (S->traffic)
        S->traffic->bytes_up += c->push_bytes;
    const int code =
        c->push ? fm_fedsrv_push_end(S->srv, c->push, &reply)
                : (fm_error(FM_ERR_PARSE, "Push: the stream ended before its header"), FM_NET_INVALID_ARGUMENT);
    if (code && S->traffic)
        S->traffic->bytes_up -= c->push_bytes;
    fm_fedsrv_push_free(c->push);
    c->push = NULL;
    fm_wire_buf out;
    if (code)
        refuse(S, c, code);
    else if (fm_wire_encode_reply(&reply, &out) != FM_OK)
        refuse(S, c, FM_NET_INTERNAL);
    else
        send_msg(S, c, &out, CALL_REPLY_SEND);
}

static void begin_receiving(server *S, srv_call *c)
{
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_RECV_MESSAGE;
    ops[1].data.recv_message.recv_message = &c->recv_bb;
    start(S, c, ops, 2, CALL_RECV_FIRST);
}

/* Starts the waiting Pushes, oldest first, while receiving slots are free. A waiting Push is not timed out: it
 * waits on the server, not on its site (whose own call deadline still applies). */
static void admit_queued(server *S)
{
    while (!S->stopping && S->queue && S->n_pushing < S->max_pushes) {
        srv_call *c = S->queue;
        S->queue = c->qnext;
        if (!S->queue)
            S->queue_tail = NULL;
        c->qnext = NULL;
        c->push_slot = 1;
        S->n_pushing++;
        c->progress_at = fm_now_seconds();
        begin_receiving(S, c);
    }
}

/* A new call: refused when max_calls are in flight, else its request (or first message) is asked for; a Push
 * only once it has a receiving slot (max_pushes bounds the staging vectors held at once). */
static void on_new(server *S, srv_call *c)
{
    size_t mlen = GRPC_SLICE_LENGTH(c->details.method);
    snprintf(c->method_name, sizeof c->method_name, "?");
    if (mlen < sizeof c->method_name) {
        memcpy(c->method_name, GRPC_SLICE_START_PTR(c->details.method), mlen);
        c->method_name[mlen] = '\0';
    }
    c->method = strcmp(c->method_name, METHOD_JOIN) == 0        ? M_JOIN
                : strcmp(c->method_name, METHOD_HEARTBEAT) == 0 ? M_HEARTBEAT
                : strcmp(c->method_name, METHOD_PULL) == 0      ? M_PULL
                : strcmp(c->method_name, METHOD_PUSH) == 0      ? M_PUSH
                                                                : M_UNKNOWN;
    c->bearer = bearer_of(&c->md, c->token, sizeof c->token);
    if (S->n_admitted >= S->max_calls) {
        snprintf(c->detail, sizeof c->detail, "server busy: %d calls in flight (net.max_calls); retry later",
                 S->n_admitted);
        c->trailer.key = grpc_slice_from_static_string("fedmm-busy");
        c->trailer.value = grpc_slice_from_static_string("1");
        c->n_trailers = 1;
        S->busy_refused++;
        if (c->progress_at - S->busy_logged_at >= 1.0) {
            FM_WARN("server: busy: %d calls in flight (net.max_calls); new calls are refused with status 8 "
                    "(%ld so far)",
                    S->n_admitted, S->busy_refused);
            S->busy_logged_at = c->progress_at;
        }
        finish(S, c, 8 /* RESOURCE_EXHAUSTED */);
        return;
    }
    c->admitted = 1;
    S->n_admitted++;
    if (c->method == M_PUSH) { /* its turn comes when a receiving slot is free */
        c->state = CALL_QUEUED;
        if (S->queue_tail)
            S->queue_tail->qnext = c;
        else
            S->queue = c;
        S->queue_tail = c;
        admit_queued(S);
        return;
    }
    begin_receiving(S, c);
}

static void on_first(server *S, srv_call *c, int success)
{
    if (!success) {
        fm_error(FM_ERR_RANGE, "%s: the request could not be received (too large, or cancelled)", c->method_name);
        refuse(S, c, 8 /* RESOURCE_EXHAUSTED */);
        return;
    }
    fm_wire_buf in;
    fm_status st = take_msg(c, &in);
    if (st != FM_OK) {
        refuse(S, c, decode_code(st));
        return;
    }
    if (!in.data) {
        fm_error(FM_ERR_PARSE, "%s: no request message", c->method_name);
        refuse(S, c, FM_NET_INVALID_ARGUMENT);
        return;
    }
    switch (c->method) {
    case M_JOIN:
    case M_HEARTBEAT: serve_task(S, c, &in); break;
    case M_PULL: serve_pull(S, c, &in); break;
    case M_PUSH: push_msg(S, c, &in); break;
    default: fm_error(FM_ERR_UNSUPPORTED, "unknown method %s", c->method_name); refuse(S, c, 12 /* UNIMPLEMENTED */);
    }
    fm_wire_buf_free(&in);
}

static void on_push_recv(server *S, srv_call *c, int success)
{
    fm_wire_buf in;
    fm_status st = success ? take_msg(c, &in) : FM_OK;
    if (!success) {
        fm_error(FM_ERR_NETWORK, "Push: the stream broke off");
        refuse(S, c, 1 /* CANCELLED: the client went away, or the call timed out */);
    } else if (st != FM_OK) {
        refuse(S, c, decode_code(st));
    } else if (!in.data) {
        push_end(S, c);
    } else {
        push_msg(S, c, &in);
        fm_wire_buf_free(&in);
    }
}

static void on_sent(server *S, srv_call *c, int success)
{
    grpc_byte_buffer_destroy(c->send_bb);
    c->send_bb = NULL;
    if (!success) {
        if (!c->timed_out && !S->stopping)
            FM_WARN("server: %s%s: sending the reply failed (client gone?)", c->method_name, c->who);
        grpc_call_cancel(c->call, NULL);
        snprintf(c->detail, sizeof c->detail, "sending the reply failed");
        finish(S, c, 1 /* CANCELLED */);
    } else if (c->state == CALL_PULL_SEND) {
        if (S->traffic)
            S->traffic->bytes_down += c->chunk_bytes;
        pull_next(S, c);
    } else {
        finish(S, c, 0);
    }
}

/* One completion of call c: the step its state says. While the server stops, only the replies already on their
 * way go on; every other call ends without reaching fedsrv. */
static void step(server *S, srv_call *c, int success)
{
    c->progress_at = fm_now_seconds();
    fm_clear_error();
    if (c->state == CALL_REQUESTED && (!success || S->stopping)) {
        if (success) /* matched just as the server stopped: nothing was sent on it */
            grpc_call_cancel(c->call, NULL);
        call_free(S, c);
        return;
    }
    if (S->stopping && c->state != CALL_REPLY_SEND)
        success = 0;
    switch (c->state) {
    case CALL_REQUESTED: on_new(S, c); break;
    case CALL_RECV_FIRST: on_first(S, c, success); break;
    case CALL_PUSH_RECV: on_push_recv(S, c, success); break;
    case CALL_PULL_SEND:
    case CALL_REPLY_SEND: on_sent(S, c, success); break;
    case CALL_STATUS: call_free(S, c); break;
    case CALL_QUEUED: break; /* has no batch pending, so no completion */
    }
}

/* Cancels the calls that made no progress for timeout_s; each one's pending batch then fails and ends it. */
static void expire(server *S, double now)
{
    for (srv_call *c = S->calls; c; c = c->next) {
        if (c->state == CALL_REQUESTED || c->state == CALL_QUEUED || c->timed_out ||
            now - c->progress_at <= S->timeout_s)
            continue;
        c->timed_out = 1;
        FM_WARN("server: %s%s cancelled: no progress for %g s (net.call_timeout_s)%s", c->method_name, c->who,
                S->timeout_s, c->push ? "; its partial push is discarded" : "");
        grpc_call_cancel(c->call, NULL);
    }
}

int fm_net_receiving_slots(double park_bytes, double push_bytes)
{
    const double stageable = park_bytes / (push_bytes > 1 ? push_bytes : 1);
    return stageable >= 1e6 ? 1000000 : stageable < 4 ? 4 : (int)stageable;
}

fm_status fm_net_serve(fm_fedsrv *srv, const fm_net_server_options *o)
{
    static const int tag_shutdown_storage = 0;
    void *tag_shutdown = (void *)&tag_shutdown_storage;
    grpc_init();
    grpc_arg args[1];
    grpc_channel_args ca;
    grpc_server *gs = grpc_server_create(limit_args(args, &ca), NULL);
    grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(gs, cq, NULL);
    fm_status result = FM_OK;
    grpc_server_credentials *creds = NULL;
    if (fm_net_tls_enabled(o->tls, 1)) {
        pems p;
        result = pems_load(o->tls, 1, &p);
        if (result == FM_OK) {
            grpc_ssl_pem_key_cert_pair pair = {.private_key = p.key, .cert_chain = p.cert};
            /* gRPC copies the PEM texts */
            creds = grpc_ssl_server_credentials_create_ex(
                p.ca, &pair, 1,
                o->tls->mtls ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                             : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
                NULL);
            pems_free(&p);
            if (!creds)
                result = fm_error(FM_ERR_CONFIG, "server: gRPC refused the TLS certificate or key");
        }
    } else {
        creds = grpc_insecure_server_credentials_create();
    }
    int port = creds ? grpc_server_add_http2_port(gs, o->listen, creds) : 0;
    if (creds)
        grpc_server_credentials_release(creds);
    int started = 0;
    if (result != FM_OK) {
        /* the credentials failed; nothing was bound */
    } else if (port == 0) {
        result = fm_error(FM_ERR_NETWORK, "server: cannot listen on '%s'", o->listen);
    } else {
        grpc_server_start(gs);
        started = 1;
        FM_INFO("server: listening on %s (port %d, %s)", o->listen, port,
                !fm_net_tls_enabled(o->tls, 1) ? "plaintext"
                : o->tls->mtls                 ? "mutual TLS"
                                               : "TLS");
        if (o->on_listen)
            o->on_listen(o->ctx, port);
    }
    server S = {.srv = srv,
                .gs = gs,
                .cq = cq,
                .timeout_s = o->call_timeout_s > 0 ? o->call_timeout_s : 60.0,
                .max_calls = o->max_calls > 0 ? o->max_calls : FM_NET_MAX_CALLS,
                .max_pushes = o->max_pushes > 0 ? o->max_pushes : INT_MAX,
                .codec = o->codec,
                .traffic = o->traffic,
                .busy_logged_at = -1e9};
    const double grace = o->release_grace_s > 0 ? o->release_grace_s : 10.0;
    double done_at = -1.0, expired_at = 0.0;
    while (started) {
        if (!S.requested) { /* always one call requested: a new client never waits for a call in flight */
            srv_call *c = call_new(&S);
            if (c && grpc_server_request_call(gs, &c->call, &c->details, &c->md, cq, cq, c) == GRPC_CALL_OK) {
                S.requested = c;
            } else {
                if (c)
                    call_free(&S, c);
                result = fm_error(FM_ERR_NETWORK, "server: cannot request calls");
                break;
            }
        }
        grpc_event ev = grpc_completion_queue_next(cq, after(0.2), NULL);
        const double work_at = fm_now_seconds();
        if (ev.type == GRPC_OP_COMPLETE) {
            srv_call *c = ev.tag;
            if (c == S.requested)
                S.requested = NULL;
            step(&S, c, ev.success);
        }
        (void)fm_fedsrv_poll(srv, fm_now_seconds()); /* a failure is kept as the server's fatal status */
        const double now = fm_now_seconds();
        if (now - work_at > 0.05) /* the loop was busy (aggregating, writing the state): no call could progress */
            for (srv_call *c = S.calls; c; c = c->next)
                c->progress_at += now - work_at;
        if (now - expired_at >= 0.1) {
            expire(&S, now);
            expired_at = now;
        }
        if (fm_fedsrv_fatal(srv) != FM_OK) {
            result = fm_fedsrv_fatal(srv);
            break;
        }
        if (fm_fedsrv_done(srv)) {
            if (done_at < 0)
                done_at = now;
            if (fm_fedsrv_all_released(srv) || now - done_at > grace)
                break;
        }
    }
    /* shut down: no new calls; the replies on their way go out (the last site's DONE may be one of them), every
     * other call is cancelled; after 5 s whatever is left is cancelled too. Then drain the queue. */
    S.stopping = 1;
    grpc_server_shutdown_and_notify(gs, cq, tag_shutdown);
    while (S.queue) { /* nothing pending on them */
        grpc_call_cancel(S.queue->call, NULL);
        call_free(&S, S.queue);
    }
    for (srv_call *c = S.calls; c; c = c->next)
        if (c->state != CALL_REQUESTED && c->state != CALL_REPLY_SEND && c->state != CALL_STATUS)
            grpc_call_cancel(c->call, NULL);
    const double stop_at = fm_now_seconds();
    int shut = 0, forced = 0;
    while (!shut || S.calls) {
        grpc_event ev = grpc_completion_queue_next(cq, after(0.2), NULL);
        const double waited = fm_now_seconds() - stop_at;
        if (!forced && waited > 5.0) {
            grpc_server_cancel_all_calls(gs);
            forced = 1;
        }
        if (forced && waited > 15.0)
            break;
        if (ev.type == GRPC_OP_COMPLETE && ev.tag == tag_shutdown)
            shut = 1;
        else if (ev.type == GRPC_OP_COMPLETE)
            step(&S, ev.tag, ev.success);
    }
    grpc_server_destroy(gs);
    grpc_completion_queue_shutdown(cq);
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type == GRPC_OP_COMPLETE && ev.tag != tag_shutdown)
            call_free(&S, ev.tag); /* no batch may start on a queue that shuts down */
    }
    grpc_completion_queue_destroy(cq);
    while (S.calls) /* none should be left: every batch has completed */
        call_free(&S, S.calls);
    grpc_shutdown();
    return result;
}

/* ---- client --------------------------------------------------------------------------------------- */

struct fm_net_client {
    grpc_channel *ch;
    grpc_completion_queue *cq;
    char bearer[FM_WIRE_TOKEN_MAX + 16];
    double timeout_s;
    int last_code;
    int handshake_failed;
    int busy;               /* the last call was refused for load ("fedmm-busy") */
    fm_wire_codec codec;    /* Push's encoding */
    double last_push_bytes; /* payload bytes of the last Push */
};

fm_status fm_net_client_create(fm_net_client **out, const char *target, const char *token, double call_timeout_s)
{
    return fm_net_client_create_tls(out, target, token, call_timeout_s, NULL);
}

/* narrow: BDP probing off, so that the receive window stays at HTTP/2's small default (fm_net_client_create_narrow) */
static fm_status client_create(fm_net_client **out, const char *target, const char *token, double call_timeout_s,
                               const fm_net_tls *tls, int narrow)
{
    *out = NULL;
    if (strlen(token) > FM_WIRE_TOKEN_MAX)
        return fm_error(FM_ERR_INVALID_ARG, "client: token longer than %d characters", FM_WIRE_TOKEN_MAX);
    const int secure = fm_net_tls_enabled(tls, 0);
    pems p;
    memset(&p, 0, sizeof p);
    if (secure)
        FM_TRY(pems_load(tls, 0, &p));
    fm_net_client *c = calloc(1, sizeof *c);
    if (!c) {
        pems_free(&p);
        return fm_error(FM_ERR_NO_MEMORY, "client: out of memory");
    }
    grpc_init();
    snprintf(c->bearer, sizeof c->bearer, "Bearer %s", token);
    c->timeout_s = call_timeout_s > 0 ? call_timeout_s : 60.0;
    grpc_arg args[5];
    grpc_channel_args ca;
    limit_args(args, &ca);
    if (narrow) {
        args[ca.num_args].type = GRPC_ARG_INTEGER;
        args[ca.num_args].key = GRPC_ARG_HTTP2_BDP_PROBE;
        args[ca.num_args].value.integer = 0;
        ca.num_args++;
    }
    /* gRPC's own reconnection back-off grows to 120 s, so a channel that lost its server would keep failing
     * calls fast long after the server came back (--resume): cap it near the site's own back-off (client.c).
     * GRPC_ARG_MIN_RECONNECT_BACKOFF_MS stays at its default: it is also the connection attempt's timeout */
    static const struct {
        const char *key;
        int ms;
    } kReconnect[] = {{GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100}, {GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000}};
    for (size_t i = 0; i < sizeof kReconnect / sizeof kReconnect[0]; i++) {
        args[ca.num_args].type = GRPC_ARG_INTEGER;
        args[ca.num_args].key = (char *)kReconnect[i].key;
        args[ca.num_args].value.integer = kReconnect[i].ms;
        ca.num_args++;
    }
    grpc_channel_credentials *creds = NULL;
    if (secure) {
        grpc_ssl_pem_key_cert_pair pair = {.private_key = p.key, .cert_chain = p.cert};
        creds = grpc_ssl_credentials_create(p.ca, p.cert ? &pair : NULL, NULL, NULL); /* copies the texts */
        if (tls->server_name) {
            args[ca.num_args].type = GRPC_ARG_STRING;
            args[ca.num_args].key = GRPC_SSL_TARGET_NAME_OVERRIDE_ARG;
            args[ca.num_args].value.string = (char *)tls->server_name; /* gRPC copies channel args */
            ca.num_args++;
        }
    } else {
        creds = grpc_insecure_credentials_create();
    }
    pems_free(&p);
    if (!creds) {
        free(c);
        grpc_shutdown();
        return fm_error(FM_ERR_CONFIG, "client: gRPC refused the TLS certificates");
    }
    c->ch = grpc_channel_create(target, creds, &ca);
    grpc_channel_credentials_release(creds);
    c->cq = grpc_completion_queue_create_for_next(NULL);
    *out = c;
    return FM_OK;
}

fm_status fm_net_client_create_tls(fm_net_client **out, const char *target, const char *token, double call_timeout_s,
                                   const fm_net_tls *tls)
{
    return client_create(out, target, token, call_timeout_s, tls, 0);
}

fm_status fm_net_client_create_narrow(fm_net_client **out, const char *target, const char *token, double call_timeout_s)
{
    return client_create(out, target, token, call_timeout_s, NULL, 1);
}

void fm_net_client_destroy(fm_net_client *c)
{
    if (!c)
        return;
    grpc_channel_destroy(c->ch);
    grpc_completion_queue_shutdown(c->cq);
    while (grpc_completion_queue_next(c->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type != GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(c->cq);
    free(c);
    grpc_shutdown();
}

int fm_net_last_code(const fm_net_client *c) { return c->last_code; }

double fm_net_last_push_bytes(const fm_net_client *c) { return c->last_push_bytes; }

fm_status fm_net_client_set_codec(fm_net_client *c, const fm_wire_codec *codec)
{
    const fm_wire_codec plain = {FM_WIRE_F32, FM_WIRE_RAW, 0};
    FM_TRY(fm_wire_codec_check(codec ? codec : &plain));
    c->codec = codec ? *codec : plain;
    return FM_OK;
}

int fm_net_last_handshake_failed(const fm_net_client *c) { return c->handshake_failed; }

int fm_net_last_busy(const fm_net_client *c) { return c->busy; }

/* 1 when the server's trailing metadata says it refused the call for load only. */
static int says_busy(const grpc_metadata_array *trailing)
{
    for (size_t i = 0; i < trailing->count; i++)
        if (slice_is(trailing->metadata[i].key, "fedmm-busy"))
            return 1;
    return 0;
}

/* One call: produce() yields the messages to send (1 per message, 0 at the end, -1 on a local error), consume()
 * takes each received message. */
typedef int (*produce_fn)(void *ctx, fm_wire_buf *out);
typedef fm_status (*consume_fn)(void *ctx, const fm_wire_buf *in);

/* Opens a call of `method` with the site's bearer token as metadata and sends that metadata; *ok says whether the
 * send went through. The caller unrefs *token once the call is over. */
static grpc_call *open_client_call(fm_net_client *c, const char *method, gpr_timespec deadline, grpc_slice *token,
                                   int *ok)
{
    grpc_slice mslice = grpc_slice_from_copied_string(method);
    grpc_call *call =
        grpc_channel_create_call(c->ch, NULL, GRPC_PROPAGATE_DEFAULTS, c->cq, mslice, NULL, deadline, NULL);
    grpc_slice_unref(mslice);
    grpc_metadata md;
    memset(&md, 0, sizeof md);
    md.key = grpc_slice_from_static_string("authorization");
    md.value = grpc_slice_from_copied_string(c->bearer);
    *token = md.value;
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_INITIAL_METADATA;
    op.data.send_initial_metadata.count = 1;
    op.data.send_initial_metadata.metadata = &md;
    *ok = run_batch(call, c->cq, &op, 1, c->timeout_s);
    return call;
}

static fm_status client_call(fm_net_client *c, const char *method, produce_fn produce, consume_fn consume, void *ctx)
{
    const gpr_timespec deadline =
        gpr_time_add(gpr_now(GPR_CLOCK_REALTIME), gpr_time_from_millis((int64_t)(c->timeout_s * 1000), GPR_TIMESPAN));
    grpc_slice token;
    int ok;
    grpc_call *call = open_client_call(c, method, deadline, &token, &ok);
    fm_status local = FM_OK;
    char local_msg[512] = "";
    grpc_op ops[2];
    fm_wire_buf buf = {0};
    while (ok) {
        int r = produce(ctx, &buf);
        if (r <= 0) {
            if (r < 0) {
                local = FM_ERR_INVALID_ARG;
                snprintf(local_msg, sizeof local_msg, "%s", fm_last_error());
                grpc_call_cancel(call, NULL);
                ok = 0;
            }
            break;
        }
        ok = send_buf(call, c->cq, &buf, c->timeout_s);
    }
    grpc_metadata_array imd;
    grpc_metadata_array_init(&imd);
    int got_imd = 0;
    if (ok) {
        memset(ops, 0, sizeof ops);
        ops[0].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
        ops[1].op = GRPC_OP_RECV_INITIAL_METADATA;
        ops[1].data.recv_initial_metadata.recv_initial_metadata = &imd;
        ok = run_batch(call, c->cq, ops, 2, c->timeout_s);
        got_imd = ok;
    }
    while (ok) {
        grpc_byte_buffer *bb = NULL;
        memset(ops, 0, sizeof ops);
        ops[0].op = GRPC_OP_RECV_MESSAGE;
        ops[0].data.recv_message.recv_message = &bb;
        ok = run_batch(call, c->cq, ops, 1, c->timeout_s);
        if (!ok || !bb)
            break;
        fm_status st = read_bb(bb, &buf);
        grpc_byte_buffer_destroy(bb);
        if (st == FM_OK)
            st = consume(ctx, &buf);
        fm_wire_buf_free(&buf);
        if (st != FM_OK) {
            local = st;
            snprintf(local_msg, sizeof local_msg, "%s", fm_last_error());
            grpc_call_cancel(call, NULL);
            break;
        }
    }
    grpc_metadata_array trailing;
    grpc_metadata_array_init(&trailing);
    grpc_status_code status = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();
    const char *error_string = NULL;
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[0].data.recv_status_on_client.trailing_metadata = &trailing;
    ops[0].data.recv_status_on_client.status = &status;
    ops[0].data.recv_status_on_client.status_details = &details;
    ops[0].data.recv_status_on_client.error_string = &error_string;
    /* after a failed send (the server refused mid-stream), the status only surfaces once the initial
     * metadata is asked for too: without it the receive waits out the deadline */
    ops[1].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[1].data.recv_initial_metadata.recv_initial_metadata = &imd;
    if (!run_batch(call, c->cq, ops, got_imd ? 1 : 2, c->timeout_s))
        status = GRPC_STATUS_DEADLINE_EXCEEDED;
    char detail[512];
    size_t dn = GRPC_SLICE_LENGTH(details) < sizeof detail - 1 ? GRPC_SLICE_LENGTH(details) : sizeof detail - 1;
    memcpy(detail, GRPC_SLICE_START_PTR(details), dn);
    detail[dn] = '\0';
    grpc_slice_unref(details);
    /* A failed TLS handshake surfaces as UNAVAILABLE, like a server not yet up; only the text tells them apart.
     * A server not up refuses the connection. One that accepts it and closes it at once ("Socket closed" while
     * connecting) is up but rejects this transport: plaintext against TLS, or (TLS 1.3, where the client
     * finishes its side first) a client certificate the server refused. */
    c->handshake_failed = status == GRPC_STATUS_UNAVAILABLE && !strstr(detail, "tcp handshaker shutdown") &&
                          (strstr(detail, "andshake") || strstr(detail, "SSL") || strstr(detail, "ssl") ||
                           (strstr(detail, "failed to connect") && strstr(detail, "Socket closed")) ||
                           (error_string && (strstr(error_string, "andshake") || strstr(error_string, "SSL"))));
    c->busy = status == GRPC_STATUS_RESOURCE_EXHAUSTED && says_busy(&trailing);
    if (error_string)
        gpr_free((void *)error_string);
    grpc_metadata_array_destroy(&trailing);
    grpc_metadata_array_destroy(&imd);
    grpc_slice_unref(token);
    grpc_call_unref(call);
    fm_wire_buf_free(&buf);
    c->last_code = (int)status;
    if (local != FM_OK)
        return fm_error(local, "%s", local_msg);
    if (status != GRPC_STATUS_OK)
        return fm_error(FM_ERR_NETWORK, "%s: status %d: %s", method, (int)status, detail[0] ? detail : "(no detail)");
    return FM_OK;
}

/* single request, single reply */
typedef struct unary_ctx {
    fm_wire_buf req;
    int sent;
    fm_status (*decode)(const uint8_t *, size_t, void *);
    void *reply;
    int got;
} unary_ctx;

static int unary_produce(void *ctx, fm_wire_buf *out)
{
    unary_ctx *u = ctx;
    if (u->sent)
        return 0;
    u->sent = 1;
    *out = u->req;
    u->req.data = NULL;
    return 1;
}

static fm_status unary_consume(void *ctx, const fm_wire_buf *in)
{
    unary_ctx *u = ctx;
    if (u->got)
        return fm_error(FM_ERR_PARSE, "a second reply message");
    u->got = 1;
    return u->decode(in->data, in->len, u->reply);
}

static fm_status decode_task_v(const uint8_t *b, size_t n, void *out) { return fm_wire_decode_task(b, n, out); }

static fm_status unary(fm_net_client *c, const char *method, fm_wire_buf req,
                       fm_status (*decode)(const uint8_t *, size_t, void *), void *reply)
{
    unary_ctx u = {.req = req, .decode = decode, .reply = reply};
    fm_status st = client_call(c, method, unary_produce, unary_consume, &u);
    fm_wire_buf_free(&u.req);
    if (st == FM_OK && !u.got)
        return fm_error(FM_ERR_PARSE, "%s: no reply message", method);
    return st;
}

fm_status fm_net_join(fm_net_client *c, const fm_wire_join *j, fm_wire_task *task)
{
    fm_wire_buf req;
    FM_TRY(fm_wire_encode_join(j, &req));
    return unary(c, METHOD_JOIN, req, decode_task_v, task);
}

fm_status fm_net_heartbeat(fm_net_client *c, const fm_wire_ref *h, fm_wire_task *task)
{
    fm_wire_buf req;
    FM_TRY(fm_wire_encode_ref(h, &req));
    return unary(c, METHOD_HEARTBEAT, req, decode_task_v, task);
}

typedef struct pull_ctx {
    fm_wire_buf req;
    int sent;
    const fm_wire_ref *ref;
    const fm_wire_payload_kind *kinds; /* representation FL: each block's payload kind; NULL: adapters */
    size_t n_blocks;
    fm_tensor_rx rx;
    float *control;          /* SCAFFOLD: where c goes; NULL: the site expects none */
    fm_tensor_rx rx_c;       /* c's chunks, after the global vector's */
    size_t got, pause_after; /* chunks received; fm_net_pull_paused calls paused(ctx) after pause_after of them */
    void (*paused)(void *ctx);
    void *pause_ctx;
} pull_ctx;

static int pull_produce(void *ctx, fm_wire_buf *out)
{
    pull_ctx *p = ctx;
    if (p->sent)
        return 0;
    p->sent = 1;
    *out = p->req;
    p->req.data = NULL;
    return 1;
}

static fm_status pull_consume(void *ctx, const fm_wire_buf *in)
{
    pull_ctx *p = ctx;
    fm_wire_chunk ch;
    FM_TRY(fm_wire_decode_chunk(in->data, in->len, &ch));
    fm_status st = FM_OK;
    if (strcmp(ch.run_id, p->ref->run_id) != 0 || ch.round != p->ref->round || ch.site != p->ref->site)
        st = fm_error(FM_ERR_PARSE, "Pull: a chunk of run %s round %lld site %d, expected run %s round %lld site %d",
                      ch.run_id, (long long)ch.round, ch.site, p->ref->run_id, (long long)p->ref->round, p->ref->site);
    if (st == FM_OK && p->kinds && (ch.tensor >= p->n_blocks || ch.kind != p->kinds[ch.tensor]))
        st = fm_error(FM_ERR_PARSE,
                      "Pull: a chunk of payload %d for block %u where CreamFL's representations were expected (does "
                      "the server run fl.algorithm creamfl?)",
                      (int)ch.kind, ch.tensor);
    else if (st == FM_OK && (p->kinds || ch.kind == FM_PAYLOAD_ADAPTERS))
        st = fm_tensor_rx_add(&p->rx, &ch);
    else if (st == FM_OK && ch.kind != FM_PAYLOAD_CONTROL_VARIATE)
        st = fm_error(FM_ERR_PARSE, "Pull: a chunk of payload %d in a Pull of the global vector", (int)ch.kind);
    else if (st == FM_OK && !p->control)
        st = fm_error(FM_ERR_CONFIG, "Pull: the server sends a control variate (it runs fl.strategy scaffold); this "
                                     "site's config has another fl.strategy");
    else if (st == FM_OK && !fm_tensor_rx_complete(&p->rx))
        st = fm_error(FM_ERR_PARSE, "Pull: the control variate began before the global vector was whole (at block %zu)",
                      p->rx.block);
    else if (st == FM_OK)
        st = fm_tensor_rx_add(&p->rx_c, &ch);
    fm_wire_chunk_free(&ch);
    if (st == FM_OK && ++p->got == p->pause_after && p->paused)
        p->paused(p->pause_ctx); /* nothing more is read meanwhile: gRPC's flow control holds the server back */
    return st;
}

/* The Pull of p->ref into dst (and p->control), laid out by `blocks`; p says what else is expected. */
static fm_status pull(fm_net_client *c, pull_ctx *p, float *dst, const fm_strategy_block *blocks, size_t n_blocks)
{
    p->n_blocks = n_blocks;
    FM_TRY(fm_wire_encode_ref(p->ref, &p->req));
    fm_tensor_rx_init(&p->rx, dst, blocks, n_blocks, NULL);
    if (p->control)
        fm_tensor_rx_init(&p->rx_c, p->control, blocks, n_blocks, NULL);
    fm_status st = client_call(c, METHOD_PULL, pull_produce, pull_consume, p);
    fm_wire_buf_free(&p->req);
    FM_TRY(st);
    if (!fm_tensor_rx_complete(&p->rx))
        return fm_error(FM_ERR_PARSE, "Pull: the stream ended at block %zu of %zu", p->rx.block, n_blocks);
    if (p->control && !fm_tensor_rx_complete(&p->rx_c))
        return fm_error(FM_ERR_CONFIG,
                        "Pull: the stream ended at block %zu of %zu of the control variate (%s): a SCAFFOLD site "
                        "needs a server that runs fl.strategy scaffold",
                        p->rx_c.block, n_blocks, p->rx_c.block == 0 ? "none was sent" : "cut short");
    return FM_OK;
}

fm_status fm_net_pull_paused(fm_net_client *c, const fm_wire_ref *r, float *dst, float *control,
                             const fm_strategy_block *blocks, size_t n_blocks, size_t after_chunks,
                             void (*paused)(void *ctx), void *ctx)
{
    pull_ctx p = {.ref = r, .control = control, .pause_after = after_chunks, .paused = paused, .pause_ctx = ctx};
    return pull(c, &p, dst, blocks, n_blocks);
}

fm_status fm_net_pull_control(fm_net_client *c, const fm_wire_ref *r, float *dst, float *control,
                              const fm_strategy_block *blocks, size_t n_blocks)
{
    return fm_net_pull_paused(c, r, dst, control, blocks, n_blocks, 0, NULL, NULL);
}

fm_status fm_net_pull(fm_net_client *c, const fm_wire_ref *r, float *dst, const fm_strategy_block *blocks,
                      size_t n_blocks)
{
    return fm_net_pull_control(c, r, dst, NULL, blocks, n_blocks);
}

fm_status fm_net_pull_reps(fm_net_client *c, const fm_wire_ref *r, float *dst, const fm_strategy_block *blocks,
                           size_t n_blocks, const fm_wire_payload_kind *kinds)
{
    pull_ctx p = {.ref = r, .kinds = kinds};
    return pull(c, &p, dst, blocks, n_blocks);
}

typedef struct push_ctx {
    const fm_wire_push_header *h;
    int header_sent;
    fm_tensor_tx tx;
    fm_tensor_tx tx_c; /* SCAFFOLD: Δc_i, after the delta */
    int has_c, in_c;
    fm_wire_reply *reply;
    int got;
    double bytes; /* payload bytes handed to gRPC */
} push_ctx;

static int push_produce(void *ctx, fm_wire_buf *out)
{
    push_ctx *p = ctx;
    if (!p->header_sent) {
        p->header_sent = 1;
        return fm_wire_encode_push_header(p->h, out) == FM_OK ? 1 : -1;
    }
    fm_wire_chunk ch;
    int more = p->in_c ? 0 : fm_tensor_tx_next(&p->tx, &ch);
    if (more == 0 && p->has_c) {
        p->in_c = 1;
        more = fm_tensor_tx_next(&p->tx_c, &ch);
    }
    if (more <= 0)
        return more;
    p->bytes += (double)ch.payload_len;
    return fm_wire_encode_push_chunk(&ch, out) == FM_OK ? 1 : -1;
}

static fm_status push_consume(void *ctx, const fm_wire_buf *in)
{
    push_ctx *p = ctx;
    if (p->got)
        return fm_error(FM_ERR_PARSE, "Push: a second reply message");
    p->got = 1;
    return fm_wire_decode_reply(in->data, in->len, p->reply);
}

/* The Push of h and the blocks h->trained selects of vec, then (control_delta not NULL) the same blocks of
 * control_delta as the control variate, encoded with codec; kinds (NULL: adapters) stamps each block's chunks with
 * its own payload kind. `what` names vec when the server refuses the push; *bytes gets the payload bytes sent. */
static fm_status push(fm_net_client *c, const fm_wire_push_header *h, const float *vec, const float *control_delta,
                      const fm_strategy_block *blocks, size_t chunk_floats, const fm_wire_codec *codec,
                      const fm_wire_payload_kind *kinds, const char *what, fm_wire_reply *reply, double *bytes)
{
    push_ctx p = {.h = h, .reply = reply, .has_c = control_delta != NULL};
    fm_tensor_tx_init(&p.tx, vec, blocks, h->n_blocks, h->trained, chunk_floats, h->run_id, h->round, h->site);
    fm_tensor_tx_set_codec(&p.tx, codec);
    p.tx.block_kinds = kinds;
    if (control_delta) {
        fm_tensor_tx_init(&p.tx_c, control_delta, blocks, h->n_blocks, h->trained, chunk_floats, h->run_id, h->round,
                          h->site);
        fm_tensor_tx_set_codec(&p.tx_c, codec);
        p.tx_c.kind = FM_PAYLOAD_CONTROL_VARIATE;
    }
    fm_status st = client_call(c, METHOD_PUSH, push_produce, push_consume, &p);
    fm_tensor_tx_free(&p.tx);
    if (control_delta)
        fm_tensor_tx_free(&p.tx_c);
    *bytes = p.bytes;
    FM_TRY(st);
    if (!p.got || !reply->accepted)
        return fm_error(FM_ERR_NETWORK, "Push: the server did not accept the %s", what);
    return FM_OK;
}

fm_status fm_net_push_control(fm_net_client *c, const fm_wire_push_header *h, const float *delta,
                              const float *control_delta, const fm_strategy_block *blocks, size_t chunk_floats,
                              fm_wire_reply *reply)
{
    return push(c, h, delta, control_delta, blocks, chunk_floats, &c->codec, NULL, "update", reply,
                &c->last_push_bytes);
}

fm_status fm_net_push(fm_net_client *c, const fm_wire_push_header *h, const float *delta,
                      const fm_strategy_block *blocks, size_t chunk_floats, fm_wire_reply *reply)
{
    return fm_net_push_control(c, h, delta, NULL, blocks, chunk_floats, reply);
}

fm_status fm_net_push_reps(fm_net_client *c, const fm_wire_push_header *h, const float *vec,
                           const fm_strategy_block *blocks, const fm_wire_payload_kind *kinds,
                           const fm_wire_codec *codec, fm_wire_reply *reply, double *bytes)
{
    double sent = 0.0;
    memset(reply, 0, sizeof *reply);
    const fm_status st = push(c, h, vec, NULL, blocks, 0, codec, kinds, "representations", reply, &sent);
    if (bytes)
        *bytes = sent;
    return st;
}

typedef struct raw_ctx {
    const fm_wire_buf *msgs;
    size_t n, next;
} raw_ctx;

static int raw_produce(void *ctx, fm_wire_buf *out)
{
    raw_ctx *r = ctx;
    if (r->next == r->n)
        return 0;
    const fm_wire_buf *m = &r->msgs[r->next++];
    out->data = malloc(m->len ? m->len : 1);
    if (!out->data)
        return -1;
    memcpy(out->data, m->data, m->len);
    out->len = m->len;
    return 1;
}

static fm_status raw_consume(void *ctx, const fm_wire_buf *in)
{
    (void)ctx;
    (void)in;
    return FM_OK;
}

int fm_net_call_raw(fm_net_client *c, const char *method, const fm_wire_buf *msgs, size_t n)
{
    raw_ctx r = {.msgs = msgs, .n = n};
    (void)client_call(c, method, raw_produce, raw_consume, &r);
    return c->last_code;
}

int fm_net_call_raw_stall(fm_net_client *c, const char *method, const fm_wire_buf *msgs, size_t n, double stall_s,
                          void (*sent)(void *ctx), void *ctx)
{
    grpc_slice token;
    int ok;
    grpc_call *call = open_client_call(c, method, gpr_inf_future(GPR_CLOCK_REALTIME), &token, &ok);
    grpc_op ops[2];
    for (size_t i = 0; ok && i < n; i++) {
        fm_wire_buf b = {.data = malloc(msgs[i].len ? msgs[i].len : 1), .len = msgs[i].len};
        if (!b.data)
            break;
        memcpy(b.data, msgs[i].data, msgs[i].len);
        ok = send_buf(call, c->cq, &b, c->timeout_s);
    }
    /* the server's initial metadata: it has taken the call */
    grpc_metadata_array imd, trailing;
    grpc_metadata_array_init(&imd);
    grpc_metadata_array_init(&trailing);
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[0].data.recv_initial_metadata.recv_initial_metadata = &imd;
    (void)run_batch(call, c->cq, ops, 1, c->timeout_s);
    if (sent)
        sent(ctx);
    /* stalled: nothing more is sent and the client's side stays open until the server ends the call (or stall_s
     * passes and the wait below cancels it) */
    grpc_status_code status = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[0].data.recv_status_on_client.trailing_metadata = &trailing;
    ops[0].data.recv_status_on_client.status = &status;
    ops[0].data.recv_status_on_client.status_details = &details;
    (void)run_batch(call, c->cq, ops, 1, stall_s); /* on timeout: cancelled, status CANCELLED */
    c->last_code = (int)status;
    c->busy = status == GRPC_STATUS_RESOURCE_EXHAUSTED && says_busy(&trailing);
    c->handshake_failed = 0;
    grpc_slice_unref(details);
    grpc_metadata_array_destroy(&imd);
    grpc_metadata_array_destroy(&trailing);
    grpc_slice_unref(token);
    grpc_call_unref(call);
    return c->last_code;
}
