/*
 * bench_link.c: encrypted-link throughput between two processes on loopback, against plain TCP
 * between two processes measured in the same run.
 *
 * The parent sends, a forked child receives, over a loopback TCP connection with blocking
 * sockets (so both sides measure the protocol and the crypto, not an event loop). Plain TCP
 * sends the same bytes in the same chunk sizes with a 4-byte length prefix, which is what any
 * framing costs. The link runs the real handshake, encrypts each frame with ChaCha20-Poly1305 and
 * carries a 1 MiB float32 tensor per frame (large frames) or a 64-byte body (small frames).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "neuroshard/link.h"

#define BENCH_LARGE_BYTES (1u << 20)
#define BENCH_LARGE_TOTAL (512u << 20)
#define BENCH_SMALL_BYTES 64
#define BENCH_SMALL_COUNT 200000u
#define BENCH_TIMERS_MAX  16

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- a minimal env: the real clock; timers are kept but never fire within a benchmark ----- */

static uint64_t env_now(void *ctx)
{
    (void)ctx;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t next_timer_id;

static uint64_t env_timer(void *ctx, uint64_t at_ms, ns_timer_fn fn, void *arg)
{
    (void)ctx;
    (void)at_ms;
    (void)fn;
    (void)arg;
    return ++next_timer_id;
}

static void env_timer_cancel(void *ctx, uint64_t id)
{
    (void)ctx;
    (void)id;
}

static int env_send(void *ctx, const ns_peer *to, ns_channel ch, const ns_frame *f)
{
    (void)ctx;
    (void)to;
    (void)ch;
    (void)f;
    return NS_EINVAL;
}

static void env_random(void *ctx, void *buf, size_t n)
{
    (void)ctx;
    randombytes_buf(buf, n);
}

static const ns_env bench_env = {env_now, env_timer, env_timer_cancel, env_send, env_random, NULL};

/* ---- blocking socket helpers -------------------------------------------------------------- */

static void write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        NS_ASSERT(w > 0);
        p += w;
        n -= (size_t)w;
    }
}

static void read_all(int fd, uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        NS_ASSERT(r > 0);
        p += r;
        n -= (size_t)r;
    }
}

