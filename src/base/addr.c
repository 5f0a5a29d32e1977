/*
 * addr.c: transport addresses as bytes and as text.
 *
 * Text is numeric only ("1.2.3.4:5", "[::1]:5"): names are resolved by whoever reads a config,
 * never inside a core, so a core's behaviour does not depend on a resolver.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "neuroshard/base.h"

void ns_addr_to_text(char *out, size_t out_size, const ns_addr *addr)
{
    char ip[INET6_ADDRSTRLEN];
    if (addr->family == 4) {
        inet_ntop(AF_INET, addr->ip, ip, sizeof ip);
        snprintf(out, out_size, "%s:%u", ip, (unsigned)addr->port);
    } else if (addr->family == 6) {
        inet_ntop(AF_INET6, addr->ip, ip, sizeof ip);
        snprintf(out, out_size, "[%s]:%u", ip, (unsigned)addr->port);
    } else {
        snprintf(out, out_size, "?");
    }
}

int ns_addr_from_text(const char *text, ns_addr *out)
{
    const char *colon = strrchr(text, ':');
    if (colon == NULL || colon == text || colon[1] < '0' || colon[1] > '9')
        return NS_EINVAL;
    char host[INET6_ADDRSTRLEN + 2];
    size_t n = (size_t)(colon - text);
    bool bracketed = text[0] == '[';
    if (bracketed) {
        if (n < 3 || text[n - 1] != ']')
            return NS_EINVAL;
        text++;
        n -= 2;
    }
    if (n >= sizeof host)
        return NS_EINVAL;
    memcpy(host, text, n);
    host[n] = '\0';
    char *end;
    errno = 0;
    unsigned long port = strtoul(colon + 1, &end, 10);
    if (errno != 0 || *end != '\0' || port > 65535)
        return NS_EINVAL;
    ns_addr a = {.port = (uint16_t)port};
    if (!bracketed && inet_pton(AF_INET, host, a.ip) == 1)
        a.family = 4;
    else if (bracketed && inet_pton(AF_INET6, host, a.ip) == 1)
        a.family = 6;
    else
        return NS_EINVAL;
    *out = a;
    return NS_OK;
}

bool ns_addr_equal(const ns_addr *a, const ns_addr *b)
{
    size_t n = a->family == 4 ? 4 : 16;
    return a->family == b->family && a->port == b->port && memcmp(a->ip, b->ip, n) == 0;
}
