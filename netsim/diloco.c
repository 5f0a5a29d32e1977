/*
 * diloco.c: `netsim --diloco EXPERIMENT`, the experiments of DiLoCo cohort sync (issue 8, S7, S8).
 *
 * Each experiment is a list of runs that diloco_train.c trains: `sync` (DiLoCo at several H against
 * synchronous data parallel with the same compute), `compress` (ratio and loss cost, with and
 * without error feedback), `byzantine` (10/30/45 % attackers against the plain mean and each
 * robust aggregator). Each writes EXPERIMENT.csv, EXPERIMENT-curves.csv and EXPERIMENT.svg under
 * --out, prints the goals of the issue and "bench" lines, and with --assert exits 1 when a result
 * points the wrong way. Runs are independent: --jobs N trains N at once in forked processes.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "netsim.h"
#include "neuroshard/compress.h"
#include "neuroshard/data.h"
#include "neuroshard/sync.h"

#define DL_EXIT_FAIL    1
#define DL_EXIT_USAGE   2
#define DL_RUNS_MAX     128
#define DL_JOBS_MAX     64
#define DL_SYNC_H_MAX   4
#define DL_DENSITIES    3
#define DL_ATTACKS_MAX  4
#define DL_SHARES_MAX   3
#define DL_AGGS_MAX     5
#define DL_PATH_SIZE    1024
#define DL_SCALE_ATTACK (-10.0)
#define DL_STEPS_MAX    1000000
#define DL_SYNC_DENSITY 1.0 /* sync and byzantine: int8 + zstd, every entry kept */

static_assert(sizeof(ns_dl_result) <= 4096, "a result crosses a pipe in one atomic write");

/* The goals of issue 8. */
#define GOAL_BYTES_RATIO    1000.0
#define GOAL_LOSS_GAP_PCT   2.0
#define GOAL_COMPRESS_RATIO 100.0
#define GOAL_BYZ_GAP_PCT    5.0

/* An aggregator as the byzantine experiment runs it: the plain mean has no screen. */
typedef struct dl_agg {
    ns_agg_kind kind;
    bool no_screen;
} dl_agg;

typedef struct dl_size {
    ns_dl_model model;
    uint32_t sync_nodes, sync_steps, sync_h[DL_SYNC_H_MAX];
    size_t sync_h_count;
    uint32_t comp_nodes, comp_steps, comp_h;
    uint32_t byz_nodes, byz_steps, byz_h;
    size_t attack_count, share_count, agg_count;
    ns_dl_attack attacks[DL_ATTACKS_MAX];
    double shares[DL_SHARES_MAX];
    dl_agg aggs[DL_AGGS_MAX];
} dl_size;

/* Full size: about eight minutes for all three with --jobs 2 on two idle cores. */
static const dl_size size_full = {
    .model = {.layers = 2,
              .hidden = 64,
              .vocab = 512,
              .seq_len = 32,
              .batch = 8,
              .val_batches = 32,
              .warm_steps = 1000},
    .sync_nodes = 4,
    .sync_steps = 1000,
    .sync_h = {1, 50, 100, 500},
    .sync_h_count = 4,
    .comp_nodes = 4,
    .comp_steps = 500,
    .comp_h = 50,
    .byz_nodes = 11,
    .byz_steps = 100,
    .byz_h = 10,
    .attack_count = 4,
    .attacks = {NS_DL_ATTACK_SIGNFLIP, NS_DL_ATTACK_SCALE, NS_DL_ATTACK_NOISE, NS_DL_ATTACK_ALIE},
    .share_count = 3,
    .shares = {0.10, 0.30, 0.45},
    .agg_count = 5,
    .aggs = {{NS_AGG_MEAN, true},
             {NS_AGG_TRIMMED_MEAN, false},
             {NS_AGG_MEDIAN, false},
             {NS_AGG_KRUM, false},
             {NS_AGG_BULYAN, false}},
};

/* --small: seconds an experiment, for make test; byzantine runs only what --assert checks. */
static const dl_size size_small = {
    .model = {.layers = 1,
              .hidden = 64,
              .vocab = 320,
              .seq_len = 32,
              .batch = 4,
              .val_batches = 8,
              .warm_steps = 200},
    .sync_nodes = 4,
    .sync_steps = 60,
    .sync_h = {1, 10, 30, 60},
    .sync_h_count = 4,
    .comp_nodes = 4,
    .comp_steps = 60,
    .comp_h = 10,
    .byz_nodes = 11,
    .byz_steps = 40,
    .byz_h = 10,
    .attack_count = 2,
    .attacks = {NS_DL_ATTACK_SIGNFLIP, NS_DL_ATTACK_SCALE},
    .share_count = 1,
    .shares = {0.30},
    .agg_count = 2,
    .aggs = {{NS_AGG_MEAN, true}, {NS_AGG_TRIMMED_MEAN, false}},
};

static const double densities[DL_DENSITIES] = {0.1, 0.01, 0.001};

typedef struct dl_opts {
    const char *experiment;
    const char *out_dir;
    const char *text_dir;
    bool small, check, quiet;
    uint64_t seed;
    uint32_t jobs;
    uint32_t steps;            /* --steps: inner steps of every run (0: the size's) */
    uint32_t h[DL_SYNC_H_MAX]; /* --h: sync's H values (h_count 0: the size's) */
    size_t h_count;
} dl_opts;

/* An experiment's runs and results, and where the gap of each run is measured from. */
typedef struct dl_exp {
    const char *name;
    ns_dl_run runs[DL_RUNS_MAX];
    ns_dl_result res[DL_RUNS_MAX];
    int reference[DL_RUNS_MAX]; /* run whose loss the gap compares to; -1: none */
    size_t count;
    double dp_bytes; /* sync: bytes of the data-parallel run */
    bool failed;     /* a run did not finish */
} dl_exp;

