/* The federation server's rounds, checks, streaming aggregation, spilled updates and saved state (see fedsrv.h
 * for the order argument and the state's layout). */
#include "net/fedsrv.h"

#include <dirent.h>
#include <errno.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fedmm/log.h"
#include "fedmm/safetensors.h"
#include "fedmm/site_train.h"

#define PATH_CAP 4200
#define STATE_FORMAT "fedmm.server_state"
#define STATE_VERSION "1"
#define HISTORY_COLS 6 /* round, loss, sites, wall_s, bytes_up, bytes_down */

/* An update that arrived before a lower-indexed site's: in RAM, or spilled to a file. */
typedef struct parked {
    float *ram;     /* (width) or NULL */
    int spilled;    /* on file: state_dir/parked/r<round>-site<k>.f32 */
    uint32_t crc;   /* CRC-32C of the spilled floats */
    int has_update; /* pushed and not yet added */
} parked;

/* The three parts of a configuration a resumed run must share with the saved one. */
enum { FP_FEDERATION, FP_MODEL, FP_STRATEGY, FP_COUNT };
static const char *const kFpKey[FP_COUNT] = {"fp_federation", "fp_model", "fp_strategy"};
static const char *const kFpWhat[FP_COUNT] = {
    "the federation (fl.sites, fl.sites_per_round, fl.over_select, fl.seed, fl.local_steps, the data split)",
    "the model (model.*, seed: the architecture or the initial trainable vector)",
    "the strategy (fl.strategy and its parameters)"};

struct fm_fedsrv {
    fm_fedsrv_config cfg;
    char run_id[FM_WIRE_RUN_ID_MAX + 1];
    /* SCAFFOLD: a push carries Δc_i after its delta, a Pull c after the global vector; a staged update is then
     * `width` = 2P floats (the delta, then Δc_i), else P */
    int scaffold;
    size_t width;

    int tasked;        /* sites tasked per round (≥ sites_per_round) */
    int round;         /* open round, 1..R; R + 1 when done */
    int *chosen;       /* (tasked) this round's sites, ascending */
    uint8_t *pushed;   /* (tasked) accepted this round */
    parked *park;      /* (tasked) accepted updates not yet added */
    double *losses;    /* (tasked) */
    int n_pushed;      /* accepted this round */
    int next_add;      /* chosen[0 .. next_add) are added to the strategy */
    size_t park_bytes; /* parked in RAM */
    float *scratch;    /* (P) a spilled update read back; allocated at the first spill */
    uint8_t *joined;   /* (N) */
    uint8_t *released; /* (N) told DONE */
    /* (N) the last finished round that aggregated each site's update (0: none); saved with the state */
    int64_t *aggregated;
    fm_status fatal;
    double opened_at;             /* when the open round opened (fm_now_seconds) */
    int short_logged;             /* the deadline passed with too few pushes, and the log said so */
    fm_fedsrv_round_log *history; /* (cfg.rounds) rounds 1 .. round − 1 */
    int n_history;
    double wall_before, t0; /* wall time of the run = wall_before + (now − t0) */
    char fp[FP_COUNT][2 * crypto_generichash_BYTES + 1];
};

struct fm_fedsrv_push {
    int site;
    int64_t round; /* calls run concurrently: the round may close while this push streams */
    double loss;
    float *delta;          /* (width) staging, zero outside the trained blocks: Δ, then (SCAFFOLD) Δc_i */
    fm_tensor_rx rx;       /* the delta's chunks (FM_PAYLOAD_ADAPTERS) */
    fm_tensor_rx rx_c;     /* SCAFFOLD: Δc_i's chunks (FM_PAYLOAD_CONTROL_VARIATE), after the delta's */
    float *step_values;    /* representation FL: the header's step lists, one copy */
    fm_fedsrv_steps steps; /* pointing into step_values */
};

static int fail(int code, fm_status st, const char *fmt, const char *detail)
{
    fm_error(st, fmt, detail);
    return code;
}

/* ---- fingerprints of the configuration ------------------------------------------------------------ */

static void fp_text(crypto_generichash_state *h, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fp_text(crypto_generichash_state *h, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    crypto_generichash_update(h, (const unsigned char *)buf, (size_t)n + 1); /* with the NUL: fields separate */
}

static void fp_bytes(crypto_generichash_state *h, const void *data, size_t n)
{
    if (n)
        crypto_generichash_update(h, data, n);
}

static void fp_final(crypto_generichash_state *h, char *hex)
{
    unsigned char d[crypto_generichash_BYTES];
    crypto_generichash_final(h, d, sizeof d);
    sodium_bin2hex(hex, 2 * sizeof d + 1, d, sizeof d);
}

/* What the saved state must agree with. fl.rounds is left out (a run may be extended), and so are the net.*
 * keys and fl.min_sites (how rounds close, not what they compute). The model's part includes the initial
 * trainable vector, so it must be computed before a resume replaces the global vector. */
static void fingerprints(fm_fedsrv *s)
{
    const fm_fedsrv_config *c = &s->cfg;
    crypto_generichash_state h;
    crypto_generichash_init(&h, NULL, 0, crypto_generichash_BYTES);
    fp_text(&h, "sites=%d per_round=%d tasked=%d seed=%llu local_steps=%lld", c->num_sites, c->sites_per_round,
            s->tasked, (unsigned long long)c->seed, (long long)c->local_steps);
    fp_bytes(&h, c->site_samples, (size_t)c->num_sites * sizeof *c->site_samples);
    fp_bytes(&h, c->site_trained, (size_t)c->num_sites * c->n_blocks);
    fp_final(&h, s->fp[FP_FEDERATION]);

    crypto_generichash_init(&h, NULL, 0, crypto_generichash_BYTES);
    fp_text(&h, "family=%s params=%zu blocks=%zu", c->model_family ? c->model_family : "", c->n_params, c->n_blocks);
    for (size_t b = 0; b < c->n_blocks; b++)
        fp_text(&h, "%s %zu %zu", c->blocks[b].name ? c->blocks[b].name : "", c->blocks[b].offset, c->blocks[b].numel);
    fp_bytes(&h, fm_strategy_global(c->strategy), c->n_params * sizeof(float));
    fp_final(&h, s->fp[FP_MODEL]);

    const fm_strategy_config *k = fm_strategy_get_config(c->strategy);
    crypto_generichash_init(&h, NULL, 0, crypto_generichash_BYTES);
    fp_text(&h,
            "%s lr=%.17g b1=%.17g b2=%.17g tau=%.17g mom=%.17g mu=%.17g muw=%.17g skip=%d trim=%.17g f=%d m=%d "
            "clip=%.17g n=%d",
            fm_strategy_name(k->kind), k->server_lr, k->beta1, k->beta2, k->tau, k->server_momentum, k->prox_mu,
            k->adaptive_mu_w, k->adaptive_skip_layers, k->trim_ratio, k->krum_byzantine, k->multi_krum_m, k->clip_norm,
            k->scaffold_num_sites);
    fp_final(&h, s->fp[FP_STRATEGY]);
}

/* ---- parked updates spilled to files ------------------------------------------------------------- */

#define SPILL_MAGIC "FMPARK1"
typedef struct spill_header {
    char magic[8];
    int32_t round;
    int32_t site;
    uint64_t n_params; /* floats that follow: P, or 2P with SCAFFOLD (the delta, then Δc_i) */
    uint32_t crc;
    uint32_t reserved;
} spill_header;

static void spill_path(const fm_fedsrv *s, int round, int site, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s/r%d-site%d.f32", s->cfg.state_dir, FM_FEDSRV_PARK_DIR, round, site);
}

/* Removes the spill files in state_dir/parked/ (an earlier process's, or this one's at the end). */
static void clear_park_dir(const char *state_dir)
{
    char dir[PATH_CAP], f[PATH_CAP + 300];
    snprintf(dir, sizeof dir, "%s/%s", state_dir, FM_FEDSRV_PARK_DIR);
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int r = 0, k = 0;
        char tail[8] = "";
        if (sscanf(e->d_name, "r%d-site%d%7s", &r, &k, tail) == 3 && strcmp(tail, ".f32") == 0) {
            snprintf(f, sizeof f, "%s/%s", dir, e->d_name);
            unlink(f);
        }
    }
    closedir(d);
}

