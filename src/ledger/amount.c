/*
 * amount.c: checked arithmetic and formatting for amounts of NEURO (ns_neuro).
 *
 * An amount is a signed count of nano-NEURO in 64 bits, never a double: every sum the ledger
 * makes goes through ns_neuro_add / ns_neuro_sub, which report overflow instead of wrapping
 * (Core Lightning's amount_msat). On overflow the output is left untouched.
 */
#include <inttypes.h>
#include <stdio.h>

#include "neuroshard/ledger.h"

int ns_neuro_add(ns_neuro *out, ns_neuro a, ns_neuro b)
{
    NS_ASSERT(out != NULL);
    int64_t sum;
    if (__builtin_add_overflow(a.nano, b.nano, &sum))
        return NS_EOVERFLOW;
    out->nano = sum;
    return NS_OK;
}

int ns_neuro_sub(ns_neuro *out, ns_neuro a, ns_neuro b)
{
    NS_ASSERT(out != NULL);
    int64_t difference;
    if (__builtin_sub_overflow(a.nano, b.nano, &difference))
        return NS_EOVERFLOW;
    out->nano = difference;
    return NS_OK;
}

void ns_neuro_format(char *out, size_t out_size, ns_neuro amount)
{
    NS_ASSERT(out != NULL);
    NS_ASSERT(out_size >= NS_NEURO_FORMAT_SIZE);
    /* The magnitude in unsigned arithmetic, so that INT64_MIN has one too. */
    uint64_t magnitude =
        amount.nano < 0 ? (uint64_t)0 - (uint64_t)amount.nano : (uint64_t)amount.nano;
    uint64_t units = magnitude / (uint64_t)NS_NEURO_NANO_PER_UNIT;
    uint64_t nano = magnitude % (uint64_t)NS_NEURO_NANO_PER_UNIT;
    int n = snprintf(out, out_size, "%s%" PRIu64 ".%09" PRIu64, amount.nano < 0 ? "-" : "", units,
                     nano);
    NS_ASSERT(n > 0 && (size_t)n < out_size);
}

int ns_neuro_parse(const char *text, ns_neuro *out)
{
    /* digits, optionally '.' and 1..9 more digits; nothing else */
    const char *p = text;
    uint64_t units = 0, frac = 0;
    int frac_digits = 0;
    if (*p < '0' || *p > '9')
        return NS_EINVAL;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (units > (uint64_t)INT64_MAX / NS_NEURO_NANO_PER_UNIT)
            return NS_EOVERFLOW;
        units = units * 10 + (uint64_t)(*p - '0');
    }
    if (*p == '.') {
        p++;
        if (*p < '0' || *p > '9')
            return NS_EINVAL;
        for (; *p >= '0' && *p <= '9'; p++) {
            if (++frac_digits > 9)
                return NS_EINVAL;
            frac = frac * 10 + (uint64_t)(*p - '0');
        }
    }
    if (*p != '\0')
        return NS_EINVAL;
    for (int i = frac_digits; i < 9; i++)
        frac *= 10;
    unsigned __int128 nano = (unsigned __int128)units * NS_NEURO_NANO_PER_UNIT + frac;
    if (nano > INT64_MAX)
        return NS_EOVERFLOW;
    out->nano = (int64_t)nano;
    return NS_OK;
}