static const char *attack_name(ns_dl_attack a)
{
    switch (a) {
    case NS_DL_ATTACK_NONE:
        return "none";
    case NS_DL_ATTACK_SIGNFLIP:
        return "signflip";
    case NS_DL_ATTACK_SCALE:
        return "scale-10";
    case NS_DL_ATTACK_NOISE:
        return "noise";
    case NS_DL_ATTACK_ALIE:
        return "alie";
    }
    return "?";
}

static double gap_pct(const dl_exp *e, size_t i)
{
    if (e->reference[i] < 0)
        return NAN;
    double ref = e->res[e->reference[i]].val_loss;
    return 100.0 * (e->res[i].val_loss - ref) / ref;
}

/* ---- running the runs, in forked workers when --jobs > 1 ------------------------------------- */

static double wall_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void progress(const dl_opts *o, const dl_exp *e, size_t i, size_t done)
{
    if (o->quiet)
        return;
    const ns_dl_result *r = &e->res[i];
    if (r->rc != NS_OK)
        fprintf(stderr, "diloco: [%zu/%zu] %s/%s: failed: %s (seed %llu)\n", done, e->count,
                e->name, e->runs[i].label, ns_strerror(r->rc), (unsigned long long)o->seed);
    else
        fprintf(stderr, "diloco: [%zu/%zu] %s/%s: val loss %.4f, %.3g bytes a node, %.1f s\n", done,
                e->count, e->name, e->runs[i].label, r->val_loss, r->bytes_per_node, r->wall_s);
}

static void run_one(const ns_dl_world *w, const ns_dl_run *run, ns_dl_result *res)
{
    if (ns__dl_run(w, run, res) != NS_OK)
        NS_ASSERT(res->rc != NS_OK); /* the status is in the result too */
}

typedef struct dl_worker {
    pid_t pid;
    int fd;
    size_t index;
} dl_worker;

static int worker_start(const ns_dl_world *w, dl_exp *e, size_t i, dl_worker *wk)
{
    int fds[2];
    if (pipe(fds) != 0)
        return NS_EIO;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return NS_EIO;
    }
    if (pid == 0) {
        close(fds[0]);
        ns_dl_result res;
        run_one(w, &e->runs[i], &res);
        ssize_t put = write(fds[1], &res, sizeof res);
        _exit(put == (ssize_t)sizeof res ? 0 : 1);
    }
    close(fds[1]);
    *wk = (dl_worker){.pid = pid, .fd = fds[0], .index = i};
    return NS_OK;
}

/* Waits for one worker, reads its result into e; returns the run's index. */
static size_t worker_reap(dl_exp *e, dl_worker *pool, size_t *active)
{
    int status;
    pid_t pid;
    do {
        pid = waitpid(-1, &status, 0);
    } while (pid < 0 && errno == EINTR);
    NS_ASSERT(pid > 0);
    size_t k = 0;
    while (k < *active && pool[k].pid != pid)
        k++;
    NS_ASSERT(k < *active);
    ns_dl_result *res = &e->res[pool[k].index];
    ssize_t got = read(pool[k].fd, res, sizeof *res);
    if (got != (ssize_t)sizeof *res || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        memset(res, 0, sizeof *res);
        res->rc = NS_EIO;
    }
    close(pool[k].fd);
    size_t index = pool[k].index;
    pool[k] = pool[--*active];
    return index;
}

static void run_all(const dl_opts *o, const ns_dl_world *w, dl_exp *e)
{
    size_t done = 0;
    if (o->jobs <= 1) {
        for (size_t i = 0; i < e->count; i++) {
            run_one(w, &e->runs[i], &e->res[i]);
            progress(o, e, i, ++done);
        }
    } else {
        dl_worker pool[DL_JOBS_MAX];
        size_t active = 0, next = 0;
        while (done < e->count) {
            while (active < o->jobs && next < e->count) {
                if (worker_start(w, e, next, &pool[active]) != NS_OK) {
                    run_one(w, &e->runs[next], &e->res[next]); /* no fork: here, in turn */
                    progress(o, e, next, ++done);
                } else {
                    active++;
                }
                next++;
            }
            if (active > 0) {
                size_t i = worker_reap(e, pool, &active);
                progress(o, e, i, ++done);
            }
        }
    }
    for (size_t i = 0; i < e->count; i++)
        e->failed |= e->res[i].rc != NS_OK;
}

/* ---- building the experiments ---------------------------------------------------------------- */

static const char *agg_label(const dl_agg *a)
{
    return a->no_screen ? "plain-mean" : ns_agg_name(a->kind);
}

static ns_dl_run *add_run(dl_exp *e, const char *label, ns_dl_method method, uint32_t nodes,
                          uint32_t steps)
{
    NS_ASSERT(e->count < DL_RUNS_MAX);
    ns_dl_run *r = &e->runs[e->count];
    e->reference[e->count] = e->count == 0 ? -1 : 0; /* the first run is the reference */
    e->count++;
    ns_agg_config agg;
    ns_agg_config_default(&agg);
    *r = (ns_dl_run){.method = method,
                     .nodes = nodes,
                     .steps = steps,
                     .h = 1,
                     .wire = NS_DL_WIRE_COHORT,
                     .density = DL_SYNC_DENSITY,
                     .error_feedback = true,
                     .agg = agg.kind,
                     .scale = DL_SCALE_ATTACK};
    snprintf(r->label, sizeof r->label, "%s", label);
    return r;
}

/* Data parallel; DiLoCo at each H, int8 + zstd; and at the largest H with the default top-k. */
static void build_sync(dl_exp *e, const dl_size *z)
{
    e->name = "sync";
    (void)add_run(e, "dp", NS_DL_DP, z->sync_nodes, z->sync_steps);
    char label[NS_DL_LABEL_SIZE];
    for (size_t i = 0; i < z->sync_h_count; i++) {
        snprintf(label, sizeof label, "diloco-h%u", z->sync_h[i]);
        ns_dl_run *r = add_run(e, label, NS_DL_DILOCO, z->sync_nodes, z->sync_steps);
        r->h = z->sync_h[i];
    }
    snprintf(label, sizeof label, "diloco-h%u-topk", z->sync_h[z->sync_h_count - 1]);
    ns_dl_run *r = add_run(e, label, NS_DL_DILOCO, z->sync_nodes, z->sync_steps);
    r->h = z->sync_h[z->sync_h_count - 1];
    r->density = NS_COMPRESS_DENSITY;
}

