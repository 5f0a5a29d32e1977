/*
 * node_record.c: a node's record about itself (NS_RECORD_NODE), and network ids.
 *
 * The record is what a node shows to prove who it is, to a DHT peer and in a link handshake: a
 * signed record with an empty topic (so its DHT key is the node id) whose body is a NodeInfo
 * (proto/node.proto): the network it belongs to, its X25519 static key for links, where it
 * listens, its version and the memory it offers. Opening one verifies the signature first and
 * decodes the body second, refusing anything that does not round-trip canonically.
 */
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "neuroshard/link.h"
#include "node.pb-c.h"

#define NETWORK_DOMAIN "neuroshard/network/v1"

void ns_network_id(uint8_t out[32], const char *name)
{
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    crypto_hash_sha256_update(&st, (const uint8_t *)NETWORK_DOMAIN, sizeof NETWORK_DOMAIN - 1);
    crypto_hash_sha256_update(&st, (const uint8_t *)name, strlen(name));
    crypto_hash_sha256_final(&st, out);
}

int ns_node_record_make(const ns_key *key, const ns_node_info *info, uint64_t now_ms,
                        uint64_t ttl_ms, uint64_t sequence, uint8_t **out, size_t *out_len)
{
    NS_ASSERT(info->address_count <= NS_NODE_ADDRESSES_MAX);
    NS_ASSERT(memchr(info->version, '\0', sizeof info->version) != NULL);
    Neuroshard__NodeAddress addrs[NS_NODE_ADDRESSES_MAX];
    Neuroshard__NodeAddress *addr_ptrs[NS_NODE_ADDRESSES_MAX];
    for (size_t i = 0; i < info->address_count; i++) {
        const ns_addr *a = &info->addresses[i];
        NS_ASSERT(a->family == 4 || a->family == 6);
        neuroshard__node_address__init(&addrs[i]);
        addrs[i].ip.data = (uint8_t *)a->ip;
        addrs[i].ip.len = a->family == 4 ? 4 : 16;
        addrs[i].port = a->port;
        addr_ptrs[i] = &addrs[i];
    }
    Neuroshard__NodeInfo ni = NEUROSHARD__NODE_INFO__INIT;
    ni.network_id.data = (uint8_t *)info->network_id;
    ni.network_id.len = sizeof info->network_id;
    ni.link_static.data = (uint8_t *)info->link_static;
    ni.link_static.len = sizeof info->link_static;
    ni.n_addresses = info->address_count;
    ni.addresses = addr_ptrs;
    ni.version = (char *)info->version;
    ni.memory_mb = info->memory_mb;
    ni.layer_latency_us = info->layer_latency_us;
    ni.tier = info->tier;
    ni.bandwidth_mbps = info->bandwidth_mbps;
    ni.layer_first = info->layer_first;
    ni.layer_last = info->layer_last;
    if (info->in_quorum) {
        ni.quorum_id.data = (uint8_t *)info->quorum_id;
        ni.quorum_id.len = sizeof info->quorum_id;
    }
    ni.stake_nano = info->stake_nano;
    ni.reputation_ppm = info->reputation_ppm;
    uint8_t body[512];
    size_t body_len = neuroshard__node_info__get_packed_size(&ni);
    if (body_len > sizeof body)
        return NS_ETOOBIG;
    NS_ASSERT(neuroshard__node_info__pack(&ni, body) == body_len);
    ns_record rec = {.type = NS_RECORD_NODE,
                     .sequence = sequence,
                     .timestamp_ms = now_ms,
                     .expiry_ms = now_ms + ttl_ms,
                     .body = body,
                     .body_len = body_len};
    return ns_record_sign(key, &rec, out, out_len);
}

static int node_info_decode(const uint8_t *buf, size_t len, ns_node_info *info)
{
    Neuroshard__NodeInfo *ni = neuroshard__node_info__unpack(NULL, len, buf);
    if (ni == NULL)
        return NS_EPARSE;
    int rc = NS_OK;
    if (ni->network_id.len != 32 || ni->link_static.len != 32 ||
        ni->n_addresses > NS_NODE_ADDRESSES_MAX || strlen(ni->version) >= NS_NODE_VERSION_SIZE ||
        neuroshard__node_info__get_packed_size(ni) != len || ni->tier > 5 ||
        ni->layer_first > ni->layer_last || (ni->quorum_id.len != 0 && ni->quorum_id.len != 32) ||
        ni->reputation_ppm > 1000000 || ni->stake_nano > (uint64_t)INT64_MAX)
        rc = NS_EPARSE;
    for (size_t i = 0; rc == NS_OK && i < ni->n_addresses; i++) {
        const Neuroshard__NodeAddress *a = ni->addresses[i];
        if ((a->ip.len != 4 && a->ip.len != 16) || a->port > 65535)
            rc = NS_EPARSE;
    }
    if (rc == NS_OK) {
        memset(info, 0, sizeof *info);
        memcpy(info->network_id, ni->network_id.data, 32);
        memcpy(info->link_static, ni->link_static.data, 32);
        info->address_count = ni->n_addresses;
        for (size_t i = 0; i < ni->n_addresses; i++) {
            const Neuroshard__NodeAddress *a = ni->addresses[i];
            info->addresses[i].family = a->ip.len == 4 ? 4 : 6;
            memcpy(info->addresses[i].ip, a->ip.data, a->ip.len);
            info->addresses[i].port = (uint16_t)a->port;
        }
        strcpy(info->version, ni->version);
        info->memory_mb = ni->memory_mb;
        info->layer_latency_us = ni->layer_latency_us;
        info->tier = ni->tier;
        info->bandwidth_mbps = ni->bandwidth_mbps;
        info->layer_first = ni->layer_first;
        info->layer_last = ni->layer_last;
        info->in_quorum = ni->quorum_id.len == 32;
        if (info->in_quorum)
            memcpy(info->quorum_id, ni->quorum_id.data, 32);
        info->stake_nano = ni->stake_nano;
        info->reputation_ppm = ni->reputation_ppm;
    }
    neuroshard__node_info__free_unpacked(ni, NULL);
    return rc;
}

int ns_node_record_open(const uint8_t *buf, size_t len, uint64_t now_ms, ns_record *rec,
                        ns_node_info *info)
{
    ns_record local;
    ns_record *r = rec != NULL ? rec : &local;
    int rc = ns_record_verify(buf, len, now_ms, r);
    if (rc != NS_OK)
        return rc;
    if (r->type != NS_RECORD_NODE || r->topic_len != 0)
        return NS_EPARSE;
    return node_info_decode(r->body, r->body_len, info);
}
