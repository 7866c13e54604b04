//go:build tools

// Package tools pins helm, used by the tests to lint, render and install the chart.
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