static fm_status spill(fm_fedsrv *s, int slot, const float *delta)
{
    const int k = s->chosen[slot];
    char dir[PATH_CAP], path[PATH_CAP];
    snprintf(dir, sizeof dir, "%s/%s", s->cfg.state_dir, FM_FEDSRV_PARK_DIR);
    if (mkdir(dir, 0775) != 0 && errno != EEXIST)
        return fm_error(FM_ERR_IO, "server: cannot create %s for parked updates: %s", dir, strerror(errno));
    spill_path(s, s->round, k, path, sizeof path);
    const size_t n = s->width;
    spill_header h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, SPILL_MAGIC, sizeof SPILL_MAGIC);
    h.round = s->round;
    h.site = k;
    h.n_params = n;
    h.crc = fm_crc32c(0, delta, n * sizeof(float));
    FILE *f = fopen(path, "wb");
    if (!f)
        return fm_error(FM_ERR_IO, "server: cannot write parked update %s: %s", path, strerror(errno));
    int ok = fwrite(&h, sizeof h, 1, f) == 1 && (n == 0 || fwrite(delta, sizeof(float), n, f) == n);
    if (fclose(f) != 0)
        ok = 0;
    if (!ok) {
        unlink(path);
        return fm_error(FM_ERR_IO, "server: writing parked update %s failed (disk full?)", path);
    }
    s->park[slot].spilled = 1;
    s->park[slot].crc = h.crc;
    return FM_OK;
}

/* Reads a spilled update back into s->scratch, checks it against what was written, and deletes the file. */
static fm_status unspill(fm_fedsrv *s, int slot)
{
    const int k = s->chosen[slot];
    char path[PATH_CAP];
    spill_path(s, s->round, k, path, sizeof path);
    const size_t n = s->width;
    spill_header h;
    FILE *f = fopen(path, "rb");
    if (!f)
        return fm_error(FM_ERR_IO, "server: parked update %s is gone: %s", path, strerror(errno));
    int ok = fread(&h, sizeof h, 1, f) == 1 && memcmp(h.magic, SPILL_MAGIC, sizeof SPILL_MAGIC) == 0 &&
             h.round == s->round && h.site == k && h.n_params == n &&
             (n == 0 || fread(s->scratch, sizeof(float), n, f) == n) && fgetc(f) == EOF;
    fclose(f);
    unlink(path);
    s->park[slot].spilled = 0;
    if (!ok)
        return fm_error(FM_ERR_PARSE, "server: parked update %s of site %d is truncated or not this round's", path, k);
    if (fm_crc32c(0, s->scratch, n * sizeof(float)) != s->park[slot].crc || h.crc != s->park[slot].crc)
        return fm_error(FM_ERR_PARSE, "server: parked update %s of site %d fails its checksum", path, k);
    return FM_OK;
}

/* Keeps an accepted update until its turn: in RAM within the budget (or without a state_dir), else on file.
 * Takes ownership of delta. */
static fm_status park_update(fm_fedsrv *s, int slot, float *delta)
{
    const size_t bytes = s->width * sizeof(float);
    parked *pk = &s->park[slot];
    pk->has_update = 1;
    if (!s->cfg.state_dir || s->park_bytes + bytes <= s->cfg.park_budget_bytes) {
        pk->ram = delta;
        s->park_bytes += bytes;
        return FM_OK;
    }
    if (!s->scratch) {
        s->scratch = malloc(bytes ? bytes : 1);
        if (!s->scratch) {
            free(delta);
            return fm_error(FM_ERR_NO_MEMORY, "server: out of memory");
        }
    }
    fm_status st = spill(s, slot, delta);
    free(delta);
    if (st == FM_OK)
        FM_INFO("server: round %d: site %d's update parked on disk, over the %zu-byte budget (net.park_memory_mb)",
                s->round, s->chosen[slot], s->cfg.park_budget_bytes);
    return st;
}

