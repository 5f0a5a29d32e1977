/*
 * verify.c: verification of training proofs by recompute (SPEC S9), on the loop thread with one
 * worker thread for the arithmetic.
 *
 * A training proof names the checkpoint its period starts from (by optimizer step) and the hash
 * of the weights before and after. To check it, this node fetches that checkpoint from the prover
 * over their link (pull: one 1 MiB part a request, so the link's queue never overflows), writes
 * it under DATA/verify/, and recomputes the proof's batches from it with its own copy of the data
 * in the reproducible mode (ns_train_replay), which gives the same bits on every machine and
 * thread count. Weights that do not hash to the proof's "after" (or a checkpoint that does not
 * hash to its "before") make the proof fraudulent; equal ones make it honest. Verdicts are kept
 * (by proof id) for the ledger's judge. Provers serve their checkpoints to anyone who asks.
 * One job at a time, the prover checked longest ago first, so that a prover whose checks are
 * slow cannot crowd the others out.
 *
 * A prover must answer (S9): one that says it no longer has the checkpoint, or sends nothing for
 * answer_ms (half the challenge window, at most a minute) while this node asks, loses as if it
 * cheated: the verdict is fraud, and a spot check becomes a challenge. Each node decides this
 * by what it was sent, so it relies on provers being reachable within that time; docs/ledger.md
 * says what a partition does to it.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "neuroshard/ckpt.h"
#include "neuroshard/ponw.h"
#include "node_internal.h"

#define VERIFY_PART_BYTES (1u << 20)
#define VERIFY_JOBS_MAX   16
#define VERIFY_ANSWER_MS  60000
#define VERIFY_VERDICTS   1024
#define VERIFY_FILES      4
#define VERIFY_AUTHORS    64 /* provers whose last check is remembered, for fairness */

static const char *const ckpt_files[VERIFY_FILES] = {NS_CKPT_MODEL_FILE, NS_CKPT_OPTIMIZER_FILE,
                                                     NS_CKPT_CONFIG_FILE, NS_CKPT_STATE_FILE};

typedef enum job_state { JOB_QUEUED, JOB_FETCHING, JOB_COMPUTING } job_state;

typedef struct verify_job {
    ns_proof proof;
    bool spot_check; /* this node chose to check it (else: asked by a challenge to judge) */
    bool own;        /* this node's own proof: its checkpoint directory, kept afterwards */
    job_state state;
    uint32_t file;
    uint64_t offset;
    int fd;
    uint64_t last_progress_ms;
    char dir[PATH_MAX];
    /* the worker's result */
    int rc;
    uint8_t before[NS_SHA256_BYTES], after[NS_SHA256_BYTES];
    char err[256];
} verify_job;

typedef struct verdict {
    uint8_t id[NS_SHA256_BYTES];
    ns_judgement judgement;
    uint8_t recomputed[NS_SHA256_BYTES];
} verdict;

struct ns_verifier {
    ns_verifier_config cfg;
    verify_job *jobs[VERIFY_JOBS_MAX];
    size_t job_count;
    verdict verdicts[VERIFY_VERDICTS];
    size_t verdict_next, verdict_count;
    uv_async_t done_async;
    pthread_t worker;
    bool worker_running;
    pthread_mutex_t mu; /* the worker's result flag */
    bool worker_done;
    uint64_t checked, fraud_found, failed, unanswered;
    uint64_t answer_ms;
    /* when a check of each recent prover last began (a ring): the next job goes to the prover
     * checked longest ago, so one whose checks are slow (a silent one makes each wait answer_ms)
     * cannot keep the others from being checked */
    struct {
        uint8_t id[NS_NODE_ID_BYTES];
        uint64_t ms;
    } began[VERIFY_AUTHORS];
    size_t began_next;
};

static uint64_t now_ms(const ns_verifier *v)
{
    return ns_env_now(&v->cfg.uvenv->env);
}

static void put_u64be(uint8_t *p, uint64_t x)
{
    for (int i = 7; i >= 0; i--, x >>= 8)
        p[i] = (uint8_t)x;
}

static uint64_t get_u64be(const uint8_t *p)
{
    uint64_t x = 0;
    for (int i = 0; i < 8; i++)
        x = x << 8 | p[i];
    return x;
}

/* ---- verdicts ---------------------------------------------------------------------------------
 */

