# dr-syncer developer entry points. `make test` is the one test command (CI runs it too).
SHELL := /bin/bash
CARGO ?= cargo
NAME ?= dev

.PHONY: test deps envtest crds lint fmt static image fuzz bench bench-pvc envtest-up envtest-down release bench-export bench-gitops bench-controller bench-fleet bench-fleet-replicas

## test: install missing dependencies, build the test control plane, run every test, then
## build the container image twice and test it (scripts/image-test.sh)
test: deps envtest
	$(CARGO) test --workspace
	scripts/image-test.sh

## deps: Debian packages and toolchain checks
deps:
	scripts/install-deps.sh

## envtest: build kube-apiserver, etcd, kubectl, sops, kustomize, helm, promtool and Flux's source- and
## kustomize-controller from Go modules, fetch the Flux and Argo CD CRDs (all cached by go.sum)
envtest:
	tests/envtest/build.sh >/dev/null
	tests/tools/build.sh >/dev/null
	tests/helm/build.sh >/dev/null
	tests/flux/build.sh >/dev/null
	tests/promtool/build.sh >/dev/null

## crds: regenerate crds/, the chart's crds/ and docs/reference.md from the Rust types
crds:
	$(CARGO) run --quiet -- crds --dir crds
	$(CARGO) run --quiet -- crds --dir charts/dr-syncer/crds
	mkdir -p docs && $(CARGO) run --quiet -- crds --reference > docs/reference.md.tmp && mv docs/reference.md.tmp docs/reference.md

## static: the static (musl) binary of the container image; CI builds it to prove it links
static:
	scripts/build-static.sh

## image: the OCI image (umoci, no container engine) as an OCI archive under target/image/
image:
	scripts/image.sh

## fuzz: the PVC frame decoder and the receiver (hostile sender) under libFuzzer, FUZZ_SECONDS each (installs nightly + cargo-fuzz)
FUZZ_SECONDS ?= 60
fuzz:
	scripts/fuzz.sh $(FUZZ_SECONDS)

## bench: every benchmark below, one after the other, into benches/RESULTS.md (BENCHES="pvc gitops" for a subset)
bench: deps envtest
	scripts/bench.sh

## bench-pvc: pvc-sync vs rsync over OpenSSH (default cipher, aes256-gcm, aes256-gcm --fsync), scenarios (a)-(e); BENCH_SCALE=0.1 for a quick run
bench-pvc: deps
	$(CARGO) bench --bench pvc

## lint: formatting and clippy, as CI runs them
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## envtest-up NAME=src: start a control plane in the background; writes target/envtest/NAME/kubeconfig
envtest-up: envtest
	$(CARGO) run --quiet -p dr-syncer-testkit --bin envtest -- up $(NAME)

## envtest-down NAME=src: stop it
envtest-down:
	$(CARGO) run --quiet -p dr-syncer-testkit --bin envtest -- down $(NAME)

release:
	$(CARGO) build --release

## bench-export: dr-syncer export vs kubectl get -o yaml on 10 000 objects (BENCH_OBJECTS=n)
bench-export: deps envtest
	$(CARGO) bench --bench export

## bench-gitops: initial commit of 10 000 objects and a one-object change commit
bench-gitops: deps
	$(CARGO) bench --bench gitops

## bench-controller: change-to-commit latency (p50/p99) and RSS with 10 000 watched objects
bench-controller: deps envtest
	$(CARGO) bench --bench controller

## bench-fleet: 1 000 namespaces x 100 objects, one selector mapping vs 1 000 mappings: first commit, change to commit, RSS, apiserver watches
bench-fleet: deps envtest
	$(CARGO) bench --bench fleet

## bench-fleet-replicas: 1 000 mappings on 1 vs 3 sharding replicas (into benches/results/fleet-replicas.md)
bench-fleet-replicas: deps envtest
	BENCHES=fleet-replicas scripts/bench.sh