/* Adds slot i's parked update to the strategy and releases it. */
static fm_status add_parked(fm_fedsrv *s, int i)
{
    parked *pk = &s->park[i];
    const float *delta = pk->ram;
    if (!delta) {
        FM_TRY(unspill(s, i));
        delta = s->scratch;
    }
    const int k = s->chosen[i];
    fm_site_update u = {.n_params = s->cfg.n_params,
                        .delta = delta,
                        .weight = (double)s->cfg.site_samples[k],
                        .n_blocks = s->cfg.n_blocks,
                        .trained = s->cfg.site_trained + (size_t)k * s->cfg.n_blocks,
                        .control_delta = s->scaffold ? delta + s->cfg.n_params : NULL};
    fm_status st = fm_strategy_add_update(s->cfg.strategy, &u);
    if (pk->ram) {
        free(pk->ram);
        pk->ram = NULL;
        s->park_bytes -= s->width * sizeof(float);
    }
    pk->has_update = 0;
    return st;
}

/* Frees or deletes whatever is parked. */
static void drop_parked(fm_fedsrv *s)
{
    for (int i = 0; s->park && i < s->tasked; i++) {
        parked *pk = &s->park[i];
        if (pk->spilled && s->chosen) {
            char path[PATH_CAP];
            spill_path(s, s->round, s->chosen[i], path, sizeof path);
            unlink(path);
        }
        free(pk->ram);
        memset(pk, 0, sizeof *pk);
    }
    s->park_bytes = 0;
}

/* ---- the saved state ------------------------------------------------------------------------------ */

static void strategy_file(int round, char *out, size_t cap)
{
    snprintf(out, cap, "server-strategy-%d.safetensors", round);
}

/* After round R (= s->round, finished, no round open): the strategy file, then the state file naming it, then
 * the previous round's strategy file goes. */
static fm_status save_state(fm_fedsrv *s)
{
    const char *dir = s->cfg.state_dir;
    const int R = s->round;
    char name[128], path[PATH_CAP], num[64];
    strategy_file(R, name, sizeof name);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FM_TRY(fm_strategy_save(s->cfg.strategy, path));
    double *rows = malloc((size_t)R * HISTORY_COLS * sizeof *rows);
    if (!rows)
        return fm_error(FM_ERR_NO_MEMORY, "server: out of memory");
    for (int i = 0; i < R; i++) {
        const fm_fedsrv_round_log *r = &s->history[i];
        double *row = rows + (size_t)i * HISTORY_COLS;
        row[0] = r->round;
        row[1] = r->loss;
        row[2] = r->sites;
        row[3] = r->wall_s;
        row[4] = r->bytes_up;
        row[5] = r->bytes_down;
    }
    fm_st_writer *w = NULL;
    fm_status st = fm_st_writer_create(&w);
    const int64_t shape[2] = {R, HISTORY_COLS};
    if (st == FM_OK)
        st = fm_st_writer_add(w, "history", FM_ST_F64, 2, shape, rows);
    const int64_t n_sites = s->cfg.num_sites;
    if (st == FM_OK)
        st = fm_st_writer_add(w, "aggregated", FM_ST_I64, 1, &n_sites, s->aggregated);
    if (st == FM_OK)
        st = fm_st_writer_set_metadata(w, "format", STATE_FORMAT);
    if (st == FM_OK)
        st = fm_st_writer_set_metadata(w, "version", STATE_VERSION);
    if (st == FM_OK)
        st = fm_st_writer_set_metadata(w, "run_id", s->run_id);
    snprintf(num, sizeof num, "%d", R);
    if (st == FM_OK)
        st = fm_st_writer_set_metadata(w, "rounds_done", num);
    if (st == FM_OK)
        st = fm_st_writer_set_metadata(w, "strategy_file", name);
    for (int i = 0; st == FM_OK && i < FP_COUNT; i++)
        st = fm_st_writer_set_metadata(w, kFpKey[i], s->fp[i]);
    snprintf(path, sizeof path, "%s/%s", dir, FM_FEDSRV_STATE_FILE);
    if (st == FM_OK)
        st = fm_st_write(w, path);
    fm_st_writer_free(w);
    free(rows);
    FM_TRY(st);
    if (R > 1) {
        strategy_file(R - 1, name, sizeof name);
        snprintf(path, sizeof path, "%s/%s", dir, name);
        unlink(path);
    }
    return FM_OK;
}

/* A new run in a directory that holds an earlier run's state: that state goes (else a crash before this run's
 * first round would leave the old run to resume). */
static void clear_state(const char *dir)
{
    char path[PATH_CAP + 300];
    snprintf(path, sizeof path, "%s/%s", dir, FM_FEDSRV_STATE_FILE);
    if (unlink(path) == 0)
        FM_WARN("server: a new run in %s: the state of the earlier run there is removed", dir);
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int r = 0;
        char tail[32] = "";
        if (sscanf(e->d_name, "server-strategy-%d%31s", &r, tail) == 2 && strcmp(tail, ".safetensors") == 0) {
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
    }
    closedir(d);
}

