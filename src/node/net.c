/*
 * net.c: the peer network bound to libuv — the daemon's side of the DHT and of links.
 *
 * One UDP socket carries the DHT core's datagrams and one TCP listener on the same port accepts
 * encrypted links; both cores are sans-IO and reach the world only through the env (datagrams,
 * timers) and through the link callbacks wired here (bytes). This file also does what only a
 * process with sockets can: resolve and ping the bootstrap seeds with back-off, announce itself
 * on the local network by UDP multicast, keep the routing table on disk across restarts, re-sign
 * the node record before it expires, and run the reachability check in which a peer dials this
 * node back. It keeps what `neuroctl doctor` reports.
 */
#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "neuroshard/dht.h"
#include "neuroshard/link.h"
#include "node_internal.h"

#define NET_CONNS_MAX                256
#define NET_UDP_QUEUE_BYTES_MAX      (1u << 20)
#define NET_UDP_RCVBUF_BYTES         (4 << 20)
#define NET_READ_BYTES_MAX           65536
#define NET_LAN_GROUP                "239.192.78.83"
#define NET_LAN_PORT                 8424
#define NET_LAN_MAGIC                "NSLAN1"
#define NET_LAN_FIRST_MS             500
#define NET_LAN_INTERVAL_MS          30000
#define NET_RECORD_TTL_MS            (2 * 3600 * 1000ull)
#define NET_RECORD_RESIGN_MS         (3600 * 1000ull)
#define NET_BOOTSTRAP_FIRST_MS       1500
#define NET_BOOTSTRAP_BACKOFF_MIN_MS 1000
#define NET_BOOTSTRAP_BACKOFF_MAX_MS 60000
#define NET_HEALTH_MS                60000 /* how often to check that we still have peers */
#define NET_SAVE_MS                  (10 * 60 * 1000)
#define NET_ROUTING_FILE             "routing.bin"
#define NET_ROUTING_BYTES_MAX        (1u << 20)
#define NET_CHECK_FIRST_MS           5000
#define NET_CHECK_INTERVAL_MS        (10 * 60 * 1000)
#define NET_PROBES_MAX               8 /* connect-back probes this node runs for others at once */
#define NET_SEED_ADDRS_MAX           4
#define NET_PEER_LINKS               6     /* peer links kept open for gossip (ledger, proofs) */
#define NET_PEER_LINKS_MS            5000  /* how often to top them up */
#define NET_WANT_MS                  15000 /* how often to look up the holders a node wants */
#define NET_WANT_DIALS_MAX           16    /* holders dialled after one lookup */

typedef enum {
    CONN_PEER = 0,  /* an ordinary link */
    CONN_CHECK = 1, /* we dialed a peer to ask it to connect back to us */
    CONN_PROBE = 2, /* we dial back a peer that asked; close once the handshake is done */
    CONN_DONE = 3,  /* a probe that did its work and is closing: no link of anyone's */
} conn_purpose;

typedef struct net_conn net_conn;

struct net_conn {
    ns_net *net;
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    ns_link *link;
    ns_addr remote;
    conn_purpose purpose;
    bool outbound;
    bool closing;
    uint8_t peer_id[NS_ID_BYTES];
    bool has_peer_id;
    uint8_t expected[NS_ID_BYTES];
    uint8_t probe_for[NS_ID_BYTES]; /* CONN_PROBE: who asked */
    uint64_t nonce;                 /* CONN_CHECK / CONN_PROBE */
    bool reported;                  /* CONN_CHECK: the outcome is recorded */
    net_conn *prev, *next;
};

typedef struct write_req {
    uv_write_t req;
    net_conn *conn;
    uint8_t *buf;
    size_t len;
} write_req;

typedef struct seed_state {
    char text[NS_BOOTSTRAP_TEXT_SIZE];
    ns_addr addrs[NET_SEED_ADDRS_MAX];
    size_t addr_count;
    int resolve_error; /* libuv error of the last resolution, 0 when it worked */
    uint32_t pings;
    uint64_t last_packet_ms; /* any datagram from one of its addresses */
    uv_getaddrinfo_t gai;
    bool resolving;
    ns_net *net;
} seed_state;

typedef struct reach_state {
    int status; /* 1 reached, 0 not reached, -1 never checked */
    uint64_t at_ms;
    uint8_t by[NS_ID_BYTES];
    ns_addr tested;
} reach_state;

/* The holders of a topic this node wants links to (its layer cohort), found in the DHT. */
typedef struct net_want {
    bool on, busy;
    uint32_t type;
    char topic[NS_RECORD_TOPIC_BYTES_MAX + 1];
    uint8_t prefix[16]; /* the records' bodies must start with it */
    size_t prefix_len;
    uint64_t next_ms;
    uint64_t found, dialled;
    uint8_t finding[NET_WANT_DIALS_MAX][NS_ID_BYTES]; /* holders whose address is looked up */
    size_t finding_count;
} net_want;

struct ns_net {
    uv_loop_t *loop;
    ns_uv_env *uvenv;
    const ns_config *cfg;
    const ns_key *key;
    uv_udp_t udp;
    uv_tcp_t tcp;
    uv_udp_t lan;
    bool lan_open;
    ns_addr bound;
    ns_dht *dht;
    ns_link_identity ident;
    uint8_t *record;      /* our signed node record, as links and the DHT show it */
    uint8_t *record_prev; /* the one before, still read by handshakes that began with it */
    size_t record_len;
    uint64_t record_seq;
    uint64_t memory_mb;
    ns_node_info capacity; /* the capacity fields of the record (S2), set by the swarm */
    net_conn *conns;
    size_t conn_count;
    size_t probe_count;
    seed_state seeds[NS_BOOTSTRAP_MAX];
    size_t seed_count;
    uint64_t backoff_ms;
    uint64_t bootstrap_timer, lan_timer, health_timer, resign_timer, save_timer, check_timer,
        links_timer;
    net_want want;
    size_t peer_links_max; /* NET_PEER_LINKS, or the test hook's */
    struct {
        ns_net_frame_fn frame; /* frames of type >= NS_FRAME_APP on peer links */
        ns_net_link_fn link;   /* a peer link came up */
        ns_net_link_fn down;   /* a peer link went away */
        void *arg;
    } apps[NS_NET_APPS_];
    bool bootstrapped;
    reach_state reach;
    uint8_t udp_buf[NET_READ_BYTES_MAX];
    uint8_t lan_buf[128];
    char routing_path[PATH_MAX + 32];
    /* counters for /metrics */
    uint64_t udp_in, udp_out, udp_dropped_queue, lan_in, links_accepted, links_dialed, links_failed,
        links_refused_full, frames_unknown;
    uint64_t drops_logged; /* DHT drops already reported in the log */
};

/* ---- helpers ------------------------------------------------------------------------------ */

static uint64_t net_now(const ns_net *net)
{
    return ns_env_now(&net->uvenv->env);
}

static void addr_from_sockaddr(ns_addr *out, const struct sockaddr *sa)
{
    memset(out, 0, sizeof *out);
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        out->family = 4;
        memcpy(out->ip, &in->sin_addr, 4);
        out->port = ntohs(in->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        out->family = 6;
        memcpy(out->ip, &in6->sin6_addr, 16);
        out->port = ntohs(in6->sin6_port);
    }
}

static socklen_t sockaddr_from_addr(struct sockaddr_storage *ss, const ns_addr *a)
{
    memset(ss, 0, sizeof *ss);
    if (a->family == 4) {
        struct sockaddr_in *in = (struct sockaddr_in *)ss;
        in->sin_family = AF_INET;
        memcpy(&in->sin_addr, a->ip, 4);
        in->sin_port = htons(a->port);
        return sizeof *in;
    }
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    in6->sin6_family = AF_INET6;
    memcpy(&in6->sin6_addr, a->ip, 16);
    in6->sin6_port = htons(a->port);
    return sizeof *in6;
}

