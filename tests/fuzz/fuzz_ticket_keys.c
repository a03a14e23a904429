/* fuzz_ticket_keys.c - libFuzzer harness for the ticket_key_file parser
 * (cfg_load_ticket_keys in config.h).
 *
 * The input is written to a temporary file and loaded. Besides memory safety (ASan/UBSan)
 * it checks the contract: 0 with at least one key and no error line, and as many keys as
 * the input has lines of exactly 160 hex digits (blank and '#' lines aside); or -EINVAL
 * with one or more lines "PATH:LINE: message" (LINE between 1 and the number of lines,
 * no newline in a message, no run of 16 input hex digits in a message: key bytes are never
 * shown). */
#include <stddef.h>
#include <stdint.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "fuzz_util.h"


int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fuzz_tempfile("tickets");
	return 0;
}

/* Lines of the input that are exactly 160 hex digits once surrounding blanks and a CR are
 * removed (the keys a correct parser accepts, when no line is malformed). */
static size_t count_keys(const uint8_t *d, size_t n, size_t *lines)
{
	size_t keys = 0, i = 0;
	*lines = 0;
	while (i < n) {
		size_t e = i;
		while (e < n && d[e] != '\n')
			e++;
		(*lines)++;
		size_t a = i, b = e;
		while (a < b && (d[a] == ' ' || d[a] == '\t'))
			a++;
		while (b > a && (d[b - 1] == ' ' || d[b - 1] == '\t' || d[b - 1] == '\r'))
			b--;
		int hex = b - a == 160;
		for (size_t k = a; hex && k < b; k++)
			hex = isxdigit(d[k]) != 0;
		keys += hex;
		i = e + 1;
	}
	return keys;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (memchr(data, '\0', size)) /* a text file: NUL ends fgets' view of a line */
		return 0;
	fuzz_write_input(data, size);
	size_t lines;
	size_t want = count_keys(data, size, &lines);
	struct tls_ticket_keys k;
	struct cfg_errors errs = { 0 };
	int rc = cfg_load_ticket_keys(fuzz_path, &k, &errs);
	if (rc == 0) {
		CHECK(errs.n == 0, "rc 0 with %zu error lines, first: %s", errs.n, errs.msg[0]);
		CHECK(k.n >= 1 && k.n == want, "%zu keys, %zu key lines", k.n, want);
		cfg_ticket_keys_free(&k);
		CHECK(k.n == 0 && k.key == NULL, "free left keys behind");
	} else {
		CHECK(rc == -EINVAL || rc == -ENOMEM, "rc %d", rc);
		CHECK(k.n == 0 && k.key == NULL, "keys returned with an error");
		CHECK(errs.n > 0, "rc %d but no error line", rc);
		fuzz_check_errors(&errs, 1, (long)(lines ? lines : 1));
		for (size_t i = 0; i < errs.n; i++) {
			const char *m = errs.msg[i] + strlen(fuzz_path) + 1;
			size_t run = 0;
			for (const char *p = strchr(m, ':'); *p; p++) {
				run = isxdigit((unsigned char)*p) ? run + 1 : 0;
				CHECK(run < 16, "an error shows key digits: %s", m);
			}
		}
	}
	cfg_errors_free(&errs);
	return 0;
}