static fm_status load_state(fm_fedsrv *s)
{
    const char *dir = s->cfg.state_dir;
    char path[PATH_CAP];
    snprintf(path, sizeof path, "%s/%s", dir, FM_FEDSRV_STATE_FILE);
    if (access(path, F_OK) != 0)
        return fm_error(FM_ERR_IO, "--resume: no server state in %s (%s: %s)", dir, FM_FEDSRV_STATE_FILE,
                        strerror(errno));
    fm_st_file *f = NULL;
    fm_status st = fm_st_open(&f, path);
    if (st != FM_OK) {
        char why[512];
        snprintf(why, sizeof why, "%s", fm_last_error());
        return fm_error(FM_ERR_PARSE, "--resume: %s is damaged: %s", path, why);
    }
    const char *format = fm_st_metadata(f, "format"), *version = fm_st_metadata(f, "version"),
               *run_id = fm_st_metadata(f, "run_id"), *done = fm_st_metadata(f, "rounds_done"),
               *sfile = fm_st_metadata(f, "strategy_file");
    char want_file[128];
    char *end = NULL;
    long R = done ? strtol(done, &end, 10) : -1;
    if (!format || strcmp(format, STATE_FORMAT) != 0 || !version || strcmp(version, STATE_VERSION) != 0)
        st = fm_error(FM_ERR_PARSE, "--resume: %s is not a fedmm server state (format %s, version %s)", path,
                      format ? format : "none", version ? version : "none");
    else if (!run_id || !*run_id || strlen(run_id) > FM_WIRE_RUN_ID_MAX)
        st = fm_error(FM_ERR_PARSE, "--resume: %s: missing or overlong run id", path);
    else if (!done || *end != '\0' || R < 1 || R > 100000000)
        st = fm_error(FM_ERR_PARSE, "--resume: %s: bad rounds_done '%s'", path, done ? done : "none");
    for (int i = 0; st == FM_OK && i < FP_COUNT; i++) {
        const char *fp = fm_st_metadata(f, kFpKey[i]);
        if (!fp || strcmp(fp, s->fp[i]) != 0)
            st = fm_error(FM_ERR_CONFIG,
                          "--resume: the state in %s was written with another configuration: %s differs (resume "
                          "with the config of run %s)",
                          dir, kFpWhat[i], run_id);
    }
    if (st == FM_OK && R > s->cfg.rounds)
        st = fm_error(FM_ERR_CONFIG, "--resume: the state in %s has %ld rounds done, the config runs %d", dir, R,
                      s->cfg.rounds);
    if (st == FM_OK) {
        strategy_file((int)R, want_file, sizeof want_file);
        if (!sfile || strcmp(sfile, want_file) != 0)
            st = fm_error(FM_ERR_PARSE, "--resume: %s names strategy file '%s', expected '%s'", path,
                          sfile ? sfile : "none", want_file);
    }
    const fm_st_tensor_info *hi = st == FM_OK ? fm_st_find(f, "history") : NULL;
    if (st == FM_OK &&
        (!hi || hi->dtype != FM_ST_F64 || hi->ndim != 2 || hi->shape[0] != R || hi->shape[1] != HISTORY_COLS))
        st = fm_error(FM_ERR_PARSE, "--resume: %s: missing history, or not F64 of shape (%ld, %d)", path, R,
                      HISTORY_COLS);
    for (long i = 0; st == FM_OK && i < R; i++) {
        double row[HISTORY_COLS];
        memcpy(row, (const char *)hi->data + (size_t)i * sizeof row, sizeof row);
        if (row[0] != (double)(i + 1) || !(row[2] >= 0 && row[2] <= s->tasked) || !(row[3] >= 0) || !(row[4] >= 0) ||
            !(row[5] >= 0))
            st = fm_error(FM_ERR_PARSE, "--resume: %s: history row %ld is damaged", path, i + 1);
        s->history[i] = (fm_fedsrv_round_log){.round = (int)row[0],
                                              .loss = row[1],
                                              .sites = (int)row[2],
                                              .wall_s = row[3],
                                              .bytes_up = row[4],
                                              .bytes_down = row[5]};
    }
    /* the last round that aggregated each site's update (a SCAFFOLD site keeps its new control variate once it
     * learns this reached its push). States written before it was kept hold none: zeros, except for SCAFFOLD,
     * which could not run over the network then. */
    const fm_st_tensor_info *ai = st == FM_OK ? fm_st_find(f, "aggregated") : NULL;
    if (st == FM_OK && ai && (ai->dtype != FM_ST_I64 || ai->ndim != 1 || ai->shape[0] != s->cfg.num_sites))
        st = fm_error(FM_ERR_PARSE, "--resume: %s: 'aggregated' is not I64 of shape (%d)", path, s->cfg.num_sites);
    else if (st == FM_OK && !ai && s->scaffold)
        st = fm_error(FM_ERR_PARSE, "--resume: %s: no 'aggregated' rounds, which SCAFFOLD's sites need", path);
    for (int k = 0; st == FM_OK && ai && k < s->cfg.num_sites; k++) {
        int64_t r = 0;
        memcpy(&r, (const char *)ai->data + (size_t)k * sizeof r, sizeof r);
        if (r < 0 || r > R)
            st = fm_error(FM_ERR_PARSE, "--resume: %s: site %d's last aggregated round %lld is not in 0..%ld", path, k,
                          (long long)r, R);
        s->aggregated[k] = r;
    }
    if (st == FM_OK)
        snprintf(s->run_id, sizeof s->run_id, "%s", run_id);
    fm_st_close(f);
    FM_TRY(st);
    snprintf(path, sizeof path, "%s/%s", dir, want_file);
    st = fm_strategy_load(s->cfg.strategy, path);
    if (st != FM_OK) {
        char why[512];
        snprintf(why, sizeof why, "%s", fm_last_error());
        return fm_error(st == FM_ERR_IO ? FM_ERR_IO : FM_ERR_PARSE, "--resume: %s", why);
    }
    if (fm_strategy_round(s->cfg.strategy) != R)
        return fm_error(FM_ERR_PARSE, "--resume: %s holds round %lld, the state says %ld", path,
                        (long long)fm_strategy_round(s->cfg.strategy), R);
    s->n_history = (int)R;
    s->wall_before = s->history[R - 1].wall_s;
    return FM_OK;
}

/* ---- rounds -------------------------------------------------------------------------------------- */

static int check_site_token(const fm_fedsrv *s, int site, const char *bearer)
{
    if (site < 0 || site >= s->cfg.num_sites) {
        fm_error(FM_ERR_RANGE, "site %d is not in [0, %d)", site, s->cfg.num_sites);
        return FM_NET_INVALID_ARGUMENT;
    }
    const char *want = s->cfg.tokens[site];
    size_t n = strlen(want);
    if (!bearer || strlen(bearer) != n || sodium_memcmp(bearer, want, n) != 0) {
        fm_error(FM_ERR_INVALID_ARG, "site %d: missing or wrong bearer token", site);
        return FM_NET_UNAUTHENTICATED;
    }
    return FM_NET_OK;
}

static int check_run(const fm_fedsrv *s, const char *run_id)
{
    if (strcmp(run_id, s->run_id) != 0) {
        fm_error(FM_ERR_INVALID_ARG, "run id '%s' is not this run's ('%s')", run_id, s->run_id);
        return FM_NET_FAILED_PRECONDITION;
    }
    return FM_NET_OK;
}

