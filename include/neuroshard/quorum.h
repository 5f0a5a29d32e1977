/*
 * quorum.h: quorums, the pipelines that train the whole model together (SPEC S5), as a sans-IO
 * core.
 *
 * A quorum is a set of members whose layer ranges cover layers 0..L-1 exactly once, in order:
 * the member holding layer 0 is the initiator (embedding), the one holding L-1 the finisher (LM
 * head); one member covering everything is the solo case (N = 1). All members' tiers lie within
 * two adjacent tiers (T1-T2, T2-T3, T3-T4, or one of them alone); T5 never pipelines.
 *
 * ns_quorum_plan is a pure function over the layer-holder announcements. The core (ns_quorum)
 * proposes a plan and collects answers, answers the proposals of others, runs the session
 * (renewal check at 80 %, dissolution) and watches the members' heartbeats. It never touches a
 * socket, a clock or a thread: time and timers come from the ns_env given at creation, and
 * everything it wants done goes out through the callbacks of its config (send a proposal, the
 * quorum formed, a member is stale and replaced, dissolve and save weights). Callbacks other than
 * propose may call back into the core; none may free it. A call that fails never also calls a
 * callback.
 */
#ifndef NEUROSHARD_QUORUM_H
#define NEUROSHARD_QUORUM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "neuroshard/base.h"
#include "neuroshard/crypto.h"
#include "neuroshard/swarm.h"

#ifndef NS_QUORUM_MEMBERS_MAX
#define NS_QUORUM_MEMBERS_MAX 32 /* pipeline stages of one quorum */
#endif
#ifndef NS_QUORUM_CANDIDATES_MAX
#define NS_QUORUM_CANDIDATES_MAX 1024 /* layer-holder announcements the core considers */
#endif
#define NS_QUORUM_SESSION_MS          (60ull * 60 * 1000)     /* 1 h, one session period */
#define NS_QUORUM_SESSION_MAX_MS      (4ull * 60 * 60 * 1000) /* 4 h, renewals included */
#define NS_QUORUM_RENEW_CHECK_PERCENT 80                      /* of the current period */
#define NS_QUORUM_RENEW_BATCHES_MIN   1000                    /* batches in the period */
#define NS_QUORUM_PROPOSE_TIMEOUT_MS  10000 /* all answers to a proposal within this */
#define NS_QUORUM_JOIN_TIMEOUT_MS     (2 * NS_QUORUM_PROPOSE_TIMEOUT_MS) /* accepted -> formed */
#define NS_QUORUM_HEARTBEAT_MS        30000
#define NS_QUORUM_DEGRADED_MISSED     2 /* heartbeats missed in a row */
#define NS_QUORUM_STALE_MISSED        4

/* A layer holder as the planner sees it: its announcement, the latency this node measured to it
 * (0 for itself) and the forward time of one layer it announced (S2's self-benchmark; 0: not
 * known, its tier's nominal time stands in). */
typedef struct ns_quorum_candidate {
    ns_pool_node node;
    uint32_t latency_ms;
    uint32_t layer_us;
} ns_quorum_candidate;

typedef struct ns_quorum_member {
    uint8_t id[NS_ID_BYTES];
    uint32_t layer_first; /* the layers it runs in this quorum: [layer_first, layer_last) */
    uint32_t layer_last;
    ns_tier tier;
    uint32_t latency_ms;
} ns_quorum_member;

/* A planned quorum, as proposed. members[0] is the initiator, members[member_count - 1] the
 * finisher. id = SHA-256(member ids in byte order || session_start_ms, 8 bytes big-endian); a
 * replacement keeps the id for the rest of the session. */
typedef struct ns_quorum_proposal {
    uint8_t id[NS_SHA256_BYTES];
    uint8_t proposer[NS_ID_BYTES];
    uint64_t session_start_ms;
    uint32_t layers;
    uint32_t member_count;
    uint64_t latency_ms_sum;
    uint64_t slowest_stage_us; /* the plan's slowest stage: a forward of its layers (and head) */
    ns_quorum_member members[NS_QUORUM_MEMBERS_MAX];
} ns_quorum_proposal;

