/* unit_fixture.h - the temp directory and test certificates the unit tests share.
 *
 * fixture_setup() makes a fresh temp directory and finds the certificates: $STP_TEST_CERTS
 * (set by `make test`), or, for a stand-alone run, scripts/gen-test-certs.sh into the temp
 * directory. Tests that need certificates check fixture_have_certs. */
#ifndef STP_UNIT_FIXTURE_H
#define STP_UNIT_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

static char tmpdir[256];
static char certdir[512];
static int have_certs;

static int fixture_setup(const char *name)
{
	snprintf(tmpdir, sizeof tmpdir, "/tmp/stp-unit-%s-XXXXXX", name);
	if (!mkdtemp(tmpdir))
		return -1;
	const char *env = getenv("STP_TEST_CERTS");
	if (env && *env) {
		snprintf(certdir, sizeof certdir, "%s", env);
	} else {
		char cmd[1024];
		snprintf(certdir, sizeof certdir, "%s/certs", tmpdir);
		snprintf(cmd, sizeof cmd, "bash scripts/gen-test-certs.sh '%s' >/dev/null 2>&1",
			 certdir);
		if (system(cmd) != 0)
			fprintf(stderr, "note: could not generate certificates; their tests skip\n");
	}
	char probe[600];
	struct stat st;
	snprintf(probe, sizeof probe, "%s/server.pem", certdir);
	have_certs = stat(probe, &st) == 0;
	return 0;
}

static int fixture_teardown(void)
{
	char cmd[600];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

#endif
