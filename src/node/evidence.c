/*
 * evidence.c: cohort fraud bundles between nodes, on the loop thread (SPEC S8, S9).
 *
 * A chunk owner that screens a contribution as fraud keeps the sealed parts it screened as a
 * bundle (sync.h) under <data_dir>/evidence/<sha256>.bundle and challenges the sender's proof in
 * the ledger, naming the bundle's hash (ns_ledger_cohort_evidence). Every node that applies the
 * challenge must judge it: it fetches the bundle from the challenger in parts of up to
 * EVIDENCE_PART_BYTES (EVIDENCE_GET: hash, offset; EVIDENCE_PART: hash, offset, total size, the
 * bytes as a U8 tensor), checks its hash, keeps it, and runs the screen again (ns_cohort_judge).
 * The verdict is a pure function of the bundle, so every node that has it decides alike; the
 * reading and judging run on a libuv worker, and the challenge waits until they are done. A
 * challenger that does not serve its bundle within EVIDENCE_TRIES x EVIDENCE_WAIT_MS has made
 * an accusation it cannot back: its challenge is judged false (as verify.c judges a prover that
 * does not serve its checkpoint).
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "neuroshard/sync.h"
#include "node_internal.h"

#define EVIDENCE_PART_BYTES (1u << 20)
#define EVIDENCE_GET_BYTES  (NS_SHA256_BYTES + 8)
#define EVIDENCE_PART_HEAD  (NS_SHA256_BYTES + 16)
#define EVIDENCE_FETCH_MAX  4
#define EVIDENCE_VERDICTS   64
#define EVIDENCE_WAIT_MS    10000
#define EVIDENCE_TRIES      3

typedef struct fetch {
    bool on, failed;
    uint8_t hash[NS_SHA256_BYTES];
    uint8_t holder[NS_NODE_ID_BYTES];
    uint8_t *buf;
    uint64_t total, got, asked_ms;
    uint32_t tries;
} fetch;

typedef struct verdict {
    uint8_t hash[NS_SHA256_BYTES], accused[NS_NODE_ID_BYTES];
    uint64_t round;
    ns_judgement judgement;
} verdict;

/* A bundle being judged on a libuv worker: the loop never reads or judges one itself. */
typedef struct judge_job {
    uv_work_t work;
    struct ns_evidence *ev;
    uint8_t hash[NS_SHA256_BYTES], accused[NS_NODE_ID_BYTES];
    uint64_t round;
    char path[PATH_MAX + 160];
    int rc; /* of ns_cohort_judge; NS_ENOENT: no such bundle here */
    ns_cohort_judgement cj;
} judge_job;

struct ns_evidence {
    ns_evidence_config cfg;
    uint32_t jobs; /* judge_jobs in flight */
    bool closing;  /* freed when the last job ends */
    fetch fetches[EVIDENCE_FETCH_MAX];
    verdict verdicts[EVIDENCE_VERDICTS];
    size_t verdict_next;
    uint64_t served, fetched, judged_fraud, judged_honest, refused;
};

static uint64_t now_ms(const ns_evidence *ev)
{
    return ns_env_now(&ev->cfg.uvenv->env);
}