static void id_hex(char out[NS_NODE_ID_HEX_SIZE], const uint8_t id[NS_ID_BYTES])
{
    ns_hex_encode(out, NS_NODE_ID_HEX_SIZE, id, NS_ID_BYTES);
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

/* ---- UDP: the DHT's datagrams ------------------------------------------------------------- */

typedef struct udp_req {
    uv_udp_send_t req;
    uint8_t *buf;
} udp_req;

static void udp_sent(uv_udp_send_t *req, int status)
{
    (void)status;
    udp_req *r = (udp_req *)req;
    free(r->buf);
    free(r);
}

static int udp_send(ns_net *net, const ns_addr *to, const uint8_t *buf, size_t len)
{
    struct sockaddr_storage ss;
    sockaddr_from_addr(&ss, to);
    uv_buf_t b = uv_buf_init((char *)buf, (unsigned)len);
    int rc = uv_udp_try_send(&net->udp, &b, 1, (const struct sockaddr *)&ss);
    if (rc >= 0) {
        net->udp_out++;
        return NS_OK;
    }
    if (rc != UV_EAGAIN || uv_udp_get_send_queue_size(&net->udp) > NET_UDP_QUEUE_BYTES_MAX) {
        net->udp_dropped_queue++;
        return NS_ELIMIT;
    }
    udp_req *r = malloc(sizeof *r);
    uint8_t *copy = malloc(len);
    if (r == NULL || copy == NULL) {
        free(r);
        free(copy);
        return NS_ENOMEM;
    }
    memcpy(copy, buf, len);
    r->buf = copy;
    b = uv_buf_init((char *)copy, (unsigned)len);
    if (uv_udp_send(&r->req, &net->udp, &b, 1, (const struct sockaddr *)&ss, udp_sent) != 0) {
        free(copy);
        free(r);
        net->udp_dropped_queue++;
        return NS_EIO;
    }
    net->udp_out++;
    return NS_OK;
}

static void udp_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    ns_net *net = handle->data;
    *buf = uv_buf_init((char *)net->udp_buf, sizeof net->udp_buf);
}

static void note_seed_packet(ns_net *net, const ns_addr *from)
{
    for (size_t i = 0; i < net->seed_count; i++) {
        for (size_t j = 0; j < net->seeds[i].addr_count; j++) {
            if (ns_addr_equal(&net->seeds[i].addrs[j], from))
                net->seeds[i].last_packet_ms = net_now(net);
        }
    }
}

static void udp_read(uv_udp_t *handle, ssize_t nread, const uv_buf_t *buf,
                     const struct sockaddr *sa, unsigned flags)
{
    (void)buf;
    ns_net *net = handle->data;
    if (nread <= 0 || sa == NULL || (flags & UV_UDP_PARTIAL))
        return;
    ns_addr from;
    addr_from_sockaddr(&from, sa);
    net->udp_in++;
    note_seed_packet(net, &from);
    ns_dht_on_datagram(net->dht, &from, net->udp_buf, (size_t)nread);
}

/* The oldest established connection to a peer for a purpose. Oldest: a peer's connect-back probe
 * arrives as a second connection that its dialer closes at once, and a frame sent on it would be
 * lost (a pipeline waiting for that frame would wait for ever); the list is newest first. */
static net_conn *conn_by_peer(ns_net *net, const uint8_t id[NS_ID_BYTES], conn_purpose purpose)
{
    net_conn *found = NULL;
    for (net_conn *c = net->conns; c != NULL; c = c->next) {
        if (!c->closing && c->has_peer_id && c->purpose == purpose &&
            memcmp(c->peer_id, id, NS_ID_BYTES) == 0 && ns_link_established(c->link))
            found = c;
    }
    return found;
}

/* The env's send, bound to our sockets: datagrams to UDP, stream frames to an open link. */
static int net_send(void *arg, const ns_peer *to, ns_channel ch, const ns_frame *f)
{
    ns_net *net = arg;
    switch (ch) {
    case NS_CHANNEL_DATAGRAM:
        if (f->type != NS_FRAME_DHT || f->tensor.dtype != NS_DTYPE_NONE)
            return NS_EINVAL;
        return udp_send(net, &to->addr, f->body, f->body_len);
    case NS_CHANNEL_STREAM: {
        if (!to->has_node_id)
            return NS_EINVAL;
        net_conn *c = conn_by_peer(net, to->node_id, CONN_PEER);
        return c != NULL ? ns_link_send(c->link, f) : NS_ENOENT;
    }
    }
    return NS_EINVAL;
}

/* ---- TCP: links --------------------------------------------------------------------------- */

static void conn_closed_cb(uv_handle_t *handle)
{
    net_conn *c = handle->data;
    ns_net *net = c->net;
    ns_link_free(c->link);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        net->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    NS_ASSERT(net->conn_count > 0);
    net->conn_count--;
    if (c->purpose == CONN_PROBE)
        net->probe_count--;
    free(c);
}

static void conn_close(net_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    uv_close((uv_handle_t *)&c->tcp, conn_closed_cb);
}

static net_conn *conn_new(ns_net *net, conn_purpose purpose)
{
    if (net->conn_count >= NET_CONNS_MAX) {
        net->links_refused_full++;
        return NULL;
    }
    net_conn *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->net = net;
    c->purpose = purpose;
    c->tcp.data = c;
    NS_ASSERT(uv_tcp_init(net->loop, &c->tcp) == 0);
    c->next = net->conns;
    if (c->next != NULL)
        c->next->prev = c;
    net->conns = c;
    net->conn_count++;
    if (purpose == CONN_PROBE)
        net->probe_count++;
    return c;
}

static void conn_write_done(uv_write_t *req, int status)
{
    write_req *w = (write_req *)req;
    if (status == 0 && !w->conn->closing)
        ns_link_on_written(w->conn->link, w->len);
    free(w->buf);
    free(w);
}

static void link_write(void *arg, uint8_t *buf, size_t len)
{
    net_conn *c = arg;
    write_req *w = malloc(sizeof *w);
    if (w == NULL || c->closing) {
        free(w);
        free(buf);
        return;
    }
    w->conn = c;
    w->buf = buf;
    w->len = len;
    uv_buf_t b = uv_buf_init((char *)buf, (unsigned)len);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, conn_write_done) != 0) {
        free(buf);
        free(w);
        ns_link_on_transport_closed(c->link, NS_EIO);
    }
}

static void send_small_frame(net_conn *c, uint32_t type, const uint8_t *body, size_t len)
{
    ns_frame f = {.type = type, .body = body, .body_len = len};
    if (ns_link_send(c->link, &f) != NS_OK)
        NS_LOG_D("net", "frame not sent type=%u", (unsigned)type);
}

static void report_check(ns_net *net, int status, const uint8_t *by)
{
    if (status < 0)
        return; /* we could not even reach the helper: no verdict on our reachability */
    net->reach.status = status;
    net->reach.at_ms = net_now(net);
    if (by != NULL)
        memcpy(net->reach.by, by, NS_ID_BYTES);
    char peer[NS_NODE_ID_HEX_SIZE] = "?";
    if (by != NULL)
        id_hex(peer, by);
    NS_LOG_I("net", "reachability reached=%s by=%.16s", status == 1 ? "yes" : "no", peer);
}

static void probe_finished(net_conn *probe, bool reached)
{
    ns_net *net = probe->net;
    net_conn *asker = conn_by_peer(net, probe->probe_for, CONN_PEER);
    if (asker != NULL) {
        uint8_t body[9];
        put_u64(body, probe->nonce);
        body[8] = reached ? 0 : 1;
        send_small_frame(asker, NS_FRAME_CONNECT_BACK_RESULT, body, sizeof body);
    }
    probe->purpose = CONN_DONE; /* counted once: the probe slot is free again */
    net->probe_count--;
}

