/*
 * generate.c: POST /generate_text, between the HTTP API and the trainer's model.
 *
 * The loop thread checks the request (every field, its type and range, before anything is
 * queued), hands a job to the trainer thread (which owns the model and runs the job between two
 * training steps) and defers the HTTP answer. The trainer calls back on its own thread; the
 * callback only links the finished job onto a list under a mutex and wakes the loop with
 * uv_async_send, and the loop thread writes the answers. At shutdown the trainer is stopped
 * first (it answers what is still queued with 503), then ns_gen_stop answers what finished.
 */
#include <stdlib.h>
#include <string.h>

#include <pthread.h>
#include <sodium.h>

#include "neuroshard/data.h"
#include "node_internal.h"

#define GEN_DEFAULT_MAX_TOKENS  64
#define GEN_DEFAULT_TEMPERATURE 0.8
#define GEN_DEFAULT_TOP_K       40
#define GEN_DEFAULT_TOP_P       0.95
#define GEN_PROMPT_IDS_MAX      4096

typedef struct gen_call {
    ns_gen_job job; /* first: the callback finds the call from its job */
    ns_gen_service *svc;
    ns_api *api;
    ns_api_request *req;
    struct gen_call *next_done;
} gen_call;

struct ns_gen_service {
    uv_async_t wake;
    pthread_mutex_t mu;
    gen_call *done; /* finished jobs, newest first (answer order does not matter) */
    uint64_t answered, failed;
};

/* ---- answers ------------------------------------------------------------------------------ */

/* Bytes as valid UTF-8: each byte that does not start a valid sequence becomes U+FFFD (a token
 * may end in the middle of a character). malloc'd. */
static char *utf8_clean(const uint8_t *in, size_t len, size_t *out_len)
{
    char *out = malloc(len * 3 + 1);
    if (out == NULL)
        return NULL;
    size_t o = 0, i = 0;
    while (i < len) {
        size_t bad;
        if (ns_utf8_valid(in + i, len - i, &bad)) {
            memcpy(out + o, in + i, len - i);
            o += len - i;
            break;
        }
        memcpy(out + o, in + i, bad);
        o += bad;
        memcpy(out + o, "\xef\xbf\xbd", 3);
        o += 3;
        i += bad + 1;
    }
    out[o] = '\0';
    *out_len = o;
    return out;
}

static void answer(gen_call *call)
{
    ns_gen_job *job = &call->job;
    ns_api_request *req = call->req;
    if (job->status != 200) {
        ns_api_error(req, job->status, job->error);
        return;
    }
    size_t text_len;
    char *text = utf8_clean(job->text, job->text_len, &text_len);
    json_t *ids = json_array();
    for (size_t i = 0; ids != NULL && i < job->token_count; i++)
        json_array_append_new(ids, json_integer(job->tokens[i]));
    double rate = job->seconds > 0 ? (double)job->token_count / job->seconds : 0.0;
    json_t *o = NULL;
    if (text != NULL && ids != NULL)
        o = json_pack("{s:s%, s:o, s:I, s:I, s:s, s:I, s:I, s:f, s:f}", "text", text, text_len,
                      "tokens", ids, "prompt_tokens", (json_int_t)job->prompt_tokens,
                      "generated_tokens", (json_int_t)job->token_count, "finish_reason",
                      job->finish, "step", (json_int_t)job->step, "seed",
                      (json_int_t)job->sample.seed, "seconds", job->seconds, "tokens_per_s", rate);
    else
        json_decref(ids);
    free(text);
    ns_api_reply_json(req, 200, o);
}

static void drain(ns_gen_service *svc)
{
    pthread_mutex_lock(&svc->mu);
    gen_call *list = svc->done;
    svc->done = NULL;
    pthread_mutex_unlock(&svc->mu);
    while (list != NULL) {
        gen_call *next = list->next_done;
        answer(list);
        if (list->job.status == 200)
            svc->answered++;
        else
            svc->failed++;
        ns_api_complete(list->api, list->req);
        ns_gen_job_clear(&list->job);
        free(list);
        list = next;
    }
}

static void on_wake(uv_async_t *h)
{
    drain(h->data);
}

