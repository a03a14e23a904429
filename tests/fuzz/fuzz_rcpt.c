/* fuzz_rcpt.c - libFuzzer harness for smtp_rcpt_domain (proto_smtp.h): the recipient
 * domain that late binding looks up (and that names MTA-STS cache files).
 *
 * The input is a RCPT command line (no terminator), copied to a buffer of its exact size.
 * Besides memory safety: 0 only with a domain of 1 to SMTP_DOMAIN_MAX octets of lower-case
 * letters, digits, '-' and '.', labels of 1 to 63 octets that neither start nor end with
 * '-', no trailing dot, that stands in the input (ignoring case) right after an '@';
 * otherwise exactly -EINVAL, with the output buffer's bytes past its size untouched. */
#include <stddef.h>
#include <stdint.h>
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proto_smtp.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *line = malloc(size ? size : 1);
	if (!line)
		return 0;
	memcpy(line, data, size);
	char out[SMTP_DOMAIN_MAX + 1 + 8];
	memset(out, 0x5a, sizeof out);
	int rc = smtp_rcpt_domain(line, size, out, SMTP_DOMAIN_MAX + 1);
	for (size_t i = SMTP_DOMAIN_MAX + 1; i < sizeof out; i++)
		CHECK(out[i] == 0x5a, "wrote past cap at %zu", i);
	if (rc == 0) {
		size_t n = strnlen(out, SMTP_DOMAIN_MAX + 1);
		CHECK(n >= 1 && n <= SMTP_DOMAIN_MAX, "domain length %zu", n);
		CHECK(out[n - 1] != '.', "trailing dot in %s", out);
		size_t label = 0;
		for (size_t i = 0; i <= n; i++) {
			char c = out[i];
			if (c == '.' || c == '\0') {
				CHECK(label >= 1 && label <= 63, "label of %zu in %s", label, out);
				CHECK(out[i - 1] != '-', "label ends in '-' in %s", out);
				label = 0;
				continue;
			}
			CHECK(islower((unsigned char)c) || isdigit((unsigned char)c) || c == '-',
			      "character 0x%02x in %s", (unsigned char)c, out);
			CHECK(c != '-' || label > 0, "label starts with '-' in %s", out);
			label++;
		}
		int found = 0;
		for (size_t i = 0; i + n < size && !found; i++)
			found = line[i] == '@' && !strncasecmp(line + i + 1, out, n);
		CHECK(found, "%s is not after an '@' in the input", out);
	} else {
		CHECK(rc == -EINVAL, "rc %d", rc);
	}
	free(line);
	return 0;
}
