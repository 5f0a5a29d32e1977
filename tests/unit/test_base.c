/*
 * test_base.c: errors, hex, logging levels and the atomic file write.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "neuroshard/base.h"
#include "support/testutil.h"

static void test_every_error_code_has_distinct_text(void **state)
{
    (void)state;
    for (int a = 1; a < NS_ERR_COUNT_; a++) {
        assert_string_not_equal(ns_strerror(-a), "unknown error");
        for (int b = a + 1; b < NS_ERR_COUNT_; b++)
            assert_string_not_equal(ns_strerror(-a), ns_strerror(-b));
    }
    assert_string_equal(ns_strerror(-NS_ERR_COUNT_), "unknown error");
    assert_string_equal(ns_strerror(5), "unknown error");
}

static void test_hex_round_trips_and_refuses_bad_digits(void **state)
{
    (void)state;
    const uint8_t in[4] = {0x00, 0x7f, 0xab, 0xff};
    char hex[9];
    ns_hex_encode(hex, sizeof hex, in, sizeof in);
    assert_string_equal(hex, "007fabff");
    uint8_t out[4];
    assert_int_equal(ns_hex_decode(out, sizeof out, "007FABff"), NS_OK);
    assert_memory_equal(in, out, sizeof in);
    assert_int_equal(ns_hex_decode(out, sizeof out, "007fabf"), NS_EINVAL);
    assert_int_equal(ns_hex_decode(out, sizeof out, "007fabfg"), NS_EINVAL);
    assert_int_equal(ns_hex_decode(out, sizeof out, "007fabff00"), NS_EINVAL);
}

static void test_log_level_parses_known_words_only(void **state)
{
    (void)state;
    ns_log_level level;
    assert_int_equal(ns_log_parse_level("debug", &level), NS_OK);
    assert_int_equal(level, NS_LOG_DEBUG);
    assert_int_equal(ns_log_parse_level("warn", &level), NS_OK);
    assert_int_equal(level, NS_LOG_WARN);
    assert_int_equal(ns_log_parse_level("loud", &level), NS_EINVAL);
}

static void test_atomic_write_sets_mode_and_replaces_whole_file(void **state)
{
    (void)state;
    char dir[256];
    ns_test_tempdir(dir, sizeof dir);
    char path[300];
    snprintf(path, sizeof path, "%s/f", dir);
    assert_int_equal(ns_file_write_atomic(path, "first", 5, 0600), NS_OK);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(ns_file_write_atomic(path, "second!", 7, 0600), NS_OK);
    uint8_t *buf;
    size_t len;
    assert_int_equal(ns_file_read(path, 100, &buf, &len), NS_OK);
    assert_int_equal(len, 7);
    assert_memory_equal(buf, "second!", 7);
    free(buf);
    assert_int_equal(ns_file_read(path, 3, &buf, &len), NS_ETOOBIG);
    snprintf(path, sizeof path, "%s/missing", dir);
    assert_int_equal(ns_file_read(path, 3, &buf, &len), NS_ENOENT);
    ns_test_rmtree(dir);
}

static void test_create_atomic_never_replaces(void **state)
{
    (void)state;
    char dir[256];
    ns_test_tempdir(dir, sizeof dir);
    char path[300];
    snprintf(path, sizeof path, "%s/f", dir);
    assert_int_equal(ns_file_create_atomic(path, "one", 3, 0600), NS_OK);
    assert_int_equal(ns_file_create_atomic(path, "two", 3, 0600), NS_EEXIST);
    uint8_t *buf;
    size_t len;
    assert_int_equal(ns_file_read(path, 100, &buf, &len), NS_OK);
    assert_memory_equal(buf, "one", 3);
    free(buf);
    char tmp[320];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    assert_int_equal(access(tmp, F_OK), -1); /* no temporary file left behind */
    ns_test_rmtree(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_error_code_has_distinct_text),
        cmocka_unit_test(test_hex_round_trips_and_refuses_bad_digits),
        cmocka_unit_test(test_log_level_parses_known_words_only),
        cmocka_unit_test(test_atomic_write_sets_mode_and_replaces_whole_file),
        cmocka_unit_test(test_create_atomic_never_replaces),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