/* The trainer thread's callback: no API call here, only the list and the wake-up. */
static void job_done(ns_gen_job *job)
{
    gen_call *call = (gen_call *)job;
    ns_gen_service *svc = call->svc;
    pthread_mutex_lock(&svc->mu);
    call->next_done = svc->done;
    svc->done = call;
    pthread_mutex_unlock(&svc->mu);
    uv_async_send(&svc->wake);
}

/* ---- requests ----------------------------------------------------------------------------- */

static const char *const known_fields[] = {"prompt", "tokens", "max_tokens", "temperature",
                                           "top_k",  "top_p",  "seed"};

/* A number field (integer or real) into *out, or the default when absent. */
static bool get_number(json_t *o, const char *key, double *out, char *why, size_t why_size)
{
    json_t *v = json_object_get(o, key);
    if (v == NULL)
        return true;
    if (!json_is_number(v)) {
        snprintf(why, why_size, "%s must be a number", key);
        return false;
    }
    *out = json_number_value(v);
    return true;
}

static bool get_integer(json_t *o, const char *key, json_int_t lo, json_int_t hi, json_int_t *out,
                        char *why, size_t why_size)
{
    json_t *v = json_object_get(o, key);
    if (v == NULL)
        return true;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        snprintf(why, why_size, "%s must be an integer from %lld to %lld", key, (long long)lo,
                 (long long)hi);
        return false;
    }
    *out = json_integer_value(v);
    return true;
}

/* The prompt: "prompt" (text) or "tokens" (ids), exactly one. */
static bool get_prompt(json_t *o, ns_gen_job *job, char *why, size_t why_size)
{
    json_t *text = json_object_get(o, "prompt"), *ids = json_object_get(o, "tokens");
    if ((text == NULL) == (ids == NULL)) {
        snprintf(why, why_size, "give the prompt as \"prompt\" (text) or \"tokens\" (ids), one");
        return false;
    }
    if (text != NULL) {
        size_t len = json_is_string(text) ? json_string_length(text) : 0;
        if (!json_is_string(text) || len == 0 || len > NS_GEN_PROMPT_BYTES_MAX) {
            snprintf(why, why_size, "prompt must be text of 1 to %d bytes",
                     NS_GEN_PROMPT_BYTES_MAX);
            return false;
        }
        job->prompt = malloc(len + 1);
        if (job->prompt == NULL)
            return false;
        memcpy(job->prompt, json_string_value(text), len + 1);
        job->prompt_len = len;
        return true;
    }
    size_t n = json_is_array(ids) ? json_array_size(ids) : 0;
    if (n == 0 || n > GEN_PROMPT_IDS_MAX) {
        snprintf(why, why_size, "tokens must be an array of 1 to %d token ids", GEN_PROMPT_IDS_MAX);
        return false;
    }
    job->prompt_ids = malloc(sizeof *job->prompt_ids * n);
    if (job->prompt_ids == NULL)
        return false;
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(ids, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) > (json_int_t)UINT32_MAX) {
            snprintf(why, why_size, "tokens[%zu] is not a token id", i);
            return false;
        }
        job->prompt_ids[i] = (uint32_t)json_integer_value(v);
    }
    job->prompt_id_count = n;
    return true;
}