ns_judgement ns_verifier_verdict(const ns_verifier *v, const uint8_t id[NS_SHA256_BYTES],
                                 uint8_t recomputed[NS_SHA256_BYTES])
{
    for (size_t i = 0; i < v->verdict_count; i++) {
        if (memcmp(v->verdicts[i].id, id, NS_SHA256_BYTES) == 0) {
            if (recomputed != NULL)
                memcpy(recomputed, v->verdicts[i].recomputed, NS_SHA256_BYTES);
            return v->verdicts[i].judgement;
        }
    }
    return NS_JUDGE_UNKNOWN;
}

static void keep_verdict(ns_verifier *v, const uint8_t id[NS_SHA256_BYTES], ns_judgement j,
                         const uint8_t recomputed[NS_SHA256_BYTES])
{
    verdict *d = &v->verdicts[v->verdict_next];
    memcpy(d->id, id, NS_SHA256_BYTES);
    d->judgement = j;
    memcpy(d->recomputed, recomputed, NS_SHA256_BYTES);
    v->verdict_next = (v->verdict_next + 1) % VERIFY_VERDICTS;
    if (v->verdict_count < VERIFY_VERDICTS)
        v->verdict_count++;
}

/* ---- jobs -------------------------------------------------------------------------------------
 */

/* Removes a job's DATA/verify/<proof>/ckpt-<step> and the <proof> directory above it. */
void ns_dir_remove(const char *dir)
{
    DIR *d = opendir(dir);
    if (d != NULL) {
        struct dirent *e;
        char path[PATH_MAX + 300];
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
        closedir(d);
    }
    rmdir(dir);
}

static void rmtree_ckpt(const char *dir)
{
    ns_dir_remove(dir);
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s", dir);
    char *slash = strrchr(path, '/');
    if (slash != NULL) {
        *slash = '\0';
        rmdir(path);
    }
}

static void job_free(verify_job *j)
{
    if (j->fd >= 0)
        close(j->fd);
    if (j->dir[0] != '\0' && !j->own)
        rmtree_ckpt(j->dir);
    free(j);
}

static void request_part(ns_verifier *v, verify_job *j)
{
    uint8_t body[8 + 1 + 8];
    put_u64be(body, j->proof.training.batch_first);
    body[8] = (uint8_t)j->file;
    put_u64be(body + 9, j->offset);
    ns_frame f = {.type = NS_FRAME_VERIFY_GET, .body = body, .body_len = sizeof body};
    if (ns_net_send_frame(v->cfg.net, j->proof.author, &f) != NS_OK)
        NS_LOG_D("verify", "no link to the prover yet; waiting");
}

static int open_part_file(verify_job *j)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", j->dir, ckpt_files[j->file]);
    j->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    return j->fd >= 0 ? NS_OK : NS_EIO;
}

static void *worker_main(void *arg)
{
    ns_verifier *v = arg;
    verify_job *j = v->jobs[0];
    j->rc = ns_train_replay(&v->cfg.train, j->dir, j->proof.batches, j->before, j->after, j->err,
                            sizeof j->err);
    pthread_mutex_lock(&v->mu);
    v->worker_done = true;
    pthread_mutex_unlock(&v->mu);
    uv_async_send(&v->done_async);
    return NULL;
}

static void start_next(ns_verifier *v);

static void finish_job(ns_verifier *v, ns_judgement j, const uint8_t recomputed[NS_SHA256_BYTES])
{
    verify_job *job = v->jobs[0];
    memmove(v->jobs, v->jobs + 1, sizeof v->jobs[0] * (v->job_count - 1));
    v->job_count--;
    if (j != NS_JUDGE_UNKNOWN) {
        keep_verdict(v, job->proof.id, j, recomputed);
        v->checked++;
        v->fraud_found += j == NS_JUDGE_FRAUD;
    } else {
        v->failed++;
    }
    if (v->cfg.done != NULL)
        v->cfg.done(v->cfg.arg, &job->proof, j, recomputed, job->spot_check);
    job_free(job);
    start_next(v);
}

