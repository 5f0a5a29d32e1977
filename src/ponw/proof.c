/*
 * proof.c: a Proof of Neural Work's body (proto/ponw.proto), its structural rules, and signing it
 * as a record.
 *
 * Decoding is bounded and canonical: the bytes must be the one encoding protobuf-c would write
 * for the message (so a proof has exactly one byte string, and its id, the hash of the envelope,
 * names it), with no unknown fields at any level and every hash exactly 32 bytes.
 */
#include <stdlib.h>
#include <string.h>

#include "neuroshard/ponw.h"
#include "ponw.pb-c.h"

static bool hash_ok(ProtobufCBinaryData b)
{
    return b.len == NS_SHA256_BYTES;
}

static ProtobufCBinaryData bin(const uint8_t *p, size_t n)
{
    return (ProtobufCBinaryData){.len = n, .data = (uint8_t *)p};
}

const char *ns_proof_check(const ns_proof *p)
{
    if (p->type < NS_PROOF_UPTIME || p->type > NS_PROOF_DATA)
        return "unknown proof type";
    if (p->period_start_ms >= p->timestamp_ms)
        return "the period ends before it starts";
    uint64_t period_ms = p->timestamp_ms - p->period_start_ms;
    if (period_ms > NS_PONW_PERIOD_MS_MAX)
        return "the period is longer than 10 minutes";
    if (p->uptime_s * 1000 > period_ms + 1000 || p->uptime_s > period_ms)
        return "more uptime than the period";
    if (p->tier < 1 || p->tier > 5)
        return "tier outside 1..5";
    if (p->layers > NS_PONW_LAYERS_MAX)
        return "too many layers";
    if (p->has_training != (p->type == NS_PROOF_TRAINING))
        return "a training commit belongs on training proofs, and only there";
    if (p->type == NS_PROOF_TRAINING) {
        const ns_training_commit *t = &p->training;
        if (p->layers == 0 || p->batches == 0)
            return "a training proof with no layers or no batches";
        if (t->batch_count != p->batches)
            return "the commit's batch count differs from the proof's";
        if (t->layer_last <= t->layer_first || t->layer_last - t->layer_first != p->layers)
            return "the commit's layer range differs from the layers held";
        if (t->micro_batches == 0 || t->micro_batches > NS_PONW_MICRO_BATCHES_MAX)
            return "activation hashes missing or too many";
        if (t->in_pipeline && (t->segment_steps == 0 ||
                               (uint64_t)t->micro_batches * t->segment_steps != t->batch_count ||
                               t->batch_first % t->segment_steps != 0))
            return "a pipeline proof's segments do not tile its aligned steps";
        if (!t->in_pipeline && t->segment_steps != 0)
            return "segments on a proof that is not a pipeline stage's";
        if (p->tokens < p->batches)
            return "fewer tokens than batches";
    } else if (p->batches != 0) {
        return "batches on a proof that is not for training";
    }
    if (p->type != NS_PROOF_DATA && p->samples != 0)
        return "samples on a proof that is not for data";
    return NULL;
}

int ns_proof_encode(const ns_proof *p, uint8_t **out, size_t *out_len)
{
    if (ns_proof_check(p) != NULL)
        return NS_EINVAL;
    Neuroshard__Proof m = NEUROSHARD__PROOF__INIT;
    Neuroshard__TrainingCommit t = NEUROSHARD__TRAINING_COMMIT__INIT;
    ProtobufCBinaryData ins[NS_PONW_MICRO_BATCHES_MAX], outs[NS_PONW_MICRO_BATCHES_MAX];
    m.proof_type = p->type;
    m.nonce = p->nonce;
    m.period_start_ms = p->period_start_ms;
    m.uptime_s = p->uptime_s;
    m.tokens = p->tokens;
    m.batches = p->batches;
    m.samples = p->samples;
    m.layers = p->layers;
    m.has_embed = p->has_embed;
    m.has_head = p->has_head;
    m.tier = p->tier;
    m.in_quorum = p->in_quorum;
    if (p->has_training) {
        const ns_training_commit *c = &p->training;
        t.model_hash_before = bin(c->model_hash_before, NS_SHA256_BYTES);
        t.model_hash_after = bin(c->model_hash_after, NS_SHA256_BYTES);
        t.shard = c->shard;
        t.batch_first = c->batch_first;
        t.batch_count = c->batch_count;
        t.data_epoch = c->data_epoch;
        t.loss_before = c->loss_before;
        t.loss_after = c->loss_after;
        for (uint32_t i = 0; i < c->micro_batches; i++) {
            ins[i] = bin(c->activation_in[i], NS_SHA256_BYTES);
            outs[i] = bin(c->activation_out[i], NS_SHA256_BYTES);
        }
        t.n_activation_in = t.n_activation_out = c->micro_batches;
        t.activation_in = ins;
        t.activation_out = outs;
        t.delta_hash = bin(c->delta_hash, NS_SHA256_BYTES);
        t.layer_first = c->layer_first;
        t.layer_last = c->layer_last;
        t.exec_mode = c->exec_mode;
        if (c->in_pipeline)
            t.pipeline_id = bin(c->pipeline_id, NS_SHA256_BYTES);
        t.segment_steps = c->segment_steps;
        t.outer_round = c->outer_round;
        m.training = &t;
    }
    size_t n = neuroshard__proof__get_packed_size(&m);
    if (n > NS_PONW_BODY_BYTES_MAX)
        return NS_ETOOBIG;
    uint8_t *buf = malloc(n > 0 ? n : 1);
    if (buf == NULL)
        return NS_ENOMEM;
    NS_ASSERT(neuroshard__proof__pack(&m, buf) == n);
    *out = buf;
    *out_len = n;
    return NS_OK;
}