/* Fills job from the body; false with the reason in why. */
static bool parse_request(const ns_api_request *req, uint32_t vocab, ns_gen_job *job, char *why,
                          size_t why_size)
{
    json_error_t jerr;
    json_t *o = json_loadb((const char *)req->body, req->body_len, 0, &jerr);
    if (o == NULL || !json_is_object(o)) {
        snprintf(why, why_size, "body must be a JSON object like {\"prompt\": \"The\"}");
        json_decref(o);
        return false;
    }
    const char *key;
    json_t *value;
    bool ok = true;
    json_object_foreach(o, key, value)
    {
        bool known = false;
        for (size_t i = 0; i < sizeof known_fields / sizeof known_fields[0]; i++)
            known = known || strcmp(key, known_fields[i]) == 0;
        if (!known) {
            snprintf(why, why_size, "unknown field \"%.64s\"", key);
            ok = false;
            break;
        }
    }
    json_int_t max_tokens = GEN_DEFAULT_MAX_TOKENS, top_k = GEN_DEFAULT_TOP_K, seed = -1;
    double temperature = GEN_DEFAULT_TEMPERATURE, top_p = GEN_DEFAULT_TOP_P;
    ok = ok && get_prompt(o, job, why, why_size) &&
         get_integer(o, "max_tokens", 1, NS_GEN_TOKENS_MAX, &max_tokens, why, why_size) &&
         get_number(o, "temperature", &temperature, why, why_size) &&
         get_integer(o, "top_k", 0, UINT32_MAX, &top_k, why, why_size) &&
         get_number(o, "top_p", &top_p, why, why_size) &&
         get_integer(o, "seed", 0, INT64_MAX, &seed, why, why_size);
    json_decref(o);
    if (!ok) {
        if (why[0] == '\0')
            snprintf(why, why_size, "out of memory");
        return false;
    }
    uint64_t s = (uint64_t)seed;
    if (seed < 0) { /* none given: a random one, reported so the answer can be reproduced */
        randombytes_buf(&s, sizeof s);
        s &= (1ull << 53) - 1; /* exact as a JSON number in every client */
    }
    job->max_tokens = (uint32_t)max_tokens;
    job->sample = (ns_sample_config){
        .temperature = temperature, .top_k = (uint32_t)top_k, .top_p = top_p, .seed = s};
    const char *bad = NULL;
    if (ns_sample_config_check(&job->sample, vocab, &bad) != NS_OK) {
        snprintf(why, why_size, "%s", bad);
        return false;
    }
    return true;
}

/* ---- the service -------------------------------------------------------------------------- */

int ns_gen_start(ns_gen_service **out, uv_loop_t *loop)
{
    ns_gen_service *svc = calloc(1, sizeof *svc);
    if (svc == NULL)
        return NS_ENOMEM;
    if (uv_async_init(loop, &svc->wake, on_wake) != 0) {
        free(svc);
        return NS_EIO;
    }
    svc->wake.data = svc;
    pthread_mutex_init(&svc->mu, NULL);
    *out = svc;
    return NS_OK;
}

void ns_gen_request(ns_gen_service *svc, ns_api *api, ns_trainer *trainer, ns_api_request *req)
{
    if (trainer == NULL) {
        ns_api_error(req, 409, "generation needs the model, and training is off (--train off)");
        return;
    }
    ns_train_status st;
    ns_trainer_status(trainer, &st);
    if (!st.ready) {
        ns_api_error(req, st.error[0] != '\0' ? 409 : 503,
                     st.error[0] != '\0' ? "the model failed to load (see /training_status)"
                                         : "the model is still loading; try again shortly");
        return;
    }
    gen_call *call = calloc(1, sizeof *call);
    if (call == NULL) {
        ns_api_error(req, 503, "out of memory");
        return;
    }
    char why[200] = "";
    if (!parse_request(req, st.vocab, &call->job, why, sizeof why)) {
        ns_api_error(req, 400, why);
        ns_gen_job_clear(&call->job);
        free(call);
        return;
    }
    call->svc = svc;
    call->api = api;
    call->req = req;
    call->job.done = job_done;
    int rc = ns_trainer_generate(trainer, &call->job);
    if (rc != NS_OK) {
        ns_api_error(req, rc == NS_ELIMIT ? 503 : 409,
                     rc == NS_ELIMIT ? "too many generation requests are waiting; try again"
                                     : "the trainer stopped on an error (see /training_status)");
        ns_gen_job_clear(&call->job);
        free(call);
        return;
    }
    req->deferred = true;
}

void ns_gen_counts(const ns_gen_service *svc, uint64_t *answered, uint64_t *failed)
{
    *answered = svc->answered;
    *failed = svc->failed;
}

static void free_on_close(uv_handle_t *h)
{
    ns_gen_service *svc = h->data;
    pthread_mutex_destroy(&svc->mu);
    free(svc);
}

void ns_gen_stop(ns_gen_service *svc)
{
    if (svc == NULL)
        return;
    drain(svc);
    uv_close((uv_handle_t *)&svc->wake, free_on_close);
}
