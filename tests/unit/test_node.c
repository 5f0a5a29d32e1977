/*
 * test_node.c: the daemon's configuration, its chores core under the fake env, the libuv env
 * on a real loop, and listening sockets on loopback.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "../../src/node/node_internal.h"
#include "neuroshard/aggregate.h"
#include "neuroshard/node.h"
#include "support/testutil.h"

typedef struct cfg_case {
    char dir[256];
    char ini[300];
    ns_config cfg;
    char err[NS_ERR_TEXT_SIZE];
    bool help, version;
} cfg_case;

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int load(cfg_case *c, int argc, char *argv[], char *envp[])
{
    return ns_config_load(&c->cfg, argc, argv, envp, &c->help, &c->version, c->err);
}

static void test_config_defaults_without_file(void **state)
{
    (void)state;
    cfg_case c;
    ns_test_tempdir(c.dir, sizeof c.dir);
    char *argv[] = {"neuroshardd", "--data-dir", c.dir, NULL};
    char *envp[] = {NULL};
    assert_int_equal(load(&c, 3, argv, envp), NS_OK);
    assert_string_equal(c.cfg.data_dir, c.dir);
    assert_string_equal(c.cfg.api_listen.host, "127.0.0.1");
    assert_int_equal(c.cfg.api_listen.port, 8421);
    assert_int_equal(c.cfg.listen.port, 8420);
    assert_int_equal(c.cfg.log_level, NS_LOG_INFO);
    assert_string_equal(c.cfg.config_path, "");
    ns_test_rmtree(c.dir);
}

static void test_config_precedence_is_file_then_env_then_flags(void **state)
{
    (void)state;
    cfg_case c;
    ns_test_tempdir(c.dir, sizeof c.dir);
    snprintf(c.ini, sizeof c.ini, "%s/neuroshard.ini", c.dir);
    write_text(c.ini, "; comment\n[node]\napi_listen = 127.0.0.1:9000\nlog_level = debug\n"
                      "memory_mb = 4096\nlisten = [::1]:7000\n");
    char *argv[] = {"neuroshardd", "--data-dir", c.dir, "--api-listen=127.0.0.1:9002", NULL};
    char *envp[] = {"NEUROSHARD_API_LISTEN=127.0.0.1:9001", "NEUROSHARD_LOG_LEVEL=warn", NULL};
    assert_int_equal(load(&c, 4, argv, envp), NS_OK);
    assert_int_equal(c.cfg.api_listen.port, 9002);  /* flag beats env beats file */
    assert_int_equal(c.cfg.log_level, NS_LOG_WARN); /* env beats file */
    assert_int_equal(c.cfg.memory_mb, 4096);        /* file beats default */
    assert_string_equal(c.cfg.listen.host, "::1");
    assert_int_equal(c.cfg.listen.port, 7000);
    assert_string_equal(c.cfg.config_path, c.ini);
    ns_test_rmtree(c.dir);
}

static void test_config_error_names_file_and_line(void **state)
{
    (void)state;
    cfg_case c;
    ns_test_tempdir(c.dir, sizeof c.dir);
    snprintf(c.ini, sizeof c.ini, "%s/neuroshard.ini", c.dir);
    write_text(c.ini, "[node]\nlog_level = info\nlog_level = shouting\n");
    char *argv[] = {"neuroshardd", "--data-dir", c.dir, NULL};
    char *envp[] = {NULL};
    assert_int_equal(load(&c, 3, argv, envp), NS_EINVAL);
    char want[400];
    snprintf(want, sizeof want, "%s:3: log_level 'shouting'", c.ini);
    assert_non_null(strstr(c.err, want));

    write_text(c.ini, "[node]\nno equals sign here\n");
    assert_int_equal(load(&c, 3, argv, envp), NS_EINVAL);
    snprintf(want, sizeof want, "%s:2:", c.ini);
    assert_non_null(strstr(c.err, want));

    write_text(c.ini, "[other]\nx = 1\n");
    assert_int_equal(load(&c, 3, argv, envp), NS_EINVAL);
    assert_non_null(strstr(c.err, "unknown section [other]"));
    ns_test_rmtree(c.dir);
}