static void put_u64be(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static uint64_t get_u64be(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static void path_of(const ns_evidence *ev, const uint8_t hash[NS_SHA256_BYTES], char *out,
                    size_t size)
{
    char hex[2 * NS_SHA256_BYTES + 1];
    ns_hex_encode(hex, sizeof hex, hash, NS_SHA256_BYTES);
    snprintf(out, size, "%.3000s/evidence/%s.bundle", ev->cfg.data_dir, hex);
}

int ns_evidence_new(ns_evidence **out, const ns_evidence_config *cfg)
{
    ns_evidence *ev = calloc(1, sizeof *ev);
    if (ev == NULL)
        return NS_ENOMEM;
    ev->cfg = *cfg;
    *out = ev;
    return NS_OK;
}

void ns_evidence_free(ns_evidence *ev)
{
    if (ev == NULL)
        return;
    for (size_t i = 0; i < EVIDENCE_FETCH_MAX; i++) {
        free(ev->fetches[i].buf);
        ev->fetches[i].buf = NULL;
    }
    if (ev->jobs > 0) { /* a judge is still at work: the last one frees */
        ev->closing = true;
        return;
    }
    free(ev);
}

int ns_evidence_keep(ns_evidence *ev, const uint8_t *bundle, size_t len,
                     uint8_t hash[NS_SHA256_BYTES])
{
    ns_sha256(hash, bundle, len);
    char dir[PATH_MAX], path[PATH_MAX + 160];
    snprintf(dir, sizeof dir, "%.3000s/evidence", ev->cfg.data_dir);
    (void)mkdir(dir, 0700);
    path_of(ev, hash, path, sizeof path);
    return ns_file_write_atomic(path, bundle, len, 0600);
}

/* The bundle at path, read and checked against hash; NULL when it is not there (or damaged). */
static uint8_t *load(const char *path, const uint8_t hash[NS_SHA256_BYTES], size_t *len)
{
    uint8_t *buf = NULL;
    if (ns_file_read(path, NS_COHORT_BUNDLE_MAX, &buf, len) != NS_OK)
        return NULL;
    uint8_t got[NS_SHA256_BYTES];
    ns_sha256(got, buf, *len);
    if (memcmp(got, hash, NS_SHA256_BYTES) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

static fetch *fetch_of(ns_evidence *ev, const uint8_t hash[NS_SHA256_BYTES])
{
    for (size_t i = 0; i < EVIDENCE_FETCH_MAX; i++) {
        fetch *f = &ev->fetches[i];
        if ((f->on || f->failed) && memcmp(f->hash, hash, NS_SHA256_BYTES) == 0)
            return f;
    }
    return NULL;
}

static void ask(ns_evidence *ev, fetch *f)
{
    uint8_t body[EVIDENCE_GET_BYTES];
    memcpy(body, f->hash, NS_SHA256_BYTES);
    put_u64be(body + NS_SHA256_BYTES, f->got);
    ns_frame fr = {.type = NS_FRAME_EVIDENCE_GET, .body = body, .body_len = sizeof body};
    f->asked_ms = now_ms(ev);
    f->tries++;
    int rc = ns_net_send_frame(ev->cfg.net, f->holder, &fr);
    if (rc != NS_OK) /* no link yet: the tick asks again */
        NS_LOG_D("sync", "the evidence was not asked for: %s", ns_strerror(rc));
}

static void start_fetch(ns_evidence *ev, const uint8_t hash[NS_SHA256_BYTES],
                        const uint8_t holder[NS_NODE_ID_BYTES])
{
    fetch *f = NULL;
    for (size_t i = 0; i < EVIDENCE_FETCH_MAX && f == NULL; i++)
        if (!ev->fetches[i].on)
            f = &ev->fetches[i];
    if (f == NULL)
        return; /* busy: asked again when a fetch ends and the challenge is retried */
    free(f->buf);
    *f = (fetch){.on = true};
    memcpy(f->hash, hash, NS_SHA256_BYTES);
    memcpy(f->holder, holder, NS_NODE_ID_BYTES);
    ask(ev, f);
}

/* The entry kept for the accused of a round by a bundle: its verdict, or NS_JUDGE_UNKNOWN while a
 * judge is at work on it; NULL when there is none. */
static verdict *entry_of(ns_evidence *ev, const uint8_t hash[NS_SHA256_BYTES],
                         const uint8_t accused[NS_NODE_ID_BYTES], uint64_t round)
{
    for (size_t i = 0; i < EVIDENCE_VERDICTS; i++) {
        verdict *v = &ev->verdicts[i];
        if (v->round == round && memcmp(v->hash, hash, NS_SHA256_BYTES) == 0 &&
            memcmp(v->accused, accused, NS_NODE_ID_BYTES) == 0)
            return v;
    }
    return NULL;
}

/* Keeps j for it, in its entry when it has one (a judge's placeholder), else in the oldest. */
static void remember(ns_evidence *ev, const uint8_t hash[NS_SHA256_BYTES],
                     const uint8_t accused[NS_NODE_ID_BYTES], uint64_t round, ns_judgement j)
{
    verdict *v = entry_of(ev, hash, accused, round);
    if (v == NULL)
        v = &ev->verdicts[ev->verdict_next++ % EVIDENCE_VERDICTS];
    memcpy(v->hash, hash, NS_SHA256_BYTES);
    memcpy(v->accused, accused, NS_NODE_ID_BYTES);
    v->round = round;
    v->judgement = j;
}

static void judge_work(uv_work_t *w)
{
    judge_job *job = w->data;
    size_t len = 0;
    uint8_t *bundle = load(job->path, job->hash, &len);
    job->rc = bundle == NULL ? NS_ENOENT : ns_cohort_judge(bundle, len, job->accused, &job->cj);
    free(bundle);
}

static void judged(ns_evidence *ev, const judge_job *job);

static void judge_done(uv_work_t *w, int status)
{
    judge_job *job = w->data;
    ns_evidence *ev = job->ev;
    ev->jobs--;
    if (ev->closing) {
        if (ev->jobs == 0)
            free(ev);
    } else if (status == 0) {
        judged(ev, job);
    }
    free(job);
}

ns_judgement ns_evidence_verdict(ns_evidence *ev, const uint8_t hash[NS_SHA256_BYTES],
                                 const uint8_t accused[NS_NODE_ID_BYTES], uint64_t round,
                                 const uint8_t holder[NS_NODE_ID_BYTES])
{
    const verdict *known = entry_of(ev, hash, accused, round);
    if (known != NULL) /* judged, or being judged (unknown yet) */
        return known->judgement;
    char path[PATH_MAX + 160];
    path_of(ev, hash, path, sizeof path);
    if (access(path, R_OK) != 0) {
        fetch *f = fetch_of(ev, hash);
        if (f != NULL && f->failed) {
            char who[17];
            ns_hex_encode(who, sizeof who, accused, 8);
            NS_LOG_W("sync", "the evidence against %s… was never served: the challenge is false",
                     who);
            ev->judged_honest++;
            remember(ev, hash, accused, round, NS_JUDGE_HONEST);
            return NS_JUDGE_HONEST;
        }
        if (f == NULL)
            start_fetch(ev, hash, holder);
        return NS_JUDGE_UNKNOWN;
    }
    judge_job *job = calloc(1, sizeof *job);
    if (job == NULL)
        return NS_JUDGE_UNKNOWN;
    job->ev = ev;
    memcpy(job->hash, hash, NS_SHA256_BYTES);
    memcpy(job->accused, accused, NS_NODE_ID_BYTES);
    job->round = round;
    memcpy(job->path, path, sizeof job->path);
    job->work.data = job;
    if (uv_queue_work(ev->cfg.uvenv->loop, &job->work, judge_work, judge_done) != 0) {
        free(job);
        return NS_JUDGE_UNKNOWN;
    }
    ev->jobs++;
    remember(ev, hash, accused, round, NS_JUDGE_UNKNOWN); /* judging: asked again, it waits */
    return NS_JUDGE_UNKNOWN;
}

/* A judge came back: the verdict is kept and the challenge waiting on it tried again. */
static void judged(ns_evidence *ev, const judge_job *job)
{
    if (job->rc == NS_ENOENT || job->rc == NS_ENOMEM) { /* no verdict: the placeholder goes */
        verdict *v = entry_of(ev, job->hash, job->accused, job->round);
        if (v != NULL)
            memset(v, 0, sizeof *v);
    }
    if (job->rc == NS_ENOENT) { /* unreadable or damaged: gone, so that it is fetched again */
        (void)unlink(job->path);
        if (ev->cfg.fetched != NULL)
            ev->cfg.fetched(ev->cfg.arg);
        return;
    }
    if (job->rc == NS_ENOMEM)
        return; /* the next retry of the ledger's waiting entries tries again */
    const uint8_t *accused = job->accused;
    uint64_t round = job->round;
    int rc = job->rc;
    const ns_cohort_judgement cj = job->cj;
    char who[17];
    ns_hex_encode(who, sizeof who, accused, 8);
    ns_judgement j = rc == NS_OK && cj.round == round && cj.verdict == NS_AGG_FRAUD
                         ? NS_JUDGE_FRAUD
                         : NS_JUDGE_HONEST;
    if (j == NS_JUDGE_FRAUD) {
        ev->judged_fraud++;
        NS_LOG_I("sync",
                 "the evidence shows %s…'s pseudo-gradient of round %llu beyond 5 sigma "
                 "(%.1f sigma among %u signed parts): fraud",
                 who, (unsigned long long)round, cj.sigma, cj.parts);
    } else {
        ev->judged_honest++;
        NS_LOG_W("sync", "the evidence against %s… does not show fraud in round %llu (%s)", who,
                 (unsigned long long)round,
                 rc != NS_OK ? "not a valid bundle" : ns_agg_verdict_name(cj.verdict));
    }
    remember(ev, job->hash, accused, round, j);
    if (ev->cfg.fetched != NULL)
        ev->cfg.fetched(ev->cfg.arg);
}

void ns_evidence_prejudge(ns_evidence *ev, const uint8_t *bundle, size_t len,
                          const uint8_t hash[NS_SHA256_BYTES],
                          const uint8_t accused[NS_NODE_ID_BYTES], uint64_t round)
{
    judge_job job = {.ev = ev, .round = round};
    memcpy(job.hash, hash, NS_SHA256_BYTES);
    memcpy(job.accused, accused, NS_NODE_ID_BYTES);
    job.rc = ns_cohort_judge(bundle, len, accused, &job.cj);
    void (*fetched)(void *) = ev->cfg.fetched;
    ev->cfg.fetched = NULL; /* the caller goes on at once; nothing waits yet */
    judged(ev, &job);
    ev->cfg.fetched = fetched;
}

static void on_get(ns_evidence *ev, const uint8_t *peer, const ns_frame *f)
{
    if (f->body_len != EVIDENCE_GET_BYTES) {
        ev->refused++;
        return;
    }
    uint64_t offset = get_u64be(f->body + NS_SHA256_BYTES);
    char path[PATH_MAX + 160];
    path_of(ev, f->body, path, sizeof path);
    /* the part asked for, read alone (a bundle is hash-checked by whoever fetches it) */
    uint8_t *bytes = malloc(EVIDENCE_PART_BYTES);
    uint64_t total = 0;
    size_t n = 0;
    int fd = bytes != NULL ? open(path, O_RDONLY | O_CLOEXEC) : -1;
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0 && st.st_size > 0 &&
        (uint64_t)st.st_size <= NS_COHORT_BUNDLE_MAX) {
        total = (uint64_t)st.st_size;
        size_t want = offset < total ? (size_t)(total - offset) : 0;
        if (want > EVIDENCE_PART_BYTES)
            want = EVIDENCE_PART_BYTES;
        ssize_t got = want > 0 ? pread(fd, bytes, want, (off_t)offset) : 0;
        n = got == (ssize_t)want ? want : 0;
        if (got != (ssize_t)want)
            total = 0;
    }
    if (fd >= 0)
        close(fd);
    uint8_t head[EVIDENCE_PART_HEAD];
    memcpy(head, f->body, EVIDENCE_GET_BYTES);
    put_u64be(head + EVIDENCE_GET_BYTES, total);
    ns_frame part = {.type = NS_FRAME_EVIDENCE_PART, .body = head, .body_len = sizeof head};
    if (n > 0)
        part.tensor = (ns_wire_tensor){
            .dtype = NS_DTYPE_U8, .ndim = 1, .shape = {(uint32_t)n}, .data = bytes, .bytes = n};
    if (ns_net_send_frame(ev->cfg.net, peer, &part) == NS_OK)
        ev->served++;
    free(bytes);
}

static void on_part(ns_evidence *ev, const uint8_t *peer, const ns_frame *f)
{
    fetch *fe = f->body_len == EVIDENCE_PART_HEAD ? fetch_of(ev, f->body) : NULL;
    if (fe == NULL || !fe->on || memcmp(fe->holder, peer, NS_NODE_ID_BYTES) != 0) {
        ev->refused++;
        return;
    }
    uint64_t offset = get_u64be(f->body + NS_SHA256_BYTES);
    uint64_t total = get_u64be(f->body + NS_SHA256_BYTES + 8);
    size_t n = f->tensor.dtype == NS_DTYPE_U8 ? f->tensor.bytes : 0;
    if (offset != fe->got && total != 0) {
        ev->refused++; /* an answer to a request asked again: the newer one counts */
        return;
    }
    if (total == 0 || total > NS_COHORT_BUNDLE_MAX || (fe->buf != NULL && total != fe->total) ||
        n == 0 || n > total - offset) {
        fe->on = false; /* the holder has no such bundle, or says other things: it failed */
        fe->failed = true;
        if (ev->cfg.fetched != NULL)
            ev->cfg.fetched(ev->cfg.arg);
        return;
    }
    if (fe->buf == NULL) {
        fe->buf = malloc(total);
        fe->total = total;
        if (fe->buf == NULL) {
            fe->on = false;
            return;
        }
    }
    memcpy(fe->buf + offset, f->tensor.data, n);
    fe->got += n;
    fe->tries = 0;
    if (fe->got < fe->total) {
        ask(ev, fe);
        return;
    }
    uint8_t got[NS_SHA256_BYTES];
    ns_sha256(got, fe->buf, fe->total);
    bool good = memcmp(got, fe->hash, NS_SHA256_BYTES) == 0 &&
                ns_evidence_keep(ev, fe->buf, fe->total, got) == NS_OK;
    free(fe->buf);
    fe->buf = NULL;
    fe->on = false;
    fe->failed = !good;
    if (good)
        ev->fetched++;
    if (ev->cfg.fetched != NULL)
        ev->cfg.fetched(ev->cfg.arg);
}

void ns_evidence_on_frame(ns_evidence *ev, const uint8_t peer[NS_NODE_ID_BYTES], const ns_frame *f)
{
    if (f->type == NS_FRAME_EVIDENCE_GET)
        on_get(ev, peer, f);
    else
        on_part(ev, peer, f);
}

void ns_evidence_tick(ns_evidence *ev)
{
    uint64_t now = now_ms(ev);
    for (size_t i = 0; i < EVIDENCE_FETCH_MAX; i++) {
        fetch *f = &ev->fetches[i];
        if (!f->on || now - f->asked_ms < EVIDENCE_WAIT_MS)
            continue;
        if (f->tries < EVIDENCE_TRIES) {
            ask(ev, f);
            continue;
        }
        free(f->buf);
        f->buf = NULL;
        f->on = false;
        f->failed = true;
        if (ev->cfg.fetched != NULL)
            ev->cfg.fetched(ev->cfg.arg);
    }
}

json_t *ns_evidence_json(const ns_evidence *ev)
{
    return json_pack("{s:I, s:I, s:I, s:I, s:I}", "bundles_served", (json_int_t)ev->served,
                     "bundles_fetched", (json_int_t)ev->fetched, "judged_fraud",
                     (json_int_t)ev->judged_fraud, "judged_false", (json_int_t)ev->judged_honest,
                     "frames_refused", (json_int_t)ev->refused);
}
