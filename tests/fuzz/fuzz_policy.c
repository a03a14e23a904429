/* fuzz_policy.c - libFuzzer harness for the policy table parser and matcher (policy.h).
 *
 * The input is written to a temporary file and loaded with policy_load(). Besides memory
 * safety (ASan/UBSan) it checks the contract: 0 with a table and no error lines, or
 * -EINVAL with one or more lines "PATH:LINE: message" (LINE between 1 and the number of
 * lines), none with a newline; a loaded table has at most one row per line, rows in line
 * order, each a valid destination kind with a known level (mta-sts, dane and auto rows
 * without names, ca, min_tls or a tls other than starttls), and pins on fingerprint rows
 * only, which have them.
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
#include "fuzz_util.h"

static struct sockaddr_storage dsts[6];

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
	fuzz_tempfile("policy");
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
	size_t lines = fuzz_write_input(data, size);
	struct policy_table *t = NULL;
	struct cfg_errors errs = { 0 };
	int rc = policy_load(fuzz_path, &t, &errs);
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
			CHECK(r->level >= CFG_POLICY_NONE && r->level <= CFG_POLICY_AUTO, "level %d",
			      r->level);
			CHECK(r->level < CFG_POLICY_MTA_STS ||
				      (!r->nnames && !r->ca && !r->min_tls &&
				       (!r->has_tls || r->tls == CFG_TLS_STARTTLS)),
			      "late-binding level %d with names, ca, min_tls or tls", r->level);
			CHECK(r->level != CFG_POLICY_NONE || (!r->nnames && !r->ca && !r->min_tls),
			      "none with names, ca or min_tls");
			CHECK(r->npins == 0 || r->level == CFG_POLICY_FINGERPRINT,
			      "pins at level %d", r->level);
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
		fuzz_check_errors(&errs, 1, (long)lines);
	}
	cfg_errors_free(&errs);
	return 0;
}