static void socket_pair_tcp(int *server_side, int *client_side)
{
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    NS_ASSERT(bind(lfd, (struct sockaddr *)&a, sizeof a) == 0 && listen(lfd, 1) == 0);
    NS_ASSERT(getsockname(lfd, (struct sockaddr *)&a, &len) == 0);
    int cfd = socket(AF_INET, SOCK_STREAM, 0);
    NS_ASSERT(connect(cfd, (struct sockaddr *)&a, sizeof a) == 0);
    int sfd = accept(lfd, NULL, NULL);
    NS_ASSERT(sfd >= 0);
    close(lfd);
    int one = 1;
    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(sfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    *server_side = sfd;
    *client_side = cfd;
}

/* ---- plain TCP baseline ------------------------------------------------------------------- */

/* Sends count messages of size bytes, each with a 4-byte length; the child answers one byte at
 * the end. Returns seconds from the first write to the answer. */
static double tcp_run(size_t size, size_t count)
{
    int sfd, cfd;
    socket_pair_tcp(&sfd, &cfd);
    pid_t child = fork();
    NS_ASSERT(child >= 0);
    if (child == 0) {
        close(cfd);
        uint8_t *buf = malloc(size);
        for (size_t i = 0; i < count; i++) {
            uint8_t len[4];
            read_all(sfd, len, 4);
            read_all(sfd, buf, size);
        }
        uint8_t done = 1;
        write_all(sfd, &done, 1);
        _exit(0);
    }
    close(sfd);
    uint8_t *msg = malloc(4 + size);
    memset(msg, 7, 4 + size);
    double t0 = now_s();
    for (size_t i = 0; i < count; i++)
        write_all(cfd, msg, 4 + size);
    uint8_t done;
    read_all(cfd, &done, 1);
    double t = now_s() - t0;
    free(msg);
    close(cfd);
    waitpid(child, NULL, 0);
    return t;
}

/* ---- the encrypted link ------------------------------------------------------------------- */

typedef struct side {
    int fd;
    ns_link *link;
    ns_key key;
    ns_link_identity ident;
    uint8_t *record;
    size_t frames_in;
    size_t written; /* reported to the link after the call that wrote returns */
    bool up;
    bool closed;
} side;

static void side_write(void *arg, uint8_t *buf, size_t len)
{
    side *s = arg;
    write_all(s->fd, buf, len);
    free(buf);
    s->written += len;
}

static void side_flush(side *s)
{
    if (s->written > 0 && !s->closed)
        ns_link_on_written(s->link, s->written);
    s->written = 0;
}

static void side_established(void *arg, const uint8_t id[NS_ID_BYTES], const uint8_t *r, size_t n)
{
    (void)id;
    (void)r;
    (void)n;
    ((side *)arg)->up = true;
}

static void side_frame(void *arg, const ns_frame *f)
{
    (void)f;
    ((side *)arg)->frames_in++;
}

static void side_writable(void *arg)
{
    (void)arg;
}

static void side_closed(void *arg, int reason)
{
    (void)reason;
    ((side *)arg)->closed = true;
}

static void side_init(side *s, int fd, uint8_t seed_byte)
{
    memset(s, 0, sizeof *s);
    s->fd = fd;
    uint8_t sk[NS_SECKEY_BYTES];
    memset(sk, seed_byte, sizeof sk);
    NS_ASSERT(ns_key_from_seckey(&s->key, sk) == NS_OK);
    s->ident.key = &s->key;
    randombytes_buf(s->ident.link_static_secret, 32);
    crypto_scalarmult_base(s->ident.link_static_public, s->ident.link_static_secret);
    ns_network_id(s->ident.network_id, "bench");
    ns_node_info info = {.memory_mb = 1};
    memcpy(info.network_id, s->ident.network_id, 32);
    memcpy(info.link_static, s->ident.link_static_public, 32);
    strcpy(info.version, "bench");
    size_t len;
    NS_ASSERT(ns_node_record_make(&s->key, &info, env_now(NULL), 3600000, 1, &s->record, &len) ==
              NS_OK);
    s->ident.node_record = s->record;
    s->ident.node_record_len = len;
}

static void side_link(side *s, ns_link_role role)
{
    ns_link_callbacks cb = {side_write,    side_established, side_frame,
                            side_writable, side_closed,      s};
    NS_ASSERT(ns_link_new(&s->link, role, &s->ident, NULL, &bench_env, &cb) == NS_OK);
    side_flush(s);
}

/* Reads from the socket into the link until cond holds. */
static void pump_until(side *s, const bool *flag, const size_t *counter, size_t want)
{
    uint8_t buf[1 << 16];
    while (!s->closed && (flag != NULL ? !*flag : *counter < want)) {
        ssize_t r = read(s->fd, buf, sizeof buf);
        NS_ASSERT(r > 0);
        ns_link_on_bytes(s->link, buf, (size_t)r);
        side_flush(s);
    }
}

static void send_frame(side *s, const uint8_t *payload, size_t size, bool tensor)
{
    ns_frame f = {.type = NS_FRAME_APP};
    if (tensor) {
        f.tensor.dtype = NS_DTYPE_F32;
        f.tensor.ndim = 1;
        f.tensor.shape[0] = (uint32_t)(size / 4);
        f.tensor.data = payload;
        f.tensor.bytes = size;
    } else {
        f.body = payload;
        f.body_len = size;
    }
    NS_ASSERT(ns_link_send(s->link, &f) == NS_OK);
    side_flush(s);
}

static double link_run(size_t size, size_t count, bool tensor)
{
    int sfd, cfd;
    socket_pair_tcp(&sfd, &cfd);
    pid_t child = fork();
    NS_ASSERT(child >= 0);
    if (child == 0) {
        close(cfd);
        side r;
        side_init(&r, sfd, 2);
        side_link(&r, NS_LINK_RESPONDER);
        pump_until(&r, NULL, &r.frames_in, count);
        uint8_t done = 1;
        send_frame(&r, &done, 1, false);
        _exit(r.frames_in == count ? 0 : 1);
    }
    close(sfd);
    side s;
    side_init(&s, cfd, 1);
    side_link(&s, NS_LINK_INITIATOR);
    pump_until(&s, &s.up, NULL, 0);
    uint8_t *payload = malloc(size);
    memset(payload, 7, size);
    double t0 = now_s();
    for (size_t i = 0; i < count; i++)
        send_frame(&s, payload, size, tensor);
    pump_until(&s, NULL, &s.frames_in, 1);
    double t = now_s() - t0;
    free(payload);
    int status;
    waitpid(child, &status, 0);
    NS_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    ns_link_free(s.link);
    free(s.record);
    close(cfd);
    return t;
}

int main(void)
{
    NS_ASSERT(sodium_init() >= 0);
    size_t large_count = BENCH_LARGE_TOTAL / BENCH_LARGE_BYTES;
    double best_tcp = 1e9, best_link = 1e9, best_tcp_small = 1e9, best_link_small = 1e9;
    for (int round = 0; round < 3; round++) { /* alternate, keep the best: the machine is shared */
        double t = tcp_run(BENCH_LARGE_BYTES, large_count);
        best_tcp = t < best_tcp ? t : best_tcp;
        t = link_run(BENCH_LARGE_BYTES, large_count, true);
        best_link = t < best_link ? t : best_link;
        t = tcp_run(BENCH_SMALL_BYTES, BENCH_SMALL_COUNT);
        best_tcp_small = t < best_tcp_small ? t : best_tcp_small;
        t = link_run(BENCH_SMALL_BYTES, BENCH_SMALL_COUNT, false);
        best_link_small = t < best_link_small ? t : best_link_small;
    }
    double mb = (double)BENCH_LARGE_TOTAL / (1 << 20);
    printf("bench link_mib_per_s=%.0f tcp_mib_per_s=%.0f ratio=%.2f goal=0.7\n", mb / best_link,
           mb / best_tcp, best_tcp / best_link);
    printf("bench link_small_frames_per_s=%.0f tcp_small_messages_per_s=%.0f ratio=%.2f\n",
           BENCH_SMALL_COUNT / best_link_small, BENCH_SMALL_COUNT / best_tcp_small,
           best_tcp_small / best_link_small);
    return 0;
}
