/*
 * scenario.c: the scenario file, an INI file read with libinih.
 *
 * One table lists every key of [scenario]: its type, range, default and meaning. The defaults are
 * set by feeding each default's text through the same setter the file uses, --help prints the
 * table, and so the three never disagree. [partition NAME] sections describe partitions. The
 * first error stops the load with one line naming the file and line; a key that is not in the
 * table is an error, never ignored, so a typo cannot silently run the default.
 */
#include <errno.h>
#include <ini.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "netsim.h"

typedef enum {
    KEY_U32 = 0,
    KEY_U64 = 1,
    KEY_DOUBLE = 2,
} key_type;

typedef struct scenario_key {
    const char *name;
    key_type type;
    size_t offset;
    double min, max; /* inclusive */
    const char *default_text;
    const char *help;
} scenario_key;

#define KEY(field, type, lo, hi, def, help)                                                        \
    {                                                                                              \
#field, type, offsetof(ns_sim_scenario, field), lo, hi, def, help                          \
    }

static const scenario_key scenario_keys[] = {
    KEY(nodes, KEY_U32, 1, NS_SIM_NODES_MAX, "500",
        "nodes alive at once (churn replaces, it does not shrink)"),
    KEY(seed, KEY_U64, 0, 0, "1", "the run's seed: the same seed gives the same run"),
    KEY(duration_s, KEY_DOUBLE, 1, NS_SIM_DURATION_S_MAX, "300",
        "simulated seconds in all, warmup included"),
    KEY(warmup_s, KEY_DOUBLE, 0, NS_SIM_DURATION_S_MAX, "120",
        "simulated seconds before lookups are measured"),
    KEY(join_spread_s, KEY_DOUBLE, 0, NS_SIM_DURATION_S_MAX, "60",
        "the first `nodes` nodes join one by one, evenly over this long from time 0"),
    KEY(latency_median_ms, KEY_DOUBLE, NS_SIM_LATENCY_MS_MIN, NS_SIM_LATENCY_MS_MAX, "50",
        "median one-way latency between two nodes"),
    KEY(latency_sigma, KEY_DOUBLE, 0, 3, "0.5",
        "spread of the log-normal latency (sigma of its log); 0: every pair at the median"),
    KEY(bandwidth_mbps, KEY_DOUBLE, 0.001, 100000, "10",
        "each node's uplink: a packet takes bytes*8/bandwidth to leave, queued per sender"),
    KEY(loss, KEY_DOUBLE, 0, 0.99, "0", "probability that a packet is lost"),
    KEY(churn_per_hour, KEY_DOUBLE, 0, 100, "0",
        "share of the nodes replaced per simulated hour (0.1: 10 %), from join_spread_s on"),
    KEY(churn_crash_share, KEY_DOUBLE, 0, 1, "0.5",
        "share of departures that are crashes (the rest leave gracefully)"),
    KEY(lookups_per_node_per_min, KEY_DOUBLE, 0, 600, "1",
        "measured lookups each node starts per simulated minute, after warmup"),
    KEY(get_node_share, KEY_DOUBLE, 0, 1, "0.25",
        "share of lookups that are gets of a live node's own record"),
    KEY(get_topic_share, KEY_DOUBLE, 0, 1, "0.25",
        "share of lookups that are gets of a published topic record (the rest: find_node)"),
    KEY(topic_records, KEY_U32, 0, NS_SIM_TOPICS_MAX, "32",
        "topic records kept published, each by a random live node (republished when it goes)"),
    KEY(bootstrap_seeds, KEY_U32, 1, NS_SIM_SEEDS_MAX, "3",
        "random live nodes a joining node pings before its bootstrap lookup"),
};
#define SCENARIO_KEY_COUNT (sizeof scenario_keys / sizeof scenario_keys[0])

int ns__parse_u64(const char *text, uint64_t *out)
{
    if (text[0] < '0' || text[0] > '9')
        return NS_EINVAL;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno != 0 || *end != '\0')
        return NS_EINVAL;
    *out = v;
    return NS_OK;
}

int ns__parse_double(const char *text, double *out)
{
    if (text[0] == '\0')
        return NS_EINVAL;
    errno = 0;
    char *end;
    double v = strtod(text, &end);
    if (errno != 0 || *end != '\0' || !isfinite(v))
        return NS_EINVAL;
    *out = v;
    return NS_OK;
}

