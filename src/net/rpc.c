/* The gRPC C-core side of fedmm.Federation: the server's one-call-at-a-time serving loop and the site's calls.
 * Every wait on a completion queue has exactly one operation pending, so a completion is always the one
 * awaited; a stalled call is cancelled after call_timeout_s. */
#include "net/net.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <errno.h>
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

typedef struct srv_call {
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array md;
} srv_call;

typedef struct server {
    fm_fedsrv *srv;
    grpc_completion_queue *cq;
    double timeout_s;
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

/* Receives the next message into *buf; *buf->data == NULL when the client half-closed. 0 on a failed receive. */
static int recv_next(server *S, grpc_call *call, fm_wire_buf *buf)
{
    grpc_byte_buffer *bb = NULL;
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &bb;
    buf->data = NULL;
    buf->len = 0;
    if (!run_batch(call, S->cq, &op, 1, S->timeout_s))
        return 0;
    if (!bb)
        return 1;
    fm_status st = read_bb(bb, buf);
    grpc_byte_buffer_destroy(bb);
    return st == FM_OK ? 1 : 0;
}

/* Push: header, chunks, half-close. Returns the status code; *reply filled on OK. */
static int serve_push(server *S, grpc_call *call, const char *bearer, fm_wire_buf *first, fm_wire_reply *reply)
{
    fm_fedsrv_push *p = NULL;
    fm_wire_buf msg = *first;
    first->data = NULL;
    int code = 0;
    for (;;) {
        if (!msg.data) { /* half-close */
            code = p ? fm_fedsrv_push_end(S->srv, p, reply)
                     : (fm_error(FM_ERR_PARSE, "Push: the stream ended before its header"), FM_NET_INVALID_ARGUMENT);
            break;
        }
        fm_wire_push_msg m;
        fm_status st = fm_wire_decode_push(msg.data, msg.len, &m);
        fm_wire_buf_free(&msg);
        if (st != FM_OK) {
            code = decode_code(st);
            break;
        }
        if (m.is_header && !p)
            code = fm_fedsrv_push_begin(S->srv, bearer, m.header, &p);
        else if (!m.is_header && p)
            code = fm_fedsrv_push_chunk(S->srv, p, &m.chunk);
        else
            code = (fm_error(FM_ERR_PARSE, p ? "Push: a second header" : "Push: a chunk before the header"),
                    FM_NET_INVALID_ARGUMENT);
        fm_wire_push_msg_free(&m);
        if (code)
            break;
        if (!recv_next(S, call, &msg)) {
            code = 1; /* CANCELLED: the client went away */
            fm_error(FM_ERR_NETWORK, "Push: the stream broke off");
            break;
        }
    }
    fm_fedsrv_push_free(p);
    return code;
}

static void handle_call(server *S, srv_call *c)
{
    grpc_call *call = c->call;
    char method[64] = "?";
    size_t mlen = GRPC_SLICE_LENGTH(c->details.method);
    if (mlen < sizeof method) {
        memcpy(method, GRPC_SLICE_START_PTR(c->details.method), mlen);
        method[mlen] = '\0';
    }
    char token[FM_WIRE_TOKEN_MAX + 1];
    const char *bearer = bearer_of(&c->md, token, sizeof token);

    grpc_byte_buffer *bb = NULL;
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_RECV_MESSAGE;
    ops[1].data.recv_message.recv_message = &bb;
    int code = 0;
    fm_clear_error();
    fm_wire_buf in = {0}, out = {0};
    if (!run_batch(call, S->cq, ops, 2, S->timeout_s)) {
        code = 8; /* the first receive failed: oversized (RESOURCE_EXHAUSTED) or cancelled */
        fm_error(FM_ERR_RANGE, "%s: the request could not be received (too large, or cancelled)", method);
    } else if (!bb) {
        code = 3;
        fm_error(FM_ERR_PARSE, "%s: no request message", method);
    } else {
        fm_status st = read_bb(bb, &in);
        grpc_byte_buffer_destroy(bb);
        if (st != FM_OK)
            code = decode_code(st);
    }
    int sent_ok = 1;
    if (code == 0) {
        if (strcmp(method, METHOD_JOIN) == 0 || strcmp(method, METHOD_HEARTBEAT) == 0) {
            fm_wire_task task;
            fm_status st;
            if (strcmp(method, METHOD_JOIN) == 0) {
                fm_wire_join j;
                st = fm_wire_decode_join(in.data, in.len, &j);
                code = st != FM_OK ? decode_code(st) : fm_fedsrv_join(S->srv, bearer, &j, &task);
            } else {
                fm_wire_ref h;
                st = fm_wire_decode_ref(in.data, in.len, &h);
                code = st != FM_OK ? decode_code(st) : fm_fedsrv_heartbeat(S->srv, bearer, &h, &task);
            }
            if (code == 0 && fm_wire_encode_task(&task, &out) == FM_OK)
                sent_ok = send_buf(call, S->cq, &out, S->timeout_s);
        } else if (strcmp(method, METHOD_PULL) == 0) {
            fm_wire_ref r;
            const float *global = NULL;
            fm_status st = fm_wire_decode_ref(in.data, in.len, &r);
            code = st != FM_OK ? decode_code(st) : fm_fedsrv_pull(S->srv, bearer, &r, &global);
            if (code == 0) {
                fm_tensor_tx tx;
                fm_wire_chunk ch;
                fm_tensor_tx_init(&tx, global, fm_fedsrv_blocks(S->srv), fm_fedsrv_num_blocks(S->srv), NULL, 0,
                                  r.run_id, r.round, r.site);
                while (sent_ok && fm_tensor_tx_next(&tx, &ch)) {
                    if (fm_wire_encode_chunk(&ch, &out) != FM_OK) {
                        code = 13;
                        break;
                    }
                    sent_ok = send_buf(call, S->cq, &out, S->timeout_s);
                }
            }
        } else if (strcmp(method, METHOD_PUSH) == 0) {
            fm_wire_reply reply;
            code = serve_push(S, call, bearer, &in, &reply);
            if (code == 0 && fm_wire_encode_reply(&reply, &out) == FM_OK)
                sent_ok = send_buf(call, S->cq, &out, S->timeout_s);
        } else {
            code = 12; /* UNIMPLEMENTED */
            fm_error(FM_ERR_UNSUPPORTED, "unknown method %s", method);
        }
    }
    fm_wire_buf_free(&in);
    fm_wire_buf_free(&out);
    if (code)
        FM_WARN("server: %s refused with status %d: %s", method, code, fm_last_error());
    if (!sent_ok) {
        grpc_call_cancel(call, NULL);
        FM_WARN("server: %s: sending the reply failed (client gone?)", method);
    }
    char detail[512];
    snprintf(detail, sizeof detail, "%s", code ? fm_last_error() : "");
    grpc_slice details = grpc_slice_from_copied_string(detail);
    int cancelled = 0;
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[0].data.send_status_from_server.status = (grpc_status_code)code;
    ops[0].data.send_status_from_server.status_details = &details;
    ops[1].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[1].data.recv_close_on_server.cancelled = &cancelled;
    run_batch(call, S->cq, ops, 2, S->timeout_s);
    grpc_slice_unref(details);
}

static void reset_call(srv_call *c)
{
    if (c->call)
        grpc_call_unref(c->call);
    c->call = NULL;
    grpc_call_details_destroy(&c->details);
    grpc_metadata_array_destroy(&c->md);
    grpc_call_details_init(&c->details);
    grpc_metadata_array_init(&c->md);
}

fm_status fm_net_serve(fm_fedsrv *srv, const fm_net_server_options *o)
{
    static const int tag_new_storage = 0, tag_shutdown_storage = 0;
    void *tag_new = (void *)&tag_new_storage, *tag_shutdown = (void *)&tag_shutdown_storage;
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
    int started = 0, requested = 0;
    srv_call c;
    memset(&c, 0, sizeof c);
    grpc_call_details_init(&c.details);
    grpc_metadata_array_init(&c.md);
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
    server S = {.srv = srv, .cq = cq, .timeout_s = o->call_timeout_s > 0 ? o->call_timeout_s : 60.0};
    const double grace = o->release_grace_s > 0 ? o->release_grace_s : 10.0;
    double done_at = -1.0;
    while (started) {
        if (!requested) {
            if (grpc_server_request_call(gs, &c.call, &c.details, &c.md, cq, cq, tag_new) != GRPC_CALL_OK) {
                result = fm_error(FM_ERR_NETWORK, "server: cannot request calls");
                break;
            }
            requested = 1;
        }
        grpc_event ev = grpc_completion_queue_next(cq, after(0.2), NULL);
        if (ev.type == GRPC_OP_COMPLETE && ev.tag == tag_new) {
            requested = 0;
            if (ev.success)
                handle_call(&S, &c);
            reset_call(&c);
        }
        (void)fm_fedsrv_poll(srv, fm_now_seconds()); /* a failure is kept as the server's fatal status */
        if (fm_fedsrv_fatal(srv) != FM_OK) {
            result = fm_fedsrv_fatal(srv);
            break;
        }
        if (fm_fedsrv_done(srv)) {
            double now = fm_now_seconds();
            if (done_at < 0)
                done_at = now;
            if (fm_fedsrv_all_released(srv) || now - done_at > grace)
                break;
        }
    }
    /* shut down: fail the pending request, wait for the server's notification, then drain the queue */
    grpc_server_shutdown_and_notify(gs, cq, tag_shutdown);
    grpc_server_cancel_all_calls(gs);
    int shut = 0;
    while (!shut || requested) {
        grpc_event ev = grpc_completion_queue_next(cq, after(10.0), NULL);
        if (ev.type == GRPC_QUEUE_TIMEOUT)
            break;
        if (ev.type == GRPC_OP_COMPLETE && ev.tag == tag_shutdown)
            shut = 1;
        if (ev.type == GRPC_OP_COMPLETE && ev.tag == tag_new) {
            requested = 0;
            reset_call(&c);
        }
    }
    grpc_server_destroy(gs);
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type != GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(cq);
    grpc_call_details_destroy(&c.details);
    grpc_metadata_array_destroy(&c.md);
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
};

fm_status fm_net_client_create(fm_net_client **out, const char *target, const char *token, double call_timeout_s)
{
    return fm_net_client_create_tls(out, target, token, call_timeout_s, NULL);
}

fm_status fm_net_client_create_tls(fm_net_client **out, const char *target, const char *token, double call_timeout_s,
                                   const fm_net_tls *tls)
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
    grpc_arg args[2];
    grpc_channel_args ca;
    limit_args(args, &ca);
    grpc_channel_credentials *creds = NULL;
    if (secure) {
        grpc_ssl_pem_key_cert_pair pair = {.private_key = p.key, .cert_chain = p.cert};
        creds = grpc_ssl_credentials_create(p.ca, p.cert ? &pair : NULL, NULL, NULL); /* copies the texts */
        if (tls->server_name) {
            args[1].type = GRPC_ARG_STRING;
            args[1].key = GRPC_SSL_TARGET_NAME_OVERRIDE_ARG;
            args[1].value.string = (char *)tls->server_name; /* gRPC copies channel args */
            ca.num_args = 2;
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

int fm_net_last_handshake_failed(const fm_net_client *c) { return c->handshake_failed; }

/* One call: produce() yields the messages to send (1 per message, 0 at the end, -1 on a local error), consume()
 * takes each received message. */
typedef int (*produce_fn)(void *ctx, fm_wire_buf *out);
typedef fm_status (*consume_fn)(void *ctx, const fm_wire_buf *in);

static fm_status client_call(fm_net_client *c, const char *method, produce_fn produce, consume_fn consume, void *ctx)
{
    grpc_slice mslice = grpc_slice_from_static_string(method);
    grpc_call *call = grpc_channel_create_call(
        c->ch, NULL, GRPC_PROPAGATE_DEFAULTS, c->cq, mslice, NULL,
        gpr_time_add(gpr_now(GPR_CLOCK_REALTIME), gpr_time_from_millis((int64_t)(c->timeout_s * 1000), GPR_TIMESPAN)),
        NULL);
    grpc_slice_unref(mslice);
    fm_status local = FM_OK;
    char local_msg[512] = "";
    grpc_metadata md;
    memset(&md, 0, sizeof md);
    md.key = grpc_slice_from_static_string("authorization");
    md.value = grpc_slice_from_copied_string(c->bearer);
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = 1;
    ops[0].data.send_initial_metadata.metadata = &md;
    int ok = run_batch(call, c->cq, ops, 1, c->timeout_s);
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
    c->handshake_failed = status == GRPC_STATUS_UNAVAILABLE &&
                          (strstr(detail, "andshake") || strstr(detail, "SSL") || strstr(detail, "ssl") ||
                           (strstr(detail, "failed to connect") && strstr(detail, "Socket closed")) ||
                           (error_string && (strstr(error_string, "andshake") || strstr(error_string, "SSL"))));
    if (error_string)
        gpr_free((void *)error_string);
    grpc_metadata_array_destroy(&trailing);
    grpc_metadata_array_destroy(&imd);
    grpc_slice_unref(md.value);
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
    fm_tensor_rx rx;
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
    if (st == FM_OK)
        st = fm_tensor_rx_add(&p->rx, &ch);
    fm_wire_chunk_free(&ch);
    return st;
}

fm_status fm_net_pull(fm_net_client *c, const fm_wire_ref *r, float *dst, const fm_strategy_block *blocks,
                      size_t n_blocks)
{
    pull_ctx p = {.ref = r};
    FM_TRY(fm_wire_encode_ref(r, &p.req));
    fm_tensor_rx_init(&p.rx, dst, blocks, n_blocks, NULL);
    fm_status st = client_call(c, METHOD_PULL, pull_produce, pull_consume, &p);
    fm_wire_buf_free(&p.req);
    FM_TRY(st);
    if (!fm_tensor_rx_complete(&p.rx))
        return fm_error(FM_ERR_PARSE, "Pull: the stream ended at block %zu of %zu", p.rx.block, n_blocks);
    return FM_OK;
}

typedef struct push_ctx {
    const fm_wire_push_header *h;
    int header_sent;
    fm_tensor_tx tx;
    fm_wire_reply *reply;
    int got;
} push_ctx;

static int push_produce(void *ctx, fm_wire_buf *out)
{
    push_ctx *p = ctx;
    if (!p->header_sent) {
        p->header_sent = 1;
        return fm_wire_encode_push_header(p->h, out) == FM_OK ? 1 : -1;
    }
    fm_wire_chunk ch;
    if (!fm_tensor_tx_next(&p->tx, &ch))
        return 0;
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

fm_status fm_net_push(fm_net_client *c, const fm_wire_push_header *h, const float *delta,
                      const fm_strategy_block *blocks, size_t chunk_floats, fm_wire_reply *reply)
{
    push_ctx p = {.h = h, .reply = reply};
    fm_tensor_tx_init(&p.tx, delta, blocks, h->n_blocks, h->trained, chunk_floats, h->run_id, h->round, h->site);
    FM_TRY(client_call(c, METHOD_PUSH, push_produce, push_consume, &p));
    if (!p.got || !reply->accepted)
        return fm_error(FM_ERR_NETWORK, "Push: the server did not accept the update");
    return FM_OK;
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