static void link_established(void *arg, const uint8_t peer_id[NS_ID_BYTES], const uint8_t *record,
                             size_t record_len)
{
    (void)record;
    (void)record_len;
    net_conn *c = arg;
    memcpy(c->peer_id, peer_id, NS_ID_BYTES);
    c->has_peer_id = true;
    char hex[NS_NODE_ID_HEX_SIZE], where[NS_ADDR_TEXT_SIZE];
    id_hex(hex, peer_id);
    ns_addr_to_text(where, sizeof where, &c->remote);
    NS_LOG_D("net", "link up peer=%.16s addr=%s outbound=%d", hex, where, (int)c->outbound);
    for (int a = 0; a < NS_NET_APPS_ && c->purpose == CONN_PEER; a++)
        if (c->net->apps[a].link != NULL)
            c->net->apps[a].link(c->net->apps[a].arg, peer_id);
    if (c->purpose == CONN_PROBE) {
        probe_finished(c, true);
        ns_link_close(c->link);
    } else if (c->purpose == CONN_CHECK) {
        uint8_t body[10];
        put_u64(body, c->nonce);
        body[8] = (uint8_t)(c->net->bound.port >> 8);
        body[9] = (uint8_t)c->net->bound.port;
        send_small_frame(c, NS_FRAME_CONNECT_BACK, body, sizeof body);
    }
}

static void dial(ns_net *net, const ns_addr *to, const uint8_t *expected, conn_purpose purpose,
                 const uint8_t *probe_for, uint64_t nonce);

static void handle_connect_back(net_conn *c, const ns_frame *f)
{
    ns_net *net = c->net;
    if (f->body_len != 10 || !c->has_peer_id)
        return;
    ns_addr back = c->remote; /* only the address the link comes from: no reflection */
    back.port = (uint16_t)(f->body[8] << 8 | f->body[9]);
    if (back.port == 0 || net->probe_count >= NET_PROBES_MAX) {
        uint8_t body[9];
        memcpy(body, f->body, 8);
        body[8] = 1;
        send_small_frame(c, NS_FRAME_CONNECT_BACK_RESULT, body, sizeof body);
        return;
    }
    dial(net, &back, c->peer_id, CONN_PROBE, c->peer_id, get_u64(f->body));
}

static void link_frame(void *arg, const ns_frame *f)
{
    net_conn *c = arg;
    switch (f->type) {
    case NS_FRAME_CONNECT_BACK:
        handle_connect_back(c, f);
        return;
    case NS_FRAME_CONNECT_BACK_RESULT:
        if (c->purpose == CONN_CHECK && !c->reported && f->body_len == 9 &&
            get_u64(f->body) == c->nonce) {
            c->reported = true;
            report_check(c->net, f->body[8] == 0 ? 1 : 0, c->peer_id);
            ns_link_close(c->link);
        }
        return;
    default:
        if (f->type >= NS_FRAME_APP && c->purpose == CONN_PEER && c->has_peer_id) {
            ns_net_app app = f->type >= NS_FRAME_SYNC_HELLO && f->type <= NS_FRAME_SYNC_WEIGHTS_PART
                                 ? NS_NET_APP_SYNC
                             : f->type == NS_FRAME_EVIDENCE_GET || f->type == NS_FRAME_EVIDENCE_PART
                                 ? NS_NET_APP_ECON
                             : f->type >= NS_FRAME_PIPE_ACT ? NS_NET_APP_SWARM
                                                            : NS_NET_APP_ECON;
            if (c->net->apps[app].frame != NULL)
                c->net->apps[app].frame(c->net->apps[app].arg, c->peer_id, f);
            else
                c->net->frames_unknown++;
        } else {
            c->net->frames_unknown++;
        }
        return;
    }
}

static void link_writable(void *arg)
{
    (void)arg;
}

static void link_closed(void *arg, int reason)
{
    net_conn *c = arg;
    for (int a = 0; a < NS_NET_APPS_ && c->purpose == CONN_PEER && c->has_peer_id; a++)
        if (c->net->apps[a].down != NULL)
            c->net->apps[a].down(c->net->apps[a].arg, c->peer_id);
    if (c->purpose == CONN_PROBE)
        probe_finished(c, false);
    else if (c->purpose == CONN_CHECK && !c->reported && c->has_peer_id)
        report_check(c->net, 0, c->peer_id); /* the helper hung up without an answer */
    if (reason != NS_OK) {
        c->net->links_failed++;
        char where[NS_ADDR_TEXT_SIZE];
        ns_addr_to_text(where, sizeof where, &c->remote);
        NS_LOG_D("net", "link closed addr=%s err=\"%s\"", where, ns_strerror(reason));
    }
    conn_close(c);
}

static const ns_link_callbacks link_callbacks_template = {
    .write = link_write,
    .established = link_established,
    .frame = link_frame,
    .writable = link_writable,
    .closed = link_closed,
};

static void conn_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    (void)handle;
    size_t n = suggested < NET_READ_BYTES_MAX ? suggested : NET_READ_BYTES_MAX;
    buf->base = malloc(n);
    buf->len = buf->base != NULL ? n : 0;
}

static void conn_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    net_conn *c = stream->data;
    if (nread > 0 && !c->closing)
        ns_link_on_bytes(c->link, (const uint8_t *)buf->base, (size_t)nread);
    else if (nread < 0 && !c->closing)
        ns_link_on_transport_closed(c->link, NS_EIO); /* a clean close comes as CLOSE first */
    free(buf->base);
}

static int conn_start_link(net_conn *c, ns_link_role role, const uint8_t *expected)
{
    ns_link_callbacks cb = link_callbacks_template;
    cb.arg = c;
    int rc = ns_link_new(&c->link, role, &c->net->ident, expected, &c->net->uvenv->env, &cb);
    if (rc == NS_OK && uv_read_start((uv_stream_t *)&c->tcp, conn_alloc, conn_read) != 0)
        rc = NS_EIO;
    return rc;
}

static void on_connected(uv_connect_t *req, int status)
{
    net_conn *c = req->data;
    if (c->closing)
        return;
    if (status != 0 || conn_start_link(c, NS_LINK_INITIATOR, c->expected) != NS_OK) {
        c->net->links_failed++;
        if (c->purpose == CONN_PROBE)
            probe_finished(c, false);
        else if (c->purpose == CONN_CHECK)
            report_check(c->net, -1, NULL);
        conn_close(c);
    }
}

static void dial(ns_net *net, const ns_addr *to, const uint8_t *expected, conn_purpose purpose,
                 const uint8_t *probe_for, uint64_t nonce)
{
    net_conn *c = conn_new(net, purpose);
    if (c == NULL) {
        if (purpose == CONN_PROBE && probe_for != NULL) {
            net_conn *asker = conn_by_peer(net, probe_for, CONN_PEER);
            uint8_t body[9];
            put_u64(body, nonce);
            body[8] = 1;
            if (asker != NULL)
                send_small_frame(asker, NS_FRAME_CONNECT_BACK_RESULT, body, sizeof body);
        }
        return;
    }
    c->outbound = true;
    c->remote = *to;
    c->nonce = nonce;
    memcpy(c->expected, expected, NS_ID_BYTES);
    if (probe_for != NULL)
        memcpy(c->probe_for, probe_for, NS_ID_BYTES);
    net->links_dialed++;
    struct sockaddr_storage ss;
    sockaddr_from_addr(&ss, to);
    c->connect_req.data = c;
    if (uv_tcp_connect(&c->connect_req, &c->tcp, (const struct sockaddr *)&ss, on_connected) != 0) {
        net->links_failed++;
        if (purpose == CONN_PROBE)
            probe_finished(c, false);
        conn_close(c);
    }
}

static void free_handle(uv_handle_t *handle)
{
    free(handle);
}

static void on_accept(uv_stream_t *server, int status)
{
    ns_net *net = server->data;
    if (status != 0)
        return;
    net_conn *c = conn_new(net, CONN_PEER);
    if (c == NULL) {
        uv_tcp_t *drop = malloc(sizeof *drop); /* accept and drop, so the backlog drains */
        if (drop == NULL)
            return;
        uv_tcp_init(net->loop, drop);
        uv_accept(server, (uv_stream_t *)drop);
        uv_close((uv_handle_t *)drop, free_handle);
        return;
    }
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0 ||
        uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0 ||
        conn_start_link(c, NS_LINK_RESPONDER, NULL) != NS_OK) {
        conn_close(c);
        return;
    }
    addr_from_sockaddr(&c->remote, (struct sockaddr *)&ss);
    net->links_accepted++;
}