static void on_worker_done(uv_async_t *h)
{
    ns_verifier *v = h->data;
    pthread_mutex_lock(&v->mu);
    bool done = v->worker_done;
    v->worker_done = false;
    pthread_mutex_unlock(&v->mu);
    if (!done || !v->worker_running)
        return;
    pthread_join(v->worker, NULL);
    v->worker_running = false;
    verify_job *j = v->jobs[0];
    char id[17], author[17];
    ns_hex_encode(id, sizeof id, j->proof.id, 8);
    ns_hex_encode(author, sizeof author, j->proof.author, 8);
    if (j->rc != NS_OK) {
        NS_LOG_W("verify", "proof %s not recomputed: %s", id, j->err);
        finish_job(v, NS_JUDGE_UNKNOWN, j->after);
        return;
    }
    bool same = memcmp(j->before, j->proof.training.model_hash_before, NS_SHA256_BYTES) == 0 &&
                memcmp(j->after, j->proof.training.model_hash_after, NS_SHA256_BYTES) == 0;
    NS_LOG_I("verify", "proof %s of %s… recomputed (%llu steps): %s", id, author,
             (unsigned long long)j->proof.batches, same ? "honest" : "FRAUD");
    finish_job(v, same ? NS_JUDGE_HONEST : NS_JUDGE_FRAUD, j->after);
}

/* When a check of this prover last began, 0 if none is remembered. */
static uint64_t last_began(const ns_verifier *v, const uint8_t *author)
{
    for (size_t i = 0; i < VERIFY_AUTHORS; i++)
        if (v->began[i].ms != 0 && memcmp(v->began[i].id, author, NS_NODE_ID_BYTES) == 0)
            return v->began[i].ms;
    return 0;
}

static void note_began(ns_verifier *v, const uint8_t *author)
{
    size_t slot = v->began_next;
    for (size_t i = 0; i < VERIFY_AUTHORS; i++)
        if (v->began[i].ms != 0 && memcmp(v->began[i].id, author, NS_NODE_ID_BYTES) == 0)
            slot = i;
    if (slot == v->began_next)
        v->began_next = (v->began_next + 1) % VERIFY_AUTHORS;
    memcpy(v->began[slot].id, author, NS_NODE_ID_BYTES);
    uint64_t now = now_ms(v);
    v->began[slot].ms = now != 0 ? now : 1;
}

static void start_next(ns_verifier *v)
{
    /* Drop spot checks whose window has closed (no challenge could follow), then take the
     * prover checked longest ago and its newest proof: its checkpoint is the likeliest to be
     * still kept by its prover. */
    for (size_t i = 0; i < v->job_count;) {
        verify_job *q = v->jobs[i];
        if (q->state == JOB_QUEUED && q->spot_check &&
            q->proof.timestamp_ms + v->cfg.window_ms < now_ms(v)) {
            memmove(v->jobs + i, v->jobs + i + 1, sizeof v->jobs[0] * (v->job_count - i - 1));
            v->job_count--;
            v->failed++;
            job_free(q);
            continue;
        }
        i++;
    }
    if (v->job_count == 0 || v->jobs[0]->state != JOB_QUEUED)
        return;
    /* the prover checked longest ago (never: 0) first, then its newest proof */
    size_t pick = 0;
    for (size_t i = 1; i < v->job_count; i++) {
        uint64_t a = last_began(v, v->jobs[i]->proof.author),
                 b = last_began(v, v->jobs[pick]->proof.author);
        if (a < b || (a == b && v->jobs[i]->proof.timestamp_ms > v->jobs[pick]->proof.timestamp_ms))
            pick = i;
    }
    verify_job *first = v->jobs[0];
    v->jobs[0] = v->jobs[pick];
    v->jobs[pick] = first;
    verify_job *j = v->jobs[0];
    note_began(v, j->proof.author);
    if (memcmp(j->proof.author, v->cfg.self, NS_NODE_ID_BYTES) == 0) {
        /* judging a challenge of this node's own proof: its checkpoint is here already */
        snprintf(j->dir, sizeof j->dir, "%.3000s/checkpoints/" NS_CKPT_DIR_PREFIX "%llu",
                 v->cfg.data_dir, (unsigned long long)j->proof.training.batch_first);
        j->own = true;
        j->state = JOB_COMPUTING;
        if (pthread_create(&v->worker, NULL, worker_main, v) != 0) {
            finish_job(v, NS_JUDGE_UNKNOWN, j->proof.training.model_hash_after);
            return;
        }
        v->worker_running = true;
        return;
    }
    char hex[17];
    ns_hex_encode(hex, sizeof hex, j->proof.id, 8);
    /* DATA/verify/<proof>/ckpt-<step>: a checkpoint directory must carry its step in its name */
    char parent[PATH_MAX + 16], job_dir[PATH_MAX];
    snprintf(parent, sizeof parent, "%.3000s/verify", v->cfg.data_dir);
    snprintf(job_dir, sizeof job_dir, "%.3000s/%s", parent, hex);
    snprintf(j->dir, sizeof j->dir, "%.3100s/" NS_CKPT_DIR_PREFIX "%llu", job_dir,
             (unsigned long long)j->proof.training.batch_first);
    (void)mkdir(parent, 0700);
    (void)mkdir(job_dir, 0700);
    if ((mkdir(j->dir, 0700) != 0 && errno != EEXIST) || open_part_file(j) != NS_OK) {
        j->dir[0] = '\0';
        finish_job(v, NS_JUDGE_UNKNOWN, j->proof.training.model_hash_after);
        return;
    }
    j->state = JOB_FETCHING;
    j->last_progress_ms = now_ms(v);
    request_part(v, j);
}

