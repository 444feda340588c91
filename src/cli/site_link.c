/* A site's connection to the federation server and its join / task / heartbeat loop with the retry rules, for both
 * kinds of `fedmm client` (site_link.h). */
#include "cli/site_link.h"

#ifdef FEDMM_WITH_GRPC
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fedmm/log.h"

/* Join gives up on a refused transport after this many failures in a row that look like one: a server killed
 * while a connection is being set up can look like it once. */
#define HANDSHAKE_TRIES 3

static void sleep_s(double s)
{
    struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

int64_t fm_site_link_unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

fm_net_tls fm_site_link_tls(const fm_cli_net_options *no)
{
    return (fm_net_tls){.ca_path = no->tls_ca,
                        .cert_path = no->tls_cert,
                        .key_path = no->tls_key,
                        .mtls = 0,
                        .server_name = no->tls_server_name};
}

fm_status fm_site_link_token(const char *arg, int site, char derived[65], const char **token)
{
    *token = arg ? arg : getenv("FEDMM_TOKEN");
    if (*token)
        return FM_OK;
    *token = derived;
    return fm_net_site_token(fm_cli_net_secret(), site, derived);
}

/* Worth retrying: the server is down (killed, restarting, not up yet), the connection broke, or the server was
 * busy (net.max_calls calls in flight). A failed TLS handshake is UNAVAILABLE too; Join gives up on it (join()). */
static int transient(const fm_net_client *net)
{
    const int code = fm_net_last_code(net);
    return code == 14 /* UNAVAILABLE */ || code == 4 /* DEADLINE_EXCEEDED */ || code == 1 /* CANCELLED */ ||
           fm_net_last_busy(net);
}

static void reachable(fm_site_link *l)
{
    l->failing_since = -1.0;
    l->backoff_s = 0.1;
    l->handshake_fails = 0;
}

/* After a transient failure: waits the back-off, or gives up once the server has been unreachable for
 * net.reconnect_s. */
static fm_status wait_for_server(fm_site_link *l)
{
    const double now = fm_now_seconds();
    char why[512];
    snprintf(why, sizeof why, "%s", fm_last_error());
    if (l->failing_since < 0)
        l->failing_since = now;
    if (now - l->failing_since >= l->reconnect_s)
        return fm_error(FM_ERR_NETWORK, "site %d: the server has been unreachable for %.0f s (net.reconnect_s): %s",
                        l->site, now - l->failing_since, why);
    const double wait = l->backoff_s * (0.5 + 0.5 * fm_rng_double(&l->jitter));
    FM_INFO("site %d: server not reachable (%s), retrying in %.2f s", l->site, why, wait);
    sleep_s(wait);
    l->backoff_s = l->backoff_s * 2 > 5.0 ? 5.0 : l->backoff_s * 2;
    return FM_OK;
}

fm_status fm_site_link_open(fm_site_link *l, const fm_site_link_options *o)
{
    memset(l, 0, sizeof *l);
    l->site = o->site;
    l->reconnect_s = o->reconnect_s;
    l->run_kind = o->run_kind;
    l->samples = o->samples;
    l->modality = o->modality;
    FM_TRY(fm_net_client_create_tls(&l->net, o->target, o->token, 120.0, o->tls));
    l->jitter = fm_rng_make((uint64_t)(fm_now_seconds() * 1e9) ^ ((uint64_t)getpid() << 32), (uint64_t)o->site);
    reachable(l);
    fm_wire_join *j = &l->join;
    j->site = o->site;
    snprintf(j->token, sizeof j->token, "%s", o->token);
    j->modalities = (uint32_t)o->modality;
    snprintf(j->model_family, sizeof j->model_family, "%s", o->model_family);
    j->n_params = o->n_params;
    j->n_blocks = o->n_blocks;
    snprintf(j->device, sizeof j->device, "%s", o->device == FM_DEVICE_CPU ? "cpu" : "cuda");
    return FM_OK;
}

void fm_site_link_close(fm_site_link *l)
{
    fm_net_client_destroy(l->net);
    l->net = NULL;
}

fm_wire_ref fm_site_link_ref(const fm_site_link *l, const fm_wire_task *task)
{
    fm_wire_ref r;
    memset(&r, 0, sizeof r);
    snprintf(r.run_id, sizeof r.run_id, "%s", task->run_id);
    r.round = task->round;
    r.site = l->site;
    return r;
}

fm_status fm_site_link_still_wanted(fm_site_link *l, fm_wire_task *task, const char *dropped, int *fresh)
{
    const int64_t late_ms = task->deadline_unix_ms > 0 ? fm_site_link_unix_ms() - task->deadline_unix_ms : 0;
    if (late_ms <= 0)
        return FM_OK;
    const fm_wire_ref h = fm_site_link_ref(l, task);
    fm_wire_task next;
    FM_TRY(fm_net_heartbeat(l->net, &h, &next));
    if (next.action == FM_ACTION_TRAIN && next.round == task->round) {
        FM_WARN("site %d: round %lld: %.1f s past its deadline, still open: pushing", l->site, (long long)task->round,
                (double)late_ms / 1000.0);
        return FM_OK;
    }
    FM_WARN("site %d: round %lld: %.1f s past its deadline, closed without this site: %s", l->site,
            (long long)task->round, (double)late_ms / 1000.0, dropped);
    *task = next;
    *fresh = 1;
    return FM_OK;
}

/* Join (again, after the server was unreachable: with the run id, so that a server restarted without --resume
 * is told apart from the same run resumed). *joined = 1 on success; a transient failure waits the back-off. */
static fm_status join(fm_site_link *l, fm_wire_task *task, int *joined)
{
    const int again = l->join.run_id[0] != '\0';
    fm_status st = fm_net_join(l->net, &l->join, task);
    if (st != FM_OK) {
        char why[512];
        snprintf(why, sizeof why, "%s", fm_last_error());
        if (fm_net_last_handshake_failed(l->net) && ++l->handshake_fails >= HANDSHAKE_TRIES)
            return fm_error(FM_ERR_NETWORK,
                            "site %d: the server closed the connection while it was set up: TLS on one side only, "
                            "or a certificate refused (check net.tls_ca, net.tls_cert, net.tls_key): %s",
                            l->site, why);
        if (transient(l->net))
            return wait_for_server(l);
        if (again && fm_net_last_code(l->net) == 9)
            return fm_error(FM_ERR_NETWORK,
                            "site %d: the server no longer runs run %s (restarted without --resume?): %s", l->site,
                            l->join.run_id, why);
        return st;
    }
    reachable(l);
    *joined = 1;
    if (again)
        FM_WARN("site %d: re-joined run %s at round %lld", l->site, task->run_id, (long long)task->round);
    else
        FM_INFO("site %d: joined %s %s (%s), %lld samples, modality %s", l->site, l->run_kind, task->run_id,
                task->config, (long long)l->samples, fm_modality_name(l->modality));
    snprintf(l->join.run_id, sizeof l->join.run_id, "%s", task->run_id);
    return FM_OK;
}

fm_status fm_site_link_run(fm_site_link *l, const fm_site_link_hooks *hooks)
{
    fm_wire_task task;
    memset(&task, 0, sizeof task);
    int joined = 0;
    for (;;) {
        if (!joined) { /* at the start, and after every failure to reach the server */
            FM_TRY(join(l, &task, &joined));
            continue;
        }
        if (hooks->on_task) /* task is the server's latest answer */
            FM_TRY(hooks->on_task(hooks->ctx, &task));
        if (task.action == FM_ACTION_DONE) {
            printf("site %d done: run %s, %d rounds\n", l->site, task.run_id, task.rounds);
            return FM_OK;
        }
        if (task.action == FM_ACTION_TRAIN) {
            int fresh = 0;
            fm_status st = hooks->train(hooks->ctx, &task, &fresh);
            const int code = fm_net_last_code(l->net);
            if (st == FM_ERR_NETWORK && transient(l->net)) {
                FM_TRY(wait_for_server(l));
                joined = 0;
                continue;
            }
            if (st == FM_ERR_NETWORK && (code == 6 || code == 9)) {
                /* refused as stale (the round closed without this site) or duplicate: ask what to do now */
                FM_WARN("site %d: round %lld refused: %s", l->site, (long long)task.round, fm_last_error());
            } else if (st != FM_OK) {
                return st;
            } else if (fresh) { /* the round closed at its deadline: task is already the server's next answer */
                reachable(l);
                continue;
            }
        } else {
            sleep_s(0.02);
        }
        const fm_wire_ref h = fm_site_link_ref(l, &task);
        if (fm_net_heartbeat(l->net, &h, &task) != FM_OK) {
            if (!transient(l->net))
                return FM_ERR_NETWORK;
            FM_TRY(wait_for_server(l));
            joined = 0;
            continue;
        }
        reachable(l);
    }
}
#endif
