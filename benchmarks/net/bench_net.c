/* fedmm_bench_net: load for the control plane's benchmarks (the scripts in benchmarks/net/). Two modes.
 *
 *   fedmm_bench_net sites --config FILE [--set key=value ...] --server HOST:PORT [--first K] [--count N]
 *                         [--no-pull] [--together] [--poll S]
 *
 * N sites (K .. K+N−1, default all of fl.sites) of the federation FILE describes, one thread each, against a
 * real `fedmm server`. Each is a `fedmm client` that trains nothing: it reads the config with the same code
 * (src/cli/fl_config.c), computes its split, token and trained blocks as the client does, joins, and for every
 * round that tasks it pulls the global vector (unless --no-pull) and pushes a fixed update (the same small
 * pattern for every site and round) in the config's net.encoding; between rounds it polls with Heartbeat every
 * --poll seconds (default 0.02, as fedmm client). --together holds every site's first push until all sites
 * joined and were tasked, then releases them at once. Prints per-site and total timings.
 *
 *   fedmm_bench_net stream --params P [--tensor T] [--encoding f32|bf16|int8] [--compress none|zstd]
 *
 * One in-process server (the real serving loop of src/net/rpc.c, the state machine of src/net/fedsrv.c and
 * FedAvg, over a fake vector of P floats in tensors of T floats, default 16M) on 127.0.0.1, and one site that
 * pulls the vector and pushes an update of the same size over real gRPC: the stream throughput of a P-float
 * model, Pull and Push, in the given encoding (both directions). The vector holds uniform values of
 * magnitude ≤ 0.035 (incompressible as float32, like trained weights). */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "cli/common.h"
#include "cli/fl_config.h"
#include "fedmm/log.h"
#include "fedmm/rng.h"
#include "fedmm/site_train.h"
#include "net/net.h"

