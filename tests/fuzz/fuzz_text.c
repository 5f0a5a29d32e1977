/*
 * fuzz_text.c: libFuzzer target for the parsers of text a person or a file hands us: mnemonics,
 * HOST:PORT addresses, log levels and hex. The input becomes one NUL-terminated string.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "neuroshard/crypto.h"
#include "neuroshard/node.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096)
        return 0;
    char *text = malloc(size + 1);
    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    int bad = -1;
    int rc = ns_bip39_check(text, &bad);
    NS_ASSERT(rc != NS_EWORD || bad >= 0);
    ns_addr_text addr;
    if (ns_addr_parse(text, &addr) == NS_OK) {
        char back[NS_HOST_SIZE + 16];
        ns_addr_format(back, sizeof back, &addr);
        ns_addr_text again;
        NS_ASSERT(ns_addr_parse(back, &again) == NS_OK); /* what we print, we parse */
        NS_ASSERT(again.port == addr.port);
    }
    ns_log_level level;
    (void)ns_log_parse_level(text, &level);
    uint8_t hex[32];
    (void)ns_hex_decode(hex, sizeof hex, text);
    free(text);
    return 0;
}
