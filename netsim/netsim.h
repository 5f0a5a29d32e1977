/*
 * netsim.h: the simulator's private header, shared by the files of netsim/ and nothing else.
 *
 * netsim binds the sans-IO seam (struct ns_env) to a virtual clock and simulated links and drives
 * many real DHT cores in one process, deterministically: every choice comes from a PRNG seeded by
 * the run's seed, every event is ordered by (virtual time, sequence number), and nothing reads
 * the wall clock except the progress line and the "wall" lines of the report. The parts:
 *   rng.c       splitmix64 / xoshiro256** streams and the hashes that derive per-pair values
 *   heap.c      the event queue, a binary heap keyed by (time, sequence)
 *   scenario.c  the INI scenario, its keys, defaults and checks
 *   verify.c    the memoising record verifier shared by every core
 *   links.c     latency, uplink bandwidth, loss, partitions; the packets in flight
 *   node.c      one simulated node: its env, key, record, DHT core, timers; joins and departures
 *   workload.c  churn, lookups, published records and what they measure
 *   report.c    the report on stdout and the CSV
 *   main.c      options, the event loop, progress
 * economy.c, swarm.c and diloco*.c are modes of their own (--economy, --swarm, --diloco).
 */
#ifndef NETSIM_NETSIM_H
#define NETSIM_NETSIM_H

#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "neuroshard/aggregate.h"
#include "neuroshard/base.h"
#include "neuroshard/crypto.h"
#include "neuroshard/dht.h"

/* ---- limits ----------------------------------------------------------------------------- */

#define NS_SIM_NODES_MAX           100000           /* nodes alive at once */
#define NS_SIM_SERIALS_MAX         ((1u << 24) - 2) /* nodes over a run: one 10.x.y.z address each */
#define NS_SIM_TIMERS_MAX          (1u << 23)       /* timers pending at once, all nodes */
#define NS_SIM_PACKETS_MAX         (1u << 18)       /* packets queued or in flight at once */
#define NS_SIM_PACKET_BYTES_MAX    NS_DHT_PACKET_BYTES_MAX
#define NS_SIM_OPS_MAX             (1u << 21) /* lookups, gets and puts in flight at once */
#define NS_SIM_TOPICS_MAX          4096       /* topic records kept published */
#define NS_SIM_SAMPLES_MAX         (1u << 24) /* measured lookups whose hops/latency are kept */
#define NS_SIM_PARTITIONS_MAX      8
#define NS_SIM_GROUPS_MAX          8
#define NS_SIM_NAME_SIZE           32
#define NS_SIM_PATH_SIZE           1024
#define NS_SIM_DURATION_S_MAX      (30.0 * 86400)
#define NS_SIM_SEEDS_MAX           16 /* bootstrap seeds a joining node pings */
#define NS_SIM_BOOTSTRAP_TRIES     3
#define NS_SIM_BOOTSTRAP_RETRY_MS  10000
#define NS_SIM_LATENCY_MS_MAX      10000.0 /* a pair's one-way latency is capped here */
#define NS_SIM_LATENCY_MS_MIN      0.1
#define NS_SIM_UPLINK_QUEUE_MS_MAX 1000 /* a sender's uplink drops what would wait longer */
#define NS_SIM_UDP_OVERHEAD_BYTES  28   /* IPv4 + UDP headers, counted on the uplink */
#define NS_SIM_DRAIN_MS            (NS_DHT_LOOKUP_TIMEOUT_MS + 5000) /* after the end, at most */
#define NS_SIM_RECORD_TTL_MS       (48ull * 3600 * 1000)
#define NS_SIM_EPOCH_MS            1767225600000ull /* 2026-01-01T00:00:00Z: virtual time zero */
#define NS_SIM_PORT                4100
#define NS_SIM_NETWORK             "netsim"

static_assert(NS_SIM_NODES_MAX < NS_SIM_SERIALS_MAX, "every live node needs an address");
static_assert(NS_SIM_SEEDS_MAX <= 64, "seed choice is a small loop");

