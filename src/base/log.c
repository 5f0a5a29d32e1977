/*
 * log.c: one line an event on stderr, with an ISO-8601 UTC timestamp, a level and the part.
 *
 * The line is formatted into one buffer and written with a single write(2), so lines from the
 * loop thread and the HTTP thread never interleave. Nothing secret may be passed here.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "neuroshard/base.h"

#define LOG_LINE_BYTES_MAX 2048

static atomic_int log_level = NS_LOG_INFO;

static const char *const level_name[] = {"ERROR", "WARN ", "INFO ", "DEBUG"};
static const char *const level_word[] = {"error", "warn", "info", "debug"};

void ns_log_set_level(ns_log_level level)
{
    NS_ASSERT(level >= NS_LOG_ERROR && level <= NS_LOG_DEBUG);
    atomic_store(&log_level, (int)level);
}

ns_log_level ns_log_get_level(void)
{
    return (ns_log_level)atomic_load(&log_level);
}

int ns_log_parse_level(const char *text, ns_log_level *out)
{
    for (int i = NS_LOG_ERROR; i <= NS_LOG_DEBUG; i++) {
        if (strcmp(text, level_word[i]) == 0) {
            *out = (ns_log_level)i;
            return NS_OK;
        }
    }
    return NS_EINVAL;
}

void ns_log(ns_log_level level, const char *part, const char *fmt, ...)
{
    if ((int)level > atomic_load(&log_level))
        return;
    char line[LOG_LINE_BYTES_MAX];
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof line,
                     "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %s %s: ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (int)(tv.tv_usec / 1000), level_name[level], part);
    NS_ASSERT(n > 0 && (size_t)n < sizeof line);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2)
        len = sizeof line - 2; /* truncated: still one line */
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w; /* nowhere left to report a failed log write */
}