static void sleep_s(double s)
{
    struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

/* ---- sites ------------------------------------------------------------------------------------------ */

typedef struct shared {
    const char *target;
    fm_net_tls tls;
    fm_wire_codec codec;
    size_t P, nb;
    fm_strategy_block *blocks;
    const fm_site_data *sites;
    const uint8_t *trained; /* (N × nb) */
    const char *secret;
    const char *model_name;
    const float *delta; /* (P) every site's update */
    int pull, together, n_sites;
    double poll_s;
    pthread_barrier_t barrier;
} shared;

typedef struct site_run {
    shared *sh;
    int site;
    fm_status st;
    char err[300];
    int rounds;
    double joined_at, done_at, push_s, pull_s, push_bytes;
} site_run;

static fm_status site_main(site_run *r)
{
    shared *sh = r->sh;
    char token[65];
    FM_TRY(fm_net_site_token(sh->secret, r->site, token));
    fm_net_client *c = NULL;
    FM_TRY(fm_net_client_create_tls(&c, sh->target, token, 600.0, &sh->tls));
    fm_status st = fm_net_client_set_codec(c, &sh->codec);
    float *pulled = sh->pull ? calloc(sh->P ? sh->P : 1, sizeof(float)) : NULL;
    fm_wire_push_header *h = calloc(1, sizeof *h);
    if (st == FM_OK && (!h || (sh->pull && !pulled)))
        st = fm_error(FM_ERR_NO_MEMORY, "bench: out of memory");
    fm_wire_join j;
    memset(&j, 0, sizeof j);
    j.site = r->site;
    snprintf(j.token, sizeof j.token, "%s", token);
    j.modalities = (uint32_t)sh->sites[r->site].modality;
    snprintf(j.model_family, sizeof j.model_family, "%.64s", sh->model_name);
    j.n_params = sh->P;
    j.n_blocks = (uint32_t)sh->nb;
    snprintf(j.device, sizeof j.device, "cpu");
    fm_wire_task task;
    /* the server may not be up yet: retry a refused connection for up to 60 s, as fedmm client does */
    for (double waited = 0; st == FM_OK; waited += 0.1) {
        st = fm_net_join(c, &j, &task);
        if (st == FM_OK || fm_net_last_code(c) != 14 || waited > 60)
            break;
        st = FM_OK;
        sleep_s(0.1);
    }
    r->joined_at = fm_now_seconds();
    int64_t last = 0;
    int first = 1;
    while (st == FM_OK && task.action != FM_ACTION_DONE) {
        if (task.action == FM_ACTION_TRAIN && task.round > last) {
            fm_wire_ref ref = {.round = task.round, .site = r->site};
            snprintf(ref.run_id, sizeof ref.run_id, "%s", task.run_id);
            double t0 = fm_now_seconds();
            if (sh->pull)
                st = fm_net_pull(c, &ref, pulled, sh->blocks, sh->nb);
            r->pull_s += fm_now_seconds() - t0;
            if (st != FM_OK)
                break;
            if (first && sh->together)
                pthread_barrier_wait(&sh->barrier);
            first = 0;
            memset(h, 0, sizeof *h);
            snprintf(h->run_id, sizeof h->run_id, "%s", task.run_id);
            h->round = task.round;
            h->site = r->site;
            h->n_samples = sh->sites[r->site].n;
            h->loss = 1.0;
            h->n_params = sh->P;
            h->n_blocks = sh->nb;
            memcpy(h->trained, sh->trained + (size_t)r->site * sh->nb, sh->nb);
            fm_wire_reply reply;
            t0 = fm_now_seconds();
            st = fm_net_push(c, h, sh->delta, sh->blocks, 0, &reply);
            r->push_s += fm_now_seconds() - t0;
            r->push_bytes += fm_net_last_push_bytes(c);
            if (st != FM_OK)
                break;
            r->rounds++;
            last = task.round;
        } else {
            sleep_s(sh->poll_s);
        }
        fm_wire_ref hb = {.round = task.round, .site = r->site};
        snprintf(hb.run_id, sizeof hb.run_id, "%s", task.run_id);
        st = fm_net_heartbeat(c, &hb, &task);
    }
    r->done_at = fm_now_seconds();
    free(pulled);
    free(h);
    fm_net_client_destroy(c);
    return st;
}

static void *site_thread(void *arg)
{
    site_run *r = arg;
    r->st = site_main(r);
    if (r->st != FM_OK)
        snprintf(r->err, sizeof r->err, "%s", fm_last_error());
    return NULL;
}

static int run_sites(int argc, char **argv)
{
    int bad = 0;
    const char *target = fm_cli_take_flag(&argc, argv, "server", &bad);
    const char *first_s = fm_cli_take_flag(&argc, argv, "first", &bad);
    const char *count_s = fm_cli_take_flag(&argc, argv, "count", &bad);
    const char *poll_s = fm_cli_take_flag(&argc, argv, "poll", &bad);
    int no_pull = 0, together = 0;
    for (int i = 1; i < argc; i++) { /* the two switches, removed from argv for fm_cli_parse */
        if (strcmp(argv[i], "--no-pull") == 0)
            no_pull = 1;
        else if (strcmp(argv[i], "--together") == 0)
            together = 1;
        else
            continue;
        memmove(&argv[i], &argv[i + 1], (size_t)(argc - i - 1) * sizeof *argv);
        argc--;
        i--;
    }
    fm_cli_args args;
    if (bad || !target || fm_cli_parse(argc, argv, "config set threads", &args) != 0 || !args.config_path) {
        fprintf(stderr, "usage: fedmm_bench_net sites --config FILE [--set k=v ...] --server HOST:PORT [--first K] "
                        "[--count N] [--no-pull] [--together] [--poll S]\n");
        return 2;
    }
    fm_cli_run run;
    int rc = fm_cli_setup(&args, &run);
    if (rc)
        return rc;
    fm_sim_options o;
    fm_cli_net_options no;
    fm_status st = fm_cli_read_federation(&run, &args, &o, &no);
    const int N = o.scenario.num_sites;
    const int first = first_s ? atoi(first_s) : 0;
    const int count = count_s ? atoi(count_s) : N - first;
    if (st == FM_OK && (first < 0 || count < 1 || first + count > N))
        st = fm_error(FM_ERR_CONFIG, "bench: sites %d..%d of %d", first, first + count - 1, N);
    shared sh;
    memset(&sh, 0, sizeof sh);
    fm_clip *model = NULL;
    fm_site_data *sites = NULL;
    uint8_t *trained = NULL;
    float *delta = NULL;
    if (st == FM_OK)
        st = fm_clip_create(&model, &run.model, FM_DEVICE_CPU, run.seed);
    if (st == FM_OK)
        st = fm_clip_strategy_blocks(model, &sh.blocks, &sh.nb);
    if (st == FM_OK)
        st = fm_federation_split(&o.scenario, &run.synth, &sites);
    if (st == FM_OK) {
        sh.P = fm_clip_num_trainable(model);
        trained = calloc((size_t)N * sh.nb, 1);
        delta = malloc(sh.P * sizeof(float));
        if (!trained || !delta)
            st = fm_error(FM_ERR_NO_MEMORY, "bench: out of memory");
    }
    site_run *runs = NULL;
    pthread_t *th = NULL;
    if (st == FM_OK) {
        for (int k = 0; k < N; k++)
            fm_site_trained_blocks(model, sites[k].modality, trained + (size_t)k * sh.nb, NULL);
        for (size_t i = 0; i < sh.P; i++) /* a small update of no consequence: ±1e-4 in a fixed pattern */
            delta[i] = (float)((int)(i % 7) - 3) * 3e-5f;
        sh.target = target;
        sh.tls = (fm_net_tls){
            .ca_path = no.tls_ca, .cert_path = no.tls_cert, .key_path = no.tls_key, .server_name = no.tls_server_name};
        sh.codec = o.wire;
        sh.sites = sites;
        sh.trained = trained;
        sh.secret = fm_cli_net_secret();
        sh.model_name = run.model.name;
        sh.delta = delta;
        sh.pull = !no_pull;
        sh.together = together;
        sh.n_sites = count;
        sh.poll_s = poll_s ? atof(poll_s) : 0.02;
        pthread_barrier_init(&sh.barrier, NULL, (unsigned)count);
        runs = calloc((size_t)count, sizeof *runs);
        th = calloc((size_t)count, sizeof *th);
        if (!runs || !th)
            st = fm_error(FM_ERR_NO_MEMORY, "bench: out of memory");
    }
    double t0 = fm_now_seconds();
    int started = 0;
    for (int i = 0; st == FM_OK && i < count; i++) {
        runs[i] = (site_run){.sh = &sh, .site = first + i};
        if (pthread_create(&th[i], NULL, site_thread, &runs[i]) != 0)
            st = fm_error(FM_ERR_INTERNAL, "bench: cannot start thread %d", i);
        else
            started++;
    }
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    double t1 = fm_now_seconds();
    int failed = 0;
    double push_s = 0, pull_s = 0, push_max = 0, bytes = 0, last_done = 0;
    int rounds = 0;
    for (int i = 0; i < started; i++) {
        if (runs[i].st != FM_OK) {
            fprintf(stderr, "bench: site %d: %s\n", runs[i].site, runs[i].err);
            failed++;
        }
        push_s += runs[i].push_s;
        pull_s += runs[i].pull_s;
        push_max = runs[i].push_s > push_max ? runs[i].push_s : push_max;
        bytes += runs[i].push_bytes;
        rounds += runs[i].rounds;
        last_done = runs[i].done_at - t0 > last_done ? runs[i].done_at - t0 : last_done;
    }
    if (st == FM_OK && started) {
        printf("bench sites: %d sites, %zu parameters, %s%s, %d pushes, %.1f MB pushed, wall %.2f s; "
               "mean push %.4f s (max per site %.3f s), mean pull %.4f s per site-round\n",
               started, sh.P, fm_wire_encoding_name(sh.codec.encoding),
               sh.codec.compression == FM_WIRE_ZSTD ? "+zstd" : "", rounds, bytes / 1e6, t1 - t0,
               rounds ? push_s / rounds : 0.0, push_max, rounds ? pull_s / rounds : 0.0);
    }
    if (st != FM_OK)
        fprintf(stderr, "bench: %s\n", fm_last_error());
    if (sh.together && runs)
        pthread_barrier_destroy(&sh.barrier);
    free(runs);
    free(th);
    free(delta);
    free(trained);
    free(sh.blocks);
    if (sites)
        fm_site_data_free(sites, N);
    fm_clip_destroy(model);
    fm_cli_teardown(&run);
    return st == FM_OK && failed == 0 ? 0 : 1;
}

/* ---- stream ----------------------------------------------------------------------------------------- */

typedef struct stream_srv {
    fm_fedsrv *srv;
    const fm_wire_codec *codec;
    fm_net_traffic traffic;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int port;
    fm_status result;
} stream_srv;

static void stream_on_listen(void *ctx, int port)
{
    stream_srv *s = ctx;
    pthread_mutex_lock(&s->mu);
    s->port = port;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void *stream_serve(void *arg)
{
    stream_srv *s = arg;
    fm_net_server_options so = {.listen = "127.0.0.1:0",
                                .call_timeout_s = 600,
                                .release_grace_s = 5,
                                .codec = s->codec,
                                .traffic = &s->traffic,
                                .on_listen = stream_on_listen,
                                .ctx = s};
    s->result = fm_net_serve(s->srv, &so);
    pthread_mutex_lock(&s->mu);
    if (s->port == 0)
        s->port = -1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* CPU seconds of the whole process (every thread: the server's and the site's). */
static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
           (double)ru.ru_stime.tv_usec * 1e-6;
}

static double rss_mb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0)
            kb = atof(line + 6);
    if (f)
        fclose(f);
    return kb / 1024.0;
}