/* Uncompressed float32, int8 only, then each top-k density with and without error feedback. */
static void build_compress(dl_exp *e, const dl_size *z)
{
    e->name = "compress";
    ns_dl_run *r = add_run(e, "raw-float32", NS_DL_DILOCO, z->comp_nodes, z->comp_steps);
    r->h = z->comp_h;
    r->wire = NS_DL_WIRE_RAW;
    r = add_run(e, "int8-only", NS_DL_DILOCO, z->comp_nodes, z->comp_steps);
    r->h = z->comp_h;
    for (size_t d = 0; d < DL_DENSITIES; d++) {
        for (int ef = 1; ef >= 0; ef--) {
            char label[NS_DL_LABEL_SIZE];
            snprintf(label, sizeof label, "d%g-%s", densities[d], ef ? "ef" : "no-ef");
            r = add_run(e, label, NS_DL_DILOCO, z->comp_nodes, z->comp_steps);
            r->h = z->comp_h;
            r->density = densities[d];
            r->error_feedback = ef != 0;
        }
    }
}

/* Where the runs of compress sit: 0 raw, 1 int8, then (EF, no EF) a density. */
static size_t comp_index(size_t density, bool ef)
{
    return 2 + 2 * density + (ef ? 0 : 1);
}

static uint32_t attackers_for(uint32_t nodes, double share)
{
    return (uint32_t)lround(share * nodes);
}

static void set_agg(ns_dl_run *r, const dl_agg *a)
{
    r->agg = a->kind;
    r->no_screen = a->no_screen;
}

/* The clean run of each aggregator first (the plain mean's is everyone's reference), then every
 * attack, share and aggregator. */
static void build_byzantine(dl_exp *e, const dl_size *z)
{
    e->name = "byzantine";
    char label[NS_DL_LABEL_SIZE];
    for (size_t g = 0; g < z->agg_count; g++) {
        snprintf(label, sizeof label, "clean/%s", agg_label(&z->aggs[g]));
        ns_dl_run *r = add_run(e, label, NS_DL_DILOCO, z->byz_nodes, z->byz_steps);
        r->h = z->byz_h;
        set_agg(r, &z->aggs[g]);
    }
    for (size_t a = 0; a < z->attack_count; a++) {
        for (size_t s = 0; s < z->share_count; s++) {
            for (size_t g = 0; g < z->agg_count; g++) {
                uint32_t bad = attackers_for(z->byz_nodes, z->shares[s]);
                snprintf(label, sizeof label, "%s/%u/%s", attack_name(z->attacks[a]), bad,
                         agg_label(&z->aggs[g]));
                ns_dl_run *r = add_run(e, label, NS_DL_DILOCO, z->byz_nodes, z->byz_steps);
                r->h = z->byz_h;
                set_agg(r, &z->aggs[g]);
                r->attack = z->attacks[a];
                r->attackers = bad;
            }
        }
    }
}

static size_t byz_index(const dl_size *z, size_t a, size_t s, size_t g)
{
    return z->agg_count + (a * z->share_count + s) * z->agg_count + g;
}

/* ---- CSV ------------------------------------------------------------------------------------- */

static double share_of(uint64_t part, uint64_t whole)
{
    return whole > 0 ? (double)part / (double)whole : 0.0;
}

static const char *wire_name(const ns_dl_run *r)
{
    if (r->method == NS_DL_DP)
        return "ring-float32";
    return r->wire == NS_DL_WIRE_RAW ? "raw-float32" : "cohort";
}

static void csv_row(FILE *f, const dl_exp *e, size_t i)
{
    const ns_dl_run *r = &e->runs[i];
    const ns_dl_result *s = &e->res[i];
    bool cohort = r->method == NS_DL_DILOCO && r->wire == NS_DL_WIRE_COHORT;
    fprintf(f, "%s,%s,%s,%u,%u,%s,%s,%d,%u,%u,%s,%g,%d,%u,%.0f,%.0f,", e->name, r->label,
            r->method == NS_DL_DP ? "dp" : "diloco", r->nodes, r->attackers, attack_name(r->attack),
            ns_agg_name(r->agg), !r->no_screen, r->steps, r->method == NS_DL_DP ? 1 : r->h,
            wire_name(r), cohort ? r->density : 1.0, r->error_feedback && cohort, s->rounds,
            s->bytes_per_node, s->bytes_max);
    fprintf(f, "%.2f,%.1f,%.5f,%s,%.3f,", e->dp_bytes > 0 ? e->dp_bytes / s->bytes_per_node : 0,
            s->blob_ratio, s->val_loss, e->reference[i] >= 0 ? e->runs[e->reference[i]].label : "",
            e->reference[i] >= 0 ? gap_pct(e, i) : 0.0);
    fprintf(
        f, "%u,%.4f,%.4f,%.4f,%.4f,%u,%u,%llu,%llu,%.2f,%d\n", s->attackers_caught,
        share_of(s->fraud_attacker, s->parts_attacker), share_of(s->fraud_honest, s->parts_honest),
        share_of(s->rejected_attacker, s->parts_attacker),
        share_of(s->rejected_honest, s->parts_honest), s->diverged, s->report_mismatch,
        (unsigned long long)s->refusals, (unsigned long long)s->missing_chunks, s->wall_s, s->rc);
}

