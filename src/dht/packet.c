/*
 * packet.c: DhtPacket (proto/dht.proto) to bytes and back; the only DHT file that sees protobuf-c.
 *
 * Decoding is the DHT's front door for hostile bytes. It refuses, with NS_EPARSE, anything that
 * is not the one canonical encoding of a packet (re-packing must give the same bytes and no
 * unknown field may be present, also inside contacts), any length that is not what the field
 * holds, and any field that does not belong to the packet's kind and direction, so the handlers
 * in rpc.c and lookup.c meet only packets whose shape is already known. Encoding trims what a
 * response carries (extra records, then contacts) to fit one datagram instead of failing.
 */
#include <string.h>

#include "dht.pb-c.h"
#include "dht_internal.h"

/* Optional fields of a packet, as bits, to say which belong to which kind and direction. */
enum {
    F_WANT_RECORD = 1 << 0,
    F_TARGET = 1 << 1,
    F_SKIP = 1 << 2,
    F_TOKEN = 1 << 3,
    F_ERROR = 1 << 4,
    F_OBSERVED = 1 << 5,
    F_VALUES_TOTAL = 1 << 6,
    F_CONTACTS = 1 << 7,
    F_SENDER_RECORD = 1 << 8,
    F_RECORDS = 1 << 9,
};

typedef struct field_rule {
    unsigned allowed;
    unsigned required;
} field_rule;

/* [kind][response] */
static const field_rule field_rules[5][2] = {
    [NS__DHT_PING] = {{F_WANT_RECORD | F_SENDER_RECORD, 0},
                      {F_OBSERVED | F_SENDER_RECORD, F_OBSERVED | F_SENDER_RECORD}},
    [NS__DHT_FIND_NODE] = {{F_WANT_RECORD | F_TARGET, F_TARGET},
                           {F_OBSERVED | F_TOKEN | F_CONTACTS | F_SENDER_RECORD, F_OBSERVED}},
    [NS__DHT_FIND_VALUE] = {{F_WANT_RECORD | F_TARGET | F_SKIP, F_TARGET},
                            {F_OBSERVED | F_TOKEN | F_CONTACTS | F_SENDER_RECORD | F_RECORDS |
                                 F_VALUES_TOTAL,
                             F_OBSERVED}},
    [NS__DHT_STORE] = {{F_WANT_RECORD | F_TOKEN | F_RECORDS, F_TOKEN | F_RECORDS},
                       {F_OBSERVED | F_ERROR | F_SENDER_RECORD, F_OBSERVED}},
};

static bool ip_len_valid(size_t len)
{
    return len == 4 || len == 16;
}

static bool port_valid(uint32_t port)
{
    return port >= 1 && port <= 65535;
}

static void addr_from_wire(ns_addr *out, const ProtobufCBinaryData *ip, uint32_t port)
{
    NS_ASSERT(ip_len_valid(ip->len));
    NS_ASSERT(port_valid(port));
    memset(out, 0, sizeof *out);
    out->family = ip->len == 4 ? 4 : 6;
    memcpy(out->ip, ip->data, ip->len);
    out->port = (uint16_t)port;
}

static void addr_to_wire(const ns_addr *addr, ProtobufCBinaryData *ip, uint32_t *port)
{
    NS_ASSERT(addr->family == 4 || addr->family == 6);
    ip->data = (uint8_t *)addr->ip;
    ip->len = addr->family == 4 ? 4 : 16;
    *port = addr->port;
}

/* ---- encoding ----------------------------------------------------------------------------- */

/* The protobuf-c view of p; arrays live in the caller's frame. */
typedef struct wire_view {
    Neuroshard__DhtPacket msg;
    Neuroshard__DhtAddress observed;
    Neuroshard__DhtContact contacts[NS_DHT_K];
    Neuroshard__DhtContact *contact_ptrs[NS_DHT_K];
    ProtobufCBinaryData records[NS_DHT_PACKET_RECORDS_MAX];
} wire_view;

