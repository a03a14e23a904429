/* unit_zone.h - a private DNS server for the unit tests that resolve live (test_dns.c,
 * test_late.c): tests/integration/dns_lib.sh serves a DNSSEC-signed "example." zone from a
 * zone body the test wrote, behind a validating resolver on a loopback port.
 *
 * unit_zone_start() returns 0 with resolver ("IP@PORT"), anchor (the trust anchor file) and
 * pid filled in, or -1 with why saying what failed; unit_zone_stop() stops what started (a
 * zone that never started is left alone). Tests fail, never skip, without the server. */
#ifndef STP_UNIT_ZONE_H
#define STP_UNIT_ZONE_H

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

struct unit_zone {
	char dir[400];
	char resolver[64];
	char anchor[600];
	long pid;
	char why[600];
};

static void unit_copy_str(char *dst, size_t cap, const char *src)
{
	size_t n = strlen(src);
	if (n >= cap)
		n = cap - 1;
	memcpy(dst, src, n);
	dst[n] = '\0';
}

/* The start of a file (at most cap - 1 bytes) on one line, for a failure message. */
static void unit_read_tail(const char *path, char *out, size_t cap)
{
	out[0] = '\0';
	FILE *f = fopen(path, "r");
	if (!f)
		return;
	size_t n = fread(out, 1, cap - 1, f);
	out[n] = '\0';
	fclose(f);
	for (char *c = out; *c; c++)
		if (*c == '\n')
			*c = ' ';
}

/* Serves the zone body in file body from workdir/dns (workdir/dns.env and dns.err hold what
 * dns_lib.sh printed); env: assignments for dns_lib.sh ("" for none). */
static int unit_zone_start(struct unit_zone *z, const char *workdir, const char *body,
			   const char *env)
{
	memset(z, 0, sizeof(*z));
	snprintf(z->dir, sizeof z->dir, "%s/dns", workdir);
	char cmd[4000], envf[700], errf[700];
	snprintf(envf, sizeof envf, "%s/dns.env", workdir);
	snprintf(errf, sizeof errf, "%s/dns.err", workdir);
	snprintf(cmd, sizeof cmd,
		 "%s bash tests/integration/dns_lib.sh start '%s' example. '%s' signed %ld "
		 ">'%s' 2>'%s'",
		 env, z->dir, body, (long)getpid(), envf, errf);
	int rc = system(cmd);
	if (rc != 0) {
		char tail[400];
		unit_read_tail(errf, tail, sizeof tail);
		snprintf(z->why, sizeof z->why, "dns_lib.sh start failed (status %d): %s", rc, tail);
		return -1;
	}
	FILE *f = fopen(envf, "r");
	char line[700];
	while (f && fgets(line, sizeof line, f)) {
		line[strcspn(line, "\n")] = '\0';
		if (!strncmp(line, "DNS_RESOLVER=", 13))
			unit_copy_str(z->resolver, sizeof z->resolver, line + 13);
		else if (!strncmp(line, "DNS_ANCHOR=", 11))
			unit_copy_str(z->anchor, sizeof z->anchor, line + 11);
		else if (!strncmp(line, "DNS_PID=", 8))
			z->pid = atol(line + 8);
	}
	if (f)
		fclose(f);
	if (!z->resolver[0] || !z->anchor[0] || z->pid <= 0) {
		snprintf(z->why, sizeof z->why, "dns_lib.sh start printed no DNS_RESOLVER/ANCHOR/PID");
		return -1;
	}
	return 0;
}

static void unit_zone_stop(struct unit_zone *z)
{
	if (z->pid <= 0)
		return;
	char cmd[600];
	snprintf(cmd, sizeof cmd, "bash tests/integration/dns_lib.sh stop '%s'", z->dir);
	if (system(cmd) != 0)
		kill((pid_t)z->pid, SIGTERM);
	z->pid = 0;
}

#endif