static int write_csv(const dl_opts *o, const dl_exp *e)
{
    char path[DL_PATH_SIZE];
    snprintf(path, sizeof path, "%s/%s.csv", o->out_dir, e->name);
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return NS_EIO;
    fputs("experiment,run,method,nodes,attackers,attack,aggregator,screen,steps,h,wire,density,"
          "error_feedback,rounds,bytes_per_node,bytes_max,bytes_ratio_dp,blob_ratio,val_loss,"
          "reference,loss_gap_pct,attackers_caught,fraud_attacker_share,fraud_honest_share,"
          "rejected_attacker_share,rejected_honest_share,diverged,report_mismatch,refusals,"
          "missing_chunks,wall_s,rc\n",
          f);
    for (size_t i = 0; i < e->count; i++)
        csv_row(f, e, i);
    int rc = fclose(f) == 0 ? NS_OK : NS_EIO;
    snprintf(path, sizeof path, "%s/%s-curves.csv", o->out_dir, e->name);
    f = rc == NS_OK ? fopen(path, "w") : NULL;
    if (f == NULL)
        return NS_EIO;
    fputs("run,step,train_loss\n", f);
    for (size_t i = 0; i < e->count; i++) {
        for (uint32_t k = 0; k < e->res[i].curve_count; k++)
            fprintf(f, "%s,%.0f,%.5f\n", e->runs[i].label, e->res[i].curve_step[k],
                    e->res[i].curve_loss[k]);
    }
    return fclose(f) == 0 ? NS_OK : NS_EIO;
}

/* ---- figures --------------------------------------------------------------------------------- */

#define FIG_W 520
#define FIG_H 380

static FILE *svg_open(const dl_opts *o, const dl_exp *e)
{
    char path[DL_PATH_SIZE];
    snprintf(path, sizeof path, "%s/%s.svg", o->out_dir, e->name);
    return fopen(path, "w");
}

/* Loss curves of runs [first, first + count) into the left panel. */
static void curve_panel(FILE *f, const dl_exp *e, size_t first, size_t count, const char *title)
{
    ns_plot_series s[DL_RUNS_MAX];
    for (size_t i = 0; i < count; i++)
        s[i] = (ns_plot_series){.name = e->runs[first + i].label,
                                .x = e->res[first + i].curve_step,
                                .y = e->res[first + i].curve_loss,
                                .n = e->res[first + i].curve_count};
    ns_plot_box box = {.w = FIG_W,
                       .h = FIG_H,
                       .title = title,
                       .x_label = "inner step (each node)",
                       .y_label = "training loss (mean of the nodes)"};
    ns__plot_lines(f, &box, s, count);
}

static int plot_sync(const dl_opts *o, const dl_exp *e)
{
    FILE *f = svg_open(o, e);
    if (f == NULL)
        return NS_EIO;
    ns__plot_begin(f, 2 * FIG_W, FIG_H);
    curve_panel(f, e, 0, e->count, "training loss: data parallel vs DiLoCo");
    const char *groups[DL_RUNS_MAX];
    double bytes[DL_RUNS_MAX];
    for (size_t i = 0; i < e->count; i++) {
        groups[i] = e->runs[i].label + (e->runs[i].method == NS_DL_DILOCO ? 7 : 0);
        bytes[i] = e->res[i].bytes_per_node;
    }
    const char *bars[] = {"bytes sent per node"};
    ns_plot_box box = {.x = FIG_W,
                       .w = FIG_W,
                       .h = FIG_H,
                       .title = "bytes sent per node over the run (log scale)",
                       .x_label = "run (DiLoCo: H)",
                       .y_label = "bytes",
                       .log_y = true};
    ns__plot_bars(f, &box, groups, e->count, bars, 1, bytes);
    ns__plot_end(f);
    return fclose(f) == 0 ? NS_OK : NS_EIO;
}

static int plot_compress(const dl_opts *o, const dl_exp *e)
{
    FILE *f = svg_open(o, e);
    if (f == NULL)
        return NS_EIO;
    ns__plot_begin(f, 2 * FIG_W, FIG_H);
    curve_panel(f, e, 0, e->count, "training loss by compression");
    const char *groups[DL_DENSITIES] = {"top-k 0.1", "top-k 0.01", "top-k 0.001"};
    const char *bars[] = {"error feedback", "no error feedback"};
    double gaps[DL_DENSITIES * 2];
    for (size_t d = 0; d < DL_DENSITIES; d++) {
        gaps[2 * d] = gap_pct(e, comp_index(d, true));
        gaps[2 * d + 1] = gap_pct(e, comp_index(d, false));
    }
    ns_plot_box box = {.x = FIG_W,
                       .w = FIG_W,
                       .h = FIG_H,
                       .title = "final validation loss vs uncompressed float32, %",
                       .x_label = "density kept (int8 values, zstd)",
                       .y_label = "loss gap, %"};
    ns__plot_bars(f, &box, groups, DL_DENSITIES, bars, 2, gaps);
    ns__plot_end(f);
    return fclose(f) == 0 ? NS_OK : NS_EIO;
}

static int plot_byzantine(const dl_opts *o, const dl_exp *e, const dl_size *z)
{
    FILE *f = svg_open(o, e);
    if (f == NULL)
        return NS_EIO;
    const double panel_h = 300;
    ns__plot_begin(f, 2 * FIG_W, panel_h * (double)z->share_count);
    const char *groups[DL_ATTACKS_MAX], *bars[DL_AGGS_MAX];
    for (size_t a = 0; a < z->attack_count; a++)
        groups[a] = attack_name(z->attacks[a]);
    for (size_t g = 0; g < z->agg_count; g++)
        bars[g] = agg_label(&z->aggs[g]);
    for (size_t s = 0; s < z->share_count; s++) {
        double gaps[DL_ATTACKS_MAX * DL_AGGS_MAX];
        for (size_t a = 0; a < z->attack_count; a++) {
            for (size_t g = 0; g < z->agg_count; g++)
                gaps[a * z->agg_count + g] = gap_pct(e, byz_index(z, a, s, g));
        }
        char title[160];
        uint32_t bad = attackers_for(z->byz_nodes, z->shares[s]);
        snprintf(title, sizeof title,
                 "%u of %u nodes attack (%.0f %%): loss vs the clean plain mean, %% (cut at 50)",
                 bad, z->byz_nodes, 100.0 * bad / z->byz_nodes);
        ns_plot_box box = {.y = panel_h * (double)s,
                           .w = 2 * FIG_W,
                           .h = panel_h,
                           .title = title,
                           .x_label = "attack",
                           .y_label = "loss gap, %",
                           .y_clip = 50};
        ns__plot_bars(f, &box, groups, z->attack_count, bars, z->agg_count, gaps);
    }
    ns__plot_end(f);
    return fclose(f) == 0 ? NS_OK : NS_EIO;
}