static int run_stream(int argc, char **argv)
{
    size_t P = 0, T = (size_t)1 << 24;
    fm_wire_codec codec = {FM_WIRE_F32, FM_WIRE_RAW, 0};
    for (int i = 1; i + 1 < argc; i += 2) {
        fm_status s = FM_OK;
        if (strcmp(argv[i], "--params") == 0)
            P = (size_t)strtoull(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--tensor") == 0)
            T = (size_t)strtoull(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--encoding") == 0)
            s = fm_wire_encoding_parse(argv[i + 1], &codec.encoding);
        else if (strcmp(argv[i], "--compress") == 0)
            s = fm_wire_compression_parse(argv[i + 1], &codec.compression);
        else
            s = FM_ERR_INVALID_ARG;
        if (s != FM_OK)
            P = 0;
    }
    if (P == 0 || T == 0) {
        fprintf(stderr, "usage: fedmm_bench_net stream --params P [--tensor T] [--encoding f32|bf16|int8] "
                        "[--compress none|zstd]\n");
        return 2;
    }
    const size_t nb = (P + T - 1) / T;
    fm_strategy_block *blocks = calloc(nb, sizeof *blocks);
    float *buf = malloc(P * sizeof(float));
    if (!blocks || !buf) {
        fprintf(stderr, "bench: out of memory for %zu floats\n", P);
        return 1;
    }
    for (size_t b = 0; b < nb; b++)
        blocks[b] = (fm_strategy_block){
            .name = "t", .offset = b * T, .numel = b + 1 < nb ? T : P - b * T, .layer = -1, .n_layers = 1};
    fm_rng rng = fm_rng_make(12345, 1);
    for (size_t i = 0; i < P; i++) /* uniform in [-0.035, 0.035): the spread of small weights or deltas */
        buf[i] = (float)((double)(fm_rng_u64(&rng) >> 40) / 16777216.0 - 0.5) * 0.07f;
    fm_strategy_config sc = fm_strategy_default_config(FM_STRATEGY_FEDAVG);
    fm_strategy *strategy = NULL;
    fm_status st = fm_strategy_create(&strategy, &sc, P, blocks, nb, buf);
    char token[65];
    const char *tokens[1] = {token};
    int64_t samples[1] = {100};
    uint8_t *trained = malloc(nb);
    if (st == FM_OK)
        st = fm_net_site_token("bench-secret-0123456789", 0, token);
    if (st == FM_OK && !trained)
        st = fm_error(FM_ERR_NO_MEMORY, "bench: out of memory");
    if (trained)
        memset(trained, 1, nb);
    stream_srv S;
    memset(&S, 0, sizeof S);
    pthread_mutex_init(&S.mu, NULL);
    pthread_cond_init(&S.cv, NULL);
    S.codec = &codec;
    if (st == FM_OK) {
        fm_fedsrv_config fc;
        memset(&fc, 0, sizeof fc);
        fc.run_id = "bench";
        fc.rounds = 1;
        fc.num_sites = 1;
        fc.sites_per_round = 1;
        fc.seed = 1;
        fc.local_steps = 1;
        fc.model_family = "bench";
        fc.n_params = P;
        fc.blocks = blocks;
        fc.n_blocks = nb;
        fc.site_samples = samples;
        fc.site_trained = trained;
        fc.tokens = tokens;
        fc.strategy = strategy;
        fc.min_sites = 1;
        st = fm_fedsrv_create(&S.srv, &fc);
    }
    pthread_t th;
    int serving = 0;
    if (st == FM_OK) {
        serving = pthread_create(&th, NULL, stream_serve, &S) == 0;
        pthread_mutex_lock(&S.mu);
        while (serving && S.port == 0)
            pthread_cond_wait(&S.cv, &S.mu);
        pthread_mutex_unlock(&S.mu);
        if (!serving || S.port < 0)
            st = fm_error(FM_ERR_NETWORK, "bench: the server did not start");
    }
    fm_net_client *c = NULL;
    char target[64];
    snprintf(target, sizeof target, "127.0.0.1:%d", S.port);
    if (st == FM_OK)
        st = fm_net_client_create(&c, target, token, 600.0);
    if (st == FM_OK)
        st = fm_net_client_set_codec(c, &codec);
    fm_wire_task task;
    fm_wire_join j;
    memset(&j, 0, sizeof j);
    snprintf(j.token, sizeof j.token, "%s", token);
    snprintf(j.model_family, sizeof j.model_family, "bench");
    j.n_params = P;
    j.n_blocks = (uint32_t)nb;
    if (st == FM_OK)
        st = fm_net_join(c, &j, &task);
    double pull_s = 0, push_s = 0, pull_cpu = 0, push_cpu = 0;
    if (st == FM_OK) {
        fm_wire_ref r = {.round = 1, .site = 0};
        snprintf(r.run_id, sizeof r.run_id, "%s", task.run_id);
        double t0 = fm_now_seconds(), c0 = cpu_s();
        st = fm_net_pull(c, &r, buf, blocks, nb); /* into buf: the initial vector's copy is in the strategy */
        pull_s = fm_now_seconds() - t0;
        pull_cpu = cpu_s() - c0;
    }
    if (st == FM_OK) {
        for (size_t i = 0; i < P; i++) /* the update: the pulled vector scaled, as a delta might be */
            buf[i] *= 0.01f;
        fm_wire_push_header *h = calloc(1, sizeof *h);
        if (!h)
            st = fm_error(FM_ERR_NO_MEMORY, "bench: out of memory");
        if (st == FM_OK) {
            snprintf(h->run_id, sizeof h->run_id, "%s", task.run_id);
            h->round = 1;
            h->n_samples = 100;
            h->loss = 1.0;
            h->n_params = P;
            h->n_blocks = nb;
            memset(h->trained, 1, nb);
            fm_wire_reply reply;
            double t0 = fm_now_seconds(), c0 = cpu_s();
            st = fm_net_push(c, h, buf, blocks, 0, &reply);
            push_s = fm_now_seconds() - t0;
            push_cpu = cpu_s() - c0;
        }
        free(h);
    }
    if (st == FM_OK) {
        /* tells the server this site heard DONE so that it leaves at once (it may already be leaving) */
        fm_wire_ref hb = {.round = 1, .site = 0};
        snprintf(hb.run_id, sizeof hb.run_id, "%s", task.run_id);
        (void)fm_net_heartbeat(c, &hb, &task);
    }
    if (serving)
        pthread_join(th, NULL);
    if (st == FM_OK && S.result != FM_OK)
        st = S.result;
    const double mb = (double)P * 4.0 / 1e6;
    if (st == FM_OK) {
        printf("bench stream: %zu floats (%.1f MB as float32) in %zu tensors, %s%s: pull %.2f s (%.0f MB/s of "
               "float32, %.1f MB sent, %.2f CPU s), push %.2f s (%.0f MB/s, %.1f MB sent, %.2f CPU s, incl. the "
               "server's checks and FedAvg); peak RSS %.0f MB (server and site in one process)\n",
               P, mb, nb, fm_wire_encoding_name(codec.encoding), codec.compression == FM_WIRE_ZSTD ? "+zstd" : "",
               pull_s, mb / pull_s, S.traffic.bytes_down / 1e6, pull_cpu, push_s, mb / push_s, S.traffic.bytes_up / 1e6,
               push_cpu, rss_mb());
        /* the same, for scripts */
        printf("result floats=%zu pull_s=%.3f pull_mb_s=%.1f pull_sent_mb=%.1f pull_cpu_s=%.2f push_s=%.3f "
               "push_mb_s=%.1f push_sent_mb=%.1f push_cpu_s=%.2f rss_mb=%.0f\n",
               P, pull_s, mb / pull_s, S.traffic.bytes_down / 1e6, pull_cpu, push_s, mb / push_s,
               S.traffic.bytes_up / 1e6, push_cpu, rss_mb());
    } else {
        fprintf(stderr, "bench stream: %s\n", fm_last_error());
    }
    fm_net_client_destroy(c);
    fm_fedsrv_destroy(S.srv);
    fm_strategy_destroy(strategy);
    pthread_mutex_destroy(&S.mu);
    pthread_cond_destroy(&S.cv);
    free(trained);
    free(blocks);
    free(buf);
    return st == FM_OK ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "sites") == 0)
        return run_sites(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "stream") == 0)
        return run_stream(argc - 1, argv + 1);
    fprintf(stderr, "usage: fedmm_bench_net sites|stream ... (see benchmarks/net/bench_net.c)\n");
    return 2;
}