static bool commit_from(const Neuroshard__TrainingCommit *t, ns_training_commit *c)
{
    if (t->base.n_unknown_fields != 0 || !hash_ok(t->model_hash_before) ||
        !hash_ok(t->model_hash_after) || !hash_ok(t->delta_hash) ||
        t->n_activation_in != t->n_activation_out || t->n_activation_in > NS_PONW_MICRO_BATCHES_MAX)
        return false;
    memset(c, 0, sizeof *c);
    memcpy(c->model_hash_before, t->model_hash_before.data, NS_SHA256_BYTES);
    memcpy(c->model_hash_after, t->model_hash_after.data, NS_SHA256_BYTES);
    memcpy(c->delta_hash, t->delta_hash.data, NS_SHA256_BYTES);
    c->shard = t->shard;
    c->batch_first = t->batch_first;
    c->batch_count = t->batch_count;
    c->data_epoch = t->data_epoch;
    c->loss_before = t->loss_before;
    c->loss_after = t->loss_after;
    c->micro_batches = (uint32_t)t->n_activation_in;
    for (size_t i = 0; i < t->n_activation_in; i++) {
        if (!hash_ok(t->activation_in[i]) || !hash_ok(t->activation_out[i]))
            return false;
        memcpy(c->activation_in[i], t->activation_in[i].data, NS_SHA256_BYTES);
        memcpy(c->activation_out[i], t->activation_out[i].data, NS_SHA256_BYTES);
    }
    c->layer_first = t->layer_first;
    c->layer_last = t->layer_last;
    c->exec_mode = t->exec_mode;
    if (t->pipeline_id.len != 0 && !hash_ok(t->pipeline_id))
        return false;
    c->in_pipeline = t->pipeline_id.len != 0;
    if (c->in_pipeline)
        memcpy(c->pipeline_id, t->pipeline_id.data, NS_SHA256_BYTES);
    c->segment_steps = t->segment_steps;
    c->outer_round = t->outer_round;
    return true;
}

int ns_proof_decode(const uint8_t *buf, size_t len, ns_proof *p)
{
    if (len > NS_PONW_BODY_BYTES_MAX)
        return NS_ETOOBIG;
    Neuroshard__Proof *m = neuroshard__proof__unpack(NULL, len, buf);
    if (m == NULL)
        return NS_EPARSE;
    ns_proof body = {0};
    bool ok = m->base.n_unknown_fields == 0 && ns_pb_packs_to(&m->base, buf, len);
    if (ok && m->training != NULL) {
        body.has_training = true;
        ok = commit_from(m->training, &body.training);
    }
    if (ok) {
        body.type = m->proof_type;
        body.nonce = m->nonce;
        body.period_start_ms = m->period_start_ms;
        body.uptime_s = m->uptime_s;
        body.tokens = m->tokens;
        body.batches = m->batches;
        body.samples = m->samples;
        body.layers = m->layers;
        body.has_embed = m->has_embed;
        body.has_head = m->has_head;
        body.tier = m->tier;
        body.in_quorum = m->in_quorum;
    }
    neuroshard__proof__free_unpacked(m, NULL);
    if (!ok)
        return NS_EPARSE;
    memcpy(body.id, p->id, sizeof body.id);
    memcpy(body.author, p->author, sizeof body.author);
    body.sequence = p->sequence;
    body.timestamp_ms = p->timestamp_ms;
    *p = body;
    return NS_OK;
}

int ns_proof_sign(const ns_key *key, ns_proof *p, uint8_t **out, size_t *out_len)
{
    uint8_t *body;
    size_t body_len;
    int rc = ns_proof_encode(p, &body, &body_len);
    if (rc != NS_OK)
        return rc;
    ns_record r = {.type = NS_RECORD_PROOF,
                   .sequence = p->sequence,
                   .timestamp_ms = p->timestamp_ms,
                   .body = body,
                   .body_len = body_len};
    rc = ns_record_sign(key, &r, out, out_len);
    free(body);
    if (rc != NS_OK)
        return rc;
    memcpy(p->author, key->node_id, NS_NODE_ID_BYTES);
    ns_sha256(p->id, *out, *out_len);
    return NS_OK;
}

int ns_proof_open(const uint8_t *buf, size_t len, uint64_t now_ms, ns_proof *p)
{
    ns_record r;
    int rc = ns_record_verify(buf, len, now_ms, &r);
    if (rc != NS_OK)
        return rc;
    if (r.type != NS_RECORD_PROOF || r.topic_len != 0 || r.expiry_ms != 0)
        return NS_EINVAL;
    ns_proof q = {0};
    memcpy(q.author, r.author, NS_NODE_ID_BYTES);
    q.sequence = r.sequence;
    q.timestamp_ms = r.timestamp_ms;
    ns_sha256(q.id, buf, len);
    rc = ns_proof_decode(r.body, r.body_len, &q);
    if (rc != NS_OK)
        return rc;
    *p = q;
    return NS_OK;
}