/* ---- summaries, goals and asserts ------------------------------------------------------------ */

static bool expect(bool ok, const char *what)
{
    printf("  assert %-72s %s\n", what, ok ? "ok" : "FAILED");
    return ok;
}

static const char *met(bool ok)
{
    return ok ? "met" : "NOT met";
}

static void summary_sync(const dl_exp *e, const dl_size *z, const ns_dl_world *w)
{
    printf("sync: %u nodes, %u inner steps each, %zu parameters; DiLoCo Δ int8 + zstd (the -topk "
           "run: top-k %g too), error feedback, %s; outer Nesterov lr %g, momentum %g\n",
           z->sync_nodes, z->sync_steps, ns__dl_world_params(w), NS_COMPRESS_DENSITY,
           ns_agg_name(e->runs[1].agg), NS_SYNC_LR, NS_SYNC_BETA);
    printf("  %-18s %6s %14s %10s %9s %8s %11s %7s\n", "run", "rounds", "bytes/node", "DP/run",
           "val loss", "gap %", "false fraud", "wall s");
    for (size_t i = 0; i < e->count; i++) {
        const ns_dl_result *s = &e->res[i];
        printf("  %-18s %6u %14.0f %10.1f %9.4f %8.2f %10.2f%% %7.1f\n", e->runs[i].label,
               s->rounds, s->bytes_per_node, e->dp_bytes / s->bytes_per_node, s->val_loss,
               i == 0 ? 0.0 : gap_pct(e, i), 100 * share_of(s->fraud_honest, s->parts_honest),
               s->wall_s);
    }
    size_t last = z->sync_h_count; /* the last H, int8 */
    uint32_t h = e->runs[last].h;
    double ratio = e->dp_bytes / e->res[last].bytes_per_node, gap = gap_pct(e, last);
    double ratio_k = e->dp_bytes / e->res[last + 1].bytes_per_node, gap_k = gap_pct(e, last + 1);
    printf("  goal H=%u: >= %.0fx fewer bytes than DP and loss within %.0f %%: int8 %.0fx (%s), "
           "%+.2f %% (%s); top-k %.0fx (%s), %+.2f %% (%s)\n",
           h, GOAL_BYTES_RATIO, GOAL_LOSS_GAP_PCT, ratio, met(ratio >= GOAL_BYTES_RATIO), gap,
           met(gap <= GOAL_LOSS_GAP_PCT), ratio_k, met(ratio_k >= GOAL_BYTES_RATIO), gap_k,
           met(gap_k <= GOAL_LOSS_GAP_PCT));
    printf("bench diloco_sync_h%u bytes_ratio=%.0f goal=%.0f ratio=%.2f\n", h, ratio,
           GOAL_BYTES_RATIO, ratio / GOAL_BYTES_RATIO);
    printf("bench diloco_sync_h%u loss_gap_pct=%.2f goal_pct=%.1f met=%s ratio=-\n", h, gap,
           GOAL_LOSS_GAP_PCT, gap <= GOAL_LOSS_GAP_PCT ? "yes" : "no");
    printf("bench diloco_sync_h%u_topk bytes_ratio=%.0f loss_gap_pct=%.2f ratio=-\n", h, ratio_k,
           gap_k);
}

static bool assert_sync(const dl_exp *e, const dl_size *z, const ns_dl_world *w)
{
    bool ok = true;
    size_t last = z->sync_h_count;
    ok &= expect(e->dp_bytes >= 100 * e->res[last].bytes_per_node,
                 "DiLoCo at the largest H sends >= 100x fewer bytes than data parallel");
    bool falling = true, same = true, learned = true;
    double start = ns__dl_world_warm_loss(w);
    start = isnan(start) ? e->res[0].curve_loss[0] : start;
    for (size_t i = 1; i < e->count; i++) {
        falling &= i == 1 || i > last || e->res[i].bytes_per_node < e->res[i - 1].bytes_per_node;
        same &= e->res[i].diverged == 0;
    }
    for (size_t i = 0; i <= last; i++)
        learned &= e->res[i].val_loss < start;
    ok &= expect(falling, "DiLoCo's bytes fall as H grows");
    ok &= expect(same, "every DiLoCo node ends with the same weights");
    ok &= expect(learned, "data parallel and DiLoCo (int8) end below the starting loss");
    return ok;
}

static void summary_compress(const dl_exp *e, const dl_size *z)
{
    printf("compress: %u nodes, DiLoCo H=%u, %u inner steps; gap vs uncompressed float32; blob "
           "ratio: 4n bytes over the blob of one whole Δ\n",
           z->comp_nodes, z->comp_h, z->comp_steps);
    printf("  %-14s %14s %11s %9s %8s\n", "run", "bytes/node", "blob ratio", "val loss", "gap %");
    for (size_t i = 0; i < e->count; i++)
        printf("  %-14s %14.0f %11.1f %9.4f %8.2f\n", e->runs[i].label, e->res[i].bytes_per_node,
               e->res[i].blob_ratio, e->res[i].val_loss, i == 0 ? 0.0 : gap_pct(e, i));
    size_t ef = comp_index(1, true), no_ef = comp_index(1, false); /* density 0.01 */
    double ratio = e->res[ef].blob_ratio;
    printf("  goal: ratio >= %.0fx at density %g: %.0fx (%s); its loss cost %+.2f %% with error "
           "feedback, %+.2f %% without\n",
           GOAL_COMPRESS_RATIO, densities[1], ratio, met(ratio >= GOAL_COMPRESS_RATIO),
           gap_pct(e, ef), gap_pct(e, no_ef));
    printf("bench diloco_compress blob_ratio=%.0f goal=%.0f ratio=%.2f\n", ratio,
           GOAL_COMPRESS_RATIO, ratio / GOAL_COMPRESS_RATIO);
    printf("bench diloco_compress loss_gap_ef_pct=%.2f loss_gap_no_ef_pct=%.2f ratio=-\n",
           gap_pct(e, ef), gap_pct(e, no_ef));
}

