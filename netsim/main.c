/*
 * main.c: netsim's command line, its event loop and its progress line.
 *
 * Reads the scenario, applies the command-line overrides, builds the world, then pops events in
 * (time, sequence) order until the run stops: after the measurement window, once every measured
 * lookup has finished or NS_SIM_DRAIN_MS has passed. The wall clock is read only for the
 * progress line on stderr and the "wall" lines of the report, never by the simulation. Exit
 * status: 0, 1 when --assert-success fails (or the run cannot go on), 2 for bad input. Any
 * failure names the seed, so the run can be replayed; an assertion's abort does too.
 */
#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "netsim.h"

#define PROGRESS_EVERY_EVENTS 65536
#define PROGRESS_WALL_S       5.0
#define EXIT_ASSERT           1
#define EXIT_USAGE            2

typedef struct options {
    const char *scenario;
    const char *csv;
    bool seed_set, nodes_set, duration_set;
    uint64_t seed;
    uint64_t nodes;
    double duration_s;
    double assert_success; /* < 0: not asked */
    bool quiet;
} options;

static void usage(FILE *out)
{
    fprintf(out,
            "usage: netsim --scenario FILE [--seed N] [--nodes N] [--duration S] [--csv FILE]\n"
            "              [--assert-success RATE] [--quiet]\n"
            "\n"
            "Runs many real DHT cores in one process over simulated links, in virtual time,\n"
            "deterministically: one seed, one trace. Prints a report at the end.\n"
            "\n"
            "  --scenario FILE        the scenario (INI; keys below)\n"
            "  --seed N               replaces the scenario's seed\n"
            "  --nodes N              replaces the scenario's node count\n"
            "  --duration S           replaces the scenario's duration_s (simulated seconds)\n"
            "  --csv FILE             also writes the report as CSV (a header and one row)\n"
            "  --assert-success RATE  exit 1 when the lookup success rate is below RATE (0..1)\n"
            "  --quiet                no progress lines on stderr\n"
            "  --help                 this text\n"
            "\n"
            "Scenario file: INI, keys in [scenario]:\n");
    ns__scenario_print_keys(out);
    fprintf(
        out,
        "Partitions: one [partition NAME] section each, with\n"
        "  start_s, end_s             required\n"
        "      simulated seconds; while start_s <= t < end_s the groups cannot reach each other\n"
        "  groups                     required\n"
        "      shares of the nodes, e.g. \"0.5, 0.5\"; a remainder below 1 is one more group;\n"
        "      a node's group is a hash of the seed and the node\n"
        "\n"
        "Exit status: 0 ok, 1 --assert-success failed, 2 bad option or scenario.\n"
        "See docs/netsim.md for what is modelled and how to read the report.\n");
}

static int usage_error(const char *fmt, const char *a, const char *b)
{
    fprintf(stderr, "netsim: ");
    fprintf(stderr, fmt, a, b);
    fprintf(stderr, " (see netsim --help)\n");
    return EXIT_USAGE;
}

static int option_value(options *o, int opt, const char *arg, const char *name)
{
    switch (opt) {
    case 's':
        o->scenario = arg;
        return 0;
    case 'c':
        o->csv = arg;
        return 0;
    case 'S':
        o->seed_set = true;
        if (ns__parse_u64(arg, &o->seed) != NS_OK)
            return usage_error("--%s '%s' is not a whole number", name, arg);
        return 0;
    case 'n':
        o->nodes_set = true;
        if (ns__parse_u64(arg, &o->nodes) != NS_OK || o->nodes < 1 || o->nodes > NS_SIM_NODES_MAX)
            return usage_error("--%s '%s' is not a node count from 1 to 100000", name, arg);
        return 0;
    case 'd':
        o->duration_set = true;
        if (ns__parse_double(arg, &o->duration_s) != NS_OK || o->duration_s < 1 ||
            o->duration_s > NS_SIM_DURATION_S_MAX)
            return usage_error("--%s '%s' is not a duration in seconds", name, arg);
        return 0;
    case 'a':
        if (ns__parse_double(arg, &o->assert_success) != NS_OK || o->assert_success < 0 ||
            o->assert_success > 1)
            return usage_error("--%s '%s' is not a rate from 0 to 1", name, arg);
        return 0;
    }
    NS_ASSERT(!"an option without a handler");
    return EXIT_USAGE;
}