static int slot_of(const fm_fedsrv *s, int site)
{
    for (int i = 0; i < s->tasked; i++)
        if (s->chosen[i] == site)
            return i;
    return -1;
}

static fm_status open_round(fm_fedsrv *s)
{
    if (s->cfg.hooks && s->cfg.hooks->draw)
        FM_TRY(s->cfg.hooks->draw(s->cfg.hooks->ctx, s->round, s->cfg.num_sites, s->tasked, s->chosen));
    else
        FM_TRY(fm_round_sites(s->cfg.seed, s->round, s->cfg.num_sites, s->tasked, s->chosen));
    memset(s->pushed, 0, (size_t)s->tasked);
    s->n_pushed = 0;
    s->next_add = 0;
    s->opened_at = fm_now_seconds();
    s->short_logged = 0;
    return fm_strategy_begin_round(s->cfg.strategy, s->round);
}

void fm_fedsrv_destroy(fm_fedsrv *s)
{
    if (!s)
        return;
    drop_parked(s);
    free(s->park);
    free(s->scratch);
    free(s->chosen);
    free(s->pushed);
    free(s->losses);
    free(s->joined);
    free(s->released);
    free(s->aggregated);
    free(s->history);
    free(s);
}

fm_status fm_fedsrv_create(fm_fedsrv **out, const fm_fedsrv_config *cfg)
{
    *out = NULL;
    const int tasked = cfg->sites_tasked > 0 ? cfg->sites_tasked : cfg->sites_per_round;
    if (cfg->rounds < 1 || cfg->num_sites < 1 || cfg->sites_per_round < 1 || cfg->sites_per_round > cfg->num_sites)
        return fm_error(FM_ERR_CONFIG, "server: %d rounds, %d of %d sites per round", cfg->rounds, cfg->sites_per_round,
                        cfg->num_sites);
    if (tasked < cfg->sites_per_round || tasked > cfg->num_sites)
        return fm_error(FM_ERR_CONFIG, "server: %d sites tasked per round (over-selection) for %d of %d sites", tasked,
                        cfg->sites_per_round, cfg->num_sites);
    if (cfg->round_timeout_s < 0 || cfg->min_sites < 0 || cfg->min_sites > cfg->sites_per_round)
        return fm_error(FM_ERR_CONFIG, "server: round timeout %g s, min_sites %d of %d sites per round",
                        cfg->round_timeout_s, cfg->min_sites, cfg->sites_per_round);
    if (strlen(cfg->run_id) > FM_WIRE_RUN_ID_MAX || cfg->n_blocks > FM_WIRE_MAX_BLOCKS)
        return fm_error(FM_ERR_CONFIG, "server: run id or block count over the wire limits");
    if (fm_strategy_num_params(cfg->strategy) != cfg->n_params)
        return fm_error(FM_ERR_SHAPE, "server: strategy has %zu parameters, the model %zu",
                        fm_strategy_num_params(cfg->strategy), cfg->n_params);
    if (cfg->resume && !cfg->state_dir)
        return fm_error(FM_ERR_CONFIG, "server: resume needs a state directory");
    if (sodium_init() < 0)
        return fm_error(FM_ERR_INTERNAL, "server: libsodium failed to initialise");
    fm_fedsrv *s = calloc(1, sizeof *s);
    if (!s)
        return fm_error(FM_ERR_NO_MEMORY, "server: out of memory");
    s->cfg = *cfg;
    s->tasked = tasked;
    s->scaffold = fm_strategy_get_config(cfg->strategy)->kind == FM_STRATEGY_SCAFFOLD;
    s->width = s->scaffold ? 2 * cfg->n_params : cfg->n_params;
    snprintf(s->run_id, sizeof s->run_id, "%s", cfg->run_id);
    const size_t t = (size_t)tasked, n = (size_t)cfg->num_sites;
    s->chosen = calloc(t, sizeof *s->chosen);
    s->pushed = calloc(t, 1);
    s->park = calloc(t, sizeof *s->park);
    s->losses = calloc(t, sizeof *s->losses);
    s->joined = calloc(n, 1);
    s->released = calloc(n, 1);
    s->aggregated = calloc(n, sizeof *s->aggregated);
    s->history = calloc((size_t)cfg->rounds, sizeof *s->history);
    if (!s->chosen || !s->pushed || !s->park || !s->losses || !s->joined || !s->released || !s->aggregated ||
        !s->history) {
        fm_fedsrv_destroy(s);
        return fm_error(FM_ERR_NO_MEMORY, "server: out of memory");
    }
    fingerprints(s);
    fm_status st = FM_OK;
    if (cfg->state_dir)
        clear_park_dir(cfg->state_dir);
    if (cfg->resume)
        st = load_state(s);
    else if (cfg->state_dir)
        clear_state(cfg->state_dir);
    s->t0 = fm_now_seconds();
    s->round = (int)fm_strategy_round(cfg->strategy) + 1;
    if (s->round < 1)
        s->round = 1;
    if (st == FM_OK && s->round <= cfg->rounds)
        st = open_round(s);
    if (st != FM_OK) {
        fm_fedsrv_destroy(s);
        return st;
    }
    *out = s;
    return FM_OK;
}

const fm_strategy_block *fm_fedsrv_blocks(const fm_fedsrv *s) { return s->cfg.blocks; }
size_t fm_fedsrv_num_blocks(const fm_fedsrv *s) { return s->cfg.n_blocks; }
const fm_wire_payload_kind *fm_fedsrv_block_kinds(const fm_fedsrv *s)
{
    return s->cfg.hooks ? s->cfg.hooks->block_kinds : NULL;
}
int fm_fedsrv_round(const fm_fedsrv *s) { return s->round; }
int fm_fedsrv_done(const fm_fedsrv *s) { return s->round > s->cfg.rounds; }
fm_status fm_fedsrv_fatal(const fm_fedsrv *s) { return s->fatal; }
const char *fm_fedsrv_run_id(const fm_fedsrv *s) { return s->run_id; }
const float *fm_fedsrv_control(const fm_fedsrv *s) { return s->scaffold ? fm_strategy_control(s->cfg.strategy) : NULL; }