static bool assert_compress(const dl_exp *e)
{
    bool ok = true;
    size_t ef = comp_index(1, true), no_ef = comp_index(1, false);
    ok &= expect(e->res[ef].blob_ratio >= GOAL_COMPRESS_RATIO,
                 "a Δ at density 0.01 compresses >= 100x against 4n bytes");
    ok &= expect(e->res[1].blob_ratio < e->res[comp_index(0, true)].blob_ratio &&
                     e->res[comp_index(0, true)].blob_ratio < e->res[ef].blob_ratio &&
                     e->res[ef].blob_ratio < e->res[comp_index(2, true)].blob_ratio,
                 "the ratio grows as the density falls");
    ok &= expect(e->res[ef].val_loss <= e->res[no_ef].val_loss,
                 "with error feedback the loss is no worse than without (density 0.01)");
    return ok;
}

static void byz_row(const dl_exp *e, const dl_size *z, size_t a, size_t s)
{
    char row[64];
    const ns_dl_run *first = &e->runs[byz_index(z, a, s, 0)];
    snprintf(row, sizeof row, "%s, %u attackers", attack_name(first->attack), first->attackers);
    printf("  %-22s", row);
    uint64_t fraud = 0, parts = 0, fraud_h = 0, parts_h = 0;
    uint32_t caught = 0, screened = 0;
    for (size_t g = 0; g < z->agg_count; g++) {
        const ns_dl_result *t = &e->res[byz_index(z, a, s, g)];
        printf(" %12.2f", gap_pct(e, byz_index(z, a, s, g)));
        if (z->aggs[g].no_screen)
            continue;
        screened++;
        caught += t->attackers_caught;
        fraud += t->fraud_attacker;
        parts += t->parts_attacker;
        fraud_h += t->fraud_honest;
        parts_h += t->parts_honest;
    }
    printf("  %6.0f%% %8.0f%% %7.2f%%\n",
           100 * share_of(caught, (uint64_t)screened * first->attackers),
           100 * share_of(fraud, parts), 100 * share_of(fraud_h, parts_h));
}

static void summary_byzantine(const dl_exp *e, const dl_size *z)
{
    printf("byzantine: %u nodes, DiLoCo H=%u, %u inner steps, Δ int8 + zstd; attackers send a "
           "poisoned Δ; gap: loss vs the clean run of the plain mean (no attackers, no screen); "
           "over the screened aggregators' runs: caught = attackers with a FRAUD verdict, fraud = "
           "share of attackers' parts judged FRAUD, false = share of honest parts judged FRAUD\n",
           z->byz_nodes, z->byz_h, z->byz_steps);
    printf("  %-22s", "loss gap %");
    for (size_t g = 0; g < z->agg_count; g++)
        printf(" %12s", agg_label(&z->aggs[g]));
    printf("  %7s %9s %8s\n", "caught", "fraud", "false");
    printf("  %-22s", "clean (no attackers)");
    for (size_t g = 0; g < z->agg_count; g++)
        printf(" %12.2f", g == 0 ? 0.0 : gap_pct(e, g));
    printf("   (plain mean's val loss %.4f)\n", e->res[0].val_loss);
    for (size_t a = 0; a < z->attack_count; a++) {
        for (size_t s = 0; s < z->share_count; s++)
            byz_row(e, z, a, s);
    }
    double worst = -INFINITY;
    uint64_t caught = 0, total = 0;
    for (size_t a = 0; a < z->attack_count; a++) {
        for (size_t s = 0; s < z->share_count; s++) {
            size_t i = byz_index(z, a, s, 1); /* trimmed-mean, the default */
            caught += e->res[i].attackers_caught;
            total += e->runs[i].attackers;
            if (z->shares[s] <= 0.30 + 1e-9)
                worst = fmax(worst, gap_pct(e, i));
        }
    }
    printf("  goal: trimmed-mean's gap <= %.0f %% up to 30 %% attackers: worst %+.2f %% (%s); "
           "attackers with a fraud verdict (trimmed-mean runs): %llu of %llu\n",
           GOAL_BYZ_GAP_PCT, worst, met(worst <= GOAL_BYZ_GAP_PCT), (unsigned long long)caught,
           (unsigned long long)total);
    printf("bench diloco_byzantine worst_gap_pct_30=%.2f goal_pct=%.0f met=%s ratio=-\n", worst,
           GOAL_BYZ_GAP_PCT, worst <= GOAL_BYZ_GAP_PCT ? "yes" : "no");
    printf("bench diloco_byzantine attackers_caught=%llu attackers=%llu share=%.2f ratio=-\n",
           (unsigned long long)caught, (unsigned long long)total,
           total > 0 ? (double)caught / (double)total : 0);
}

/* The share closest to 30 %, and the runs of one attack there. */
static bool assert_byzantine(const dl_exp *e, const dl_size *z)
{
    size_t s30 = 0;
    for (size_t s = 1; s < z->share_count; s++) {
        if (fabs(z->shares[s] - 0.30) < fabs(z->shares[s30] - 0.30))
            s30 = s;
    }
    bool ok = true;
    for (size_t a = 0; a < z->attack_count; a++) {
        if (z->attacks[a] != NS_DL_ATTACK_SIGNFLIP && z->attacks[a] != NS_DL_ATTACK_SCALE)
            continue;
        char what[96];
        snprintf(what, sizeof what, "under ~30 %% %s attackers trimmed-mean beats the plain mean",
                 attack_name(z->attacks[a]));
        ok &= expect(e->res[byz_index(z, a, s30, 1)].val_loss <
                         e->res[byz_index(z, a, s30, 0)].val_loss,
                     what);
    }
    return ok;
}

/* ---- one experiment -------------------------------------------------------------------------- */

