/*
 * heap.c: the event queue, a binary min-heap of (time, sequence number).
 *
 * Every event (a timer, a packet arriving, a join, a lookup) is pushed with the next sequence
 * number, so two events due at the same microsecond pop in the order they were pushed and a run
 * is the same trace every time. The array grows by doubling up to a fixed maximum (what the slabs
 * of timers and packets can hold, plus the scenario's own events); past it, a push fails.
 */
#include <stdlib.h>

#include "netsim.h"

#define HEAP_CAPACITY_START 4096

int ns__sim_heap_init(ns_sim_heap *heap, size_t capacity_max)
{
    NS_ASSERT(capacity_max >= HEAP_CAPACITY_START);
    *heap = (ns_sim_heap){.capacity_max = capacity_max};
    heap->events = malloc(HEAP_CAPACITY_START * sizeof *heap->events);
    if (heap->events == NULL)
        return NS_ENOMEM;
    heap->capacity = HEAP_CAPACITY_START;
    return NS_OK;
}

void ns__sim_heap_free(ns_sim_heap *heap)
{
    free(heap->events);
    *heap = (ns_sim_heap){0};
}

static bool event_before(const ns_sim_event *a, const ns_sim_event *b)
{
    if (a->at_us != b->at_us)
        return a->at_us < b->at_us;
    return a->seq < b->seq;
}

static int heap_reserve(ns_sim_heap *heap)
{
    if (heap->count < heap->capacity)
        return NS_OK;
    if (heap->capacity >= heap->capacity_max)
        return NS_ELIMIT;
    size_t capacity = heap->capacity * 2;
    if (capacity > heap->capacity_max)
        capacity = heap->capacity_max;
    ns_sim_event *events = realloc(heap->events, capacity * sizeof *events);
    if (events == NULL)
        return NS_ENOMEM;
    heap->events = events;
    heap->capacity = capacity;
    return NS_OK;
}

int ns__sim_heap_push(ns_sim_heap *heap, uint64_t at_us, ns_sim_event_kind kind, uint32_t index)
{
    int rc = heap_reserve(heap);
    if (rc != NS_OK)
        return rc;
    ns_sim_event ev = {.at_us = at_us, .seq = heap->seq_next++, .kind = kind, .index = index};
    size_t i = heap->count++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!event_before(&ev, &heap->events[parent]))
            break;
        heap->events[i] = heap->events[parent];
        i = parent;
    }
    heap->events[i] = ev;
    return NS_OK;
}

bool ns__sim_heap_pop(ns_sim_heap *heap, ns_sim_event *out)
{
    if (heap->count == 0)
        return false;
    *out = heap->events[0];
    ns_sim_event last = heap->events[--heap->count];
    size_t n = heap->count;
    size_t i = 0;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= n)
            break;
        if (child + 1 < n && event_before(&heap->events[child + 1], &heap->events[child]))
            child++;
        if (!event_before(&heap->events[child], &last))
            break;
        heap->events[i] = heap->events[child];
        i = child;
    }
    if (n > 0)
        heap->events[i] = last;
    NS_ASSERT(heap->count == 0 || !event_before(&heap->events[0], out));
    return true;
}
