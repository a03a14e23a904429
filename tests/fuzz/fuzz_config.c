/* fuzz_config.c - libFuzzer harness for the configuration parser.
 *
 * The input is written to a temporary file and loaded with cfg_load_flags(path,
 * CFG_NO_FILES, ...) (syntax and values only: no name resolution, no certificates).
 * Besides memory safety (ASan/UBSan) it checks the contract of config.h: 0 with a
 * configuration and no error lines, or -EINVAL with one or more error lines, each
 * "PATH:LINE: message" with LINE between 0 and the number of lines + 1; a loaded
 * configuration has at least one route, each named, and at least one worker. */
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "fuzz_util.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	log_setup(LOG_ERROR, 0);
	fuzz_tempfile("config");
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t lines = fuzz_write_input(data, size);
	struct cfg *cfg = NULL;
	struct cfg_errors errs = { 0 };
	int rc = cfg_load_flags(fuzz_path, CFG_NO_FILES, &cfg, &errs);
	if (rc == 0) {
		CHECK(cfg != NULL, "rc 0 without a configuration");
		CHECK(errs.n == 0, "rc 0 with %zu error lines, first: %s", errs.n, errs.msg[0]);
		CHECK(cfg->nroutes >= 1, "a configuration without routes");
		CHECK(cfg->workers >= 1, "workers = %d", cfg->workers);
		CHECK(cfg->helo_name && cfg->helo_name[0], "no helo_name");
		for (size_t i = 0; i < cfg->nroutes; i++)
			CHECK(cfg->routes[i].name && cfg->routes[i].name[0], "route %zu unnamed", i);
		cfg_free(cfg);
	} else {
		CHECK(rc == -EINVAL, "rc %d", rc);
		CHECK(errs.n > 0, "rc %d but no error line", rc);
		fuzz_check_errors(&errs, 0, (long)lines + 1);
	}
	cfg_errors_free(&errs);
	return 0;
}
