/* log.c - event lines on stderr (see log.h). */
#include "log.h"

#include <stdarg.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int log_level = LOG_INFO;
static int log_json;

static const char *const level_names[] = { "error", "warn", "info", "debug" };

/* Set by the main thread (start, reload) while workers log: relaxed atomics. */
void log_setup(int level, int json)
{
	__atomic_store_n(&log_level, level, __ATOMIC_RELAXED);
	__atomic_store_n(&log_json, json, __ATOMIC_RELAXED);
}

int log_enabled(int level)
{
	return level <= __atomic_load_n(&log_level, __ATOMIC_RELAXED);
}

int log_level_parse(const char *s)
{
	for (int i = 0; i < 4; i++)
		if (strcasecmp(s, level_names[i]) == 0)
			return i;
	if (strcasecmp(s, "warning") == 0)
		return LOG_WARN;
	return -EINVAL;
}

struct line {
	char buf[4096];
	size_t len;
	int truncated;
	int json;
};

static void put(struct line *l, const char *s, size_t n)
{
	if (l->len + n >= sizeof(l->buf) - 2) {
		n = sizeof(l->buf) - 2 - l->len;
		l->truncated = 1;
	}
	memcpy(l->buf + l->len, s, n);
	l->len += n;
}

static void puts_(struct line *l, const char *s)
{
	put(l, s, strlen(s));
}

static int is_number(const char *v)
{
	const char *p = v;
	if (*p == '-')
		p++;
	if (!*p || (*p == '0' && p[1]))
		return 0;
	for (; *p; p++)
		if (*p < '0' || *p > '9')
			return 0;
	return 1;
}

/* A quoted value: JSON escapes (\u00XX) or text ones (\xXX) for control characters. */
static void quoted(struct line *l, const char *v, int json)
{
	put(l, "\"", 1);
	for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
		char esc[8];
		if (*p == '"' || *p == '\\') {
			esc[0] = '\\';
			esc[1] = (char)*p;
			put(l, esc, 2);
		} else if (*p < 0x20 || *p == 0x7f) {
			snprintf(esc, sizeof(esc), json ? "\\u%04x" : "\\x%02x", *p);
			puts_(l, esc);
		} else {
			put(l, (const char *)p, 1);
		}
	}
	put(l, "\"", 1);
}

static int needs_quotes(const char *v)
{
	if (!*v)
		return 1;
	for (const unsigned char *p = (const unsigned char *)v; *p; p++)
		if (*p <= ' ' || *p == '"' || *p == '=' || *p == '\\' || *p == 0x7f)
			return 1;
	return 0;
}

static void field(struct line *l, int *first, const char *k, const char *v, int raw_ok)
{
	if (l->json) {
		puts_(l, *first ? "{" : ",");
		quoted(l, k, 1);
		put(l, ":", 1);
		if (raw_ok && is_number(v))
			puts_(l, v);
		else
			quoted(l, v, 1);
	} else {
		if (!*first)
			put(l, " ", 1);
		puts_(l, k);
		put(l, "=", 1);
		if (needs_quotes(v))
			quoted(l, v, 0);
		else
			puts_(l, v);
	}
	*first = 0;
}

void log_event(int level, const char *session, const char *route, const char *event, ...)
{
	if (!log_enabled(level))
		return;
	struct line l = { .len = 0, .json = __atomic_load_n(&log_json, __ATOMIC_RELAXED) };
	int first = 1;
	char ts[40];
	struct timeval tv;
	struct tm tm;
	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	size_t n = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(ts + n, sizeof(ts) - n, ".%03dZ", (int)(tv.tv_usec / 1000));

	field(&l, &first, "ts", ts, 0);
	field(&l, &first, "level", level_names[level < 0 ? 0 : level > 3 ? 3 : level], 0);
	if (session)
		field(&l, &first, "session", session, 0);
	if (route)
		field(&l, &first, "route", route, 0);
	field(&l, &first, "event", event, 0);

	va_list ap;
	va_start(ap, event);
	for (;;) {
		const char *k = va_arg(ap, const char *);
		if (!k)
			break;
		const char *v = va_arg(ap, const char *);
		if (v)
			field(&l, &first, k, v, 1);
	}
	va_end(ap);
	if (l.truncated)
		field(&l, &first, "truncated", "yes", 0);
	if (l.json)
		put(&l, "}", 1);
	l.buf[l.len++] = '\n';
	ssize_t w = write(STDERR_FILENO, l.buf, l.len);
	(void)w;
}