/* ---- the node record ---------------------------------------------------------------------- */

static int sign_record(ns_net *net)
{
    ns_node_info info;
    memset(&info, 0, sizeof info);
    memcpy(info.network_id, net->ident.network_id, 32);
    memcpy(info.link_static, net->ident.link_static_public, 32);
    snprintf(info.version, sizeof info.version, "%s", NS_VERSION);
    info.memory_mb = net->memory_mb;
    info.layer_latency_us = net->capacity.layer_latency_us;
    info.tier = net->capacity.tier;
    info.bandwidth_mbps = net->capacity.bandwidth_mbps;
    info.layer_first = net->capacity.layer_first;
    info.layer_last = net->capacity.layer_last;
    info.in_quorum = net->capacity.in_quorum;
    memcpy(info.quorum_id, net->capacity.quorum_id, sizeof info.quorum_id);
    info.stake_nano = net->capacity.stake_nano;
    info.reputation_ppm = net->capacity.reputation_ppm;
    static const uint8_t any4[4] = {0};
    static const uint8_t any6[16] = {0};
    bool wildcard = memcmp(net->bound.ip, net->bound.family == 4 ? any4 : any6,
                           net->bound.family == 4 ? 4 : 16) == 0;
    if (!wildcard)
        info.addresses[info.address_count++] = net->bound;
    ns_addr seen;
    if (net->dht != NULL && ns_dht_observed_addr(net->dht, &seen) == NS_OK &&
        !(info.address_count > 0 && ns_addr_equal(&seen, &info.addresses[0]))) {
        seen.port = net->bound.port; /* peers see our UDP source: our listening port */
        info.addresses[info.address_count++] = seen;
    }
    uint64_t now = net_now(net);
    net->record_seq = now > net->record_seq ? now : net->record_seq + 1;
    uint8_t *rec;
    size_t len;
    int rc =
        ns_node_record_make(net->key, &info, now, NET_RECORD_TTL_MS, net->record_seq, &rec, &len);
    if (rc != NS_OK)
        return rc;
    /* Links read the record only during their handshake (at most NS_LINK_HANDSHAKE_TIMEOUT_MS),
     * so the previous one, kept until the next re-signing an hour later, outlives every user. */
    free(net->record_prev);
    net->record_prev = net->record;
    net->record = rec;
    net->record_len = len;
    net->ident.node_record = rec;
    net->ident.node_record_len = len;
    return NS_OK;
}

static void publish_record(ns_net *net)
{
    if (ns_dht_set_self_record(net->dht, net->record, net->record_len) != NS_OK ||
        ns_dht_put(net->dht, net->record, net->record_len, NULL, NULL) != NS_OK)
        NS_LOG_W("net", "cannot publish the node record");
}

static void resign_timer_fired(void *arg, uint64_t now_ms)
{
    ns_net *net = arg;
    net->resign_timer = 0;
    if (sign_record(net) == NS_OK)
        publish_record(net);
    else
        NS_LOG_W("net", "cannot re-sign the node record; the old one stays until it expires");
    net->resign_timer =
        ns_env_timer(&net->uvenv->env, now_ms + NET_RECORD_RESIGN_MS, resign_timer_fired, net);
}

/* ---- bootstrap ---------------------------------------------------------------------------- */

static void bootstrap_round(ns_net *net);

static void seed_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    seed_state *seed = req->data;
    ns_net *net = seed->net;
    seed->resolving = false;
    seed->resolve_error = status;
    if (status == 0) {
        seed->addr_count = 0;
        for (struct addrinfo *ai = res; ai != NULL && seed->addr_count < NET_SEED_ADDRS_MAX;
             ai = ai->ai_next) {
            if (ai->ai_family == AF_INET || ai->ai_family == AF_INET6)
                addr_from_sockaddr(&seed->addrs[seed->addr_count++], ai->ai_addr);
        }
    }
    uv_freeaddrinfo(res);
    if (status == UV_ECANCELED || net->dht == NULL)
        return;
    if (status != 0)
        NS_LOG_W("net", "bootstrap seed does not resolve seed=%s err=\"%s\"", seed->text,
                 uv_strerror(status));
    for (size_t i = 0; i < seed->addr_count; i++) {
        seed->pings++;
        if (ns_dht_ping(net->dht, &seed->addrs[i]) != NS_OK)
            NS_LOG_D("net", "ping refused seed=%s", seed->text);
    }
}

static void resolve_seed(ns_net *net, seed_state *seed)
{
    if (seed->resolving)
        return;
    const char *colon = strrchr(seed->text, ':');
    char host[NS_BOOTSTRAP_TEXT_SIZE];
    size_t n = (size_t)(colon - seed->text);
    memcpy(host, seed->text, n);
    host[n] = '\0';
    if (host[0] == '[' && n >= 2 && host[n - 1] == ']') {
        memmove(host, host + 1, n - 2);
        host[n - 2] = '\0';
    }
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = net->bound.family == 6 ? AF_UNSPEC : AF_INET;
    hints.ai_socktype = SOCK_DGRAM;
    seed->net = net;
    seed->gai.data = seed;
    if (uv_getaddrinfo(net->loop, &seed->gai, seed_resolved, host, colon + 1, &hints) == 0)
        seed->resolving = true;
}

static void lan_announce(ns_net *net);

static void bootstrap_retry(void *arg, uint64_t now_ms)
{
    (void)now_ms;
    bootstrap_round(arg);
}

static void bootstrap_done(void *arg, const ns_dht_result *result)
{
    ns_net *net = arg;
    size_t peers = ns_dht_contact_count(net->dht);
    if (peers > 0) {
        if (!net->bootstrapped)
            NS_LOG_I("net", "joined the swarm peers=%zu hops=%u", peers, (unsigned)result->hops);
        net->bootstrapped = true;
        net->backoff_ms = NET_BOOTSTRAP_BACKOFF_MIN_MS;
        publish_record(net);
        return;
    }
    if (net->seed_count == 0 && !net->cfg->lan_discovery) {
        if (!net->bootstrapped)
            NS_LOG_I("net", "no bootstrap seeds: this node starts a new swarm (genesis)");
        net->bootstrapped = true; /* alone by design; others will bootstrap from us */
        return;
    }
    NS_LOG_I("net", "no peer answered yet; retrying in %llus",
             (unsigned long long)(net->backoff_ms / 1000));
    net->bootstrap_timer = 0;
    uint64_t at = net_now(net) + net->backoff_ms;
    net->backoff_ms = net->backoff_ms * 2 > NET_BOOTSTRAP_BACKOFF_MAX_MS
                          ? NET_BOOTSTRAP_BACKOFF_MAX_MS
                          : net->backoff_ms * 2;
    net->bootstrap_timer = ns_env_timer(&net->uvenv->env, at, bootstrap_retry, net);
}

static void bootstrap_lookup(void *arg, uint64_t now_ms)
{
    (void)now_ms;
    ns_net *net = arg;
    net->bootstrap_timer = 0;
    if (ns_dht_bootstrap(net->dht, bootstrap_done, net) != NS_OK) {
        ns_dht_result none = {.status = NS_ENOENT};
        bootstrap_done(net, &none);
    }
}

/* Every source at once: configured seeds, the saved table (loaded at start), the LAN. */
static void bootstrap_round(ns_net *net)
{
    net->bootstrap_timer = 0;
    for (size_t i = 0; i < net->seed_count; i++)
        resolve_seed(net, &net->seeds[i]);
    if (net->lan_open)
        lan_announce(net);
    net->bootstrap_timer = ns_env_timer(&net->uvenv->env, net_now(net) + NET_BOOTSTRAP_FIRST_MS,
                                        bootstrap_lookup, net);
}

