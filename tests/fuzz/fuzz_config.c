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

static void cleanup(void)
{
	if (path[0])
		unlink(path);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	log_setup(LOG_ERROR, 0);
	const char *dir = getenv("TMPDIR");
	snprintf(path, sizeof(path), "%s/stp-fuzz-config-XXXXXX", dir && *dir ? dir : "/tmp");
	fd = mkstemp(path);
	if (fd < 0) {
		perror("mkstemp");
		abort();
	}
	atexit(cleanup);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (ftruncate(fd, 0) < 0 || pwrite(fd, data, size, 0) != (ssize_t)size)
		abort();
	size_t lines = 1;
	for (size_t i = 0; i < size; i++)
		lines += data[i] == '\n';
	struct cfg *cfg = NULL;
	struct cfg_errors errs = { 0 };
	int rc = cfg_load_flags(path, CFG_NO_FILES, &cfg, &errs);
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
		size_t pl = strlen(path);
		for (size_t i = 0; i < errs.n; i++) {
			const char *m = errs.msg[i];
			CHECK(strncmp(m, path, pl) == 0 && m[pl] == ':', "error without the path: %s",
			      m);
			char *end;
			long line = strtol(m + pl + 1, &end, 10);
			CHECK(end != m + pl + 1 && end[0] == ':' && end[1] == ' ',
			      "error not PATH:LINE: text: %s", m);
			CHECK(line >= 0 && (size_t)line <= lines + 1, "line %ld of %zu: %s", line,
			      lines, m);
			CHECK(!strchr(m, '\n'), "error line with a newline: %s", m);
		}
	}
	cfg_errors_free(&errs);
	return 0;
}