/* Plans a quorum over candidates (any order) for a model of `layers` layers whose head (and
 * loss) costs head_milli thousandths of a layer at the finisher: for each band of compatible
 * tiers, the full cover with the smallest sum of member latencies (then the fewest members, then
 * the first found scanning layers upward and candidates by id); over the bands, the smallest sum
 * again, then the faster band. Then, with those members in that order, the split of the layers
 * that makes the slowest stage fastest (S6: a pipeline runs at its pace), each member within
 * what it holds and taking layer_us per layer (its tier's nominal time if 0): where neighbours'
 * held ranges overlap, the faster takes more layers. Candidates with an empty or out-of-range
 * held range, or of tier T5, are skipped. Fills everything but out->proposer (zero). NS_ENOENT
 * when no full cover exists within NS_QUORUM_MEMBERS_MAX members (the node trains
 * asynchronously); NS_EINVAL for layers 0 or above NS_POOL_LAYERS_MAX, NULL candidates with
 * n > 0, two candidates with one id, or head_milli above 1,000,000; NS_ETOOBIG for
 * n > NS_QUORUM_CANDIDATES_MAX; NS_ENOMEM when the split's 100 KB table cannot be had. */
NS_MUST_USE int ns_quorum_plan(const ns_quorum_candidate *candidates, size_t n, uint32_t layers,
                               uint32_t head_milli, uint64_t session_start_ms,
                               ns_quorum_proposal *out);
/* The plan that node `self` proposes, minimising latency (S5) without losing agreement on who
 * proposes. Every node plans the same candidates with every latency taken as 0 (their
 * announcements are what all nodes share), and the smallest member of that plan is the one to
 * propose: *proposes says whether that is `self`. The proposer then plans again over itself and
 * the candidates whose ids are larger than its own, each with the latency it measured to them
 * (latency_ms; its own is taken as 0), so that it stays the smallest member, which is whom the
 * members expect to propose. *out is that plan when it includes `self`, else the shared one.
 * Errors as ns_quorum_plan's (NS_ENOENT: no cover at all); NS_ENOMEM for the candidates' copy. */
NS_MUST_USE int ns_quorum_plan_near(const ns_quorum_candidate *candidates, size_t n,
                                    const uint8_t self[NS_ID_BYTES], uint32_t layers,
                                    uint32_t head_milli, uint64_t session_start_ms,
                                    ns_quorum_proposal *out, bool *proposes);
/* The quorum id of the proposal's members and session start. */
void ns_quorum_id(const ns_quorum_proposal *p, uint8_t out[NS_SHA256_BYTES]);
/* True when every tier can pipeline and all lie within two adjacent tiers. */
bool ns_quorum_tiers_compatible(const ns_tier *tiers, size_t n);

/* ---- the core ----------------------------------------------------------------------------- */

typedef enum {
    NS_QUORUM_IDLE = 0,      /* in no quorum: train asynchronously or propose one */
    NS_QUORUM_PROPOSING = 1, /* proposed; waiting for every member's answer */
    NS_QUORUM_JOINING = 2,   /* accepted someone's proposal; waiting for it to form */
    NS_QUORUM_ACTIVE = 3,    /* formed: training */
} ns_quorum_state;

typedef enum {
    NS_QUORUM_HEALTHY = 0,
    NS_QUORUM_DEGRADED = 1, /* NS_QUORUM_DEGRADED_MISSED heartbeats missed */
} ns_quorum_health;

/* Why a proposal was refused; each has a counter and a text. */
typedef enum {
    NS_QUORUM_REFUSE_NOT_IN_POOL = 0,  /* the sender is not in the pool */
    NS_QUORUM_REFUSE_NOT_PROPOSER = 1, /* the sender is not the proposal's proposer */
    NS_QUORUM_REFUSE_MALFORMED = 2,    /* wrong layer count, member count, a member twice */
    NS_QUORUM_REFUSE_NO_COVER = 3,     /* the ranges do not cover 0..L-1 in order, once */
    NS_QUORUM_REFUSE_NOT_HOLDER = 4,   /* a member is named for layers it does not hold */
    NS_QUORUM_REFUSE_TIERS = 5,        /* the members' tiers are not compatible */
    NS_QUORUM_REFUSE_BAD_ID = 6,       /* the id is not the hash of members and start */
    NS_QUORUM_REFUSE_NOT_MEMBER = 7,   /* this node is not in it */
    NS_QUORUM_REFUSE_IN_QUORUM = 8,    /* this node is already in a live quorum */
    NS_QUORUM_REFUSE_COUNT_ = 9
} ns_quorum_refusal;

const char *ns_quorum_refusal_text(ns_quorum_refusal why);

typedef struct ns_quorum ns_quorum;

