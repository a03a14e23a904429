/* hs_wolfssl.c - handshake-rate client for bench/run.sh, on the project's wolfSSL.
 *
 * Same job and output as "stpbench hs" (see stpbench.c): C threads each loop for S
 * seconds: TCP connect, full TLS 1.3 handshake (TLS_AES_128_GCM_SHA256, one key share of
 * the chosen group, no resumption, no chain verification), write 'P', read 'p',
 * close_notify, close. It exists because Debian's OpenSSL 3.0 spends about 1 ms of CPU per
 * client handshake here, so an OpenSSL client saturates the 2-core machine before the
 * proxy does; wolfSSL's client is several times cheaper, which leaves the CPU to the proxy.
 *
 *   hs_wolfssl --port P --seconds S --conc C [--group X25519|P-256] [--resume | --plain]
 *   prints "ok=N errors=E seconds=S rate=R client_cpu=CPU-SECONDS resumed=N"
 *
 * --resume: each thread offers the session (TLS 1.3 ticket) of its previous connection,
 * so the server under test resumes instead of doing a full handshake; resumed counts the
 * handshakes it accepted. --plain: no TLS at all (connect, 'P', 'p', close), to drive a
 * proxy that wraps the stream in TLS toward its backend.
 */
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

struct arg {
	WOLFSSL_CTX *ctx;
	int port, group, resume, plain;
	double deadline;
	long ok, errors, resumed;
	WOLFSSL_SESSION *session; /* --resume: the previous connection's */
};

static int one_connection(struct arg *a)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1, rc = -1;
	if (fd < 0)
		return -1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(a->port) };
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		close(fd);
		return -1;
	}
	char r = 0;
	if (a->plain) {
		rc = write(fd, "P", 1) == 1 && read(fd, &r, 1) == 1 && r == 'p' ? 0 : -1;
		close(fd);
		return rc;
	}
	WOLFSSL *ssl = wolfSSL_new(a->ctx);
	if (ssl && a->session)
		wolfSSL_set_session(ssl, a->session);
	if (ssl && wolfSSL_set_fd(ssl, fd) == WOLFSSL_SUCCESS &&
	    wolfSSL_UseSNI(ssl, WOLFSSL_SNI_HOST_NAME, "localhost", 9) == WOLFSSL_SUCCESS &&
	    wolfSSL_UseKeyShare(ssl, (word16)a->group) == WOLFSSL_SUCCESS &&
	    wolfSSL_connect(ssl) == WOLFSSL_SUCCESS && wolfSSL_write(ssl, "P", 1) == 1 &&
	    wolfSSL_read(ssl, &r, 1) == 1 && r == 'p')
		rc = 0;
	if (ssl) {
		if (rc == 0 && a->resume) {
			if (wolfSSL_session_reused(ssl))
				a->resumed++;
			/* the ticket came with the server's reply */
			WOLFSSL_SESSION *s = wolfSSL_get1_session(ssl);
			if (s) {
				wolfSSL_SESSION_free(a->session);
				a->session = wolfSSL_SESSION_dup(s);
				wolfSSL_SESSION_free(s);
			}
		}
		if (rc == 0)
			wolfSSL_shutdown(ssl);
		wolfSSL_free(ssl);
	}
	close(fd);
	return rc;
}

static void *worker(void *p)
{
	struct arg *a = p;
	while (now_s() < a->deadline) {
		if (one_connection(a) == 0) {
			a->ok++;
		} else {
			a->errors++;
			usleep(1000);
		}
	}
	return NULL;
}

int main(int argc, char **argv)
{
	int port = 0, conc = 8, group = WOLFSSL_ECC_X25519, resume = 0, plain = 0;
	double seconds = 10;
	for (int i = 1; i < argc; i++)
		if (!strcmp(argv[i], "--resume") || !strcmp(argv[i], "--plain")) {
			*(argv[i][2] == 'r' ? &resume : &plain) = 1;
			memmove(&argv[i], &argv[i + 1], (size_t)(argc - i) * sizeof(*argv));
			argc--, i--;
		}
	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--port"))
			port = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--seconds"))
			seconds = atof(argv[i + 1]);
		else if (!strcmp(argv[i], "--conc"))
			conc = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--group"))
			group = !strcmp(argv[i + 1], "X25519") ? WOLFSSL_ECC_X25519 : WOLFSSL_ECC_SECP256R1;
	}
	if (!port || conc < 1) {
		fprintf(stderr, "usage: hs_wolfssl --port P --seconds S --conc C [--group G] "
				"[--resume | --plain]\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	wolfSSL_Init();
	WOLFSSL_CTX *ctx = wolfSSL_CTX_new(wolfTLSv1_3_client_method());
	if (!ctx || wolfSSL_CTX_set_cipher_list(ctx, "TLS13-AES128-GCM-SHA256") != WOLFSSL_SUCCESS) {
		fprintf(stderr, "hs_wolfssl: context setup failed\n");
		return 1;
	}
	int groups[1] = { group };
	wolfSSL_CTX_set_groups(ctx, groups, 1);
	wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_NONE, NULL);
	if (!resume) {
		wolfSSL_CTX_set_session_cache_mode(ctx, WOLFSSL_SESS_CACHE_OFF);
		wolfSSL_CTX_NoTicketTLSv12(ctx);
	}

	struct arg *args = calloc(conc, sizeof *args);
	pthread_t *t = calloc(conc, sizeof *t);
	double t0 = now_s();
	for (int i = 0; i < conc; i++) {
		args[i] = (struct arg){ .ctx = ctx, .port = port, .group = group, .resume = resume,
					.plain = plain, .deadline = t0 + seconds };
		pthread_create(&t[i], NULL, worker, &args[i]);
	}
	long ok = 0, errors = 0, resumed = 0;
	for (int i = 0; i < conc; i++) {
		pthread_join(t[i], NULL);
		ok += args[i].ok, errors += args[i].errors, resumed += args[i].resumed;
		wolfSSL_SESSION_free(args[i].session);
	}
	double dt = now_s() - t0;
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
		     ru.ru_stime.tv_usec / 1e6;
	printf("ok=%ld errors=%ld seconds=%.3f rate=%.1f client_cpu=%.2f resumed=%ld\n", ok,
	       errors, dt, ok / dt, cpu, resumed);
	wolfSSL_CTX_free(ctx);
	wolfSSL_Cleanup();
	return 0;
}
