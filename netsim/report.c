/*
 * report.c: the end-of-run report, as text on stdout and as CSV.
 *
 * Everything but the lines that begin with "wall" is a function of the scenario and the seed, so
 * two runs with one seed print byte-identical reports once those lines are filtered out (the
 * integration test does exactly that). Rates are over lookups started in the measurement window;
 * a lookup whose initiator departed, or whose target departed or was replaced meanwhile, is
 * listed but not counted; one still running when the run stopped counts as a failure. Latency
 * and hops are over successful lookups.
 */
#include <stdlib.h>
#include <string.h>

#include "netsim.h"

static const char *const kind_name[NS_SIM_MEASURED_KINDS] = {
    [NS_SIM_OP_FIND] = "find_node",
    [NS_SIM_OP_GET_NODE] = "get_node",
    [NS_SIM_OP_GET_TOPIC] = "get_topic",
};

typedef struct kind_summary {
    uint64_t started, succeeded, failed, refused, abandoned, target_left, unfinished;
    uint64_t counted; /* succeeded + failed + refused + unfinished */
} kind_summary;

/* Percentiles over successful lookups, by kind; [NS_SIM_MEASURED_KINDS] is all of them. */
typedef struct spread {
    uint32_t hops_p50, hops_p99;
    uint32_t latency_p50_ms, latency_p99_ms;
    size_t samples;
} spread;

typedef struct summary {
    kind_summary kind[NS_SIM_MEASURED_KINDS];
    kind_summary all;
    spread spread[NS_SIM_MEASURED_KINDS + 1];
    double messages_per_node_min, bytes_per_node_min;
    double contacts_mean, dead_share;
    double measured_s, drained_s;
} summary;

static void kind_sum(const ns_sim_counts *c, size_t k, kind_summary *out)
{
    *out = (kind_summary){.started = c->started[k],
                          .succeeded = c->succeeded[k],
                          .failed = c->failed[k],
                          .refused = c->refused[k],
                          .abandoned = c->abandoned[k],
                          .target_left = c->target_left[k]};
    uint64_t ended =
        out->succeeded + out->failed + out->refused + out->abandoned + out->target_left;
    NS_ASSERT(ended <= out->started);
    out->unfinished = out->started - ended;
    out->counted = out->succeeded + out->failed + out->refused + out->unfinished;
}

static void kind_add(kind_summary *acc, const kind_summary *k)
{
    acc->started += k->started;
    acc->succeeded += k->succeeded;
    acc->failed += k->failed;
    acc->refused += k->refused;
    acc->abandoned += k->abandoned;
    acc->target_left += k->target_left;
    acc->unfinished += k->unfinished;
    acc->counted += k->counted;
}

static int u32_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a;
    uint32_t y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of n values (sorted in place); 0 for none. */
static uint32_t percentile(uint32_t *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    qsort(v, n, sizeof *v, u32_cmp);
    size_t rank = (size_t)(p * (double)n + 0.999999999);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return v[rank - 1];
}

/* Fills out from the samples of one kind (or of every kind with kind == NS_SIM_MEASURED_KINDS). */
static void spread_of(const ns_sim *sim, size_t kind, uint32_t *tmp, spread *out)
{
    size_t n = 0;
    for (size_t i = 0; i < sim->sample_count; i++) {
        if (kind == NS_SIM_MEASURED_KINDS || sim->samples[i].kind == kind)
            tmp[n++] = sim->samples[i].hops;
    }
    *out = (spread){.samples = n};
    out->hops_p50 = percentile(tmp, n, 0.50);
    out->hops_p99 = percentile(tmp, n, 0.99);
    n = 0;
    for (size_t i = 0; i < sim->sample_count; i++) {
        if (kind == NS_SIM_MEASURED_KINDS || sim->samples[i].kind == kind)
            tmp[n++] = sim->samples[i].latency_ms;
    }
    out->latency_p50_ms = percentile(tmp, n, 0.50);
    out->latency_p99_ms = percentile(tmp, n, 0.99);
}

static void percentiles(const ns_sim *sim, summary *s)
{
    if (sim->sample_count == 0)
        return; /* no successful lookup: the percentiles stay 0 */
    uint32_t *tmp = malloc(sim->sample_count * sizeof *tmp);
    NS_ASSERT(tmp != NULL);
    for (size_t k = 0; k <= NS_SIM_MEASURED_KINDS; k++)
        spread_of(sim, k, tmp, &s->spread[k]);
    free(tmp);
}

