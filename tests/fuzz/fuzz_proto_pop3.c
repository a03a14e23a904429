/* fuzz_proto_pop3.c - libFuzzer harness for the POP3 state machine (proto_pop3_ops): whole
 * sessions driven by fuzz_session.h (its comment has the script format and the invariants
 * every module keeps), cut arbitrarily in both directions.
 *
 * POP3's own invariants (abort() on violation):
 *  - before tls_done(UPSTREAM) on a strict starttls route only the module's CAPA, STLS and
 *    QUIT go up; PA_STARTTLS(client) right after "+OK Begin TLS negotiation",
 *    PA_STARTTLS(upstream) right after "STLS";
 *  - client_tls = starttls with client_policy = encrypt: no USER/PASS/APOP/AUTH line goes
 *    up before tls_done(CLIENT);
 *  - the client never gets an STLS capability line after its TLS started (unless a
 *    command whose response is free text, RETR/TOP/LIST/UIDL/AUTH, went up).
 * The transcripts of the three runs must be identical unless the whole run ended on a
 * response written before its command (pop3_saw_early_response). */
#include <ctype.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proto_pop3.h"
#include "fuzz_session.h"

/* Every line of b is one of the module's own commands. */
static int only_own(const struct fbuf *b)
{
	static const char *own[] = { "CAPA\r\n", "STLS\r\n", "QUIT\r\n" };
	size_t i = 0;
	while (i < b->n) {
		size_t k;
		for (k = 0; k < 3; k++) {
			size_t l = strlen(own[k]);
			if (b->n - i >= l && memcmp(b->p + i, own[k], l) == 0) {
				i += l;
				break;
			}
		}
		if (k == 3)
			return 0;
	}
	return 1;
}

/* No line of b starts with a credentials verb. *at: the start of the last line seen (a
 * complete line's verdict does not change as b grows; the last one is looked at again). */
static int no_credentials(const struct fbuf *b, size_t *at)
{
	static const char *verbs[] = { "USER", "PASS", "APOP", "AUTH" };
	size_t i = *at;
	while (i < b->n) {
		*at = i;
		for (int k = 0; k < 4; k++)
			if (b->n - i >= 4 && strncasecmp((const char *)b->p + i, verbs[k], 4) == 0 &&
			    (b->n - i == 4 || b->p[i + 4] == ' ' || b->p[i + 4] == '\r' ||
			     b->p[i + 4] == '\n'))
				return 0;
		const uint8_t *nl = memchr(b->p + i, '\n', b->n - i);
		if (!nl)
			break;
		i = (size_t)(nl - b->p) + 1;
	}
	*at = i;
	return 1;
}

/* No "STLS" capability line in what the client got since its TLS started. *at: the first
 * offset not yet looked at. */
static int no_stls_line(const struct fbuf *b, size_t *at)
{
	size_t i = *at;
	for (; i + 6 <= b->n; i++)
		if ((i == 0 || b->p[i - 1] == '\n') && memcmp(b->p + i, "STLS\r\n", 6) == 0)
			return 0;
	*at = i;
	return 1;
}

/* 1 when word occurs in d[0..n) ignoring case. */
static int strcasestr_n(const uint8_t *d, size_t n, const char *word)
{
	size_t l = strlen(word);
	for (size_t i = 0; i + l <= n; i++)
		if (strncasecmp((const char *)d + i, word, l) == 0)
			return 1;
	return 0;
}

static void sent_up(struct fs_run *r, const uint8_t *d, size_t n)
{
	static const char *const freeverbs[] = { "RETR", "TOP", "LIST", "UIDL", "AUTH" };
	for (int k = 0; k < 5; k++)
		if (strcasestr_n(d, n, freeverbs[k]))
			r->flags = 1;
}

static void check(struct fs_run *r)
{
	if (r->p.client_tls == CFG_TLS_STARTTLS && r->p.client_policy == CFG_POLICY_ENCRYPT)
		CHECK(no_credentials(&r->cl_pre, &r->seen[0]),
		      "credentials upstream before the client's TLS");
	if (!r->flags)
		CHECK(no_stls_line(&r->to_client, &r->seen[1]), "STLS offered inside the client's TLS");
}

static int timing(void *st)
{
	return pop3_saw_early_response(st);
}

static const struct fs_proto pop3 = {
	.ops = &proto_pop3_ops,
	.protocol = CFG_PROTO_POP3,
	.client_go = "+OK Begin TLS negotiation\r\n",
	.stls_cmd = "STLS\r\n",
	.only_own = only_own,
	.check = check,
	.sent_up = sent_up,
	.timing = timing,
};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc, (void)argv;
	log_setup(getenv("FUZZ_LOG") ? LOG_DEBUG : LOG_ERROR, 0); /* FUZZ_LOG=1: the states */
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	return fs_test_one(&pop3, data, size);
}