static int key_set(ns_sim_scenario *sc, const scenario_key *k, const char *value, char *why,
                   size_t why_size)
{
    void *field = (char *)sc + k->offset;
    uint64_t u;
    double d;
    switch ((key_type)k->type) {
    case KEY_U32:
    case KEY_U64:
        if (ns__parse_u64(value, &u) != NS_OK) {
            snprintf(why, why_size, "%s '%s' is not a whole number", k->name, value);
            return NS_EINVAL;
        }
        if (k->max > k->min && ((double)u < k->min || (double)u > k->max)) {
            snprintf(why, why_size, "%s %s is out of range [%.0f, %.0f]", k->name, value, k->min,
                     k->max);
            return NS_EINVAL;
        }
        if (k->type == KEY_U32)
            *(uint32_t *)field = (uint32_t)u;
        else
            *(uint64_t *)field = u;
        return NS_OK;
    case KEY_DOUBLE:
        if (ns__parse_double(value, &d) != NS_OK) {
            snprintf(why, why_size, "%s '%s' is not a number", k->name, value);
            return NS_EINVAL;
        }
        if (d < k->min || d > k->max) {
            snprintf(why, why_size, "%s %s is out of range [%g, %g]", k->name, value, k->min,
                     k->max);
            return NS_EINVAL;
        }
        *(double *)field = d;
        return NS_OK;
    }
    NS_ASSERT(!"unknown key type");
    return NS_EINVAL;
}

static const scenario_key *key_find(const char *name)
{
    for (size_t i = 0; i < SCENARIO_KEY_COUNT; i++) {
        if (strcmp(scenario_keys[i].name, name) == 0)
            return &scenario_keys[i];
    }
    return NULL;
}

/* ---- partitions ------------------------------------------------------------------------- */

enum { PART_START = 1, PART_END = 2, PART_GROUPS = 4, PART_ALL = 7 };

typedef struct load_state {
    ns_sim_scenario *sc;
    unsigned part_seen[NS_SIM_PARTITIONS_MAX]; /* PART_* bits set so far */
    bool failed;
    char why[NS_SIM_WHY_SIZE];
} load_state;

static int groups_parse(ns_sim_partition *p, const char *value, char *why, size_t why_size)
{
    char buf[256];
    if (strlen(value) >= sizeof buf) {
        snprintf(why, why_size, "groups is too long");
        return NS_EINVAL;
    }
    strcpy(buf, value);
    double sum = 0;
    p->group_count = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ", ", &save); tok != NULL; tok = strtok_r(NULL, ", ", &save)) {
        double share;
        if (ns__parse_double(tok, &share) != NS_OK || share <= 0 || share > 1) {
            snprintf(why, why_size, "groups: '%s' is not a share in (0, 1]", tok);
            return NS_EINVAL;
        }
        if (p->group_count == NS_SIM_GROUPS_MAX) {
            snprintf(why, why_size, "groups: more than %d groups", NS_SIM_GROUPS_MAX);
            return NS_EINVAL;
        }
        p->share[p->group_count++] = share;
        sum += share;
    }
    if (sum > 1 + 1e-9) {
        snprintf(why, why_size, "groups: the shares add up to %g, more than 1", sum);
        return NS_EINVAL;
    }
    if (sum < 1 - 1e-9) {
        if (p->group_count == NS_SIM_GROUPS_MAX) {
            snprintf(why, why_size, "groups: more than %d groups", NS_SIM_GROUPS_MAX);
            return NS_EINVAL;
        }
        p->share[p->group_count++] = 1 - sum; /* the rest of the nodes form one more group */
    }
    if (p->group_count < 2) {
        snprintf(why, why_size, "groups: a partition needs at least two groups");
        return NS_EINVAL;
    }
    return NS_OK;
}

static ns_sim_partition *partition_for(load_state *st, const char *name, size_t *index)
{
    ns_sim_scenario *sc = st->sc;
    if (name[0] == '\0' || strlen(name) >= NS_SIM_NAME_SIZE) {
        snprintf(st->why, sizeof st->why, "a partition needs a name of 1 to %d characters",
                 NS_SIM_NAME_SIZE - 1);
        return NULL;
    }
    for (size_t i = 0; i < sc->partition_count; i++) {
        if (strcmp(sc->partitions[i].name, name) == 0) {
            *index = i;
            return &sc->partitions[i];
        }
    }
    if (sc->partition_count == NS_SIM_PARTITIONS_MAX) {
        snprintf(st->why, sizeof st->why, "more than %d partitions", NS_SIM_PARTITIONS_MAX);
        return NULL;
    }
    *index = sc->partition_count++;
    ns_sim_partition *p = &sc->partitions[*index];
    *p = (ns_sim_partition){0};
    strcpy(p->name, name);
    return p;
}

static int partition_set(load_state *st, const char *pname, const char *key, const char *value)
{
    size_t index;
    ns_sim_partition *p = partition_for(st, pname, &index);
    if (p == NULL)
        return NS_EINVAL;
    double *when = NULL;
    unsigned bit;
    if (strcmp(key, "start_s") == 0) {
        when = &p->start_s;
        bit = PART_START;
    } else if (strcmp(key, "end_s") == 0) {
        when = &p->end_s;
        bit = PART_END;
    } else if (strcmp(key, "groups") == 0) {
        bit = PART_GROUPS;
    } else {
        snprintf(st->why, sizeof st->why,
                 "unknown key '%s' in [partition %s] (keys: start_s, end_s, groups)", key, pname);
        return NS_EINVAL;
    }
    if (st->part_seen[index] & bit) {
        snprintf(st->why, sizeof st->why, "%s given twice for partition %s", key, pname);
        return NS_EINVAL;
    }
    st->part_seen[index] |= bit;
    if (when == NULL)
        return groups_parse(p, value, st->why, sizeof st->why);
    if (ns__parse_double(value, when) != NS_OK || *when < 0 || *when > NS_SIM_DURATION_S_MAX) {
        snprintf(st->why, sizeof st->why, "%s '%s' is not a time in seconds", key, value);
        return NS_EINVAL;
    }
    return NS_OK;
}