/* What remote peers can trigger is logged at most once a minute, as a summary. */
static void log_drops(ns_net *net)
{
    ns_dht_stats st;
    ns_dht_get_stats(net->dht, &st);
    uint64_t total = st.dropped_malformed + st.dropped_rate_limited + st.dropped_unexpected +
                     st.records_bad_signature + st.records_future + st.records_expired +
                     st.records_oversize + st.identity_rejected + st.store_bad_token;
    if (total == net->drops_logged)
        return;
    NS_LOG_W("net",
             "dropped %llu datagrams or records in the last minute (totals: malformed=%llu "
             "rate_limited=%llu unexpected=%llu bad_signature=%llu identity=%llu bad_token=%llu)",
             (unsigned long long)(total - net->drops_logged),
             (unsigned long long)st.dropped_malformed, (unsigned long long)st.dropped_rate_limited,
             (unsigned long long)st.dropped_unexpected,
             (unsigned long long)st.records_bad_signature, (unsigned long long)st.identity_rejected,
             (unsigned long long)st.store_bad_token);
    net->drops_logged = total;
}

static void health_timer_fired(void *arg, uint64_t now_ms)
{
    ns_net *net = arg;
    net->health_timer = 0;
    log_drops(net);
    if (ns_dht_contact_count(net->dht) == 0 && net->bootstrap_timer == 0 &&
        (net->seed_count > 0 || net->lan_open)) {
        NS_LOG_W("net", "no peers left; bootstrapping again");
        net->bootstrapped = false;
        bootstrap_round(net);
    }
    net->health_timer =
        ns_env_timer(&net->uvenv->env, now_ms + NET_HEALTH_MS, health_timer_fired, net);
}

/* ---- peer links for gossip ---------------------------------------------------------------- */

static size_t peer_links(const ns_net *net)
{
    size_t n = 0;
    for (const net_conn *c = net->conns; c != NULL; c = c->next)
        n += !c->closing && c->purpose == CONN_PEER;
    return n;
}

static bool linked_or_dialing(const ns_net *net, const uint8_t id[NS_ID_BYTES])
{
    for (const net_conn *c = net->conns; c != NULL; c = c->next) {
        if (c->closing || c->purpose != CONN_PEER)
            continue;
        if ((c->has_peer_id && memcmp(c->peer_id, id, NS_ID_BYTES) == 0) ||
            (c->outbound && memcmp(c->expected, id, NS_ID_BYTES) == 0))
            return true;
    }
    return false;
}

/* A holder found in the DHT: dialled at its address in the routing table, else found first. */
static void found_holder(void *arg, const ns_dht_result *r)
{
    ns_net *net = arg;
    net_want *w = &net->want;
    for (size_t i = 0; r->status == NS_OK && i < r->contact_count; i++) {
        const ns_dht_contact *c = &r->contacts[i];
        for (size_t k = 0; k < w->finding_count; k++) {
            if (memcmp(w->finding[k], c->node_id, NS_ID_BYTES) != 0)
                continue;
            if (!linked_or_dialing(net, c->node_id)) {
                dial(net, &c->addr, c->node_id, CONN_PEER, NULL, 0);
                w->dialled++;
            }
            memmove(w->finding[k], w->finding[k + 1], (w->finding_count - k - 1) * NS_ID_BYTES);
            w->finding_count--;
            break;
        }
    }
}

static void want_got(void *arg, const ns_dht_result *r)
{
    ns_net *net = arg;
    net_want *w = &net->want;
    w->busy = false;
    if (r->status != NS_OK)
        return;
    ns_dht_contact contacts[64];
    size_t n = ns_dht_contacts(net->dht, contacts, 64), dials = 0;
    for (size_t i = 0; i < r->record_count && dials < NET_WANT_DIALS_MAX; i++) {
        ns_record rec;
        if (ns_record_verify(r->records[i], r->record_lens[i], ns_env_now(&net->uvenv->env),
                             &rec) != NS_OK ||
            rec.type != w->type || rec.topic_len != strlen(w->topic) ||
            memcmp(rec.topic, w->topic, rec.topic_len) != 0 || rec.body_len < w->prefix_len ||
            memcmp(rec.body, w->prefix, w->prefix_len) != 0 ||
            memcmp(rec.author, net->key->node_id, NS_ID_BYTES) == 0)
            continue;
        w->found++;
        if (linked_or_dialing(net, rec.author))
            continue;
        dials++;
        bool known = false;
        for (size_t k = 0; k < n && !known; k++) {
            if (memcmp(contacts[k].node_id, rec.author, NS_ID_BYTES) == 0) {
                dial(net, &contacts[k].addr, rec.author, CONN_PEER, NULL, 0);
                w->dialled++;
                known = true;
            }
        }
        if (!known && w->finding_count < NET_WANT_DIALS_MAX &&
            ns_dht_find_node(net->dht, rec.author, found_holder, net) == NS_OK)
            memcpy(w->finding[w->finding_count++], rec.author, NS_ID_BYTES);
    }
}

void ns_net_want_holders(ns_net *net, uint32_t type, const char *topic, const uint8_t *prefix,
                         size_t prefix_len)
{
    net_want *w = &net->want;
    if (topic == NULL || strlen(topic) > NS_RECORD_TOPIC_BYTES_MAX ||
        prefix_len > sizeof w->prefix) {
        w->on = false;
        return;
    }
    bool same = w->on && w->type == type && strcmp(w->topic, topic) == 0 &&
                w->prefix_len == prefix_len && memcmp(w->prefix, prefix, prefix_len) == 0;
    if (same)
        return;
    w->on = true;
    w->type = type;
    snprintf(w->topic, sizeof w->topic, "%s", topic);
    memcpy(w->prefix, prefix, prefix_len);
    w->prefix_len = prefix_len;
    w->next_ms = 0; /* at the next links round */
}

/* Looks the wanted holders up every NET_WANT_MS. */
static void want_round(ns_net *net, uint64_t now_ms)
{
    net_want *w = &net->want;
    if (!w->on || w->busy || now_ms < w->next_ms || net->dht == NULL)
        return;
    w->next_ms = now_ms + NET_WANT_MS;
    w->finding_count = 0; /* lookups of the last round that found nothing */
    ns_record rec = {.type = w->type, .topic_len = strlen(w->topic)};
    memcpy(rec.topic, w->topic, rec.topic_len);
    uint8_t key[NS_SHA256_BYTES];
    ns_record_key(&rec, key);
    w->busy = ns_dht_get(net->dht, key, want_got, net) == NS_OK;
}

/* Dials contacts of the routing table, in random order, until NET_PEER_LINKS links are open or
 * being opened, so that gossip reaches the swarm; and the holders this node wants. */
static void links_timer_fired(void *arg, uint64_t now_ms)
{
    ns_net *net = arg;
    net->links_timer = 0;
    want_round(net, now_ms);
    ns_dht_contact contacts[64];
    size_t n = ns_dht_contacts(net->dht, contacts, 64);
    for (size_t i = n; i > 1; i--) { /* Fisher-Yates */
        size_t j = randombytes_uniform((uint32_t)i);
        ns_dht_contact t = contacts[i - 1];
        contacts[i - 1] = contacts[j];
        contacts[j] = t;
    }
    for (size_t i = 0; i < n && peer_links(net) < net->peer_links_max; i++) {
        if (contacts[i].fails == 0 && !linked_or_dialing(net, contacts[i].node_id))
            dial(net, &contacts[i].addr, contacts[i].node_id, CONN_PEER, NULL, 0);
    }
    net->links_timer =
        ns_env_timer(&net->uvenv->env, now_ms + NET_PEER_LINKS_MS, links_timer_fired, net);
}

void ns_net_set_capacity(ns_net *net, const ns_node_info *cap)
{
    ns_node_info *c = &net->capacity;
    bool same = c->layer_latency_us == cap->layer_latency_us && c->tier == cap->tier &&
                c->bandwidth_mbps == cap->bandwidth_mbps && c->layer_first == cap->layer_first &&
                c->layer_last == cap->layer_last && c->in_quorum == cap->in_quorum &&
                memcmp(c->quorum_id, cap->quorum_id, sizeof c->quorum_id) == 0 &&
                c->stake_nano == cap->stake_nano && c->reputation_ppm == cap->reputation_ppm;
    if (same)
        return;
    *c = *cap;
    if (net->dht != NULL && sign_record(net) == NS_OK)
        publish_record(net);
}