const fm_fedsrv_round_log *fm_fedsrv_history(const fm_fedsrv *s, int *n)
{
    *n = s->n_history;
    return s->history;
}

void fm_fedsrv_parked(const fm_fedsrv *s, int *in_ram, int *spilled)
{
    *in_ram = *spilled = 0;
    for (int i = 0; i < s->tasked; i++) {
        *in_ram += s->park[i].ram != NULL;
        *spilled += s->park[i].spilled;
    }
}

int fm_fedsrv_all_released(const fm_fedsrv *s)
{
    for (int k = 0; k < s->cfg.num_sites; k++)
        if (s->joined[k] && !s->released[k])
            return 0;
    return 1;
}

static void make_task(fm_fedsrv *s, int site, fm_wire_task *t)
{
    memset(t, 0, sizeof *t);
    snprintf(t->run_id, sizeof t->run_id, "%s", s->run_id);
    t->local_steps = s->cfg.local_steps;
    t->n_params = s->cfg.n_params;
    t->rounds = s->cfg.rounds;
    t->aggregated_round = s->aggregated[site];
    snprintf(t->config, sizeof t->config, "%s", s->cfg.config_text ? s->cfg.config_text : "");
    if (fm_fedsrv_done(s)) {
        t->round = s->cfg.rounds;
        t->action = FM_ACTION_DONE;
        s->released[site] = 1;
        return;
    }
    t->round = s->round;
    int slot = slot_of(s, site);
    t->action = slot >= 0 && !s->pushed[slot] && !s->fatal ? FM_ACTION_TRAIN : FM_ACTION_WAIT;
    if (t->action == FM_ACTION_TRAIN && s->cfg.round_timeout_s > 0) {
        /* the round's deadline on the wall clock (the rounds are timed on the monotonic one) */
        struct timespec wall;
        clock_gettime(CLOCK_REALTIME, &wall);
        const double left_s = s->opened_at + s->cfg.round_timeout_s - fm_now_seconds();
        t->deadline_unix_ms = (int64_t)wall.tv_sec * 1000 + wall.tv_nsec / 1000000 + (int64_t)(left_s * 1000.0);
    }
}

int fm_fedsrv_join(fm_fedsrv *s, const char *bearer, const fm_wire_join *j, fm_wire_task *task)
{
    int rc = check_site_token(s, j->site, bearer);
    if (rc)
        return rc;
    if (strcmp(j->token, bearer) != 0)
        return fail(FM_NET_UNAUTHENTICATED, FM_ERR_INVALID_ARG, "Join: the message's token differs from the call's%s",
                    "");
    if (j->run_id[0] && (rc = check_run(s, j->run_id)) != 0)
        return rc;
    if (j->n_params != s->cfg.n_params || j->n_blocks != s->cfg.n_blocks) {
        fm_error(FM_ERR_SHAPE, "Join: site %d's model has %llu parameters in %u blocks, the server's %zu in %zu",
                 j->site, (unsigned long long)j->n_params, j->n_blocks, s->cfg.n_params, s->cfg.n_blocks);
        return FM_NET_FAILED_PRECONDITION;
    }
    if (s->cfg.model_family && strcmp(j->model_family, s->cfg.model_family) != 0) {
        fm_error(FM_ERR_CONFIG, "Join: site %d runs model '%s', the server '%s'", j->site, j->model_family,
                 s->cfg.model_family);
        return FM_NET_FAILED_PRECONDITION;
    }
    const uint32_t *mods = s->cfg.hooks ? s->cfg.hooks->site_modalities : NULL;
    if (mods && j->modalities != mods[j->site]) {
        fm_error(FM_ERR_CONFIG, "Join: site %d declares modalities %u, its share of the data holds %u", j->site,
                 j->modalities, mods[j->site]);
        return FM_NET_FAILED_PRECONDITION;
    }
    s->joined[j->site] = 1;
    make_task(s, j->site, task);
    return FM_NET_OK;
}

int fm_fedsrv_heartbeat(fm_fedsrv *s, const char *bearer, const fm_wire_ref *h, fm_wire_task *task)
{
    int rc = check_site_token(s, h->site, bearer);
    if (!rc)
        rc = check_run(s, h->run_id);
    if (rc)
        return rc;
    s->joined[h->site] = 1;
    make_task(s, h->site, task);
    return FM_NET_OK;
}

/* The round check shared by Pull and Push: the site must be one of the open round's and not have pushed. */
static int check_round(const fm_fedsrv *s, int site, int64_t round, int *slot)
{
    if (fm_fedsrv_done(s)) {
        fm_error(FM_ERR_STATE, "round %lld: the run is over (%d rounds)", (long long)round, s->cfg.rounds);
        return FM_NET_FAILED_PRECONDITION;
    }
    if (round != s->round) {
        fm_error(FM_ERR_STATE, "%s round %lld: the open round is %d", round < s->round ? "stale" : "future",
                 (long long)round, s->round);
        return FM_NET_FAILED_PRECONDITION;
    }
    *slot = slot_of(s, site);
    if (*slot < 0) {
        fm_error(FM_ERR_STATE, "round %d does not task site %d", s->round, site);
        return FM_NET_FAILED_PRECONDITION;
    }
    if (s->pushed[*slot]) {
        fm_error(FM_ERR_STATE, "duplicate push: site %d already pushed round %d", site, s->round);
        return FM_NET_ALREADY_EXISTS;
    }
    return FM_NET_OK;
}

int fm_fedsrv_pull(fm_fedsrv *s, const char *bearer, const fm_wire_ref *r, const float **global)
{
    int slot = -1;
    int rc = check_site_token(s, r->site, bearer);
    if (!rc)
        rc = check_run(s, r->run_id);
    if (!rc)
        rc = check_round(s, r->site, r->round, &slot);
    if (rc)
        return rc;
    *global = fm_strategy_global(s->cfg.strategy);
    return FM_NET_OK;
}

void fm_fedsrv_push_free(fm_fedsrv_push *p)
{
    if (!p)
        return;
    free(p->delta);
    free(p->step_values);
    free(p);
}