/* ---- rng.c ------------------------------------------------------------------------------ */

typedef struct ns_sim_rng {
    uint64_t s[4]; /* xoshiro256** state, never all zero */
} ns_sim_rng;

uint64_t ns__sim_mix64(uint64_t x); /* splitmix64's finaliser: a bijective 64-bit mix */
uint64_t ns__sim_hash3(uint64_t a, uint64_t b, uint64_t c);
void ns__sim_rng_seed(ns_sim_rng *rng, uint64_t seed, uint64_t stream);
uint64_t ns__sim_rng_next(ns_sim_rng *rng);
double ns__sim_rng_unit(ns_sim_rng *rng);                /* [0, 1) */
uint64_t ns__sim_rng_below(ns_sim_rng *rng, uint64_t n); /* [0, n), n > 0 */
double ns__sim_rng_exp(ns_sim_rng *rng, double mean);    /* exponential with that mean */
void ns__sim_rng_fill(ns_sim_rng *rng, void *buf, size_t n);
double ns__sim_unit_from_hash(uint64_t h); /* the top 53 bits as a double in [0, 1) */

/* ---- heap.c ----------------------------------------------------------------------------- */

typedef enum {
    NS_SIM_EV_TIMER = 0,     /* index: timer slot */
    NS_SIM_EV_PACKET = 1,    /* index: packet slot */
    NS_SIM_EV_JOIN = 2,      /* a new node joins; index unused */
    NS_SIM_EV_BOOTSTRAP = 3, /* index: node serial (a retry of its bootstrap) */
    NS_SIM_EV_CHURN = 4,     /* one node goes, another comes */
    NS_SIM_EV_LOOKUP = 5,    /* a random node starts a lookup */
    NS_SIM_EV_TOPIC = 6,     /* index: topic slot to (re)publish */
    NS_SIM_EV_PHASE = 7,     /* index: ns_sim_phase to enter */
} ns_sim_event_kind;

typedef struct ns_sim_event {
    uint64_t at_us;
    uint64_t seq;
    uint32_t kind; /* ns_sim_event_kind */
    uint32_t index;
} ns_sim_event;

typedef struct ns_sim_heap {
    ns_sim_event *events;
    size_t count;
    size_t capacity;
    size_t capacity_max;
    uint64_t seq_next;
} ns_sim_heap;

NS_MUST_USE int ns__sim_heap_init(ns_sim_heap *heap, size_t capacity_max);
void ns__sim_heap_free(ns_sim_heap *heap);
NS_MUST_USE int ns__sim_heap_push(ns_sim_heap *heap, uint64_t at_us, ns_sim_event_kind kind,
                                  uint32_t index);
bool ns__sim_heap_pop(ns_sim_heap *heap, ns_sim_event *out);

/* ---- scenario.c ------------------------------------------------------------------------- */

typedef struct ns_sim_partition {
    char name[NS_SIM_NAME_SIZE];
    double start_s, end_s;
    double share[NS_SIM_GROUPS_MAX]; /* each group's share of the nodes; they sum to 1 */
    size_t group_count;
} ns_sim_partition;

typedef struct ns_sim_scenario {
    char path[NS_SIM_PATH_SIZE];
    uint64_t seed;
    uint32_t nodes;
    double duration_s;
    double warmup_s;
    double join_spread_s;
    double latency_median_ms;
    double latency_sigma;
    double bandwidth_mbps;
    double loss;
    double churn_per_hour;
    double churn_crash_share;
    double lookups_per_node_per_min;
    double get_node_share;
    double get_topic_share;
    uint32_t topic_records;
    uint32_t bootstrap_seeds;
    ns_sim_partition partitions[NS_SIM_PARTITIONS_MAX];
    size_t partition_count;
} ns_sim_scenario;