static void test_config_refuses_unknown_flag_and_bad_values(void **state)
{
    (void)state;
    cfg_case c;
    char *envp[] = {NULL};
    char *argv1[] = {"neuroshardd", "--frobnicate", NULL};
    assert_int_equal(load(&c, 2, argv1, envp), NS_EINVAL);
    assert_non_null(strstr(c.err, "unknown option '--frobnicate'"));
    char *argv2[] = {"neuroshardd", "--api-listen", "127.0.0.1:99999", NULL};
    assert_int_equal(load(&c, 3, argv2, envp), NS_EINVAL);
    assert_non_null(strstr(c.err, "--api-listen"));
    char *argv3[] = {"neuroshardd", "--log-level", NULL};
    assert_int_equal(load(&c, 2, argv3, envp), NS_EINVAL);
    assert_non_null(strstr(c.err, "needs a value"));
    char *envp2[] = {"NEUROSHARD_MEMORY_MB=lots", NULL};
    char *argv4[] = {"neuroshardd", "--data-dir", "/nonexistent/x", NULL};
    assert_int_equal(load(&c, 3, argv4, envp2), NS_EINVAL);
    assert_non_null(strstr(c.err, "NEUROSHARD_MEMORY_MB"));
    char *argv5[] = {"neuroshardd", "--config", "/nonexistent/neuroshard.ini", NULL};
    assert_int_equal(load(&c, 3, argv5, envp), NS_EINVAL);
    assert_non_null(strstr(c.err, "/nonexistent/neuroshard.ini"));
    char *argv6[] = {"neuroshardd", "--help", NULL};
    assert_int_equal(load(&c, 2, argv6, envp), NS_OK);
    assert_true(c.help);
}

/* --quorum-size takes 1..16 or auto (pool mode, stored as NS_QUORUM_SIZE_AUTO); the file and
 * the environment take the same words. */
static void test_config_quorum_size_takes_a_number_or_auto(void **state)
{
    (void)state;
    cfg_case c;
    ns_test_tempdir(c.dir, sizeof c.dir);
    char *envp[] = {NULL};
    char *argv1[] = {"neuroshardd", "--data-dir", c.dir, NULL};
    assert_int_equal(load(&c, 3, argv1, envp), NS_OK);
    assert_int_equal(c.cfg.quorum_size, 1);
    char *argv2[] = {"neuroshardd", "--data-dir", c.dir, "--quorum-size", "auto", NULL};
    assert_int_equal(load(&c, 5, argv2, envp), NS_OK);
    assert_int_equal(c.cfg.quorum_size, NS_QUORUM_SIZE_AUTO);
    char *envp2[] = {"NEUROSHARD_QUORUM_SIZE=auto", NULL};
    assert_int_equal(load(&c, 3, argv1, envp2), NS_OK);
    assert_int_equal(c.cfg.quorum_size, NS_QUORUM_SIZE_AUTO);
    char *argv3[] = {"neuroshardd", "--data-dir", c.dir, "--quorum-size", "3", NULL};
    assert_int_equal(load(&c, 5, argv3, envp), NS_OK);
    assert_int_equal(c.cfg.quorum_size, 3);
    char *argv4[] = {"neuroshardd", "--data-dir", c.dir, "--quorum-size", "0", NULL};
    assert_int_equal(load(&c, 5, argv4, envp), NS_EINVAL);
    assert_non_null(strstr(c.err, "1..16 or auto"));
    ns_test_rmtree(c.dir);
}

/* DiLoCo's settings: --sync-every auto (the default: S7's H by swarm size), off or a number;
 * --aggregator by name; --sync-role member or async; --sync-timeout-s; nonsense refused. */
