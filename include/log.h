/* log.h - one line per event on stderr, key=value text or JSON.
 *
 * Contract: every call writes exactly one complete line with one write(2), so lines from
 * several worker threads never interleave. Values are quoted/escaped as needed; a value
 * that looks like a number is written as a JSON number in json format. */
#ifndef STP_LOG_H
#define STP_LOG_H

enum { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };

void log_setup(int level, int json);
int log_enabled(int level);
/* Writes: ts=... level=... [session=...] [route=...] event=EVENT key value ...
 * The variadic part is key, value pairs of const char *, terminated by NULL. A NULL value
 * skips its key. session and route may be NULL. */
void log_event(int level, const char *session, const char *route, const char *event, ...)
	__attribute__((sentinel));
/* Parses "error|warn|info|debug"; returns the level or -EINVAL. */
int log_level_parse(const char *s);

#endif