#define NS_SIM_WHY_SIZE 512 /* what is wrong, without the file name */
#define NS_SIM_ERR_SIZE (NS_SIM_PATH_SIZE + NS_SIM_WHY_SIZE + 64)

/* Defaults, then the file. On failure err holds one line naming the file and line. */
NS_MUST_USE int ns__scenario_load(ns_sim_scenario *sc, const char *path, char err[NS_SIM_ERR_SIZE]);
/* Checks relations between keys (after command-line overrides). */
NS_MUST_USE int ns__scenario_check(const ns_sim_scenario *sc, char err[NS_SIM_ERR_SIZE]);
/* Prints every key with its meaning and default. */
void ns__scenario_print_keys(FILE *out);
/* Parsers shared with the command line. */
NS_MUST_USE int ns__parse_u64(const char *text, uint64_t *out);
NS_MUST_USE int ns__parse_double(const char *text, double *out);

/* ---- verify.c --------------------------------------------------------------------------- */

typedef struct ns_sim_verify_entry ns_sim_verify_entry;

typedef struct ns_sim_verifier {
    ns_sim_verify_entry *entries;
    size_t capacity; /* a power of two */
    size_t count;
    uint64_t verified; /* real signature checks */
    uint64_t memo_hits;
    uint64_t uncached; /* verified without being remembered (time errors, table full) */
} ns_sim_verifier;

NS_MUST_USE int ns__verifier_init(ns_sim_verifier *v);
void ns__verifier_free(ns_sim_verifier *v);
/* The ns_dht_config.verify signature: same results as ns_record_verify. */
int ns__verifier_verify(void *arg, const uint8_t *buf, size_t len, uint64_t now_ms, ns_record *out);

/* ---- the world -------------------------------------------------------------------------- */

typedef enum {
    NS_SIM_PHASE_WARMUP = 0,  /* nodes join; nothing is measured */
    NS_SIM_PHASE_MEASURE = 1, /* lookups run and are measured */
    NS_SIM_PHASE_DRAIN = 2,   /* no new work; lookups in flight finish */
    NS_SIM_PHASE_STOP = 3,
} ns_sim_phase;

typedef enum {
    NS_SIM_OP_FIND = 0,      /* find_node of a live node's id */
    NS_SIM_OP_GET_NODE = 1,  /* get of a live node's own record */
    NS_SIM_OP_GET_TOPIC = 2, /* get of a published topic record */
    NS_SIM_OP_BOOTSTRAP = 3,
    NS_SIM_OP_PUT_SELF = 4,
    NS_SIM_OP_PUT_TOPIC = 5,
} ns_sim_op_kind;
#define NS_SIM_MEASURED_KINDS 3

typedef enum {
    NS_SIM_SERIAL_UNUSED = 0,
    NS_SIM_SERIAL_LIVE = 1,
    NS_SIM_SERIAL_LEFT = 2,
    NS_SIM_SERIAL_CRASHED = 3,
} ns_sim_serial_state;

typedef struct ns_sim ns_sim;
typedef struct ns_sim_op ns_sim_op;

typedef struct ns_sim_node {
    ns_env env; /* ctx is this node */
    ns_sim *sim;
    uint32_t serial;
    uint32_t live_index; /* where it sits in sim->live */
    ns_key key;
    ns_addr addr;
    uint8_t *record; /* its signed node record (malloc'd) */
    size_t record_len;
    ns_dht *dht;
    ns_sim_rng rng;
    uint64_t uplink_free_us; /* when its uplink has sent all it was handed */
    uint32_t timers_pending;
    uint32_t bootstrap_tries;
    bool ready;     /* its bootstrap finished */
    bool published; /* its own record was stored by someone */
    ns_sim_op *ops; /* what it has in flight: freed with it, since no callback comes after */
} ns_sim_node;