/* ---- loading ---------------------------------------------------------------------------- */

static int scenario_ini_line(void *user, const char *section, const char *name, const char *value)
{
    load_state *st = user;
    if (st->failed)
        return 1; /* the first error is the one reported; the rest of the file is not read */
    int rc;
    if (strcmp(section, "scenario") == 0) {
        const scenario_key *k = key_find(name);
        if (k == NULL) {
            snprintf(st->why, sizeof st->why, "unknown key '%s' (netsim --help lists them)", name);
            rc = NS_EINVAL;
        } else {
            rc = key_set(st->sc, k, value, st->why, sizeof st->why);
        }
    } else if (strncmp(section, "partition ", 10) == 0) {
        rc = partition_set(st, section + 10, name, value);
    } else {
        snprintf(st->why, sizeof st->why,
                 "unknown section [%s] (sections: [scenario], [partition NAME])", section);
        rc = NS_EINVAL;
    }
    if (rc != NS_OK)
        st->failed = true;
    return rc == NS_OK;
}

static void scenario_defaults(ns_sim_scenario *sc)
{
    *sc = (ns_sim_scenario){0};
    for (size_t i = 0; i < SCENARIO_KEY_COUNT; i++) {
        char why[NS_SIM_WHY_SIZE];
        NS_ASSERT(key_set(sc, &scenario_keys[i], scenario_keys[i].default_text, why, sizeof why) ==
                  NS_OK);
    }
}

int ns__scenario_load(ns_sim_scenario *sc, const char *path, char err[NS_SIM_ERR_SIZE])
{
    scenario_defaults(sc);
    if (strlen(path) >= sizeof sc->path) {
        snprintf(err, NS_SIM_ERR_SIZE, "scenario path is too long");
        return NS_EINVAL;
    }
    strcpy(sc->path, path);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, NS_SIM_ERR_SIZE, "%s: cannot read scenario: %s", path, strerror(errno));
        return NS_EINVAL;
    }
    load_state st = {.sc = sc, .why = "syntax error"};
    int line = ini_parse_file(f, scenario_ini_line, &st);
    fclose(f);
    if (line != 0) {
        snprintf(err, NS_SIM_ERR_SIZE, "%s:%d: %s", path, line, st.why);
        return NS_EINVAL;
    }
    for (size_t i = 0; i < sc->partition_count; i++) {
        if (st.part_seen[i] != PART_ALL) {
            snprintf(err, NS_SIM_ERR_SIZE, "%s: partition %s needs start_s, end_s and groups", path,
                     sc->partitions[i].name);
            return NS_EINVAL;
        }
    }
    return NS_OK;
}

int ns__scenario_check(const ns_sim_scenario *sc, char err[NS_SIM_ERR_SIZE])
{
    const char *path = sc->path;
    if (sc->warmup_s >= sc->duration_s) {
        snprintf(err, NS_SIM_ERR_SIZE, "%s: warmup_s (%g) must be below duration_s (%g)", path,
                 sc->warmup_s, sc->duration_s);
        return NS_EINVAL;
    }
    if (sc->join_spread_s > sc->warmup_s) {
        snprintf(err, NS_SIM_ERR_SIZE, "%s: join_spread_s (%g) must not exceed warmup_s (%g)", path,
                 sc->join_spread_s, sc->warmup_s);
        return NS_EINVAL;
    }
    if (sc->get_node_share + sc->get_topic_share > 1 + 1e-9) {
        snprintf(err, NS_SIM_ERR_SIZE, "%s: get_node_share + get_topic_share exceed 1", path);
        return NS_EINVAL;
    }
    if (sc->get_topic_share > 0 && sc->topic_records == 0) {
        snprintf(err, NS_SIM_ERR_SIZE, "%s: get_topic_share needs topic_records above 0", path);
        return NS_EINVAL;
    }
    for (size_t i = 0; i < sc->partition_count; i++) {
        const ns_sim_partition *p = &sc->partitions[i];
        if (p->start_s >= p->end_s) {
            snprintf(err, NS_SIM_ERR_SIZE, "%s: partition %s: start_s must be below end_s", path,
                     p->name);
            return NS_EINVAL;
        }
    }
    return NS_OK;
}

void ns__scenario_print_keys(FILE *out)
{
    for (size_t i = 0; i < SCENARIO_KEY_COUNT; i++) {
        const scenario_key *k = &scenario_keys[i];
        fprintf(out, "  %-26s default %s\n      %s\n", k->name, k->default_text, k->help);
    }
}