static void test_config_sync_settings(void **state)
{
    (void)state;
    cfg_case c;
    ns_test_tempdir(c.dir, sizeof c.dir);
    char *envp[] = {NULL};
    char *argv1[] = {"neuroshardd", "--data-dir", c.dir, NULL};
    assert_int_equal(load(&c, 3, argv1, envp), NS_OK);
    assert_int_equal(c.cfg.sync_every, NS_SYNC_EVERY_AUTO);
    assert_int_equal(c.cfg.sync_aggregator, NS_AGG_TRIMMED_MEAN);
    assert_false(c.cfg.sync_async);
    assert_int_equal(c.cfg.sync_timeout_s, 30);
    char *argv2[] = {"neuroshardd", "--data-dir", c.dir, "--sync-every", "off", NULL};
    assert_int_equal(load(&c, 5, argv2, envp), NS_OK);
    assert_int_equal(c.cfg.sync_every, 0);
    char *envp2[] = {"NEUROSHARD_SYNC_EVERY=250", "NEUROSHARD_AGGREGATOR=krum",
                     "NEUROSHARD_SYNC_ROLE=async", "NEUROSHARD_SYNC_TIMEOUT_S=5", NULL};
    assert_int_equal(load(&c, 3, argv1, envp2), NS_OK);
    assert_int_equal(c.cfg.sync_every, 250);
    assert_int_equal(c.cfg.sync_aggregator, NS_AGG_KRUM);
    assert_true(c.cfg.sync_async);
    assert_int_equal(c.cfg.sync_timeout_s, 5);
    char *argv3[] = {"neuroshardd", "--data-dir", c.dir, "--sync-every", "0", NULL};
    assert_int_equal(load(&c, 5, argv3, envp), NS_EINVAL);
    assert_non_null(strstr(c.err, "auto, off or a number"));
    char *argv4[] = {"neuroshardd", "--data-dir", c.dir, "--aggregator", "average", NULL};
    assert_int_equal(load(&c, 5, argv4, envp), NS_EINVAL);
    assert_non_null(strstr(c.err, "trimmed-mean"));
    char *argv5[] = {"neuroshardd", "--data-dir", c.dir, "--sync-role", "leader", NULL};
    assert_int_equal(load(&c, 5, argv5, envp), NS_EINVAL);
    ns_test_rmtree(c.dir);
}

static void test_config_bootstrap_lists_replace_by_precedence(void **state)
{
    (void)state;
    cfg_case c;
    ns_test_tempdir(c.dir, sizeof c.dir);
    snprintf(c.ini, sizeof c.ini, "%s/neuroshard.ini", c.dir);
    write_text(c.ini, "[node]\nbootstrap = a.example:1, 10.0.0.1:2\nbootstrap = [::1]:3\n"
                      "lan_discovery = off\nnetwork = testnet\n");
    char *argv[] = {"neuroshardd", "--data-dir", c.dir, NULL};
    char *envp[] = {NULL};
    assert_int_equal(load(&c, 3, argv, envp), NS_OK);
    assert_int_equal(c.cfg.bootstrap_count, 3);
    assert_string_equal(c.cfg.bootstrap[0], "a.example:1");
    assert_string_equal(c.cfg.bootstrap[1], "10.0.0.1:2");
    assert_string_equal(c.cfg.bootstrap[2], "[::1]:3");
    assert_false(c.cfg.lan_discovery);
    assert_string_equal(c.cfg.network, "testnet");
    char *envp2[] = {"NEUROSHARD_BOOTSTRAP=b.example:4", NULL};
    assert_int_equal(load(&c, 3, argv, envp2), NS_OK);
    assert_int_equal(c.cfg.bootstrap_count, 1);
    assert_string_equal(c.cfg.bootstrap[0], "b.example:4");
    char *argv2[] = {"neuroshardd", "--data-dir",      c.dir, "--bootstrap",
                     "c:5",         "--bootstrap=d:6", NULL};
    assert_int_equal(load(&c, 6, argv2, envp2), NS_OK);
    assert_int_equal(c.cfg.bootstrap_count, 2);
    assert_string_equal(c.cfg.bootstrap[1], "d:6");
    char *argv3[] = {"neuroshardd", "--data-dir", c.dir, "--bootstrap", "nohost", NULL};
    assert_int_equal(load(&c, 5, argv3, envp), NS_EINVAL);
    assert_non_null(strstr(c.err, "bootstrap 'nohost'"));
    char *argv4[] = {"neuroshardd", "--data-dir", c.dir, "--bootstrap", "h:0", NULL};
    assert_int_equal(load(&c, 5, argv4, envp), NS_EINVAL);
    char *argv5[] = {"neuroshardd", "--data-dir", c.dir, "--lan-discovery", "maybe", NULL};
    assert_int_equal(load(&c, 5, argv5, envp), NS_EINVAL);
    ns_test_rmtree(c.dir);
}