static int write_outputs(const dl_opts *o, const dl_exp *e, const dl_size *z)
{
    int rc = write_csv(o, e);
    if (rc == NS_OK && strcmp(e->name, "sync") == 0)
        rc = plot_sync(o, e);
    else if (rc == NS_OK && strcmp(e->name, "compress") == 0)
        rc = plot_compress(o, e);
    else if (rc == NS_OK)
        rc = plot_byzantine(o, e, z);
    if (rc != NS_OK)
        fprintf(stderr, "netsim: cannot write %s/%s.*\n", o->out_dir, e->name);
    return rc;
}

static int experiment(const dl_opts *o, const ns_dl_world *w, const dl_size *z, const char *name)
{
    dl_exp *e = calloc(1, sizeof *e);
    if (e == NULL)
        return DL_EXIT_FAIL;
    if (strcmp(name, "sync") == 0)
        build_sync(e, z);
    else if (strcmp(name, "compress") == 0)
        build_compress(e, z);
    else
        build_byzantine(e, z);
    double t0 = wall_now_s();
    run_all(o, w, e);
    for (size_t i = 0; i < e->count; i++) {
        if (e->res[i].rc != NS_OK)
            fprintf(stderr, "netsim: diloco %s/%s failed: %s (seed %llu)\n", e->name,
                    e->runs[i].label, ns_strerror(e->res[i].rc), (unsigned long long)o->seed);
    }
    bool ok = !e->failed;
    if (ok && e->runs[0].method == NS_DL_DP)
        e->dp_bytes = e->res[0].bytes_per_node;
    ok = ok && write_outputs(o, e, z) == NS_OK;
    if (ok && strcmp(name, "sync") == 0) {
        summary_sync(e, z, w);
        ok = !o->check || assert_sync(e, z, w);
    } else if (ok && strcmp(name, "compress") == 0) {
        summary_compress(e, z);
        ok = !o->check || assert_compress(e);
    } else if (ok) {
        summary_byzantine(e, z);
        ok = !o->check || assert_byzantine(e, z);
    }
    printf("  %s: %zu runs, %.1f s wall; %s/%s.csv, %s-curves.csv, %s.svg\n", e->name, e->count,
           wall_now_s() - t0, o->out_dir, e->name, e->name, e->name);
    fflush(stdout);
    if (!ok)
        fprintf(stderr,
                "netsim: diloco %s failed (seed %llu; replay: netsim --diloco %s%s "
                "--seed %llu)\n",
                e->name, (unsigned long long)o->seed, e->name, o->small ? " --small" : "",
                (unsigned long long)o->seed);
    free(e);
    return ok ? 0 : DL_EXIT_FAIL;
}

/* ---- options --------------------------------------------------------------------------------- */

static void usage(FILE *out)
{
    fprintf(out,
            "usage: netsim --diloco EXPERIMENT [--out DIR] [--small] [--assert] [--seed N]\n"
            "                                  [--text DIR] [--jobs N] [--steps N] [--h LIST] "
            "[--quiet]\n"
            "\n"
            "Real training of a small NeuroLLM by simulated nodes in one process, with the sync\n"
            "cores (outer step, cohort exchange, compression, robust aggregation).\n"
            "\n"
            "  EXPERIMENT    sync      DiLoCo H in {1, 50, 100, 500} vs synchronous data "
            "parallel\n"
            "                compress  compression ratio and loss, with and without error "
            "feedback\n"
            "                byzantine 10/30/45 %% attackers vs the mean and robust aggregators\n"
            "                all       the three\n"
            "  --out DIR     where EXPERIMENT.csv, EXPERIMENT-curves.csv and EXPERIMENT.svg go\n"
            "                (default docs/experiments)\n"
            "  --small       small sizes (seconds; make test)\n"
            "  --assert      exit 1 unless the results point the expected way\n"
            "  --seed N      weights, data order, attackers' noise (default 1)\n"
            "  --text DIR    train on the *.txt files of DIR instead of the Genesis data\n"
            "  --jobs N      train N runs at once in forked workers (results do not change)\n"
            "  --steps N     inner steps of every run (a multiple of every H)\n"
            "  --h LIST      sync's H values, rising, e.g. 50,100,500 (the last also runs top-k)\n"
            "  --quiet       no progress lines on stderr\n"
            "\n"
            "Exit status: 0 ok, 1 a run failed or an assertion did not hold, 2 bad usage.\n"
            "See docs/experiments.md for the method and the measured results.\n");
}

/* "1,50,100,500": rising H values, at most DL_SYNC_H_MAX. */
static int parse_h_list(const char *text, dl_opts *o)
{
    char buf[128];
    if (strlen(text) >= sizeof buf)
        return NS_EINVAL;
    strcpy(buf, text);
    o->h_count = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok != NULL;
         tok = strtok_r(NULL, ",", &save)) {
        uint64_t v;
        if (o->h_count == DL_SYNC_H_MAX || ns__parse_u64(tok, &v) != NS_OK || v < 1 ||
            v > DL_STEPS_MAX || (o->h_count > 0 && v <= o->h[o->h_count - 1]))
            return NS_EINVAL;
        o->h[o->h_count++] = (uint32_t)v;
    }
    return o->h_count > 0 ? NS_OK : NS_EINVAL;
}

/* A counted option's value, 1..max; prints why not. */
static int count_value(const char *name, const char *arg, uint64_t max, uint32_t *out)
{
    uint64_t v;
    if (ns__parse_u64(arg, &v) != NS_OK || v < 1 || v > max) {
        fprintf(stderr, "netsim: --%s '%s' is not a count from 1 to %llu\n", name, arg,
                (unsigned long long)max);
        return DL_EXIT_USAGE;
    }
    *out = (uint32_t)v;
    return 0;
}

