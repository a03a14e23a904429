# starttls-proxy — see README.md.  make | make test | make demo | make deps | make install
VERSION   := 0.1.0
PREFIX    ?= /usr/local
SYSCONFDIR ?= /etc
DESTDIR   ?=
DEPS_DIR  ?= /var/cache/starttls-proxy
BUILD     := build
BIN       := starttls-proxy

# wolfSSL is built from source by scripts/deps.sh; its prefix is recorded in DEPS_DIR.
WOLFSSL_PREFIX ?= $(shell cat $(DEPS_DIR)/wolfssl.current 2>/dev/null)
WOLFSSL_CFLAGS := -I$(WOLFSSL_PREFIX)/include
WOLFSSL_LIBS   := $(WOLFSSL_PREFIX)/lib/libwolfssl.a -lm -lpthread
UV_CFLAGS      := $(shell pkg-config --cflags libuv 2>/dev/null)
UV_LIBS        := $(shell pkg-config --libs libuv 2>/dev/null || echo -luv)
CMOCKA_LIBS    := $(shell pkg-config --libs cmocka 2>/dev/null || echo -lcmocka)

CC       ?= cc
OPT      ?= -O2 -g
WERROR   ?= $(if $(CI),-Werror,)
CFLAGS   ?= $(OPT)
CFLAGS   += -std=gnu11 -Wall -Wextra $(WERROR) -fno-strict-aliasing \
            -Iinclude $(WOLFSSL_CFLAGS) $(UV_CFLAGS) -DSTP_VERSION='"$(VERSION)"' -D_GNU_SOURCE
LDLIBS   := $(UV_LIBS) $(WOLFSSL_LIBS) -lunbound -lz
ifeq ($(SANITIZE),1)
  BUILD  := build-san
  BIN    := build-san/starttls-proxy
  CFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=address,undefined
endif

