/* fuzz_mtasts.c - libFuzzer harness for the MTA-STS parsers (mtasts.h).
 *
 * Byte 0 picks the parser: even, sts_parse_policy on the rest; odd, sts_parse_txt on the
 * rest split at '\n' into up to 4 records. Besides memory safety (ASan/UBSan) it checks the
 * contract. Policy: 0 with version, mode and max_age known, max_age at most 31557600, mx
 * patterns present unless mode none, each in lower case with '*' only as a leading "*.",
 * each matching itself (a wildcard: one more label); or -EINVAL with a one-line error and
 * nothing kept. TXT: 0 with an id of 1 to 32 letters and digits; -ENOENT; or -EINVAL with
 * a one-line error. */
#include <stddef.h>
#include <stdint.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mtasts.h"
#include "fuzz_util.h"

static struct sts_policy pol;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	const char *text = (const char *)data + 1;
	size_t len = size - 1;
	char err[256];
	if (!(data[0] & 1)) {
		int rc = sts_parse_policy(text, len, &pol, err, sizeof err);
		if (rc == 0) {
			CHECK(pol.max_age <= STS_MAX_AGE_MAX, "max_age %u", pol.max_age);
			CHECK(pol.mode == STS_MODE_NONE || pol.nmx > 0, "mode %d without mx", pol.mode);
			CHECK(pol.nmx <= STS_MX_MAX, "%zu mx", pol.nmx);
			for (size_t i = 0; i < pol.nmx; i++) {
				const char *m = pol.mx[i];
				size_t n = strlen(m);
				CHECK(n >= 1 && n <= STS_NAME_MAX, "mx length %zu", n);
				for (size_t k = 0; k < n; k++)
					CHECK(!isupper((unsigned char)m[k]) && (m[k] != '*' || (k == 0 && m[1] == '.')),
					      "mx pattern %s", m);
				char host[STS_NAME_MAX + 8];
				if (m[0] == '*')
					snprintf(host, sizeof host, "x%s", m + 1);
				else
					snprintf(host, sizeof host, "%s", m);
				CHECK(strlen(host) > STS_NAME_MAX || sts_mx_match(&pol, host),
				      "%s does not match its own pattern", host);
			}
		} else {
			CHECK(rc == -EINVAL, "rc %d", rc);
			CHECK(err[0] && !strchr(err, '\n'), "error \"%s\"", err);
			CHECK(pol.nmx == 0, "mx kept after an error");
		}
		sts_mx_match(&pol, len && text[0] ? "mx.example.net" : "");
		return 0;
	}
	const char *rec[4];
	size_t lens[4], n = 0, i = 0;
	while (n < 4 && i <= len) {
		const char *nl = memchr(text + i, '\n', len - i);
		size_t e = nl ? (size_t)(nl - text) : len;
		rec[n] = text + i;
		lens[n++] = e - i;
		i = e + 1;
	}
	char id[STS_ID_MAX + 1];
	int rc = sts_parse_txt(rec, lens, n, id, err, sizeof err);
	if (rc == 0) {
		size_t k = strlen(id);
		CHECK(k >= 1 && k <= STS_ID_MAX, "id length %zu", k);
		for (size_t j = 0; j < k; j++)
			CHECK(isalnum((unsigned char)id[j]), "id %s", id);
	} else {
		CHECK(rc == -EINVAL || rc == -ENOENT, "rc %d", rc);
		CHECK(rc == -ENOENT || (err[0] && !strchr(err, '\n')), "error \"%s\"", err);
	}
	return 0;
}