struct ns_sim_op {
    ns_sim_node *node;
    ns_sim_op *prev, *next; /* in node->ops, or the free list (next only) */
    uint32_t kind;          /* ns_sim_op_kind */
    uint32_t target_serial; /* FIND, GET_NODE */
    uint32_t topic;         /* GET_TOPIC, PUT_TOPIC */
    uint32_t topic_generation;
    bool measured;
    uint64_t start_us;
    uint8_t target[NS_ID_BYTES];
};

typedef struct ns_sim_timer {
    ns_timer_fn fn;
    void *arg;
    uint32_t serial;     /* the node that set it */
    uint32_t generation; /* bumped when the slot is freed, so stale ids do nothing */
    uint32_t next_free;
    bool pending;
    bool cancelled;
} ns_sim_timer;

typedef struct ns_sim_packet {
    uint32_t src, dst; /* serials */
    uint64_t sent_us;  /* when its last bit left the sender's uplink */
    uint32_t next_free;
    uint16_t len;
    uint8_t bytes[NS_SIM_PACKET_BYTES_MAX];
} ns_sim_packet;

typedef struct ns_sim_topic {
    uint8_t key[NS_ID_BYTES];
    uint8_t *record; /* malloc'd envelope */
    size_t record_len;
    uint32_t author; /* serial */
    uint32_t generation;
    bool stored; /* a put reached at least one node */
} ns_sim_topic;

/* Chunked slabs: slots never move, so pointers into them stay valid. */
#define NS_SIM_CHUNK_SHIFT 12
#define NS_SIM_CHUNK_SLOTS (1u << NS_SIM_CHUNK_SHIFT)

typedef struct ns_sim_slab {
    void **chunks;
    size_t chunk_count;
    size_t slot_bytes;
    uint32_t slots_max;
    uint32_t used; /* slots handed out at least once */
} ns_sim_slab;

typedef struct ns_sim_counts {
    /* lookups, by measured kind */
    uint64_t started[NS_SIM_MEASURED_KINDS];
    uint64_t succeeded[NS_SIM_MEASURED_KINDS];
    uint64_t failed[NS_SIM_MEASURED_KINDS];
    uint64_t refused[NS_SIM_MEASURED_KINDS];     /* the core would not start it */
    uint64_t abandoned[NS_SIM_MEASURED_KINDS];   /* its node left before it finished */
    uint64_t target_left[NS_SIM_MEASURED_KINDS]; /* the target left meanwhile: not counted */
    uint64_t samples_dropped;
    /* the network */
    uint64_t packets_sent, bytes_sent;
    uint64_t window_packets, window_bytes; /* sent during the measurement window */
    double window_node_us;                 /* integral of live nodes over the window */
    uint64_t delivered, lost, partitioned, to_dead, from_crashed, queue_drops, pool_drops, no_route,
        oversize, bad_channel;
    /* nodes */
    uint64_t joined, left, crashed, bootstrap_retries, bootstrap_failed, seed_pings_refused;
    uint64_t timers_leaked, timers_set;
    uint64_t puts_self_ok, puts_self_failed, puts_topic_ok, puts_topic_failed;
    uint64_t events;
} ns_sim_counts;

/* One successful measured lookup. */
typedef struct ns_sim_sample {
    uint32_t latency_ms;
    uint16_t hops;
    uint8_t kind; /* ns_sim_op_kind, a measured one */
} ns_sim_sample;

typedef struct ns_sim_health {
    size_t nodes;
    uint64_t contacts;
    uint64_t contacts_dead;
} ns_sim_health;

struct ns_sim {
    ns_sim_scenario sc;
    uint64_t now_us; /* virtual time since NS_SIM_EPOCH_MS */
    uint64_t end_us; /* end of the measurement window */
    uint64_t warmup_us;
    ns_sim_phase phase;
    ns_sim_heap heap;
    ns_sim_verifier verifier;
    uint8_t network_id[32];

    ns_sim_slab timers;
    uint32_t timer_free; /* head of the free list, UINT32_MAX when empty */
    ns_sim_slab packets;
    uint32_t packet_free;
    ns_sim_slab ops;
    ns_sim_op *op_free;
    uint32_t ops_in_flight_measured;

