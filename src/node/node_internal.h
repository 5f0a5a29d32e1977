/*
 * node_internal.h: what the daemon's files share among themselves (never included by a core).
 *
 * The libuv binding of ns_env, the local HTTP API server (libmicrohttpd on its own thread, every
 * request handed to the loop thread through a queue and answered there), and listening sockets.
 */
#ifndef NS_NODE_INTERNAL_H
#define NS_NODE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include <uv.h>

#include "neuroshard/base.h"
#include "neuroshard/node.h"

/* ---- ns_env over libuv -------------------------------------------------------------------- */

#define NS_UV_TIMERS_MAX 4096

typedef struct ns_uv_timer ns_uv_timer;

typedef struct ns_uv_env {
    ns_env env;
    uv_loop_t *loop;
    int64_t epoch_offset_ms; /* wall clock at start minus loop time at start */
    uint64_t next_timer_id;
    ns_uv_timer *timers; /* armed timers, a doubly linked list */
    size_t timer_count;
} ns_uv_env;

void ns_uv_env_init(ns_uv_env *uvenv, uv_loop_t *loop);
/* Cancels every armed timer; their handles close on the next loop pass. */
void ns_uv_env_close(ns_uv_env *uvenv);

/* ---- listening sockets -------------------------------------------------------------------- */

/* A bound, listening TCP socket; *bound gets the address actually bound (port 0 resolved).
 * NS_EADDRINUSE when taken, NS_EPERM when not allowed, NS_EIO otherwise. */
NS_MUST_USE int ns_listen_tcp(const ns_addr_text *addr, int *fd, ns_addr_text *bound);

/* ---- the local HTTP API ------------------------------------------------------------------- */

#define NS_API_BODY_BYTES_MAX  (64 * 1024)
#define NS_API_CONNECTIONS_MAX 64
#define NS_API_TIMEOUT_S       15

typedef struct ns_api ns_api;

/* One request as the loop thread sees it. The handler sets status, content_type and body (a
 * malloc'd buffer the API frees after sending). */
typedef struct ns_api_request {
    const char *method;
    const char *path;
    const uint8_t *body;
    size_t body_len;
    int status;
    const char *content_type;
    char *response;
    size_t response_len;
} ns_api_request;

typedef void (*ns_api_handler)(void *arg, ns_api_request *req);

/* Serves on listen_fd (taken over: closed by ns_api_stop). Every POST must carry
 * "Authorization: Bearer <token>" or gets 401 without reaching the handler. The handler runs on
 * the loop thread. */
NS_MUST_USE int ns_api_start(ns_api **out, uv_loop_t *loop, int listen_fd, const char *token,
                             ns_api_handler handler, void *arg);
/* Answers what is still queued with 503, stops the HTTP thread, frees everything. */
void ns_api_stop(ns_api *api);
uint64_t ns_api_requests(const ns_api *api, int status_class); /* 2, 4 or 5: 2xx, 4xx, 5xx */

/* Fills a request's response with body (a reference taken over) as compact JSON; a NULL body or
 * one that cannot be encoded becomes a 500. */
void ns_api_reply_json(ns_api_request *req, int status, json_t *body);
/* Fills a request's response with a JSON error body {"error": "..."}. */
void ns_api_error(ns_api_request *req, int status, const char *message);

#endif
