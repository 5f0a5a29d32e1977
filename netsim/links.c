/*
 * links.c: the simulated network between nodes: addresses, latency, uplinks, loss, partitions.
 *
 * A datagram a core sends (env->send on NS_CHANNEL_DATAGRAM, the frame's body being the packet)
 * waits for its sender's uplink (serialisation at bytes*8/bandwidth, one queue a sender, tail
 * drop past NS_SIM_UPLINK_QUEUE_MS_MAX), may be lost (probability `loss`, drawn from the network's
 * own PRNG stream), is dropped while an active partition separates the two nodes, and otherwise
 * arrives after the pair's one-way latency, which is log-normal over pairs and fixed for each
 * pair: a hash of the run's seed and the two serials, so it needs no table and is the same in
 * both directions. Downlinks, jitter and reordering are not modelled. Sending never fails for
 * network reasons, as with UDP: what is lost is counted, not reported to the core.
 */
#include <math.h>
#include <string.h>

#include "neuroshard/wire.h"
#include "netsim.h"

#define HASH_LATENCY   0x6c6174656e6379ULL /* "latency" */
#define HASH_PARTITION 0x7061727469ULL     /* "parti" */

void ns__sim_addr_of(uint32_t serial, ns_addr *out)
{
    uint32_t n = serial + 1;
    NS_ASSERT(n <= 0xffffff);
    *out = (ns_addr){.family = 4, .port = NS_SIM_PORT};
    out->ip[0] = 10;
    out->ip[1] = (uint8_t)(n >> 16);
    out->ip[2] = (uint8_t)(n >> 8);
    out->ip[3] = (uint8_t)n;
}

bool ns__sim_serial_of(const ns_sim *sim, const ns_addr *addr, uint32_t *serial)
{
    if (addr->family != 4 || addr->ip[0] != 10 || addr->port != NS_SIM_PORT)
        return false;
    uint32_t n = (uint32_t)addr->ip[1] << 16 | (uint32_t)addr->ip[2] << 8 | addr->ip[3];
    if (n == 0 || n - 1 >= sim->serial_count)
        return false;
    *serial = n - 1;
    return true;
}

double ns__sim_latency_ms(const ns_sim *sim, uint32_t a, uint32_t b)
{
    if (a == b)
        return NS_SIM_LATENCY_MS_MIN;
    uint32_t lo = a < b ? a : b;
    uint32_t hi = a < b ? b : a;
    uint64_t h1 = ns__sim_hash3(sim->sc.seed ^ HASH_LATENCY, lo, hi);
    uint64_t h2 = ns__sim_mix64(h1 ^ HASH_LATENCY);
    /* Box-Muller: 1 - u1 is in (0, 1], so the log is finite. */
    double u1 = ns__sim_unit_from_hash(h1);
    double u2 = ns__sim_unit_from_hash(h2);
    double z = sqrt(-2.0 * log(1.0 - u1)) * cos(2.0 * M_PI * u2);
    double ms = sim->sc.latency_median_ms * exp(sim->sc.latency_sigma * z);
    if (ms < NS_SIM_LATENCY_MS_MIN)
        ms = NS_SIM_LATENCY_MS_MIN;
    if (ms > NS_SIM_LATENCY_MS_MAX)
        ms = NS_SIM_LATENCY_MS_MAX;
    return ms;
}

static size_t partition_group(const ns_sim *sim, size_t p, uint32_t serial)
{
    const ns_sim_partition *part = &sim->sc.partitions[p];
    double u = ns__sim_unit_from_hash(ns__sim_hash3(sim->sc.seed ^ HASH_PARTITION, p, serial));
    double acc = 0;
    for (size_t g = 0; g + 1 < part->group_count; g++) {
        acc += part->share[g];
        if (u < acc)
            return g;
    }
    return part->group_count - 1;
}

bool ns__sim_partitioned(const ns_sim *sim, uint32_t a, uint32_t b)
{
    for (size_t p = 0; p < sim->sc.partition_count; p++) {
        const ns_sim_partition *part = &sim->sc.partitions[p];
        uint64_t start_us = (uint64_t)(part->start_s * 1e6);
        uint64_t end_us = (uint64_t)(part->end_s * 1e6);
        if (sim->now_us < start_us || sim->now_us >= end_us)
            continue;
        if (partition_group(sim, p, a) != partition_group(sim, p, b))
            return true;
    }
    return false;
}