    ns_sim_node **nodes;   /* by serial; NULL once gone */
    uint8_t *serial_state; /* ns_sim_serial_state, by serial */
    uint64_t *gone_us;     /* by serial: when it left or crashed */
    uint32_t serial_count;
    uint32_t serial_capacity;
    uint32_t *live; /* serials of live nodes, in no particular order */
    uint32_t live_count;
    uint32_t initial_joined;

    ns_sim_topic *topics;

    /* One stream a concern, so that the churn schedule, say, stays the same when a change in
     * the DHT core changes how many random picks the lookups need. */
    ns_sim_rng rng_work;   /* bootstrap seeds, topic authors */
    ns_sim_rng rng_net;    /* loss */
    ns_sim_rng rng_churn;  /* when churn comes, who goes, how */
    ns_sim_rng rng_lookup; /* when lookups start, their kind, initiator and target */

    ns_sim_counts counts;
    ns_sim_sample *samples;
    size_t sample_count, sample_capacity;
    ns_sim_health health;
    ns_dht_stats
        dht_totals; /* every core's counters, summed as it departs or at the window's end */
    uint64_t live_changed_us; /* for window_node_us */
    uint64_t trace_hash;
    bool quiet;
};

/* ---- links.c ---------------------------------------------------------------------------- */

int ns__sim_send(void *ctx, const ns_peer *to, ns_channel ch, const ns_frame *f);
void ns__sim_deliver(ns_sim *sim, uint32_t packet_index);
double ns__sim_latency_ms(const ns_sim *sim, uint32_t a, uint32_t b);
bool ns__sim_partitioned(const ns_sim *sim, uint32_t a, uint32_t b);
void ns__sim_addr_of(uint32_t serial, ns_addr *out);
bool ns__sim_serial_of(const ns_sim *sim, const ns_addr *addr, uint32_t *serial);

/* ---- node.c ----------------------------------------------------------------------------- */

NS_MUST_USE int ns__sim_init(ns_sim *sim, const ns_sim_scenario *sc);
void ns__sim_free(ns_sim *sim);
NS_MUST_USE int ns__sim_slab_init(ns_sim_slab *slab, size_t slot_bytes, uint32_t slots_max);
void ns__sim_slab_free(ns_sim_slab *slab);
void *ns__sim_slab_at(const ns_sim_slab *slab, uint32_t index);
/* A new slot index, or UINT32_MAX at the limit (or out of memory). */
uint32_t ns__sim_slab_grow(ns_sim_slab *slab);
uint32_t ns__sim_packet_alloc(ns_sim *sim);
void ns__sim_packet_release(ns_sim *sim, uint32_t index);
void ns__sim_fire_timer(ns_sim *sim, uint32_t index);
/* A new node with the next serial, bootstrapping from a few live ones. */
NS_MUST_USE int ns__sim_node_join(ns_sim *sim);
void ns__sim_node_bootstrap(ns_sim *sim, uint32_t serial);
/* Takes a live node out: its core is freed; crash also loses what its uplink still held. */
void ns__sim_node_depart(ns_sim *sim, uint32_t serial, bool crash);
ns_sim_node *ns__sim_node_live(const ns_sim *sim, uint32_t serial);
uint64_t ns__sim_now_ms(const ns_sim *sim);
void ns__sim_note_live_change(ns_sim *sim);
void ns__sim_dht_stats_add(ns_sim *sim, const ns_dht *dht);
NS_MUST_USE int ns__sim_schedule(ns_sim *sim, uint64_t at_us, ns_sim_event_kind kind,
                                 uint32_t index);

/* ---- workload.c ------------------------------------------------------------------------- */

