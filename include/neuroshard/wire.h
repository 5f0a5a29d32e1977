/*
 * wire.h: the frame, the unit every message between nodes travels in.
 *
 * A frame is a typed header (a protobuf-c FrameHeader, proto/wire.proto: the frame type, the
 * type-specific message bytes, and the shape of an optional tensor) followed by the raw tensor
 * bytes. Encoding writes the payload once into the caller's buffer (the link encrypts that buffer
 * in place); decoding returns views into the received buffer, so a tensor is never copied on the
 * way in. On a link the frame is the plaintext of one encrypted record; on the datagram channel a
 * frame's body is the whole UDP packet (DHT) and no tensor rides along.
 *
 *   encoded frame = u32 header_len (big-endian) | FrameHeader (header_len bytes) | payload
 */
#ifndef NEUROSHARD_WIRE_H
#define NEUROSHARD_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "neuroshard/base.h"

#define NS_TENSOR_DIMS_MAX         6
#define NS_FRAME_HEADER_BYTES_MAX  (64 * 1024)
#define NS_FRAME_PAYLOAD_BYTES_MAX (64u * 1024 * 1024)
#define NS_FRAME_BYTES_MAX         (4 + NS_FRAME_HEADER_BYTES_MAX + NS_FRAME_PAYLOAD_BYTES_MAX)

typedef enum {
    NS_DTYPE_NONE = 0,
    NS_DTYPE_F32 = 1,
    NS_DTYPE_F16 = 2,
    NS_DTYPE_BF16 = 3,
    NS_DTYPE_I8 = 4,
    NS_DTYPE_U8 = 5,
    NS_DTYPE_I32 = 6,
    NS_DTYPE_COUNT_ = 7
} ns_dtype;

/* Bytes per element; 0 for NS_DTYPE_NONE or an unknown value. */
size_t ns_dtype_size(uint32_t dtype);

/* A view of a tensor: dtype, shape and the bytes, owned by someone else. */
typedef struct ns_wire_tensor {
    uint32_t dtype; /* ns_dtype; NS_DTYPE_NONE when the frame carries no tensor */
    uint32_t ndim;
    uint32_t shape[NS_TENSOR_DIMS_MAX];
    const uint8_t *data;
    size_t bytes; /* product of shape times ns_dtype_size(dtype) */
} ns_wire_tensor;

