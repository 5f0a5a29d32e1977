/*
 * api.c: the local HTTP API server: libmicrohttpd on its own thread, answers made on the loop.
 *
 * libmicrohttpd parses HTTP (we never do); its thread collects a request's method, path and body
 * (bounded), checks the API token on every POST, then suspends the connection and queues the
 * request for the loop thread, waking it with a uv_async. The loop thread runs the handler, which
 * may read any node state without locks, and resumes the connection; libmicrohttpd's thread then
 * sends the answer. Nothing but the queue and the counters is shared between the two threads.
 */
#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "node_internal.h"

typedef struct api_call api_call;

struct api_call {
    ns_api_request req; /* first: ns_api_complete finds the call from its request */
    ns_api *api;
    struct MHD_Connection *conn;
    char *path;
    uint8_t *body;
    size_t body_len;
    bool body_too_big;
    bool started;  /* the final handler call happened */
    bool answered; /* req.status and req.response are set */
    api_call *next;
    api_call *deferred_next, *deferred_prev; /* on the loop thread's list of deferred calls */
    char arg_buf[NS_API_ARG_BYTES_MAX];      /* the query arguments' text */
    size_t arg_buf_used;
};

struct ns_api {
    struct MHD_Daemon *mhd;
    uv_async_t wakeup;
    char token[NS_API_TOKEN_HEX_SIZE];
    ns_api_handler handler;
    void *handler_arg;
    pthread_mutex_t lock; /* guards queue and closing */
    api_call *queue_head, *queue_tail;
    bool closing;
    api_call *deferred; /* answered later by ns_api_complete; only the loop thread touches it */
    atomic_uint_fast64_t count_2xx, count_4xx, count_5xx;
};

void ns_api_reply_json(ns_api_request *req, int status, json_t *body)
{
    char *text = body != NULL ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (text == NULL) {
        status = 500;
        text = strdup("{\"error\":\"internal error building the answer\"}");
        NS_ASSERT(text != NULL);
    }
    free(req->response);
    req->response = text;
    req->response_len = strlen(text);
    req->status = status;
    req->content_type = "application/json";
}

void ns_api_error(ns_api_request *req, int status, const char *message)
{
    ns_api_reply_json(req, status, json_pack("{s:s}", "error", message));
}

uint64_t ns_api_requests(const ns_api *api, int status_class)
{
    switch (status_class) {
    case 2:
        return atomic_load(&api->count_2xx);
    case 4:
        return atomic_load(&api->count_4xx);
    case 5:
        return atomic_load(&api->count_5xx);
    }
    return 0;
}

static enum MHD_Result send_answer(api_call *call)
{
    ns_api *api = call->api;
    ns_api_request *req = &call->req;
    if (req->status >= 500)
        atomic_fetch_add(&api->count_5xx, 1);
    else if (req->status >= 400)
        atomic_fetch_add(&api->count_4xx, 1);
    else
        atomic_fetch_add(&api->count_2xx, 1);
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        req->response_len, req->response != NULL ? req->response : (char *)"",
        req->response != NULL ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (resp == NULL)
        return MHD_NO;
    req->response = NULL; /* owned by the response now */
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                            req->content_type != NULL ? req->content_type : "application/json");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    enum MHD_Result rc = MHD_queue_response(call->conn, (unsigned)req->status, resp);
    MHD_destroy_response(resp);
    return rc;
}

static bool token_ok(ns_api *api, struct MHD_Connection *conn)
{
    const char *auth = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
    static const char prefix[] = "Bearer ";
    if (auth == NULL || strncmp(auth, prefix, sizeof prefix - 1) != 0)
        return false;
    const char *given = auth + sizeof prefix - 1;
    size_t n = strlen(api->token);
    return strlen(given) == n && sodium_memcmp(given, api->token, n) == 0;
}

static enum MHD_Result collect_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value)
{
    (void)kind;
    api_call *call = cls;
    ns_api_request *req = &call->req;
    size_t klen = strlen(key) + 1, vlen = (value != NULL ? strlen(value) : 0) + 1;
    if (req->arg_count == NS_API_ARGS_MAX ||
        call->arg_buf_used + klen + vlen > sizeof call->arg_buf) {
        req->args_truncated = true;
        return MHD_NO;
    }
    char *k = call->arg_buf + call->arg_buf_used;
    memcpy(k, key, klen);
    char *v = k + klen;
    memcpy(v, value != NULL ? value : "", vlen);
    call->arg_buf_used += klen + vlen;
    req->arg_keys[req->arg_count] = k;
    req->arg_values[req->arg_count] = v;
    req->arg_count++;
    return MHD_YES;
}

const char *ns_api_arg(const ns_api_request *req, const char *key)
{
    for (size_t i = 0; i < req->arg_count; i++) {
        if (strcmp(req->arg_keys[i], key) == 0)
            return req->arg_values[i];
    }
    return NULL;
}

/* Hands a call to the loop thread, or answers 503 when the API is closing. */
static enum MHD_Result enqueue_call(api_call *call)
{
    ns_api *api = call->api;
    pthread_mutex_lock(&api->lock);
    if (api->closing) {
        pthread_mutex_unlock(&api->lock);
        ns_api_error(&call->req, 503, "the node is shutting down");
        call->answered = true;
        return send_answer(call);
    }
    MHD_suspend_connection(call->conn);
    if (api->queue_tail != NULL)
        api->queue_tail->next = call;
    else
        api->queue_head = call;
    api->queue_tail = call;
    pthread_mutex_unlock(&api->lock);
    uv_async_send(&api->wakeup);
    return MHD_YES;
}

