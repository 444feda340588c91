/* fedmm_test_net_stall: a site that stalls in the middle of its Push, for tests/cli/test_net_stall.sh.
 *
 *   fedmm_test_net_stall --config FILE [--set key=value ...] --server HOST:PORT --site K [--threads N]
 *
 * Reads the config as `fedmm client` does (src/cli/fl_config.c) and takes site K's token from $FEDMM_SECRET,
 * joins, waits (Heartbeat) until a round tasks it, then opens that round's Push with a valid header (the site's
 * sample count and trained blocks) and the first chunk of a zero update, and sends nothing more: it neither
 * finishes the stream nor closes it. It prints "stalled: site K round R" once the server has taken the call, and
 * "stall ended: status S" when the server ends the call (exit 0); exit 1 on any other failure. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/common.h"
#include "cli/fl_config.h"
#include "fedmm/log.h"
#include "fedmm/site_train.h"
#include "net/net.h"

typedef struct stall {
    int site;
    int64_t round;
} stall;

static void on_stalled(void *ctx)
{
    const stall *s = ctx;
    printf("stalled: site %d round %lld\n", s->site, (long long)s->round);
    fflush(stdout);
}

static fm_status run(fm_cli_run *r, const fm_sim_options *o, const fm_cli_net_options *no, const char *target, int site)
{
    const int N = o->scenario.num_sites;
    if (site < 0 || site >= N)
        return fm_error(FM_ERR_CONFIG, "--site %d is not in [0, %d)", site, N);
    fm_clip *model = NULL;
    fm_strategy_block *blocks = NULL;
    size_t nb = 0;
    fm_site_data *sites = NULL;
    fm_net_client *c = NULL;
    float *zeros = NULL;
    fm_wire_push_header *h = calloc(1, sizeof *h);
    fm_wire_buf msgs[2] = {{0}, {0}};
    fm_status st = h ? FM_OK : fm_error(FM_ERR_NO_MEMORY, "out of memory");
    if (st == FM_OK)
        st = fm_clip_create(&model, &r->model, FM_DEVICE_CPU, r->seed);
    if (st == FM_OK)
        st = fm_clip_strategy_blocks(model, &blocks, &nb);
    if (st == FM_OK && nb > FM_WIRE_MAX_BLOCKS)
        st = fm_error(FM_ERR_CONFIG, "the model has %zu blocks, the wire allows %d", nb, FM_WIRE_MAX_BLOCKS);
    if (st == FM_OK)
        st = fm_federation_split(&o->scenario, &r->synth, &sites);
    const size_t P = st == FM_OK ? fm_clip_num_trainable(model) : 0;
    if (st == FM_OK && !(zeros = calloc(P ? P : 1, sizeof(float))))
        st = fm_error(FM_ERR_NO_MEMORY, "out of memory");
    char token[65];
    if (st == FM_OK)
        st = fm_net_site_token(fm_cli_net_secret(), site, token);
    const fm_net_tls tls = {
        .ca_path = no->tls_ca, .cert_path = no->tls_cert, .key_path = no->tls_key, .server_name = no->tls_server_name};
    if (st == FM_OK)
        st = fm_net_client_create_tls(&c, target, token, 60.0, &tls);
    fm_wire_join j;
    memset(&j, 0, sizeof j);
    fm_wire_task task;
    memset(&task, 0, sizeof task);
    if (st == FM_OK) {
        j.site = site;
        snprintf(j.token, sizeof j.token, "%s", token);
        j.modalities = (uint32_t)sites[site].modality;
        snprintf(j.model_family, sizeof j.model_family, "%.64s", r->model.name);
        j.n_params = P;
        j.n_blocks = (uint32_t)nb;
        snprintf(j.device, sizeof j.device, "cpu");
        st = fm_net_join(c, &j, &task);
    }
    /* until a round tasks this site (bounded: the tests run it against a server that tasks it at once) */
    for (int polls = 0; st == FM_OK && task.action == FM_ACTION_WAIT; polls++) {
        if (polls > 30000) {
            st = fm_error(FM_ERR_STATE, "site %d was never tasked", site);
            break;
        }
        const struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
        fm_wire_ref hb = {.round = task.round, .site = site};
        snprintf(hb.run_id, sizeof hb.run_id, "%s", task.run_id);
        st = fm_net_heartbeat(c, &hb, &task);
    }
    if (st == FM_OK && task.action != FM_ACTION_TRAIN)
        st = fm_error(FM_ERR_STATE, "the run is over before site %d was tasked", site);
    if (st == FM_OK) {
        snprintf(h->run_id, sizeof h->run_id, "%s", task.run_id);
        h->round = task.round;
        h->site = site;
        h->n_samples = sites[site].n;
        h->loss = 1.0;
        h->n_params = P;
        h->n_blocks = nb;
        fm_site_trained_blocks(model, sites[site].modality, h->trained, NULL);
        fm_tensor_tx tx;
        fm_wire_chunk ch;
        fm_tensor_tx_init(&tx, zeros, blocks, nb, h->trained, 0, task.run_id, task.round, site);
        st = fm_wire_encode_push_header(h, &msgs[0]);
        if (st == FM_OK && fm_tensor_tx_next(&tx, &ch) != 1)
            st = fm_error(FM_ERR_STATE, "site %d trains nothing", site);
        if (st == FM_OK)
            st = fm_wire_encode_push_chunk(&ch, &msgs[1]);
        fm_tensor_tx_free(&tx);
    }
    if (st == FM_OK) {
        stall s = {.site = site, .round = task.round};
        const int code = fm_net_call_raw_stall(c, "/fedmm.Federation/Push", msgs, 2, 1e6, on_stalled, &s);
        printf("stall ended: status %d\n", code);
    }
    fm_wire_buf_free(&msgs[0]);
    fm_wire_buf_free(&msgs[1]);
    fm_net_client_destroy(c);
    free(zeros);
    free(h);
    if (sites)
        fm_site_data_free(sites, N);
    free(blocks);
    fm_clip_destroy(model);
    return st;
}

int main(int argc, char **argv)
{
    int bad = 0;
    const char *target = fm_cli_take_flag(&argc, argv, "server", &bad);
    const char *site_s = fm_cli_take_flag(&argc, argv, "site", &bad);
    fm_cli_args args;
    if (bad || !target || !site_s || fm_cli_parse(argc, argv, "config set threads", &args) != 0 || !args.config_path) {
        fprintf(
            stderr,
            "usage: fedmm_test_net_stall --config FILE [--set k=v ...] --server HOST:PORT --site K [--threads N]\n");
        return 2;
    }
    fm_cli_run r;
    int rc = fm_cli_setup(&args, &r);
    if (rc) {
        fm_cli_teardown(&r);
        return rc;
    }
    fm_sim_options o;
    fm_cli_net_options no;
    fm_status st = fm_cli_read_federation(&r, &args, &o, &no);
    if (st == FM_OK)
        st = run(&r, &o, &no, target, atoi(site_s));
    if (st != FM_OK)
        fprintf(stderr, "fedmm_test_net_stall: %s\n", fm_last_error());
    fm_cli_teardown(&r);
    return st == FM_OK ? 0 : 1;
}
