/* test_log.c - level parsing and the one-line-per-event contract of log.h.
 * stderr is redirected into a temporary file around each log_event call. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

struct level_case {
	const char *in;
	int want;
};

static void test_level_parse(void **state)
{
	(void)state;
	static const struct level_case cases[] = {
		{ "error", LOG_ERROR }, { "warn", LOG_WARN }, { "info", LOG_INFO },
		{ "debug", LOG_DEBUG }, { "", -EINVAL },      { "verbose", -EINVAL },
		{ "err", -EINVAL },     { "info ", -EINVAL }, { "infos", -EINVAL },
		{ "trace", -EINVAL },   { "0", -EINVAL },
	};
	int failures = 0;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		int got = log_level_parse(cases[i].in);
		if (got != cases[i].want) {
			print_message("log_level_parse(\"%s\") = %d, want %d\n", cases[i].in, got,
				      cases[i].want);
			failures++;
		}
	}
	assert_int_equal(failures, 0);
	assert_true(LOG_ERROR < LOG_WARN && LOG_WARN < LOG_INFO && LOG_INFO < LOG_DEBUG);
}

/* Captures what the calls between capture_begin() and capture_end() write to stderr. */
static int saved_fd = -1;
static FILE *cap;

static void capture_begin(void)
{
	fflush(stderr);
	cap = tmpfile();
	assert_non_null(cap);
	saved_fd = dup(2);
	assert_true(saved_fd >= 0);
	assert_true(dup2(fileno(cap), 2) >= 0);
}

static char *capture_end(void)
{
	fflush(stderr);
	assert_true(dup2(saved_fd, 2) >= 0);
	close(saved_fd);
	long n = ftell(cap);
	if (n < 0)
		n = 0;
	/* The log writes with write(2), so the FILE position may lag; use the fd size. */
	n = lseek(fileno(cap), 0, SEEK_END);
	char *buf = calloc(1, (size_t)n + 1);
	assert_non_null(buf);
	assert_int_equal(pread(fileno(cap), buf, (size_t)n, 0), n);
	fclose(cap);
	return buf;
}

static size_t count_lines(const char *s)
{
	size_t n = 0;
	for (; *s; s++)
		n += *s == '\n';
	return n;
}

static void test_text_line(void **state)
{
	(void)state;
	log_setup(LOG_INFO, 0);
	assert_true(log_enabled(LOG_ERROR));
	assert_true(log_enabled(LOG_INFO));
	assert_false(log_enabled(LOG_DEBUG));

	capture_begin();
	log_event(LOG_INFO, "0123456789abcdef", "r1", "upstream_tls", "version", "TLSv1.3",
		  "skipped", (const char *)NULL, "verify", "ok", NULL);
	char *out = capture_end();
	assert_int_equal(count_lines(out), 1);
	assert_true(out[strlen(out) - 1] == '\n');
	assert_non_null(strstr(out, "ts="));
	assert_non_null(strstr(out, "level=info"));
	assert_non_null(strstr(out, "session=0123456789abcdef"));
	assert_non_null(strstr(out, "route=r1"));
	assert_non_null(strstr(out, "event=upstream_tls"));
	assert_non_null(strstr(out, "version=TLSv1.3"));
	assert_non_null(strstr(out, "verify=ok"));
	assert_null(strstr(out, "skipped"));
	/* Order: session and route come before event. */
	assert_true(strstr(out, "session=") < strstr(out, "event="));
	assert_true(strstr(out, "route=") < strstr(out, "event="));
	free(out);

	/* Values with spaces, quotes or newlines are quoted and stay on one line. */
	capture_begin();
	log_event(LOG_WARN, NULL, NULL, "test", "msg", "two words", "nl", "a\nb", "q", "say \"hi\"",
		  NULL);
	out = capture_end();
	assert_int_equal(count_lines(out), 1);
	assert_null(strstr(out, "session="));
	assert_null(strstr(out, "route="));
	assert_non_null(strstr(out, "msg=\"two words\""));
	assert_non_null(strstr(out, "level=warn"));
	free(out);

	/* Below the level: nothing. */
	capture_begin();
	log_event(LOG_DEBUG, NULL, NULL, "hidden", "k", "v", NULL);
	out = capture_end();
	assert_string_equal(out, "");
	free(out);
}

static void test_json_line(void **state)
{
	(void)state;
	log_setup(LOG_DEBUG, 1);
	assert_true(log_enabled(LOG_DEBUG));
	capture_begin();
	log_event(LOG_DEBUG, "00000000000000ff", "route-a", "session_close", "bytes_in", "42",
		  "reason", "close \"notify\"", "none", (const char *)NULL, NULL);
	char *out = capture_end();
	assert_int_equal(count_lines(out), 1);
	assert_true(out[0] == '{');
	assert_non_null(strstr(out, "}\n"));
	assert_non_null(strstr(out, "\"event\":\"session_close\""));
	assert_non_null(strstr(out, "\"session\":\"00000000000000ff\""));
	assert_non_null(strstr(out, "\"route\":\"route-a\""));
	assert_non_null(strstr(out, "\"bytes_in\":42"));
	assert_non_null(strstr(out, "\"reason\":\"close \\\"notify\\\"\""));
	assert_null(strstr(out, "\"none\""));
	free(out);
	log_setup(LOG_INFO, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_level_parse),
		cmocka_unit_test(test_text_line),
		cmocka_unit_test(test_json_line),
	};
	return cmocka_run_group_tests_name("log", tests, NULL, NULL);
}