static void view_fill(wire_view *v, const ns__dht_packet *p, const uint8_t network_id[32])
{
    NS_ASSERT(p->contact_count <= NS_DHT_K);
    NS_ASSERT(p->record_count <= NS_DHT_PACKET_RECORDS_MAX);
    Neuroshard__DhtPacket *m = &v->msg;
    neuroshard__dht_packet__init(m);
    m->version = NS_DHT_VERSION;
    m->network_id = (ProtobufCBinaryData){32, (uint8_t *)network_id};
    m->sender_id = (ProtobufCBinaryData){NS_ID_BYTES, (uint8_t *)p->sender_id};
    m->txid = p->txid;
    m->response = p->response;
    m->kind = (Neuroshard__DhtKind)p->kind;
    m->time_ms = p->time_ms;
    m->want_record = p->want_record;
    if (p->has_target)
        m->target = (ProtobufCBinaryData){NS_ID_BYTES, (uint8_t *)p->target};
    m->skip = p->skip;
    if (p->has_token)
        m->token = (ProtobufCBinaryData){NS_DHT_TOKEN_BYTES, (uint8_t *)p->token};
    m->error = (Neuroshard__DhtError)p->error;
    if (p->has_observed) {
        neuroshard__dht_address__init(&v->observed);
        addr_to_wire(&p->observed, &v->observed.ip, &v->observed.port);
        m->observed = &v->observed;
    }
    m->values_total = p->values_total;
    for (size_t i = 0; i < p->contact_count; i++) {
        Neuroshard__DhtContact *c = &v->contacts[i];
        neuroshard__dht_contact__init(c);
        c->node_id = (ProtobufCBinaryData){NS_ID_BYTES, (uint8_t *)p->contacts[i].node_id};
        addr_to_wire(&p->contacts[i].addr, &c->ip, &c->port);
        v->contact_ptrs[i] = c;
    }
    m->n_contacts = p->contact_count;
    m->contacts = v->contact_ptrs;
    if (p->sender_record_len > 0)
        m->sender_record = (ProtobufCBinaryData){p->sender_record_len, (uint8_t *)p->sender_record};
    for (size_t i = 0; i < p->record_count; i++) {
        NS_ASSERT(p->record_lens[i] > 0);
        v->records[i] = (ProtobufCBinaryData){p->record_lens[i], (uint8_t *)p->records[i]};
    }
    m->n_records = p->record_count;
    m->records = v->records;
}

int ns__dht_packet_encode(ns__dht_packet *p, const uint8_t network_id[32], uint8_t *out,
                          size_t out_max, size_t *out_len)
{
    NS_ASSERT(p->txid != 0);
    NS_ASSERT(p->kind >= NS__DHT_PING && p->kind <= NS__DHT_STORE);
    NS_ASSERT(p->time_ms != 0);
    wire_view v;
    view_fill(&v, p, network_id);
    Neuroshard__DhtPacket *m = &v.msg;
    size_t size = neuroshard__dht_packet__get_packed_size(m);
    while (size > out_max && m->n_records > 1) {
        m->n_records--;
        size = neuroshard__dht_packet__get_packed_size(m);
    }
    while (size > out_max && m->n_contacts > 0) {
        m->n_contacts--;
        size = neuroshard__dht_packet__get_packed_size(m);
    }
    while (size > out_max && m->n_records > 0) {
        m->n_records--;
        size = neuroshard__dht_packet__get_packed_size(m);
    }
    if (size > out_max)
        return NS_ETOOBIG;
    p->contact_count = m->n_contacts;
    p->record_count = m->n_records;
    NS_ASSERT(neuroshard__dht_packet__pack(m, out) == size);
    *out_len = size;
    return NS_OK;
}

/* ---- decoding ----------------------------------------------------------------------------- */

static bool shape_valid(const Neuroshard__DhtPacket *m, const uint8_t network_id[32])
{
    if (m->base.n_unknown_fields != 0 || m->version != NS_DHT_VERSION || m->network_id.len != 32 ||
        memcmp(m->network_id.data, network_id, 32) != 0 || m->sender_id.len != NS_ID_BYTES ||
        m->txid == 0 || m->time_ms == 0)
        return false;
    if (m->kind < NEUROSHARD__DHT_KIND__DHT_KIND_PING ||
        m->kind > NEUROSHARD__DHT_KIND__DHT_KIND_STORE)
        return false;
    if ((m->target.len != 0 && m->target.len != NS_ID_BYTES) ||
        (m->token.len != 0 && m->token.len != NS_DHT_TOKEN_BYTES) ||
        m->error > NEUROSHARD__DHT_ERROR__DHT_ERROR_STALE ||
        m->sender_record.len > NS_DHT_NODE_RECORD_BYTES_MAX || m->n_contacts > NS_DHT_K ||
        m->n_records > NS_DHT_PACKET_RECORDS_MAX)
        return false;
    if (m->observed != NULL &&
        (m->observed->base.n_unknown_fields != 0 || !ip_len_valid(m->observed->ip.len) ||
         !port_valid(m->observed->port)))
        return false;
    for (size_t i = 0; i < m->n_contacts; i++) {
        const Neuroshard__DhtContact *c = m->contacts[i];
        if (c->base.n_unknown_fields != 0 || c->node_id.len != NS_ID_BYTES ||
            !ip_len_valid(c->ip.len) || !port_valid(c->port))
            return false;
    }
    for (size_t i = 0; i < m->n_records; i++) {
        if (m->records[i].len == 0)
            return false;
    }
    return true;
}