NS_MUST_USE int ns__sim_workload_start(ns_sim *sim);
void ns__sim_on_churn(ns_sim *sim);
void ns__sim_on_lookup(ns_sim *sim);
void ns__sim_on_topic(ns_sim *sim, uint32_t topic);
void ns__sim_on_phase(ns_sim *sim, ns_sim_phase phase);
ns_sim_op *ns__sim_op_new(ns_sim *sim, ns_sim_node *node, ns_sim_op_kind kind);
void ns__sim_op_free(ns_sim *sim, ns_sim_op *op);
void ns__sim_op_done(void *arg, const ns_dht_result *result);
/* A node is going: its ops end without a callback. */
void ns__sim_ops_abandon(ns_sim *sim, ns_sim_node *node);
void ns__sim_topic_author_gone(ns_sim *sim, uint32_t serial);
void ns__sim_measure_health(ns_sim *sim);

/* ---- report.c --------------------------------------------------------------------------- */

typedef struct ns_sim_wall {
    double seconds;
    double cpu_seconds; /* user + system: what the run costs when the machine is shared */
    long peak_rss_kib;
} ns_sim_wall;

/* The share of measured lookups that succeeded, or -1 when none was measured. */
double ns__report_success(const ns_sim *sim);
void ns__report_print(FILE *out, const ns_sim *sim, const ns_sim_wall *wall);
NS_MUST_USE int ns__report_csv(const char *path, const ns_sim *sim, const ns_sim_wall *wall);

/* ---- economy.c: `netsim --economy FILE` ------------------------------------------------- */

/* Runs the ledger and proof-of-work simulation of an [economy] scenario; the exit status:
 * 0 pass, 2 a bad scenario, 3 an assertion of the run failed. */
int ns__sim_economy_main(const char *path);

/* ---- swarm.c: `netsim --swarm FILE` ----------------------------------------------------- */

/* Runs the quorum and pipeline cores of a [swarm] scenario; the exit status: 0 pass, 2 a bad
 * scenario, 3 a goal of the scenario was missed. */
int ns__sim_swarm_main(const char *path);

/* ---- diloco*.c: `netsim --diloco EXPERIMENT` -------------------------------------------- */

/* Real training of a small NeuroLLM by K simulated nodes in one process: synchronous data
 * parallel against DiLoCo (the sync cores: ns_outer, ns_cohort, ns_compress, ns_agg), with
 * attackers. diloco_train.c owns the data, the models and one run; diloco.c the experiments, the
 * CSV, the summary and the asserts; diloco_plot.c draws the SVG figures. */

#define NS_DL_NODES_MAX  16  /* one cohort group (NS_SYNC_GROUP_MAX): the screen sees everyone */
#define NS_DL_CURVE_MAX  128 /* points of a run's loss curve */
#define NS_DL_LABEL_SIZE 48

typedef enum {
    NS_DL_DP = 0,     /* gradients averaged every step (a ring all-reduce) */
    NS_DL_DILOCO = 1, /* H inner AdamW steps, then the outer Nesterov step on the cohort's Δ */
} ns_dl_method;

typedef enum {
    NS_DL_WIRE_RAW = 0,    /* float32 Δ, reduce-scatter + all-gather, ns_agg_run over all */
    NS_DL_WIRE_COHORT = 1, /* the real ns_cohort cores over an in-process message queue */
} ns_dl_wire;

typedef enum {
    NS_DL_ATTACK_NONE = 0,
    NS_DL_ATTACK_SIGNFLIP = 1, /* -Δ */
    NS_DL_ATTACK_SCALE = 2,    /* scale x Δ */
    NS_DL_ATTACK_NOISE = 3,    /* Gaussian noise with the norm of an honest Δ */
    NS_DL_ATTACK_ALIE = 4,     /* "A Little Is Enough": mean - z std of the honest Δs */
} ns_dl_attack;

typedef struct ns_dl_model {
    uint32_t layers, hidden, vocab, seq_len, batch;
    uint32_t val_batches; /* held-out batches of the final validation loss */
    uint32_t warm_steps;  /* every run starts from one worker trained this long (the DiLoCo
                             paper starts from a pretrained model); 0: from the seed's init */
} ns_dl_model;

