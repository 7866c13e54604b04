//go:build tools

// Package tools pins the Go-built peers the tests talk to (sops for SOPS interop,
// kustomize for rendering the Argo CD tree).
package tools

import (
	_ "github.com/getsops/sops/v3/cmd/sops"
	_ "sigs.k8s.io/kustomize/kustomize/v5"
)