static unsigned fields_present(const Neuroshard__DhtPacket *m)
{
    return (m->want_record ? F_WANT_RECORD : 0u) | (m->target.len ? F_TARGET : 0u) |
           (m->skip ? F_SKIP : 0u) | (m->token.len ? F_TOKEN : 0u) | (m->error ? F_ERROR : 0u) |
           (m->observed ? F_OBSERVED : 0u) | (m->values_total ? F_VALUES_TOTAL : 0u) |
           (m->n_contacts ? F_CONTACTS : 0u) | (m->sender_record.len ? F_SENDER_RECORD : 0u) |
           (m->n_records ? F_RECORDS : 0u);
}

static bool fields_valid(const Neuroshard__DhtPacket *m)
{
    const field_rule *rule = &field_rules[m->kind][m->response ? 1 : 0];
    unsigned present = fields_present(m);
    if ((present & ~rule->allowed) != 0 || (present & rule->required) != rule->required)
        return false;
    return m->kind != NEUROSHARD__DHT_KIND__DHT_KIND_STORE || m->response || m->n_records == 1;
}

static bool canonical(const Neuroshard__DhtPacket *m, const uint8_t *buf, size_t len)
{
    uint8_t again[NS_DHT_PACKET_BYTES_MAX];
    if (neuroshard__dht_packet__get_packed_size(m) != len)
        return false;
    NS_ASSERT(len <= sizeof again);
    NS_ASSERT(neuroshard__dht_packet__pack(m, again) == len);
    return memcmp(again, buf, len) == 0;
}

static void packet_fill(ns__dht_packet *p, Neuroshard__DhtPacket *m)
{
    memset(p, 0, offsetof(ns__dht_packet, contacts));
    memcpy(p->sender_id, m->sender_id.data, NS_ID_BYTES);
    p->txid = m->txid;
    p->response = m->response;
    p->kind = (ns__dht_kind)m->kind;
    p->time_ms = m->time_ms;
    p->want_record = m->want_record;
    p->has_target = m->target.len == NS_ID_BYTES;
    if (p->has_target)
        memcpy(p->target, m->target.data, NS_ID_BYTES);
    p->skip = m->skip;
    p->has_token = m->token.len == NS_DHT_TOKEN_BYTES;
    if (p->has_token)
        memcpy(p->token, m->token.data, NS_DHT_TOKEN_BYTES);
    p->error = (ns__dht_error)m->error;
    p->has_observed = m->observed != NULL;
    if (p->has_observed)
        addr_from_wire(&p->observed, &m->observed->ip, m->observed->port);
    p->values_total = m->values_total;
    p->contact_count = m->n_contacts;
    for (size_t i = 0; i < m->n_contacts; i++) {
        memcpy(p->contacts[i].node_id, m->contacts[i]->node_id.data, NS_ID_BYTES);
        addr_from_wire(&p->contacts[i].addr, &m->contacts[i]->ip, m->contacts[i]->port);
    }
    p->sender_record = m->sender_record.len ? m->sender_record.data : NULL;
    p->sender_record_len = m->sender_record.len;
    p->record_count = m->n_records;
    for (size_t i = 0; i < m->n_records; i++) {
        p->records[i] = m->records[i].data;
        p->record_lens[i] = m->records[i].len;
    }
    p->unpacked_ = m;
}

int ns__dht_packet_decode(const uint8_t *buf, size_t len, const uint8_t network_id[32],
                          ns__dht_packet *p)
{
    NS_ASSERT(buf != NULL || len == 0);
    if (len > NS_DHT_PACKET_BYTES_MAX)
        return NS_ETOOBIG;
    if (len == 0)
        return NS_EPARSE;
    Neuroshard__DhtPacket *m = neuroshard__dht_packet__unpack(NULL, len, buf);
    if (m == NULL)
        return NS_EPARSE;
    if (!shape_valid(m, network_id) || !fields_valid(m) || !canonical(m, buf, len)) {
        neuroshard__dht_packet__free_unpacked(m, NULL);
        return NS_EPARSE;
    }
    packet_fill(p, m);
    NS_ASSERT(p->contact_count <= NS_DHT_K);
    NS_ASSERT(p->record_count <= NS_DHT_PACKET_RECORDS_MAX);
    return NS_OK;
}

void ns__dht_packet_release(ns__dht_packet *p)
{
    if (p->unpacked_ != NULL)
        neuroshard__dht_packet__free_unpacked(p->unpacked_, NULL);
    p->unpacked_ = NULL;
}