void ns_verifier_check(ns_verifier *v, const ns_proof *p, bool spot_check)
{
    if (p->type != NS_PROOF_TRAINING || ns_verifier_verdict(v, p->id, NULL) != NS_JUDGE_UNKNOWN)
        return;
    if (!p->has_embed || !p->has_head)
        return; /* a pipeline stage's work needs its neighbours' activations: not recomputed
                   alone (issue 7: cross-checked by the activation hashes instead) */
    for (size_t i = 0; i < v->job_count; i++)
        if (memcmp(v->jobs[i]->proof.id, p->id, NS_SHA256_BYTES) == 0)
            return;
    if (v->job_count == VERIFY_JOBS_MAX)
        return;
    verify_job *j = calloc(1, sizeof *j);
    if (j == NULL)
        return;
    j->proof = *p;
    j->spot_check = spot_check;
    j->fd = -1;
    v->jobs[v->job_count++] = j;
    start_next(v);
}

/* ---- frames -----------------------------------------------------------------------------------
 */

/* A prover serves parts of its checkpoints to whoever asks. */
static void serve(ns_verifier *v, const uint8_t *peer, const ns_frame *f)
{
    if (!v->cfg.silent)
        ns_ckpt_serve(v->cfg.net, v->cfg.data_dir, peer, f, NS_FRAME_VERIFY_PART);
}

const char *ns_ckpt_file_name(uint32_t file)
{
    return file < VERIFY_FILES ? ckpt_files[file] : NULL;
}

void ns_ckpt_serve(ns_net *net, const char *data_dir, const uint8_t *peer, const ns_frame *f,
                   uint32_t answer_type)
{
    if (f->body_len != 17 || f->body[8] >= VERIFY_FILES)
        return;
    uint64_t step = get_u64be(f->body), offset = get_u64be(f->body + 9);
    char path[PATH_MAX + 96];
    snprintf(path, sizeof path, "%.3000s/checkpoints/" NS_CKPT_DIR_PREFIX "%llu/%s", data_dir,
             (unsigned long long)step, ckpt_files[f->body[8]]);
    uint8_t head[8 + 1 + 8 + 8];
    memcpy(head, f->body, 17);
    uint8_t *data = NULL;
    ssize_t got = 0;
    uint64_t total = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0) {
        total = (uint64_t)st.st_size;
        size_t want = offset < total ? (size_t)(total - offset) : 0;
        want = want > VERIFY_PART_BYTES ? VERIFY_PART_BYTES : want;
        data = malloc(want > 0 ? want : 1);
        got = data != NULL && want > 0 ? pread(fd, data, want, (off_t)offset) : 0;
        if (got < 0)
            got = 0;
    }
    if (fd >= 0)
        close(fd);
    put_u64be(head + 17, total); /* 0: this node does not have it (any more) */
    ns_frame out = {.type = answer_type, .body = head, .body_len = sizeof head};
    if (got > 0)
        out.tensor = (ns_wire_tensor){.dtype = NS_DTYPE_U8,
                                      .ndim = 1,
                                      .shape = {(uint32_t)got},
                                      .data = data,
                                      .bytes = (size_t)got};
    if (ns_net_send_frame(net, peer, &out) != NS_OK)
        NS_LOG_D("verify", "a checkpoint part could not be sent (the link is gone or full)");
    free(data);
}

/* The prover of the job in progress did not answer in time (S9): it loses as if it cheated. */
static void unanswered(ns_verifier *v, const char *how)
{
    verify_job *j = v->jobs[0];
    char id[17], author[17];
    ns_hex_encode(id, sizeof id, j->proof.id, 8);
    ns_hex_encode(author, sizeof author, j->proof.author, 8);
    NS_LOG_W("verify", "proof %s of %s…: the prover %s: judged as fraud (unanswered)", id, author,
             how);
    v->unanswered++;
    static const uint8_t none[NS_SHA256_BYTES];
    finish_job(v, NS_JUDGE_FRAUD, none);
}