/* 0 to run, -1 after --help, else the exit status. */
static int parse_options(int argc, char **argv, options *o)
{
    static const struct option longopts[] = {
        {"scenario", required_argument, NULL, 's'},
        {"seed", required_argument, NULL, 'S'},
        {"nodes", required_argument, NULL, 'n'},
        {"duration", required_argument, NULL, 'd'},
        {"csv", required_argument, NULL, 'c'},
        {"assert-success", required_argument, NULL, 'a'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    *o = (options){.assert_success = -1};
    opterr = 0;
    for (;;) {
        int index = -1;
        int opt = getopt_long(argc, argv, ":", longopts, &index);
        if (opt == -1)
            break;
        if (opt == 'h') {
            usage(stdout);
            return -1;
        }
        if (opt == 'q') {
            o->quiet = true;
            continue;
        }
        const char *given = argv[optind - 1];
        if (opt == ':')
            return usage_error("%s needs a value%s", given, "");
        if (opt == '?')
            return usage_error("unknown option '%s'%s", given, "");
        int rc = option_value(o, opt, optarg, longopts[index].name);
        if (rc != 0)
            return rc;
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s'%s", argv[optind], "");
    if (o->scenario == NULL)
        return usage_error("--scenario FILE is required%s%s", "", "");
    return 0;
}

/* ---- replaying after a crash ------------------------------------------------------------ */

static char crash_note[NS_SIM_PATH_SIZE + 128];
static size_t crash_note_len;

static void crash_handler(int sig)
{
    ssize_t w = write(STDERR_FILENO, crash_note, crash_note_len);
    (void)w;
    signal(sig, SIG_DFL); /* then die of the same signal, as without the handler */
    raise(sig);
}

static void replay_note_install(const ns_sim_scenario *sc)
{
    int n = snprintf(crash_note, sizeof crash_note,
                     "netsim: crashed; replay with: netsim --scenario %s --seed %llu --nodes %u "
                     "--duration %g\n",
                     sc->path, (unsigned long long)sc->seed, sc->nodes, sc->duration_s);
    crash_note_len = n > 0 && (size_t)n < sizeof crash_note ? (size_t)n : 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = crash_handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND;
    sigaction(SIGABRT, &sa, NULL);
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
    sigaction(SIGFPE, &sa, NULL);
}

/* ---- the loop --------------------------------------------------------------------------- */

static double wall_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void progress(const ns_sim *sim, double start_s, double *last_s)
{
    double now = wall_now_s();
    if (now - *last_s < PROGRESS_WALL_S)
        return;
    *last_s = now;
    double sim_s = (double)sim->now_us / 1e6;
    uint64_t done = 0;
    for (size_t k = 0; k < NS_SIM_MEASURED_KINDS; k++)
        done += sim->counts.succeeded[k];
    fprintf(stderr,
            "netsim: t=%.0f/%.0f s (%.0f %%), %u live, %llu lookups succeeded, %llu events, "
            "%.1f sim s per wall s\n",
            sim_s, sim->sc.duration_s, 100 * sim_s / sim->sc.duration_s, sim->live_count,
            (unsigned long long)done, (unsigned long long)sim->counts.events,
            sim_s / (now - start_s));
}

static void dispatch(ns_sim *sim, const ns_sim_event *ev)
{
    switch ((ns_sim_event_kind)ev->kind) {
    case NS_SIM_EV_TIMER:
        ns__sim_fire_timer(sim, ev->index);
        return;
    case NS_SIM_EV_PACKET:
        ns__sim_deliver(sim, ev->index);
        return;
    case NS_SIM_EV_JOIN:
        NS_ASSERT(ns__sim_node_join(sim) == NS_OK);
        return;
    case NS_SIM_EV_BOOTSTRAP:
        ns__sim_node_bootstrap(sim, ev->index);
        return;
    case NS_SIM_EV_CHURN:
        ns__sim_on_churn(sim);
        return;
    case NS_SIM_EV_LOOKUP:
        ns__sim_on_lookup(sim);
        return;
    case NS_SIM_EV_TOPIC:
        ns__sim_on_topic(sim, ev->index);
        return;
    case NS_SIM_EV_PHASE:
        ns__sim_on_phase(sim, (ns_sim_phase)ev->index);
        return;
    }
    NS_ASSERT(!"unknown event kind");
}

static void run_loop(ns_sim *sim)
{
    double start_s = wall_now_s();
    double last_s = start_s;
    ns_sim_event ev;
    while (sim->phase != NS_SIM_PHASE_STOP) {
        if (sim->phase == NS_SIM_PHASE_DRAIN && sim->ops_in_flight_measured == 0)
            break;
        if (!ns__sim_heap_pop(&sim->heap, &ev))
            break;
        NS_ASSERT(ev.at_us >= sim->now_us);
        sim->now_us = ev.at_us;
        sim->counts.events++;
        sim->trace_hash = ns__sim_hash3(sim->trace_hash ^ ev.at_us,
                                        (uint64_t)ev.kind << 32 | ev.index, sim->counts.events);
        dispatch(sim, &ev);
        if (!sim->quiet && sim->counts.events % PROGRESS_EVERY_EVENTS == 0)
            progress(sim, start_s, &last_s);
    }
}

static int load_scenario(const options *o, ns_sim_scenario *sc)
{
    char err[NS_SIM_ERR_SIZE];
    if (ns__scenario_load(sc, o->scenario, err) != NS_OK) {
        fprintf(stderr, "netsim: %s\n", err);
        return EXIT_USAGE;
    }
    if (o->seed_set)
        sc->seed = o->seed;
    if (o->nodes_set)
        sc->nodes = (uint32_t)o->nodes;
    if (o->duration_set)
        sc->duration_s = o->duration_s;
    if (ns__scenario_check(sc, err) != NS_OK) {
        fprintf(stderr, "netsim: %s\n", err);
        return EXIT_USAGE;
    }
    return 0;
}

static int finish(const options *o, ns_sim *sim, double wall_s)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    ns_sim_wall wall = {.seconds = wall_s,
                        .cpu_seconds = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
                                       (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6,
                        .peak_rss_kib = ru.ru_maxrss};
    ns__report_print(stdout, sim, &wall);
    fflush(stdout);
    if (o->csv != NULL && ns__report_csv(o->csv, sim, &wall) != NS_OK) {
        fprintf(stderr, "netsim: %s: cannot write the CSV report (seed %llu)\n", o->csv,
                (unsigned long long)sim->sc.seed);
        return EXIT_ASSERT;
    }
    double rate = ns__report_success(sim);
    if (o->assert_success >= 0 && rate < o->assert_success) {
        fprintf(stderr,
                "netsim: lookup success %.4f is below %.4f (seed %llu; replay: netsim "
                "--scenario %s --seed %llu)\n",
                rate < 0 ? 0 : rate, o->assert_success, (unsigned long long)sim->sc.seed,
                sim->sc.path, (unsigned long long)sim->sc.seed);
        return EXIT_ASSERT;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--economy") == 0)
        return ns__sim_economy_main(argv[2]);
    if (argc == 3 && strcmp(argv[1], "--swarm") == 0)
        return ns__sim_swarm_main(argv[2]);
    if (argc >= 2 && strcmp(argv[1], "--diloco") == 0)
        return ns__sim_diloco_main(argc - 1, argv + 1);
    options o;
    int rc = parse_options(argc, argv, &o);
    if (rc != 0)
        return rc < 0 ? 0 : rc;
    static ns_sim_scenario sc;
    rc = load_scenario(&o, &sc);
    if (rc != 0)
        return rc;
    replay_note_install(&sc);
    double start_s = wall_now_s();
    static ns_sim sim;
    int err = ns__sim_init(&sim, &sc);
    if (err == NS_OK)
        err = ns__sim_workload_start(&sim);
    if (err != NS_OK) {
        fprintf(stderr, "netsim: cannot set up the run: %s (seed %llu)\n", ns_strerror(err),
                (unsigned long long)sc.seed);
        ns__sim_free(&sim);
        return EXIT_ASSERT;
    }
    sim.quiet = o.quiet;
    run_loop(&sim);
    rc = finish(&o, &sim, wall_now_s() - start_s);
    ns__sim_free(&sim);
    return rc;
}
