# `make test` is the project's test command: README gives it, CI runs it.
.PHONY: test demo servers stop-servers bench cross fuzz

test:
	./integration/scripts/test.sh

# Every package, tests included, builds and vets on each OS in CROSS_OS:
# Linux-only features sit behind build tags and answer "not supported"
# elsewhere, so a Mac or Windows user can import the library and run
# `lameduck offline`. test.sh runs it before starting any server.
CROSS_OS ?= linux darwin windows
cross:
	@set -e; for os in $(CROSS_OS); do \
		echo "cross: $$os" >&2; \
		GOOS=$$os go build ./...; \
		GOOS=$$os go vet ./...; \
	done

# Every fuzz target (integration/scripts/fuzz.sh) for FUZZTIME each; test.sh runs
# them for 4s each. A failing input lands in the package's testdata/fuzz: commit
# it with the fix, as a regression seed.
FUZZTIME ?= 2m
fuzz:
	FUZZTIME=$(FUZZTIME) FUZZMINIMIZETIME=10s ./integration/scripts/fuzz.sh

demo:
	go run ./cli/lameduck demo

# Start Consul and Nacos on loopback (installing them if needed) and leave them running:
# a Consul dev agent and a standalone Nacos, then a Consul cluster (3 servers, 2 client
# agents on 127.0.0.11-22) and a 3-node Nacos cluster (8858, 8868, 8878).
servers:
	./integration/scripts/start-consul.sh
	./integration/scripts/start-nacos.sh
	./integration/scripts/start-consul-cluster.sh
	./integration/scripts/start-nacos-cluster.sh

stop-servers:
	./integration/scripts/stop-nacos-cluster.sh
	./integration/scripts/stop-consul-cluster.sh
	./integration/scripts/stop-nacos.sh
	./integration/scripts/stop-consul.sh

bench:
	go test -run '^$$' -bench . -benchmem -count 6 ./drain ./pkg/...

# The proof of issue 6: rolling restarts under load on real Consul and Nacos, in five ways, against today's practice
# (about 10 minutes), then again (as long) on the Consul and Nacos clusters (-topology cluster, into $(PROOF_OUT)-cluster);
# `servers` starts both the standalone servers and the clusters. BENCHMARKS.md explains the method and the numbers;
# CI runs one round of each (integration/scripts/test.sh).
PROOF_OUT ?= /tmp/lameduck-proof
.PHONY: proof
proof: servers
	go run ./integration/proof -rounds 3 -out $(PROOF_OUT)
	go run ./integration/proof -topology cluster -rounds 3 -out $(PROOF_OUT)-cluster

# The tracker and the HTTP middleware under wrk against a bare handler, interleaved in one run
# (about 1.5 minutes; installs wrk from Debian if missing). BENCHMARKS.md, "HTTP middleware under wrk".
.PHONY: bench-wrk
bench-wrk:
	./integration/wrkbench/run.sh