static void summarise(const ns_sim *sim, summary *s)
{
    *s = (summary){0};
    for (size_t k = 0; k < NS_SIM_MEASURED_KINDS; k++) {
        kind_sum(&sim->counts, k, &s->kind[k]);
        kind_add(&s->all, &s->kind[k]);
    }
    percentiles(sim, s);
    double node_min = sim->counts.window_node_us / 60e6;
    if (node_min > 0) {
        s->messages_per_node_min = (double)sim->counts.window_packets / node_min;
        s->bytes_per_node_min = (double)sim->counts.window_bytes / node_min;
    }
    if (sim->health.nodes > 0)
        s->contacts_mean = (double)sim->health.contacts / (double)sim->health.nodes;
    if (sim->health.contacts > 0)
        s->dead_share = (double)sim->health.contacts_dead / (double)sim->health.contacts;
    s->measured_s = (double)(sim->end_us - sim->warmup_us) / 1e6;
    s->drained_s = sim->now_us > sim->end_us ? (double)(sim->now_us - sim->end_us) / 1e6 : 0;
}

static double rate_of(const kind_summary *k)
{
    return k->counted == 0 ? -1 : (double)k->succeeded / (double)k->counted;
}

double ns__report_success(const ns_sim *sim)
{
    summary s;
    summarise(sim, &s);
    return rate_of(&s.all);
}

static void print_rate(FILE *out, const kind_summary *k)
{
    if (k->counted == 0)
        fprintf(out, "n/a");
    else
        fprintf(out, "%.2f %%", 100.0 * rate_of(k));
}

static void print_lookups(FILE *out, const summary *s)
{
    fprintf(out,
            "lookups            %llu counted, %llu succeeded: ", (unsigned long long)s->all.counted,
            (unsigned long long)s->all.succeeded);
    print_rate(out, &s->all);
    fprintf(out, "\n");
    for (size_t k = 0; k < NS_SIM_MEASURED_KINDS; k++) {
        const kind_summary *ks = &s->kind[k];
        fprintf(out, "  %-16s ", kind_name[k]);
        print_rate(out, ks);
        fprintf(out,
                " of %llu (%llu failed, %llu refused, %llu unfinished); p50 %u ms, p99 %u ms\n",
                (unsigned long long)ks->counted, (unsigned long long)ks->failed,
                (unsigned long long)ks->refused, (unsigned long long)ks->unfinished,
                s->spread[k].latency_p50_ms, s->spread[k].latency_p99_ms);
    }
    fprintf(out, "  not counted      %llu abandoned (initiator departed), %llu target departed\n",
            (unsigned long long)s->all.abandoned, (unsigned long long)s->all.target_left);
}

static void print_network(FILE *out, const ns_sim_counts *c)
{
    fprintf(out,
            "network            %llu sent, %llu delivered, %llu lost, %llu partitioned, "
            "%llu to departed nodes\n",
            (unsigned long long)c->packets_sent, (unsigned long long)c->delivered,
            (unsigned long long)c->lost, (unsigned long long)c->partitioned,
            (unsigned long long)c->to_dead);
    fprintf(out,
            "  also dropped     %llu crashed sender, %llu uplink full, %llu pool full, "
            "%llu no route, %llu oversize, %llu stream\n",
            (unsigned long long)c->from_crashed, (unsigned long long)c->queue_drops,
            (unsigned long long)c->pool_drops, (unsigned long long)c->no_route,
            (unsigned long long)c->oversize, (unsigned long long)c->bad_channel);
}

static void print_dht(FILE *out, const ns_dht_stats *d)
{
    fprintf(
        out,
        "dht counters       %llu requests in, %llu timeouts, %llu rate-limited, %llu malformed, "
        "%llu unexpected\n",
        (unsigned long long)d->requests_in, (unsigned long long)d->timeouts,
        (unsigned long long)d->dropped_rate_limited, (unsigned long long)d->dropped_malformed,
        (unsigned long long)d->dropped_unexpected);
    fprintf(out,
            "  records          %llu bad signature, %llu from the future, %llu expired, "
            "%llu identity rejected, %llu bad token\n",
            (unsigned long long)d->records_bad_signature, (unsigned long long)d->records_future,
            (unsigned long long)d->records_expired, (unsigned long long)d->identity_rejected,
            (unsigned long long)d->store_bad_token);
}

static void print_nodes(FILE *out, const ns_sim *sim)
{
    const ns_sim_counts *c = &sim->counts;
    fprintf(out, "nodes              %u (joined %llu, left %llu, crashed %llu, live at end %u)\n",
            sim->sc.nodes, (unsigned long long)c->joined, (unsigned long long)c->left,
            (unsigned long long)c->crashed, sim->live_count);
    fprintf(out, "bootstrap          %llu retries, %llu gave up, %llu seed pings refused\n",
            (unsigned long long)c->bootstrap_retries, (unsigned long long)c->bootstrap_failed,
            (unsigned long long)c->seed_pings_refused);
    fprintf(out,
            "records            %llu own records stored (%llu not), %llu topic records stored "
            "(%llu not)\n",
            (unsigned long long)c->puts_self_ok, (unsigned long long)c->puts_self_failed,
            (unsigned long long)c->puts_topic_ok, (unsigned long long)c->puts_topic_failed);
    fprintf(out, "verify             %llu signatures checked, %llu answers memoised\n",
            (unsigned long long)sim->verifier.verified,
            (unsigned long long)sim->verifier.memo_hits);
    fprintf(out, "timers             %llu set, %llu left pending by freed cores\n",
            (unsigned long long)c->timers_set, (unsigned long long)c->timers_leaked);
}