void ns_net_set_app(ns_net *net, ns_net_app app, ns_net_frame_fn on_frame, ns_net_link_fn on_link,
                    ns_net_link_fn on_down, void *arg)
{
    NS_ASSERT(app < NS_NET_APPS_);
    net->apps[app].frame = on_frame;
    net->apps[app].link = on_link;
    net->apps[app].down = on_down;
    net->apps[app].arg = arg;
}

bool ns_net_has_link(ns_net *net, const uint8_t peer_id[NS_NODE_ID_BYTES])
{
    net_conn *c = conn_by_peer(net, peer_id, CONN_PEER);
    return c != NULL && !c->closing;
}

size_t ns_net_broadcast(ns_net *net, const ns_frame *f, const uint8_t *except)
{
    size_t sent = 0;
    for (net_conn *c = net->conns; c != NULL; c = c->next) {
        if (c->closing || c->purpose != CONN_PEER || !c->has_peer_id ||
            !ns_link_established(c->link))
            continue;
        if (except != NULL && memcmp(c->peer_id, except, NS_ID_BYTES) == 0)
            continue;
        sent += ns_link_send(c->link, f) == NS_OK;
    }
    return sent;
}

int ns_net_send_frame(ns_net *net, const uint8_t peer_id[NS_ID_BYTES], const ns_frame *f)
{
    net_conn *c = conn_by_peer(net, peer_id, CONN_PEER);
    return c != NULL ? ns_link_send(c->link, f) : NS_ENOENT;
}

/* ---- LAN discovery ------------------------------------------------------------------------ */

static void lan_announce(ns_net *net)
{
    uint8_t msg[6 + 32 + 32 + 2];
    memcpy(msg, NET_LAN_MAGIC, 6);
    memcpy(msg + 6, net->ident.network_id, 32);
    memcpy(msg + 38, net->key->node_id, 32);
    msg[70] = (uint8_t)(net->bound.port >> 8);
    msg[71] = (uint8_t)net->bound.port;
    struct sockaddr_in group;
    uv_ip4_addr(NET_LAN_GROUP, NET_LAN_PORT, &group);
    uv_buf_t b = uv_buf_init((char *)msg, sizeof msg);
    if (uv_udp_try_send(&net->lan, &b, 1, (const struct sockaddr *)&group) < 0)
        NS_LOG_D("net", "lan announce not sent");
}

static void lan_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    ns_net *net = handle->data;
    *buf = uv_buf_init((char *)net->lan_buf, sizeof net->lan_buf);
}

static void lan_read(uv_udp_t *handle, ssize_t nread, const uv_buf_t *buf,
                     const struct sockaddr *sa, unsigned flags)
{
    (void)buf;
    (void)flags;
    ns_net *net = handle->data;
    const uint8_t *m = net->lan_buf;
    if (nread != 72 || sa == NULL || memcmp(m, NET_LAN_MAGIC, 6) != 0 ||
        memcmp(m + 6, net->ident.network_id, 32) != 0 || memcmp(m + 38, net->key->node_id, 32) == 0)
        return;
    ns_addr from;
    addr_from_sockaddr(&from, sa);
    from.port = (uint16_t)(m[70] << 8 | m[71]);
    net->lan_in++;
    if (from.port != 0 && ns_dht_ping(net->dht, &from) != NS_OK)
        NS_LOG_D("net", "lan ping refused");
}

static void lan_timer_fired(void *arg, uint64_t now_ms)
{
    ns_net *net = arg;
    lan_announce(net);
    net->lan_timer =
        ns_env_timer(&net->uvenv->env, now_ms + NET_LAN_INTERVAL_MS, lan_timer_fired, net);
}

static void lan_open(ns_net *net)
{
    struct sockaddr_in any;
    uv_ip4_addr("0.0.0.0", NET_LAN_PORT, &any);
    NS_ASSERT(uv_udp_init(net->loop, &net->lan) == 0);
    net->lan.data = net;
    int rc = uv_udp_bind(&net->lan, (const struct sockaddr *)&any, UV_UDP_REUSEADDR);
    if (rc == 0)
        rc = uv_udp_set_membership(&net->lan, NET_LAN_GROUP, NULL, UV_JOIN_GROUP);
    if (rc == 0) {
        uv_udp_set_multicast_loop(&net->lan, 1);
        uv_udp_set_multicast_ttl(&net->lan, 1);
        rc = uv_udp_recv_start(&net->lan, lan_alloc, lan_read);
    }
    if (rc != 0) {
        NS_LOG_I("net", "lan discovery unavailable err=\"%s\"", uv_strerror(rc));
        uv_close((uv_handle_t *)&net->lan, NULL);
        return;
    }
    net->lan_open = true;
    net->lan_timer =
        ns_env_timer(&net->uvenv->env, net_now(net) + NET_LAN_FIRST_MS, lan_timer_fired, net);
}

/* ---- the routing table on disk ------------------------------------------------------------ */

static void save_table(ns_net *net)
{
    uint8_t *buf;
    size_t len;
    if (ns_dht_save(net->dht, &buf, &len) != NS_OK)
        return;
    int rc = ns_file_write_atomic(net->routing_path, buf, len, 0600);
    free(buf);
    if (rc != NS_OK)
        NS_LOG_W("net", "cannot save the routing table path=%s err=\"%s\"", net->routing_path,
                 ns_strerror(rc));
}

static void save_timer_fired(void *arg, uint64_t now_ms)
{
    ns_net *net = arg;
    save_table(net);
    net->save_timer = ns_env_timer(&net->uvenv->env, now_ms + NET_SAVE_MS, save_timer_fired, net);
}

static void load_table(ns_net *net)
{
    uint8_t *buf;
    size_t len;
    int rc = ns_file_read(net->routing_path, NET_ROUTING_BYTES_MAX, &buf, &len);
    if (rc == NS_ENOENT)
        return;
    if (rc == NS_OK) {
        rc = ns_dht_load(net->dht, buf, len);
        free(buf);
    }
    if (rc != NS_OK)
        NS_LOG_W("net", "saved routing table ignored path=%s err=\"%s\"", net->routing_path,
                 ns_strerror(rc));
    else
        NS_LOG_D("net", "saved routing table loaded path=%s", net->routing_path);
}

/* ---- reachability check ------------------------------------------------------------------- */

static void check_timer_fired(void *arg, uint64_t now_ms)
{
    ns_net *net = arg;
    ns_dht_contact contacts[8];
    size_t n = ns_dht_contacts(net->dht, contacts, 8);
    if (n > 0) {
        uint32_t pick;
        ns_env_random(&net->uvenv->env, &pick, sizeof pick);
        const ns_dht_contact *helper = &contacts[pick % n];
        uint64_t nonce;
        ns_env_random(&net->uvenv->env, &nonce, sizeof nonce);
        dial(net, &helper->addr, helper->node_id, CONN_CHECK, NULL, nonce);
    }
    net->check_timer = ns_env_timer(&net->uvenv->env,
                                    now_ms + (n > 0 ? NET_CHECK_INTERVAL_MS : NET_CHECK_FIRST_MS),
                                    check_timer_fired, net);
}

/* ---- start and stop ----------------------------------------------------------------------- */