static void take_part(ns_verifier *v, const uint8_t *peer, const ns_frame *f)
{
    if (v->job_count == 0 || f->body_len != 25)
        return;
    verify_job *j = v->jobs[0];
    if (j->state != JOB_FETCHING || memcmp(peer, j->proof.author, NS_NODE_ID_BYTES) != 0 ||
        get_u64be(f->body) != j->proof.training.batch_first || f->body[8] != j->file ||
        get_u64be(f->body + 9) != j->offset)
        return; /* not what the job asked for: a late or duplicate answer */
    uint64_t total = get_u64be(f->body + 17);
    size_t n = f->tensor.dtype == NS_DTYPE_U8 ? f->tensor.bytes : 0;
    if (total == 0 || (n == 0 && j->offset < total) || j->offset + n > total ||
        total > (uint64_t)8 << 30) {
        unanswered(v, "says it no longer has the checkpoint it must keep");
        return;
    }
    if (n > 0 && pwrite(j->fd, f->tensor.data, n, (off_t)j->offset) != (ssize_t)n) {
        finish_job(v, NS_JUDGE_UNKNOWN, j->proof.training.model_hash_after);
        return;
    }
    j->offset += n;
    j->last_progress_ms = now_ms(v);
    if (j->offset < total) {
        request_part(v, j);
        return;
    }
    close(j->fd);
    j->fd = -1;
    j->file++;
    j->offset = 0;
    if (j->file < VERIFY_FILES) {
        if (open_part_file(j) != NS_OK) {
            finish_job(v, NS_JUDGE_UNKNOWN, j->proof.training.model_hash_after);
            return;
        }
        request_part(v, j);
        return;
    }
    j->state = JOB_COMPUTING;
    if (pthread_create(&v->worker, NULL, worker_main, v) != 0) {
        finish_job(v, NS_JUDGE_UNKNOWN, j->proof.training.model_hash_after);
        return;
    }
    v->worker_running = true;
}

void ns_verifier_on_frame(ns_verifier *v, const uint8_t peer[NS_NODE_ID_BYTES], const ns_frame *f)
{
    if (f->type == NS_FRAME_VERIFY_GET)
        serve(v, peer, f);
    else if (f->type == NS_FRAME_VERIFY_PART)
        take_part(v, peer, f);
}

void ns_verifier_tick(ns_verifier *v)
{
    if (v->job_count == 0)
        return;
    verify_job *j = v->jobs[0];
    if (j->state == JOB_FETCHING && now_ms(v) - j->last_progress_ms > v->answer_ms) {
        unanswered(v, "sent nothing while asked for its checkpoint");
    } else if (j->state == JOB_FETCHING) {
        request_part(v, j); /* the link may have come up since */
    }
}

void ns_verifier_counts(const ns_verifier *v, uint64_t *checked, uint64_t *fraud, uint64_t *failed,
                        uint64_t *unanswered)
{
    *checked = v->checked;
    *fraud = v->fraud_found;
    *failed = v->failed;
    *unanswered = v->unanswered;
}

/* ---- life --------------------------------------------------------------------------------- */

int ns_verifier_new(ns_verifier **out, uv_loop_t *loop, const ns_verifier_config *cfg)
{
    ns_verifier *v = calloc(1, sizeof *v);
    if (v == NULL)
        return NS_ENOMEM;
    v->cfg = *cfg;
    v->answer_ms = cfg->window_ms / 2 < VERIFY_ANSWER_MS ? cfg->window_ms / 2 : VERIFY_ANSWER_MS;
    if (uv_async_init(loop, &v->done_async, on_worker_done) != 0) {
        free(v);
        return NS_EIO;
    }
    v->done_async.data = v;
    pthread_mutex_init(&v->mu, NULL);
    *out = v;
    return NS_OK;
}

static void free_on_close(uv_handle_t *h)
{
    ns_verifier *v = h->data;
    pthread_mutex_destroy(&v->mu);
    free(v);
}

void ns_verifier_free(ns_verifier *v)
{
    if (v == NULL)
        return;
    if (v->worker_running)
        pthread_join(v->worker, NULL); /* a recompute is bounded; shutdown waits for it */
    for (size_t i = 0; i < v->job_count; i++)
        job_free(v->jobs[i]);
    v->job_count = 0;
    uv_close((uv_handle_t *)&v->done_async, free_on_close);
}