typedef enum {
    NS_FRAME_DHT = 1,          /* a DHT packet (datagram channel) */
    NS_FRAME_PING = 2,         /* link keep-alive; body: 8-byte nonce */
    NS_FRAME_PONG = 3,         /* answer to PING with the same body */
    NS_FRAME_CLOSE = 4,        /* the sender closes the link; body: optional reason text */
    NS_FRAME_CONNECT_BACK = 5, /* "dial me back at my address, this port"; body: nonce(8) port(2) */
    NS_FRAME_CONNECT_BACK_RESULT = 6, /* body: nonce(8) status(1): 0 reached, 1 not reached */
    NS_FRAME_APP = 64,                /* first type for later parts (pipeline, sync, ...) */
    NS_FRAME_LEDGER_ENTRY = 65,       /* body: a ledger entry's signed envelope (gossip) */
    NS_FRAME_PROOF = 66,              /* body: a proof of neural work's signed envelope (gossip) */
    NS_FRAME_LEDGER_HEADS = 67,       /* body: n x (account id 32, newest sequence 8 BE) */
    NS_FRAME_LEDGER_WANT = 68,        /* body: account id 32, first sequence wanted 8 BE */
    NS_FRAME_VERIFY_GET = 69,         /* body: checkpoint step 8 BE, file 1, offset 8 BE */
    NS_FRAME_VERIFY_PART = 70,        /* body: the request's 17 bytes, file size 8 BE (0: not here);
                                       * tensor: U8 [n], up to 1 MiB of the file from offset */
    NS_FRAME_PIPE_ACT = 71,   /* pipeline.h: step, micro-batch, shape, targets; tensor F32 acts */
    NS_FRAME_PIPE_GRAD = 72,  /* step, micro-batch, shape; tensor F32 gradient of the acts */
    NS_FRAME_PIPE_NORM = 73,  /* step, running sum of squared gradients */
    NS_FRAME_PIPE_SCALE = 74, /* step, clipping scale */
    NS_FRAME_CAPACITY = 75,   /* swarm.c: a node's capacity heartbeat (S6), every 5 s */
    NS_FRAME_QUORUM_PROPOSE = 76, /* swarm.c: a quorum's members and layer ranges */
    NS_FRAME_QUORUM_ACCEPT = 77,  /* swarm.c: the proposal's id, accepted (1) or refused (0) */
    NS_FRAME_QUORUM_INFO = 78,    /* swarm.c: a quorum's generation and members, for replicas */
    NS_FRAME_CKPT_GET = 79,       /* swarm.c: as VERIFY_GET, a replica pulling a stage's state */
    NS_FRAME_CKPT_PART = 80,      /* swarm.c: as VERIFY_PART */
    NS_FRAME_QUORUM_RESTORE = 81, /* swarm.c: new generation, restart step, members by stage */
    NS_FRAME_QUORUM_START = 82,   /* swarm.c: every member accepted the proposal (its id): start */
    NS_FRAME_SYNC_HELLO = 83,     /* diloco.c: model, layers trained, H, step (every 5 s) */
    NS_FRAME_SYNC_MSG = 84,       /* diloco.c: tensor U8: a cohort exchange message (sync.h) */
    NS_FRAME_SYNC_SUBMIT = 85,    /* diloco.c: a contributor's place, base round and time, H;
                                     tensor U8: its compressed pseudo-gradient */
    NS_FRAME_SYNC_WEIGHTS_GET = 86,  /* diloco.c: place, offset: a member's w0 from there */
    NS_FRAME_SYNC_WEIGHTS_PART = 87, /* diloco.c: round, its time, n, offset, w0's SHA-256;
                                        tensor F32: up to 4 Mi floats of w0 */
    NS_FRAME_QUORUM_DISSOLVE = 88,   /* swarm.c: the session is over: quorum id, generation */
    NS_FRAME_PIPE_RESEND = 89,       /* pipeline.h: step, the input awaited (type, micro-batch):
                                        send again what you sent me of that step from there on */
    NS_FRAME_EVIDENCE_GET = 90,      /* evidence.c: a fraud bundle's SHA-256, offset 8 BE */
    NS_FRAME_EVIDENCE_PART = 91,     /* the request's 40 bytes, total size 8 BE (0: not here);
                                        tensor U8: the bytes from the offset */
    NS_FRAME_SWARM_PING = 92,        /* swarm.c: 8 bytes the sender chose (its clock) */
    NS_FRAME_SWARM_PONG = 93,        /* the PING's 8 bytes back: a round trip measured */
    NS_FRAME_PIPE_ALIVE = 94,        /* pipeline.h: a RESEND's body back, from the network
                                        thread: the asked stage is there, if busy */
    NS_FRAME_SWARM_SUSPECT = 95,     /* swarm.c: generation, a member's id: it answers its
                                        neighbour's RESENDs no more; replace it */
} ns_frame_type;

struct ns_frame {
    uint32_t type;       /* ns_frame_type */
    const uint8_t *body; /* type-specific message bytes */
    size_t body_len;
    ns_wire_tensor tensor; /* tensor.dtype == NS_DTYPE_NONE: none */
};

/* Size ns_frame_encode will write; NS_ETOOBIG / NS_EINVAL for a frame that is over a limit or
 * whose tensor bytes do not match its shape. */
NS_MUST_USE int ns_frame_encoded_len(const ns_frame *f, size_t *len);
/* Writes the frame into out (out_len >= ns_frame_encoded_len); *written gets the size. */
NS_MUST_USE int ns_frame_encode(const ns_frame *f, uint8_t *out, size_t out_len, size_t *written);
/* Parses a frame; body and tensor.data point into buf. NS_EPARSE for anything malformed (lengths
 * that do not add up, a shape that does not match the payload, unknown dtype, non-canonical
 * header), NS_ETOOBIG over the limits. Never reads outside buf[0..len). */
NS_MUST_USE int ns_frame_decode(const uint8_t *buf, size_t len, ns_frame *f);

#endif