static int bind_sockets(ns_net *net, char err[NS_ERR_TEXT_SIZE])
{
    ns_addr want;
    char text[NS_ADDR_TEXT_SIZE];
    ns_addr_format(text, sizeof text, &net->cfg->listen);
    if (ns_addr_from_text(text, &want) != NS_OK) {
        snprintf(err, NS_ERR_TEXT_SIZE, "listen address %s is not usable", text);
        return NS_EINVAL;
    }
    /* UDP and TCP on one port; with port 0 the kernel picks the UDP port and TCP follows it,
     * trying again with a fresh pick if TCP finds that port taken. */
    for (int attempt = 0; attempt < 8; attempt++) {
        struct sockaddr_storage ss;
        sockaddr_from_addr(&ss, &want);
        NS_ASSERT(uv_udp_init(net->loop, &net->udp) == 0);
        net->udp.data = net;
        int rc = uv_udp_bind(&net->udp, (const struct sockaddr *)&ss, 0);
        int len = sizeof ss;
        if (rc == 0)
            rc = uv_udp_getsockname(&net->udp, (struct sockaddr *)&ss, &len);
        if (rc == 0) {
            addr_from_sockaddr(&net->bound, (struct sockaddr *)&ss);
            NS_ASSERT(uv_tcp_init(net->loop, &net->tcp) == 0);
            net->tcp.data = net;
            rc = uv_tcp_bind(&net->tcp, (const struct sockaddr *)&ss, 0);
            if (rc == 0)
                rc = uv_listen((uv_stream_t *)&net->tcp, 128, on_accept);
            if (rc == 0) {
                int rcvbuf = NET_UDP_RCVBUF_BYTES; /* bursts wait in the kernel, not dropped */
                uv_recv_buffer_size((uv_handle_t *)&net->udp, &rcvbuf);
                return uv_udp_recv_start(&net->udp, udp_alloc, udp_read) == 0 ? NS_OK : NS_EIO;
            }
            uv_close((uv_handle_t *)&net->tcp, NULL);
        }
        uv_close((uv_handle_t *)&net->udp, NULL);
        uv_run(net->loop, UV_RUN_NOWAIT); /* let the closes finish before reusing the handles */
        if (want.port != 0 || rc != UV_EADDRINUSE) {
            snprintf(err, NS_ERR_TEXT_SIZE, "cannot listen for peers on %s: %s", text,
                     rc == UV_EADDRINUSE ? "address already in use" : uv_strerror(rc));
            return rc == UV_EADDRINUSE ? NS_EADDRINUSE : NS_EIO;
        }
    }
    snprintf(err, NS_ERR_TEXT_SIZE, "cannot find a free port for UDP and TCP together");
    return NS_EADDRINUSE;
}

static void derive_link_key(ns_net *net)
{
    static const char domain[] = "neuroshard/link-static/v1";
    crypto_generichash(net->ident.link_static_secret, 32, (const uint8_t *)domain,
                       sizeof domain - 1, net->key->seckey, NS_SECKEY_BYTES);
    crypto_scalarmult_base(net->ident.link_static_public, net->ident.link_static_secret);
}

int ns_net_start(ns_net **out, uv_loop_t *loop, ns_uv_env *uvenv, const ns_config *cfg,
                 const ns_key *key, uint64_t memory_mb, char err[NS_ERR_TEXT_SIZE])
{
    ns_net *net = calloc(1, sizeof *net);
    if (net == NULL)
        return NS_ENOMEM;
    net->loop = loop;
    net->uvenv = uvenv;
    net->cfg = cfg;
    net->key = key;
    net->memory_mb = memory_mb;
    net->reach.status = -1;
    net->backoff_ms = NET_BOOTSTRAP_BACKOFF_MIN_MS;
    net->peer_links_max = NET_PEER_LINKS;
    const char *links = getenv("NEUROSHARD_TEST_PEER_LINKS"); /* tests: a sparser swarm */
    if (links != NULL && atoi(links) > 0 && atoi(links) < 64)
        net->peer_links_max = (size_t)atoi(links);
    net->ident.key = key;
    derive_link_key(net);
    ns_network_id(net->ident.network_id, cfg->network);
    snprintf(net->routing_path, sizeof net->routing_path, "%s/%s", cfg->data_dir, NET_ROUTING_FILE);
    int rc = bind_sockets(net, err);
    if (rc != NS_OK) {
        free(net);
        return rc;
    }
    *out = net;
    rc = sign_record(net);
    ns_dht_config dc = {.key = key, .self_record = net->record, .self_record_len = net->record_len};
    memcpy(dc.network_id, net->ident.network_id, 32);
    if (rc == NS_OK)
        rc = ns_dht_new(&net->dht, &dc, &uvenv->env);
    if (rc != NS_OK) {
        snprintf(err, NS_ERR_TEXT_SIZE, "cannot start the DHT: %s", ns_strerror(rc));
        return rc;
    }
    uvenv->send = net_send;
    uvenv->send_arg = net;
    ns_dht_start(net->dht);
    publish_record(net); /* held locally at once; spread again once bootstrap found peers */
    load_table(net);
    for (size_t i = 0; i < cfg->bootstrap_count; i++)
        snprintf(net->seeds[i].text, sizeof net->seeds[i].text, "%s", cfg->bootstrap[i]);
    net->seed_count = cfg->bootstrap_count;
    if (cfg->lan_discovery)
        lan_open(net);
    bootstrap_round(net);
    uint64_t now = net_now(net);
    const ns_env *env = &uvenv->env;
    net->health_timer = ns_env_timer(env, now + NET_HEALTH_MS, health_timer_fired, net);
    net->resign_timer = ns_env_timer(env, now + NET_RECORD_RESIGN_MS, resign_timer_fired, net);
    net->save_timer = ns_env_timer(env, now + NET_SAVE_MS, save_timer_fired, net);
    net->check_timer = ns_env_timer(env, now + NET_CHECK_FIRST_MS, check_timer_fired, net);
    net->links_timer = ns_env_timer(env, now + NET_BOOTSTRAP_FIRST_MS, links_timer_fired, net);
    char where[NS_ADDR_TEXT_SIZE];
    ns_addr_to_text(where, sizeof where, &net->bound);
    NS_LOG_D("net", "listening udp=%s tcp=%s seeds=%zu lan=%s network=%s", where, where,
             net->seed_count, net->lan_open ? "on" : "off", cfg->network);
    return NS_OK;
}

void ns_net_stop(ns_net *net, bool save)
{
    if (net == NULL)
        return;
    if (net->dht != NULL && save)
        save_table(net);
    const ns_env *env = &net->uvenv->env;
    uint64_t *timers[] = {&net->bootstrap_timer, &net->lan_timer,  &net->health_timer,
                          &net->resign_timer,    &net->save_timer, &net->check_timer,
                          &net->links_timer};
    for (size_t i = 0; i < sizeof timers / sizeof timers[0]; i++) {
        if (*timers[i] != 0)
            ns_env_timer_cancel(env, *timers[i]);
        *timers[i] = 0;
    }
    net->uvenv->send = NULL;
    memset(net->apps, 0, sizeof net->apps);
    for (size_t i = 0; i < net->seed_count; i++) {
        if (net->seeds[i].resolving)
            uv_cancel((uv_req_t *)&net->seeds[i].gai);
    }
    for (net_conn *c = net->conns; c != NULL; c = c->next)
        conn_close(c);
    ns_dht_free(net->dht);
    net->dht = NULL;
    if (!uv_is_closing((uv_handle_t *)&net->udp))
        uv_close((uv_handle_t *)&net->udp, NULL);
    if (!uv_is_closing((uv_handle_t *)&net->tcp))
        uv_close((uv_handle_t *)&net->tcp, NULL);
    if (net->lan_open)
        uv_close((uv_handle_t *)&net->lan, NULL);
    net->lan_open = false;
}

void ns_net_free(ns_net *net)
{
    if (net == NULL)
        return;
    NS_ASSERT(net->conns == NULL); /* the loop ran their close callbacks */
    free(net->record);
    free(net->record_prev);
    sodium_memzero(net->ident.link_static_secret, 32);
    free(net);
}

ns_dht *ns_net_dht(ns_net *net)
{
    return net->dht;
}

const ns_addr *ns_net_bound(const ns_net *net)
{
    return &net->bound;
}

/* ---- what the API shows ------------------------------------------------------------------- */

static bool has_link(ns_net *net, const uint8_t id[NS_ID_BYTES])
{
    return conn_by_peer(net, id, CONN_PEER) != NULL;
}