static enum MHD_Result access_handler(void *cls, struct MHD_Connection *conn, const char *url,
                                      const char *method, const char *version,
                                      const char *upload_data, size_t *upload_data_size,
                                      void **con_cls)
{
    (void)version;
    ns_api *api = cls;
    api_call *call = *con_cls;
    if (call == NULL) {
        call = calloc(1, sizeof *call);
        if (call == NULL)
            return MHD_NO;
        call->api = api;
        call->conn = conn;
        call->path = strdup(url);
        call->req.method = method; /* libmicrohttpd keeps it alive for the request */
        if (call->path == NULL) {
            free(call);
            return MHD_NO;
        }
        call->req.path = call->path;
        *con_cls = call;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (call->body_too_big || call->body_len + n > NS_API_BODY_BYTES_MAX) {
            call->body_too_big = true;
            return MHD_YES;
        }
        uint8_t *grown = realloc(call->body, call->body_len + n);
        if (grown == NULL)
            return MHD_NO;
        memcpy(grown + call->body_len, upload_data, n);
        call->body = grown;
        call->body_len += n;
        return MHD_YES;
    }
    if (call->answered)
        return send_answer(call);
    NS_ASSERT(!call->started);
    call->started = true;
    if (strcmp(method, "POST") == 0 && !token_ok(api, conn)) {
        ns_api_error(&call->req, 401, "missing or wrong API token (Authorization: Bearer ...)");
        call->answered = true;
        return send_answer(call);
    }
    if (call->body_too_big) {
        ns_api_error(&call->req, 413, "request body too large");
        call->answered = true;
        return send_answer(call);
    }
    call->req.body = call->body;
    call->req.body_len = call->body_len;
    MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, collect_arg, call);
    if (call->req.args_truncated) {
        ns_api_error(&call->req, 414, "too many or too long query arguments");
        call->answered = true;
        return send_answer(call);
    }
    return enqueue_call(call);
}

static void request_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                              enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    api_call *call = *con_cls;
    if (call == NULL)
        return;
    free(call->req.response);
    free(call->body);
    free(call->path);
    free(call);
    *con_cls = NULL;
}

static api_call *take_queue(ns_api *api)
{
    pthread_mutex_lock(&api->lock);
    api_call *head = api->queue_head;
    api->queue_head = api->queue_tail = NULL;
    pthread_mutex_unlock(&api->lock);
    return head;
}

static void answer_call(api_call *call)
{
    if (call->req.response == NULL)
        ns_api_error(&call->req, 500, "no answer");
    call->answered = true;
    MHD_resume_connection(call->conn);
}

static void wakeup_callback(uv_async_t *handle)
{
    ns_api *api = handle->data;
    for (api_call *call = take_queue(api); call != NULL;) {
        api_call *next = call->next;
        call->next = NULL;
        call->req.status = 500;
        api->handler(api->handler_arg, &call->req);
        if (call->req.deferred) {
            call->deferred_next = api->deferred;
            if (api->deferred != NULL)
                api->deferred->deferred_prev = call;
            api->deferred = call;
        } else {
            answer_call(call);
        }
        call = next;
    }
}

void ns_api_complete(ns_api *api, ns_api_request *req)
{
    api_call *call = (api_call *)req; /* req is the first member */
    NS_ASSERT(req->deferred);
    if (call->deferred_prev != NULL)
        call->deferred_prev->deferred_next = call->deferred_next;
    else
        api->deferred = call->deferred_next;
    if (call->deferred_next != NULL)
        call->deferred_next->deferred_prev = call->deferred_prev;
    req->deferred = false;
    answer_call(call);
}

static void wakeup_closed(uv_handle_t *handle)
{
    ns_api *api = handle->data;
    pthread_mutex_destroy(&api->lock);
    free(api);
}

int ns_api_start(ns_api **out, uv_loop_t *loop, int listen_fd, const char *token,
                 ns_api_handler handler, void *arg)
{
    NS_ASSERT(strlen(token) + 1 == NS_API_TOKEN_HEX_SIZE);
    ns_api *api = calloc(1, sizeof *api);
    if (api == NULL)
        return NS_ENOMEM;
    memcpy(api->token, token, NS_API_TOKEN_HEX_SIZE);
    api->handler = handler;
    api->handler_arg = arg;
    pthread_mutex_init(&api->lock, NULL);
    api->wakeup.data = api;
    NS_ASSERT(uv_async_init(loop, &api->wakeup, wakeup_callback) == 0);
    api->mhd = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_ALLOW_SUSPEND_RESUME, 0, NULL, NULL,
        access_handler, api, MHD_OPTION_LISTEN_SOCKET, listen_fd, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)NS_API_CONNECTIONS_MAX, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)NS_API_TIMEOUT_S,
        MHD_OPTION_NOTIFY_COMPLETED, request_completed, api, MHD_OPTION_END);
    if (api->mhd == NULL) {
        close(listen_fd);
        uv_close((uv_handle_t *)&api->wakeup, wakeup_closed); /* frees api on the next pass */
        *out = NULL;
        return NS_EIO;
    }
    *out = api;
    return NS_OK;
}

void ns_api_stop(ns_api *api)
{
    if (api == NULL)
        return;
    pthread_mutex_lock(&api->lock);
    api->closing = true;
    pthread_mutex_unlock(&api->lock);
    for (api_call *call = take_queue(api); call != NULL;) {
        api_call *next = call->next;
        ns_api_error(&call->req, 503, "the node is shutting down");
        answer_call(call);
        call = next;
    }
    while (api->deferred != NULL) {
        ns_api_error(&api->deferred->req, 503, "the node is shutting down");
        ns_api_complete(api, &api->deferred->req);
    }
    MHD_stop_daemon(api->mhd); /* closes the listening socket too */
    uv_close((uv_handle_t *)&api->wakeup, wakeup_closed);
}