int fm_fedsrv_push_begin(fm_fedsrv *s, const char *bearer, const fm_wire_push_header *h, fm_fedsrv_push **out)
{
    *out = NULL;
    int slot = -1;
    int rc = check_site_token(s, h->site, bearer);
    if (!rc)
        rc = check_run(s, h->run_id);
    if (!rc)
        rc = check_round(s, h->site, h->round, &slot);
    if (rc)
        return rc;
    const int k = h->site;
    if (h->n_params != s->cfg.n_params || h->n_blocks != s->cfg.n_blocks) {
        fm_error(FM_ERR_SHAPE, "Push: site %d sends %llu parameters in %zu blocks, the model has %zu in %zu", k,
                 (unsigned long long)h->n_params, h->n_blocks, s->cfg.n_params, s->cfg.n_blocks);
        return FM_NET_INVALID_ARGUMENT;
    }
    if (h->n_samples != s->cfg.site_samples[k]) {
        fm_error(FM_ERR_INVALID_ARG, "Push: site %d claims %lld samples, its split has %lld", k,
                 (long long)h->n_samples, (long long)s->cfg.site_samples[k]);
        return FM_NET_INVALID_ARGUMENT;
    }
    if (!(h->loss == h->loss) || h->loss > 1e30 || h->loss < -1e30) {
        fm_error(FM_ERR_NOT_FINITE, "Push: site %d reports loss %g", k, h->loss);
        return FM_NET_INVALID_ARGUMENT;
    }
    const uint8_t *want = s->cfg.site_trained + (size_t)k * s->cfg.n_blocks;
    if (memcmp(h->trained, want, s->cfg.n_blocks) != 0) {
        fm_error(FM_ERR_INVALID_ARG, "Push: site %d's trained blocks differ from its modality's", k);
        return FM_NET_INVALID_ARGUMENT;
    }
    const fm_fedsrv_hooks *hk = s->cfg.hooks;
    const size_t n_steps = h->n_step_loss + h->n_step_inter + h->n_step_intra;
    if (!hk && n_steps > 0) {
        fm_error(FM_ERR_INVALID_ARG, "Push: site %d sends CreamFL step statistics to a parameter-FL server", k);
        return FM_NET_INVALID_ARGUMENT;
    }
    if (hk && hk->check_header && (rc = hk->check_header(hk->ctx, h)) != FM_NET_OK)
        return rc;
    fm_fedsrv_push *p = calloc(1, sizeof *p);
    float *delta = calloc(s->width ? s->width : 1, sizeof(float));
    float *steps = hk && n_steps > 0 ? malloc(n_steps * sizeof(float)) : NULL;
    if (!p || !delta || (hk && n_steps > 0 && !steps)) {
        free(p);
        free(delta);
        free(steps);
        fm_error(FM_ERR_NO_MEMORY, "Push: out of memory");
        return FM_NET_INTERNAL;
    }
    if (steps) { /* kept until push_end hands them to the hook */
        memcpy(steps, h->step_loss, h->n_step_loss * sizeof(float));
        memcpy(steps + h->n_step_loss, h->step_inter, h->n_step_inter * sizeof(float));
        memcpy(steps + h->n_step_loss + h->n_step_inter, h->step_intra, h->n_step_intra * sizeof(float));
        p->step_values = steps;
        p->steps = (fm_fedsrv_steps){.loss = steps,
                                     .n_loss = h->n_step_loss,
                                     .inter = steps + h->n_step_loss,
                                     .n_inter = h->n_step_inter,
                                     .intra = steps + h->n_step_loss + h->n_step_inter,
                                     .n_intra = h->n_step_intra};
    }
    p->site = k;
    p->round = h->round;
    p->loss = h->loss;
    p->delta = delta;
    fm_tensor_rx_init(&p->rx, delta, s->cfg.blocks, s->cfg.n_blocks, want);
    if (s->scaffold)
        fm_tensor_rx_init(&p->rx_c, delta + s->cfg.n_params, s->cfg.blocks, s->cfg.n_blocks, want);
    *out = p;
    return FM_NET_OK;
}

int fm_fedsrv_push_chunk(fm_fedsrv *s, fm_fedsrv_push *p, const fm_wire_chunk *c)
{
    const int k = p->site;
    int rc = check_run(s, c->run_id);
    if (rc)
        return rc;
    if (fm_fedsrv_done(s) || p->round != s->round) { /* refused now rather than after the whole stream */
        fm_error(FM_ERR_STATE, "stale round %lld: it closed while site %d's push was streaming", (long long)p->round,
                 k);
        return FM_NET_FAILED_PRECONDITION;
    }
    if (c->round != p->round || c->site != k) {
        fm_error(FM_ERR_INVALID_ARG, "Push: a chunk for site %d round %lld inside site %d's push of round %lld",
                 c->site, (long long)c->round, k, (long long)p->round);
        return FM_NET_INVALID_ARGUMENT;
    }
    const fm_wire_payload_kind *kinds = s->cfg.hooks ? s->cfg.hooks->block_kinds : NULL;
    if (kinds) { /* representations: each block's chunks say which modality they are */
        if (c->tensor >= s->cfg.n_blocks || c->kind != kinds[c->tensor]) {
            fm_error(FM_ERR_INVALID_ARG, "Push: site %d sends a chunk of payload %d for block %u (expected %d)", k,
                     (int)c->kind, c->tensor, c->tensor < s->cfg.n_blocks ? (int)kinds[c->tensor] : -1);
            return FM_NET_INVALID_ARGUMENT;
        }
        return fm_tensor_rx_add(&p->rx, c) == FM_OK ? FM_NET_OK : FM_NET_INVALID_ARGUMENT;
    }
    /* the delta's chunks, then (SCAFFOLD only) Δc_i's, each in block order */
    if (c->kind == FM_PAYLOAD_ADAPTERS)
        return fm_tensor_rx_add(&p->rx, c) == FM_OK ? FM_NET_OK : FM_NET_INVALID_ARGUMENT;
    if (c->kind != FM_PAYLOAD_CONTROL_VARIATE || !s->scaffold) {
        fm_error(FM_ERR_INVALID_ARG, "Push: site %d sends a chunk of payload %d; this run's pushes carry %s", k,
                 (int)c->kind, s->scaffold ? "adapters and control variates (SCAFFOLD)" : "adapters only");
        return FM_NET_INVALID_ARGUMENT;
    }
    if (!fm_tensor_rx_complete(&p->rx)) {
        fm_error(FM_ERR_PARSE, "Push: site %d sends its control variate before its whole delta (at block %zu)", k,
                 p->rx.block);
        return FM_NET_INVALID_ARGUMENT;
    }
    return fm_tensor_rx_add(&p->rx_c, c) == FM_OK ? FM_NET_OK : FM_NET_INVALID_ARGUMENT;
}