/* When the packet's last bit leaves the sender, or 0 when the uplink queue is full. */
static uint64_t uplink_depart_us(ns_sim *sim, ns_sim_node *node, size_t len)
{
    double wire_bits = 8.0 * (double)(len + NS_SIM_UDP_OVERHEAD_BYTES);
    uint64_t serialise_us = (uint64_t)ceil(wire_bits / sim->sc.bandwidth_mbps);
    uint64_t start_us = node->uplink_free_us > sim->now_us ? node->uplink_free_us : sim->now_us;
    if (start_us - sim->now_us > (uint64_t)NS_SIM_UPLINK_QUEUE_MS_MAX * 1000)
        return 0;
    node->uplink_free_us = start_us + serialise_us;
    return node->uplink_free_us;
}

static void count_sent(ns_sim *sim, size_t len)
{
    sim->counts.packets_sent++;
    sim->counts.bytes_sent += len;
    if (sim->phase == NS_SIM_PHASE_MEASURE) {
        sim->counts.window_packets++;
        sim->counts.window_bytes += len;
    }
}

int ns__sim_send(void *ctx, const ns_peer *to, ns_channel ch, const ns_frame *f)
{
    ns_sim_node *node = ctx;
    ns_sim *sim = node->sim;
    NS_ASSERT(to != NULL);
    NS_ASSERT(f != NULL);
    if (ch != NS_CHANNEL_DATAGRAM || f->type != NS_FRAME_DHT) {
        sim->counts.bad_channel++; /* links (the stream channel) are not simulated yet */
        return NS_EINVAL;
    }
    if (f->body_len > NS_SIM_PACKET_BYTES_MAX) {
        sim->counts.oversize++;
        return NS_ETOOBIG;
    }
    count_sent(sim, f->body_len);
    uint32_t dst;
    if (!ns__sim_serial_of(sim, &to->addr, &dst)) {
        sim->counts.no_route++;
        return NS_OK;
    }
    uint64_t sent_us = uplink_depart_us(sim, node, f->body_len);
    if (sent_us == 0) {
        sim->counts.queue_drops++;
        return NS_OK;
    }
    if (sim->sc.loss > 0 && ns__sim_rng_unit(&sim->rng_net) < sim->sc.loss) {
        sim->counts.lost++;
        return NS_OK;
    }
    if (ns__sim_partitioned(sim, node->serial, dst)) {
        sim->counts.partitioned++;
        return NS_OK;
    }
    uint32_t index = ns__sim_packet_alloc(sim);
    if (index == UINT32_MAX) {
        sim->counts.pool_drops++;
        return NS_OK;
    }
    ns_sim_packet *p = ns__sim_slab_at(&sim->packets, index);
    p->src = node->serial;
    p->dst = dst;
    p->sent_us = sent_us;
    p->len = (uint16_t)f->body_len;
    memcpy(p->bytes, f->body, f->body_len);
    uint64_t arrive_us =
        sent_us + (uint64_t)llround(ns__sim_latency_ms(sim, node->serial, dst) * 1000.0);
    NS_ASSERT(ns__sim_schedule(sim, arrive_us, NS_SIM_EV_PACKET, index) == NS_OK);
    return NS_OK;
}

void ns__sim_deliver(ns_sim *sim, uint32_t packet_index)
{
    ns_sim_packet *p = ns__sim_slab_at(&sim->packets, packet_index);
    ns_sim_node *dst = ns__sim_node_live(sim, p->dst);
    sim->trace_hash = ns__sim_hash3(sim->trace_hash, (uint64_t)p->src << 32 | p->dst, p->len);
    if (sim->serial_state[p->src] == NS_SIM_SERIAL_CRASHED && sim->gone_us[p->src] < p->sent_us) {
        sim->counts.from_crashed++; /* it was still in the crashed sender's uplink queue */
    } else if (dst == NULL) {
        sim->counts.to_dead++;
    } else {
        ns_addr from;
        ns__sim_addr_of(p->src, &from);
        sim->counts.delivered++;
        ns_dht_on_datagram(dst->dht, &from, p->bytes, p->len);
    }
    ns__sim_packet_release(sim, packet_index);
}