json_t *ns_net_peers_json(ns_net *net)
{
    json_t *arr = json_array();
    ns_dht_contact *contacts = malloc(sizeof *contacts * NS_DHT_K * NS_DHT_ID_BITS);
    if (arr == NULL || contacts == NULL) {
        free(contacts);
        json_decref(arr);
        return NULL;
    }
    size_t n = ns_dht_contacts(net->dht, contacts, NS_DHT_K * NS_DHT_ID_BITS);
    uint64_t now = net_now(net);
    for (size_t i = 0; i < n; i++) {
        char id[NS_NODE_ID_HEX_SIZE], where[NS_ADDR_TEXT_SIZE];
        id_hex(id, contacts[i].node_id);
        ns_addr_to_text(where, sizeof where, &contacts[i].addr);
        uint64_t ago = now > contacts[i].last_seen_ms ? now - contacts[i].last_seen_ms : 0;
        json_array_append_new(arr, json_pack("{s:s, s:s, s:I, s:i, s:I, s:b}", "node_id", id,
                                             "addr", where, "last_seen_ms_ago", (json_int_t)ago,
                                             "fails", (int)contacts[i].fails, "clock_skew_ms",
                                             (json_int_t)contacts[i].clock_skew_ms, "link",
                                             has_link(net, contacts[i].node_id)));
    }
    free(contacts);
    return arr;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static json_t *doctor_seeds(ns_net *net)
{
    json_t *arr = json_array();
    ns_dht_contact contacts[NS_DHT_K * 8];
    size_t n = ns_dht_contacts(net->dht, contacts, sizeof contacts / sizeof contacts[0]);
    for (size_t i = 0; i < net->seed_count; i++) {
        const seed_state *s = &net->seeds[i];
        json_t *resolved = json_array();
        const char *answered_by = NULL;
        char id[NS_NODE_ID_HEX_SIZE];
        for (size_t j = 0; j < s->addr_count; j++) {
            char where[NS_ADDR_TEXT_SIZE];
            ns_addr_to_text(where, sizeof where, &s->addrs[j]);
            json_array_append_new(resolved, json_string(where));
            for (size_t k = 0; k < n && answered_by == NULL; k++) {
                if (ns_addr_equal(&contacts[k].addr, &s->addrs[j])) {
                    id_hex(id, contacts[k].node_id);
                    answered_by = id;
                }
            }
        }
        json_array_append_new(
            arr, json_pack("{s:s, s:o, s:s?, s:i, s:b, s:b, s:s?}", "seed", s->text, "resolved",
                           resolved, "resolve_error",
                           s->resolve_error != 0 ? uv_strerror(s->resolve_error) : NULL, "pings",
                           (int)s->pings, "answered", answered_by != NULL, "refused",
                           answered_by == NULL && s->last_packet_ms != 0, "node_id", answered_by));
    }
    return arr;
}

json_t *ns_net_doctor_json(ns_net *net)
{
    char where[NS_ADDR_TEXT_SIZE], seen_text[NS_ADDR_TEXT_SIZE] = "";
    ns_addr_to_text(where, sizeof where, &net->bound);
    ns_addr seen;
    if (ns_dht_observed_addr(net->dht, &seen) == NS_OK)
        ns_addr_to_text(seen_text, sizeof seen_text, &seen);
    ns_dht_contact contacts[NS_DHT_K * 8];
    size_t n = ns_dht_contacts(net->dht, contacts, sizeof contacts / sizeof contacts[0]);
    uint64_t now = net_now(net);
    int64_t skews[NS_DHT_K * 8];
    size_t recent = 0;
    for (size_t i = 0; i < n; i++) {
        skews[i] = contacts[i].clock_skew_ms;
        if (now - contacts[i].last_seen_ms < 10 * 60 * 1000)
            recent++;
    }
    qsort(skews, n, sizeof skews[0], cmp_i64);
    char by[NS_NODE_ID_HEX_SIZE] = "";
    if (net->reach.status >= 0)
        id_hex(by, net->reach.by);
    const char *reach = net->reach.status == 1 ? "yes" : net->reach.status == 0 ? "no" : "unknown";
    return json_pack(
        "{s:{s:b, s:s}, s:o, s:b, s:{s:I, s:I}, s:{s:s, s:s?, s:I}, s:{s:I, s:I}, s:s?}",
        "listening", "ok", 1, "addr", where, "bootstrap", doctor_seeds(net), "lan_discovery",
        net->lan_open, "peers", "count", (json_int_t)ns_dht_contact_count(net->dht),
        "answered_last_10min", (json_int_t)recent, "reachable", "status", reach, "by",
        by[0] ? by : NULL, "age_s",
        (json_int_t)(net->reach.status >= 0 ? (now - net->reach.at_ms) / 1000 : 0), "clock",
        "median_skew_ms", (json_int_t)(n > 0 ? skews[n / 2] : 0), "peers", (json_int_t)n,
        "observed_addr", seen_text[0] ? seen_text : NULL);
}

size_t ns_net_link_count(const ns_net *net)
{
    return net->conn_count;
}

void ns_net_metrics(ns_net *net, char **text, int *len)
{
    ns_dht_stats st;
    ns_dht_get_stats(net->dht, &st);
    *len = asprintf(
        text,
        "# TYPE neuroshard_dht_contacts gauge\nneuroshard_dht_contacts %zu\n"
        "# TYPE neuroshard_links gauge\nneuroshard_links %zu\n"
        "# TYPE neuroshard_udp_packets_total counter\n"
        "neuroshard_udp_packets_total{dir=\"in\"} %llu\n"
        "neuroshard_udp_packets_total{dir=\"out\"} %llu\n"
        "neuroshard_udp_packets_total{dir=\"dropped_queue\"} %llu\n"
        "# TYPE neuroshard_links_total counter\n"
        "neuroshard_links_total{event=\"accepted\"} %llu\n"
        "neuroshard_links_total{event=\"dialed\"} %llu\n"
        "neuroshard_links_total{event=\"failed\"} %llu\n"
        "neuroshard_links_total{event=\"refused_full\"} %llu\n"
        "# TYPE neuroshard_dht_dropped_total counter\n"
        "neuroshard_dht_dropped_total{reason=\"malformed\"} %llu\n"
        "neuroshard_dht_dropped_total{reason=\"rate_limited\"} %llu\n"
        "neuroshard_dht_dropped_total{reason=\"unexpected\"} %llu\n"
        "neuroshard_dht_dropped_total{reason=\"bad_signature\"} %llu\n"
        "neuroshard_dht_dropped_total{reason=\"future\"} %llu\n"
        "neuroshard_dht_dropped_total{reason=\"expired\"} %llu\n"
        "neuroshard_dht_dropped_total{reason=\"oversize\"} %llu\n"
        "neuroshard_dht_dropped_total{reason=\"identity\"} %llu\n"
        "neuroshard_dht_dropped_total{reason=\"bad_token\"} %llu\n"
        "# TYPE neuroshard_dht_records gauge\nneuroshard_dht_records %llu\n"
        "# TYPE neuroshard_dht_lookups_total counter\n"
        "neuroshard_dht_lookups_total{result=\"ok\"} %llu\n"
        "neuroshard_dht_lookups_total{result=\"failed\"} %llu\n"
        "# TYPE neuroshard_dht_rpc_timeouts_total counter\n"
        "neuroshard_dht_rpc_timeouts_total %llu\n"
        "# TYPE neuroshard_cohort_holders_total counter\n"
        "neuroshard_cohort_holders_total{event=\"found\"} %llu\n"
        "neuroshard_cohort_holders_total{event=\"dialed\"} %llu\n",
        ns_dht_contact_count(net->dht), net->conn_count, (unsigned long long)net->udp_in,
        (unsigned long long)net->udp_out, (unsigned long long)net->udp_dropped_queue,
        (unsigned long long)net->links_accepted, (unsigned long long)net->links_dialed,
        (unsigned long long)net->links_failed, (unsigned long long)net->links_refused_full,
        (unsigned long long)st.dropped_malformed, (unsigned long long)st.dropped_rate_limited,
        (unsigned long long)st.dropped_unexpected, (unsigned long long)st.records_bad_signature,
        (unsigned long long)st.records_future, (unsigned long long)st.records_expired,
        (unsigned long long)st.records_oversize, (unsigned long long)st.identity_rejected,
        (unsigned long long)st.store_bad_token, (unsigned long long)st.records_stored,
        (unsigned long long)st.lookups_succeeded, (unsigned long long)st.lookups_failed,
        (unsigned long long)st.timeouts, (unsigned long long)net->want.found,
        (unsigned long long)net->want.dialled);
}