SRCS      := $(wildcard src/*.c)
LIB_SRCS  := $(filter-out src/main.c,$(SRCS))
OBJS      := $(SRCS:src/%.c=$(BUILD)/%.o)
LIB_OBJS  := $(LIB_SRCS:src/%.c=$(BUILD)/%.o)
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)
CERTS     := $(BUILD)/test-certs

.PHONY: all deps check-deps test unit-bins demo install clean bench bench-classic fuzz

all: check-deps $(BIN)

check-deps:
	@test -f "$(WOLFSSL_PREFIX)/lib/libwolfssl.a" || { echo "wolfSSL missing: run 'make deps'"; exit 1; }
	@grep -q wolfSSL_FreePeerCert "$(WOLFSSL_PREFIX)/include/wolfssl/ssl.h" || { \
	  echo "wolfSSL in $(WOLFSSL_PREFIX) is built without scripts/wolfssl-peer-cert-heap.patch: run 'make deps'"; exit 1; }

# Everything the build and the tests need (scripts/deps.sh: no host service is started,
# stopped or replaced); `make demo` installs only what the build needs.
deps:
	@bash scripts/deps.sh test

# A wolfSSL rebuilt with other flags (make deps) lives under another prefix: what was
# compiled or linked against the old one is rebuilt.
WOLFSSL_A    := $(WOLFSSL_PREFIX)/lib/libwolfssl.a
WOLFSSL_OPTS := $(wildcard $(WOLFSSL_PREFIX)/include/wolfssl/options.h)

$(BIN): $(OBJS) $(wildcard $(WOLFSSL_A))
	$(CC) $(LDFLAGS) -o $@ $(OBJS) $(LDLIBS)

$(BUILD)/%.o: src/%.c $(wildcard include/*.h) $(WOLFSSL_OPTS) | $(BUILD)
	$(CC) $(CFLAGS) -MMD -c -o $@ $<

$(BUILD)/tests/%: tests/unit/%.c $(wildcard tests/unit/*.h) $(LIB_OBJS) $(wildcard $(WOLFSSL_A)) | $(BUILD)
	@mkdir -p $(BUILD)/tests
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(LIB_OBJS) $(CMOCKA_LIBS) $(LDLIBS)

# test_alloc_failure: malloc, calloc, realloc and strdup of the linked objects go through
# the test's own __wrap_ functions, which make the Nth allocation fail.
ALLOC_WRAP := -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=strdup
$(BUILD)/tests/test_alloc_failure: tests/unit/test_alloc_failure.c $(wildcard tests/unit/*.h) $(LIB_OBJS) $(wildcard $(WOLFSSL_A)) | $(BUILD)
	@mkdir -p $(BUILD)/tests
	$(CC) $(CFLAGS) $(LDFLAGS) $(ALLOC_WRAP) -o $@ $< $(LIB_OBJS) $(CMOCKA_LIBS) $(LDLIBS)

$(BUILD):
	@mkdir -p $(BUILD)

$(CERTS)/.complete:
	@bash scripts/gen-test-certs.sh $(CERTS)

unit-bins: $(UNIT_BINS)

# The one command: dependencies (when missing), build, unit and integration tests.
# Two passes: the build users run, then the same suite against the sanitizer build
# (build-san/: ASan + UBSan), leaving out there only what is the same in both builds
# (SAN_SKIP). `make SANITIZE=1 test` runs the whole suite against the sanitizer build only,
# `make SANITIZE=0 test` the first pass only.
SAN_SKIP := test_testssl test_fuzz test_docs test_deps test_valgrind
SAN_SKIP_REASON := the same in both builds: testssl's audit of the TLS configuration, \
  the fuzz harnesses (always built with ASan and UBSan), the docs, the dependency script, \
  valgrind (cannot run an ASan binary)
test:
	@bash scripts/deps.sh test
	@$(MAKE) --no-print-directory all unit-bins $(CERTS)/.complete
ifeq ($(SANITIZE),)
	@$(MAKE) --no-print-directory SANITIZE=1 all unit-bins
	@rc=0; \
	echo "== make test, pass 1 of 2: $(BIN) (the build users run)"; \
	STP_BIN=$(abspath $(BIN)) STP_UNIT_DIR=$(abspath $(BUILD)/tests) \
	  STP_TEST_CERTS=$(abspath $(CERTS)) bash tests/run.sh || rc=1; \
	echo "== make test, pass 2 of 2: build-san/starttls-proxy (AddressSanitizer + UndefinedBehaviorSanitizer)"; \
	STP_SKIP="$(SAN_SKIP)" STP_SKIP_REASON="$(SAN_SKIP_REASON)" \
	  STP_BIN=$(abspath build-san/starttls-proxy) STP_UNIT_DIR=$(abspath build-san/tests) \
	  STP_TEST_CERTS=$(abspath $(CERTS)) bash tests/run.sh || rc=1; \
	if [ $$rc -eq 0 ]; then echo "== make test: both passes passed"; \
	else echo "== make test: FAILED (see the pass above whose last line counts failures)"; fi; \
	exit $$rc
else
	@STP_BIN=$(abspath $(BIN)) STP_UNIT_DIR=$(abspath $(BUILD)/tests) \
	  STP_TEST_CERTS=$(abspath $(CERTS)) bash tests/run.sh
endif

demo:
	@bash scripts/deps.sh build
	@$(MAKE) --no-print-directory all
	@bash scripts/demo.sh

# Benchmarks against stunnel and haproxy. `make bench`: the two-leg TLS chain and the machine's
# floor (bench/chain.sh; writes bench/results/chain.md, chain.png, summary.md). `make
# bench-classic`: one proxy at a time, TLS termination and wrap (bench/run.sh; writes
# bench/RESULTS.md). Separate targets: each takes a quarter of an hour or more, and each
# measures best on an otherwise quiet machine.
bench:
	@bash scripts/deps.sh test
	@$(MAKE) --no-print-directory all
	@STP_BIN=$(abspath $(BIN)) bash bench/chain.sh

bench-classic:
	@bash scripts/deps.sh test
	@$(MAKE) --no-print-directory all
	@STP_BIN=$(abspath $(BIN)) bash bench/run.sh

# libFuzzer harnesses for every parser, FUZZ_SECONDS each.
FUZZ_SECONDS ?= 60
fuzz:
	@bash scripts/deps.sh test
	@bash tests/fuzz/run.sh $(FUZZ_SECONDS)

# The container images, built offline by podman (Containerfile, docs/kubernetes.md):
# IMAGE (the proxy) and IMAGE-netinit (the sidecar's init container), tagged VERSION and latest.
PODMAN ?= podman
IMAGE  ?= starttls-proxy
.PHONY: image
image: all
	@command -v $(firstword $(PODMAN)) >/dev/null || { echo "podman missing: run 'make deps'"; exit 1; }
	@bash scripts/mkimage.sh $(BIN) build/image
	$(PODMAN) build --build-arg VERSION=$(VERSION) -t $(IMAGE):$(VERSION) -t $(IMAGE):latest .
	$(PODMAN) build --target netinit --build-arg VERSION=$(VERSION) \
	  -t $(IMAGE)-netinit:$(VERSION) -t $(IMAGE)-netinit:latest .

# The binary, man pages, systemd units (service, socket, sysusers; the transparent drop-in
# with the docs), the documented example of every key, and a configuration that passes -t
# as it is, in SYSCONFDIR/starttls-proxy unless one is there already (never overwritten).
DOCDIR := $(DESTDIR)$(PREFIX)/share/doc/starttls-proxy
install: all
	install -D -m 755 $(BIN) $(DESTDIR)$(PREFIX)/bin/starttls-proxy
	install -D -m 644 etc/starttls-proxy.conf $(DOCDIR)/starttls-proxy.conf.example
	install -D -m 644 etc/policy.table $(DOCDIR)/policy.table.example
	install -D -m 644 systemd/starttls-proxy-transparent.conf $(DOCDIR)/systemd-transparent.conf
	install -D -m 644 README.md $(DOCDIR)/README.md
	install -D -m 644 LICENSE $(DOCDIR)/LICENSE
	install -D -m 644 CHANGELOG.md $(DOCDIR)/CHANGELOG.md
	for f in docs/*.md; do install -D -m 644 $$f $(DOCDIR)/$$f; done
	install -d $(DESTDIR)$(PREFIX)/lib/systemd/system
	sed -e 's|/usr/local/bin/|$(PREFIX)/bin/|g' \
	  -e 's|/etc/starttls-proxy/|$(SYSCONFDIR)/starttls-proxy/|g' systemd/starttls-proxy.service \
	  > $(DESTDIR)$(PREFIX)/lib/systemd/system/starttls-proxy.service
	install -m 644 systemd/starttls-proxy.socket $(DESTDIR)$(PREFIX)/lib/systemd/system/
	install -D -m 644 systemd/starttls-proxy.sysusers \
	  $(DESTDIR)$(PREFIX)/lib/sysusers.d/starttls-proxy.conf
	install -d -m 755 $(DESTDIR)$(SYSCONFDIR)/starttls-proxy
	test -e $(DESTDIR)$(SYSCONFDIR)/starttls-proxy/starttls-proxy.conf || \
	  install -m 644 etc/minimal.conf $(DESTDIR)$(SYSCONFDIR)/starttls-proxy/starttls-proxy.conf
	install -D -m 644 man/starttls-proxy.8 $(DESTDIR)$(PREFIX)/share/man/man8/starttls-proxy.8
	install -D -m 644 man/starttls-proxy.conf.5 $(DESTDIR)$(PREFIX)/share/man/man5/starttls-proxy.conf.5

clean:
	rm -rf build build-san starttls-proxy

-include $(OBJS:.o=.d)