static void test_addr_parse_accepts_v4_v6_localhost_only(void **state)
{
    (void)state;
    ns_addr_text a;
    assert_int_equal(ns_addr_parse("10.1.2.3:80", &a), NS_OK);
    assert_string_equal(a.host, "10.1.2.3");
    assert_int_equal(a.port, 80);
    assert_int_equal(ns_addr_parse("[::1]:0", &a), NS_OK);
    assert_string_equal(a.host, "::1");
    assert_int_equal(ns_addr_parse("localhost:8421", &a), NS_OK);
    assert_string_equal(a.host, "127.0.0.1");
    char text[80];
    assert_int_equal(ns_addr_parse("[::1]:5", &a), NS_OK);
    ns_addr_format(text, sizeof text, &a);
    assert_string_equal(text, "[::1]:5");
    const char *bad[] = {
        "",           "8421",          "127.0.0.1", "127.0.0.1:", ":80", "example.com:80",
        "1.2.3.4:-1", "1.2.3.4:65536", "[::1:80",   "1.2.3.4:8x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(ns_addr_parse(bad[i], &a), NS_EINVAL);
}

/* ---- chores under the fake env ------------------------------------------------------------ */

typedef struct chore_log {
    uint64_t at_ms[32];
    ns_chore chore[32];
    size_t count;
} chore_log;

static void record_chore(void *arg, ns_chore chore, uint64_t now_ms)
{
    chore_log *log = arg;
    assert_true(log->count < 32);
    log->at_ms[log->count] = now_ms;
    log->chore[log->count] = chore;
    log->count++;
}

static void test_chores_run_on_schedule_and_stop(void **state)
{
    (void)state;
    ns_fake_env fake;
    ns_fake_env_init(&fake, 1000, 1);
    chore_log log = {0};
    ns_chores chores;
    ns_chores_init(&chores, &fake.env, record_chore, &log);
    ns_chores_set_interval(&chores, NS_CHORE_STATUS, 100);
    ns_chores_set_interval(&chores, NS_CHORE_LEDGER_SYNC, 250);
    ns_chores_start(&chores);
    ns_fake_env_advance(&fake, 99);
    assert_int_equal(log.count, 0);
    ns_fake_env_advance(&fake, 451); /* now 1550 */
    /* status at 1100..1500 (5 runs), ledger sync at 1250 and 1500 */
    assert_int_equal(chores.runs[NS_CHORE_STATUS], 5);
    assert_int_equal(chores.runs[NS_CHORE_LEDGER_SYNC], 2);
    assert_int_equal(chores.runs[NS_CHORE_WATCHDOG], 0);
    for (size_t i = 1; i < log.count; i++)
        assert_true(log.at_ms[i - 1] <= log.at_ms[i]);
    assert_int_equal(log.at_ms[0], 1100);
    ns_chores_stop(&chores);
    size_t before = log.count;
    ns_fake_env_advance(&fake, 10000);
    assert_int_equal(log.count, before);
    assert_int_equal(fake.timer_count, 0);
}

static void test_chores_skip_missed_slots_without_drift(void **state)
{
    (void)state;
    ns_fake_env fake;
    ns_fake_env_init(&fake, 0, 1);
    chore_log log = {0};
    ns_chores chores;
    ns_chores_init(&chores, &fake.env, record_chore, &log);
    ns_chores_set_interval(&chores, NS_CHORE_STATUS, 100);
    ns_chores_start(&chores);
    /* The clock jumps far past several slots at once: one late run, then back on the grid. */
    fake.now_ms = 1050;
    ns_fake_env_advance(&fake, 0);
    assert_int_equal(log.count, 1);
    ns_fake_env_advance(&fake, 60); /* 1110: the 1100 slot ran */
    assert_int_equal(log.count, 2);
    assert_int_equal(log.at_ms[1], 1100);
    ns_chores_stop(&chores);
}

/* ---- the libuv env on a real loop --------------------------------------------------------- */

typedef struct uv_probe {
    ns_uv_env *uvenv;
    int order[4];
    int fired;
    uint64_t cancel_id;
} uv_probe;

static void probe_fire(void *arg, uint64_t now_ms);

typedef struct probe_arg {
    uv_probe *probe;
    int tag;
} probe_arg;

static void probe_fire(void *arg, uint64_t now_ms)
{
    probe_arg *pa = arg;
    assert_true(now_ms > 0);
    pa->probe->order[pa->probe->fired++] = pa->tag;
}

static void test_uv_env_fires_timers_in_time_order_and_cancels(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    ns_uv_env uvenv;
    ns_uv_env_init(&uvenv, &loop);
    uv_probe probe = {.uvenv = &uvenv};
    probe_arg a = {&probe, 1}, b = {&probe, 2}, c = {&probe, 3};
    uint64_t now = ns_env_now(&uvenv.env);
    uint64_t wall = (uint64_t)time(NULL) * 1000;
    assert_true(now + 5000 > wall && now < wall + 5000); /* anchored to the Unix epoch */
    ns_env_timer(&uvenv.env, now + 30, probe_fire, &b);
    ns_env_timer(&uvenv.env, now + 10, probe_fire, &a);
    uint64_t id = ns_env_timer(&uvenv.env, now + 20, probe_fire, &c);
    ns_env_timer_cancel(&uvenv.env, id);
    assert_int_equal(uvenv.timer_count, 2);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(probe.fired, 2);
    assert_int_equal(probe.order[0], 1);
    assert_int_equal(probe.order[1], 2);
    assert_true(ns_env_now(&uvenv.env) >= now + 30);
    uint8_t r1[16] = {0}, r2[16] = {0};
    ns_env_random(&uvenv.env, r1, sizeof r1);
    ns_env_random(&uvenv.env, r2, sizeof r2);
    assert_memory_not_equal(r1, r2, sizeof r1);
    ns_uv_env_close(&uvenv);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_listen_reports_port_in_use(void **state)
{
    (void)state;
    ns_addr_text want = {.host = "127.0.0.1", .port = 0}, bound, bound2;
    int fd, fd2;
    assert_int_equal(ns_listen_tcp(&want, &fd, &bound), NS_OK);
    assert_true(bound.port != 0);
    assert_int_equal(ns_listen_tcp(&bound, &fd2, &bound2), NS_EADDRINUSE);
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_defaults_without_file),
        cmocka_unit_test(test_config_precedence_is_file_then_env_then_flags),
        cmocka_unit_test(test_config_error_names_file_and_line),
        cmocka_unit_test(test_config_quorum_size_takes_a_number_or_auto),
        cmocka_unit_test(test_config_sync_settings),
        cmocka_unit_test(test_config_refuses_unknown_flag_and_bad_values),
        cmocka_unit_test(test_config_bootstrap_lists_replace_by_precedence),
        cmocka_unit_test(test_addr_parse_accepts_v4_v6_localhost_only),
        cmocka_unit_test(test_chores_run_on_schedule_and_stop),
        cmocka_unit_test(test_chores_skip_missed_slots_without_drift),
        cmocka_unit_test(test_uv_env_fires_timers_in_time_order_and_cancels),
        cmocka_unit_test(test_listen_reports_port_in_use),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
