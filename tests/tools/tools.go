//go:build tools

// Package tools pins the Go-built peers the tests talk to (sops for SOPS interop).
package tools

import (
	_ "github.com/getsops/sops/v3/cmd/sops"
)