typedef struct ns_dl_run {
    char label[NS_DL_LABEL_SIZE];
    ns_dl_method method;
    uint32_t nodes;  /* K, attackers included */
    uint32_t steps;  /* inner steps of every node */
    uint32_t h;      /* DiLoCo: inner steps a round */
    ns_dl_wire wire; /* DiLoCo */
    double density;  /* COHORT: share kept by top-k */
    bool error_feedback;
    ns_agg_kind agg;
    bool no_screen; /* the plain mean: no 3/5 sigma screen before the aggregator */
    ns_dl_attack attack;
    uint32_t attackers; /* the last `attackers` nodes */
    double scale;       /* NS_DL_ATTACK_SCALE */
} ns_dl_run;

typedef struct ns_dl_result {
    int rc;
    double val_loss;       /* final, on the held-out batches */
    double bytes_per_node; /* sent, mean over nodes, the whole run */
    double bytes_max;      /* the node that sent most */
    uint32_t rounds;
    double blob_ratio;        /* COHORT: 4n over the blob of a whole Δ at this density, mean */
    uint32_t diverged;        /* nodes whose weights differ from node 0's after the last round */
    uint32_t report_mismatch; /* nodes whose cohort report's bytes differ from the wire's */
    uint64_t refusals;        /* messages the cohort cores refused */
    uint64_t missing_chunks;
    /* the screen's verdicts, counted per contribution (one a chunk owner a round) */
    uint64_t parts_attacker, parts_honest;
    uint64_t fraud_attacker, fraud_honest, rejected_attacker, rejected_honest;
    uint32_t attackers_caught; /* attackers with at least one FRAUD verdict */
    double wall_s;
    uint32_t curve_count;
    double curve_step[NS_DL_CURVE_MAX], curve_loss[NS_DL_CURVE_MAX]; /* training loss */
} ns_dl_result;

typedef struct ns_dl_world ns_dl_world;

/* Loads the Genesis data (text_dir NULL) or a folder of text, trains the tokenizer and cuts the
 * held-out batches. On failure err holds one line. */
NS_MUST_USE int ns__dl_world_new(ns_dl_world **out, const ns_dl_model *model, uint64_t seed,
                                 const char *text_dir, char *err, size_t err_size);
void ns__dl_world_free(ns_dl_world *w);
size_t ns__dl_world_params(const ns_dl_world *w);
double ns__dl_world_warm_loss(const ns_dl_world *w); /* NaN without a warm start */
const char *ns__dl_world_data(const ns_dl_world *w); /* "genesis-brown (N tokens, V vocab)" */
/* One run from fresh weights; out->rc is its status too. */
NS_MUST_USE int ns__dl_run(const ns_dl_world *w, const ns_dl_run *run, ns_dl_result *out);

/* `netsim --diloco EXPERIMENT [options]`: argv[0] is "--diloco". */
int ns__sim_diloco_main(int argc, char **argv);

/* ---- diloco_plot.c: SVG figures --------------------------------------------------------- */

typedef struct ns_plot_series {
    const char *name;
    const double *x, *y;
    size_t n;
} ns_plot_series;

typedef struct ns_plot_box {
    double x, y, w, h; /* the panel within the figure, pixels */
    const char *title, *x_label, *y_label;
    bool log_y;
    double y_clip; /* bars: values above are cut there and labelled (0: none) */
} ns_plot_box;

void ns__plot_begin(FILE *f, double width, double height);
void ns__plot_end(FILE *f);
/* Lines, one a series, over shared axes. */
void ns__plot_lines(FILE *f, const ns_plot_box *box, const ns_plot_series *s, size_t count);
/* Grouped bars: values[g * bar_count + b]; a value that is NaN is left out. */
void ns__plot_bars(FILE *f, const ns_plot_box *box, const char *const *groups, size_t group_count,
                   const char *const *bars, size_t bar_count, const double *values);

#endif