/* One option with its value: 0, or the exit status. */
static int option_value(dl_opts *o, int opt, const char *arg)
{
    switch (opt) {
    case 'o':
        o->out_dir = arg;
        return 0;
    case 't':
        o->text_dir = arg;
        return 0;
    case 'S':
        if (ns__parse_u64(arg, &o->seed) == NS_OK)
            return 0;
        fprintf(stderr, "netsim: --seed '%s' is not a whole number\n", arg);
        return DL_EXIT_USAGE;
    case 'j':
        return count_value("jobs", arg, DL_JOBS_MAX, &o->jobs);
    case 'n':
        return count_value("steps", arg, DL_STEPS_MAX, &o->steps);
    case 'H':
        if (parse_h_list(arg, o) == NS_OK)
            return 0;
        fprintf(stderr, "netsim: --h '%s' is not 1 to %d rising step counts, comma-separated\n",
                arg, DL_SYNC_H_MAX);
        return DL_EXIT_USAGE;
    }
    NS_ASSERT(!"an option without a handler");
    return DL_EXIT_USAGE;
}

static int check_experiment(int argc, char **argv, dl_opts *o)
{
    if (optind + 1 != argc) {
        fprintf(stderr, "netsim: --diloco needs one EXPERIMENT: sync, compress, byzantine or "
                        "all (see netsim --diloco --help)\n");
        return DL_EXIT_USAGE;
    }
    o->experiment = argv[optind];
    const char *known[] = {"sync", "compress", "byzantine", "all"};
    for (size_t i = 0; i < 4; i++) {
        if (strcmp(o->experiment, known[i]) == 0)
            return 0;
    }
    fprintf(stderr, "netsim: --diloco: unknown experiment '%s' (sync, compress, byzantine, all)\n",
            o->experiment);
    return DL_EXIT_USAGE;
}

/* 0 to run, -1 after --help, else the exit status. */
static int parse_options(int argc, char **argv, dl_opts *o)
{
    static const struct option longopts[] = {
        {"out", required_argument, NULL, 'o'},
        {"small", no_argument, NULL, 's'},
        {"assert", no_argument, NULL, 'a'},
        {"seed", required_argument, NULL, 'S'},
        {"text", required_argument, NULL, 't'},
        {"jobs", required_argument, NULL, 'j'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {"steps", required_argument, NULL, 'n'},
        {"h", required_argument, NULL, 'H'},
        {NULL, 0, NULL, 0},
    };
    *o = (dl_opts){.out_dir = "docs/experiments", .seed = 1, .jobs = 1};
    optind = 1;
    opterr = 0;
    for (int opt; (opt = getopt_long(argc, argv, ":", longopts, NULL)) != -1;) {
        if (opt == 'h') {
            usage(stdout);
            return -1;
        }
        if (opt == ':' || opt == '?') {
            fprintf(stderr, "netsim: --diloco: bad option '%s' (see netsim --diloco --help)\n",
                    argv[optind - 1]);
            return DL_EXIT_USAGE;
        }
        o->small |= opt == 's';
        o->check |= opt == 'a';
        o->quiet |= opt == 'q';
        int rc = opt == 's' || opt == 'a' || opt == 'q' ? 0 : option_value(o, opt, optarg);
        if (rc != 0)
            return rc;
    }
    return check_experiment(argc, argv, o);
}

/* --steps and --h replace the size's; every H must divide the steps. */
static int apply_overrides(const dl_opts *o, dl_size *z)
{
    if (o->h_count > 0) {
        memcpy(z->sync_h, o->h, sizeof o->h);
        z->sync_h_count = o->h_count;
    }
    if (o->steps > 0) {
        z->sync_steps = o->steps;
        z->comp_steps = o->steps;
        z->byz_steps = o->steps;
    }
    bool all = strcmp(o->experiment, "all") == 0;
    bool fits = true;
    for (size_t i = 0; i < z->sync_h_count; i++)
        fits &= !(all || strcmp(o->experiment, "sync") == 0) || z->sync_steps % z->sync_h[i] == 0;
    fits &= !(all || strcmp(o->experiment, "compress") == 0) || z->comp_steps % z->comp_h == 0;
    fits &= !(all || strcmp(o->experiment, "byzantine") == 0) || z->byz_steps % z->byz_h == 0;
    if (!fits) {
        fprintf(stderr, "netsim: --diloco: the steps (%u) must be a multiple of every H\n",
                z->sync_steps);
        return DL_EXIT_USAGE;
    }
    return 0;
}

int ns__sim_diloco_main(int argc, char **argv)
{
    dl_opts o;
    int rc = parse_options(argc, argv, &o);
    if (rc != 0)
        return rc < 0 ? 0 : rc;
    ns_log_set_level(NS_LOG_ERROR); /* the executor warns about OpenBLAS at INFO and WARN */
    if (mkdir(o.out_dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "netsim: cannot make %s: %s\n", o.out_dir, strerror(errno));
        return DL_EXIT_FAIL;
    }
    dl_size size = o.small ? size_small : size_full;
    rc = apply_overrides(&o, &size);
    if (rc != 0)
        return rc;
    const dl_size *z = &size;
    ns_dl_world *w;
    char err[NS_DATA_ERR_BYTES];
    rc = ns__dl_world_new(&w, &z->model, o.seed, o.text_dir, err, sizeof err);
    if (rc != NS_OK) {
        fprintf(stderr, "netsim: diloco: %s (%s)\n", err[0] != '\0' ? err : "cannot load data",
                ns_strerror(rc));
        return DL_EXIT_FAIL;
    }
    printf("diloco: %s; model %u layers x %u hidden, seq %u, batch %u, %zu parameters; seed "
           "%llu%s\n",
           ns__dl_world_data(w), z->model.layers, z->model.hidden, z->model.seq_len, z->model.batch,
           ns__dl_world_params(w), (unsigned long long)o.seed, o.small ? " (--small)" : "");
    const char *names[] = {"sync", "compress", "byzantine"};
    int status = 0;
    for (size_t i = 0; i < 3; i++) {
        if (strcmp(o.experiment, "all") != 0 && strcmp(o.experiment, names[i]) != 0)
            continue;
        if (experiment(&o, w, z, names[i]) != 0)
            status = DL_EXIT_FAIL;
    }
    ns__dl_world_free(w);
    return status;
}
