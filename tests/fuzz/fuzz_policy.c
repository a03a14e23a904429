/* fuzz_policy.c - libFuzzer harness for the policy table parser and matcher (policy.h).
 *
 * The input is written to a temporary file and loaded with policy_load(). Besides memory
 * safety (ASan/UBSan) it checks the contract: 0 with a table and no error lines, or
 * -EINVAL with one or more lines "PATH:LINE: message" (LINE between 1 and the number of
 * lines), none with a newline; a loaded table has at most one row per line, rows in line
 * order, each a valid destination kind with a known level, and fingerprint rows with pins.
 * Every loaded table is then matched against a fixed set of destinations (IPv4, IPv6,
 * v4-mapped, host names, ports), and policy_match must return NULL or one of its rows. */
#include <stddef.h>
#include <stdint.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "policy.h"

#define CHECK(cond, ...)                                                                   \
	do {                                                                               \
		if (!(cond)) {                                                             \
			fprintf(stderr, "invariant violated: %s\n  ", #cond);             \
			fprintf(stderr, __VA_ARGS__);                                      \
			fprintf(stderr, "\n");                                             \
			abort();                                                           \
		}                                                                          \
	} while (0)

static char path[4096];
static int fd = -1;
static struct sockaddr_storage dsts[6];

static void cleanup(void)
{
	if (path[0])
		unlink(path);
}

static void mk(int i, const char *ip, int port)
{
	memset(&dsts[i], 0, sizeof(dsts[i]));
	struct sockaddr_in *a = (void *)&dsts[i];
	struct sockaddr_in6 *b = (void *)&dsts[i];
	if (inet_pton(AF_INET, ip, &a->sin_addr) == 1) {
		a->sin_family = AF_INET;
		a->sin_port = htons((uint16_t)port);
	} else if (inet_pton(AF_INET6, ip, &b->sin6_addr) == 1) {
		b->sin6_family = AF_INET6;
		b->sin6_port = htons((uint16_t)port);
	}
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	const char *dir = getenv("TMPDIR");
	snprintf(path, sizeof(path), "%s/stp-fuzz-policy-XXXXXX", dir && *dir ? dir : "/tmp");
	fd = mkstemp(path);
	if (fd < 0) {
		perror("mkstemp");
		abort();
	}
	atexit(cleanup);
	mk(0, "10.20.1.2", 25);
	mk(1, "203.0.113.10", 587);
	mk(2, "2001:db8::1", 465);
	mk(3, "::ffff:192.0.2.1", 25);
	mk(4, "0.0.0.0", 1);
	mk(5, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (ftruncate(fd, 0) < 0 || pwrite(fd, data, size, 0) != (ssize_t)size)
		abort();
	size_t lines = 1;
	for (size_t i = 0; i < size; i++)
		lines += data[i] == '\n';
	struct policy_table *t = NULL;
	struct cfg_errors errs = { 0 };
	int rc = policy_load(path, &t, &errs);
	size_t plen = strlen(path);
	if (rc == 0) {
		CHECK(t != NULL, "rc 0 without a table");
		CHECK(errs.n == 0, "rc 0 with %zu error lines, first: %s", errs.n, errs.msg[0]);
		CHECK(t->n <= lines, "%zu rows from %zu lines", t->n, lines);
		for (size_t i = 0; i < t->n; i++) {
			const struct policy_row *r = &t->rows[i];
			CHECK(r->line >= 1 && (size_t)r->line <= lines, "row line %d", r->line);
			CHECK(i == 0 || r->line > t->rows[i - 1].line, "rows out of order");
			CHECK(r->kind == DEST_ANY || r->kind == DEST_ADDR || r->kind == DEST_HOST,
			      "kind %d", r->kind);
			CHECK(r->level >= CFG_POLICY_NONE && r->level <= CFG_POLICY_VERIFY, "level %d",
			      r->level);
			CHECK(r->level != CFG_POLICY_FINGERPRINT || r->npins > 0, "fingerprint, no pin");
			CHECK(r->port >= 0 && r->port <= 65535, "port %d", r->port);
		}
		static const char *const hosts[] = { NULL, "mx.example", "relay.example.net",
						      "a.b.partner.example" };
		for (int d = 0; d < 6; d++)
			for (int h = 0; h < 4; h++)
				for (int port = 0; port < 3; port++) {
					uint16_t p = (uint16_t)(port == 0 ? 25 : port == 1 ? 587 : 65535);
					const struct policy_row *r = policy_match(
						t, (const struct sockaddr *)&dsts[d], hosts[h], p);
					CHECK(!r || (r >= t->rows && r < t->rows + t->n),
					      "match outside the table");
					CHECK(!r || !r->port || r->port == p, "wrong port matched");
				}
		policy_free(t);
	} else {
		CHECK(rc == -EINVAL || rc == -ENOMEM, "rc %d", rc);
		CHECK(t == NULL, "table returned with an error");
		CHECK(errs.n > 0, "rc %d but no error line", rc);
		for (size_t i = 0; i < errs.n; i++) {
			const char *m = errs.msg[i];
			CHECK(!strncmp(m, path, plen) && m[plen] == ':', "error without the path: %s", m);
			char *end;
			long line = strtol(m + plen + 1, &end, 10);
			CHECK(end != m + plen + 1 && *end == ':', "error without a line: %s", m);
			CHECK(line >= 1 && (size_t)line <= lines, "line %ld of %zu: %s", line, lines, m);
			CHECK(!strchr(m, '\n'), "error line with a newline: %s", m);
		}
	}
	cfg_errors_free(&errs);
	return 0;
}
