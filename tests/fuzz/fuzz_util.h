/* fuzz_util.h - what the libFuzzer harnesses share: CHECK (abort with the broken
 * invariant), a temporary file that file-reading parsers load the input from, and the
 * check of error lines ("PATH:LINE: text", LINE in range, one line each). */
#ifndef STP_FUZZ_UTIL_H
#define STP_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

#define CHECK(cond, ...)                                                                   \
	do {                                                                               \
		if (!(cond)) {                                                             \
			fprintf(stderr, "invariant violated: %s\n  ", #cond);             \
			fprintf(stderr, __VA_ARGS__);                                      \
			fprintf(stderr, "\n");                                             \
			abort();                                                           \
		}                                                                          \
	} while (0)

/* A growable byte buffer for transcripts (allocation failure aborts). */
struct fbuf {
	uint8_t *p;
	size_t n, cap;
};

static inline void fbuf_add(struct fbuf *b, const void *d, size_t n)
{
	if (b->n + n > b->cap) {
		size_t cap = b->cap ? b->cap : 1024;
		while (cap < b->n + n)
			cap *= 2;
		b->p = realloc(b->p, cap);
		if (!b->p)
			abort();
		b->cap = cap;
	}
	if (n)
		memcpy(b->p + b->n, d, n);
	b->n += n;
}

static inline void fbuf_free(struct fbuf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

static char fuzz_path[4096];
static int fuzz_fd = -1;

/* From LLVMFuzzerInitialize: makes DIR/stp-fuzz-NAME-XXXXXX (mode 0600) and removes its
 * name at once: the parsers open it as fuzz_path, /proc/self/fd/N, so that nothing is left
 * behind when the harness dies (a finding ends in abort() or the sanitizer's _exit, which
 * run no atexit handler). DIR is $TMPDIR, else /dev/shm when there is one, else /tmp: the
 * file is rewritten for every input, and on a disk file system (ext4 /tmp) the journal's
 * work was most of the harness's time (fuzz_policy: 3,300 executions a second with the
 * file in /tmp, 21,000 in /dev/shm). */
static inline void fuzz_tempfile(const char *name)
{
	const char *dir = getenv("TMPDIR");
	if (!dir || !*dir)
		dir = access("/dev/shm", W_OK | X_OK) == 0 ? "/dev/shm" : "/tmp";
	snprintf(fuzz_path, sizeof(fuzz_path), "%s/stp-fuzz-%s-XXXXXX", dir, name);
	fuzz_fd = mkstemp(fuzz_path);
	if (fuzz_fd < 0) {
		perror("mkstemp");
		abort();
	}
	if (unlink(fuzz_path) < 0) {
		perror("unlink");
		abort();
	}
	snprintf(fuzz_path, sizeof(fuzz_path), "/proc/self/fd/%d", fuzz_fd);
	if (access(fuzz_path, R_OK) < 0) {
		perror(fuzz_path);
		abort();
	}
}

/* The temporary file now holds exactly the input; returns its number of lines. */
static inline size_t fuzz_write_input(const uint8_t *data, size_t size)
{
	if (ftruncate(fuzz_fd, 0) < 0 || pwrite(fuzz_fd, data, size, 0) != (ssize_t)size)
		abort();
	size_t lines = 1;
	for (size_t i = 0; i < size; i++)
		lines += data[i] == '\n';
	return lines;
}

/* Every error is "fuzz_path:LINE: text" with min_line <= LINE <= max_line, no newline. */
static inline void fuzz_check_errors(const struct cfg_errors *errs, long min_line,
				     long max_line)
{
	size_t pl = strlen(fuzz_path);
	for (size_t i = 0; i < errs->n; i++) {
		const char *m = errs->msg[i];
		CHECK(strncmp(m, fuzz_path, pl) == 0 && m[pl] == ':', "error without the path: %s",
		      m);
		char *end;
		long line = strtol(m + pl + 1, &end, 10);
		CHECK(end != m + pl + 1 && end[0] == ':' && end[1] == ' ',
		      "error not PATH:LINE: text: %s", m);
		CHECK(line >= min_line && line <= max_line, "line %ld not in %ld..%ld: %s", line,
		      min_line, max_line, m);
		CHECK(!strchr(m, '\n'), "error line with a newline: %s", m);
	}
}

#endif