/* Finishes the open round: adds the parked updates not yet added, in site order (skipping the tasked sites
 * that did not push), applies the rule, logs, writes the state and opens the next round. */
static fm_status close_round(fm_fedsrv *s)
{
    for (int i = s->next_add; i < s->tasked; i++)
        if (s->park[i].has_update)
            FM_TRY(add_parked(s, i));
    s->next_add = s->tasked;
    FM_TRY(fm_strategy_finish_round(s->cfg.strategy, NULL));
    if (s->cfg.hooks && s->cfg.hooks->round_closed) /* representation FL: the round's real work, the next vector */
        FM_TRY(s->cfg.hooks->round_closed(s->cfg.hooks->ctx, s->round));
    double loss = 0.0;
    int n = 0;
    for (int i = 0; i < s->tasked; i++) {
        if (s->pushed[i]) {
            loss += s->losses[i];
            n++;
            s->aggregated[s->chosen[i]] = s->round; /* saved with the round: a site learns it only afterwards */
        }
    }
    fm_fedsrv_round_log *r = &s->history[s->round - 1];
    *r = (fm_fedsrv_round_log){.round = s->round,
                               .loss = n ? loss / n : 0.0,
                               .sites = n,
                               .wall_s = s->wall_before + (fm_now_seconds() - s->t0),
                               .bytes_up = 0.0,
                               .bytes_down = 0.0};
    s->n_history = s->round;
    if (s->cfg.on_round)
        s->cfg.on_round(s->cfg.ctx, r, fm_strategy_global(s->cfg.strategy));
    if (s->cfg.state_dir)
        FM_TRY(save_state(s));
    s->round++;
    if (s->round <= s->cfg.rounds)
        FM_TRY(open_round(s));
    return FM_OK;
}

/* Adds the parked updates that are next in site order; closes the round once sites_per_round pushed. */
static fm_status drain(fm_fedsrv *s)
{
    while (s->next_add < s->tasked && s->park[s->next_add].has_update) {
        FM_TRY(add_parked(s, s->next_add));
        s->next_add++;
    }
    if (s->n_pushed < s->cfg.sites_per_round)
        return FM_OK;
    return close_round(s);
}

fm_status fm_fedsrv_poll(fm_fedsrv *s, double now)
{
    if (s->cfg.round_timeout_s <= 0 || fm_fedsrv_done(s) || s->fatal != FM_OK ||
        now - s->opened_at < s->cfg.round_timeout_s)
        return FM_OK;
    const int need = s->cfg.min_sites > 0 ? s->cfg.min_sites : 1;
    if (s->n_pushed < need) {
        if (!s->short_logged)
            FM_WARN("server: round %d passed its %.1f s deadline with %d of %d pushes; waiting for fl.min_sites = %d",
                    s->round, s->cfg.round_timeout_s, s->n_pushed, s->cfg.sites_per_round, need);
        s->short_logged = 1;
        return FM_OK;
    }
    FM_WARN("server: round %d closed at its %.1f s deadline with %d of %d sites", s->round, s->cfg.round_timeout_s,
            s->n_pushed, s->cfg.sites_per_round);
    fm_status st = close_round(s);
    if (st != FM_OK) {
        s->fatal = st;
        FM_ERROR("server: closing round %d failed: %s", s->round, fm_last_error());
    }
    return st;
}

int fm_fedsrv_push_end(fm_fedsrv *s, fm_fedsrv_push *p, fm_wire_reply *reply)
{
    const int k = p->site;
    if (!fm_tensor_rx_complete(&p->rx)) {
        fm_error(FM_ERR_PARSE, "Push: site %d's stream ended before every trained block arrived (at block %zu)", k,
                 p->rx.block);
        return FM_NET_INVALID_ARGUMENT;
    }
    if (s->scaffold && !fm_tensor_rx_complete(&p->rx_c)) {
        fm_error(FM_ERR_PARSE,
                 "Push: site %d's stream ended before its control variate's change (SCAFFOLD) arrived whole (at block "
                 "%zu)",
                 k, p->rx_c.block);
        return FM_NET_INVALID_ARGUMENT;
    }
    /* calls run concurrently (src/net/rpc.c): while this stream was open the round may have closed (deadline,
     * over-selection), or another stream of the same site may have been accepted */
    int slot = -1;
    int rc = check_round(s, k, p->round, &slot);
    if (rc)
        return rc;
    const fm_fedsrv_hooks *hk = s->cfg.hooks;
    if (hk && hk->accepted && hk->accepted(hk->ctx, s->round, k, p->delta, &p->steps) != FM_OK)
        return FM_NET_INTERNAL; /* the hook kept nothing: the round is as it was */
    s->pushed[slot] = 1;
    s->n_pushed++;
    s->joined[k] = 1; /* a site that pushed must hear DONE before the server leaves */
    s->losses[slot] = p->loss;
    float *delta = p->delta;
    p->delta = NULL;
    fm_status st = FM_OK;
    if (slot == s->next_add) { /* its turn: straight into the strategy, never parked */
        s->park[slot] = (parked){.ram = delta, .has_update = 1};
        s->park_bytes += s->width * sizeof(float);
    } else {
        st = park_update(s, slot, delta);
    }
    if (st == FM_OK)
        st = drain(s);
    if (st != FM_OK) {
        s->fatal = st;
        FM_ERROR("server: aggregation failed: %s", fm_last_error());
        return FM_NET_INTERNAL;
    }
    memset(reply, 0, sizeof *reply);
    snprintf(reply->run_id, sizeof reply->run_id, "%s", s->run_id);
    reply->round = p->round;
    reply->accepted = 1;
    return FM_NET_OK;
}