void ns__report_print(FILE *out, const ns_sim *sim, const ns_sim_wall *wall)
{
    summary s;
    summarise(sim, &s);
    const ns_sim_scenario *sc = &sim->sc;
    fprintf(out, "netsim report\n");
    fprintf(out, "scenario           %s\n", sc->path);
    fprintf(out, "seed               %llu\n", (unsigned long long)sc->seed);
    print_nodes(out, sim);
    fprintf(out, "simulated          %.1f s (warmup %.1f s, measured %.1f s, drain %.1f s)\n",
            sc->duration_s + s.drained_s, sc->warmup_s, s.measured_s, s.drained_s);
    print_lookups(out, &s);
    const spread *all = &s.spread[NS_SIM_MEASURED_KINDS];
    fprintf(out, "hops               p50 %u, p99 %u (over %zu successful lookups", all->hops_p50,
            all->hops_p99, all->samples);
    if (sim->counts.samples_dropped > 0)
        fprintf(out, "; %llu more not kept", (unsigned long long)sim->counts.samples_dropped);
    fprintf(out, ")\n");
    fprintf(out, "lookup latency     p50 %u ms, p99 %u ms\n", all->latency_p50_ms,
            all->latency_p99_ms);
    fprintf(out, "messages           %.1f per node per minute, %.1f KiB per node per minute\n",
            s.messages_per_node_min, s.bytes_per_node_min / 1024);
    fprintf(out, "routing table      %.1f contacts per node, %.2f %% point at departed nodes\n",
            s.contacts_mean, 100 * s.dead_share);
    print_network(out, &sim->counts);
    print_dht(out, &sim->dht_totals);
    fprintf(out, "events             %llu, trace %016llx\n", (unsigned long long)sim->counts.events,
            (unsigned long long)sim->trace_hash);
    double speed = wall->seconds > 0 ? (sc->duration_s + s.drained_s) / wall->seconds : 0;
    fprintf(out, "wall time          %.2f s (%.2f s of CPU), %.1f simulated s per wall s\n",
            wall->seconds, wall->cpu_seconds, speed);
    fprintf(out, "wall memory        peak RSS %.1f MiB, %.1f KiB per simulated node\n",
            (double)wall->peak_rss_kib / 1024, (double)wall->peak_rss_kib / sc->nodes);
}

int ns__report_csv(const char *path, const ns_sim *sim, const ns_sim_wall *wall)
{
    summary s;
    summarise(sim, &s);
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return NS_EIO;
    const ns_sim_scenario *sc = &sim->sc;
    fprintf(f, "scenario,seed,nodes,duration_s,warmup_s,lookups_counted,lookups_succeeded,"
               "success_rate,find_node_rate,get_node_rate,get_topic_rate,abandoned,target_left,"
               "hops_p50,hops_p99,latency_p50_ms,latency_p99_ms,messages_per_node_per_min,"
               "bytes_per_node_per_min,contacts_per_node,dead_contact_share,joined,left,crashed,"
               "trace,wall_s,cpu_s,sim_s_per_wall_s,peak_rss_kib,rss_kib_per_node\n");
    fprintf(f, "\"%s\",%llu,%u,%g,%g,%llu,%llu,%.6f,%.6f,%.6f,%.6f,%llu,%llu,", sc->path,
            (unsigned long long)sc->seed, sc->nodes, sc->duration_s, sc->warmup_s,
            (unsigned long long)s.all.counted, (unsigned long long)s.all.succeeded, rate_of(&s.all),
            rate_of(&s.kind[0]), rate_of(&s.kind[1]), rate_of(&s.kind[2]),
            (unsigned long long)s.all.abandoned, (unsigned long long)s.all.target_left);
    const spread *all = &s.spread[NS_SIM_MEASURED_KINDS];
    fprintf(f, "%u,%u,%u,%u,%.2f,%.1f,%.2f,%.6f,%llu,%llu,%llu,%016llx,", all->hops_p50,
            all->hops_p99, all->latency_p50_ms, all->latency_p99_ms, s.messages_per_node_min,
            s.bytes_per_node_min, s.contacts_mean, s.dead_share,
            (unsigned long long)sim->counts.joined, (unsigned long long)sim->counts.left,
            (unsigned long long)sim->counts.crashed, (unsigned long long)sim->trace_hash);
    double speed = wall->seconds > 0 ? (sc->duration_s + s.drained_s) / wall->seconds : 0;
    fprintf(f, "%.3f,%.3f,%.2f,%ld,%.1f\n", wall->seconds, wall->cpu_seconds, speed,
            wall->peak_rss_kib, (double)wall->peak_rss_kib / sc->nodes);
    return fclose(f) == 0 ? NS_OK : NS_EIO;
}
