/*
 * hex.c: lowercase hex encoding and strict decoding (exact length, no prefix, no spaces).
 */
#include <string.h>

#include "neuroshard/base.h"

void ns_hex_encode(char *out, size_t out_size, const uint8_t *buf, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    NS_ASSERT(out_size >= 2 * n + 1);
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[buf[i] >> 4];
        out[2 * i + 1] = digits[buf[i] & 15];
    }
    out[2 * n] = '\0';
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int ns_hex_decode(uint8_t *out, size_t out_len, const char *hex)
{
    if (strlen(hex) != 2 * out_len)
        return NS_EINVAL;
    for (size_t i = 0; i < out_len; i++) {
        int hi = hex_digit(hex[2 * i]);
        int lo = hex_digit(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return NS_EINVAL;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return NS_OK;
}