/* What the core asks of its owner. arg is config.arg. Pointers are valid during the call only. */
typedef struct ns_quorum_config {
    uint8_t self_id[NS_ID_BYTES];
    uint32_t layers;     /* of the current architecture */
    uint32_t head_milli; /* its head and loss, in thousandths of a layer (ns_quorum_plan) */
    void *arg;
    /* Send proposal p to member `to` (never called for this node itself). It must not call back
     * into the core: the answer comes later through ns_quorum_on_answer. */
    void (*propose)(void *arg, const uint8_t to[NS_ID_BYTES], const ns_quorum_proposal *p);
    /* The quorum formed here: register it in the DHT; as proposer, tell the members. */
    void (*formed)(void *arg, const ns_quorum_proposal *p);
    /* Formation failed (refused, timed out): train asynchronously. */
    void (*failed)(void *arg, const ns_quorum_proposal *p, const char *reason);
    /* Send this node's heartbeat to the other members (every NS_QUORUM_HEARTBEAT_MS). */
    void (*heartbeat)(void *arg, const ns_quorum_proposal *p);
    /* A member's health changed (degraded, or healthy again). */
    void (*health)(void *arg, const ns_quorum_member *m, ns_quorum_health health);
    /* A stale member was replaced by another holder of its layers, who must now download the
     * layer state from peers; p is the quorum after the change. */
    void (*replaced)(void *arg, const ns_quorum_member *stale, const ns_quorum_member *by,
                     const ns_quorum_proposal *p);
    /* The session was renewed until session_end_ms. */
    void (*renewed)(void *arg, const ns_quorum_proposal *p, uint64_t session_end_ms);
    /* The quorum dissolved: save weights. */
    void (*dissolved)(void *arg, const ns_quorum_proposal *p, const char *reason);
} ns_quorum_config;

/* The core keeps a copy of config and a pointer to env, which must outlive it. Every callback
 * must be set. NS_EINVAL for a missing callback or layers outside 1..NS_POOL_LAYERS_MAX. */
NS_MUST_USE int ns_quorum_new(ns_quorum **out, const ns_quorum_config *config, const ns_env *env);
void ns_quorum_free(ns_quorum *q); /* cancels timers; no callback after; NULL is a no-op */

/* Replaces the layer-holder announcements (copied) used to plan, to check proposals and to find
 * replacements. NS_ETOOBIG over NS_QUORUM_CANDIDATES_MAX, NS_EINVAL for two with one id. */
NS_MUST_USE int ns_quorum_set_pool(ns_quorum *q, const ns_quorum_candidate *candidates, size_t n);

/* Plans over the pool with the session starting now and proposes the plan to every member
 * (this node, if a member, accepts at once). NS_ENOENT without a full cover (train async),
 * NS_EEXIST unless idle. */
NS_MUST_USE int ns_quorum_propose(ns_quorum *q);
/* A member's answer to our proposal. Answers from non-members, twice, or out of turn are
 * ignored and counted. All accepted: formed. One refusal: failed. */
void ns_quorum_on_answer(ns_quorum *q, const uint8_t from[NS_ID_BYTES], bool accepted);
/* A proposal from `from`, checked against the pool. NS_OK: accepted (now joining; answer yes),
 * the members' tiers and latencies taken from this node's pool. Otherwise refused, *why says why
 * and its counter counts it (answer no): NS_EPERM for a sender outside the pool or not the
 * proposer, NS_EEXIST when already proposing, joining or in a quorum, NS_EINVAL for a bad plan. */
NS_MUST_USE int ns_quorum_on_proposal(ns_quorum *q, const uint8_t from[NS_ID_BYTES],
                                      const ns_quorum_proposal *p, ns_quorum_refusal *why);
/* The proposer says the quorum we joined has formed. Ignored and counted unless joining it. */
void ns_quorum_on_formed(ns_quorum *q, const uint8_t from[NS_ID_BYTES],
                         const uint8_t id[NS_SHA256_BYTES]);
/* A member's heartbeat. Ignored and counted unless active and from another member. */
void ns_quorum_on_heartbeat(ns_quorum *q, const uint8_t from[NS_ID_BYTES]);
/* Batches trained in this quorum since the last call, for the renewal check. */
void ns_quorum_add_batches(ns_quorum *q, uint64_t batches);
/* Leaves now (shutdown, new architecture) with reason: an active quorum dissolves (dissolved);
 * a formation under way fails (failed); idle, nothing happens. */
void ns_quorum_dissolve(ns_quorum *q, const char *reason);

ns_quorum_state ns_quorum_get_state(const ns_quorum *q);
/* The quorum proposed, joined or active; NULL when idle. */
const ns_quorum_proposal *ns_quorum_current(const ns_quorum *q);
/* A member's health; NS_ENOENT unless active and id is another member. */
NS_MUST_USE int ns_quorum_member_health(const ns_quorum *q, const uint8_t id[NS_ID_BYTES],
                                        ns_quorum_health *out);
uint64_t ns_quorum_session_end_ms(const ns_quorum *q); /* 0 unless active */
uint64_t ns_quorum_refused(const ns_quorum *q, ns_quorum_refusal why);
uint64_t ns_quorum_ignored(const ns_quorum *q); /* stray answers, formed notes, heartbeats */

#endif
