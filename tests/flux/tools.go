//go:build tools

// Package tools pins Flux's source-controller and kustomize-controller, which the DR-side
// tests run as local processes against the test apiserver.
package tools

import (
	_ "github.com/fluxcd/kustomize-controller"
	_ "github.com/fluxcd/source-controller"
)
